//! The api's Prometheus endpoint in standalone mode: request counters by model, version,
//! protocol and status class move by exactly the requests sent, with the engine's families
//! beside them and agreeing with Triton's statistics.

use crate::helpers::{standalone_settings, TestApi};
use serde_json::json;
use vatic_testkit::metric;

/// The exposition of the metrics endpoint at `addr`.
async fn scrape(addr: Option<std::net::SocketAddr>) -> String {
    let addr = addr.expect("a metrics port");
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of a sample that must be in `text`.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(text, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_model_version_protocol_and_code() {
    let mut settings = standalone_settings(vatic_testkit::root().join("models"));
    settings.server.metrics_listen = Some("127.0.0.1:0".into());
    let api = TestApi::start(settings, None).await;
    let reference = vatic_testkit::demo_reference();

    for _ in 0..3 {
        let (status, body) = api
            .post_json(
                "/v2/models/breast_cancer/infer",
                &reference.v2_request(0..1),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let instances = json!({"instances": [reference.inputs[0].clone()]});
    let (status, body) = api
        .post_json("/v1/models/breast_cancer:predict", &instances)
        .await;
    assert_eq!(status, 200, "{body}");
    let wrong =
        json!({"inputs": [{"name": "nope", "datatype": "FP32", "shape": [1], "data": [1.0]}]});
    for _ in 0..2 {
        let (status, body) = api
            .post_json("/v2/models/breast_cancer/infer", &wrong)
            .await;
        assert_eq!(status, 400, "{body}");
    }
    // Client-chosen names are not label values.
    for name in ["nope", "other"] {
        let (status, _) = api
            .post_json(&format!("/v2/models/{name}/infer"), &wrong)
            .await;
        assert_eq!(status, 404);
    }

    let text = scrape(api.app.server.metrics_addr).await;
    let requests = |model, version, protocol, code| {
        value(
            &text,
            "vatic_requests_total",
            &[
                ("model", model),
                ("version", version),
                ("protocol", protocol),
                ("code", code),
            ],
        )
    };
    assert_eq!(requests("breast_cancer", "1", "v2", "2xx"), 3.0);
    assert_eq!(requests("breast_cancer", "1", "tfserving", "2xx"), 1.0);
    assert_eq!(requests("breast_cancer", "", "v2", "4xx"), 2.0);
    assert_eq!(requests("(unknown)", "", "v2", "4xx"), 2.0);
    assert!(
        !text.contains("\"nope\"") && !text.contains("\"other\""),
        "{text}"
    );
    let v2 = [
        ("model", "breast_cancer"),
        ("version", "1"),
        ("protocol", "v2"),
    ];
    assert_eq!(
        value(&text, "vatic_request_duration_seconds_count", &v2),
        3.0
    );
    assert!(value(&text, "vatic_request_duration_seconds_sum", &v2) > 0.0);
    assert_eq!(value(&text, "vatic_in_flight_requests", &[]), 0.0);

    // Standalone runs the engine in this process: its families are here too, once each.
    let engine = [("model", "breast_cancer"), ("version", "1")];
    let ok = [
        ("model", "breast_cancer"),
        ("version", "1"),
        ("code", "2xx"),
    ];
    assert_eq!(value(&text, "vatic_worker_requests_total", &ok), 4.0);
    assert_eq!(value(&text, "vatic_model_ready", &engine), 1.0);
    assert_eq!(text.matches("# TYPE vatic_build_info gauge").count(), 1);
    assert_eq!(
        text.matches("# TYPE process_resident_memory_bytes").count(),
        1
    );
    let (_, stats) = api.get("/v2/models/breast_cancer/stats").await;
    let stats = &stats["model_stats"][0];
    assert_eq!(stats["inference_stats"]["success"]["count"], 4, "{stats}");
    assert_eq!(
        value(&text, "vatic_queue_wait_seconds_count", &engine),
        stats["inference_stats"]["queue"]["count"].as_f64().unwrap()
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prediction_log_and_database_pool_metrics_match_the_admin_counters() {
    for db in vatic_testkit::TestDb::both() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = crate::helpers::registry_standalone_settings(
            &db.url,
            vatic_testkit::root().join("models"),
            dir.path(),
        );
        settings.server.metrics_listen = Some("127.0.0.1:0".into());
        settings.prediction_log.flush_interval_ms = 20;
        let api = TestApi::start(settings, None).await;
        let request = vatic_testkit::demo_reference().v2_request(0..1);
        for _ in 0..5 {
            let (status, body) = api
                .post_json("/v2/models/breast_cancer/infer", &request)
                .await;
            assert_eq!(status, 200, "{body}");
        }
        // The demo model logs metadata for every request: five records reach the table.
        let mut stats = serde_json::Value::Null;
        for _ in 0..500 {
            stats = api.get("/admin/v1/prediction-log").await.1;
            if stats["written"] == 5 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(stats["written"], 5, "{}: {stats}", db.url);
        let text = scrape(api.app.server.metrics_addr).await;
        for (metric_name, field) in [
            ("vatic_prediction_log_written_total", "written"),
            ("vatic_prediction_log_spooled_total", "spooled"),
            ("vatic_prediction_log_replayed_total", "replayed"),
            ("vatic_prediction_log_rejected_total", "rejected"),
            ("vatic_prediction_log_dropped_total", "dropped"),
            ("vatic_prediction_log_queue_depth", "queue_depth"),
            ("vatic_prediction_log_spool_bytes", "spool_bytes"),
        ] {
            assert_eq!(
                value(&text, metric_name, &[]),
                stats[field].as_f64().unwrap(),
                "{}: {metric_name}",
                db.url
            );
        }
        // Nothing waits, so there is no lag.
        assert_eq!(value(&text, "vatic_prediction_log_lag_seconds", &[]), 0.0);
        let max = value(&text, "vatic_db_pool_max_connections", &[]);
        assert!(max >= 1.0, "{text}");
        let open = value(&text, "vatic_db_pool_connections", &[("state", "in_use")])
            + value(&text, "vatic_db_pool_connections", &[("state", "idle")]);
        assert!(open <= max, "{text}");
        api.stop().await;
    }
}

#[tokio::test]
async fn a_cluster_api_exports_worker_state_retries_and_upstream_errors() {
    let request = vatic_testkit::demo_reference().v2_request(0..1);

    // Two workers that refuse connections: the request is tried on both, then refused.
    let dead: Vec<String> = (0..2)
        .map(|_| {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            format!("http://127.0.0.1:{port}")
        })
        .collect();
    let mut settings = crate::helpers::cluster_settings(dead.clone());
    settings.server.metrics_listen = Some("127.0.0.1:0".into());
    let app = vatic_api::Application::build(&settings).await.unwrap();
    app.spawn();
    let client = reqwest::Client::new();
    let (status, body) = crate::helpers::post_json(
        &client,
        &format!("http://{}", app.server.addr),
        "/v2/models/breast_cancer/infer",
        &request,
    )
    .await;
    assert_eq!(status, 503, "{body}");
    let text = scrape(app.server.metrics_addr).await;
    assert_eq!(value(&text, "vatic_upstream_retries_total", &[]), 1.0);
    assert_eq!(
        value(&text, "vatic_upstream_errors_total", &[("kind", "connect")]),
        2.0
    );
    assert_eq!(
        value(
            &text,
            "vatic_upstream_errors_total",
            &[("kind", "no_worker")]
        ),
        1.0
    );
    for url in &dead {
        assert_eq!(
            value(&text, "vatic_upstream_worker_up", &[("worker", url)]),
            0.0
        );
    }
    assert_eq!(
        value(
            &text,
            "vatic_requests_total",
            &[
                ("model", "breast_cancer"),
                ("protocol", "v2"),
                ("code", "5xx")
            ]
        ),
        1.0
    );
    app.shutdown(std::time::Duration::ZERO).await;

    // A live worker: requests go through and it is up.
    let worker = crate::helpers::ServerProcess::start();
    let mut settings = crate::helpers::cluster_settings(vec![worker.url.clone()]);
    settings.server.metrics_listen = Some("127.0.0.1:0".into());
    let api = TestApi::start(settings, None).await;
    for _ in 0..2 {
        let (status, body) = api
            .post_json("/v2/models/breast_cancer/infer", &request)
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let text = scrape(api.app.server.metrics_addr).await;
    let ok = [
        ("model", "breast_cancer"),
        ("version", "1"),
        ("protocol", "v2"),
        ("code", "2xx"),
    ];
    assert_eq!(value(&text, "vatic_requests_total", &ok), 2.0);
    let worker_label = [("worker", worker.url.as_str())];
    assert_eq!(value(&text, "vatic_upstream_worker_up", &worker_label), 1.0);
    assert_eq!(
        value(&text, "vatic_upstream_in_flight_requests", &worker_label),
        0.0
    );
    // A cluster api runs no engine: the worker's families are on the worker's own endpoint.
    assert!(!text.contains("vatic_worker_requests_total"), "{text}");
    api.stop().await;
}

/// The metric families in an exposition, histograms under their family name.
fn families(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// The `vatic_*` metric names an expression file refers to, suffixes of histograms removed.
fn referenced(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for (i, _) in text.match_indices("vatic_") {
        if i > 0 {
            let before = text.as_bytes()[i - 1];
            if before.is_ascii_alphanumeric() || before == b'_' {
                continue;
            }
        }
        let name: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name)
            .to_string();
        names.insert(family);
    }
    names
}

/// The families an api started with `settings` exports after one successful request; with
/// `shadow`, after a version 2 of the demo model shadowed that request.
async fn families_after_one_request(
    mut settings: vatic_api::settings::ApiSettings,
    shadow: bool,
) -> std::collections::BTreeSet<String> {
    settings.server.metrics_listen = Some("127.0.0.1:0".into());
    let api = TestApi::start(settings, None).await;
    if shadow {
        // Version 2 has the response cache on: its families appear once it has a hit and a miss.
        let model =
            std::fs::read(vatic_testkit::model_dir("breast_cancer").join("1/model.onnx")).unwrap();
        let form = reqwest::multipart::Form::new()
            .part("model", reqwest::multipart::Part::bytes(model))
            .text("config", "[cache]\nenabled = true\n");
        let r = api
            .client
            .post(format!(
                "{}/admin/v1/models/breast_cancer/versions",
                api.base
            ))
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        let ready = format!("{}/v2/models/breast_cancer/versions/2/ready", api.base);
        crate::helpers::wait_status(&api.client, &ready, 200, std::time::Duration::from_secs(60))
            .await;
        let r = api
            .client
            .put(format!(
                "{}/admin/v1/models/breast_cancer/rollout/shadow",
                api.base
            ))
            .json(&serde_json::json!({"version": 2}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let reference = vatic_testkit::demo_reference();
    let request = reference.v2_request(0..1);
    let (status, body) = api
        .post_json("/v2/models/breast_cancer/infer", &request)
        .await;
    assert_eq!(status, 200, "{body}");
    if shadow {
        for _ in 0..2 {
            let (status, body) = api
                .post_json("/v2/models/breast_cancer/versions/2/infer", &request)
                .await;
            assert_eq!(status, 200, "{body}");
        }
        // A batch job: the batch runner's families.
        let csv = crate::batch::reference_csv(&reference, 0..3);
        let (status, job) = crate::batch::submit(
            &api,
            "model=breast_cancer",
            Some("text/csv"),
            csv.into_bytes(),
        )
        .await;
        assert_eq!(status, 201, "{job}");
        let job = crate::batch::wait_ended(&api, job["id"].as_str().unwrap()).await;
        assert_eq!(job["state"], "succeeded", "{job}");
    }
    let metrics = api.app.server.metrics_addr.expect("a metrics port");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let exported = loop {
        let scraped = api
            .client
            .get(format!("{}://{metrics}/metrics", api.app.server.scheme))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let exported = families(&scraped);
        // The shadow's copy is counted once it has been answered, off the request path.
        if !shadow || exported.contains("vatic_shadow_copies_total") {
            break exported;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the shadow copy was never counted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    api.stop().await;
    exported
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_alert_rules_and_dashboards_use_is_exported() {
    // Standalone with a database: the api's, the engine's, the prediction log's and the
    // rollouts' families (with a shadow running); over HTTPS, the certificate's.
    let db = vatic_testkit::TestDb::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let mut standalone = crate::helpers::registry_standalone_settings(
        &db.url,
        vatic_testkit::root().join("models"),
        dir.path(),
    );
    standalone.server.tls = vatic_tls::TlsSettings {
        cert: Some(dir.path().join("tls/self-signed.crt")),
        key: Some(dir.path().join("tls/self-signed.key")),
        client_ca: None,
        self_signed: true,
    };
    let mut exported = families_after_one_request(standalone, true).await;
    // A cluster api: the upstream families.
    let worker = crate::helpers::ServerProcess::start();
    let cluster = crate::helpers::cluster_settings(vec![worker.url.clone()]);
    exported.extend(families_after_one_request(cluster, false).await);

    let root = vatic_testkit::root();
    let mut files = vec![root.join("prometheus/alerts.yml")];
    for entry in std::fs::read_dir(root.join("grafana/dashboards")).unwrap() {
        files.push(entry.unwrap().path());
    }
    assert!(
        files.len() >= 4,
        "the rules and three dashboards: {files:?}"
    );
    for file in files {
        let used = referenced(&std::fs::read_to_string(&file).unwrap());
        assert!(!used.is_empty(), "{} uses no vatic metric", file.display());
        let missing: Vec<_> = used.difference(&exported).collect();
        assert!(
            missing.is_empty(),
            "{} uses metrics vatic does not export: {missing:?}\nexported: {exported:?}",
            file.display()
        );
    }
}
