//! The dynamic batcher of one model version: a bounded queue and `instances` runner threads that
//! combine the rows of waiting requests into one model run and split the outputs back.
//!
//! At most `instances` model runs go on at once. A cheap model's request that is the only one
//! its version has in flight runs at once on the thread that submits it: that is what a runner
//! would do with it, without the two thread wake-ups of the hand-off. Once requests overlap,
//! they go through the queue, where they batch and where the model runs beside the HTTP
//! threads, until none has overlapped for [`QUIET`].
//!
//! Work that can wait ([`Priority::Low`]: shadow copies, batch jobs) has a queue of its own and
//! `instances` runner threads of its own, which the operating system schedules only on cores
//! nothing else wants (`SCHED_IDLE` on Linux): such work fills spare capacity and never takes
//! a core from a request a caller is waiting for. While real-time requests arrive, those
//! runners also keep within the process's [`Pacer`] share of the cores.

use crate::config::BatchingConfig;
use crate::onnx::{rows, stack, OnnxModel};
use crate::stats::{Execution, Stats};
use crate::EngineError;
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tract_onnx::prelude::{TValue, TVec};
use vatic_schema::{Tensor, TensorData};
use vatic_server::priority::Pacer;

/// Outputs of one request, in signature order.
pub type JobOutputs = Vec<(Vec<u64>, TensorData)>;

/// How urgent a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Priority {
    /// A caller waits for the answer.
    #[default]
    RealTime,
    /// Work that can wait: it runs on spare capacity only.
    Low,
}

/// The header that carries a request's priority from an api replica to a worker: `low`, or
/// absent for real time.
pub const PRIORITY_HEADER: &str = "x-vatic-priority";

impl Priority {
    /// The priority a [`PRIORITY_HEADER`] value names.
    pub fn from_header(value: Option<&[u8]>) -> Result<Priority, EngineError> {
        match value {
            None | Some(b"real-time") => Ok(Priority::RealTime),
            Some(b"low") => Ok(Priority::Low),
            Some(other) => Err(EngineError::InvalidInput(format!(
                "header {PRIORITY_HEADER}: '{}' is not a priority (low or real-time)",
                String::from_utf8_lossy(other)
            ))),
        }
    }

    /// Its [`PRIORITY_HEADER`] value.
    pub fn header_value(self) -> &'static str {
        match self {
            Priority::RealTime => "real-time",
            Priority::Low => "low",
        }
    }
}

/// One request waiting for the model.
pub struct Job {
    /// Inputs in signature order, already checked against the signature.
    pub inputs: Vec<Tensor>,
    /// Rows along the batch dimension (1 for a model without one).
    pub rows: usize,
    /// Shapes of the inputs without their batch dimension: only jobs with equal keys share a run.
    pub key: Vec<Vec<u64>>,
    /// When it was queued.
    pub enqueued: Instant,
    /// When it stops being worth computing.
    pub deadline: Instant,
    /// Where the answer goes; closed when the client has gone away.
    pub reply: oneshot::Sender<Result<JobOutputs, EngineError>>,
    /// Which queue it waits in.
    pub priority: Priority,
}

struct Queue {
    jobs: VecDeque<Job>,
    closed: bool,
    /// Model runs going on now, on runners and on submitting threads.
    running: usize,
    /// When a request last found another in flight, queued or running.
    overlapped: Option<Instant>,
    /// Runners waiting on `wake` that no notification has gone to yet. A notification is a
    /// system call even with nobody waiting, and under load a runner mostly finds the next
    /// jobs queued without one.
    idle: usize,
    /// Runners notified that have not woken up yet: they will see what is queued by then.
    waking: usize,
}

/// How long requests go through the queue after two overlapped, before a lone request runs on
/// the thread that submits it again. Under load requests overlap all the time, and the queue,
/// with runners beside the HTTP threads, serves more of them.
pub const QUIET: Duration = Duration::from_millis(10);

struct Shared {
    label: String,
    model: Arc<OnnxModel>,
    config: BatchingConfig,
    /// Whether a job may run on the thread that submits it.
    inline: bool,
    /// Requests between [`Batcher::enter`] and the end of their guard.
    in_flight: AtomicUsize,
    /// [`QUIET`], but for tests.
    quiet: Duration,
    stats: Arc<Stats>,
    /// The process's pace for low-priority work, told of every real-time job.
    pacer: Arc<Pacer>,
    queue: Mutex<Queue>,
    wake: Condvar,
    /// Low-priority jobs, for the low-priority runners only. A lock of its own: a runner at the
    /// lowest priority can be held off a core for long, and must never hold a lock that the
    /// real-time requests wait for.
    low: Mutex<LowQueue>,
    /// Where the low-priority runners wait.
    wake_low: Condvar,
}

struct LowQueue {
    jobs: VecDeque<Job>,
    closed: bool,
}

/// How many runner threads each queue has, and how long requests go through the queue after
/// two overlapped ([`QUIET`], but for tests).
struct Threads {
    runners: usize,
    quiet: Duration,
}

/// A running batcher; dropping it does not stop the runners, `close` and `join` do.
pub struct Batcher {
    shared: Arc<Shared>,
    runners: Mutex<Vec<JoinHandle<()>>>,
}

impl Batcher {
    /// Starts `config.instances` runner threads for `model`, and as many low-priority ones.
    /// `inline` lets the job of a lone request run on the thread that submits it (see
    /// [`Batcher::submit`]); give it only with `max_queue_delay_us = 0`, where a runner would
    /// run such a job at once too.
    pub fn start(
        label: String,
        model: Arc<OnnxModel>,
        config: BatchingConfig,
        inline: bool,
        stats: Arc<Stats>,
        pacer: Arc<Pacer>,
    ) -> Batcher {
        let threads = Threads {
            runners: config.instances,
            quiet: QUIET,
        };
        Batcher::with_threads(label, model, config, inline, stats, pacer, threads)
    }

    fn with_threads(
        label: String,
        model: Arc<OnnxModel>,
        config: BatchingConfig,
        inline: bool,
        stats: Arc<Stats>,
        pacer: Arc<Pacer>,
        Threads { runners, quiet }: Threads,
    ) -> Batcher {
        let shared = Arc::new(Shared {
            label,
            model,
            config,
            inline,
            in_flight: AtomicUsize::new(0),
            quiet,
            stats,
            pacer,
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                closed: false,
                running: 0,
                overlapped: None,
                idle: 0,
                waking: 0,
            }),
            wake: Condvar::new(),
            low: Mutex::new(LowQueue {
                jobs: VecDeque::new(),
                closed: false,
            }),
            wake_low: Condvar::new(),
        });
        let spawn = |name: String, low: bool| {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(name)
                .spawn(move || if low { shared.run_low() } else { shared.run() })
                .expect("spawning a runner thread")
        };
        let runners = (0..runners)
            .map(|i| spawn(format!("run-{}-{i}", shared.label), false))
            .chain((0..runners).map(|i| spawn(format!("low-{}-{i}", shared.label), true)))
            .collect();
        Batcher {
            shared,
            runners: Mutex::new(runners),
        }
    }

    /// Counts a real-time request in flight until the guard is dropped: from before its job
    /// is made until its answer has been taken.
    pub fn enter(&self) -> Caller<'_> {
        self.shared.in_flight.fetch_add(1, Ordering::SeqCst);
        Caller(&self.shared.in_flight)
    }

    /// Queues a job, or refuses it when its queue is full or closed. With `inline` on, the job
    /// of the only request in flight (see [`Batcher::enter`]) runs here and now if nothing is
    /// queued or running and no requests overlapped for [`QUIET`]; its answer is then in its
    /// reply channel when this returns. A low-priority job always queues.
    pub fn submit(&self, job: Job) -> Result<(), EngineError> {
        if job.priority == Priority::Low {
            return self.submit_low(job);
        }
        self.shared.pacer.real_time(job.enqueued);
        let mut q = self.shared.queue.lock().expect("queue lock");
        if q.closed {
            return Err(EngineError::ShuttingDown);
        }
        if self.shared.inline && self.alone(&mut q) {
            q.running += 1;
            drop(q);
            self.shared.execute(vec![job]);
            let mut q = self.shared.queue.lock().expect("queue lock");
            q.running -= 1;
            // Jobs queued while this one ran may have found every instance taken.
            let waiting = !q.jobs.is_empty();
            self.shared.wake_one(q, waiting);
            return Ok(());
        }
        if q.jobs.len() >= self.shared.config.max_queue_size {
            return Err(EngineError::QueueFull {
                model: self.shared.label.clone(),
                size: self.shared.config.max_queue_size,
            });
        }
        q.jobs.push_back(job);
        // One runner is enough for one job; a runner that leaves jobs behind wakes the next.
        // Waking every runner would make all but one of them go back to sleep for nothing.
        self.shared.wake_one(q, true);
        Ok(())
    }

    fn submit_low(&self, job: Job) -> Result<(), EngineError> {
        let mut low = self.shared.low.lock().expect("low queue lock");
        if low.closed {
            return Err(EngineError::ShuttingDown);
        }
        if low.jobs.len() >= self.shared.config.max_queue_size {
            return Err(EngineError::QueueFull {
                model: self.shared.label.clone(),
                size: self.shared.config.max_queue_size,
            });
        }
        low.jobs.push_back(job);
        drop(low);
        self.shared.wake_low.notify_one();
        Ok(())
    }

    /// Whether this request is alone: no other in flight, queued or running, and none that
    /// overlapped for the quiet period. Notes an overlap when there is one.
    fn alone(&self, q: &mut Queue) -> bool {
        let now = Instant::now();
        let lone = q.jobs.is_empty()
            && q.running == 0
            && self.shared.in_flight.load(Ordering::SeqCst) <= 1;
        if !lone {
            q.overlapped = Some(now);
            return false;
        }
        q.overlapped
            .is_none_or(|at| now.duration_since(at) >= self.shared.quiet)
    }

    /// Requests waiting in the queue (the real-time one: low-priority work waits for spare
    /// capacity by design).
    pub fn queued(&self) -> usize {
        self.shared.queue.lock().expect("queue lock").jobs.len()
    }

    /// Stops taking jobs; the runners finish what is queued, then exit.
    pub fn close(&self) {
        self.shared.queue.lock().expect("queue lock").closed = true;
        self.shared.wake.notify_all();
        self.shared.low.lock().expect("low queue lock").closed = true;
        self.shared.wake_low.notify_all();
    }

    /// Waits for the runners to exit (after `close`).
    pub fn join(&self) {
        let runners = std::mem::take(&mut *self.runners.lock().expect("runners lock"));
        for r in runners {
            let _ = r.join();
        }
    }
}

/// A request in flight; see [`Batcher::enter`].
pub struct Caller<'a>(&'a AtomicUsize);

impl Drop for Caller<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Shared {
    /// Releases the queue, then wakes one idle runner if `needed` and there is one not woken
    /// already.
    fn wake_one(&self, mut q: MutexGuard<'_, Queue>, needed: bool) {
        let wake = needed && q.idle > 0;
        if wake {
            q.idle -= 1;
            q.waking += 1;
        }
        drop(q);
        if wake {
            self.wake.notify_one();
        }
    }

    /// Waits on `wake`, at most `timeout`, counted among the idle runners meanwhile.
    fn sleep<'a>(
        &self,
        mut q: MutexGuard<'a, Queue>,
        timeout: Option<Duration>,
    ) -> MutexGuard<'a, Queue> {
        q.idle += 1;
        let mut q = match timeout {
            None => self.wake.wait(q).expect("queue lock"),
            Some(t) => self.wake.wait_timeout(q, t).expect("queue lock").0,
        };
        // Whichever runner returns first takes a pending notification's place: the counts
        // stay right whether this one was notified, timed out or woke spuriously.
        if q.waking > 0 {
            q.waking -= 1;
        } else {
            q.idle -= 1;
        }
        q
    }

    fn run(&self) {
        while let Some(batch) = self.next_batch() {
            self.execute(batch);
            // No wake-up needed: this runner looks at the queue again itself.
            self.queue.lock().expect("queue lock").running -= 1;
        }
    }

    /// A low-priority runner: at the lowest scheduling priority, it runs the low-priority
    /// queue's jobs in batches as large as the settings allow, without waiting to fill them,
    /// as often as the pacer lets it.
    fn run_low(&self) {
        vatic_server::priority::lower_to_idle(&format!("low-{}", self.label));
        loop {
            self.pacer.wait_blocking();
            let mut low = self.low.lock().expect("low queue lock");
            let batch = loop {
                self.purge(&mut low.jobs);
                if !low.jobs.is_empty() {
                    let (picked, _) = self.select(&low.jobs);
                    break take(&mut low.jobs, &picked);
                }
                if low.closed {
                    return;
                }
                low = self.wake_low.wait(low).expect("low queue lock");
            };
            let more = !low.jobs.is_empty();
            drop(low);
            if more {
                self.wake_low.notify_one();
            }
            let started = Instant::now();
            self.execute(batch);
            self.pacer.charge(started.elapsed());
        }
    }

    /// Drops jobs whose client has gone and answers jobs past their deadline.
    fn purge(&self, jobs: &mut VecDeque<Job>) {
        let now = Instant::now();
        let stale = |job: &Job| job.reply.is_closed() || job.deadline <= now;
        if !jobs.iter().any(stale) {
            return;
        }
        for job in std::mem::take(jobs) {
            if job.reply.is_closed() {
                self.stats.cancelled(now - job.enqueued);
            } else if job.deadline <= now {
                self.stats.failed(now - job.enqueued);
                let _ = job.reply.send(Err(EngineError::Timeout {
                    model: self.label.clone(),
                    ms: self.config.timeout_ms,
                }));
            } else {
                jobs.push_back(job);
            }
        }
    }

    /// Picks the jobs of the next run: the oldest job, then later jobs with the same row shapes
    /// while their rows fit in `max_batch_size`. Returns queue positions and the row total.
    fn select(&self, jobs: &VecDeque<Job>) -> (Vec<usize>, usize) {
        let front = &jobs[0];
        let mut picked = vec![0];
        let mut total = front.rows;
        let max = self.config.max_batch_size;
        if !self.model.signature.batched || max <= 1 {
            return (picked, total);
        }
        for (i, job) in jobs.iter().enumerate().skip(1) {
            if total >= max {
                break;
            }
            if job.key != front.key {
                continue;
            }
            if total + job.rows > max {
                break;
            }
            picked.push(i);
            total += job.rows;
        }
        (picked, total)
    }

    fn next_batch(&self) -> Option<Vec<Job>> {
        let mut q = self.queue.lock().expect("queue lock");
        loop {
            self.purge(&mut q.jobs);
            if q.jobs.is_empty() {
                if q.closed {
                    return None;
                }
                q = self.sleep(q, None);
                continue;
            }
            if q.running >= self.config.instances {
                // Every instance is running (some on submitting threads); the first to finish
                // takes these jobs.
                q = self.sleep(q, None);
                continue;
            }
            let (picked, total) = self.select(&q.jobs);
            let due = q.jobs[0].enqueued + Duration::from_micros(self.config.max_queue_delay_us);
            let now = Instant::now();
            let ready = total >= self.config.max_batch_size
                || self.config.preferred_batch_sizes.contains(&total)
                || !self.model.signature.batched
                || now >= due
                || q.closed;
            if !ready {
                q = self.sleep(q, Some(due - now));
                continue;
            }
            let batch = take(&mut q.jobs, &picked);
            q.running += 1;
            let more = !q.jobs.is_empty() && q.running < self.config.instances;
            self.wake_one(q, more);
            return Some(batch);
        }
    }

    fn execute(&self, jobs: Vec<Job>) {
        let started = Instant::now();
        for job in &jobs {
            self.stats.dequeued(started - job.enqueued);
        }
        let result = catch_unwind(AssertUnwindSafe(|| self.compute(&jobs)))
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the model panicked")));
        match result {
            Ok((outputs, execution)) => {
                self.stats.executed(&execution, jobs.len() as u64);
                for (job, out) in jobs.into_iter().zip(outputs) {
                    self.stats.succeeded(job.enqueued.elapsed());
                    let _ = job.reply.send(Ok(out));
                }
            }
            Err(e) => {
                let msg = format!("{e:#}");
                tracing::error!(model = %self.label, requests = jobs.len(), error = %msg, "model run failed");
                for job in jobs {
                    self.stats.failed(job.enqueued.elapsed());
                    let _ = job.reply.send(Err(EngineError::Inference(msg.clone())));
                }
            }
        }
    }

    fn compute(&self, jobs: &[Job]) -> anyhow::Result<(Vec<JobOutputs>, Execution)> {
        let t0 = Instant::now();
        let signature = &self.model.signature;
        let total: usize = jobs.iter().map(|j| j.rows).sum();
        let mut inputs: TVec<TValue> = TVec::new();
        for (i, meta) in signature.inputs.iter().enumerate() {
            let shape: Vec<usize> = if jobs.len() == 1 {
                jobs[0].inputs[i]
                    .shape
                    .iter()
                    .map(|d| *d as usize)
                    .collect()
            } else {
                std::iter::once(total)
                    .chain(jobs[0].key[i].iter().map(|d| *d as usize))
                    .collect()
            };
            let parts: Vec<&TensorData> = jobs.iter().map(|j| &j.inputs[i].data).collect();
            inputs.push(stack(meta.datatype, &shape, &parts)?.into());
        }
        let t1 = Instant::now();
        let outputs = self.model.run_at(inputs, jobs[0].priority)?;
        let t2 = Instant::now();
        let mut per_job: Vec<JobOutputs> = jobs
            .iter()
            .map(|_| Vec::with_capacity(outputs.len()))
            .collect();
        for (t, meta) in outputs.iter().zip(&signature.outputs) {
            if jobs.len() > 1 && t.shape().first() != Some(&total) {
                anyhow::bail!(
                    "output '{}' has shape {:?}, not {total} rows",
                    meta.name,
                    t.shape()
                );
            }
            let mut at = 0;
            for (job, out) in jobs.iter().zip(per_job.iter_mut()) {
                let (start, end) = if jobs.len() == 1 {
                    (0, t.shape().first().copied().unwrap_or(0))
                } else {
                    (at, at + job.rows)
                };
                out.push(rows(t, start, end)?);
                at = end;
            }
        }
        let t3 = Instant::now();
        let rows = if signature.batched {
            total as u64
        } else {
            jobs.len() as u64
        };
        Ok((
            per_job,
            Execution {
                rows,
                input: t1 - t0,
                infer: t2 - t1,
                output: t3 - t2,
            },
        ))
    }
}

/// Removes the jobs at `picked` (ascending queue positions) from `jobs`, in queue order.
fn take(jobs: &mut VecDeque<Job>, picked: &[usize]) -> Vec<Job> {
    let mut batch: Vec<Job> = picked
        .iter()
        .rev()
        .map(|i| jobs.remove(*i).expect("picked from the queue"))
        .collect();
    batch.reverse();
    batch
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::EngineMetrics;
    use vatic_schema::DataType;

    /// A batcher of the demo model with `instances` instances and `runners` runner threads;
    /// requests that overlapped keep the next ones off the submitting thread for an hour.
    fn batcher(inline: bool, instances: usize, runners: usize) -> Batcher {
        quiet_for(Duration::from_secs(3600), inline, instances, runners)
    }

    /// A pacer that never holds low-priority work back.
    fn pacer() -> Arc<Pacer> {
        let unlimited = vatic_server::priority::LowPrioritySettings {
            share: 1.0,
            ..Default::default()
        };
        Arc::new(Pacer::new(&unlimited, 1))
    }

    fn quiet_for(quiet: Duration, inline: bool, instances: usize, runners: usize) -> Batcher {
        let file = vatic_testkit::root().join("models/breast_cancer/1/model.onnx");
        let model = Arc::new(OnnxModel::load(&file, None).unwrap());
        let config = BatchingConfig {
            instances,
            ..BatchingConfig::default()
        };
        let stats = Arc::new(Stats::new(EngineMetrics::default().version("m", "1")));
        let threads = Threads { runners, quiet };
        Batcher::with_threads("m:1".into(), model, config, inline, stats, pacer(), threads)
    }

    fn job() -> (Job, oneshot::Receiver<Result<JobOutputs, EngineError>>) {
        let values: Vec<f32> = (0..30).map(|i| i as f32 * 0.5).collect();
        let input = Tensor::new(
            "input",
            DataType::Fp32,
            vec![1, 30],
            TensorData::from_values(&values),
        )
        .unwrap();
        let (reply, answer) = oneshot::channel();
        let now = Instant::now();
        let job = Job {
            inputs: vec![input],
            rows: 1,
            key: vec![vec![30]],
            enqueued: now,
            deadline: now + Duration::from_secs(30),
            reply,
            priority: Priority::RealTime,
        };
        (job, answer)
    }

    fn running(b: &Batcher, n: usize) {
        b.shared.queue.lock().unwrap().running = n;
        b.shared.wake.notify_all();
    }

    fn stop(b: &Batcher) {
        b.close();
        b.join();
    }

    #[test]
    fn the_only_request_in_flight_is_answered_before_submit_returns() {
        // No runner threads at all: only the submitting thread can answer.
        let b = batcher(true, 1, 0);
        let _caller = b.enter();
        let (j, mut answer) = job();
        b.submit(j).unwrap();
        let outputs = answer.try_recv().expect("answered on this thread").unwrap();
        assert_eq!(outputs[0].0, [1, 2]);
        assert_eq!(b.shared.queue.lock().unwrap().running, 0);
        assert_eq!(b.queued(), 0);
        stop(&b);
    }

    #[test]
    fn overlapping_requests_go_through_the_queue() {
        let b = batcher(true, 2, 0);
        // Another request in flight: this one queues, where it can batch with the other.
        let first = b.enter();
        let _second = b.enter();
        let (j, mut answer) = job();
        b.submit(j).unwrap();
        assert!(answer.try_recv().is_err(), "ran on the submitting thread");
        assert_eq!(b.queued(), 1);
        // Alone again, but a job is waiting: no jumping the queue.
        drop(first);
        let (j, mut answer) = job();
        b.submit(j).unwrap();
        assert!(answer.try_recv().is_err(), "jumped the queue");
        assert_eq!(b.queued(), 2);
        // Alone with nothing waiting, but within the quiet period after an overlap.
        b.shared.queue.lock().unwrap().jobs.clear();
        let (j, mut answer) = job();
        b.submit(j).unwrap();
        assert!(answer.try_recv().is_err(), "ran inside the quiet period");
        assert_eq!(b.queued(), 1);
    }

    #[test]
    fn after_the_quiet_period_a_lone_request_runs_on_the_submitting_thread_again() {
        let b = quiet_for(Duration::ZERO, true, 2, 0);
        let first = b.enter();
        let _second = b.enter();
        let (j, _answer) = job();
        b.submit(j).unwrap();
        assert_eq!(b.queued(), 1, "overlapping requests queue");
        assert!(b.shared.queue.lock().unwrap().overlapped.is_some());
        b.shared.queue.lock().unwrap().jobs.clear();
        drop(first);
        let (j, mut answer) = job();
        b.submit(j).unwrap();
        answer.try_recv().expect("answered on this thread").unwrap();
    }

    #[test]
    fn a_request_does_not_run_beside_a_running_batch() {
        let b = batcher(true, 2, 0);
        let _caller = b.enter();
        running(&b, 1);
        let (j, mut answer) = job();
        b.submit(j).unwrap();
        assert!(answer.try_recv().is_err(), "ran on the submitting thread");
        assert_eq!(b.queued(), 1);
    }

    #[test]
    fn without_inline_a_runner_answers() {
        let b = batcher(false, 1, 1);
        let _caller = b.enter();
        let (j, answer) = job();
        b.submit(j).unwrap();
        let outputs = answer.blocking_recv().unwrap().unwrap();
        assert_eq!(outputs[0].0, [1, 2]);
        stop(&b);
    }

    /// Waits, at most ten seconds, until `done` holds for the queue.
    fn until(b: &Batcher, what: &str, done: impl Fn(&Queue) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done(&b.shared.queue.lock().unwrap()) {
            assert!(Instant::now() < deadline, "still not {what} after 10 s");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn idle_runners_are_counted_and_woken_by_a_submit() {
        let b = batcher(false, 2, 2);
        until(&b, "both runners idle", |q| q.idle == 2);
        let _caller = b.enter();
        let (j, answer) = job();
        b.submit(j).unwrap();
        answer.blocking_recv().unwrap().unwrap();
        until(&b, "both runners idle again", |q| {
            q.idle == 2 && q.waking == 0 && q.running == 0
        });
        stop(&b);
        let q = b.shared.queue.lock().unwrap();
        assert_eq!((q.idle, q.waking), (0, 0));
    }

    #[test]
    fn a_runner_being_woken_is_not_notified_again() {
        // No runner threads: the counts stand for a runner that is asleep.
        let b = batcher(false, 1, 0);
        b.shared.queue.lock().unwrap().idle = 1;
        let (j, _first) = job();
        b.submit(j).unwrap();
        let counts = |b: &Batcher| {
            let q = b.shared.queue.lock().unwrap();
            (q.idle, q.waking)
        };
        assert_eq!(counts(&b), (0, 1), "the first job wakes the runner");
        let (j, _second) = job();
        b.submit(j).unwrap();
        assert_eq!(
            counts(&b),
            (0, 1),
            "the runner on its way finds the second job too"
        );
        assert_eq!(b.queued(), 2);
    }

    #[test]
    fn jobs_submitted_from_many_threads_are_all_answered() {
        let b = Arc::new(batcher(false, 2, 2));
        let submitters: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    let mut answers = Vec::new();
                    for _ in 0..250 {
                        let (j, answer) = job();
                        b.submit(j).unwrap();
                        answers.push(answer);
                    }
                    answers
                })
            })
            .collect();
        let answers: Vec<_> = submitters
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        for mut answer in answers {
            loop {
                match answer.try_recv() {
                    Ok(outputs) => {
                        assert_eq!(outputs.unwrap()[0].0, [1, 2]);
                        break;
                    }
                    Err(oneshot::error::TryRecvError::Empty) => {
                        assert!(
                            Instant::now() < deadline,
                            "a job still unanswered after 10 s"
                        );
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(e) => panic!("the job was dropped: {e}"),
                }
            }
        }
        stop(&b);
    }

    #[test]
    fn runners_wait_while_every_instance_is_running() {
        let b = batcher(true, 2, 2);
        // Both instances taken (on submitting threads, say): the runners may not start more.
        running(&b, 2);
        let (j, mut answer) = job();
        b.submit(j).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(answer.try_recv().is_err(), "ran beyond the instance count");
        assert_eq!(b.queued(), 1);
        // An instance frees up: a runner takes the job.
        running(&b, 1);
        answer.blocking_recv().unwrap().unwrap();
        assert_eq!(b.queued(), 0);
        stop(&b);
    }

    fn low_job() -> (Job, oneshot::Receiver<Result<JobOutputs, EngineError>>) {
        let (mut j, answer) = job();
        j.priority = Priority::Low;
        (j, answer)
    }

    #[test]
    fn a_low_priority_job_never_runs_on_the_submitting_thread() {
        // Inline on and nothing else in flight, but no runner threads: the job waits in the
        // low-priority queue, not in the real-time one.
        let b = batcher(true, 1, 0);
        let _caller = b.enter();
        let (j, mut answer) = low_job();
        b.submit(j).unwrap();
        assert!(answer.try_recv().is_err(), "ran on the submitting thread");
        assert_eq!(b.shared.low.lock().unwrap().jobs.len(), 1);
        assert_eq!(b.queued(), 0, "the real-time queue has it");
        stop(&b);
    }

    #[test]
    fn low_priority_runners_answer_while_every_real_time_instance_is_busy() {
        let b = batcher(false, 1, 1);
        running(&b, 1);
        let answers: Vec<_> = (0..5)
            .map(|_| {
                let (j, answer) = low_job();
                b.submit(j).unwrap();
                answer
            })
            .collect();
        for answer in answers {
            assert_eq!(answer.blocking_recv().unwrap().unwrap()[0].0, [1, 2]);
        }
        running(&b, 0);
        stop(&b);
    }

    #[test]
    fn the_low_priority_queue_is_bounded_and_refuses_past_its_size() {
        let file = vatic_testkit::root().join("models/breast_cancer/1/model.onnx");
        let model = Arc::new(OnnxModel::load(&file, None).unwrap());
        let config = BatchingConfig {
            max_queue_size: 2,
            ..BatchingConfig::default()
        };
        let stats = Arc::new(Stats::new(EngineMetrics::default().version("m", "1")));
        let threads = Threads {
            runners: 0,
            quiet: QUIET,
        };
        let b = Batcher::with_threads("m:1".into(), model, config, false, stats, pacer(), threads);
        for _ in 0..2 {
            b.submit(low_job().0).unwrap();
        }
        match b.submit(low_job().0) {
            Err(EngineError::QueueFull { size: 2, .. }) => {}
            other => panic!("expected the queue to be full, got {other:?}"),
        }
        // The real-time queue is not the low one's: it still takes a job.
        b.submit(job().0).unwrap();
        assert_eq!(b.queued(), 1);
        stop(&b);
    }

    /// The scheduling policy of this process's thread named `name` (field 41 of its `stat`).
    fn policy_of_thread(name: &str) -> Option<u32> {
        // Threads of other tests end while this walks the folder: one gone is skipped.
        for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
            let dir = task.path();
            let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
                continue;
            };
            if comm.trim_end() != name {
                continue;
            }
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            // Fields after the command name, which is in parentheses: state is field 3.
            let rest = &stat[stat.rfind(')')? + 2..];
            return rest.split(' ').nth(41 - 3)?.parse().ok();
        }
        None
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn low_priority_runners_run_at_the_idle_scheduling_policy() {
        const SCHED_OTHER: u32 = 0;
        const SCHED_IDLE: u32 = 5;
        let label = "prio:7";
        let file = vatic_testkit::root().join("models/breast_cancer/1/model.onnx");
        let model = Arc::new(OnnxModel::load(&file, None).unwrap());
        let stats = Arc::new(Stats::new(EngineMetrics::default().version("prio", "7")));
        let threads = Threads {
            runners: 1,
            quiet: QUIET,
        };
        let b = Batcher::with_threads(
            label.into(),
            model,
            BatchingConfig::default(),
            false,
            stats,
            pacer(),
            threads,
        );
        // A job answered by the low runner shows that it has set its policy.
        let (j, answer) = low_job();
        b.submit(j).unwrap();
        answer.blocking_recv().unwrap().unwrap();
        assert_eq!(
            policy_of_thread(&format!("low-{label}-0")),
            Some(SCHED_IDLE)
        );
        assert_eq!(
            policy_of_thread(&format!("run-{label}-0")),
            Some(SCHED_OTHER)
        );
        stop(&b);
    }
}
