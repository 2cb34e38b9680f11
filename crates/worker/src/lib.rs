//! The vatic model worker: loads ONNX models with tract, batches requests dynamically on
//! dedicated runner threads, and serves the KServe V2 endpoints for them.

#![forbid(unsafe_code)]

pub mod batcher;
pub mod busy_poll;
pub mod config;
pub mod engine;
mod error;
pub mod folder;
pub mod http;
pub mod memory;
pub mod metrics;
pub mod onnx;
pub mod passes;
pub mod profile;
pub mod reconcile;
pub mod settings;
pub mod stats;
pub mod telemetry;
pub mod version;

pub use config::BatchingConfig;
pub use engine::{Engine, EngineSettings, VersionSpec};
pub use error::EngineError;
pub use settings::WorkerSettings;
pub use version::{check_model, LoadedVersion, PLATFORM};
