//! Errors found while reading wire data; every one is the client's to fix (HTTP 400).

use crate::datatype::UnknownDataType;

/// A request or response that does not follow the protocol.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SchemaError {
    /// The body is not valid JSON or not of the expected form.
    #[error("malformed JSON body: {0}")]
    Json(String),
    /// A tensor's data does not hold what its shape and datatype say.
    #[error("tensor '{name}' with shape {shape:?} needs {expected} of data, got {got}")]
    DataLength {
        /// Tensor name.
        name: String,
        /// Declared shape.
        shape: Vec<u64>,
        /// What the shape and datatype call for.
        expected: String,
        /// What arrived.
        got: String,
    },
    /// A datatype name that V2 does not have.
    #[error(transparent)]
    UnknownDataType(#[from] UnknownDataType),
    /// Anything else, described.
    #[error("{0}")]
    Invalid(String),
}
