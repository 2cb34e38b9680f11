//! `vatic-worker`: serves the models of a repository folder over the V2 protocol.

use clap::Parser;
use serde::Serialize;
use std::path::PathBuf;
use vatic_worker::{settings, telemetry, WorkerSettings};

// jemalloc, as Triton's documentation advises for model servers: glibc's malloc keeps what a
// thread freed (the load-time profile's large batches, say) in that thread's arena for good,
// where jemalloc hands unused pages back to the system within seconds
// (`vatic_worker::memory`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Serves the ONNX models of a repository folder over the KServe V2 protocol.
#[derive(Parser, Serialize)]
#[command(version)]
struct Flags {
    /// Configuration file [env: VATIC_CONFIG] [default: config/worker.toml]
    #[arg(long, env = "VATIC_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Address to listen on, e.g. 0.0.0.0:8081
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<String>,
    /// Model repository folder: <dir>/<model>/<version>/model.onnx
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    models_dir: Option<PathBuf>,
    /// Address of the Prometheus metrics endpoint, e.g. 0.0.0.0:9181
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics_listen: Option<String>,
    #[command(subcommand)]
    #[serde(skip)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Measure a model with the raw tract engine on this machine, for a grid of batch sizes and
    /// instance counts, and print the batching settings that serve it fastest
    Profile(vatic_worker::profile::ProfileArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    if let Some(Command::Profile(args)) = &flags.command {
        return vatic_worker::profile::run_cli(args);
    }
    let file = flags
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from("config/worker.toml"));
    let settings: WorkerSettings = settings::load(&file, flags.config.is_some(), &flags)?;
    let _log_files = telemetry::init(&settings.log, "vatic-worker")?;
    vatic_worker::memory::purge_in_background();
    vatic_worker::http::run(settings).await
}
