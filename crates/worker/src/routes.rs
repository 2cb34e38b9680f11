//! The worker's internal V2 endpoint: the same model routes as the public api (infer with
//! binary tensors, metadata, ready, Triton's configuration and statistics, the repository
//! index), so that a worker can be tested and measured alone.

use crate::batcher::{Priority, PRIORITY_HEADER};
use crate::process::WorkerService;
use crate::EngineError;
use actix_web::http::Method;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use vatic_schema::{v2, InferRequest, SchemaError};
use vatic_server::v2::{
    header_length, json_part, model_ready_response, model_route, v2_response, ModelPath,
};
use vatic_server::{read_body, status_from, until_client_gone, RequestError};
use vatic_server::{Group, Need, Routes};

/// A worker request that failed: the engine's refusal, or the request's own failure.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The engine refused or failed the request.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The body could not be read or was too large, or the client went away.
    #[error(transparent)]
    Request(#[from] RequestError),
}

impl From<SchemaError> for WorkerError {
    fn from(e: SchemaError) -> Self {
        WorkerError::Engine(EngineError::Schema(e))
    }
}

impl ResponseError for WorkerError {
    fn status_code(&self) -> StatusCode {
        match self {
            WorkerError::Engine(e) => status_from(e.status()),
            WorkerError::Request(e) => e.status(),
        }
    }

    fn error_response(&self) -> HttpResponse {
        let retry_after = match self {
            WorkerError::Engine(e) => e.retry_after(),
            WorkerError::Request(_) => None,
        };
        vatic_server::error_response(self.status_code(), self.to_string(), retry_after)
    }
}

type State = web::Data<WorkerService>;

/// Registers the worker's model routes.
pub fn configure(routes: &mut Routes<'_>) {
    // Inference first: actix tries the route patterns in order, by regex.
    routes.group(Group::plain("V2"), |routes| {
        model_route(
            routes,
            &Method::POST,
            "/infer",
            Need::Infer,
            "Inference (V2 JSON or binary tensors)",
            post_infer,
        );
        routes
            .add(
                Method::GET,
                "/v2/models/stats",
                Need::View,
                "Statistics of every model (Triton)",
                get_all_stats,
            )
            .add(
                Method::POST,
                "/v2/repository/index",
                Need::View,
                "The model repository index (Triton)",
                post_index,
            );
        model_route(
            routes,
            &Method::GET,
            "",
            Need::ModelRead,
            "Model metadata: inputs, outputs, versions",
            get_metadata,
        );
        model_route(
            routes,
            &Method::GET,
            "/ready",
            Need::ModelRead,
            "Model readiness: 200 when ready, else 400",
            get_model_ready,
        );
        model_route(
            routes,
            &Method::GET,
            "/config",
            Need::ModelRead,
            "Model configuration (Triton)",
            get_config,
        );
        model_route(
            routes,
            &Method::GET,
            "/stats",
            Need::ModelRead,
            "Model statistics (Triton)",
            get_stats,
        );
    });
}

async fn post_index(s: State) -> HttpResponse {
    HttpResponse::Ok().json(s.engine().index())
}

async fn get_metadata(s: State, p: web::Path<ModelPath>) -> Result<HttpResponse, WorkerError> {
    Ok(HttpResponse::Ok().json(s.engine().metadata(&p.model, p.version.as_deref())?))
}

async fn get_model_ready(s: State, p: web::Path<ModelPath>) -> Result<HttpResponse, WorkerError> {
    let ready = s.engine().model_ready(&p.model, p.version.as_deref())?;
    Ok(model_ready_response(&p.model, ready))
}

async fn get_config(s: State, p: web::Path<ModelPath>) -> Result<HttpResponse, WorkerError> {
    Ok(HttpResponse::Ok().json(s.engine().config(&p.model, p.version.as_deref())?))
}

async fn get_stats(s: State, p: web::Path<ModelPath>) -> Result<HttpResponse, WorkerError> {
    let stats = s.engine().stats(Some(&p.model), p.version.as_deref())?;
    Ok(HttpResponse::Ok().json(stats))
}

async fn get_all_stats(s: State) -> Result<HttpResponse, WorkerError> {
    Ok(HttpResponse::Ok().json(s.engine().stats(None, None)?))
}

async fn post_infer(
    req: HttpRequest,
    s: State,
    p: web::Path<ModelPath>,
    payload: web::Payload,
) -> Result<HttpResponse, WorkerError> {
    let body = read_body(&req, payload, &s.body).await?;
    let header_length = header_length(&req)?;
    s.body.check_json(json_part(&body, header_length))?;
    let request: InferRequest = v2::decode_request(&body, header_length)?;
    let priority = Priority::from_header(req.headers().get(PRIORITY_HEADER).map(|v| v.as_bytes()))?;
    let response = until_client_gone(&req, async {
        Ok::<_, WorkerError>(
            s.engine()
                .infer_at(&p.model, p.version.as_deref(), &request, priority)
                .await?,
        )
    })
    .await?;
    Ok(v2_response(v2::encode_response(&response, |t| {
        request.wants_binary(&t.name)
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_its_status_and_retry_advice() {
        let not_ready = WorkerError::from(EngineError::NotReady {
            model: "m".into(),
            reason: "loading".into(),
        });
        let resp = not_ready.error_response();
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers().get("retry-after").unwrap(), "1");
        let too_large = WorkerError::from(RequestError::TooLarge { limit: 1 });
        assert_eq!(too_large.status_code(), 413);
        assert!(too_large
            .error_response()
            .headers()
            .get("retry-after")
            .is_none());
        let schema = WorkerError::from(SchemaError::Json("eof".into()));
        assert_eq!(schema.status_code(), 400);
        let gone = WorkerError::from(RequestError::ClientGone);
        assert_eq!(gone.status_code().as_u16(), 499);
    }
}
