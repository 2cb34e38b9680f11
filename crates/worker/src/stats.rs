//! Counters of one model version, read by Triton's statistics extension.

use crate::metrics::VersionMetrics;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use vatic_schema::{BatchStats, InferenceStats, ModelStats, StatDuration};

#[derive(Default)]
struct Counter {
    count: AtomicU64,
    ns: AtomicU64,
}

impl Counter {
    fn add(&self, n: u64, d: Duration) {
        self.count.fetch_add(n, Relaxed);
        self.ns.fetch_add(d.as_nanos() as u64, Relaxed);
    }

    fn read(&self) -> StatDuration {
        StatDuration {
            count: self.count.load(Relaxed),
            ns: self.ns.load(Relaxed),
        }
    }
}

/// Live counters; cheap to update from runner threads. The same events feed the version's
/// Prometheus histograms.
pub struct Stats {
    metrics: VersionMetrics,
    success: Counter,
    fail: Counter,
    cancel: Counter,
    queue: Counter,
    compute_input: Counter,
    compute_infer: Counter,
    compute_output: Counter,
    inference_count: AtomicU64,
    execution_count: AtomicU64,
    last_inference_ms: AtomicU64,
    batches: Mutex<BTreeMap<u64, StatDuration>>,
}

/// Timings of one model execution.
pub struct Execution {
    /// Rows in the batch.
    pub rows: u64,
    /// Building input tensors.
    pub input: Duration,
    /// Running the model.
    pub infer: Duration,
    /// Splitting outputs.
    pub output: Duration,
}

impl Stats {
    /// Counters starting at zero, recording into `metrics` too.
    pub fn new(metrics: VersionMetrics) -> Stats {
        Stats {
            metrics,
            success: Counter::default(),
            fail: Counter::default(),
            cancel: Counter::default(),
            queue: Counter::default(),
            compute_input: Counter::default(),
            compute_infer: Counter::default(),
            compute_output: Counter::default(),
            inference_count: AtomicU64::default(),
            execution_count: AtomicU64::default(),
            last_inference_ms: AtomicU64::default(),
            batches: Mutex::default(),
        }
    }

    /// A request left the queue for a batch after waiting `waited`.
    pub fn dequeued(&self, waited: Duration) {
        self.queue.add(1, waited);
        self.metrics.dequeued(waited.as_secs_f64());
    }

    /// One model execution finished.
    pub fn executed(&self, e: &Execution, requests: u64) {
        self.execution_count.fetch_add(1, Relaxed);
        self.metrics
            .executed(e.rows, (e.input + e.infer + e.output).as_secs_f64());
        self.inference_count.fetch_add(e.rows, Relaxed);
        self.compute_input.add(requests, e.input);
        self.compute_infer.add(requests, e.infer);
        self.compute_output.add(requests, e.output);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.last_inference_ms
            .store(now.as_millis() as u64, Relaxed);
        let mut batches = self.batches.lock().expect("stats lock");
        let entry = batches.entry(e.rows).or_default();
        entry.count += 1;
        entry.ns += e.infer.as_nanos() as u64;
    }

    /// A request to this version was answered with `status` (Prometheus only).
    pub fn answered(&self, status: u16) {
        self.metrics.answered(status);
    }

    /// A request was answered after `total` since it was queued.
    pub fn succeeded(&self, total: Duration) {
        self.success.add(1, total);
    }

    /// A request failed (timeout, model error).
    pub fn failed(&self, total: Duration) {
        self.fail.add(1, total);
    }

    /// A request was dropped because its client had gone away.
    pub fn cancelled(&self, total: Duration) {
        self.cancel.add(1, total);
    }

    /// The statistics in Triton's form.
    pub fn snapshot(&self, name: &str, version: &str, backend: &str) -> ModelStats {
        let batches = self.batches.lock().expect("stats lock");
        ModelStats {
            name: name.to_string(),
            version: version.to_string(),
            backend: backend.to_string(),
            last_inference: self.last_inference_ms.load(Relaxed),
            inference_count: self.inference_count.load(Relaxed),
            execution_count: self.execution_count.load(Relaxed),
            inference_stats: InferenceStats {
                success: self.success.read(),
                fail: self.fail.read(),
                cancel: self.cancel.read(),
                queue: self.queue.read(),
                compute_input: self.compute_input.read(),
                compute_infer: self.compute_infer.read(),
                compute_output: self.compute_output.read(),
            },
            batch_stats: batches
                .iter()
                .map(|(size, d)| BatchStats {
                    batch_size: *size,
                    compute_infer: *d,
                })
                .collect(),
        }
    }
}
