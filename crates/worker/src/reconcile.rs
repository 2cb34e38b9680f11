//! Serving what the registry wants: the reconcile loop and the worker's heartbeat.
//!
//! Each pass reads the registry, makes sure every served version's artifact is in the local
//! cache (verified by SHA-256, fetched only when missing or corrupt), and applies the list to
//! the engine, which loads new versions off the inference threads and unloads retired ones.
//! A pass runs on a PostgreSQL notification, when asked in-process, and every `poll_ms` as the
//! fallback (the only trigger on SQLite). A database outage keeps the current set serving.

use crate::config::EngineChoice;
use crate::engine::{Engine, VersionSpec};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use vatic_server::Passes;
use vatic_store::{Heartbeat, Listener, Store};

/// Where a registry-backed worker keeps its files and how often it looks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReconcileSettings {
    /// Folder of cached model files, named by their SHA-256.
    pub cache_dir: PathBuf,
    /// Milliseconds between registry reads when no notification arrives.
    pub poll_ms: u64,
    /// Milliseconds between heartbeats.
    pub heartbeat_ms: u64,
}

impl Default for ReconcileSettings {
    fn default() -> Self {
        ReconcileSettings {
            cache_dir: PathBuf::from("data/cache"),
            poll_ms: 5000,
            heartbeat_ms: 2000,
        }
    }
}

impl ReconcileSettings {
    /// Checks values that serde cannot, naming the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.poll_ms == 0 || self.heartbeat_ms == 0 {
            anyhow::bail!("registry.poll_ms and registry.heartbeat_ms must be at least 1");
        }
        Ok(())
    }
}

/// Who this worker is in the fleet table.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Process id.
    pub id: String,
    /// Base URL api replicas reach it at.
    pub address: String,
    /// When it started.
    pub started_at: chrono::DateTime<chrono::Utc>,
}

/// Keeps an engine in step with the registry.
pub struct Reconciler {
    engine: Arc<Engine>,
    store: Store,
    settings: ReconcileSettings,
    identity: Option<Identity>,
    passes: Passes,
    verified: HashSet<String>,
}

impl Reconciler {
    /// A reconciler for `engine`; with an `identity` it also writes heartbeats.
    pub fn new(
        engine: Arc<Engine>,
        store: Store,
        settings: ReconcileSettings,
        identity: Option<Identity>,
    ) -> Reconciler {
        Reconciler {
            engine,
            store,
            settings,
            identity,
            passes: Passes::default(),
            verified: HashSet::new(),
        }
    }

    /// A handle that asks for a pass at once, and can wait for it (for changes made in this
    /// process).
    pub fn passes(&self) -> Passes {
        self.passes.clone()
    }

    /// One pass: read the registry, fill the cache, apply. On error nothing changes.
    pub async fn sync(&mut self) -> anyhow::Result<Option<std::thread::JoinHandle<()>>> {
        let models = self.store.models().await?;
        let mut specs = Vec::new();
        let mut wanted = HashSet::new();
        for model in &models {
            let default = model.default_version().map(|v| v.version);
            for v in model.versions.iter().filter(|v| v.state.is_served()) {
                let file = self.cached(&v.sha256).await?;
                wanted.insert(v.sha256.clone());
                specs.push(VersionSpec {
                    model: v.model.clone(),
                    version: v.version,
                    file,
                    config: v.config.clone(),
                    origin: format!("model.toml of {} version {}", v.model, v.version),
                    default: Some(v.version) == default,
                    engine: EngineChoice::from_setting(model.engine),
                });
            }
        }
        let loading = self.engine.apply(specs);
        self.prune_cache(&wanted);
        Ok(loading)
    }

    /// The cached file of an artifact, fetched unless a verified copy is there.
    async fn cached(&mut self, sha256: &str) -> anyhow::Result<PathBuf> {
        let file = self.settings.cache_dir.join(format!("{sha256}.onnx"));
        if self.verified.contains(sha256) && file.is_file() {
            return Ok(file);
        }
        if file.is_file() {
            let path = file.clone();
            let (got, _) =
                tokio::task::spawn_blocking(move || vatic_store::sha256_file(&path)).await??;
            if got == sha256 {
                tracing::info!(sha256, "artifact found in the cache");
                self.verified.insert(sha256.to_string());
                return Ok(file);
            }
            tracing::warn!(sha256, found = %got, "cached artifact is corrupt; fetching it again");
            std::fs::remove_file(&file)?;
        }
        let size = self.store.fetch_artifact(sha256, &file).await?;
        tracing::info!(sha256, size, "artifact fetched from the registry");
        self.verified.insert(sha256.to_string());
        Ok(file)
    }

    /// Deletes cached artifacts no served version uses.
    fn prune_cache(&mut self, wanted: &HashSet<String>) {
        let Ok(listing) = std::fs::read_dir(&self.settings.cache_dir) else {
            return;
        };
        for path in listing.filter_map(|e| e.ok().map(|e| e.path())) {
            let Some(sha) = cached_sha(&path) else {
                continue;
            };
            if !wanted.contains(sha) {
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(file = %path.display(), error = %e, "could not remove a stale cached artifact");
                }
                self.verified.remove(sha);
            }
        }
    }

    /// Runs passes and heartbeats until `stop` turns true, then removes the heartbeat row.
    /// Heartbeats have a task of their own: a long pass (a large artifact being fetched) must
    /// not make the worker look gone to the api replicas while it serves its other versions.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let poll = Duration::from_millis(self.settings.poll_ms);
        let beats = self.identity.clone().map(|identity| {
            tokio::spawn(beat(
                identity,
                self.store.clone(),
                self.engine.clone(),
                Duration::from_millis(self.settings.heartbeat_ms),
                stop.clone(),
            ))
        });
        let mut listener: Option<Listener> = None;
        let mut failing = false;
        // Every turn of the loop is one pass: each wake-up below is a reason for one.
        loop {
            if listener.is_none() && self.store.backend() == vatic_store::Backend::Postgres {
                match self.store.listen().await {
                    // Changes made while not listening are caught by this turn's pass.
                    Ok(l) => listener = l,
                    Err(e) if !failing => {
                        tracing::warn!(error = %e, "registry notifications unavailable; polling");
                    }
                    Err(_) => {}
                }
            }
            let next_poll = tokio::time::Instant::now() + poll;
            let pass = self.passes.begin();
            let result = self.sync().await;
            self.passes.finish(pass);
            match result {
                Ok(_) => {
                    if failing {
                        tracing::info!("registry reachable again");
                    }
                    failing = false;
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %format!("{e:#}"), "registry pass failed; serving what is loaded and retrying");
                    }
                    failing = true;
                    listener = None;
                }
            }
            tokio::select! {
                n = recv(&mut listener) => {
                    if n.is_err() {
                        listener = None;
                    }
                }
                _ = self.passes.requested() => {}
                _ = tokio::time::sleep_until(next_poll) => {}
                _ = stop.changed() => break,
            }
        }
        if let Some(beats) = beats {
            // It stops on the same signal; its last write must not follow the removal.
            let _ = beats.await;
        }
        if let Some(identity) = &self.identity {
            if let Err(e) = self.store.remove_worker(&identity.id).await {
                tracing::warn!(error = %e, "could not remove this worker's heartbeat row");
            }
        }
    }
}

/// Writes the worker's heartbeat every `every`, and at once when its loaded versions change,
/// until `stop` turns true.
async fn beat(
    identity: Identity,
    store: Store,
    engine: Arc<Engine>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut changes = engine.subscribe();
    while !*stop.borrow() {
        let beat = Heartbeat {
            id: identity.id.clone(),
            address: identity.address.clone(),
            started_at: identity.started_at,
            loaded: engine.status(),
            in_flight: engine.metrics().in_flight().get().max(0) as u64,
        };
        if let Err(e) = store.heartbeat(&beat).await {
            tracing::warn!(error = %e, "heartbeat not written");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = changes.changed() => {}
            r = stop.changed() => if r.is_err() { break },
        }
    }
}

async fn recv(listener: &mut Option<Listener>) -> anyhow::Result<String> {
    match listener {
        Some(l) => Ok(l.recv().await?),
        None => std::future::pending().await,
    }
}

fn cached_sha(path: &Path) -> Option<&str> {
    let name = path.file_name()?.to_str()?;
    let sha = name.strip_suffix(".onnx")?;
    (sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit())).then_some(sha)
}
