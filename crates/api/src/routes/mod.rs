//! HTTP routes, one module per resource.

pub mod health;
pub mod tfserving;
pub mod v2;

use crate::backend::Backend;
use actix_web::{HttpMessage, HttpRequest};
use std::sync::atomic::{AtomicBool, Ordering};
use vatic_worker::http::RequestId;

/// What every handler shares.
pub struct AppState {
    /// Where inference runs.
    pub backend: Backend,
    /// False once shutdown has begun.
    pub accepting: AtomicBool,
    /// Largest body accepted.
    pub max_body_bytes: usize,
}

impl AppState {
    /// Ready: not shutting down and the backend can serve.
    pub fn is_ready(&self) -> bool {
        self.accepting.load(Ordering::SeqCst) && self.backend.is_ready()
    }
}

/// Shared state as handlers receive it.
pub type State = actix_web::web::Data<AppState>;

/// The request id the middleware assigned.
pub fn request_id(req: &HttpRequest) -> Option<String> {
    req.extensions().get::<RequestId>().map(|r| r.0.clone())
}
