//! What every api handler shares, and how the shared server runtime serves it: its routes, its
//! readiness, its metrics and the last steps of its shutdown.

use crate::backend::Backend;
use crate::cache::{Key, ResponseCache};
use crate::catalog::Catalog;
use crate::error::ApiError;
use crate::metrics::{ApiMetrics, Protocol, UNKNOWN_MODEL};
use crate::prediction_log::PredictionLog;
use crate::rollout::shadow::{Mirror, ShadowCopy};
use crate::rollout::stats::Tally;
use crate::rollout::{RolloutSettings, Selector, Side};
use crate::routes::admin::Uploads;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use prometheus::Registry;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vatic_schema::{InferRequest, InferResponse};
use vatic_server::auth::KeyRing;
use vatic_server::{Passes, Service};
use vatic_store::Store;
use vatic_worker::EngineSettings;

/// Longest wait for this process to apply a registry change it made.
const REGISTRY_CHANGE_WAIT: Duration = Duration::from_secs(10);

/// What every handler shares.
pub struct AppState {
    /// Where inference runs.
    pub backend: Arc<Backend>,
    /// What a request body may be.
    pub body: vatic_server::BodyLimits,
    /// The registry, when a database is configured.
    pub store: Option<Store>,
    /// Uploads of model files.
    pub uploads: Uploads,
    /// The engine settings (batching defaults, engine, ONNX Runtime's library) a pushed model
    /// is checked with.
    pub engine: EngineSettings,
    /// The prediction log, when a database is configured.
    pub prediction_log: Option<PredictionLog>,
    /// This replica's view of the registry.
    pub catalog: Arc<Catalog>,
    /// The loops that follow the registry in this process (the reconcile loop in standalone
    /// mode, the catalog refresh), run after a change made through it.
    pub registry_passes: Vec<Passes>,
    /// Request metrics.
    pub metrics: ApiMetrics,
    /// The API keys callers must present; `None` when the api runs open.
    pub keys: Option<Arc<KeyRing>>,
    /// Traffic splitting and promotes.
    pub rollout: RolloutSettings,
    /// This replica's count of the rollout sides it served.
    pub tally: Arc<Tally>,
    /// The shadow's queue, when a database is configured.
    pub mirror: Option<Mirror>,
    /// This process's id among the api replicas (the rollout controller's lease holder).
    pub replica: String,
    /// The automatic rollout controller's loop, when a database is configured.
    pub controller: Option<crate::rollout::controller::Controller>,
    /// The response cache; `None` when `cache.max_bytes` is 0.
    pub cache: Option<ResponseCache>,
    /// Batch jobs, when a database is configured.
    pub batch: Option<crate::batch::runner::Batch>,
}

/// The response header that says whether the response cache answered: `hit` or `miss`;
/// absent when the cache did not apply (the version does not opt in, or the request opts out).
pub const CACHE_HEADER: &str = "x-vatic-cache";

/// What the prediction log knows of a served request, for its shadow's record.
pub struct Served<'a> {
    /// When it arrived.
    pub arrived: crate::routes::Arrival,
    /// Its id.
    pub request_id: Option<&'a str>,
    /// The API key it came with.
    pub key_id: Option<String>,
    /// What the prediction log kept of it, if it was kept.
    pub logged: Option<vatic_schema::admin::LogMode>,
}

/// Where a request was routed: the version to ask for (`None` leaves the choice to the
/// engine, without a registry), the side of the split, and the shadow that gets a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    /// The version.
    pub version: Option<String>,
    /// How it was chosen.
    pub side: Side,
    /// Whether the answer counts in the model's rollout figures.
    pub tracked: bool,
    /// The shadow version a copy goes to.
    pub shadow: Option<u64>,
}

/// Shared state as handlers receive it.
pub type State = web::Data<AppState>;

impl AppState {
    /// Brings this process up to date after a registry change it made: once this returns, a
    /// pushed version is known here (loading or ready) and a retired one is gone, so the
    /// caller's next request sees the change. Gives up waiting after a few seconds (the
    /// loops still apply the change when they can).
    pub async fn registry_changed(&self) {
        for passes in &self.registry_passes {
            if !passes.run(REGISTRY_CHANGE_WAIT).await {
                tracing::warn!("the registry change is not applied in this process yet; it will be on the next pass");
            }
        }
    }

    /// The version an inference request goes to: the one `version` or `label` names, else the
    /// stable version or the canary by the split, sticky by the route key header of `req`.
    pub fn route(
        &self,
        req: &HttpRequest,
        model: &str,
        version: Option<&str>,
        label: Option<&str>,
    ) -> Result<Routed, ApiError> {
        let selector = match (version, label) {
            (Some(v), _) => Selector::Version(v),
            (None, Some(l)) => Selector::Label(l),
            (None, None) => Selector::Split {
                key: req
                    .headers()
                    .get(self.rollout.route_key_header.as_str())
                    .map(|v| v.as_bytes())
                    .filter(|k| !k.is_empty()),
            },
        };
        let routed = self
            .catalog
            .resolve(model, selector, |v| self.backend.version_ready(model, v))?;
        Ok(match routed {
            Some(r) => Routed {
                version: Some(r.version.to_string()),
                side: r.side,
                tracked: r.tracked,
                shadow: r.shadow,
            },
            None => Routed {
                version: version.map(str::to_string),
                side: Side::Named,
                tracked: false,
                shadow: None,
            },
        })
    }

    /// Runs an inference request on the version `routed` names, answering from the response
    /// cache when that version opts in and the request does not opt out. Returns the answer
    /// and, when the cache applied, whether it answered (a hit).
    pub async fn infer(
        &self,
        req: &HttpRequest,
        model: &str,
        routed: &Routed,
        request: &InferRequest,
        request_id: Option<&str>,
    ) -> Result<(InferResponse, Option<bool>), ApiError> {
        let key = self.cache_key(req, model, routed, request);
        if let (Some(cache), Some(key)) = (&self.cache, &key) {
            if let Some(answer) = cache.get(key, request.id.as_deref()) {
                return Ok((answer, Some(true)));
            }
        }
        let answer = self
            .backend
            .infer(model, routed.version.as_deref(), request, request_id)
            .await?;
        match (&self.cache, key) {
            (Some(cache), Some(key)) => {
                cache.insert(key, &answer);
                Ok((answer, Some(false)))
            }
            _ => Ok((answer, None)),
        }
    }

    /// The request's key in the response cache, when the cache applies to it: the cache is
    /// on, the version it goes to opts in (the registry's view says so, or without one the
    /// engine's), and neither its `cache` parameter nor a `Cache-Control: no-cache` or
    /// `no-store` header opts out.
    fn cache_key(
        &self,
        req: &HttpRequest,
        model: &str,
        routed: &Routed,
        request: &InferRequest,
    ) -> Option<Key> {
        self.cache.as_ref()?;
        let opted_out = req
            .headers()
            .get_all(actix_web::http::header::CACHE_CONTROL)
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|d| {
                let d = d.trim();
                d.eq_ignore_ascii_case("no-cache") || d.eq_ignore_ascii_case("no-store")
            });
        if opted_out {
            return None;
        }
        let numbered = routed
            .version
            .as_deref()
            .and_then(|v| v.parse::<u64>().ok());
        let version = match numbered.and_then(|v| self.catalog.caches(model, v).map(|on| (v, on))) {
            Some((v, true)) => v,
            Some((_, false)) => return None,
            None => self
                .backend
                .cached_version(model, routed.version.as_deref())?,
        };
        ResponseCache::key(model, version, request)
    }

    /// After an inference answer: counts it in the model's rollout figures, and hands a copy of
    /// the request and the answer to the shadow when the split picked one.
    pub fn after_answer(
        &self,
        model: &str,
        routed: &Routed,
        outcome: Result<(InferRequest, InferResponse), u16>,
        served: Served<'_>,
    ) {
        if !routed.tracked {
            return;
        }
        let (Some(side), Some(version)) = (
            routed.side.name(),
            routed
                .version
                .as_deref()
                .and_then(|v| v.parse::<u64>().ok()),
        ) else {
            return;
        };
        let status = outcome.as_ref().err().copied().unwrap_or(200);
        let ms = served.arrived.instant.elapsed().as_secs_f64() * 1000.0;
        self.tally.answered(model, version, side, status, ms);
        if let (Some(shadow), Some(mirror), Ok((request, answer))) =
            (routed.shadow, &self.mirror, outcome)
        {
            mirror.offer(ShadowCopy {
                model: model.to_string(),
                version: shadow,
                request,
                served: answer,
                request_id: served.request_id.map(str::to_string),
                key_id: served.key_id,
                arrived_at: served.arrived.at,
                logged: served.logged,
            });
        }
    }

    /// The version a non-inference request names: its version, or the one its label names;
    /// `None` for the model's stable version.
    pub fn named_version(
        &self,
        model: &str,
        version: Option<&str>,
        label: Option<&str>,
    ) -> Result<Option<String>, ApiError> {
        match (version, label) {
            (None, Some(label)) => Ok(self
                .catalog
                .resolve(model, Selector::Label(label), |_| false)?
                .map(|r| r.version.to_string())),
            _ => Ok(version.map(str::to_string)),
        }
    }

    /// Records one answered inference request in the metrics, from its handler's result: the
    /// answer and the version that gave it, or the error. `model` is labelled only when this
    /// process knows it.
    pub fn record_inference(
        &self,
        protocol: Protocol,
        model: &str,
        result: &Result<(HttpResponse, Option<String>), ApiError>,
        arrived: Instant,
    ) {
        let (status, version) = match result {
            Ok((r, version)) => (r.status().as_u16(), version.as_deref()),
            Err(e) => (e.status_code().as_u16(), None),
        };
        let known = status != 404 && self.backend.knows(model);
        let model = if known { model } else { UNKNOWN_MODEL };
        self.metrics.answered(
            protocol,
            model,
            version.unwrap_or_default(),
            status,
            arrived.elapsed(),
        );
    }
}

impl Service for AppState {
    const NAME: &'static str = "vatic";

    fn routes(routes: &mut vatic_server::Routes<'_>) {
        crate::routes::configure(routes);
    }

    fn key_ring(&self) -> Option<Arc<KeyRing>> {
        self.keys.clone()
    }

    /// Standalone: every model loaded and warmed; cluster: a worker is healthy.
    fn is_ready(&self) -> bool {
        self.backend.is_ready()
    }

    fn store(&self) -> Option<&Store> {
        self.store.as_ref()
    }

    fn registries(&self) -> Vec<&Registry> {
        let mut registries = vec![self.metrics.registry()];
        if let Backend::Local(host) = &*self.backend {
            registries.push(host.engine.metrics().registry());
        }
        registries
    }

    fn refresh_metrics(&self) {
        if let Some(log) = &self.prediction_log {
            log.refresh_metrics();
        }
        if let Some(cache) = &self.cache {
            cache.refresh_metrics();
        }
        match &*self.backend {
            Backend::Local(host) => host.engine.refresh_metrics(),
            Backend::Remote(pool, _) => pool.refresh_metrics(),
        }
    }

    /// Stops following the registry, answers the queued requests (standalone), then writes out
    /// the prediction log.
    async fn finish(&self) {
        // The chunks running here go back at once, for another replica to take.
        if let Some(batch) = &self.batch {
            batch.stop().await;
        }
        if let Backend::Local(host) = &*self.backend {
            host.stop_following().await;
            host.shutdown().await;
        }
        if let Some(log) = &self.prediction_log {
            log.shutdown().await;
        }
        // Hands the rollout controller over at once rather than when the lease runs out.
        if let Some(controller) = &self.controller {
            controller.stop().await;
        }
    }
}
