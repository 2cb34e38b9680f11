//! Wire types of vatic: KServe V2 (Open Inference Protocol) requests and responses with the binary
//! tensor extension, TF-Serving's REST predict API, metadata, Triton's configuration and
//! statistics extensions, and the error body.
//!
//! Tensor data is kept as little-endian bytes, the layout both the binary extension and the
//! inference engine use, so data crosses from the socket to the engine without conversion.

#![forbid(unsafe_code)]

pub mod admin;
pub mod batch;
mod datatype;
mod error;
pub mod json;
mod metadata;
pub mod rollout;
mod tensor;
pub mod tfserving;
pub mod v2;

pub use datatype::{DataType, UnknownDataType};
pub use error::SchemaError;
pub use metadata::*;
pub use tensor::{element_count, Tensor, TensorData, ToLeBytes};
pub use v2::{InferRequest, InferResponse, RequestedOutput};

/// Parameters of requests, responses and tensors: a JSON object.
pub type Parameters = serde_json::Map<String, serde_json::Value>;
