//! `vaticctl certs init`, and vaticctl over HTTPS with mutual TLS: its client, its load
//! generator, and the errors of a server it does not trust.

use crate::helpers::{vaticctl, RegistryApp, EXAMPLE_CSV};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use vatic_testkit::TestDb;

const FILES: [&str; 12] = [
    "ca.crt",
    "ca.key",
    "nginx.crt",
    "nginx.key",
    "haproxy.crt",
    "haproxy.key",
    "api.crt",
    "api.key",
    "worker.crt",
    "worker.key",
    "api-client.crt",
    "api-client.key",
];

fn init(dir: &Path, more: &[&str]) -> crate::helpers::Run {
    let mut args = vec!["certs", "init", dir.to_str().unwrap()];
    args.extend_from_slice(more);
    vaticctl("http://127.0.0.1:1", &args, None)
}

/// The DNS names and IP addresses a certificate file covers.
fn names(file: &Path) -> Vec<String> {
    let pem = std::fs::read(file).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    let cert = pem.parse_x509().unwrap();
    let san = cert.subject_alternative_name().unwrap().expect("SANs");
    san.value
        .general_names
        .iter()
        .map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => d.to_string(),
            x509_parser::extensions::GeneralName::IPAddress(ip) => match ip.len() {
                4 => std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*ip).unwrap()).to_string(),
                _ => std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*ip).unwrap()).to_string(),
            },
            other => format!("{other:?}"),
        })
        .collect()
}

#[test]
fn certs_init_writes_a_ca_and_its_certificates_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tls");
    let run = init(
        &out,
        &[
            "--api-names",
            "vatic.example.com,10.1.2.3",
            "--haproxy-names",
            "lb.internal",
        ],
    );
    run.assert_ok();
    for file in FILES {
        let mode = std::fs::metadata(out.join(file))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        let want = if file.ends_with(".key") { 0o600 } else { 0o644 };
        assert_eq!(mode, want, "{file}");
    }
    assert!(run.stdout.contains("api.crt: server certificate for localhost, 127.0.0.1, ::1, api, vatic.example.com, 10.1.2.3"), "{}", run.stdout);
    assert_eq!(
        names(&out.join("worker.crt")),
        ["localhost", "127.0.0.1", "::1", "worker"]
    );
    assert_eq!(
        names(&out.join("nginx.crt")),
        ["localhost", "127.0.0.1", "::1", "nginx"]
    );
    assert_eq!(
        names(&out.join("haproxy.crt")),
        ["localhost", "127.0.0.1", "::1", "haproxy", "lb.internal"]
    );

    let before = std::fs::read(out.join("ca.key")).unwrap();
    init(&out, &[]).assert_error(&["ca.crt already exists", "--force"]);
    assert_eq!(std::fs::read(out.join("ca.key")).unwrap(), before);
    init(&out, &["--force"]).assert_ok();
    assert_ne!(std::fs::read(out.join("ca.key")).unwrap(), before);
    init(&out, &["--days", "0"])
        .code
        .filter(|c| *c == 2)
        .expect("clap refuses 0 days");
}

#[test]
fn vaticctl_speaks_https_with_a_client_certificate_and_names_an_untrusted_server() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    init(&tls, &[]).assert_ok();
    let (cert, key, ca) = (tls.join("api.crt"), tls.join("api.key"), tls.join("ca.crt"));
    let app = RegistryApp::start_with(TestDb::sqlite(), |s| {
        s.server.tls = vatic_tls::TlsSettings {
            cert: Some(cert),
            key: Some(key),
            client_ca: Some(ca),
            self_signed: false,
        };
    });
    assert!(app.base.starts_with("https://"), "{}", app.base);
    let path = |f: &str| tls.join(f).to_str().unwrap().to_string();
    let (ca, client_cert, client_key) = (
        path("ca.crt"),
        path("api-client.crt"),
        path("api-client.key"),
    );
    let trusted = [
        "--cacert",
        ca.as_str(),
        "--cert",
        client_cert.as_str(),
        "--key",
        client_key.as_str(),
    ];
    let with = |more: &str| {
        let mut args: Vec<String> = trusted.iter().map(ToString::to_string).collect();
        args.extend(more.split(' ').map(String::from));
        args
    };
    let args = with(&format!("infer breast_cancer --csv {EXAMPLE_CSV} -o json"));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = app.vaticctl(&refs);
    run.assert_ok();
    assert!(run.json()["outputs"].is_array(), "{}", run.stdout);

    // The load generator over TLS: every request answered.
    let args = with("bench breast_cancer -c 2 -n 40 --warmup 0s -o json");
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = app.vaticctl(&refs);
    run.assert_ok();
    let level = &run.json()[0];
    assert_eq!(level["succeeded"], 40, "{}", run.stdout);
    assert_eq!(level["errors"], serde_json::json!({}), "{}", run.stdout);

    // A push streams the file over the same TLS connection settings.
    let args = with("models push cnn testdata/models/cnn/1/model.onnx -o json");
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = app.vaticctl(&refs);
    run.assert_ok();
    assert_eq!(run.json()["version"]["version"], 1, "{}", run.stdout);

    // A server whose CA it does not know: the error says what to pass.
    app.vaticctl(&["models", "list"]).assert_error(&[
        "TLS handshake",
        app.base.as_str(),
        "--cacert",
    ]);
    // Without a client certificate the server refuses the handshake.
    let run = app.vaticctl(&["--cacert", ca.as_str(), "models", "list"]);
    assert_eq!(run.code, Some(1), "{run:#?}");
    // A file that is not there is named.
    app.vaticctl(&["--cacert", "/nonexistent/ca.crt", "models", "list"])
        .assert_error(&["--cacert /nonexistent/ca.crt: cannot read it"]);
    let run = app.vaticctl(&["--cert", client_cert.as_str(), "models", "list"]);
    assert_eq!(run.code, Some(2), "clap wants --key with --cert: {run:#?}");
}

#[test]
fn certs_init_lists_what_it_wrote_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tls");
    let run = init(&out, &["--output", "json"]);
    let written = run.assert_ok().json();
    let files: Vec<&str> = written
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["file"].as_str().unwrap())
        .collect();
    assert_eq!(files.len(), 6, "{written}");
    for (w, file) in written.as_array().unwrap().iter().zip(&files) {
        assert!(Path::new(file).is_file(), "{file}");
        match w["kind"].as_str().unwrap() {
            "ca" => assert!(file.ends_with("ca.crt")),
            "server" | "client" => {
                let listed: Vec<String> = w["names"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|n| n.as_str().unwrap().to_string())
                    .collect();
                assert_eq!(listed, names(Path::new(file)), "{file}");
            }
            other => panic!("{other}"),
        }
    }
}

#[test]
fn completion_scripts_come_out_for_each_shell_and_a_data_key_as_json() {
    for shell in ["bash", "zsh", "fish"] {
        let run = vaticctl("http://127.0.0.1:1", &["completions", shell], None);
        assert!(run.assert_ok().stdout.contains("rollout"), "{shell}");
    }
    let run = vaticctl("http://127.0.0.1:1", &["completions", "tcsh"], None);
    assert_eq!(run.code, Some(2), "{run:#?}");
    let run = vaticctl(
        "http://127.0.0.1:1",
        &["predictions", "data-key", "--id", "k9", "-o", "json"],
        None,
    );
    let key = run.assert_ok().json();
    assert_eq!(key["id"], "k9");
    assert!(key["entry"].as_str().unwrap().starts_with("k9="), "{key}");
}
