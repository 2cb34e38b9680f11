//! The V2 health probes and server metadata, which every vatic process serves:
//! `/v2/health/live|ready` answer 200 or 400 (the V2 protocol asks for a 4xx), `/livez` and
//! `/readyz` 200 or 503 for load balancers, `GET /v2` the server metadata.

use crate::routes::{Group, Need, Routes};
use actix_web::http::{Method, StatusCode};
use actix_web::HttpResponse;
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

/// Registers the probes (open to anyone) and the server metadata (for any key) of a server
/// named `server_name`, ready when `ready` says so.
pub fn configure(routes: &mut Routes<'_>, server_name: &'static str, ready: Readiness) {
    let (ready_v2, ready_lb) = (ready.clone(), ready);
    routes.group(Group::plain("health"), |routes| {
        routes
            .add(
                Method::GET,
                "/v2/health/live",
                Need::Open,
                "Liveness (V2): 200 while the process runs",
                || async { health("live", true, StatusCode::BAD_REQUEST) },
            )
            .add(
                Method::GET,
                "/livez",
                Need::Open,
                "Liveness for load balancers: 200 while the process runs",
                || async { health("live", true, StatusCode::SERVICE_UNAVAILABLE) },
            )
            .add(
                Method::GET,
                "/v2/health/ready",
                Need::Open,
                "Readiness (V2): 200 when models are loaded and shutdown has not begun, else 400",
                move || {
                    let ok = ready_v2();
                    async move { health("ready", ok, StatusCode::BAD_REQUEST) }
                },
            )
            .add(
                Method::GET,
                "/readyz",
                Need::Open,
                "Readiness for load balancers: 200 when ready, else 503",
                move || {
                    let ok = ready_lb();
                    async move { health("ready", ok, StatusCode::SERVICE_UNAVAILABLE) }
                },
            );
    });
    routes.group(Group::plain("V2"), |routes| {
        routes.add(
            Method::GET,
            "/v2",
            Need::AnyKey,
            "Server metadata: name, version, protocol extensions",
            move || async move { HttpResponse::Ok().json(server_metadata(server_name)) },
        );
    });
}
