//! What the prediction log keeps of requests answered over HTTP, per protocol, in `full` mode.

use crate::helpers::{binary_post, migrated, registry_standalone_settings, TestApi};
use bytes::Bytes;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use vatic_schema::v2;
use vatic_store::{ConnectOptions, PredictionRecord, Store};
use vatic_testkit::TestDb;

fn parsed(payload: &Option<String>, what: &str) -> Value {
    let text = payload
        .as_deref()
        .unwrap_or_else(|| panic!("{what}: no payload"));
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{what}: {e}: {text}"))
}

/// A tensor's `data` as the FP32 values it stands for.
fn fp32(data: &Value) -> Vec<f32> {
    let values = data.as_array().unwrap_or_else(|| panic!("data: {data}"));
    values.iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

/// The logged record of each request id, once all of them are in the database.
async fn logged(store: &Store, ids: &[&str]) -> Vec<PredictionRecord> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = store
            .recent_predictions("breast_cancer", 100)
            .await
            .unwrap();
        let found: Vec<PredictionRecord> = ids
            .iter()
            .filter_map(|id| rows.iter().find(|r| r.request_id == *id).cloned())
            .collect();
        if found.len() == ids.len() {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "logged {} of {ids:?}",
            found.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn full_mode_keeps_each_protocols_request_and_answer_as_v2_json() {
    let db = TestDb::postgres();
    migrated(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings =
        registry_standalone_settings(&db.url, vatic_testkit::root().join("models"), dir.path());
    settings.prediction_log.flush_interval_ms = 20;
    let api = TestApi::start(settings, None).await;
    let url = |path: &str| format!("{}{path}", api.base);
    let r = api
        .client
        .patch(url("/admin/v1/models/breast_cancer"))
        .json(&json!({"log_mode": "full", "log_sample_rate": 1.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let reference = vatic_testkit::demo_reference();

    // V2 JSON, pretty-printed, with an id: kept as the client sent it, and the answer as the
    // client got it.
    let mut body = reference.v2_request(0..2);
    body["id"] = json!("my-id");
    let sent = serde_json::to_string_pretty(&body).unwrap();
    let r = api
        .client
        .post(url("/v2/models/breast_cancer/infer"))
        .header("X-Request-ID", "json")
        .header("Content-Type", "application/json")
        .body(sent.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got = r.text().await.unwrap();

    // V2 with the binary extension both ways: kept as V2 JSON, every tensor inline.
    let mut req = v2::decode_request(
        &Bytes::from(serde_json::to_vec(&reference.v2_request(2..5)).unwrap()),
        None,
    )
    .unwrap();
    req.parameters
        .insert("binary_data_output".into(), json!(true));
    let enc = v2::encode_request(&req, true);
    let r = binary_post(
        &api.client,
        &url("/v2/models/breast_cancer/versions/1/infer"),
        enc,
    )
    .header("X-Request-ID", "binary")
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("inference-header-content-length"));

    // TF-Serving: kept as the V2 request it became and the V2 answer it was made from.
    let rows = reference.inputs[5..6].to_vec();
    let r = api
        .client
        .post(url("/v1/models/breast_cancer:predict"))
        .header("X-Request-ID", "tfserving")
        .json(&json!({"instances": rows}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // An error the model answers: the request is kept, with the status and no response.
    let wrong = json!({"inputs": [{"name": "nope", "datatype": "FP32", "shape": [1, 30], "data": reference.inputs[0]}]});
    let r = api
        .client
        .post(url("/v2/models/breast_cancer/infer"))
        .header("X-Request-ID", "error")
        .json(&wrong)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    assert_eq!(status, 400, "{}", r.text().await.unwrap());

    let store = Store::open(&ConnectOptions::new(db.url.clone()), false)
        .await
        .unwrap();
    let records = logged(&store, &["json", "binary", "tfserving", "error"]).await;
    let [json_r, binary_r, tf_r, error_r] = &records[..] else {
        unreachable!()
    };

    assert_eq!(json_r.request.as_deref(), Some(sent.as_str()));
    assert_eq!(json_r.response.as_deref(), Some(got.as_str()));
    assert_eq!((json_r.status, json_r.version.as_str()), (200, "1"));

    let request = parsed(&binary_r.request, "binary request");
    let input = &request["inputs"][0];
    assert_eq!(
        (&input["name"], &input["datatype"], &input["shape"]),
        (&json!("input"), &json!("FP32"), &json!([3, 30]))
    );
    assert_eq!(
        fp32(&input["data"]),
        fp32(&reference.v2_request(2..5)["inputs"][0]["data"])
    );
    assert_eq!(request["parameters"]["binary_data_output"], true);
    let response = parsed(&binary_r.response, "binary response");
    reference.check_response(&response, 2..5);
    assert_eq!(response["model_name"], "breast_cancer");

    let request = parsed(&tf_r.request, "tfserving request");
    assert_eq!(request["inputs"][0]["shape"], json!([1, 30]));
    assert_eq!(
        fp32(&request["inputs"][0]["data"]),
        fp32(&json!(reference.inputs[5]))
    );
    reference.check_response(&parsed(&tf_r.response, "tfserving response"), 5..6);

    assert_eq!(error_r.status, 400);
    assert_eq!(parsed(&error_r.request, "error request"), wrong);
    assert_eq!(error_r.response, None);
    api.stop().await;
}
