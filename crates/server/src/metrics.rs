//! The metrics every vatic process exports, and the endpoint that serves them: process metrics,
//! `vatic_build_info`, dropped log lines and the database connection pool, next to the
//! families of the process's own registries, in Prometheus' text format on a port of its own.

use prometheus::{Encoder, IntCounter, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use std::sync::Arc;
use vatic_store::Store;
use vatic_tls::{CertSource, ServerTls};

/// The families of the process itself, in a registry of their own.
pub struct ProcessMetrics {
    registry: Registry,
    pool: Option<(PoolMetrics, Store)>,
    certificate: Option<(IntGauge, Arc<CertSource>)>,
}

impl ProcessMetrics {
    /// Process metrics (`process_cpu_seconds_total`, `process_resident_memory_bytes`, ...),
    /// `vatic_build_info`, `vatic_log_lines_dropped_total`, with a `store` its connection pool,
    /// and with `tls` the expiry of the certificate in use: one set per metrics endpoint.
    pub fn new(
        store: Option<&Store>,
        tls: Option<&ServerTls>,
    ) -> prometheus::Result<ProcessMetrics> {
        let registry = Registry::new();
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let info = IntGaugeVec::new(
            Opts::new(
                "vatic_build_info",
                "Always 1; its labels name the build: version and the ONNX engine.",
            ),
            &["version", "engine"],
        )?;
        info.with_label_values(&[env!("CARGO_PKG_VERSION"), "tract-onnx"])
            .set(1);
        registry.register(Box::new(info))?;
        let dropped = IntCounter::new(
            "vatic_log_lines_dropped_total",
            "Log lines dropped because the log writer's queue was full (stdout or the log folder too slow).",
        )?;
        registry.register(Box::new(LogLinesDropped(dropped)))?;
        let pool = match store {
            Some(store) => Some((PoolMetrics::register(&registry)?, store.clone())),
            None => None,
        };
        let certificate = match tls {
            Some(tls) => {
                let expiry = IntGauge::new(
                    "vatic_tls_certificate_expiry_timestamp_seconds",
                    "When the TLS certificate this process serves with expires (Unix time); follows reloads.",
                )?;
                registry.register(Box::new(expiry.clone()))?;
                Some((expiry, tls.source().clone()))
            }
            None => None,
        };
        Ok(ProcessMetrics {
            registry,
            pool,
            certificate,
        })
    }

    /// Reads the values kept elsewhere into the families, before a scrape.
    pub fn refresh(&self) {
        if let Some((metrics, store)) = &self.pool {
            metrics.refresh(store);
        }
        if let Some((expiry, source)) = &self.certificate {
            expiry.set(source.validity().not_after.timestamp());
        }
    }

    /// The registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
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

/// The database connection pool: connections in use and idle, and the most allowed.
struct PoolMetrics {
    connections: IntGaugeVec,
    max: IntGauge,
}

impl PoolMetrics {
    fn register(registry: &Registry) -> prometheus::Result<PoolMetrics> {
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

    fn refresh(&self, store: &Store) {
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

/// Serves `GET /metrics` on `listen` (its own port, kept off the public network), answering
/// with what `render` returns. Returns the bound address and a handle to stop it.
pub fn serve(
    listen: &str,
    tls: Option<&vatic_tls::ServerTls>,
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
    .shutdown_timeout(1);
    let server = match tls {
        Some(tls) => server.listen_rustls_0_23(listener, tls.config())?,
        None => server.listen(listener)?,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_families_are_exported_and_a_guard_leaves_the_gauge() {
        let metrics = ProcessMetrics::new(None, None).unwrap();
        metrics.refresh();
        let text = render(&[metrics.registry()]);
        assert!(
            text.contains("vatic_build_info{engine=\"tract-onnx\""),
            "{text}"
        );
        assert!(text.contains("vatic_log_lines_dropped_total 0"), "{text}");
        assert!(
            !text.contains("vatic_db_pool"),
            "no database, no pool: {text}"
        );
        let gauge = IntGauge::new("g", "a gauge").unwrap();
        {
            let _one = InFlight::enter(&gauge);
            let _two = InFlight::enter(&gauge);
            assert_eq!(gauge.get(), 2);
        }
        assert_eq!(gauge.get(), 0);
        assert_eq!(
            [200, 404, 503, 101].map(code_class),
            ["2xx", "4xx", "5xx", "other"]
        );
    }
}
