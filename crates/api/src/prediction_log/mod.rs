//! The prediction log writer: records are handed over without waiting for the database, written
//! in batches by one task, kept in a local spool file while the database is away, replayed when
//! it returns and flushed on shutdown. Nothing accepted is lost: a record is either in the
//! `predictions` table (once, inserts being idempotent by id), or in the spool, or counted as
//! dropped (the queue was full and the spool could not be written) or rejected (the database
//! refused that record's content).

mod spool;
mod writer;

use prometheus::{Gauge, IntCounter, IntGauge};
use serde::{Deserialize, Serialize};
use spool::Spool;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::task::JoinHandle;
use vatic_store::{DataKeys, PredictionRecord, Store};
use writer::Writer;

pub use spool::{ACTIVE as SPOOL_FILE, REPLAYING as SPOOL_REPLAYING_FILE};

/// How the prediction log buffers and writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PredictionLogSettings {
    /// Records waiting for the writer; beyond this they go straight to the spool file.
    pub queue_capacity: usize,
    /// Most records per insert.
    pub batch_size: usize,
    /// Longest wait, in milliseconds, for a batch to fill before it is written (0: write what
    /// is queued at once).
    pub flush_interval_ms: u64,
    /// Folder of the spool file, which holds records while the database cannot take them.
    pub spool_dir: PathBuf,
    /// Milliseconds between attempts to replay the spool while the database is unreachable.
    pub retry_interval_ms: u64,
    /// File of data keys (`ID=BASE64` lines, the last one in use): when set, or when the
    /// `VATIC_DATA_KEYS` environment variable holds such entries, payloads are encrypted before
    /// they are queued, spooled or stored (docs/security.md).
    pub data_keys_file: Option<PathBuf>,
}

impl Default for PredictionLogSettings {
    fn default() -> Self {
        PredictionLogSettings {
            queue_capacity: 10_000,
            batch_size: 2000,
            flush_interval_ms: 200,
            spool_dir: PathBuf::from("data/spool"),
            retry_interval_ms: 1000,
            data_keys_file: None,
        }
    }
}

/// The environment variable that may hold the data keys instead of a file.
pub const DATA_KEYS_ENV: &str = "VATIC_DATA_KEYS";

/// Reads the data keys from `data_keys_file` or [`DATA_KEYS_ENV`] (not both); `None` when
/// neither is set, and payloads are stored in clear.
pub fn data_keys(settings: &PredictionLogSettings) -> anyhow::Result<Option<DataKeys>> {
    let from_env = match std::env::var(DATA_KEYS_ENV) {
        Ok(v) => Some(v).filter(|v| !v.trim().is_empty()),
        Err(std::env::VarError::NotPresent) => None,
        Err(std::env::VarError::NotUnicode(_)) => {
            anyhow::bail!("{DATA_KEYS_ENV} is not valid UTF-8: it holds ID=BASE64 entries")
        }
    };
    let text = match (&settings.data_keys_file, from_env) {
        (Some(_), Some(_)) => anyhow::bail!(
            "prediction_log.data_keys_file and {DATA_KEYS_ENV} are both set: give the data keys in one place"
        ),
        (None, None) => return Ok(None),
        (None, Some(text)) => (text, DATA_KEYS_ENV.to_string()),
        (Some(path), None) => {
            let origin = format!("prediction_log.data_keys_file {}", path.display());
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("{origin}: cannot read it: {e}"))?;
            (text, origin)
        }
    };
    Ok(Some(DataKeys::parse(&text.0, &text.1)?))
}

/// Largest queue accepted; the channel refuses more than `usize::MAX >> 3`.
const MAX_QUEUE_CAPACITY: usize = 100_000_000;

impl PredictionLogSettings {
    /// Checks the values, naming the key at fault; `origin` is the section they were read from
    /// (e.g. `prediction_log`).
    pub fn validate(&self, origin: &str) -> anyhow::Result<()> {
        let bad = |key: &str, why: &str| anyhow::anyhow!("{origin}: {key} {why}");
        if self.queue_capacity == 0 || self.queue_capacity > MAX_QUEUE_CAPACITY {
            return Err(bad(
                "queue_capacity",
                &format!("must be between 1 and {MAX_QUEUE_CAPACITY}"),
            ));
        }
        if self.batch_size == 0 {
            return Err(bad("batch_size", "must be at least 1"));
        }
        if self.retry_interval_ms == 0 {
            return Err(bad("retry_interval_ms", "must be at least 1"));
        }
        if self.spool_dir.as_os_str().is_empty() {
            return Err(bad("spool_dir", "must name a folder"));
        }
        Ok(())
    }
}

/// What the prediction log has done since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PredictionLogStats {
    /// Rows inserted straight from the queue.
    pub written: u64,
    /// Records appended to the spool (queue full, database unreachable, or after shutdown).
    pub spooled: u64,
    /// Rows inserted from the spool.
    pub replayed: u64,
    /// Records the database refused for their content (logged, not retried).
    pub rejected: u64,
    /// Records lost: the queue was full and the spool could not be written.
    pub dropped: u64,
    /// Records handed over and not yet written or spooled.
    pub queue_depth: u64,
    /// Bytes in the spool files not yet in the database.
    pub spool_bytes: u64,
}

/// The counters, kept as Prometheus metrics so `/metrics` and the admin API read the same.
struct Counters {
    written: IntCounter,
    spooled: IntCounter,
    replayed: IntCounter,
    rejected: IntCounter,
    dropped: IntCounter,
    queued: IntGauge,
    spool_bytes: IntGauge,
    lag: Gauge,
}

impl Counters {
    fn new() -> Counters {
        let counter = |name: &str, help: &str| IntCounter::new(name, help).expect("valid");
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("valid");
        Counters {
            written: counter(
                "vatic_prediction_log_written_total",
                "Prediction records inserted from the queue.",
            ),
            spooled: counter(
                "vatic_prediction_log_spooled_total",
                "Prediction records appended to the spool file (database away or queue full).",
            ),
            replayed: counter(
                "vatic_prediction_log_replayed_total",
                "Prediction records inserted from the spool file.",
            ),
            rejected: counter(
                "vatic_prediction_log_rejected_total",
                "Prediction records the database refused for their content and that were set aside.",
            ),
            dropped: counter(
                "vatic_prediction_log_dropped_total",
                "Prediction records lost: the spool file could not be written. Should stay 0.",
            ),
            queued: gauge(
                "vatic_prediction_log_queue_depth",
                "Prediction records waiting in the queue for the writer.",
            ),
            spool_bytes: gauge(
                "vatic_prediction_log_spool_bytes",
                "Bytes in the spool file waiting to be replayed.",
            ),
            lag: Gauge::new(
                "vatic_prediction_log_lag_seconds",
                "Age of the oldest record in the last batch written to the database; 0 when nothing waits.",
            )
            .expect("valid"),
        }
    }
}

fn add(counter: &IntCounter, n: u64) {
    counter.inc_by(n);
}

struct Shared {
    /// Taken at shutdown, which closes the queue.
    tx: RwLock<Option<mpsc::Sender<PredictionRecord>>>,
    spool: Arc<Spool>,
    counters: Arc<Counters>,
    writer: tokio::sync::Mutex<Option<JoinHandle<()>>>,
    /// Seal payloads before they leave [`PredictionLog::log`], when configured.
    keys: Option<Arc<DataKeys>>,
}

/// Handle on the prediction log; cheap to clone. Dropping every handle without `shutdown` lets
/// the writer drain the queue in the background.
#[derive(Clone)]
pub struct PredictionLog {
    shared: Arc<Shared>,
}

impl PredictionLog {
    /// Opens the spool folder and starts the writer on the current tokio runtime. Spool files
    /// left by an earlier run are replayed first. With `keys`, payloads are sealed with the
    /// newest of them as they are handed over.
    pub fn start(
        store: Store,
        settings: PredictionLogSettings,
        keys: Option<Arc<DataKeys>>,
    ) -> anyhow::Result<PredictionLog> {
        settings.validate("prediction_log")?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| anyhow::anyhow!("the prediction log needs a tokio runtime"))?;
        let spool = Arc::new(Spool::open(&settings.spool_dir).map_err(|e| {
            anyhow::anyhow!(
                "prediction_log: spool_dir {}: {e}",
                settings.spool_dir.display()
            )
        })?);
        if spool.pending_bytes() > 0 {
            tracing::info!(
                dir = %settings.spool_dir.display(),
                bytes = spool.pending_bytes(),
                "replaying the prediction spool an earlier run left"
            );
        }
        let counters = Arc::new(Counters::new());
        let (tx, rx) = mpsc::channel(settings.queue_capacity);
        let writer = Writer::new(
            store,
            rx,
            spool.clone(),
            counters.clone(),
            &settings,
            keys.clone(),
        );
        let handle = runtime.spawn(writer.run());
        Ok(PredictionLog {
            shared: Arc::new(Shared {
                tx: RwLock::new(Some(tx)),
                spool,
                counters,
                writer: tokio::sync::Mutex::new(Some(handle)),
                keys,
            }),
        })
    }

    /// Hands a record over without waiting for the database: to the queue, else (queue full, or
    /// after shutdown) appended to the spool file. Only if that append fails is it dropped.
    /// Its payloads are sealed first when data keys are configured, so they are in clear
    /// nowhere outside this process.
    pub fn log(&self, mut record: PredictionRecord) {
        if let Some(keys) = &self.shared.keys {
            record.seal(keys);
        }
        let c = &self.shared.counters;
        let (record, closed) = {
            let tx = self
                .shared
                .tx
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            match tx.as_ref() {
                Some(tx) => {
                    // Counted before sending so the writer never sees it below zero.
                    c.queued.inc();
                    match tx.try_send(record) {
                        Ok(()) => return,
                        Err(TrySendError::Full(r)) => {
                            c.queued.dec();
                            (r, false)
                        }
                        Err(TrySendError::Closed(r)) => {
                            c.queued.dec();
                            (r, true)
                        }
                    }
                }
                None => (record, true),
            }
        };
        // With the writer gone nobody fsyncs later, so this append does.
        match self
            .shared
            .spool
            .append(std::slice::from_ref(&record), closed)
        {
            Ok(()) => add(&c.spooled, 1),
            Err(e) => {
                add(&c.dropped, 1);
                tracing::error!(
                    id = %record.id,
                    request_id = %record.request_id,
                    model = %record.model,
                    spool = %self.shared.spool.path().display(),
                    error = %e,
                    "prediction record dropped: the log queue is full and the spool cannot be written"
                );
            }
        }
    }

    /// The data keys payloads are sealed with, when configured.
    pub fn keys(&self) -> Option<&Arc<DataKeys>> {
        self.shared.keys.as_ref()
    }

    /// The counters now.
    pub fn stats(&self) -> PredictionLogStats {
        let c = &self.shared.counters;
        self.refresh_metrics();
        PredictionLogStats {
            written: c.written.get(),
            spooled: c.spooled.get(),
            replayed: c.replayed.get(),
            rejected: c.rejected.get(),
            dropped: c.dropped.get(),
            queue_depth: c.queued.get().max(0) as u64,
            spool_bytes: c.spool_bytes.get() as u64,
        }
    }

    /// Adds the counters to `registry`, as `vatic_prediction_log_*`.
    pub fn register(&self, registry: &prometheus::Registry) -> prometheus::Result<()> {
        let c = &self.shared.counters;
        for counter in [&c.written, &c.spooled, &c.replayed, &c.rejected, &c.dropped] {
            registry.register(Box::new(counter.clone()))?;
        }
        for gauge in [&c.queued, &c.spool_bytes] {
            registry.register(Box::new(gauge.clone()))?;
        }
        registry.register(Box::new(c.lag.clone()))?;
        Ok(())
    }

    /// Reads the spool size into its gauge, before a scrape; with nothing waiting, the lag is 0.
    pub fn refresh_metrics(&self) {
        let c = &self.shared.counters;
        let bytes = self.shared.spool.pending_bytes();
        c.spool_bytes.set(bytes as i64);
        if bytes == 0 && c.queued.get() <= 0 {
            c.lag.set(0.0);
        }
    }

    /// Stops accepting records into the queue (later ones go to the spool), writes what is
    /// queued, replays the spool while the database answers, leaves the rest in the spool file
    /// fsync'd, and returns when that is done. Later calls wait for the first to finish.
    pub async fn shutdown(&self) {
        drop(
            self.shared
                .tx
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let mut writer = self.shared.writer.lock().await;
        if let Some(handle) = writer.take() {
            if let Err(e) = handle.await {
                tracing::error!(error = %e, "the prediction log writer failed");
            }
        }
        if let Err(e) = self.shared.spool.sync() {
            tracing::error!(error = %e, "fsync of the prediction spool");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_name_their_key() {
        PredictionLogSettings::default()
            .validate("prediction_log")
            .unwrap();
        let cases = [
            (
                PredictionLogSettings {
                    queue_capacity: 0,
                    ..Default::default()
                },
                "prediction_log: queue_capacity",
            ),
            (
                PredictionLogSettings {
                    batch_size: 0,
                    ..Default::default()
                },
                "prediction_log: batch_size",
            ),
            (
                PredictionLogSettings {
                    retry_interval_ms: 0,
                    ..Default::default()
                },
                "prediction_log: retry_interval_ms",
            ),
            (
                PredictionLogSettings {
                    spool_dir: PathBuf::new(),
                    ..Default::default()
                },
                "prediction_log: spool_dir",
            ),
        ];
        for (settings, want) in cases {
            let err = settings.validate("prediction_log").unwrap_err().to_string();
            assert!(err.starts_with(want), "{err}");
        }
    }

    #[test]
    fn settings_refuse_unknown_keys_and_fill_defaults() {
        let s: PredictionLogSettings = serde_json::from_str(r#"{"batch_size": 7}"#).unwrap();
        assert_eq!(s.batch_size, 7);
        assert_eq!(s.queue_capacity, 10_000);
        let err = serde_json::from_str::<PredictionLogSettings>(r#"{"batch": 7}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `batch`"), "{err}");
    }
}
