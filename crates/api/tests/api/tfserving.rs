//! TF-Serving's REST API against the demo model.

use crate::helpers::TestApi;
use serde_json::{json, Value};

#[tokio::test]
async fn predict_row_and_columnar_forms() {
    let api = TestApi::standalone().await;
    let reference = vatic_testkit::demo_reference();
    let rows: Vec<Vec<f64>> = reference.inputs[..3].to_vec();
    let (status, body) = api
        .post_json(
            "/v1/models/breast_cancer:predict",
            &json!({"instances": rows}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let predictions = body["predictions"].as_array().unwrap();
    assert_eq!(predictions.len(), 3);
    for (i, p) in predictions.iter().enumerate() {
        assert_eq!(p["label"], reference.label[i]);
        let want: Vec<Value> = reference.probabilities[i]
            .iter()
            .map(|x| json!(x))
            .collect();
        vatic_testkit::assert_values(
            "probabilities",
            p["probabilities"].as_array().unwrap(),
            &want,
        );
    }
    let (status, body) = api
        .post_json(
            "/v1/models/breast_cancer/versions/1:predict",
            &json!({"signature_name": "serving_default", "inputs": {"input": rows}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let want: Vec<Value> = reference.label[..3].iter().map(|l| json!(l)).collect();
    assert_eq!(body["outputs"]["label"], json!(want));
    assert_eq!(
        body["outputs"]["probabilities"].as_array().unwrap().len(),
        3
    );
    // The one signature, also by an empty name; any other name is refused and the one named.
    let (status, body) = api
        .post_json(
            "/v1/models/breast_cancer:predict",
            &json!({"signature_name": "", "instances": rows}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = api
        .post_json(
            "/v1/models/breast_cancer:predict",
            &json!({"signature_name": "classify_v2", "instances": rows}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["error"],
        "signature_name 'classify_v2': the model has no such signature; its signatures: serving_default"
    );
    // A lone row without the batch dimension is refused with a hint, not misread.
    let (status, body) = api
        .post_json(
            "/v1/models/breast_cancer:predict",
            &json!({"inputs": rows[0]}),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("for one row send shape [1, ...]"),
        "{body}"
    );
    api.stop().await;
}

#[tokio::test]
async fn status_metadata_and_errors() {
    let api = TestApi::standalone().await;
    let (status, body) = api.get("/v1/models/breast_cancer").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"model_version_status": [{"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]})
    );
    let (_, body) = api.get("/v1/models/breast_cancer/versions/1").await;
    assert_eq!(body["model_version_status"][0]["version"], "1");
    let (status, body) = api.get("/v1/models/breast_cancer/metadata").await;
    assert_eq!(status, 200);
    let sig = &body["metadata"]["signature_def"]["signature_def"]["serving_default"];
    assert_eq!(sig["inputs"]["input"]["dtype"], "DT_FLOAT");
    assert_eq!(body["model_spec"]["version"], "1");
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "/v1/models/nope:predict",
            json!({"instances": [[1]]}),
            404,
            "unknown model 'nope'",
        ),
        (
            "/v1/models/breast_cancer:classify",
            json!({"examples": []}),
            501,
            ":classify is not supported",
        ),
        (
            "/v1/models/breast_cancer:explain",
            json!({}),
            400,
            "use <model>:predict",
        ),
        (
            "/v1/models/breast_cancer:predict",
            json!({"instances": [[1, 2]], "inputs": [[1]]}),
            400,
            "not both",
        ),
        (
            "/v1/models/breast_cancer:predict",
            json!({"rows": []}),
            400,
            "malformed JSON",
        ),
        (
            "/v1/models/breast_cancer:predict",
            json!({"instances": [[1, 2], [3]]}),
            400,
            "ragged",
        ),
    ];
    for (path, body, status, needle) in cases {
        let (got, resp) = api.post_json(path, &body).await;
        assert_eq!(got, status, "{path}: {resp}");
        assert!(
            resp["error"].as_str().unwrap().contains(needle),
            "{path}: {resp}"
        );
    }
    assert_eq!(api.get("/v1/models/nope").await.0, 404);
    assert_eq!(api.get("/v1/models/breast_cancer/versions/3").await.0, 404);
    api.stop().await;
}

#[tokio::test]
async fn nan_and_infinity_tokens_are_read_as_tf_serving_reads_them() {
    let api = TestApi::standalone().await;
    let reference = vatic_testkit::demo_reference();
    let row = |i: usize, at: usize, token: &str| {
        let mut cells: Vec<String> = reference.inputs[i].iter().map(|x| x.to_string()).collect();
        cells[at] = token.to_string();
        format!("[{}]", cells.join(","))
    };
    let post = |body: String| {
        let (client, url) = (
            api.client.clone(),
            format!("{}/v1/models/breast_cancer:predict", api.base),
        );
        async move {
            let r = client
                .post(url)
                .header("Content-Type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    // An infinite feature saturates the model as the largest finite float does.
    let body = format!(
        r#"{{"instances": [{}, {}, {}]}}"#,
        row(0, 3, "Infinity"),
        row(1, 0, "-Infinity"),
        row(2, 7, "NaN")
    );
    let (status, answer) = post(body).await;
    assert_eq!(status, 200, "{answer}");
    let predictions = answer["predictions"].as_array().unwrap();
    assert_eq!(predictions.len(), 3);
    // The NaN row is answered too (what the model makes of NaN is the engine's).
    assert!(predictions[2]["label"].is_i64(), "{answer}");
    let body = format!(
        r#"{{"instances": [{}, {}]}}"#,
        row(0, 3, "3.4e38"),
        row(1, 0, "-3.4e38")
    );
    let (status, finite) = post(body).await;
    assert_eq!(status, 200, "{finite}");
    assert_eq!(
        predictions[..2],
        finite["predictions"].as_array().unwrap()[..],
        "{answer} {finite}"
    );
    // A misspelt token is refused.
    let (status, answer) = post(format!(r#"{{"instances": [{}]}}"#, row(0, 1, "Nan"))).await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .starts_with("malformed JSON body"),
        "{answer}"
    );
    api.stop().await;
}
