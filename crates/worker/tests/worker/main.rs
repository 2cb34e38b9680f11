//! The worker over real HTTP on port 0, with real ONNX models run by tract.

mod batching;
mod errors;
mod helpers;
mod lifecycle;
mod metrics;
mod models;
mod profile;
