//! Logs: one request id finds the request's lines on the api and on the worker, with the
//! model, status, bytes and latency; the api also writes them to its log files.

use crate::helpers::{binary, start_until_ready, ServerProcess};
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

/// Waits until `lines` yields the access line of a request, and returns it.
fn access_line(label: &str, lines: impl Fn() -> Vec<Value>) -> Value {
    for _ in 0..500 {
        if let Some(line) = lines().into_iter().find(|l| l["message"] == "request") {
            return line;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no access line on the {label}");
}

/// Waits (10 s at most) until `url` answers 200.
fn wait_ok(client: &reqwest::blocking::Client, url: &str) {
    for _ in 0..500 {
        if client.get(url).send().is_ok_and(|r| r.status() == 200) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{url} never answered 200");
}

#[test]
fn one_request_id_finds_the_request_on_the_api_and_the_worker() {
    let worker = ServerProcess::start();
    let log_dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(binary("vatic-api", "vatic-api"));
    cmd.args(["--config", "config/api.toml", "--listen", "127.0.0.1:0"])
        .args(["--metrics-listen", "127.0.0.1:0", "--workers", &worker.url])
        .env("VATIC_LOG__DIR", log_dir.path())
        // Without a database there are no keys; the guard is tested in auth.rs.
        .env("VATIC_AUTH__ENABLED", "false");
    let api = ServerProcess::spawn(cmd, "api listening");

    let id = "trace-4f2a9c";
    let client = reqwest::blocking::Client::new();
    let body = vatic_testkit::demo_reference().v2_request(0..1);
    wait_ok(&client, &format!("{}/v2/health/ready", api.url));
    let r = client
        .post(format!("{}/v2/models/breast_cancer/infer", api.url))
        .header("X-Request-ID", id)
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], id);
    let size = r.bytes().unwrap().len() as u64;

    let on_api = access_line("api", || api.lines_of_request(id));
    assert_eq!(on_api["status"], 200, "{on_api}");
    assert_eq!(on_api["route"], "/v2/models/{model}/infer", "{on_api}");
    assert_eq!(on_api["bytes"], size, "{on_api}");
    assert!(on_api["micros"].as_u64().is_some(), "{on_api}");
    assert_eq!(on_api["span"]["model"], "breast_cancer", "{on_api}");
    assert_eq!(on_api["span"]["version"], "1", "{on_api}");
    let on_worker = access_line("worker", || worker.lines_of_request(id));
    assert_eq!(on_worker["status"], 200, "{on_worker}");
    assert_eq!(on_worker["span"]["model"], "breast_cancer", "{on_worker}");
    assert_eq!(on_worker["span"]["version"], "1", "{on_worker}");

    // The api's file: vatic-api.<host>.<date>.log, JSON lines, written in the background.
    let mut found = false;
    for _ in 0..500 {
        let files: Vec<_> = std::fs::read_dir(log_dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        found = files.iter().any(|f| {
            let name = f.file_name().unwrap().to_string_lossy().to_string();
            name.starts_with("vatic-api.")
                && name.ends_with(".log")
                && std::fs::read_to_string(f)
                    .unwrap_or_default()
                    .lines()
                    .any(|l| {
                        serde_json::from_str::<Value>(l).is_ok_and(|v| {
                            v["span"]["request_id"] == id && v["message"] == "request"
                        })
                    })
        });
        if found {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(found, "the request's line is not in the api's log file");
}

#[test]
fn a_server_whose_log_nobody_reads_keeps_answering_and_loses_no_line() {
    let (child, url, mut lines) = start_until_ready(
        ServerProcess::worker_command(&[]),
        &vatic_testkit::root(),
        "worker listening",
    );
    let _worker = ServerProcess {
        child,
        url: url.clone(),
        logs: Default::default(),
    };
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    wait_ok(&client, &format!("{url}/v2/models/breast_cancer/ready"));
    // Nothing reads the server's stdout from here on: its pipe (64 KiB) fills after a few
    // hundred access lines, and the server must keep answering.
    let body = vatic_testkit::demo_reference().v2_request(0..1);
    let requests = 1500;
    for i in 0..requests {
        let r = client
            .post(format!("{url}/v2/models/breast_cancer/infer"))
            .header("X-Request-ID", format!("unread-{i}"))
            .json(&body)
            .send()
            .unwrap_or_else(|e| panic!("request {i} while the log was unread: {e}"));
        assert_eq!(r.status(), 200, "request {i}");
    }
    // Read now: every access line comes out, in order, the last one included.
    let (found, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut next = 0;
        for line in lines.by_ref().map_while(Result::ok) {
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if v["message"] == "request" && v["route"] == "/v2/models/{model}/infer" {
                assert_eq!(v["span"]["request_id"], format!("unread-{next}"), "{v}");
                next += 1;
                if next == requests {
                    let _ = found.send(());
                    return;
                }
            }
        }
    });
    seen.recv_timeout(Duration::from_secs(60))
        .expect("every access line, in order, once the log is read");
}

#[test]
fn a_standalone_access_line_names_the_version_that_answered() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(binary("vatic-api", "vatic-api"));
    cmd.args(["--standalone", "--listen", "127.0.0.1:0"])
        .args(["--metrics-listen", "127.0.0.1:0", "--models-dir"])
        .arg(vatic_testkit::root().join("models"));
    let api = ServerProcess::spawn_in(cmd, dir.path(), "api listening");
    let client = reqwest::blocking::Client::new();
    wait_ok(
        &client,
        &format!("{}/v2/models/breast_cancer/ready", api.url),
    );
    let id = "standalone-7c1e";
    // The path names no version: the line names the one that answered.
    let r = client
        .post(format!("{}/v2/models/breast_cancer/infer", api.url))
        .header("X-Request-ID", id)
        .json(&vatic_testkit::demo_reference().v2_request(0..1))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let line = access_line("api", || api.lines_of_request(id));
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["span"]["model"], "breast_cancer", "{line}");
    assert_eq!(line["span"]["version"], "1", "{line}");
}
