//! Rollouts: labels, the canary's share (random and sticky), promote, rollback and the grace
//! period, on standalone SQLite and on a PostgreSQL cluster of worker processes under load.

use crate::helpers::{
    api_process, binary, migrated, registry_api, registry_standalone_settings, registry_worker,
    vaticctl, wait_status, ServerProcess, TestApi, Traffic,
};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use vatic_testkit::TestDb;

const MODEL: &str = "breast_cancer";

/// Runs vaticctl and expects it to succeed.
async fn ctl(api: &TestApi, args: &[&str]) -> String {
    let (ok, out) = vaticctl(api, args).await;
    assert!(ok, "vaticctl {args:?}: {out}");
    out
}

/// Pushes `file` (with `more` arguments) as a new version of the model; returns its number.
async fn push(api: &TestApi, file: &str, more: &[&str]) -> u64 {
    let mut args = vec!["models", "push", MODEL, file, "-o", "json"];
    args.extend_from_slice(more);
    let out = ctl(api, &args).await;
    let pushed: Value = serde_json::from_str(&out).expect("push answer");
    pushed["version"]["version"].as_u64().expect("version")
}

/// Pushes the demo model's file again as a new version; returns its number.
async fn push_demo(api: &TestApi) -> u64 {
    push(api, "models/breast_cancer/1/model.onnx", &[]).await
}

/// A standalone api on a SQLite registry holding the demo model as version 1.
async fn standalone(dir: &std::path::Path, grace_secs: u64) -> TestApi {
    let url = format!("sqlite://{}", dir.join("vatic.db").display());
    let mut settings =
        registry_standalone_settings(&url, vatic_testkit::root().join("models"), dir);
    settings.rollout.promote_grace_secs = grace_secs;
    settings.fleet_refresh_ms = 100;
    TestApi::start(settings, None).await
}

/// One unversioned inference at `path`: the version that answered, by its header, after
/// checking the body says the same and the outputs are the demo's.
async fn answered_by(api: &TestApi, path: &str, key: Option<&str>) -> String {
    let rows = 0..2;
    let mut request = api
        .client
        .post(format!("{}{path}", api.base))
        .json(&vatic_testkit::demo_reference().v2_request(rows.clone()));
    if let Some(key) = key {
        request = request.header("X-Vatic-Route-Key", key);
    }
    let r = request.send().await.expect("infer");
    assert_eq!(r.status(), 200);
    let header = r
        .headers()
        .get("x-vatic-model-version")
        .expect("X-Vatic-Model-Version")
        .to_str()
        .unwrap()
        .to_string();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["model_version"], header.as_str());
    vatic_testkit::demo_reference().check_response(&body, rows);
    header
}

/// Waits until `version` of the model reports ready through the api.
async fn wait_ready(api: &TestApi, version: u64) {
    wait_status(
        &api.client,
        &format!("{}/v2/models/{MODEL}/versions/{version}/ready", api.base),
        200,
        Duration::from_secs(60),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_canary_takes_its_share_and_a_route_key_keeps_its_side() {
    let dir = tempfile::tempdir().unwrap();
    let api = standalone(dir.path(), 3600).await;
    let v2 = push_demo(&api).await;
    wait_ready(&api, v2).await;
    let out = ctl(
        &api,
        &[
            "rollout",
            "start",
            MODEL,
            "--version",
            &v2.to_string(),
            "--canary",
            "20",
        ],
    )
    .await;
    assert!(
        out.contains("canary") && out.contains("20%") && out.contains("80%"),
        "{out}"
    );

    // 10 000 unversioned requests, 16 at a time: the canary answers 18-22% of them.
    let path = format!("/v2/models/{MODEL}/infer");
    let counts: HashMap<String, usize> = {
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (client, url) = (api.client.clone(), format!("{}{path}", api.base));
            let body = vatic_testkit::demo_reference().v2_request(0..1);
            tasks.push(tokio::spawn(async move {
                let mut seen: HashMap<String, usize> = HashMap::new();
                for _ in 0..625 {
                    let r = client.post(&url).json(&body).send().await.expect("infer");
                    assert_eq!(r.status(), 200);
                    let v = r.headers()["x-vatic-model-version"]
                        .to_str()
                        .unwrap()
                        .to_string();
                    *seen.entry(v).or_default() += 1;
                }
                seen
            }));
        }
        let mut all = HashMap::new();
        for t in tasks {
            for (v, n) in t.await.unwrap() {
                *all.entry(v).or_default() += n;
            }
        }
        all
    };
    let canary = counts.get(&v2.to_string()).copied().unwrap_or(0);
    let total: usize = counts.values().sum();
    assert_eq!(total, 10_000);
    assert_eq!(
        canary + counts.get("1").copied().unwrap_or(0),
        total,
        "{counts:?}"
    );
    let share = canary as f64 / total as f64;
    eprintln!("canary share at 20%: {share:.4} of {total}");
    assert!((0.18..=0.22).contains(&share), "canary share {share}");

    // At a fixed weight a key never switches sides; keys split by the weight too.
    let mut sides = HashMap::new();
    for round in 0..3 {
        for k in 0..100 {
            let key = format!("customer-{k}");
            let v = answered_by(&api, &path, Some(&key)).await;
            if round == 0 {
                sides.insert(key, v);
            } else {
                assert_eq!(sides[&key], v, "{key} switched sides in round {round}");
            }
        }
    }
    let keyed_canary = sides.values().filter(|v| **v == v2.to_string()).count();
    assert!(
        (5..=40).contains(&keyed_canary),
        "{keyed_canary} of 100 keys"
    );
    // Keys on the canary at 20% stay there at 50%.
    ctl(&api, &["rollout", "set", MODEL, "--canary", "50"]).await;
    for (key, v) in &sides {
        if *v == v2.to_string() {
            assert_eq!(answered_by(&api, &path, Some(key)).await, *v, "{key}");
        }
    }

    // A request naming a version or a label is not split.
    for _ in 0..20 {
        assert_eq!(
            answered_by(&api, &format!("/v2/models/{MODEL}/versions/1/infer"), None).await,
            "1"
        );
        assert_eq!(
            answered_by(
                &api,
                &format!("/v2/models/{MODEL}/labels/stable/infer"),
                None
            )
            .await,
            "1"
        );
        assert_eq!(
            answered_by(
                &api,
                &format!("/v2/models/{MODEL}/labels/canary/infer"),
                None
            )
            .await,
            v2.to_string()
        );
    }
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_address_versions_on_both_protocols_and_every_refusal_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let api = standalone(dir.path(), 3600).await;
    let v2 = push_demo(&api).await;
    wait_ready(&api, v2).await;
    let out = ctl(
        &api,
        &["models", "label", MODEL, &v2.to_string(), "--as", "blue"],
    )
    .await;
    assert!(out.contains("blue") && out.contains("stable"), "{out}");

    // V2 and TF-Serving, inference, metadata, status and readiness, by label.
    assert_eq!(
        answered_by(&api, &format!("/v2/models/{MODEL}/labels/blue/infer"), None).await,
        v2.to_string()
    );
    let instances = json!({"instances": vatic_testkit::demo_reference().inputs[0..1]});
    let r = api
        .client
        .post(format!(
            "{}/v1/models/{MODEL}/labels/blue:predict",
            api.base
        ))
        .json(&instances)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["x-vatic-model-version"],
        v2.to_string().as_str()
    );
    let (status, meta) = api
        .get(&format!("/v1/models/{MODEL}/labels/blue/metadata"))
        .await;
    assert_eq!(status, 200, "{meta}");
    assert_eq!(meta["model_spec"]["version"], v2.to_string());
    let (status, st) = api.get(&format!("/v1/models/{MODEL}/labels/blue")).await;
    assert_eq!(status, 200, "{st}");
    assert_eq!(st["model_version_status"][0]["version"], v2.to_string());
    assert_eq!(st["model_version_status"].as_array().unwrap().len(), 1);
    let (status, meta) = api.get(&format!("/v2/models/{MODEL}/labels/blue")).await;
    assert_eq!(status, 200, "{meta}");
    let (status, _) = api
        .get(&format!("/v2/models/{MODEL}/labels/blue/ready"))
        .await;
    assert_eq!(status, 200);
    // The unversioned TF-Serving answer names the version too.
    let r = api
        .client
        .post(format!("{}/v1/models/{MODEL}:predict", api.base))
        .json(&instances)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-vatic-model-version"], "1");

    // Unknown labels, on every path, name the labels there are.
    let v2_request = vatic_testkit::demo_reference().v2_request(0..1);
    for (path, request) in [
        (
            format!("/v2/models/{MODEL}/labels/green/infer"),
            &v2_request,
        ),
        (
            format!("/v1/models/{MODEL}/labels/green:predict"),
            &instances,
        ),
    ] {
        let (status, body) = api.post_json(&path, request).await;
        assert_eq!(status, 404, "{path}: {body}");
        let e = body["error"].as_str().unwrap();
        assert!(
            e.contains("no label 'green'") && e.contains("blue") && e.contains("stable"),
            "{e}"
        );
    }
    let (status, body) = api.get(&format!("/v1/models/{MODEL}/labels/green")).await;
    assert_eq!(status, 404, "{body}");

    // Refused changes, each with its reason, and nothing changed by them.
    for (args, want) in [
        (
            vec!["models", "label", MODEL, "1", "--as", "stable"],
            "set by rollouts",
        ),
        (
            vec!["models", "label", MODEL, "1", "--as", "9lives"],
            "invalid label",
        ),
        (
            vec!["models", "label", MODEL, "7", "--as", "red"],
            "has no version 7",
        ),
        (
            vec!["models", "label", "nope", "1", "--as", "red"],
            "not found",
        ),
        (
            vec!["models", "unlabel", MODEL, "green"],
            "no label 'green'",
        ),
        (
            vec!["rollout", "set", MODEL, "--canary", "10"],
            "has no canary",
        ),
        (vec!["rollout", "promote", MODEL], "no canary to promote"),
        (vec!["rollout", "rollback", MODEL], "nothing to roll back"),
        (
            vec!["rollout", "start", MODEL, "--version", "1", "--canary", "5"],
            "stable version already",
        ),
        (
            vec![
                "rollout",
                "start",
                MODEL,
                "--version",
                "2",
                "--canary",
                "101",
            ],
            "0 to 100",
        ),
        (
            vec!["models", "retire", MODEL, &v2.to_string()],
            "carries the label(s) blue",
        ),
    ] {
        let (ok, out) = vaticctl(&api, &args).await;
        assert!(!ok && out.contains(want), "vaticctl {args:?}: {out}");
    }
    // The same refusals through the API, with their statuses.
    let put = |label: &str, body: Value| {
        api.client
            .put(format!(
                "{}/admin/v1/models/{MODEL}/labels/{label}",
                api.base
            ))
            .json(&body)
            .send()
    };
    assert_eq!(
        put("canary", json!({"version": 1})).await.unwrap().status(),
        400
    );
    assert_eq!(
        put("red", json!({"version": 7})).await.unwrap().status(),
        404
    );
    assert_eq!(
        put("red", json!({"versio": 1})).await.unwrap().status(),
        400
    );
    let r = api
        .client
        .patch(format!("{}/admin/v1/models/{MODEL}/rollout", api.base))
        .json(&json!({"canary": 10}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let r = api
        .client
        .post(format!(
            "{}/admin/v1/models/{MODEL}/rollout/rollback",
            api.base
        ))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // Moving and removing a label: history and audit record each change.
    ctl(&api, &["models", "label", MODEL, "1", "--as", "blue"]).await;
    assert_eq!(
        answered_by(&api, &format!("/v2/models/{MODEL}/labels/blue/infer"), None).await,
        "1"
    );
    ctl(&api, &["models", "unlabel", MODEL, "blue"]).await;
    let (status, _) = api
        .post_json(
            &format!("/v2/models/{MODEL}/labels/blue/infer"),
            &v2_request,
        )
        .await;
    assert_eq!(status, 404);
    let history: Vec<Value> =
        serde_json::from_str(&ctl(&api, &["rollout", "history", MODEL, "-o", "json"]).await)
            .unwrap();
    let actions: Vec<(&str, &Value)> = history
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), &e["detail"]))
        .collect();
    assert_eq!(
        actions.iter().map(|a| a.0).collect::<Vec<_>>(),
        ["unlabel", "label", "label"],
        "{history:?}"
    );
    assert_eq!(actions[1].1["from"], v2);
    assert_eq!(actions[1].1["to"], 1);
    let (_, audit) = api.get("/admin/v1/audit?action=label").await;
    assert_eq!(audit.as_array().unwrap().len(), 2, "{audit}");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_keeps_the_old_version_for_a_rollback_until_its_grace_is_over() {
    let dir = tempfile::tempdir().unwrap();
    let api = standalone(dir.path(), 3600).await;
    let v2 = push_demo(&api).await;
    wait_ready(&api, v2).await;
    let path = format!("/v2/models/{MODEL}/infer");
    ctl(
        &api,
        &[
            "rollout",
            "start",
            MODEL,
            "--version",
            &v2.to_string(),
            "--canary",
            "100",
        ],
    )
    .await;
    assert_eq!(answered_by(&api, &path, None).await, v2.to_string());
    // The canary cannot be retired under its traffic.
    let (ok, out) = vaticctl(&api, &["models", "retire", MODEL, &v2.to_string()]).await;
    assert!(
        !ok && out.contains("is the canary: roll it back first"),
        "{out}"
    );
    // A change planned on what the model was before another change is refused, not applied
    // over it.
    let store = api.app.state().store.clone().expect("a registry");
    let stale = store.model(MODEL).await.unwrap();
    ctl(&api, &["rollout", "set", MODEL, "--canary", "100"]).await;
    let late = vatic_store::RolloutOp::Set { weight: 10 };
    let refused = store
        .rollout_from(&stale, &late, &vatic_store::Actor::named("test"))
        .await
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("changed while this change was made"),
        "{refused}"
    );
    let out = ctl(&api, &["rollout", "promote", MODEL]).await;
    assert!(
        out.contains("version 1 was stable before the last promote"),
        "{out}"
    );
    assert_eq!(answered_by(&api, &path, None).await, v2.to_string());
    let status: Value =
        serde_json::from_str(&ctl(&api, &["rollout", "status", MODEL, "-o", "json"]).await)
            .unwrap();
    assert_eq!(status["model"]["labels"]["stable"], v2);
    assert_eq!(status["model"]["traffic"]["previous_stable"], 1);
    assert_eq!(
        status["ready"]["1"], true,
        "the old stable stays loaded: {status}"
    );

    // Rollback returns to version 1 at once.
    let out = ctl(&api, &["rollout", "rollback", MODEL, "--reason", "drift"]).await;
    assert!(out.contains("stable"), "{out}");
    assert_eq!(answered_by(&api, &path, None).await, "1");
    let history: Vec<Value> =
        serde_json::from_str(&ctl(&api, &["rollout", "history", MODEL, "-o", "json"]).await)
            .unwrap();
    assert_eq!(history[0]["action"], "rollback");
    assert_eq!(history[0]["detail"]["reason"], "drift");
    assert_eq!(history[1]["action"], "promote");
    assert_eq!(history[2]["action"], "set");
    assert_eq!(history[3]["action"], "start");
    assert_eq!(
        history.len(),
        4,
        "the refused change left no trace: {history:?}"
    );
    api.stop().await;

    // With no grace, the old stable version is retired right after the promote.
    let dir = tempfile::tempdir().unwrap();
    let api = standalone(dir.path(), 0).await;
    let v2 = push_demo(&api).await;
    wait_ready(&api, v2).await;
    ctl(
        &api,
        &[
            "rollout",
            "start",
            MODEL,
            "--version",
            &v2.to_string(),
            "--canary",
            "10",
        ],
    )
    .await;
    ctl(&api, &["rollout", "promote", MODEL]).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, model) = api.get(&format!("/admin/v1/models/{MODEL}")).await;
        if model["versions"][0]["state"] == "retired" {
            assert_eq!(model["traffic"]["previous_stable"], Value::Null);
            assert_eq!(model["versions"][0]["updated_by"], "controller");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "version 1 is still {}",
            model["versions"][0]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (ok, out) = vaticctl(&api, &["rollout", "rollback", MODEL]).await;
    assert!(!ok && out.contains("nothing to roll back"), "{out}");
    api.stop().await;
}

/// Versions a cluster api refuses to send traffic to while no worker has them ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_label_or_canary_cannot_name_a_version_no_worker_has_ready() {
    let db = TestDb::postgres();
    migrated(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = crate::helpers::cluster_settings(Vec::new());
    settings.server.database.url = Some(db.url.clone());
    settings.upload_dir = dir.path().join("uploads");
    settings.prediction_log.spool_dir = dir.path().join("spool");
    let api = TestApi::start_until(settings, None, "/v2/health/live").await;
    let v1 = push_demo(&api).await;
    let v2 = push_demo(&api).await;
    for args in [
        vec!["models", "label", MODEL, &v1.to_string(), "--as", "blue"],
        vec![
            "rollout",
            "start",
            MODEL,
            "--version",
            &v2.to_string(),
            "--canary",
            "10",
        ],
    ] {
        let (ok, out) = vaticctl(&api, &args).await;
        assert!(!ok && out.contains("is not ready on any worker"), "{out}");
    }
    let (_, model) = api.get(&format!("/admin/v1/models/{MODEL}")).await;
    assert_eq!(model["labels"], json!({"stable": v1}), "nothing changed");
    api.stop().await;
}

/// Two api replicas and two worker processes on PostgreSQL, under load (vaticctl bench at
/// concurrency 16 and 4 clients on one, 8 clients on the other): canary 10 -> 50 -> promote -> rollback fails
/// no request, and the replica that did not make a change applies it by notification (its own
/// refresh is set to a minute).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_under_load_across_two_replicas_fails_no_request() {
    let db = TestDb::postgres();
    migrated(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let workers: Vec<ServerProcess> = (0..2)
        .map(|i| registry_worker(&db.url, &dir.path().join(format!("cache-{i}"))))
        .collect();
    let api = registry_api(&db, dir.path()).await;
    let v1 = push_demo(&api).await;
    let v2 = push_demo(&api).await;
    for w in &workers {
        for v in [v1, v2] {
            wait_status(
                &api.client,
                &format!("{}/v2/models/{MODEL}/versions/{v}/ready", w.url),
                200,
                Duration::from_secs(60),
            )
            .await;
        }
    }
    let other = {
        let mut settings = crate::helpers::cluster_settings(Vec::new());
        settings.server.database.url = Some(db.url.clone());
        settings.fleet_refresh_ms = 60_000;
        settings.heartbeat_timeout_ms = 120_000;
        settings.upload_dir = dir.path().join("uploads-2");
        settings.prediction_log.spool_dir = dir.path().join("spool-2");
        TestApi::start(settings, None).await
    };
    // Both replicas route to both workers once their heartbeats report v2 ready.
    for replica in [&api, &other] {
        crate::helpers::wait_post(
            replica,
            &format!("/v2/models/{MODEL}/versions/{v2}/infer"),
            &vatic_testkit::demo_reference().v2_request(0..1),
            200,
            Duration::from_secs(30),
        )
        .await;
    }
    // The load generator at concurrency 16 on the replica that makes the changes (it exits
    // with status 1 if any request fails), and 8 more clients on the other.
    let bench = tokio::process::Command::new(binary("vaticctl", "vatic-cli"))
        .args([
            "--server", &api.base, "bench", MODEL, "-c", "16", "-d", "20s",
        ])
        .args(["--warmup", "0s", "-o", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("vaticctl bench");
    // Clients on both replicas for the whole sequence, however long it takes.
    let traffic = Traffic::start(&api, 4);
    let traffic_other = Traffic::start(&other, 8);
    let path = format!("/v2/models/{MODEL}/infer");
    // `other` sees each change by notification: poll it until it routes as the change says.
    let follows = |want: &'static str| {
        let (other, path) = (&other, path.clone());
        async move {
            let started = Instant::now();
            loop {
                let mut seen = Vec::new();
                for _ in 0..20 {
                    seen.push(answered_by(other, &path, None).await);
                }
                let ok = match want {
                    "both" => seen.iter().any(|v| *v == "1") && seen.iter().any(|v| *v == "2"),
                    v => seen.iter().all(|s| s == v),
                };
                if ok {
                    return started.elapsed();
                }
                assert!(
                    started.elapsed() < Duration::from_secs(15),
                    "replica 2 routes {seen:?}, not {want}"
                );
            }
        }
    };
    ctl(
        &api,
        &[
            "rollout",
            "start",
            MODEL,
            "--version",
            &v2.to_string(),
            "--canary",
            "10",
        ],
    )
    .await;
    eprintln!(
        "canary 10: the other replica followed in {:?}",
        follows("both").await
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    ctl(&api, &["rollout", "set", MODEL, "--canary", "50"]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    ctl(&api, &["rollout", "promote", MODEL]).await;
    eprintln!(
        "promote: the other replica followed in {:?}",
        follows("2").await
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    ctl(&api, &["rollout", "rollback", MODEL]).await;
    eprintln!(
        "rollback: the other replica followed in {:?}",
        follows("1").await
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (served, failures) = traffic.stop().await;
    let (served_other, failures_other) = traffic_other.stop().await;
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let bench = bench.wait_with_output().await.unwrap();
    let report: Value = serde_json::from_slice(&bench.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&bench.stderr)));
    eprintln!("vaticctl bench during the rollout: {report}");
    assert!(bench.status.success(), "{report}");
    let level = &report[0];
    assert_eq!(level["concurrency"], 16, "{report}");
    assert_eq!(level["errors"], json!({}), "{report}");
    assert_eq!(level["succeeded"], level["requests"], "{report}");
    assert!(level["requests"].as_u64().unwrap() > 1000, "{report}");
    eprintln!("and {served} + {served_other} more from the clients");
    assert!(
        failures_other.is_empty(),
        "{} failed: {:?}",
        failures_other.len(),
        &failures_other[..failures_other.len().min(5)]
    );
    assert!(served > 100 && served_other > 100);
    other.stop().await;
    api.stop().await;
    drop(workers);
}

/// Sends `n` unversioned requests, `clients` at a time; checks every answer is the stable
/// version's, with the demo model's outputs.
async fn served_by_stable(api: &TestApi, n: usize, clients: usize) {
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, url) = (
            api.client.clone(),
            format!("{}/v2/models/{MODEL}/infer", api.base),
        );
        tasks.push(tokio::spawn(async move {
            let reference = vatic_testkit::demo_reference();
            for i in 0..n / clients {
                let rows = i % 4..i % 4 + 2;
                let r = client
                    .post(&url)
                    .json(&reference.v2_request(rows.clone()))
                    .send()
                    .await
                    .expect("infer");
                assert_eq!(r.status(), 200);
                assert_eq!(r.headers()["x-vatic-model-version"], "1");
                let body: Value = r.json().await.unwrap();
                reference.check_response(&body, rows);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// The rollout figures of `side` once they count `n` requests (they are written every 100 ms).
async fn side_figures(api: &TestApi, side: &str, n: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = api
            .get(&format!("/admin/v1/models/{MODEL}/rollout?window=600"))
            .await;
        assert_eq!(status, 200, "{body}");
        let found = body["sides"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["side"] == side)
            .cloned();
        if let Some(s) = found {
            let counted = s["requests"].as_u64().unwrap() + s["dropped"].as_u64().unwrap();
            if counted >= n {
                assert_eq!(counted, n, "{s}");
                return s;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{side} never counted {n}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_never_changes_an_answer_and_its_comparison_counts_every_copy() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("vatic.db").display());
    let mut settings =
        registry_standalone_settings(&url, vatic_testkit::root().join("models"), dir.path());
    settings.rollout.stats_flush_ms = 100;
    let api = TestApi::start(settings, None).await;
    let v2 = push_demo(&api).await;
    wait_ready(&api, v2).await;
    let out = ctl(
        &api,
        &["rollout", "shadow", MODEL, "--version", &v2.to_string()],
    )
    .await;
    assert!(
        out.contains("shadow") && out.contains("copy of 100%"),
        "{out}"
    );
    ctl(&api, &["models", "log", MODEL, "--mode", "full"]).await;

    // The same file as the shadow: every copy is compared, and agrees exactly.
    served_by_stable(&api, 200, 4).await;
    let shadow = side_figures(&api, "shadow", 200).await;
    eprintln!("shadow of the same model: {shadow}");
    assert_eq!(shadow["version"], v2);
    assert_eq!(
        shadow["compared"].as_u64().unwrap() + shadow["dropped"].as_u64().unwrap(),
        200,
        "{shadow}"
    );
    assert!(shadow["compared"].as_u64().unwrap() > 0);
    assert_eq!(shadow["error_ratio"], 0.0);
    assert_eq!(shadow["agreement"], 1.0);
    assert_eq!(shadow["outputs"]["probabilities"]["max_abs"], 0.0);
    let stable = side_figures(&api, "stable", 200).await;
    assert_eq!(stable["version"], 1);
    assert_eq!(stable["error_ratio"], 0.0);
    // With the prediction log in full mode, each compared copy's answer is stored beside the
    // served record of its request, flagged, with its outputs and without the inputs.
    let compared = shadow["compared"].as_u64().unwrap() as usize;
    let deadline = Instant::now() + Duration::from_secs(20);
    let records = loop {
        let (status, page) = api
            .get(&format!("/admin/v1/predictions?model={MODEL}&limit=1000"))
            .await;
        assert_eq!(status, 200, "{page}");
        let records = page["records"].as_array().unwrap().clone();
        if records.len() >= 200 + compared {
            break records;
        }
        assert!(Instant::now() < deadline, "{} records", records.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (shadows, served): (Vec<&Value>, Vec<&Value>) =
        records.iter().partition(|r| r["shadow"] == true);
    assert_eq!((served.len(), shadows.len()), (200, compared));
    for s in &shadows {
        assert_eq!(s["version"], v2.to_string(), "{s}");
        assert_eq!(s["status"], 200, "{s}");
        assert!(s["request"].is_null(), "{s}");
        assert!(s["response"]["outputs"].is_array(), "{s}");
        let twin = served
            .iter()
            .find(|r| r["request_id"] == s["request_id"])
            .expect("the served record of the same request");
        assert_eq!(twin["version"], "1");
        assert_eq!(
            twin["response"]["outputs"], s["response"]["outputs"],
            "the same file answers the same"
        );
        assert!(twin.get("shadow").is_none(), "{twin}");
    }
    ctl(&api, &["models", "log", MODEL, "--mode", "metadata"]).await;
    // The shadow answers requests that name its label, like any version.
    assert_eq!(
        answered_by(
            &api,
            &format!("/v2/models/{MODEL}/labels/shadow/infer"),
            None
        )
        .await,
        v2.to_string()
    );
    let out = ctl(&api, &["rollout", "status", MODEL, "--window", "10m"]).await;
    assert!(
        out.contains("over the last 10m") && out.contains("100.00%"),
        "{out}"
    );

    // A shadow that cannot answer these requests (another model's file): its errors are
    // counted, the callers see nothing of them.
    ctl(&api, &["rollout", "shadow", MODEL, "--stop"]).await;
    let v3 = push(&api, "testdata/models/cnn/1/model.onnx", &[]).await;
    wait_ready(&api, v3).await;
    ctl(
        &api,
        &[
            "rollout",
            "shadow",
            MODEL,
            "--version",
            &v3.to_string(),
            "--sample",
            "50%",
        ],
    )
    .await;
    served_by_stable(&api, 400, 4).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let failing = loop {
        let (_, body) = api
            .get(&format!("/admin/v1/models/{MODEL}/rollout?window=600"))
            .await;
        let s = body["sides"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["side"] == "shadow" && s["version"] == v3)
            .cloned();
        if let Some(s) = s.filter(|s| s["requests"].as_u64().unwrap() > 100) {
            break s;
        }
        assert!(Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("shadow that fails: {failing}");
    assert_eq!(failing["error_ratio"], 1.0, "{failing}");
    assert_eq!(failing["compared"], 0);

    // Refusals, with a shadow running and after a rollback ended it.
    let (ok, out) = vaticctl(
        &api,
        &["rollout", "shadow", MODEL, "--version", &v2.to_string()],
    )
    .await;
    assert!(!ok && out.contains("version 3 is the shadow"), "{out}");
    ctl(&api, &["rollout", "rollback", MODEL]).await;
    let (_, model) = api.get(&format!("/admin/v1/models/{MODEL}")).await;
    assert_eq!(model["labels"], json!({"stable": 1}), "{model}");
    for (args, want) in [
        (
            vec!["rollout", "shadow", MODEL, "--version", "1"],
            "only a staged version",
        ),
        (
            vec![
                "rollout",
                "shadow",
                MODEL,
                "--version",
                "2",
                "--sample",
                "0",
            ],
            "from 1 to 100",
        ),
        (
            vec!["rollout", "shadow", MODEL, "--stop"],
            "no shadow to stop",
        ),
        (vec!["rollout", "shadow", MODEL], "--version"),
    ] {
        let (ok, out) = vaticctl(&api, &args).await;
        assert!(!ok && out.contains(want), "vaticctl {args:?}: {out}");
    }
    let r = api
        .client
        .put(format!(
            "{}/admin/v1/models/{MODEL}/rollout/shadow",
            api.base
        ))
        .json(&json!({"version": 2, "sample": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let (status, body) = api
        .get(&format!("/admin/v1/models/{MODEL}/rollout?window=0"))
        .await;
    assert_eq!(status, 400, "{body}");
    api.stop().await;
}

/// A standalone api whose controller and figures move fast: a tick and a write every 100 ms.
/// (The rollouts below allow the canary's p99 50 ms over stable's, so that a machine busy with
/// other tests does not fail a good version; the slow one is slower by 300 ms.)
async fn fast_controller(dir: &std::path::Path) -> TestApi {
    let url = format!("sqlite://{}", dir.join("vatic.db").display());
    let mut settings =
        registry_standalone_settings(&url, vatic_testkit::root().join("models"), dir);
    settings.rollout.stats_flush_ms = 100;
    settings.rollout.controller_tick_ms = 100;
    settings.rollout.controller_lease_ms = 1000;
    TestApi::start(settings, None).await
}

/// Waits until the model's automatic rollout is no longer running; returns its plan.
async fn auto_outcome(api: &TestApi) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, model) = api.get(&format!("/admin/v1/models/{MODEL}")).await;
        let plan = &model["traffic"]["auto"];
        if plan["state"] != "running" {
            return plan.clone();
        }
        assert!(Instant::now() < deadline, "still running: {plan}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts an automatic rollout of `version` with vaticctl.
async fn auto(api: &TestApi, version: u64, steps: &str, min_requests: &str) -> String {
    ctl(
        api,
        &[
            "rollout",
            "auto",
            MODEL,
            "--version",
            &version.to_string(),
            "--steps",
            steps,
            "--interval",
            "1s",
            "--max-error-ratio",
            "2x",
            "--max-p99",
            "1.5x",
            "--p99-slack",
            "50ms",
            "--min-requests",
            min_requests,
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_automatic_rollout_promotes_a_good_version_and_rolls_back_a_failing_or_slow_one() {
    let dir = tempfile::tempdir().unwrap();
    let api = fast_controller(dir.path()).await;
    let traffic = Traffic::start(&api, 4);

    // A good version (the same file): every step holds, and it is promoted.
    let v2 = push_demo(&api).await;
    wait_ready(&api, v2).await;
    let out = auto(&api, v2, "10,50,100", "20").await;
    assert!(
        out.contains("automatic rollout of version 2: step 1 of 3"),
        "{out}"
    );
    let plan = auto_outcome(&api).await;
    assert_eq!(plan["state"], "succeeded", "{plan}");
    let (_, model) = api.get(&format!("/admin/v1/models/{MODEL}")).await;
    assert_eq!(model["labels"]["stable"], v2, "{model}");
    let history: Vec<Value> =
        serde_json::from_str(&ctl(&api, &["rollout", "history", MODEL, "-o", "json"]).await)
            .unwrap();
    let actions: Vec<&str> = history
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["auto_promote", "auto_step", "auto_step", "auto"],
        "{history:?}"
    );
    assert!(history[..3].iter().all(|e| e["actor"] == "controller"));
    let (_, failures) = traffic.stop().await;
    assert!(failures.is_empty(), "{failures:?}");

    // A version that fails requests (another model's file, which refuses the demo's input):
    // rolled back by itself, the reason in the history and the audit log.
    let traffic = Traffic::start(&api, 4);
    let bad = push(&api, "testdata/models/cnn/1/model.onnx", &[]).await;
    wait_ready(&api, bad).await;
    auto(&api, bad, "20,100", "20").await;
    let plan = auto_outcome(&api).await;
    eprintln!("failing version: {plan}");
    assert_eq!(plan["state"], "rolled_back", "{plan}");
    assert!(
        plan["reason"].as_str().unwrap().contains("error ratio"),
        "{plan}"
    );
    let (_, model) = api.get(&format!("/admin/v1/models/{MODEL}")).await;
    assert_eq!(model["labels"], json!({"stable": v2}), "{model}");
    let history: Vec<Value> =
        serde_json::from_str(&ctl(&api, &["rollout", "history", MODEL, "-o", "json"]).await)
            .unwrap();
    assert_eq!(history[0]["action"], "rollback");
    assert_eq!(history[0]["actor"], "controller");
    assert!(history[0]["detail"]["reason"]
        .as_str()
        .unwrap()
        .starts_with("automatic: canary error ratio"));
    let (_, audit) = api.get("/admin/v1/audit?action=rollback").await;
    assert_eq!(audit[0]["actor"], "controller", "{audit}");
    // Only requests the canary answered failed, each with the canary's reason.
    let (_, failures) = traffic.stop().await;
    assert!(!failures.is_empty());
    assert!(
        failures.iter().all(|f| f.starts_with("400")),
        "{failures:?}"
    );

    // A slow version (the same file, batching that waits 300 ms for company): rolled back on
    // its p99.
    let traffic = Traffic::start(&api, 4);
    let toml = dir.path().join("slow.toml");
    std::fs::write(
        &toml,
        "[batching]\nmax_batch_size = 64\nmax_queue_delay_us = 300000\ninstances = 1\n",
    )
    .unwrap();
    let config = toml.to_str().unwrap();
    let slow = push(
        &api,
        "models/breast_cancer/1/model.onnx",
        &["--config", config],
    )
    .await;
    wait_ready(&api, slow).await;
    auto(&api, slow, "50,100", "10").await;
    let plan = auto_outcome(&api).await;
    eprintln!("slow version: {plan}");
    assert_eq!(plan["state"], "rolled_back", "{plan}");
    assert!(plan["reason"].as_str().unwrap().contains("p99"), "{plan}");
    let (_, failures) = traffic.stop().await;
    assert!(
        failures.is_empty(),
        "a slow canary fails nothing: {failures:?}"
    );
    let (_, model) = api.get(&format!("/admin/v1/models/{MODEL}")).await;
    assert_eq!(model["labels"], json!({"stable": v2}), "{model}");

    // Refusals, each naming the setting at fault.
    for (args, want) in [
        (vec!["--steps", "50,10"], "increasing"),
        (vec!["--steps", "0,10"], "from 1 to 100, got [0, 10]"),
        (vec!["--max-p99", "0.5x"], "not a multiple"),
        (vec!["--min-agreement", "120%"], "not a share"),
    ] {
        let mut all = vec!["rollout", "auto", MODEL, "--version", "1"];
        all.extend(args.iter().copied());
        let (ok, out) = vaticctl(&api, &all).await;
        assert!(!ok && out.contains(want), "vaticctl {all:?}: {out}");
    }
    // Through the API, each setting the CLI cannot send wrong is refused by name.
    let good = json!({"version": slow, "steps": [10], "interval_secs": 1, "max_error_ratio": 2.0, "max_p99": 1.5, "min_requests": 1});
    for (key, value) in [
        ("steps", json!([])),
        ("interval_secs", json!(0)),
        ("max_error_ratio", json!(0.5)),
        ("p99_slack_ms", json!(-1.0)),
        ("min_requests", json!(0)),
        ("min_agreement", json!(0.0)),
        ("error_floor", json!(2.0)),
    ] {
        let mut body = good.clone();
        body[key] = value;
        let r = api
            .client
            .post(format!("{}/admin/v1/models/{MODEL}/rollout/auto", api.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{key}");
        let text = r.text().await.unwrap();
        assert!(text.contains(key), "{key}: {text}");
    }
    api.stop().await;
}

/// Two api processes on PostgreSQL: the one holding the controller's lease is killed with
/// kill -9 mid-rollout, and the other carries the rollout on to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_moves_to_another_replica_when_its_holder_is_killed() {
    let db = TestDb::postgres();
    migrated(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let worker = registry_worker(&db.url, &dir.path().join("cache"));
    let start_api = |i: usize| {
        api_process(
            &db.url,
            dir.path(),
            i,
            &[
                ("VATIC_ROLLOUT__STATS_FLUSH_MS", "200"),
                ("VATIC_ROLLOUT__CONTROLLER_TICK_MS", "200"),
                ("VATIC_ROLLOUT__CONTROLLER_LEASE_MS", "2000"),
            ],
        )
    };
    let mut apis = vec![start_api(0), start_api(1)];
    let client = reqwest::Client::new();
    let ctl_at = |url: String, args: Vec<String>| async move {
        let out = tokio::process::Command::new(binary("vaticctl", "vatic-cli"))
            .current_dir(vatic_testkit::root())
            .arg("--server")
            .arg(url)
            .args(args)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let push = ["models", "push", MODEL, "models/breast_cancer/1/model.onnx"];
    for _ in 0..2 {
        ctl_at(
            apis[0].url.clone(),
            push.iter().map(|s| s.to_string()).collect(),
        )
        .await;
    }
    for v in [1, 2] {
        wait_status(
            &client,
            &format!("{}/v2/models/{MODEL}/versions/{v}/ready", worker.url),
            200,
            Duration::from_secs(60),
        )
        .await;
    }
    // Both replicas route to version 2 once the worker's heartbeat reports it ready.
    let body = vatic_testkit::demo_reference().v2_request(0..1);
    for api in &apis {
        let url = format!("{}/v2/models/{MODEL}/versions/2/infer", api.url);
        let deadline = Instant::now() + Duration::from_secs(30);
        while vatic_testkit::post_json(&client, &url, &body).await.0 != 200 {
            assert!(Instant::now() < deadline, "{url} never answered");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The replica whose id holds the lease leads.
    let status_of = |api: &ServerProcess| {
        let (client, url) = (
            client.clone(),
            format!("{}/admin/v1/models/{MODEL}/rollout", api.url),
        );
        async move { vatic_testkit::get_json(&client, &url).await.1 }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let leader = loop {
        let mut found = None;
        for (i, api) in apis.iter().enumerate() {
            let status = status_of(api).await;
            if status["controller"]["holder"] == status["replica"] {
                found = Some(i);
            }
        }
        if let Some(i) = found {
            break i;
        }
        assert!(Instant::now() < deadline, "no replica took the controller");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let survivor = 1 - leader;

    // Load on both replicas, then the rollout: 4 shares of 2 seconds each.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for api in &apis {
        for _ in 0..4 {
            let (client, url, stop) = (
                client.clone(),
                format!("{}/v2/models/{MODEL}/infer", api.url),
                stop.clone(),
            );
            load.push(tokio::spawn(async move {
                let body = vatic_testkit::demo_reference().v2_request(0..1);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = client.post(&url).json(&body).send().await;
                }
            }));
        }
    }
    let args: Vec<String> = [
        "rollout",
        "auto",
        MODEL,
        "--version",
        "2",
        "--steps",
        "10,25,50,100",
        "--interval",
        "2s",
        "--p99-slack",
        "50ms",
        "--min-requests",
        "10",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    ctl_at(apis[survivor].url.clone(), args).await;
    // Once the first step has passed, kill the leader.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, model) = vatic_testkit::get_json(
            &client,
            &format!("{}/admin/v1/models/{MODEL}", apis[survivor].url),
        )
        .await;
        if model["traffic"]["auto"]["step"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the first step never passed: {model}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    apis[leader].child.kill().unwrap();
    apis[leader].child.wait().unwrap();
    let killed_at = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(90);
    let plan = loop {
        let (_, model) = vatic_testkit::get_json(
            &client,
            &format!("{}/admin/v1/models/{MODEL}", apis[survivor].url),
        )
        .await;
        if model["traffic"]["auto"]["state"] != "running" {
            break model["traffic"]["auto"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "the rollout stopped with its controller: {model}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in load {
        let _ = t.await;
    }
    eprintln!(
        "finished {:?} after the leader was killed: {plan}",
        killed_at.elapsed()
    );
    assert_eq!(plan["state"], "succeeded", "{plan}");
    let status = status_of(&apis[survivor]).await;
    assert_eq!(
        status["controller"]["holder"], status["replica"],
        "the survivor took the controller over"
    );
    let (_, model) = vatic_testkit::get_json(
        &client,
        &format!("{}/admin/v1/models/{MODEL}", apis[survivor].url),
    )
    .await;
    assert_eq!(model["labels"]["stable"], 2, "{model}");
    drop(worker);
}
