//! HTTPS on every port, mutual TLS between the api and its workers, a certificate renewed in
//! place, and bad certificates refused at start: real processes and real handshakes on loopback,
//! with certificates made by `vaticctl certs init`.

use crate::helpers::{binary, cluster_settings, ServerProcess, TestApi};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use vatic_testkit::tls_client;
use vatic_tls::generate::{Authority, Pair, Usage};
use vatic_tls::{ClientTlsSettings, TlsSettings};

/// `vaticctl certs init` into a new folder.
fn certs() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(binary("vaticctl", "vatic-cli"))
        .args(["certs", "init"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    dir
}

fn file(dir: &Path, name: &str) -> String {
    dir.join(name).to_str().unwrap().to_string()
}

/// A worker serving TLS with `worker.crt`; with `mutual`, only to clients `ca.crt` signed.
fn tls_worker(dir: &Path, mutual: bool) -> ServerProcess {
    let (cert, key, ca) = (
        file(dir, "worker.crt"),
        file(dir, "worker.key"),
        file(dir, "ca.crt"),
    );
    let mut env = vec![
        ("VATIC_TLS__CERT", cert.as_str()),
        ("VATIC_TLS__KEY", key.as_str()),
    ];
    if mutual {
        env.push(("VATIC_TLS__CLIENT_CA", ca.as_str()));
    }
    ServerProcess::start_with_env(&env)
}

/// The serial number of the certificate the server presented on `response`'s connection.
fn served_serial(response: &reqwest::Response) -> Vec<u8> {
    let info = response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .expect("TLS info");
    let der = info.peer_certificate().expect("a server certificate");
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.raw_serial().to_vec()
}

#[tokio::test]
async fn a_cluster_serves_https_with_mutual_tls_to_its_workers() {
    let dir = certs();
    let dir = dir.path();
    let worker = tls_worker(dir, true);
    assert!(
        worker.url.starts_with("https://127.0.0.1:"),
        "{}",
        worker.url
    );

    let mut settings = cluster_settings(vec![worker.url.clone()]);
    settings.server.tls = TlsSettings {
        cert: Some(dir.join("api.crt")),
        key: Some(dir.join("api.key")),
        ..TlsSettings::default()
    };
    settings.server.metrics_listen = Some("127.0.0.1:0".into());
    settings.worker_tls = ClientTlsSettings {
        ca: Some(dir.join("ca.crt")),
        cert: Some(dir.join("api-client.crt")),
        key: Some(dir.join("api-client.key")),
        server_name: None,
    };
    let api = TestApi::start(settings, None).await;
    assert!(api.base.starts_with("https://"), "{}", api.base);

    // Client -> api -> worker, TLS on both hops; outputs as computed independently.
    let reference = vatic_testkit::demo_reference();
    let (status, body) = api
        .post_json(
            "/v2/models/breast_cancer/infer",
            &reference.v2_request(0..3),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    reference.check_response(&body, 0..3);

    // The metrics port serves the same certificate, and the expiry it follows.
    let metrics = api.app.server.metrics_addr.expect("a metrics port");
    let text = api
        .client
        .get(format!("https://{metrics}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let expiry =
        vatic_testkit::metric(&text, "vatic_tls_certificate_expiry_timestamp_seconds", &[])
            .expect("the expiry gauge");
    let in_days = (expiry - chrono::Utc::now().timestamp() as f64) / 86400.0;
    assert!((364.0..=366.0).contains(&in_days), "{in_days}");

    // Plain HTTP to the TLS port fails at once, and the port goes on serving.
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let err = plain
        .get(format!("http://{}/v2/health/live", api.app.server.addr))
        .send()
        .await
        .expect_err("plain HTTP is not answered");
    assert!(!err.is_timeout(), "{err:?}");
    assert_eq!(api.get("/v2/health/live").await.0, 200);

    // A client that trusts another CA refuses the api.
    let other = certs();
    let stranger = tls_client(&other.path().join("api.crt"), false);
    let err = stranger
        .get(format!("{}/v2/health/live", api.base))
        .send()
        .await
        .expect_err("an unknown CA");
    assert!(format!("{err:?}").contains("UnknownIssuer"), "{err:?}");

    // The worker takes only clients with a certificate its CA signed.
    let without_cert = tls_client(&dir.join("worker.crt"), false);
    let refused = without_cert
        .get(format!("{}/v2/health/live", worker.url))
        .send()
        .await;
    assert!(
        refused.is_err(),
        "a worker answered a client without a certificate"
    );
    // Nor a certificate another CA signed.
    let foreign = vatic_tls::ClientTls::new(
        &ClientTlsSettings {
            ca: Some(dir.join("ca.crt")),
            cert: Some(other.path().join("api-client.crt")),
            key: Some(other.path().join("api-client.key")),
            server_name: None,
        },
        vatic_api::settings::WORKER_TLS_NAMES,
    )
    .unwrap();
    let with_other_cert = reqwest::Client::builder()
        .use_preconfigured_tls((*foreign.config).clone())
        .build()
        .unwrap();
    assert!(with_other_cert
        .get(format!("{}/v2/health/live", worker.url))
        .send()
        .await
        .is_err());
    let with_cert = tls_client(&dir.join("worker.crt"), true);
    let live = with_cert
        .get(format!("{}/v2/health/live", worker.url))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    api.stop().await;
}

#[tokio::test]
async fn an_api_without_a_client_certificate_cannot_use_mutual_tls_workers() {
    let dir = certs();
    let dir = dir.path();
    let worker = tls_worker(dir, true);
    let mut settings = cluster_settings(vec![worker.url.clone()]);
    settings.worker_tls = ClientTlsSettings {
        ca: Some(dir.join("ca.crt")),
        ..ClientTlsSettings::default()
    };
    let app = vatic_api::Application::build(&settings).await.unwrap();
    app.spawn();
    let client = reqwest::Client::new();
    let url = format!("http://{}/v2/models/breast_cancer/infer", app.server.addr);
    let request = vatic_testkit::demo_reference().v2_request(0..1);
    let response = client.post(&url).json(&request).send().await.unwrap();
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(status, 503, "{body}");
    app.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn a_renewed_certificate_reaches_new_connections_while_open_ones_keep_theirs() {
    let dir = certs();
    let dir = dir.path();
    let worker = tls_worker(dir, false);
    let url = format!("{}/v2/health/live", worker.url);
    let old = tls_client(&dir.join("worker.crt"), false);
    let first = old.get(&url).send().await.unwrap();
    let before = served_serial(&first);
    first.bytes().await.unwrap();

    // A new certificate from the same CA, written over the files, then SIGHUP.
    let ca = Authority::from_pem(Pair {
        cert_pem: std::fs::read_to_string(dir.join("ca.crt")).unwrap(),
        key_pem: std::fs::read_to_string(dir.join("ca.key")).unwrap(),
    })
    .unwrap();
    let renewed = ca
        .issue(
            Usage::Server,
            "vatic worker",
            &vatic_tls::generate::local_names(),
            30,
        )
        .unwrap();
    vatic_tls::generate::write_pair(
        &renewed,
        &dir.join("worker.crt"),
        &dir.join("worker.key"),
        true,
    )
    .unwrap();
    let pid = worker.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());

    // New connections get the new certificate.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let fresh = tls_client(&dir.join("worker.crt"), false);
        let response = fresh.get(&url).send().await.unwrap();
        if served_serial(&response) != before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate is not served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The connection opened before goes on with the certificate it started with.
    let again = old.get(&url).send().await.unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(served_serial(&again), before);
    // The reload is logged (the log is read by a thread of its own: wait for it).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !worker
        .logs
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("TLS certificate reloaded"))
    {
        assert!(Instant::now() < deadline, "the reload is not logged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs a worker with `env` and returns what it printed, once it exited.
fn failed_start(env: &[(&str, PathBuf)]) -> String {
    let mut cmd = ServerProcess::worker_command(&[]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .current_dir(vatic_testkit::root())
        .output()
        .expect("running the worker");
    assert!(!out.status.success(), "the worker started");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_missing_or_mismatched_certificate_stops_the_start_naming_the_file() {
    let dir = certs();
    let dir = dir.path();
    let missing = dir.join("nope.crt");
    let printed = failed_start(&[
        ("VATIC_TLS__CERT", missing.clone()),
        ("VATIC_TLS__KEY", dir.join("worker.key")),
    ]);
    assert!(
        printed.contains(&format!("tls.cert {}: cannot read it", missing.display())),
        "{printed}"
    );
    let printed = failed_start(&[
        ("VATIC_TLS__CERT", dir.join("worker.crt")),
        ("VATIC_TLS__KEY", dir.join("api.key")),
    ]);
    assert!(
        printed.contains(&format!(
            "tls.key {}: the key does not match the certificate in tls.cert {}",
            dir.join("api.key").display(),
            dir.join("worker.crt").display()
        )),
        "{printed}"
    );
}
