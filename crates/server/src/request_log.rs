//! Request ids and the request log: every request gets an id (the client's `X-Request-ID`, or a
//! new one), a tracing span that names it with the model and version the path gives, and one
//! access line when it is answered.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpRequest};
use std::time::Instant;
use tracing::Instrument;

/// The header that carries a request's id in and out.
pub const REQUEST_ID: &str = "x-request-id";

/// Routes left out of the access log unless they fail.
const PROBES: [&str; 5] = [
    "/v2/health/live",
    "/v2/health/ready",
    "/livez",
    "/readyz",
    "/metrics",
];

/// The request id of a request, set by [`request_log`].
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl RequestId {
    /// The id [`request_log`] gave `req`.
    pub fn of(req: &HttpRequest) -> Option<String> {
        req.extensions().get::<RequestId>().map(|r| r.0.clone())
    }
}

/// Middleware: takes `X-Request-ID` or makes one, returns it, and logs the request with it.
/// Health and metrics probes are left out of the access log unless they fail. Marks the
/// thread busy for busy polling when a request arrives and when it is answered.
pub async fn request_log(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    let method = req.method().to_string();
    let route = req.match_pattern().unwrap_or_else(|| "(unmatched)".into());
    let quiet = PROBES.contains(&route.as_str());
    // The model and version the path names, so every line logged for the request carries them.
    let (model, version) = model_and_version(&route, req.path());
    let span = tracing::info_span!("request", request_id = %id, model = model.as_deref(), version = version.as_deref());
    let started = Instant::now();
    crate::busy_poll::arrived(started);
    let res = next.call(req).instrument(span.clone()).await;
    let answered = Instant::now();
    crate::busy_poll::answered(answered);
    let mut res = res?;
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut()
            .insert(HeaderName::from_static(REQUEST_ID), v);
    }
    let status = res.status().as_u16();
    if !quiet || status >= 400 {
        let bytes = match res.response().body().size() {
            actix_web::body::BodySize::Sized(n) => Some(n),
            _ => None,
        };
        // The id of the key the guard accepted (never the key itself).
        let key = res
            .request()
            .extensions()
            .get::<crate::auth::Caller>()
            .and_then(|c| c.key_id.clone());
        span.in_scope(|| {
            tracing::info!(method = %method, route = %route, status, bytes, key = key.as_deref(), micros = (answered - started).as_micros() as u64, "request");
        });
    }
    Ok(res)
}

/// The `{model}` and `{version}` segments `path` fills in the route pattern `route`, each cut at
/// the first `:` (TF-Serving's `:predict` suffix).
///
/// The routing has not run yet where the request span is made, so the pattern is matched here,
/// segment by segment: in every route the placeholders fill whole segments. (Building an
/// actix `ResourceDef` per request instead compiles a regex and leaks its capture names.)
fn model_and_version(route: &str, path: &str) -> (Option<String>, Option<String>) {
    let (mut model, mut version) = (None, None);
    if route.contains("{model}") && route.split('/').count() == path.split('/').count() {
        for (pattern, segment) in route.split('/').zip(path.split('/')) {
            let value = || Some(segment.split(':').next().unwrap_or(segment).to_string());
            match pattern {
                "{model}" => model = value(),
                "{version}" => version = value(),
                _ => {}
            }
        }
    }
    (model, version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_and_version_come_from_the_route_pattern() {
        let of = |route, path| model_and_version(route, path);
        let some = |s: &str| Some(s.to_string());
        assert_eq!(
            of("/v2/models/{model}/infer", "/v2/models/iris/infer"),
            (some("iris"), None)
        );
        assert_eq!(
            of(
                "/v2/models/{model}/versions/{version}/infer",
                "/v2/models/iris/versions/3/infer"
            ),
            (some("iris"), some("3"))
        );
        assert_eq!(
            of("/v1/models/{model}", "/v1/models/iris:predict"),
            (some("iris"), None)
        );
        assert_eq!(
            of(
                "/v1/models/{model}/versions/{version}",
                "/v1/models/iris/versions/2:classify"
            ),
            (some("iris"), some("2"))
        );
        assert_eq!(of("/v2/health/ready", "/v2/health/ready"), (None, None));
        assert_eq!(of("(unmatched)", "/nowhere"), (None, None));
        assert_eq!(
            of("/v2/models/{model}/infer", "/v2/models/iris/extra/infer"),
            (None, None)
        );
    }
}
