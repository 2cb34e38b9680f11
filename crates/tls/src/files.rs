//! Reading PEM files: certificate chains, private keys and CA bundles, each checked so that a
//! bad file is refused with the setting and the path that name it.

use crate::provider;
use chrono::{DateTime, Utc};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A file that could not be used, with the setting (or flag) that named it.
#[derive(Debug, thiserror::Error)]
#[error("{setting} {}: {problem}", path.display())]
pub struct FileError {
    /// The setting or flag that names the file, e.g. `tls.cert`.
    pub setting: String,
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub problem: String,
}

impl FileError {
    fn new(setting: &str, path: &Path, problem: impl Into<String>) -> FileError {
        FileError {
            setting: setting.to_string(),
            path: path.to_path_buf(),
            problem: problem.into(),
        }
    }
}

/// A setting's file: the name it goes by in messages, and its path.
#[derive(Debug, Clone, Copy)]
pub struct Named<'a> {
    /// The setting or flag, e.g. `tls.cert` or `--cacert`.
    pub setting: &'a str,
    /// The file.
    pub path: &'a Path,
}

impl Named<'_> {
    fn error(&self, problem: impl Into<String>) -> FileError {
        FileError::new(self.setting, self.path, problem)
    }

    fn read(&self) -> Result<Vec<u8>, FileError> {
        std::fs::read(self.path).map_err(|e| self.error(format!("cannot read it: {e}")))
    }
}

/// The validity period of a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// Not valid before this.
    pub not_before: DateTime<Utc>,
    /// Not valid after this.
    pub not_after: DateTime<Utc>,
}

/// Reads the validity period of a DER certificate.
pub fn validity(cert: &CertificateDer<'_>) -> Result<Validity, String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let at = |t: x509_parser::time::ASN1Time| {
        DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
    };
    Ok(Validity {
        not_before: at(parsed.validity().not_before),
        not_after: at(parsed.validity().not_after),
    })
}

/// Reads every certificate of a PEM file; refuses a file with none.
pub fn read_certs(file: Named<'_>) -> Result<Vec<CertificateDer<'static>>, FileError> {
    let pem = file.read()?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file.error(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(file.error("holds no PEM certificate (-----BEGIN CERTIFICATE-----)"));
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub fn read_key(file: Named<'_>) -> Result<PrivateKeyDer<'static>, FileError> {
    let pem = file.read()?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            file.error("holds no PEM private key (-----BEGIN PRIVATE KEY-----)")
        }
        e => file.error(format!("not a PEM private key file: {e}")),
    })
}

/// Reads a CA bundle into a root store; refuses a file with no usable certificate.
pub fn read_roots(file: Named<'_>) -> Result<rustls::RootCertStore, FileError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(file)? {
        roots
            .add(cert)
            .map_err(|e| file.error(format!("holds a certificate that is not a CA: {e}")))?;
    }
    Ok(roots)
}

/// A certificate chain and its private key, read and checked: the chain's first certificate is
/// valid now (not expired, not yet to come) and the key is the one it certifies.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The chain and the key, as rustls uses them.
    pub key: Arc<CertifiedKey>,
    /// The first certificate's validity.
    pub validity: Validity,
}

impl Identity {
    /// Reads and checks `cert` and `key`.
    pub fn read(cert: Named<'_>, key: Named<'_>) -> Result<Identity, FileError> {
        let chain = read_certs(cert)?;
        let validity = validity(&chain[0]).map_err(|e| cert.error(e))?;
        let now = Utc::now();
        if validity.not_after < now {
            return Err(cert.error(format!(
                "the certificate expired on {}",
                validity.not_after.format("%Y-%m-%d %H:%M:%S UTC")
            )));
        }
        if validity.not_before > now {
            return Err(cert.error(format!(
                "the certificate is not valid before {}",
                validity.not_before.format("%Y-%m-%d %H:%M:%S UTC")
            )));
        }
        let private = read_key(key)?;
        let certified =
            CertifiedKey::from_der(chain, private, &provider()).map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => key.error(format!(
                    "the key does not match the certificate in {} {}",
                    cert.setting,
                    cert.path.display()
                )),
                e => key.error(format!("the key cannot be used: {e}")),
            })?;
        Ok(Identity {
            key: Arc::new(certified),
            validity,
        })
    }
}

/// When a file was last changed, to notice a new one: its modification time and length
/// (following symbolic links, as a mounted Kubernetes secret swaps them).
pub fn stamp(path: &Path) -> Option<(std::time::SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}
