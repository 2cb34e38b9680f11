//! TF-Serving's REST API: `POST /v1/models/{m}[/versions/{v}|/labels/{l}]:predict` (row and
//! columnar forms), `GET /v1/models/{m}[/versions/{v}|/labels/{l}]` (status) and `.../metadata`.

use super::{key_id, log_prediction, Answered, Arrival};
use crate::error::ApiError;
use crate::metrics::Protocol;
use crate::state::{Served, State};
use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use vatic_schema::tfserving::{self, ModelStatus, PredictRequest, VersionStatus};
use vatic_schema::SchemaError;
use vatic_server::{read_body, until_client_gone, Group, Need, RequestId, Routes};

/// Registers the TF-Serving routes.
pub fn configure(routes: &mut Routes<'_>) {
    // POST paths end in `:predict`, so the last segment is `<model>:predict` or `<version>:predict`.
    routes.group(Group::plain("TF-Serving"), |routes| {
        routes
            .add(
                Method::POST,
                "/v1/models/{model}",
                Need::Infer,
                "Prediction: POST /v1/models/{model}:predict (rows or columns)",
                post_verb,
            )
            .add(
                Method::POST,
                "/v1/models/{model}/versions/{version}",
                Need::Infer,
                "Prediction on a version: .../versions/{version}:predict",
                post_verb,
            )
            .add(
                Method::POST,
                "/v1/models/{model}/labels/{label}",
                Need::Infer,
                "Prediction on a labelled version: .../labels/{label}:predict",
                post_verb,
            )
            .add(
                Method::GET,
                "/v1/models/{model}",
                Need::ModelRead,
                "Model status",
                get_status,
            )
            .add(
                Method::GET,
                "/v1/models/{model}/labels/{label}",
                Need::ModelRead,
                "Labelled version status",
                get_status,
            )
            .add(
                Method::GET,
                "/v1/models/{model}/labels/{label}/metadata",
                Need::ModelRead,
                "Labelled version metadata (signature)",
                get_metadata,
            )
            .add(
                Method::GET,
                "/v1/models/{model}/versions/{version}",
                Need::ModelRead,
                "Version status",
                get_status,
            )
            .add(
                Method::GET,
                "/v1/models/{model}/metadata",
                Need::ModelRead,
                "Model metadata (signature)",
                get_metadata,
            )
            .add(
                Method::GET,
                "/v1/models/{model}/versions/{version}/metadata",
                Need::ModelRead,
                "Version metadata (signature)",
                get_metadata,
            );
    });
}

#[derive(Deserialize)]
struct StatusPath {
    model: String,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    label: Option<String>,
}

/// Splits `name:verb` (the last path segment) and checks the verb.
fn split_verb(spec: &str) -> Result<&str, ApiError> {
    match spec.rsplit_once(':') {
        Some((name, "predict")) => Ok(name),
        Some((_, verb @ ("classify" | "regress"))) => Err(ApiError::NotImplemented(format!(
            ":{verb} is not supported: ONNX models are served through :predict"
        ))),
        _ => Err(ApiError::BadRequest(format!(
            "unknown TF-Serving method in '{spec}': use <model>:predict"
        ))),
    }
}

async fn post_verb(
    req: HttpRequest,
    s: State,
    p: web::Path<StatusPath>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let arrived = Arrival::now();
    let _in_flight = s.metrics.enter();
    let result = predict(&req, &s, &p, payload, arrived).await;
    // The model name before any `:verb`, as far as the path can be read.
    let model = p.model.split(':').next().unwrap_or_default();
    s.record_inference(Protocol::TfServing, model, &result, arrived.instant);
    result.map(|(r, _)| r)
}

/// Runs a TF-Serving predict; returns the answer and the version that gave it.
async fn predict(
    req: &HttpRequest,
    s: &State,
    p: &StatusPath,
    payload: web::Payload,
    arrived: Arrival,
) -> Result<(HttpResponse, Option<String>), ApiError> {
    // The verb ends the last segment: the model's, the version's or the label's.
    let (model, version, label) = match (&p.version, &p.label) {
        (Some(v), _) => (p.model.clone(), Some(split_verb(v)?.to_string()), None),
        (None, Some(l)) => (p.model.clone(), None, Some(split_verb(l)?.to_string())),
        (None, None) => (split_verb(&p.model)?.to_string(), None, None),
    };
    let body = read_body(req, payload, &s.body).await?;
    s.body.check_json(&body)?;
    // NaN, Infinity and -Infinity, which TF Serving's reader takes as numbers.
    let quoted = vatic_schema::json::quote_non_finite(&body);
    let predict: PredictRequest = serde_json::from_slice(quoted.as_deref().unwrap_or(&body))
        .map_err(|e| SchemaError::Json(e.to_string()))?;
    let routed = s.route(req, &model, version.as_deref(), label.as_deref())?;
    let version = routed.version.clone();
    let id = RequestId::of(req);
    let key = key_id(req);
    // A version that cannot take the request (its signature differs) fails it: that counts
    // against its side of a rollout as much as an error of the run.
    let prepared = async {
        let metadata = s.backend.metadata(&model, version.as_deref()).await?;
        Ok::<_, ApiError>(tfserving::to_infer_request(predict, &metadata.inputs)?)
    }
    .await;
    let (request, form) = match prepared {
        Ok(prepared) => prepared,
        Err(e) => {
            let unlogged = Served {
                arrived,
                request_id: id.as_deref(),
                key_id: key,
                logged: None,
            };
            let status = actix_web::ResponseError::status_code(&e).as_u16();
            s.after_answer(&model, &routed, Err(status), unlogged);
            return Err(e);
        }
    };
    let (answer, cached) = match until_client_gone(
        req,
        s.infer(req, &model, &routed, &request, id.as_deref()),
    )
    .await
    {
        Ok((answer, cached)) => (Ok(answer), cached),
        Err(e) => (Err(e), None),
    };
    let logged = log_prediction(
        s,
        Answered {
            model: &model,
            version: version.as_deref(),
            request_id: id.as_deref(),
            key_id: key.clone(),
            arrived,
            request: &request,
            request_json: None,
            answer: answer.as_ref(),
            response_json: None,
        },
    );
    let served = Served {
        arrived,
        request_id: id.as_deref(),
        key_id: key,
        logged,
    };
    let response = match answer {
        Ok(response) => response,
        Err(e) => {
            let status = actix_web::ResponseError::status_code(&e).as_u16();
            s.after_answer(&model, &routed, Err(status), served);
            return Err(e);
        }
    };
    let mut answer = HttpResponse::Ok().json(tfserving::to_predict_response(&response, form)?);
    super::name_version(&mut answer, response.model_version.as_deref());
    super::name_cache(&mut answer, cached);
    let version = response.model_version.clone();
    let done = Ok((request, response));
    s.after_answer(&model, &routed, done, served);
    Ok((answer, version))
}

async fn get_status(s: State, p: web::Path<StatusPath>) -> Result<HttpResponse, ApiError> {
    let version = s.named_version(&p.model, p.version.as_deref(), p.label.as_deref())?;
    let versions: Vec<VersionStatus> = s
        .backend
        .index()
        .await?
        .into_iter()
        .filter(|m| m.name == p.model && version.as_ref().is_none_or(|v| *v == m.version))
        .map(|m| VersionStatus::of(m.version, m.state, m.reason))
        .collect();
    if versions.is_empty() {
        // Let the backend say which it is: unknown model, or unknown version with the known ones.
        s.backend.metadata(&p.model, version.as_deref()).await?;
        return Err(ApiError::ModelNotFound(p.model.clone()));
    }
    Ok(HttpResponse::Ok().json(ModelStatus {
        model_version_status: versions,
    }))
}

async fn get_metadata(s: State, p: web::Path<StatusPath>) -> Result<HttpResponse, ApiError> {
    let version = s.named_version(&p.model, p.version.as_deref(), p.label.as_deref())?;
    let meta = s.backend.metadata(&p.model, version.as_deref()).await?;
    let version = match &version {
        Some(v) => v.clone(),
        None => meta
            .versions
            .iter()
            .filter_map(|v| v.parse::<u64>().ok())
            .max()
            .map(|v| v.to_string())
            .unwrap_or_default(),
    };
    Ok(HttpResponse::Ok().json(tfserving::metadata(
        &meta.name,
        &version,
        &meta.inputs,
        &meta.outputs,
    )))
}
