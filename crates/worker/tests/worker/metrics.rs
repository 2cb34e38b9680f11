//! The worker's Prometheus endpoint, on its own port: every family is there after traffic,
//! counters move by exactly the requests sent, and they agree with Triton's statistics.

use crate::helpers::{one, TestWorker};
use serde_json::json;
use vatic_testkit::metric as sample;

#[tokio::test]
async fn metrics_count_requests_and_agree_with_the_statistics() {
    let repo = one("cnn");
    let dir = repo.path().to_path_buf();
    let w = TestWorker::start_with(
        dir,
        Some(repo),
        |s| s.server.metrics_listen = Some("127.0.0.1:0".into()),
        true,
    )
    .await;
    let metrics = w.metrics.clone().expect("metrics endpoint");
    let fixture = vatic_testkit::fixture("cnn");
    for _ in 0..3 {
        let (status, body) = w
            .post_json("/v2/models/cnn/infer", &fixture.v2_request())
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let wrong =
        json!({"inputs": [{"name": "nope", "datatype": "FP32", "shape": [1], "data": [1.0]}]});
    for _ in 0..2 {
        let (status, body) = w.post_json("/v2/models/cnn/infer", &wrong).await;
        assert_eq!(status, 400, "{body}");
    }
    // An unknown model is not a label value: it would make the label set unbounded.
    let (status, _) = w.post_json("/v2/models/nope/infer", &wrong).await;
    assert_eq!(status, 404);

    let r = w
        .client
        .get(format!("{metrics}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = r.text().await.unwrap();
    let cnn = [("model", "cnn"), ("version", "1")];
    let with = |extra: (&'static str, &'static str)| {
        let mut l = cnn.to_vec();
        l.push(extra);
        l
    };
    let value = |name: &str, labels: &[(&str, &str)]| {
        sample(&text, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in\n{text}"))
    };
    assert_eq!(
        value("vatic_worker_requests_total", &with(("code", "2xx"))),
        3.0
    );
    assert_eq!(
        value("vatic_worker_requests_total", &with(("code", "4xx"))),
        2.0
    );
    assert!(!text.contains("model=\"nope\""), "{text}");
    assert_eq!(value("vatic_queue_wait_seconds_count", &cnn), 3.0);
    assert_eq!(value("vatic_model_ready", &cnn), 1.0);
    assert_eq!(value("vatic_model_load_seconds_count", &cnn), 1.0);
    assert_eq!(value("vatic_queue_depth", &cnn), 0.0);
    assert_eq!(value("vatic_queue_capacity", &cnn), 1024.0);
    assert_eq!(value("vatic_worker_in_flight_requests", &[]), 0.0);
    assert_eq!(value("vatic_build_info", &[("engine", "tract-onnx")]), 1.0);
    assert!(value("process_resident_memory_bytes", &[]) > 0.0);

    // The same events as Triton's statistics.
    let stats = w.stats("cnn").await;
    let executions = stats["execution_count"].as_f64().unwrap();
    assert_eq!(value("vatic_compute_seconds_count", &cnn), executions);
    assert_eq!(value("vatic_batch_size_count", &cnn), executions);
    assert_eq!(
        value("vatic_batch_size_sum", &cnn),
        stats["inference_count"].as_f64().unwrap()
    );
    assert_eq!(
        value("vatic_queue_wait_seconds_count", &cnn),
        stats["inference_stats"]["queue"]["count"].as_f64().unwrap()
    );
    let queue_ns = stats["inference_stats"]["queue"]["ns"].as_f64().unwrap();
    let queue_s = value("vatic_queue_wait_seconds_sum", &cnn);
    assert!(
        (queue_s - queue_ns / 1e9).abs() < 1e-6,
        "{queue_s} vs {queue_ns} ns"
    );
    // The main port does not serve metrics.
    let (status, _) = w.get("/metrics").await;
    assert_eq!(status, 404);
    w.stop().await;
}
