//! Settings of the api binary: the shared server settings, the in-process engine's
//! (standalone), the worker pool's (cluster), the registry's and the prediction log's.

use crate::auth::AuthSettings;
use crate::prediction_log::PredictionLogSettings;
use crate::rollout::RolloutSettings;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use vatic_server::{ProcessSettings, ServerSettings};
use vatic_tls::{ClientTlsSettings, SettingNames};
use vatic_worker::reconcile::ReconcileSettings;
use vatic_worker::EngineSettings;

/// How `[worker_tls]`'s keys are named in messages.
pub const WORKER_TLS_NAMES: SettingNames = SettingNames {
    ca: "worker_tls.ca",
    cert: "worker_tls.cert",
    key: "worker_tls.key",
    server_name: "worker_tls.server_name",
};

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
    /// Cluster: TLS to workers at `https://` URLs: the CA their certificates must chain to,
    /// the client certificate presented when they ask (mutual TLS), and the name their
    /// certificates are checked for.
    pub worker_tls: ClientTlsSettings,
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
    /// API keys.
    pub auth: AuthSettings,
    /// Traffic splitting and promotes.
    pub rollout: RolloutSettings,
    /// The response cache, for the models that opt in.
    pub cache: CacheSettings,
    /// Batch jobs.
    pub batch: crate::batch::BatchSettings,
}

/// The response cache ([`crate::cache`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSettings {
    /// Most bytes its entries may weigh (tensor bytes of the requests and answers kept); 0
    /// turns the cache off for every model.
    pub max_bytes: u64,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            max_bytes: 256 << 20,
        }
    }
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
            worker_tls: ClientTlsSettings::default(),
            import_models: false,
            registry: ReconcileSettings::default(),
            fleet_refresh_ms: 1000,
            heartbeat_timeout_ms: 10_000,
            upload_dir: PathBuf::from("data/uploads"),
            max_model_bytes: 2 << 30,
            prediction_log: PredictionLogSettings::default(),
            auth: AuthSettings::default(),
            rollout: RolloutSettings::default(),
            cache: CacheSettings::default(),
            batch: Default::default(),
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
        self.auth.validate()?;
        self.rollout.validate()?;
        self.batch.validate()?;
        // Both modes: a cluster replica's batch runner keeps to it too.
        self.engine.low_priority.validate()?;
        if self.fleet_refresh_ms == 0 || self.heartbeat_timeout_ms == 0 {
            anyhow::bail!("fleet_refresh_ms and heartbeat_timeout_ms must be at least 1");
        }
        if self.import_models && self.server.database.url.is_none() {
            anyhow::bail!("import_models: needs database.url (the registry to import into)");
        }
        match self.mode {
            Mode::Standalone => {
                self.engine.validate()?;
                match self.server.database.url {
                    Some(_) => self.registry.validate(),
                    None => Ok(()),
                }
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
// figment's Jail closures return figment's own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;
    use std::collections::BTreeMap;

    fn load(file: &std::path::Path, explicit: bool) -> anyhow::Result<ApiSettings> {
        vatic_server::settings::load(file, explicit, BTreeMap::<String, String>::new())
    }

    fn committed(name: &str) -> ApiSettings {
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../config")
            .join(name);
        let settings = load(&file, true).unwrap();
        settings.validate().unwrap();
        settings
    }

    #[test]
    fn the_committed_config_files_load() {
        // In a jail, so that no other test's variables are set meanwhile.
        Jail::expect_with(|_| {
            committed_config_files_load();
            Ok(())
        });
    }

    fn committed_config_files_load() {
        let api = committed("api.toml");
        assert_eq!(
            (api.mode, api.server.listen.as_str()),
            (Mode::Cluster, "0.0.0.0:8080")
        );
        assert_eq!(api.workers, ["http://127.0.0.1:8081"]);
        assert_eq!(api.server.metrics_listen.as_deref(), Some("0.0.0.0:9180"));
        let standalone = committed("standalone.toml");
        assert_eq!(standalone.mode, Mode::Standalone);
        assert!(standalone.import_models);
        assert_eq!(
            standalone.server.database.url.as_deref(),
            Some("sqlite://data/vatic.db")
        );
        assert!(standalone.server.database.migrate);
        assert_eq!(standalone.server.log.format, "text");
        assert_eq!(standalone.server.drain_secs, 0);
        assert_eq!(standalone.registry.poll_ms, 1000);
        assert_eq!(
            standalone.prediction_log.spool_dir,
            std::path::PathBuf::from("data/spool")
        );
    }

    #[test]
    fn environment_variables_reach_every_part() {
        Jail::expect_with(|jail| {
            jail.set_env("VATIC_MODE", "standalone");
            jail.set_env("VATIC_WORKERS", r#"["http://a:8081","http://b:8081"]"#);
            jail.set_env("VATIC_MAX_BODY_BYTES", "1024");
            jail.set_env("VATIC_IMPORT_MODELS", "true");
            jail.set_env("VATIC_DATABASE__URL", "sqlite://v.db");
            jail.set_env("VATIC_PREDICTION_LOG__BATCH_SIZE", "10");
            jail.set_env("VATIC_BATCHING__MAX_QUEUE_DELAY_US", "500");
            let s = load(&jail.directory().join("api.toml"), false).unwrap();
            assert_eq!(s.mode, Mode::Standalone);
            assert_eq!(s.workers, ["http://a:8081", "http://b:8081"]);
            assert_eq!(s.server.max_body_bytes, 1024);
            assert!(s.import_models);
            assert_eq!(s.server.database.url.as_deref(), Some("sqlite://v.db"));
            assert_eq!(s.prediction_log.batch_size, 10);
            assert_eq!(s.engine.batching.max_queue_delay_us, 500);
            // The key is named as the environment spells it.
            let file = jail.directory().join("api.toml");
            let refused = || load(&file, false).unwrap_err().to_string().to_lowercase();
            jail.set_env("VATIC_WORKERS", "[]");
            jail.set_env("VATIC_MAX_BODY_BYTES", "many");
            let err = refused();
            assert!(err.contains("max_body_bytes"), "{err}");
            jail.set_env("VATIC_MAX_BODY_BYTES", "1024");
            jail.set_env("VATIC_PREDICTION_LOG__BATCH_SISE", "10");
            let err = refused();
            assert!(err.contains("batch_sise"), "{err}");
            Ok(())
        });
    }

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
    fn the_low_priority_share_is_checked_in_either_mode() {
        for mut settings in [
            ApiSettings {
                workers: vec!["http://worker-1:8081".into()],
                ..Default::default()
            },
            ApiSettings::standalone(),
        ] {
            settings.engine.low_priority.share = 1.5;
            let err = settings.validate().unwrap_err().to_string();
            assert!(err.contains("low_priority.share"), "{err}");
        }
    }

    #[test]
    fn standalone_checks_the_engine_and_registry_settings() {
        let mut settings = ApiSettings::standalone();
        settings.engine.batching.instances = 0;
        let err = settings.validate().unwrap_err().to_string();
        assert_eq!(err, "batching: instances must be at least 1");
        let mut settings = ApiSettings::standalone();
        settings.registry.heartbeat_ms = 0;
        settings.validate().unwrap();
        settings.server.database.url = Some("sqlite://data/vatic.db".into());
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
