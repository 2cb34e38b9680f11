//! The TLS side of a client: which servers it trusts, and the certificate it presents when the
//! server asks for one (mutual TLS).

use crate::files::{self, Named};
use crate::reload::CertSource;
use crate::{provider, PROTOCOLS};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

/// How a client speaks TLS: the CA bundle it checks servers against (the system's when unset)
/// and the certificate and key it presents when asked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientTlsSettings {
    /// PEM CA bundle the server's certificate must chain to; the system's roots when unset.
    pub ca: Option<PathBuf>,
    /// PEM client certificate chain, presented when the server asks (mutual TLS).
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// Check every server's certificate for this name instead of the host in its URL (workers
    /// found in the fleet table are reached by address or container name, which one
    /// certificate for all of them cannot list).
    pub server_name: Option<String>,
}

/// A client's TLS configuration, with its certificate (if any) reloaded in place.
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// The rustls configuration.
    pub config: Arc<rustls::ClientConfig>,
    /// The client certificate, when one is presented.
    pub source: Option<Arc<CertSource>>,
}

/// The names settings go by in messages: `[worker_tls]` keys or vaticctl's flags.
#[derive(Debug, Clone, Copy)]
pub struct SettingNames {
    /// The CA bundle's.
    pub ca: &'static str,
    /// The certificate's.
    pub cert: &'static str,
    /// The key's.
    pub key: &'static str,
    /// The server name's.
    pub server_name: &'static str,
}

impl ClientTls {
    /// Reads and checks the files `settings` name; a missing, unreadable, expired or mismatched
    /// file is an error naming it as `names` spell it.
    pub fn new(settings: &ClientTlsSettings, names: SettingNames) -> anyhow::Result<ClientTls> {
        let roots = match &settings.ca {
            Some(ca) => files::read_roots(Named {
                setting: names.ca,
                path: ca,
            })?,
            None => system_roots(),
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(PROTOCOLS)?;
        let builder = match &settings.server_name {
            None => builder.with_root_certificates(roots),
            Some(name) => {
                let name = ServerName::try_from(name.clone()).map_err(|_| {
                    anyhow::anyhow!(
                        "{} '{name}' is not a DNS name or IP address",
                        names.server_name
                    )
                })?;
                let inner =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
                        .build()?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(AsName { inner, name }))
            }
        };
        let (config, source) = match (&settings.cert, &settings.key) {
            (Some(cert), Some(key)) => {
                let source = CertSource::load(
                    Named {
                        setting: names.cert,
                        path: cert,
                    },
                    Named {
                        setting: names.key,
                        path: key,
                    },
                )?;
                (
                    builder.with_client_cert_resolver(source.clone()),
                    Some(source),
                )
            }
            (None, None) => (builder.with_no_client_auth(), None),
            (Some(_), None) => anyhow::bail!("{} is set but {} is not", names.cert, names.key),
            (None, Some(_)) => anyhow::bail!("{} is set but {} is not", names.key, names.cert),
        };
        Ok(ClientTls {
            config: Arc::new(config),
            source,
        })
    }
}

/// The system's trusted roots (an empty store, with a warning, when none can be read).
fn system_roots() -> rustls::RootCertStore {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!(error = %e, "a system CA certificate could not be read");
    }
    let mut roots = rustls::RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    if ignored > 0 {
        tracing::debug!(added, ignored, "system CA certificates rustls cannot use");
    }
    roots
}

/// Checks a server's certificate as usual, but for `name` rather than the host connected to.
#[derive(Debug)]
struct AsName {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for AsName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _host: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
