//! `vaticctl workers`, `vaticctl retention` and `vaticctl audit`: the fleet of workers, the
//! prediction log's retention, and the audit log of admin changes.

use crate::client::Client;
use crate::output::{self, OutputFormat};
use crate::GlobalArgs;
use clap::Args;
use std::io::Write;
use vatic_schema::admin::{LoadState, WorkerStatus};
use vatic_store::{AuditRecord, RetentionReport};

/// Arguments of `vaticctl retention`.
#[derive(Debug, Args)]
pub struct RetentionArgs {
    /// Keep the predictions made since the start of the day N days before today (UTC); older
    /// ones are deleted
    #[arg(long, value_name = "N", required = true)]
    pub keep_days: u32,
}

/// Arguments of `vaticctl audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Most entries to print, newest first (the server caps it at 10000)
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub limit: u32,
    /// Only entries of the last DURATION (e.g. 24h, 7d)
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub since: Option<std::time::Duration>,
    /// Only this action (push, retire, promote, set_log, set_cache, retention, keys_create, keys_revoke,
    /// or a refused attempt's "METHOD path")
    #[arg(long)]
    pub action: Option<String>,
    /// Only entries made with this API key id
    #[arg(long, value_name = "ID")]
    pub key_id: Option<String>,
}

/// Runs `vaticctl workers`.
pub fn run_workers(global: &GlobalArgs) -> anyhow::Result<()> {
    let workers = Client::new(global)?.workers()?;
    print_workers(&workers, global.output, &mut std::io::stdout().lock())
}

/// Runs `vaticctl retention`.
pub fn run_retention(global: &GlobalArgs, args: &RetentionArgs) -> anyhow::Result<()> {
    let report = Client::new(global)?.retention(args.keep_days)?;
    print_retention(
        &report,
        args.keep_days,
        global.output,
        &mut std::io::stdout().lock(),
    )
}

/// Runs `vaticctl audit`.
pub fn run_audit(global: &GlobalArgs, args: &AuditArgs) -> anyhow::Result<()> {
    let since = args
        .since
        .map(|d| {
            chrono::Duration::from_std(d)
                .ok()
                .and_then(|d| chrono::Utc::now().checked_sub_signed(d))
                .ok_or_else(|| anyhow::anyhow!("--since: too far back"))
        })
        .transpose()?;
    let records = Client::new(global)?.audit(&crate::client::AuditFilter {
        limit: Some(args.limit),
        since,
        action: args.action.as_deref(),
        key: args.key_id.as_deref(),
    })?;
    print_audit(&records, global.output, &mut std::io::stdout().lock())
}

fn print_workers(
    workers: &[WorkerStatus],
    format: OutputFormat,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    if format == OutputFormat::Json {
        return output::print_json(&workers, out);
    }
    let mut table = output::table([
        "id",
        "address",
        "heartbeat",
        "in flight",
        "started at",
        "loaded",
    ]);
    for w in workers {
        let loaded = w
            .loaded
            .iter()
            .map(|l| {
                let state = match l.state {
                    LoadState::Loading => "loading",
                    LoadState::Ready => "ready",
                    LoadState::Unavailable => "unavailable",
                };
                let on = match l.engine.as_str() {
                    "" => String::new(),
                    engine => format!(" on {engine}"),
                };
                match l.reason.as_str() {
                    "" => format!("{}/{} {state}{on}", l.model, l.version),
                    reason => format!("{}/{} {state}{on} ({reason})", l.model, l.version),
                }
            })
            .collect::<Vec<_>>()
            .join("; ");
        table.add_row([
            w.id.clone(),
            w.address.clone(),
            format!("{:.1} s ago", w.heartbeat_age_secs),
            w.in_flight.to_string(),
            w.started_at.clone(),
            if loaded.is_empty() {
                "-".into()
            } else {
                loaded
            },
        ]);
    }
    output::align_right(&mut table, &[2, 3]);
    writeln!(out, "{table}")?;
    Ok(())
}

fn print_retention(
    report: &RetentionReport,
    keep_days: u32,
    format: OutputFormat,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    if format == OutputFormat::Json {
        return output::print_json(report, out);
    }
    let mut table = output::table(["keep days", "partitions dropped", "rows deleted"]);
    let partitions = match report.partitions_dropped.as_slice() {
        [] => "-".to_string(),
        names => names.join(", "),
    };
    table.add_row([
        keep_days.to_string(),
        partitions,
        report.rows_deleted.to_string(),
    ]);
    output::align_right(&mut table, &[0, 2]);
    writeln!(out, "{table}")?;
    Ok(())
}

fn print_audit(
    records: &[AuditRecord],
    format: OutputFormat,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    if format == OutputFormat::Json {
        return output::print_json(&records, out);
    }
    let mut table = output::table([
        "at", "actor", "role", "from", "action", "target", "outcome", "request", "detail",
    ]);
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    for r in records {
        table.add_row([
            r.at.clone(),
            r.actor.clone(),
            dash(&r.role),
            dash(&r.remote_addr),
            r.action.clone(),
            dash(&r.target),
            r.outcome.clone(),
            dash(&r.request_id),
            r.detail.clone(),
        ]);
    }
    writeln!(out, "{table}")?;
    Ok(())
}
