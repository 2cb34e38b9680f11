//! The vatic model worker: loads ONNX models with tract or ONNX Runtime, batches requests dynamically on
//! dedicated runner threads, and serves the KServe V2 endpoints for them. The standalone api
//! runs the same engine in its own process ([`host::EngineHost`]).

#![forbid(unsafe_code)]

pub mod batcher;
pub mod config;
pub mod engine;
mod error;
pub mod folder;
pub mod host;
pub mod metrics;
pub mod onnx;
pub mod onnxruntime;
pub mod process;
pub mod profile;
pub mod reconcile;
pub mod routes;
pub mod settings;
pub mod stats;
pub mod version;

pub use batcher::Priority;
pub use config::BatchingConfig;
pub use engine::{Engine, EngineSettings, VersionSpec};
pub use error::EngineError;
pub use process::{run, start, Worker, WorkerService};
pub use settings::WorkerSettings;
pub use version::{check_model, LoadedVersion, PLATFORM};
