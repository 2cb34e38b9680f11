//! Cluster mode: the api in front of worker processes.

use crate::helpers::{cluster_settings, post_json, ServerProcess, TestApi};
use serde_json::json;
use std::sync::Arc;

#[tokio::test]
async fn api_forwards_to_a_worker_and_passes_errors_through() {
    let worker = ServerProcess::start();
    let api = TestApi::start(cluster_settings(vec![worker.url.clone()]), None).await;
    let reference = vatic_testkit::demo_reference();
    let (status, body) = api
        .post_json(
            "/v2/models/breast_cancer/infer",
            &reference.v2_request(0..5),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    reference.check_response(&body, 0..5);
    assert_eq!(body["model_version"], "1");
    // JSON outputs have no parameters member even though the worker answered in binary.
    assert!(body["outputs"][0].get("parameters").is_none(), "{body}");
    let (status, body) = api
        .post_json(
            "/v1/models/breast_cancer:predict",
            &json!({"instances": reference.inputs[..2]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["predictions"][1]["label"], reference.label[1]);
    let (status, body) = api
        .post_json("/v2/models/nope/infer", &reference.v2_request(0..1))
        .await;
    assert_eq!(
        (status, body["error"].as_str().unwrap()),
        (404, "unknown model 'nope'")
    );
    let (status, body) = api
        .post_json("/v2/models/breast_cancer/infer", &json!({"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}))
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("expected shape [-1, 30], got [1, 2]"),
        "{body}"
    );
    let (status, config) = api.get("/v2/models/breast_cancer/config").await;
    assert_eq!((status, config["max_batch_size"].clone()), (200, json!(32)));
    assert_eq!(api.get("/v2/models/breast_cancer/ready").await.0, 200);
    let (_, stats) = api.get("/v2/models/breast_cancer/stats").await;
    assert_eq!(
        stats["model_stats"][0]["inference_count"], 7,
        "5 V2 rows and 2 TF-Serving rows"
    );
    let (_, status_body) = api.get("/v1/models/breast_cancer").await;
    assert_eq!(status_body["model_version_status"][0]["state"], "AVAILABLE");
    api.stop().await;
}

#[tokio::test]
async fn without_a_healthy_worker_the_api_is_not_ready_and_says_why() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let settings = cluster_settings(vec![format!("http://127.0.0.1:{port}")]);
    let app = vatic_api::Application::build(&settings).await.unwrap();
    app.spawn();
    let base = format!("http://{}", app.server.addr);
    let client = reqwest::Client::new();
    let r = client
        .get(format!("{base}/v2/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    assert_eq!(
        client
            .get(format!("{base}/v2/health/live"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let reference = vatic_testkit::demo_reference();
    let r = client
        .post(format!("{base}/v2/models/breast_cancer/infer"))
        .json(&reference.v2_request(0..1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("no worker is available"),
        "{body}"
    );
    app.shutdown(std::time::Duration::ZERO).await;
}

#[tokio::test]
async fn killing_a_worker_mid_load_fails_no_request() {
    let first = ServerProcess::start();
    let mut second = ServerProcess::start();
    let api = TestApi::start(
        cluster_settings(vec![first.url.clone(), second.url.clone()]),
        None,
    )
    .await;
    // Both workers healthy before the load starts.
    for _ in 0..100 {
        if api.app.state().backend.is_ready()
            && matches!(&*api.app.state().backend, vatic_api::backend::Backend::Remote(p, _) if p.nodes().iter().all(|n| n.is_healthy()))
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let reference = Arc::new(vatic_testkit::demo_reference());
    let n = reference.inputs.len();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(1024);
    let mut tasks = Vec::new();
    for i in 0..400usize {
        let (client, base, reference, done) = (
            api.client.clone(),
            api.base.clone(),
            reference.clone(),
            done_tx.clone(),
        );
        tasks.push(tokio::spawn(async move {
            // Spread the load over time so the kill lands while requests are in flight.
            tokio::time::sleep(std::time::Duration::from_millis((i as u64 % 100) * 5)).await;
            let rows = 1 + i % 3;
            let start = (i * 5) % (n - rows);
            let (status, body) = post_json(
                &client,
                &base,
                "/v2/models/breast_cancer/infer",
                &reference.v2_request(start..start + rows),
            )
            .await;
            assert_eq!(status, 200, "request {i}: {body}");
            reference.check_response(&body, start..start + rows);
            let _ = done.send(()).await;
        }));
    }
    drop(done_tx);
    // Kill -9 the second worker once a quarter of the requests have been answered.
    for _ in 0..100 {
        done_rx.recv().await;
    }
    second.child.kill().expect("kill -9 worker");
    for t in tasks {
        t.await.expect("every request succeeds");
    }
    api.stop().await;
    drop(first);
}

#[tokio::test]
async fn sigterm_makes_a_worker_not_ready_then_drain_then_exit() {
    let mut worker = ServerProcess::start_with_env(&[("VATIC_DRAIN_SECS", "2")]);
    let client = reqwest::Client::new();
    vatic_testkit::wait_ok(&client, &format!("{}/v2/health/ready", worker.url)).await;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &worker.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // Not ready at once, still live and still serving during the drain.
    let mut not_ready = false;
    for _ in 0..100 {
        let r = client
            .get(format!("{}/v2/health/ready", worker.url))
            .send()
            .await
            .unwrap();
        if r.status() == 400 {
            not_ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(not_ready, "readiness turns false right after SIGTERM");
    let reference = vatic_testkit::demo_reference();
    let (status, body) = post_json(
        &client,
        &worker.url,
        "/v2/models/breast_cancer/infer",
        &reference.v2_request(0..1),
    )
    .await;
    assert_eq!(status, 200, "served during the drain: {body}");
    // Then it stops by itself, successfully.
    let mut exit = None;
    for _ in 0..300 {
        if let Some(s) = worker.child.try_wait().unwrap() {
            exit = Some(s);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(exit.expect("worker exited within 15 s").success());
}

#[tokio::test]
async fn a_worker_slower_than_worker_timeout_gets_503() {
    let worker =
        ServerProcess::start_with_env(&[("VATIC_BATCHING__MAX_QUEUE_DELAY_US", "3000000")]);
    let mut settings = cluster_settings(vec![worker.url.clone()]);
    settings.worker_timeout_ms = 200;
    let api = TestApi::start(settings, None).await;
    let reference = vatic_testkit::demo_reference();
    let r = api
        .client
        .post(format!("{}/v2/models/breast_cancer/infer", api.base))
        .json(&reference.v2_request(0..1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("did not answer within 200 ms"),
        "{body}"
    );
    api.stop().await;
}
