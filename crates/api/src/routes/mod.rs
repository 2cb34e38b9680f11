//! HTTP routes, one module per resource; the probes are the server runtime's.

pub mod admin;
pub mod batch;
pub mod rollout;
pub mod tfserving;
pub mod v2;

use crate::error::ApiError;
use crate::state::AppState;
use std::time::Instant;

/// Registers every api route.
pub fn configure(routes: &mut vatic_server::Routes<'_>) {
    v2::configure(routes);
    tfserving::configure(routes);
    admin::configure(routes);
    batch::configure(routes);
    rollout::configure(routes);
}

/// When a request arrived: by the clock, for the log, and by the monotonic clock, for its
/// latency.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    /// Wall-clock time.
    pub at: chrono::DateTime<chrono::Utc>,
    /// Monotonic time.
    pub instant: Instant,
}

impl Arrival {
    /// Now.
    pub fn now() -> Arrival {
        Arrival {
            at: chrono::Utc::now(),
            instant: Instant::now(),
        }
    }
}

/// One answered inference request, as the prediction log takes it.
pub struct Answered<'a> {
    /// The model asked for.
    pub model: &'a str,
    /// The version the request was routed to (named by version or label, or picked by the
    /// split), when it is known before the answer.
    pub version: Option<&'a str>,
    /// The request id the middleware assigned.
    pub request_id: Option<&'a str>,
    /// The id of the API key the request came with.
    pub key_id: Option<String>,
    /// When the request arrived.
    pub arrived: Arrival,
    /// The request as decoded.
    pub request: &'a vatic_schema::InferRequest,
    /// The request's body when the client sent it as V2 JSON (no binary part): logged as it
    /// came instead of encoded again.
    pub request_json: Option<&'a [u8]>,
    /// The answer, or the error that took its place.
    pub answer: Result<&'a vatic_schema::InferResponse, &'a ApiError>,
    /// The response's body when it is V2 JSON with every output inline, as the client gets
    /// it: logged as it is instead of encoded again.
    pub response_json: Option<&'a [u8]>,
}

/// Hands one answered inference request to the prediction log, per the model's log mode and
/// sample rate; returns the mode when it kept the request. Never waits for the database. In `full` mode the payloads are V2 JSON: the
/// bodies the client sent and got when they are that already, else encoded from the request
/// and the answer (a binary or TF-Serving client).
pub fn log_prediction(s: &AppState, a: Answered<'_>) -> Option<vatic_schema::admin::LogMode> {
    use actix_web::ResponseError;
    use vatic_schema::admin::LogMode;
    let log = s.prediction_log.as_ref()?;
    let (mode, rate) = s.catalog.log_settings(a.model);
    if mode == LogMode::Off {
        return None;
    }
    if rate < 1.0 && rand::random::<f64>() >= rate {
        return None;
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
        at: a.arrived.at,
        request_id: a.request_id.unwrap_or_default().to_string(),
        model: a.model.to_string(),
        version: version.unwrap_or_default(),
        api_key: a.key_id,
        status,
        latency_us: a.arrived.instant.elapsed().as_micros() as u64,
        request,
        response,
        sealed: None,
        shadow: false,
    });
    Some(mode)
}

/// The id of the API key `req` came with, as the access guard found it.
pub fn key_id(req: &actix_web::HttpRequest) -> Option<String> {
    use actix_web::HttpMessage;
    req.extensions()
        .get::<vatic_server::auth::Caller>()
        .and_then(|c| c.key_id.clone())
}

/// The response header naming the version that answered, on every protocol.
pub const MODEL_VERSION_HEADER: &str = "x-vatic-model-version";

/// Says on `response` whether the response cache answered it, when the cache applied.
pub fn name_cache(response: &mut actix_web::HttpResponse, cached: Option<bool>) {
    use actix_web::http::header::{HeaderName, HeaderValue};
    if let Some(hit) = cached {
        response.headers_mut().insert(
            HeaderName::from_static(crate::state::CACHE_HEADER),
            HeaderValue::from_static(if hit { "hit" } else { "miss" }),
        );
    }
}

/// Names the version that answered in `response`'s headers.
pub fn name_version(response: &mut actix_web::HttpResponse, version: Option<&str>) {
    use actix_web::http::header::{HeaderName, HeaderValue};
    if let Some(value) = version.and_then(|v| HeaderValue::from_str(v).ok()) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(MODEL_VERSION_HEADER), value);
    }
}
