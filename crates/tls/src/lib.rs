//! TLS for every vatic listener and client, with rustls and its ring provider, TLS 1.2 and 1.3
//! only: certificate files read and checked (a bad one is named), a certificate reloaded in
//! place on SIGHUP and when its files change, the `[tls]` settings of a listener, client
//! configurations with mutual TLS, and certificates made here (an internal CA, a self-signed
//! certificate).

#![forbid(unsafe_code)]

pub mod client;
pub mod files;
pub mod generate;
pub mod reload;
pub mod server;

pub use client::{ClientTls, ClientTlsSettings, SettingNames};
pub use files::{FileError, Named};
pub use reload::CertSource;
pub use server::{ServerTls, TlsSettings};

use std::sync::Arc;

/// The protocol versions vatic speaks: TLS 1.2 and 1.3.
pub const PROTOCOLS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The crypto provider of every TLS configuration here: ring, the provider reqwest and sqlx use
/// here too. rustls marks it deprecated because it offers no post-quantum key exchange (the
/// aws-lc-rs provider does, at the cost of building aws-lc from C); the key exchanges it does
/// offer (X25519, P-256, P-384) are the classical ones. See docs/security.md.
#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
