//! Settings of the api binary: the shared server settings, the in-process engine's
//! (standalone), the worker pool's (cluster), the registry's and the prediction log's.

use crate::prediction_log::PredictionLogSettings;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use vatic_server::{ProcessSettings, ServerSettings};
use vatic_worker::reconcile::ReconcileSettings;
use vatic_worker::EngineSettings;

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
    /// Listening, draining, limits, database, logs, metrics. The database, standalone: models
    /// come from it (after importing `models_dir` when `import_models` is set). Cluster:
    /// workers are found in its fleet table.
    #[serde(flatten)]
    pub server: ServerSettings,
    /// Standalone: the model repository folder and batching defaults.
    #[serde(flatten)]
    pub engine: EngineSettings,
    /// Cluster: worker base URLs, e.g. `["http://worker-1:8081"]`.
    pub workers: Vec<String>,
    /// Cluster: milliseconds between active health checks of each worker.
    pub health_interval_ms: u64,
    /// Cluster: longest wait for a worker's answer, in milliseconds.
    pub worker_timeout_ms: u64,
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
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            mode: Mode::Cluster,
            server: ServerSettings::listening_on("127.0.0.1:8080"),
            engine: EngineSettings::default(),
            workers: Vec::new(),
            health_interval_ms: 1000,
            worker_timeout_ms: 60_000,
            import_models: false,
            registry: ReconcileSettings::default(),
            fleet_refresh_ms: 1000,
            heartbeat_timeout_ms: 10_000,
            upload_dir: PathBuf::from("data/uploads"),
            max_model_bytes: 2 << 30,
            prediction_log: PredictionLogSettings::default(),
        }
    }
}

impl ProcessSettings for ApiSettings {
    type Flattened = EngineSettings;

    fn server(&self) -> &ServerSettings {
        &self.server
    }
}

impl ApiSettings {
    /// Settings of a standalone api, otherwise the defaults.
    pub fn standalone() -> ApiSettings {
        ApiSettings {
            mode: Mode::Standalone,
            ..ApiSettings::default()
        }
    }

    /// Checks what serde cannot, naming the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.server.validate()?;
        self.prediction_log.validate("prediction_log")?;
        if self.fleet_refresh_ms == 0 || self.heartbeat_timeout_ms == 0 {
            anyhow::bail!("fleet_refresh_ms and heartbeat_timeout_ms must be at least 1");
        }
        if self.import_models && self.server.database.url.is_none() {
            anyhow::bail!("import_models: needs database.url (the registry to import into)");
        }
        match self.mode {
            Mode::Standalone => {
                self.engine.validate()?;
                self.registry.validate()
            }
            Mode::Cluster => {
                if self.workers.is_empty() && self.server.database.url.is_none() {
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
        ApiSettings::standalone().validate().unwrap();
    }

    #[test]
    fn standalone_checks_the_engine_and_registry_settings() {
        let mut settings = ApiSettings::standalone();
        settings.engine.batching.instances = 0;
        let err = settings.validate().unwrap_err().to_string();
        assert_eq!(err, "batching: instances must be at least 1");
        let mut settings = ApiSettings::standalone();
        settings.registry.heartbeat_ms = 0;
        let err = settings.validate().unwrap_err().to_string();
        assert!(
            err.contains("registry.poll_ms and registry.heartbeat_ms"),
            "{err}"
        );
        let mut settings = ApiSettings::standalone();
        settings.import_models = true;
        let err = settings.validate().unwrap_err().to_string();
        assert!(
            err.starts_with("import_models: needs database.url"),
            "{err}"
        );
    }
}
