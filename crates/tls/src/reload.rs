//! A certificate and key read from disk and read again when they change: on SIGHUP, and when
//! either file's modification time or length changes. Connections already open keep the
//! certificate they were made with; new handshakes get the new one. A new pair that cannot be
//! used (unreadable, expired, mismatched, half written) is refused with an error in the log, and
//! the old one stays.

use crate::files::{self, Identity, Named, Validity};
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::{Duration, SystemTime};

/// How often the files are looked at for a change.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

type Stamp = Option<(SystemTime, u64)>;

/// A certificate and key pair, read from two files and reloaded in place.
#[derive(Debug)]
pub struct CertSource {
    cert_setting: String,
    cert: PathBuf,
    key_setting: String,
    key: PathBuf,
    current: RwLock<Arc<Identity>>,
    /// The files' stamps when last read (successfully or not).
    seen: RwLock<(Stamp, Stamp)>,
}

impl CertSource {
    /// Reads and checks the pair named by `cert` and `key`.
    pub fn load(cert: Named<'_>, key: Named<'_>) -> Result<Arc<CertSource>, files::FileError> {
        let seen = (files::stamp(cert.path), files::stamp(key.path));
        let identity = Identity::read(cert, key)?;
        Ok(Arc::new(CertSource {
            cert_setting: cert.setting.to_string(),
            cert: cert.path.to_path_buf(),
            key_setting: key.setting.to_string(),
            key: key.path.to_path_buf(),
            current: RwLock::new(Arc::new(identity)),
            seen: RwLock::new(seen),
        }))
    }

    fn names(&self) -> (Named<'_>, Named<'_>) {
        (
            Named {
                setting: &self.cert_setting,
                path: &self.cert,
            },
            Named {
                setting: &self.key_setting,
                path: &self.key,
            },
        )
    }

    /// The pair in use.
    pub fn current(&self) -> Arc<Identity> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The validity of the certificate in use.
    pub fn validity(&self) -> Validity {
        self.current().validity
    }

    /// Reads the files again (when `always`, or when they changed since last read) and uses
    /// the new pair if it is good. Returns whether a new pair is in use.
    pub fn reload(&self, always: bool) -> bool {
        let (cert, key) = self.names();
        let stamps = (files::stamp(cert.path), files::stamp(key.path));
        {
            let mut seen = self.seen.write().unwrap_or_else(PoisonError::into_inner);
            if !always && *seen == stamps {
                return false;
            }
            *seen = stamps;
        }
        match Identity::read(cert, key) {
            Ok(identity) => {
                tracing::info!(
                    cert = %cert.path.display(),
                    not_after = %identity.validity.not_after,
                    "TLS certificate reloaded"
                );
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(identity);
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS certificate not reloaded; the one in use stays");
                false
            }
        }
    }

    fn certified(&self) -> Arc<CertifiedKey> {
        self.current().key.clone()
    }
}

impl ResolvesServerCert for CertSource {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.certified())
    }
}

impl ResolvesClientCert for CertSource {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.certified())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Reloads `sources` on SIGHUP and when their files change, for as long as any of them is in
/// use. Call from within a tokio runtime.
pub fn watch(sources: &[Arc<CertSource>]) {
    if sources.is_empty() {
        return;
    }
    let sources: Vec<Weak<CertSource>> = sources.iter().map(Arc::downgrade).collect();
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(e) => {
            tracing::warn!(error = %e, "no SIGHUP handler: certificates reload on file changes only");
            None
        }
    };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let always = tokio::select! {
                _ = tick.tick() => false,
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            };
            let mut any = false;
            for source in sources.iter().filter_map(Weak::upgrade) {
                any = true;
                source.reload(always);
            }
            if !any {
                return;
            }
        }
    });
}
