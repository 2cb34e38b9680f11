//! Probes and server metadata: `/v2/health/live|ready` (200 or 400, per the V2 protocol),
//! `/livez` and `/readyz` (200 or 503, for load balancers), `GET /v2`.

use super::State;
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use vatic_worker::http::{health, server_metadata};

/// Registers the probe routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
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
        web::get()
            .to(|s: State| async move { health("ready", s.is_ready(), StatusCode::BAD_REQUEST) }),
    )
    .route(
        "/readyz",
        web::get().to(|s: State| async move {
            health("ready", s.is_ready(), StatusCode::SERVICE_UNAVAILABLE)
        }),
    )
    .route(
        "/v2",
        web::get().to(|| async { HttpResponse::Ok().json(server_metadata("vatic")) }),
    );
}
