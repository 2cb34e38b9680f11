//! Every fixture model answers as onnxruntime did, in JSON and in binary.

use crate::helpers::{one, TestWorker};
use bytes::Bytes;
use serde_json::json;
use vatic_schema::v2;

#[tokio::test]
async fn fixtures_match_onnxruntime() {
    let repo = vatic_testkit::repo(
        &["cnn", "fixed_batch", "two_io", "int64", "resnet"].map(|n| vatic_testkit::RepoModel {
            name: n,
            source: n,
            model_toml: None,
        }),
    );
    let w = TestWorker::start(repo).await;
    for name in ["cnn", "fixed_batch", "two_io", "int64", "resnet"] {
        let fixture = vatic_testkit::fixture(name);
        let (status, body) = w
            .post_json(&format!("/v2/models/{name}/infer"), &fixture.v2_request())
            .await;
        assert_eq!(status, 200, "{name}: {body}");
        fixture.check_response(&body);
        assert_eq!(body["model_name"], name);
        assert_eq!(body["model_version"], "1");
    }
    // The fixed-batch model takes exactly its declared shape: it cannot batch or split.
    let one_row = json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]});
    let (status, body) = w.post_json("/v2/models/fixed_batch/infer", &one_row).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("expected shape [2, 4], got [1, 4]"),
        "{body}"
    );
    w.stop().await;
}

#[tokio::test]
async fn demo_model_matches_reference_for_all_rows_and_one_by_one() {
    let w = TestWorker::start(one("breast_cancer")).await;
    let reference = vatic_testkit::demo_reference();
    let n = reference.inputs.len();
    let (status, body) = w
        .post_json(
            "/v2/models/breast_cancer/infer",
            &reference.v2_request(0..n),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    reference.check_response(&body, 0..n);
    for i in 0..5 {
        let (_, body) = w
            .post_json(
                "/v2/models/breast_cancer/versions/1/infer",
                &reference.v2_request(i..i + 1),
            )
            .await;
        reference.check_response(&body, i..i + 1);
    }
    w.stop().await;
}

#[tokio::test]
async fn binary_inputs_and_outputs_round_trip() {
    let w = TestWorker::start(one("int64")).await;
    let fixture = vatic_testkit::fixture("int64");
    // Encode the fixture's JSON request as binary with the schema crate, as a client would.
    let json_body = serde_json::to_vec(&fixture.v2_request()).unwrap();
    let mut req = v2::decode_request(&Bytes::from(json_body), None).unwrap();
    req.parameters
        .insert("binary_data_output".into(), json!(true));
    req.outputs.push(vatic_schema::RequestedOutput {
        name: "embedding".into(),
        parameters: serde_json::from_value(json!({"binary_data": false})).unwrap(),
    });
    req.outputs.push(vatic_schema::RequestedOutput {
        name: "argmax".into(),
        parameters: Default::default(),
    });
    let enc = v2::encode_request(&req, true);
    let r = w
        .post_raw("/v2/models/int64/infer", enc.body, enc.header_length)
        .await;
    assert_eq!(r.status(), 200);
    let header = r
        .headers()
        .get("Inference-Header-Content-Length")
        .expect("binary response")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = r.bytes().await.unwrap();
    let resp = v2::decode_response(&body, Some(header)).unwrap();
    // Only the requested outputs, in the order asked: embedding as JSON, argmax as binary.
    let names: Vec<&str> = resp.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["embedding", "argmax"]);
    let head: serde_json::Value = serde_json::from_slice(&body[..header]).unwrap();
    assert!(
        head["outputs"][0].get("parameters").is_none(),
        "JSON output without parameters: {head}"
    );
    assert_eq!(head["outputs"][1]["parameters"]["binary_data_size"], 24);
    let want = fixture.outputs.iter().find(|o| o.name == "argmax").unwrap();
    let got: Vec<serde_json::Value> = resp.outputs[1].json_values();
    assert_eq!(got, want.data);
    w.stop().await;
}

#[tokio::test]
async fn metadata_config_and_index() {
    let repo = vatic_testkit::repo(&[
        vatic_testkit::RepoModel {
            name: "breast_cancer",
            source: "breast_cancer",
            model_toml: None,
        },
        vatic_testkit::RepoModel {
            name: "fixed_batch",
            source: "fixed_batch",
            model_toml: None,
        },
    ]);
    let w = TestWorker::start(repo).await;
    let (status, meta) = w.get("/v2/models/breast_cancer").await;
    assert_eq!(status, 200);
    assert_eq!(
        meta,
        json!({"name": "breast_cancer", "versions": ["1"], "platform": "onnx_onnxv1",
               "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 30]}],
               "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]},
                           {"name": "label", "datatype": "INT64", "shape": [-1]}]})
    );
    let (_, config) = w.get("/v2/models/breast_cancer/versions/1/config").await;
    assert_eq!(config["max_batch_size"], 32);
    assert_eq!(
        config["input"][0],
        json!({"name": "input", "data_type": "TYPE_FP32", "dims": [30]})
    );
    assert_eq!(
        config["output"][1],
        json!({"name": "label", "data_type": "TYPE_INT64", "dims": []})
    );
    assert!(config["dynamic_batching"].is_object());
    // A fixed-batch model does not batch: max_batch_size 0 and full dims, as in Triton.
    let (_, config) = w.get("/v2/models/fixed_batch/config").await;
    assert_eq!(config["max_batch_size"], 0);
    assert_eq!(config["input"][0]["dims"], json!([2, 4]));
    assert!(config.get("dynamic_batching").is_none());
    let (_, server) = w.get("/v2").await;
    assert!(server["extensions"]
        .as_array()
        .unwrap()
        .contains(&json!("binary_tensor_data")));
    let index = w.index().await;
    assert_eq!(index.len(), 2);
    assert!(index.iter().all(|m| m["state"] == "READY"));
    w.stop().await;
}

#[tokio::test]
async fn model_toml_overrides_batching_and_signature() {
    let toml = r#"
        [batching]
        max_batch_size = 8
        preferred_batch_sizes = [4]
        [[inputs]]
        name = "input"
        datatype = "FP32"
        shape = [-1, 30]
        [[outputs]]
        name = "probabilities"
        datatype = "FP64"
        shape = [-1, 2]
        [[outputs]]
        name = "label"
        datatype = "INT32"
        shape = [-1]
    "#;
    let w = TestWorker::start(crate::helpers::with_toml("breast_cancer", toml)).await;
    let (_, config) = w.get("/v2/models/breast_cancer/config").await;
    assert_eq!(config["max_batch_size"], 8);
    assert_eq!(
        config["dynamic_batching"]["preferred_batch_size"],
        json!([4])
    );
    let reference = vatic_testkit::demo_reference();
    let (status, body) = w
        .post_json(
            "/v2/models/breast_cancer/infer",
            &reference.v2_request(0..3),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // Outputs come back converted to the declared datatypes.
    assert_eq!(body["outputs"][0]["datatype"], "FP64");
    assert_eq!(body["outputs"][1]["datatype"], "INT32");
    reference.check_response(&body, 0..3);
    w.stop().await;
}
