//! The V2 health probes and server metadata, which every vatic process serves:
//! `/v2/health/live|ready` answer 200 or 400 (the V2 protocol asks for a 4xx), `/livez` and
//! `/readyz` 200 or 503 for load balancers, `GET /v2` the server metadata.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use std::sync::Arc;
use vatic_schema::ServerMetadata;

/// Says whether the process is ready; shared by the probe routes.
pub type Readiness = Arc<dyn Fn() -> bool + Send + Sync>;

/// The server metadata of vatic processes.
pub fn server_metadata(name: &str) -> ServerMetadata {
    ServerMetadata {
        name: name.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        extensions: vec![
            "binary_tensor_data".into(),
            "model_configuration".into(),
            "statistics".into(),
            "model_repository".into(),
        ],
    }
}

/// A probe's answer: `{field: ok}`, with 200 when `ok`, else `bad`.
fn health(field: &str, ok: bool, bad: StatusCode) -> HttpResponse {
    let status = if ok { StatusCode::OK } else { bad };
    HttpResponse::build(status).json(serde_json::json!({ field: ok }))
}

/// Registers the probes and the server metadata of a server named `server_name`, ready when
/// `ready` says so.
pub fn configure(cfg: &mut web::ServiceConfig, server_name: &'static str, ready: Readiness) {
    let (ready_v2, ready_lb) = (ready.clone(), ready);
    cfg.route(
        "/v2/health/live",
        web::get().to(|| async { health("live", true, StatusCode::BAD_REQUEST) }),
    )
    .route(
        "/livez",
        web::get().to(|| async { health("live", true, StatusCode::SERVICE_UNAVAILABLE) }),
    )
    .route(
        "/v2/health/ready",
        web::get().to(move || {
            let ok = ready_v2();
            async move { health("ready", ok, StatusCode::BAD_REQUEST) }
        }),
    )
    .route(
        "/readyz",
        web::get().to(move || {
            let ok = ready_lb();
            async move { health("ready", ok, StatusCode::SERVICE_UNAVAILABLE) }
        }),
    )
    .route(
        "/v2",
        web::get().to(move || async move { HttpResponse::Ok().json(server_metadata(server_name)) }),
    );
}
