//! The engine: every model version of a repository folder, loaded, warmed and batched.
//!
//! Layout: `<models_dir>/<model>/<version>/model.onnx`, versions being positive integers, with an
//! optional `model.toml` in the version folder or, for every version, in the model folder. Other
//! folders (a Triton repository's non-ONNX models, say) are skipped with a warning.

use crate::batcher::{Batcher, Job, JobOutputs};
use crate::config::{BatchingConfig, ModelToml};
use crate::onnx::{datum_type, OnnxModel};
use crate::stats::Stats;
use crate::EngineError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tract_onnx::prelude::{TValue, TVec, Tensor as TractTensor};
use vatic_schema::{
    ConfigTensor, DynamicBatching, InferRequest, InferResponse, InstanceGroup, ModelConfig,
    ModelMetadata, ModelStatsResponse, Parameters, QueuePolicy, RepositoryModel, Tensor,
    TensorMetadata,
};

/// The platform vatic reports for ONNX models, in the V2 `<project>_<format>` form.
pub const PLATFORM: &str = "onnx_onnxv1";

/// Where models come from and how they batch unless their `model.toml` says otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineSettings {
    /// The repository folder: `<models_dir>/<model>/<version>/model.onnx`.
    pub models_dir: PathBuf,
    /// Batching defaults for every model version.
    pub batching: BatchingConfig,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            models_dir: PathBuf::from("models"),
            batching: BatchingConfig::default(),
        }
    }
}

enum State {
    Loading,
    Ready(Arc<LoadedVersion>),
    Failed(String),
}

struct Entry {
    name: String,
    version: u64,
    dir: PathBuf,
    state: RwLock<State>,
}

/// A model version that is loaded, warmed and serving.
pub struct LoadedVersion {
    /// Model name.
    pub name: String,
    /// Version number as a string.
    pub version: String,
    /// The optimised model.
    pub model: Arc<OnnxModel>,
    /// Its batching settings.
    pub batching: BatchingConfig,
    batcher: Batcher,
    stats: Arc<Stats>,
}

/// Every model version of a repository.
pub struct Engine {
    settings: EngineSettings,
    models: BTreeMap<String, BTreeMap<u64, Entry>>,
    loaded: AtomicBool,
    accepting: AtomicBool,
}

impl Engine {
    /// Scans the repository; versions start as loading until `load_all` runs.
    pub fn new(settings: EngineSettings) -> anyhow::Result<Engine> {
        let dir = &settings.models_dir;
        let listing = std::fs::read_dir(dir)
            .map_err(|e| anyhow::anyhow!("models_dir {}: {e}", dir.display()))?;
        let mut models = BTreeMap::new();
        for model_dir in listing {
            let model_dir = model_dir?.path();
            let Some(name) = model_dir
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_string)
            else {
                continue;
            };
            if !model_dir.is_dir() || name.starts_with('.') {
                continue;
            }
            let mut versions = BTreeMap::new();
            for version_dir in std::fs::read_dir(&model_dir)? {
                let version_dir = version_dir?.path();
                let Some(version) = version_dir
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.parse::<u64>().ok())
                    .filter(|v| *v > 0)
                else {
                    continue;
                };
                if version_dir.join("model.onnx").is_file() {
                    let entry = Entry {
                        name: name.clone(),
                        version,
                        dir: version_dir,
                        state: RwLock::new(State::Loading),
                    };
                    versions.insert(version, entry);
                }
            }
            if versions.is_empty() {
                tracing::warn!(model = %name, "skipped: no <version>/model.onnx inside {}", model_dir.display());
            } else {
                models.insert(name, versions);
            }
        }
        Ok(Engine {
            settings,
            models,
            loaded: AtomicBool::new(false),
            accepting: AtomicBool::new(true),
        })
    }

    /// Loads and warms every version, several at a time; blocking. A version that fails is kept
    /// as failed, with the reason, and leaves the engine not ready.
    pub fn load_all(&self) {
        let entries: Vec<&Entry> = self.models.values().flat_map(|v| v.values()).collect();
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..threads.min(entries.len()) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(entry) = entries.get(i) else { break };
                    let started = Instant::now();
                    let state = match self.load(entry) {
                        Ok(v) => {
                            tracing::info!(model = %entry.name, version = entry.version, batched = v.model.signature.batched,
                                ms = started.elapsed().as_millis() as u64, "model version ready");
                            State::Ready(Arc::new(v))
                        }
                        Err(e) => {
                            let reason = format!("{e:#}");
                            tracing::error!(model = %entry.name, version = entry.version, error = %reason, "model version failed to load");
                            State::Failed(reason)
                        }
                    };
                    *entry.state.write().expect("state lock") = state;
                });
            }
        });
        self.loaded.store(true, Ordering::SeqCst);
    }

    fn load(&self, entry: &Entry) -> anyhow::Result<LoadedVersion> {
        let version_toml = entry.dir.join("model.toml");
        let model_toml = entry.dir.parent().map(|p| p.join("model.toml"));
        let (overrides, origin) = match ModelToml::read(&version_toml)? {
            Some(t) => (Some(t), version_toml),
            None => match &model_toml {
                Some(p) => (ModelToml::read(p)?, p.clone()),
                None => (None, version_toml),
            },
        };
        let batching = match &overrides {
            Some(t) => t.batching(&self.settings.batching, &origin.display().to_string())?,
            None => self.settings.batching.clone(),
        };
        let model = Arc::new(OnnxModel::load(
            &entry.dir.join("model.onnx"),
            overrides.as_ref(),
        )?);
        warm_up(&model, &batching)?;
        let stats = Arc::new(Stats::default());
        let label = format!("{}:{}", entry.name, entry.version);
        let batcher = Batcher::start(label, model.clone(), batching.clone(), stats.clone());
        Ok(LoadedVersion {
            name: entry.name.clone(),
            version: entry.version.to_string(),
            model,
            batching,
            batcher,
            stats,
        })
    }

    /// Ready: every version loaded and warmed, and not shutting down.
    pub fn is_ready(&self) -> bool {
        self.accepting.load(Ordering::SeqCst)
            && self.loaded.load(Ordering::SeqCst)
            && self
                .entries()
                .all(|e| matches!(*e.state.read().expect("state lock"), State::Ready(_)))
    }

    /// Reports not ready from now on; requests are still served until the server stops.
    pub fn begin_shutdown(&self) {
        self.accepting.store(false, Ordering::SeqCst);
    }

    /// Finishes queued work and stops every runner thread; blocking.
    pub fn shutdown(&self) {
        self.begin_shutdown();
        let loaded: Vec<Arc<LoadedVersion>> = self.loaded_versions();
        for v in &loaded {
            v.batcher.close();
        }
        for v in &loaded {
            v.batcher.join();
        }
    }

    fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.models.values().flat_map(|v| v.values())
    }

    fn loaded_versions(&self) -> Vec<Arc<LoadedVersion>> {
        self.entries()
            .filter_map(|e| match &*e.state.read().expect("state lock") {
                State::Ready(v) => Some(v.clone()),
                _ => None,
            })
            .collect()
    }

    fn entry(&self, name: &str, version: Option<&str>) -> Result<&Entry, EngineError> {
        let versions = self
            .models
            .get(name)
            .ok_or_else(|| EngineError::ModelNotFound(name.to_string()))?;
        match version {
            // No version: the newest one that is ready, else the newest.
            None => Ok(versions
                .values()
                .rev()
                .find(|e| matches!(*e.state.read().expect("state lock"), State::Ready(_)))
                .unwrap_or_else(|| versions.values().next_back().expect("a model has versions"))),
            Some(v) => v
                .parse::<u64>()
                .ok()
                .and_then(|v| versions.get(&v))
                .ok_or_else(|| EngineError::VersionNotFound {
                    model: name.to_string(),
                    version: v.to_string(),
                    available: versions
                        .keys()
                        .map(|k| k.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                }),
        }
    }

    /// The loaded version, or why it cannot serve.
    pub fn resolve(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Arc<LoadedVersion>, EngineError> {
        let entry = self.entry(name, version)?;
        let state = entry.state.read().expect("state lock");
        match &*state {
            State::Ready(v) => Ok(v.clone()),
            State::Loading => Err(EngineError::NotReady {
                model: name.to_string(),
                reason: format!("version {} is loading", entry.version),
            }),
            State::Failed(reason) => Err(EngineError::NotReady {
                model: name.to_string(),
                reason: format!("version {} failed to load: {reason}", entry.version),
            }),
        }
    }

    /// Whether a version can serve now; `Err` only when it does not exist.
    pub fn model_ready(&self, name: &str, version: Option<&str>) -> Result<bool, EngineError> {
        match self.resolve(name, version) {
            Ok(_) => Ok(true),
            Err(EngineError::NotReady { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Runs a request on a version (the newest when `version` is `None`).
    pub async fn infer(
        &self,
        name: &str,
        version: Option<&str>,
        req: &InferRequest,
    ) -> Result<InferResponse, EngineError> {
        self.resolve(name, version)?.infer(req).await
    }

    /// V2 model metadata.
    pub fn metadata(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<ModelMetadata, EngineError> {
        let v = self.resolve(name, version)?;
        let versions = self
            .models
            .get(name)
            .map(|m| m.keys().map(|k| k.to_string()).collect())
            .unwrap_or_default();
        Ok(ModelMetadata {
            name: name.to_string(),
            versions,
            platform: PLATFORM.to_string(),
            inputs: v.model.signature.inputs.clone(),
            outputs: v.model.signature.outputs.clone(),
        })
    }

    /// Triton's configuration of a version.
    pub fn config(&self, name: &str, version: Option<&str>) -> Result<ModelConfig, EngineError> {
        Ok(self.resolve(name, version)?.config())
    }

    /// Triton's statistics, for one version, every version of a model, or everything.
    pub fn stats(
        &self,
        name: Option<&str>,
        version: Option<&str>,
    ) -> Result<ModelStatsResponse, EngineError> {
        let versions = match (name, version) {
            (Some(n), Some(_)) => vec![self.resolve(n, version)?],
            (Some(n), None) => {
                self.models
                    .get(n)
                    .ok_or_else(|| EngineError::ModelNotFound(n.to_string()))?;
                self.loaded_versions()
                    .into_iter()
                    .filter(|v| v.name == n)
                    .collect()
            }
            (None, _) => self.loaded_versions(),
        };
        Ok(ModelStatsResponse {
            model_stats: versions
                .iter()
                .map(|v| v.stats.snapshot(&v.name, &v.version))
                .collect(),
        })
    }

    /// Every version and its state, for the repository index.
    pub fn index(&self) -> Vec<RepositoryModel> {
        self.entries()
            .map(|e| {
                let (state, reason) = match &*e.state.read().expect("state lock") {
                    State::Loading => ("LOADING", String::new()),
                    State::Ready(_) => ("READY", String::new()),
                    State::Failed(r) => ("UNAVAILABLE", r.clone()),
                };
                RepositoryModel {
                    name: e.name.clone(),
                    version: e.version.to_string(),
                    state: state.into(),
                    reason,
                }
            })
            .collect()
    }
}

/// Runs the model once per batch size it will see first (1, the preferred sizes and the
/// largest), so the first real requests do not pay for lazy initialisation.
fn warm_up(model: &OnnxModel, batching: &BatchingConfig) -> anyhow::Result<()> {
    let sig = &model.signature;
    let mut sizes = vec![1];
    if sig.batched {
        sizes.extend(batching.preferred_batch_sizes.iter().copied());
        sizes.push(batching.max_batch_size);
        sizes.sort_unstable();
        sizes.dedup();
    }
    for rows in sizes {
        let inputs: TVec<TValue> = sig
            .inputs
            .iter()
            .map(|m| {
                let shape: Vec<usize> = m
                    .shape
                    .iter()
                    .enumerate()
                    .map(|(axis, d)| match *d {
                        -1 if axis == 0 && sig.batched => rows,
                        -1 => 1,
                        d => d as usize,
                    })
                    .collect();
                Ok(TractTensor::zero_dt(datum_type(m.datatype), &shape)?.into())
            })
            .collect::<anyhow::Result<_>>()?;
        model
            .run(inputs)
            .map_err(|e| e.context(format!("warm-up run with {rows} row(s)")))?;
    }
    Ok(())
}

impl LoadedVersion {
    /// Checks a request against the signature and runs it through the batcher.
    pub async fn infer(&self, req: &InferRequest) -> Result<InferResponse, EngineError> {
        let (inputs, rows, key, selected) = self.prepare(req)?;
        let (reply, answer) = oneshot::channel();
        let now = Instant::now();
        let timeout = Duration::from_millis(self.batching.timeout_ms);
        self.batcher.submit(Job {
            inputs,
            rows,
            key,
            enqueued: now,
            deadline: now + timeout,
            reply,
        })?;
        let outputs: JobOutputs = match tokio::time::timeout(timeout, answer).await {
            Err(_) => {
                return Err(EngineError::Timeout {
                    model: self.name.clone(),
                    ms: self.batching.timeout_ms,
                })
            }
            Ok(Err(_)) => {
                return Err(EngineError::Inference(
                    "the runner stopped before answering".into(),
                ))
            }
            Ok(Ok(r)) => r?,
        };
        let mut outputs: Vec<Option<(Vec<u64>, vatic_schema::TensorData)>> =
            outputs.into_iter().map(Some).collect();
        let tensors = selected
            .into_iter()
            .map(|i| {
                let meta = &self.model.signature.outputs[i];
                let (shape, data) = outputs[i].take().expect("each output is selected once");
                Tensor {
                    name: meta.name.clone(),
                    datatype: meta.datatype,
                    shape,
                    data,
                    parameters: Parameters::new(),
                }
            })
            .collect();
        Ok(InferResponse {
            model_name: self.name.clone(),
            model_version: Some(self.version.clone()),
            id: req.id.clone(),
            parameters: Parameters::new(),
            outputs: tensors,
        })
    }

    /// Validates inputs and requested outputs; returns the inputs in signature order, the row
    /// count, the batching key and the indices of the outputs to return.
    #[allow(clippy::type_complexity)]
    fn prepare(
        &self,
        req: &InferRequest,
    ) -> Result<(Vec<Tensor>, usize, Vec<Vec<u64>>, Vec<usize>), EngineError> {
        let sig = &self.model.signature;
        let names = |ts: &[TensorMetadata]| {
            ts.iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let invalid = |msg: String| Err(EngineError::InvalidInput(msg));
        for (i, t) in req.inputs.iter().enumerate() {
            if req.inputs[..i].iter().any(|o| o.name == t.name) {
                return invalid(format!(
                    "input '{}' appears more than once in the request",
                    t.name
                ));
            }
            if !sig.inputs.iter().any(|m| m.name == t.name) {
                return invalid(format!(
                    "model '{}' has no input '{}' (inputs: {})",
                    self.name,
                    t.name,
                    names(&sig.inputs)
                ));
            }
        }
        let mut ordered = Vec::with_capacity(sig.inputs.len());
        let mut rows: Option<(usize, &str)> = None;
        for meta in &sig.inputs {
            let Some(t) = req.inputs.iter().find(|t| t.name == meta.name) else {
                return invalid(format!(
                    "input '{}' is missing (model '{}' needs: {})",
                    meta.name,
                    self.name,
                    names(&sig.inputs)
                ));
            };
            if t.datatype != meta.datatype {
                return invalid(format!(
                    "input '{}': expected datatype {}, got {}",
                    meta.name, meta.datatype, t.datatype
                ));
            }
            let fits = t.shape.len() == meta.shape.len()
                && t.shape
                    .iter()
                    .zip(&meta.shape)
                    .all(|(got, want)| *want == -1 || *got as i64 == *want);
            if !fits {
                let hint = if sig.batched && t.shape.len() + 1 == meta.shape.len() {
                    " (the first dimension counts rows: for one row send shape [1, ...])"
                } else {
                    ""
                };
                return invalid(format!(
                    "input '{}': expected shape {:?}, got {:?}{hint}",
                    meta.name, meta.shape, t.shape
                ));
            }
            if sig.batched {
                let n = t.shape[0] as usize;
                if n == 0 {
                    return invalid(format!(
                        "input '{}' has no rows (its first dimension is 0)",
                        meta.name
                    ));
                }
                match rows {
                    None => rows = Some((n, &meta.name)),
                    Some((m, other)) if m != n => {
                        return invalid(format!(
                        "inputs disagree on the number of rows: '{other}' has {m}, '{}' has {n}",
                        meta.name
                    ))
                    }
                    Some(_) => {}
                }
            }
            ordered.push(t.clone());
        }
        let key = if sig.batched {
            ordered.iter().map(|t| t.shape[1..].to_vec()).collect()
        } else {
            Vec::new()
        };
        let mut selected = Vec::new();
        for out in &req.outputs {
            let Some(i) = sig.outputs.iter().position(|m| m.name == out.name) else {
                return invalid(format!(
                    "model '{}' has no output '{}' (outputs: {})",
                    self.name,
                    out.name,
                    names(&sig.outputs)
                ));
            };
            if selected.contains(&i) {
                return invalid(format!("output '{}' already exists in request", out.name));
            }
            selected.push(i);
        }
        if selected.is_empty() {
            selected = (0..sig.outputs.len()).collect();
        }
        Ok((ordered, rows.map(|r| r.0).unwrap_or(1), key, selected))
    }

    /// Requests waiting in this version's queue.
    pub fn queued(&self) -> usize {
        self.batcher.queued()
    }

    /// Triton's configuration form.
    pub fn config(&self) -> ModelConfig {
        let sig = &self.model.signature;
        let batched = sig.batched;
        let tensors = |ts: &[TensorMetadata]| {
            ts.iter()
                .map(|t| ConfigTensor {
                    name: t.name.clone(),
                    data_type: t.datatype.triton_name().to_string(),
                    dims: if batched {
                        t.shape[1..].to_vec()
                    } else {
                        t.shape.clone()
                    },
                })
                .collect()
        };
        let b = &self.batching;
        ModelConfig {
            name: self.name.clone(),
            platform: PLATFORM.to_string(),
            backend: "tract".to_string(),
            max_batch_size: if batched { b.max_batch_size as u32 } else { 0 },
            input: tensors(&sig.inputs),
            output: tensors(&sig.outputs),
            dynamic_batching: batched.then(|| DynamicBatching {
                preferred_batch_size: b.preferred_batch_sizes.iter().map(|p| *p as u32).collect(),
                max_queue_delay_microseconds: b.max_queue_delay_us,
                default_queue_policy: QueuePolicy {
                    max_queue_size: b.max_queue_size as u32,
                    default_timeout_microseconds: b.timeout_ms * 1000,
                },
            }),
            instance_group: vec![InstanceGroup {
                count: b.instances as u32,
                kind: "KIND_CPU".into(),
            }],
            version_policy: serde_json::json!({"all": {}}),
        }
    }
}
