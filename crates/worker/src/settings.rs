//! Settings of the worker binary, and the layered loader every vatic binary uses:
//! built-in defaults, then a TOML file, then `VATIC_*` environment variables, then flags.

use crate::config::BatchingConfig;
use crate::engine::EngineSettings;
use crate::profile::ProfileSettings;
use crate::reconcile::ReconcileSettings;
use crate::telemetry::LogSettings;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Everything the worker binary reads at start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerSettings {
    /// Address to listen on, e.g. `0.0.0.0:8081`; port 0 picks a free port.
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
    /// The model repository folder.
    pub models_dir: PathBuf,
    /// Batching defaults for every model version (the bounds of load-time profiling).
    pub batching: BatchingConfig,
    /// Load-time profiling of model versions without a `[batching]` of their own.
    pub profile: ProfileSettings,
    /// The registry database; when its URL is set, models come from the registry instead of
    /// `models_dir`.
    pub database: DatabaseSettings,
    /// Cache and timing of the registry reconcile loop.
    pub registry: ReconcileSettings,
    /// Base URL api replicas reach this worker at, published in its heartbeat; by default
    /// `http://<host name>:<port>` when listening on all interfaces, else `http://<listen>`.
    pub advertise: Option<String>,
    /// Logging.
    pub log: LogSettings,
    /// Address of the Prometheus metrics endpoint (`GET /metrics`), a port of its own; none
    /// when unset.
    pub metrics_listen: Option<String>,
}

/// Where the database is and whether to migrate it at start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `postgres://user@host:port/db` or `sqlite://path/to/file.db`; unset for none.
    pub url: Option<String>,
    /// Apply pending migrations at start instead of refusing to run.
    pub migrate: bool,
    /// Most connections in the pool.
    pub max_connections: u32,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        DatabaseSettings {
            url: None,
            migrate: false,
            max_connections: 8,
        }
    }
}

impl DatabaseSettings {
    /// Opens the database and checks (or, with `migrate`, brings up to date) its schema.
    pub async fn open(&self) -> anyhow::Result<Option<vatic_store::Store>> {
        let Some(url) = &self.url else {
            return Ok(None);
        };
        let mut opts = vatic_store::ConnectOptions::new(url.clone());
        opts.max_connections = self.max_connections;
        let store = vatic_store::Store::open(&opts, self.migrate)
            .await
            .map_err(|e| anyhow::anyhow!("database {}: {e}", redact(url)))?;
        Ok(Some(store))
    }
}

/// A database URL with its password replaced, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

impl Default for WorkerSettings {
    fn default() -> Self {
        let engine = EngineSettings::default();
        WorkerSettings {
            listen: "127.0.0.1:8081".into(),
            drain_secs: 5,
            max_body_bytes: 64 * 1024 * 1024,
            busy_poll_us: 200,
            models_dir: engine.models_dir,
            batching: engine.batching,
            profile: engine.profile,
            database: DatabaseSettings::default(),
            registry: ReconcileSettings::default(),
            advertise: None,
            log: LogSettings::default(),
            metrics_listen: None,
        }
    }
}

impl WorkerSettings {
    /// The engine's part of the settings.
    pub fn engine(&self) -> EngineSettings {
        EngineSettings {
            models_dir: self.models_dir.clone(),
            batching: self.batching.clone(),
            profile: self.profile.clone(),
        }
    }

    /// Checks values that serde cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.batching.validate("batching")?;
        self.profile.validate()?;
        if self.registry.poll_ms == 0 || self.registry.heartbeat_ms == 0 {
            anyhow::bail!("registry.poll_ms and registry.heartbeat_ms must be at least 1");
        }
        if self.database.max_connections == 0 {
            anyhow::bail!("database.max_connections must be at least 1");
        }
        Ok(())
    }
}

/// Loads settings of type `T`: defaults, then `file` (which must exist when given explicitly,
/// `explicit`), then `VATIC_*` variables that name a setting (`__` separates nesting:
/// `VATIC_BATCHING__MAX_BATCH_SIZE`), then `flags` (only the fields that were set).
pub fn load<T: Serialize + DeserializeOwned + Default>(
    file: &Path,
    explicit: bool,
    flags: impl Serialize,
) -> anyhow::Result<T> {
    if explicit && !file.is_file() {
        anyhow::bail!("config file {} does not exist", file.display());
    }
    // Other tools share the VATIC_ prefix (vaticctl's VATIC_SERVER): take only the variables
    // whose first part names a setting of T; unknown keys inside a section are still refused.
    let defaults = Serialized::defaults(T::default());
    let known: Vec<String> = Figment::from(&defaults)
        .extract::<figment::value::Dict>()
        .map_err(|e| anyhow::anyhow!("configuration defaults: {e}"))?
        .into_keys()
        .collect();
    let env = Env::prefixed("VATIC_").split("__").filter(move |key| {
        let first = key.as_str().split('.').next().unwrap_or_default();
        known.iter().any(|k| k.eq_ignore_ascii_case(first))
    });
    Figment::from(defaults)
        .merge(Toml::file(file))
        .merge(env)
        .merge(Serialized::defaults(flags))
        .extract()
        .map_err(|e| anyhow::anyhow!("configuration ({}): {e}", file.display()))
}

#[cfg(test)]
// figment's Jail closures return figment's own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    #[derive(Serialize)]
    struct Flags {
        #[serde(skip_serializing_if = "Option::is_none")]
        listen: Option<String>,
    }

    fn load_in(jail: &Jail, listen_flag: Option<&str>) -> anyhow::Result<WorkerSettings> {
        let file = jail.directory().join("worker.toml");
        load(
            &file,
            false,
            Flags {
                listen: listen_flag.map(str::to_string),
            },
        )
    }

    #[test]
    fn layers_apply_in_order_defaults_file_env_flags() {
        Jail::expect_with(|jail| {
            let s = load_in(jail, None).unwrap();
            assert_eq!(s, WorkerSettings::default());
            jail.create_file("worker.toml", "listen = \"0.0.0.0:9\"\nmodels_dir = \"/srv/models\"\n[batching]\nmax_batch_size = 8\n")?;
            let s = load_in(jail, None).unwrap();
            assert_eq!(
                (s.listen.as_str(), s.batching.max_batch_size),
                ("0.0.0.0:9", 8)
            );
            assert_eq!(
                s.batching.max_queue_size,
                BatchingConfig::default().max_queue_size
            );
            jail.set_env("VATIC_LISTEN", "127.0.0.1:7");
            // Another tool's variable is not a setting of this binary and is left alone.
            jail.set_env("VATIC_SERVER", "http://elsewhere:8080");
            jail.set_env("VATIC_BATCHING__MAX_BATCH_SIZE", "64");
            let s = load_in(jail, None).unwrap();
            assert_eq!(
                (s.listen.as_str(), s.batching.max_batch_size),
                ("127.0.0.1:7", 64)
            );
            assert_eq!(s.models_dir, PathBuf::from("/srv/models"));
            let s = load_in(jail, Some("127.0.0.1:5")).unwrap();
            assert_eq!(s.listen, "127.0.0.1:5");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        Jail::expect_with(|jail| {
            jail.create_file("worker.toml", "listne = \"0.0.0.0:9\"\n")?;
            let err = load_in(jail, None).unwrap_err().to_string();
            assert!(err.contains("listne"), "{err}");
            jail.create_file("worker.toml", "[batching]\nmax_batch_size = \"many\"\n")?;
            let err = load_in(jail, None).unwrap_err().to_string();
            assert!(err.contains("max_batch_size"), "{err}");
            jail.create_file("worker.toml", "[batching]\nmax_batch_size = 0\n")?;
            let err = load_in(jail, None)
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(err.contains("max_batch_size must be at least 1"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn an_explicit_config_file_must_exist() {
        let err =
            load::<WorkerSettings>(Path::new("/nonexistent/vatic.toml"), true, ()).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }
}
