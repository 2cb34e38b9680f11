//! HTTP calls to the vatic API server, and the errors a user can act on when they fail.

mod batch;
mod upload;

pub use batch::Submit;
pub use upload::Push;

use crate::GlobalArgs;
use anyhow::{anyhow, bail, Context};
use reqwest::blocking::{RequestBuilder, Response};
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{StatusCode, Url};
use serde::de::DeserializeOwned;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use vatic_schema::admin::{
    AutoStart, CreatedKey, KeyCreate, KeyInfo, LabelSet, ModelInfo, ModelSettings,
    ModelVersionInfo, RetireResponse, RollbackRequest, RolloutEvent, RolloutSet, RolloutStart,
    RolloutStatus, ShadowStart, WorkerStatus,
};
use vatic_schema::v2::{self, Encoded, HEADER_LENGTH};
use vatic_schema::{ErrorBody, InferResponse, ModelMetadata};
use vatic_store::{AuditRecord, RetentionReport};
use vatic_tls::{ClientTls, ClientTlsSettings, SettingNames};

/// Longest wait for a connection to the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a whole answer; well past the server's own worker timeout (60 s by default),
/// so the server's error arrives before this one.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// A failure the server reported: its `{"error": ...}` message and the HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    /// HTTP status code.
    pub status: u16,
    /// The server's message.
    pub message: String,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (HTTP {})", self.message, self.status)
    }
}

impl std::error::Error for ServerError {}

/// A model, and optionally one of its versions (else the server picks, the newest).
#[derive(Debug, Clone, Copy)]
pub struct ModelRef<'a> {
    /// Model name.
    pub name: &'a str,
    /// Version.
    pub version: Option<&'a str>,
}

/// The TLS configuration `--cacert`, `--cert` and `--key` describe.
pub fn tls_config(global: &GlobalArgs) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let settings = ClientTlsSettings {
        ca: global.cacert.clone(),
        cert: global.cert.clone(),
        key: global.key.clone(),
        server_name: None,
    };
    Ok(ClientTls::new(&settings, TLS_FLAGS)?.config)
}

/// How the TLS flags are named in messages.
const TLS_FLAGS: SettingNames = SettingNames {
    ca: "--cacert",
    cert: "--cert",
    key: "--key",
    server_name: "--server",
};

/// The `Authorization` header of `--api-key`, marked sensitive (never shown in debug output).
pub fn auth_headers(global: &GlobalArgs) -> anyhow::Result<HeaderMap> {
    let mut headers = HeaderMap::new();
    if let Some(key) = &global.api_key {
        let mut value = HeaderValue::from_str(&format!("Bearer {}", key.trim()))
            .map_err(|_| anyhow!("--api-key holds characters a header cannot carry"))?;
        value.set_sensitive(true);
        headers.insert(AUTHORIZATION, value);
    }
    Ok(headers)
}

/// Which audit entries to fetch.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter<'a> {
    /// At most this many.
    pub limit: Option<u32>,
    /// Only entries at or after this time.
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Only this action.
    pub action: Option<&'a str>,
    /// Only this key id.
    pub key: Option<&'a str>,
}

/// Which logged predictions to read.
#[derive(Debug, Clone, Default)]
pub struct PredictionFilter<'a> {
    /// Only this model's.
    pub model: Option<&'a str>,
    /// From this time on.
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Before this time.
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// Records per request.
    pub page: u32,
}

/// A client of one vatic API server.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::blocking::Client,
    /// The TLS configuration and headers `http` uses, for the async client of a push.
    tls: Arc<rustls::ClientConfig>,
    headers: HeaderMap,
    /// The URL as the user gave it, for messages.
    server: String,
    base: Url,
}

impl Client {
    /// A client of the server `global.server` names, e.g. `https://127.0.0.1:8080`, with the
    /// TLS files and the API key of `global`.
    pub fn new(global: &GlobalArgs) -> anyhow::Result<Client> {
        let server = global.server.as_str();
        let base = Url::parse(server).with_context(|| {
            format!("--server '{server}' is not a URL (e.g. http://127.0.0.1:8080)")
        })?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            bail!("--server '{server}' must be an http:// or https:// URL");
        }
        let tls = tls_config(global)?;
        let headers = auth_headers(global)?;
        let http = reqwest::blocking::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .default_headers(headers.clone())
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .context("cannot set up the HTTP client")?;
        Ok(Client {
            http,
            tls,
            headers,
            server: server.to_string(),
            base,
        })
    }

    /// `GET /v2/models/{m}[/versions/{v}]`.
    pub fn model_metadata(&self, model: ModelRef<'_>) -> anyhow::Result<ModelMetadata> {
        let url = self.model_url(model, None);
        let body = self
            .send(self.http.get(url.clone()))?
            .bytes()
            .map_err(|e| self.transport_error(e))?;
        serde_json::from_slice(&body)
            .with_context(|| format!("the answer from {url} is not model metadata"))
    }

    /// `POST /v2/models/{m}[/versions/{v}]/infer` with an encoded request (JSON, or JSON and
    /// binary data); the response may come either way too.
    pub fn infer(&self, model: ModelRef<'_>, request: Encoded) -> anyhow::Result<InferResponse> {
        let url = self.model_url(model, Some("infer"));
        let builder = match request.header_length {
            Some(n) => self
                .http
                .post(url.clone())
                .header(CONTENT_TYPE, "application/octet-stream")
                .header(HEADER_LENGTH, n.to_string()),
            None => self
                .http
                .post(url.clone())
                .header(CONTENT_TYPE, "application/json"),
        };
        let response = self.send(builder.body(request.body))?;
        let header_length = response
            .headers()
            .get(HEADER_LENGTH)
            .map(|v| v.to_str().unwrap_or("(not text)"));
        let header_length = v2::parse_header_length(header_length)
            .with_context(|| format!("the answer from {url}"))?;
        let body = response.bytes().map_err(|e| self.transport_error(e))?;
        v2::decode_response(&body, header_length)
            .with_context(|| format!("the answer from {url} is not a V2 inference response"))
    }

    /// `GET /admin/v1/models`.
    pub fn models(&self) -> anyhow::Result<Vec<ModelInfo>> {
        let url = self.admin_url(&["models"]);
        self.json_answer(self.http.get(url.clone()), &url)
    }

    /// `GET /admin/v1/models/{m}`.
    pub fn model(&self, name: &str) -> anyhow::Result<ModelInfo> {
        let url = self.admin_url(&["models", name]);
        self.json_answer(self.http.get(url.clone()), &url)
    }

    /// `GET /admin/v1/models/{m}/versions/{v}`.
    pub fn model_version(&self, name: &str, version: u64) -> anyhow::Result<ModelVersionInfo> {
        let url = self.admin_url(&["models", name, "versions", &version.to_string()]);
        self.json_answer(self.http.get(url.clone()), &url)
    }

    /// `POST /admin/v1/models/{m}/versions/{v}/retire`.
    pub fn retire(&self, name: &str, version: u64) -> anyhow::Result<RetireResponse> {
        let url = self.admin_url(&["models", name, "versions", &version.to_string(), "retire"]);
        self.json_answer(self.http.post(url.clone()), &url)
    }

    /// `PATCH /admin/v1/models/{m}`: the model's prediction log settings.
    pub fn update_model(&self, name: &str, settings: &ModelSettings) -> anyhow::Result<ModelInfo> {
        let url = self.admin_url(&["models", name]);
        self.json_answer(self.http.patch(url.clone()).json(settings), &url)
    }

    /// `PUT /admin/v1/models/{m}/labels/{l}`: points a label at a version.
    pub fn set_label(&self, name: &str, label: &str, version: u64) -> anyhow::Result<ModelInfo> {
        let url = self.admin_url(&["models", name, "labels", label]);
        let body = LabelSet { version };
        self.json_answer(self.http.put(url.clone()).json(&body), &url)
    }

    /// `DELETE /admin/v1/models/{m}/labels/{l}`.
    pub fn remove_label(&self, name: &str, label: &str) -> anyhow::Result<ModelInfo> {
        let url = self.admin_url(&["models", name, "labels", label]);
        self.json_answer(self.http.delete(url.clone()), &url)
    }

    /// `GET /admin/v1/models/{m}/rollout?window=S`.
    pub fn rollout_status(&self, name: &str, window_secs: u64) -> anyhow::Result<RolloutStatus> {
        let mut url = self.admin_url(&["models", name, "rollout"]);
        url.query_pairs_mut()
            .append_pair("window", &window_secs.to_string());
        self.json_answer(self.http.get(url.clone()), &url)
    }

    /// `PUT /admin/v1/models/{m}/rollout/shadow`: starts or resamples a shadow.
    pub fn shadow(&self, name: &str, body: &ShadowStart) -> anyhow::Result<ModelInfo> {
        let url = self.admin_url(&["models", name, "rollout", "shadow"]);
        self.json_answer(self.http.put(url.clone()).json(body), &url)
    }

    /// `DELETE /admin/v1/models/{m}/rollout/shadow`.
    pub fn stop_shadow(&self, name: &str) -> anyhow::Result<ModelInfo> {
        let url = self.admin_url(&["models", name, "rollout", "shadow"]);
        self.json_answer(self.http.delete(url.clone()), &url)
    }

    /// `POST /admin/v1/models/{m}/rollout`: starts a canary.
    pub fn rollout_start(&self, name: &str, body: &RolloutStart) -> anyhow::Result<ModelInfo> {
        let url = self.admin_url(&["models", name, "rollout"]);
        self.json_answer(self.http.post(url.clone()).json(body), &url)
    }

    /// `PATCH /admin/v1/models/{m}/rollout`: changes the canary's share.
    pub fn rollout_set(&self, name: &str, body: &RolloutSet) -> anyhow::Result<ModelInfo> {
        let url = self.admin_url(&["models", name, "rollout"]);
        self.json_answer(self.http.patch(url.clone()).json(body), &url)
    }

    /// `POST /admin/v1/models/{m}/rollout/auto`: starts an automatic rollout.
    pub fn rollout_auto(&self, name: &str, body: &AutoStart) -> anyhow::Result<ModelInfo> {
        let url = self.admin_url(&["models", name, "rollout", "auto"]);
        self.json_answer(self.http.post(url.clone()).json(body), &url)
    }

    /// `POST /admin/v1/models/{m}/rollout/promote`.
    pub fn promote(&self, name: &str) -> anyhow::Result<ModelInfo> {
        let url = self.admin_url(&["models", name, "rollout", "promote"]);
        self.json_answer(self.http.post(url.clone()), &url)
    }

    /// `POST /admin/v1/models/{m}/rollout/rollback`.
    pub fn rollback(&self, name: &str, body: &RollbackRequest) -> anyhow::Result<ModelInfo> {
        let url = self.admin_url(&["models", name, "rollout", "rollback"]);
        self.json_answer(self.http.post(url.clone()).json(body), &url)
    }

    /// `GET /admin/v1/models/{m}/rollout/history?limit=N`, newest first.
    pub fn rollout_history(&self, name: &str, limit: u32) -> anyhow::Result<Vec<RolloutEvent>> {
        let mut url = self.admin_url(&["models", name, "rollout", "history"]);
        url.query_pairs_mut()
            .append_pair("limit", &limit.to_string());
        self.json_answer(self.http.get(url.clone()), &url)
    }

    /// `GET /admin/v1/workers`.
    pub fn workers(&self) -> anyhow::Result<Vec<WorkerStatus>> {
        let url = self.admin_url(&["workers"]);
        self.json_answer(self.http.get(url.clone()), &url)
    }

    /// `GET /admin/v1/audit[?limit=N&since=T&action=A&key=K]`, newest first.
    pub fn audit(&self, filter: &AuditFilter<'_>) -> anyhow::Result<Vec<AuditRecord>> {
        let mut url = self.admin_url(&["audit"]);
        {
            let mut query = url.query_pairs_mut();
            if let Some(limit) = filter.limit {
                query.append_pair("limit", &limit.to_string());
            }
            if let Some(since) = filter.since {
                query.append_pair(
                    "since",
                    &since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                );
            }
            if let Some(action) = filter.action {
                query.append_pair("action", action);
            }
            if let Some(key) = filter.key {
                query.append_pair("key", key);
            }
        }
        self.json_answer(self.http.get(url.clone()), &url)
    }

    /// `GET /admin/v1/predictions`: one page of the prediction log, decrypted.
    pub fn predictions(
        &self,
        filter: &PredictionFilter<'_>,
        after: Option<&str>,
    ) -> anyhow::Result<vatic_schema::admin::PredictionPage> {
        let mut url = self.admin_url(&["predictions"]);
        {
            let mut query = url.query_pairs_mut();
            let time = |t: chrono::DateTime<chrono::Utc>| {
                t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            };
            if let Some(model) = filter.model {
                query.append_pair("model", model);
            }
            if let Some(since) = filter.since {
                query.append_pair("since", &time(since));
            }
            if let Some(until) = filter.until {
                query.append_pair("until", &time(until));
            }
            if let Some(after) = after {
                query.append_pair("after", after);
            }
            query.append_pair("limit", &filter.page.to_string());
        }
        self.json_answer(self.http.get(url.clone()), &url)
    }

    /// `POST /admin/v1/retention`: drops prediction log rows older than `keep_days` days.
    pub fn retention(&self, keep_days: u32) -> anyhow::Result<RetentionReport> {
        let url = self.admin_url(&["retention"]);
        let body = serde_json::json!({ "keep_days": keep_days });
        self.json_answer(self.http.post(url.clone()).json(&body), &url)
    }

    /// `POST /admin/v1/keys`: a new API key and its secret, shown once.
    pub fn create_key(&self, body: &KeyCreate) -> anyhow::Result<CreatedKey> {
        let url = self.admin_url(&["keys"]);
        self.json_answer(self.http.post(url.clone()).json(body), &url)
    }

    /// `GET /admin/v1/keys`: every key, never a secret.
    pub fn keys(&self) -> anyhow::Result<Vec<KeyInfo>> {
        let url = self.admin_url(&["keys"]);
        self.json_answer(self.http.get(url.clone()), &url)
    }

    /// `POST /admin/v1/keys/{id}/revoke`.
    pub fn revoke_key(&self, id: &str) -> anyhow::Result<()> {
        let url = self.admin_url(&["keys", id, "revoke"]);
        self.send(self.http.post(url))?;
        Ok(())
    }

    /// `{base}/admin/v1/{segments}`, each escaped as a path segment.
    fn admin_url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("Client::new refuses URLs that cannot be a base")
            .pop_if_empty()
            .extend(["admin", "v1"])
            .extend(segments);
        url
    }

    /// Sends a request and reads its JSON answer as a `T`.
    fn json_answer<T: DeserializeOwned>(
        &self,
        request: RequestBuilder,
        url: &Url,
    ) -> anyhow::Result<T> {
        let body = self
            .send(request)?
            .bytes()
            .map_err(|e| self.transport_error(e))?;
        serde_json::from_slice(&body).with_context(|| {
            format!(
                "the answer from {url} is not what this vaticctl expects (is the server another version?)"
            )
        })
    }

    /// `{base}/v2/models/{m}[/versions/{v}][/{action}]`, each part escaped as a path segment.
    fn model_url(&self, model: ModelRef<'_>, action: Option<&str>) -> Url {
        let mut url = self.base.clone();
        {
            let mut path = url
                .path_segments_mut()
                .expect("Client::new refuses URLs that cannot be a base");
            path.pop_if_empty().extend(["v2", "models", model.name]);
            if let Some(version) = model.version {
                path.extend(["versions", version]);
            }
            path.extend(action);
        }
        url
    }

    /// Sends a request; a 4xx/5xx answer becomes a [`ServerError`].
    fn send(&self, request: RequestBuilder) -> anyhow::Result<Response> {
        let response = request.send().map_err(|e| self.transport_error(e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.bytes().unwrap_or_default();
        Err(server_error(status, &body).into())
    }

    fn transport_error(&self, e: reqwest::Error) -> anyhow::Error {
        let server = &self.server;
        let cause = root_cause(&e);
        if e.is_connect() && cause.contains("certificate") {
            anyhow!(
                "the TLS handshake with {server} failed: {cause}; --cacert names the CA that \
                 signed the server's certificate, --cert and --key the client certificate it may ask for"
            )
        } else if e.is_connect() {
            anyhow!(
                "cannot connect to the vatic server at {server}: {cause}; is it running? \
                 --server or VATIC_SERVER sets its URL"
            )
        } else if e.is_timeout() {
            anyhow!("the vatic server at {server} did not answer in time: {cause}")
        } else {
            anyhow!("talking to the vatic server at {server} failed: {cause}")
        }
    }
}

/// A 4xx/5xx answer as a [`ServerError`]: the message of its `{"error": ...}` body, else its
/// text, else the status's name.
fn server_error(status: StatusCode, body: &[u8]) -> ServerError {
    let message = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody { error }) => error,
        Err(_) => match String::from_utf8_lossy(body).trim() {
            "" => status
                .canonical_reason()
                .unwrap_or("no message")
                .to_string(),
            text => text.to_string(),
        },
    };
    ServerError {
        status: status.as_u16(),
        message,
    }
}

/// The innermost error, which says what actually went wrong ("Connection refused").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = e;
    while let Some(source) = inner.source() {
        inner = source;
    }
    inner.to_string()
}
