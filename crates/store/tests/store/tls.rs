//! PostgreSQL over TLS: a server of its own, started from the installed binaries with a
//! certificate from a CA made here, reached with `sslmode=verify-full`.

use std::path::{Path, PathBuf};
use std::process::Command;
use vatic_store::{ConnectOptions, Store};
use vatic_tls::generate::{self, Authority, Usage};

/// A PostgreSQL binary of the installed server.
fn pg_bin(name: &str) -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("the PostgreSQL server binaries (Debian: apt-get install -y postgresql)")
        .filter_map(|d| Some(d.ok()?.path().join("bin").join(name)))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found
        .pop()
        .unwrap_or_else(|| panic!("no {name} under /usr/lib/postgresql"))
}

/// The command `bin args` run as an unprivileged user when this test runs as root
/// (PostgreSQL refuses root).
fn as_server_user(bin: &Path) -> Command {
    if rustix::process::geteuid().is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "nobody", "--"]).arg(bin);
        cmd
    } else {
        Command::new(bin)
    }
}

/// A throwaway PostgreSQL cluster serving TLS on 127.0.0.1; stopped when dropped.
struct TlsPostgres {
    dir: tempfile::TempDir,
    port: u16,
}

impl TlsPostgres {
    fn start(ca: &Authority) -> TlsPostgres {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let pair = ca
            .issue(Usage::Server, "postgres", &["localhost".to_string()], 1)
            .unwrap();
        generate::write_pair(
            &pair,
            &dir.path().join("server.crt"),
            &dir.path().join("server.key"),
            false,
        )
        .unwrap();
        if rustix::process::geteuid().is_root() {
            // The server's user owns its folder and its key.
            let nobody = Some(65534);
            for path in [
                dir.path(),
                &dir.path().join("server.crt"),
                &dir.path().join("server.key"),
            ] {
                std::os::unix::fs::chown(path, nobody, None).unwrap();
            }
        }
        let initdb = as_server_user(&pg_bin("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust"])
            .output()
            .unwrap();
        assert!(initdb.status.success(), "{initdb:?}");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let options = format!(
            "-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={dir} \
             -c ssl=on -c ssl_cert_file={dir}/server.crt -c ssl_key_file={dir}/server.key",
            dir = dir.path().display()
        );
        let started = as_server_user(&pg_bin("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.path().join("log"))
            .args(["-w", "-t", "60", "-o", &options, "start"])
            .output()
            .unwrap();
        assert!(started.status.success(), "{started:?}");
        TlsPostgres { dir, port }
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let _ = as_server_user(&pg_bin("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

#[tokio::test]
async fn postgres_over_tls_checks_the_server_certificate() {
    let ca = Authority::new("database CA", 1).unwrap();
    let server = TlsPostgres::start(&ca);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, &ca.pair().cert_pem).unwrap();
    let url = |host: &str, mode: &str, root: &Path| {
        format!(
            "postgres://postgres@{host}:{}/postgres?sslmode={mode}&sslrootcert={}",
            server.port,
            root.display()
        )
    };

    let store = Store::open(
        &ConnectOptions::new(url("localhost", "verify-full", &ca_file)),
        true,
    )
    .await
    .expect("verify-full against the CA that signed the server");
    store.close().await;
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&url("localhost", "verify-full", &ca_file))
        .await
        .unwrap();
    let encrypted: bool =
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert!(encrypted, "the connection is not encrypted");

    // Another CA: refused, and the error says why.
    let other = dir.path().join("other.crt");
    std::fs::write(
        &other,
        Authority::new("other", 1).unwrap().pair().cert_pem.as_str(),
    )
    .unwrap();
    let err = Store::open(
        &ConnectOptions::new(url("localhost", "verify-full", &other)),
        false,
    )
    .await
    .err()
    .expect("an unknown CA is refused");
    assert!(format!("{err:?}").contains("UnknownIssuer"), "{err:?}");
    // An address the certificate does not name: verify-full refuses it. (sqlx 0.8.6 refuses it
    // under verify-ca too, launchbadge/sqlx#3793; docs/security.md says so.)
    let err = Store::open(
        &ConnectOptions::new(url("127.0.0.1", "verify-full", &ca_file)),
        false,
    )
    .await
    .err()
    .expect("verify-full refuses a name the certificate lacks");
    assert!(format!("{err:?}").contains("NotValidForName"), "{err:?}");
}
