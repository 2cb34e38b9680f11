//! `vaticctl rollout`: send a share of a model's unversioned requests to a new version, change
//! the share, promote it, roll it back, and see where traffic goes and how it got there.

use crate::client::Client;
use crate::output::{self, OutputFormat};
use crate::GlobalArgs;
use clap::{Args, Subcommand};
use std::io::Write;
use vatic_schema::admin::{
    AutoStart, ModelInfo, RollbackRequest, RolloutEvent, RolloutSet, RolloutStart, RolloutStatus,
    ShadowStart, VersionState,
};

/// Arguments of `vaticctl rollout`.
#[derive(Debug, Args)]
pub struct RolloutArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: RolloutCommand,
}

/// The `vaticctl rollout` commands.
#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Make a staged version the canary: it answers a share of the requests that name no version
    ///
    /// The version must be ready on at least one worker. Requests that name a version or a
    /// label are not split. With a route key header (X-Vatic-Route-Key by default) a caller
    /// stays on one side of the split.
    ///
    /// Example:
    ///   vaticctl rollout start fraud --version 8 --canary 10
    #[command(verbatim_doc_comment)]
    Start(StartArgs),
    /// Change the canary's share of unversioned requests
    ///
    /// Example:
    ///   vaticctl rollout set fraud --canary 50
    #[command(verbatim_doc_comment)]
    Set(SetArgs),
    /// Copy a sample of live requests to a staged version and compare its answers
    ///
    /// The copies run off the request path: callers get the served version's answer at the
    /// same speed, and when the shadow falls behind, copies are dropped and counted. Its
    /// answers are compared with the served ones (label or argmax agreement, absolute
    /// differences per output, errors) and never returned; `rollout status` shows the figures.
    ///
    /// Examples:
    ///   vaticctl rollout shadow fraud --version 8 --sample 25%
    ///   vaticctl rollout shadow fraud --stop
    #[command(verbatim_doc_comment)]
    Shadow(ShadowArgs),
    /// Roll a version out by itself: the share steps up while it holds up, and rolls back on a breach
    ///
    /// The version becomes the canary at the first share. Once it has answered --min-requests
    /// at a share, its error ratio and p99 are compared with the stable version's: above
    /// --max-error-ratio or --max-p99 times the stable's (the error ratio at least
    /// --error-floor), it is rolled back at once, with the reason in the history and the audit
    /// log. A share that holds up for the whole --interval moves to the next; after the last
    /// the canary is promoted. With --min-agreement, a shadow phase of the version (if one
    /// ran) must have agreed on at least that share of rows. One api replica runs the
    /// controller; another takes over if it dies. `rollout set`, `promote` or `rollback` by
    /// hand end it.
    ///
    /// Example:
    ///   vaticctl rollout auto fraud --version 8 --steps 5,25,50,100 --interval 2m \
    ///     --max-error-ratio 2x --max-p99 1.5x --min-requests 200
    #[command(verbatim_doc_comment)]
    Auto(AutoArgs),
    /// Make the canary the stable version, in one step
    ///
    /// The version that was stable stays loaded for the grace period (rollout.promote_grace_secs)
    /// so that a rollback to it is instant, then it is retired.
    ///
    /// Example:
    ///   vaticctl rollout promote fraud
    #[command(verbatim_doc_comment)]
    Promote(ModelArg),
    /// Send every request back to the stable version, or undo the last promote
    ///
    /// With a canary or shadow running, ends them (their versions go back to staged). Without,
    /// makes the version that was stable before the last promote stable again, while it is
    /// still loaded.
    ///
    /// Examples:
    ///   vaticctl rollout rollback fraud
    ///   vaticctl rollout rollback fraud --reason "p99 doubled"
    #[command(verbatim_doc_comment)]
    Rollback(RollbackArgs),
    /// Show where a model's traffic goes and how each side does over the last window
    ///
    /// The split, each version's state, labels and readiness; then per side (stable, canary,
    /// shadow), counted by every api replica over --window: requests, error ratio, p50 and
    /// p99 latency, and for a shadow the copies compared and dropped, the agreement and the
    /// largest difference per output.
    ///
    /// Examples:
    ///   vaticctl rollout status fraud
    ///   vaticctl rollout status fraud --window 15m --output json
    #[command(verbatim_doc_comment)]
    Status(StatusArgs),
    /// Show every change of a model's labels and traffic, newest first
    ///
    /// Example:
    ///   vaticctl rollout history fraud --limit 20
    #[command(verbatim_doc_comment)]
    History(HistoryArgs),
}

/// A model name.
#[derive(Debug, Args)]
pub struct ModelArg {
    /// Model name
    pub model: String,
}

/// Arguments of `vaticctl rollout start`. `--version` is the model version here.
#[derive(Debug, Args)]
#[command(disable_version_flag = true)]
pub struct StartArgs {
    /// Model name
    pub model: String,
    /// The version to send traffic to
    #[arg(long, value_name = "N", value_parser = crate::models::version_number)]
    pub version: u64,
    /// Percent of unversioned requests it answers, 0 to 100
    #[arg(long, value_name = "PERCENT", value_parser = percent)]
    pub canary: u32,
}

/// Arguments of `vaticctl rollout set`.
#[derive(Debug, Args)]
pub struct SetArgs {
    /// Model name
    pub model: String,
    /// Percent of unversioned requests the canary answers, 0 to 100
    #[arg(long, value_name = "PERCENT", value_parser = percent)]
    pub canary: u32,
}

/// Arguments of `vaticctl rollout shadow`. `--version` is the model version here.
#[derive(Debug, Args)]
#[command(disable_version_flag = true)]
pub struct ShadowArgs {
    /// Model name
    pub model: String,
    /// The staged version that gets the copies
    #[arg(long, value_name = "N", value_parser = crate::models::version_number, required_unless_present = "stop", conflicts_with = "stop")]
    pub version: Option<u64>,
    /// Percent of requests copied, 1 to 100
    #[arg(long, value_name = "PERCENT", value_parser = percent, default_value = "100", conflicts_with = "stop")]
    pub sample: u32,
    /// Stop the shadow: its version goes back to staged
    #[arg(long)]
    pub stop: bool,
}

/// Arguments of `vaticctl rollout status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Model name
    pub model: String,
    /// How far back the figures go: seconds, or a number with s, m or h
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = window)]
    pub window: u64,
}

/// `300`, `90s`, `15m`, `1h`: seconds, from 1 to a day.
fn window(s: &str) -> Result<u64, String> {
    let secs = match s.parse::<u64>() {
        Ok(n) => Some(n),
        Err(_) => humantime::parse_duration(s).ok().map(|d| d.as_secs()),
    };
    match secs {
        Some(n) if (1..=86_400).contains(&n) => Ok(n),
        _ => Err(format!(
            "'{s}' is not a window: use seconds, or a duration like 90s, 15m or 1h, up to 24h"
        )),
    }
}

/// Arguments of `vaticctl rollout auto`. `--version` is the model version here.
#[derive(Debug, Args)]
#[command(disable_version_flag = true)]
pub struct AutoArgs {
    /// Model name
    pub model: String,
    /// The staged (or shadow) version to roll out
    #[arg(long, value_name = "N", value_parser = crate::models::version_number)]
    pub version: u64,
    /// The canary's shares, in percent, increasing; after the last it is promoted
    #[arg(long, value_name = "P,P,...", value_delimiter = ',', value_parser = percent, default_value = "5,25,50,100")]
    pub steps: Vec<u32>,
    /// How long each share must hold up: seconds, or a number with s, m or h
    #[arg(long, value_name = "DURATION", value_parser = window, default_value = "2m")]
    pub interval: u64,
    /// Largest canary error ratio, as a multiple of the stable version's
    #[arg(long, value_name = "MULTIPLE", value_parser = multiple, default_value = "2x")]
    pub max_error_ratio: f64,
    /// Largest canary p99 latency, as a multiple of the stable version's
    #[arg(long, value_name = "MULTIPLE", value_parser = multiple, default_value = "1.5x")]
    pub max_p99: f64,
    /// How much more than the stable version's the canary's p99 may be whatever the multiple:
    /// milliseconds, or a duration like 5ms or 1s
    #[arg(long, value_name = "DURATION", value_parser = millis, default_value = "5ms")]
    pub p99_slack: f64,
    /// Fewest canary requests a share is judged on
    #[arg(long, value_name = "N", default_value_t = 200)]
    pub min_requests: u64,
    /// Smallest share of rows a shadow phase of the version must have agreed on, if one ran
    #[arg(long, value_name = "PERCENT", value_parser = fraction)]
    pub min_agreement: Option<f64>,
    /// Error ratio allowed whatever the stable version's
    #[arg(long, value_name = "PERCENT", value_parser = fraction, default_value = "0.5%")]
    pub error_floor: f64,
}

/// `2x` or `2`: a multiple of at least 1.
fn multiple(s: &str) -> Result<f64, String> {
    match s.trim_end_matches('x').parse::<f64>() {
        Ok(m) if m.is_finite() && m >= 1.0 => Ok(m),
        _ => Err(format!(
            "'{s}' is not a multiple: use a number of at least 1, like 2x or 1.5x"
        )),
    }
}

/// `5`, `5ms`, `1s`: milliseconds.
fn millis(s: &str) -> Result<f64, String> {
    let ms = match s.parse::<f64>() {
        Ok(ms) => Some(ms),
        Err(_) => humantime::parse_duration(s)
            .ok()
            .map(|d| d.as_secs_f64() * 1000.0),
    };
    match ms {
        Some(ms) if ms.is_finite() && ms >= 0.0 => Ok(ms),
        _ => Err(format!(
            "'{s}' is not a duration: use milliseconds, or a duration like 5ms or 1s"
        )),
    }
}

/// `99%` or `0.99`: a share from 0 to 1.
fn fraction(s: &str) -> Result<f64, String> {
    let value = match s.strip_suffix('%') {
        Some(p) => p.parse::<f64>().map(|p| p / 100.0),
        None => s.parse::<f64>(),
    };
    match value {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!(
            "'{s}' is not a share: use a percent like 99% or 0.5%, or a number from 0 to 1"
        )),
    }
}

/// Arguments of `vaticctl rollout rollback`.
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Model name
    pub model: String,
    /// Why, for the history and the audit log
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
}

/// Arguments of `vaticctl rollout history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Model name
    pub model: String,
    /// At most this many changes
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
}

/// `10`, `10%` or `2.5%` is not a share: whole percents from 0 to 100.
pub fn percent(s: &str) -> Result<u32, String> {
    match s.trim_end_matches('%').parse::<u32>() {
        Ok(p) if p <= 100 => Ok(p),
        _ => Err(format!(
            "'{s}' is not a percent: use a whole number from 0 to 100"
        )),
    }
}

/// Runs a `vaticctl rollout` command.
pub fn run(global: &GlobalArgs, args: &RolloutArgs) -> anyhow::Result<()> {
    let client = Client::new(global)?;
    let out = &mut std::io::stdout().lock();
    let format = global.output;
    let model = match &args.command {
        RolloutCommand::Start(a) => client.rollout_start(
            &a.model,
            &RolloutStart {
                version: a.version,
                canary: a.canary,
            },
        )?,
        RolloutCommand::Set(a) => client.rollout_set(&a.model, &RolloutSet { canary: a.canary })?,
        RolloutCommand::Shadow(a) => match a.version {
            Some(version) if !a.stop => client.shadow(
                &a.model,
                &ShadowStart {
                    version,
                    sample: a.sample,
                },
            )?,
            _ => client.stop_shadow(&a.model)?,
        },
        RolloutCommand::Auto(a) => client.rollout_auto(
            &a.model,
            &AutoStart {
                version: a.version,
                steps: a.steps.clone(),
                interval_secs: a.interval,
                max_error_ratio: a.max_error_ratio,
                max_p99: a.max_p99,
                p99_slack_ms: a.p99_slack,
                min_requests: a.min_requests,
                min_agreement: a.min_agreement,
                error_floor: a.error_floor,
            },
        )?,
        RolloutCommand::Promote(a) => client.promote(&a.model)?,
        RolloutCommand::Rollback(a) => client.rollback(
            &a.model,
            &RollbackRequest {
                reason: a.reason.clone(),
            },
        )?,
        RolloutCommand::Status(a) => {
            let status = client.rollout_status(&a.model, a.window)?;
            return match format {
                OutputFormat::Json => output::print_json(&status, out),
                OutputFormat::Table => print_status(&status, out),
            };
        }
        RolloutCommand::History(a) => {
            let events = client.rollout_history(&a.model, a.limit)?;
            return match format {
                OutputFormat::Json => output::print_json(&events, out),
                OutputFormat::Table => print_history(&events, out),
            };
        }
    };
    match format {
        OutputFormat::Json => output::print_json(&model, out),
        OutputFormat::Table => print_split(&model, out),
    }
}

/// Where unversioned requests go, in one line per side.
fn print_split(model: &ModelInfo, out: &mut impl Write) -> anyhow::Result<()> {
    let mut table = output::table(["model", "side", "version", "share"]);
    let canary = model.canary();
    let canary_share = canary.map_or(0, |(_, w)| w);
    if let Some(stable) = model.default_version() {
        table.add_row([
            model.name.clone(),
            "stable".into(),
            stable.version.to_string(),
            format!("{}%", 100 - canary_share),
        ]);
    }
    if let Some((v, w)) = canary {
        table.add_row([
            model.name.clone(),
            "canary".into(),
            v.to_string(),
            format!("{w}%"),
        ]);
    }
    if let Some((v, sample)) = model.shadow() {
        table.add_row([
            model.name.clone(),
            "shadow".into(),
            v.to_string(),
            format!("copy of {sample}%"),
        ]);
    }
    output::align_right(&mut table, &[2, 3]);
    writeln!(out, "{table}")?;
    if let Some(auto) = &model.traffic.auto {
        let steps: Vec<String> = auto.steps.iter().map(|s| format!("{s}%")).collect();
        let at = if auto.is_running() {
            format!(
                "step {} of {} ({})",
                auto.step + 1,
                auto.steps.len(),
                steps.join(" > ")
            )
        } else {
            auto.state.replace('_', " ")
        };
        writeln!(
            out,
            "automatic rollout of version {}: {at}; {}",
            auto.version, auto.reason
        )?;
    }
    if let (Some(v), Some(until)) = (model.traffic.previous_stable, &model.traffic.previous_until) {
        writeln!(
            out,
            "version {v} was stable before the last promote and stays loaded until {until}: `vaticctl rollout rollback {}` returns to it",
            model.name
        )?;
    }
    Ok(())
}

fn print_status(status: &RolloutStatus, out: &mut impl Write) -> anyhow::Result<()> {
    let model = &status.model;
    print_split(model, out)?;
    let mut table = output::table(["version", "state", "labels", "ready"]);
    for v in model
        .versions
        .iter()
        .filter(|v| v.state != VersionState::Retired)
    {
        let labels = model
            .labels
            .iter()
            .filter(|(_, n)| **n == v.version)
            .map(|(l, _)| l.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let ready = match status.ready.get(&v.version) {
            Some(true) => "yes",
            Some(false) => "no",
            None => "-",
        };
        table.add_row([
            v.version.to_string(),
            v.state.to_string(),
            labels,
            ready.to_string(),
        ]);
    }
    output::align_right(&mut table, &[0]);
    writeln!(out, "{table}")?;
    if status.sides.is_empty() {
        writeln!(
            out,
            "no requests counted on a rollout side in the last {}",
            duration(status.window_secs)
        )?;
        return Ok(());
    }
    writeln!(out, "over the last {}:", duration(status.window_secs))?;
    let mut table = output::table([
        "side",
        "version",
        "requests",
        "errors",
        "p50 ms",
        "p99 ms",
        "compared",
        "dropped",
        "agreement",
        "largest difference",
    ]);
    let ms = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.1}"));
    for s in &status.sides {
        let shadow = s.side == "shadow";
        let or_dash = |v: String| if shadow { v } else { "-".into() };
        let largest = s
            .outputs
            .iter()
            .map(|(name, d)| format!("{name} {:.4}", d.max_abs))
            .collect::<Vec<_>>()
            .join(", ");
        table.add_row([
            s.side.clone(),
            s.version.to_string(),
            s.requests.to_string(),
            format!("{:.2}%", s.error_ratio * 100.0),
            ms(s.p50_ms),
            ms(s.p99_ms),
            or_dash(s.compared.to_string()),
            or_dash(s.dropped.to_string()),
            or_dash(
                s.agreement
                    .map_or_else(|| "-".into(), |a| format!("{:.2}%", a * 100.0)),
            ),
            or_dash(if largest.is_empty() {
                "-".into()
            } else {
                largest
            }),
        ]);
    }
    output::align_right(&mut table, &[1, 2, 3, 4, 5, 6, 7, 8]);
    writeln!(out, "{table}")?;
    Ok(())
}

/// `5m`, `90s`, `1h`.
fn duration(secs: u64) -> String {
    match secs {
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn print_history(events: &[RolloutEvent], out: &mut impl Write) -> anyhow::Result<()> {
    let mut table = output::table(["at", "actor", "action", "version", "detail"]);
    for e in events {
        table.add_row([
            e.at.clone(),
            e.actor.clone(),
            e.action.clone(),
            e.version.map_or_else(|| "-".into(), |v| v.to_string()),
            e.detail.to_string(),
        ]);
    }
    output::align_right(&mut table, &[3]);
    writeln!(out, "{table}")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_is_seconds_or_a_duration() {
        assert_eq!(window("300"), Ok(300));
        assert_eq!(window("90s"), Ok(90));
        assert_eq!(window("15m"), Ok(900));
        assert_eq!(window("24h"), Ok(86_400));
        for bad in ["0", "25h", "5x", "m", "-5m", ""] {
            assert!(window(bad).unwrap_err().contains("not a window"), "{bad}");
        }
        assert_eq!(duration(300), "5m");
        assert_eq!(duration(90), "90s");
    }

    #[test]
    fn multiples_and_shares_read_as_operators_write_them() {
        assert_eq!(multiple("2x"), Ok(2.0));
        assert_eq!(multiple("1.5"), Ok(1.5));
        for bad in ["0.5x", "x", "two", "infx"] {
            assert!(
                multiple(bad).unwrap_err().contains("not a multiple"),
                "{bad}"
            );
        }
        assert_eq!(millis("5ms"), Ok(5.0));
        assert_eq!(millis("1s"), Ok(1000.0));
        assert_eq!(millis("2"), Ok(2.0));
        assert!(millis("-1ms").unwrap_err().contains("not a duration"));
        assert_eq!(fraction("99%"), Ok(0.99));
        assert_eq!(fraction("0.5%"), Ok(0.005));
        assert_eq!(fraction("0.9"), Ok(0.9));
        for bad in ["101%", "2", "-1%", "%"] {
            assert!(fraction(bad).unwrap_err().contains("not a share"), "{bad}");
        }
    }

    #[test]
    fn a_share_is_a_whole_percent() {
        assert_eq!(percent("10"), Ok(10));
        assert_eq!(percent("25%"), Ok(25));
        assert_eq!(percent("100"), Ok(100));
        for bad in ["101", "-1", "2.5", "ten", ""] {
            assert!(percent(bad).unwrap_err().contains("whole number"), "{bad}");
        }
    }
}
