//! The onnxruntime engine beside tract: every fixture answers as onnxruntime's reference did on
//! both, batching and the Triton extensions say which engine serves, `auto` measures both, and a
//! missing library fails only the versions that need it.

use crate::helpers::TestWorker;
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::Duration;
use tract_onnx::prelude::IntoTensor;
use vatic_testkit::onnx::{Collapse, OutputShapes};
use vatic_testkit::RepoModel;
use vatic_worker::config::EngineChoice;
use vatic_worker::onnx::{Backend, OnnxModel};
use vatic_worker::onnxruntime::OnnxRuntimeSettings;

fn onnxruntime() -> OnnxRuntimeSettings {
    OnnxRuntimeSettings {
        library: Some(vatic_testkit::onnxruntime_library()),
        ..Default::default()
    }
}

/// Every fixture, the demo model among them.
fn all_models() -> Vec<&'static str> {
    let mut names = vatic_testkit::FIXTURES.to_vec();
    names.push("breast_cancer");
    names
}

/// A worker serving every fixture with `engine` as its default engine.
async fn worker_with(engine: EngineChoice, models: &[&str]) -> TestWorker {
    let repo = vatic_testkit::repo(
        &models
            .iter()
            .map(|n| RepoModel {
                name: n,
                source: n,
                model_toml: None,
            })
            .collect::<Vec<_>>(),
    );
    let dir = repo.path().to_path_buf();
    TestWorker::start_with(
        dir,
        Some(repo),
        |s| {
            s.engine.engine = engine;
            s.engine.onnxruntime = onnxruntime();
        },
        true,
    )
    .await
}

/// Checks a response against a fixture's reference, or the demo's for its reference rows.
fn check(name: &str, body: &Value) {
    if name == "breast_cancer" {
        let reference = vatic_testkit::demo_reference();
        reference.check_response(body, 0..reference.inputs.len());
    } else {
        vatic_testkit::fixture(name).check_response(body);
    }
}

fn request(name: &str) -> Value {
    if name == "breast_cancer" {
        let reference = vatic_testkit::demo_reference();
        reference.v2_request(0..reference.inputs.len())
    } else {
        vatic_testkit::fixture(name).v2_request()
    }
}

#[tokio::test]
async fn every_fixture_answers_as_the_reference_on_both_engines() {
    for (choice, backend) in [
        (EngineChoice::Tract, "tract"),
        (EngineChoice::OnnxRuntime, "onnxruntime"),
    ] {
        let models = all_models();
        let w = worker_with(choice, &models).await;
        for name in &models {
            let (status, body) = w
                .post_json(&format!("/v2/models/{name}/infer"), &request(name))
                .await;
            assert_eq!(status, 200, "{backend} {name}: {body}");
            check(name, &body);
            let (status, config) = w.get(&format!("/v2/models/{name}/config")).await;
            assert_eq!(status, 200, "{config}");
            assert_eq!(config["backend"], backend, "{name}: {config}");
            assert_eq!(w.stats(name).await["backend"], backend, "{name}");
        }
        w.stop().await;
    }
}

#[test]
fn both_engines_give_the_same_outputs_within_the_documented_tolerance() {
    // docs/engines.md: floats agree within 1e-5 + 1e-5 x |value|; integers exactly.
    for name in all_models() {
        let file = vatic_testkit::model_dir(name).join("1/model.onnx");
        let tract = OnnxModel::load(&file, None).unwrap();
        let ort = OnnxModel::load_with(&file, None, Backend::OnnxRuntime, &onnxruntime()).unwrap();
        assert_eq!(tract.signature, ort.signature, "{name}");
        assert_eq!(ort.backend(), Backend::OnnxRuntime);
        // Random-looking inputs, not only the fixture's: the same bytes into both.
        let inputs = ort.sample_inputs(2).unwrap();
        let inputs: tract_onnx::prelude::TVec<_> = inputs
            .into_iter()
            .map(|t| {
                let mut t = t.into_tensor();
                let dt = t.datum_type();
                let mut plain = t.try_as_plain_ram_mut().unwrap();
                if dt == tract_onnx::prelude::DatumType::F32 {
                    for (i, x) in plain.as_slice_mut::<f32>().unwrap().iter_mut().enumerate() {
                        *x = ((i * 7919) % 200) as f32 / 100.0 - 1.0;
                    }
                } else if dt == tract_onnx::prelude::DatumType::I64 {
                    for (i, x) in plain.as_slice_mut::<i64>().unwrap().iter_mut().enumerate() {
                        *x = ((i * 31) % 10) as i64;
                    }
                }
                t.into()
            })
            .collect();
        let a = tract.run(inputs.clone()).unwrap();
        let b = ort.run(inputs).unwrap();
        assert_eq!(a.len(), b.len(), "{name}");
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.shape(), y.shape(), "{name}");
            assert_eq!(x.datum_type(), y.datum_type(), "{name}");
            match x.datum_type() {
                tract_onnx::prelude::DatumType::F32 => {
                    let (x, y) = (
                        x.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap(),
                        y.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap(),
                    );
                    for (i, (p, q)) in x.iter().zip(y).enumerate() {
                        assert!(
                            (p - q).abs() <= 1e-5 + 1e-5 * q.abs(),
                            "{name}[{i}]: tract {p}, onnxruntime {q}"
                        );
                    }
                }
                _ => assert_eq!(x, y, "{name}"),
            }
        }
    }
}

/// An export whose outputs name their first dimension otherwise than the inputs' batch
/// dimension, fix it at the size traced, or declare no shape at all, still serves batched on
/// ONNX Runtime, with the output shapes tract works out.
#[test]
fn onnxruntime_finds_the_batch_axis_when_the_outputs_do_not_declare_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for name in all_models() {
        let file = vatic_testkit::model_dir(name).join("1/model.onnx");
        let tract = OnnxModel::load(&file, None).unwrap();
        if !tract.signature.batched {
            continue;
        }
        for (label, shapes) in [
            ("renamed", OutputShapes::FirstNamed("output_dim_0")),
            ("fixed", OutputShapes::FirstFixed(1)),
            ("undeclared", OutputShapes::Undeclared),
        ] {
            let variant = dir.path().join(format!("{name}-{label}.onnx"));
            vatic_testkit::onnx::write_outputs_relabelled(&file, &variant, shapes).unwrap();
            let ort =
                OnnxModel::load_with(&variant, None, Backend::OnnxRuntime, &onnxruntime()).unwrap();
            assert_eq!(ort.signature, tract.signature, "{name}, outputs {label}");
            checked += 1;
        }
    }
    assert!(checked >= 9, "{checked} variants");
}

/// A model whose output does not keep the inputs' rows serves unbatched on ONNX Runtime, with
/// its declared output shape: one that answers one row for any number (its runs on 1 and 2 rows
/// both succeed), and one that fails on 2 rows (the probe's failed run).
#[test]
fn onnxruntime_serves_unbatched_a_model_whose_outputs_do_not_keep_the_rows() {
    let dir = tempfile::tempdir().unwrap();
    for how in [Collapse::Sum, Collapse::Reshape] {
        let file = dir.path().join(format!("{how:?}.onnx"));
        vatic_testkit::onnx::write_rows_collapsed(&file, how).unwrap();
        let ort = OnnxModel::load_with(&file, None, Backend::OnnxRuntime, &onnxruntime()).unwrap();
        assert!(!ort.signature.batched, "{how:?}: {:?}", ort.signature);
        assert_eq!(ort.signature.outputs[0].shape, [1, 4], "{how:?}");
        // Unbatched, it runs the declared shape: one row.
        let outputs = ort.run(ort.sample_inputs(1).unwrap()).unwrap();
        assert_eq!(outputs[0].shape(), [1, 4], "{how:?}");
    }
}

#[tokio::test]
async fn onnxruntime_versions_batch_requests_together() {
    let repo = vatic_testkit::repo(&[RepoModel {
        name: "breast_cancer",
        source: "breast_cancer",
        // A batch of 8 runs as soon as 8 rows wait; the delay only bounds the wait.
        model_toml: Some(
            "engine = \"onnxruntime\"\n[batching]\nmax_batch_size = 8\npreferred_batch_sizes = [8]\nmax_queue_delay_us = 20000000\ninstances = 2\n",
        ),
    }]);
    let dir = repo.path().to_path_buf();
    let w = TestWorker::start_with(
        dir,
        Some(repo),
        |s| s.engine.onnxruntime = onnxruntime(),
        true,
    )
    .await;
    let reference = vatic_testkit::demo_reference();
    let answers = futures_util::future::join_all((0..8).map(|i| {
        let request = reference.v2_request(i..i + 1);
        let w = &w;
        async move {
            (
                i,
                w.post_json("/v2/models/breast_cancer/infer", &request)
                    .await,
            )
        }
    }))
    .await;
    for (i, (status, body)) in answers {
        assert_eq!(status, 200, "{body}");
        reference.check_response(&body, i..i + 1);
    }
    let stats = w.stats("breast_cancer").await;
    assert_eq!(stats["backend"], "onnxruntime");
    assert_eq!(stats["inference_count"], 8, "{stats}");
    assert_eq!(stats["execution_count"], 1, "{stats}");
    assert_eq!(stats["batch_stats"][0]["batch_size"], 8, "{stats}");
    let (_, config) = w.get("/v2/models/breast_cancer/config").await;
    assert_eq!(config["instance_group"][0]["count"], 2, "{config}");
    // Two instances share this machine's cores: each session gets half (one at least).
    let version = w.engine().resolve("breast_cancer", None).unwrap();
    let cores = std::thread::available_parallelism().unwrap().get();
    assert_eq!(version.model.threads_per_run(), (cores / 2).max(1));
    w.stop().await;
}

#[tokio::test]
async fn auto_measures_both_engines_and_serves_with_the_faster() {
    let repo = vatic_testkit::repo(&[RepoModel {
        name: "cnn",
        source: "cnn",
        model_toml: Some("engine = \"auto\"\n"),
    }]);
    let dir = repo.path().to_path_buf();
    let w = TestWorker::start_with(
        dir,
        Some(repo),
        |s| {
            s.engine.onnxruntime = onnxruntime();
            s.engine.profile.at_load = true;
            s.engine.profile.cell_ms = 5;
            s.engine.batching.max_batch_size = 2;
        },
        true,
    )
    .await;
    let version = w.engine().resolve("cnn", None).unwrap();
    let figures = &version.engines;
    assert_eq!(figures.len(), 2, "{figures:?}");
    for f in figures {
        assert!(f.samples_per_second.unwrap() > 0.0, "{figures:?}");
        assert!(f.one_row_us.unwrap() > 0.0, "{figures:?}");
    }
    let chosen: Vec<_> = figures.iter().filter(|f| f.chosen).collect();
    assert_eq!(chosen.len(), 1, "{figures:?}");
    // tract serves unless onnxruntime is faster both in rows a second and at one row.
    let (tract, ort) = (&figures[0], &figures[1]);
    assert_eq!(
        (tract.engine.as_str(), ort.engine.as_str()),
        ("tract", "onnxruntime")
    );
    let ort_faster =
        ort.samples_per_second > tract.samples_per_second && ort.one_row_us <= tract.one_row_us;
    assert_eq!(ort.chosen, ort_faster, "{figures:?}");
    assert_eq!(chosen[0].engine, version.model.backend().as_str());
    let (_, config) = w.get("/v2/models/cnn/config").await;
    assert_eq!(config["backend"], version.model.backend().as_str());
    let fixture = vatic_testkit::fixture("cnn");
    let (status, body) = w
        .post_json("/v2/models/cnn/infer", &fixture.v2_request())
        .await;
    assert_eq!(status, 200, "{body}");
    fixture.check_response(&body);
    w.stop().await;
}

/// The worker binary with `onnxruntime.library` pointing nowhere: the version that asks for
/// onnxruntime fails to load naming the setting; the tract one serves; `auto` falls back to
/// tract.
#[tokio::test]
async fn without_the_library_only_onnxruntime_versions_fail_naming_the_setting() {
    let repo = vatic_testkit::repo(&[
        RepoModel {
            name: "plain",
            source: "breast_cancer",
            model_toml: None,
        },
        RepoModel {
            name: "ort",
            source: "breast_cancer",
            model_toml: Some("engine = \"onnxruntime\"\n"),
        },
        RepoModel {
            name: "either",
            source: "breast_cancer",
            model_toml: Some("engine = \"auto\"\n"),
        },
    ]);
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("vatic-worker");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = Command::new(bin)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--models-dir")
        .arg(repo.path())
        .env(
            "VATIC_ONNXRUNTIME__LIBRARY",
            "/nonexistent/libonnxruntime.so",
        )
        .env("VATIC_PROFILE__AT_LOAD", "false")
        .env_remove("ORT_DYLIB_PATH")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("vatic-worker starts");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let mut index: Vec<Value> = Vec::new();
    for _ in 0..600 {
        if let Ok(r) = client
            .post(format!("{base}/v2/repository/index"))
            .send()
            .await
        {
            index = r.json().await.unwrap_or_default();
            if index.len() == 3 && index.iter().all(|m| m["state"] != "LOADING") {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let state = |name: &str| {
        index
            .iter()
            .find(|m| m["name"] == name)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(state("plain")["state"], "READY", "{index:?}");
    assert_eq!(state("either")["state"], "READY", "{index:?}");
    let ort = state("ort");
    assert_eq!(ort["state"], "UNAVAILABLE", "{index:?}");
    let reason = ort["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("onnxruntime.library") && reason.contains("/nonexistent/libonnxruntime.so"),
        "{reason}"
    );
    let reference = vatic_testkit::demo_reference();
    for name in ["plain", "either"] {
        let r = client
            .post(format!("{base}/v2/models/{name}/infer"))
            .json(&reference.v2_request(0..3))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        reference.check_response(&r.json().await.unwrap(), 0..3);
        let config: Value = client
            .get(format!("{base}/v2/models/{name}/config"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(config["backend"], "tract", "{config}");
    }
    let r = client
        .post(format!("{base}/v2/models/ort/infer"))
        .json(&reference.v2_request(0..1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("onnxruntime.library"),
        "{body}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A version whose spec changes (here its engine) answers while it loads again; a new load that
/// fails leaves it serving as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_loading_again_keeps_serving_and_a_failed_reload_leaves_it_as_it_was() {
    use std::sync::Arc;
    use vatic_worker::{Engine, EngineSettings, VersionSpec};
    let spec = |config: &str, engine: Option<EngineChoice>| VersionSpec {
        model: "breast_cancer".into(),
        version: 1,
        file: vatic_testkit::root().join("models/breast_cancer/1/model.onnx"),
        config: config.into(),
        origin: "model.toml (test)".into(),
        default: true,
        engine,
    };
    let mut settings = EngineSettings::default();
    settings.profile.at_load = false;
    settings.onnxruntime = onnxruntime();
    let engine = Arc::new(Engine::new(&settings));
    engine.apply(vec![spec("", None)]).unwrap().join().unwrap();
    let backend = || {
        engine
            .resolve("breast_cancer", None)
            .expect("the version answers")
            .model
            .backend()
    };
    let reference = vatic_testkit::demo_reference();
    let request = vatic_schema::v2::decode_request(
        &bytes::Bytes::from(serde_json::to_vec(&reference.v2_request(0..4)).unwrap()),
        None,
    )
    .unwrap();
    let answers = || async {
        let response = engine.infer("breast_cancer", None, &request).await.unwrap();
        let json: Value =
            serde_json::from_str(&vatic_schema::v2::response_json(&response, false)).unwrap();
        reference.check_response(&json, 0..4);
    };
    assert_eq!(backend(), Backend::Tract);

    let loading = engine
        .apply(vec![spec("", Some(EngineChoice::OnnxRuntime))])
        .unwrap();
    answers().await;
    loading.join().unwrap();
    assert_eq!(backend(), Backend::OnnxRuntime);
    answers().await;

    // A model.toml that does not validate: the new load fails, the version serves on.
    engine
        .apply(vec![spec(
            "[batching]\nmax_batch_size = 0\n",
            Some(EngineChoice::Tract),
        )])
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(backend(), Backend::OnnxRuntime);
    assert!(engine.is_ready());
    answers().await;
    engine.shutdown();
}
