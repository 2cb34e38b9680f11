//! `vaticctl`, the command line of the vatic model server: run inferences against a model served
//! over the KServe V2 REST API, manage the model registry and the fleet through the admin API,
//! and migrate the registry database.
//!
//! Each subcommand group lives in its own module with a clap `Args`/`Subcommand` type and a `run`
//! function; [`Cli`] holds the flags every group shares.

#![forbid(unsafe_code)]

pub mod admin;
pub mod batch;
pub mod bench;
pub mod certs;
pub mod client;
pub mod infer;
pub mod keys;
pub mod migrate;
pub mod models;
pub mod output;
pub mod predictions;
pub mod rollout;

use clap::{Args, Parser, Subcommand};
use output::OutputFormat;
use std::path::PathBuf;

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
    /// CA bundle (PEM) the server's certificate must chain to, for https:// URLs; the system's
    /// trusted CAs when unset
    #[arg(long, global = true, env = "VATIC_CACERT", value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM) to present when the server asks for one (mutual TLS)
    #[arg(
        long,
        global = true,
        env = "VATIC_CERT",
        value_name = "FILE",
        requires = "key"
    )]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of --cert
    #[arg(
        long,
        global = true,
        env = "VATIC_KEY",
        value_name = "FILE",
        requires = "cert"
    )]
    pub key: Option<PathBuf>,
    /// API key, sent as `Authorization: Bearer KEY`; prefer the environment variable, which
    /// does not show in the process list
    #[arg(
        long,
        global = true,
        env = "VATIC_API_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub api_key: Option<String>,
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
    /// Manage the model registry: push, list, describe, label and retire model versions
    ///
    /// Examples:
    ///   vaticctl models push fraud fraud-v7.onnx --config model.toml
    ///   vaticctl models list
    ///   vaticctl models describe fraud
    ///   vaticctl models retire fraud 6
    ///   vaticctl models label fraud 7 --as blue
    ///   vaticctl models log fraud --mode full --sample-rate 0.05
    #[command(verbatim_doc_comment)]
    Models(models::ModelsArgs),
    /// Roll a model version out: canary share, shadow, automatic rollout, promote, rollback, status and history
    ///
    /// Examples:
    ///   vaticctl rollout start fraud --version 8 --canary 10
    ///   vaticctl rollout set fraud --canary 50
    ///   vaticctl rollout shadow fraud --version 9 --sample 25%
    ///   vaticctl rollout auto fraud --version 9 --steps 5,25,50,100 --interval 2m
    ///   vaticctl rollout promote fraud
    ///   vaticctl rollout rollback fraud --reason "error ratio doubled"
    ///   vaticctl rollout status fraud
    ///   vaticctl rollout history fraud
    #[command(verbatim_doc_comment)]
    Rollout(rollout::RolloutArgs),
    /// Run a file of rows through a model as a batch job; follow it, read its results
    ///
    /// The file is JSON Lines (each line a V2 request body or a TF-Serving instance) or CSV (a
    /// header row, then the values of the model's one input per row). It is uploaded once; the
    /// rows run at low priority on the capacity real-time requests leave, and survive restarts.
    ///
    /// Examples:
    ///   vaticctl batch submit customers.csv --model churn --wait
    ///   vaticctl batch status 01938c6e-...
    ///   vaticctl batch results 01938c6e-... --file scores.csv --format csv
    ///   vaticctl batch retry 01938c6e-... --wait
    ///   vaticctl batch list
    #[command(verbatim_doc_comment)]
    Batch(batch::BatchArgs),
    /// List the workers of the fleet and the model versions each one holds
    ///
    /// One line per worker that sent a heartbeat: its id, the address the api reaches it at,
    /// the age of its last heartbeat, and each model version it holds with its load state.
    ///
    /// Example:
    ///   vaticctl workers
    #[command(verbatim_doc_comment)]
    Workers,
    /// Delete old predictions from the prediction log
    ///
    /// On PostgreSQL whole day partitions are dropped; on SQLite rows are deleted.
    ///
    /// Example:
    ///   vaticctl retention --keep-days 30
    #[command(verbatim_doc_comment)]
    Retention(admin::RetentionArgs),
    /// Show the audit log of admin changes, newest first
    ///
    /// Example:
    ///   vaticctl audit --limit 20
    #[command(verbatim_doc_comment)]
    Audit(admin::AuditArgs),
    /// Measure a served model under load: throughput, latency percentiles, errors
    ///
    /// Sends one request, built from the model's metadata with random data (or read from
    /// --data), over keep-alive HTTP/1.1 connections: closed loop at each --concurrency level,
    /// or open loop at each --rate. Each level warms up, then is measured for --duration or
    /// --requests. Latency is from an HDR histogram; errors are counted by HTTP status. Exits
    /// with status 1 when any measured request failed.
    ///
    /// Examples:
    ///   vaticctl bench breast_cancer -c 1,8,64 -d 30s
    ///   vaticctl bench breast_cancer --protocol v2-binary --rows 16 -n 10000
    ///   vaticctl bench breast_cancer --rate 500,1000,2000 -d 20s --output json
    #[command(verbatim_doc_comment)]
    Bench(bench::BenchArgs),
    /// Bring the registry database's schema up to this build's version
    ///
    /// Talks to the database directly, not to the API server. Applies the migrations the
    /// database lacks and prints their versions; --check only compares the versions and exits
    /// with status 1 when they differ.
    ///
    /// Examples:
    ///   vaticctl migrate --database-url postgres://vatic@db:5432/vatic
    ///   DATABASE_URL=sqlite://data/vatic.db vaticctl migrate --check
    #[command(verbatim_doc_comment)]
    Migrate(migrate::MigrateArgs),
    /// Make the certificates of a deployment: an internal CA, and certificates it signs
    ///
    /// `certs init DIR` writes ca.crt and ca.key, then NAME.crt and NAME.key for the servers
    /// nginx, haproxy, api and worker and for the client api-client (the api's certificate when it
    /// calls workers with mutual TLS). Keys are written readable by their owner only; no file
    /// is replaced without --force. Keep ca.key offline once the certificates are made.
    ///
    /// Examples:
    ///   vaticctl certs init certs
    ///   vaticctl certs init /etc/vatic/tls --api-names api.example.com --days 90
    #[command(verbatim_doc_comment)]
    Certs(certs::CertsArgs),
    /// Make, list and revoke API keys (with an admin key)
    ///
    /// A key is printed once, when it is made; the server keeps only its hash.
    ///
    /// Examples:
    ///   vaticctl keys create --role predictor --models fraud,churn --expires 90d --name checkout
    ///   vaticctl keys list
    ///   vaticctl keys revoke 3k9x0a1b2c3d
    #[command(verbatim_doc_comment)]
    Keys(keys::KeysArgs),
    /// Export the prediction log, decrypted (with an admin key), and make data keys
    ///
    /// `export` writes one JSON object per line, oldest first, with the payloads decrypted by
    /// the server; every page read is recorded in the audit log. `data-key` prints a new entry
    /// for the data keys file that encrypts payloads at rest (docs/security.md).
    ///
    /// Examples:
    ///   vaticctl predictions export --model fraud --since 24h --to fraud.jsonl
    ///   vaticctl predictions data-key --id 2026-12 >> /etc/vatic/data-keys
    #[command(verbatim_doc_comment)]
    Predictions(predictions::PredictionsArgs),
    /// Print a shell completion script for vaticctl
    ///
    /// Examples:
    ///   vaticctl completions bash > /etc/bash_completion.d/vaticctl
    ///   vaticctl completions zsh > "${fpath[1]}/_vaticctl"
    ///   vaticctl completions fish > ~/.config/fish/completions/vaticctl.fish
    #[command(verbatim_doc_comment)]
    Completions {
        /// The shell
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Infer(args) => infer::run(&cli.global, &args),
        Command::Models(args) => models::run(&cli.global, &args),
        Command::Rollout(args) => rollout::run(&cli.global, &args),
        Command::Batch(args) => batch::run(&cli.global, &args),
        Command::Workers => admin::run_workers(&cli.global),
        Command::Retention(args) => admin::run_retention(&cli.global, &args),
        Command::Audit(args) => admin::run_audit(&cli.global, &args),
        Command::Bench(args) => bench::run(&cli.global, &args),
        Command::Migrate(args) => migrate::run(&cli.global, &args),
        Command::Certs(args) => certs::run(&cli.global, &args),
        Command::Keys(args) => keys::run(&cli.global, &args),
        Command::Predictions(args) => predictions::run(&cli.global, &args),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "vaticctl",
                &mut std::io::stdout().lock(),
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn completion_scripts_name_every_command() {
        use clap::CommandFactory;
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "vaticctl", &mut out);
            let script = String::from_utf8(out).unwrap();
            for command in [
                "rollout",
                "models",
                "keys",
                "completions",
                "promote",
                "shadow",
            ] {
                assert!(script.contains(command), "{shell}: {command}");
            }
        }
    }

    #[test]
    fn version_after_push_or_describe_is_the_models() {
        let parse = |line: &str| Cli::try_parse_from(line.split(' ')).map(|cli| cli.command);
        match parse("vaticctl models push m m.onnx --version 3") {
            Ok(Command::Models(models::ModelsArgs {
                command: models::ModelsCommand::Push(push),
            })) => assert_eq!(push.version, Some(3)),
            other => panic!("{other:?}"),
        }
        match parse("vaticctl models describe m --version 2") {
            Ok(Command::Models(models::ModelsArgs {
                command: models::ModelsCommand::Describe(describe),
            })) => assert_eq!(describe.version, Some(2)),
            other => panic!("{other:?}"),
        }
        assert!(parse("vaticctl models push m m.onnx --version 0").is_err());
        let version = parse("vaticctl --version").unwrap_err();
        assert_eq!(version.kind(), clap::error::ErrorKind::DisplayVersion);
    }
}
