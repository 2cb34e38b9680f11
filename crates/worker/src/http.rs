//! The worker's internal V2 endpoint, and HTTP pieces the public api shares: body limits, the
//! error body, request ids, noticing clients that went away, and draining on SIGTERM.

use crate::reconcile::{Identity, Reconciler};
use crate::{Engine, EngineError, WorkerSettings};
use actix_web::body::MessageBody;
use actix_web::dev::{
    Decompress, Extensions, Server, ServerHandle, ServiceRequest, ServiceResponse,
};
use actix_web::http::header::{HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use actix_web::http::StatusCode;
use actix_web::middleware::{from_fn, Compress, Next};
use actix_web::{web, App, HttpMessage, HttpRequest, HttpResponse, HttpServer, ResponseError};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde::Deserialize;
use std::any::Any;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;
use vatic_schema::v2::{self, Encoded, HEADER_LENGTH};
use vatic_schema::{ErrorBody, InferRequest, ModelReady, ServerMetadata};

/// The header that carries a request's id in and out.
pub const REQUEST_ID: &str = "x-request-id";

/// An HTTP request that failed; the single place errors become statuses and bodies.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The engine refused or failed the request.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The body exceeds the configured limit.
    #[error("request body exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// The body could not be read.
    #[error("could not read the request body: {0}")]
    Body(String),
    /// A worker answered with an error, passed through as it came.
    #[error("{message}")]
    Upstream {
        /// The worker's status.
        status: u16,
        /// The worker's error message.
        message: String,
        /// The worker's Retry-After, if any.
        retry_after: Option<u64>,
    },
    /// No worker can take the request now.
    #[error("no worker is available: {0}")]
    NoWorker(String),
    /// The client closed the connection before the answer was ready.
    #[error("the client closed the connection")]
    ClientGone,
}

impl From<vatic_schema::SchemaError> for HttpError {
    fn from(e: vatic_schema::SchemaError) -> Self {
        HttpError::Engine(EngineError::Schema(e))
    }
}

impl HttpError {
    fn retry_after(&self) -> Option<u64> {
        match self {
            HttpError::Engine(e) => e.retry_after(),
            HttpError::Upstream { retry_after, .. } => *retry_after,
            HttpError::NoWorker(_) => Some(1),
            HttpError::TooLarge { .. } | HttpError::Body(_) | HttpError::ClientGone => None,
        }
    }
}

impl ResponseError for HttpError {
    fn status_code(&self) -> StatusCode {
        let code = match self {
            HttpError::Engine(e) => e.status(),
            HttpError::TooLarge { .. } => 413,
            HttpError::Body(_) => 400,
            HttpError::Upstream { status, .. } => *status,
            HttpError::NoWorker(_) => 503,
            // nginx's "client closed request": nobody reads it, but access logs show it.
            HttpError::ClientGone => 499,
        };
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let mut resp = HttpResponse::build(self.status_code());
        if let Some(secs) = self.retry_after() {
            resp.insert_header((RETRY_AFTER, secs.to_string()));
        }
        resp.json(ErrorBody {
            error: self.to_string(),
        })
    }
}

/// Reads a whole body, decompressing it per `Content-Encoding` (gzip), and refuses it with 413
/// as soon as it passes `limit` bytes, counted after decompression.
pub async fn read_body(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
) -> Result<Bytes, HttpError> {
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(HttpError::TooLarge { limit });
    }
    let mut payload = Decompress::from_headers(payload.into_inner(), req.headers());
    let mut body = BytesMut::with_capacity(declared.unwrap_or(0));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| HttpError::Body(e.to_string()))?;
        if body.len() + chunk.len() > limit {
            return Err(HttpError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Reads the binary extension's header length from a request.
pub fn header_length(req: &HttpRequest) -> Result<Option<usize>, HttpError> {
    let value = req
        .headers()
        .get(HEADER_LENGTH)
        .map(|v| v.to_str().unwrap_or("(not text)"));
    Ok(v2::parse_header_length(value)?)
}

/// An encoded V2 body as a response: JSON, or JSON header plus binary data.
pub fn v2_response(encoded: Encoded) -> HttpResponse {
    let mut resp = HttpResponse::Ok();
    match encoded.header_length {
        Some(n) => {
            resp.insert_header((CONTENT_TYPE, "application/octet-stream"));
            resp.insert_header((HEADER_LENGTH, n.to_string()));
        }
        None => {
            resp.insert_header((CONTENT_TYPE, "application/json"));
        }
    }
    resp.body(encoded.body)
}

/// A duplicate of a client connection's socket, used only to notice that the client went away
/// (actix-web keeps running a handler after its client disconnects).
#[derive(Clone)]
pub struct ClientConnection(Arc<std::net::TcpStream>);

impl ClientConnection {
    /// Whether the peer has closed or reset the connection; never blocks or consumes data.
    pub fn is_gone(&self) -> bool {
        let mut probe = [0u8; 1];
        match self.0.peek(&mut probe) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
            ),
        }
    }
}

/// `HttpServer::on_connect` hook that records each connection for `until_client_gone`.
pub fn on_connect(conn: &dyn Any, ext: &mut Extensions) {
    use std::os::fd::AsFd;
    if let Some(stream) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
        if let Ok(fd) = stream.as_fd().try_clone_to_owned() {
            ext.insert(ClientConnection(Arc::new(std::net::TcpStream::from(fd))));
        }
    }
}

/// Runs `work`, giving up with `ClientGone` if the client disconnects first. Giving up drops
/// `work`, which drops the request's place in the batch queue.
pub async fn until_client_gone<T>(
    req: &HttpRequest,
    work: impl std::future::Future<Output = Result<T, HttpError>>,
) -> Result<T, HttpError> {
    let Some(conn) = req.conn_data::<ClientConnection>().cloned() else {
        return work.await;
    };
    let gone = async move {
        // The first check comes one period in: most requests are answered before it.
        let period = Duration::from_millis(20);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            tick.tick().await;
            if conn.is_gone() {
                return;
            }
        }
    };
    tokio::select! {
        result = work => result,
        () = gone => Err(HttpError::ClientGone),
    }
}

/// Routes left out of the access log unless they fail.
const PROBES: [&str; 5] = [
    "/v2/health/live",
    "/v2/health/ready",
    "/livez",
    "/readyz",
    "/metrics",
];

/// The request id of a request: set by `request_id` middleware.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Middleware: takes `X-Request-ID` or makes one, returns it, and logs the request with it.
/// Health and metrics probes are left out of the access log.
pub async fn request_id(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    let method = req.method().to_string();
    let route = req.match_pattern().unwrap_or_else(|| "(unmatched)".into());
    let quiet = PROBES.contains(&route.as_str());
    // The model and version the path names, so every line logged for the request carries them.
    let (model, version) = model_and_version(&route, req.path());
    let span = tracing::info_span!("request", request_id = %id, model = model.as_deref(), version = version.as_deref());
    let started = Instant::now();
    crate::busy_poll::arrived(started);
    let res = next.call(req).instrument(span.clone()).await;
    let answered = Instant::now();
    crate::busy_poll::answered(answered);
    let mut res = res?;
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut()
            .insert(HeaderName::from_static(REQUEST_ID), v);
    }
    let status = res.status().as_u16();
    if !quiet || status >= 400 {
        let bytes = match res.response().body().size() {
            actix_web::body::BodySize::Sized(n) => Some(n),
            _ => None,
        };
        span.in_scope(|| {
            tracing::info!(method = %method, route = %route, status, bytes, micros = (answered - started).as_micros() as u64, "request");
        });
    }
    Ok(res)
}

/// The `{model}` and `{version}` segments `path` fills in the route pattern `route`, each cut at
/// the first `:` (TF-Serving's `:predict` suffix).
///
/// The routing has not run yet where the request span is made, so the pattern is matched here,
/// segment by segment: in every route the placeholders fill whole segments. (Building an
/// actix `ResourceDef` per request instead compiles a regex and leaks its capture names.)
fn model_and_version(route: &str, path: &str) -> (Option<String>, Option<String>) {
    let (mut model, mut version) = (None, None);
    if route.contains("{model}") && route.split('/').count() == path.split('/').count() {
        for (pattern, segment) in route.split('/').zip(path.split('/')) {
            let value = || Some(segment.split(':').next().unwrap_or(segment).to_string());
            match pattern {
                "{model}" => model = value(),
                "{version}" => version = value(),
                _ => {}
            }
        }
    }
    (model, version)
}

/// `{model}` and optional `{version}` of a model route.
#[derive(Debug, Deserialize)]
pub struct ModelPath {
    /// Model name.
    pub model: String,
    /// Version, when the path names one.
    #[serde(default)]
    pub version: Option<String>,
}

/// Registers `handler` at `/v2/models/{model}{suffix}` and `/v2/models/{model}/versions/{version}{suffix}`.
pub fn model_route(cfg: &mut web::ServiceConfig, suffix: &str, route: fn() -> actix_web::Route) {
    cfg.route(&format!("/v2/models/{{model}}{suffix}"), route());
    cfg.route(
        &format!("/v2/models/{{model}}/versions/{{version}}{suffix}"),
        route(),
    );
}

/// The server metadata of vatic processes.
pub fn server_metadata(name: &str) -> ServerMetadata {
    ServerMetadata {
        name: name.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        extensions: vec![
            "binary_tensor_data".into(),
            "model_configuration".into(),
            "statistics".into(),
            "model_repository".into(),
        ],
    }
}

/// Health answers: `/v2/health/*` says 200 or 400 (as the V2 protocol asks for a 4xx), `/readyz`
/// says 200 or 503 for load balancers.
pub fn health(field: &str, ok: bool, bad: StatusCode) -> HttpResponse {
    let status = if ok { StatusCode::OK } else { bad };
    HttpResponse::build(status).json(serde_json::json!({ field: ok }))
}

/// Answer for a model-ready probe: 200 when ready, 503 when known but not ready.
pub fn model_ready_response(model: &str, ready: bool) -> HttpResponse {
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    HttpResponse::build(status).json(ModelReady {
        name: model.to_string(),
        ready,
    })
}

// ---- the worker's own endpoint ----

struct WorkerState {
    engine: Arc<Engine>,
    max_body_bytes: usize,
}

type State = web::Data<WorkerState>;

/// Says whether the process is ready; shared by the probe routes.
pub type Readiness = Arc<dyn Fn() -> bool + Send + Sync>;

/// Registers the probes and server metadata: `/v2/health/live|ready` answer 200 or 400 (the V2
/// protocol asks for a 4xx), `/livez` and `/readyz` 200 or 503 for load balancers, `GET /v2`.
pub fn configure_probes(cfg: &mut web::ServiceConfig, server_name: &'static str, ready: Readiness) {
    let (ready_v2, ready_lb) = (ready.clone(), ready);
    cfg.route(
        "/v2/health/live",
        web::get().to(|| async { health("live", true, StatusCode::BAD_REQUEST) }),
    )
    .route(
        "/livez",
        web::get().to(|| async { health("live", true, StatusCode::SERVICE_UNAVAILABLE) }),
    )
    .route(
        "/v2/health/ready",
        web::get().to(move || {
            let ok = ready_v2();
            async move { health("ready", ok, StatusCode::BAD_REQUEST) }
        }),
    )
    .route(
        "/readyz",
        web::get().to(move || {
            let ok = ready_lb();
            async move { health("ready", ok, StatusCode::SERVICE_UNAVAILABLE) }
        }),
    )
    .route(
        "/v2",
        web::get().to(move || async move { HttpResponse::Ok().json(server_metadata(server_name)) }),
    );
}

fn configure(cfg: &mut web::ServiceConfig, engine: Arc<Engine>) {
    configure_probes(cfg, "vatic-worker", Arc::new(move || engine.is_ready()));
    // Inference first: actix tries the route patterns in order, by regex.
    model_route(cfg, "/infer", || web::post().to(post_infer));
    cfg.route("/v2/models/stats", web::get().to(get_all_stats))
        .route(
            "/v2/repository/index",
            web::post().to(|s: State| async move { HttpResponse::Ok().json(s.engine.index()) }),
        );
    model_route(cfg, "", || web::get().to(get_metadata));
    model_route(cfg, "/ready", || web::get().to(get_model_ready));
    model_route(cfg, "/config", || web::get().to(get_config));
    model_route(cfg, "/stats", || web::get().to(get_stats));
}

async fn get_metadata(s: State, p: web::Path<ModelPath>) -> Result<HttpResponse, HttpError> {
    Ok(HttpResponse::Ok().json(s.engine.metadata(&p.model, p.version.as_deref())?))
}

async fn get_model_ready(s: State, p: web::Path<ModelPath>) -> Result<HttpResponse, HttpError> {
    Ok(model_ready_response(
        &p.model,
        s.engine.model_ready(&p.model, p.version.as_deref())?,
    ))
}

async fn get_config(s: State, p: web::Path<ModelPath>) -> Result<HttpResponse, HttpError> {
    Ok(HttpResponse::Ok().json(s.engine.config(&p.model, p.version.as_deref())?))
}

async fn get_stats(s: State, p: web::Path<ModelPath>) -> Result<HttpResponse, HttpError> {
    Ok(HttpResponse::Ok().json(s.engine.stats(Some(&p.model), p.version.as_deref())?))
}

async fn get_all_stats(s: State) -> Result<HttpResponse, HttpError> {
    Ok(HttpResponse::Ok().json(s.engine.stats(None, None)?))
}

async fn post_infer(
    req: HttpRequest,
    s: State,
    p: web::Path<ModelPath>,
    payload: web::Payload,
) -> Result<HttpResponse, HttpError> {
    let body = read_body(&req, payload, s.max_body_bytes).await?;
    let request: InferRequest = v2::decode_request(&body, header_length(&req)?)?;
    let response = until_client_gone(&req, async {
        Ok(s.engine
            .infer(&p.model, p.version.as_deref(), &request)
            .await?)
    })
    .await?;
    Ok(v2_response(v2::encode_response(&response, |t| {
        request.wants_binary(&t.name)
    })))
}

/// A running worker: its address, its engine and a handle to stop it.
pub struct Worker {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Its engine.
    pub engine: Arc<Engine>,
    /// The address of its metrics endpoint, when it has one.
    pub metrics_addr: Option<SocketAddr>,
    server: Option<Server>,
    metrics: Option<ServerHandle>,
    drain: Duration,
    reconcile: Option<Reconciling>,
}

struct Reconciling {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Worker {
    /// Binds, starts serving (live at once, ready once the first set of models is loaded and
    /// warmed) and starts loading models in the background: from the registry when a database
    /// is configured, else from `models_dir`.
    pub async fn start(settings: &WorkerSettings) -> anyhow::Result<Worker> {
        settings.validate()?;
        let store = settings.database.open().await?;
        let listener = TcpListener::bind(&settings.listen)
            .map_err(|e| anyhow::anyhow!("listen {}: {e}", settings.listen))?;
        let addr = listener.local_addr()?;
        let engine = Arc::new(Engine::new(&settings.engine()));
        let state = web::Data::new(WorkerState {
            engine: engine.clone(),
            max_body_bytes: settings.max_body_bytes,
        });
        let busy_poll = Duration::from_micros(settings.busy_poll_us);
        let server = HttpServer::new(move || {
            crate::busy_poll::start(busy_poll);
            let engine = state.engine.clone();
            App::new()
                .app_data(state.clone())
                .wrap(Compress::default())
                .wrap(from_fn(request_id))
                .configure(|cfg| configure(cfg, engine))
        })
        .on_connect(on_connect)
        .disable_signals()
        .shutdown_timeout(60)
        .listen(listener)?
        .run();
        let pool = match &store {
            Some(store) => Some((
                crate::metrics::PoolMetrics::register(engine.metrics().registry())?,
                store.clone(),
            )),
            None => None,
        };
        let reconcile = match store {
            Some(store) => {
                let identity = Identity {
                    id: uuid::Uuid::new_v4().to_string(),
                    address: advertised(settings, addr),
                    started_at: chrono::Utc::now(),
                };
                tracing::info!(addr = %addr, advertise = %identity.address, id = %identity.id, models = "registry", "worker listening");
                let reconciler = Reconciler::new(
                    engine.clone(),
                    store,
                    settings.registry.clone(),
                    Some(identity),
                );
                let (stop, stopped) = tokio::sync::watch::channel(false);
                let task = tokio::spawn(reconciler.run(stopped));
                Some(Reconciling { stop, task })
            }
            None => {
                let specs = crate::folder::scan(&settings.models_dir)?;
                engine.apply(specs);
                tracing::info!(addr = %addr, models = "folder", models_dir = %settings.models_dir.display(), "worker listening");
                None
            }
        };
        let metrics = match &settings.metrics_listen {
            Some(listen) => {
                let engine = engine.clone();
                let process = crate::metrics::process_registry();
                Some(crate::metrics::serve(listen, move || {
                    engine.refresh_metrics();
                    if let Some((metrics, store)) = &pool {
                        metrics.refresh(store);
                    }
                    crate::metrics::render(&[engine.metrics().registry(), &process])
                })?)
            }
            None => None,
        };
        Ok(Worker {
            addr,
            engine,
            metrics_addr: metrics.as_ref().map(|m| m.0),
            metrics: metrics.map(|m| m.1),
            server: Some(server),
            drain: Duration::from_secs(settings.drain_secs),
            reconcile,
        })
    }

    /// Serves until SIGTERM or Ctrl-C, then drains and exits.
    pub async fn run_until_signal(mut self) -> anyhow::Result<()> {
        let server = self.server.take().expect("started");
        let handle = server.handle();
        let serving = tokio::spawn(server);
        shutdown_signal().await;
        self.stop(&handle).await;
        serving.await??;
        Ok(())
    }

    /// Spawns the server on the current runtime (for tests) and returns a handle to stop it.
    pub fn spawn(&mut self) -> ServerHandle {
        let server = self.server.take().expect("started");
        let handle = server.handle();
        tokio::spawn(server);
        handle
    }

    /// The shutdown sequence: leave the fleet, drain, finish queued model work.
    pub async fn stop(&mut self, handle: &ServerHandle) {
        if let Some(r) = self.reconcile.take() {
            // Leaving the fleet table first tells every api replica to stop routing here.
            let _ = r.stop.send(true);
            let _ = r.task.await;
        }
        drain_and_stop(&self.engine, handle, self.drain).await;
        if let Some(metrics) = self.metrics.take() {
            metrics.stop(true).await;
        }
    }
}

/// The URL this worker publishes: `advertise` when set, else its listen address, with the
/// host name in place of an unspecified address.
fn advertised(settings: &WorkerSettings, addr: SocketAddr) -> String {
    if let Some(a) = &settings.advertise {
        return a.trim_end_matches('/').to_string();
    }
    if addr.ip().is_unspecified() {
        format!("http://{}:{}", crate::telemetry::host_name(), addr.port())
    } else {
        format!("http://{addr}")
    }
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

/// The shutdown sequence of an HTTP server: `not_ready` (readiness turns false at once), keep
/// serving for `drain_for` so load balancers notice, then stop accepting and finish in-flight
/// requests.
pub async fn drain(handle: &ServerHandle, drain_for: Duration, not_ready: impl FnOnce()) {
    not_ready();
    tracing::info!(
        drain_secs = drain_for.as_secs(),
        "shutting down: not ready, draining"
    );
    tokio::time::sleep(drain_for).await;
    handle.stop(true).await;
}

/// The worker's shutdown: drain the server, then finish queued model work.
pub async fn drain_and_stop(engine: &Arc<Engine>, handle: &ServerHandle, drain_for: Duration) {
    drain(handle, drain_for, || engine.begin_shutdown()).await;
    let engine = engine.clone();
    let _ = tokio::task::spawn_blocking(move || engine.shutdown()).await;
    tracing::info!("stopped");
}

/// Runs the worker binary.
pub async fn run(settings: WorkerSettings) -> anyhow::Result<()> {
    Worker::start(&settings).await?.run_until_signal().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_and_version_come_from_the_route_pattern() {
        let of = |route, path| model_and_version(route, path);
        let some = |s: &str| Some(s.to_string());
        assert_eq!(
            of("/v2/models/{model}/infer", "/v2/models/iris/infer"),
            (some("iris"), None)
        );
        assert_eq!(
            of(
                "/v2/models/{model}/versions/{version}/infer",
                "/v2/models/iris/versions/3/infer"
            ),
            (some("iris"), some("3"))
        );
        assert_eq!(
            of("/v1/models/{model}", "/v1/models/iris:predict"),
            (some("iris"), None)
        );
        assert_eq!(
            of(
                "/v1/models/{model}/versions/{version}",
                "/v1/models/iris/versions/2:classify"
            ),
            (some("iris"), some("2"))
        );
        assert_eq!(of("/v2/health/ready", "/v2/health/ready"), (None, None));
        assert_eq!(of("(unmatched)", "/nowhere"), (None, None));
        assert_eq!(
            of("/v2/models/{model}/infer", "/v2/models/iris/extra/infer"),
            (None, None)
        );
    }
}
