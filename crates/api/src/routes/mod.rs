//! HTTP routes, one module per resource.

pub mod admin;
pub mod health;
pub mod tfserving;
pub mod v2;

use crate::backend::Backend;
use actix_web::{HttpMessage, HttpRequest, HttpResponse};
use std::sync::atomic::{AtomicBool, Ordering};
use vatic_worker::http::RequestId;

/// Longest wait for this process to apply a registry change it made.
const REGISTRY_CHANGE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// What every handler shares.
pub struct AppState {
    /// Where inference runs.
    pub backend: Backend,
    /// False once shutdown has begun.
    pub accepting: AtomicBool,
    /// Largest body accepted.
    pub max_body_bytes: usize,
    /// The registry, when a database is configured.
    pub store: Option<vatic_store::Store>,
    /// Uploads of model files.
    pub uploads: admin::Uploads,
    /// Batching defaults a pushed model is checked with.
    pub batching: vatic_worker::BatchingConfig,
    /// The prediction log, when a database is configured.
    pub prediction_log: Option<crate::prediction_log::PredictionLog>,
    /// This replica's view of the registry.
    pub catalog: std::sync::Arc<crate::catalog::Catalog>,
    /// The loops that follow the registry in this process (the reconcile loop in standalone
    /// mode, the catalog refresh), run after a change made through it.
    pub registry_passes: Vec<vatic_worker::passes::Passes>,
    /// Request metrics.
    pub metrics: crate::metrics::ApiMetrics,
}

impl AppState {
    /// Ready: not shutting down and the backend can serve.
    pub fn is_ready(&self) -> bool {
        self.accepting.load(Ordering::SeqCst) && self.backend.is_ready()
    }

    /// Brings this process up to date after a registry change it made: once this returns, a
    /// pushed version is known here (loading or ready) and a retired one is gone, so the
    /// caller's next request sees the change. Gives up waiting after a few seconds (the
    /// loops still apply the change when they can).
    pub async fn registry_changed(&self) {
        for passes in &self.registry_passes {
            if !passes.run(REGISTRY_CHANGE_WAIT).await {
                tracing::warn!("the registry change is not applied in this process yet; it will be on the next pass");
            }
        }
    }
}

impl AppState {
    /// Records one answered inference request in the metrics, from its handler's result: the
    /// answer and the version that gave it, or the error. `model` is labelled only when this
    /// process knows it.
    pub fn record_inference(
        &self,
        protocol: crate::metrics::Protocol,
        model: &str,
        result: &Result<(HttpResponse, Option<String>), vatic_worker::http::HttpError>,
        arrived: std::time::Instant,
    ) {
        use actix_web::ResponseError;
        let (status, version) = match result {
            Ok((r, version)) => (r.status().as_u16(), version.as_deref()),
            Err(e) => (e.status_code().as_u16(), None),
        };
        let known = status != 404 && self.backend.knows(model);
        let model = if known {
            model
        } else {
            crate::metrics::UNKNOWN_MODEL
        };
        self.metrics.answered(
            protocol,
            model,
            version.unwrap_or_default(),
            status,
            arrived.elapsed(),
        );
    }
}

/// Shared state as handlers receive it.
pub type State = actix_web::web::Data<AppState>;

/// One answered inference request, as the prediction log takes it.
pub struct Answered<'a> {
    /// The model asked for.
    pub model: &'a str,
    /// The version asked for, if the path named one.
    pub version: Option<&'a str>,
    /// The request id the middleware assigned.
    pub request_id: Option<&'a str>,
    /// When the request arrived, by the clock and for its latency.
    pub arrived: (chrono::DateTime<chrono::Utc>, std::time::Instant),
    /// The request as decoded.
    pub request: &'a vatic_schema::InferRequest,
    /// The request's body when the client sent it as V2 JSON (no binary part): logged as it
    /// came instead of encoded again.
    pub request_json: Option<&'a [u8]>,
    /// The answer, or the error that took its place.
    pub answer: Result<&'a vatic_schema::InferResponse, &'a vatic_worker::http::HttpError>,
    /// The response's body when it is V2 JSON with every output inline, as the client gets
    /// it: logged as it is instead of encoded again.
    pub response_json: Option<&'a [u8]>,
}

/// Hands one answered inference request to the prediction log, per the model's log mode and
/// sample rate. Never waits for the database. In `full` mode the payloads are V2 JSON: the
/// bodies the client sent and got when they are that already, else encoded from the request
/// and the answer (a binary or TF-Serving client).
pub fn log_prediction(s: &AppState, a: Answered<'_>) {
    use actix_web::ResponseError;
    use vatic_schema::admin::LogMode;
    let Some(log) = &s.prediction_log else { return };
    let (mode, rate) = s.catalog.log_settings(a.model);
    if mode == LogMode::Off {
        return;
    }
    if rate < 1.0 && rand::random::<f64>() >= rate {
        return;
    }
    let full = mode == LogMode::Full;
    // Time-ordered, as the log stores its records.
    let id = uuid::Uuid::now_v7();
    // A payload: the body as the client sent or got it when that is V2 JSON, else encoded.
    let payload = |as_sent: Option<&[u8]>, encode: &dyn Fn() -> String| -> Option<String> {
        if !full {
            return None;
        }
        let as_sent = as_sent.and_then(|body| std::str::from_utf8(body).ok());
        Some(as_sent.map_or_else(encode, str::to_string))
    };
    let (status, version, response) = match a.answer {
        Ok(r) => (
            200,
            r.model_version.clone().or(a.version.map(str::to_string)),
            payload(a.response_json, &|| {
                vatic_schema::v2::response_json(r, false)
            }),
        ),
        Err(e) => (
            e.status_code().as_u16(),
            a.version.map(str::to_string),
            None,
        ),
    };
    let request = payload(a.request_json, &|| {
        vatic_schema::v2::request_json(a.request)
    });
    log.log(vatic_store::PredictionRecord {
        id,
        at: a.arrived.0,
        request_id: a.request_id.unwrap_or_default().to_string(),
        model: a.model.to_string(),
        version: version.unwrap_or_default(),
        api_key: None,
        status,
        latency_us: a.arrived.1.elapsed().as_micros() as u64,
        request,
        response,
    });
}

/// The request id the middleware assigned.
pub fn request_id(req: &HttpRequest) -> Option<String> {
    req.extensions().get::<RequestId>().map(|r| r.0.clone())
}
