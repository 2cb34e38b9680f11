//! Standalone mode: the api with its in-process worker.

use crate::helpers::{binary, binary_post, ServerProcess, TestApi};
use bytes::Bytes;
use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};
use vatic_schema::v2;

#[tokio::test]
async fn v2_json_and_binary_inference_match_the_reference() {
    let api = TestApi::standalone().await;
    let reference = vatic_testkit::demo_reference();
    let (status, body) = api
        .post_json(
            "/v2/models/breast_cancer/infer",
            &reference.v2_request(0..8),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    reference.check_response(&body, 0..8);

    let req = v2::decode_request(
        &Bytes::from(serde_json::to_vec(&reference.v2_request(8..12)).unwrap()),
        None,
    )
    .unwrap();
    let mut req = req;
    req.parameters
        .insert("binary_data_output".into(), json!(true));
    let enc = v2::encode_request(&req, true);
    let r = binary_post(
        &api.client,
        &format!("{}/v2/models/breast_cancer/versions/1/infer", api.base),
        enc,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let hl = r.headers()["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let resp = v2::decode_response(&r.bytes().await.unwrap(), Some(hl)).unwrap();
    let as_json = json!({"outputs": resp.outputs.iter().map(|t| json!({"name": t.name, "data": t.json_values()})).collect::<Vec<_>>()});
    reference.check_response(&as_json, 8..12);
    api.stop().await;
}

#[tokio::test]
async fn request_id_is_honoured_or_made() {
    let api = TestApi::standalone().await;
    let r = api
        .client
        .get(format!("{}/v2/health/live", api.base))
        .header("X-Request-ID", "trace-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-42");
    let r = api
        .client
        .get(format!("{}/v2/health/live", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"].len(), 36, "a UUID is made");
    api.stop().await;
}

#[tokio::test]
async fn metadata_config_stats_and_probes() {
    let api = TestApi::standalone().await;
    assert_eq!(
        api.get("/v2/health/live").await,
        (200, json!({"live": true}))
    );
    assert_eq!(
        api.get("/v2/health/ready").await,
        (200, json!({"ready": true}))
    );
    assert_eq!(api.get("/v2/models/breast_cancer/ready").await.0, 200);
    let (_, meta) = api.get("/v2/models/breast_cancer/versions/1").await;
    assert_eq!(
        meta["inputs"][0],
        json!({"name": "input", "datatype": "FP32", "shape": [-1, 30]})
    );
    let (_, config) = api.get("/v2/models/breast_cancer/config").await;
    assert_eq!(config["input"][0]["data_type"], "TYPE_FP32");
    let (_, server) = api.get("/v2").await;
    assert_eq!(server["name"], "vatic");
    let reference = vatic_testkit::demo_reference();
    api.post_json(
        "/v2/models/breast_cancer/infer",
        &reference.v2_request(0..3),
    )
    .await;
    let (_, stats) = api.get("/v2/models/breast_cancer/stats").await;
    assert_eq!(stats["model_stats"][0]["inference_count"], 3);
    let (_, all) = api.get("/v2/models/stats").await;
    assert_eq!(all["model_stats"].as_array().unwrap().len(), 1);
    api.stop().await;
}

#[tokio::test]
async fn errors_carry_status_and_message() {
    let mut settings = crate::helpers::standalone_settings(vatic_testkit::root().join("models"));
    settings.server.max_body_bytes = 2048;
    let api = TestApi::start(settings, None).await;
    let reference = vatic_testkit::demo_reference();
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "/v2/models/nope/infer",
            reference.v2_request(0..1),
            404,
            "unknown model 'nope'",
        ),
        (
            "/v2/models/breast_cancer/versions/9/infer",
            reference.v2_request(0..1),
            404,
            "no version '9'",
        ),
        (
            "/v2/models/breast_cancer/infer",
            json!({"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}),
            400,
            "expected shape [-1, 30], got [1, 3]",
        ),
        (
            "/v2/models/breast_cancer/infer",
            reference.v2_request(0..20),
            413,
            "exceeds the limit of 2048 bytes",
        ),
    ];
    for (path, body, status, needle) in cases {
        let (got, resp) = api.post_json(path, &body).await;
        assert_eq!(got, status, "{path}: {resp}");
        assert!(resp["error"].as_str().unwrap().contains(needle), "{resp}");
    }
    let (status, body) = api.get("/v2/models/nope").await;
    assert_eq!(
        (status, body["error"].as_str().unwrap()),
        (404, "unknown model 'nope'")
    );
    api.stop().await;
}

/// SIGTERM to a real api process: readiness turns false at once, requests are still served
/// through the drain, then the process stops and exits cleanly.
#[test]
fn sigterm_turns_not_ready_first_serves_through_the_drain_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(binary("vatic-api", "vatic-api"));
    cmd.args(["--standalone", "--listen", "127.0.0.1:0", "--models-dir"])
        .arg(vatic_testkit::root().join("models"))
        // Long enough to probe in; the drain is the process's whole wait after the signal.
        .env("VATIC_DRAIN_SECS", "5")
        .env("VATIC_PROFILE__AT_LOAD", "false");
    let mut api = ServerProcess::spawn_in(cmd, dir.path(), "api listening");
    let client = reqwest::blocking::Client::new();
    let status = |path: &str| {
        client
            .get(format!("{}{path}", api.url))
            .send()
            .map(|r| r.status().as_u16())
            .ok()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while status("/v2/health/ready") != Some(200) {
        assert!(Instant::now() < deadline, "the api never became ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    let term = Command::new("kill")
        .args(["-TERM", &api.child.id().to_string()])
        .status()
        .expect("running kill");
    assert!(term.success());
    // The signal is handled on another thread: readiness turns false at its first step.
    while status("/v2/health/ready") != Some(400) {
        assert!(Instant::now() < deadline, "still ready after SIGTERM");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(status("/readyz"), Some(503), "load balancers see it too");
    assert_eq!(status("/v2/health/live"), Some(200), "live while it drains");
    let reference = vatic_testkit::demo_reference();
    let infer = client
        .post(format!("{}/v2/models/breast_cancer/infer", api.url))
        .json(&reference.v2_request(0..1))
        .send()
        .expect("served while draining");
    assert_eq!(infer.status(), 200);
    reference.check_response(&infer.json().unwrap(), 0..1);
    let exit = loop {
        if let Some(exit) = api.child.try_wait().expect("waiting for the api") {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "the api did not exit after its drain"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit}");
    // The log reader may still be taking the last lines from the pipe.
    let logged = |message: &str| {
        let lines = api.logs.lock().unwrap();
        lines
            .iter()
            .any(|l| serde_json::from_str::<Value>(l).is_ok_and(|v| v["message"] == message))
    };
    while !logged("stopped") {
        assert!(Instant::now() < deadline, "no 'stopped' line in the log");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(logged("shutting down: not ready, draining"));
}
