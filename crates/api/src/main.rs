//! `vatic-api`: the public HTTP API; `--standalone` serves a model folder in one process.

use clap::Parser;
use serde::Serialize;
use std::path::PathBuf;
use vatic_api::settings::{ApiSettings, Mode};
use vatic_worker::{settings, telemetry};

// jemalloc, as Triton's documentation advises for model servers: glibc's malloc keeps what a
// thread freed (the load-time profile's large batches, say) in that thread's arena for good,
// where jemalloc hands unused pages back to the system within seconds
// (`vatic_worker::memory`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The vatic prediction API (KServe V2 and TF-Serving REST).
#[derive(Parser, Serialize)]
#[command(version)]
struct Flags {
    /// Run api and worker in one process on a model folder (default config: config/standalone.toml)
    #[arg(long)]
    #[serde(skip)]
    standalone: bool,
    /// Configuration file [env: VATIC_CONFIG] [default: config/api.toml, or config/standalone.toml]
    #[arg(long, env = "VATIC_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:8080
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<String>,
    /// Standalone: model repository folder (<dir>/<model>/<version>/model.onnx)
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    models_dir: Option<PathBuf>,
    /// Cluster: worker URLs, comma-separated
    #[arg(long, value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    workers: Option<Vec<String>>,
    /// Address of the Prometheus metrics endpoint, e.g. 0.0.0.0:9180
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics_listen: Option<String>,
    #[arg(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<Mode>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut flags = Flags::parse();
    let default_file = if flags.standalone {
        "config/standalone.toml"
    } else {
        "config/api.toml"
    };
    let file = flags
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(default_file));
    if flags.standalone {
        flags.mode = Some(Mode::Standalone);
    }
    let settings: ApiSettings = settings::load(&file, flags.config.is_some(), &flags)?;
    let _log_files = telemetry::init(&settings.log, "vatic-api")?;
    vatic_worker::memory::purge_in_background();
    vatic_api::run(settings).await
}
