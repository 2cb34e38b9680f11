//! API keys, roles and model scopes: every route the api registers (taken from the api itself,
//! so a new route is walked too) answered for no key, a malformed, unknown, revoked or expired
//! key, a role that may not use it, a model outside the key's scope, and the right key.

use crate::helpers::{registry_standalone_settings, TestApi};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;
use vatic_api::state::AppState;
use vatic_server::auth::{KeyRing, Role};
use vatic_server::Need;
use vatic_testkit::TestDb;

/// The keys of the walk, made before the api starts.
struct Keys {
    admin: String,
    deployer: String,
    deployer_other: String,
    predictor: String,
    predictor_other: String,
    viewer: String,
    viewer_other: String,
    revoked: String,
    expired: String,
}

async fn make_keys(db: &TestDb) -> Keys {
    crate::helpers::migrated(db).await;
    let store = vatic_store::Store::open(&vatic_store::ConnectOptions::new(db.url.clone()), false)
        .await
        .unwrap();
    let ring = KeyRing::load(&store, Default::default()).await.unwrap();
    let make = |role: Role, models: Option<&str>| {
        let ring = ring.clone();
        let models = models.map(|m| vec![m.to_string()]);
        async move {
            let key = vatic_api::auth::new_key(role, "walk", models, "test");
            ring.create(key, None).await.unwrap().1
        }
    };
    let revoked = make(Role::Admin, None).await;
    assert!(store
        .revoke_key(&vatic_server::auth::token::id_of(&revoked))
        .await
        .unwrap());
    let mut expired = vatic_api::auth::new_key(Role::Admin, "expired", None, "test");
    expired.expires_at = Some(chrono::Utc::now() - chrono::Duration::hours(1));
    let expired = ring.create(expired, None).await.unwrap().1;
    let keys = Keys {
        admin: make(Role::Admin, None).await,
        deployer: make(Role::Deployer, None).await,
        deployer_other: make(Role::Deployer, Some("other")).await,
        predictor: make(Role::Predictor, Some("breast_cancer")).await,
        predictor_other: make(Role::Predictor, Some("other")).await,
        viewer: make(Role::Viewer, None).await,
        viewer_other: make(Role::Viewer, Some("other")).await,
        revoked,
        expired,
    };
    store.close().await;
    keys
}

/// A concrete path and a body for a rule's pattern: the demo model, its version 1.
fn request_for(
    method: &Method,
    pattern: &str,
    throwaway: &str,
    job: &str,
) -> (String, Option<Value>) {
    let tf_predict = method == Method::POST && pattern.starts_with("/v1/");
    // A batch job of the predictor's, queued (the walk's api runs no batch rows): cancelled,
    // then retried by the walk.
    let id = if pattern.starts_with("/v2/batch/") {
        job
    } else {
        throwaway
    };
    let mut path = pattern
        .replace("{name}", "breast_cancer")
        .replace("{id}", id);
    if pattern == "/v2/batch/jobs" && method == Method::POST {
        path += "?model=breast_cancer&format=jsonl";
    }
    if tf_predict && path.ends_with("{version}") {
        path = path.replace("{version}", "1:predict");
    } else if tf_predict && path.ends_with("{label}") {
        path = path.replace("{label}", "stable:predict");
    } else if tf_predict {
        path = path.replace("{model}", "breast_cancer:predict");
    }
    // Retiring the version the walk pushed (version 2, staged before the walk, is rolled out
    // by the walk's rollout routes, in the order they are registered: shadowed, rolled out
    // automatically, set by hand, promoted, rolled back, started again).
    let version = if pattern.ends_with("/retire") {
        "3"
    } else {
        "1"
    };
    // Inference and metadata by the label every model has; the admin routes set and remove
    // one of their own.
    let label = if pattern.starts_with("/admin/") {
        "blue"
    } else {
        "stable"
    };
    let path = path
        .replace("{model}", "breast_cancer")
        .replace("{version}", version)
        .replace("{label}", label);
    let reference = vatic_testkit::demo_reference();
    let body = match (method.as_str(), pattern) {
        ("PUT", p) if p.contains("/labels/") => Some(json!({"version": 1})),
        ("POST", "/admin/v1/models/{name}/rollout") => Some(json!({"version": 2, "canary": 10})),
        ("PATCH", "/admin/v1/models/{name}/rollout") => Some(json!({"canary": 20})),
        ("PUT", "/admin/v1/models/{name}/rollout/shadow") => Some(json!({"version": 2})),
        ("POST", "/admin/v1/models/{name}/rollout/auto") => Some(json!({
            "version": 2, "steps": [10, 100], "interval_secs": 60, "max_error_ratio": 2.0,
            "max_p99": 1.5, "min_requests": 100
        })),
        ("POST", p) if p.ends_with("/infer") => Some(reference.v2_request(0..1)),
        ("POST", "/v2/batch/jobs") => Some(json!(reference.inputs[0])),
        ("POST", p) if p.starts_with("/v1/") => {
            let row = reference.v2_request(0..1)["inputs"][0]["data"].clone();
            Some(json!({"instances": [row]}))
        }
        ("PATCH", _) => Some(json!({"log_mode": "metadata"})),
        ("POST", "/admin/v1/retention") => Some(json!({"keep_days": 3650})),
        ("POST", "/admin/v1/keys") => Some(json!({"role": "viewer", "name": "walk"})),
        ("POST", "/v2/repository/index") => Some(json!({})),
        _ => None,
    };
    (path, body)
}

async fn send(
    api: &TestApi,
    method: &Method,
    path: &str,
    body: Option<&Value>,
    auth: Option<&str>,
) -> (u16, Value) {
    let mut req = api
        .client
        .request(method.clone(), format!("{}{path}", api.base));
    if method == Method::POST && path.ends_with("/versions") {
        // A push: the demo model's file again, which becomes version 2.
        let model = std::fs::read(vatic_testkit::model_dir("breast_cancer").join("1/model.onnx"))
            .expect("the demo model");
        let part = reqwest::multipart::Part::bytes(model).file_name("model.onnx");
        req = req.multipart(reqwest::multipart::Form::new().part("model", part));
    } else if let Some(body) = body {
        req = req.json(body);
    }
    if let Some(auth) = auth {
        req = req.header("Authorization", auth);
    }
    let r = req.send().await.expect("a request");
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_each_kind_of_caller_as_its_rule_says() {
    let db = TestDb::sqlite();
    let keys = make_keys(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings =
        registry_standalone_settings(&db.url, vatic_testkit::root().join("models"), dir.path());
    settings.auth.enabled = Some(true);
    settings.batch.run = false;
    let api = TestApi::start(settings, None).await;
    let bearer = |k: &str| format!("Bearer {k}");

    // A key to revoke through the walk.
    let (status, made) = send(
        &api,
        &Method::POST,
        "/admin/v1/keys",
        Some(&json!({"role": "viewer", "name": "to revoke"})),
        Some(&bearer(&keys.admin)),
    )
    .await;
    assert_eq!(status, 201, "{made}");
    let throwaway = made["key"]["id"].as_str().unwrap().to_string();
    assert!(made["secret"]
        .as_str()
        .unwrap()
        .starts_with(&format!("vk_{throwaway}_")));

    // Version 2, for the rollout routes to start, promote and roll back.
    let (status, pushed) = send(
        &api,
        &Method::POST,
        "/admin/v1/models/breast_cancer/versions",
        None,
        Some(&bearer(&keys.admin)),
    )
    .await;
    assert_eq!(status, 201, "{pushed}");
    let (status, submitted) = send(
        &api,
        &Method::POST,
        "/v2/batch/jobs?model=breast_cancer&format=jsonl",
        Some(&json!(vatic_testkit::demo_reference().inputs[0])),
        Some(&bearer(&keys.predictor)),
    )
    .await;
    assert_eq!(status, 201, "{submitted}");
    let job = submitted["id"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let ready = "/v2/models/breast_cancer/versions/2/ready";
    while send(&api, &Method::GET, ready, None, Some(&bearer(&keys.admin)))
        .await
        .0
        != 200
    {
        assert!(
            std::time::Instant::now() < deadline,
            "version 2 never became ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let rules = vatic_server::all_routes::<AppState>(None, std::sync::Arc::new(|| true));
    assert!(rules.len() > 30, "{} routes", rules.len());
    let mut walked = 0;
    for rule in &rules {
        let method = Method::from_bytes(rule.method.as_str().as_bytes()).unwrap();
        let (path, body) = request_for(&method, &rule.path, &throwaway, &job);
        let what = format!("{method} {path} ({:?})", rule.need);
        let answer = |auth: Option<String>| {
            let (method, path, body) = (method.clone(), path.clone(), body.clone());
            let api = &api;
            async move { send(api, &method, &path, body.as_ref(), auth.as_deref()).await }
        };
        if rule.need == Need::Open {
            let (status, body) = answer(None).await;
            assert_eq!(status, 200, "{what}: {body}");
            continue;
        }
        walked += 1;
        for (auth, why) in [
            (None, "no key"),
            (Some("Basic dXNlcjpwYXNz".to_string()), "malformed"),
            (
                Some(bearer("vk_nosuchkey000_abcdefabcdefabcdefabcdefabcdefab")),
                "unknown",
            ),
            (Some(bearer(&keys.revoked)), "revoked"),
            (Some(bearer(&keys.expired)), "expired"),
        ] {
            let (status, body) = answer(auth).await;
            assert_eq!(status, 401, "{what}, {why}: {body}");
            assert!(body["error"].is_string(), "{what}, {why}: {body}");
        }
        let wrong_role = match rule.need {
            Need::Infer | Need::Deploy | Need::Batch => Some(&keys.viewer),
            Need::View => Some(&keys.predictor),
            Need::Admin => Some(&keys.deployer),
            Need::Open | Need::AnyKey | Need::ModelRead => None,
        };
        if let Some(key) = wrong_role {
            let (status, body) = answer(Some(bearer(key))).await;
            assert_eq!(status, 403, "{what}, wrong role: {body}");
        }
        let out_of_scope = match rule.need {
            Need::Infer | Need::ModelRead => Some(&keys.predictor_other),
            Need::Deploy => Some(&keys.deployer_other),
            Need::View => Some(&keys.viewer_other),
            // A job's model is checked when it is submitted (batch.rs); a job of another
            // key is not found.
            Need::Open | Need::AnyKey | Need::Admin | Need::Batch => None,
        };
        if let Some(key) = out_of_scope {
            let (status, body) = answer(Some(bearer(key))).await;
            assert_eq!(status, 403, "{what}, out of scope: {body}");
        }
        let right = match rule.need {
            Need::AnyKey | Need::View => &keys.viewer,
            Need::ModelRead | Need::Infer | Need::Batch => &keys.predictor,
            Need::Deploy => &keys.deployer,
            Need::Admin | Need::Open => &keys.admin,
        };
        let (status, body) = answer(Some(bearer(right))).await;
        assert!(
            (200..300).contains(&status),
            "{what}, right key: {status} {body}"
        );
    }
    assert!(walked > 25, "{walked} guarded routes");

    // The same refusal for a model in the scope's blind spot whether it exists or not.
    let (_, exists) = send(
        &api,
        &Method::GET,
        "/v2/models/breast_cancer",
        None,
        Some(&bearer(&keys.predictor_other)),
    )
    .await;
    let (_, missing) = send(
        &api,
        &Method::GET,
        "/v2/models/nope",
        None,
        Some(&bearer(&keys.predictor_other)),
    )
    .await;
    assert_eq!(
        exists["error"]
            .as_str()
            .unwrap()
            .replace("breast_cancer", "M"),
        missing["error"].as_str().unwrap().replace("nope", "M")
    );
    // X-API-Key works too; a key in the URL does not.
    let r = api
        .client
        .get(format!("{}/v2/models/breast_cancer", api.base))
        .header("X-API-Key", &keys.predictor)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = api
        .client
        .get(format!(
            "{}/v2/models/breast_cancer?api_key={}",
            api.base, keys.predictor
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Percent-encoded paths reach the same routes, and the same guard.
    for (method, path) in [
        (Method::POST, "/admin/v1/%6beys"),
        (Method::POST, "/v2/models/breast_cancer/%69nfer"),
        (Method::GET, "/admin/v1/%6dodels"),
    ] {
        let body = json!({"role": "admin"});
        let (status, answer) = send(&api, &method, path, Some(&body), None).await;
        assert_eq!(status, 401, "{method} {path}: {answer}");
    }
    let (status, body) = send(
        &api,
        &Method::GET,
        "/v2/models/%73tats",
        None,
        Some(&bearer(&keys.predictor)),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    // A limited key reaches nothing beyond its models: not the admin routes either.
    let (status, body) = send(
        &api,
        &Method::GET,
        "/admin/v1/workers",
        None,
        Some(&bearer(&keys.deployer_other)),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    // An admin key cannot be limited: it could make an unlimited one.
    let (status, body) = send(
        &api,
        &Method::POST,
        "/admin/v1/keys",
        Some(&json!({"role": "admin", "models": ["breast_cancer"]})),
        Some(&bearer(&keys.admin)),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    // Probes stay open.
    assert_eq!(api.get("/v2/health/ready").await.0, 200);
    // A method the path does not serve: 405, naming the ones it does.
    let r = api
        .client
        .delete(format!("{}/v2/models/breast_cancer/infer", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    tokio::time::sleep(Duration::ZERO).await;
    api.stop().await;
}

/// The rows of a route table made from an OpenAPI document: method, path, need, roles.
fn route_rows(openapi: &Value) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for (path, item) in openapi["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("a path item") {
            if !["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                continue;
            }
            let roles: Vec<&str> = op["x-vatic-roles"]
                .as_array()
                .expect("x-vatic-roles")
                .iter()
                .map(|r| r.as_str().unwrap())
                .collect();
            rows.push(vec![
                method.to_uppercase(),
                path.clone(),
                op["x-vatic-need"]
                    .as_str()
                    .expect("x-vatic-need")
                    .to_string(),
                roles.join(", "),
            ]);
        }
    }
    rows
}

#[tokio::test]
async fn the_openapi_document_names_every_route_and_the_security_page_follows_it() {
    let api = TestApi::standalone().await;
    let r = api
        .client
        .get(format!("{}/openapi.json", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let openapi: Value = r.json().await.unwrap();
    assert!(
        openapi["openapi"].as_str().unwrap().starts_with("3."),
        "{openapi}"
    );
    assert_eq!(
        openapi["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert_eq!(
        openapi["components"]["securitySchemes"]["api_key"]["name"],
        "X-API-Key"
    );
    let infer = &openapi["paths"]["/v2/models/{model}/infer"]["post"];
    assert_eq!(infer["x-vatic-roles"], json!(["admin", "predictor"]));
    assert_eq!(infer["parameters"][0]["name"], "model");
    assert!(infer["security"].is_array());
    assert!(openapi["paths"]["/v2/health/ready"]["get"]["security"].is_null());

    // Exactly the routes the api registers.
    let rows = route_rows(&openapi);
    let mut documented: Vec<(String, String)> =
        rows.iter().map(|r| (r[0].clone(), r[1].clone())).collect();
    let mut registered: Vec<(String, String)> =
        vatic_server::all_routes::<AppState>(None, std::sync::Arc::new(|| true))
            .iter()
            .map(|r| (r.method.to_string(), r.path.clone()))
            .collect();
    documented.sort();
    registered.sort();
    assert_eq!(documented, registered);

    // docs/security.md's table is this document's.
    let page = crate::helpers::doc_table("docs/security.md", "### Routes and what they need");
    if page != rows {
        let table: Vec<String> = rows
            .iter()
            .map(|r| format!("| `{}` | `{}` | {} | {} |", r[0], r[1], r[2], r[3]))
            .collect();
        panic!(
            "docs/security.md's route table differs from GET /openapi.json; it should read:\n{}",
            table.join("\n")
        );
    }
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_hold_per_key_and_are_shared_between_replicas() {
    let db = TestDb::sqlite();
    crate::helpers::migrated(&db).await;
    let store = vatic_store::Store::open(&vatic_store::ConnectOptions::new(db.url.clone()), false)
        .await
        .unwrap();
    let ring = KeyRing::load(&store, Default::default()).await.unwrap();
    // A burst of 4 and a rate so slow that nothing refills during the test.
    let mut limited = vatic_api::auth::new_key(Role::Predictor, "limited", None, "test");
    limited.rate = Some(0.001);
    limited.burst = Some(4);
    let limited = ring.create(limited, None).await.unwrap().1;
    let free = vatic_api::auth::new_key(Role::Predictor, "free", None, "test");
    let free = ring.create(free, None).await.unwrap().1;
    let admin = vatic_api::auth::new_key(Role::Admin, "admin", None, "test");
    ring.create(admin, None).await.unwrap();
    store.close().await;

    // Two replicas, each told there are two: each enforces half the burst.
    let mut replicas = Vec::new();
    let mut dirs = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let mut settings =
            registry_standalone_settings(&db.url, vatic_testkit::root().join("models"), dir.path());
        settings.auth.enabled = Some(true);
        settings.auth.replicas = 2;
        settings.server.metrics_listen = Some("127.0.0.1:0".into());
        replicas.push(TestApi::start(settings, None).await);
        dirs.push(dir);
    }
    let path = "/v2/models/breast_cancer";
    for api in &replicas {
        for _ in 0..2 {
            let (status, body) = send(
                api,
                &Method::GET,
                path,
                None,
                Some(&format!("Bearer {limited}")),
            )
            .await;
            assert_eq!(status, 200, "{body}");
        }
        let r = api
            .client
            .get(format!("{}{path}", api.base))
            .bearer_auth(&limited)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 429);
        let retry: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(retry >= 1, "{retry}");
        let body: Value = r.json().await.unwrap();
        let message = body["error"].as_str().unwrap();
        assert!(
            message.contains("over its rate limit of 0.0005/s (burst 2) on this replica"),
            "{message}"
        );
        // Another key is not held back.
        let (status, _) = send(
            api,
            &Method::GET,
            path,
            None,
            Some(&format!("Bearer {free}")),
        )
        .await;
        assert_eq!(status, 200);
        let metrics = api.app.server.metrics_addr.unwrap();
        let text = reqwest::get(format!("http://{metrics}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(
            vatic_testkit::metric(
                &text,
                "vatic_requests_refused_total",
                &[("reason", "rate_limited")]
            ),
            Some(1.0),
            "{text}"
        );
    }
    for api in replicas {
        api.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_reaches_every_replica_at_once_on_postgres() {
    let db = TestDb::postgres();
    crate::helpers::migrated(&db).await;
    let store = vatic_store::Store::open(&vatic_store::ConnectOptions::new(db.url.clone()), false)
        .await
        .unwrap();
    let ring = KeyRing::load(&store, Default::default()).await.unwrap();
    let admin = vatic_api::auth::new_key(Role::Admin, "admin", None, "test");
    let admin = ring.create(admin, None).await.unwrap().1;
    // With a rate of its own: the columns hold it on PostgreSQL too.
    let mut doomed = vatic_api::auth::new_key(Role::Predictor, "doomed", None, "test");
    doomed.rate = Some(1000.0);
    doomed.burst = Some(1000);
    let doomed = ring.create(doomed, None).await.unwrap().1;
    store.close().await;

    let mut replicas = Vec::new();
    let mut dirs = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let mut settings =
            registry_standalone_settings(&db.url, vatic_testkit::root().join("models"), dir.path());
        settings.auth.enabled = Some(true);
        // Polling every ten minutes: only the notification can tell the other replica in time.
        settings.auth.poll_ms = 600_000;
        replicas.push(TestApi::start(settings, None).await);
        dirs.push(dir);
    }
    let path = "/v2/models/breast_cancer";
    let as_doomed = Some(format!("Bearer {doomed}"));
    for api in &replicas {
        assert_eq!(
            send(api, &Method::GET, path, None, as_doomed.as_deref())
                .await
                .0,
            200
        );
    }
    let id = vatic_server::auth::token::id_of(&doomed);
    let (status, body) = send(
        &replicas[0],
        &Method::POST,
        &format!("/admin/v1/keys/{id}/revoke"),
        None,
        Some(&format!("Bearer {admin}")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // The replica that revoked it refuses it at once; the other as soon as it hears.
    let (status, body) = send(&replicas[0], &Method::GET, path, None, as_doomed.as_deref()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("the API key has been revoked"))
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = send(&replicas[1], &Method::GET, path, None, as_doomed.as_deref()).await;
        if status == 401 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the other replica still takes the key"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for api in replicas {
        api.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_job_belongs_to_its_key_and_its_model_to_the_keys_scope() {
    let db = TestDb::sqlite();
    let keys = make_keys(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings =
        registry_standalone_settings(&db.url, vatic_testkit::root().join("models"), dir.path());
    settings.auth.enabled = Some(true);
    settings.batch.run = false;
    let api = TestApi::start(settings, None).await;
    let bearer = |k: &str| Some(format!("Bearer {k}"));
    let row = json!(vatic_testkit::demo_reference().inputs[0]);
    let submit = "/v2/batch/jobs?model=breast_cancer&format=jsonl";

    let (status, answer) = send(
        &api,
        &Method::POST,
        submit,
        Some(&row),
        bearer(&keys.predictor_other).as_deref(),
    )
    .await;
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("may not use model 'breast_cancer'"),
        "{answer}"
    );
    let (status, job) = send(
        &api,
        &Method::POST,
        submit,
        Some(&row),
        bearer(&keys.predictor).as_deref(),
    )
    .await;
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_str().unwrap();
    assert!(
        job["api_key"]
            .as_str()
            .is_some_and(|k| keys.predictor.starts_with(&format!("vk_{k}_"))),
        "{job}"
    );

    // Another key finds neither the job nor it in its list.
    for (method, path) in [
        (Method::GET, format!("/v2/batch/jobs/{id}")),
        (Method::GET, format!("/v2/batch/jobs/{id}/results")),
        (Method::POST, format!("/v2/batch/jobs/{id}/cancel")),
        (Method::POST, format!("/v2/batch/jobs/{id}/retry")),
    ] {
        let (status, answer) = send(
            &api,
            &method,
            &path,
            None,
            bearer(&keys.predictor_other).as_deref(),
        )
        .await;
        assert_eq!(status, 404, "{method} {path}: {answer}");
    }
    let (status, list) = send(
        &api,
        &Method::GET,
        "/v2/batch/jobs",
        None,
        bearer(&keys.predictor_other).as_deref(),
    )
    .await;
    assert_eq!((status, &list["jobs"]), (200, &json!([])), "{list}");
    // Its own key and an admin key see it; a viewer may not use batch routes.
    for key in [&keys.predictor, &keys.admin] {
        let (status, list) = send(
            &api,
            &Method::GET,
            "/v2/batch/jobs",
            None,
            bearer(key).as_deref(),
        )
        .await;
        assert_eq!(status, 200, "{list}");
        assert_eq!(list["jobs"][0]["id"], id, "{list}");
        let (status, got) = send(
            &api,
            &Method::GET,
            &format!("/v2/batch/jobs/{id}"),
            None,
            bearer(key).as_deref(),
        )
        .await;
        assert_eq!((status, got["id"].as_str()), (200, Some(id)), "{got}");
    }
    let (status, answer) = send(
        &api,
        &Method::GET,
        "/v2/batch/jobs",
        None,
        bearer(&keys.viewer).as_deref(),
    )
    .await;
    assert_eq!(status, 403, "{answer}");
    let (status, job) = send(
        &api,
        &Method::POST,
        &format!("/v2/batch/jobs/{id}/cancel"),
        None,
        bearer(&keys.admin).as_deref(),
    )
    .await;
    assert_eq!(status, 200, "{job}");
    assert!(
        job["error"]
            .as_str()
            .unwrap()
            .starts_with("cancelled by key "),
        "{job}"
    );
    api.stop().await;
}
