//! Pushing a model file: streamed from disk, never held in memory whole.
//!
//! This one call uses reqwest's async client on a runtime of its own: the blocking client
//! drops the server's answer when the server answers before the upload is complete (a file
//! over the size limit, an invalid name), and reports only that the upload stopped.

use super::{server_error, Client, CONNECT_TIMEOUT};
use anyhow::Context;
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::multipart::{Form, Part};
use reqwest::{Body, Url};
use std::path::Path;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use vatic_schema::admin::PushResponse;

/// Longest wait for a push: the upload of a file of up to a few GiB, and the server's check.
const PUSH_TIMEOUT: Duration = Duration::from_secs(3600);

/// Bytes read from the file at a time.
const CHUNK: usize = 1 << 20;

/// A model file to push, and the `model.toml` to record with it.
#[derive(Debug, Clone, Copy)]
pub struct Push<'a> {
    /// Model name.
    pub model: &'a str,
    /// Version number [default: the next free one].
    pub version: Option<u64>,
    /// The ONNX file.
    pub file: &'a Path,
    /// The `model.toml` text, if any.
    pub config: Option<&'a str>,
}

impl Client {
    /// `POST /admin/v1/models/{m}/versions[?version=N]`: the file is the request body, or the
    /// `model` part of a form when a `model.toml` goes with it as the `config` part.
    pub fn push(&self, push: Push<'_>) -> anyhow::Result<PushResponse> {
        let name = push.file.display();
        let file = std::fs::File::open(push.file).with_context(|| format!("cannot open {name}"))?;
        let size = file
            .metadata()
            .with_context(|| format!("cannot read {name}"))?
            .len();
        let mut url = self.admin_url(&["models", push.model, "versions"]);
        if let Some(version) = push.version {
            url.query_pairs_mut()
                .append_pair("version", &version.to_string());
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        runtime.block_on(self.upload(url, push, tokio::fs::File::from_std(file), size))
    }

    async fn upload(
        &self,
        url: Url,
        push: Push<'_>,
        file: tokio::fs::File,
        size: u64,
    ) -> anyhow::Result<PushResponse> {
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*self.tls).clone())
            .default_headers(self.headers.clone())
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(PUSH_TIMEOUT)
            .build()
            .context("cannot set up the HTTP client")?;
        let bar = progress_bar(size);
        let body = Body::wrap_stream(chunks(
            file,
            bar.clone(),
            "the server is checking the model",
        ));
        let request = http.post(url.clone());
        let request = match push.config {
            None => request
                .header(CONTENT_TYPE, "application/octet-stream")
                .header(CONTENT_LENGTH, size)
                .body(body),
            Some(config) => {
                let file_name = push.file.file_name().map_or_else(
                    || "model.onnx".to_string(),
                    |n| n.to_string_lossy().into_owned(),
                );
                let model = Part::stream_with_length(body, size)
                    .file_name(file_name)
                    .mime_str("application/octet-stream")?;
                let config = Part::text(config.to_string())
                    .file_name("model.toml")
                    .mime_str("application/toml")?;
                request.multipart(Form::new().part("model", model).part("config", config))
            }
        };
        let response = request.send().await;
        bar.finish_and_clear();
        self.uploaded(response, &url).await
    }

    /// The JSON answer to an upload, as a `T`; a 4xx/5xx answer becomes a `ServerError`.
    pub(super) async fn uploaded<T: serde::de::DeserializeOwned>(
        &self,
        response: reqwest::Result<reqwest::Response>,
        url: &Url,
    ) -> anyhow::Result<T> {
        let response = response.map_err(|e| self.transport_error(e))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(e))?;
        if !status.is_success() {
            return Err(server_error(status, &body).into());
        }
        serde_json::from_slice(&body).with_context(|| {
            format!(
                "the answer from {url} is not what this vaticctl expects (is the server another version?)"
            )
        })
    }
}

/// A progress bar of the upload on standard error, drawn only when that is a terminal.
pub(super) fn progress_bar(size: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(size), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}, {eta} left",
    )
    .expect("a valid template")
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message("uploading");
    bar
}

/// The file's bytes, [`CHUNK`] at a time, counted on `bar`; once they are sent, `bar` shows
/// `then` while the server works.
pub(super) fn chunks(
    file: tokio::fs::File,
    bar: ProgressBar,
    then: &'static str,
) -> impl Stream<Item = std::io::Result<Bytes>> {
    futures_util::stream::try_unfold((file, bar), move |(mut file, bar)| async move {
        let mut buf = BytesMut::with_capacity(CHUNK);
        while buf.len() < CHUNK {
            if file.read_buf(&mut buf).await? == 0 {
                break;
            }
        }
        bar.inc(buf.len() as u64);
        if buf.is_empty() {
            // Sent: the server loads and runs the model before it answers.
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                    .expect("a valid template"),
            );
            bar.set_message(then);
            bar.enable_steady_tick(Duration::from_millis(200));
        }
        Ok((!buf.is_empty()).then(|| (buf.freeze(), (file, bar))))
    })
}
