//! Shadow traffic: a copy of a served request goes to the shadow version off the request path,
//! and its answer is compared with the one the caller got, never returned. Copies wait in a
//! bounded queue; when the shadow falls behind, new copies are dropped and counted, so the
//! caller pays only for a copy and a non-blocking enqueue.

use super::stats::Tally;
use crate::backend::Backend;
use crate::prediction_log::PredictionLog;
use crate::routes::Arrival;
use prometheus::{IntCounterVec, Opts, Registry};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, Mutex};
use vatic_schema::admin::LogMode;
use vatic_schema::rollout::SideStats;
use vatic_schema::{DataType, InferRequest, InferResponse, Tensor, TensorData};
use vatic_store::PredictionRecord;
use vatic_worker::Priority;

/// One copy to run on the shadow.
pub struct ShadowCopy {
    /// Model name.
    pub model: String,
    /// The shadow version.
    pub version: u64,
    /// The request as the served version got it.
    pub request: InferRequest,
    /// The served answer.
    pub served: InferResponse,
    /// The request's id, which the shadow's call carries too.
    pub request_id: Option<String>,
    /// The API key the request came with.
    pub key_id: Option<String>,
    /// When the served request arrived.
    pub arrived_at: chrono::DateTime<chrono::Utc>,
    /// What the prediction log kept of the served request; the shadow's answer is kept beside
    /// it the same way.
    pub logged: Option<LogMode>,
}

/// What the shadow's tasks need to run and count a copy.
#[derive(Clone)]
struct Sender {
    backend: Arc<Backend>,
    tally: Arc<Tally>,
    copies: IntCounterVec,
    log: Option<PredictionLog>,
    queued_bytes: Arc<AtomicUsize>,
}

impl Sender {
    /// Runs a copy on the shadow version, at low priority, and counts what came of it.
    async fn send(&self, copy: ShadowCopy) {
        self.queued_bytes.fetch_sub(copy.bytes(), Ordering::Relaxed);
        let started = Arrival::now();
        let version = copy.version.to_string();
        // On the workers' spare capacity too: a shadow never takes a core from a request a
        // caller waits for.
        let answer = self
            .backend
            .infer_at(
                &copy.model,
                Some(&version),
                &copy.request,
                copy.request_id.as_deref(),
                Priority::Low,
            )
            .await;
        let elapsed_ms = started.instant.elapsed().as_secs_f64() * 1000.0;
        let mut stats = SideStats::default();
        if let (Some(log), Some(mode)) = (&self.log, copy.logged) {
            log.log(record(&copy, &answer, mode, started));
        }
        let outcome = match answer {
            Ok(shadow) => {
                stats.answered(200, elapsed_ms);
                compare(&copy.served, &shadow, &mut stats);
                stats.compared = 1;
                "compared"
            }
            Err(e) => {
                use actix_web::ResponseError;
                let status = e.status_code().as_u16();
                // A shadow that cannot answer is an error of the shadow, whatever the status:
                // the served version answered the same request.
                stats.answered(status.max(500), elapsed_ms);
                tracing::debug!(model = %copy.model, version = %version, error = %e, "shadow copy failed");
                "error"
            }
        };
        self.copies
            .with_label_values(&[&copy.model, &version, outcome])
            .inc();
        self.tally.add(&copy.model, copy.version, "shadow", &stats);
    }
}

/// The shadow's queue and the tasks that empty it.
pub struct Mirror {
    queue: mpsc::Sender<ShadowCopy>,
    /// Tensor bytes the queued copies hold, and the most they may.
    queued_bytes: Arc<AtomicUsize>,
    max_bytes: usize,
    tally: Arc<Tally>,
    copies: IntCounterVec,
}

impl Mirror {
    /// Starts `concurrency` tasks running copies on `backend`, fed by a queue of `capacity`;
    /// dropped copies are counted in `served` (on the request path), each answer is compared
    /// into `compared`, and written to `log` beside the served record when that was kept. The
    /// tasks run on a thread of their own at the lowest scheduling class: sending, waiting for
    /// and comparing copies takes no core from served requests, and shares no lock with them.
    pub fn start(
        backend: Arc<Backend>,
        (served, compared): (Arc<Tally>, Arc<Tally>),
        (capacity, max_bytes): (usize, usize),
        concurrency: usize,
        registry: &Registry,
        log: Option<PredictionLog>,
    ) -> anyhow::Result<Mirror> {
        let copies = IntCounterVec::new(
            Opts::new(
                "vatic_shadow_copies_total",
                "Copies of served requests for a shadow version, by outcome: compared, error (the shadow failed), dropped (it fell behind).",
            ),
            &["model", "version", "outcome"],
        )?;
        registry.register(Box::new(copies.clone()))?;
        let (queue, receiver) = mpsc::channel::<ShadowCopy>(capacity.max(1));
        let receiver = Arc::new(Mutex::new(receiver));
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let sender = Sender {
            backend,
            tally: compared,
            copies: copies.clone(),
            log,
            queued_bytes: queued_bytes.clone(),
        };
        std::thread::Builder::new()
            .name("shadow".into())
            .spawn(move || {
                vatic_server::priority::lower_to_idle("shadow");
                runtime.block_on(async move {
                    let mut tasks = tokio::task::JoinSet::new();
                    for _ in 0..concurrency.max(1) {
                        let (sender, receiver) = (sender.clone(), receiver.clone());
                        tasks.spawn(async move {
                            // Ends when the queue's sender is dropped with the Mirror.
                            while let Some(copy) = receiver.lock().await.recv().await {
                                sender.send(copy).await;
                            }
                        });
                    }
                    while tasks.join_next().await.is_some() {}
                });
            })?;
        Ok(Mirror {
            queue,
            queued_bytes,
            max_bytes,
            tally: served,
            copies,
        })
    }

    /// Queues a copy without waiting; drops and counts it when the queue is full, in copies or
    /// in bytes.
    pub fn offer(&self, copy: ShadowCopy) {
        let bytes = copy.bytes();
        let held = self.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        let refused = if held + bytes > self.max_bytes {
            Err(copy)
        } else {
            self.queue.try_send(copy).map_err(|e| match e {
                mpsc::error::TrySendError::Full(c) | mpsc::error::TrySendError::Closed(c) => c,
            })
        };
        if let Err(copy) = refused {
            self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            let stats = SideStats {
                dropped: 1,
                ..SideStats::default()
            };
            self.tally.add(&copy.model, copy.version, "shadow", &stats);
            self.copies
                .with_label_values(&[&copy.model, &copy.version.to_string(), "dropped"])
                .inc();
        }
    }
}

/// The prediction log's record of a shadow's answer: the served request's id, key and arrival,
/// the shadow's version, status and latency, and in `full` mode its outputs (the inputs are the
/// served record's).
fn record(
    copy: &ShadowCopy,
    answer: &Result<InferResponse, crate::error::ApiError>,
    mode: LogMode,
    started: Arrival,
) -> PredictionRecord {
    use actix_web::ResponseError;
    let (status, response) = match answer {
        Ok(r) => (
            200,
            (mode == LogMode::Full).then(|| vatic_schema::v2::response_json(r, false)),
        ),
        Err(e) => (e.status_code().as_u16(), None),
    };
    PredictionRecord {
        id: uuid::Uuid::now_v7(),
        at: copy.arrived_at,
        request_id: copy.request_id.clone().unwrap_or_default(),
        model: copy.model.clone(),
        version: copy.version.to_string(),
        api_key: copy.key_id.clone(),
        status,
        latency_us: started.instant.elapsed().as_micros() as u64,
        request: None,
        response,
        sealed: None,
        shadow: true,
    }
}

impl ShadowCopy {
    /// The tensor bytes it holds: the request's inputs and the served outputs.
    fn bytes(&self) -> usize {
        let size = |t: &Tensor| match &t.data {
            TensorData::Fixed(b) => b.len(),
            TensorData::Bytes(items) => items.iter().map(|b| b.len()).sum(),
        };
        self.request.inputs.iter().map(size).sum::<usize>()
            + self.served.outputs.iter().map(size).sum::<usize>()
    }
}

fn is_float(dt: DataType) -> bool {
    matches!(dt, DataType::Fp16 | DataType::Fp32 | DataType::Fp64)
}

/// Rows of a tensor and the elements per row: by its first dimension (one row for a scalar).
fn rows(t: &Tensor) -> (usize, usize) {
    let count: u64 = t.shape.iter().product();
    match t.shape.first() {
        Some(&rows) if rows > 0 => (rows as usize, (count / rows) as usize),
        _ => (1, count as usize),
    }
}

/// Compares the shadow's answer with the served one into `stats`: for every output both have,
/// the absolute differences of its elements, and per row whether the shadow agrees. A row
/// agrees when every integer or boolean output (a label) is equal in it, and every float output
/// with more than one element per row (scores) has its largest element at the same place. An
/// output missing from the shadow's answer, or of another shape, disagrees on every row.
pub fn compare(served: &InferResponse, shadow: &InferResponse, stats: &mut SideStats) {
    let Some(first) = served.outputs.first() else {
        return;
    };
    let (row_count, _) = rows(first);
    let mut agree = vec![true; row_count];
    let mut measured = false;
    for s in &served.outputs {
        let (n, width) = rows(s);
        let other = shadow
            .outputs
            .iter()
            .find(|o| o.name == s.name && o.shape == s.shape);
        let Some(other) = other else {
            measured = true;
            agree.iter_mut().for_each(|a| *a = false);
            continue;
        };
        let (a, b) = (values(s), values(other));
        if a.is_empty() || a.len() != b.len() || n != row_count {
            // BYTES outputs, or a row count that differs between outputs: compared as a whole.
            if s.data != other.data {
                measured = true;
                agree.iter_mut().for_each(|x| *x = false);
            }
            continue;
        }
        let diff = stats.outputs.entry(s.name.clone()).or_default();
        for (x, y) in a.iter().zip(&b) {
            let d = (x - y).abs();
            let d = if d.is_nan() {
                if x.is_nan() && y.is_nan() {
                    0.0
                } else {
                    f64::INFINITY
                }
            } else {
                d
            };
            diff.max_abs = diff.max_abs.max(d);
            diff.sum_abs += d;
            diff.count += 1;
        }
        let label = !is_float(s.datatype);
        if !label && width < 2 {
            continue;
        }
        measured = true;
        for (row, ok) in agree.iter_mut().enumerate() {
            let (x, y) = (
                &a[row * width..(row + 1) * width],
                &b[row * width..(row + 1) * width],
            );
            let same = if label {
                x == y
            } else {
                argmax(x) == argmax(y)
            };
            *ok &= same;
        }
    }
    if measured {
        stats.rows += row_count as u64;
        stats.agreeing_rows += agree.iter().filter(|a| **a).count() as u64;
    }
}

/// A tensor's elements as `f64`, read straight from their little-endian bytes for the common
/// datatypes (this runs for every element of every compared answer); BYTES yields nothing.
fn values(t: &Tensor) -> Vec<f64> {
    fn read<const N: usize>(b: &[u8], f: impl Fn([u8; N]) -> f64) -> Vec<f64> {
        b.chunks_exact(N)
            .map(|c| f(c.try_into().expect("chunks of N bytes")))
            .collect()
    }
    let TensorData::Fixed(b) = &t.data else {
        return Vec::new();
    };
    match t.datatype {
        DataType::Fp32 => read(b, |x| f64::from(f32::from_le_bytes(x))),
        DataType::Fp64 => read(b, f64::from_le_bytes),
        DataType::Int64 => read(b, |x| i64::from_le_bytes(x) as f64),
        DataType::Int32 => read(b, |x| f64::from(i32::from_le_bytes(x))),
        DataType::Uint8 | DataType::Bool => b.iter().map(|x| f64::from(*x)).collect(),
        other => t.data.to_f64(other),
    }
}

fn argmax(values: &[f64]) -> Option<usize> {
    values
        .iter()
        .enumerate()
        .filter(|(_, v)| !v.is_nan())
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(label: &[i64], probs: &[f32]) -> InferResponse {
        let rows = label.len() as u64;
        InferResponse {
            model_name: "m".into(),
            model_version: Some("1".into()),
            id: None,
            parameters: Default::default(),
            outputs: vec![
                Tensor::new(
                    "label",
                    DataType::Int64,
                    vec![rows],
                    TensorData::from_values(label),
                )
                .unwrap(),
                Tensor::new(
                    "probabilities",
                    DataType::Fp32,
                    vec![rows, 2],
                    TensorData::from_values(probs),
                )
                .unwrap(),
            ],
        }
    }

    #[test]
    fn rows_agree_on_labels_and_argmax_and_differences_are_measured() {
        let served = response(&[0, 1, 1], &[0.9, 0.1, 0.2, 0.8, 0.4, 0.6]);
        // Row 2 flips its label and argmax; row 1 keeps them with other scores.
        let shadow = response(&[0, 1, 0], &[0.9, 0.1, 0.3, 0.7, 0.6, 0.4]);
        let mut stats = SideStats::default();
        compare(&served, &shadow, &mut stats);
        assert_eq!((stats.rows, stats.agreeing_rows), (3, 2));
        let p = &stats.outputs["probabilities"];
        assert_eq!(p.count, 6);
        assert!((p.max_abs - 0.2).abs() < 1e-6, "{}", p.max_abs);
        assert!((p.sum_abs - 0.6).abs() < 1e-6, "{}", p.sum_abs);
        assert_eq!(stats.outputs["label"].max_abs, 1.0);

        let mut same = SideStats::default();
        compare(&served, &served, &mut same);
        assert_eq!((same.rows, same.agreeing_rows), (3, 3));
        assert_eq!(same.outputs["probabilities"].max_abs, 0.0);
    }

    #[test]
    fn elements_read_from_their_bytes_as_the_schema_reads_them() {
        let tensors = [
            Tensor::new(
                "a",
                DataType::Fp32,
                vec![3],
                TensorData::from_values(&[1.5f32, -2.0, f32::NAN]),
            ),
            Tensor::new(
                "b",
                DataType::Fp64,
                vec![2],
                TensorData::from_values(&[0.25f64, -1e300]),
            ),
            Tensor::new(
                "c",
                DataType::Int64,
                vec![2],
                TensorData::from_values(&[-7i64, 1 << 40]),
            ),
            Tensor::new(
                "d",
                DataType::Int32,
                vec![2],
                TensorData::from_values(&[-3i32, 9]),
            ),
            Tensor::new(
                "e",
                DataType::Uint8,
                vec![2],
                TensorData::from_values(&[0u8, 255]),
            ),
            Tensor::new(
                "f",
                DataType::Bool,
                vec![2],
                TensorData::from_values(&[true, false]),
            ),
            Tensor::new(
                "g",
                DataType::Int16,
                vec![2],
                TensorData::from_values(&[-5i16, 6]),
            ),
        ];
        for t in tensors {
            let t = t.unwrap();
            let (fast, slow) = (values(&t), t.data.to_f64(t.datatype));
            assert_eq!(fast.len(), slow.len(), "{}", t.name);
            for (x, y) in fast.iter().zip(&slow) {
                assert!(
                    x == y || (x.is_nan() && y.is_nan()),
                    "{}: {x} != {y}",
                    t.name
                );
            }
        }
    }

    #[test]
    fn a_missing_output_disagrees_on_every_row() {
        let served = response(&[0, 1], &[0.9, 0.1, 0.2, 0.8]);
        let mut shadow = served.clone();
        shadow.outputs.remove(0);
        let mut stats = SideStats::default();
        compare(&served, &shadow, &mut stats);
        assert_eq!((stats.rows, stats.agreeing_rows), (2, 0));
        assert_eq!(stats.outputs["probabilities"].max_abs, 0.0);
    }

    #[test]
    fn a_regression_output_is_measured_without_an_agreement() {
        let one = |v: f32| InferResponse {
            model_name: "m".into(),
            model_version: None,
            id: None,
            parameters: Default::default(),
            outputs: vec![Tensor::new(
                "y",
                DataType::Fp32,
                vec![1, 1],
                TensorData::from_values(&[v]),
            )
            .unwrap()],
        };
        let mut stats = SideStats::default();
        compare(&one(1.0), &one(1.5), &mut stats);
        assert_eq!(stats.rows, 0);
        assert_eq!(stats.agreement(), None);
        assert_eq!(stats.outputs["y"].max_abs, 0.5);
    }
}
