//! Admin API types (`/admin/v1/...`): the model registry and the worker fleet.

use crate::TensorMetadata;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Where a model version is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VersionState {
    /// Pushed and checked; served when addressed by its version number.
    Staged,
    /// Takes a share of the model's traffic.
    Canary,
    /// Gets a copy of the traffic; its answers are compared, never returned.
    Shadow,
    /// Answers requests that name no version.
    Stable,
    /// No longer served; kept for the record.
    Retired,
}

impl VersionState {
    /// Every state, in lifecycle order.
    pub const ALL: [VersionState; 5] = [
        VersionState::Staged,
        VersionState::Canary,
        VersionState::Shadow,
        VersionState::Stable,
        VersionState::Retired,
    ];

    /// The lowercase name used in the database and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            VersionState::Staged => "staged",
            VersionState::Canary => "canary",
            VersionState::Shadow => "shadow",
            VersionState::Stable => "stable",
            VersionState::Retired => "retired",
        }
    }

    /// Whether workers load versions in this state.
    pub fn is_served(self) -> bool {
        self != VersionState::Retired
    }

    /// The built-in label a version in this state carries: `stable`, `canary` or `shadow`.
    pub fn label(self) -> Option<&'static str> {
        match self {
            VersionState::Stable => Some("stable"),
            VersionState::Canary => Some("canary"),
            VersionState::Shadow => Some("shadow"),
            VersionState::Staged | VersionState::Retired => None,
        }
    }
}

impl fmt::Display for VersionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for VersionState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        VersionState::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                format!("unknown version state '{s}' (staged, canary, shadow, stable, retired)")
            })
    }
}

/// Whether the api's response cache keeps a model's answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheSetting {
    /// As each version's `model.toml` says (`[cache] enabled`).
    #[default]
    ModelToml,
    /// For every version.
    On,
    /// For no version.
    Off,
}

impl CacheSetting {
    /// The name used in the database and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheSetting::ModelToml => "model_toml",
            CacheSetting::On => "on",
            CacheSetting::Off => "off",
        }
    }
}

impl FromStr for CacheSetting {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "model_toml" => Ok(CacheSetting::ModelToml),
            "on" => Ok(CacheSetting::On),
            "off" => Ok(CacheSetting::Off),
            _ => Err(format!(
                "unknown response cache setting '{s}' (on, off, model_toml)"
            )),
        }
    }
}

/// Which engine runs a model's versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineSetting {
    /// As each version's `model.toml` says (`engine`), else the worker's `engine` setting.
    #[default]
    ModelToml,
    /// tract, for every version.
    Tract,
    /// ONNX Runtime, for every version.
    Onnxruntime,
    /// Both measured at load, for every version: ONNX Runtime serves when it is faster both in
    /// rows a second and at one row, else tract.
    Auto,
}

impl EngineSetting {
    /// The name used in the database and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            EngineSetting::ModelToml => "model_toml",
            EngineSetting::Tract => "tract",
            EngineSetting::Onnxruntime => "onnxruntime",
            EngineSetting::Auto => "auto",
        }
    }
}

impl FromStr for EngineSetting {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "model_toml" => Ok(EngineSetting::ModelToml),
            "tract" => Ok(EngineSetting::Tract),
            "onnxruntime" => Ok(EngineSetting::Onnxruntime),
            "auto" => Ok(EngineSetting::Auto),
            _ => Err(format!(
                "unknown engine setting '{s}' (tract, onnxruntime, auto, model_toml)"
            )),
        }
    }
}

/// How much of each prediction the log keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogMode {
    /// Nothing.
    Off,
    /// Request id, time, model, version, key, status and latency.
    #[default]
    Metadata,
    /// The metadata plus the request's inputs and the response's outputs, as V2 JSON.
    Full,
}

impl LogMode {
    /// The lowercase name used in the database and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            LogMode::Off => "off",
            LogMode::Metadata => "metadata",
            LogMode::Full => "full",
        }
    }
}

impl FromStr for LogMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(LogMode::Off),
            "metadata" => Ok(LogMode::Metadata),
            "full" => Ok(LogMode::Full),
            _ => Err(format!(
                "unknown prediction log mode '{s}' (off, metadata, full)"
            )),
        }
    }
}

/// A model's inputs and outputs as read from its graph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// Inputs, in graph order.
    pub inputs: Vec<TensorMetadata>,
    /// Outputs, in graph order.
    pub outputs: Vec<TensorMetadata>,
    /// Whether the first dimension of every tensor counts rows that can be batched.
    pub batched: bool,
}

/// One version of a model in the registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelVersionInfo {
    /// Model name.
    pub model: String,
    /// Version number.
    pub version: u64,
    /// Lifecycle state.
    pub state: VersionState,
    /// SHA-256 of the ONNX file, lowercase hex.
    pub sha256: String,
    /// Size of the ONNX file in bytes.
    pub size: u64,
    /// Inputs and outputs.
    pub signature: Signature,
    /// The version's `model.toml` (batching and signature overrides); empty for none.
    pub config: String,
    /// Who pushed it.
    pub created_by: String,
    /// When it was pushed (RFC 3339).
    pub created_at: String,
    /// Who changed its state last.
    pub updated_by: String,
    /// When its state changed last (RFC 3339).
    pub updated_at: String,
    /// Where it is loaded, one entry per worker (in standalone mode, the api's own process),
    /// with the engine that serves it there. Filled when one model or version is described.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loaded: Vec<VersionLoad>,
}

/// A model version as one worker holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionLoad {
    /// The worker's id (`standalone` for the api's own process).
    pub worker: String,
    /// Seconds since the worker's heartbeat said this; none in standalone mode. A worker that
    /// stopped without removing its row keeps its last heartbeat, ageing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_age_secs: Option<f64>,
    /// Its state there, engine and load-time figures.
    #[serde(flatten)]
    pub status: LoadedVersionStatus,
}

/// A model and its versions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Model name.
    pub name: String,
    /// When its first version was pushed (RFC 3339).
    pub created_at: String,
    /// What the prediction log keeps for this model.
    pub log_mode: LogMode,
    /// Share of requests logged, 0 to 1.
    pub log_sample_rate: f64,
    /// Whether the response cache keeps its answers.
    #[serde(default)]
    pub cache: CacheSetting,
    /// Which engine runs its versions.
    #[serde(default)]
    pub engine: EngineSetting,
    /// Its versions, oldest first.
    pub versions: Vec<ModelVersionInfo>,
    /// Every label and the version it names: `stable`, `canary` and `shadow` (from the
    /// versions' states) and the operators' own.
    #[serde(default)]
    pub labels: BTreeMap<String, u64>,
    /// How unversioned requests are split, and what a rollback returns to.
    #[serde(default)]
    pub traffic: Traffic,
    /// Counts every change of the model; a rollout change planned on an older revision is
    /// refused.
    #[serde(default)]
    pub revision: u64,
}

/// A model's traffic beyond its stable version.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Traffic {
    /// Percent of unversioned requests the canary answers, 0 to 100; 0 without a canary.
    #[serde(default)]
    pub canary_weight: u32,
    /// Percent of requests copied to the shadow, 0 to 100; 0 without a shadow.
    #[serde(default)]
    pub shadow_sample: u32,
    /// After a promote: the version that was stable, which a rollback returns to while it
    /// stays loaded.
    #[serde(default)]
    pub previous_stable: Option<u64>,
    /// Until when it stays loaded (RFC 3339); it is retired then.
    #[serde(default)]
    pub previous_until: Option<String>,
    /// The last automatic rollout started, running or how it ended.
    #[serde(default)]
    pub auto: Option<AutoPlan>,
}

/// An automatic progressive rollout: the canary's share steps up while, over each interval,
/// its error ratio and p99 stay within bounds relative to the stable version; on a breach it is
/// rolled back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoPlan {
    /// The version rolled out.
    pub version: u64,
    /// The canary's shares, in percent, in order; after the last the canary is promoted.
    pub steps: Vec<u32>,
    /// Index into `steps` of the share now.
    pub step: usize,
    /// How long each share must hold up, in seconds.
    pub interval_secs: u64,
    /// Largest canary error ratio, as a multiple of the stable version's.
    pub max_error_ratio: f64,
    /// Largest canary p99, as a multiple of the stable version's.
    pub max_p99: f64,
    /// Milliseconds the canary's p99 may exceed the stable version's whatever the multiple
    /// (so a millisecond of noise on a 2 ms p99 is not a regression).
    pub p99_slack_ms: f64,
    /// Fewest canary requests a step is judged on.
    pub min_requests: u64,
    /// Smallest share of rows a shadow phase of the version must have agreed on, if one ran.
    pub min_agreement: Option<f64>,
    /// Error ratio allowed whatever the stable version's (so one error in a thousand does not
    /// fail a canary beside a stable version with none).
    pub error_floor: f64,
    /// `running`, `succeeded`, `rolled_back` or `cancelled`.
    pub state: String,
    /// The last decision, or why it ended.
    pub reason: String,
    /// Who started it.
    pub started_by: String,
    /// When (RFC 3339).
    pub started_at: String,
    /// When the share now began (RFC 3339).
    pub step_started_at: String,
}

impl AutoPlan {
    /// Whether the controller is still stepping it.
    pub fn is_running(&self) -> bool {
        self.state == "running"
    }
}

/// Body of `POST /admin/v1/models/{name}/rollout/auto`: start an automatic rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoStart {
    /// The version to roll out (staged, or the shadow).
    pub version: u64,
    /// The canary's shares, in percent, increasing, each from 1 to 100.
    pub steps: Vec<u32>,
    /// Seconds each share must hold up.
    pub interval_secs: u64,
    /// Largest canary error ratio, as a multiple of the stable version's.
    pub max_error_ratio: f64,
    /// Largest canary p99, as a multiple of the stable version's.
    pub max_p99: f64,
    /// Milliseconds the canary's p99 may exceed the stable version's whatever the multiple.
    #[serde(default = "default_p99_slack_ms")]
    pub p99_slack_ms: f64,
    /// Fewest canary requests a step is judged on.
    pub min_requests: u64,
    /// Smallest share of rows (0 to 1) a shadow phase must have agreed on, if one ran.
    #[serde(default)]
    pub min_agreement: Option<f64>,
    /// Error ratio (0 to 1) allowed whatever the stable version's.
    #[serde(default = "default_error_floor")]
    pub error_floor: f64,
}

fn default_error_floor() -> f64 {
    0.005
}

fn default_p99_slack_ms() -> f64 {
    5.0
}

/// The labels every model has, set by rollouts rather than by `models label`.
pub const BUILTIN_LABELS: [&str; 3] = ["stable", "canary", "shadow"];

impl ModelInfo {
    /// The version that answers requests naming no version: the stable one.
    pub fn default_version(&self) -> Option<&ModelVersionInfo> {
        self.in_state(VersionState::Stable)
    }

    /// The version in `state` (stable, canary and shadow have at most one).
    pub fn in_state(&self, state: VersionState) -> Option<&ModelVersionInfo> {
        self.versions.iter().find(|v| v.state == state)
    }

    /// The canary and the percent of unversioned requests it answers.
    pub fn canary(&self) -> Option<(u64, u32)> {
        self.in_state(VersionState::Canary)
            .map(|v| (v.version, self.traffic.canary_weight))
    }

    /// The shadow and the percent of requests copied to it.
    pub fn shadow(&self) -> Option<(u64, u32)> {
        self.in_state(VersionState::Shadow)
            .map(|v| (v.version, self.traffic.shadow_sample))
    }
}

/// Body of `PUT /admin/v1/models/{name}/labels/{label}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelSet {
    /// The version the label names.
    pub version: u64,
}

/// Body of `POST /admin/v1/models/{name}/rollout`: start a canary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutStart {
    /// The version to send traffic to.
    pub version: u64,
    /// Percent of unversioned requests it answers, 0 to 100.
    pub canary: u32,
}

/// Body of `PATCH /admin/v1/models/{name}/rollout`: change the canary's share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutSet {
    /// Percent of unversioned requests the canary answers, 0 to 100.
    pub canary: u32,
}

/// Body of `PUT /admin/v1/models/{name}/rollout/shadow`: start (or resample) a shadow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowStart {
    /// The version that gets the copies.
    pub version: u64,
    /// Percent of requests copied to it, 1 to 100.
    #[serde(default = "all")]
    pub sample: u32,
}

fn all() -> u32 {
    100
}

/// Body of `POST /admin/v1/models/{name}/rollout/rollback`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// Why, for the history.
    #[serde(default)]
    pub reason: Option<String>,
}

/// `GET /admin/v1/models/{name}/rollout` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutStatus {
    /// The model, its versions, labels and traffic.
    pub model: ModelInfo,
    /// Whether each served version is ready on at least one worker, by version.
    pub ready: BTreeMap<u64, bool>,
    /// The seconds `sides` covers, up to now.
    #[serde(default)]
    pub window_secs: u64,
    /// Each side's figures over the window, across every api replica.
    #[serde(default)]
    pub sides: Vec<crate::rollout::SideSummary>,
    /// The api replica running the automatic rollout controller, and until when its lease
    /// lasts; none before one took it.
    #[serde(default)]
    pub controller: Option<ControllerLease>,
    /// The id of the api replica that answered.
    #[serde(default)]
    pub replica: String,
}

/// Who runs the automatic rollout controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerLease {
    /// The api replica's id.
    pub holder: String,
    /// Until when its lease lasts unless renewed (RFC 3339).
    pub until: String,
}

/// One change of a model's labels or traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutEvent {
    /// When (RFC 3339).
    pub at: String,
    /// Who: an API key, or `controller` for the automatic rollout.
    pub actor: String,
    /// What: `label`, `unlabel`, `start`, `set`, `shadow`, `unshadow`, `promote`, `rollback`,
    /// `expire`.
    pub action: String,
    /// The version it concerns, if one.
    pub version: Option<u64>,
    /// The details (weights, labels, the reason of a rollback).
    pub detail: serde_json::Value,
}

/// `POST /admin/v1/models/{name}/versions` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushResponse {
    /// The version as recorded.
    pub version: ModelVersionInfo,
    /// False when the same bytes were already stored and only a new version row was written.
    pub artifact_stored: bool,
}

/// `POST /admin/v1/models/{name}/versions/{version}/retire` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetireResponse {
    /// The retired version.
    pub version: ModelVersionInfo,
    /// The version that became stable because the stable one was retired, if any.
    pub promoted: Option<ModelVersionInfo>,
}

/// Body of `PATCH /admin/v1/models/{name}`: prediction log, response cache and engine settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSettings {
    /// What the prediction log keeps.
    #[serde(default)]
    pub log_mode: Option<LogMode>,
    /// Share of requests logged, 0 to 1.
    #[serde(default)]
    pub log_sample_rate: Option<f64>,
    /// Whether the response cache keeps the model's answers.
    #[serde(default)]
    pub cache: Option<CacheSetting>,
    /// Which engine runs the model's versions.
    #[serde(default)]
    pub engine: Option<EngineSetting>,
}

/// How far a worker got with one model version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum LoadState {
    /// Fetching, loading or warming up.
    Loading,
    /// Serving.
    Ready,
    /// Failed to load; see the reason. A state this build does not know reads as this one.
    #[serde(other)]
    Unavailable,
}

/// One model version a worker holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadedVersionStatus {
    /// Model name.
    pub model: String,
    /// Version number.
    pub version: u64,
    /// Load state.
    pub state: LoadState,
    /// Why it is unavailable; empty otherwise.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// The engine that serves it (`tract` or `onnxruntime`); empty until it is loaded.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub engine: String,
    /// With `engine = "auto"`: what each engine measured when the version loaded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub engines: Vec<EngineFigure>,
}

/// What one engine measured when `engine = "auto"` chose between the engines at load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineFigure {
    /// The engine: `tract` or `onnxruntime`.
    pub engine: String,
    /// Rows a second at its best batching (the load-time profile's, else the version's own);
    /// none when it could not load or run the model.
    #[serde(default)]
    pub samples_per_second: Option<f64>,
    /// Microseconds one run of one row took (the median of several); none when it could not
    /// load or run the model.
    #[serde(default)]
    pub one_row_us: Option<f64>,
    /// Why it could not load or run the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether it serves the version.
    pub chosen: bool,
}

/// A worker as its heartbeat row describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// Process id, a UUID made at start.
    pub id: String,
    /// Base URL the api replicas reach it at.
    pub address: String,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// Its last heartbeat (RFC 3339).
    pub heartbeat_at: String,
    /// Seconds since that heartbeat, by the reader's clock.
    #[serde(default)]
    pub heartbeat_age_secs: f64,
    /// What it holds.
    pub loaded: Vec<LoadedVersionStatus>,
    /// Requests it was answering at its last heartbeat.
    #[serde(default)]
    pub in_flight: u64,
}

/// Body of `POST /admin/v1/keys`: a new API key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyCreate {
    /// `admin`, `deployer`, `predictor` or `viewer`.
    pub role: String,
    /// The models it may use; every model when absent.
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// Seconds until it stops working; never when absent.
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
    /// What it is for.
    #[serde(default)]
    pub name: Option<String>,
    /// Its own rate limit, requests per second; the api's default when absent.
    #[serde(default)]
    pub rate: Option<f64>,
    /// Requests it may make at once above its rate; a second's worth when absent.
    #[serde(default)]
    pub burst: Option<u32>,
}

/// An API key as `GET /admin/v1/keys` shows it: never its secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// Public id (the `<id>` of `vk_<id>_<secret>`).
    pub id: String,
    /// What it is for.
    pub name: String,
    /// Its role.
    pub role: String,
    /// The models it may use; every model when absent.
    pub models: Option<Vec<String>>,
    /// When it was made (RFC 3339).
    pub created_at: String,
    /// Who made it.
    pub created_by: String,
    /// When it stops working (RFC 3339), if ever.
    pub expires_at: Option<String>,
    /// When it was revoked (RFC 3339), if it was.
    pub revoked_at: Option<String>,
    /// Its own rate limit, requests per second, if it has one.
    pub rate: Option<f64>,
    /// Its burst, if it has a rate of its own.
    pub burst: Option<u32>,
}

/// `POST /admin/v1/keys` answer: the key, and its secret, shown this once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreatedKey {
    /// The key.
    pub key: KeyInfo,
    /// The whole key to send (`vk_<id>_<secret>`); not stored, not shown again.
    pub secret: String,
}

/// A logged prediction as `GET /admin/v1/predictions` gives it, its payloads decrypted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedPrediction {
    /// The record's id.
    pub id: String,
    /// When the request arrived (RFC 3339, microseconds).
    pub at: String,
    /// The request id (`X-Request-ID`).
    pub request_id: String,
    /// Model name.
    pub model: String,
    /// Version that answered.
    pub version: String,
    /// Id of the API key the request came with.
    pub api_key: Option<String>,
    /// HTTP status of the answer.
    pub status: u16,
    /// Time from arrival to answer, in microseconds.
    pub latency_us: u64,
    /// The request's inputs (V2 JSON), in `full` log mode.
    pub request: Option<serde_json::Value>,
    /// The response's outputs (V2 JSON), in `full` log mode.
    pub response: Option<serde_json::Value>,
    /// A shadow version's answer to a copy of the request `request_id` (the request's inputs
    /// are in the served record); absent for a served answer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
    /// The data key the payloads were encrypted with at rest, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_key: Option<String>,
    /// Why the payloads could not be decrypted (their key is not configured, or they were
    /// altered); `request` and `response` are then absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /admin/v1/predictions` answer: records in arrival order, and where the next page starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictionPage {
    /// The records of this page.
    pub records: Vec<LoggedPrediction>,
    /// The `after` value of the next page; absent on the last one.
    pub next: Option<String>,
}
