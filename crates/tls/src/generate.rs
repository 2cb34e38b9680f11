//! Certificates made here: an internal CA and the server and client certificates it signs
//! (`vaticctl certs init`), and a self-signed certificate for trying HTTPS on one machine.

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::io::Write;
use std::path::Path;
use time::{Duration, OffsetDateTime};

/// A certificate and its private key, in PEM.
#[derive(Debug, Clone)]
pub struct Pair {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: String,
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A server's (TLS server authentication).
    Server,
    /// A client's (TLS client authentication, for mutual TLS).
    Client,
}

/// The names a certificate for this machine covers.
pub fn local_names() -> Vec<String> {
    ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec()
}

/// A certificate authority made here, which signs the certificates of one deployment.
pub struct Authority {
    pair: Pair,
    issuer: Issuer<'static, KeyPair>,
}

/// The validity period from an hour ago (clocks differ a little) for `days` days.
fn validity(params: &mut CertificateParams, days: u32) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(i64::from(days));
}

impl Authority {
    /// A new CA named `name`, valid for `days` days.
    pub fn new(name: &str, days: u32) -> anyhow::Result<Authority> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, days);
        let cert = params.self_signed(&key)?;
        let pair = Pair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        Ok(Authority {
            pair,
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA of an existing certificate and key (`ca.crt` and `ca.key` of `certs init`).
    pub fn from_pem(pair: Pair) -> anyhow::Result<Authority> {
        let key = KeyPair::from_pem(&pair.key_pem).context("the CA key")?;
        let issuer = Issuer::from_ca_cert_pem(&pair.cert_pem, key).context("the CA certificate")?;
        Ok(Authority { pair, issuer })
    }

    /// The CA's certificate and key.
    pub fn pair(&self) -> &Pair {
        &self.pair
    }

    /// A certificate for `usage` named `name` (its common name) covering `names` (DNS names
    /// and IP addresses), valid for `days` days, signed by this CA.
    pub fn issue(
        &self,
        usage: Usage,
        name: &str,
        names: &[String],
        days: u32,
    ) -> anyhow::Result<Pair> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.to_vec())
            .with_context(|| format!("certificate names {names:?}"))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![match usage {
            Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        validity(&mut params, days);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Pair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A self-signed server certificate covering `names`, valid for a year.
pub fn self_signed(names: &[String]) -> anyhow::Result<Pair> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())
        .with_context(|| format!("certificate names {names:?}"))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "vatic self-signed");
    validity(&mut params, 365);
    let cert = params.self_signed(&key)?;
    Ok(Pair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Writes `contents` to `path`, readable by its owner only when `private`; refuses to replace
/// an existing file unless `overwrite`. Makes the parent folder when missing.
pub fn write_file(
    path: &Path,
    contents: &str,
    private: bool,
    overwrite: bool,
) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot make the folder {}", parent.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options
        .write(true)
        .mode(if private { 0o600 } else { 0o644 });
    if overwrite {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => anyhow::anyhow!(
            "{} already exists (pass --force to replace it)",
            path.display()
        ),
        _ => anyhow::anyhow!("cannot write {}: {e}", path.display()),
    })?;
    if private {
        // An existing file keeps its mode when truncated: set it.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(contents.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Writes a certificate and its key (the key readable by its owner only).
pub fn write_pair(pair: &Pair, cert: &Path, key: &Path, overwrite: bool) -> anyhow::Result<()> {
    write_file(key, &pair.key_pem, true, overwrite)?;
    write_file(cert, &pair.cert_pem, false, overwrite)
}
