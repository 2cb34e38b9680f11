//! Hardening: slow clients cut off (slowloris), limits on heads and JSON, security headers, and
//! no secret in any log line, answer or audit record.

use crate::helpers::{binary, standalone_settings, ServerProcess, TestApi};
use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Standalone with short client timeouts and a small JSON value limit.
async fn strict_api() -> TestApi {
    let mut settings = standalone_settings(vatic_testkit::root().join("models"));
    settings.server.request_head_timeout_ms = 1000;
    settings.server.body_timeout_ms = 300;
    settings.server.keep_alive_secs = 1;
    settings.server.max_json_values = 1000;
    let mut api = TestApi::start(settings, None).await;
    // The server closes idle connections after 1 s; a request sent on a pooled one as it closes
    // would fail, so each request opens its own.
    api.client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    api
}

fn addr(api: &TestApi) -> String {
    api.base.trim_start_matches("http://").to_string()
}

/// Sends `head`, then `trickle` one byte every 50 ms until the server answers or closes.
/// Returns what the server sent and how many trickled bytes it took first.
async fn slow_client(addr: &str, head: &str, trickle: &[u8]) -> (String, usize) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        // Ends at the server's close (or a reset); bounded by the trickle below.
        let _ = tokio::time::timeout(Duration::from_secs(30), read.read_to_end(&mut got)).await;
        String::from_utf8_lossy(&got).into_owned()
    });
    write.write_all(head.as_bytes()).await.unwrap();
    let mut sent = 0;
    for byte in trickle {
        if reader.is_finished() || write.write_all(&[*byte]).await.is_err() {
            break;
        }
        sent += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = write.shutdown().await;
    (reader.await.unwrap(), sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_without_holding_up_the_others() {
    let api = strict_api().await;
    let addr = addr(&api);
    // 200 bytes at 50 ms each is 10 s: far past the limits (1 s for the head, 300 ms for a body).
    let trickle = vec![b'a'; 200];

    // Headers that never end (slowloris): 408 and closed.
    let (answer, sent) = slow_client(
        &addr,
        "GET /v2/health/live HTTP/1.1\r\nHost: vatic\r\nX-Slow: ",
        &trickle,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(sent < trickle.len(), "the connection stayed open");

    // A body that never ends: 408 naming the setting.
    let head = "POST /v2/models/breast_cancer/infer HTTP/1.1\r\nHost: vatic\r\n\
                Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n";
    let (answer, sent) = slow_client(&addr, head, &trickle).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(answer.contains("body_timeout_ms"), "{answer:?}");
    assert!(sent < trickle.len(), "the connection stayed open");

    // Many slow connections at once do not keep a normal request out.
    let mut slow = Vec::new();
    for _ in 0..20 {
        let addr = addr.clone();
        let trickle = trickle.clone();
        slow.push(tokio::spawn(async move {
            slow_client(&addr, "GET /v2 HTTP/1.1\r\nX-Slow: ", &trickle).await
        }));
    }
    let reference = vatic_testkit::demo_reference();
    let (status, body) = api
        .post_json(
            "/v2/models/breast_cancer/infer",
            &reference.v2_request(0..2),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    reference.check_response(&body, 0..2);
    for s in slow {
        let (answer, _) = s.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    }

    // An idle keep-alive connection is closed after keep_alive_secs.
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    stream
        .write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: vatic\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the idle connection was not closed");
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn oversized_heads_deep_json_and_too_many_values_get_a_clear_4xx() {
    let api = strict_api().await;
    let url = |path: &str| format!("{}{path}", api.base);

    // More headers than the server parses, or a head over 128 KiB: 431.
    let mut many = reqwest::header::HeaderMap::new();
    for i in 0..120 {
        many.insert(
            reqwest::header::HeaderName::from_bytes(format!("x-h{i}").as_bytes()).unwrap(),
            "1".parse().unwrap(),
        );
    }
    let r = api
        .client
        .get(url("/v2/health/live"))
        .headers(many)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    // The server answers and closes while the client may still be sending the head; the
    // client's kernel can then take the reset before the answer is read. Each try either reads
    // 431 or is reset; one must read it.
    let mut status = None;
    for _ in 0..5 {
        match api
            .client
            .get(url("/v2/health/live"))
            .header("X-Big", "a".repeat(140 * 1024))
            .send()
            .await
        {
            Ok(r) => {
                status = Some(r.status());
                break;
            }
            Err(e) => assert!(format!("{e:?}").contains("ConnectionReset"), "{e:?}"),
        }
    }
    assert_eq!(status.expect("every try was reset"), 431);

    // JSON nested past serde_json's 128 levels: 400, named.
    let deep = format!("{}1{}", "[".repeat(300), "]".repeat(300));
    let body = format!(
        r#"{{"inputs":[{{"name":"input","datatype":"FP32","shape":[1,30],"data":[0],"parameters":{{"x":{deep}}}}}]}}"#
    );
    let r = api
        .client
        .post(url("/v2/models/breast_cancer/infer"))
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let error: Value = r.json().await.unwrap();
    assert!(
        error["error"].as_str().unwrap().contains("recursion limit"),
        "{error}"
    );

    // More values than max_json_values (1000 here), on V2 and on TF-Serving: 400, named, before
    // the body is parsed.
    let values: Vec<Value> = (0..1500).map(|_| json!([])).collect();
    let v2 = json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 30],
                    "data": [0], "parameters": {"x": values}}]});
    let tf = json!({"instances": values});
    for (path, body) in [
        ("/v2/models/breast_cancer/infer", &v2),
        ("/v1/models/breast_cancer:predict", &tf),
    ] {
        let (status, answer) = api.post_json(path, body).await;
        assert_eq!(status, 400, "{path}: {answer}");
        assert!(
            answer["error"]
                .as_str()
                .unwrap()
                .contains("more than 1000 values (max_json_values)"),
            "{path}: {answer}"
        );
    }
    // A request within the limit still works.
    let reference = vatic_testkit::demo_reference();
    let (status, body) = api
        .post_json(
            "/v2/models/breast_cancer/infer",
            &reference.v2_request(0..4),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn every_answer_carries_the_security_headers() {
    let api = TestApi::standalone().await;
    for (method, path, status) in [
        ("GET", "/v2/health/live", 200),
        ("GET", "/v2/models/breast_cancer", 200),
        ("GET", "/no/such/route", 404),
        ("DELETE", "/v2/health/live", 405),
        ("POST", "/v2/models/breast_cancer/infer", 400),
    ] {
        let r = api
            .client
            .request(method.parse().unwrap(), format!("{}{path}", api.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{method} {path}");
        let h = r.headers();
        for (name, value) in [
            ("x-content-type-options", "nosniff"),
            ("cache-control", "no-store"),
            ("x-frame-options", "DENY"),
            ("referrer-policy", "no-referrer"),
            (
                "content-security-policy",
                "default-src 'none'; frame-ancestors 'none'",
            ),
        ] {
            assert_eq!(
                h.get(name).map(|v| v.to_str().unwrap()),
                Some(value),
                "{method} {path} {name}"
            );
        }
        // Plain HTTP: no HSTS (it means something only over HTTPS; see tls.rs).
        assert!(h.get("strict-transport-security").is_none());
    }
}

/// Secrets the test makes: none of them may appear anywhere but where a key is handed out.
const ADMIN: &str = "bootstrap-admin-Z7q9W2m4K8x1P5r3";
const WRONG: &str = "vk_abcdefghijkl_WrongSecretWrongSecretWrongSecret1";
const MALFORMED: &str = "not-a-key-but-secret-Q4v8N1b6";

#[test]
fn no_secret_reaches_a_log_line_an_answer_or_the_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let data_key = vatic_store::new_data_key("k1");
    let data_secret = data_key.split_once('=').unwrap().1.to_string();
    // stderr too: the start-up messages go there.
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "exec \"$0\" \"$@\" 2>&1"])
        .arg(binary("vatic-api", "vatic-api"))
        .arg("--config")
        .arg(vatic_testkit::root().join("config/standalone.toml"))
        .args(["--standalone", "--listen", "127.0.0.1:0", "--models-dir"])
        .arg(vatic_testkit::root().join("models"))
        // The committed file's database and folders, under the test's folder.
        .env("VATIC_METRICS_LISTEN", "127.0.0.1:0")
        .env("VATIC_AUTH__ENABLED", "true")
        .env("VATIC_BOOTSTRAP_ADMIN_KEY", ADMIN)
        .env("VATIC_DATA_KEYS", &data_key)
        .env("VATIC_PROFILE__AT_LOAD", "false")
        .env("VATIC_PREDICTION_LOG__FLUSH_INTERVAL_MS", "20")
        // Every line from the start, into files under the folder searched at the end.
        .env("VATIC_LOG__DIR", dir.path().join("logs"));
    let mut api = ServerProcess::spawn_in(cmd, dir.path(), "api listening");
    let client = reqwest::blocking::Client::new();
    let mut answers: Vec<String> = Vec::new();
    let call = |method: &str, path: &str, key: Option<(&str, &str)>, body: Option<Value>| {
        let mut r = client.request(method.parse().unwrap(), format!("{}{path}", api.url));
        if let Some((header, value)) = key {
            r = r.header(header, value);
        }
        if let Some(body) = body {
            r = r.json(&body);
        }
        let r = r.send().unwrap();
        let status = r.status().as_u16();
        let mut text = format!("{:?}\n", r.headers());
        text.push_str(&r.text().unwrap());
        (status, text)
    };
    let bearer = |secret: &str| ("Authorization", format!("Bearer {secret}"));
    let admin = bearer(ADMIN);
    let admin = Some((admin.0, admin.1.as_str()));
    let deadline = Instant::now() + Duration::from_secs(60);
    while call("GET", "/v2/models/breast_cancer/ready", admin, None).0 != 200 {
        assert!(Instant::now() < deadline, "the model never became ready");
        std::thread::sleep(Duration::from_millis(50));
    }

    // A predictor key: its secret is shown once, in this answer, which is set aside.
    let (status, created) = call(
        "POST",
        "/admin/v1/keys",
        admin,
        Some(json!({"role": "predictor", "name": "checkout"})),
    );
    assert_eq!(status, 201, "{created}");
    let created: Value = serde_json::from_str(created.split_once('\n').unwrap().1).unwrap();
    let predictor = created["secret"].as_str().unwrap().to_string();
    let id = created["key"]["id"].as_str().unwrap().to_string();

    let record =
        |answers: &mut Vec<String>, (status, text): (u16, String), want: u16, what: &str| {
            assert_eq!(status, want, "{what}: {text}");
            answers.push(text);
        };
    let p = bearer(&predictor);
    let p = Some((p.0, p.1.as_str()));
    let x = Some(("X-API-Key", predictor.as_str()));
    let body = vatic_testkit::demo_reference().v2_request(0..1);
    record(
        &mut answers,
        call(
            "PATCH",
            "/admin/v1/models/breast_cancer",
            admin,
            Some(json!({"log_mode": "full"})),
        ),
        200,
        "log mode",
    );
    record(
        &mut answers,
        call(
            "POST",
            "/v2/models/breast_cancer/infer",
            p,
            Some(body.clone()),
        ),
        200,
        "bearer",
    );
    record(
        &mut answers,
        call(
            "POST",
            "/v2/models/breast_cancer/infer",
            x,
            Some(body.clone()),
        ),
        200,
        "x-api-key",
    );
    let w = bearer(WRONG);
    record(
        &mut answers,
        call(
            "POST",
            "/v2/models/breast_cancer/infer",
            Some((w.0, w.1.as_str())),
            Some(body.clone()),
        ),
        401,
        "unknown key",
    );
    let m = bearer(MALFORMED);
    record(
        &mut answers,
        call("GET", "/admin/v1/keys", Some((m.0, m.1.as_str())), None),
        401,
        "malformed key",
    );
    record(
        &mut answers,
        call("GET", "/admin/v1/keys", p, None),
        403,
        "wrong role",
    );
    record(
        &mut answers,
        call(
            "GET",
            &format!("/v2/models/breast_cancer?api_key={predictor}"),
            None,
            None,
        ),
        401,
        "key in the URL",
    );
    record(
        &mut answers,
        call("GET", "/admin/v1/keys", admin, None),
        200,
        "list keys",
    );
    record(
        &mut answers,
        call("POST", &format!("/admin/v1/keys/{id}/revoke"), admin, None),
        200,
        "revoke",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = call(
            "POST",
            "/v2/models/breast_cancer/infer",
            p,
            Some(body.clone()),
        );
        if answer.0 == 401 {
            answers.push(answer.1);
            break;
        }
        assert!(Instant::now() < deadline, "the revoked key still works");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The logged predictions, decrypted for the admin: payloads, never keys.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = call("GET", "/admin/v1/predictions", admin, None);
        assert_eq!(answer.0, 200, "{}", answer.1);
        if answer.1.matches("\"request_id\"").count() >= 2 {
            assert!(answer.1.contains("\"inputs\""), "{}", answer.1);
            answers.push(answer.1);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "predictions not logged: {}",
            answer.1
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    record(
        &mut answers,
        call("GET", "/admin/v1/audit?limit=1000", admin, None),
        200,
        "audit",
    );
    record(
        &mut answers,
        call("GET", "/openapi.json", None, None),
        200,
        "openapi",
    );

    // Stop the server (SIGTERM: it drains and logs its shutdown), then read everything.
    let pid = api.child.id();
    let _ = Command::new("kill").arg(pid.to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while api.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the api did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    let mut logs = api.logs.lock().unwrap().join("\n");
    for file in walk(&dir.path().join("logs")) {
        logs.push_str(&std::fs::read_to_string(file).unwrap());
    }
    assert!(
        logs.contains("prediction payloads are encrypted at rest"),
        "{logs}"
    );
    assert!(
        logs.contains("\"status\":401"),
        "the refusals are logged: {logs}"
    );
    let secret_part = predictor.rsplit('_').next().unwrap().to_string();
    for secret in [
        ADMIN,
        &predictor,
        &secret_part,
        WRONG,
        "WrongSecretWrongSecret",
        MALFORMED,
        &data_key,
        &data_secret,
    ] {
        assert!(
            !logs.contains(secret),
            "a log line shows the secret {secret}"
        );
        for answer in &answers {
            assert!(
                !answer.contains(secret),
                "an answer shows the secret {secret}: {answer}"
            );
        }
    }
    // The spool and database files hold no secret either (only hashes).
    for entry in walk(dir.path()) {
        let bytes = std::fs::read(&entry).unwrap();
        for secret in [
            ADMIN,
            &predictor,
            &secret_part,
            WRONG,
            MALFORMED,
            &data_secret,
        ] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} holds the secret {secret}",
                entry.display()
            );
        }
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn unusable_data_keys_stop_the_start_with_a_message_that_shows_no_key() {
    use std::os::unix::ffi::OsStrExt;
    let bare = base64_key();
    let cases: [(&std::ffi::OsStr, &str); 2] = [
        (
            std::ffi::OsStr::from_bytes(b"k1=\xff\xfe"),
            "VATIC_DATA_KEYS is not valid UTF-8",
        ),
        (
            std::ffi::OsStr::new(&bare),
            "VATIC_DATA_KEYS: entry 1 is not ID=BASE64",
        ),
    ];
    for (value, want) in cases {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(binary("vatic-api", "vatic-api"))
            .arg("--config")
            .arg(vatic_testkit::root().join("config/standalone.toml"))
            .args(["--standalone", "--listen", "127.0.0.1:0", "--models-dir"])
            .arg(vatic_testkit::root().join("models"))
            .current_dir(dir.path())
            .env("VATIC_METRICS_LISTEN", "127.0.0.1:0")
            .env("VATIC_DATA_KEYS", value)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{text}");
        assert!(text.contains(want), "{want}: {text}");
        assert!(!text.contains(bare.trim_end_matches('=')), "{text}");
    }
}

/// A data key given bare, without its `ID=`: 32 bytes in standard base64, ending in `=`.
fn base64_key() -> String {
    let entry = vatic_store::new_data_key("k");
    entry.split_once('=').unwrap().1.to_string()
}
