//! The api's Prometheus metrics: inference requests by model, version, protocol and status
//! class, their end-to-end duration, and requests in flight. Served on the api's own metrics
//! port with the process metrics, `vatic_build_info` and, in standalone mode, the engine's.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};
use std::time::Duration;
use vatic_server::metrics::{code_class, InFlight};

/// The label of requests for models this process does not know: client-chosen names must not
/// grow the label set.
pub const UNKNOWN_MODEL: &str = "(unknown)";

/// Buckets for end-to-end request duration, in seconds: 250 µs to 30 s.
const SECONDS: [f64; 16] = [
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0,
];

/// Which API an inference request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// KServe V2 (JSON or binary).
    V2,
    /// TF-Serving's REST predict.
    TfServing,
}

impl Protocol {
    fn as_str(self) -> &'static str {
        match self {
            Protocol::V2 => "v2",
            Protocol::TfServing => "tfserving",
        }
    }
}

/// The api's metric families, in a registry of their own.
#[derive(Clone)]
pub struct ApiMetrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    in_flight: IntGauge,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "vatic_requests_total",
                "Inference requests answered, by model, version, protocol and status code class.",
            ),
            &["model", "version", "protocol", "code"],
        )
        .expect("valid");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "vatic_request_duration_seconds",
                "Inference request duration in the api, from arrival to the answer.",
            )
            .buckets(SECONDS.to_vec()),
            &["model", "version", "protocol"],
        )
        .expect("valid");
        let in_flight = IntGauge::new(
            "vatic_in_flight_requests",
            "Inference requests the api is handling now.",
        )
        .expect("valid");
        registry
            .register(Box::new(requests.clone()))
            .expect("unique");
        registry
            .register(Box::new(duration.clone()))
            .expect("unique");
        registry
            .register(Box::new(in_flight.clone()))
            .expect("unique");
        ApiMetrics {
            registry,
            requests,
            duration,
            in_flight,
        }
    }
}

impl ApiMetrics {
    /// The registry, for other parts of the api to add their families to.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Counts a request in flight until the guard is dropped.
    pub fn enter(&self) -> InFlight {
        InFlight::enter(&self.in_flight)
    }

    /// One inference request was answered with `status` after `took`; `version` is the version
    /// that answered (empty when none did).
    pub fn answered(
        &self,
        protocol: Protocol,
        model: &str,
        version: &str,
        status: u16,
        took: Duration,
    ) {
        let protocol = protocol.as_str();
        self.requests
            .with_label_values(&[model, version, protocol, code_class(status)])
            .inc();
        self.duration
            .with_label_values(&[model, version, protocol])
            .observe(took.as_secs_f64());
    }
}
