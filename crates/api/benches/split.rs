//! The traffic split's decision in-process, without HTTP: what an api replica does for each
//! request that names no version while a canary runs (the model's view from the catalog, the
//! bucket, the canary's readiness in the engine, the version to ask for) and, once it is
//! answered, counting it in the rollout figures; against the same request with no rollout.
//! `scripts/bench.sh` runs it; the end-to-end figures beside it include everything else a
//! request does.

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use std::sync::Arc;
use vatic_api::catalog::Catalog;
use vatic_api::rollout::stats::Tally;
use vatic_api::rollout::{Selector, Side};
use vatic_schema::admin::{LogMode, ModelInfo, ModelVersionInfo, Signature, Traffic, VersionState};
use vatic_worker::engine::{Engine, EngineSettings};

const MODEL: &str = "breast_cancer";

/// An engine serving the demo model as versions 1 and 2.
fn engine() -> (Arc<Engine>, tempfile::TempDir) {
    let repo = tempfile::tempdir().unwrap();
    let file = vatic_testkit::root().join("models/breast_cancer/1/model.onnx");
    for v in ["1", "2"] {
        std::fs::create_dir_all(repo.path().join(MODEL).join(v)).unwrap();
        std::fs::copy(&file, repo.path().join(MODEL).join(v).join("model.onnx")).unwrap();
    }
    let mut settings = EngineSettings {
        models_dir: repo.path().to_path_buf(),
        ..Default::default()
    };
    settings.batching.instances = 1;
    settings.profile.at_load = false;
    let engine = Arc::new(Engine::new(&settings));
    let specs = vatic_worker::folder::scan(&settings.models_dir).unwrap();
    if let Some(loader) = engine.apply(specs) {
        loader.join().unwrap();
    }
    assert!(engine.version_ready(MODEL, 1) && engine.version_ready(MODEL, 2));
    (engine, repo)
}

/// The registry's view of the model: version 1 stable, version 2 the canary at `weight`
/// percent (no canary at 0).
fn catalog(weight: u32) -> Catalog {
    let version = |n: u64, state| ModelVersionInfo {
        model: MODEL.into(),
        version: n,
        state,
        sha256: String::new(),
        size: 0,
        signature: Signature {
            inputs: Vec::new(),
            outputs: Vec::new(),
            batched: true,
        },
        config: String::new(),
        created_by: String::new(),
        created_at: String::new(),
        updated_by: String::new(),
        updated_at: String::new(),
        loaded: Vec::new(),
    };
    let second = if weight > 0 {
        VersionState::Canary
    } else {
        VersionState::Staged
    };
    let catalog = Catalog::default();
    catalog.replace(vec![ModelInfo {
        name: MODEL.into(),
        created_at: String::new(),
        log_mode: LogMode::Off,
        log_sample_rate: 1.0,
        cache: Default::default(),
        versions: vec![version(1, VersionState::Stable), version(2, second)],
        labels: Default::default(),
        traffic: Traffic {
            canary_weight: weight,
            ..Traffic::default()
        },
        revision: 0,
        engine: Default::default(),
    }]);
    catalog
}

fn split(c: &mut Criterion) {
    let (engine, _repo) = engine();
    let tally = Tally::default();
    let mut g = c.benchmark_group("split");
    for (name, weight, key) in [
        ("no rollout", 0, None),
        ("canary 50%", 50, None),
        ("canary 50%, route key", 50, Some(&b"customer-4711"[..])),
    ] {
        let catalog = catalog(weight);
        g.bench_function(name, |b| {
            b.iter(|| {
                let resolved = catalog
                    .resolve(
                        MODEL,
                        Selector::Split {
                            key: black_box(key),
                        },
                        |v| engine.version_ready(MODEL, v),
                    )
                    .unwrap()
                    .unwrap();
                // What the request carries on: the version to ask for, as text.
                let version = resolved.version.to_string();
                if resolved.tracked {
                    let side = match resolved.side {
                        Side::Canary => "canary",
                        _ => "stable",
                    };
                    tally.answered(MODEL, resolved.version, side, 200, 0.05);
                }
                black_box(version)
            });
        });
    }
    g.finish();
}

criterion_group!(benches, split);
criterion_main!(benches);
