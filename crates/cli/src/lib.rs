//! `vaticctl`, the command line of the vatic model server: run inferences against a model served
//! over the KServe V2 REST API.
//!
//! Each subcommand group lives in its own module with a clap `Args`/`Subcommand` type and a `run`
//! function; [`Cli`] holds the flags every group shares.

#![forbid(unsafe_code)]

pub mod client;
pub mod infer;
pub mod output;

use clap::{Args, Parser, Subcommand};
use output::OutputFormat;

/// Command line of the vatic model server.
#[derive(Debug, Parser)]
#[command(name = "vaticctl", version, propagate_version = true)]
pub struct Cli {
    /// Flags every command takes.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes; they may come before or after the command.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Base URL of the vatic API server
    #[arg(
        long,
        global = true,
        env = "VATIC_SERVER",
        value_name = "URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub server: String,
    /// How to print results
    #[arg(
        long,
        short = 'o',
        global = true,
        value_enum,
        value_name = "FORMAT",
        default_value_t = OutputFormat::Table
    )]
    pub output: OutputFormat,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send an inference request to a model and print its outputs
    ///
    /// The request is a V2 JSON body (--json), or CSV rows of numbers (--csv) that fill the
    /// model's input, one batch row per line. The table output has one line per batch row.
    ///
    /// Examples:
    ///   vaticctl infer breast_cancer --csv rows.csv
    ///   vaticctl infer breast_cancer --json request.json --binary --output json
    #[command(verbatim_doc_comment)]
    Infer(infer::InferArgs),
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Infer(args) => infer::run(&cli.global, &args),
    }
}
