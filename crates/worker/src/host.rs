//! An engine and what keeps it fed: the registry, followed by the reconcile loop, or a
//! repository folder, read once. The worker process and the standalone api both run their
//! engine this way.

use crate::engine::{Engine, EngineSettings};
use crate::reconcile::{Identity, ReconcileSettings, Reconciler};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use vatic_server::Passes;
use vatic_store::Store;

/// Where an engine's model versions come from.
pub enum ModelSource {
    /// The repository folder of the engine's settings (`models_dir`), read once at start.
    Folder,
    /// The registry, followed by the reconcile loop.
    Registry {
        /// The registry database.
        store: Store,
        /// The loop's cache and timing.
        settings: ReconcileSettings,
        /// Who this worker is in the fleet table; `None` writes no heartbeat (standalone).
        identity: Option<Identity>,
    },
}

/// The reconcile loop while it runs.
struct Following {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// An engine serving a [`ModelSource`].
pub struct EngineHost {
    /// The engine.
    pub engine: Arc<Engine>,
    following: Mutex<Option<Following>>,
    passes: Option<Passes>,
}

impl EngineHost {
    /// Starts an engine and the loading of `source`'s versions in the background: the engine
    /// is ready once the first set is loaded and warmed. A folder that cannot be read is
    /// refused here.
    pub fn start(settings: &EngineSettings, source: ModelSource) -> anyhow::Result<EngineHost> {
        let engine = Arc::new(Engine::new(settings));
        let (following, passes) = match source {
            ModelSource::Folder => {
                engine.apply(crate::folder::scan(&settings.models_dir)?);
                (None, None)
            }
            ModelSource::Registry {
                store,
                settings,
                identity,
            } => {
                let reconciler = Reconciler::new(engine.clone(), store, settings, identity);
                let passes = reconciler.passes();
                let (stop, stopped) = watch::channel(false);
                let task = tokio::spawn(reconciler.run(stopped));
                (Some(Following { stop, task }), Some(passes))
            }
        };
        Ok(EngineHost {
            engine,
            following: Mutex::new(following),
            passes,
        })
    }

    /// The reconcile loop's passes, to apply a registry change made in this process at once;
    /// `None` for a folder.
    pub fn passes(&self) -> Option<Passes> {
        self.passes.clone()
    }

    /// Stops following the registry; a worker leaves the fleet table here, so api replicas
    /// stop routing to it. The versions loaded keep serving.
    pub async fn stop_following(&self) {
        let following = self
            .following
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(f) = following {
            let _ = f.stop.send(true);
            let _ = f.task.await;
        }
    }

    /// Answers every queued request and stops the runner threads.
    pub async fn shutdown(&self) {
        let engine = self.engine.clone();
        let _ = tokio::task::spawn_blocking(move || engine.shutdown()).await;
    }
}
