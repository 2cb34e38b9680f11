//! Batch jobs: submitting a file (streamed from disk, with a progress bar), following a job,
//! reading its results, cancelling and retrying it, listing jobs.

use super::upload::{chunks, progress_bar};
use super::{Client, CONNECT_TIMEOUT};
use anyhow::Context;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::{Body, Url};
use std::io::Write;
use std::path::Path;
use std::time::Duration;
use vatic_schema::batch::{BatchJob, BatchJobList, FileFormat};

/// Longest wait for an upload, or for the results of a job to arrive.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// A file to submit as a batch job.
#[derive(Debug, Clone, Copy)]
pub struct Submit<'a> {
    /// The model.
    pub model: &'a str,
    /// Its version, if not the stable one.
    pub version: Option<u64>,
    /// Its label, if not the stable version.
    pub label: Option<&'a str>,
    /// The file.
    pub file: &'a Path,
    /// The file's form.
    pub format: FileFormat,
    /// The results' form.
    pub output: FileFormat,
    /// Whether the file is gzip-compressed (sent as it is, with `Content-Encoding: gzip`).
    pub gzip: bool,
}

impl Client {
    /// `POST /v2/batch/jobs?model=...`: the file is the body, streamed from disk.
    pub fn submit_job(&self, submit: Submit<'_>) -> anyhow::Result<BatchJob> {
        let name = submit.file.display();
        let file =
            std::fs::File::open(submit.file).with_context(|| format!("cannot open {name}"))?;
        let size = file
            .metadata()
            .with_context(|| format!("cannot read {name}"))?
            .len();
        let mut url = self.batch_url(&[]);
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("model", submit.model);
            if let Some(v) = submit.version {
                query.append_pair("version", &v.to_string());
            }
            if let Some(l) = submit.label {
                query.append_pair("label", l);
            }
            query.append_pair("format", submit.format.as_str());
            query.append_pair("output", submit.output.as_str());
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        runtime.block_on(self.send_file(url, tokio::fs::File::from_std(file), size, submit.gzip))
    }

    async fn send_file(
        &self,
        url: Url,
        file: tokio::fs::File,
        size: u64,
        gzip: bool,
    ) -> anyhow::Result<BatchJob> {
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*self.tls).clone())
            .default_headers(self.headers.clone())
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(TRANSFER_TIMEOUT)
            .build()
            .context("cannot set up the HTTP client")?;
        let bar = progress_bar(size);
        let body = Body::wrap_stream(chunks(file, bar.clone(), "the server stores the last rows"));
        let mut request = http.post(url.clone());
        if gzip {
            request = request.header(reqwest::header::CONTENT_ENCODING, "gzip");
        }
        let response = request
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, size)
            .body(body)
            .send()
            .await;
        bar.finish_and_clear();
        self.uploaded(response, &url).await
    }

    /// `GET /v2/batch/jobs/{id}`.
    pub fn job(&self, id: &str) -> anyhow::Result<BatchJob> {
        let url = self.batch_url(&[id]);
        self.json_answer(self.http.get(url.clone()), &url)
    }

    /// `GET /v2/batch/jobs?limit=N`.
    pub fn jobs(&self, limit: u32) -> anyhow::Result<Vec<BatchJob>> {
        let mut url = self.batch_url(&[]);
        url.query_pairs_mut()
            .append_pair("limit", &limit.to_string());
        let list: BatchJobList = self.json_answer(self.http.get(url.clone()), &url)?;
        Ok(list.jobs)
    }

    /// `POST /v2/batch/jobs/{id}/cancel`.
    pub fn cancel_job(&self, id: &str) -> anyhow::Result<BatchJob> {
        let url = self.batch_url(&[id, "cancel"]);
        self.json_answer(self.http.post(url.clone()), &url)
    }

    /// `POST /v2/batch/jobs/{id}/retry`.
    pub fn retry_job(&self, id: &str) -> anyhow::Result<BatchJob> {
        let url = self.batch_url(&[id, "retry"]);
        self.json_answer(self.http.post(url.clone()), &url)
    }

    /// `GET /v2/batch/jobs/{id}/results[?format=F]`, copied to `out` as it arrives; returns
    /// the job's state when the results were read.
    pub fn job_results(
        &self,
        id: &str,
        format: Option<FileFormat>,
        out: &mut impl Write,
    ) -> anyhow::Result<String> {
        let mut url = self.batch_url(&[id, "results"]);
        if let Some(format) = format {
            url.query_pairs_mut().append_pair("format", format.as_str());
        }
        let mut response = self.send(self.http.get(url.clone()).timeout(TRANSFER_TIMEOUT))?;
        let state = response
            .headers()
            .get("x-vatic-job-state")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("unknown")
            .to_string();
        std::io::copy(&mut response, out)
            .with_context(|| format!("reading the results from {url}"))?;
        Ok(state)
    }

    /// `{base}/v2/batch/jobs/{segments}`, each escaped as a path segment.
    fn batch_url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("Client::new refuses URLs that cannot be a base")
            .pop_if_empty()
            .extend(["v2", "batch", "jobs"])
            .extend(segments);
        url
    }
}
