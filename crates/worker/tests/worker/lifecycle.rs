//! Probes, a repository with a broken model, and the drain on shutdown.

use crate::helpers::{one, TestWorker};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn probes_report_live_ready_and_model_ready() {
    let w = TestWorker::start(one("breast_cancer")).await;
    assert_eq!(w.get("/v2/health/live").await, (200, json!({"live": true})));
    assert_eq!(
        w.get("/v2/health/ready").await,
        (200, json!({"ready": true}))
    );
    assert_eq!(w.get("/readyz").await.0, 200);
    assert_eq!(
        w.get("/v2/models/breast_cancer/ready").await,
        (200, json!({"name": "breast_cancer", "ready": true}))
    );
    assert_eq!(
        w.get("/v2/models/breast_cancer/versions/1/ready").await.0,
        200
    );
    w.stop().await;
}

#[tokio::test]
async fn broken_model_leaves_worker_not_ready_but_others_serve() {
    let repo = one("breast_cancer");
    let broken = repo.path().join("broken/1");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("model.onnx"), b"this is not an onnx file").unwrap();
    // A folder without ONNX versions (another backend's model) is skipped, not an error.
    std::fs::create_dir_all(repo.path().join("tf_model/1/model.savedmodel")).unwrap();
    let dir = repo.path().to_path_buf();
    let w = TestWorker::start_with(dir, Some(repo), |_| {}, false).await;
    vatic_testkit::wait_ok(
        &w.client,
        &format!("{}/v2/models/breast_cancer/ready", w.base),
    )
    .await;
    let index = w.index().await;
    let broken = index
        .iter()
        .find(|m| m["name"] == "broken")
        .expect("listed");
    assert_eq!(broken["state"], "UNAVAILABLE");
    assert!(!broken["reason"].as_str().unwrap().is_empty());
    assert_eq!(index.len(), 2, "tf_model is skipped: {index:?}");
    assert_eq!(
        w.get("/v2/health/ready").await,
        (400, json!({"ready": false}))
    );
    assert_eq!(w.get("/readyz").await.0, 503);
    assert_eq!(w.get("/v2/health/live").await.0, 200);
    let (status, body) = w.get("/v2/models/broken/ready").await;
    assert_eq!((status, body["ready"].clone()), (503, json!(false)));
    let (status, body) = w
        .post_json("/v2/models/broken/infer", &json!({"inputs": []}))
        .await;
    assert_eq!(status, 503);
    assert!(
        body["error"].as_str().unwrap().contains("failed to load"),
        "{body}"
    );
    let reference = vatic_testkit::demo_reference();
    let (status, _) = w
        .post_json(
            "/v2/models/breast_cancer/infer",
            &reference.v2_request(0..1),
        )
        .await;
    assert_eq!(status, 200);
    w.stop().await;
}

#[tokio::test]
async fn shutdown_reports_not_ready_at_once_and_finishes_queued_work() {
    let toml = "[batching]\nmax_queue_delay_us = 500000\ninstances = 1\n";
    let w = TestWorker::start(crate::helpers::with_toml("breast_cancer", toml)).await;
    let reference = vatic_testkit::demo_reference();
    let queued = {
        let (client, url, body) = (
            w.client.clone(),
            format!("{}/v2/models/breast_cancer/infer", w.base),
            reference.v2_request(0..2),
        );
        tokio::spawn(async move {
            let r = client.post(url).json(&body).send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            )
        })
    };
    while w.engine().resolve("breast_cancer", None).unwrap().queued() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The sequence SIGTERM starts, with a drain long enough to probe within. Readiness turns
    // false at its first step, before `probing` runs.
    let stopping = w.server.shutdown(Duration::from_secs(1));
    let probing = async {
        assert_eq!(
            w.get("/v2/health/ready").await.0,
            400,
            "not ready during the drain"
        );
        assert_eq!(
            w.get("/v2/health/live").await.0,
            200,
            "still live during the drain"
        );
        queued.await.unwrap()
    };
    let ((), (status, body)) = tokio::join!(stopping, probing);
    assert_eq!(status, 200, "{body}");
    reference.check_response(&body, 0..2);
}

#[tokio::test]
async fn model_toml_naming_a_missing_tensor_fails_that_model_with_the_reason() {
    let toml = "[[inputs]]\nname = \"features\"\ndatatype = \"FP32\"\nshape = [-1, 30]\n";
    let repo = crate::helpers::with_toml("breast_cancer", toml);
    let dir = repo.path().to_path_buf();
    let w = TestWorker::start_with(dir, Some(repo), |_| {}, false).await;
    let index = w.index().await;
    assert_eq!(index[0]["state"], "UNAVAILABLE", "{index:?}");
    let reason = index[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("model.toml names input 'features', which the graph does not have (input)"),
        "{reason}"
    );
    w.stop().await;
}

/// Two loads at once: the first list's slow model, then a pass that adds a quick one. The quick
/// load ends first, and the engine stays not ready until the slow one has loaded too.
#[test]
fn the_engine_is_ready_only_when_its_last_load_ends() {
    use std::sync::Arc;
    use vatic_worker::{Engine, EngineSettings, VersionSpec};
    let dir = tempfile::tempdir().unwrap();
    let slow = dir.path().join("slow.onnx");
    vatic_testkit::onnx::write_dense_chain(&slow, 64, 1500).unwrap();
    let spec = |model: &str, file: std::path::PathBuf| VersionSpec {
        model: model.into(),
        version: 1,
        file,
        config: String::new(),
        origin: format!("{model} (test)"),
        default: true,
        engine: None,
    };
    let slow_spec = spec("slow", slow);
    let quick_spec = spec(
        "breast_cancer",
        vatic_testkit::root().join("models/breast_cancer/1/model.onnx"),
    );
    let mut settings = EngineSettings::default();
    settings.profile.at_load = false;
    let engine = Arc::new(Engine::new(&settings));
    let first = engine.apply(vec![slow_spec.clone()]).expect("loads slow");
    let second = engine
        .apply(vec![slow_spec, quick_spec])
        .expect("loads the quick model");
    second.join().unwrap();
    assert_eq!(engine.model_ready("breast_cancer", None), Ok(true));
    assert_eq!(
        engine.model_ready("slow", None),
        Ok(false),
        "the slow model loads for seconds, longer than the quick one"
    );
    assert!(!engine.is_ready(), "ready while the first load still runs");
    first.join().unwrap();
    assert_eq!(engine.model_ready("slow", None), Ok(true));
    assert!(engine.is_ready());
    engine.shutdown();
}
