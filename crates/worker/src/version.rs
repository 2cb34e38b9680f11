//! One loaded model version: its optimised model, its batcher and its statistics, and the
//! request checks and Triton configuration that depend on its signature.

use crate::batcher::{Batcher, Job, JobOutputs, Priority};
use crate::config::{BatchingConfig, EngineChoice, ModelToml};
use crate::engine::{EngineSettings, VersionSpec};
use crate::metrics::VersionMetrics;
use crate::onnx::{Backend, OnnxModel};
use crate::profile::{self, Recommendation};
use crate::stats::Stats;
use crate::EngineError;
use anyhow::Context;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use vatic_schema::admin::EngineFigure;
use vatic_schema::{
    ConfigTensor, DynamicBatching, InferRequest, InferResponse, InstanceGroup, ModelConfig,
    Parameters, QueuePolicy, Tensor, TensorMetadata,
};
use vatic_server::priority::Pacer;

/// The platform vatic reports for ONNX models, in the V2 `<project>_<format>` form.
pub const PLATFORM: &str = "onnx_onnxv1";

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
    /// What the load-time profile recommended, when one ran.
    pub profiled: Option<Recommendation>,
    /// With `engine = "auto"`: what each engine measured at load.
    pub engines: Vec<EngineFigure>,
    /// How long one run with one row took after warm-up (the median of three).
    pub one_row_run: Duration,
    /// Whether requests may run on the thread that received them (see
    /// [`BatchingConfig::inline_max_us`]).
    pub inline: bool,
    /// Whether its `model.toml` opts it into the api's response cache.
    pub cache: bool,
    pub(crate) batcher: Batcher,
    pub(crate) stats: Arc<Stats>,
}

/// A request checked against its version's signature, ready to queue.
struct Prepared {
    /// The inputs, in signature order.
    inputs: Vec<Tensor>,
    /// Rows the request carries (1 for a model without a batch dimension).
    rows: usize,
    /// The inputs' shapes past the row dimension: only requests with equal keys share a run.
    key: Vec<Vec<u64>>,
    /// Indices of the signature's outputs to return, in the order asked for.
    outputs: Vec<usize>,
}

/// A version loaded into its engine, before its runners start.
struct Loaded {
    model: Arc<OnnxModel>,
    batching: BatchingConfig,
    profiled: Option<Recommendation>,
    engines: Vec<EngineFigure>,
}

/// Loads `file` with the overrides of `config` (a `model.toml` text, empty for none; `origin`
/// names it in errors) into the engine `engine` names, else the one `config` names, else
/// `settings.engine` (with `auto`, the first engine that can load it), and runs it once per
/// batch size it will first see. Returns the model and its batching settings; nothing is
/// started.
pub fn check_model(
    file: &Path,
    config: &str,
    origin: &str,
    engine: Option<EngineChoice>,
    settings: &EngineSettings,
) -> anyhow::Result<(Arc<OnnxModel>, BatchingConfig)> {
    let loaded = load(file, config, origin, engine, settings, false)?;
    Ok((loaded.model, loaded.batching))
}

/// [`check_model`]; with `serve`, load-time profiling (when it is on and `config` has no
/// `[batching]` of its own: the batch size and instances measured best on this machine) and,
/// for `auto`, both engines measured: ONNX Runtime serves when it is faster both in rows a second
/// and at one row, else tract.
fn load(
    file: &Path,
    config: &str,
    origin: &str,
    engine: Option<EngineChoice>,
    settings: &EngineSettings,
    serve: bool,
) -> anyhow::Result<Loaded> {
    let defaults = &settings.batching;
    let overrides = ModelToml::parse(config, origin)?;
    let explicit = overrides.as_ref().is_some_and(|t| t.batching.is_some());
    let batching = match &overrides {
        Some(t) => t.batching(defaults, origin)?,
        None => defaults.clone(),
    };
    let choice = engine
        .or(overrides.as_ref().and_then(|t| t.engine))
        .unwrap_or(settings.engine);
    let candidates = match choice {
        EngineChoice::Tract => vec![Backend::Tract],
        EngineChoice::OnnxRuntime => vec![Backend::OnnxRuntime],
        EngineChoice::Auto => vec![Backend::Tract, Backend::OnnxRuntime],
    };
    let profiling = serve && settings.profile.at_load && !explicit;
    let measuring = serve && choice == EngineChoice::Auto;
    let grid = settings.profile.grid(defaults);
    let mut engines = Vec::new();
    // The engine serving so far, with its rows a second and its one-row run.
    let mut best: Option<(Loaded, f64, Duration)> = None;
    let mut failures = Vec::new();
    for backend in candidates {
        // Loaded and, when it will serve, measured: with `auto`, an engine that fails either
        // is left out.
        let attempt =
            OnnxModel::load_with(file, overrides.as_ref(), backend, &settings.onnxruntime)
                .and_then(|model| {
                    let (batching, profiled, speed) = if profiling {
                        let recommended = profile::profile(&model, &grid)?.recommended;
                        let speed = recommended.samples_per_second;
                        (recommended.apply(defaults), Some(recommended), speed)
                    } else if measuring {
                        let rows = if model.signature.batched {
                            batching.max_batch_size
                        } else {
                            1
                        };
                        let cell = profile::measure(&model, rows, batching.instances, &grid)?;
                        (batching.clone(), None, cell.samples_per_second)
                    } else {
                        (batching.clone(), None, 0.0)
                    };
                    let one_row = if measuring {
                        // Sized as it would serve.
                        model.set_instances(batching.instances)?;
                        one_row_run(&model, AUTO_ONE_ROW_RUNS)?
                    } else {
                        Duration::ZERO
                    };
                    Ok((Arc::new(model), batching, profiled, speed, one_row))
                });
        let (model, batching, profiled, speed, one_row) = match attempt {
            Ok(a) => a,
            Err(e) if choice == EngineChoice::Auto => {
                let reason = format!("{e:#}");
                tracing::warn!(engine = %backend, error = %reason, "engine = auto: this engine cannot serve the model");
                failures.push(format!("{backend}: {reason}"));
                engines.push(EngineFigure {
                    engine: backend.as_str().into(),
                    samples_per_second: None,
                    one_row_us: None,
                    error: Some(reason),
                    chosen: false,
                });
                continue;
            }
            Err(e) => return Err(e),
        };
        engines.push(EngineFigure {
            engine: backend.as_str().into(),
            samples_per_second: measuring.then_some(speed),
            one_row_us: measuring.then_some(one_row.as_secs_f64() * 1e6),
            error: None,
            chosen: false,
        });
        // The first engine that loads (tract, with auto) serves unless another does more rows a
        // second and runs one row at least as soon. The in-process figures leave out what serving
        // adds around each run, which costs an engine with the slower single run more than the
        // profile shows; when the engines split, the first keeps the version.
        if best
            .as_ref()
            .is_some_and(|(_, s, r)| *s >= speed || *r < one_row)
        {
            continue;
        }
        best = Some((
            Loaded {
                model,
                batching,
                profiled,
                engines: Vec::new(),
            },
            speed,
            one_row,
        ));
        if !serve {
            // A check needs one engine that can serve it.
            break;
        }
    }
    let Some((mut loaded, ..)) = best else {
        anyhow::bail!("no engine can load the model: {}", failures.join("; "));
    };
    for e in &mut engines {
        e.chosen = e.engine == loaded.model.backend().as_str();
    }
    if choice == EngineChoice::Auto && serve {
        loaded.engines = engines;
    }
    loaded.model.set_instances(loaded.batching.instances)?;
    warm_up(&loaded.model, &loaded.batching)?;
    Ok(loaded)
}

impl LoadedVersion {
    /// Loads, profiles (see [`ProfileSettings`]), warms and starts a version's runner threads.
    pub(crate) fn start(
        spec: &VersionSpec,
        settings: &EngineSettings,
        metrics: VersionMetrics,
        pacer: Arc<Pacer>,
    ) -> anyhow::Result<LoadedVersion> {
        let Loaded {
            model,
            batching,
            profiled,
            engines,
        } = load(
            &spec.file,
            &spec.config,
            &spec.origin,
            spec.engine,
            settings,
            true,
        )?;
        let one_row_run = one_row_run(&model, 3)?;
        let inline = batching.inline_max_us > 0
            && batching.max_queue_delay_us == 0
            && one_row_run <= Duration::from_micros(batching.inline_max_us);
        let stats = Arc::new(Stats::new(metrics));
        let batcher = Batcher::start(
            format!("{}:{}", spec.model, spec.version),
            model.clone(),
            batching.clone(),
            inline,
            stats.clone(),
            pacer,
        );
        Ok(LoadedVersion {
            name: spec.model.clone(),
            version: spec.version.to_string(),
            model,
            batching,
            profiled,
            engines,
            one_row_run,
            inline,
            cache: ModelToml::caches(&spec.config),
            batcher,
            stats,
        })
    }

    /// Checks a request against the signature and runs it through the batcher, in the queue of
    /// its priority.
    pub async fn infer(
        &self,
        req: &InferRequest,
        priority: Priority,
    ) -> Result<InferResponse, EngineError> {
        // Low-priority work waits in a queue of its own: it does not keep a real-time request
        // from running on the thread that submits it.
        let _caller = (priority == Priority::RealTime).then(|| self.batcher.enter());
        let Prepared {
            inputs,
            rows,
            key,
            outputs: selected,
        } = self.prepare(req)?;
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
            priority,
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

    /// Checks a request's inputs and requested outputs against the signature.
    fn prepare(&self, req: &InferRequest) -> Result<Prepared, EngineError> {
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
        Ok(Prepared {
            inputs: ordered,
            rows: rows.map(|r| r.0).unwrap_or(1),
            key,
            outputs: selected,
        })
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
            backend: self.model.backend().to_string(),
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
        let inputs = model.sample_inputs(rows)?;
        model
            .run(inputs)
            .map_err(|e| e.context(format!("warm-up run with {rows} row(s)")))?;
    }
    Ok(())
}

/// One-row runs `engine = "auto"` times each engine on: more than a served version's three, as
/// the engines' figures can be close.
const AUTO_ONE_ROW_RUNS: usize = 15;

/// How long one run with one row takes once warm: the median of `runs`. Served versions only;
/// checking a pushed file does not need it.
fn one_row_run(model: &OnnxModel, runs: usize) -> anyhow::Result<Duration> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let inputs = model.sample_inputs(1)?;
        let started = Instant::now();
        model.run(inputs).context("timed one-row run")?;
        times.push(started.elapsed());
    }
    times.sort_unstable();
    Ok(times[runs / 2])
}
