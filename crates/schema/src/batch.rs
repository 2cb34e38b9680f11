//! Batch jobs (a vatic extension): a file of rows run against one model at low priority, its
//! progress, and its results.

use serde::{Deserialize, Serialize};

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Its file is being received.
    Uploading,
    /// Received whole; no row has run yet.
    Queued,
    /// Rows are running.
    Running,
    /// Every row has a result (some of which may be errors: see `rows_failed`).
    Succeeded,
    /// The job could not run (its `error` says why).
    Failed,
    /// Cancelled: rows not run by then never will be.
    Cancelled,
}

impl JobState {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Uploading => "uploading",
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Whether the job has ended: nothing more will run unless it is retried.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

impl std::str::FromStr for JobState {
    type Err = String;

    fn from_str(s: &str) -> Result<JobState, String> {
        [
            JobState::Uploading,
            JobState::Queued,
            JobState::Running,
            JobState::Succeeded,
            JobState::Failed,
            JobState::Cancelled,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
        .ok_or_else(|| format!("unknown job state '{s}'"))
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The form of a job's input file or of its results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    /// JSON Lines: one JSON value per line.
    Jsonl,
    /// Comma-separated values with a header row.
    Csv,
}

impl FileFormat {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            FileFormat::Jsonl => "jsonl",
            FileFormat::Csv => "csv",
        }
    }
}

impl std::str::FromStr for FileFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<FileFormat, String> {
        match s {
            "jsonl" | "ndjson" => Ok(FileFormat::Jsonl),
            "csv" => Ok(FileFormat::Csv),
            _ => Err(format!("unknown format '{s}': jsonl or csv")),
        }
    }
}

impl std::fmt::Display for FileFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A batch job as `GET /v2/batch/jobs/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchJob {
    /// Its id.
    pub id: String,
    /// The model its rows run on.
    pub model: String,
    /// The version it was submitted for, if it named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The label it was submitted for, if it named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Where it is.
    pub state: JobState,
    /// The input file's form.
    pub input_format: FileFormat,
    /// The results' form when `.../results` is asked for none.
    pub output_format: FileFormat,
    /// Rows in the input.
    pub rows_total: u64,
    /// Rows with a result, failed ones included.
    pub rows_done: u64,
    /// Rows whose result is an error.
    pub rows_failed: u64,
    /// Bytes of input received.
    pub input_bytes: u64,
    /// Rows per second since the job started running (or was last retried).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows_per_second: Option<f64>,
    /// Seconds until every row is done at that rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<f64>,
    /// Why the job failed or was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The id of the API key that submitted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// When it was submitted (RFC 3339).
    pub created_at: String,
    /// When its first rows ran (or it was last retried).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

impl BatchJob {
    /// Fills in the rate and the ETA from the `rows` done in the `running_secs` seconds since
    /// it last started.
    pub fn with_progress(mut self, rows: u64, running_secs: Option<f64>) -> BatchJob {
        self.rows_per_second = None;
        self.eta_seconds = None;
        if let Some(secs) = running_secs.filter(|s| *s > 0.0) {
            let rate = rows as f64 / secs;
            self.rows_per_second = Some(rate);
            if !self.state.is_final() && rate > 0.0 {
                let left = self.rows_total.saturating_sub(self.rows_done);
                self.eta_seconds = Some(left as f64 / rate);
            }
        }
        self
    }
}

/// The answer of `GET /v2/batch/jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchJobList {
    /// Newest first.
    pub jobs: Vec<BatchJob>,
}
