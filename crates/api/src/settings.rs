//! Settings of the api binary.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
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
    /// Standalone: the model repository folder.
    pub models_dir: PathBuf,
    /// Standalone: batching defaults.
    pub batching: BatchingConfig,
    /// Cluster: worker base URLs, e.g. `["http://worker-1:8081"]`.
    pub workers: Vec<String>,
    /// Cluster: milliseconds between active health checks of each worker.
    pub health_interval_ms: u64,
    /// Cluster: longest wait for a worker's answer, in milliseconds.
    pub worker_timeout_ms: u64,
    /// Logging.
    pub log: LogSettings,
}

impl Default for ApiSettings {
    fn default() -> Self {
        let engine = EngineSettings::default();
        ApiSettings {
            mode: Mode::Cluster,
            listen: "127.0.0.1:8080".into(),
            drain_secs: 5,
            max_body_bytes: 64 * 1024 * 1024,
            models_dir: engine.models_dir,
            batching: engine.batching,
            workers: Vec::new(),
            health_interval_ms: 1000,
            worker_timeout_ms: 60_000,
            log: LogSettings::default(),
        }
    }
}

impl ApiSettings {
    /// Checks what serde cannot, naming the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        match self.mode {
            Mode::Standalone => self.batching.validate("batching"),
            Mode::Cluster => {
                if self.workers.is_empty() {
                    anyhow::bail!("workers: cluster mode needs at least one worker URL (or run with --standalone)");
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
