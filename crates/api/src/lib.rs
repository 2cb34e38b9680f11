//! The vatic public API: KServe V2 and TF-Serving REST over actix-web, served by an in-process
//! engine (standalone mode) or by a pool of worker processes (cluster mode), with the model
//! registry's admin API and the prediction log.

#![forbid(unsafe_code)]

pub mod auth;
pub mod backend;
pub mod batch;
pub mod cache;
pub mod catalog;
pub mod error;
pub mod metrics;
pub mod pool;
pub mod prediction_log;
pub mod registry;
pub mod rollout;
pub mod routes;
pub mod settings;
pub mod state;

use backend::Backend;
use catalog::Catalog;
use metrics::ApiMetrics;
use prediction_log::PredictionLog;
use settings::{ApiSettings, Mode};
use state::AppState;
use std::sync::Arc;
use std::time::Duration;
use vatic_server::priority::Pacer;
use vatic_server::{Listener, Passes, Server};
use vatic_store::Store;
use vatic_worker::host::{EngineHost, ModelSource};

/// A built api process, listening.
pub struct Application {
    /// The server: its addresses, its state (`server.service`) and its shutdown.
    pub server: Server<AppState>,
}

impl Application {
    /// Builds the api and binds its port. In standalone mode, models start loading in the
    /// background: the server is live at once and ready when the first set of models is loaded
    /// and warmed.
    pub async fn build(settings: &ApiSettings) -> anyhow::Result<Application> {
        settings.validate()?;
        let store = settings.server.database.open().await?;
        let listener = Listener::bind(&settings.server)?;
        let keys = auth::start(settings, store.as_ref()).await?;
        let metrics = ApiMetrics::default();
        let catalog = Arc::new(Catalog::default());
        let backend = Arc::new(start_backend(settings, store.as_ref(), &catalog, &metrics).await?);
        let catalog_passes = follow_registry(settings, store.as_ref(), &catalog, &backend);
        let registry_passes = registry_passes(&backend, catalog_passes);
        let prediction_log = start_prediction_log(settings, store.as_ref(), &metrics)?;
        let rollouts = start_rollouts(
            settings,
            store.as_ref(),
            &backend,
            &metrics,
            &registry_passes,
            prediction_log.clone(),
        )?;
        let cache = (settings.cache.max_bytes > 0)
            .then(|| cache::ResponseCache::new(settings.cache.max_bytes, metrics.registry()))
            .transpose()?;
        let batch = start_batch(settings, store.as_ref(), &backend, &catalog, &metrics)?;
        let state = AppState {
            registry_passes,
            backend,
            body: vatic_server::BodyLimits::from_settings(&settings.server),
            store,
            uploads: routes::admin::Uploads {
                dir: settings.upload_dir.clone(),
                max_model_bytes: settings.max_model_bytes,
            },
            engine: settings.engine.clone(),
            prediction_log,
            catalog,
            metrics,
            keys,
            rollout: settings.rollout.clone(),
            tally: rollouts.tally,
            mirror: rollouts.mirror,
            controller: rollouts.controller,
            replica: rollouts.replica,
            cache,
            batch,
        };
        let server = Server::start(listener, &settings.server, state)?;
        tracing::info!(addr = %server.addr, scheme = server.scheme, mode = ?settings.mode, "api listening");
        Ok(Application { server })
    }

    /// The shared state.
    pub fn state(&self) -> &AppState {
        &self.server.service
    }

    /// Serves on the current runtime in the background (for tests).
    pub fn spawn(&self) {
        self.server.spawn();
    }

    /// Serves until SIGTERM or Ctrl-C, then: not ready, drain, finish in-flight and queued
    /// work, write out the prediction log.
    pub async fn run_until_signal(self) -> anyhow::Result<()> {
        self.server.run_until_signal().await
    }

    /// The shutdown sequence SIGTERM starts, with a drain of `drain_for`.
    pub async fn shutdown(&self, drain_for: Duration) {
        self.server.shutdown(drain_for).await;
    }
}

/// Where inference runs: an engine in this process serving the registry (after importing
/// `models_dir` into it when asked) or `models_dir`, or the workers of the static list and the
/// fleet table.
async fn start_backend(
    settings: &ApiSettings,
    store: Option<&Store>,
    catalog: &Arc<Catalog>,
    metrics: &ApiMetrics,
) -> anyhow::Result<Backend> {
    match settings.mode {
        Mode::Standalone => {
            let source = match store {
                Some(store) => {
                    if settings.import_models {
                        import_models(settings, store).await?;
                    }
                    ModelSource::Registry {
                        store: store.clone(),
                        settings: settings.registry.clone(),
                        identity: None,
                    }
                }
                None => ModelSource::Folder,
            };
            Ok(Backend::Local(EngineHost::start(&settings.engine, source)?))
        }
        Mode::Cluster => Ok(Backend::Remote(
            pool::WorkerPool::start(
                &settings.workers,
                worker_tls(settings)?,
                Duration::from_millis(settings.health_interval_ms),
                Duration::from_millis(settings.worker_timeout_ms),
                pool::UpstreamMetrics::register(metrics.registry())?,
                Arc::new(Pacer::for_this_machine(&settings.engine.low_priority)),
            )?,
            catalog.clone(),
        )),
    }
}

/// The TLS configuration for workers at `https://` URLs (`[worker_tls]`); the client
/// certificate, when set, is reloaded on SIGHUP and when its files change.
fn worker_tls(settings: &ApiSettings) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let tls = vatic_tls::ClientTls::new(&settings.worker_tls, settings::WORKER_TLS_NAMES)?;
    if let Some(source) = &tls.source {
        vatic_tls::reload::watch(std::slice::from_ref(source));
    }
    Ok(tls.config)
}

/// Imports `models_dir` into the registry.
async fn import_models(settings: &ApiSettings, store: &Store) -> anyhow::Result<()> {
    let dir = &settings.engine.models_dir;
    let added = registry::import_folder(store, dir, &settings.engine).await?;
    tracing::info!(added, models_dir = %dir.display(), "models folder imported into the registry");
    Ok(())
}

/// Keeps the catalog (and in a cluster the worker pool's fleet) in step with the registry;
/// returns the passes that bring it up to date at once. None without a database.
fn follow_registry(
    settings: &ApiSettings,
    store: Option<&Store>,
    catalog: &Arc<Catalog>,
    backend: &Backend,
) -> Option<Passes> {
    let store = store?;
    let pool = match backend {
        Backend::Remote(pool, _) => Some(pool.clone()),
        Backend::Local(_) => None,
    };
    let passes = Passes::default();
    catalog::watch(
        store.clone(),
        catalog.clone(),
        pool,
        Duration::from_millis(settings.fleet_refresh_ms),
        Duration::from_millis(settings.heartbeat_timeout_ms),
        passes.clone(),
    );
    Some(passes)
}

/// The loops a registry change made here waits for: the standalone engine's reconcile loop,
/// then the catalog's.
fn registry_passes(backend: &Backend, catalog: Option<Passes>) -> Vec<Passes> {
    let engine = match backend {
        Backend::Local(host) => host.passes(),
        Backend::Remote(..) => None,
    };
    engine.into_iter().chain(catalog).collect()
}

/// What rollouts need beside the routes.
struct Rollouts {
    /// This replica's count of the sides it served.
    tally: Arc<rollout::stats::Tally>,
    /// This replica's id.
    replica: String,
    /// The shadow's queue; none without a database.
    mirror: Option<rollout::shadow::Mirror>,
    /// The automatic rollout controller's loop; none without a database.
    controller: Option<rollout::controller::Controller>,
}

/// Starts what rollouts need beside the routes: with a database, the writer of this replica's
/// figures, the automatic rollout controller, and the shadow's queue, whose answers go to
/// `log`.
fn start_rollouts(
    settings: &ApiSettings,
    store: Option<&Store>,
    backend: &Arc<Backend>,
    metrics: &ApiMetrics,
    passes: &[Passes],
    log: Option<PredictionLog>,
) -> anyhow::Result<Rollouts> {
    let tally = Arc::new(rollout::stats::Tally::default());
    let replica = uuid::Uuid::new_v4().to_string();
    let Some(store) = store else {
        return Ok(Rollouts {
            tally,
            replica,
            mirror: None,
            controller: None,
        });
    };
    let shadow_tally = Arc::new(rollout::stats::Tally::default());
    rollout::stats::flush(
        store.clone(),
        vec![tally.clone(), shadow_tally.clone()],
        replica.clone(),
        Duration::from_millis(settings.rollout.stats_flush_ms),
    );
    let controller = rollout::controller::start(
        store.clone(),
        settings.rollout.clone(),
        replica.clone(),
        rollout::controller::ControllerMetrics::register(metrics.registry())?,
        passes.to_vec(),
    );
    let mirror = rollout::shadow::Mirror::start(
        backend.clone(),
        (tally.clone(), shadow_tally),
        (
            settings.rollout.shadow_queue,
            settings.rollout.shadow_queue_bytes,
        ),
        settings.rollout.shadow_concurrency,
        metrics.registry(),
        log,
    )?;
    Ok(Rollouts {
        tally,
        replica,
        mirror: Some(mirror),
        controller: Some(controller),
    })
}

/// Starts the batch runner of this replica; none without a database.
fn start_batch(
    settings: &ApiSettings,
    store: Option<&Store>,
    backend: &Arc<Backend>,
    catalog: &Arc<Catalog>,
    metrics: &ApiMetrics,
) -> anyhow::Result<Option<batch::runner::Batch>> {
    if store.is_none() {
        return Ok(None);
    }
    Ok(Some(batch::runner::Batch::start(
        settings.batch.clone(),
        &settings.server.database,
        backend.clone(),
        catalog.clone(),
        metrics.registry(),
    )?))
}

/// Starts the prediction log writer, its metrics in the api's registry; none without a
/// database.
fn start_prediction_log(
    settings: &ApiSettings,
    store: Option<&Store>,
    metrics: &ApiMetrics,
) -> anyhow::Result<Option<PredictionLog>> {
    let Some(store) = store else {
        return Ok(None);
    };
    let keys = prediction_log::data_keys(&settings.prediction_log)?.map(Arc::new);
    match &keys {
        Some(keys) => tracing::info!(
            data_key = keys.current(),
            readable = ?keys.ids(),
            "prediction payloads are encrypted at rest"
        ),
        None => tracing::info!(
            "prediction payloads are stored in clear: no data key is configured (docs/security.md)"
        ),
    }
    let log = PredictionLog::start(store.clone(), settings.prediction_log.clone(), keys)?;
    log.register(metrics.registry())?;
    Ok(Some(log))
}

/// Runs the api binary until SIGTERM.
pub async fn run(settings: ApiSettings) -> anyhow::Result<()> {
    Application::build(&settings)
        .await?
        .run_until_signal()
        .await
}
