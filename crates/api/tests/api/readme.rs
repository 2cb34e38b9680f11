//! The README's curl examples answer exactly as the README shows.

use crate::helpers::TestApi;

const V2_ANSWER: &str = r#"{"model_name":"breast_cancer","model_version":"1","outputs":[{"name":"probabilities","datatype":"FP32","shape":[1,2],"data":[0.99864864,0.0013513863]},{"name":"label","datatype":"INT64","shape":[1],"data":[0]}]}"#;
const TF_ANSWER: &str =
    r#"{"predictions":[{"label":0,"probabilities":[0.99864864,0.0013513863]}]}"#;

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
    assert_eq!(r.text().await.unwrap(), V2_ANSWER);

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
    assert_eq!(r.text().await.unwrap(), V2_ANSWER);

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
    assert_eq!(r.text().await.unwrap(), TF_ANSWER);
    api.stop().await;
}
