//! Batch jobs (a vatic extension): submit a file of rows, follow the job, read its results in
//! input order, cancel it, retry its failed rows, list jobs. A key sees its own jobs; an admin
//! key sees every job.

use crate::batch::upload::{Chunk, SplitError, Splitter};
use crate::batch::{results, Layout};
use crate::error::ApiError;
use crate::state::State;
use actix_web::dev::Decompress;
use actix_web::http::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse, ResponseError};
use futures_util::StreamExt;
use serde::Deserialize;
use vatic_schema::batch::{BatchJob, BatchJobList, FileFormat};
use vatic_server::auth::{Caller, Role};
use vatic_server::{Group, Need, Routes};
use vatic_store::{NewJob, Store, StoreError};

/// Registers the batch routes.
pub fn configure(routes: &mut Routes<'_>) {
    let group = Group {
        tag: "Batch jobs",
        decorate: batch_resource,
    };
    routes.group(group, |routes| {
        routes
            .add(
                Method::POST,
                "/v2/batch/jobs",
                Need::Batch,
                "Submit a batch job: the body is the input file (JSONL or CSV)",
                post_job,
            )
            .add(
                Method::GET,
                "/v2/batch/jobs",
                Need::Batch,
                "List batch jobs, newest first",
                list_jobs,
            )
            .add(
                Method::GET,
                "/v2/batch/jobs/{id}",
                Need::Batch,
                "A batch job: state, rows done and failed, rate, ETA",
                get_job,
            )
            .add(
                Method::GET,
                "/v2/batch/jobs/{id}/results",
                Need::Batch,
                "A batch job's results, in input order (JSONL or CSV)",
                get_results,
            )
            .add(
                Method::POST,
                "/v2/batch/jobs/{id}/cancel",
                Need::Batch,
                "Cancel a batch job",
                post_cancel,
            )
            .add(
                Method::POST,
                "/v2/batch/jobs/{id}/retry",
                Need::Batch,
                "Run a batch job's failed rows again",
                post_retry,
            );
    });
}

/// The batch routes' resources: a query that cannot be read is refused in the API's error body.
fn batch_resource(resource: actix_web::Resource) -> actix_web::Resource {
    resource.app_data(
        web::QueryConfig::default()
            .error_handler(|e, _| BatchError::BadRequest(format!("invalid query: {e}")).into()),
    )
}

/// Why a batch request was refused.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The key may not use the model.
    #[error("{0}")]
    Forbidden(String),
    /// No such job (or not the caller's).
    #[error("batch job '{0}' not found")]
    NotFound(String),
    /// The job is not in a state that allows it.
    #[error("{0}")]
    Conflict(String),
    /// The file exceeds `batch.max_upload_bytes`.
    #[error("the input file exceeds the limit of {0} bytes (batch.max_upload_bytes)")]
    TooLarge(u64),
    /// No database is configured.
    #[error("batch jobs need the database: set database.url")]
    NoDatabase,
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The model's metadata could not be read.
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl ResponseError for BatchError {
    fn status_code(&self) -> StatusCode {
        match self {
            BatchError::BadRequest(_) => StatusCode::BAD_REQUEST,
            BatchError::Forbidden(_) => StatusCode::FORBIDDEN,
            BatchError::NotFound(_) => StatusCode::NOT_FOUND,
            BatchError::Conflict(_) => StatusCode::CONFLICT,
            BatchError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            BatchError::NoDatabase => StatusCode::SERVICE_UNAVAILABLE,
            BatchError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            BatchError::Api(e) => e.status_code(),
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            BatchError::Api(e) => e.error_response(),
            BatchError::Store(e) => {
                tracing::warn!(error = %e, "batch: the database failed");
                vatic_server::error_response(
                    self.status_code(),
                    format!("the database failed: {e}"),
                    Some(1),
                )
            }
            _ => vatic_server::error_response(self.status_code(), self.to_string(), None),
        }
    }
}

fn store(s: &State) -> Result<&Store, BatchError> {
    s.store.as_ref().ok_or(BatchError::NoDatabase)
}

fn caller(req: &HttpRequest) -> Caller {
    req.extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or_else(Caller::anonymous)
}

/// The job `id` when the caller may see it: its own, or any with an admin key.
async fn visible_job(
    s: &State,
    req: &HttpRequest,
    id: &str,
) -> Result<(BatchJob, String), BatchError> {
    let caller = caller(req);
    match store(s)?.job(id).await? {
        Some((job, layout))
            if job.state != vatic_schema::batch::JobState::Uploading
                && (caller.role == Role::Admin || job.api_key == caller.key_id) =>
        {
            Ok((job, layout))
        }
        _ => Err(BatchError::NotFound(id.to_string())),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitParams {
    model: Option<String>,
    version: Option<String>,
    label: Option<String>,
    /// The input file's form; else from the Content-Type.
    format: Option<String>,
    /// The results' default form; else the input's.
    output: Option<String>,
}

/// The input's form: `format`, else the Content-Type.
fn input_format(req: &HttpRequest, format: Option<&str>) -> Result<FileFormat, BatchError> {
    if let Some(f) = format {
        return f
            .parse()
            .map_err(|e: String| BatchError::BadRequest(format!("format: {e}")));
    }
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        });
    match content_type.as_deref() {
        Some("text/csv") => Ok(FileFormat::Csv),
        Some("application/x-ndjson" | "application/jsonl" | "application/x-jsonlines" | "application/json-lines") => Ok(FileFormat::Jsonl),
        other => Err(BatchError::BadRequest(format!(
            "the input file's format is not known: add ?format=jsonl or ?format=csv, or send Content-Type: application/x-ndjson or text/csv (got {})",
            other.map_or("no Content-Type".to_string(), |t| format!("'{t}'"))
        ))),
    }
}

async fn post_job(
    req: HttpRequest,
    s: State,
    query: web::Query<SubmitParams>,
    payload: web::Payload,
) -> Result<HttpResponse, BatchError> {
    let store = store(&s)?.clone();
    let batch = s.batch.as_ref().ok_or(BatchError::NoDatabase)?;
    let params = query.into_inner();
    let model = params
        .model
        .filter(|m| !m.is_empty())
        .ok_or_else(|| BatchError::BadRequest("name the model: ?model=<name> (and ?version=<n> or ?label=<l> for other than the stable version)".into()))?;
    if params.version.is_some() && params.label.is_some() {
        return Err(BatchError::BadRequest(
            "name a version or a label, not both".into(),
        ));
    }
    if let Some(v) = &params.version {
        if v.parse::<u64>().is_err() {
            return Err(BatchError::BadRequest(format!(
                "version '{v}' is not a version number"
            )));
        }
    }
    let format = input_format(&req, params.format.as_deref())?;
    let output = match params.output.as_deref() {
        None => format,
        Some(o) => o
            .parse()
            .map_err(|e: String| BatchError::BadRequest(format!("output: {e}")))?,
    };
    let caller = caller(&req);
    // The route's guard passed the key without a model to check (it is in the query): the
    // key's scope is checked here, and a key the ring no longer holds may use none.
    if let (Some(id), Some(ring)) = (caller.key_id.as_deref(), s.keys.as_ref()) {
        let allowed = ring
            .key(id)
            .is_some_and(|k| k.models.as_ref().is_none_or(|m| m.contains(&model)));
        if !allowed {
            return Err(BatchError::Forbidden(format!(
                "this key may not use model '{model}'"
            )));
        }
    }
    let limit = batch.settings.max_upload_bytes;
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(BatchError::TooLarge(limit));
    }
    // The model and the version must exist now; their signature reads the rows.
    let version = s.named_version(&model, params.version.as_deref(), params.label.as_deref())?;
    let metadata = s.backend.metadata(&model, version.as_deref()).await?;
    let mut layout = Layout {
        columns: Vec::new(),
        inputs: metadata.inputs,
        outputs: metadata.outputs.into_iter().map(|o| o.name).collect(),
    };
    if format == FileFormat::Csv && layout.inputs.len() != 1 {
        return Err(BatchError::BadRequest(format!(
            "a CSV file fills one input, and model '{model}' has {} ({}); send JSONL",
            layout.inputs.len(),
            layout
                .inputs
                .iter()
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let job = NewJob {
        id: uuid::Uuid::now_v7().to_string(),
        model: model.clone(),
        version: params.version,
        label: params.label,
        input_format: format,
        output_format: output,
        layout: String::new(),
        api_key: caller.key_id.clone(),
    };
    let mut splitter = Splitter::new(
        format,
        batch.settings.chunk_rows,
        batch.settings.chunk_bytes,
        s.body.max_bytes,
    );
    let mut payload = Decompress::from_headers(payload.into_inner(), req.headers());
    let mut upload = Upload {
        store: &store,
        job,
        created: false,
        chunks: 0,
        received: 0,
    };
    let result: Result<(), BatchError> = async {
        while let Some(bytes) = payload.next().await {
            let bytes = bytes
                .map_err(|e| BatchError::BadRequest(format!("the upload was cut short: {e}")))?;
            upload.received += bytes.len() as u64;
            if upload.received > limit {
                return Err(BatchError::TooLarge(limit));
            }
            let full = splitter.feed(&bytes).map_err(refused)?;
            if format == FileFormat::Jsonl || splitter.header().is_some() {
                upload.create(&mut layout, &splitter).await?;
            }
            upload.store(full).await?;
        }
        let last = splitter.finish().map_err(refused)?;
        upload.create(&mut layout, &splitter).await?;
        upload.store(last).await?;
        store
            .finish_upload(&upload.job.id, splitter.rows(), upload.chunks)
            .await?;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        if upload.created {
            if let Err(d) = store.delete_job(&upload.job.id).await {
                tracing::warn!(job = %upload.job.id, error = %d, "a refused upload could not be removed; it is removed when it expires");
            }
        }
        return Err(e);
    }
    batch.wake();
    let (job, _) = store
        .job(&upload.job.id)
        .await?
        .ok_or_else(|| BatchError::NotFound(upload.job.id.clone()))?;
    tracing::info!(job = %job.id, model = %job.model, rows = job.rows_total, bytes = job.input_bytes, "batch job submitted");
    Ok(HttpResponse::Created()
        .insert_header((LOCATION, format!("/v2/batch/jobs/{}", job.id)))
        .json(job))
}

/// An upload under way: the job is created once its layout is known, then its chunks stored.
struct Upload<'a> {
    store: &'a Store,
    job: NewJob,
    created: bool,
    chunks: i64,
    received: u64,
}

impl Upload<'_> {
    /// Creates the job once its layout is known (a CSV file's header has come), the first
    /// time it is called.
    async fn create(&mut self, layout: &mut Layout, splitter: &Splitter) -> Result<(), BatchError> {
        if self.created {
            return Ok(());
        }
        layout.columns = splitter
            .header()
            .map(<[String]>::to_vec)
            .unwrap_or_default();
        check_columns(layout)?;
        self.job.layout = serde_json::to_string(layout).expect("a layout serializes");
        self.store.create_job(&self.job).await?;
        self.created = true;
        Ok(())
    }

    async fn store(&mut self, chunks: Vec<Chunk>) -> Result<(), BatchError> {
        for chunk in chunks {
            self.store
                .add_chunk(
                    &self.job.id,
                    self.chunks,
                    chunk.first_row,
                    chunk.rows,
                    &chunk.data,
                )
                .await?;
            self.chunks += 1;
        }
        Ok(())
    }
}

fn refused(e: SplitError) -> BatchError {
    BatchError::BadRequest(format!("the input file cannot be read: {e}"))
}

/// A CSV header must name as many columns as the model's input takes.
fn check_columns(layout: &Layout) -> Result<(), BatchError> {
    let (Some(input), false) = (layout.inputs.first(), layout.columns.is_empty()) else {
        return Ok(());
    };
    let takes = input.shape.last().copied().unwrap_or(-1);
    if takes >= 0 && takes as usize != layout.columns.len() {
        return Err(BatchError::BadRequest(format!(
            "the CSV header names {} columns; input '{}' takes {takes} per row (shape {:?})",
            layout.columns.len(),
            input.name,
            input.shape
        )));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    limit: Option<u32>,
}

/// Jobs listed when the query names no limit, and the most.
const LIST_DEFAULT: u32 = 100;
const LIST_MAX: u32 = 1000;

async fn list_jobs(
    req: HttpRequest,
    s: State,
    query: web::Query<ListParams>,
) -> Result<HttpResponse, BatchError> {
    let limit = query.limit.unwrap_or(LIST_DEFAULT);
    if limit == 0 || limit > LIST_MAX {
        return Err(BatchError::BadRequest(format!(
            "limit: from 1 to {LIST_MAX}"
        )));
    }
    let caller = caller(&req);
    let owner = (caller.role != Role::Admin).then_some(caller.key_id.as_deref());
    let jobs = store(&s)?.jobs(owner, limit).await?;
    Ok(HttpResponse::Ok().json(BatchJobList { jobs }))
}

async fn get_job(
    req: HttpRequest,
    s: State,
    id: web::Path<String>,
) -> Result<HttpResponse, BatchError> {
    let (job, _) = visible_job(&s, &req, &id).await?;
    Ok(HttpResponse::Ok().json(job))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResultsParams {
    format: Option<String>,
}

/// The header that carries a job's state on its results, which are partial until it ends.
pub const JOB_STATE_HEADER: &str = "x-vatic-job-state";

async fn get_results(
    req: HttpRequest,
    s: State,
    id: web::Path<String>,
    query: web::Query<ResultsParams>,
) -> Result<HttpResponse, BatchError> {
    let (job, layout) = visible_job(&s, &req, &id).await?;
    let format = match query.format.as_deref() {
        None => job.output_format,
        Some(f) => f
            .parse()
            .map_err(|e: String| BatchError::BadRequest(format!("format: {e}")))?,
    };
    let layout: Layout = serde_json::from_str(&layout).map_err(|e| {
        BatchError::Conflict(format!("the job's stored layout cannot be read: {e}"))
    })?;
    let content_type = match format {
        FileFormat::Jsonl => "application/x-ndjson",
        FileFormat::Csv => "text/csv; charset=utf-8",
    };
    Ok(HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((JOB_STATE_HEADER, job.state.as_str()))
        .streaming(results::stream(store(&s)?.clone(), job.id, format, layout)))
}

async fn post_cancel(
    req: HttpRequest,
    s: State,
    id: web::Path<String>,
) -> Result<HttpResponse, BatchError> {
    let (job, _) = visible_job(&s, &req, &id).await?;
    let by = caller(&req).label();
    if !store(&s)?
        .cancel_job(&job.id, &format!("cancelled by {by}"))
        .await?
    {
        return Err(BatchError::Conflict(format!(
            "batch job '{}' has ended ({}); there is nothing to cancel",
            job.id, job.state
        )));
    }
    tracing::info!(job = %job.id, by = %by, "batch job cancelled");
    let (job, _) = visible_job(&s, &req, &id).await?;
    Ok(HttpResponse::Ok().json(job))
}

async fn post_retry(
    req: HttpRequest,
    s: State,
    id: web::Path<String>,
) -> Result<HttpResponse, BatchError> {
    let (job, _) = visible_job(&s, &req, &id).await?;
    if !job.state.is_final() {
        return Err(BatchError::Conflict(format!(
            "batch job '{}' is {}; retry it once it has ended",
            job.id, job.state
        )));
    }
    if !store(&s)?.retry_job(&job.id).await? {
        return Err(BatchError::Conflict(format!(
            "batch job '{}' has no failed or unrun rows to run again",
            job.id
        )));
    }
    if let Some(batch) = &s.batch {
        batch.wake();
    }
    let (job, _) = visible_job(&s, &req, &id).await?;
    Ok(HttpResponse::Ok().json(job))
}
