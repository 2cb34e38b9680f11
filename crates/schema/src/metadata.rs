//! Health, server and model metadata, and Triton's model-configuration and statistics extensions.

use crate::DataType;
use serde::{Deserialize, Serialize};

/// `GET /v2`: who the server is and which protocol extensions it speaks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerMetadata {
    /// Server name.
    pub name: String,
    /// Server version.
    pub version: String,
    /// Supported extensions, e.g. `binary_tensor_data`.
    pub extensions: Vec<String>,
}

/// Name, datatype and shape of one input or output; `-1` marks a dimension of any size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorMetadata {
    /// Tensor name.
    pub name: String,
    /// Element datatype.
    pub datatype: DataType,
    /// Shape, with `-1` for dynamic dimensions.
    pub shape: Vec<i64>,
}

/// `GET /v2/models/{m}[/versions/{v}]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMetadata {
    /// Model name.
    pub name: String,
    /// Versions the server has of this model.
    pub versions: Vec<String>,
    /// Model platform, `onnx_onnxv1`.
    pub platform: String,
    /// Inputs.
    pub inputs: Vec<TensorMetadata>,
    /// Outputs.
    pub outputs: Vec<TensorMetadata>,
}

/// `GET /v2/models/{m}[/versions/{v}]/ready`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelReady {
    /// Model name.
    pub name: String,
    /// Whether the version can serve requests now.
    pub ready: bool,
}

/// Triton's model configuration (`GET /v2/models/{m}/config`), the fields its tools read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Model name.
    pub name: String,
    /// Always `onnxruntime_onnx`'s sibling for tract: `onnx_onnxv1`.
    pub platform: String,
    /// Backend that runs the model.
    pub backend: String,
    /// Largest batch in rows; 0 when the model has no batch dimension (dims then include every axis).
    pub max_batch_size: u32,
    /// Inputs; `dims` leave out the batch dimension when `max_batch_size > 0`.
    pub input: Vec<ConfigTensor>,
    /// Outputs, like inputs.
    pub output: Vec<ConfigTensor>,
    /// Dynamic batching settings, when the model batches.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub dynamic_batching: Option<DynamicBatching>,
    /// Instances (runner threads) per version.
    pub instance_group: Vec<InstanceGroup>,
    /// The version policy: every version in the repository is served.
    pub version_policy: serde_json::Value,
}

/// One input or output in Triton's configuration form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigTensor {
    /// Tensor name.
    pub name: String,
    /// Triton datatype name, e.g. `TYPE_FP32`.
    pub data_type: String,
    /// Dimensions, `-1` for dynamic ones.
    pub dims: Vec<i64>,
}

/// Triton's `dynamic_batching` block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DynamicBatching {
    /// Batch sizes dispatched without waiting for the queue delay.
    pub preferred_batch_size: Vec<u32>,
    /// Longest wait for more rows.
    pub max_queue_delay_microseconds: u64,
    /// Queue limit and timeout.
    pub default_queue_policy: QueuePolicy,
}

/// Triton's queue policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuePolicy {
    /// Requests the queue holds before turning new ones away with 503.
    pub max_queue_size: u32,
    /// Per-request timeout in microseconds.
    pub default_timeout_microseconds: u64,
}

/// Triton's `instance_group` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceGroup {
    /// Instances.
    pub count: u32,
    /// `KIND_CPU`.
    pub kind: String,
}

/// Triton's statistics extension (`GET /v2/models[/{m}[/versions/{v}]]/stats`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelStatsResponse {
    /// One entry per model version.
    pub model_stats: Vec<ModelStats>,
}

/// Statistics of one model version since it was loaded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelStats {
    /// Model name.
    pub name: String,
    /// Version.
    pub version: String,
    /// The engine that runs it (`tract` or `onnxruntime`); workers that differ are listed
    /// comma-separated.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub backend: String,
    /// Milliseconds since the Unix epoch of the last inference, 0 if none.
    pub last_inference: u64,
    /// Rows inferred (a request of n rows counts n).
    pub inference_count: u64,
    /// Model executions (a batch counts once).
    pub execution_count: u64,
    /// Requests by outcome and phase.
    pub inference_stats: InferenceStats,
    /// Executions by batch size.
    pub batch_stats: Vec<BatchStats>,
}

/// Count and cumulative nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatDuration {
    /// Occurrences.
    pub count: u64,
    /// Total nanoseconds.
    pub ns: u64,
}

/// Per-request statistics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InferenceStats {
    /// Requests answered, with their total time from enqueue to reply.
    pub success: StatDuration,
    /// Requests that failed.
    pub fail: StatDuration,
    /// Requests dropped from the queue because their client had gone away.
    #[serde(default)]
    pub cancel: StatDuration,
    /// Time requests spent queued.
    pub queue: StatDuration,
    /// Time spent building batch tensors.
    pub compute_input: StatDuration,
    /// Time spent running the model.
    pub compute_infer: StatDuration,
    /// Time spent splitting outputs.
    pub compute_output: StatDuration,
}

/// Executions of one batch size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchStats {
    /// Rows in the batch.
    pub batch_size: u64,
    /// Executions of that size and their time.
    pub compute_infer: StatDuration,
}

/// One version in the repository index (`POST /v2/repository/index`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepositoryModel {
    /// Model name.
    pub name: String,
    /// Version.
    pub version: String,
    /// `LOADING`, `READY` or `UNAVAILABLE`.
    pub state: crate::admin::LoadState,
    /// Why the version is unavailable; empty otherwise.
    pub reason: String,
}

/// The error body every failure carries: `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What was wrong and how to fix it.
    pub error: String,
}
