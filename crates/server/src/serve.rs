//! Binding, serving and stopping: the one start-up and shutdown path of every vatic HTTP
//! process. A process is a [`Service`] (its routes, its readiness, its metrics, its last steps)
//! served by a [`Server`], which adds what every listener has: request ids and the request log,
//! compression, busy polling, the probes, the metrics endpoint, and the drain on SIGTERM.

use crate::auth::{Access, KeyRing};
use crate::metrics::{self, ProcessMetrics};
use crate::routes::{Routes, RuleTable};
use crate::settings::ServerSettings;
use actix_web::dev::ServerHandle;
use actix_web::http::KeepAlive;
use actix_web::middleware::{from_fn, Compress, DefaultHeaders};
use actix_web::{web, App, HttpServer};
use prometheus::Registry;
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use vatic_store::Store;
use vatic_tls::ServerTls;

/// What a vatic process serves, on top of what every process has. Handlers reach it as
/// `web::Data<Self>`.
pub trait Service: Send + Sync + Sized + 'static {
    /// The server name `GET /v2` reports.
    const NAME: &'static str;

    /// Registers the process's own routes, each with what a caller needs to use it.
    fn routes(routes: &mut Routes<'_>);

    /// The API keys callers must present; `None` to serve every route to anyone (a worker,
    /// reached over mutual TLS; an api run open on 127.0.0.1).
    fn key_ring(&self) -> Option<Arc<KeyRing>> {
        None
    }

    /// Whether the process can take requests now; the probes report ready when this holds and
    /// shutdown has not begun.
    fn is_ready(&self) -> bool;

    /// The process's database, whose connection pool the metrics show.
    fn store(&self) -> Option<&Store>;

    /// The process's own metric registries, rendered at every scrape after
    /// [`Service::refresh_metrics`].
    fn registries(&self) -> Vec<&Registry>;

    /// Reads values kept elsewhere into the metrics, before a scrape.
    fn refresh_metrics(&self) {}

    /// The first step of shutdown, while still ready (a worker leaves the fleet table).
    fn leave(&self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// The last step of shutdown, once the HTTP server has stopped: finish queued work and
    /// write out what is buffered.
    fn finish(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// A bound listening socket and its TLS configuration, both ready before the service is built:
/// a worker publishes the address in the fleet table, and a bad certificate stops the start
/// before any model is loaded.
pub struct Listener {
    listener: TcpListener,
    addr: SocketAddr,
    tls: Option<ServerTls>,
}

impl Listener {
    /// Reads the `[tls]` files (when set) and binds `settings.listen`.
    pub fn bind(settings: &ServerSettings) -> anyhow::Result<Listener> {
        let tls = ServerTls::from_settings(&settings.tls, &settings.listen)?;
        let listener = TcpListener::bind(&settings.listen)
            .map_err(|e| anyhow::anyhow!("listen {}: {e}", settings.listen))?;
        let addr = listener.local_addr()?;
        Ok(Listener {
            listener,
            addr,
            tls,
        })
    }

    /// The bound address (with the port picked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https` when the listener speaks TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

/// A process serving its [`Service`]: live at once, ready when the service is.
pub struct Server<S: Service> {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// `https` when it serves TLS, else `http`.
    pub scheme: &'static str,
    /// The address of its metrics endpoint, when it has one.
    pub metrics_addr: Option<SocketAddr>,
    /// The service.
    pub service: web::Data<S>,
    accepting: Arc<AtomicBool>,
    /// The HTTP server until it is served (in a mutex: the future is not `Sync`).
    http: Mutex<Option<actix_web::dev::Server>>,
    handle: ServerHandle,
    metrics: Option<ServerHandle>,
    drain: Duration,
}

impl<S: Service> Server<S> {
    /// Builds the HTTP server on `listener` and starts the metrics endpoint; serving starts
    /// with [`Server::run_until_signal`] (or [`Server::spawn`]).
    pub fn start(
        listener: Listener,
        settings: &ServerSettings,
        service: S,
    ) -> anyhow::Result<Server<S>> {
        let scheme = listener.scheme();
        let service = web::Data::new(service);
        let accepting = Arc::new(AtomicBool::new(true));
        let ready: crate::probes::Readiness = {
            let (service, accepting) = (service.clone(), accepting.clone());
            Arc::new(move || accepting.load(Ordering::SeqCst) && service.is_ready())
        };
        let busy_poll = Duration::from_micros(settings.busy_poll_us);
        let app_service = service.clone();
        let access_registry = Registry::new();
        let access = web::Data::new(Access::new(
            S::NAME,
            RuleTable::new(all_routes::<S>(None, Arc::new(|| false))),
            service.key_ring(),
            &access_registry,
        )?);
        let tls = listener.tls.is_some();
        let http = HttpServer::new(move || {
            crate::busy_poll::start(busy_poll);
            let ready = ready.clone();
            App::new()
                .app_data(app_service.clone())
                .app_data(access.clone())
                .wrap(from_fn(crate::auth::routing_check))
                .wrap(security_headers(tls))
                .wrap(Compress::default())
                .wrap(from_fn(crate::request_log::request_log))
                .configure(|cfg| {
                    all_routes::<S>(Some(cfg), ready);
                })
        })
        .on_connect(crate::client_gone::on_connect)
        .client_request_timeout(Duration::from_millis(settings.request_head_timeout_ms))
        .keep_alive(match settings.keep_alive_secs {
            0 => KeepAlive::Disabled,
            secs => KeepAlive::Timeout(Duration::from_secs(secs)),
        })
        .disable_signals()
        .shutdown_timeout(60);
        let http = match &listener.tls {
            Some(tls) => http.listen_rustls_0_23(listener.listener, tls.config())?,
            None => http.listen(listener.listener)?,
        }
        .run();
        let metrics = match &settings.metrics_listen {
            Some(listen) => Some(serve_metrics(
                listen,
                listener.tls.as_ref(),
                service.clone(),
                access_registry,
            )?),
            None => None,
        };
        if let Some(tls) = &listener.tls {
            let validity = tls.source().validity();
            tracing::info!(
                mutual = tls.mutual(),
                not_after = %validity.not_after,
                "serving HTTPS"
            );
            tls.watch();
        }
        Ok(Server {
            addr: listener.addr,
            scheme,
            metrics_addr: metrics.as_ref().map(|m| m.0),
            service,
            accepting,
            handle: http.handle(),
            http: Mutex::new(Some(http)),
            metrics: metrics.map(|m| m.1),
            drain: Duration::from_secs(settings.drain_secs),
        })
    }

    /// Serves on the current runtime in the background (for tests); stop with
    /// [`Server::shutdown`].
    pub fn spawn(&self) {
        if let Some(http) = self.take_http() {
            tokio::spawn(http);
        }
    }

    /// Serves until SIGTERM or Ctrl-C, then shuts down (see [`Server::shutdown`]).
    pub async fn run_until_signal(self) -> anyhow::Result<()> {
        let http = self.take_http().expect("a server is served once");
        let serving = tokio::spawn(http);
        shutdown_signal().await;
        self.shutdown(self.drain).await;
        serving.await??;
        Ok(())
    }

    fn take_http(&self) -> Option<actix_web::dev::Server> {
        self.http
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// The shutdown sequence, which SIGTERM starts: the service's first step (a worker leaves
    /// the fleet), readiness turns false at once, serving goes on for `drain_for` so load
    /// balancers notice, then the server stops accepting and finishes the requests in flight,
    /// then the service finishes its queued work.
    pub async fn shutdown(&self, drain_for: Duration) {
        // A server never served would not answer the stop below.
        drop(self.take_http());
        self.service.leave().await;
        self.accepting.store(false, Ordering::SeqCst);
        tracing::info!(
            drain_secs = drain_for.as_secs(),
            "shutting down: not ready, draining"
        );
        tokio::time::sleep(drain_for).await;
        self.handle.stop(true).await;
        self.service.finish().await;
        if let Some(metrics) = &self.metrics {
            metrics.stop(true).await;
        }
        tracing::info!("stopped");
    }
}

/// Starts the metrics endpoint of `service` on `listen`.
fn serve_metrics<S: Service>(
    listen: &str,
    tls: Option<&ServerTls>,
    service: web::Data<S>,
    access: Registry,
) -> anyhow::Result<(SocketAddr, ServerHandle)> {
    let process = Arc::new(ProcessMetrics::new(service.store(), tls)?);
    metrics::serve(listen, tls, move || {
        process.refresh();
        service.refresh_metrics();
        let mut registries = service.registries();
        registries.push(process.registry());
        registries.push(&access);
        metrics::render(&registries)
    })
}

/// Every route of a process: the probes and the server's metadata, then the service's own;
/// registered into `cfg` when given, and returned as rules.
pub fn all_routes<S: Service>(
    cfg: Option<&mut web::ServiceConfig>,
    ready: crate::probes::Readiness,
) -> Vec<crate::routes::Rule> {
    let mut routes = match cfg {
        Some(cfg) => Routes::register(cfg),
        None => Routes::collect(),
    };
    crate::probes::configure(&mut routes, S::NAME, ready);
    routes.group(crate::routes::Group::plain("documentation"), |routes| {
        routes.add(
            actix_web::http::Method::GET,
            "/openapi.json",
            crate::routes::Need::Open,
            "This document: every route, and the key roles that may call it",
            |access: web::Data<Access>| async move {
                actix_web::HttpResponse::Ok()
                    .content_type("application/json")
                    .body(access.openapi().to_string())
            },
        );
    });
    S::routes(&mut routes);
    routes.into_rules()
}

/// Waits for SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Headers on every answer: no content sniffing, no caching of answers (predictions and keys
/// are the caller's data), no framing or referrer, no scripts; with TLS, browsers are told to
/// use HTTPS only.
fn security_headers(tls: bool) -> DefaultHeaders {
    let headers = DefaultHeaders::new()
        .add(("X-Content-Type-Options", "nosniff"))
        .add(("Cache-Control", "no-store"))
        .add(("X-Frame-Options", "DENY"))
        .add(("Referrer-Policy", "no-referrer"))
        .add((
            "Content-Security-Policy",
            "default-src 'none'; frame-ancestors 'none'",
        ));
    if tls {
        headers.add(("Strict-Transport-Security", "max-age=31536000"))
    } else {
        headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A service with no routes of its own, ready at once.
    struct Bare;

    impl Service for Bare {
        const NAME: &'static str = "bare";

        fn routes(_: &mut Routes<'_>) {}

        fn is_ready(&self) -> bool {
            true
        }

        fn store(&self) -> Option<&Store> {
            None
        }

        fn registries(&self) -> Vec<&Registry> {
            Vec::new()
        }
    }

    #[test]
    fn a_port_in_use_is_refused_with_its_address() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let listen = taken.local_addr().unwrap().to_string();
        let err = Listener::bind(&ServerSettings::listening_on(&listen))
            .err()
            .expect("the port is taken");
        assert!(
            err.to_string().starts_with(&format!("listen {listen}: ")),
            "{err}"
        );
    }

    #[actix_web::test]
    async fn a_server_never_served_still_shuts_down() {
        let settings = ServerSettings::listening_on("127.0.0.1:0");
        let listener = Listener::bind(&settings).unwrap();
        let server = Server::start(listener, &settings, Bare).unwrap();
        let stopped =
            tokio::time::timeout(Duration::from_secs(30), server.shutdown(Duration::ZERO));
        assert!(
            stopped.await.is_ok(),
            "shutdown waited for a server that never ran"
        );
        assert!(
            !server.accepting.load(Ordering::SeqCst),
            "not ready after shutdown"
        );
    }
}
