//! Settings of the api binary.

use crate::prediction_log::PredictionLogSettings;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use vatic_worker::profile::ProfileSettings;
use vatic_worker::reconcile::ReconcileSettings;
use vatic_worker::settings::DatabaseSettings;
use vatic_worker::telemetry::LogSettings;
use vatic_worker::{BatchingConfig, EngineSettings};

/// Where inference runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// An in-process worker serving `models_dir`.
    Standalone,
    /// Separate worker processes at `workers`.
    Cluster,
}

/// Everything the api binary reads at start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiSettings {
    /// `standalone` or `cluster`.
    pub mode: Mode,
    /// Address to listen on; port 0 picks a free port.
    pub listen: String,
    /// Seconds to keep serving after SIGTERM while reporting not ready.
    pub drain_secs: u64,
    /// Largest request body accepted, in bytes (larger: 413).
    pub max_body_bytes: usize,
    /// Longest time, in microseconds, an HTTP thread keeps polling its connections after a
    /// request instead of sleeping, when its requests come that close together (0: never).
    /// Saves a wake-up per request at low load, for CPU time; see docs/deployment.md, "Busy
    /// polling".
    pub busy_poll_us: u64,
    /// Standalone: the model repository folder.
    pub models_dir: PathBuf,
    /// Standalone: batching defaults (the bounds of load-time profiling).
    pub batching: BatchingConfig,
    /// Standalone: load-time profiling of model versions without a `[batching]` of their own.
    pub profile: ProfileSettings,
    /// Cluster: worker base URLs, e.g. `["http://worker-1:8081"]`.
    pub workers: Vec<String>,
    /// Cluster: milliseconds between active health checks of each worker.
    pub health_interval_ms: u64,
    /// Cluster: longest wait for a worker's answer, in milliseconds.
    pub worker_timeout_ms: u64,
    /// The registry database. Standalone: models come from it (after importing `models_dir`
    /// when `import_models` is set). Cluster: workers are found in its fleet table.
    pub database: DatabaseSettings,
    /// Standalone with a database: import `models_dir` into the registry at start (by SHA-256,
    /// so restarting imports nothing twice).
    pub import_models: bool,
    /// Standalone with a database: the cache of model files and the registry poll interval.
    pub registry: ReconcileSettings,
    /// Milliseconds between refreshes of the registry view and the fleet table (registry
    /// changes also arrive at once by notification on PostgreSQL).
    pub fleet_refresh_ms: u64,
    /// A worker whose heartbeat is older than this many milliseconds gets no requests.
    pub heartbeat_timeout_ms: u64,
    /// Folder where uploaded model files wait while they are checked.
    pub upload_dir: PathBuf,
    /// Largest model file accepted by a push, in bytes (larger: 413).
    pub max_model_bytes: u64,
    /// The prediction log's queue, batching and spool.
    pub prediction_log: PredictionLogSettings,
    /// Logging.
    pub log: LogSettings,
    /// Address of the Prometheus metrics endpoint (`GET /metrics`), a port of its own; none
    /// when unset.
    pub metrics_listen: Option<String>,
}

impl Default for ApiSettings {
    fn default() -> Self {
        let engine = EngineSettings::default();
        ApiSettings {
            mode: Mode::Cluster,
            listen: "127.0.0.1:8080".into(),
            drain_secs: 5,
            max_body_bytes: 64 * 1024 * 1024,
            busy_poll_us: 200,
            models_dir: engine.models_dir,
            batching: engine.batching,
            profile: engine.profile,
            workers: Vec::new(),
            health_interval_ms: 1000,
            worker_timeout_ms: 60_000,
            database: DatabaseSettings::default(),
            import_models: false,
            registry: ReconcileSettings::default(),
            fleet_refresh_ms: 1000,
            heartbeat_timeout_ms: 10_000,
            upload_dir: PathBuf::from("data/uploads"),
            max_model_bytes: 2 << 30,
            prediction_log: PredictionLogSettings::default(),
            log: LogSettings::default(),
            metrics_listen: None,
        }
    }
}

impl ApiSettings {
    /// Checks what serde cannot, naming the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.prediction_log.validate("prediction_log")?;
        if self.fleet_refresh_ms == 0 || self.heartbeat_timeout_ms == 0 {
            anyhow::bail!("fleet_refresh_ms and heartbeat_timeout_ms must be at least 1");
        }
        if self.import_models && self.database.url.is_none() {
            anyhow::bail!("import_models: needs database.url (the registry to import into)");
        }
        match self.mode {
            Mode::Standalone => {
                self.batching.validate("batching")?;
                self.profile.validate()
            }
            Mode::Cluster => {
                if self.workers.is_empty() && self.database.url.is_none() {
                    anyhow::bail!("workers: cluster mode needs at least one worker URL or database.url to find workers in the fleet table (or run with --standalone)");
                }
                for w in &self.workers {
                    if !(w.starts_with("http://") || w.starts_with("https://")) {
                        anyhow::bail!("workers: '{w}' must start with http:// or https://");
                    }
                }
                if self.health_interval_ms == 0 || self.worker_timeout_ms == 0 {
                    anyhow::bail!("health_interval_ms and worker_timeout_ms must be at least 1");
                }
                Ok(())
            }
        }
    }

    /// The in-process engine's settings (standalone).
    pub fn engine(&self) -> EngineSettings {
        EngineSettings {
            models_dir: self.models_dir.clone(),
            batching: self.batching.clone(),
            profile: self.profile.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_mode_needs_valid_worker_urls() {
        let err = ApiSettings::default().validate().unwrap_err().to_string();
        assert!(err.contains("at least one worker URL"), "{err}");
        let bad = ApiSettings {
            workers: vec!["worker-1:8081".into()],
            ..Default::default()
        };
        let err = bad.validate().unwrap_err().to_string();
        assert!(
            err.contains("'worker-1:8081' must start with http://"),
            "{err}"
        );
        let good = ApiSettings {
            workers: vec!["http://worker-1:8081".into()],
            ..Default::default()
        };
        good.validate().unwrap();
        let standalone = ApiSettings {
            mode: Mode::Standalone,
            ..Default::default()
        };
        standalone.validate().unwrap();
    }
}
