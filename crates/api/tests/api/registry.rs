//! The registry in a cluster: worker processes reconcile to it on PostgreSQL notifications, the
//! api routes by their heartbeats, and the artifact cache survives a crash.

use crate::helpers::{
    migrated, registry_api, registry_standalone_settings, registry_worker, vaticctl, wait_post,
    wait_status, ServerProcess, TestApi, Traffic,
};
use serde_json::{json, Value};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};
use vatic_testkit::TestDb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_model_reaches_every_worker_by_notification_and_retiring_unloads_it() {
    let db = TestDb::postgres();
    migrated(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let workers: Vec<ServerProcess> = (0..2)
        .map(|i| registry_worker(&db.url, &dir.path().join(format!("cache-{i}"))))
        .collect();
    let client = reqwest::Client::new();
    for w in &workers {
        wait_status(
            &client,
            &format!("{}/v2/health/ready", w.url),
            200,
            Duration::from_secs(30),
        )
        .await;
    }
    let api = registry_api(&db, dir.path()).await;

    let pushed = Instant::now();
    let (ok, out) = vaticctl(
        &api,
        &[
            "models",
            "push",
            "cnn",
            "testdata/models/cnn/1/model.onnx",
            "-o",
            "json",
        ],
    )
    .await;
    assert!(ok, "{out}");
    for w in &workers {
        wait_status(
            &client,
            &format!("{}/v2/models/cnn/versions/1/ready", w.url),
            200,
            Duration::from_secs(20),
        )
        .await;
    }
    eprintln!(
        "both workers served cnn {} ms after the push was sent",
        pushed.elapsed().as_millis()
    );

    // The api routes once a heartbeat reports the version ready.
    let request = vatic_testkit::fixture("cnn").v2_request();
    let infer = "/v2/models/cnn/infer";
    let body = wait_post(&api, infer, &request, 200, Duration::from_secs(20)).await;
    vatic_testkit::fixture("cnn").check_response(&body);
    assert_eq!(body["model_version"], "1", "{body}");
    let (_, fleet) = api.get("/admin/v1/workers").await;
    let fleet = fleet.as_array().unwrap();
    assert_eq!(fleet.len(), 2, "{fleet:?}");
    for w in fleet {
        assert!(
            w["loaded"]
                .as_array()
                .unwrap()
                .iter()
                .any(|l| l["model"] == "cnn" && l["state"] == "READY"),
            "{w}"
        );
    }
    // Describing the model says where each version is loaded, and with which engine.
    let (status, model) = api.get("/admin/v1/models/cnn").await;
    assert_eq!(status, 200, "{model}");
    let mut held: Vec<&str> = model["versions"][0]["loaded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            assert_eq!(
                (&l["state"], &l["engine"]),
                (&json!("READY"), &json!("tract")),
                "{l}"
            );
            assert!(l["heartbeat_age_secs"].as_f64().is_some(), "{l}");
            l["worker"].as_str().unwrap()
        })
        .collect();
    let mut ids: Vec<&str> = fleet.iter().map(|w| w["id"].as_str().unwrap()).collect();
    held.sort_unstable();
    ids.sort_unstable();
    assert_eq!(held, ids, "{model}");

    let (ok, out) = vaticctl(&api, &["models", "retire", "cnn", "1"]).await;
    assert!(ok, "{out}");
    for w in &workers {
        wait_status(
            &client,
            &format!("{}/v2/models/cnn/ready", w.url),
            404,
            Duration::from_secs(20),
        )
        .await;
    }
    wait_post(&api, infer, &request, 404, Duration::from_secs(20)).await;
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_or_non_onnx_upload_is_refused_and_stores_nothing() {
    for db in TestDb::both() {
        let store =
            vatic_store::Store::open(&vatic_store::ConnectOptions::new(db.url.clone()), true)
                .await
                .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("none");
        std::fs::create_dir_all(&empty).unwrap();
        let settings = registry_standalone_settings(&db.url, empty, dir.path());
        let api = TestApi::start(settings, None).await;
        let onnx =
            std::fs::read(vatic_testkit::root().join("testdata/models/cnn/1/model.onnx")).unwrap();
        let cases: [(&str, Vec<u8>, &str); 3] = [
            (
                "text",
                b"this is not an onnx file".to_vec(),
                "cannot be served",
            ),
            (
                "truncated",
                onnx[..onnx.len() / 2].to_vec(),
                "cannot be served",
            ),
            ("empty", Vec::new(), "the upload is empty"),
        ];
        for (what, bytes, message) in cases {
            let r = api
                .client
                .post(format!("{}/admin/v1/models/bad/versions", api.base))
                .header("Content-Type", "application/octet-stream")
                .body(bytes)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap();
            assert_eq!(status, 400, "{what} on {}: {body}", db.url);
            assert!(
                body["error"].as_str().unwrap().contains(message),
                "{what}: {body}"
            );
            assert!(
                !body["error"].as_str().unwrap().contains("upload-"),
                "no temporary names: {body}"
            );
        }
        let r = api
            .client
            .post(format!(
                "{}/admin/v1/models/bad/versions?version=0",
                api.base
            ))
            .body(onnx.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "version must be at least 1", "{body}");
        assert_eq!(api.get("/admin/v1/models").await.1, json!([]));
        assert!(matches!(
            store.model("bad").await,
            Err(vatic_store::StoreError::ModelNotFound(_))
        ));
        assert_eq!(
            std::fs::read_dir(dir.path().join("uploads"))
                .unwrap()
                .count(),
            0,
            "uploads are removed"
        );
        api.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_and_restarted_serves_from_its_cache_without_fetching_again() {
    // On SQLite the processes share one database file on this machine and poll it.
    for db in TestDb::both() {
        killed_worker_restarts_from_its_cache(&db).await;
    }
}

async fn killed_worker_restarts_from_its_cache(db: &TestDb) {
    migrated(db).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let client = reqwest::Client::new();
    let mut worker = registry_worker(&db.url, &cache);
    let api = registry_api(db, dir.path()).await;
    let (ok, out) = vaticctl(
        &api,
        &["models", "push", "cnn", "testdata/models/cnn/1/model.onnx"],
    )
    .await;
    assert!(ok, "{out}");
    wait_status(
        &client,
        &format!("{}/v2/models/cnn/ready", worker.url),
        200,
        Duration::from_secs(20),
    )
    .await;
    let cached: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    let before = std::fs::metadata(&cached[0]).unwrap();

    worker.child.kill().unwrap(); // SIGKILL: no drain, no goodbye in the fleet table
    worker.child.wait().unwrap();
    let worker = registry_worker(&db.url, &cache);
    wait_status(
        &client,
        &format!("{}/v2/models/cnn/ready", worker.url),
        200,
        Duration::from_secs(20),
    )
    .await;
    let after = std::fs::metadata(&cached[0]).unwrap();
    assert_eq!(
        (before.ino(), before.mtime_nsec()),
        (after.ino(), after.mtime_nsec()),
        "the cached file was not fetched again"
    );
    // The api drops the dead worker once its heartbeat is stale and serves from the new one.
    let fixture = vatic_testkit::fixture("cnn");
    let infer = "/v2/models/cnn/infer";
    let body = wait_post(
        &api,
        infer,
        &fixture.v2_request(),
        200,
        Duration::from_secs(20),
    )
    .await;
    fixture.check_response(&body);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_prediction_is_logged_exactly_once_across_a_database_outage() {
    let db = TestDb::postgres();
    migrated(&db).await;
    let proxy = vatic_testkit::TcpProxy::for_url(&db.url);
    let dir = tempfile::tempdir().unwrap();
    let mut settings = registry_standalone_settings(
        &proxy.url(&db.url),
        vatic_testkit::root().join("models"),
        dir.path(),
    );
    settings.prediction_log.flush_interval_ms = 50;
    settings.prediction_log.retry_interval_ms = 200;
    let api = TestApi::start(settings, None).await;

    // Steady load from four clients; every answer must be a success.
    let traffic = Traffic::start(&api, 4);
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(11)).await;
    let (_, during) = api.get("/admin/v1/prediction-log").await;
    proxy.restore();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (served, failed) = traffic.stop().await;
    assert!(
        failed.is_empty(),
        "requests failed during the outage: {:?}",
        &failed[..failed.len().min(3)]
    );

    // The spool drains once the database is back.
    let deadline = Instant::now() + Duration::from_secs(60);
    let stats = loop {
        let (_, stats) = api.get("/admin/v1/prediction-log").await;
        if stats["spool_bytes"] == 0 && stats["queue_depth"] == 0 {
            break stats;
        }
        assert!(Instant::now() < deadline, "spool not replayed: {stats}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    api.stop().await;
    let store = vatic_store::Store::open(&vatic_store::ConnectOptions::new(db.url.clone()), false)
        .await
        .unwrap();
    let rows = store.prediction_count(Some("breast_cancer")).await.unwrap();
    eprintln!("outage: {served} predictions served, {rows} rows; during the cut: {during}; after: {stats}");
    assert!(
        during["spooled"].as_u64().unwrap() > 0,
        "the outage was noticed: {during}"
    );
    assert!(stats["replayed"].as_u64().unwrap() > 0, "{stats}");
    assert_eq!(stats["dropped"], 0, "{stats}");
    assert_eq!(rows, served, "one row per successful prediction");
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_push_retire_cycles_leave_the_worker_memory_bounded() {
    let db = TestDb::postgres();
    migrated(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let worker = registry_worker(&db.url, &dir.path().join("cache"));
    let client = reqwest::Client::new();
    wait_status(
        &client,
        &format!("{}/v2/health/ready", worker.url),
        200,
        Duration::from_secs(30),
    )
    .await;
    let api = registry_api(&db, dir.path()).await;
    let onnx =
        std::fs::read(vatic_testkit::root().join("testdata/models/cnn/1/model.onnx")).unwrap();
    let request = vatic_testkit::fixture("cnn").v2_request();
    let mut after_first = 0;
    for cycle in 1..=50u64 {
        let r = api
            .client
            .post(format!("{}/admin/v1/models/cnn/versions", api.base))
            .body(onnx.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "cycle {cycle}");
        let ready = format!("{}/v2/models/cnn/versions/{cycle}/ready", worker.url);
        wait_status(&client, &ready, 200, Duration::from_secs(20)).await;
        let infer = format!("{}/v2/models/cnn/versions/{cycle}/infer", worker.url);
        let body: Value = client
            .post(&infer)
            .json(&request)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        vatic_testkit::fixture("cnn").check_response(&body);
        let r = api
            .client
            .post(format!(
                "{}/admin/v1/models/cnn/versions/{cycle}/retire",
                api.base
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "cycle {cycle}");
        wait_status(&client, &ready, 404, Duration::from_secs(20)).await;
        if cycle == 1 {
            after_first = rss_kib(worker.child.id());
        }
    }
    // Let the unloader threads finish the last version.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_last = rss_kib(worker.child.id());
    eprintln!("worker resident memory: {after_first} KiB after 1 push/retire cycle, {after_last} KiB after 50");
    assert!(
        after_last < after_first + 64 * 1024,
        "resident memory grew from {after_first} KiB to {after_last} KiB over 49 cycles"
    );
    api.stop().await;
}
