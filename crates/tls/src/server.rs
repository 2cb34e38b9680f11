//! The TLS side of a listener: the `[tls]` settings, and the rustls configuration every
//! listener of a process (its API port and its metrics port) serves with.

use crate::files::{self, Named};
use crate::reload::{self, CertSource};
use crate::{generate, provider, PROTOCOLS};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where the self-signed certificate of `self_signed = true` is kept when `cert` and `key` are
/// not set.
pub const SELF_SIGNED_CERT: &str = "data/tls/self-signed.crt";
/// Its key.
pub const SELF_SIGNED_KEY: &str = "data/tls/self-signed.key";

/// `[tls]`: HTTPS on every listener of the process when `cert` and `key` are set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain, the server's certificate first.
    pub cert: Option<PathBuf>,
    /// PEM private key of that certificate (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// PEM CA bundle: when set, clients must present a certificate it signed (mutual TLS).
    pub client_ca: Option<PathBuf>,
    /// Serve HTTPS with a certificate made here for this machine (localhost, 127.0.0.1, ::1 and
    /// the listen address) when the files `cert` and `key` name (by default
    /// `data/tls/self-signed.crt` and `.key`) do not exist or have expired; for trying HTTPS,
    /// not for production.
    pub self_signed: bool,
}

impl TlsSettings {
    /// Whether the listeners speak HTTPS.
    pub fn enabled(&self) -> bool {
        self.cert.is_some() || self.key.is_some() || self.self_signed
    }

    fn cert_path(&self) -> Option<PathBuf> {
        self.cert
            .clone()
            .or_else(|| self.self_signed.then(|| SELF_SIGNED_CERT.into()))
    }

    fn key_path(&self) -> Option<PathBuf> {
        self.key
            .clone()
            .or_else(|| self.self_signed.then(|| SELF_SIGNED_KEY.into()))
    }
}

/// The TLS configuration of a process's listeners, with its certificate reloaded in place.
#[derive(Debug, Clone)]
pub struct ServerTls {
    config: Arc<rustls::ServerConfig>,
    source: Arc<CertSource>,
    mutual: bool,
}

impl ServerTls {
    /// The configuration `settings` describe (`None` for plain HTTP), its files read and
    /// checked; `listen` is the address a self-signed certificate is also made for. A missing,
    /// unreadable, expired or mismatched file is an error naming the setting and the file.
    pub fn from_settings(
        settings: &TlsSettings,
        listen: &str,
    ) -> anyhow::Result<Option<ServerTls>> {
        if !settings.enabled() {
            if let Some(ca) = &settings.client_ca {
                anyhow::bail!(
                    "tls.client_ca {}: needs tls.cert and tls.key (clients present certificates over HTTPS)",
                    ca.display()
                );
            }
            return Ok(None);
        }
        let (Some(cert), Some(key)) = (settings.cert_path(), settings.key_path()) else {
            anyhow::bail!(
                "tls.cert and tls.key are both needed to serve HTTPS (only {} is set)",
                if settings.cert.is_some() {
                    "tls.cert"
                } else {
                    "tls.key"
                }
            );
        };
        if settings.self_signed {
            // Files named explicitly are made when missing, never replaced.
            let replaceable = settings.cert.is_none() && settings.key.is_none();
            ensure_self_signed(&cert, &key, listen, replaceable)?;
        }
        let source = CertSource::load(
            Named {
                setting: "tls.cert",
                path: &cert,
            },
            Named {
                setting: "tls.key",
                path: &key,
            },
        )?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(PROTOCOLS)?;
        let builder = match &settings.client_ca {
            Some(ca) => {
                let roots = files::read_roots(Named {
                    setting: "tls.client_ca",
                    path: ca,
                })?;
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider(),
                )
                .build()?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder.with_cert_resolver(source.clone());
        Ok(Some(ServerTls {
            config: Arc::new(config),
            source,
            mutual: settings.client_ca.is_some(),
        }))
    }

    /// The rustls configuration, for `HttpServer::listen_rustls_0_23`.
    pub fn config(&self) -> rustls::ServerConfig {
        (*self.config).clone()
    }

    /// The certificate and key, reloaded in place.
    pub fn source(&self) -> &Arc<CertSource> {
        &self.source
    }

    /// Whether clients must present a certificate.
    pub fn mutual(&self) -> bool {
        self.mutual
    }

    /// Reloads the certificate on SIGHUP and when its files change (see [`reload::watch`]).
    pub fn watch(&self) {
        reload::watch(std::slice::from_ref(&self.source));
    }
}

/// Makes a self-signed certificate at `cert` and `key` unless a usable one is there.
fn ensure_self_signed(
    cert: &Path,
    key: &Path,
    listen: &str,
    replaceable: bool,
) -> anyhow::Result<()> {
    let usable = files::Identity::read(
        Named {
            setting: "tls.cert",
            path: cert,
        },
        Named {
            setting: "tls.key",
            path: key,
        },
    );
    if usable.is_ok() || (!replaceable && (cert.exists() || key.exists())) {
        // A pair named in the settings that cannot be used is reported as such by the caller.
        return Ok(());
    }
    let mut names = generate::local_names();
    if let Some((host, _)) = listen.rsplit_once(':') {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if !host.is_empty() && host != "0.0.0.0" && host != "::" {
            names.push(host.to_string());
        }
    }
    let pair = generate::self_signed(&names)?;
    generate::write_pair(&pair, cert, key, replaceable)?;
    tracing::warn!(
        cert = %cert.display(),
        names = ?names,
        "serving HTTPS with a self-signed certificate made here; clients must trust this file (e.g. curl --cacert)"
    );
    Ok(())
}
