//! Per-model settings: batching, instances and signature overrides, from `model.toml` beside the
//! model's versions, falling back to the worker's defaults.

use serde::{Deserialize, Serialize};
use vatic_schema::TensorMetadata;

/// How a model version batches and queues requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchingConfig {
    /// Most rows in one model run. Rows a request carries count; a request larger than this
    /// runs on its own. 1 turns batching off.
    pub max_batch_size: usize,
    /// How long the first request of a batch may wait for more rows, in microseconds.
    pub max_queue_delay_us: u64,
    /// Batch sizes (in rows) that are run at once without waiting out the delay.
    pub preferred_batch_sizes: Vec<usize>,
    /// Requests the queue holds; more are refused with 503.
    pub max_queue_size: usize,
    /// How long a request may wait for its answer, in milliseconds.
    pub timeout_ms: u64,
    /// Runner threads for this version: at most this many model runs at once.
    pub instances: usize,
    /// A model whose one-row run took at most this long at load, in microseconds, runs a
    /// request on the HTTP thread that received it when it is the version's only request in
    /// flight, instead of handing it to a runner thread (with `max_queue_delay_us = 0` only).
    /// 0 turns this off.
    pub inline_max_us: u64,
}

impl Default for BatchingConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        BatchingConfig {
            max_batch_size: 32,
            max_queue_delay_us: 0,
            preferred_batch_sizes: Vec::new(),
            max_queue_size: 1024,
            timeout_ms: 30_000,
            instances: cores.min(4),
            inline_max_us: 100,
        }
    }
}

impl BatchingConfig {
    /// Checks the values, naming the key at fault.
    pub fn validate(&self, origin: &str) -> anyhow::Result<()> {
        let bad = |key: &str, why: &str| anyhow::anyhow!("{origin}: {key} {why}");
        if self.max_batch_size == 0 {
            return Err(bad("max_batch_size", "must be at least 1"));
        }
        if self.max_queue_size == 0 {
            return Err(bad("max_queue_size", "must be at least 1"));
        }
        if self.instances == 0 {
            return Err(bad("instances", "must be at least 1"));
        }
        if self.timeout_ms == 0 {
            return Err(bad("timeout_ms", "must be at least 1"));
        }
        if let Some(p) = self
            .preferred_batch_sizes
            .iter()
            .find(|p| **p == 0 || **p > self.max_batch_size)
        {
            return Err(bad(
                "preferred_batch_sizes",
                &format!("has {p}, outside 1..=max_batch_size"),
            ));
        }
        Ok(())
    }
}

/// The optional `model.toml` of a model folder (`<repository>/<model>/model.toml`), or of one
/// version folder (`<repository>/<model>/<version>/model.toml`), which wins.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelToml {
    /// The engine that runs the version; unset: the worker's `engine`.
    #[serde(default)]
    pub engine: Option<EngineChoice>,
    /// Batching settings; keys left out keep the worker's defaults.
    #[serde(default)]
    pub batching: Option<toml::Table>,
    /// Replaces the inputs read from the ONNX graph (names must exist in the graph).
    #[serde(default)]
    pub inputs: Option<Vec<TensorMetadata>>,
    /// Replaces the outputs read from the ONNX graph (names must exist in the graph).
    #[serde(default)]
    pub outputs: Option<Vec<TensorMetadata>>,
    /// The api's response cache for this version.
    #[serde(default)]
    pub cache: Option<CacheToml>,
}

/// Which engine runs a model version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineChoice {
    /// tract, pure Rust.
    #[default]
    Tract,
    /// ONNX Runtime (`onnxruntime.library`).
    OnnxRuntime,
    /// Both are measured at load; ONNX Runtime serves only if it is faster both in rows a
    /// second and at one row, else tract (docs/engines.md).
    Auto,
}

impl EngineChoice {
    /// The engine a registry model setting names; none for `model_toml`.
    pub fn from_setting(setting: vatic_schema::admin::EngineSetting) -> Option<EngineChoice> {
        use vatic_schema::admin::EngineSetting;
        match setting {
            EngineSetting::ModelToml => None,
            EngineSetting::Tract => Some(EngineChoice::Tract),
            EngineSetting::Onnxruntime => Some(EngineChoice::OnnxRuntime),
            EngineSetting::Auto => Some(EngineChoice::Auto),
        }
    }
}

/// `[cache]` of a `model.toml`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheToml {
    /// Whether the api keeps this version's answers and answers repeated requests from them.
    #[serde(default)]
    pub enabled: bool,
}

impl ModelToml {
    /// Parses a `model.toml` text; `None` when it is blank. `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<Option<ModelToml>> {
        if text.trim().is_empty() {
            return Ok(None);
        }
        let parsed = toml::from_str(text).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
        Ok(Some(parsed))
    }

    /// Whether a `model.toml` text opts its version into the api's response cache; a text that
    /// does not parse (refused when the version loads) does not.
    pub fn caches(text: &str) -> bool {
        matches!(
            ModelToml::parse(text, "model.toml"),
            Ok(Some(ModelToml {
                cache: Some(CacheToml { enabled: true }),
                ..
            }))
        )
    }

    /// The batching settings: `defaults` with this file's keys laid over them.
    pub fn batching(
        &self,
        defaults: &BatchingConfig,
        origin: &str,
    ) -> anyhow::Result<BatchingConfig> {
        let Some(table) = &self.batching else {
            return Ok(defaults.clone());
        };
        let mut merged = toml::Table::try_from(defaults)?;
        for (k, v) in table {
            merged.insert(k.clone(), v.clone());
        }
        let config: BatchingConfig = merged
            .try_into()
            .map_err(|e| anyhow::anyhow!("{origin}: [batching]: {e}"))?;
        config.validate(origin)?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> ModelToml {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn only_a_cache_section_enabled_true_opts_into_the_response_cache() {
        assert!(ModelToml::caches("[cache]\nenabled = true\n"));
        assert!(ModelToml::caches(
            "[batching]\nmax_batch_size = 4\n[cache]\nenabled = true\n"
        ));
        for off in [
            "",
            "[cache]\n",
            "[cache]\nenabled = false\n",
            "[batching]\n",
        ] {
            assert!(!ModelToml::caches(off), "{off:?}");
        }
        // Not a model.toml the version could load with: no cache either.
        assert!(!ModelToml::caches("[cache]\nenabled = true\nsize = 3\n"));
        assert!(ModelToml::parse("[cache]\nenabled = 1\n", "m/model.toml").is_err());
    }

    #[test]
    fn model_toml_lays_its_keys_over_the_defaults() {
        let defaults = BatchingConfig::default();
        let merged = parse("[batching]\nmax_batch_size = 4\n")
            .batching(&defaults, "m/model.toml")
            .unwrap();
        assert_eq!(
            merged,
            BatchingConfig {
                max_batch_size: 4,
                ..defaults.clone()
            }
        );
        assert_eq!(parse("").batching(&defaults, "m").unwrap(), defaults);
    }

    #[test]
    fn model_toml_errors_name_the_file_and_key() {
        let defaults = BatchingConfig::default();
        let err = parse("[batching]\nmax_batch_sise = 4\n")
            .batching(&defaults, "m/model.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("m/model.toml") && err.contains("max_batch_sise"),
            "{err}"
        );
        let err = parse("[batching]\nmax_batch_size = 4\npreferred_batch_sizes = [8]\n")
            .batching(&defaults, "m/model.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("preferred_batch_sizes has 8"), "{err}");
        assert!(toml::from_str::<ModelToml>("[batchin]\n").is_err());
    }

    #[test]
    fn the_engine_is_one_of_three_names() {
        for (text, want) in [
            ("engine = \"tract\"", Some(EngineChoice::Tract)),
            ("engine = \"onnxruntime\"", Some(EngineChoice::OnnxRuntime)),
            ("engine = \"auto\"", Some(EngineChoice::Auto)),
            ("", None),
        ] {
            assert_eq!(parse(text).engine, want, "{text}");
        }
        let err = ModelToml::parse("engine = \"ort\"", "m/model.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("m/model.toml") && err.contains("onnxruntime"),
            "{err}"
        );
    }
}
