//! What `vaticctl bench` prints: one row per level (a table, or JSON), and a progress line on a
//! terminal while a level runs.

use super::load::{Measured, Progress};
use crate::output::{self, OutputFormat};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Latency of the successful requests, in microseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p99_9: f64,
    /// The slowest.
    pub max: f64,
    /// The mean.
    pub mean: f64,
}

/// One level's results.
#[derive(Debug, Clone, Serialize)]
pub struct LevelReport {
    /// Closed loop: requests in flight.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
    /// Open loop: requests a second asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// `v2-json`, `v2-binary` or `tfserving`.
    pub protocol: &'static str,
    /// Batch rows per request.
    pub rows_per_request: u64,
    /// Requests sent during the warm-up, not measured.
    pub warmup_requests: u64,
    /// Requests measured, successful or not.
    pub requests: u64,
    /// Of which answered 2xx.
    pub succeeded: u64,
    /// Measured time, in seconds.
    pub seconds: f64,
    /// Successful requests a second.
    pub throughput: f64,
    /// Batch rows a second (`throughput * rows_per_request`).
    pub rows_per_second: f64,
    /// Latency in microseconds; none when no request succeeded.
    pub latency_us: Option<Latency>,
    /// Failed requests by HTTP status or by what went wrong (`connect`, `io`, `timeout`).
    pub errors: BTreeMap<String, u64>,
}

impl LevelReport {
    /// The report of a measured phase.
    pub fn new(
        pace: (Option<usize>, Option<f64>),
        protocol: &'static str,
        rows: u64,
        warmup_requests: u64,
        measured: &Measured,
    ) -> LevelReport {
        let h = &measured.latency;
        let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        let succeeded = h.len();
        let seconds = measured.elapsed.as_secs_f64();
        let throughput = if seconds > 0.0 {
            succeeded as f64 / seconds
        } else {
            0.0
        };
        LevelReport {
            concurrency: pace.0,
            rate: pace.1,
            protocol,
            rows_per_request: rows,
            warmup_requests,
            requests: measured.requests,
            succeeded,
            seconds,
            throughput,
            rows_per_second: throughput * rows as f64,
            latency_us: (succeeded > 0).then(|| Latency {
                p50: us(0.5),
                p90: us(0.9),
                p99: us(0.99),
                p99_9: us(0.999),
                max: h.max() as f64 / 1000.0,
                mean: h.mean() / 1000.0,
            }),
            errors: measured.errors.clone(),
        }
    }

    /// Failed requests.
    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Prints the reports as a table (latency in milliseconds) or as a JSON array.
pub fn print(
    reports: &[LevelReport],
    format: OutputFormat,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    if format == OutputFormat::Json {
        return output::print_json(&reports, out);
    }
    let mut table = output::table([
        "load", "protocol", "rows", "requests", "req/s", "rows/s", "p50 ms", "p90 ms", "p99 ms",
        "p99.9 ms", "max ms", "errors",
    ]);
    for r in reports {
        let load = match (r.concurrency, r.rate) {
            (Some(c), _) => format!("c={c}"),
            (_, Some(rate)) => format!("rate={rate}/s"),
            _ => String::new(),
        };
        let ms = |f: fn(&Latency) -> f64| {
            r.latency_us
                .as_ref()
                .map_or("-".to_string(), |l| format!("{:.3}", f(l) / 1000.0))
        };
        let errors = if r.errors.is_empty() {
            "0".to_string()
        } else {
            r.errors
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        table.add_row([
            load,
            r.protocol.to_string(),
            r.rows_per_request.to_string(),
            r.requests.to_string(),
            format!("{:.1}", r.throughput),
            format!("{:.1}", r.rows_per_second),
            ms(|l| l.p50),
            ms(|l| l.p90),
            ms(|l| l.p99),
            ms(|l| l.p99_9),
            ms(|l| l.max),
            errors,
        ]);
    }
    output::align_right(&mut table, &[2, 3, 4, 5, 6, 7, 8, 9, 10]);
    writeln!(out, "{table}")?;
    Ok(())
}

/// Prints a progress line on standard error every second while a level runs, when standard
/// error is a terminal. Ends when the returned handle is aborted.
pub fn show_progress(
    label: String,
    progress: Arc<Progress>,
) -> Option<tokio::task::JoinHandle<()>> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    Some(tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tick.tick().await;
            let done = progress.done.load(Ordering::Relaxed);
            let failed = progress.failed.load(Ordering::Relaxed);
            let secs = start.elapsed().as_secs_f64();
            eprint!(
                "\r{label}  {secs:>5.1} s  {done} requests  {:.1} req/s  {failed} errors   ",
                done as f64 / secs
            );
        }
    }))
}

/// Clears the progress line.
pub fn end_progress(handle: Option<tokio::task::JoinHandle<()>>) {
    if let Some(h) = handle {
        h.abort();
        eprint!("\r\x1b[2K");
    }
}
