//! `vaticctl predictions`: export the prediction log (decrypted by the server, for an admin key)
//! and make data keys for its encryption at rest.

use crate::client::{Client, PredictionFilter};
use crate::GlobalArgs;
use anyhow::Context;
use clap::{Args, Subcommand};
use std::io::Write;
use std::path::PathBuf;

/// `vaticctl predictions`.
#[derive(Debug, Args)]
pub struct PredictionsArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: PredictionsCommand,
}

/// The `predictions` subcommands.
#[derive(Debug, Subcommand)]
pub enum PredictionsCommand {
    /// Write logged predictions as JSON lines, oldest first, payloads decrypted
    Export(ExportArgs),
    /// Print a new data key entry (ID=BASE64 of 32 random bytes) for the data keys file
    DataKey {
        /// The key's id, stored with every record it encrypts (e.g. the month: 2026-12)
        #[arg(long)]
        id: String,
    },
}

/// `vaticctl predictions export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Only this model's predictions
    #[arg(long)]
    pub model: Option<String>,
    /// From this time on: an RFC 3339 time, or a duration back from now (e.g. 24h, 7d)
    #[arg(long, value_parser = parse_time, value_name = "TIME")]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Before this time: an RFC 3339 time, or a duration back from now
    #[arg(long, value_parser = parse_time, value_name = "TIME")]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// Write to this file instead of standard output
    #[arg(long = "to", value_name = "FILE")]
    pub to: Option<PathBuf>,
    /// Records per request to the server (at most 10000)
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub page: u32,
}

/// An RFC 3339 time, or a duration before now.
fn parse_time(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let ago = humantime::parse_duration(text).map_err(|_| {
        format!("'{text}' is neither an RFC 3339 time (2026-12-01T00:00:00Z) nor a duration (24h)")
    })?;
    chrono::Duration::from_std(ago)
        .ok()
        .and_then(|d| chrono::Utc::now().checked_sub_signed(d))
        .ok_or_else(|| format!("'{text}' is too far back"))
}

/// Runs `vaticctl predictions`.
pub fn run(global: &GlobalArgs, args: &PredictionsArgs) -> anyhow::Result<()> {
    match &args.command {
        PredictionsCommand::Export(args) => export(global, args),
        PredictionsCommand::DataKey { id } => {
            vatic_store::check_key_id(id).map_err(|why| anyhow::anyhow!("--id {id:?}: {why}"))?;
            let entry = vatic_store::new_data_key(id);
            match global.output {
                crate::output::OutputFormat::Json => crate::output::print_json(
                    &serde_json::json!({ "id": id, "entry": entry }),
                    &mut std::io::stdout().lock(),
                ),
                crate::output::OutputFormat::Table => {
                    println!("{entry}");
                    Ok(())
                }
            }
        }
    }
}

/// Creates (or truncates) `path` readable and writable by its owner only: it receives
/// decrypted payloads.
fn create_private(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

fn export(global: &GlobalArgs, args: &ExportArgs) -> anyhow::Result<()> {
    let client = Client::new(global)?;
    let filter = PredictionFilter {
        model: args.model.as_deref(),
        since: args.since,
        until: args.until,
        page: args.page,
    };
    let mut out: Box<dyn Write> = match &args.to {
        Some(path) => Box::new(std::io::BufWriter::new(
            create_private(path)
                .with_context(|| format!("--to {}: cannot create it", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let (mut written, mut unreadable) = (0u64, std::collections::BTreeMap::new());
    let mut after: Option<String> = None;
    loop {
        let page = client.predictions(&filter, after.as_deref())?;
        for record in &page.records {
            if record.error.is_some() {
                let key = record.data_key.clone().unwrap_or_default();
                *unreadable.entry(key).or_insert(0u64) += 1;
            }
            serde_json::to_writer(&mut out, record)?;
            out.write_all(b"\n")?;
            written += 1;
        }
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    out.flush()?;
    eprintln!("{written} predictions exported");
    if !unreadable.is_empty() {
        let keys: Vec<String> = unreadable
            .iter()
            .map(|(key, n)| format!("{n} sealed with data key {key}"))
            .collect();
        anyhow::bail!(
            "{} could not be decrypted ({}): configure those data keys on the server and export again",
            unreadable.values().sum::<u64>(),
            keys.join(", ")
        );
    }
    Ok(())
}
