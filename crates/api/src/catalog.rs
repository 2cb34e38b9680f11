//! This replica's view of the registry: which version answers a model's unversioned requests
//! and what the prediction log keeps for each model. Refreshed by [`watch`] on every registry
//! notification and every `refresh` otherwise; in a cluster the same loop feeds the worker pool
//! from the fleet table.

use crate::pool::WorkerPool;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::Notify;
use vatic_schema::admin::{LogMode, ModelInfo};
use vatic_store::Store;

/// What this replica knows of each model.
#[derive(Default)]
pub struct Catalog {
    models: RwLock<HashMap<String, ModelInfo>>,
}

impl Catalog {
    /// Replaces the view.
    pub fn replace(&self, models: Vec<ModelInfo>) {
        let map = models.into_iter().map(|m| (m.name.clone(), m)).collect();
        *self.models.write().expect("catalog lock") = map;
    }

    /// The version that answers requests naming none, when the registry knows the model.
    pub fn default_version(&self, model: &str) -> Option<u64> {
        self.models
            .read()
            .expect("catalog lock")
            .get(model)
            .and_then(|m| m.default_version().map(|v| v.version))
    }

    /// What the prediction log keeps for a model, and the share of requests it logs. Models
    /// the registry does not know (folder mode) are not logged.
    pub fn log_settings(&self, model: &str) -> (LogMode, f64) {
        self.models
            .read()
            .expect("catalog lock")
            .get(model)
            .map(|m| (m.log_mode, m.log_sample_rate))
            .unwrap_or((LogMode::Off, 0.0))
    }
}

/// Keeps `catalog` (and, in a cluster, `pool`'s fleet) in step with the database until the
/// runtime stops. `nudge` triggers a refresh at once.
pub fn watch(
    store: Store,
    catalog: Arc<Catalog>,
    pool: Option<Arc<WorkerPool>>,
    refresh: Duration,
    stale_after: Duration,
    nudge: Arc<Notify>,
) {
    tokio::spawn(async move {
        let mut listener = None;
        let mut failing = false;
        loop {
            if listener.is_none() {
                listener = store.listen().await.ok().flatten();
            }
            let pass = async {
                catalog.replace(store.models().await?);
                if let Some(pool) = &pool {
                    pool.set_fleet(&store.workers().await?, stale_after.as_secs_f64());
                }
                Ok::<_, vatic_store::StoreError>(())
            };
            match pass.await {
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
                _ = nudge.notified() => {}
                _ = tokio::time::sleep(refresh) => {}
            }
        }
    });
}
