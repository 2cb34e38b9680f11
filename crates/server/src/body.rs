//! Reading request bodies, within a size limit and a time limit.

use crate::{RequestError, ServerSettings};
use actix_web::dev::Decompress;
use actix_web::http::header::CONTENT_LENGTH;
use actix_web::{web, HttpRequest};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use std::time::Duration;

/// What a request body may be: its size, the time it may take to arrive, and the values in its
/// JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// Largest body, in bytes, after decompression (`max_body_bytes`).
    pub max_bytes: usize,
    /// Longest time for the whole body to arrive (`body_timeout_ms`).
    pub timeout: Duration,
    /// Most values in a JSON body (`max_json_values`).
    pub max_json_values: usize,
}

impl BodyLimits {
    /// The limits the settings give.
    pub fn from_settings(settings: &ServerSettings) -> BodyLimits {
        BodyLimits {
            max_bytes: settings.max_body_bytes,
            timeout: Duration::from_millis(settings.body_timeout_ms),
            max_json_values: settings.max_json_values,
        }
    }

    /// Refuses JSON with more values than `max_json_values`, before it is parsed.
    pub fn check_json(&self, json: &[u8]) -> Result<(), vatic_schema::SchemaError> {
        vatic_schema::json::check_values(json, self.max_json_values)
    }
}

/// Memory set aside for a body before its bytes arrive: the declared length up to this, so a
/// client that declares a large body and sends it slowly does not hold the whole of it.
const FIRST_ALLOCATION: usize = 1024 * 1024;

/// Reads a whole body, decompressing it per `Content-Encoding` (gzip); refuses it with 413 as
/// soon as it passes `limits.max_bytes`, counted after decompression, and with 408 when it has
/// not all arrived within `limits.timeout`.
pub async fn read_body(
    req: &HttpRequest,
    payload: web::Payload,
    limits: &BodyLimits,
) -> Result<Bytes, RequestError> {
    match tokio::time::timeout(limits.timeout, read(req, payload, limits.max_bytes)).await {
        Ok(body) => body,
        Err(_) => Err(RequestError::BodyTimeout {
            ms: limits.timeout.as_millis() as u64,
        }),
    }
}

async fn read(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
) -> Result<Bytes, RequestError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(RequestError::TooLarge { limit });
    }
    let mut payload = Decompress::from_headers(payload.into_inner(), req.headers());
    let mut body = BytesMut::with_capacity(declared.unwrap_or(0).min(FIRST_ALLOCATION));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| RequestError::Body(e.to_string()))?;
        if body.len() + chunk.len() > limit {
            return Err(RequestError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}
