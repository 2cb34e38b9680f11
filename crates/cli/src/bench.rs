//! `vaticctl bench`: a load generator for a served model. It builds one request from the
//! model's metadata (or a V2 request file), then for each concurrency level or rate warms up
//! and measures: throughput, latency percentiles from an HDR histogram, and errors by status.

mod body;
mod load;
mod report;

pub use body::Protocol;
pub use report::{Latency, LevelReport};

use crate::client::{Client, ModelRef};
use crate::infer::RequestFile;
use crate::GlobalArgs;
use anyhow::{bail, Context};
use clap::Args;
use load::{Pace, Pool, Progress, Stop, Target};
use reqwest::Url;
use rustls::pki_types::ServerName;
use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Arguments of `vaticctl bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Model name
    pub model: String,
    /// Model version [default: the server's choice, the stable version]
    #[arg(long, value_name = "V")]
    pub model_version: Option<String>,
    /// Closed loop: requests kept in flight, one connection each; each level runs in turn
    #[arg(
        short = 'c',
        long,
        value_delimiter = ',',
        default_value = "1",
        value_name = "N,..."
    )]
    pub concurrency: Vec<usize>,
    /// Open loop: requests a second, sent on schedule whatever the answers' pace; latency
    /// counts from when each request was due. Each rate runs in turn (instead of -c)
    #[arg(long, value_delimiter = ',', value_name = "R,...")]
    pub rate: Vec<f64>,
    /// Open loop: connections at most, so requests in flight at most
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub connections: usize,
    /// How long each level is measured, e.g. 30s, 500ms, 2m [default: 10s]
    #[arg(short = 'd', long, value_parser = humantime::parse_duration, value_name = "TIME")]
    pub duration: Option<Duration>,
    /// Requests measured at each level (instead of --duration)
    #[arg(short = 'n', long, conflicts_with = "duration", value_name = "N")]
    pub requests: Option<u64>,
    /// Warm-up before each level, at the same load, not measured
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s", value_name = "TIME")]
    pub warmup: Duration,
    /// The requests' wire form
    #[arg(long, value_enum, default_value_t = Protocol::V2Json)]
    pub protocol: Protocol,
    /// Batch rows per request, of random data
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub rows: u64,
    /// A V2 JSON request to send instead of random data
    #[arg(long, value_name = "FILE", conflicts_with = "rows")]
    pub data: Option<PathBuf>,
    /// Seed of the random data
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub seed: u64,
    /// Share of requests that repeat the one request; the others each carry an input no other
    /// request has (its first element changed), as a response cache sees them. Needs
    /// `--protocol v2-binary` below 100%
    #[arg(long, default_value = "100%", value_parser = parse_share, value_name = "PERCENT")]
    pub repeat: f64,
    /// Longest wait for one answer; a request still waiting then counts as a `timeout` error
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s", value_name = "TIME")]
    pub timeout: Duration,
    /// Threads the load runs on; keep it low when the server shares the machine
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub threads: usize,
    /// Poll for answers instead of sleeping until they arrive: each load thread takes a CPU to
    /// itself, and the latency measured no longer includes waking it. For low concurrency on a
    /// machine with CPUs to spare; it takes CPU from a server on the same machine
    #[arg(long)]
    pub busy_poll: bool,
}

impl BenchArgs {
    /// The levels to run, refusing values that cannot be run.
    fn paces(&self) -> anyhow::Result<Vec<Pace>> {
        if self.threads == 0 {
            bail!("--threads must be at least 1");
        }
        if self.rows == 0 {
            bail!("--rows must be at least 1");
        }
        if self.requests == Some(0) || self.duration == Some(Duration::ZERO) {
            bail!("--requests and --duration must be more than 0");
        }
        if !self.rate.is_empty() {
            if self.connections == 0 {
                bail!("--connections must be at least 1");
            }
            if let Some(r) = self.rate.iter().find(|r| !(r.is_finite() && **r > 0.0)) {
                bail!("--rate {r}: a rate is a number of requests a second, more than 0");
            }
            return Ok(self
                .rate
                .iter()
                .map(|&rate| Pace::Open {
                    rate,
                    connections: self.connections,
                })
                .collect());
        }
        if self.concurrency.contains(&0) {
            bail!("--concurrency levels must be at least 1");
        }
        Ok(self
            .concurrency
            .iter()
            .map(|&concurrency| Pace::Closed { concurrency })
            .collect())
    }
}

/// The server's socket address and `Host` header, from `--server`, and whether it speaks TLS.
fn server_address(server: &str) -> anyhow::Result<(std::net::SocketAddr, String, bool)> {
    let url = Url::parse(server).with_context(|| format!("--server '{server}' is not a URL"))?;
    let https = match url.scheme() {
        "http" => false,
        "https" => true,
        _ => bail!("--server '{server}' must be an http:// or https:// URL"),
    };
    let host = url
        .host_str()
        .with_context(|| format!("--server '{server}' names no host"))?;
    let port = url.port_or_known_default().unwrap_or(80);
    let addr = (host, port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {host}"))?
        .next()
        .with_context(|| format!("{host} has no address"))?;
    Ok((addr, format!("{host}:{port}"), https))
}

/// The TLS connector of `--cacert`, `--cert` and `--key`, and the name the server's
/// certificate is checked for (the URL's host).
fn tls_target(
    global: &GlobalArgs,
    authority: &str,
) -> anyhow::Result<(tokio_rustls::TlsConnector, ServerName<'static>)> {
    let config = crate::client::tls_config(global)?;
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let name = ServerName::try_from(host.to_string())
        .with_context(|| format!("--server: '{host}' is not a host name or address"))?;
    Ok((tokio_rustls::TlsConnector::from(config), name))
}

/// A share given as a percentage: `90%` or `90`, from 0 to 100.
fn parse_share(text: &str) -> Result<f64, String> {
    let number = text.trim().trim_end_matches('%');
    match number.parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p / 100.0),
        _ => Err(format!("'{text}' is not a percentage from 0 to 100")),
    }
}

/// Runs `vaticctl bench`.
pub fn run(global: &GlobalArgs, args: &BenchArgs) -> anyhow::Result<()> {
    let paces = args.paces()?;
    let (addr, authority, https) = server_address(&global.server)?;
    let tls = if https {
        Some(tls_target(global, &authority)?)
    } else {
        None
    };
    let authorization = crate::client::auth_headers(global)?.remove(reqwest::header::AUTHORIZATION);
    let model = ModelRef {
        name: &args.model,
        version: args.model_version.as_deref(),
    };
    let metadata = Client::new(global)?.model_metadata(model)?;
    let file = args.data.as_deref().map(RequestFile::read).transpose()?;
    let request = match &file {
        Some(f) => body::file_request(f)?,
        None => body::random_request(&metadata, args.rows, args.seed)?,
    };
    let mut body = body::encode(
        &request,
        file.as_ref(),
        args.protocol,
        body::path(args.protocol, model),
    )?;
    if args.repeat < 1.0 {
        body.vary(&request, args.protocol, args.repeat)?;
    }
    let rows = body.rows;
    let target = Arc::new(Target {
        addr,
        authority,
        body,
        timeout: args.timeout,
        tls,
        authorization,
    });
    let stop = match (args.requests, args.duration) {
        (Some(n), _) => Stop::Requests(n),
        (None, d) => Stop::Duration(d.unwrap_or(Duration::from_secs(10))),
    };
    let runtime = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(args.threads);
        b
    }
    .enable_all()
    .build()
    .context("cannot start the load generator's runtime")?;
    let reports = runtime.block_on(async {
        let mut reports = Vec::new();
        for pace in paces {
            let (label, shown) = match pace {
                Pace::Closed { concurrency } => {
                    (format!("c={concurrency}"), (Some(concurrency), None))
                }
                Pace::Open { rate, .. } => (format!("rate={rate}/s"), (None, Some(rate))),
            };
            let mut pool = Pool::new(pace, if args.busy_poll { args.threads } else { 0 });
            let warmup = if args.warmup.is_zero() {
                0
            } else {
                pool.run(&target, pace, Stop::Duration(args.warmup), Arc::default())
                    .await
                    .requests
            };
            let progress = Arc::new(Progress::default());
            let shown_progress = report::show_progress(label, progress.clone());
            let measured = pool.run(&target, pace, stop, progress).await;
            report::end_progress(shown_progress);
            reports.push(LevelReport::new(
                shown,
                args.protocol.name(),
                rows,
                warmup,
                &measured,
            ));
        }
        reports
    });
    report::print(&reports, global.output, &mut std::io::stdout().lock())?;
    let failed: u64 = reports.iter().map(LevelReport::failed).sum();
    if failed > 0 {
        let total: u64 = reports.iter().map(|r| r.requests).sum();
        bail!("{failed} of {total} requests failed (see errors above)");
    }
    Ok(())
}
