//! Batch jobs over HTTP: a file of rows in, every row's result out in input order, matching the
//! demo's reference values; bad rows fail alone; a file that cannot be read is refused with its
//! line; cancel, retry, list, and who may see which job.

use crate::helpers::{registry_standalone_settings, TestApi};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use vatic_api::settings::ApiSettings;
use vatic_testkit::DemoReference;

const MODEL: &str = "breast_cancer";

/// A standalone api on a fresh SQLite registry, with small chunks so a job has several.
pub fn batch_settings(dir: &std::path::Path) -> ApiSettings {
    let url = format!("sqlite://{}", dir.join("vatic.db").display());
    let mut settings =
        registry_standalone_settings(&url, vatic_testkit::root().join("models"), dir);
    settings.batch.chunk_rows = 8;
    settings.batch.rows_per_request = 4;
    settings.batch.poll_ms = 50;
    settings
}

/// Posts a file to `/v2/batch/jobs?{query}`; the status and the answer.
pub async fn submit(
    api: &TestApi,
    query: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (u16, Value) {
    let mut r = api
        .client
        .post(format!("{}/v2/batch/jobs?{query}", api.base))
        .body(body);
    if let Some(t) = content_type {
        r = r.header("Content-Type", t);
    }
    let r = r.send().await.expect("submit");
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Polls a job until it has ended; gives up after two minutes.
pub async fn wait_ended(api: &TestApi, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, job) = api.get(&format!("/v2/batch/jobs/{id}")).await;
        assert_eq!(status, 200, "{job}");
        if ["succeeded", "failed", "cancelled"].contains(&job["state"].as_str().unwrap()) {
            return job;
        }
        assert!(Instant::now() < deadline, "job {id} never ended: {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A job's results in `format`, with the job state header.
pub async fn results(api: &TestApi, id: &str, format: &str) -> (String, String) {
    let r = api
        .client
        .get(format!(
            "{}/v2/batch/jobs/{id}/results?format={format}",
            api.base
        ))
        .send()
        .await
        .expect("results");
    assert_eq!(r.status(), 200);
    let state = r.headers()["x-vatic-job-state"]
        .to_str()
        .unwrap()
        .to_string();
    (state, r.text().await.unwrap())
}

/// The reference rows as CSV under the demo's feature names.
pub fn reference_csv(reference: &DemoReference, rows: std::ops::Range<usize>) -> String {
    let header: Vec<String> = (0..30).map(|i| format!("f{i}")).collect();
    let mut csv = header.join(",") + "\n";
    for row in &reference.inputs[rows] {
        let values: Vec<String> = row.iter().map(|v| v.to_string()).collect();
        csv += &(values.join(",") + "\n");
    }
    csv
}

/// Checks one result line's outputs against reference rows `rows`.
fn check_outputs(line: &Value, reference: &DemoReference, rows: std::ops::Range<usize>) {
    let outputs = line["outputs"]
        .as_array()
        .unwrap_or_else(|| panic!("no outputs: {line}"));
    let label = outputs.iter().find(|o| o["name"] == "label").unwrap();
    let probabilities = outputs
        .iter()
        .find(|o| o["name"] == "probabilities")
        .unwrap();
    assert_eq!(label["shape"], json!([rows.len()]), "{line}");
    assert_eq!(probabilities["shape"], json!([rows.len(), 2]), "{line}");
    for (k, r) in rows.enumerate() {
        assert_eq!(
            label["data"][k].as_i64(),
            Some(reference.label[r]),
            "row {r}: {line}"
        );
        for j in 0..2 {
            let got = probabilities["data"][k * 2 + j].as_f64().unwrap();
            let want = reference.probabilities[r][j];
            assert!((got - want).abs() < 1e-4, "row {r}: {got} against {want}");
        }
    }
}

fn parse_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csv_job_answers_every_row_in_order_and_a_bad_row_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let api = TestApi::start(batch_settings(dir.path()), None).await;
    let reference = vatic_testkit::demo_reference();
    let n = reference.inputs.len();
    // Row 5 holds a word where a number goes.
    let mut csv: Vec<String> = reference_csv(&reference, 0..n)
        .lines()
        .map(str::to_string)
        .collect();
    let mut fields: Vec<String> = csv[5].split(',').map(str::to_string).collect();
    fields[1] = "abc".into();
    csv[5] = fields.join(",");
    let body = csv.join("\n") + "\n";
    let (status, job) = submit(
        &api,
        &format!("model={MODEL}"),
        Some("text/csv"),
        body.into_bytes(),
    )
    .await;
    assert_eq!(status, 201, "{job}");
    assert_eq!(job["rows_total"], n, "{job}");
    assert_eq!(job["input_format"], "csv");
    let id = job["id"].as_str().unwrap().to_string();
    let job = wait_ended(&api, &id).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(
        (job["rows_done"].as_u64(), job["rows_failed"].as_u64()),
        (Some(n as u64), Some(1)),
        "{job}"
    );

    let (state, text) = results(&api, &id, "jsonl").await;
    assert_eq!(state, "succeeded");
    let lines = parse_lines(&text);
    assert_eq!(lines.len(), n, "one result per row");
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["row"], i + 1, "in input order: {line}");
        if i == 4 {
            let error = line["error"].as_str().unwrap();
            assert!(
                error.contains("column 'f1': 'abc' is not a number"),
                "{error}"
            );
        } else {
            assert_eq!(line["version"], "1", "{line}");
            check_outputs(line, &reference, i..i + 1);
        }
    }
    // The same results as CSV: one column per output.
    let (_, text) = results(&api, &id, "csv").await;
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    // The model's outputs in the order of its metadata.
    let mut header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_string)
        .collect();
    let column = |name: &str| header.iter().position(|h| h == name).unwrap();
    let (label, probabilities, error) = (column("label"), column("probabilities"), column("error"));
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(records.len(), n);
    for (i, record) in records.iter().enumerate() {
        assert_eq!(record[0].parse::<usize>().unwrap(), i + 1);
        if i == 4 {
            assert!(record[error].contains("is not a number"), "{record:?}");
            continue;
        }
        assert_eq!(record[label].parse::<i64>().unwrap(), reference.label[i]);
        let p: Vec<f64> = serde_json::from_str(&record[probabilities]).unwrap();
        assert!(
            (p[1] - reference.probabilities[i][1]).abs() < 1e-4,
            "{record:?}"
        );
        assert_eq!(&record[error], "");
    }
    header.sort();
    assert_eq!(
        header,
        ["error", "label", "probabilities", "row", "version"]
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_reach_the_model_in_runs_no_larger_than_its_max_batch_size() {
    let dir = tempfile::tempdir().unwrap();
    // Requests of up to 4 rows, for a version that runs at most 2 at once.
    let mut settings = batch_settings(dir.path());
    settings.engine.batching.max_batch_size = 2;
    let api = TestApi::start(settings, None).await;
    let (_, config) = api.get(&format!("/v2/models/{MODEL}/config")).await;
    let most = config["max_batch_size"].as_u64().unwrap();
    assert!((1..=2).contains(&most), "{config}");
    let reference = vatic_testkit::demo_reference();
    let csv = reference_csv(&reference, 0..16);
    let (status, job) = submit(
        &api,
        &format!("model={MODEL}&format=csv"),
        None,
        csv.into_bytes(),
    )
    .await;
    assert_eq!(status, 201, "{job}");
    let job = wait_ended(&api, job["id"].as_str().unwrap()).await;
    assert_eq!(
        (
            job["state"].as_str(),
            job["rows_done"].as_u64(),
            job["rows_failed"].as_u64()
        ),
        (Some("succeeded"), Some(16), Some(0)),
        "{job}"
    );
    let (_, text) = results(&api, job["id"].as_str().unwrap(), "jsonl").await;
    for (i, line) in parse_lines(&text).iter().enumerate() {
        check_outputs(line, &reference, i..i + 1);
    }
    let (_, stats) = api.get(&format!("/v2/models/{MODEL}/stats")).await;
    let runs = stats["model_stats"][0]["batch_stats"].as_array().unwrap();
    let sizes: Vec<u64> = runs
        .iter()
        .map(|r| r["batch_size"].as_u64().unwrap())
        .collect();
    assert!(
        !sizes.is_empty() && sizes.iter().all(|s| *s <= most),
        "{stats}"
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jsonl_job_takes_v2_bodies_and_tf_serving_instances() {
    let dir = tempfile::tempdir().unwrap();
    let api = TestApi::start(batch_settings(dir.path()), None).await;
    let reference = vatic_testkit::demo_reference();
    let row = |r: usize| json!(reference.inputs[r]);
    let lines = [
        reference.v2_request(0..2),
        row(2),
        json!({"input": row(3)}),
        json!({"inputs": [{"name": "nope", "datatype": "FP32", "shape": [1, 30], "data": row(4)}]}),
        json!(reference.inputs[5][..29]),
        reference.v2_request(6..7),
        // A V2 body asking for one output only.
        {
            let mut b = reference.v2_request(7..8);
            b["outputs"] = json!([{"name": "label"}]);
            b
        },
    ];
    let body: String = lines.iter().map(|l| l.to_string() + "\n").collect();
    let (status, job) = submit(
        &api,
        &format!("model={MODEL}&version=1"),
        Some("application/x-ndjson"),
        body.into_bytes(),
    )
    .await;
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    let job = wait_ended(&api, &id).await;
    assert_eq!(
        (job["rows_total"].as_u64(), job["rows_failed"].as_u64()),
        (Some(7), Some(2)),
        "{job}"
    );
    let (_, text) = results(&api, &id, "jsonl").await;
    let got = parse_lines(&text);
    assert_eq!(got.len(), 7);
    check_outputs(&got[0], &reference, 0..2);
    check_outputs(&got[1], &reference, 2..3);
    check_outputs(&got[2], &reference, 3..4);
    assert!(
        got[3]["error"].as_str().unwrap().contains("nope"),
        "{}",
        got[3]
    );
    assert!(got[4]["error"].is_string(), "{}", got[4]);
    check_outputs(&got[5], &reference, 6..7);
    let only = got[6]["outputs"].as_array().unwrap();
    assert_eq!(only.len(), 1, "{}", got[6]);
    assert_eq!(only[0]["data"][0].as_i64(), Some(reference.label[7]));
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_cannot_be_a_job_is_refused_with_what_was_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = batch_settings(dir.path());
    settings.batch.max_upload_bytes = 100_000;
    let api = TestApi::start(settings, None).await;
    let reference = vatic_testkit::demo_reference();
    let csv = reference_csv(&reference, 0..3);
    // The query, the Content-Type, the body, the status and what the error says.
    type Case<'a> = (String, Option<&'a str>, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "format=csv".into(),
            None,
            csv.clone().into_bytes(),
            400,
            "name the model",
        ),
        (
            "model=nosuch&format=csv".to_string(),
            None,
            csv.clone().into_bytes(),
            404,
            "nosuch",
        ),
        (
            format!("model={MODEL}&version=9&format=csv"),
            None,
            csv.clone().into_bytes(),
            404,
            "version",
        ),
        (
            format!("model={MODEL}&version=x&format=csv"),
            None,
            csv.clone().into_bytes(),
            400,
            "not a version number",
        ),
        (
            format!("model={MODEL}&label=nosuch&format=csv"),
            None,
            csv.clone().into_bytes(),
            404,
            "label",
        ),
        (
            format!("model={MODEL}&version=1&label=stable"),
            Some("text/csv"),
            csv.clone().into_bytes(),
            400,
            "not both",
        ),
        (
            format!("model={MODEL}"),
            None,
            csv.clone().into_bytes(),
            400,
            "?format=jsonl",
        ),
        (
            format!("model={MODEL}"),
            Some("application/json"),
            csv.clone().into_bytes(),
            400,
            "'application/json'",
        ),
        (
            format!("model={MODEL}&format=xml"),
            None,
            csv.clone().into_bytes(),
            400,
            "unknown format 'xml'",
        ),
        (
            format!("model={MODEL}&format=csv&output=xml"),
            None,
            csv.clone().into_bytes(),
            400,
            "output: unknown format",
        ),
        (
            format!("model={MODEL}&format=csv&colour=red"),
            None,
            csv.clone().into_bytes(),
            400,
            "colour",
        ),
        (
            format!("model={MODEL}&format=csv"),
            None,
            b"a,b\n1,2\n".to_vec(),
            400,
            "header names 2 columns; input 'input' takes 30",
        ),
        (
            format!("model={MODEL}&format=csv"),
            None,
            Vec::new(),
            400,
            "needs a header row",
        ),
        (
            format!("model={MODEL}&format=csv"),
            None,
            format!("{csv}1,2\n").into_bytes(),
            400,
            "line 5: 2 values; the header has 30 columns",
        ),
        (
            format!("model={MODEL}&format=jsonl"),
            None,
            b"[1]\n\n{\"a\": \n".to_vec(),
            400,
            "line 3: not JSON",
        ),
        (
            format!("model={MODEL}&format=jsonl"),
            None,
            vec![b' '; 200_000],
            413,
            "batch.max_upload_bytes",
        ),
    ];
    for (query, content_type, body, status, says) in cases {
        let (got, answer) = submit(&api, &query, content_type, body).await;
        assert_eq!(got, status, "{query}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains(says), "{query}: {error}");
    }
    // A body of no declared length is counted as it arrives (after gzip, were it compressed):
    // refused once it passes the limit, its rows stored so far removed.
    let mut lines = reference_csv(&reference, 0..1);
    let row = lines.lines().nth(1).unwrap().to_string() + "\n";
    while lines.len() < 150_000 {
        lines += &row;
    }
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> = lines
        .into_bytes()
        .chunks(8192)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let r = api
        .client
        .post(format!(
            "{}/v2/batch/jobs?model={MODEL}&format=csv",
            api.base
        ))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            pieces,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let answer: Value = r.json().await.unwrap();
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("batch.max_upload_bytes"),
        "{answer}"
    );
    // Nothing refused left a job behind.
    let (status, list) = api.get("/v2/batch/jobs").await;
    assert_eq!(status, 200);
    assert_eq!(list["jobs"], json!([]), "{list}");
    // Nor any of its rows: the list leaves out uploads under way, the tables do not.
    let db = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        dir.path().join("vatic.db").display()
    ))
    .await
    .unwrap();
    for table in ["batch_jobs", "batch_chunks"] {
        let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(&db)
            .await
            .unwrap();
        assert_eq!(n, 0, "{table}");
    }
    db.close().await;
    for (path, status) in [
        ("/v2/batch/jobs/nosuch", 404),
        ("/v2/batch/jobs/nosuch/results", 404),
        ("/v2/batch/jobs?limit=0", 400),
        ("/v2/batch/jobs?limit=1001", 400),
    ] {
        let (got, answer) = api.get(path).await;
        assert_eq!(got, status, "{path}: {answer}");
        assert!(answer["error"].is_string(), "{path}: {answer}");
    }
    let (got, answer) = api
        .post_json("/v2/batch/jobs/nosuch/cancel", &json!({}))
        .await;
    assert_eq!(got, 404, "{answer}");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_cancelled_retried_and_listed() {
    let dir = tempfile::tempdir().unwrap();
    // Without a runner, jobs stay queued until something is done to them.
    let mut settings = batch_settings(dir.path());
    settings.batch.run = false;
    let api = TestApi::start(settings, None).await;
    let reference = vatic_testkit::demo_reference();
    let csv = reference_csv(&reference, 0..20);
    let (status, job) = submit(
        &api,
        &format!("model={MODEL}&format=csv&output=jsonl"),
        None,
        csv.into_bytes(),
    )
    .await;
    assert_eq!(status, 201, "{job}");
    assert_eq!(
        (job["state"].as_str(), job["output_format"].as_str()),
        (Some("queued"), Some("jsonl"))
    );
    let id = job["id"].as_str().unwrap().to_string();
    let (status, answer) = api
        .post_json(&format!("/v2/batch/jobs/{id}/retry"), &json!({}))
        .await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("is queued"),
        "{answer}"
    );
    let (status, job) = api
        .post_json(&format!("/v2/batch/jobs/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["state"], "cancelled");
    assert_eq!(job["error"], "cancelled by anonymous");
    let (status, answer) = api
        .post_json(&format!("/v2/batch/jobs/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 409, "{answer}");
    // A cancelled job's results hold the rows that ran: none.
    let (state, text) = results(&api, &id, "jsonl").await;
    assert_eq!((state.as_str(), text.as_str()), ("cancelled", ""));
    let (_, text) = results(&api, &id, "csv").await;
    assert_eq!(text.lines().count(), 1, "only the header: {text}");
    assert!(text.starts_with("row,version,"), "{text}");
    // Retry runs what the cancel left.
    let (status, job) = api
        .post_json(&format!("/v2/batch/jobs/{id}/retry"), &json!({}))
        .await;
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["state"], "queued");
    let (status, second) = submit(
        &api,
        &format!("model={MODEL}&format=csv"),
        None,
        reference_csv(&reference, 0..1).into_bytes(),
    )
    .await;
    assert_eq!(status, 201, "{second}");
    let (status, list) = api.get("/v2/batch/jobs?limit=10").await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [second["id"].as_str().unwrap(), id.as_str()],
        "newest first"
    );
    api.stop().await;
}

/// Uploads the demo's file as version 2 of the model, waits until it is ready, and submits
/// its first 20 reference rows as a CSV job, with `extra` after the query (`&version=2`, or
/// nothing); the job's id.
async fn push_and_submit(api: &TestApi, reference: &DemoReference, extra: &str) -> String {
    let model = std::fs::read(vatic_testkit::model_dir(MODEL).join("1/model.onnx")).unwrap();
    let r = api
        .client
        .post(format!(
            "{}/admin/v1/models/{MODEL}/versions?version=2",
            api.base
        ))
        .header("Content-Type", "application/octet-stream")
        .body(model)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let ready = format!("{}/v2/models/{MODEL}/versions/2/ready", api.base);
    vatic_testkit::wait_ok(&api.client, &ready).await;
    let (status, job) = submit(
        api,
        &format!("model={MODEL}&format=csv{extra}"),
        None,
        reference_csv(reference, 0..20).into_bytes(),
    )
    .await;
    assert_eq!(status, 201, "{job}");
    job["id"].as_str().unwrap().to_string()
}

/// A job pinned to a version that is retired before it runs fails, naming the version; its rows
/// get no results.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_version_is_retired_before_it_runs_fails_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = batch_settings(dir.path());
    settings.batch.run = false;
    let api = TestApi::start(settings, None).await;
    let reference = vatic_testkit::demo_reference();
    let id = push_and_submit(&api, &reference, "&version=2").await;
    let (status, retired) = api
        .post_json(
            &format!("/admin/v1/models/{MODEL}/versions/2/retire"),
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "{retired}");
    api.stop().await;

    // A replica that runs jobs finds the version gone. Its spool is its own: the stopped api's
    // may still be held while its server threads wind down.
    let mut settings = batch_settings(dir.path());
    settings.prediction_log.spool_dir = dir.path().join("spool-2");
    let api = TestApi::start(settings, None).await;
    let job = wait_ended(&api, &id).await;
    assert_eq!(job["state"], "failed", "{job}");
    let error = job["error"].as_str().unwrap();
    assert!(error.contains("no version '2'"), "{job}");
    let (state, text) = results(&api, &id, "jsonl").await;
    assert_eq!((state.as_str(), text.as_str()), ("failed", ""));
    api.stop().await;
}

/// Rows that no worker takes (the only one was killed) are tried `batch.max_attempts` times,
/// then fail with the reason and the count; the job succeeds with them as its failed rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_no_worker_takes_fail_after_max_attempts_saying_so() {
    use crate::helpers::{cluster_settings, migrated, registry_worker};
    let db = vatic_testkit::TestDb::postgres();
    migrated(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let settings = |run: bool| {
        let mut s = cluster_settings(Vec::new());
        s.server.database.url = Some(db.url.clone());
        s.fleet_refresh_ms = 200;
        s.heartbeat_timeout_ms = 3000;
        s.upload_dir = dir.path().join("uploads");
        // Each replica has its own spool: the stopped one's may still be held while its
        // server threads wind down.
        s.prediction_log.spool_dir = dir.path().join(if run { "spool-2" } else { "spool" });
        s.batch.run = run;
        s.batch.chunk_rows = 8;
        s.batch.poll_ms = 50;
        s.batch.retry_after_ms = 50;
        s.batch.max_attempts = 2;
        s
    };
    // The job is accepted while a worker serves the model, and left queued.
    let worker = registry_worker(&db.url, &dir.path().join("cache"));
    let api = TestApi::start(settings(false), None).await;
    let reference = vatic_testkit::demo_reference();
    let id = push_and_submit(&api, &reference, "").await;
    api.stop().await;
    drop(worker);

    // A replica that runs jobs, with no worker left: it is never ready, so it is waited for
    // as live. (Ready came only from the killed worker's heartbeat while it was fresh.)
    let api = TestApi::start_until(settings(true), None, "/v2/health/live").await;
    let job = wait_ended(&api, &id).await;
    assert_eq!(
        (job["state"].as_str(), job["rows_failed"].as_i64()),
        (Some("succeeded"), Some(20)),
        "{job}"
    );
    let (_, text) = results(&api, &id, "jsonl").await;
    let lines = parse_lines(&text);
    assert_eq!(lines.len(), 20, "{text}");
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["row"].as_u64(), Some(i as u64 + 1), "{line}");
        let error = line["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("its chunk was tried 2 times: batch.max_attempts"),
            "{line}"
        );
    }
    // Nor can it take a new file: the rows are read by the signature a worker gives.
    let (status, answer) = submit(
        &api,
        &format!("model={MODEL}&format=csv"),
        None,
        reference_csv(&reference, 0..1).into_bytes(),
    )
    .await;
    assert_eq!(status, 503, "{answer}");
    api.stop().await;
}

/// The demo's reference rows, cycled to `n` rows, as CSV.
fn cycled_csv(reference: &DemoReference, n: usize) -> String {
    let mut csv = reference_csv(reference, 0..0);
    for i in 0..n {
        let row = &reference.inputs[i % reference.inputs.len()];
        let values: Vec<String> = row.iter().map(|v| v.to_string()).collect();
        csv += &(values.join(",") + "\n");
    }
    csv
}

/// Two api processes and a worker on PostgreSQL. A job runs once without faults; the same
/// file runs again while one api replica and the worker are killed with kill -9 (a new worker
/// takes over). Every row of the second job has exactly one result, the same as the first
/// job's, and both match the demo's reference values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_has_one_result_when_a_worker_and_an_api_replica_are_killed_mid_job() {
    use crate::helpers::{api_process, binary, migrated, registry_worker};
    let db = vatic_testkit::TestDb::postgres();
    migrated(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let mut worker = registry_worker(&db.url, &cache);
    let start_api = |i: usize| {
        api_process(
            &db.url,
            dir.path(),
            i,
            &[
                ("VATIC_HEARTBEAT_TIMEOUT_MS", "2000"),
                ("VATIC_BATCH__CHUNK_ROWS", "100"),
                ("VATIC_BATCH__LEASE_MS", "1500"),
                ("VATIC_BATCH__POLL_MS", "100"),
                ("VATIC_BATCH__RETRY_AFTER_MS", "200"),
            ],
        )
    };
    let mut doomed = start_api(0);
    let survivor = start_api(1);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let push = tokio::process::Command::new(binary("vaticctl", "vatic-cli"))
        .current_dir(vatic_testkit::root())
        .args([
            "--server",
            &survivor.url,
            "models",
            "push",
            MODEL,
            "models/breast_cancer/1/model.onnx",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        push.status.success(),
        "{}",
        String::from_utf8_lossy(&push.stderr)
    );
    for api in [&doomed.url, &survivor.url] {
        crate::helpers::wait_status(
            &client,
            &format!("{api}/v2/models/{MODEL}/ready"),
            200,
            Duration::from_secs(60),
        )
        .await;
    }
    let reference = vatic_testkit::demo_reference();
    let rows = 20_000;
    let csv = cycled_csv(&reference, rows);
    let submit = |body: String| {
        let (client, url) = (client.clone(), survivor.url.clone());
        async move {
            let r = client
                .post(format!(
                    "{url}/v2/batch/jobs?model={MODEL}&format=csv&output=jsonl"
                ))
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            let job: Value = r.json().await.unwrap();
            job["id"].as_str().unwrap().to_string()
        }
    };
    let job = |id: String| {
        let (client, url) = (client.clone(), survivor.url.clone());
        async move {
            vatic_testkit::get_json(&client, &format!("{url}/v2/batch/jobs/{id}"))
                .await
                .1
        }
    };
    let wait_ended = |id: String| {
        let job = &job;
        async move {
            let deadline = Instant::now() + Duration::from_secs(300);
            loop {
                let j = job(id.clone()).await;
                if ["succeeded", "failed", "cancelled"].contains(&j["state"].as_str().unwrap()) {
                    return j;
                }
                assert!(Instant::now() < deadline, "the job never ended: {j}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let results = |id: String| {
        let (client, url) = (client.clone(), survivor.url.clone());
        async move {
            let r = client
                .get(format!("{url}/v2/batch/jobs/{id}/results"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.text().await.unwrap()
        }
    };

    // Without faults.
    let calm = submit(csv.clone()).await;
    let ended = wait_ended(calm.clone()).await;
    assert_eq!(
        (ended["state"].as_str(), ended["rows_failed"].as_u64()),
        (Some("succeeded"), Some(0)),
        "{ended}"
    );
    let expected = results(calm).await;

    // With faults: once rows are running, kill -9 one api replica, then the worker.
    let stormy = submit(csv).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let j = job(stormy.clone()).await;
        let done = j["rows_done"].as_u64().unwrap();
        if done > 0 {
            assert!(
                done < rows as u64,
                "the job ended before a fault could be made: {j}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no row ran: {j}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    doomed.child.kill().unwrap();
    doomed.child.wait().unwrap();
    worker.child.kill().unwrap();
    worker.child.wait().unwrap();
    drop(worker);
    let _worker = registry_worker(&db.url, &cache);
    let ended = wait_ended(stormy.clone()).await;
    assert_eq!(
        (
            ended["state"].as_str(),
            ended["rows_done"].as_u64(),
            ended["rows_failed"].as_u64()
        ),
        (Some("succeeded"), Some(rows as u64), Some(0)),
        "{ended}"
    );
    let got = results(stormy.clone()).await;
    assert_eq!(got.lines().count(), rows, "one result per row");
    assert!(
        got == expected,
        "the results differ from the run without faults"
    );
    for (i, line) in got.lines().enumerate().step_by(97) {
        let line: Value = serde_json::from_str(line).unwrap();
        assert_eq!(line["row"], i + 1);
        let r = i % reference.inputs.len();
        check_outputs(&line, &reference, r..r + 1);
    }
    // Some chunk was claimed more than once: a fault was recovered from.
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let attempts: Vec<i32> = sqlx::query_scalar("SELECT attempts FROM batch_chunks WHERE job = $1")
        .bind(&stormy)
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(attempts.len(), rows / 100);
    assert!(
        attempts.iter().any(|a| *a > 1),
        "no chunk was taken again: {attempts:?}"
    );
    pool.close().await;
}
