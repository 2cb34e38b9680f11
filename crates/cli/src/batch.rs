//! `vaticctl batch`: run a file of rows through a model as a batch job, follow it, read its
//! results.

use crate::client::{Client, Submit};
use crate::output::{self, OutputFormat};
use crate::GlobalArgs;
use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;
use vatic_schema::batch::{BatchJob, FileFormat, JobState};

/// `vaticctl batch`.
#[derive(Debug, Args)]
pub struct BatchArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: BatchCommand,
}

/// A file's form on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// JSON Lines: a V2 request body or a TF-Serving instance per line
    Jsonl,
    /// CSV with a header row, the columns of the model's one input
    Csv,
}

impl From<Format> for FileFormat {
    fn from(f: Format) -> FileFormat {
        match f {
            Format::Jsonl => FileFormat::Jsonl,
            Format::Csv => FileFormat::Csv,
        }
    }
}

/// The `batch` subcommands.
#[derive(Debug, Subcommand)]
pub enum BatchCommand {
    /// Upload a file of rows as a job; prints the job (its id) at once, or follows it with --wait
    Submit(SubmitArgs),
    /// Show a job: state, rows done and failed, rate, ETA
    Status {
        /// The job's id
        job: String,
        /// Follow the job with a progress bar until it ends
        #[arg(long)]
        wait: bool,
    },
    /// Write a job's results in input order: one line (or CSV row) per input row, failed rows
    /// with their error
    Results {
        /// The job's id
        job: String,
        /// Write them to this file instead of standard output
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// jsonl or csv [default: the form the job was submitted with]
        #[arg(long, value_enum)]
        format: Option<Format>,
    },
    /// Cancel a job: rows not run yet never will be (retry runs them)
    Cancel {
        /// The job's id
        job: String,
    },
    /// Run a job's failed rows again, and the rows a cancel left unrun
    Retry {
        /// The job's id
        job: String,
        /// Follow the job with a progress bar until it ends
        #[arg(long)]
        wait: bool,
    },
    /// List jobs, newest first (a key's own; every job with an admin key)
    List {
        /// Most jobs to list
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
    },
}

/// `vaticctl batch submit`. `--version` is the model version here, not vaticctl's.
#[derive(Debug, Args)]
#[command(disable_version_flag = true)]
pub struct SubmitArgs {
    /// The file: JSON Lines (.jsonl, .ndjson) or CSV (.csv), gzip-compressed when it ends in .gz
    pub file: PathBuf,
    /// The model to run it through
    #[arg(long)]
    pub model: String,
    /// The version [default: the stable one]
    #[arg(long, conflicts_with = "label", value_parser = clap::value_parser!(u64).range(1..))]
    pub version: Option<u64>,
    /// The label of the version
    #[arg(long)]
    pub label: Option<String>,
    /// The file's form [default: from its extension]
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// The results' form [default: the file's]
    #[arg(long, value_enum)]
    pub results_format: Option<Format>,
    /// Follow the job with a progress bar until it ends
    #[arg(long)]
    pub wait: bool,
}

/// How often --wait asks for the job.
const POLL: Duration = Duration::from_secs(1);

/// Runs `vaticctl batch`.
pub fn run(global: &GlobalArgs, args: &BatchArgs) -> anyhow::Result<()> {
    let client = Client::new(global)?;
    let mut out = std::io::stdout().lock();
    match &args.command {
        BatchCommand::Submit(submit) => {
            let gzip = is_gzip(&submit.file);
            let format = match submit.format {
                Some(f) => f.into(),
                None => format_of(&submit.file)?,
            };
            let job = client.submit_job(Submit {
                model: &submit.model,
                version: submit.version,
                label: submit.label.as_deref(),
                file: &submit.file,
                format,
                output: submit.results_format.map_or(format, Into::into),
                gzip,
            })?;
            eprintln!("batch job {} submitted: {} rows", job.id, job.rows_total);
            finish(&client, job, submit.wait, global.output, &mut out)
        }
        BatchCommand::Status { job, wait } => {
            let job = client.job(job)?;
            finish(&client, job, *wait, global.output, &mut out)
        }
        BatchCommand::Results { job, file, format } => {
            let format = format.map(Into::into);
            let state = match file {
                Some(path) => {
                    let mut f = std::io::BufWriter::new(
                        std::fs::File::create(path)
                            .with_context(|| format!("cannot create {}", path.display()))?,
                    );
                    let state = client.job_results(job, format, &mut f)?;
                    f.flush()?;
                    state
                }
                None => client.job_results(job, format, &mut out)?,
            };
            if state != JobState::Succeeded.as_str() {
                eprintln!("batch job {job} is {state}: the results hold the rows done so far");
            }
            Ok(())
        }
        BatchCommand::Cancel { job } => print(&client.cancel_job(job)?, global.output, &mut out),
        BatchCommand::Retry { job, wait } => {
            let job = client.retry_job(job)?;
            finish(&client, job, *wait, global.output, &mut out)
        }
        BatchCommand::List { limit } => {
            let jobs = client.jobs(*limit)?;
            match global.output {
                OutputFormat::Json => output::print_json(&jobs, &mut out),
                OutputFormat::Table => {
                    writeln!(out, "{}", jobs_table(&jobs))?;
                    Ok(())
                }
            }
        }
    }
}

/// Whether a file is gzip-compressed, by its extension.
fn is_gzip(file: &Path) -> bool {
    file.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gz"))
}

/// A file's form by its extension (the one before `.gz` for a compressed file).
fn format_of(file: &Path) -> anyhow::Result<FileFormat> {
    let inner = if is_gzip(file) {
        Path::new(file.file_stem().unwrap_or_default())
    } else {
        file
    };
    match inner.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("jsonl" | "ndjson") => Ok(FileFormat::Jsonl),
        Some("csv") => Ok(FileFormat::Csv),
        _ => bail!(
            "{}: the extension says neither JSON Lines (.jsonl, .ndjson) nor CSV (.csv); name the form with --format",
            file.display()
        ),
    }
}

/// Prints the job, after following it to its end with `wait`; an ended job that failed or
/// was cancelled is an error then.
fn finish(
    client: &Client,
    mut job: BatchJob,
    wait: bool,
    format: OutputFormat,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    if wait {
        job = follow(client, job)?;
    }
    print(&job, format, out)?;
    if !wait {
        return Ok(());
    }
    match job.state {
        JobState::Failed | JobState::Cancelled => bail!(
            "batch job {} {}: {}",
            job.id,
            job.state,
            job.error.as_deref().unwrap_or("no reason given")
        ),
        _ => {
            if job.rows_failed > 0 {
                eprintln!(
                    "{} of {} rows failed; `vaticctl batch results {}` shows why",
                    job.rows_failed, job.rows_total, job.id
                );
            }
            Ok(())
        }
    }
}

/// Polls the job until it ends, with a progress bar of its rows on standard error.
fn follow(client: &Client, mut job: BatchJob) -> anyhow::Result<BatchJob> {
    let bar = ProgressBar::with_draw_target(Some(job.rows_total), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} rows, {per_sec}, {eta} left")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    while !job.state.is_final() {
        bar.set_message(job.state.to_string());
        bar.set_position(job.rows_done);
        std::thread::sleep(POLL);
        job = client.job(&job.id)?;
    }
    bar.finish_and_clear();
    Ok(job)
}

fn print(job: &BatchJob, format: OutputFormat, out: &mut impl Write) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => output::print_json(job, out),
        OutputFormat::Table => {
            writeln!(out, "{}", jobs_table(std::slice::from_ref(job)))?;
            if let Some(error) = &job.error {
                writeln!(out, "{error}")?;
            }
            Ok(())
        }
    }
}

fn jobs_table(jobs: &[BatchJob]) -> comfy_table::Table {
    let mut table = output::table([
        "id", "model", "state", "rows", "done", "failed", "rows/s", "ETA", "created",
    ]);
    for job in jobs {
        let model = match (&job.version, &job.label) {
            (Some(v), _) => format!("{}:{v}", job.model),
            (None, Some(l)) => format!("{}@{l}", job.model),
            (None, None) => job.model.clone(),
        };
        table.add_row([
            job.id.clone(),
            model,
            job.state.to_string(),
            job.rows_total.to_string(),
            job.rows_done.to_string(),
            job.rows_failed.to_string(),
            job.rows_per_second
                .map_or_else(String::new, |r| format!("{r:.0}")),
            job.eta_seconds.map_or_else(String::new, |s| {
                humantime::format_duration(Duration::from_secs(s.ceil() as u64)).to_string()
            }),
            job.created_at.clone(),
        ]);
    }
    output::align_right(&mut table, &[3, 4, 5, 6]);
    table
}
