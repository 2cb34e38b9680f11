//! Settings of the worker binary: the shared server settings, the engine's, and the registry
//! loop's.

use crate::engine::EngineSettings;
use crate::reconcile::ReconcileSettings;
use serde::{Deserialize, Serialize};
use vatic_server::{ProcessSettings, ServerSettings};

/// Everything the worker binary reads at start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerSettings {
    /// Listening, draining, limits, database, logs, metrics. With `database.url` set, models
    /// come from the registry instead of `models_dir`.
    #[serde(flatten)]
    pub server: ServerSettings,
    /// The model repository folder and batching defaults.
    #[serde(flatten)]
    pub engine: EngineSettings,
    /// Cache and timing of the registry reconcile loop.
    pub registry: ReconcileSettings,
    /// Base URL api replicas reach this worker at, published in its heartbeat; by default
    /// `http://<host name>:<port>` when listening on all interfaces, else `http://<listen>`
    /// (`https://` with `[tls]`).
    pub advertise: Option<String>,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            server: ServerSettings::listening_on("127.0.0.1:8081"),
            engine: EngineSettings::default(),
            registry: ReconcileSettings::default(),
            advertise: None,
        }
    }
}

impl ProcessSettings for WorkerSettings {
    type Flattened = EngineSettings;

    fn server(&self) -> &ServerSettings {
        &self.server
    }
}

impl WorkerSettings {
    /// Checks values that serde cannot, naming the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.server.validate()?;
        self.engine.validate()?;
        self.registry.validate()
    }
}

#[cfg(test)]
// figment's Jail closures return figment's own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use crate::BatchingConfig;
    use figment::Jail;
    use std::path::PathBuf;

    fn load_in(jail: &Jail) -> anyhow::Result<WorkerSettings> {
        let no_flags = std::collections::BTreeMap::<String, String>::new();
        vatic_server::settings::load(&jail.directory().join("worker.toml"), false, no_flags)
    }

    #[test]
    fn the_documented_keys_load_into_their_parts() {
        Jail::expect_with(|jail| {
            assert_eq!(load_in(jail).unwrap(), WorkerSettings::default());
            jail.create_file(
                "worker.toml",
                "listen = \"0.0.0.0:9\"\nmodels_dir = \"/srv/models\"\nadvertise = \"http://w:9\"\n[batching]\nmax_batch_size = 8\n[registry]\npoll_ms = 7\n",
            )?;
            jail.set_env("VATIC_PROFILE__CELL_MS", "3");
            let s = load_in(jail).unwrap();
            assert_eq!(s.server.listen, "0.0.0.0:9");
            assert_eq!(s.engine.models_dir, PathBuf::from("/srv/models"));
            assert_eq!(s.engine.batching.max_batch_size, 8);
            assert_eq!(
                s.engine.batching.max_queue_size,
                BatchingConfig::default().max_queue_size
            );
            assert_eq!(s.engine.profile.cell_ms, 3);
            assert_eq!(
                (s.registry.poll_ms, s.advertise.as_deref()),
                (7, Some("http://w:9"))
            );
            Ok(())
        });
    }

    #[test]
    fn environment_variables_reach_every_part() {
        Jail::expect_with(|jail| {
            jail.set_env("VATIC_DRAIN_SECS", "9");
            jail.set_env("VATIC_METRICS_LISTEN", "0.0.0.0:9181");
            jail.set_env("VATIC_DATABASE__URL", "postgres://vatic:pw@db:5432/vatic");
            jail.set_env("VATIC_LOG__DIR", "/var/log/vatic");
            jail.set_env("VATIC_MODELS_DIR", "/srv/models");
            jail.set_env("VATIC_ADVERTISE", "http://worker-1:8081");
            jail.set_env("VATIC_BATCHING__INLINE_MAX_US", "0");
            jail.set_env("VATIC_PROFILE__ONE_INSTANCE_MAX_US", "40");
            let s = load_in(jail).unwrap();
            assert_eq!(s.server.drain_secs, 9);
            assert_eq!(s.server.metrics_listen.as_deref(), Some("0.0.0.0:9181"));
            assert_eq!(
                s.server.database.url.as_deref(),
                Some("postgres://vatic:pw@db:5432/vatic")
            );
            assert_eq!(s.server.log.dir, Some(PathBuf::from("/var/log/vatic")));
            assert_eq!(s.engine.models_dir, PathBuf::from("/srv/models"));
            assert_eq!(s.advertise.as_deref(), Some("http://worker-1:8081"));
            assert_eq!(s.engine.batching.inline_max_us, 0);
            assert_eq!(s.engine.profile.one_instance_max_us, Some(40));
            Ok(())
        });
    }

    #[test]
    fn the_committed_worker_config_loads() {
        // In a jail, so that no other test's variables are set meanwhile.
        Jail::expect_with(|_| {
            committed_worker_config_loads();
            Ok(())
        });
    }

    fn committed_worker_config_loads() {
        let file =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/worker.toml");
        let no_flags = std::collections::BTreeMap::<String, String>::new();
        let s: WorkerSettings = vatic_server::settings::load(&file, true, no_flags).unwrap();
        s.validate().unwrap();
        assert_eq!(s.server.listen, "0.0.0.0:8081");
        assert_eq!(s.server.metrics_listen.as_deref(), Some("0.0.0.0:9181"));
        assert_eq!(s.engine.batching.max_batch_size, 32);
        assert_eq!(s.server.log.format, "json");
    }

    #[test]
    fn bad_values_are_named() {
        Jail::expect_with(|jail| {
            jail.create_file("worker.toml", "[batching]\nmax_batch_size = \"many\"\n")?;
            let err = load_in(jail).unwrap_err().to_string();
            assert!(err.contains("max_batch_size"), "{err}");
            jail.create_file("worker.toml", "models_dir = 3\n")?;
            let err = load_in(jail).unwrap_err().to_string();
            assert!(err.contains("models_dir"), "{err}");
            jail.create_file("worker.toml", "[batching]\nmax_batch_size = 0\n")?;
            let err = load_in(jail).unwrap().validate().unwrap_err().to_string();
            assert!(err.contains("max_batch_size must be at least 1"), "{err}");
            jail.create_file("worker.toml", "[registry]\npoll_ms = 0\n")?;
            let err = load_in(jail).unwrap().validate().unwrap_err().to_string();
            assert!(err.contains("registry.poll_ms"), "{err}");
            Ok(())
        });
    }
}
