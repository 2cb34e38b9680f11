//! Prometheus metrics of the inference engine, one registry per engine, exported in the text
//! format on the metrics port. Labels are bounded: model and version (versions leave the label
//! set when they are unloaded), never request ids or keys.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

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

/// A registry of the process metrics (`process_cpu_seconds_total`,
/// `process_resident_memory_bytes`, ...) and `vatic_build_info`: one per metrics endpoint.
pub fn process_registry() -> Registry {
    let registry = Registry::new();
    registry
        .register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("process metrics register once per registry");
    let info = IntGaugeVec::new(
        Opts::new(
            "vatic_build_info",
            "Always 1; its labels name the build: version and the ONNX engine.",
        ),
        &["version", "engine"],
    )
    .expect("valid");
    info.with_label_values(&[env!("CARGO_PKG_VERSION"), "tract-onnx"])
        .set(1);
    register(&registry, &info);
    let dropped = IntCounter::new(
        "vatic_log_lines_dropped_total",
        "Log lines dropped because the log writer's queue was full (stdout or the log folder too slow).",
    )
    .expect("valid");
    registry
        .register(Box::new(LogLinesDropped(dropped)))
        .expect("metric names are unique");
    registry
}

/// `vatic_log_lines_dropped_total`, read from the log writers at scrape time.
struct LogLinesDropped(IntCounter);

impl prometheus::core::Collector for LogLinesDropped {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let seen = self.0.get();
        let now = crate::telemetry::dropped_lines();
        if now > seen {
            self.0.inc_by(now - seen);
        }
        self.0.collect()
    }
}

/// Serves `GET /metrics` on `listen` (its own port, kept off the public network), answering
/// with what `render` returns. Returns the bound address and a handle to stop it.
pub fn serve(
    listen: &str,
    render: impl Fn() -> String + Clone + Send + 'static,
) -> anyhow::Result<(std::net::SocketAddr, actix_web::dev::ServerHandle)> {
    use actix_web::{web, App, HttpResponse, HttpServer};
    let listener = std::net::TcpListener::bind(listen)
        .map_err(|e| anyhow::anyhow!("metrics_listen {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    let server = HttpServer::new(move || {
        let render = render.clone();
        App::new().route(
            "/metrics",
            web::get().to(move || {
                let body = render();
                async move {
                    HttpResponse::Ok()
                        .content_type(prometheus::TEXT_FORMAT)
                        .body(body)
                }
            }),
        )
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)?
    .run();
    let handle = server.handle();
    tokio::spawn(server);
    tracing::info!(addr = %addr, "metrics listening");
    Ok((addr, handle))
}

/// Renders every metric of `registries` in Prometheus' text format.
pub fn render(registries: &[&Registry]) -> String {
    let families: Vec<_> = registries.iter().flat_map(|r| r.gather()).collect();
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&families, &mut out)
        .expect("text encoding of gathered metrics");
    String::from_utf8(out).expect("the text format is UTF-8")
}

/// The status code class label: `2xx`, `4xx`, `5xx`.
pub fn code_class(status: u16) -> &'static str {
    match status {
        200..=299 => "2xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
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

/// The database connection pool: connections in use and idle, and the most allowed.
#[derive(Clone)]
pub struct PoolMetrics {
    connections: IntGaugeVec,
    max: IntGauge,
}

impl PoolMetrics {
    /// The families, registered in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<PoolMetrics> {
        let connections = IntGaugeVec::new(
            Opts::new(
                "vatic_db_pool_connections",
                "Database connections of this process, by state (in_use, idle).",
            ),
            &["state"],
        )?;
        let max = IntGauge::new(
            "vatic_db_pool_max_connections",
            "The most database connections this process opens (database.max_connections).",
        )?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(max.clone()))?;
        Ok(PoolMetrics { connections, max })
    }

    /// Reads the pool of `store` into the gauges, before a scrape.
    pub fn refresh(&self, store: &vatic_store::Store) {
        let (open, idle, max) = store.pool_usage();
        self.connections
            .with_label_values(&["in_use"])
            .set(i64::from(open.saturating_sub(idle)));
        self.connections
            .with_label_values(&["idle"])
            .set(i64::from(idle));
        self.max.set(i64::from(max));
    }
}

/// Counts a request in flight for as long as it lives, so a request dropped midway (its client
/// went away) leaves the gauge too.
pub struct InFlight(IntGauge);

impl InFlight {
    /// Adds one to `gauge` until the guard is dropped.
    pub fn enter(gauge: &IntGauge) -> InFlight {
        gauge.inc();
        InFlight(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
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
