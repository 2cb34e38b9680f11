//! The KServe V2 model routes: metadata, ready, Triton's config and statistics, infer.

use super::{key_id, log_prediction, Answered, Arrival};
use crate::error::ApiError;
use crate::metrics::Protocol;
use crate::state::{Served, State};
use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use vatic_schema::v2;
use vatic_server::v2::{header_length, model_ready_response, model_route, v2_response, ModelPath};
use vatic_server::{read_body, until_client_gone, RequestId};
use vatic_server::{Group, Need, Routes};

/// Registers the V2 model routes, with and without `/versions/{version}`.
pub fn configure(routes: &mut Routes<'_>) {
    // Inference first: actix tries the route patterns in order, by regex.
    routes.group(Group::plain("V2"), |routes| {
        labelled_route(
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
        labelled_route(
            routes,
            &Method::GET,
            "",
            Need::ModelRead,
            "Model metadata: inputs, outputs, versions",
            get_metadata,
        );
        labelled_route(
            routes,
            &Method::GET,
            "/ready",
            Need::ModelRead,
            "Model readiness: 200 when ready, else 400",
            get_model_ready,
        );
        labelled_route(
            routes,
            &Method::GET,
            "/config",
            Need::ModelRead,
            "Model configuration (Triton)",
            get_config,
        );
        labelled_route(
            routes,
            &Method::GET,
            "/stats",
            Need::ModelRead,
            "Model statistics (Triton)",
            get_stats,
        );
    });
}

/// Registers `handler` at the model's route with no version, with `/versions/{version}`
/// (both as the worker has them) and with `/labels/{label}` (a vatic extension).
fn labelled_route<F, Args>(
    routes: &mut Routes<'_>,
    method: &Method,
    suffix: &str,
    need: Need,
    summary: &'static str,
    handler: F,
) where
    F: actix_web::Handler<Args> + Clone,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    model_route(routes, method, suffix, need, summary, handler.clone());
    routes.add(
        method.clone(),
        format!("/v2/models/{{model}}/labels/{{label}}{suffix}"),
        need,
        summary,
        handler,
    );
}

async fn get_metadata(s: State, p: web::Path<ModelPath>) -> Result<HttpResponse, ApiError> {
    let version = s.named_version(&p.model, p.version.as_deref(), p.label.as_deref())?;
    Ok(HttpResponse::Ok().json(s.backend.metadata(&p.model, version.as_deref()).await?))
}

async fn get_model_ready(s: State, p: web::Path<ModelPath>) -> Result<HttpResponse, ApiError> {
    let version = s.named_version(&p.model, p.version.as_deref(), p.label.as_deref())?;
    Ok(model_ready_response(
        &p.model,
        s.backend.model_ready(&p.model, version.as_deref()).await?,
    ))
}

async fn get_config(s: State, p: web::Path<ModelPath>) -> Result<HttpResponse, ApiError> {
    let version = s.named_version(&p.model, p.version.as_deref(), p.label.as_deref())?;
    Ok(HttpResponse::Ok().json(s.backend.config(&p.model, version.as_deref()).await?))
}

async fn get_stats(s: State, p: web::Path<ModelPath>) -> Result<HttpResponse, ApiError> {
    let version = s.named_version(&p.model, p.version.as_deref(), p.label.as_deref())?;
    Ok(HttpResponse::Ok().json(s.backend.stats(Some(&p.model), version.as_deref()).await?))
}

async fn get_all_stats(s: State) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(s.backend.stats(None, None).await?))
}

async fn post_index(s: State) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(s.backend.index().await?))
}

async fn post_infer(
    req: HttpRequest,
    s: State,
    p: web::Path<ModelPath>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let arrived = Arrival::now();
    let _in_flight = s.metrics.enter();
    let result = infer(&req, &s, &p, payload, arrived).await;
    s.record_inference(Protocol::V2, &p.model, &result, arrived.instant);
    result.map(|(r, _)| r)
}

/// Runs a V2 inference request; returns the answer and the version that gave it.
async fn infer(
    req: &HttpRequest,
    s: &State,
    p: &ModelPath,
    payload: web::Payload,
    arrived: Arrival,
) -> Result<(HttpResponse, Option<String>), ApiError> {
    let body = read_body(req, payload, &s.body).await?;
    let binary_request = header_length(req)?;
    s.body
        .check_json(vatic_server::v2::json_part(&body, binary_request))?;
    let request = v2::decode_request(&body, binary_request)?;
    let routed = s.route(req, &p.model, p.version.as_deref(), p.label.as_deref())?;
    let id = RequestId::of(req);
    let (answer, cached) = match until_client_gone(
        req,
        s.infer(req, &p.model, &routed, &request, id.as_deref()),
    )
    .await
    {
        Ok((answer, cached)) => (Ok(answer), cached),
        Err(e) => (Err(e), None),
    };
    // Encoded once, for the client and, when it is all JSON, for the log.
    let answer = answer.map(|r| {
        let encoded = v2::encode_response(&r, |t| request.wants_binary(&t.name));
        (r, encoded)
    });
    let key = key_id(req);
    let logged = log_prediction(
        s,
        Answered {
            model: &p.model,
            version: routed.version.as_deref(),
            request_id: id.as_deref(),
            key_id: key.clone(),
            arrived,
            request: &request,
            request_json: binary_request.is_none().then_some(&body[..]),
            answer: answer.as_ref().map(|(r, _)| r),
            response_json: answer
                .as_ref()
                .ok()
                .filter(|(_, e)| e.header_length.is_none())
                .map(|(_, e)| &e.body[..]),
        },
    );
    let served = Served {
        arrived,
        request_id: id.as_deref(),
        key_id: key,
        logged,
    };
    match answer {
        Ok((response, encoded)) => {
            let mut answer = v2_response(encoded);
            super::name_version(&mut answer, response.model_version.as_deref());
            super::name_cache(&mut answer, cached);
            let version = response.model_version.clone();
            let done = Ok((request, response));
            s.after_answer(&p.model, &routed, done, served);
            Ok((answer, version))
        }
        Err(e) => {
            let status = actix_web::ResponseError::status_code(&e).as_u16();
            s.after_answer(&p.model, &routed, Err(status), served);
            Err(e)
        }
    }
}
