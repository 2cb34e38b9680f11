//! Logging: JSON lines (or text) on stdout through `tracing`.

use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

/// How the process logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `json` (one JSON object per line) or `text`.
    pub format: String,
    /// A tracing filter such as `info` or `info,vatic_worker=debug`; `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: "json".into(),
            level: "info".into(),
        }
    }
}

/// Installs the global subscriber; a second call is ignored (tests start many servers).
pub fn init(settings: &LogSettings) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let _ = if settings.format == "text" {
        builder.try_init()
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    };
}
