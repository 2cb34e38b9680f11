//! The worker process: an engine, fed by the registry or a folder, served over the internal
//! V2 endpoint by the shared server runtime.

use crate::host::{EngineHost, ModelSource};
use crate::reconcile::Identity;
use crate::{Engine, WorkerSettings};
use prometheus::Registry;
use std::net::SocketAddr;
use vatic_server::{Listener, Server, Service};
use vatic_store::Store;

/// What the worker serves: its engine, and what its routes need.
pub struct WorkerService {
    host: EngineHost,
    store: Option<Store>,
    /// What a request body may be.
    pub(crate) body: vatic_server::BodyLimits,
}

impl WorkerService {
    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.host.engine
    }
}

impl Service for WorkerService {
    const NAME: &'static str = "vatic-worker";

    fn routes(routes: &mut vatic_server::Routes<'_>) {
        crate::routes::configure(routes);
    }

    fn is_ready(&self) -> bool {
        self.host.engine.is_ready()
    }

    fn store(&self) -> Option<&Store> {
        self.store.as_ref()
    }

    fn registries(&self) -> Vec<&Registry> {
        vec![self.host.engine.metrics().registry()]
    }

    fn refresh_metrics(&self) {
        self.host.engine.refresh_metrics();
    }

    /// Leaving the fleet table first tells every api replica to stop routing here.
    async fn leave(&self) {
        self.host.stop_following().await;
    }

    async fn finish(&self) {
        self.host.shutdown().await;
    }
}

/// A worker process, listening.
pub type Worker = Server<WorkerService>;

/// Binds, starts serving (live at once, ready once the first set of models is loaded and
/// warmed) and starts loading models in the background: from the registry when a database is
/// configured, else from `models_dir`. Serve with `run_until_signal` (or `spawn`).
pub async fn start(settings: &WorkerSettings) -> anyhow::Result<Worker> {
    settings.validate()?;
    let store = settings.server.database.open().await?;
    let listener = Listener::bind(&settings.server)?;
    let addr = listener.addr();
    let source = match &store {
        Some(store) => {
            let identity = Identity {
                id: uuid::Uuid::new_v4().to_string(),
                address: advertised(settings, addr, listener.scheme()),
                started_at: chrono::Utc::now(),
            };
            tracing::info!(addr = %addr, scheme = listener.scheme(), advertise = %identity.address, id = %identity.id, models = "registry", "worker listening");
            ModelSource::Registry {
                store: store.clone(),
                settings: settings.registry.clone(),
                identity: Some(identity),
            }
        }
        None => {
            tracing::info!(addr = %addr, scheme = listener.scheme(), models = "folder", models_dir = %settings.engine.models_dir.display(), "worker listening");
            ModelSource::Folder
        }
    };
    let service = WorkerService {
        host: EngineHost::start(&settings.engine, source)?,
        store,
        body: vatic_server::BodyLimits::from_settings(&settings.server),
    };
    Server::start(listener, &settings.server, service)
}

/// Runs the worker binary until SIGTERM.
pub async fn run(settings: WorkerSettings) -> anyhow::Result<()> {
    start(&settings).await?.run_until_signal().await
}

/// The URL this worker publishes: `advertise` when set, else its listen address (`https://`
/// when it serves TLS), with the host name in place of an unspecified address.
fn advertised(settings: &WorkerSettings, addr: SocketAddr, scheme: &str) -> String {
    if let Some(a) = &settings.advertise {
        return a.trim_end_matches('/').to_string();
    }
    if addr.ip().is_unspecified() {
        format!(
            "{scheme}://{}:{}",
            vatic_server::telemetry::host_name(),
            addr.port()
        )
    } else {
        format!("{scheme}://{addr}")
    }
}
