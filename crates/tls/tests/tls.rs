//! Certificates made here, read back and checked, and real TLS handshakes on loopback between
//! the server and client configurations.

use rcgen::{CertificateParams, KeyPair};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use vatic_tls::generate::{self, Authority, Usage};
use vatic_tls::{ClientTls, ClientTlsSettings, ServerTls, SettingNames, TlsSettings};

const NAMES: SettingNames = SettingNames {
    ca: "ca",
    cert: "cert",
    key: "key",
    server_name: "server_name",
};

/// A CA and, in `dir`, `server.crt`/`.key` (localhost, 127.0.0.1) and `client.crt`/`.key`.
struct Pki {
    dir: tempfile::TempDir,
    ca: Authority,
}

impl Pki {
    fn new(ca_name: &str) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::new(ca_name, 30).unwrap();
        let pki = Pki { dir, ca };
        generate::write_file(&pki.path("ca.crt"), &pki.ca.pair().cert_pem, false, false).unwrap();
        pki.issue("server", Usage::Server, &generate::local_names());
        pki.issue("client", Usage::Client, &[]);
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn issue(&self, name: &str, usage: Usage, names: &[String]) {
        let pair = self.ca.issue(usage, name, names, 30).unwrap();
        generate::write_pair(
            &pair,
            &self.path(&format!("{name}.crt")),
            &self.path(&format!("{name}.key")),
            true,
        )
        .unwrap();
    }

    fn server(&self, mutual: bool) -> TlsSettings {
        TlsSettings {
            cert: Some(self.path("server.crt")),
            key: Some(self.path("server.key")),
            client_ca: mutual.then(|| self.path("ca.crt")),
            self_signed: false,
        }
    }

    fn client(&self, with_cert: bool) -> ClientTlsSettings {
        ClientTlsSettings {
            ca: Some(self.path("ca.crt")),
            cert: with_cert.then(|| self.path("client.crt")),
            key: with_cert.then(|| self.path("client.key")),
            server_name: None,
        }
    }
}

fn refused(settings: &TlsSettings) -> String {
    ServerTls::from_settings(settings, "127.0.0.1:0")
        .expect_err("refused")
        .to_string()
}

#[test]
fn a_missing_unreadable_expired_or_mismatched_file_is_named() {
    let pki = Pki::new("test CA");
    let missing = TlsSettings {
        cert: Some(pki.path("nope.crt")),
        ..pki.server(false)
    };
    let err = refused(&missing);
    assert!(
        err.starts_with(&format!(
            "tls.cert {}: cannot read it",
            pki.path("nope.crt").display()
        )),
        "{err}"
    );

    std::fs::write(pki.path("junk.crt"), "not a certificate\n").unwrap();
    let junk = TlsSettings {
        cert: Some(pki.path("junk.crt")),
        ..pki.server(false)
    };
    let err = refused(&junk);
    assert!(err.contains("junk.crt: holds no PEM certificate"), "{err}");

    // A key that is not the certificate's.
    let mismatched = TlsSettings {
        key: Some(pki.path("client.key")),
        ..pki.server(false)
    };
    let err = refused(&mismatched);
    assert!(
        err.starts_with(&format!(
            "tls.key {}: the key does not match",
            pki.path("client.key").display()
        )),
        "{err}"
    );

    // A certificate that expired yesterday.
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(30);
    params.not_after = now - time::Duration::days(1);
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(pki.path("old.crt"), cert.pem()).unwrap();
    std::fs::write(pki.path("old.key"), key.serialize_pem()).unwrap();
    let expired = TlsSettings {
        cert: Some(pki.path("old.crt")),
        key: Some(pki.path("old.key")),
        ..TlsSettings::default()
    };
    let err = refused(&expired);
    assert!(err.contains("old.crt: the certificate expired on"), "{err}");

    let half = TlsSettings {
        key: None,
        ..pki.server(false)
    };
    assert!(refused(&half).contains("only tls.cert is set"));
    let ca_alone = TlsSettings {
        client_ca: Some(pki.path("ca.crt")),
        ..TlsSettings::default()
    };
    assert!(refused(&ca_alone).contains("tls.client_ca"));
    let bad_ca = TlsSettings {
        client_ca: Some(pki.path("server.key")),
        ..pki.server(true)
    };
    assert!(refused(&bad_ca).starts_with("tls.client_ca "));

    let err = ClientTls::new(
        &ClientTlsSettings {
            cert: Some(pki.path("client.crt")),
            ..ClientTlsSettings::default()
        },
        NAMES,
    )
    .unwrap_err();
    assert_eq!(err.to_string(), "cert is set but key is not");
    assert!(ServerTls::from_settings(&TlsSettings::default(), "x")
        .unwrap()
        .is_none());
}

/// Serves `tls` on a loopback port: each connection reads a line and answers it, then closes.
async fn echo_server(tls: &ServerTls) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls.config()));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(stream).await {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = tls.read(&mut buf).await {
                        if n == 0 || tls.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// Connects with `client` to `addr` as `name`, sends a line and reads the echo; the error of
/// whichever step failed otherwise.
async fn exchange(
    client: &ClientTls,
    addr: std::net::SocketAddr,
    name: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let connector = tokio_rustls::TlsConnector::from(client.config.clone());
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let mut tls = connector
        .connect(name, stream)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
    assert_eq!(&buf, b"ping");
    Ok(tls)
}

fn serial(tls: &tokio_rustls::client::TlsStream<TcpStream>) -> Vec<u8> {
    let cert = &tls.get_ref().1.peer_certificates().unwrap()[0];
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).unwrap();
    parsed.raw_serial().to_vec()
}

#[tokio::test]
async fn handshakes_mutual_tls_and_a_reload_in_place() {
    let pki = Pki::new("test CA");
    let server = ServerTls::from_settings(&pki.server(true), "127.0.0.1:0")
        .unwrap()
        .unwrap();
    let addr = echo_server(&server).await;

    let client = ClientTls::new(&pki.client(true), NAMES).unwrap();
    let first = exchange(&client, addr, "127.0.0.1").await.unwrap();
    let version = first.get_ref().1.protocol_version().unwrap();
    assert_eq!(version, rustls::ProtocolVersion::TLSv1_3);

    // No client certificate: the server refuses (TLS 1.3 reports it after the handshake).
    let anonymous = ClientTls::new(&pki.client(false), NAMES).unwrap();
    assert!(exchange(&anonymous, addr, "127.0.0.1").await.is_err());

    // A client that trusts another CA refuses the server.
    let other = Pki::new("another CA");
    let stranger = ClientTls::new(&other.client(false), NAMES).unwrap();
    let err = exchange(&stranger, addr, "127.0.0.1").await.unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");

    // A name the certificate does not cover, then the same checked as a name it does.
    let err = exchange(&client, addr, "worker-7").await.unwrap_err();
    assert!(err.contains("not valid for name \"worker-7\""), "{err}");
    let renamed = ClientTls::new(
        &ClientTlsSettings {
            server_name: Some("localhost".into()),
            ..pki.client(true)
        },
        NAMES,
    )
    .unwrap();
    exchange(&renamed, addr, "worker-7").await.unwrap();

    // A new certificate on disk: new connections get it, the open one keeps working.
    let before = serial(&first);
    pki.issue("server", Usage::Server, &generate::local_names());
    assert!(server.source().reload(true));
    // A client of its own: `client` would resume its session, without a certificate.
    let fresh = ClientTls::new(&pki.client(true), NAMES).unwrap();
    let second = exchange(&fresh, addr, "127.0.0.1").await.unwrap();
    assert_ne!(
        serial(&second),
        before,
        "the reloaded certificate is served"
    );
    let mut first = first;
    first.write_all(b"pong").await.unwrap();
    let mut buf = [0u8; 4];
    first.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong");

    // A bad new pair is refused and the good one stays.
    std::fs::write(pki.path("server.key"), "garbage").unwrap();
    assert!(!server.source().reload(true));
    exchange(&client, addr, "127.0.0.1").await.unwrap();
}

#[tokio::test]
async fn a_self_signed_certificate_is_made_once_and_trusted_by_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("tls/self.crt");
    let settings = TlsSettings {
        cert: Some(cert.clone()),
        key: Some(dir.path().join("tls/self.key")),
        client_ca: None,
        self_signed: true,
    };
    let server = ServerTls::from_settings(&settings, "127.0.0.1:0")
        .unwrap()
        .unwrap();
    let made = std::fs::read(&cert).unwrap();
    assert_eq!(mode(&dir.path().join("tls/self.key")), 0o600);
    // A second start reuses it.
    ServerTls::from_settings(&settings, "127.0.0.1:0").unwrap();
    assert_eq!(std::fs::read(&cert).unwrap(), made);
    let addr = echo_server(&server).await;
    let client = ClientTls::new(
        &ClientTlsSettings {
            ca: Some(cert),
            ..ClientTlsSettings::default()
        },
        NAMES,
    )
    .unwrap();
    exchange(&client, addr, "localhost").await.unwrap();
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn files_are_not_replaced_without_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.key");
    generate::write_file(&file, "one", true, false).unwrap();
    let err = generate::write_file(&file, "two", true, false).unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "one");
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    generate::write_file(&file, "two", true, true).unwrap();
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "two");
    assert_eq!(mode(&file), 0o600);
}
