//! `vatic-api`: the public HTTP API; `--standalone` serves a model folder in one process.

use clap::Parser;
use serde::Serialize;
use std::path::PathBuf;
use vatic_api::settings::{ApiSettings, Mode};
use vatic_server::settings::ServerFlags;

/// The vatic prediction API (KServe V2 and TF-Serving REST).
#[derive(Parser, Serialize)]
#[command(
    version,
    after_help = "The default configuration file is config/api.toml, or config/standalone.toml with --standalone."
)]
struct Flags {
    /// Run api and worker in one process on a model folder
    #[arg(long)]
    #[serde(skip)]
    standalone: bool,
    #[command(flatten)]
    #[serde(flatten)]
    server: ServerFlags,
    /// Cluster: worker URLs, comma-separated
    #[arg(long, value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    workers: Option<Vec<String>>,
    /// Standalone: model repository folder (<dir>/<model>/<version>/model.onnx)
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    models_dir: Option<PathBuf>,
    #[arg(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<Mode>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut flags = Flags::parse();
    let default_file = if flags.standalone {
        flags.mode = Some(Mode::Standalone);
        "config/standalone.toml"
    } else {
        "config/api.toml"
    };
    let (settings, _logs) = vatic_server::settings::init::<ApiSettings>(
        "vatic-api",
        flags.server.config.as_deref(),
        default_file,
        &flags,
    )?;
    vatic_api::run(settings).await
}
