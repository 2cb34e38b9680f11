//! The worker over real HTTP on port 0, with real ONNX models run by tract and ONNX Runtime.

mod batching;
mod engines;
mod errors;
mod helpers;
mod lifecycle;
mod metrics;
mod models;
mod profile;
