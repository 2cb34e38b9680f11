//! The admin API, `/admin/v1/...`: the model registry, the worker fleet, the prediction log and
//! the audit log. The access guard checks every route's caller (see `vatic_server::auth`).

use crate::backend::Backend;
use crate::registry::{self, PushError, Upload};
use crate::state::State;
use actix_web::http::header::{CONTENT_TYPE, RETRY_AFTER};
use actix_web::http::Method;
use actix_web::http::StatusCode;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse, ResponseError};
use futures_util::{StreamExt, TryStreamExt};
use serde::Deserialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use vatic_schema::admin::{CreatedKey, KeyCreate, KeyInfo};
use vatic_schema::admin::{ModelSettings, ModelVersionInfo, VersionLoad};
use vatic_schema::ErrorBody;
use vatic_server::auth::{Caller, KeyRing, Role};
use vatic_server::{Group, Need, Routes};
use vatic_store::{Actor, ApiKey, Store, StoreError};

/// Errors of the admin API.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The request is malformed or names something invalid.
    #[error("{0}")]
    BadRequest(String),
    /// The upload exceeds `max_model_bytes`.
    #[error("the model file exceeds the limit of {0} bytes (max_model_bytes)")]
    TooLarge(u64),
    /// No database is configured.
    #[error("the admin API needs the registry database: set database.url")]
    NoDatabase,
    /// The registry refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A local file operation failed.
    #[error("upload: {0}")]
    Io(#[from] std::io::Error),
    /// The thing named does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Something failed that the caller cannot fix.
    #[error("{0}")]
    Internal(String),
    /// The change would send requests to a version that cannot answer them.
    #[error("{0}")]
    NotReady(String),
}

impl From<PushError> for AdminError {
    fn from(e: PushError) -> Self {
        match e {
            PushError::Invalid(m) => AdminError::BadRequest(m),
            PushError::Store(s) => AdminError::Store(s),
            PushError::Io(e) => AdminError::Io(e),
        }
    }
}

impl ResponseError for AdminError {
    fn status_code(&self) -> StatusCode {
        match self {
            AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AdminError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AdminError::NoDatabase => StatusCode::SERVICE_UNAVAILABLE,
            AdminError::Io(_) | AdminError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            AdminError::NotFound(_) => StatusCode::NOT_FOUND,
            AdminError::NotReady(_) => StatusCode::CONFLICT,
            AdminError::Store(e) => match e {
                StoreError::ModelNotFound(_)
                | StoreError::VersionNotFound { .. }
                | StoreError::LabelNotFound { .. } => StatusCode::NOT_FOUND,
                StoreError::Conflict(_) => StatusCode::CONFLICT,
                StoreError::Database(_) => StatusCode::SERVICE_UNAVAILABLE,
                StoreError::SchemaTooNew { .. } | StoreError::SchemaBehind { .. } => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                StoreError::Migrate(_)
                | StoreError::Open { .. }
                | StoreError::UnsupportedUrl(_)
                | StoreError::PasswordForSqlite
                | StoreError::Artifact { .. }
                | StoreError::Io(_)
                | StoreError::Corrupt(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut resp = HttpResponse::build(self.status_code());
        if matches!(self, AdminError::Store(StoreError::Database(_))) {
            resp.insert_header((RETRY_AFTER, "1"));
        }
        let error = match self {
            AdminError::Store(StoreError::Database(e)) => {
                format!("the registry database is unavailable: {e}")
            }
            other => other.to_string(),
        };
        resp.json(ErrorBody { error })
    }
}

/// The admin routes' group: its resources' extractor errors are the admin API's.
pub(crate) fn admin_group() -> Group {
    Group {
        tag: "admin",
        decorate: admin_resource,
    }
}

/// The admin routes' resources: their extractors' errors are the admin API's.
fn admin_resource(resource: actix_web::Resource) -> actix_web::Resource {
    resource
        .app_data(
            web::JsonConfig::default().error_handler(|e, _| {
                AdminError::BadRequest(format!("invalid JSON body: {e}")).into()
            }),
        )
        .app_data(
            web::QueryConfig::default()
                .error_handler(|e, _| AdminError::BadRequest(format!("invalid query: {e}")).into()),
        )
        .app_data(
            web::PathConfig::default()
                .error_handler(|e, _| AdminError::BadRequest(format!("invalid path: {e}")).into()),
        )
}

/// Registers the admin routes, under `/admin/v1`.
pub fn configure(routes: &mut Routes<'_>) {
    routes.group(admin_group(), |routes| {
        routes
            .add(
                Method::GET,
                "/admin/v1/models",
                Need::View,
                "Every model, its versions and settings",
                list_models,
            )
            .add(
                Method::GET,
                "/admin/v1/models/{name}",
                Need::ModelRead,
                "One model, its versions and settings",
                get_model,
            )
            .add(
                Method::PATCH,
                "/admin/v1/models/{name}",
                Need::Deploy,
                "Change a model's settings (prediction log, response cache, engine)",
                update_model,
            )
            .add(
                Method::POST,
                "/admin/v1/models/{name}/versions",
                Need::Deploy,
                "Push a new version (multipart: model file, settings)",
                push_version,
            )
            .add(
                Method::GET,
                "/admin/v1/models/{name}/versions/{version}",
                Need::ModelRead,
                "One version",
                get_version,
            )
            .add(
                Method::POST,
                "/admin/v1/models/{name}/versions/{version}/retire",
                Need::Deploy,
                "Retire a version",
                retire_version,
            )
            .add(
                Method::GET,
                "/admin/v1/workers",
                Need::View,
                "The worker fleet and what each worker holds",
                list_workers,
            )
            .add(
                Method::GET,
                "/admin/v1/audit",
                Need::View,
                "The audit log, newest first",
                list_audit,
            )
            .add(
                Method::POST,
                "/admin/v1/retention",
                Need::Admin,
                "Delete predictions older than a number of days",
                apply_retention,
            )
            .add(
                Method::GET,
                "/admin/v1/predictions",
                Need::Admin,
                "Logged predictions in arrival order, payloads decrypted (audited)",
                export_predictions,
            )
            .add(
                Method::GET,
                "/admin/v1/prediction-log",
                Need::View,
                "The prediction log's state",
                prediction_log_stats,
            )
            .add(
                Method::GET,
                "/admin/v1/keys",
                Need::Admin,
                "Every API key (never a secret)",
                list_keys,
            )
            .add(
                Method::POST,
                "/admin/v1/keys",
                Need::Admin,
                "Make an API key; its secret is shown once",
                create_key,
            )
            .add(
                Method::POST,
                "/admin/v1/keys/{id}/revoke",
                Need::Admin,
                "Revoke an API key, on every replica within a second",
                revoke_key,
            );
    });
}

pub(crate) fn store(s: &State) -> Result<&Store, AdminError> {
    s.store.as_ref().ok_or(AdminError::NoDatabase)
}

/// Who made the request, as the audit log records them.
pub(crate) fn actor(req: &HttpRequest) -> Actor {
    let caller = req
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or_else(Caller::anonymous);
    caller.actor(req)
}

async fn list_models(s: State) -> Result<HttpResponse, AdminError> {
    Ok(HttpResponse::Ok().json(store(&s)?.models().await?))
}

async fn get_model(s: State, name: web::Path<String>) -> Result<HttpResponse, AdminError> {
    let mut model = store(&s)?.model(&name).await?;
    where_loaded(&s, &mut model.versions).await?;
    Ok(HttpResponse::Ok().json(model))
}

/// Fills each version's `loaded`: which workers hold it (in standalone mode, this process), in
/// what state and with which engine, as their last heartbeats say. Left empty, with a warning,
/// when the heartbeats cannot be read.
async fn where_loaded(s: &State, versions: &mut [ModelVersionInfo]) -> Result<(), AdminError> {
    let held: Vec<VersionLoad> = match &*s.backend {
        Backend::Local(host) => host
            .engine
            .status()
            .into_iter()
            .map(|status| VersionLoad {
                worker: "standalone".into(),
                heartbeat_age_secs: None,
                status,
            })
            .collect(),
        Backend::Remote(..) => match store(s)?.workers().await {
            Ok(workers) => workers
                .into_iter()
                .flat_map(|w| {
                    let (worker, age) = (w.id, w.heartbeat_age_secs);
                    w.loaded.into_iter().map(move |status| VersionLoad {
                        worker: worker.clone(),
                        heartbeat_age_secs: Some(age),
                        status,
                    })
                })
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "the workers' heartbeats could not be read: the model is described without them");
                Vec::new()
            }
        },
    };
    for v in versions {
        v.loaded = held
            .iter()
            .filter(|l| l.status.model == v.model && l.status.version == v.version)
            .cloned()
            .collect();
    }
    Ok(())
}

async fn update_model(
    s: State,
    req: HttpRequest,
    name: web::Path<String>,
    body: web::Json<ModelSettings>,
) -> Result<HttpResponse, AdminError> {
    if let Some(rate) = body.log_sample_rate {
        if !(0.0..=1.0).contains(&rate) {
            return Err(AdminError::BadRequest(format!(
                "log_sample_rate must be between 0 and 1, got {rate}"
            )));
        }
    }
    let info = store(&s)?
        .set_model_settings(&name, &body, &actor(&req))
        .await?;
    s.registry_changed().await;
    Ok(HttpResponse::Ok().json(info))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PushQuery {
    version: Option<u64>,
}

/// `POST /admin/v1/models/{name}/versions`: the body is the ONNX file
/// (`application/octet-stream`), or a `multipart/form-data` form with a `model` file part and
/// an optional `config` part holding a `model.toml`.
async fn push_version(
    s: State,
    req: HttpRequest,
    name: web::Path<String>,
    query: web::Query<PushQuery>,
    payload: web::Payload,
) -> Result<HttpResponse, AdminError> {
    let store = store(&s)?.clone();
    registry::check_name(&name)?;
    // Refuse what can be refused before reading a large body.
    if let Some(version) = query.version {
        registry::check_version(version)?;
        match store.model_version(&name, version).await {
            Ok(_) => return Err(StoreError::version_taken(&name, version).into()),
            Err(StoreError::ModelNotFound(_) | StoreError::VersionNotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let dir = s.uploads.dir.clone();
    std::fs::create_dir_all(&dir)?;
    let file = registry::upload_path(&dir);
    let result = async {
        let config = receive(&req, payload, &file, s.uploads.max_model_bytes).await?;
        let upload = Upload {
            model: &name,
            version: query.version,
            file: &file,
            config: &config,
            actor: &actor(&req),
        };
        Ok::<_, AdminError>(registry::push(&store, &upload, &s.engine).await?)
    }
    .await;
    let _ = std::fs::remove_file(&file);
    let pushed = result?;
    s.registry_changed().await;
    Ok(HttpResponse::Created().json(pushed))
}

/// Streams the upload to `file`; returns the `model.toml` text sent with it (empty for none).
async fn receive(
    req: &HttpRequest,
    payload: web::Payload,
    file: &Path,
    limit: u64,
) -> Result<String, AdminError> {
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if content_type.starts_with("multipart/form-data") {
        let mut form = actix_multipart::Multipart::new(req.headers(), payload);
        let mut config = String::new();
        let mut got_model = false;
        while let Some(field) = form
            .try_next()
            .await
            .map_err(|e| AdminError::BadRequest(format!("multipart form: {e}")))?
        {
            let part = field.name().unwrap_or_default().to_string();
            match part.as_str() {
                "model" => {
                    write_stream(field.map(|c| c.map_err(|e| e.to_string())), file, limit).await?;
                    got_model = true;
                }
                "config" => {
                    let bytes =
                        collect(field.map(|c| c.map_err(|e| e.to_string())), 1 << 20).await?;
                    config = String::from_utf8(bytes).map_err(|_| {
                        AdminError::BadRequest("the config part is not UTF-8 text".into())
                    })?;
                }
                other => {
                    return Err(AdminError::BadRequest(format!(
                        "unknown form part '{other}' (expected 'model' and optionally 'config')"
                    )))
                }
            }
        }
        if !got_model {
            return Err(AdminError::BadRequest(
                "the form has no 'model' part with the ONNX file".into(),
            ));
        }
        Ok(config)
    } else {
        write_stream(payload.map(|c| c.map_err(|e| e.to_string())), file, limit).await?;
        Ok(String::new())
    }
}

async fn write_stream(
    mut stream: impl futures_util::Stream<Item = Result<bytes::Bytes, String>> + Unpin,
    file: &Path,
    limit: u64,
) -> Result<(), AdminError> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(file)?);
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| AdminError::BadRequest(format!("reading the upload: {e}")))?;
        size += chunk.len() as u64;
        if size > limit {
            return Err(AdminError::TooLarge(limit));
        }
        out.write_all(&chunk)?;
    }
    out.flush()?;
    if size == 0 {
        return Err(AdminError::BadRequest(
            "the upload is empty: send the ONNX file as the request body".into(),
        ));
    }
    Ok(())
}

async fn collect(
    mut stream: impl futures_util::Stream<Item = Result<bytes::Bytes, String>> + Unpin,
    limit: usize,
) -> Result<Vec<u8>, AdminError> {
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| AdminError::BadRequest(format!("reading the form: {e}")))?;
        if buf.len() + chunk.len() > limit {
            return Err(AdminError::BadRequest(format!(
                "the config part exceeds {limit} bytes"
            )));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

async fn get_version(s: State, path: web::Path<(String, u64)>) -> Result<HttpResponse, AdminError> {
    let (name, version) = path.into_inner();
    let mut version = store(&s)?.model_version(&name, version).await?;
    where_loaded(&s, std::slice::from_mut(&mut version)).await?;
    Ok(HttpResponse::Ok().json(version))
}

async fn retire_version(
    s: State,
    req: HttpRequest,
    path: web::Path<(String, u64)>,
) -> Result<HttpResponse, AdminError> {
    let (name, version) = path.into_inner();
    let retired = store(&s)?
        .retire_version(&name, version, &actor(&req))
        .await?;
    tracing::info!(model = %name, version, actor = %actor(&req).label, promoted = ?retired.promoted.as_ref().map(|v| v.version), "model version retired");
    s.registry_changed().await;
    Ok(HttpResponse::Ok().json(retired))
}

async fn list_workers(s: State) -> Result<HttpResponse, AdminError> {
    Ok(HttpResponse::Ok().json(store(&s)?.workers().await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditParams {
    limit: Option<u32>,
    /// RFC 3339.
    since: Option<String>,
    action: Option<String>,
    key: Option<String>,
}

async fn list_audit(s: State, q: web::Query<AuditParams>) -> Result<HttpResponse, AdminError> {
    let q = q.into_inner();
    let since = match &q.since {
        Some(t) => Some(
            chrono::DateTime::parse_from_rfc3339(t)
                .map_err(|e| {
                    AdminError::BadRequest(format!("since: '{t}' is not an RFC 3339 time: {e}"))
                })?
                .with_timezone(&chrono::Utc),
        ),
        None => None,
    };
    let query = vatic_store::AuditQuery {
        limit: q.limit.unwrap_or(100).min(10_000),
        since,
        action: q.action,
        key: q.key,
    };
    Ok(HttpResponse::Ok().json(store(&s)?.audit_log(&query).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetentionBody {
    keep_days: u32,
}

async fn apply_retention(
    s: State,
    req: HttpRequest,
    body: web::Json<RetentionBody>,
) -> Result<HttpResponse, AdminError> {
    let report = store(&s)?
        .apply_retention(body.keep_days, &actor(&req))
        .await?;
    Ok(HttpResponse::Ok().json(report))
}

/// Records per page of `GET /admin/v1/predictions` when the query names none, and the most.
const EXPORT_PAGE: u32 = 1000;
const EXPORT_PAGE_MAX: u32 = 10_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportParams {
    model: Option<String>,
    /// RFC 3339, included.
    since: Option<String>,
    /// RFC 3339, excluded.
    until: Option<String>,
    /// The `next` of the page before.
    after: Option<String>,
    limit: Option<u32>,
}

fn rfc3339(
    name: &str,
    value: Option<&str>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, AdminError> {
    value
        .map(|t| {
            chrono::DateTime::parse_from_rfc3339(t)
                .map(|t| t.with_timezone(&chrono::Utc))
                .map_err(|e| {
                    AdminError::BadRequest(format!("{name}: '{t}' is not an RFC 3339 time: {e}"))
                })
        })
        .transpose()
}

/// 10000-01-01T00:00:00Z in microseconds since 1970: page positions come before it.
const CURSOR_END_MICROS: i64 = 253_402_300_800_000_000;

/// Payload bytes a page holds at most (past it, the page ends early with a `next`), so one
/// request cannot make the api hold more than this decrypted at once; a page has at least
/// one record.
const EXPORT_PAGE_BYTES: usize = 32 * 1024 * 1024;

/// The bytes of a stored record's payloads.
fn payload_bytes(r: &vatic_store::PredictionRecord) -> usize {
    r.request.as_ref().map_or(0, String::len)
        + r.response.as_ref().map_or(0, String::len)
        + r.sealed.as_ref().map_or(0, |s| s.data.len())
}

/// How many of `records`, from the first, hold at most `budget` payload bytes together; at
/// least one.
fn records_within(records: &[vatic_store::PredictionRecord], budget: usize) -> usize {
    let mut bytes = 0;
    records
        .iter()
        .position(|r| {
            bytes += payload_bytes(r);
            bytes > budget
        })
        .map_or(records.len(), |past| past.max(1))
}

/// A page position: the last record's time, in microseconds since 1970, and id.
fn cursor(at: chrono::DateTime<chrono::Utc>, id: &uuid::Uuid) -> String {
    format!("{}:{id}", at.timestamp_micros())
}

fn parse_cursor(value: &str) -> Result<(chrono::DateTime<chrono::Utc>, uuid::Uuid), AdminError> {
    let bad = || {
        AdminError::BadRequest(format!(
            "after: '{value}' is not a page position (use the `next` of the page before)"
        ))
    };
    let (micros, id) = value.split_once(':').ok_or_else(bad)?;
    // Times the databases hold: 1970 to the end of year 9999.
    let at = micros
        .parse::<i64>()
        .ok()
        .filter(|m| (0..CURSOR_END_MICROS).contains(m))
        .and_then(chrono::DateTime::from_timestamp_micros)
        .ok_or_else(bad)?;
    Ok((at, id.parse().map_err(|_| bad())?))
}

/// A stored record as the export gives it: payloads opened with the configured data keys, or
/// the reason they could not be.
fn exported(
    mut record: vatic_store::PredictionRecord,
    keys: Option<&vatic_store::DataKeys>,
) -> vatic_schema::admin::LoggedPrediction {
    let data_key = record.sealed.as_ref().map(|s| s.key.clone());
    let error = match (&record.sealed, keys) {
        (None, _) => None,
        (Some(sealed), None) => {
            Some(vatic_store::SealError::UnknownKey(sealed.key.clone()).to_string())
        }
        (Some(_), Some(keys)) => record.open(keys).err().map(|e| e.to_string()),
    };
    // Payloads are JSON the api parsed or encoded itself; anything else is given as text.
    let json = |text: Option<String>| {
        text.map(|t| serde_json::from_str(&t).unwrap_or(serde_json::Value::String(t)))
    };
    vatic_schema::admin::LoggedPrediction {
        id: record.id.to_string(),
        at: record
            .at
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        request_id: record.request_id,
        model: record.model,
        version: record.version,
        api_key: record.api_key,
        status: record.status,
        latency_us: record.latency_us,
        request: json(record.request),
        response: json(record.response),
        shadow: record.shadow,
        data_key,
        error,
    }
}

/// `GET /admin/v1/predictions`: a page of the prediction log, decrypted. Each page read is
/// audited (`predictions_export`): decrypted payloads are the most sensitive thing vatic holds.
async fn export_predictions(
    s: State,
    req: HttpRequest,
    q: web::Query<ExportParams>,
) -> Result<HttpResponse, AdminError> {
    let q = q.into_inner();
    let limit = q.limit.unwrap_or(EXPORT_PAGE);
    if limit == 0 || limit > EXPORT_PAGE_MAX {
        return Err(AdminError::BadRequest(format!(
            "limit: {limit} is not between 1 and {EXPORT_PAGE_MAX}"
        )));
    }
    let query = vatic_store::PredictionQuery {
        model: q.model.clone(),
        since: rfc3339("since", q.since.as_deref())?,
        until: rfc3339("until", q.until.as_deref())?,
        after: q.after.as_deref().map(parse_cursor).transpose()?,
        limit,
    };
    let store = store(&s)?;
    let mut records = store.predictions_page(&query).await?;
    let full = records.len() == limit as usize;
    let fits = records_within(&records, EXPORT_PAGE_BYTES);
    let cut = fits < records.len();
    records.truncate(fits);
    let next = (full || cut)
        .then(|| records.last().map(|r| cursor(r.at, &r.id)))
        .flatten();
    let keys = s
        .prediction_log
        .as_ref()
        .and_then(|log| log.keys())
        .map(|k| &**k);
    let records: Vec<_> = records.into_iter().map(|r| exported(r, keys)).collect();
    let unreadable = records.iter().filter(|r| r.error.is_some()).count();
    let detail = serde_json::json!({
        "model": q.model, "since": q.since, "until": q.until, "after": q.after,
        "records": records.len(), "unreadable": unreadable,
    })
    .to_string();
    store
        .audit(
            &actor(&req),
            "predictions_export",
            q.model.as_deref(),
            &detail,
        )
        .await?;
    Ok(HttpResponse::Ok().json(vatic_schema::admin::PredictionPage { records, next }))
}

async fn prediction_log_stats(s: State) -> Result<HttpResponse, AdminError> {
    match &s.prediction_log {
        Some(log) => Ok(HttpResponse::Ok().json(log.stats())),
        None => Err(AdminError::NoDatabase),
    }
}

fn key_ring(s: &State) -> Result<&std::sync::Arc<KeyRing>, AdminError> {
    s.keys.as_ref().ok_or_else(|| {
        AdminError::BadRequest(
            "this api runs without API keys (auth.enabled); there are none to manage".into(),
        )
    })
}

fn key_info(key: ApiKey) -> KeyInfo {
    let at =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    KeyInfo {
        id: key.id,
        name: key.name,
        role: key.role,
        models: key.models,
        created_at: at(key.created_at),
        created_by: key.created_by,
        expires_at: key.expires_at.map(at),
        revoked_at: key.revoked_at.map(at),
        rate: key.rate,
        burst: key.burst,
    }
}

async fn list_keys(s: State) -> Result<HttpResponse, AdminError> {
    key_ring(&s)?;
    let keys: Vec<KeyInfo> = store(&s)?
        .api_keys()
        .await?
        .into_iter()
        .map(key_info)
        .collect();
    Ok(HttpResponse::Ok().json(keys))
}

async fn create_key(
    s: State,
    req: HttpRequest,
    body: web::Json<KeyCreate>,
) -> Result<HttpResponse, AdminError> {
    let ring = key_ring(&s)?;
    let body = body.into_inner();
    let role: Role = body.role.parse().map_err(AdminError::BadRequest)?;
    if let Some(models) = &body.models {
        if role == Role::Admin {
            return Err(AdminError::BadRequest(
                "models: an admin key covers every model; limit a deployer, predictor or viewer key instead".into(),
            ));
        }
        if models.is_empty() {
            return Err(AdminError::BadRequest(
                "models: name at least one model, or leave it out for every model".into(),
            ));
        }
        for model in models {
            crate::registry::check_name(model)?;
        }
    }
    let caller = actor(&req);
    let mut key = crate::auth::new_key(
        role,
        body.name.as_deref().unwrap_or(""),
        body.models,
        &caller.label,
    );
    if let Some(secs) = body.expires_in_secs {
        let secs = i64::try_from(secs)
            .ok()
            .filter(|s| *s > 0 && *s <= 100 * 365 * 86400)
            .ok_or_else(|| {
                AdminError::BadRequest("expires_in_secs: between 1 second and 100 years".into())
            })?;
        key.expires_at = Some(key.created_at + chrono::Duration::seconds(secs));
    }
    if let Some(rate) = body.rate {
        crate::auth::check_rate(rate).map_err(|e| AdminError::BadRequest(format!("rate: {e}")))?;
        key.rate = Some(rate);
        key.burst = Some(
            body.burst
                .unwrap_or_else(|| vatic_server::auth::default_burst(rate)),
        );
    }
    match body.burst {
        Some(b) if b == 0 || b > i32::MAX as u32 => {
            return Err(AdminError::BadRequest(format!(
                "burst: {b} is not between 1 and {}",
                i32::MAX
            )))
        }
        Some(_) if body.rate.is_none() => {
            return Err(AdminError::BadRequest("burst: needs a rate".into()))
        }
        _ => {}
    }
    let (key, secret) = ring
        .create(key, None)
        .await
        .map_err(|e| AdminError::Internal(e.to_string()))?;
    let detail = serde_json::json!({"key": key.id, "role": key.role, "models": key.models, "name": key.name, "rate": key.rate, "burst": key.burst});
    store(&s)?
        .audit(&caller, "keys_create", None, &detail.to_string())
        .await?;
    Ok(HttpResponse::Created().json(CreatedKey {
        key: key_info(key),
        secret,
    }))
}

async fn revoke_key(
    s: State,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, AdminError> {
    let ring = key_ring(&s)?;
    if !store(&s)?.revoke_key(&id).await? {
        return Err(AdminError::NotFound(format!(
            "no API key '{id}' that is not revoked already"
        )));
    }
    ring.refresh()
        .await
        .map_err(|e| AdminError::Internal(e.to_string()))?;
    let detail = serde_json::json!({"key": *id});
    store(&s)?
        .audit(&actor(&req), "keys_revoke", None, &detail.to_string())
        .await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"revoked": *id})))
}

/// Where uploads are written while they are checked, and how large they may be.
#[derive(Debug, Clone)]
pub struct Uploads {
    /// Folder for uploads in progress.
    pub dir: PathBuf,
    /// Largest model file accepted, in bytes.
    pub max_model_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(request_bytes: usize, sealed_bytes: Option<usize>) -> vatic_store::PredictionRecord {
        vatic_store::PredictionRecord {
            id: uuid::Uuid::now_v7(),
            at: chrono::Utc::now(),
            request_id: String::new(),
            model: "m".into(),
            version: "1".into(),
            api_key: None,
            status: 200,
            latency_us: 0,
            request: Some("x".repeat(request_bytes)),
            response: None,
            sealed: sealed_bytes.map(|n| vatic_store::Sealed {
                key: "k1".into(),
                data: vec![0; n],
            }),
            shadow: false,
        }
    }

    #[test]
    fn a_page_ends_before_its_payloads_pass_the_budget_and_holds_at_least_one_record() {
        let records = [record(40, None), record(0, Some(50)), record(30, None)];
        assert_eq!(records_within(&records, 1000), 3);
        assert_eq!(records_within(&records, 120), 3);
        assert_eq!(records_within(&records, 119), 2);
        assert_eq!(records_within(&records, 90), 2);
        assert_eq!(records_within(&records, 89), 1);
        // A record larger than the budget is still given, alone.
        assert_eq!(records_within(&records, 10), 1);
        assert_eq!(records_within(&[], 10), 0);
    }

    #[test]
    fn a_page_position_is_a_time_the_databases_hold_and_an_id() {
        let id = uuid::Uuid::now_v7();
        let at = chrono::DateTime::from_timestamp_micros(1_765_000_000_123_456).unwrap();
        assert_eq!(parse_cursor(&cursor(at, &id)).unwrap(), (at, id));
        for bad in [
            format!("-1:{id}"),
            format!("{CURSOR_END_MICROS}:{id}"),
            "12:nope".to_string(),
            format!("{id}"),
        ] {
            let e = parse_cursor(&bad).unwrap_err().to_string();
            assert!(e.contains("is not a page position"), "{bad}: {e}");
        }
        assert!(parse_cursor(&format!("{}:{id}", CURSOR_END_MICROS - 1)).is_ok());
    }
}
