//! What can go wrong with a request to the api, and the one place each case becomes an HTTP
//! status. The admin API has its own ([`crate::routes::admin::AdminError`]).

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use vatic_schema::SchemaError;
use vatic_server::{status_from, RequestError};
use vatic_worker::EngineError;

/// An inference or model request that failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body could not be read or was too large, or the client went away.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The wire data is malformed.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// The request is well formed but asks for something that is not there.
    #[error("{0}")]
    BadRequest(String),
    /// The registry has no model of that name.
    #[error("unknown model '{0}'")]
    ModelNotFound(String),
    /// The model exists in the registry, the version does not serve.
    #[error("model '{model}' has no version '{version}' (versions: {available})")]
    VersionNotFound {
        /// Model name.
        model: String,
        /// Version asked for.
        version: String,
        /// Versions that serve, comma-separated.
        available: String,
    },
    /// The model has no such label.
    #[error("model '{model}' has no label '{label}' (labels: {labels})")]
    LabelNotFound {
        /// Model name.
        model: String,
        /// Label asked for.
        label: String,
        /// The labels it has, comma-separated.
        labels: String,
    },
    /// A TF-Serving method vatic does not serve.
    #[error("{0}")]
    NotImplemented(String),
    /// The in-process engine (standalone) refused or failed the request.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A worker answered with an error, passed on as it came.
    #[error("{message}")]
    Upstream {
        /// The worker's status.
        status: u16,
        /// The worker's error message.
        message: String,
        /// The worker's Retry-After, if any.
        retry_after: Option<u64>,
    },
    /// A worker sent an answer that cannot be read.
    #[error("{0}")]
    BadGateway(String),
    /// A worker took longer than `worker_timeout_ms` to answer.
    #[error("worker {worker} did not answer within {ms} ms")]
    WorkerTimeout {
        /// The worker's URL.
        worker: String,
        /// The timeout.
        ms: u128,
    },
    /// No worker can take the request now.
    #[error("no worker is available: {0}")]
    NoWorker(String),
}

impl ApiError {
    /// Seconds a client should wait before retrying, for the errors that are worth a retry.
    fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::Engine(e) => e.retry_after(),
            ApiError::Upstream { retry_after, .. } => *retry_after,
            ApiError::WorkerTimeout { .. } | ApiError::NoWorker(_) => Some(1),
            ApiError::Request(_)
            | ApiError::Schema(_)
            | ApiError::BadRequest(_)
            | ApiError::ModelNotFound(_)
            | ApiError::VersionNotFound { .. }
            | ApiError::LabelNotFound { .. }
            | ApiError::NotImplemented(_)
            | ApiError::BadGateway(_) => None,
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Request(e) => e.status(),
            ApiError::Schema(_) | ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::ModelNotFound(_)
            | ApiError::VersionNotFound { .. }
            | ApiError::LabelNotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::Engine(e) => status_from(e.status()),
            ApiError::Upstream { status, .. } => status_from(*status),
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::WorkerTimeout { .. } | ApiError::NoWorker(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    fn error_response(&self) -> HttpResponse {
        vatic_server::error_response(self.status_code(), self.to_string(), self.retry_after())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_its_status_and_retry_advice() {
        let cases: Vec<(ApiError, u16, Option<&str>)> = vec![
            (RequestError::TooLarge { limit: 1 }.into(), 413, None),
            (RequestError::ClientGone.into(), 499, None),
            (SchemaError::Json("eof".into()).into(), 400, None),
            (ApiError::BadRequest("no".into()), 400, None),
            (ApiError::ModelNotFound("m".into()), 404, None),
            (
                ApiError::VersionNotFound {
                    model: "m".into(),
                    version: "9".into(),
                    available: "1, 2".into(),
                },
                404,
                None,
            ),
            (ApiError::NotImplemented(":classify".into()), 501, None),
            (EngineError::ShuttingDown.into(), 503, Some("1")),
            (EngineError::InvalidInput("x".into()).into(), 400, None),
            (
                ApiError::Upstream {
                    status: 429,
                    message: "slow down".into(),
                    retry_after: Some(3),
                },
                429,
                Some("3"),
            ),
            (ApiError::BadGateway("garbled".into()), 502, None),
            (
                ApiError::WorkerTimeout {
                    worker: "http://w:1".into(),
                    ms: 200,
                },
                503,
                Some("1"),
            ),
            (ApiError::NoWorker("none".into()), 503, Some("1")),
        ];
        for (error, status, retry_after) in cases {
            let resp = error.error_response();
            assert_eq!(resp.status().as_u16(), status, "{error}");
            let header = resp
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap());
            assert_eq!(header, retry_after, "{error}");
        }
        assert_eq!(
            ApiError::VersionNotFound {
                model: "m".into(),
                version: "9".into(),
                available: "1, 2".into(),
            }
            .to_string(),
            "model 'm' has no version '9' (versions: 1, 2)"
        );
    }
}
