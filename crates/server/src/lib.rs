//! What every vatic HTTP process shares, whatever it serves: layered settings, binding and
//! serving with a graceful drain, request ids and the request log, body limits, clients that go
//! away, the JSON error body, the V2 probes, the metrics endpoint, telemetry and the allocator's
//! upkeep. The worker (models) and the api (routing, registry, prediction log) are each a
//! [`Service`] served by a [`Server`].

#![forbid(unsafe_code)]

pub mod auth;
mod body;
pub mod busy_poll;
mod client_gone;
mod error;
pub mod memory;
pub mod metrics;
pub mod openapi;
pub mod passes;
pub mod priority;
pub mod probes;
pub mod request_log;
pub mod routes;
mod serve;
pub mod settings;
pub mod telemetry;
pub mod v2;

pub use body::{read_body, BodyLimits};
pub use client_gone::{on_connect, until_client_gone, ClientConnection};
pub use error::{error_response, status_from, RequestError};
pub use passes::Passes;
pub use request_log::{RequestId, REQUEST_ID};
pub use routes::{Group, Need, Routes};
pub use serve::{all_routes, shutdown_signal, Listener, Server, Service};
pub use settings::{ProcessSettings, ServerSettings};
