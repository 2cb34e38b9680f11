//! The batch runner of one api replica: claims chunks of any replica's jobs, runs their rows at
//! low priority, and stores their results. It runs on a thread of its own at the idle
//! scheduling class, with its own database connections and worker connections, so that its
//! work waits whenever real-time requests need the cores; while they arrive, its own work
//! (reading rows, writing results) keeps to the process's low-priority pace too.

use super::rows::{
    self, error_line, groups, is_error_line, parse_row, result_line, stack, unstack,
};
use super::{BatchSettings, Layout};
use crate::backend::Backend;
use crate::catalog::Catalog;
use crate::error::ApiError;
use crate::rollout::Selector;
use actix_web::ResponseError;
use futures_util::StreamExt;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};
use tracing::Instrument;
use vatic_schema::{InferRequest, Tensor};
use vatic_store::{Claim, DatabaseSettings, Store};
use vatic_worker::Priority;

/// How often ended jobs past their retention and abandoned uploads are removed.
const EXPIRE_EVERY: Duration = Duration::from_secs(60);

/// The batch jobs' part of an api replica: its settings, and its runner when it runs one.
pub struct Batch {
    /// The settings.
    pub settings: BatchSettings,
    /// Wakes the runner when a job was queued here.
    wake: Arc<Notify>,
    stop: watch::Sender<bool>,
    stopped: tokio::sync::Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
    /// Metrics.
    pub metrics: BatchMetrics,
}

/// The runner's metrics.
#[derive(Clone)]
pub struct BatchMetrics {
    rows: IntCounterVec,
    chunks: IntCounterVec,
    running: IntGauge,
}

impl BatchMetrics {
    fn register(registry: &Registry) -> anyhow::Result<BatchMetrics> {
        let rows = IntCounterVec::new(
            Opts::new(
                "vatic_batch_rows_total",
                "Rows of batch jobs run by this replica, by model and outcome (ok, failed).",
            ),
            &["model", "outcome"],
        )?;
        let chunks = IntCounterVec::new(
            Opts::new(
                "vatic_batch_chunks_total",
                "Chunks of batch jobs this replica claimed, by outcome: done, retry (no worker answered; put back), lost (the claim ran out first), stopped (put back at shutdown), failed (the job could not run).",
            ),
            &["outcome"],
        )?;
        let running = IntGauge::new(
            "vatic_batch_chunks_running",
            "Chunks of batch jobs this replica is running now.",
        )?;
        registry.register(Box::new(rows.clone()))?;
        registry.register(Box::new(chunks.clone()))?;
        registry.register(Box::new(running.clone()))?;
        Ok(BatchMetrics {
            rows,
            chunks,
            running,
        })
    }
}

impl Batch {
    /// Starts the runner (when `settings.run`) on its own idle-class thread, with its own pool
    /// of `database`'s connections; `backend` and `catalog` are the replica's.
    pub fn start(
        settings: BatchSettings,
        database: &DatabaseSettings,
        backend: Arc<Backend>,
        catalog: Arc<Catalog>,
        registry: &Registry,
    ) -> anyhow::Result<Batch> {
        let metrics = BatchMetrics::register(registry)?;
        let wake = Arc::new(Notify::new());
        let (stop, stopping) = watch::channel(false);
        let (done, stopped) = tokio::sync::oneshot::channel();
        // A thread per chunk run at once (up to the cores): reading rows and writing results
        // is most of a job's work for a small model, and one thread would bound the job to
        // one core. Every thread of the runtime runs at the idle class.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(settings.concurrency.clamp(1, cores))
            .thread_name("batch")
            .on_thread_start(|| vatic_server::priority::lower_to_idle("batch"))
            .enable_all()
            .build()?;
        let mut database = database.clone();
        database.migrate = false;
        database.max_connections = settings.concurrency as u32 + 1;
        let runner = Runner {
            settings: settings.clone(),
            backend,
            catalog,
            metrics: metrics.clone(),
        };
        let wake_runner = wake.clone();
        std::thread::Builder::new()
            .name("batch".into())
            .spawn(move || {
                vatic_server::priority::lower_to_idle("batch");
                runtime.block_on(runner.run(database, wake_runner, stopping));
                let _ = done.send(());
            })?;
        Ok(Batch {
            settings,
            wake,
            stop,
            stopped: tokio::sync::Mutex::new(Some(stopped)),
            metrics,
        })
    }

    /// Tells the runner that a job was queued.
    pub fn wake(&self) {
        self.wake.notify_waiters();
    }

    /// Stops claiming chunks, puts back the ones running (another replica takes them at once),
    /// and waits for the runner to end.
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        if let Some(stopped) = self.stopped.lock().await.take() {
            let _ = stopped.await;
        }
    }
}

/// What became of a chunk's rows.
enum Outcome {
    /// Every row has a result.
    Done {
        /// One line per row.
        results: Vec<u8>,
        /// The rows whose result is an error.
        failed: i64,
    },
    /// No worker could take the rows now: put the chunk back to run later.
    Retry(String),
    /// The job cannot run: its model, version or label is gone.
    JobFailed(String),
}

/// Why a group of rows stopped the chunk.
enum Stop {
    Retry(String),
    JobFailed(String),
}

#[derive(Clone)]
struct Runner {
    settings: BatchSettings,
    backend: Arc<Backend>,
    catalog: Arc<Catalog>,
    metrics: BatchMetrics,
}

impl Runner {
    async fn run(
        self,
        database: DatabaseSettings,
        wake: Arc<Notify>,
        stopping: watch::Receiver<bool>,
    ) {
        let store = loop {
            match database.open().await {
                Ok(Some(store)) => break store,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "batch runner: the database cannot be opened; trying again");
                    let mut stopping = stopping.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                        _ = stopped(&mut stopping) => return,
                    }
                }
            }
        };
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(expire(
            store.clone(),
            self.settings.clone(),
            stopping.clone(),
        ));
        if self.settings.run {
            for _ in 0..self.settings.concurrency {
                tasks.spawn(
                    self.clone()
                        .claim_loop(store.clone(), wake.clone(), stopping.clone()),
                );
            }
        }
        while tasks.join_next().await.is_some() {}
        store.close().await;
    }

    async fn claim_loop(
        self,
        store: Store,
        wake: Arc<Notify>,
        mut stopping: watch::Receiver<bool>,
    ) {
        let lease = Duration::from_millis(self.settings.lease_ms);
        let poll = Duration::from_millis(self.settings.poll_ms);
        while !*stopping.borrow() {
            // Registered before looking, so a wake between the look and the wait is not missed.
            let woken = wake.notified();
            match store.claim_chunk(lease).await {
                Ok(Some(claim)) => self.run_claimed(&store, claim, &mut stopping).await,
                Ok(None) => {
                    tokio::select! {
                        _ = woken => {}
                        _ = tokio::time::sleep(poll) => {}
                        _ = stopping.changed() => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "batch runner: no chunk could be claimed");
                    tokio::select! {
                        _ = tokio::time::sleep(poll) => {}
                        _ = stopping.changed() => {}
                    }
                }
            }
        }
    }

    /// Runs a claimed chunk while renewing its claim, then stores its results, or puts it back.
    async fn run_claimed(&self, store: &Store, claim: Claim, stopping: &mut watch::Receiver<bool>) {
        let span = tracing::info_span!("batch_chunk", job = %claim.job, seq = claim.seq);
        self.run_claimed_in_span(store, claim, stopping)
            .instrument(span)
            .await;
    }

    async fn run_claimed_in_span(
        &self,
        store: &Store,
        claim: Claim,
        stopping: &mut watch::Receiver<bool>,
    ) {
        let lease = Duration::from_millis(self.settings.lease_ms);
        self.metrics.running.inc();
        let renew = async {
            loop {
                tokio::time::sleep(lease / 3).await;
                match store.renew_claim(&claim, lease).await {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "batch runner: the claim could not be renewed");
                    }
                }
            }
        };
        let outcome = tokio::select! {
            outcome = self.run_chunk(&claim) => Some(outcome),
            _ = renew => None,
            _ = stopped(stopping) => {
                self.put_back(store, &claim, Duration::ZERO, "stopped").await;
                self.metrics.running.dec();
                return;
            }
        };
        self.metrics.running.dec();
        let chunks = &self.metrics.chunks;
        match outcome {
            None => {
                tracing::warn!("batch runner: the claim on a chunk ran out before its rows did; another claim runs them");
                chunks.with_label_values(&["lost"]).inc();
            }
            Some(Outcome::Done { results, failed }) => {
                match store.complete_chunk(&claim, &results, failed).await {
                    Ok(true) => {
                        chunks.with_label_values(&["done"]).inc();
                        let rows = &self.metrics.rows;
                        let ran = if claim.previous.is_some() {
                            claim.previous_failed
                        } else {
                            claim.rows
                        };
                        rows.with_label_values(&[&claim.model, "ok"])
                            .inc_by((ran - failed).max(0) as u64);
                        rows.with_label_values(&[&claim.model, "failed"])
                            .inc_by(failed as u64);
                    }
                    Ok(false) => {
                        tracing::warn!("batch runner: the chunk was taken by another claim before its results were stored; its results are that claim's");
                        chunks.with_label_values(&["lost"]).inc();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "batch runner: a chunk's results could not be stored; it runs again when its claim runs out");
                        chunks.with_label_values(&["lost"]).inc();
                    }
                }
            }
            Some(Outcome::Retry(why)) => {
                tracing::info!(reason = %why, "batch runner: rows could not run now; the chunk is put back");
                let wait = Duration::from_millis(self.settings.retry_after_ms);
                self.put_back(store, &claim, wait, "retry").await;
            }
            Some(Outcome::JobFailed(why)) => {
                tracing::warn!(reason = %why, "batch runner: the job cannot run; it fails");
                if let Err(e) = store.fail_job(&claim.job, &why).await {
                    tracing::warn!(error = %e, "batch runner: the job could not be marked failed");
                }
                self.put_back(store, &claim, Duration::ZERO, "failed").await;
            }
        }
    }

    async fn put_back(&self, store: &Store, claim: &Claim, after: Duration, outcome: &str) {
        self.metrics.chunks.with_label_values(&[outcome]).inc();
        if let Err(e) = store.release_claim(claim, after).await {
            tracing::warn!(error = %e, "batch runner: a chunk could not be put back; it runs again when its claim runs out");
        }
    }

    /// Runs a chunk's rows (on a retry, only those that failed before).
    async fn run_chunk(&self, claim: &Claim) -> Outcome {
        let layout: Layout = match serde_json::from_str(&claim.layout) {
            Ok(layout) => layout,
            Err(e) => {
                return Outcome::JobFailed(format!("the job's stored layout cannot be read: {e}"))
            }
        };
        let version = match (&claim.version, &claim.label) {
            (Some(v), _) => Some(v.clone()),
            (None, Some(label)) => {
                match self
                    .catalog
                    .resolve(&claim.model, Selector::Label(label), |_| false)
                {
                    Ok(routed) => routed.map(|r| r.version.to_string()),
                    Err(e) => return Outcome::JobFailed(e.to_string()),
                }
            }
            (None, None) => None,
        };
        let pacer = self.backend.pacer();
        pacer.wait().await;
        let started = Instant::now();
        let inputs: Vec<&[u8]> = rows::lines(&claim.input).collect();
        let previous: Vec<&[u8]> = claim
            .previous
            .as_deref()
            .map(|p| rows::lines(p).collect())
            .unwrap_or_default();
        let mut results: Vec<Option<Vec<u8>>> = vec![None; inputs.len()];
        let mut requests: Vec<(usize, InferRequest)> = Vec::new();
        let mut failed = 0;
        for (i, line) in inputs.iter().enumerate() {
            let row = claim.first_row + i as i64;
            if let Some(prev) = previous.get(i).filter(|p| !is_error_line(p)) {
                let mut kept = prev.to_vec();
                kept.push(b'\n');
                results[i] = Some(kept);
                continue;
            }
            match parse_row(line, claim.input_format, &layout) {
                Ok(request) => requests.push((i, request)),
                Err(e) => {
                    failed += 1;
                    results[i] = Some(error_line(row, &e));
                }
            }
        }
        pacer.charge(started.elapsed());
        let refs: Vec<&InferRequest> = requests.iter().map(|(_, r)| r).collect();
        let per_request = self
            .rows_per_request(&claim.model, version.as_deref())
            .await;
        let request_id = format!("batch-{}-{}", claim.job, claim.seq);
        let run = Run {
            claim,
            version: version.as_deref(),
            request_id: &request_id,
            last_attempt: claim.attempts >= self.settings.max_attempts,
        };
        let answered: Vec<Result<Vec<Answer>, Stop>> =
            futures_util::stream::iter(groups(&refs, per_request, &layout))
                .map(|range| self.run_group(run, &refs[range]))
                .buffered(self.settings.requests_per_chunk)
                .collect()
                .await;
        pacer.wait().await;
        let started = Instant::now();
        let mut at = 0;
        for group in answered {
            let group = match group {
                Ok(group) => group,
                Err(Stop::Retry(why)) => return Outcome::Retry(why),
                Err(Stop::JobFailed(why)) => return Outcome::JobFailed(why),
            };
            for answer in group {
                let i = requests[at].0;
                let row = claim.first_row + i as i64;
                results[i] = Some(match answer {
                    Ok((outputs, version)) => result_line(row, version.as_deref(), &outputs),
                    Err(e) => {
                        failed += 1;
                        error_line(row, &e)
                    }
                });
                at += 1;
            }
        }
        let results = results.into_iter().flatten().flatten().collect();
        pacer.charge(started.elapsed());
        Outcome::Done { results, failed }
    }

    /// Rows stacked into one request: `batch.rows_per_request`, at most the version's
    /// `max_batch_size` (which the profiler chose where it was not set): a model whose runs
    /// of many rows cost more per row than runs of few gets requests it runs best.
    async fn rows_per_request(&self, model: &str, version: Option<&str>) -> usize {
        let most = self.settings.rows_per_request;
        match self.backend.config(model, version).await {
            Ok(config) if config.max_batch_size > 0 => most.min(config.max_batch_size as usize),
            Ok(_) => most,
            Err(e) => {
                // The rows' own requests say what is wrong, if anything is.
                tracing::debug!(error = %e, "batch runner: the version's configuration could not be read");
                most
            }
        }
    }

    /// Runs rows stacked into one request; when that fails for a reason that may be one row's,
    /// each row alone, so that a bad row fails alone.
    async fn run_group(&self, run: Run<'_>, group: &[&InferRequest]) -> Result<Vec<Answer>, Stop> {
        let model = run.claim.model.as_str();
        let pacer = self.backend.pacer();
        pacer.wait().await;
        let started = Instant::now();
        let stacked = stack(group);
        pacer.charge(started.elapsed());
        let low = Priority::Low;
        match self
            .backend
            .infer_at(model, run.version, &stacked, Some(run.request_id), low)
            .await
        {
            Ok(answer) => {
                let started = Instant::now();
                let per_row = unstack(group, &answer);
                pacer.charge(started.elapsed());
                if let Some(per_row) = per_row {
                    return Ok(per_row
                        .into_iter()
                        .map(|outputs| Ok((outputs, answer.model_version.clone())))
                        .collect());
                }
            }
            Err(e) => {
                self.classify(&e, &run)?;
                if group.len() == 1 {
                    return Ok(vec![Err(row_error(&e, &run))]);
                }
            }
        }
        // One at a time: the group's requests are already as many as this chunk runs at once.
        let mut answers = Vec::with_capacity(group.len());
        for request in group {
            let answer = self
                .backend
                .infer_at(model, run.version, request, Some(run.request_id), low)
                .await;
            answers.push(match answer {
                Ok(answer) => Ok((answer.outputs, answer.model_version)),
                Err(e) => {
                    self.classify(&e, &run)?;
                    Err(row_error(&e, &run))
                }
            });
        }
        Ok(answers)
    }

    /// Whether an error stops the chunk rather than failing rows: nobody could take the rows
    /// now (busy, unreachable, shutting down: the chunk runs later, unless this is its last
    /// attempt), or the model, version or label is gone (the job fails; a 404 while the
    /// registry still has them is a worker that does not hold the version yet: later).
    fn classify(&self, e: &ApiError, run: &Run<'_>) -> Result<(), Stop> {
        match e.status_code().as_u16() {
            404 => match self.gone(run.claim) {
                Some(why) => Err(Stop::JobFailed(why)),
                None => Err(Stop::Retry(e.to_string())),
            },
            429 | 502 | 503 | 504 if !run.last_attempt => Err(Stop::Retry(e.to_string())),
            _ => Ok(()),
        }
    }

    /// Why the job's model, version or label is no longer in the registry, if it is not.
    fn gone(&self, claim: &Claim) -> Option<String> {
        let selector = match (&claim.version, &claim.label) {
            (Some(v), _) => Selector::Version(v),
            (None, Some(l)) => Selector::Label(l),
            (None, None) => Selector::Split { key: None },
        };
        self.catalog
            .resolve(&claim.model, selector, |_| false)
            .err()
            .map(|e| e.to_string())
    }
}

/// One row's outputs and the version that gave them, or its error.
type Answer = Result<(Vec<Tensor>, Option<String>), String>;

/// One chunk's run, as its groups of rows see it.
#[derive(Clone, Copy)]
struct Run<'a> {
    claim: &'a Claim,
    /// The version the rows go to (`None`: the stable one).
    version: Option<&'a str>,
    request_id: &'a str,
    /// Whether this is the chunk's last claim: rows that cannot run now fail instead of
    /// putting the chunk back again.
    last_attempt: bool,
}

/// A failed row's error; on the chunk's last attempt, an error that could have passed says so.
fn row_error(e: &ApiError, run: &Run<'_>) -> String {
    match e.status_code().as_u16() {
        429 | 502 | 503 | 504 => format!(
            "{e} (its chunk was tried {} times: batch.max_attempts)",
            run.claim.attempts
        ),
        _ => e.to_string(),
    }
}

/// Removes ended jobs past `keep_days` and abandoned uploads, every minute.
async fn expire(store: Store, settings: BatchSettings, mut stopping: watch::Receiver<bool>) {
    let keep = Duration::from_secs(u64::from(settings.keep_days) * 86_400);
    let abandoned = Duration::from_secs(settings.abandoned_upload_secs);
    loop {
        match store.expire_jobs(keep, abandoned).await {
            Ok(expired) if expired.ended + expired.abandoned > 0 => {
                tracing::info!(
                    ended = expired.ended,
                    abandoned = expired.abandoned,
                    "batch jobs removed"
                );
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "batch jobs past their retention could not be removed");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(EXPIRE_EVERY) => {}
            _ = stopped(&mut stopping) => return,
        }
    }
}

/// Returns once `stopping` says so (or its sender is gone).
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|s| *s).await;
}
