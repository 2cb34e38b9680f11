//! The batcher's path in-process, without HTTP: a request checked against the signature,
//! queued, run by tract (alone, or batched with others that wait beside it) and split back into
//! its own outputs, on the demo model. Compare with `vatic-worker profile`, which times the
//! bare tract run.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::sync::Arc;
use vatic_schema::{DataType, InferRequest, Tensor, TensorData};
use vatic_worker::engine::{Engine, EngineSettings};

fn request(rows: usize) -> InferRequest {
    let values: Vec<f32> = (0..rows * 30).map(|i| (i % 97) as f32 * 0.731).collect();
    InferRequest {
        inputs: vec![Tensor::new(
            "input",
            DataType::Fp32,
            vec![rows as u64, 30],
            TensorData::from_values(&values),
        )
        .unwrap()],
        ..Default::default()
    }
}

fn engine(instances: usize) -> Arc<Engine> {
    let mut settings = EngineSettings {
        models_dir: vatic_testkit::root().join("models"),
        ..Default::default()
    };
    settings.batching.instances = instances;
    settings.profile.at_load = false;
    let engine = Arc::new(Engine::new(&settings));
    let specs = vatic_worker::folder::scan(&settings.models_dir).unwrap();
    if let Some(loader) = engine.apply(specs) {
        loader.join().unwrap();
    }
    assert!(engine.is_ready());
    engine
}

fn batcher(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let engine = engine(1);
    let mut g = c.benchmark_group("batcher");
    for rows in [1usize, 32] {
        let req = request(rows);
        g.throughput(Throughput::Elements(rows as u64));
        g.bench_with_input(BenchmarkId::new("one_request", rows), &req, |b, req| {
            b.iter(|| {
                runtime
                    .block_on(engine.infer("breast_cancer", None, req))
                    .unwrap()
            });
        });
    }
    // 16 one-row requests at once: they queue while the runner is busy and share runs.
    let req = Arc::new(request(1));
    g.throughput(Throughput::Elements(16));
    g.bench_function("sixteen_concurrent_requests", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let tasks: Vec<_> = (0..16)
                    .map(|_| {
                        let engine = engine.clone();
                        let req = req.clone();
                        tokio::spawn(async move { engine.infer("breast_cancer", None, &req).await })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap().unwrap();
                }
            });
        });
    });
    g.finish();
}

criterion_group!(benches, batcher);
criterion_main!(benches);
