//! What can go wrong serving a request, and the HTTP status each case maps to.

/// An inference or lookup that failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    /// No model of that name.
    #[error("unknown model '{0}'")]
    ModelNotFound(String),
    /// The model exists, the version does not.
    #[error("model '{model}' has no version '{version}' (versions: {available})")]
    VersionNotFound {
        /// Model name.
        model: String,
        /// Version asked for.
        version: String,
        /// Versions there are, comma-separated.
        available: String,
    },
    /// The version exists but cannot serve yet (loading) or any more (unloading).
    #[error("model '{model}' is not ready: {reason}")]
    NotReady {
        /// Model name.
        model: String,
        /// Loading, or why loading failed.
        reason: String,
    },
    /// The request does not fit the model's signature.
    #[error("{0}")]
    InvalidInput(String),
    /// The wire data is malformed.
    #[error(transparent)]
    Schema(#[from] vatic_schema::SchemaError),
    /// The model's queue is full.
    #[error("model '{model}' is overloaded: its queue holds {size} requests; retry later")]
    QueueFull {
        /// Model name.
        model: String,
        /// The queue limit.
        size: usize,
    },
    /// The request waited longer than its timeout.
    #[error("request timed out after {ms} ms waiting for model '{model}'; retry later")]
    Timeout {
        /// Model name.
        model: String,
        /// The timeout.
        ms: u64,
    },
    /// The process is shutting down and takes no new work.
    #[error("shutting down: no new requests are accepted")]
    ShuttingDown,
    /// The model failed while running: a bug or a model defect, not the client's fault.
    #[error("inference failed: {0}")]
    Inference(String),
}

impl EngineError {
    /// The HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            EngineError::ModelNotFound(_) | EngineError::VersionNotFound { .. } => 404,
            EngineError::InvalidInput(_) | EngineError::Schema(_) => 400,
            EngineError::NotReady { .. }
            | EngineError::QueueFull { .. }
            | EngineError::Timeout { .. }
            | EngineError::ShuttingDown => 503,
            EngineError::Inference(_) => 500,
        }
    }

    /// Seconds a client should wait before retrying, for the errors that are worth a retry.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            EngineError::NotReady { .. }
            | EngineError::QueueFull { .. }
            | EngineError::Timeout { .. }
            | EngineError::ShuttingDown => Some(1),
            EngineError::ModelNotFound(_)
            | EngineError::VersionNotFound { .. }
            | EngineError::InvalidInput(_)
            | EngineError::Schema(_)
            | EngineError::Inference(_) => None,
        }
    }
}
