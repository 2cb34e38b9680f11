//! Reading request bodies, within a size limit.

use crate::RequestError;
use actix_web::dev::Decompress;
use actix_web::http::header::CONTENT_LENGTH;
use actix_web::{web, HttpRequest};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

/// Reads a whole body, decompressing it per `Content-Encoding` (gzip), and refuses it with 413
/// as soon as it passes `limit` bytes, counted after decompression.
pub async fn read_body(
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
    let mut body = BytesMut::with_capacity(declared.unwrap_or(0));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| RequestError::Body(e.to_string()))?;
        if body.len() + chunk.len() > limit {
            return Err(RequestError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}
