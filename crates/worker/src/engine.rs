//! The engine: the model versions a worker serves, each loaded, warmed and batched.
//!
//! What to serve is given as a list of [`VersionSpec`]s, from a repository folder
//! ([`crate::folder`]) or from the registry ([`crate::reconcile`]). Applying a new list starts
//! loading the versions it adds on a loader thread, never on the inference threads, and stops
//! the versions it drops once their queued requests are answered.

use crate::batcher::Priority;
use crate::config::{BatchingConfig, EngineChoice};
use crate::metrics::EngineMetrics;
use crate::onnxruntime::OnnxRuntimeSettings;
use crate::profile::ProfileSettings;
use crate::version::{LoadedVersion, PLATFORM};
use crate::EngineError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;
use vatic_schema::admin::{LoadState, LoadedVersionStatus};
use vatic_schema::{
    InferRequest, InferResponse, ModelConfig, ModelMetadata, ModelStatsResponse, RepositoryModel,
};
use vatic_server::metrics::InFlight;
use vatic_server::priority::{LowPrioritySettings, Pacer};

/// Where an engine's models are and how they batch, unless a model's `model.toml` says
/// otherwise. Flattened into the worker's and the api's settings, which refuse unknown keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EngineSettings {
    /// The repository folder, when models come from a folder:
    /// `<models_dir>/<model>/<version>/model.onnx`.
    pub models_dir: PathBuf,
    /// Batching defaults for every model version; with load-time profiling, the bounds the
    /// profile chooses within.
    pub batching: BatchingConfig,
    /// Load-time profiling of versions without a `[batching]` of their own.
    pub profile: ProfileSettings,
    /// How much of the machine low-priority work (batch jobs, shadow copies) takes while
    /// real-time requests arrive.
    pub low_priority: LowPrioritySettings,
    /// The engine of versions whose `model.toml` names none.
    pub engine: EngineChoice,
    /// Where ONNX Runtime's library is, for versions that use it.
    pub onnxruntime: OnnxRuntimeSettings,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            models_dir: PathBuf::from("models"),
            batching: BatchingConfig::default(),
            profile: ProfileSettings::default(),
            low_priority: LowPrioritySettings::default(),
            engine: EngineChoice::default(),
            onnxruntime: OnnxRuntimeSettings::default(),
        }
    }
}

impl EngineSettings {
    /// Checks values that serde cannot, naming the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.batching.validate("batching")?;
        self.profile.validate()?;
        self.low_priority.validate()
    }
}

/// One model version the engine should serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionSpec {
    /// Model name.
    pub model: String,
    /// Version number.
    pub version: u64,
    /// The ONNX file.
    pub file: PathBuf,
    /// Its `model.toml` text (batching and signature overrides); empty for none.
    pub config: String,
    /// Where that text came from, for error messages.
    pub origin: String,
    /// Whether it answers requests that name no version.
    pub default: bool,
    /// The engine the registry's model settings name, over `model.toml`'s; none: `model.toml`'s,
    /// else the worker's `engine`.
    pub engine: Option<EngineChoice>,
}

impl VersionSpec {
    /// Whether two specs load the same thing (the default flag aside).
    fn same_content(&self, other: &VersionSpec) -> bool {
        self.file == other.file && self.config == other.config && self.engine == other.engine
    }
}

enum State {
    Loading,
    Ready(Arc<LoadedVersion>),
    /// Loading again after its spec changed (its `model.toml` or its engine setting): the
    /// version as it was answers until the new load ends.
    Reloading(Arc<LoadedVersion>),
    Failed(String),
}

struct Entry {
    spec: VersionSpec,
    state: RwLock<State>,
    /// Set when the entry leaves the engine; a load that finishes afterwards stops at once.
    removed: AtomicBool,
}

impl State {
    /// The version that answers requests: the loaded one, also while it loads again.
    fn serving(&self) -> Option<&Arc<LoadedVersion>> {
        match self {
            State::Ready(v) | State::Reloading(v) => Some(v),
            State::Loading | State::Failed(_) => None,
        }
    }
}

impl Entry {
    /// Hands the loaded version over to the entry that replaces this one; this one keeps none.
    fn take_serving(&self) -> Option<Arc<LoadedVersion>> {
        let mut state = self.state.write().expect("state lock");
        match std::mem::replace(&mut *state, State::Failed("replaced by a new load".into())) {
            State::Ready(v) | State::Reloading(v) => Some(v),
            other => {
                *state = other;
                None
            }
        }
    }

    fn ready(&self) -> Option<Arc<LoadedVersion>> {
        self.state.read().expect("state lock").serving().cloned()
    }
}

type Models = BTreeMap<String, BTreeMap<u64, Arc<Entry>>>;

/// The model versions a worker serves.
pub struct Engine {
    /// How versions load, batch and profile.
    settings: EngineSettings,
    /// The pace of this process's low-priority work, shared by every version's batcher.
    pacer: Arc<Pacer>,
    models: RwLock<Models>,
    /// The version of each model that answers requests naming none.
    defaults: RwLock<BTreeMap<String, u64>>,
    /// Whether the first list applied has finished loading.
    synced: AtomicBool,
    accepting: AtomicBool,
    loads_running: AtomicUsize,
    changes: tokio::sync::watch::Sender<u64>,
    metrics: EngineMetrics,
}

impl Engine {
    /// An engine serving nothing yet.
    pub fn new(settings: &EngineSettings) -> Engine {
        Engine {
            settings: settings.clone(),
            pacer: Arc::new(Pacer::for_this_machine(&settings.low_priority)),
            models: RwLock::default(),
            defaults: RwLock::default(),
            synced: AtomicBool::new(false),
            accepting: AtomicBool::new(true),
            loads_running: AtomicUsize::new(0),
            changes: tokio::sync::watch::channel(0).0,
            metrics: EngineMetrics::default(),
        }
    }

    /// The pace of this process's low-priority work: whatever else does such work in the
    /// process (the standalone api's batch runner) keeps to it too.
    pub fn pacer(&self) -> &Arc<Pacer> {
        &self.pacer
    }

    /// Makes `specs` the set of versions served: versions not yet held start loading on a
    /// loader thread, versions no longer listed are removed and their runners stopped once
    /// their queues are empty. Returns the loader thread, if one was started.
    pub fn apply(self: &Arc<Self>, specs: Vec<VersionSpec>) -> Option<std::thread::JoinHandle<()>> {
        let mut added = Vec::new();
        let mut removed = Vec::new();
        // Versions loading again while they serve: their metrics carry on.
        let mut reloading = std::collections::HashSet::new();
        {
            let mut models = self.models.write().expect("models lock");
            let mut defaults = self.defaults.write().expect("defaults lock");
            defaults.clear();
            let mut next: Models = BTreeMap::new();
            for spec in specs {
                if spec.default {
                    defaults.insert(spec.model.clone(), spec.version);
                }
                let held = models.get(&spec.model).and_then(|m| m.get(&spec.version));
                let current = held.filter(|e| e.spec.same_content(&spec)).cloned();
                let entry = current.unwrap_or_else(|| {
                    // A version held with another spec answers until its new load ends.
                    let serving = held.and_then(|e| e.take_serving());
                    if serving.is_some() {
                        reloading.insert((spec.model.clone(), spec.version));
                    }
                    let e = Arc::new(Entry {
                        spec: spec.clone(),
                        state: RwLock::new(serving.map_or(State::Loading, State::Reloading)),
                        removed: AtomicBool::new(false),
                    });
                    added.push(e.clone());
                    e
                });
                next.entry(spec.model.clone())
                    .or_default()
                    .insert(spec.version, entry);
            }
            for versions in models.values() {
                for old in versions.values() {
                    let kept = next
                        .get(&old.spec.model)
                        .and_then(|m| m.get(&old.spec.version))
                        .is_some_and(|e| Arc::ptr_eq(e, old));
                    if !kept {
                        removed.push(old.clone());
                    }
                }
            }
            *models = next;
        }
        let reloads = |e: &Entry| reloading.contains(&(e.spec.model.clone(), e.spec.version));
        for entry in removed.iter().filter(|e| !reloads(e)) {
            tracing::info!(model = %entry.spec.model, version = entry.spec.version, "model version unloading");
            self.metrics
                .forget(&entry.spec.model, &entry.spec.version.to_string());
        }
        for entry in added.iter().filter(|e| !reloads(e)) {
            self.metrics
                .loading(&entry.spec.model, &entry.spec.version.to_string());
        }
        let stopping: Vec<Arc<LoadedVersion>> = removed
            .iter()
            .filter_map(|e| {
                e.removed.store(true, Ordering::SeqCst);
                let mut state = e.state.write().expect("state lock");
                match std::mem::replace(&mut *state, State::Failed("unloaded".into())) {
                    State::Ready(v) | State::Reloading(v) => Some(v),
                    _ => None,
                }
            })
            .collect();
        if !stopping.is_empty() {
            std::thread::Builder::new()
                .name("model-unloader".into())
                .spawn(move || {
                    for v in &stopping {
                        v.batcher.close();
                    }
                    for v in &stopping {
                        v.batcher.join();
                        tracing::info!(model = %v.name, version = %v.version, "model version unloaded");
                    }
                })
                .expect("spawning the unloader thread");
        }
        self.changed();
        // Synced once a pass finds no load running: a pass with nothing new while the first
        // list still loads, or a second loader that finishes first, leaves that to the last
        // loader.
        if added.is_empty() {
            if self.loads_running.load(Ordering::SeqCst) == 0 {
                self.synced.store(true, Ordering::SeqCst);
            }
            return None;
        }
        self.loads_running.fetch_add(1, Ordering::SeqCst);
        let engine = self.clone();
        Some(
            std::thread::Builder::new()
                .name("model-loader".into())
                .spawn(move || {
                    engine.load(&added);
                    if engine.loads_running.fetch_sub(1, Ordering::SeqCst) == 1 {
                        engine.synced.store(true, Ordering::SeqCst);
                    }
                    engine.changed();
                })
                .expect("spawning the loader thread"),
        )
    }

    /// Loads entries, as many at a time as there are cores.
    fn load(&self, entries: &[Arc<Entry>]) {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let next = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..threads.min(entries.len()) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(entry) = entries.get(i) else { break };
                    if entry.removed.load(Ordering::SeqCst) {
                        continue;
                    }
                    self.load_one(entry);
                    self.changed();
                });
            }
        });
    }

    fn load_one(&self, entry: &Entry) {
        let spec = &entry.spec;
        let started = Instant::now();
        let version = spec.version.to_string();
        let state = match LoadedVersion::start(
            spec,
            &self.settings,
            self.metrics.version(&spec.model, &version),
            self.pacer.clone(),
        ) {
            Ok(v) => {
                tracing::info!(model = %spec.model, version = spec.version, engine = %v.model.backend(),
                    threads_per_run = v.model.threads_per_run(), batched = v.model.signature.batched,
                    max_batch_size = v.batching.max_batch_size, instances = v.batching.instances,
                    profiled = v.profiled.is_some(), one_row_us = v.one_row_run.as_micros() as u64,
                    inline = v.inline, ms = started.elapsed().as_millis() as u64,
                    engines = %serde_json::to_string(&v.engines).unwrap_or_default(),
                    "model version ready");
                State::Ready(Arc::new(v))
            }
            Err(e) => {
                let reason = format!("{e:#}");
                tracing::error!(model = %spec.model, version = spec.version, error = %reason, "model version failed to load");
                State::Failed(reason)
            }
        };
        let mut current = entry.state.write().expect("state lock");
        if entry.removed.load(Ordering::SeqCst) {
            // Removed while loading: stop what was just started.
            drop(current);
            if let State::Ready(v) = state {
                v.batcher.close();
                v.batcher.join();
            }
            return;
        }
        // A version that fails to load again keeps serving as it was.
        let state = match (state, &*current) {
            (State::Failed(reason), State::Reloading(previous)) => {
                tracing::error!(model = %spec.model, version = spec.version, error = %reason,
                    engine = %previous.model.backend(),
                    "the version failed to load again: it keeps serving as it was");
                State::Ready(previous.clone())
            }
            (state, _) => state,
        };
        let ok = matches!(state, State::Ready(_));
        self.metrics
            .loaded(&spec.model, &version, started.elapsed().as_secs_f64(), ok);
        let before = std::mem::replace(&mut *current, state);
        let kept = matches!((&before, &*current),
            (State::Reloading(a), State::Ready(b)) if Arc::ptr_eq(a, b));
        drop(current);
        if let (State::Reloading(previous), false) = (before, kept) {
            // Requests queued for the version as it was are answered before it stops.
            previous.batcher.close();
            previous.batcher.join();
            tracing::info!(model = %spec.model, version = spec.version, "the version as it was before its reload is unloaded");
        }
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// A receiver that changes whenever a version is added, loaded, fails or is removed.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Ready: the first set of versions has loaded, none failed, and not shutting down.
    /// Versions added later do not make the engine unready while they load.
    pub fn is_ready(&self) -> bool {
        self.accepting.load(Ordering::SeqCst)
            && self.synced.load(Ordering::SeqCst)
            && !self
                .entries()
                .iter()
                .any(|e| matches!(*e.state.read().expect("state lock"), State::Failed(_)))
    }

    /// Whether no load is running.
    pub fn is_idle(&self) -> bool {
        self.loads_running.load(Ordering::SeqCst) == 0
    }

    /// Reports not ready from now on; requests are still served until the server stops.
    pub fn begin_shutdown(&self) {
        self.accepting.store(false, Ordering::SeqCst);
    }

    /// Finishes queued work and stops every runner thread; blocking.
    pub fn shutdown(&self) {
        self.begin_shutdown();
        let loaded: Vec<Arc<LoadedVersion>> =
            self.entries().iter().filter_map(|e| e.ready()).collect();
        for v in &loaded {
            v.batcher.close();
        }
        for v in &loaded {
            v.batcher.join();
        }
    }

    fn entries(&self) -> Vec<Arc<Entry>> {
        self.models
            .read()
            .expect("models lock")
            .values()
            .flat_map(|v| v.values().cloned())
            .collect()
    }

    fn entry(&self, name: &str, version: Option<&str>) -> Result<Arc<Entry>, EngineError> {
        let models = self.models.read().expect("models lock");
        let versions = models
            .get(name)
            .ok_or_else(|| EngineError::ModelNotFound(name.to_string()))?;
        match version {
            // No version: the default one, else the newest that is ready, else the newest.
            None => Ok(self
                .defaults
                .read()
                .expect("defaults lock")
                .get(name)
                .and_then(|v| versions.get(v))
                .or_else(|| versions.values().rev().find(|e| e.ready().is_some()))
                .unwrap_or_else(|| versions.values().next_back().expect("a model has versions"))
                .clone()),
            Some(v) => v
                .parse::<u64>()
                .ok()
                .and_then(|v| versions.get(&v))
                .cloned()
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
            State::Ready(v) | State::Reloading(v) => Ok(v.clone()),
            State::Loading => Err(EngineError::NotReady {
                model: name.to_string(),
                reason: format!("version {} is loading", entry.spec.version),
            }),
            State::Failed(reason) => Err(EngineError::NotReady {
                model: name.to_string(),
                reason: format!("version {} failed to load: {reason}", entry.spec.version),
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

    /// Whether that version is loaded and ready, looked up without allocating: the api's
    /// traffic split asks it per request.
    pub fn version_ready(&self, name: &str, version: u64) -> bool {
        let models = self.models.read().expect("models lock");
        models
            .get(name)
            .and_then(|versions| versions.get(&version))
            .is_some_and(|entry| entry.state.read().expect("state lock").serving().is_some())
    }

    /// The number of the version a request to `version` (the default one when `None`) goes
    /// to, when that version is ready and its `model.toml` opts into the api's response cache.
    pub fn cached_version(&self, name: &str, version: Option<&str>) -> Option<u64> {
        self.resolve(name, version)
            .ok()
            .filter(|v| v.cache)
            .and_then(|v| v.version.parse().ok())
    }

    /// Runs a request on a version (the default one when `version` is `None`).
    pub async fn infer(
        &self,
        name: &str,
        version: Option<&str>,
        req: &InferRequest,
    ) -> Result<InferResponse, EngineError> {
        self.infer_at(name, version, req, Priority::RealTime).await
    }

    /// [`Engine::infer`] at `priority`: low-priority work runs on spare capacity only.
    pub async fn infer_at(
        &self,
        name: &str,
        version: Option<&str>,
        req: &InferRequest,
        priority: Priority,
    ) -> Result<InferResponse, EngineError> {
        let mut v = self.resolve(name, version)?;
        // The request's log lines name the version that answers, also when the path names none.
        tracing::Span::current().record("version", v.version.as_str());
        // A guard, so a request dropped midway (its client went away) is not counted forever.
        let _in_flight = InFlight::enter(self.metrics.in_flight());
        let mut result = v.infer(req, priority).await;
        if matches!(result, Err(EngineError::ShuttingDown)) {
            // Loaded again between resolving and queueing: the version as it was has stopped
            // taking requests, and its replacement answers.
            if let Ok(next) = self.resolve(name, version) {
                if !Arc::ptr_eq(&next, &v) {
                    v = next;
                    tracing::Span::current().record("version", v.version.as_str());
                    result = v.infer(req, priority).await;
                }
            }
        }
        let status = result.as_ref().map_or_else(EngineError::status, |_| 200);
        v.stats.answered(status);
        result
    }

    /// Whether a model of that name is listed (loading, ready or failed).
    pub fn has_model(&self, name: &str) -> bool {
        self.models.read().expect("models lock").contains_key(name)
    }

    /// The engine's Prometheus metrics.
    pub fn metrics(&self) -> &EngineMetrics {
        &self.metrics
    }

    /// Reads the values kept elsewhere (queue depths) into the metrics, before a scrape.
    pub fn refresh_metrics(&self) {
        for versions in self.models.read().expect("models lock").values() {
            for entry in versions.values() {
                if let Some(v) = entry.state.read().expect("state lock").serving() {
                    self.metrics.set_queue_depth(
                        &v.name,
                        &v.version,
                        v.batcher.queued(),
                        v.batching.max_queue_size,
                    );
                }
            }
        }
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
            .read()
            .expect("models lock")
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
        let versions: Vec<Arc<LoadedVersion>> = match (name, version) {
            (Some(n), Some(_)) => vec![self.resolve(n, version)?],
            (Some(n), None) => {
                if !self.models.read().expect("models lock").contains_key(n) {
                    return Err(EngineError::ModelNotFound(n.to_string()));
                }
                self.entries()
                    .iter()
                    .filter(|e| e.spec.model == n)
                    .filter_map(|e| e.ready())
                    .collect()
            }
            (None, _) => self.entries().iter().filter_map(|e| e.ready()).collect(),
        };
        Ok(ModelStatsResponse {
            model_stats: versions
                .iter()
                .map(|v| {
                    v.stats
                        .snapshot(&v.name, &v.version, v.model.backend().as_str())
                })
                .collect(),
        })
    }

    /// Every version and its load state.
    pub fn status(&self) -> Vec<LoadedVersionStatus> {
        self.entries()
            .iter()
            .map(|e| {
                let status = |state, reason: String| LoadedVersionStatus {
                    model: e.spec.model.clone(),
                    version: e.spec.version,
                    state,
                    reason,
                    engine: String::new(),
                    engines: Vec::new(),
                };
                match &*e.state.read().expect("state lock") {
                    State::Loading => status(LoadState::Loading, String::new()),
                    // Serving while it loads again: ready to the fleet.
                    State::Ready(v) | State::Reloading(v) => LoadedVersionStatus {
                        engine: v.model.backend().as_str().into(),
                        engines: v.engines.clone(),
                        ..status(LoadState::Ready, String::new())
                    },
                    State::Failed(r) => status(LoadState::Unavailable, r.clone()),
                }
            })
            .collect()
    }

    /// Every version and its state, in the repository-index form.
    pub fn index(&self) -> Vec<RepositoryModel> {
        self.status()
            .into_iter()
            .map(|s| RepositoryModel {
                name: s.model,
                version: s.version.to_string(),
                state: s.state,
                reason: s.reason,
            })
            .collect()
    }
}
