//! The README's curl examples answer as the README shows: the same JSON, with numbers equal
//! to float32 rounding (the last digits depend on which of tract's kernels the CPU runs).

use crate::helpers::TestApi;

const V2_ANSWER: &str = r#"{"model_name":"breast_cancer","model_version":"1","outputs":[{"name":"probabilities","datatype":"FP32","shape":[1,2],"data":[0.99864864,0.0013513863]},{"name":"label","datatype":"INT64","shape":[1],"data":[0]}]}"#;
const TF_ANSWER: &str =
    r#"{"predictions":[{"label":0,"probabilities":[0.99864864,0.0013513863]}]}"#;

/// Whether two answers are the same JSON, numbers equal within float32 rounding error.
fn same(got: &serde_json::Value, shown: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (got, shown) {
        (Value::Number(a), Value::Number(b)) if a.is_f64() || b.is_f64() => {
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            (a - b).abs() <= 1e-6 + 1e-5 * b.abs()
        }
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(x, y))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len() && a.iter().all(|(k, x)| b.get(k).is_some_and(|y| same(x, y)))
        }
        _ => got == shown,
    }
}

/// Asserts that `got` is the answer `shown`, as [`same`] compares them.
fn assert_answer(got: &str, shown: &str) {
    let parsed = |s: &str| serde_json::from_str::<serde_json::Value>(s).expect(s);
    assert!(
        same(&parsed(got), &parsed(shown)),
        "got {got}\nREADME shows {shown}"
    );
}

#[test]
fn answers_compare_as_json_with_float32_rounding() {
    assert_answer(V2_ANSWER, V2_ANSWER);
    let other_kernels = V2_ANSWER
        .replace("0.99864864", "0.9986486")
        .replace("0.0013513863", "0.0013514161");
    assert_answer(&other_kernels, V2_ANSWER);
    for wrong in [
        V2_ANSWER.replace("0.99864864", "0.9987"),
        V2_ANSWER.replace("\"data\":[0]", "\"data\":[1]"),
        V2_ANSWER.replace("[1,2]", "[2,1]"),
        V2_ANSWER.replace("\"model_version\":\"1\",", ""),
    ] {
        let parsed = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
        assert!(!same(&parsed(&wrong), &parsed(V2_ANSWER)), "{wrong}");
    }
}

fn readme() -> String {
    std::fs::read_to_string(vatic_testkit::root().join("README.md")).expect("README.md")
}

/// The first line of the README that starts with `prefix`, e.g. the TF-Serving curl body.
fn readme_line(prefix: &str) -> String {
    readme()
        .lines()
        .find(|l| l.trim_start().starts_with(prefix))
        .unwrap_or_else(|| panic!("README line {prefix}"))
        .trim()
        .to_string()
}

#[tokio::test]
async fn readme_examples_answer_as_shown() {
    let readme = readme();
    assert!(readme.contains(V2_ANSWER), "README shows the V2 answer");
    assert!(
        readme.contains(TF_ANSWER),
        "README shows the TF-Serving answer"
    );
    let api = TestApi::standalone().await;
    let dir = vatic_testkit::root().join("models/breast_cancer");

    let body = std::fs::read(dir.join("example.json")).unwrap();
    let r = api
        .client
        .post(format!("{}/v2/models/breast_cancer/infer", api.base))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_answer(&r.text().await.unwrap(), V2_ANSWER);

    let body = std::fs::read(dir.join("example.bin")).unwrap();
    let header_length = std::fs::read_to_string(dir.join("example.bin.header-length")).unwrap();
    assert!(readme.contains(&format!(
        "Inference-Header-Content-Length: {}",
        header_length.trim()
    )));
    let r = api
        .client
        .post(format!("{}/v2/models/breast_cancer/infer", api.base))
        .header("Inference-Header-Content-Length", header_length.trim())
        .header("Content-Type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_answer(&r.text().await.unwrap(), V2_ANSWER);

    // The TF-Serving body is the README's `-d '...'` argument.
    let line = readme_line("-d '{\"instances\"");
    let tf_body = line
        .trim_start_matches("-d '")
        .split('\'')
        .next()
        .unwrap()
        .to_string();
    let r = api
        .client
        .post(format!("{}/v1/models/breast_cancer:predict", api.base))
        .header("Content-Type", "application/json")
        .body(tf_body)
        .send()
        .await
        .unwrap();
    assert_answer(&r.text().await.unwrap(), TF_ANSWER);
    api.stop().await;
}
