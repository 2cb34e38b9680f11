//! The batcher combines rows of concurrent requests, never beyond max_batch_size, and gives each
//! request its own rows back.

use crate::helpers::{one, with_toml, TestWorker};
use serde_json::{json, Value};
use std::sync::Arc;

#[tokio::test]
async fn concurrent_requests_get_their_own_answers_and_are_batched() {
    let toml = "[batching]\nmax_batch_size = 16\nmax_queue_delay_us = 2000\ninstances = 2\n";
    let w = Arc::new(TestWorker::start(with_toml("breast_cancer", toml)).await);
    let reference = Arc::new(vatic_testkit::demo_reference());
    let n = reference.inputs.len();
    let mut tasks = Vec::new();
    let mut total_rows = 0u64;
    for i in 0..200usize {
        let rows = 1 + i % 3;
        let start = (i * 7) % (n - rows);
        total_rows += rows as u64;
        let (w, reference) = (w.clone(), reference.clone());
        tasks.push(tokio::spawn(async move {
            let (status, body) = w
                .post_json(
                    "/v2/models/breast_cancer/infer",
                    &reference.v2_request(start..start + rows),
                )
                .await;
            assert_eq!(status, 200, "{body}");
            reference.check_response(&body, start..start + rows);
        }));
    }
    for t in tasks {
        t.await.expect("request task");
    }
    let stats = w.stats("breast_cancer").await;
    assert_eq!(stats["inference_stats"]["success"]["count"], 200);
    assert_eq!(stats["inference_count"], total_rows);
    let executions = stats["execution_count"].as_u64().unwrap();
    assert!(
        executions < 200,
        "200 requests ran in {executions} executions: the batcher combined none"
    );
    for b in stats["batch_stats"].as_array().unwrap() {
        assert!(
            b["batch_size"].as_u64().unwrap() <= 16,
            "batch over max_batch_size: {b}"
        );
    }
    Arc::try_unwrap(w).ok().expect("sole owner").stop().await;
}

#[tokio::test]
async fn request_larger_than_max_batch_size_runs_alone() {
    let w = TestWorker::start(with_toml(
        "breast_cancer",
        "[batching]\nmax_batch_size = 4\n",
    ))
    .await;
    let reference = vatic_testkit::demo_reference();
    let (status, body) = w
        .post_json(
            "/v2/models/breast_cancer/infer",
            &reference.v2_request(0..10),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    reference.check_response(&body, 0..10);
    let stats = w.stats("breast_cancer").await;
    assert_eq!(
        stats["batch_stats"],
        json!([{"batch_size": 10, "compute_infer": stats["batch_stats"][0]["compute_infer"]}])
    );
    w.stop().await;
}

#[tokio::test]
async fn request_whose_client_went_away_is_not_computed() {
    let toml = "[batching]\nmax_queue_delay_us = 3000000\ninstances = 1\n";
    let w = TestWorker::start(with_toml("breast_cancer", toml)).await;
    let reference = vatic_testkit::demo_reference();
    let impatient = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(200))
        .build()
        .unwrap();
    let r = impatient
        .post(format!("{}/v2/models/breast_cancer/infer", w.base))
        .json(&reference.v2_request(0..1))
        .send()
        .await;
    assert!(r.is_err(), "the client gave up first");
    // The batcher notices the closed reply and drops the request before its delay ends.
    let mut stats = Value::Null;
    for _ in 0..200 {
        stats = w.stats("breast_cancer").await;
        if stats["inference_stats"]["cancel"]["count"] == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(stats["inference_stats"]["cancel"]["count"], 1, "{stats}");
    assert_eq!(stats["execution_count"], 0, "{stats}");
    // The dropped request leaves the in-flight gauge too.
    let in_flight = w.engine().metrics().in_flight();
    for _ in 0..200 {
        if in_flight.get() == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(in_flight.get(), 0);
    w.stop().await;
}

#[tokio::test]
async fn requests_with_different_row_shapes_are_not_mixed() {
    // `square` takes rows of any width (`x [N, W] -> x * x`); rows of different widths cannot
    // share a run, and the queue delay gives every request time to meet the others.
    let repo = tempfile::tempdir().unwrap();
    let version = repo.path().join("square/1");
    std::fs::create_dir_all(&version).unwrap();
    vatic_testkit::onnx::write_square(&version.join("model.onnx")).unwrap();
    std::fs::write(
        repo.path().join("square/model.toml"),
        "[batching]\nmax_batch_size = 32\nmax_queue_delay_us = 20000\n",
    )
    .unwrap();
    let w = Arc::new(TestWorker::start(repo).await);
    let mut tasks = Vec::new();
    for i in 0..18usize {
        let (width, rows) = (1 + i % 3, 1 + i % 2);
        // Quarters, so that their squares are exact in FP32.
        let data: Vec<f64> = (0..rows * width)
            .map(|j| (i * 8 + j) as f64 / 4.0)
            .collect();
        let body = json!({"inputs": [
            {"name": "x", "datatype": "FP32", "shape": [rows, width], "data": data}]});
        let w = w.clone();
        tasks.push(tokio::spawn(async move {
            let (status, resp) = w.post_json("/v2/models/square/infer", &body).await;
            assert_eq!(status, 200, "{resp}");
            let y = &resp["outputs"][0];
            assert_eq!(y["shape"], json!([rows, width]), "{resp}");
            let want: Vec<Value> = data.iter().map(|x| json!(x * x)).collect();
            vatic_testkit::assert_values("y", y["data"].as_array().unwrap(), &want);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stats = w.stats("square").await;
    assert_eq!(stats["inference_stats"]["success"]["count"], 18, "{stats}");
    assert_eq!(stats["inference_stats"]["fail"]["count"], 0, "{stats}");
    let executions = stats["execution_count"].as_u64().unwrap();
    assert!(
        executions < 18,
        "18 requests ran in {executions} executions: the batcher combined none"
    );
    Arc::try_unwrap(w).ok().unwrap().stop().await;
}

#[tokio::test]
async fn low_priority_requests_get_the_same_answers_and_a_bad_priority_is_refused() {
    let w = TestWorker::start(one("breast_cancer")).await;
    let reference = vatic_testkit::demo_reference();
    let url = format!("{}/v2/models/breast_cancer/infer", w.base);
    let post = |priority: &'static str, rows: std::ops::Range<usize>| {
        w.client
            .post(&url)
            .header("x-vatic-priority", priority)
            .json(&reference.v2_request(rows))
            .send()
    };
    let mut tasks = Vec::new();
    for i in 0..20usize {
        let rows = i..i + 1 + i % 4;
        tasks.push((rows.clone(), post("low", rows)));
    }
    for (rows, sent) in tasks {
        let r = sent.await.expect("POST");
        assert_eq!(r.status(), 200);
        reference.check_response(&r.json::<Value>().await.unwrap(), rows);
    }
    let r = post("real-time", 0..2).await.expect("POST");
    assert_eq!(r.status(), 200);
    reference.check_response(&r.json::<Value>().await.unwrap(), 0..2);

    let r = post("urgent", 0..1).await.expect("POST");
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["error"],
        json!("header x-vatic-priority: 'urgent' is not a priority (low or real-time)")
    );
    w.stop().await;
}
