//! The HTTP side of the KServe V2 protocol that the api and the worker share: the binary
//! extension's header, encoded answers, model routes with and without a version, and the
//! model-ready answer.

use crate::routes::{Need, Routes};
use actix_web::http::header::CONTENT_TYPE;
use actix_web::http::{Method, StatusCode};
use actix_web::{FromRequest, Handler, HttpRequest, HttpResponse, Responder};
use serde::Deserialize;
use vatic_schema::v2::{self, Encoded, HEADER_LENGTH};
use vatic_schema::{ModelReady, SchemaError};

/// `{model}` and optional `{version}` of a model route.
#[derive(Debug, Deserialize)]
pub struct ModelPath {
    /// Model name.
    pub model: String,
    /// Version, when the path names one.
    #[serde(default)]
    pub version: Option<String>,
    /// Label, when the path names one (the api's `/labels/{label}` routes).
    #[serde(default)]
    pub label: Option<String>,
}

/// Registers `handler` for `method` at `/v2/models/{model}{suffix}` and
/// `/v2/models/{model}/versions/{version}{suffix}`.
pub fn model_route<F, Args>(
    routes: &mut Routes<'_>,
    method: &Method,
    suffix: &str,
    need: Need,
    summary: &'static str,
    handler: F,
) where
    F: Handler<Args> + Clone,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    routes
        .add(
            method.clone(),
            format!("/v2/models/{{model}}{suffix}"),
            need,
            summary,
            handler.clone(),
        )
        .add(
            method.clone(),
            format!("/v2/models/{{model}}/versions/{{version}}{suffix}"),
            need,
            summary,
            handler,
        );
}

/// The binary extension's header length (`Inference-Header-Content-Length`) of a request.
pub fn header_length(req: &HttpRequest) -> Result<Option<usize>, SchemaError> {
    let value = req
        .headers()
        .get(HEADER_LENGTH)
        .map(|v| v.to_str().unwrap_or("(not text)"));
    v2::parse_header_length(value)
}

/// The JSON part of a V2 request body: all of it, or the header the binary extension's
/// length names (a length past the end is left to the decoder to refuse).
pub fn json_part(body: &[u8], header_length: Option<usize>) -> &[u8] {
    match header_length {
        Some(n) => body.get(..n).unwrap_or(body),
        None => body,
    }
}

/// An encoded V2 body as a response: JSON, or JSON header plus binary data.
pub fn v2_response(encoded: Encoded) -> HttpResponse {
    let mut resp = HttpResponse::Ok();
    match encoded.header_length {
        Some(n) => {
            resp.insert_header((CONTENT_TYPE, "application/octet-stream"));
            resp.insert_header((HEADER_LENGTH, n.to_string()));
        }
        None => {
            resp.insert_header((CONTENT_TYPE, "application/json"));
        }
    }
    resp.body(encoded.body)
}

/// The answer to a model-ready probe: 200 when ready, 503 when known but not ready.
pub fn model_ready_response(model: &str, ready: bool) -> HttpResponse {
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    HttpResponse::build(status).json(ModelReady {
        name: model.to_string(),
        ready,
    })
}
