//! Where a request runs: the in-process engine (standalone) or the worker pool (cluster).
//! Both answer with the same types, so routes do not care which.

use crate::catalog::Catalog;
use crate::error::ApiError;
use crate::pool::{Target, WorkerPool};
use crate::rollout::Selector;
use bytes::Bytes;
use reqwest::Method;
use serde_json::Value;
use std::sync::Arc;
use std::time::Instant;
use vatic_schema::v2::{self, BINARY_DATA, BINARY_DATA_OUTPUT};
use vatic_schema::{
    InferRequest, InferResponse, ModelConfig, ModelMetadata, ModelStats, ModelStatsResponse,
    RepositoryModel,
};
use vatic_server::priority::Pacer;
use vatic_worker::host::EngineHost;
use vatic_worker::Priority;

/// The inference backend of an api process.
pub enum Backend {
    /// Standalone: models run in this process.
    Local(EngineHost),
    /// Cluster: models run in worker processes, routed by the registry's view.
    Remote(Arc<WorkerPool>, Arc<Catalog>),
}

fn model_path(model: &str, version: Option<&str>, suffix: &str) -> String {
    match version {
        Some(v) => format!("/v2/models/{model}/versions/{v}{suffix}"),
        None => format!("/v2/models/{model}{suffix}"),
    }
}

/// Where a cluster request goes.
struct Route<'a> {
    /// The version to put in the worker's path: the one named, else the registry's default.
    version: Option<String>,
    /// The version a worker must report ready, when the registry names one.
    target: Option<Target<'a>>,
}

/// The version a cluster request goes to: the one named, else the registry's default, so the
/// pool can pick a worker that has it ready. Unknown models and versions are refused here.
fn resolve<'a>(
    catalog: &Catalog,
    model: &'a str,
    version: Option<&str>,
) -> Result<Route<'a>, ApiError> {
    // Without a version: the stable one (`ready` never lets the split pick the canary).
    let selector = version.map_or(Selector::Split { key: None }, Selector::Version);
    let number = catalog
        .resolve(model, selector, |_| false)?
        .map(|r| r.version);
    Ok(Route {
        version: version
            .map(str::to_string)
            .or_else(|| number.map(|n| n.to_string())),
        target: number.map(|version| Target { model, version }),
    })
}

impl Backend {
    /// Whether this process knows a model of that name (it may still be loading). A cluster
    /// api that has not read a registry takes every name on trust.
    pub fn knows(&self, model: &str) -> bool {
        match self {
            Backend::Local(host) => host.engine.has_model(model),
            Backend::Remote(_, catalog) => catalog.knows(model),
        }
    }

    /// Whether a version can serve now: in this process, or on at least one healthy worker.
    pub fn version_ready(&self, model: &str, version: u64) -> bool {
        match self {
            Backend::Local(host) => host.engine.version_ready(model, version),
            Backend::Remote(pool, _) => pool.has_ready(Target { model, version }),
        }
    }

    /// The number of the version a request to `version` goes to, when its `model.toml` opts
    /// into the response cache: known in standalone mode (the engine read it); a worker's
    /// versions are known by the registry's view instead.
    pub fn cached_version(&self, model: &str, version: Option<&str>) -> Option<u64> {
        match self {
            Backend::Local(host) => host.engine.cached_version(model, version),
            Backend::Remote(..) => None,
        }
    }

    /// Whether requests can be served now.
    pub fn is_ready(&self) -> bool {
        match self {
            Backend::Local(host) => host.engine.is_ready(),
            Backend::Remote(pool, _) => pool.any_healthy(),
        }
    }

    /// Runs a request a caller waits for. To a worker it travels as V2 binary, inputs and
    /// outputs alike.
    pub async fn infer(
        &self,
        model: &str,
        version: Option<&str>,
        req: &InferRequest,
        request_id: Option<&str>,
    ) -> Result<InferResponse, ApiError> {
        self.infer_at(model, version, req, request_id, Priority::RealTime)
            .await
    }

    /// [`Backend::infer`] at `priority`: low-priority work runs on the worker's spare capacity.
    pub async fn infer_at(
        &self,
        model: &str,
        version: Option<&str>,
        req: &InferRequest,
        request_id: Option<&str>,
        priority: Priority,
    ) -> Result<InferResponse, ApiError> {
        match self {
            Backend::Local(host) => Ok(host.engine.infer_at(model, version, req, priority).await?),
            Backend::Remote(pool, catalog) => {
                if priority == Priority::RealTime {
                    pool.pacer().real_time(Instant::now());
                }
                let route = resolve(catalog, model, version)?;
                let mut forwarded = req.clone();
                forwarded
                    .parameters
                    .insert(BINARY_DATA_OUTPUT.into(), Value::Bool(true));
                for out in &mut forwarded.outputs {
                    out.parameters.remove(BINARY_DATA);
                }
                let encoded = v2::encode_request(&forwarded, true);
                let body = Some((Bytes::from(encoded.body), encoded.header_length));
                let answer = pool
                    .send(
                        Method::POST,
                        &model_path(model, route.version.as_deref(), "/infer"),
                        body,
                        (request_id, priority),
                        route.target,
                    )
                    .await?;
                answer.ok()?;
                let response =
                    v2::decode_response(&answer.body, answer.header_length).map_err(|e| {
                        ApiError::BadGateway(format!(
                            "a worker sent an unreadable inference response: {e}"
                        ))
                    })?;
                // The request's log lines name the version that answered, as the engine's do
                // in standalone mode.
                if let Some(version) = &response.model_version {
                    tracing::Span::current().record("version", version.as_str());
                }
                Ok(response)
            }
        }
    }

    /// The pace of this process's low-priority work.
    pub fn pacer(&self) -> &Arc<Pacer> {
        match self {
            Backend::Local(host) => host.engine.pacer(),
            Backend::Remote(pool, _) => pool.pacer(),
        }
    }

    /// V2 model metadata.
    pub async fn metadata(
        &self,
        model: &str,
        version: Option<&str>,
    ) -> Result<ModelMetadata, ApiError> {
        match self {
            Backend::Local(host) => Ok(host.engine.metadata(model, version)?),
            Backend::Remote(pool, catalog) => {
                let route = resolve(catalog, model, version)?;
                pool.json(
                    Method::GET,
                    &model_path(model, route.version.as_deref(), ""),
                    route.target,
                )
                .await
            }
        }
    }

    /// Whether a version can serve; `Err` when it does not exist.
    pub async fn model_ready(&self, model: &str, version: Option<&str>) -> Result<bool, ApiError> {
        match self {
            Backend::Local(host) => Ok(host.engine.model_ready(model, version)?),
            Backend::Remote(pool, catalog) => {
                let route = resolve(catalog, model, version)?;
                let answer = pool
                    .send(
                        Method::GET,
                        &model_path(model, route.version.as_deref(), "/ready"),
                        None,
                        (None, Priority::RealTime),
                        route.target,
                    )
                    .await?;
                match answer.status {
                    200 => Ok(true),
                    503 => Ok(false),
                    _ => answer.ok().map(|_| false),
                }
            }
        }
    }

    /// Triton's model configuration.
    pub async fn config(
        &self,
        model: &str,
        version: Option<&str>,
    ) -> Result<ModelConfig, ApiError> {
        match self {
            Backend::Local(host) => Ok(host.engine.config(model, version)?),
            Backend::Remote(pool, catalog) => {
                let route = resolve(catalog, model, version)?;
                pool.json(
                    Method::GET,
                    &model_path(model, route.version.as_deref(), "/config"),
                    route.target,
                )
                .await
            }
        }
    }

    /// Triton's statistics; in a cluster, summed over the healthy workers.
    pub async fn stats(
        &self,
        model: Option<&str>,
        version: Option<&str>,
    ) -> Result<ModelStatsResponse, ApiError> {
        match self {
            Backend::Local(host) => Ok(host.engine.stats(model, version)?),
            Backend::Remote(pool, _) => {
                let path = match model {
                    Some(m) => model_path(m, version, "/stats"),
                    None => "/v2/models/stats".to_string(),
                };
                let mut merged: Vec<ModelStats> = Vec::new();
                let mut first_error = None;
                for answer in pool.json_each::<ModelStatsResponse>(&path).await {
                    match answer {
                        Ok(r) => merge_stats(&mut merged, r.model_stats),
                        Err(e) => {
                            first_error.get_or_insert(e);
                        }
                    }
                }
                match (merged.is_empty(), first_error) {
                    (true, Some(e)) => Err(e),
                    _ => Ok(ModelStatsResponse {
                        model_stats: merged,
                    }),
                }
            }
        }
    }

    /// Every model version and its state.
    pub async fn index(&self) -> Result<Vec<RepositoryModel>, ApiError> {
        match self {
            Backend::Local(host) => Ok(host.engine.index()),
            Backend::Remote(pool, _) => pool.json(Method::POST, "/v2/repository/index", None).await,
        }
    }
}

fn merge_stats(into: &mut Vec<ModelStats>, from: Vec<ModelStats>) {
    for s in from {
        match into
            .iter_mut()
            .find(|m| m.name == s.name && m.version == s.version)
        {
            None => into.push(s),
            Some(m) => {
                if m.backend.is_empty() {
                    m.backend = s.backend.clone();
                } else if !s.backend.is_empty() && !m.backend.split(',').any(|b| b == s.backend) {
                    m.backend = format!("{},{}", m.backend, s.backend);
                }
                m.last_inference = m.last_inference.max(s.last_inference);
                m.inference_count += s.inference_count;
                m.execution_count += s.execution_count;
                let (a, b) = (&mut m.inference_stats, &s.inference_stats);
                for (x, y) in [
                    (&mut a.success, b.success),
                    (&mut a.fail, b.fail),
                    (&mut a.cancel, b.cancel),
                    (&mut a.queue, b.queue),
                    (&mut a.compute_input, b.compute_input),
                    (&mut a.compute_infer, b.compute_infer),
                    (&mut a.compute_output, b.compute_output),
                ] {
                    x.count += y.count;
                    x.ns += y.ns;
                }
                for bs in s.batch_stats {
                    match m
                        .batch_stats
                        .iter_mut()
                        .find(|x| x.batch_size == bs.batch_size)
                    {
                        Some(x) => {
                            x.compute_infer.count += bs.compute_infer.count;
                            x.compute_infer.ns += bs.compute_infer.ns;
                        }
                        None => m.batch_stats.push(bs),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vatic_schema::{BatchStats, InferenceStats, StatDuration};

    fn took(count: u64, ns: u64) -> StatDuration {
        StatDuration { count, ns }
    }

    /// One worker's statistics of `name` version 1: `n` requests of one row, run in batches of
    /// the sizes `batches` gives (size, executions), each phase `n` times `ns`.
    fn stats(name: &str, last: u64, n: u64, ns: u64, batches: &[(u64, u64)]) -> ModelStats {
        ModelStats {
            name: name.into(),
            version: "1".into(),
            backend: "tract".into(),
            last_inference: last,
            inference_count: n,
            execution_count: batches.iter().map(|b| b.1).sum(),
            inference_stats: InferenceStats {
                success: took(n, n * ns),
                fail: took(1, ns),
                cancel: took(0, 0),
                queue: took(n, n * ns / 2),
                compute_input: took(n, n),
                compute_infer: took(n, n * ns),
                compute_output: took(n, n),
            },
            batch_stats: batches
                .iter()
                .map(|(size, runs)| BatchStats {
                    batch_size: *size,
                    compute_infer: took(*runs, runs * ns),
                })
                .collect(),
        }
    }

    #[test]
    fn the_statistics_of_several_workers_add_up_per_version() {
        let mut merged = Vec::new();
        merge_stats(
            &mut merged,
            vec![stats("iris", 100, 4, 10, &[(1, 2), (2, 1)])],
        );
        merge_stats(
            &mut merged,
            vec![
                stats("iris", 90, 6, 20, &[(2, 1), (4, 1)]),
                stats("cnn", 50, 1, 5, &[(1, 1)]),
            ],
        );
        assert_eq!(merged.len(), 2);
        let iris = &merged[0];
        assert_eq!(iris.last_inference, 100, "the later of the two");
        assert_eq!((iris.inference_count, iris.execution_count), (10, 5));
        let s = &iris.inference_stats;
        assert_eq!(s.success, took(10, 40 + 120));
        assert_eq!(s.fail, took(2, 30));
        assert_eq!(s.queue, took(10, 20 + 60));
        assert_eq!(s.compute_infer, took(10, 160));
        assert_eq!(
            (s.compute_input, s.compute_output),
            (took(10, 10), took(10, 10))
        );
        let batches: Vec<(u64, StatDuration)> = iris
            .batch_stats
            .iter()
            .map(|b| (b.batch_size, b.compute_infer))
            .collect();
        assert_eq!(
            batches,
            [(1, took(2, 20)), (2, took(2, 30)), (4, took(1, 20))]
        );
        assert_eq!(
            merged[1],
            stats("cnn", 50, 1, 5, &[(1, 1)]),
            "a version of one worker"
        );
        assert_eq!(iris.backend, "tract", "both workers run it in tract");
    }

    #[test]
    fn workers_on_different_engines_are_both_named() {
        let mut merged = Vec::new();
        let on = |backend: &str| ModelStats {
            backend: backend.into(),
            ..stats("iris", 1, 1, 1, &[(1, 1)])
        };
        for backend in ["", "tract", "onnxruntime", "tract", ""] {
            merge_stats(&mut merged, vec![on(backend)]);
        }
        assert_eq!(merged[0].backend, "tract,onnxruntime");
        assert_eq!(merged[0].inference_count, 5);
    }
}
