//! The response cache: a version whose model.toml opts in answers repeats from the api, with
//! the answers the model computes (checked against the demo's reference values), and never
//! answers another input, output selection or version from it; requests opt out by parameter
//! or header; the metrics count hits and misses.

use crate::helpers::{registry_standalone_settings, standalone_settings, vaticctl, TestApi};
use serde_json::{json, Value};
use vatic_testkit::{metric, DemoReference};

const MODEL: &str = "breast_cancer";
const CACHE_TOML: &str = "[cache]\nenabled = true\n";

/// Posts a V2 JSON request to `path`, with `headers`; returns the `X-Vatic-Cache` header and
/// the body, after checking for 200.
async fn infer(
    api: &TestApi,
    path: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> (Option<String>, Value) {
    let mut r = api.client.post(format!("{}{path}", api.base)).json(body);
    for (name, value) in headers {
        r = r.header(*name, *value);
    }
    let r = r.send().await.expect("infer");
    assert_eq!(r.status(), 200, "{path}");
    let cache = r
        .headers()
        .get("x-vatic-cache")
        .map(|v| v.to_str().unwrap().to_string());
    (cache, r.json().await.expect("JSON answer"))
}

/// A request for reference rows `rows` with `id` and `extra` request parameters.
fn request(
    reference: &DemoReference,
    rows: std::ops::Range<usize>,
    id: &str,
    extra: Value,
) -> Value {
    let mut body = reference.v2_request(rows);
    body["id"] = json!(id);
    if !extra.is_null() {
        body["parameters"] = extra;
    }
    body
}

/// Pushes the demo's file as a new version with the model.toml at `config`; returns its
/// number once it is ready.
async fn push(api: &TestApi, config: &str) -> u64 {
    let file = "models/breast_cancer/1/model.onnx";
    let args = [
        "models", "push", MODEL, file, "--config", config, "-o", "json",
    ];
    let (ok, out) = vaticctl(api, &args).await;
    assert!(ok, "{out}");
    let pushed: Value = serde_json::from_str(&out).unwrap();
    let version = pushed["version"]["version"].as_u64().unwrap();
    let ready = format!("{}/v2/models/{MODEL}/versions/{version}/ready", api.base);
    vatic_testkit::wait_ok(&api.client, &ready).await;
    version
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_opts_in_answers_repeats_from_the_cache_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("vatic.db").display());
    let mut settings =
        registry_standalone_settings(&url, vatic_testkit::root().join("models"), dir.path());
    settings.server.metrics_listen = Some("127.0.0.1:0".into());
    settings.fleet_refresh_ms = 100;
    let api = TestApi::start(settings, None).await;
    let toml = dir.path().join("model.toml");
    std::fs::write(&toml, CACHE_TOML).unwrap();
    let toml = toml.to_str().unwrap();
    let v2 = push(&api, toml).await;
    let reference = vatic_testkit::demo_reference();
    let path = format!("/v2/models/{MODEL}/versions/{v2}/infer");

    // A miss computes and keeps; the repeat is a hit with the same answer and its own id.
    let (cache, first) = infer(
        &api,
        &path,
        &request(&reference, 0..2, "a", Value::Null),
        &[],
    )
    .await;
    assert_eq!(cache.as_deref(), Some("miss"));
    reference.check_response(&first, 0..2);
    let (cache, again) = infer(
        &api,
        &path,
        &request(&reference, 0..2, "b", Value::Null),
        &[],
    )
    .await;
    assert_eq!(cache.as_deref(), Some("hit"));
    reference.check_response(&again, 0..2);
    assert_eq!(again["id"], "b");
    assert_eq!(again["outputs"], first["outputs"]);

    // Other rows, another output selection: misses, each with its own right answer.
    let (cache, other) = infer(
        &api,
        &path,
        &request(&reference, 2..4, "c", Value::Null),
        &[],
    )
    .await;
    assert_eq!(cache.as_deref(), Some("miss"));
    reference.check_response(&other, 2..4);
    let mut labels_only = request(&reference, 0..2, "d", Value::Null);
    labels_only["outputs"] = json!([{"name": "label"}]);
    for expected in ["miss", "hit"] {
        let (cache, answer) = infer(&api, &path, &labels_only, &[]).await;
        assert_eq!(cache.as_deref(), Some(expected));
        let outputs = answer["outputs"].as_array().unwrap();
        assert_eq!(outputs.len(), 1, "{answer}");
        assert_eq!(outputs[0]["name"], "label");
        assert_eq!(outputs[0]["data"], json!(reference.label[0..2]));
    }

    // A transport parameter does not change the key; an opt-out skips the cache.
    let transport = request(&reference, 0..2, "e", json!({"binary_data_output": false}));
    let (cache, _) = infer(&api, &path, &transport, &[]).await;
    assert_eq!(cache.as_deref(), Some("hit"));
    let opted_out = request(&reference, 0..2, "f", json!({"cache": false}));
    let (cache, answer) = infer(&api, &path, &opted_out, &[]).await;
    assert_eq!(cache, None);
    reference.check_response(&answer, 0..2);
    for header in ["no-cache", "max-age=0, no-store"] {
        let plain = request(&reference, 0..2, "g", Value::Null);
        let (cache, _) = infer(&api, &path, &plain, &[("Cache-Control", header)]).await;
        assert_eq!(cache, None, "Cache-Control: {header}");
    }

    // TF-Serving's path reaches the same version's cache.
    let instances = json!({"instances": reference.inputs[0..2]});
    let r = api
        .client
        .post(format!(
            "{}/v1/models/{MODEL}/versions/{v2}:predict",
            api.base
        ))
        .json(&instances)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-vatic-cache"));

    // Version 1 does not opt in; a new version that does never sees version 2's answers.
    let (cache, _) = infer(
        &api,
        &format!("/v2/models/{MODEL}/versions/1/infer"),
        &request(&reference, 0..2, "h", Value::Null),
        &[],
    )
    .await;
    assert_eq!(cache, None);
    let v3 = push(&api, toml).await;
    let (cache, answer) = infer(
        &api,
        &format!("/v2/models/{MODEL}/versions/{v3}/infer"),
        &request(&reference, 0..2, "i", Value::Null),
        &[],
    )
    .await;
    assert_eq!(cache.as_deref(), Some("miss"));
    reference.check_response(&answer, 0..2);

    let addr = api.app.server.metrics_addr.expect("a metrics port");
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let v2 = v2.to_string();
    let labels = [("model", MODEL), ("version", v2.as_str())];
    // Hits: the repeat, the label-only repeat, the transport parameter, and TF-Serving's
    // request when it matched.
    let hits = metric(&text, "vatic_cache_hits_total", &labels).unwrap();
    assert!((3.0..=4.0).contains(&hits), "{hits} hits");
    let misses = metric(&text, "vatic_cache_misses_total", &labels).unwrap();
    assert!((3.0..=4.0).contains(&misses), "{misses} misses");
    assert!(metric(&text, "vatic_cache_bytes", &[]).unwrap() > 0.0);
    assert!(metric(&text, "vatic_cache_entries", &[]).unwrap() >= 3.0);
    assert_eq!(metric(&text, "vatic_cache_evictions_total", &[]), Some(0.0));

    // The registry's setting decides before model.toml: off for every version, on for every
    // version (version 1's model.toml has no [cache]), and back to model.toml.
    let v1 = format!("/v2/models/{MODEL}/versions/1/infer");
    let v2_path = path.clone();
    for (setting, checks) in [
        ("off", vec![(&v2_path, None), (&v1, None)]),
        ("on", vec![(&v1, Some("miss")), (&v1, Some("hit"))]),
        (
            "model_toml",
            vec![
                (&v1, None),
                (&v2_path, Some("miss")),
                (&v2_path, Some("hit")),
            ],
        ),
    ] {
        let (ok, out) = vaticctl(&api, &["models", "cache", MODEL, setting]).await;
        assert!(ok && out.contains(setting), "{out}");
        for (at, want) in checks {
            let (cache, answer) =
                infer(&api, at, &request(&reference, 4..6, "j", Value::Null), &[]).await;
            assert_eq!(cache.as_deref(), want, "{setting}: {at}");
            reference.check_response(&answer, 4..6);
        }
    }
    let (ok, out) = vaticctl(&api, &["models", "cache", MODEL, "maybe"]).await;
    assert!(
        !ok && out.contains("possible values: on, off, model_toml"),
        "{out}"
    );
    let (ok, out) = vaticctl(&api, &["models", "cache", "nope", "on"]).await;
    assert!(!ok && out.contains("nope") && out.contains("404"), "{out}");
    let (ok, out) = vaticctl(&api, &["audit", "--action", "set_cache", "-o", "json"]).await;
    assert!(ok, "{out}");
    let records: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(records.as_array().unwrap().len(), 3, "{records}");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_registry_the_engine_reads_the_opt_in_and_a_cache_of_0_bytes_is_off() {
    let reference = vatic_testkit::demo_reference();
    let body = request(&reference, 0..1, "x", Value::Null);
    let path = format!("/v2/models/{MODEL}/infer");
    for (max_bytes, expected) in [(1 << 20, [Some("miss"), Some("hit")]), (0, [None, None])] {
        let repo = vatic_testkit::repo(&[vatic_testkit::RepoModel {
            name: MODEL,
            source: MODEL,
            model_toml: Some(CACHE_TOML),
        }]);
        let mut settings = standalone_settings(repo.path().to_path_buf());
        settings.cache.max_bytes = max_bytes;
        let api = TestApi::start(settings, Some(repo)).await;
        for want in expected {
            let (cache, answer) = infer(&api, &path, &body, &[]).await;
            assert_eq!(cache.as_deref(), want, "cache.max_bytes = {max_bytes}");
            reference.check_response(&answer, 0..1);
        }
        api.stop().await;
    }
}
