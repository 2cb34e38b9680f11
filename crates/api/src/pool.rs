//! The workers an api replica sends inference to: pooled keep-alive connections,
//! least-outstanding-requests choice, active health checks, and one retry on another worker when
//! a worker fails before answering (inference has no side effects, so a retry is safe).

use crate::error::ApiError;
use bytes::Bytes;
use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use serde::de::DeserializeOwned;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use vatic_schema::ErrorBody;
use vatic_server::priority::Pacer;
use vatic_server::REQUEST_ID;
use vatic_worker::batcher::PRIORITY_HEADER;
use vatic_worker::Priority;

/// A model version a request must go to: a worker from the fleet table takes it only when its
/// heartbeat reports that version ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    /// Model name.
    pub model: &'a str,
    /// Version number.
    pub version: u64,
}

/// A model version a worker reports ready.
type Served = (String, u64);

/// One worker and what the api knows of it.
pub struct WorkerNode {
    /// Base URL, without a trailing slash.
    pub url: String,
    healthy: AtomicBool,
    outstanding: AtomicUsize,
    /// For workers found in the fleet table: the versions their heartbeat reports ready.
    /// `None` for workers from the static list, which are assumed to serve everything.
    serves: RwLock<Option<HashSet<Served>>>,
}

impl WorkerNode {
    fn new(url: &str, serves: Option<HashSet<Served>>) -> WorkerNode {
        WorkerNode {
            url: url.trim_end_matches('/').to_string(),
            healthy: AtomicBool::new(serves.is_some()),
            outstanding: AtomicUsize::new(0),
            serves: RwLock::new(serves),
        }
    }

    /// Whether this worker can take a request for `target` (any version when `None`).
    fn can_serve(&self, target: Option<Target<'_>>) -> bool {
        match (&*self.serves.read().expect("serves lock"), target) {
            (None, _) => true,
            (Some(_), None) => true,
            (Some(set), Some(t)) => set.contains(&(t.model.to_string(), t.version)),
        }
    }

    /// Whether the last health check (or request) succeeded.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
}

/// Counts a request against a worker for as long as it lives.
struct Outstanding<'a>(&'a WorkerNode);

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A worker's answer: status, headers that matter, body.
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// `Inference-Header-Content-Length`, when the body is binary.
    pub header_length: Option<usize>,
    /// Body.
    pub body: Bytes,
}

/// The worker fleet of this api replica.
pub struct WorkerPool {
    nodes: RwLock<Vec<Arc<WorkerNode>>>,
    /// One HTTP client, with its own connection pool, per thread that sends: a connection's
    /// I/O task runs on the runtime that opened it, so a connection shared between actix's
    /// threads (or with the health checks' runtime) would cost thread hand-offs per request.
    clients: thread_local::ThreadLocal<reqwest::Client>,
    /// TLS to the workers (for `https://` URLs).
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
    next: AtomicUsize,
    metrics: UpstreamMetrics,
    /// The pace of this replica's low-priority work (its batch runner).
    pacer: Arc<Pacer>,
}

/// How the workers look from this api: up or not, requests in flight to each, retries and
/// failed exchanges.
#[derive(Clone)]
pub struct UpstreamMetrics {
    up: IntGaugeVec,
    in_flight: IntGaugeVec,
    retries: IntCounter,
    errors: IntCounterVec,
}

impl UpstreamMetrics {
    /// The families, registered in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<UpstreamMetrics> {
        let up = IntGaugeVec::new(
            Opts::new(
                "vatic_upstream_worker_up",
                "1 when this api routes to the worker (its health check passes), else 0.",
            ),
            &["worker"],
        )?;
        let in_flight = IntGaugeVec::new(
            Opts::new(
                "vatic_upstream_in_flight_requests",
                "Requests this api has sent to the worker and not yet had answered.",
            ),
            &["worker"],
        )?;
        let retries = IntCounter::new(
            "vatic_upstream_retries_total",
            "Requests sent again to another worker after the first failed before answering.",
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "vatic_upstream_errors_total",
                "Failed exchanges with workers, by kind: connect (failed before answering), timeout, no_worker (none could take the request).",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(up.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        // Every kind is exported from the start, so rates and alerts see 0, not nothing.
        for kind in ["connect", "timeout", "no_worker"] {
            errors.with_label_values(&[kind]);
        }
        Ok(UpstreamMetrics {
            up,
            in_flight,
            retries,
            errors,
        })
    }
}

impl WorkerPool {
    /// Builds the pool and starts health-checking every worker every `interval`.
    pub fn start(
        urls: &[String],
        tls: Arc<rustls::ClientConfig>,
        interval: Duration,
        timeout: Duration,
        metrics: UpstreamMetrics,
        pacer: Arc<Pacer>,
    ) -> anyhow::Result<Arc<WorkerPool>> {
        let pool = Arc::new(WorkerPool::new(urls, tls, timeout, metrics, pacer)?);
        let checker = Arc::downgrade(&pool);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                let Some(pool) = checker.upgrade() else {
                    return;
                };
                pool.check_all(interval.max(Duration::from_millis(500)))
                    .await;
            }
        });
        Ok(pool)
    }

    /// The pool of the static list `urls`, without health checks.
    fn new(
        urls: &[String],
        tls: Arc<rustls::ClientConfig>,
        timeout: Duration,
        metrics: UpstreamMetrics,
        pacer: Arc<Pacer>,
    ) -> anyhow::Result<WorkerPool> {
        // A client that cannot be built fails here, once, rather than on a request thread.
        let clients = thread_local::ThreadLocal::new();
        clients.get_or_try(|| Self::client_builder(&tls).build())?;
        let nodes = urls
            .iter()
            .map(|u| Arc::new(WorkerNode::new(u, None)))
            .collect();
        Ok(WorkerPool {
            nodes: RwLock::new(nodes),
            clients,
            tls,
            timeout,
            next: AtomicUsize::new(0),
            metrics,
            pacer,
        })
    }

    /// The pace of this replica's low-priority work, told of every real-time inference
    /// request sent to a worker.
    pub fn pacer(&self) -> &Arc<Pacer> {
        &self.pacer
    }

    fn client_builder(tls: &rustls::ClientConfig) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .use_preconfigured_tls(tls.clone())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(2))
    }

    /// This thread's client.
    fn client(&self) -> &reqwest::Client {
        self.clients.get_or(|| {
            Self::client_builder(&self.tls)
                .build()
                .expect("the same settings built a client at start")
        })
    }

    async fn check_all(&self, timeout: Duration) {
        let nodes = self.nodes();
        let checks = nodes.iter().map(|node| async move {
            let url = format!("{}/v2/health/ready", node.url);
            let ok = matches!(self.client().get(&url).timeout(timeout).send().await, Ok(r) if r.status() == 200);
            if ok != node.is_healthy() {
                tracing::info!(worker = %node.url, healthy = ok, "worker health changed");
            }
            node.healthy.store(ok, Ordering::Relaxed);
        });
        futures_util::future::join_all(checks).await;
    }

    /// The workers, for status pages and tests.
    pub fn nodes(&self) -> Vec<Arc<WorkerNode>> {
        self.nodes.read().expect("nodes lock").clone()
    }

    /// Reads each worker's state into the metrics, before a scrape; workers that left the
    /// pool leave the metrics too.
    pub fn refresh_metrics(&self) {
        self.metrics.up.reset();
        self.metrics.in_flight.reset();
        for node in self.nodes() {
            self.metrics
                .up
                .with_label_values(&[&node.url])
                .set(i64::from(node.is_healthy()));
            self.metrics
                .in_flight
                .with_label_values(&[&node.url])
                .set(node.outstanding.load(Ordering::Relaxed) as i64);
        }
    }

    /// Whether any worker is healthy.
    pub fn any_healthy(&self) -> bool {
        self.nodes().iter().any(|n| n.is_healthy())
    }

    /// Takes the fleet table's view: workers with a fresh heartbeat join (or stay, with the
    /// versions they report ready); workers gone from the table leave, and so do workers whose
    /// heartbeat is stale unless they still pass this api's health checks. A worker cannot
    /// write its heartbeat while the database is away, so after an outage every heartbeat is
    /// stale until the workers write again: the health checks keep the workers that still
    /// answer, and predictions go on. Workers from the static list are kept as they are.
    pub fn set_fleet(&self, workers: &[vatic_schema::admin::WorkerStatus], max_age_secs: f64) {
        let mut nodes = self.nodes.write().expect("nodes lock");
        let fresh: Vec<_> = workers
            .iter()
            .filter(|w| w.heartbeat_age_secs <= max_age_secs)
            .collect();
        nodes.retain(|n| {
            n.serves.read().expect("serves lock").is_none()
                || workers
                    .iter()
                    .find(|w| w.address.trim_end_matches('/') == n.url)
                    .is_some_and(|w| w.heartbeat_age_secs <= max_age_secs || n.is_healthy())
        });
        for w in fresh {
            let ready: HashSet<Served> = w
                .loaded
                .iter()
                .filter(|l| l.state == vatic_schema::admin::LoadState::Ready)
                .map(|l| (l.model.clone(), l.version))
                .collect();
            let url = w.address.trim_end_matches('/');
            match nodes.iter().find(|n| n.url == url) {
                Some(n) => {
                    let mut serves = n.serves.write().expect("serves lock");
                    if serves.is_some() {
                        *serves = Some(ready);
                    }
                }
                None => {
                    tracing::info!(worker = %url, "worker joined from the fleet table");
                    nodes.push(Arc::new(WorkerNode::new(url, Some(ready))));
                }
            }
        }
    }

    /// Whether a healthy worker can take requests for `target`.
    pub fn has_ready(&self, target: Target<'_>) -> bool {
        self.nodes
            .read()
            .expect("nodes lock")
            .iter()
            .any(|n| n.is_healthy() && n.can_serve(Some(target)))
    }

    /// The healthy worker able to serve `target` with the fewest requests in flight (ties
    /// rotate), skipping `tried`; when none is healthy, any untried one that serves it, so
    /// the caller hears the worker's own reason.
    fn pick(
        &self,
        nodes: &[Arc<WorkerNode>],
        tried: &[usize],
        target: Option<Target<'_>>,
    ) -> Option<usize> {
        let n = nodes.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let candidates = (0..n)
            .map(|i| (start + i) % n)
            .filter(|i| !tried.contains(i) && nodes[*i].can_serve(target));
        let best = |healthy_only: bool| {
            candidates
                .clone()
                .filter(|i| !healthy_only || nodes[*i].is_healthy())
                .min_by_key(|i| nodes[*i].outstanding.load(Ordering::Relaxed))
        };
        best(true).or_else(|| best(false))
    }

    /// Sends a request to a worker, retrying once on another worker when the first fails before
    /// answering (refused, reset, closed).
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<(Bytes, Option<usize>)>,
        (request_id, priority): (Option<&str>, Priority),
        target: Option<Target<'_>>,
    ) -> Result<Answer, ApiError> {
        let nodes = self.nodes();
        let mut tried = Vec::with_capacity(2);
        let mut last_error = match target {
            Some(Target { model, version }) if !nodes.is_empty() => {
                format!("no worker reports model '{model}' version {version} ready yet")
            }
            _ => String::from("no worker is configured or has sent a heartbeat"),
        };
        for _ in 0..2.min(nodes.len()) {
            let Some(i) = self.pick(&nodes, &tried, target) else {
                break;
            };
            if !tried.is_empty() {
                self.metrics.retries.inc();
            }
            tried.push(i);
            let node = &nodes[i];
            node.outstanding.fetch_add(1, Ordering::Relaxed);
            let _guard = Outstanding(node);
            match Self::exchange(self.request(
                node,
                method.clone(),
                path,
                body.as_ref(),
                (request_id, priority),
            ))
            .await
            {
                Ok(answer) => return Ok(answer),
                Err(e) if e.is_timeout() => {
                    self.metrics.errors.with_label_values(&["timeout"]).inc();
                    return Err(ApiError::WorkerTimeout {
                        worker: node.url.clone(),
                        ms: self.timeout.as_millis(),
                    });
                }
                Err(e) => {
                    self.metrics.errors.with_label_values(&["connect"]).inc();
                    node.healthy.store(false, Ordering::Relaxed);
                    tracing::warn!(worker = %node.url, error = %e, "worker failed before answering; trying another");
                    last_error = format!("worker {} failed: {e}", node.url);
                }
            }
        }
        self.metrics.errors.with_label_values(&["no_worker"]).inc();
        Err(ApiError::NoWorker(last_error))
    }

    fn request(
        &self,
        node: &WorkerNode,
        method: reqwest::Method,
        path: &str,
        body: Option<&(Bytes, Option<usize>)>,
        (request_id, priority): (Option<&str>, Priority),
    ) -> reqwest::RequestBuilder {
        let mut headers = HeaderMap::new();
        if let Some(id) = request_id.and_then(|id| HeaderValue::from_str(id).ok()) {
            headers.insert(REQUEST_ID, id);
        }
        if priority != Priority::RealTime {
            headers.insert(
                PRIORITY_HEADER,
                HeaderValue::from_static(priority.header_value()),
            );
        }
        let mut req = self
            .client()
            .request(method, format!("{}{path}", node.url))
            .timeout(self.timeout);
        if let Some((bytes, header_length)) = body {
            if let Some(n) = header_length {
                headers.insert(vatic_schema::v2::HEADER_LENGTH, HeaderValue::from(*n));
                headers.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
            } else {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            }
            req = req.body(bytes.clone());
        }
        req.headers(headers)
    }

    /// GETs JSON from every healthy worker, each answer on its own.
    pub async fn json_each<T: DeserializeOwned>(&self, path: &str) -> Vec<Result<T, ApiError>> {
        let nodes = self.nodes();
        let calls = nodes
            .iter()
            .filter(|n| n.is_healthy())
            .map(|node| async move {
                let answer = Self::exchange(self.request(
                    node,
                    reqwest::Method::GET,
                    path,
                    None,
                    (None, Priority::RealTime),
                ))
                .await
                .map_err(|e| ApiError::NoWorker(format!("worker {} failed: {e}", node.url)))?;
                answer.parse::<T>(path)
            });
        futures_util::future::join_all(calls).await
    }

    async fn exchange(req: reqwest::RequestBuilder) -> reqwest::Result<Answer> {
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let header_length = resp
            .headers()
            .get(vatic_schema::v2::HEADER_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body = resp.bytes().await?;
        Ok(Answer {
            status,
            header_length,
            body,
        })
    }

    /// GETs (or POSTs without a body) JSON from a worker; a worker's error passes through.
    pub async fn json<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        target: Option<Target<'_>>,
    ) -> Result<T, ApiError> {
        self.send(method, path, None, (None, Priority::RealTime), target)
            .await?
            .parse(path)
    }
}

impl Answer {
    /// The JSON body of a 2xx answer, or the worker's error.
    pub fn parse<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        self.ok()?;
        serde_json::from_slice(&self.body).map_err(|e| {
            ApiError::BadGateway(format!("a worker sent an unreadable answer to {path}: {e}"))
        })
    }

    /// `Ok` for a 2xx answer; otherwise the worker's error, status and message kept.
    pub fn ok(&self) -> Result<(), ApiError> {
        if (200..300).contains(&self.status) {
            return Ok(());
        }
        let message = serde_json::from_slice::<ErrorBody>(&self.body)
            .map(|b| b.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&self.body).into_owned());
        let retry_after = (self.status == 503).then_some(1);
        Err(ApiError::Upstream {
            status: self.status,
            message,
            retry_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vatic_schema::admin::{LoadState, LoadedVersionStatus, WorkerStatus};

    #[test]
    fn a_low_priority_call_carries_the_priority_header_and_a_real_time_one_none() {
        let p = pool(&["http://127.0.0.1:1"]);
        let node = p.nodes()[0].clone();
        let header = |priority| {
            p.request(
                &node,
                reqwest::Method::POST,
                "/x",
                None,
                (Some("id-1"), priority),
            )
            .build()
            .unwrap()
            .headers()
            .get(PRIORITY_HEADER)
            .map(|v| v.to_str().unwrap().to_string())
        };
        assert_eq!(header(Priority::Low).as_deref(), Some("low"));
        assert_eq!(header(Priority::RealTime), None);
    }

    fn pool(urls: &[&str]) -> WorkerPool {
        let urls: Vec<String> = urls.iter().map(ToString::to_string).collect();
        let metrics = UpstreamMetrics::register(&Registry::new()).unwrap();
        let tls = vatic_tls::ClientTls::new(&Default::default(), crate::settings::WORKER_TLS_NAMES)
            .unwrap()
            .config;
        let pacer = Arc::new(Pacer::new(&Default::default(), 1));
        WorkerPool::new(&urls, tls, Duration::from_secs(1), metrics, pacer).unwrap()
    }

    /// A heartbeat row of `address`, `age` seconds old, holding `loaded`.
    fn worker(address: &str, age: f64, loaded: &[(&str, u64, LoadState)]) -> WorkerStatus {
        WorkerStatus {
            id: address.into(),
            address: address.into(),
            started_at: String::new(),
            heartbeat_at: String::new(),
            heartbeat_age_secs: age,
            in_flight: 0,
            loaded: loaded
                .iter()
                .map(|(model, version, state)| LoadedVersionStatus {
                    model: model.to_string(),
                    version: *version,
                    state: *state,
                    reason: String::new(),
                    engine: String::new(),
                    engines: Vec::new(),
                })
                .collect(),
        }
    }

    fn set(node: &WorkerNode, healthy: bool, outstanding: usize) {
        node.healthy.store(healthy, Ordering::Relaxed);
        node.outstanding.store(outstanding, Ordering::Relaxed);
    }

    fn urls(pool: &WorkerPool) -> Vec<String> {
        pool.nodes().iter().map(|n| n.url.clone()).collect()
    }

    #[test]
    fn a_pick_is_the_healthy_worker_with_the_fewest_requests_and_ties_rotate() {
        let pool = pool(&["http://a", "http://b", "http://c"]);
        let nodes = pool.nodes();
        set(&nodes[0], true, 3);
        set(&nodes[1], true, 1);
        set(&nodes[2], false, 0);
        for _ in 0..3 {
            assert_eq!(
                pool.pick(&nodes, &[], None),
                Some(1),
                "b: fewest in flight, healthy"
            );
        }
        assert_eq!(
            pool.pick(&nodes, &[1], None),
            Some(0),
            "a, once b was tried"
        );
        set(&nodes[0], true, 1);
        let picks: HashSet<usize> = (0..4)
            .filter_map(|_| pool.pick(&nodes, &[], None))
            .collect();
        assert_eq!(
            picks,
            HashSet::from([0, 1]),
            "a tie rotates between a and b"
        );
    }

    #[test]
    fn with_no_healthy_worker_a_pick_is_any_untried_one_and_then_none() {
        let pool = pool(&["http://a", "http://b"]);
        let nodes = pool.nodes();
        set(&nodes[0], false, 5);
        set(&nodes[1], false, 0);
        assert_eq!(pool.pick(&nodes, &[], None), Some(1));
        assert_eq!(pool.pick(&nodes, &[1], None), Some(0));
        assert_eq!(pool.pick(&nodes, &[0, 1], None), None);
        assert_eq!(pool.pick(&[], &[], None), None);
    }

    #[test]
    fn a_version_goes_only_to_fleet_workers_that_report_it_ready() {
        let pool = pool(&["http://static"]);
        pool.set_fleet(
            &[
                worker("http://w1/", 0.5, &[("iris", 1, LoadState::Ready)]),
                worker(
                    "http://w2",
                    0.5,
                    &[
                        ("iris", 1, LoadState::Loading),
                        ("iris", 2, LoadState::Ready),
                    ],
                ),
            ],
            10.0,
        );
        let nodes = pool.nodes();
        assert_eq!(urls(&pool), ["http://static", "http://w1", "http://w2"]);
        set(&nodes[0], false, 0);
        assert!(
            nodes[1].is_healthy(),
            "a fresh fleet worker is routed to at once"
        );
        let v1 = Some(Target {
            model: "iris",
            version: 1,
        });
        let v2 = Some(Target {
            model: "iris",
            version: 2,
        });
        let v3 = Some(Target {
            model: "iris",
            version: 3,
        });
        assert_eq!(
            pool.pick(&nodes, &[], v1),
            Some(1),
            "w2 has version 1 loading"
        );
        assert_eq!(pool.pick(&nodes, &[], v2), Some(2));
        // The static worker is assumed to serve everything: the last resort when unhealthy.
        assert_eq!(pool.pick(&nodes, &[2], v2), Some(0));
        assert_eq!(pool.pick(&nodes, &[], v3), Some(0));
        assert_eq!(pool.pick(&nodes, &[0], v3), None);
    }

    #[test]
    fn the_fleet_table_adds_updates_and_removes_workers_but_keeps_the_static_list() {
        let pool = pool(&["http://static"]);
        pool.set_fleet(
            &[
                worker("http://w1", 1.0, &[("iris", 1, LoadState::Ready)]),
                worker("http://w2", 1.0, &[]),
            ],
            10.0,
        );
        assert_eq!(urls(&pool), ["http://static", "http://w1", "http://w2"]);
        let w1 = pool.nodes()[1].clone();
        // w1 now reports version 2 instead, w2's heartbeat is stale and it failed its health
        // check, w3 joins.
        set(&pool.nodes()[2], false, 0);
        pool.set_fleet(
            &[
                worker("http://w1", 1.0, &[("iris", 2, LoadState::Ready)]),
                worker("http://w2", 30.0, &[("iris", 1, LoadState::Ready)]),
                worker("http://w3", 0.0, &[]),
            ],
            10.0,
        );
        assert_eq!(urls(&pool), ["http://static", "http://w1", "http://w3"]);
        assert!(
            Arc::ptr_eq(&w1, &pool.nodes()[1]),
            "a known worker keeps its counters"
        );
        let serves = |target| w1.can_serve(Some(target));
        assert!(!serves(Target {
            model: "iris",
            version: 1
        }));
        assert!(serves(Target {
            model: "iris",
            version: 2
        }));
        // A fleet that is gone leaves only the static list.
        pool.set_fleet(&[], 10.0);
        assert_eq!(urls(&pool), ["http://static"]);
    }

    #[test]
    fn a_stale_heartbeat_keeps_a_worker_that_passes_its_health_checks() {
        // The database was away: no worker could write its heartbeat.
        let pool = pool(&[]);
        let ready = [("iris", 1, LoadState::Ready)];
        pool.set_fleet(
            &[
                worker("http://w1", 1.0, &ready),
                worker("http://w2", 1.0, &ready),
            ],
            10.0,
        );
        set(&pool.nodes()[1], false, 0);
        pool.set_fleet(
            &[
                worker("http://w1", 25.0, &ready),
                worker("http://w2", 25.0, &ready),
            ],
            10.0,
        );
        assert_eq!(
            urls(&pool),
            ["http://w1"],
            "w1 answers its health checks and stays; w2 does not and leaves"
        );
        let v1 = Some(Target {
            model: "iris",
            version: 1,
        });
        assert_eq!(pool.pick(&pool.nodes(), &[], v1), Some(0));
        // A stale worker that was not known does not join; one gone from the table leaves.
        pool.set_fleet(&[worker("http://w3", 25.0, &ready)], 10.0);
        assert!(urls(&pool).is_empty());
    }
}
