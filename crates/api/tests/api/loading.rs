//! A new version loads off the inference threads: while a large model is checked and loaded,
//! requests to a version already served keep succeeding, and requests to the loading version
//! get 503 with Retry-After until it is ready. In standalone mode on both backends, and in a
//! cluster whose worker is a separate process.

use crate::helpers::{
    migrated, registry_api, registry_standalone_settings, registry_worker, wait_post, TestApi,
    Traffic,
};
use serde_json::{json, Value};
use std::time::Duration;
use vatic_testkit::TestDb;

/// The large model: 1,500 dense layers of width 64 (about 25 MB). tract takes seconds to load
/// and optimise a graph of that many nodes, much longer than one request to the demo model.
const WIDTH: usize = 64;
const LAYERS: usize = 1500;

/// Longest wait for the large model to be checked, stored and loaded.
const LOAD_TIMEOUT: Duration = Duration::from_secs(120);

/// What a request to the large model got while it was not ready.
struct NotReady {
    status: u16,
    retry_after: Option<String>,
    body: Value,
}

/// Pushes the large model under `traffic`, then watches it until it serves. Returns how many
/// demo requests succeeded while it was being checked and loaded, and what a request to it
/// got while it was loading.
async fn push_large_model_under(api: &TestApi, traffic: &Traffic, label: &str) -> (u64, NotReady) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("large.onnx");
    let path = file.clone();
    tokio::task::spawn_blocking(move || {
        vatic_testkit::onnx::write_dense_chain(&path, WIDTH, LAYERS)
    })
    .await
    .unwrap()
    .unwrap();

    let before_push = traffic.served();
    let pushed = api
        .client
        .post(format!("{}/admin/v1/models/large/versions", api.base))
        .header("Content-Type", "application/octet-stream")
        .body(std::fs::read(&file).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(pushed.status().as_u16(), 201, "{label}: push");
    let during_check = traffic.served() - before_push;

    // From the push's answer until the version serves, it is fetched and loaded; each look at
    // it meanwhile must be a 503 that says to retry.
    let request = json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, WIDTH], "data": vec![1.0f32; WIDTH]}]});
    let infer = format!("{}/v2/models/large/versions/1/infer", api.base);
    let before_load = traffic.served();
    let deadline = tokio::time::Instant::now() + LOAD_TIMEOUT;
    let mut not_ready = None;
    let body = loop {
        let r = api.client.post(&infer).json(&request).send().await.unwrap();
        let status = r.status().as_u16();
        let retry_after = r
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        let body: Value = r.json().await.unwrap_or(Value::Null);
        match status {
            200 => break body,
            503 => {
                not_ready.get_or_insert(NotReady {
                    status,
                    retry_after,
                    body,
                });
            }
            _ => panic!("{label}: the loading version answered {status} {body}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{label}: the large model never served"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let during_load = traffic.served() - before_load;
    assert_eq!(body["outputs"][0]["name"], "y", "{label}: {body}");
    assert_eq!(
        body["outputs"][0]["shape"],
        json!([1, WIDTH]),
        "{label}: {body}"
    );
    eprintln!(
        "{label}: {during_check} demo requests served while the upload was checked, {during_load} while the version was fetched and loaded"
    );
    (
        during_check + during_load,
        not_ready.unwrap_or_else(|| panic!("{label}: the version was never seen loading")),
    )
}

fn check_not_ready(label: &str, seen: &NotReady) {
    assert_eq!(seen.status, 503, "{label}");
    assert_eq!(
        seen.retry_after.as_deref(),
        Some("1"),
        "{label}: {}",
        seen.body
    );
    let error = seen.body["error"].as_str().unwrap_or_default();
    assert!(error.contains("large"), "{label}: {}", seen.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_serves_other_versions_while_a_large_model_loads() {
    for db in TestDb::both() {
        let label = db.url.split(':').next().unwrap().to_string();
        let dir = tempfile::tempdir().unwrap();
        let settings =
            registry_standalone_settings(&db.url, vatic_testkit::root().join("models"), dir.path());
        let api = TestApi::start(settings, None).await;
        let traffic = Traffic::start(&api, 2);
        let (served, seen) = push_large_model_under(&api, &traffic, &label).await;
        let (_, failures) = traffic.stop().await;
        assert_eq!(failures, Vec::<String>::new(), "{label}");
        assert!(served > 0, "{label}: no request was served during the load");
        check_not_ready(&label, &seen);
        api.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_worker_serves_other_versions_while_a_large_model_loads() {
    let db = TestDb::postgres();
    migrated(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let _worker = registry_worker(&db.url, &dir.path().join("cache"));
    let api = registry_api(&db, dir.path()).await;
    let demo = vatic_testkit::root().join("models/breast_cancer/1/model.onnx");
    let pushed = api
        .client
        .post(format!(
            "{}/admin/v1/models/breast_cancer/versions",
            api.base
        ))
        .body(std::fs::read(demo).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(pushed.status().as_u16(), 201);
    let request = vatic_testkit::demo_reference().v2_request(0..1);
    let infer = "/v2/models/breast_cancer/infer";
    wait_post(&api, infer, &request, 200, Duration::from_secs(30)).await;

    let traffic = Traffic::start(&api, 2);
    let (served, seen) = push_large_model_under(&api, &traffic, "cluster").await;
    let (_, failures) = traffic.stop().await;
    assert_eq!(failures, Vec::<String>::new());
    assert!(served > 0, "no request was served during the load");
    check_not_ready("cluster", &seen);
    assert!(
        seen.body["error"]
            .as_str()
            .unwrap()
            .contains("no worker reports model 'large' version 1 ready"),
        "{}",
        seen.body
    );

    // Unknown models and versions are 404 at the api, not 503.
    let (status, body) = api
        .post_json("/v2/models/breast_cancer/versions/9/infer", &request)
        .await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("no version '9'"),
        "{body}"
    );
    let (status, body) = api.post_json("/v2/models/nope/infer", &request).await;
    assert_eq!(status, 404, "{body}");
    api.stop().await;
}

/// A standalone server reports ready only once the models it found at start are loaded:
/// registry passes that come while a slow model is still loading do not make it ready early,
/// where a load balancer would send it requests its models cannot answer yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_is_ready_only_once_every_model_found_at_start_is() {
    let db = TestDb::sqlite();
    let models = tempfile::tempdir().unwrap();
    let demo = models.path().join("breast_cancer/1");
    std::fs::create_dir_all(&demo).unwrap();
    std::fs::copy(
        vatic_testkit::root().join("models/breast_cancer/1/model.onnx"),
        demo.join("model.onnx"),
    )
    .unwrap();
    let large = models.path().join("large/1");
    std::fs::create_dir_all(&large).unwrap();
    let file = large.join("model.onnx");
    tokio::task::spawn_blocking(move || {
        vatic_testkit::onnx::write_dense_chain(&file, WIDTH, LAYERS)
    })
    .await
    .unwrap()
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut settings =
        registry_standalone_settings(&db.url, models.path().to_path_buf(), dir.path());
    // Many registry passes while the large model loads.
    settings.registry.poll_ms = 20;
    let api = TestApi::start(settings, None).await;
    for model in ["breast_cancer", "large"] {
        let (status, body) = api.get(&format!("/v2/models/{model}/ready")).await;
        assert_eq!(status, 200, "ready before {model} was: {body}");
    }
    api.stop().await;
}
