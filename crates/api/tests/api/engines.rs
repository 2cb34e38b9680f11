//! The registry's engine setting: a model is moved between tract and ONNX Runtime without a push
//! and without a refused request, and answers the same in both; a push is checked with it.

use crate::helpers::{
    api_process, migrated, registry_standalone_settings, vaticctl_at, TestApi, Traffic,
};
use serde_json::{json, Value};
use std::time::Duration;
use vatic_testkit::TestDb;

const MODEL: &str = "breast_cancer";

async fn patch(api: &TestApi, body: Value) -> (u16, Value) {
    let r = api
        .client
        .patch(format!("{}/admin/v1/models/{MODEL}", api.base))
        .json(&body)
        .send()
        .await
        .expect("PATCH");
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Waits until the served version's configuration names `backend`, for at most 60 s.
async fn wait_backend(api: &TestApi, backend: &str) {
    let mut config = Value::Null;
    for _ in 0..600 {
        let (status, c) = api.get(&format!("/v2/models/{MODEL}/config")).await;
        if status == 200 && c["backend"] == backend {
            return;
        }
        config = c;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{MODEL} is not served by {backend} after 60 s: {config}");
}

async fn answers_as_the_reference(api: &TestApi) {
    let reference = vatic_testkit::demo_reference();
    let n = reference.inputs.len();
    let (status, body) = api
        .post_json(
            &format!("/v2/models/{MODEL}/infer"),
            &reference.v2_request(0..n),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    reference.check_response(&body, 0..n);
}

#[tokio::test]
async fn the_registrys_engine_setting_moves_a_model_between_engines() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("vatic.db").display());
    let mut settings =
        registry_standalone_settings(&url, vatic_testkit::root().join("models"), dir.path());
    settings.engine.onnxruntime.library = Some(vatic_testkit::onnxruntime_library());
    settings.engine.profile.at_load = false;
    let api = TestApi::start(settings, None).await;
    wait_backend(&api, "tract").await;
    let (_, model) = api.get(&format!("/admin/v1/models/{MODEL}")).await;
    assert_eq!(model["engine"], "model_toml", "{model}");

    // Requests keep being answered while the version loads again: the version as it was serves
    // until the new load is ready.
    let traffic = Traffic::start(&api, 2);
    let (status, model) = patch(&api, json!({"engine": "onnxruntime"})).await;
    assert_eq!(status, 200, "{model}");
    assert_eq!(model["engine"], "onnxruntime", "{model}");
    wait_backend(&api, "onnxruntime").await;
    answers_as_the_reference(&api).await;
    let (_, stats) = api.get(&format!("/v2/models/{MODEL}/stats")).await;
    assert_eq!(stats["model_stats"][0]["backend"], "onnxruntime", "{stats}");

    // An engine vatic does not have is refused, naming it and the ones there are; nothing
    // changes.
    let (status, answer) = patch(&api, json!({"engine": "tensorrt"})).await;
    assert_eq!(status, 400, "{answer}");
    let error = answer["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("tensorrt") && error.contains("onnxruntime"),
        "{answer}"
    );
    let (_, model) = api.get(&format!("/admin/v1/models/{MODEL}")).await;
    assert_eq!(model["engine"], "onnxruntime", "{model}");
    let loaded = &model["versions"][0]["loaded"];
    assert_eq!(loaded[0]["worker"], "standalone", "{model}");
    assert!(loaded[0].get("heartbeat_age_secs").is_none(), "{model}");
    assert_eq!(loaded[0]["engine"], "onnxruntime", "{model}");

    // Back to what model.toml says (nothing here): the worker's default, tract.
    let (status, _) = patch(&api, json!({"engine": "model_toml"})).await;
    assert_eq!(status, 200);
    wait_backend(&api, "tract").await;
    answers_as_the_reference(&api).await;
    let (served, failures) = traffic.stop().await;
    assert!(served > 0);
    assert!(failures.is_empty(), "{failures:?}");
    api.stop().await;
}

/// `vaticctl models push` of the demo's file against `base`: whether it succeeded, and what it
/// printed.
async fn push(base: &str) -> (bool, String) {
    let file = format!("models/{MODEL}/1/model.onnx");
    vaticctl_at(base, &["models", "push", MODEL, &file]).await
}

/// A push is checked with the engine the workers will use: the model's registry setting wins
/// over model.toml. An api process without ONNX Runtime's library (a process of its own: the
/// library, once loaded, stays loaded) refuses a new file for a model set to onnxruntime,
/// naming the setting, and takes it once the model is set to auto or tract.
#[tokio::test]
async fn a_push_is_checked_with_the_engine_the_registry_sets() {
    let db = TestDb::sqlite();
    migrated(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let library = "/nonexistent/libonnxruntime.so";
    let api = api_process(
        &db.url,
        dir.path(),
        0,
        &[("VATIC_ONNXRUNTIME__LIBRARY", library)],
    );
    let client = reqwest::Client::new();
    let engine = |engine: &'static str| {
        let request = client
            .patch(format!("{}/admin/v1/models/{MODEL}", api.url))
            .json(&json!({ "engine": engine }));
        async move {
            let r = request.send().await.expect("PATCH");
            assert_eq!(r.status(), 200, "{engine}: {}", r.text().await.unwrap());
        }
    };

    let (ok, out) = push(&api.url).await;
    assert!(ok, "model.toml names no engine: tract checks it. {out}");
    engine("onnxruntime").await;
    let (ok, out) = push(&api.url).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("HTTP 400") && out.contains(library) && out.contains("onnxruntime.library"),
        "{out}"
    );
    for (setting, versions) in [("auto", 2), ("tract", 3)] {
        engine(setting).await;
        let (ok, out) = push(&api.url).await;
        assert!(ok, "{setting}: {out}");
        let model: Value = client
            .get(format!("{}/admin/v1/models/{MODEL}", api.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            model["versions"].as_array().map(Vec::len),
            Some(versions),
            "the refused push stored nothing: {model}"
        );
    }
}
