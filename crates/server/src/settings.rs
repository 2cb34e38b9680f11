//! Settings: the part every vatic process shares ([`ServerSettings`]), and the layered loader
//! every binary uses: built-in defaults, then a TOML file, then `VATIC_*` environment
//! variables, then flags.
//!
//! A process's settings embed the shared part with `#[serde(flatten)]`, so its keys stay at
//! the top level of the file (`listen = ...`, `[log]`). serde reports a bad value inside a
//! flattened part without its key, so [`load`] first reads each flattened part on its own
//! ([`ProcessSettings::read_parts`]); the flattened structs themselves do not refuse unknown
//! keys (the process's settings do, for all of them).

use crate::telemetry::{self, LogGuard, LogSettings};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use vatic_store::DatabaseSettings;
use vatic_tls::TlsSettings;

/// The settings of every vatic HTTP process: where it listens, how it stops, what it accepts,
/// its database, its logs and its metrics endpoint.
///
/// serde does not apply the outer struct's `#[serde(default)]` to a flattened one: a key
/// missing here takes `ServerSettings::default()`, not the process's default (a worker's
/// `listen`). [`load`] supplies every key from the process's defaults first, so read settings
/// with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerSettings {
    /// Address to listen on, e.g. `0.0.0.0:8081`; port 0 picks a free port.
    pub listen: String,
    /// Seconds to keep serving after SIGTERM while reporting not ready.
    pub drain_secs: u64,
    /// Largest request body accepted, in bytes (larger: 413).
    pub max_body_bytes: usize,
    /// Most values (array elements, object members, arrays and objects) in a JSON request
    /// body or binary request's JSON header (more: 400). Large tensors go as binary data.
    pub max_json_values: usize,
    /// Milliseconds a client has to send a request's line and headers, from the connection's
    /// start or the previous answer (slower: 408, and the connection is closed); at least
    /// 1000, measured to the nearest 500 ms.
    pub request_head_timeout_ms: u64,
    /// Milliseconds a client has to send a request's whole body once its headers are in
    /// (slower: 408).
    pub body_timeout_ms: u64,
    /// Seconds an idle keep-alive connection stays open (0: one request per connection).
    pub keep_alive_secs: u64,
    /// Longest time, in microseconds, an HTTP thread keeps polling its connections after a
    /// request instead of sleeping, when its requests come that close together (0: never).
    /// Saves a wake-up per request at low load, for CPU time; see docs/deployment.md, "Busy
    /// polling".
    pub busy_poll_us: u64,
    /// The database: the registry, the worker fleet and the prediction log. Unset for none.
    pub database: DatabaseSettings,
    /// Logging.
    pub log: LogSettings,
    /// Address of the Prometheus metrics endpoint (`GET /metrics`), a port of its own; none
    /// when unset.
    pub metrics_listen: Option<String>,
    /// HTTPS on every listener (the API port and the metrics port).
    pub tls: TlsSettings,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            listen: "127.0.0.1:8080".into(),
            drain_secs: 5,
            max_body_bytes: 64 * 1024 * 1024,
            max_json_values: 4 * 1024 * 1024,
            request_head_timeout_ms: 5000,
            body_timeout_ms: 60_000,
            keep_alive_secs: 5,
            busy_poll_us: 200,
            database: DatabaseSettings::default(),
            log: LogSettings::default(),
            metrics_listen: None,
            tls: TlsSettings::default(),
        }
    }
}

impl ServerSettings {
    /// The defaults, listening on `listen`.
    pub fn listening_on(listen: &str) -> ServerSettings {
        ServerSettings {
            listen: listen.into(),
            ..ServerSettings::default()
        }
    }

    /// Checks values that serde cannot, naming the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.database.max_connections == 0 {
            anyhow::bail!("database.max_connections must be at least 1");
        }
        for (key, value) in [
            ("max_body_bytes", self.max_body_bytes as u64),
            ("max_json_values", self.max_json_values as u64),
            ("request_head_timeout_ms", self.request_head_timeout_ms),
            ("body_timeout_ms", self.body_timeout_ms),
        ] {
            if value == 0 {
                anyhow::bail!("{key} must be at least 1");
            }
        }
        // The HTTP layer measures this from a clock it updates every 500 ms, so a connection
        // may get up to half a second less: below a second that cuts off ordinary clients.
        if self.request_head_timeout_ms < MIN_REQUEST_HEAD_TIMEOUT_MS {
            anyhow::bail!(
                "request_head_timeout_ms must be at least {MIN_REQUEST_HEAD_TIMEOUT_MS} (it is measured to the nearest 500 ms)"
            );
        }
        self.log.validate()
    }
}

/// Shortest `request_head_timeout_ms` accepted.
pub const MIN_REQUEST_HEAD_TIMEOUT_MS: u64 = 1000;

/// The settings of one vatic binary: [`ServerSettings`] flattened in, and its own.
pub trait ProcessSettings: Serialize + DeserializeOwned + Default {
    /// The other part flattened in (`()` for none): [`load`] reads it on its own first, so that
    /// a bad value in it is reported with its key.
    type Flattened: DeserializeOwned;

    /// The shared part.
    fn server(&self) -> &ServerSettings;
}

/// The flags every vatic binary takes for its [`ServerSettings`]; they win over the file and
/// the environment.
#[derive(Debug, Clone, Default, clap::Args, Serialize)]
pub struct ServerFlags {
    /// Configuration file [env: VATIC_CONFIG] (the default is below)
    #[arg(long, env = "VATIC_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to listen on, e.g. 0.0.0.0:8080 (api) or 0.0.0.0:8081 (worker)
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Address of the Prometheus metrics endpoint, e.g. 0.0.0.0:9180 (api) or 0.0.0.0:9181
    /// (worker)
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<String>,
}

/// Loads settings of type `T`: defaults, then `file` (which must exist when given explicitly,
/// `explicit`), then `VATIC_*` variables that name a setting (`__` separates nesting:
/// `VATIC_BATCHING__MAX_BATCH_SIZE`), then `flags` (only the fields that were set).
pub fn load<T: ProcessSettings>(
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
    let figment = Figment::from(defaults)
        .merge(Toml::file(file))
        .merge(env)
        .merge(Serialized::defaults(flags));
    let named = |e: figment::Error| anyhow::anyhow!("configuration ({}): {e}", file.display());
    figment.extract::<ServerSettings>().map_err(named)?;
    figment.extract::<T::Flattened>().map_err(named)?;
    figment.extract().map_err(named)
}

/// The start of every vatic binary: loads its settings from `config`, or from `default_file`
/// when none was given (see [`load`]), installs logging as they say (named `name`) and starts
/// the allocator's upkeep. Keep the guard until the process ends.
pub fn init<T: ProcessSettings>(
    name: &str,
    config: Option<&Path>,
    default_file: &str,
    flags: impl Serialize,
) -> anyhow::Result<(T, Option<LogGuard>)> {
    let file = config.map_or_else(|| PathBuf::from(default_file), Path::to_path_buf);
    let settings: T = load(&file, config.is_some(), flags)?;
    let logs = telemetry::init(&settings.server().log, name)?;
    crate::memory::purge_in_background();
    Ok((settings, logs))
}

#[cfg(test)]
// figment's Jail closures return figment's own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    /// A process's settings: the shared part and a flattened part of its own, and a section.
    #[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Process {
        #[serde(flatten)]
        server: ServerSettings,
        #[serde(flatten)]
        part: Part,
        section: Section,
    }

    #[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
    #[serde(default)]
    struct Part {
        models_dir: PathBuf,
    }

    #[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Section {
        size: usize,
    }

    impl ProcessSettings for Process {
        type Flattened = Part;

        fn server(&self) -> &ServerSettings {
            &self.server
        }
    }

    #[derive(Serialize)]
    struct Flags {
        #[serde(skip_serializing_if = "Option::is_none")]
        listen: Option<String>,
    }

    fn load_in(jail: &Jail, listen_flag: Option<&str>) -> anyhow::Result<Process> {
        let file = jail.directory().join("vatic.toml");
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
            assert_eq!(s, Process::default());
            jail.create_file(
                "vatic.toml",
                "listen = \"0.0.0.0:9\"\nmodels_dir = \"/srv/models\"\n[section]\nsize = 8\n[log]\nlevel = \"debug\"\n",
            )?;
            let s = load_in(jail, None).unwrap();
            assert_eq!((s.server.listen.as_str(), s.section.size), ("0.0.0.0:9", 8));
            assert_eq!(s.server.log.level, "debug");
            assert_eq!(s.server.log.format, LogSettings::default().format);
            jail.set_env("VATIC_LISTEN", "127.0.0.1:7");
            // Another tool's variable is not a setting of this binary and is left alone.
            jail.set_env("VATIC_SERVER", "http://elsewhere:8080");
            jail.set_env("VATIC_SECTION__SIZE", "64");
            jail.set_env("VATIC_DATABASE__MAX_CONNECTIONS", "3");
            let s = load_in(jail, None).unwrap();
            assert_eq!(
                (s.server.listen.as_str(), s.section.size),
                ("127.0.0.1:7", 64)
            );
            assert_eq!(s.server.database.max_connections, 3);
            assert_eq!(s.part.models_dir, PathBuf::from("/srv/models"));
            let s = load_in(jail, Some("127.0.0.1:5")).unwrap();
            assert_eq!(s.server.listen, "127.0.0.1:5");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        Jail::expect_with(|jail| {
            let cases = [
                ("listne = \"0.0.0.0:9\"\n", "listne"),
                ("[log]\nlevle = \"info\"\n", "levle"),
                ("drain_secs = \"many\"\n", "drain_secs"),
                ("[database]\nmax_connections = -1\n", "max_connections"),
                ("models_dir = 3\n", "models_dir"),
                ("[section]\nsize = \"many\"\n", "size"),
            ];
            for (text, key) in cases {
                jail.create_file("vatic.toml", text)?;
                let err = load_in(jail, None).unwrap_err().to_string();
                assert!(err.contains(key), "{text}: {err}");
            }
            jail.create_file("vatic.toml", "[database]\nmax_connections = 0\n")?;
            let err = load_in(jail, None)
                .unwrap()
                .server
                .validate()
                .unwrap_err()
                .to_string();
            assert_eq!(err, "database.max_connections must be at least 1");
            for (text, want) in [
                ("body_timeout_ms = 0\n", "body_timeout_ms must be at least 1"),
                (
                    "request_head_timeout_ms = 999\n",
                    "request_head_timeout_ms must be at least 1000 (it is measured to the nearest 500 ms)",
                ),
            ] {
                jail.create_file("vatic.toml", text)?;
                let settings = load_in(jail, None).unwrap().server;
                assert_eq!(settings.validate().unwrap_err().to_string(), want, "{text}");
            }
            jail.create_file("vatic.toml", "request_head_timeout_ms = 1000\n")?;
            load_in(jail, None).unwrap().server.validate().unwrap();
            Ok(())
        });
    }

    #[test]
    fn an_explicit_config_file_must_exist() {
        let err = load::<Process>(Path::new("/nonexistent/vatic.toml"), true, ()).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }
}
