//! Batch jobs: a file of rows uploaded once ([`upload`]), stored in chunks in the database, run
//! by every api replica's [`runner`] at low priority on the capacity real-time requests leave,
//! and read back in input order ([`results`]).

pub mod results;
pub mod rows;
pub mod runner;
pub mod upload;

use serde::{Deserialize, Serialize};
use vatic_schema::TensorMetadata;

/// Batch jobs' settings (`[batch]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchSettings {
    /// Whether this replica runs jobs' rows (every replica accepts and serves jobs).
    pub run: bool,
    /// Most rows in one chunk: the unit that is claimed, run and stored at once.
    pub chunk_rows: usize,
    /// Most bytes of input in one chunk (a row larger than this makes a chunk of its own).
    pub chunk_bytes: usize,
    /// Rows stacked into one inference request, at most; no more than the version's
    /// `max_batch_size` either.
    pub rows_per_request: usize,
    /// Chunks this replica runs at once, on as many idle-class threads (at most the cores).
    pub concurrency: usize,
    /// Requests of one chunk in flight at once.
    pub requests_per_chunk: usize,
    /// How long a claim on a chunk lasts without renewal, in milliseconds: a chunk whose
    /// process died is taken again after this.
    pub lease_ms: u64,
    /// How often an idle runner looks for work, in milliseconds.
    pub poll_ms: u64,
    /// How long a chunk whose rows could not run (no worker answered) waits before it is
    /// claimed again, in milliseconds.
    pub retry_after_ms: u64,
    /// Claims of a chunk after which rows that still cannot run (no worker answers them)
    /// fail, each with its error, instead of the chunk being put back again.
    pub max_attempts: u32,
    /// Largest input file accepted, in bytes (larger: 413).
    pub max_upload_bytes: u64,
    /// Days an ended job and its results are kept.
    pub keep_days: u32,
    /// An upload that received nothing for this many seconds is removed.
    pub abandoned_upload_secs: u64,
}

impl Default for BatchSettings {
    fn default() -> Self {
        BatchSettings {
            run: true,
            chunk_rows: 1024,
            chunk_bytes: 4 << 20,
            rows_per_request: 32,
            concurrency: 2,
            requests_per_chunk: 4,
            lease_ms: 60_000,
            poll_ms: 500,
            retry_after_ms: 2_000,
            max_attempts: 10,
            max_upload_bytes: 16 << 30,
            keep_days: 7,
            abandoned_upload_secs: 600,
        }
    }
}

impl BatchSettings {
    /// Checks what serde cannot, naming the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        for (key, value) in [
            ("batch.chunk_rows", self.chunk_rows as u64),
            ("batch.chunk_bytes", self.chunk_bytes as u64),
            ("batch.rows_per_request", self.rows_per_request as u64),
            ("batch.concurrency", self.concurrency as u64),
            ("batch.requests_per_chunk", self.requests_per_chunk as u64),
            ("batch.lease_ms", self.lease_ms),
            ("batch.poll_ms", self.poll_ms),
            ("batch.max_attempts", u64::from(self.max_attempts)),
            ("batch.max_upload_bytes", self.max_upload_bytes),
            ("batch.abandoned_upload_secs", self.abandoned_upload_secs),
        ] {
            if value == 0 {
                anyhow::bail!("{key}: must be at least 1");
            }
        }
        if self.lease_ms < 300 {
            anyhow::bail!("batch.lease_ms: at least 300 (a claim is renewed every third of it)");
        }
        Ok(())
    }
}

/// How a job's rows are read, fixed when it is submitted and stored with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Layout {
    /// CSV: the header's column names (the input's columns, in order).
    #[serde(default)]
    pub columns: Vec<String>,
    /// The model's inputs when the job was submitted.
    pub inputs: Vec<TensorMetadata>,
    /// The model's outputs when the job was submitted: the CSV results' columns.
    pub outputs: Vec<String>,
}
