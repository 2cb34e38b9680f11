//! The compose profile "logging": the api and worker services of docker-compose.yml, run as
//! processes with the compose file's own command and environment (HTTPS, mutual TLS to the
//! workers, on the certificates the compose file's `certs` service makes), write their log files
//! where Filebeat (elk/filebeat.yml) reads them, and every line they write fits the
//! Elasticsearch mapping the profile loads (elk/vatic-logs.index-template.json), which
//! docs/operations.md lists field by field.

use crate::helpers::{binary, ServerProcess};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use vatic_testkit::TestDb;

/// Where the compose file mounts the shared `logs` volume.
const LOG_VOLUME: &str = "logs";
/// The volume of the certificates, and where the compose file mounts it.
const CERTS_VOLUME: &str = "certs";
const CERTS_DIR: &str = "/certs";
/// The volume the CA's key is moved to, which only the `certs` service mounts.
const CA_KEY_DIR: &str = "/certs-ca";
/// Where the `certs` service copies the CA's certificate for clients (the host's client/).
const EXPORT_DIR: &str = "/export";
/// Where compose mounts the secrets.
const SECRETS_DIR: &str = "/run/secrets";

fn read(path: &str) -> String {
    std::fs::read_to_string(vatic_testkit::root().join(path)).expect(path)
}

/// Compose's variable substitution for the forms docker-compose.yml uses: `${NAME}`,
/// `${NAME:-default}` and `${NAME:?message}`, with `vars` as the environment.
fn interpolate(text: &str, vars: &HashMap<&str, &str>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = start
            + rest[start..]
                .find('}')
                .expect("an unclosed ${ in the compose file");
        let expr = &rest[start + 2..end];
        let (name, default) = match expr.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (expr.split(":?").next().unwrap(), None),
        };
        match (vars.get(name), default) {
            (Some(v), _) => out.push_str(v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => panic!("the compose file needs {name}, which the test does not set"),
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// A YAML file of the repository as JSON, with merge keys (`<<: *anchor`) applied.
fn yaml(text: &str) -> Value {
    let mut doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).expect("valid YAML");
    doc.apply_merge().expect("merge keys");
    serde_json::to_value(doc).expect("YAML with string keys")
}

fn compose() -> Value {
    yaml(&interpolate(&read("docker-compose.yml"), &HashMap::new()))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("a list, not {v}"))
        .iter()
        .map(|s| s.as_str().expect("a string").to_string())
        .collect()
}

/// The folder a service mounts the `logs` volume on, and whether read-only.
fn log_mount(service: &Value) -> (String, bool) {
    let mount = strings(&service["volumes"])
        .into_iter()
        .find(|v| v.starts_with(&format!("{LOG_VOLUME}:")))
        .unwrap_or_else(|| panic!("no {LOG_VOLUME} volume in {service}"));
    let parts: Vec<&str> = mount.split(':').collect();
    (parts[1].to_string(), parts.get(2) == Some(&"ro"))
}

/// The first admin key of the api under test.
const ADMIN_KEY: &str = "elk-test-admin-key-0123456789abcdef";

/// Runs the `certs` service's script on this machine, with `certs`, `ca_key` and `export` in
/// place of its volumes and `rotate` as `CERTS_ROTATE`; returns what it printed.
fn run_certs(compose: &Value, certs: &Path, ca_key: &Path, export: &Path, rotate: bool) -> String {
    let out = certs_script(compose, certs, ca_key, export, rotate);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// [`run_certs`], its outcome whatever it is.
fn certs_script(
    compose: &Value,
    certs: &Path,
    ca_key: &Path,
    export: &Path,
    rotate: bool,
) -> std::process::Output {
    let service = &compose["services"]["certs"];
    let command = strings(&service["command"]);
    assert_eq!(command[..2], ["sh", "-ec"], "{service}");
    assert_eq!(
        strings(&service["volumes"]),
        [
            format!("{CERTS_VOLUME}:{CERTS_DIR}"),
            format!("certs-ca:{CA_KEY_DIR}"),
            format!("./client:{EXPORT_DIR}"),
        ]
    );
    // Compose passes `$$` on as `$`. The folders are replaced in one pass each: the local
    // path of one may hold another's name.
    let script = command[2]
        .replace("$$", "$")
        .split(CA_KEY_DIR)
        .map(|part| {
            part.split(EXPORT_DIR)
                .map(|p| p.replace(CERTS_DIR, &certs.display().to_string()))
                .collect::<Vec<_>>()
                .join(&export.display().to_string())
        })
        .collect::<Vec<_>>()
        .join(&ca_key.display().to_string());
    let vaticctl = binary("vaticctl", "vatic-cli");
    let path = format!(
        "{}:{}",
        vaticctl.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("sh");
    cmd.args(["-ec", &script]).env("PATH", path);
    for (k, v) in service["environment"]
        .as_object()
        .expect("an environment map")
    {
        cmd.env(k, v.as_str().expect("a string value"));
    }
    if rotate {
        cmd.env("CERTS_ROTATE", "1");
    }
    cmd.output().unwrap()
}

/// The local folders in place of a service's mounts.
struct Mounts {
    /// The `certs` volume.
    certs: PathBuf,
    /// The compose secrets, one file each.
    secrets: PathBuf,
}

/// Runs a compose service's command as a process on this machine: `/etc/vatic/` is the
/// repository's config/, `/certs/` and `/run/secrets/` are `mounts`' folders, listeners are on
/// 127.0.0.1:0, and `env` overrides the service's environment (the database and the log
/// folder, which name compose's hosts and volumes).
fn run_service(
    compose: &Value,
    name: &str,
    env: &[(&str, String)],
    mounts: &Mounts,
    workdir: &Path,
) -> ServerProcess {
    let service = &compose["services"][name];
    let command = strings(&service["command"]);
    // vatic-api and vatic-worker are built by packages of the same name.
    let program = command[0].as_str();
    let mut cmd = Command::new(binary(program, program));
    let config = vatic_testkit::root().join("config");
    for arg in &command[1..] {
        match arg.strip_prefix("/etc/vatic/") {
            Some(file) => cmd.arg(config.join(file)),
            None => cmd.arg(arg),
        };
    }
    cmd.args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"]);
    for (k, v) in service["environment"]
        .as_object()
        .expect("an environment map")
    {
        let v = v.as_str().expect("a string value");
        if let Some(file) = v.strip_prefix(&format!("{CERTS_DIR}/")) {
            cmd.env(k, mounts.certs.join(file));
        } else if let Some(file) = v.strip_prefix(&format!("{SECRETS_DIR}/")) {
            let listed = strings(&service["secrets"]);
            assert!(
                listed.iter().any(|s| s == file),
                "{name} reads the secret {file}, which it does not list"
            );
            cmd.env(k, mounts.secrets.join(file));
        } else {
            cmd.env(k, v);
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let ready = if program == "vatic-api" {
        "api listening"
    } else {
        "worker listening"
    };
    ServerProcess::spawn_in(cmd, workdir, ready)
}

/// Stops a server with SIGTERM, as `docker compose stop` does, and waits for it to exit.
fn stop(server: &mut ServerProcess) {
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the server did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends requests until `path` answers `status`; panics after 30 s.
fn wait_for(client: &reqwest::blocking::Client, url: &str, body: &Value, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = client.post(url).json(body).send().map(|r| r.status());
        if got.as_ref().is_ok_and(|s| s.as_u16() == status) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url} answers {got:?}, not {status}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether the api's fleet lists the worker at `url`.
fn api_knows(client: &reqwest::blocking::Client, api: &str, url: &str) -> bool {
    client
        .get(format!("{api}/admin/v1/workers"))
        .send()
        .and_then(reqwest::blocking::Response::json::<Value>)
        .is_ok_and(|fleet| {
            fleet
                .as_array()
                .is_some_and(|ws| ws.iter().any(|w| w["address"] == url))
        })
}

/// The mapped type of every leaf field of an index template's `properties`, by dotted path.
fn mapped_fields(properties: &Value, prefix: &str, out: &mut BTreeMap<String, String>) {
    for (name, field) in properties.as_object().expect("properties") {
        let path = format!("{prefix}{name}");
        match (&field["properties"], field["type"].as_str()) {
            (Value::Object(_), _) => mapped_fields(&field["properties"], &format!("{path}."), out),
            (_, Some(kind)) => {
                out.insert(path, kind.to_string());
            }
            _ => panic!("{path} has neither a type nor properties"),
        }
    }
}

/// JSON's kind of a value, as Elasticsearch's dynamic mapping tells them apart.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "string",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "integer",
        Value::Bool(_) => "boolean",
        Value::Null => "null",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Whether Elasticsearch indexes `v` into a field of type `mapped` as the value it is (not
/// rejected, nor dropped by `ignore_malformed`).
fn fits(mapped: &str, v: &Value) -> bool {
    match mapped {
        "keyword" | "text" => matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_)),
        "long" => v.is_i64() || v.as_str().is_some_and(|s| s.parse::<i64>().is_ok()),
        "integer" => v.as_i64().is_some_and(|n| i32::try_from(n).is_ok()),
        "date" | "date_nanos" => v
            .as_str()
            .is_some_and(|s| chrono::DateTime::parse_from_rfc3339(s).is_ok()),
        "boolean" => v.is_boolean(),
        other => panic!("the test does not know the type {other}"),
    }
}

/// Checks one log line against the mapping: every mapped field gets a value of its type, no
/// object lands on a leaf (or a leaf on an object), and each unmapped field keeps one JSON kind
/// across all lines (`dynamic` remembers them), so dynamic mapping never meets a conflict.
fn check_line(
    line: &Value,
    prefix: &str,
    mapped: &BTreeMap<String, String>,
    dynamic: &mut BTreeMap<String, &'static str>,
    problems: &mut Vec<String>,
) {
    for (name, value) in line.as_object().expect("a JSON object") {
        let path = format!("{prefix}{name}");
        let is_object_mapping = mapped.keys().any(|k| k.starts_with(&format!("{path}.")));
        match (value, mapped.get(&path)) {
            (Value::Null, _) => {}
            (Value::Object(_), Some(kind)) => {
                problems.push(format!("{path}: an object in a field mapped as {kind}"));
            }
            (Value::Object(_), None) => {
                check_line(value, &format!("{path}."), mapped, dynamic, problems);
            }
            (_, Some(kind)) => {
                if !fits(kind, value) {
                    problems.push(format!("{path}: {value} does not fit its type {kind}"));
                }
            }
            (_, None) if is_object_mapping => {
                problems.push(format!("{path}: {value} in a field mapped as an object"));
            }
            (_, None) => {
                let seen = *dynamic.entry(path.clone()).or_insert(kind(value));
                if seen != kind(value) {
                    problems.push(format!(
                        "{path} is unmapped and comes as {seen} and as {}: map it",
                        kind(value)
                    ));
                }
            }
        }
    }
}

/// The Elasticsearch fields table of docs/operations.md: field -> type.
fn documented_fields() -> BTreeMap<String, String> {
    crate::helpers::doc_table("docs/operations.md", "### Elasticsearch fields")
        .into_iter()
        .map(|cells| (cells[0].clone(), cells[1].clone()))
        .collect()
}

#[test]
fn compose_log_files_reach_filebeat_and_every_line_fits_the_elasticsearch_mapping() {
    let compose = compose();
    let filebeat_service = &compose["services"]["filebeat"];
    assert_eq!(strings(&filebeat_service["profiles"]), ["logging"]);
    assert!(
        strings(&filebeat_service["volumes"])
            .contains(&"./elk/filebeat.yml:/usr/share/filebeat/filebeat.yml:ro".to_string()),
        "{filebeat_service}"
    );
    let (log_dir, read_only) = log_mount(filebeat_service);
    assert!(read_only, "Filebeat mounts the logs read-only");
    for name in ["api", "worker"] {
        let service = &compose["services"][name];
        assert_eq!(log_mount(service), (log_dir.clone(), false), "{name}");
        assert_eq!(service["environment"]["VATIC_LOG__DIR"], log_dir, "{name}");
        assert!(
            strings(&service["volumes"]).contains(&format!("{CERTS_VOLUME}:{CERTS_DIR}:ro")),
            "{name} mounts the certificates read-only"
        );
    }

    // Filebeat: one input per service, JSON decoded to the document's root, into the indices
    // that the index template covers.
    let filebeat = yaml(&read("elk/filebeat.yml"));
    let template: Value =
        serde_json::from_str(&read("elk/vatic-logs.index-template.json")).unwrap();
    let index = filebeat["output.elasticsearch"]["index"].as_str().unwrap();
    let pattern = format!("{}*", index.split("%{").next().unwrap());
    assert_eq!(
        strings(&template["index_patterns"]),
        std::slice::from_ref(&pattern)
    );
    assert_eq!(filebeat["setup.template.pattern"], pattern);
    assert_eq!(filebeat["setup.template.enabled"], false);
    assert_eq!(filebeat["setup.ilm.enabled"], false);
    let inputs = filebeat["filebeat.inputs"].as_array().unwrap();
    for input in inputs {
        let ndjson = &input["parsers"][0]["ndjson"];
        assert_eq!(ndjson["target"], "", "{input}");
        assert_eq!(ndjson["add_error_key"], false, "{input}");
    }

    // The compose services, as processes: certs, migrate, a worker, the api.
    let db = TestDb::postgres();
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let (certs, ca_key) = (dir.path().join("certs"), dir.path().join("certs-ca"));
    let export = dir.path().join("client");
    std::fs::create_dir_all(&ca_key).unwrap();
    std::fs::create_dir_all(&export).unwrap();
    run_certs(&compose, &certs, &ca_key, &export, false);
    let mode = |f: &str| {
        std::fs::metadata(certs.join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert!(
        !certs.join("ca.key").exists(),
        "the CA's key is not left in the volume"
    );
    assert!(ca_key.join("ca.key").is_file());
    assert_eq!(
        std::fs::read(export.join("ca.crt")).unwrap(),
        std::fs::read(certs.join("ca.crt")).unwrap(),
        "clients get the CA's certificate"
    );
    assert_eq!(mode("api.key"), 0o600);
    assert_eq!(mode("haproxy.key"), 0o600);
    assert_eq!(
        mode("api-client.key"),
        0o640,
        "Prometheus' group reads the client key"
    );
    // Run again, as on every `up`, it keeps the certificates; CERTS_ROTATE=1 makes new ones.
    let ca = std::fs::read(certs.join("ca.crt")).unwrap();
    let kept = run_certs(&compose, &certs, &ca_key, &export, false);
    assert!(kept.contains("keeping"), "{kept}");
    assert_eq!(std::fs::read(certs.join("ca.crt")).unwrap(), ca);
    // A set made by a vatic without HAProxy's certificate is refused, and a rotation named.
    std::fs::remove_file(certs.join("haproxy.crt")).unwrap();
    let old = certs_script(&compose, &certs, &ca_key, &export, false);
    let said = String::from_utf8_lossy(&old.stderr);
    assert!(!old.status.success(), "{old:?}");
    assert!(
        said.contains("/certs has no haproxy.crt") && said.contains("CERTS_ROTATE=1"),
        "{said}"
    );
    run_certs(&compose, &certs, &ca_key, &export, true);
    assert!(certs.join("haproxy.crt").is_file());
    assert_ne!(std::fs::read(certs.join("ca.crt")).unwrap(), ca);
    assert_eq!(
        std::fs::read(export.join("ca.crt")).unwrap(),
        std::fs::read(certs.join("ca.crt")).unwrap()
    );
    assert!(!certs.join("ca.key").exists());
    assert_eq!(mode("api-client.key"), 0o640);
    // The secrets, as scripts/compose-setup.sh makes them (PostgreSQL here trusts any
    // password).
    let mounts = Mounts {
        certs: certs.clone(),
        secrets: dir.path().join("secrets"),
    };
    std::fs::create_dir_all(&mounts.secrets).unwrap();
    std::fs::write(mounts.secrets.join("postgres_password"), "secret\n").unwrap();
    std::fs::write(mounts.secrets.join("admin_key"), format!("{ADMIN_KEY}\n")).unwrap();
    let migrate = &compose["services"]["migrate"];
    assert_eq!(
        migrate["environment"]["DATABASE_PASSWORD_FILE"],
        format!("{SECRETS_DIR}/postgres_password")
    );
    let migrated = Command::new(binary("vaticctl", "vatic-cli"))
        .args(&strings(&migrate["command"])[1..])
        .env("DATABASE_URL", &db.url)
        .env(
            "DATABASE_PASSWORD_FILE",
            mounts.secrets.join("postgres_password"),
        )
        .output()
        .unwrap();
    assert!(migrated.status.success(), "{migrated:?}");
    for service in ["api", "worker"] {
        let env = &compose["services"][service]["environment"];
        assert_eq!(
            env["VATIC_DATABASE__URL"], "postgres://vatic@postgres:5432/vatic",
            "{service}: no password in the URL"
        );
        assert_eq!(
            env["VATIC_DATABASE__PASSWORD_FILE"],
            format!("{SECRETS_DIR}/postgres_password")
        );
    }

    let local = |extra: &[(&'static str, &str)]| {
        let mut env = vec![
            ("VATIC_DATABASE__URL", db.url.clone()),
            ("VATIC_LOG__DIR", logs.display().to_string()),
            ("VATIC_DRAIN_SECS", "0".to_string()),
        ];
        env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        env
    };
    let worker_dir = dir.path().join("worker");
    let api_dir = dir.path().join("api");
    std::fs::create_dir_all(&worker_dir).unwrap();
    std::fs::create_dir_all(&api_dir).unwrap();
    let mut worker = run_service(
        &compose,
        "worker",
        &local(&[
            ("VATIC_REGISTRY__POLL_MS", "200"),
            ("VATIC_REGISTRY__HEARTBEAT_MS", "200"),
        ]),
        &mounts,
        &worker_dir,
    );
    // The compose api requires keys: its first admin key is the secret admin_key.
    let mut api = run_service(
        &compose,
        "api",
        &local(&[("VATIC_FLEET_REFRESH_MS", "200")]),
        &mounts,
        &api_dir,
    );
    assert!(api.url.starts_with("https://"), "{}", api.url);

    // Traffic: a push, answers of every kind, a retire. The client trusts the compose CA and
    // holds the api's client certificate, which the workers ask for.
    let mut auth = reqwest::header::HeaderMap::new();
    auth.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {ADMIN_KEY}").parse().unwrap(),
    );
    let tls = vatic_tls::ClientTls::new(
        &vatic_tls::ClientTlsSettings {
            ca: Some(certs.join("ca.crt")),
            cert: Some(certs.join("api-client.crt")),
            key: Some(certs.join("api-client.key")),
            server_name: None,
        },
        vatic_tls::SettingNames {
            ca: "ca",
            cert: "cert",
            key: "key",
            server_name: "server_name",
        },
    )
    .unwrap();
    let client = reqwest::blocking::Client::builder()
        .default_headers(auth)
        .use_preconfigured_tls((*tls.config).clone())
        .build()
        .unwrap();
    let model =
        std::fs::read(vatic_testkit::root().join("models/breast_cancer/1/model.onnx")).unwrap();
    let pushed = client
        .post(format!(
            "{}/admin/v1/models/breast_cancer/versions",
            api.url
        ))
        .header("Content-Type", "application/octet-stream")
        .body(model)
        .send()
        .unwrap();
    assert_eq!(pushed.status(), 201, "{}", pushed.text().unwrap());
    let infer = format!("{}/v2/models/breast_cancer/infer", api.url);
    let body = vatic_testkit::demo_reference().v2_request(0..2);
    wait_for(&client, &infer, &body, 200);
    let request_id = format!("elk-{}", uuid::Uuid::new_v4());
    let r = client
        .post(&infer)
        .header("X-Request-ID", &request_id)
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let bad = json!({"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]});
    assert_eq!(client.post(&infer).json(&bad).send().unwrap().status(), 400);
    let unknown = format!("{}/v2/models/nope/infer", api.url);
    assert_eq!(
        client.post(&unknown).json(&body).send().unwrap().status(),
        404
    );
    let rows = vatic_testkit::demo_reference().v2_request(0..1)["inputs"][0]["data"].clone();
    let tf = client
        .post(format!("{}/v1/models/breast_cancer:predict", api.url))
        .json(&json!({ "instances": [rows] }))
        .send()
        .unwrap();
    assert_eq!(tf.status(), 200);
    // A second worker (logging elsewhere) that dies with kill -9: the api logs what it saw.
    let mut doomed = run_service(
        &compose,
        "worker",
        &[
            ("VATIC_DATABASE__URL", db.url.clone()),
            (
                "VATIC_LOG__DIR",
                dir.path().join("doomed").display().to_string(),
            ),
            ("VATIC_REGISTRY__HEARTBEAT_MS", "200".into()),
        ],
        &mounts,
        &worker_dir,
    );
    let ready = format!("{}/v2/models/breast_cancer/ready", doomed.url);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !client.get(&ready).send().is_ok_and(|r| r.status() == 200)
        || !api_knows(&client, &api.url, &doomed.url)
    {
        assert!(Instant::now() < deadline, "the second worker never served");
        std::thread::sleep(Duration::from_millis(50));
    }
    doomed.child.kill().unwrap();
    doomed.child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !api.logs.lock().unwrap().iter().any(|l| {
        serde_json::from_str::<Value>(l).is_ok_and(|v| {
            v["worker"] == doomed.url.as_str() && (v["level"] == "WARN" || v["healthy"] == false)
        })
    }) {
        let r = client.post(&infer).json(&body).send().unwrap();
        assert_eq!(r.status(), 200, "a request failed when a worker died");
        assert!(
            Instant::now() < deadline,
            "the api never saw the worker die"
        );
    }
    let retired = client
        .post(format!(
            "{}/admin/v1/models/breast_cancer/versions/1/retire",
            api.url
        ))
        .send()
        .unwrap();
    assert_eq!(retired.status(), 200);
    wait_for(&client, &infer, &body, 404);
    stop(&mut api);
    stop(&mut worker);

    // Every file vatic wrote is read by exactly one Filebeat input, and each input reads some.
    let files: Vec<PathBuf> = std::fs::read_dir(&logs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let host = vatic_server::telemetry::host_name();
    let mut read_by: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for input in inputs {
        let input_id = input["id"].as_str().unwrap().to_string();
        for path in strings(&input["paths"]) {
            let local = path.replacen(&log_dir, &logs.display().to_string(), 1);
            assert_ne!(
                local, path,
                "input {input_id} reads {path}, outside {log_dir}"
            );
            let pattern = glob::Pattern::new(&local).unwrap();
            let matched = files.iter().filter(|f| pattern.matches_path(f)).cloned();
            read_by.entry(input_id.clone()).or_default().extend(matched);
        }
        // The input names the service of its files, as the documents will.
        let service = input["fields"]["service"]["name"].as_str().unwrap();
        assert_eq!(service, input_id, "{input}");
        for f in &read_by[&input_id] {
            let name = f.file_name().unwrap().to_string_lossy().to_string();
            assert!(name.starts_with(&format!("{service}.{host}.")), "{name}");
        }
    }
    for f in &files {
        let readers = read_by.values().filter(|fs| fs.contains(f)).count();
        assert_eq!(
            readers,
            1,
            "{} is read by {readers} Filebeat inputs",
            f.display()
        );
    }
    for (input_id, fs) in &read_by {
        assert!(
            !fs.is_empty(),
            "input {input_id} reads no file of {files:?}"
        );
    }

    // Every line fits the mapping, as do the fields Filebeat adds.
    let mut mapped = BTreeMap::new();
    mapped_fields(
        &template["template"]["mappings"]["properties"],
        "",
        &mut mapped,
    );
    let mut dynamic = BTreeMap::new();
    let mut problems = Vec::new();
    let mut lines = 0;
    let mut request_found_by = Vec::new();
    for (input_id, fs) in &read_by {
        for f in fs {
            for raw in std::fs::read_to_string(f).unwrap().lines() {
                let line: Value = serde_json::from_str(raw)
                    .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {raw}", f.display()));
                check_line(&line, "", &mapped, &mut dynamic, &mut problems);
                lines += 1;
                if line["span"]["request_id"] == request_id.as_str() && line["message"] == "request"
                {
                    request_found_by.push(input_id.clone());
                }
            }
        }
        for input in inputs.iter().filter(|i| i["id"] == input_id.as_str()) {
            check_line(&input["fields"], "", &mapped, &mut dynamic, &mut problems);
        }
    }
    assert!(
        problems.is_empty(),
        "{} problems in {lines} lines:\n{}",
        problems.len(),
        problems.join("\n")
    );
    eprintln!(
        "{lines} lines in {} files fit the mapping; fields mapped when first seen: {dynamic:?}",
        files.len()
    );
    // One search for the request id finds its access line from the api and from the worker.
    request_found_by.sort();
    assert_eq!(request_found_by, ["vatic-api", "vatic-worker"]);

    // docs/operations.md lists exactly the mapped fields, with their types.
    assert_eq!(documented_fields(), mapped);
}
