//! Probes and server metadata, the same routes a worker serves.

use super::AppState;
use actix_web::web;
use std::sync::Arc;
use vatic_worker::http::configure_probes;

/// Registers the probe routes, ready when `state` is.
pub fn configure(cfg: &mut web::ServiceConfig, state: web::Data<AppState>) {
    configure_probes(cfg, "vatic", Arc::new(move || state.is_ready()));
}
