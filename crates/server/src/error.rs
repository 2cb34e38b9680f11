//! The errors of the request machinery every process shares, and the JSON error body every
//! vatic answer carries: `{"error": "..."}`, with `Retry-After` where a retry can help.

use actix_web::http::header::RETRY_AFTER;
use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use vatic_schema::ErrorBody;

/// A request that failed before its handler's own work: reading its body, or waiting for a
/// client that went away.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The body exceeds the configured limit.
    #[error("request body exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The limit (`max_body_bytes`).
        limit: usize,
    },
    /// The body could not be read.
    #[error("could not read the request body: {0}")]
    Body(String),
    /// The body did not all arrive in time.
    #[error("the request body did not arrive within {ms} ms (body_timeout_ms)")]
    BodyTimeout {
        /// The limit, in milliseconds.
        ms: u64,
    },
    /// The client closed the connection before the answer was ready.
    #[error("the client closed the connection")]
    ClientGone,
}

impl RequestError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            RequestError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            RequestError::Body(_) => StatusCode::BAD_REQUEST,
            RequestError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            // nginx's "client closed request": nobody reads it, but access logs show it.
            RequestError::ClientGone => status_from(499),
        }
    }
}

/// The status of a number, 500 for one that is no HTTP status (a worker's answer passed on).
pub fn status_from(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// The error answer: `status`, `{"error": message}`, and `Retry-After: secs` when given.
pub fn error_response(
    status: StatusCode,
    message: String,
    retry_after: Option<u64>,
) -> HttpResponse {
    let mut resp = HttpResponse::build(status);
    if let Some(secs) = retry_after {
        resp.insert_header((RETRY_AFTER, secs.to_string()));
    }
    resp.json(ErrorBody { error: message })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_its_status_and_the_body_says_what_was_wrong() {
        let cases = [
            (RequestError::TooLarge { limit: 10 }, 413),
            (RequestError::Body("reset".into()), 400),
            (RequestError::ClientGone, 499),
        ];
        for (error, status) in cases {
            assert_eq!(error.status().as_u16(), status, "{error}");
        }
        let resp = error_response(StatusCode::SERVICE_UNAVAILABLE, "busy".into(), Some(1));
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers().get(RETRY_AFTER).unwrap(), "1");
        let resp = error_response(status_from(1000), "odd".into(), None);
        assert_eq!(resp.status(), 500);
        assert!(resp.headers().get(RETRY_AFTER).is_none());
    }
}
