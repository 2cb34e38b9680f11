//! `vatic-worker`: serves the models of a repository folder, or of the registry, over the V2
//! protocol.

use clap::Parser;
use serde::Serialize;
use std::path::PathBuf;
use vatic_server::settings::ServerFlags;
use vatic_worker::WorkerSettings;

/// Serves the ONNX models of a repository folder, or of the registry, over the KServe V2
/// protocol.
#[derive(Parser, Serialize)]
#[command(
    version,
    after_help = "The default configuration file is config/worker.toml."
)]
struct Flags {
    #[command(flatten)]
    #[serde(flatten)]
    server: ServerFlags,
    /// Model repository folder, served when there is no database:
    /// <dir>/<model>/<version>/model.onnx
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    models_dir: Option<PathBuf>,
    #[command(subcommand)]
    #[serde(skip)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Measure a model with a raw engine (tract, or ONNX Runtime with --engine onnxruntime) on
    /// this machine, for a grid of batch sizes and instance counts, and print the batching
    /// settings that serve it fastest
    Profile(vatic_worker::profile::ProfileArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    if let Some(Command::Profile(args)) = &flags.command {
        return vatic_worker::profile::run_cli(args);
    }
    let (settings, _logs) = vatic_server::settings::init::<WorkerSettings>(
        "vatic-worker",
        flags.server.config.as_deref(),
        "config/worker.toml",
        &flags,
    )?;
    vatic_worker::run(settings).await
}
