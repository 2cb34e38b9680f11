//! This replica's view of the registry: which version answers a model's unversioned requests
//! and what the prediction log keeps for each model. Refreshed by [`watch`] on every registry
//! notification and every `refresh` otherwise; in a cluster the same loop feeds the worker pool
//! from the fleet table.

use crate::error::ApiError;
use crate::pool::WorkerPool;
use crate::rollout::{self, Resolved, Selector};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use vatic_schema::admin::{CacheSetting, LogMode, ModelInfo};
use vatic_server::Passes;
use vatic_store::Store;

/// What this replica knows of each model; empty until the first read of the registry.
#[derive(Default)]
pub struct Catalog {
    models: RwLock<Option<HashMap<String, ModelInfo>>>,
    /// The versions whose `model.toml` opts into the response cache, read once per refresh.
    cached: RwLock<HashMap<String, HashSet<u64>>>,
}

impl Catalog {
    /// Replaces the view.
    pub fn replace(&self, models: Vec<ModelInfo>) {
        let mut cached: HashMap<String, HashSet<u64>> = HashMap::new();
        for v in models.iter().flat_map(|m| &m.versions) {
            if vatic_worker::config::ModelToml::caches(&v.config) {
                cached.entry(v.model.clone()).or_default().insert(v.version);
            }
        }
        let map = models.into_iter().map(|m| (m.name.clone(), m)).collect();
        *self.models.write().expect("catalog lock") = Some(map);
        *self.cached.write().expect("catalog lock") = cached;
    }

    /// Whether the response cache keeps answers of that version: as the model's setting in
    /// the registry says, else as the version's `model.toml` does; `None` before the registry
    /// was read (or without one).
    pub fn caches(&self, model: &str, version: u64) -> Option<bool> {
        let setting = match self
            .models
            .read()
            .expect("catalog lock")
            .as_ref()?
            .get(model)
        {
            Some(info) => info.cache,
            None => return Some(false),
        };
        Some(match setting {
            CacheSetting::On => true,
            CacheSetting::Off => false,
            CacheSetting::ModelToml => self
                .cached
                .read()
                .expect("catalog lock")
                .get(model)
                .is_some_and(|versions| versions.contains(&version)),
        })
    }

    /// Whether the registry has a model of that name; true before the registry was read.
    pub fn knows(&self, model: &str) -> bool {
        self.models
            .read()
            .expect("catalog lock")
            .as_ref()
            .is_none_or(|models| models.contains_key(model))
    }

    /// The version a request goes to, and by which side: the version it names, the one its
    /// label names, else the stable version or the canary by the model's split (a canary only
    /// while `ready` says it can serve). Once the registry has been read, a model, version or
    /// label it does not serve is refused here with 404; before that (or with no registry) a
    /// numbered version passes on as it is, and anything else resolves to none.
    pub fn resolve(
        &self,
        model: &str,
        selector: Selector<'_>,
        ready: impl Fn(u64) -> bool,
    ) -> Result<Option<Resolved>, ApiError> {
        let view = self.models.read().expect("catalog lock");
        let Some(models) = view.as_ref() else {
            return match selector {
                Selector::Version(v) => Ok(v.parse::<u64>().ok().map(Resolved::named)),
                Selector::Split { .. } => Ok(None),
                Selector::Label(label) => Err(ApiError::LabelNotFound {
                    model: model.to_string(),
                    label: label.to_string(),
                    labels: "none: labels live in the registry, and this process has none".into(),
                }),
            };
        };
        let Some(info) = models.get(model) else {
            return Err(ApiError::ModelNotFound(model.to_string()));
        };
        let served = || info.versions.iter().filter(|v| v.state.is_served());
        match selector {
            Selector::Split { key } => rollout::split(info, key, ready)
                .map(Some)
                .ok_or_else(|| ApiError::ModelNotFound(model.to_string())),
            Selector::Label(label) => match info.labels.get(label) {
                Some(v) => Ok(Some(Resolved::named(*v))),
                None => Err(ApiError::LabelNotFound {
                    model: model.to_string(),
                    label: label.to_string(),
                    labels: info.labels.keys().cloned().collect::<Vec<_>>().join(", "),
                }),
            },
            Selector::Version(asked) => {
                match asked
                    .parse::<u64>()
                    .ok()
                    .filter(|n| served().any(|v| v.version == *n))
                {
                    Some(n) => Ok(Some(Resolved::named(n))),
                    None => Err(ApiError::VersionNotFound {
                        model: model.to_string(),
                        version: asked.to_string(),
                        available: served()
                            .map(|v| v.version.to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                    }),
                }
            }
        }
    }

    /// What the prediction log keeps for a model, and the share of requests it logs. Models
    /// the registry does not know (folder mode) are not logged.
    pub fn log_settings(&self, model: &str) -> (LogMode, f64) {
        self.models
            .read()
            .expect("catalog lock")
            .as_ref()
            .and_then(|models| models.get(model))
            .map(|m| (m.log_mode, m.log_sample_rate))
            .unwrap_or((LogMode::Off, 0.0))
    }
}

/// Keeps `catalog` (and, in a cluster, `pool`'s fleet) in step with the database until the
/// runtime stops. `passes` asks for a refresh at once.
pub fn watch(
    store: Store,
    catalog: Arc<Catalog>,
    pool: Option<Arc<WorkerPool>>,
    refresh: Duration,
    stale_after: Duration,
    passes: Passes,
) {
    tokio::spawn(async move {
        let mut listener = None;
        let mut failing = false;
        loop {
            if listener.is_none() {
                listener = store.listen().await.ok().flatten();
            }
            let pass = passes.begin();
            let result = async {
                let models = store.models().await?;
                let due = rollout::expired_promotes(&models, chrono::Utc::now());
                catalog.replace(models);
                for model in due {
                    rollout::expire(&store, &model).await;
                }
                if let Some(pool) = &pool {
                    pool.set_fleet(&store.workers().await?, stale_after.as_secs_f64());
                }
                Ok::<_, vatic_store::StoreError>(())
            }
            .await;
            passes.finish(pass);
            match result {
                Ok(()) => failing = false,
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "registry refresh failed; keeping the last view");
                    }
                    failing = true;
                    listener = None;
                }
            }
            tokio::select! {
                n = async {
                    match listener.as_mut() {
                        Some(l) => l.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if n.is_err() {
                        listener = None;
                    }
                }
                _ = passes.requested() => {}
                _ = tokio::time::sleep(refresh) => {}
            }
        }
    });
}
