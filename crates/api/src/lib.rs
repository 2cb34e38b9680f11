//! The vatic public API: KServe V2 and TF-Serving REST over actix-web, served by an in-process
//! worker (standalone mode) or by a pool of worker processes (cluster mode).

#![forbid(unsafe_code)]

pub mod backend;
pub mod catalog;
pub mod metrics;
pub mod pool;
pub mod prediction_log;
pub mod registry;
pub mod routes;
pub mod settings;

use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::{from_fn, Compress};
use actix_web::{web, App, HttpServer};
use backend::Backend;
use catalog::Catalog;
use prediction_log::PredictionLog;
use routes::AppState;
use settings::{ApiSettings, Mode};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use vatic_worker::http::{drain, on_connect, request_id, shutdown_signal};
use vatic_worker::passes::Passes;
use vatic_worker::reconcile::Reconciler;
use vatic_worker::Engine;

/// A built api server, listening but not yet serving.
pub struct Application {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Shared state, for tests.
    pub state: web::Data<AppState>,
    /// The address of its metrics endpoint, when it has one.
    pub metrics_addr: Option<SocketAddr>,
    metrics: Option<ServerHandle>,
    server: Option<Server>,
    drain: Duration,
    reconcile: Option<(
        tokio::sync::watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    )>,
}

impl Application {
    /// Binds and builds the server. In standalone mode, models start loading in the background:
    /// the server is live at once and ready when the first set of models is loaded and warmed.
    pub async fn build(settings: &ApiSettings) -> anyhow::Result<Application> {
        settings.validate()?;
        let store = settings.database.open().await?;
        let listener = TcpListener::bind(&settings.listen)
            .map_err(|e| anyhow::anyhow!("listen {}: {e}", settings.listen))?;
        let addr = listener.local_addr()?;
        let catalog = Arc::new(Catalog::default());
        let metrics = metrics::ApiMetrics::default();
        let catalog_passes = Passes::default();
        let mut reconcile_passes = None;
        let mut reconcile = None;
        let backend = match settings.mode {
            Mode::Standalone => {
                let engine = Arc::new(Engine::new(&settings.engine()));
                match &store {
                    Some(store) => {
                        if settings.import_models {
                            let added = registry::import_folder(
                                store,
                                &settings.models_dir,
                                &settings.batching,
                            )
                            .await?;
                            tracing::info!(added, models_dir = %settings.models_dir.display(), "models folder imported into the registry");
                        }
                        let reconciler = Reconciler::new(
                            engine.clone(),
                            store.clone(),
                            settings.registry.clone(),
                            None,
                        );
                        reconcile_passes = Some(reconciler.passes());
                        let (stop, stopped) = tokio::sync::watch::channel(false);
                        reconcile = Some((stop, tokio::spawn(reconciler.run(stopped))));
                    }
                    None => {
                        engine.apply(vatic_worker::folder::scan(&settings.models_dir)?);
                    }
                }
                Backend::Local(engine)
            }
            Mode::Cluster => Backend::Remote(
                pool::WorkerPool::start(
                    &settings.workers,
                    Duration::from_millis(settings.health_interval_ms),
                    Duration::from_millis(settings.worker_timeout_ms),
                    pool::UpstreamMetrics::register(metrics.registry())?,
                )?,
                catalog.clone(),
            ),
        };
        let mut prediction_log = None;
        if let Some(store) = &store {
            let pool = match &backend {
                Backend::Remote(pool, _) => Some(pool.clone()),
                Backend::Local(_) => None,
            };
            catalog::watch(
                store.clone(),
                catalog.clone(),
                pool,
                Duration::from_millis(settings.fleet_refresh_ms),
                Duration::from_millis(settings.heartbeat_timeout_ms),
                catalog_passes.clone(),
            );
            prediction_log = Some(PredictionLog::start(
                store.clone(),
                settings.prediction_log.clone(),
            )?);
        }
        let state = web::Data::new(AppState {
            backend,
            accepting: true.into(),
            max_body_bytes: settings.max_body_bytes,
            store,
            uploads: routes::admin::Uploads {
                dir: settings.upload_dir.clone(),
                max_model_bytes: settings.max_model_bytes,
            },
            batching: settings.batching.clone(),
            prediction_log,
            catalog,
            registry_passes: reconcile_passes
                .into_iter()
                .chain([catalog_passes])
                .collect(),
            metrics,
        });
        if let Some(log) = &state.prediction_log {
            log.register(state.metrics.registry())?;
        }
        let pool_metrics = match &state.store {
            Some(_) => Some(vatic_worker::metrics::PoolMetrics::register(
                state.metrics.registry(),
            )?),
            None => None,
        };
        let metrics_server = match &settings.metrics_listen {
            Some(listen) => {
                let state = state.clone();
                let process = vatic_worker::metrics::process_registry();
                Some(vatic_worker::metrics::serve(listen, move || {
                    if let Some(log) = &state.prediction_log {
                        log.refresh_metrics();
                    }
                    if let (Some(metrics), Some(store)) = (&pool_metrics, &state.store) {
                        metrics.refresh(store);
                    }
                    let mut registries = vec![state.metrics.registry(), &process];
                    match &state.backend {
                        Backend::Local(engine) => {
                            engine.refresh_metrics();
                            registries.push(engine.metrics().registry());
                        }
                        Backend::Remote(pool, _) => pool.refresh_metrics(),
                    }
                    vatic_worker::metrics::render(&registries)
                })?)
            }
            None => None,
        };
        let app_state = state.clone();
        let busy_poll = Duration::from_micros(settings.busy_poll_us);
        let server = HttpServer::new(move || {
            vatic_worker::busy_poll::start(busy_poll);
            App::new()
                .app_data(app_state.clone())
                .wrap(Compress::default())
                .wrap(from_fn(request_id))
                .configure(|cfg| routes::health::configure(cfg, app_state.clone()))
                .configure(routes::v2::configure)
                .configure(routes::tfserving::configure)
                .configure(routes::admin::configure)
        })
        .on_connect(on_connect)
        .disable_signals()
        .shutdown_timeout(60)
        .listen(listener)?
        .run();
        tracing::info!(addr = %addr, mode = ?settings.mode, "api listening");
        Ok(Application {
            addr,
            metrics_addr: metrics_server.as_ref().map(|m| m.0),
            metrics: metrics_server.map(|m| m.1),
            state,
            server: Some(server),
            drain: Duration::from_secs(settings.drain_secs),
            reconcile,
        })
    }

    /// Spawns the server on the current runtime and returns a handle to stop it.
    pub fn spawn(&mut self) -> ServerHandle {
        let server = self.server.take().expect("built");
        let handle = server.handle();
        tokio::spawn(server);
        handle
    }

    /// Serves until SIGTERM or Ctrl-C, then: not ready, drain, finish in-flight and queued work.
    pub async fn run_until_signal(mut self) -> anyhow::Result<()> {
        let server = self.server.take().expect("built");
        let handle = server.handle();
        let serving = tokio::spawn(server);
        shutdown_signal().await;
        self.shutdown(&handle, self.drain).await;
        serving.await??;
        Ok(())
    }

    /// The shutdown sequence, for `run_until_signal` and tests.
    pub async fn shutdown(&mut self, handle: &ServerHandle, drain_for: Duration) {
        let state = self.state.clone();
        drain(handle, drain_for, || {
            state.accepting.store(false, Ordering::SeqCst);
            if let Backend::Local(engine) = &state.backend {
                engine.begin_shutdown();
            }
        })
        .await;
        if let Some((stop, task)) = self.reconcile.take() {
            let _ = stop.send(true);
            let _ = task.await;
        }
        if let Backend::Local(engine) = &self.state.backend {
            let engine = engine.clone();
            let _ = tokio::task::spawn_blocking(move || engine.shutdown()).await;
        }
        if let Some(log) = &self.state.prediction_log {
            log.shutdown().await;
        }
        if let Some(metrics) = self.metrics.take() {
            metrics.stop(true).await;
        }
        tracing::info!("stopped");
    }
}

/// Runs the api binary.
pub async fn run(settings: ApiSettings) -> anyhow::Result<()> {
    Application::build(&settings)
        .await?
        .run_until_signal()
        .await
}
