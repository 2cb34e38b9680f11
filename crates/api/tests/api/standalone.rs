//! Standalone mode: the api with its in-process worker.

use crate::helpers::{binary_post, TestApi};
use bytes::Bytes;
use serde_json::{json, Value};
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
    settings.max_body_bytes = 2048;
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

#[tokio::test]
async fn shutdown_turns_not_ready_first() {
    let mut api = TestApi::standalone().await;
    let (app_state, handle) = (api.app.state.clone(), api.handle.clone());
    let stopping = {
        let base = api.base.clone();
        let client = api.client.clone();
        tokio::spawn(async move {
            // While draining, readiness is false and requests are still served.
            let r = client
                .get(format!("{base}/v2/health/ready"))
                .send()
                .await
                .unwrap();
            let reference = vatic_testkit::demo_reference();
            let infer = client
                .post(format!("{base}/v2/models/breast_cancer/infer"))
                .json(&reference.v2_request(0..1))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), infer.status().as_u16())
        })
    };
    app_state
        .accepting
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let (ready, infer) = stopping.await.unwrap();
    assert_eq!((ready, infer), (400, 200));
    api.app
        .shutdown(&handle, std::time::Duration::from_millis(100))
        .await;
}
