//! Every way a request can be wrong gets a 4xx (or 503) naming what was wrong.

use crate::helpers::{one, TestWorker};
use serde_json::{json, Value};

fn input(shape: Value, datatype: &str, data: Value) -> Value {
    json!({"inputs": [{"name": "input", "shape": shape, "datatype": datatype, "data": data}]})
}

fn row() -> Vec<f64> {
    vatic_testkit::demo_reference().inputs[0].clone()
}

async fn expect(w: &TestWorker, path: &str, body: &Value, status: u16, needle: &str) {
    let (got, resp) = w.post_json(path, body).await;
    assert_eq!(got, status, "{path} {body}: {resp}");
    let msg = resp["error"]
        .as_str()
        .unwrap_or_else(|| panic!("error body: {resp}"));
    assert!(msg.contains(needle), "'{msg}' should contain '{needle}'");
}

#[tokio::test]
async fn bad_requests_are_refused_with_clear_errors() {
    let w = TestWorker::start(one("breast_cancer")).await;
    let infer = "/v2/models/breast_cancer/infer";
    let good = row();
    expect(
        &w,
        "/v2/models/nope/infer",
        &input(json!([1, 30]), "FP32", json!(good)),
        404,
        "unknown model 'nope'",
    )
    .await;
    expect(
        &w,
        "/v2/models/breast_cancer/versions/7/infer",
        &input(json!([1, 30]), "FP32", json!(good)),
        404,
        "has no version '7' (versions: 1)",
    )
    .await;
    expect(
        &w,
        infer,
        &input(json!([1, 29]), "FP32", json!(good[..29])),
        400,
        "input 'input': expected shape [-1, 30], got [1, 29]",
    )
    .await;
    expect(
        &w,
        infer,
        &input(json!([30]), "FP32", json!(good)),
        400,
        "for one row send shape [1, ...]",
    )
    .await;
    expect(
        &w,
        infer,
        &input(json!([1, 30]), "FP64", json!(good)),
        400,
        "input 'input': expected datatype FP32, got FP64",
    )
    .await;
    expect(
        &w,
        infer,
        &input(json!([1, 30]), "FP32", json!(good[..10])),
        400,
        "needs 120 bytes (30 x FP32) of data, got 40 bytes",
    )
    .await;
    expect(
        &w,
        infer,
        &input(json!([1, 30]), "FLOAT", json!(good)),
        400,
        "unknown datatype 'FLOAT'",
    )
    .await;
    let unknown = json!({"inputs": [
        {"name": "input", "shape": [1, 30], "datatype": "FP32", "data": good},
        {"name": "extra", "shape": [1], "datatype": "FP32", "data": [1]}]});
    expect(
        &w,
        infer,
        &unknown,
        400,
        "model 'breast_cancer' has no input 'extra' (inputs: input)",
    )
    .await;
    let missing = json!({"inputs": []});
    expect(&w, infer, &missing, 400, "input 'input' is missing").await;
    let dup = json!({"inputs": [
        {"name": "input", "shape": [1, 30], "datatype": "FP32", "data": good},
        {"name": "input", "shape": [1, 30], "datatype": "FP32", "data": good}]});
    expect(&w, infer, &dup, 400, "appears more than once").await;
    let mut bad_out = input(json!([1, 30]), "FP32", json!(good));
    bad_out["outputs"] = json!([{"name": "score"}]);
    expect(
        &w,
        infer,
        &bad_out,
        400,
        "has no output 'score' (outputs: probabilities, label)",
    )
    .await;
    bad_out["outputs"] = json!([{"name": "label"}, {"name": "label"}]);
    expect(
        &w,
        infer,
        &bad_out,
        400,
        "output 'label' already exists in request",
    )
    .await;
    expect(
        &w,
        infer,
        &input(json!([1, 30]), "FP32", json!(vec!["x"; 30])),
        400,
        "element 0 is the string \"x\", but datatype FP32 needs a number",
    )
    .await;

    // Malformed JSON, and JSON sent without any Content-Type (as tritonclient does).
    let r = w.post_raw(infer, b"{\"inputs\": [".to_vec(), None).await;
    assert_eq!(r.status(), 400);
    assert!(r.json::<Value>().await.unwrap()["error"]
        .as_str()
        .unwrap()
        .contains("malformed JSON"));
    let r = w
        .post_raw(
            infer,
            serde_json::to_vec(&input(json!([1, 30]), "FP32", json!(good))).unwrap(),
            None,
        )
        .await;
    assert_eq!(r.status(), 200);

    // Bad binary headers.
    let header = br#"{"inputs":[{"name":"input","shape":[1,30],"datatype":"FP32","parameters":{"binary_data_size":120}}]}"#;
    let mut body = header.to_vec();
    body.extend_from_slice(&[0u8; 100]);
    let r = w.post_raw(infer, body.clone(), Some(header.len())).await;
    assert_eq!(r.status(), 400);
    assert!(r.json::<Value>().await.unwrap()["error"]
        .as_str()
        .unwrap()
        .contains("runs past the end of the body"));
    let r = w.post_raw(infer, body.clone(), Some(body.len() + 10)).await;
    assert_eq!(r.status(), 400);
    let r = w
        .client
        .post(format!("{}{infer}", w.base))
        .header("Inference-Header-Content-Length", "ten")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.json::<Value>().await.unwrap()["error"]
        .as_str()
        .unwrap()
        .contains("Inference-Header-Content-Length"));

    // The server stays live after every error.
    assert_eq!(w.get("/v2/health/live").await.0, 200);
    w.stop().await;
}

#[tokio::test]
async fn oversize_body_gets_413() {
    let w = TestWorker::start_with(
        vatic_testkit::root().join("models"),
        None,
        |s| s.server.max_body_bytes = 1000,
        true,
    )
    .await;
    let body = input(json!([10, 30]), "FP32", json!(vec![1.0; 300]));
    let (status, resp) = w.post_json("/v2/models/breast_cancer/infer", &body).await;
    assert_eq!(status, 413, "{resp}");
    assert!(resp["error"]
        .as_str()
        .unwrap()
        .contains("exceeds the limit of 1000 bytes"));
    w.stop().await;
}

#[tokio::test]
async fn full_queue_gets_503_with_retry_after() {
    // One instance and a long queue delay hold the first request in the queue of size 1.
    let toml = "[batching]\nmax_queue_size = 1\nmax_queue_delay_us = 1500000\ninstances = 1\n";
    let w = TestWorker::start(crate::helpers::with_toml("breast_cancer", toml)).await;
    let body = input(json!([1, 30]), "FP32", json!(row()));
    let first = {
        let (client, url, body) = (
            w.client.clone(),
            format!("{}/v2/models/breast_cancer/infer", w.base),
            body.clone(),
        );
        tokio::spawn(async move {
            client
                .post(url)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    while w.engine().resolve("breast_cancer", None).unwrap().queued() == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let r = w
        .client
        .post(format!("{}/v2/models/breast_cancer/infer", w.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers().get("retry-after").unwrap(), "1");
    let msg: Value = r.json().await.unwrap();
    assert!(
        msg["error"]
            .as_str()
            .unwrap()
            .contains("overloaded: its queue holds 1 requests"),
        "{msg}"
    );
    assert_eq!(
        first.await.unwrap(),
        200,
        "the queued request is still answered"
    );
    w.stop().await;
}

#[tokio::test]
async fn request_past_its_timeout_gets_503() {
    let toml = "[batching]\ntimeout_ms = 50\nmax_queue_delay_us = 2000000\n";
    let w = TestWorker::start(crate::helpers::with_toml("breast_cancer", toml)).await;
    let (status, resp) = w
        .post_json(
            "/v2/models/breast_cancer/infer",
            &input(json!([1, 30]), "FP32", json!(row())),
        )
        .await;
    assert_eq!(status, 503, "{resp}");
    assert!(
        resp["error"]
            .as_str()
            .unwrap()
            .contains("timed out after 50 ms"),
        "{resp}"
    );
    w.stop().await;
}

#[tokio::test]
async fn unknown_model_routes_are_404() {
    let w = TestWorker::start(one("breast_cancer")).await;
    for path in [
        "/v2/models/nope",
        "/v2/models/nope/ready",
        "/v2/models/nope/config",
        "/v2/models/nope/stats",
        "/v2/models/breast_cancer/versions/2/ready",
    ] {
        let (status, body) = w.get(path).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert!(body["error"].is_string());
    }
    w.stop().await;
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

#[tokio::test]
async fn gzip_bodies_are_read_and_their_limit_counts_decompressed_bytes() {
    let w = TestWorker::start_with(
        vatic_testkit::root().join("models"),
        None,
        |s| s.server.max_body_bytes = 4096,
        true,
    )
    .await;
    let url = format!("{}/v2/models/breast_cancer/infer", w.base);
    let reference = vatic_testkit::demo_reference();
    let body = gzip(&serde_json::to_vec(&reference.v2_request(0..2)).unwrap());
    let r = w
        .client
        .post(&url)
        .header("Content-Encoding", "gzip")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    reference.check_response(&r.json().await.unwrap(), 0..2);
    // A small compressed body that inflates past the limit is refused, not buffered.
    let bomb = gzip(&vec![b' '; 1 << 20]);
    assert!(bomb.len() < 4096);
    let r = w
        .client
        .post(&url)
        .header("Content-Encoding", "gzip")
        .body(bomb)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // Answers are compressed for clients that ask.
    let r = w
        .client
        .post(&url)
        .header("Accept-Encoding", "gzip")
        .json(&reference.v2_request(0..2))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-encoding"], "gzip");
    w.stop().await;
}
