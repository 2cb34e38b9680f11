//! `vaticctl models`: pushing, listing, describing and retiring versions on an api with its own
//! registry database, and serving what was pushed.

use crate::helpers::{RegistryApp, Run};
use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;
use std::time::Duration;
use vatic_testkit::TestDb;

/// The fixture model, relative to the workspace root (vaticctl's working folder).
const CNN: &str = "testdata/models/cnn/1/model.onnx";

/// Longest wait for the api to load or unload a version after a registry change.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);

/// The row of `table` whose first cell is `first`.
fn row<'a>(run: &'a Run, table: &'a [Vec<String>], first: &str) -> &'a [String] {
    table
        .iter()
        .find(|r| r[0] == first)
        .unwrap_or_else(|| panic!("no row {first} in {}", run.stdout))
}

fn cnn_sha256() -> (String, u64) {
    vatic_store::sha256_file(&vatic_testkit::root().join(CNN)).expect("hash the fixture")
}

/// The JSON answer of `vaticctl -o json <args>`, which must succeed.
fn json(app: &RegistryApp, args: &[&str]) -> Value {
    app.vaticctl(&[args, &["-o", "json"]].concat())
        .assert_ok()
        .json()
}

#[test]
fn a_pushed_model_is_listed_described_served_then_retired() {
    let app = RegistryApp::start(TestDb::sqlite());
    let (sha256, size) = cnn_sha256();

    let run = app.vaticctl(&["models", "push", "cnn", CNN]);
    let table = run.assert_ok().table();
    assert_eq!(
        table[0],
        ["model", "version", "state", "sha256", "size", "inputs", "outputs"],
        "{}",
        run.stdout
    );
    assert_eq!(
        table[1],
        [
            "cnn",
            "1",
            "stable",
            &sha256,
            "2.2 KiB",
            "image FP32 [-1, 1, 8, 8]",
            "probs FP32 [-1, 3]"
        ],
        "{}",
        run.stdout
    );
    assert_eq!(size, 2261, "the fixture changed: update the size above");

    let run = app.vaticctl(&["models", "list"]);
    let table = run.assert_ok().table();
    assert_eq!(
        table[0],
        [
            "model",
            "versions",
            "stable",
            "labels",
            "log",
            "sample rate"
        ]
    );
    assert_eq!(
        row(&run, &table, "cnn"),
        ["cnn", "1 stable", "1", "stable=1", "metadata", "1"]
    );
    assert_eq!(row(&run, &table, "breast_cancer")[1], "1 stable");

    let run = app.vaticctl(&["models", "describe", "cnn"]);
    let table = run.assert_ok().table();
    assert!(run.stdout.starts_with("model: cnn\n"), "{}", run.stdout);
    let version = row(&run, &table, "1");
    assert_eq!(&version[..4], ["1", "stable", sha256.as_str(), "2.2 KiB"]);
    assert_eq!(version[4], "anonymous");
    assert_eq!(
        row(&run, &table, "input"),
        ["input", "image", "FP32", "[-1, 1, 8, 8]"]
    );
    assert_eq!(
        row(&run, &table, "output"),
        ["output", "probs", "FP32", "[-1, 3]"]
    );
    assert!(
        run.stdout.contains("model.toml of version 1: none"),
        "{}",
        run.stdout
    );

    app.wait_for("cnn ready", 200, CHANGE_TIMEOUT, || {
        app.get("/v2/models/cnn/ready")
    });
    let fixture = vatic_testkit::fixture("cnn");
    let (status, body) = app.post_json("/v2/models/cnn/infer", &fixture.v2_request());
    assert_eq!(status, 200, "{body}");
    fixture.check_response(&body);
    assert_eq!(body["model_version"], "1");

    let run = app.vaticctl(&["models", "retire", "cnn", "1"]);
    let table = run.assert_ok().table();
    assert_eq!(&table[1][..3], ["cnn", "1", "retired"], "{}", run.stdout);

    let body = app.wait_for("infer on retired cnn", 404, CHANGE_TIMEOUT, || {
        app.post_json("/v2/models/cnn/infer", &fixture.v2_request())
    });
    assert!(body["error"].as_str().is_some(), "{body}");

    let run = app.vaticctl(&["models", "list"]);
    let table = run.assert_ok().table();
    assert_eq!(row(&run, &table, "cnn")[1..3], ["1 retired", "-"]);

    let audit = json(&app, &["audit", "--limit", "2"]);
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions.len(), 2, "{audit}");
    assert_eq!(audit[0]["model"], "cnn", "{audit}");
    assert_eq!(audit[0]["version"], 1, "{audit}");
    assert!(actions.contains(&"push"), "{audit}");
}

#[test]
fn a_file_that_is_not_onnx_is_refused_with_the_servers_reason_and_nothing_is_stored() {
    let app = RegistryApp::start(TestDb::sqlite());
    let before = json(&app, &["models", "list"]);
    app.vaticctl(&["models", "push", "notes", "README.md"])
        .assert_error(&["error: the model cannot be served: ", "(HTTP 400)"]);
    app.vaticctl(&["models", "push", "breast_cancer", "Cargo.toml"])
        .assert_error(&["the model cannot be served", "(HTTP 400)"]);
    assert_eq!(json(&app, &["models", "list"]), before);
    app.vaticctl(&["models", "describe", "notes"])
        .assert_error(&["model 'notes' not found (HTTP 404)"]);
}

#[test]
fn a_config_is_recorded_with_the_version_and_shown_by_describe() {
    let app = RegistryApp::start(TestDb::postgres());
    let config = "[batching]\nmax_batch_size = 4\n";
    let file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(file.path(), config).unwrap();
    let path = file.path().to_str().unwrap();

    let pushed = json(&app, &["models", "push", "cnn", CNN, "--config", path]);
    assert_eq!(pushed["version"]["version"], 1, "{pushed}");
    assert_eq!(pushed["version"]["config"], config, "{pushed}");

    let run = app.vaticctl(&["models", "describe", "cnn"]);
    run.assert_ok();
    assert!(
        run.stdout
            .contains("model.toml of version 1:\n  [batching]\n  max_batch_size = 4\n"),
        "{}",
        run.stdout
    );
    let described = json(&app, &["models", "describe", "cnn", "--version", "1"]);
    assert_eq!(described["config"], config, "{described}");
    assert_eq!(described["sha256"], cnn_sha256().0, "{described}");

    // The version serves with it.
    app.wait_for("cnn ready", 200, CHANGE_TIMEOUT, || {
        app.get("/v2/models/cnn/ready")
    });
    let fixture = vatic_testkit::fixture("cnn");
    let (status, body) = app.post_json("/v2/models/cnn/infer", &fixture.v2_request());
    assert_eq!(status, 200, "{body}");
    fixture.check_response(&body);
}

#[test]
fn the_same_file_twice_makes_a_second_version_without_storing_the_file_again() {
    let app = RegistryApp::start(TestDb::postgres());
    let first = json(&app, &["models", "push", "cnn", CNN]);
    assert_eq!(first["artifact_stored"], true, "{first}");
    assert_eq!(first["version"]["version"], 1);
    assert_eq!(first["version"]["state"], "stable");

    let second = json(&app, &["models", "push", "cnn", CNN]);
    assert_eq!(second["artifact_stored"], false, "{second}");
    assert_eq!(second["version"]["version"], 2);
    assert_eq!(second["version"]["state"], "staged");
    assert_eq!(second["version"]["sha256"], first["version"]["sha256"]);

    // The table says so too.
    let run = app.vaticctl(&["models", "push", "cnn", CNN, "--version", "7"]);
    assert_eq!(run.assert_ok().table()[1][1], "7");
    assert!(
        run.stdout.contains("only the version was recorded"),
        "{}",
        run.stdout
    );

    app.vaticctl(&["models", "push", "cnn", CNN, "--version", "2"])
        .assert_error(&["already has version 2", "(HTTP 409)"]);
    let model = json(&app, &["models", "describe", "cnn"]);
    let versions: Vec<u64> = model["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [1, 2, 7], "{model}");

    // Retiring the stable version hands it to the newest staged one, and says so.
    let run = app.vaticctl(&["models", "retire", "cnn", "1"]);
    let table = run.assert_ok().table();
    assert_eq!(&table[1][..3], ["cnn", "1", "retired"], "{}", run.stdout);
    assert_eq!(&table[2][..3], ["cnn", "7", "stable"], "{}", run.stdout);
    assert!(
        run.stdout
            .contains("version 1 was stable: version 7 is stable now"),
        "{}",
        run.stdout
    );
    let model = json(&app, &["models", "describe", "cnn"]);
    let states: Vec<&str> = model["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["retired", "staged", "stable"], "{model}");
}

#[test]
fn models_log_shows_and_changes_what_the_prediction_log_keeps() {
    let app = RegistryApp::start(TestDb::sqlite());
    let run = app.vaticctl(&["models", "log", "breast_cancer"]);
    assert_eq!(
        run.assert_ok().table(),
        [
            vec!["model", "log", "sample rate"],
            vec!["breast_cancer", "metadata", "1"]
        ]
    );

    let run = app.vaticctl(&[
        "models",
        "log",
        "breast_cancer",
        "--mode",
        "full",
        "--sample-rate",
        "0.25",
    ]);
    assert_eq!(
        run.assert_ok().table()[1],
        ["breast_cancer", "full", "0.25"]
    );

    let listed = json(&app, &["models", "list"]);
    let model = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "breast_cancer")
        .expect("breast_cancer listed");
    assert_eq!(model["log_mode"], "full");
    assert_eq!(model["log_sample_rate"], 0.25);

    // One setting alone leaves the other.
    let model = json(&app, &["models", "log", "breast_cancer", "--mode", "off"]);
    assert_eq!(
        (&model["log_mode"], &model["log_sample_rate"]),
        (&json!("off"), &json!(0.25))
    );

    app.vaticctl(&["models", "log", "nope", "--mode", "full"])
        .assert_error(&["model 'nope' not found (HTTP 404)"]);
    // Refused before anything is sent.
    let run = app.vaticctl(&["models", "log", "breast_cancer", "--sample-rate", "2"]);
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(
        run.stderr.contains("is not a number from 0 to 1"),
        "{run:#?}"
    );
    let run = app.vaticctl(&["models", "log", "breast_cancer", "--mode", "some"]);
    assert_eq!(run.code, Some(2), "{run:#?}");
}

#[test]
fn models_engine_shows_and_changes_the_engine_of_a_model() {
    let app = RegistryApp::start_with(TestDb::sqlite(), |s| {
        s.engine.onnxruntime.library = Some(vatic_testkit::onnxruntime_library());
    });
    let run = app.vaticctl(&["models", "engine", "breast_cancer"]);
    assert_eq!(
        run.assert_ok().table(),
        [vec!["model", "engine"], vec!["breast_cancer", "model_toml"]]
    );
    let run = app.vaticctl(&["models", "engine", "breast_cancer", "tract"]);
    assert_eq!(run.assert_ok().table()[1], ["breast_cancer", "tract"]);
    let model = json(&app, &["models", "describe", "breast_cancer"]);
    assert_eq!(model["engine"], "tract", "{model}");
    let run = app.vaticctl(&["models", "describe", "breast_cancer"]);
    assert!(run.assert_ok().stdout.contains("engine: tract"), "{run:#?}");

    // With auto, the version loads again on both engines and describe shows both figures.
    app.vaticctl(&["models", "engine", "breast_cancer", "auto"])
        .assert_ok();
    let mut model = Value::Null;
    for _ in 0..600 {
        model = json(&app, &["models", "describe", "breast_cancer"]);
        if model["versions"][0]["loaded"][0]["engines"]
            .as_array()
            .is_some_and(|e| e.len() == 2)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let loaded = &model["versions"][0]["loaded"][0];
    assert_eq!(loaded["worker"], "standalone", "{model}");
    assert_eq!(loaded["state"], "READY", "{model}");
    let figures = loaded["engines"].as_array().expect("both figures");
    let chosen: Vec<&Value> = figures.iter().filter(|f| f["chosen"] == true).collect();
    assert_eq!(chosen.len(), 1, "{model}");
    assert_eq!(chosen[0]["engine"], loaded["engine"], "{model}");
    for f in figures {
        assert!(f["samples_per_second"].as_f64().unwrap() > 0.0, "{model}");
    }
    let run = app.vaticctl(&["models", "describe", "breast_cancer"]);
    let text = &run.assert_ok().stdout;
    let row = text
        .lines()
        .find(|l| l.contains("standalone"))
        .unwrap_or_else(|| panic!("no worker row: {text}"));
    let engine = loaded["engine"].as_str().unwrap();
    assert!(row.contains("ready") && row.contains(engine), "{text}");
    assert!(
        row.contains("tract ") && row.contains("onnxruntime ") && row.contains(", chosen"),
        "{text}"
    );

    app.vaticctl(&["models", "engine", "nope", "auto"])
        .assert_error(&["model 'nope' not found (HTTP 404)"]);
    // Refused before anything is sent.
    let run = app.vaticctl(&["models", "engine", "breast_cancer", "tensorrt"]);
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(run.stderr.contains("onnxruntime"), "{run:#?}");
}

#[test]
fn retiring_or_describing_what_is_not_there_reports_the_servers_message() {
    let app = RegistryApp::start(TestDb::sqlite());
    app.vaticctl(&["models", "retire", "breast_cancer", "9"])
        .assert_error(&["model 'breast_cancer' has no version 9 (HTTP 404)"]);
    app.vaticctl(&["models", "describe", "breast_cancer", "--version", "9"])
        .assert_error(&["model 'breast_cancer' has no version 9 (HTTP 404)"]);
    app.vaticctl(&["models", "push", "bad name", CNN])
        .assert_error(&["invalid model name 'bad name'", "(HTTP 400)"]);
}

#[test]
fn an_answer_before_the_upload_ends_is_still_reported() {
    // The server refuses these without reading the whole file.
    let app = RegistryApp::start_with(TestDb::sqlite(), |s| s.max_model_bytes = 1 << 20);
    let mut file = tempfile::Builder::new().suffix(".onnx").tempfile().unwrap();
    let chunk = vec![7u8; 1 << 20];
    for _ in 0..64 {
        file.write_all(&chunk).unwrap();
    }
    file.flush().unwrap();
    let path = file.path().to_str().unwrap();
    let before = json(&app, &["models", "list"]);
    for config in [&[][..], &["--config", "Cargo.toml"]] {
        app.vaticctl(&[&["models", "push", "big", path][..], config].concat())
            .assert_error(&[
                "the model file exceeds the limit of 1048576 bytes (max_model_bytes) (HTTP 413)",
            ]);
        app.vaticctl(&[&["models", "push", "bad name", path][..], config].concat())
            .assert_error(&["invalid model name 'bad name'", "(HTTP 400)"]);
        // A taken version number is refused before the body is read, so not with 413.
        app.vaticctl(
            &[
                &["models", "push", "breast_cancer", path, "--version", "1"][..],
                config,
            ]
            .concat(),
        )
        .assert_error(&["model 'breast_cancer' already has version 1", "(HTTP 409)"]);
    }
    assert_eq!(json(&app, &["models", "list"]), before);
}

#[test]
fn a_missing_file_is_named_before_anything_is_sent() {
    // No server is needed: the file is opened first.
    let missing = "testdata/models/cnn/1/no_such.onnx";
    crate::helpers::vaticctl(
        "http://127.0.0.1:1",
        &["models", "push", "cnn", missing],
        None,
    )
    .assert_error(&[&format!("cannot open {missing}: ")]);
    crate::helpers::vaticctl(
        "http://127.0.0.1:1",
        &["models", "push", "cnn", CNN, "--config", "no_such.toml"],
        None,
    )
    .assert_error(&["cannot read no_such.toml: "]);
    assert!(Path::new(&vatic_testkit::root().join(CNN)).is_file());
}
