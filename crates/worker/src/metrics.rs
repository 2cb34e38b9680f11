//! Prometheus metrics of the inference engine, one registry per engine, exported with the
//! process's on the metrics port. Labels are bounded: model and version (versions leave the label
//! set when they are unloaded), never request ids or keys.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use vatic_server::metrics::code_class;

/// Buckets for request phases, in seconds: 100 µs to 10 s.
const SECONDS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Buckets for model loads, in seconds: 10 ms to 10 min.
const LOAD_SECONDS: [f64; 10] = [0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 120.0, 600.0];

/// Buckets for rows per model execution.
const BATCH_ROWS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// The engine's metric families.
#[derive(Clone)]
pub struct EngineMetrics {
    registry: Registry,
    requests: IntCounterVec,
    queue_wait: HistogramVec,
    compute: HistogramVec,
    batch_rows: HistogramVec,
    queue_depth: IntGaugeVec,
    queue_capacity: IntGaugeVec,
    ready: IntGaugeVec,
    load: HistogramVec,
    in_flight: IntGauge,
}

fn histogram(name: &str, help: &str, buckets: &[f64], labels: &[&str]) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .expect("valid histogram")
}

fn register<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: &C) {
    registry
        .register(Box::new(c.clone()))
        .expect("metric names are unique");
}

impl Default for EngineMetrics {
    fn default() -> Self {
        let registry = Registry::new();
        let mv = ["model", "version"];
        let requests = IntCounterVec::new(
            Opts::new(
                "vatic_worker_requests_total",
                "Inference requests answered by this worker, by model, version and status code class.",
            ),
            &["model", "version", "code"],
        )
        .expect("valid");
        let queue_wait = histogram(
            "vatic_queue_wait_seconds",
            "Time requests waited in a model version's queue before their batch ran.",
            &SECONDS,
            &mv,
        );
        let compute = histogram(
            "vatic_compute_seconds",
            "Time one model execution took: building inputs, running the model, splitting outputs.",
            &SECONDS,
            &mv,
        );
        let batch_rows = histogram(
            "vatic_batch_size",
            "Rows per model execution.",
            &BATCH_ROWS,
            &mv,
        );
        let load = histogram(
            "vatic_model_load_seconds",
            "Time a model version took to load, optimise and warm up.",
            &LOAD_SECONDS,
            &mv,
        );
        let queue_depth = IntGaugeVec::new(
            Opts::new(
                "vatic_queue_depth",
                "Requests waiting in a model version's queue.",
            ),
            &mv,
        )
        .expect("valid");
        let queue_capacity = IntGaugeVec::new(
            Opts::new(
                "vatic_queue_capacity",
                "Requests a model version's queue holds before refusing more (max_queue_size).",
            ),
            &mv,
        )
        .expect("valid");
        let ready = IntGaugeVec::new(
            Opts::new(
                "vatic_model_ready",
                "1 when a model version is loaded and serving, 0 while it loads or after it failed.",
            ),
            &mv,
        )
        .expect("valid");
        let in_flight = IntGauge::new(
            "vatic_worker_in_flight_requests",
            "Inference requests this worker is handling now.",
        )
        .expect("valid");
        register(&registry, &requests);
        for c in [&queue_wait, &compute, &batch_rows, &load] {
            register(&registry, c);
        }
        for c in [&queue_depth, &queue_capacity, &ready] {
            register(&registry, c);
        }
        register(&registry, &in_flight);
        EngineMetrics {
            registry,
            requests,
            queue_wait,
            compute,
            batch_rows,
            queue_depth,
            queue_capacity,
            ready,
            load,
            in_flight,
        }
    }
}

impl EngineMetrics {
    /// The registry these families live in (the worker adds its own and renders it).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The handles of one version.
    pub fn version(&self, model: &str, version: &str) -> VersionMetrics {
        let labels = [model, version];
        let requests = |code| self.requests.with_label_values(&[model, version, code]);
        VersionMetrics {
            queue_wait: self.queue_wait.with_label_values(&labels),
            compute: self.compute.with_label_values(&labels),
            batch_rows: self.batch_rows.with_label_values(&labels),
            answered_ok: requests("2xx"),
            answered_client_error: requests("4xx"),
            answered_server_error: requests("5xx"),
        }
    }

    /// The gauge of requests in flight.
    pub fn in_flight(&self) -> &IntGauge {
        &self.in_flight
    }

    /// A version finished loading after `seconds`; `ok` when it serves.
    pub fn loaded(&self, model: &str, version: &str, seconds: f64, ok: bool) {
        self.load
            .with_label_values(&[model, version])
            .observe(seconds);
        self.ready
            .with_label_values(&[model, version])
            .set(i64::from(ok));
    }

    /// A version started loading.
    pub fn loading(&self, model: &str, version: &str) {
        self.ready.with_label_values(&[model, version]).set(0);
    }

    /// Sets the queue depth of a version (read when metrics are rendered).
    pub fn set_queue_depth(&self, model: &str, version: &str, depth: usize, capacity: usize) {
        self.queue_depth
            .with_label_values(&[model, version])
            .set(depth as i64);
        self.queue_capacity
            .with_label_values(&[model, version])
            .set(capacity as i64);
    }

    /// Drops every series of a version that is no longer served.
    pub fn forget(&self, model: &str, version: &str) {
        let labels = [model, version];
        let _ = self.queue_wait.remove_label_values(&labels);
        let _ = self.compute.remove_label_values(&labels);
        let _ = self.batch_rows.remove_label_values(&labels);
        let _ = self.queue_depth.remove_label_values(&labels);
        let _ = self.queue_capacity.remove_label_values(&labels);
        let _ = self.ready.remove_label_values(&labels);
        let _ = self.load.remove_label_values(&labels);
        for code in ["2xx", "4xx", "5xx"] {
            let _ = self.requests.remove_label_values(&[model, version, code]);
        }
    }
}

/// The histograms of one model version, updated by its runner threads.
#[derive(Clone)]
pub struct VersionMetrics {
    queue_wait: prometheus::Histogram,
    compute: prometheus::Histogram,
    batch_rows: prometheus::Histogram,
    // Bound once: a request that ends after its version was unloaded counts into a series
    // that is no longer exported, instead of bringing the series back.
    answered_ok: prometheus::IntCounter,
    answered_client_error: prometheus::IntCounter,
    answered_server_error: prometheus::IntCounter,
}

impl VersionMetrics {
    /// A request was answered with `status`.
    pub fn answered(&self, status: u16) {
        match code_class(status) {
            "2xx" => &self.answered_ok,
            "4xx" => &self.answered_client_error,
            _ => &self.answered_server_error,
        }
        .inc();
    }

    /// A request left the queue after `seconds`.
    pub fn dequeued(&self, seconds: f64) {
        self.queue_wait.observe(seconds);
    }

    /// One execution of `rows` rows took `seconds`.
    pub fn executed(&self, rows: u64, seconds: f64) {
        self.compute.observe(seconds);
        self.batch_rows.observe(rows as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vatic_server::metrics::render;

    #[test]
    fn an_unloaded_version_leaves_the_metrics_even_when_a_late_request_ends() {
        let metrics = EngineMetrics::default();
        let version = metrics.version("iris", "1");
        version.answered(200);
        version.answered(400);
        version.answered(503);
        let text = render(&[metrics.registry()]);
        for code in ["2xx", "4xx", "5xx"] {
            assert!(
                text.contains(&format!(
                    "vatic_worker_requests_total{{code=\"{code}\",model=\"iris\",version=\"1\"}} 1"
                )),
                "{text}"
            );
        }
        metrics.forget("iris", "1");
        // A request that was in flight when the version was unloaded.
        version.answered(200);
        version.dequeued(0.001);
        let text = render(&[metrics.registry()]);
        assert!(!text.contains("iris"), "{text}");
    }
}
