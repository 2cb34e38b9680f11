//! `vaticctl bench` against the real api: every request it sends is counted, by it and by the
//! server alike; each protocol and the open loop work; failures are reported by status.

use crate::helpers::{vaticctl, RegistryApp, Run, TestApp, EXAMPLE_JSON};
use serde_json::{json, Value};
use vatic_testkit::TestDb;

/// A command line written as one string, split at spaces.
fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

/// Runs `vaticctl bench <line>` against the shared api.
fn bench(line: &str) -> Run {
    TestApp::get().vaticctl(&words(&format!("bench {line}")))
}

/// The levels of a `--output json` run that exited 0.
fn levels(run: &Run) -> Vec<Value> {
    run.assert_ok();
    run.json().as_array().expect("a JSON array").clone()
}

/// Checks what every successful level reports: all `n` requests succeeded, percentiles in
/// order, throughput consistent with the rows.
fn check_level(level: &Value, n: u64, rows: u64) {
    assert_eq!(level["requests"], n, "{level}");
    assert_eq!(level["succeeded"], n, "{level}");
    assert_eq!(level["errors"], json!({}), "{level}");
    assert_eq!(level["rows_per_request"], rows, "{level}");
    let l = &level["latency_us"];
    let q: Vec<f64> = ["p50", "p90", "p99", "p99_9", "max"]
        .iter()
        .map(|k| l[k].as_f64().unwrap())
        .collect();
    assert!(q[0] > 0.0 && q.windows(2).all(|w| w[0] <= w[1]), "{l}");
    let throughput = level["throughput"].as_f64().unwrap();
    assert!(throughput > 0.0, "{level}");
    let rows_per_second = level["rows_per_second"].as_f64().unwrap();
    assert!(
        (rows_per_second - throughput * rows as f64).abs() < 1e-6,
        "{level}"
    );
}

/// The demo model's success count and batch rows inferred, from the statistics extension.
fn served(app: &RegistryApp) -> (u64, u64) {
    let (status, stats) = app.get("/v2/models/breast_cancer/stats");
    assert_eq!(status, 200, "{stats}");
    let s = &stats["model_stats"][0];
    (
        s["inference_stats"]["success"]["count"].as_u64().unwrap(),
        s["inference_count"].as_u64().unwrap(),
    )
}

#[test]
fn every_request_is_counted_by_bench_and_by_the_server() {
    let app = RegistryApp::start(TestDb::sqlite());
    let before = served(&app);
    let run = app.vaticctl(&words(
        "bench breast_cancer -c 1,4 -n 150 --rows 3 --warmup 0s -o json",
    ));
    let both = levels(&run);
    assert_eq!(both.len(), 2, "{}", run.stdout);
    assert_eq!(both[0]["concurrency"], 1);
    assert_eq!(both[1]["concurrency"], 4);
    for level in &both {
        check_level(level, 150, 3);
        assert_eq!(level["protocol"], "v2-json");
        assert_eq!(level["warmup_requests"], 0);
    }
    let after = served(&app);
    assert_eq!(after.0 - before.0, 300, "successful requests on the server");
    assert_eq!(after.1 - before.1, 900, "batch rows on the server");

    // A warm-up is sent, counted apart, and not measured.
    let before = served(&app);
    let run = app.vaticctl(&words("bench breast_cancer -n 40 --warmup 200ms -o json"));
    let level = &levels(&run)[0];
    check_level(level, 40, 1);
    let warmup = level["warmup_requests"].as_u64().unwrap();
    assert!(warmup > 0, "{level}");
    assert_eq!(served(&app).0 - before.0, 40 + warmup);
}

#[test]
fn binary_tfserving_and_file_bodies_all_succeed() {
    for protocol in ["v2-binary", "tfserving"] {
        let run = bench(&format!(
            "breast_cancer --protocol {protocol} --rows 2 -n 30 --warmup 0s -o json"
        ));
        let level = &levels(&run)[0];
        check_level(level, 30, 2);
        assert_eq!(level["protocol"], protocol);
    }
    for protocol in ["v2-json", "v2-binary", "tfserving"] {
        let run = bench(&format!(
            "breast_cancer --data {EXAMPLE_JSON} --protocol {protocol} -n 20 --warmup 0s -o json"
        ));
        check_level(&levels(&run)[0], 20, 1);
    }
}

#[test]
fn the_open_loop_sends_exactly_rate_times_duration() {
    let run = bench("breast_cancer --rate 200 -d 1s --warmup 0s -o json");
    let level = &levels(&run)[0];
    assert_eq!(level["rate"], 200.0);
    assert!(level.get("concurrency").is_none(), "{level}");
    check_level(level, 200, 1);
}

#[test]
fn a_polling_load_generator_sends_and_counts_the_same() {
    for threads in [1, 2] {
        let run = bench(&format!(
            "breast_cancer -c 1,3 -n 40 --busy-poll --threads {threads} --warmup 100ms -o json"
        ));
        let both = levels(&run);
        assert_eq!(both.len(), 2, "{}", run.stdout);
        for level in &both {
            check_level(level, 40, 1);
        }
    }
    let run = bench("breast_cancer --rate 200 -d 500ms --busy-poll --warmup 0s -o json");
    check_level(&levels(&run)[0], 100, 1);
}

#[test]
fn the_table_has_a_row_per_level() {
    let run = bench("breast_cancer -c 1,2 -n 20 --warmup 0s");
    run.assert_ok();
    let table = run.table();
    assert_eq!(table.len(), 3, "{}", run.stdout);
    assert_eq!(table[0][0], "load");
    assert_eq!(table[1][0], "c=1");
    assert_eq!(table[2][0], "c=2");
    assert_eq!(table[1][3], "20");
    assert_eq!(table[1][11], "0");
}

#[test]
fn failed_requests_are_counted_by_status_and_fail_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"inputs":[{"name":"input","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}"#,
    )
    .unwrap();
    let run = bench(&format!(
        "breast_cancer --data {} -n 25 --warmup 0s -o json",
        bad.display()
    ));
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert_eq!(
        run.stderr.trim(),
        "error: 25 of 25 requests failed (see errors above)"
    );
    let level = &run.json()[0];
    assert_eq!(level["errors"], json!({"400": 25}), "{level}");
    assert_eq!(level["succeeded"], 0);
    assert!(level["latency_us"].is_null(), "{level}");

    // An answer slower than --timeout counts as a timeout: 20,000 rows take the server far
    // longer than a millisecond.
    let run = bench("breast_cancer -n 5 --rows 20000 --timeout 1ms --warmup 0s -o json");
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert_eq!(run.json()[0]["errors"], json!({"timeout": 5}));
}

#[test]
fn bad_arguments_and_unknown_models_are_refused_before_any_load() {
    bench("nope -n 1").assert_error(&["nope", "404"]);
    bench("breast_cancer -c 1,0").assert_error(&["--concurrency levels must be at least 1"]);
    bench("breast_cancer --rate 0").assert_error(&["--rate 0", "more than 0"]);
    bench("breast_cancer --rows 0").assert_error(&["--rows must be at least 1"]);
    bench("breast_cancer -n 0").assert_error(&["--requests and --duration must be more than 0"]);
    bench("breast_cancer --threads 0").assert_error(&["--threads must be at least 1"]);
    vaticctl("ftp://127.0.0.1:1", &["bench", "breast_cancer"], None)
        .assert_error(&["must be an http:// or https:// URL", "ftp://127.0.0.1:1"]);
    let run = bench("breast_cancer -d ten");
    assert_eq!(run.code, Some(2), "clap refuses a bad duration: {run:#?}");
    assert!(run.stderr.contains("--duration"), "{run:#?}");
    let run = bench("breast_cancer --repeat 150%");
    assert_eq!(run.code, Some(2), "clap refuses a bad share: {run:#?}");
    assert!(
        run.stderr
            .contains("'150%' is not a percentage from 0 to 100"),
        "{run:#?}"
    );
    bench("breast_cancer --repeat 90% -n 1").assert_error(&["needs --protocol v2-binary"]);
}

#[test]
fn unique_requests_of_a_repeat_share_are_all_answered() {
    for share in ["0%", "50"] {
        let run = bench(&format!(
            "breast_cancer --protocol v2-binary --repeat {share} -n 40 --warmup 0s -o json"
        ));
        check_level(&levels(&run)[0], 40, 1);
    }
}
