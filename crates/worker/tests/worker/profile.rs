//! The model profiler on real models run by tract: every cell of the grid is measured, the
//! recommendation is the smallest good-enough cell, and `vatic-worker profile` prints it.

use crate::helpers::TestWorker;
use std::process::Command;
use std::time::Duration;
use vatic_testkit::RepoModel;
use vatic_worker::config::BatchingConfig;
use vatic_worker::onnx::OnnxModel;
use vatic_worker::profile::{profile, Grid};

fn grid(batch_sizes: &[usize], instances: &[usize]) -> Grid {
    Grid {
        batch_sizes: batch_sizes.to_vec(),
        instances: instances.to_vec(),
        duration: Duration::from_millis(30),
        min_runs: 3,
        one_instance_us: 0,
    }
}

fn model(name: &str) -> OnnxModel {
    OnnxModel::load(&vatic_testkit::model_dir(name).join("1/model.onnx"), None).unwrap()
}

#[test]
fn every_cell_is_measured_and_the_recommendation_is_good_enough() {
    let p = profile(&model("breast_cancer"), &grid(&[1, 4, 16], &[1, 2])).unwrap();
    assert!(p.batched);
    let cells: Vec<(usize, usize)> = p
        .cells
        .iter()
        .map(|c| (c.instances, c.batch_size))
        .collect();
    assert_eq!(cells, [(1, 1), (1, 4), (1, 16), (2, 1), (2, 4), (2, 16)]);
    for c in &p.cells {
        assert!(c.runs >= 3, "{c:?}");
        assert!(c.samples_per_second > 0.0, "{c:?}");
        assert!(c.run_p50_us > 0.0 && c.run_p50_us <= c.run_p99_us, "{c:?}");
    }
    let best = p
        .cells
        .iter()
        .map(|c| c.samples_per_second)
        .fold(0.0, f64::max);
    let r = &p.recommended;
    assert_eq!(r.best_samples_per_second, best);
    assert!(r.samples_per_second >= 0.95 * best, "{r:?}");
    // No smaller batch (or as small with fewer instances) is as good.
    assert!(!p.cells.iter().any(|c| c.samples_per_second >= 0.95 * best
        && (c.batch_size, c.instances) < (r.max_batch_size, r.instances)));

    let applied = r.apply(&BatchingConfig {
        preferred_batch_sizes: vec![2, 64],
        ..BatchingConfig::default()
    });
    assert_eq!(applied.max_batch_size, r.max_batch_size);
    assert_eq!(applied.instances, r.instances);
    assert!(applied
        .preferred_batch_sizes
        .iter()
        .all(|p| *p <= r.max_batch_size));
    applied.validate("profile").unwrap();
}

#[test]
fn runs_within_the_one_instance_bound_are_recommended_one_instance() {
    // Every run of the demo model is far below a bound of 10 s, even unoptimised.
    let g = Grid {
        one_instance_us: 10_000_000,
        ..grid(&[1, 4, 16], &[1, 2])
    };
    let p = profile(&model("breast_cancer"), &g).unwrap();
    let r = &p.recommended;
    assert_eq!(r.instances, 1, "{r:?}");
    let cell = p
        .cells
        .iter()
        .find(|c| c.instances == 1 && c.batch_size == r.max_batch_size)
        .unwrap();
    assert_eq!(r.samples_per_second, cell.samples_per_second);
}

#[test]
fn a_model_without_a_batch_dimension_runs_its_own_shape_only() {
    let p = profile(&model("fixed_batch"), &grid(&[1, 8], &[1, 2])).unwrap();
    assert!(!p.batched);
    assert_eq!(p.cells.len(), 2, "{:?}", p.cells);
    assert!(p.cells.iter().all(|c| c.batch_size == 1));
    assert_eq!(p.recommended.max_batch_size, 1);
}

fn worker(args: &[&str]) -> std::process::Output {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("vatic-worker");
    Command::new(bin)
        .current_dir(vatic_testkit::root())
        .arg("profile")
        .args(args)
        .output()
        .expect("running vatic-worker profile")
}

#[test]
fn the_profile_command_prints_cells_and_the_batching_section() {
    let model = "models/breast_cancer/1/model.onnx";
    let out = worker(&[
        model,
        "--batch-sizes",
        "1,8",
        "--instances",
        "1",
        "--duration",
        "50ms",
        "--json",
    ]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["cells"].as_array().unwrap().len(), 2, "{v}");
    assert!(v["recommended"]["max_batch_size"].as_u64().is_some(), "{v}");

    let out = worker(&[
        model,
        "--max-batch",
        "4",
        "--instances",
        "1",
        "--duration",
        "50ms",
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text.lines()
            .filter(|l| l.trim_start().starts_with("1 "))
            .count(),
        3,
        "{text}"
    );
    assert!(text.contains("[batching]\nmax_batch_size = "), "{text}");

    let out = worker(&["testdata/models/nope.onnx"]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("nope.onnx"), "{err}");
    let out = worker(&[model, "--instances", "0"]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("must be at least 1"), "{err}");
}

#[test]
fn the_profile_command_runs_raw_onnxruntime_and_names_a_missing_library() {
    let model = "testdata/models/cnn/1/model.onnx";
    let library = vatic_testkit::onnxruntime_library();
    let grid = [
        "--batch-sizes",
        "1,2",
        "--instances",
        "1,2",
        "--duration",
        "20ms",
    ];
    let mut args = vec![model, "--engine", "onnxruntime", "--onnxruntime-library"];
    args.push(library.to_str().unwrap());
    args.extend(grid);
    let out = worker(&args);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("raw onnxruntime engine"), "{text}");
    let cells = text
        .lines()
        .filter(|l| l.trim_start().starts_with(['1', '2']))
        .count();
    assert_eq!(cells, 4, "two batch sizes on one and two instances: {text}");

    let mut args = vec![model, "--engine", "onnxruntime", "--onnxruntime-library"];
    args.push("/nonexistent/libonnxruntime.so");
    args.extend(grid);
    let out = worker(&args);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("/nonexistent/libonnxruntime.so") && err.contains("onnxruntime.library"),
        "{err}"
    );
}

#[tokio::test]
async fn versions_without_batching_of_their_own_are_profiled_at_load_within_the_bounds() {
    let repo = vatic_testkit::repo(&[
        RepoModel {
            name: "measured",
            source: "breast_cancer",
            model_toml: None,
        },
        RepoModel {
            name: "configured",
            source: "breast_cancer",
            model_toml: Some("[batching]\nmax_batch_size = 4\n"),
        },
    ]);
    let dir = repo.path().to_path_buf();
    let worker = TestWorker::start_with(
        dir,
        Some(repo),
        |s| {
            s.engine.profile.at_load = true;
            s.engine.batching.max_batch_size = 8;
            s.engine.batching.instances = 2;
        },
        true,
    )
    .await;
    let (status, measured) = worker.get("/v2/models/measured/config").await;
    assert_eq!(status, 200, "{measured}");
    let batch = measured["max_batch_size"].as_u64().unwrap();
    assert!([1, 2, 4, 8].contains(&batch), "{measured}");
    let instances = measured["instance_group"][0]["count"].as_u64().unwrap();
    assert!((1..=2).contains(&instances), "{measured}");

    // A [batching] of its own is kept as written, over the worker's defaults.
    let (_, configured) = worker.get("/v2/models/configured/config").await;
    assert_eq!(configured["max_batch_size"], 4, "{configured}");
    assert_eq!(configured["instance_group"][0]["count"], 2, "{configured}");

    // The profiled version serves, with its answers unchanged.
    let reference = vatic_testkit::demo_reference();
    let (status, body) = worker
        .post_json("/v2/models/measured/infer", &reference.v2_request(0..3))
        .await;
    assert_eq!(status, 200, "{body}");
    reference.check_response(&body, 0..3);
}
