//! The writer task: batches from the queue, the spool while the database is away, replay.

use super::spool::{Chunk, Spool};
use super::{add, Counters, PredictionLogSettings};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use vatic_store::{DataKeys, Delivery, PredictionRecord, Store, StoreError};

/// How many times per flush interval a filling batch takes what has been queued.
const FILL_POLLS: u32 = 8;

/// The one task that talks to the database.
pub(super) struct Writer {
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
    /// Data keys: spooled records a run without them left in clear are sealed on replay.
    keys: Option<Arc<DataKeys>>,
}

impl Writer {
    pub(super) fn new(
        store: Store,
        rx: mpsc::Receiver<PredictionRecord>,
        spool: Arc<Spool>,
        counters: Arc<Counters>,
        settings: &PredictionLogSettings,
        keys: Option<Arc<DataKeys>>,
    ) -> Writer {
        Writer {
            store,
            rx,
            spool,
            counters,
            batch_size: settings.batch_size,
            flush_interval: Duration::from_millis(settings.flush_interval_ms),
            retry_interval: Duration::from_millis(settings.retry_interval_ms),
            down: false,
            next_replay: Instant::now(),
            keys,
        }
    }

    /// Runs until the queue is closed and empty, then replays the spool while the database
    /// answers and fsyncs it.
    pub(super) async fn run(mut self) {
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
    /// when the queue is closed and empty. The queue is looked at [`FILL_POLLS`] times per
    /// interval, not on every record: a writer woken by each record handed over costs a thread
    /// wake-up per request, on the cores that serve them.
    async fn fill(&mut self, batch: &mut Vec<PredictionRecord>) -> bool {
        let deadline = Instant::now() + self.flush_interval;
        let poll = self.flush_interval / FILL_POLLS;
        loop {
            while batch.len() < self.batch_size {
                match self.rx.try_recv() {
                    Ok(record) => batch.push(record),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => return false,
                }
            }
            let now = Instant::now();
            if batch.len() >= self.batch_size || now >= deadline {
                return true;
            }
            sleep_until((now + poll).min(deadline)).await;
        }
    }

    /// Inserts a batch from the queue; spools what the database cannot take.
    async fn flush(&mut self, batch: Vec<PredictionRecord>) {
        self.counters.queued.sub(batch.len() as i64);
        if self.down && Instant::now() < self.next_replay {
            self.spool_batch(batch).await;
            return;
        }
        let oldest = oldest(&batch);
        let outcome = insert_isolating(&self.store, batch, Delivery::First).await;
        add(&self.counters.written, outcome.inserted);
        if outcome.error.is_none() {
            self.record_lag(oldest);
        }
        add(&self.counters.rejected, outcome.rejected);
        match outcome.error {
            None => self.up(),
            Some(e) => {
                self.outage(&e);
                self.spool_batch(outcome.unsent).await;
            }
        }
    }

    /// Sets the lag from the oldest record of a batch just written.
    fn record_lag(&self, oldest: Option<chrono::DateTime<chrono::Utc>>) {
        if let Some(at) = oldest {
            let age = (chrono::Utc::now() - at).num_milliseconds().max(0);
            self.counters.lag.set(age as f64 / 1000.0);
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
        let oldest = oldest(&chunk.records);
        // Spooled records may be stored already: the batch that failed may have been committed.
        let mut records = std::mem::take(&mut chunk.records);
        if let Some(keys) = &self.keys {
            // Sealed ones hold no clear payload and are left as they are.
            records.iter_mut().for_each(|r| r.seal(keys));
        }
        let outcome = insert_isolating(&self.store, records, Delivery::Retry).await;
        // Rows are new only once, so they count even when the chunk is read again later.
        add(&self.counters.replayed, outcome.inserted);
        if let Some(e) = outcome.error {
            self.outage(&e);
            return false;
        }
        self.record_lag(oldest);
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

/// When the oldest record of `records` arrived.
fn oldest(records: &[PredictionRecord]) -> Option<chrono::DateTime<chrono::Utc>> {
    records.iter().map(|r| r.at).min()
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
async fn insert_isolating(
    store: &Store,
    records: Vec<PredictionRecord>,
    delivery: Delivery,
) -> Outcome {
    let mut outcome = Outcome {
        inserted: 0,
        rejected: 0,
        unsent: Vec::new(),
        error: None,
    };
    // Ranges still to insert, the next one last.
    let mut todo = Vec::with_capacity(8);
    todo.push(0..records.len());
    while let Some(range) = todo.pop() {
        if range.is_empty() {
            continue;
        }
        match store
            .insert_predictions(&records[range.clone()], delivery)
            .await
        {
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
