//! The prediction log writer: records are handed over without waiting for the database, written
//! in batches by one task, kept in a local spool file while the database is away, replayed when
//! it returns and flushed on shutdown. Nothing accepted is lost: a record is either in the
//! `predictions` table (once, inserts being idempotent by id), or in the spool, or counted as
//! dropped (the queue was full and the spool could not be written) or rejected (the database
//! refused that record's content).

mod spool;

use serde::{Deserialize, Serialize};
use spool::{Chunk, Spool};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};
use vatic_store::{PredictionRecord, Store, StoreError};

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
}

impl Default for PredictionLogSettings {
    fn default() -> Self {
        PredictionLogSettings {
            queue_capacity: 10_000,
            batch_size: 500,
            flush_interval_ms: 200,
            spool_dir: PathBuf::from("data/spool"),
            retry_interval_ms: 1000,
        }
    }
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

#[derive(Default)]
struct Counters {
    written: AtomicU64,
    spooled: AtomicU64,
    replayed: AtomicU64,
    rejected: AtomicU64,
    dropped: AtomicU64,
    queued: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

struct Shared {
    /// Taken at shutdown, which closes the queue.
    tx: RwLock<Option<mpsc::Sender<PredictionRecord>>>,
    spool: Arc<Spool>,
    counters: Arc<Counters>,
    writer: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

/// Handle on the prediction log; cheap to clone. Dropping every handle without `shutdown` lets
/// the writer drain the queue in the background.
#[derive(Clone)]
pub struct PredictionLog {
    shared: Arc<Shared>,
}

impl PredictionLog {
    /// Opens the spool folder and starts the writer on the current tokio runtime. Spool files
    /// left by an earlier run are replayed first.
    pub fn start(store: Store, settings: PredictionLogSettings) -> anyhow::Result<PredictionLog> {
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
        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::channel(settings.queue_capacity);
        let writer = Writer {
            store,
            rx,
            spool: spool.clone(),
            counters: counters.clone(),
            batch_size: settings.batch_size,
            flush_interval: Duration::from_millis(settings.flush_interval_ms),
            retry_interval: Duration::from_millis(settings.retry_interval_ms),
            down: false,
            next_replay: Instant::now(),
        };
        let handle = runtime.spawn(writer.run());
        Ok(PredictionLog {
            shared: Arc::new(Shared {
                tx: RwLock::new(Some(tx)),
                spool,
                counters,
                writer: tokio::sync::Mutex::new(Some(handle)),
            }),
        })
    }

    /// Hands a record over without waiting for the database: to the queue, else (queue full, or
    /// after shutdown) appended to the spool file. Only if that append fails is it dropped.
    pub fn log(&self, record: PredictionRecord) {
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
                    add(&c.queued, 1);
                    match tx.try_send(record) {
                        Ok(()) => return,
                        Err(TrySendError::Full(r)) => {
                            c.queued.fetch_sub(1, Ordering::Relaxed);
                            (r, false)
                        }
                        Err(TrySendError::Closed(r)) => {
                            c.queued.fetch_sub(1, Ordering::Relaxed);
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

    /// The counters now.
    pub fn stats(&self) -> PredictionLogStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PredictionLogStats {
            written: get(&c.written),
            spooled: get(&c.spooled),
            replayed: get(&c.replayed),
            rejected: get(&c.rejected),
            dropped: get(&c.dropped),
            queue_depth: get(&c.queued),
            spool_bytes: self.shared.spool.pending_bytes(),
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

/// The one task that talks to the database.
struct Writer {
    store: Store,
    rx: mpsc::Receiver<PredictionRecord>,
    spool: Arc<Spool>,
    counters: Arc<Counters>,
    batch_size: usize,
    flush_interval: Duration,
    retry_interval: Duration,
    /// The last attempt failed: batches go to the spool until `next_replay`.
    down: bool,
    /// When to try the spool (and, while down, the database) next.
    next_replay: Instant,
}

impl Writer {
    async fn run(mut self) {
        let mut batch = Vec::with_capacity(self.batch_size);
        let mut open = true;
        while open {
            let replay_at = (self.spool.pending_bytes() > 0).then_some(self.next_replay);
            if replay_at.is_none_or(|at| at > Instant::now()) {
                let replay_due = async {
                    match replay_at {
                        Some(at) => sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    n = self.rx.recv_many(&mut batch, self.batch_size) => open = n > 0,
                    () = replay_due => {}
                }
            }
            if !batch.is_empty() {
                open = self.fill(&mut batch).await;
                self.flush(std::mem::take(&mut batch)).await;
            }
            if self.spool.pending_bytes() > 0 && Instant::now() >= self.next_replay {
                self.replay_chunk().await;
            }
        }
        // The queue is closed and empty: replay what the spool holds while the database answers.
        while self.spool.pending_bytes() > 0 {
            if self.down && Instant::now() < self.next_replay {
                break;
            }
            if !self.replay_chunk().await {
                break;
            }
        }
        let spool = self.spool.clone();
        if let Err(e) = blocking(move || spool.sync()).await {
            tracing::error!(error = %e, "fsync of the prediction spool");
        }
        tracing::debug!("prediction log writer stopped");
    }

    /// Adds to a non-empty batch until it is full or the flush interval has passed; false
    /// when the queue is closed and empty.
    async fn fill(&mut self, batch: &mut Vec<PredictionRecord>) -> bool {
        let deadline = Instant::now() + self.flush_interval;
        while batch.len() < self.batch_size {
            let room = self.batch_size - batch.len();
            tokio::select! {
                n = self.rx.recv_many(batch, room) => if n == 0 { return false },
                () = sleep_until(deadline) => break,
            }
        }
        true
    }

    /// Inserts a batch from the queue; spools what the database cannot take.
    async fn flush(&mut self, batch: Vec<PredictionRecord>) {
        self.counters
            .queued
            .fetch_sub(batch.len() as u64, Ordering::Relaxed);
        if self.down && Instant::now() < self.next_replay {
            self.spool_batch(batch).await;
            return;
        }
        let outcome = insert_isolating(&self.store, batch).await;
        add(&self.counters.written, outcome.inserted);
        add(&self.counters.rejected, outcome.rejected);
        match outcome.error {
            None => self.up(),
            Some(e) => {
                self.outage(&e);
                self.spool_batch(outcome.unsent).await;
            }
        }
    }

    async fn spool_batch(&self, batch: Vec<PredictionRecord>) {
        let n = batch.len() as u64;
        let spool = self.spool.clone();
        match blocking(move || spool.append(&batch, true)).await {
            Ok(()) => add(&self.counters.spooled, n),
            Err(e) => {
                add(&self.counters.dropped, n);
                tracing::error!(
                    records = n,
                    spool = %self.spool.path().display(),
                    error = %e,
                    "prediction records dropped: the database and the spool both failed"
                );
            }
        }
    }

    /// Replays one chunk of the spool; false when it failed or the spool is empty.
    async fn replay_chunk(&mut self) -> bool {
        let spool = self.spool.clone();
        let max = self.batch_size;
        let mut chunk: Chunk = match blocking(move || spool.next_chunk(max)).await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return false,
            Err(e) => {
                tracing::error!(spool = %self.spool.path().display(), error = %e, "reading the prediction spool");
                self.next_replay = Instant::now() + self.retry_interval;
                return false;
            }
        };
        let outcome = insert_isolating(&self.store, std::mem::take(&mut chunk.records)).await;
        // Rows are new only once, so they count even when the chunk is read again later.
        add(&self.counters.replayed, outcome.inserted);
        if let Some(e) = outcome.error {
            self.outage(&e);
            return false;
        }
        // Rejections are counted only for a chunk that is done, so a retry does not count twice.
        add(&self.counters.rejected, outcome.rejected);
        self.up();
        if let Err(e) = self.spool.commit(&chunk) {
            tracing::error!(spool = %self.spool.path().display(), error = %e, "removing the replayed prediction spool");
            self.next_replay = Instant::now() + self.retry_interval;
            return false;
        }
        true
    }

    fn outage(&mut self, e: &StoreError) {
        self.next_replay = Instant::now() + self.retry_interval;
        if !self.down {
            self.down = true;
            tracing::warn!(
                error = %e,
                spool = %self.spool.path().display(),
                "the prediction log cannot reach the database; spooling records until it returns"
            );
        }
    }

    fn up(&mut self) {
        if self.down {
            self.down = false;
            self.next_replay = Instant::now();
            tracing::info!(
                spool_bytes = self.spool.pending_bytes(),
                "the prediction log reaches the database again; replaying the spool"
            );
        }
    }
}

/// Runs blocking file work off the runtime's threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

/// What an insert did.
struct Outcome {
    /// New rows.
    inserted: u64,
    /// Records refused for their content.
    rejected: u64,
    /// Records not inserted because of `error`.
    unsent: Vec<PredictionRecord>,
    /// Why the database could not take `unsent`.
    error: Option<StoreError>,
}

/// Inserts records. When the database refuses a batch for its content, the batch is split until
/// the records at fault stand alone; those are logged and left out, so one bad record cannot
/// hold the log up. Any other error stops at once, returning what was not inserted.
async fn insert_isolating(store: &Store, records: Vec<PredictionRecord>) -> Outcome {
    let mut outcome = Outcome {
        inserted: 0,
        rejected: 0,
        unsent: Vec::new(),
        error: None,
    };
    // Ranges still to insert, the next one last.
    let mut todo = vec![0..records.len()];
    while let Some(range) = todo.pop() {
        if range.is_empty() {
            continue;
        }
        match store.insert_predictions(&records[range.clone()]).await {
            Ok(n) => outcome.inserted += n,
            Err(e) if is_rejection(&e) && range.len() == 1 => {
                let r = &records[range.start];
                outcome.rejected += 1;
                tracing::error!(
                    id = %r.id,
                    request_id = %r.request_id,
                    model = %r.model,
                    error = %e,
                    "the database refused a prediction record; it is not logged"
                );
            }
            Err(e) if is_rejection(&e) => {
                let mid = range.start + range.len() / 2;
                todo.push(mid..range.end);
                todo.push(range.start..mid);
            }
            Err(e) => {
                todo.push(range);
                for range in todo.into_iter().rev() {
                    outcome.unsent.extend_from_slice(&records[range]);
                }
                outcome.error = Some(e);
                break;
            }
        }
    }
    outcome
}

/// Whether the database answered that the data itself is wrong (PostgreSQL classes 22 and 23,
/// or a constraint), rather than being unreachable or failing for a reason a retry may cure.
fn is_rejection(e: &StoreError) -> bool {
    use sqlx::error::ErrorKind;
    let StoreError::Database(sqlx::Error::Database(db)) = e else {
        return false;
    };
    let postgres_data_class = || {
        db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
            .is_some_and(|pg| pg.code().starts_with("22") || pg.code().starts_with("23"))
    };
    matches!(
        db.kind(),
        ErrorKind::NotNullViolation | ErrorKind::CheckViolation | ErrorKind::ForeignKeyViolation
    ) || postgres_data_class()
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
