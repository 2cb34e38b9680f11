//! Batch jobs: the uploaded rows in chunks, claimed by any api replica under a lease, with each
//! chunk's results written in the same statement that marks it done, by the claim that holds it.
//! A claim that runs out (its process died) is taken again; a late answer of the claim that lost
//! the chunk is refused, so every row has exactly one result.

use crate::{now, on_pool, rfc3339, Backend, Result, Store, StoreError};
use chrono::{DateTime, Utc};
use sqlx::Row;
use std::time::Duration;
use vatic_schema::batch::{BatchJob, FileFormat, JobState};

/// A job as it is created, before its rows arrive.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Its id.
    pub id: String,
    /// The model.
    pub model: String,
    /// The version it names, if any.
    pub version: Option<String>,
    /// The label it names, if any.
    pub label: Option<String>,
    /// The input file's form.
    pub input_format: FileFormat,
    /// The results' default form.
    pub output_format: FileFormat,
    /// How rows are read (JSON, the api's own).
    pub layout: String,
    /// The API key that submits it.
    pub api_key: Option<String>,
}

/// A chunk claimed to run.
#[derive(Debug, Clone)]
pub struct Claim {
    /// Its job.
    pub job: String,
    /// Its place in the job.
    pub seq: i64,
    /// Its first row (1-based).
    pub first_row: i64,
    /// Its rows.
    pub rows: i64,
    /// The lines as uploaded.
    pub input: Vec<u8>,
    /// The claim's token: only this claim may renew, complete or release it.
    pub lease: String,
    /// The results of an earlier run when the job was retried (only its failed rows run again).
    pub previous: Option<Vec<u8>>,
    /// The rows that failed in that run.
    pub previous_failed: i64,
    /// How many times the chunk has been claimed, this claim included.
    pub attempts: u32,
    /// The job's model, version, label and layout.
    pub model: String,
    /// The version the job names.
    pub version: Option<String>,
    /// The label the job names.
    pub label: Option<String>,
    /// The job's input form.
    pub input_format: FileFormat,
    /// The job's layout.
    pub layout: String,
}

/// A chunk's place and results, in the order of the input.
#[derive(Debug, Clone)]
pub struct ChunkResults {
    /// Its place in the job.
    pub seq: i64,
    /// Its first row.
    pub first_row: i64,
    /// Its rows.
    pub rows: i64,
    /// One JSON line per row, when it is done.
    pub results: Option<Vec<u8>>,
}

/// What the clean-up of old jobs removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expired {
    /// Ended jobs past their retention.
    pub ended: u64,
    /// Uploads that stopped arriving (their process died or the client went away).
    pub abandoned: u64,
}

const JOB_COLUMNS: &str = "id, model, version, label, input_format, output_format, layout, state, api_key, rows_total, rows_done, rows_failed, rows_at_start, input_bytes, error, created_at, started_at, finished_at";

fn format_of(s: &str) -> Result<FileFormat> {
    s.parse()
        .map_err(|e: String| StoreError::Corrupt(format!("batch job: {e}")))
}

fn job_from_row<R>(row: &R) -> Result<(BatchJob, String)>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> DateTime<Utc>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<DateTime<Utc>>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let state: String = row.try_get("state")?;
    let started_at: Option<DateTime<Utc>> = row.try_get("started_at")?;
    let finished_at: Option<DateTime<Utc>> = row.try_get("finished_at")?;
    let rows_done: i64 = row.try_get("rows_done")?;
    let rows_at_start: i64 = row.try_get("rows_at_start")?;
    let job = BatchJob {
        id: row.try_get("id")?,
        model: row.try_get("model")?,
        version: row.try_get("version")?,
        label: row.try_get("label")?,
        state: state
            .parse()
            .map_err(|e: String| StoreError::Corrupt(format!("batch job: {e}")))?,
        input_format: format_of(&row.try_get::<String, _>("input_format")?)?,
        output_format: format_of(&row.try_get::<String, _>("output_format")?)?,
        rows_total: row.try_get::<i64, _>("rows_total")? as u64,
        rows_done: rows_done as u64,
        rows_failed: row.try_get::<i64, _>("rows_failed")? as u64,
        input_bytes: row.try_get::<i64, _>("input_bytes")? as u64,
        rows_per_second: None,
        eta_seconds: None,
        error: row.try_get("error")?,
        api_key: row.try_get("api_key")?,
        created_at: rfc3339(row.try_get("created_at")?),
        started_at: started_at.map(rfc3339),
        finished_at: finished_at.map(rfc3339),
    };
    let running = started_at.map(|s| {
        let end = finished_at.unwrap_or_else(now);
        (end - s).num_milliseconds() as f64 / 1000.0
    });
    let layout: String = row.try_get("layout")?;
    let rows = (rows_done - rows_at_start).max(0) as u64;
    Ok((job.with_progress(rows, running), layout))
}

fn after(for_: Duration) -> DateTime<Utc> {
    let last = DateTime::from_timestamp(LAST_SECOND, 0).expect("a valid time");
    chrono::Duration::from_std(for_)
        .ok()
        .and_then(|d| now().checked_add_signed(d))
        .map_or(last, |t| t.min(last))
}

/// `ago` before now; no earlier than 1970 (nothing here is older), so a retention longer than
/// the calendar stores no time the database cannot hold.
fn before(ago: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(ago)
        .ok()
        .and_then(|d| now().checked_sub_signed(d))
        .map_or(DateTime::UNIX_EPOCH, |t| t.max(DateTime::UNIX_EPOCH))
}

/// 9999-12-31T23:59:59Z: the latest time both backends store; a longer lease ends there.
const LAST_SECOND: i64 = 253_402_300_799;

impl Store {
    /// Records a job whose file is about to arrive (state `uploading`).
    pub async fn create_job(&self, job: &NewJob) -> Result<()> {
        let at = now();
        on_pool!(self, pool => {
            sqlx::query("INSERT INTO batch_jobs (id, model, version, label, input_format, output_format, layout, state, api_key, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 'uploading', $8, $9, $9)")
                .bind(&job.id)
                .bind(&job.model)
                .bind(&job.version)
                .bind(&job.label)
                .bind(job.input_format.as_str())
                .bind(job.output_format.as_str())
                .bind(&job.layout)
                .bind(&job.api_key)
                .bind(at)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Stores one chunk of an uploading job's rows.
    pub async fn add_chunk(
        &self,
        job: &str,
        seq: i64,
        first_row: i64,
        rows: i64,
        input: &[u8],
    ) -> Result<()> {
        let at = now();
        on_pool!(self, pool => {
            let mut tx = pool.begin_with(self.write_begin()).await?;
            sqlx::query("INSERT INTO batch_chunks (job, seq, first_row, rows, input, state) VALUES ($1, $2, $3, $4, $5, 'pending')")
                .bind(job)
                .bind(seq)
                .bind(first_row)
                .bind(rows)
                .bind(input)
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE batch_jobs SET updated_at = $1, input_bytes = input_bytes + $2 WHERE id = $3")
                .bind(at)
                .bind(input.len() as i64)
                .bind(job)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Ends an upload: the job is queued with its counts. A job with no rows has nothing to
    /// run and succeeds at once.
    pub async fn finish_upload(&self, job: &str, rows: i64, chunks: i64) -> Result<()> {
        let at = now();
        let state = if rows == 0 { "succeeded" } else { "queued" };
        on_pool!(self, pool => {
            sqlx::query("UPDATE batch_jobs SET state = $1, rows_total = $2, chunks_total = $3, updated_at = $4, finished_at = CASE WHEN $2 = 0 THEN $4 ELSE NULL END WHERE id = $5 AND state = 'uploading'")
                .bind(state)
                .bind(rows)
                .bind(chunks)
                .bind(at)
                .bind(job)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Removes a job and its chunks (an upload that was refused or abandoned).
    pub async fn delete_job(&self, job: &str) -> Result<()> {
        on_pool!(self, pool => {
            let mut tx = pool.begin_with(self.write_begin()).await?;
            sqlx::query("DELETE FROM batch_chunks WHERE job = $1")
                .bind(job)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM batch_jobs WHERE id = $1")
                .bind(job)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// One job and its layout.
    pub async fn job(&self, id: &str) -> Result<Option<(BatchJob, String)>> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM batch_jobs WHERE id = $1");
        on_pool!(self, pool => {
            let row = sqlx::query(&sql).bind(id).fetch_optional(pool).await?;
            row.as_ref().map(job_from_row).transpose()
        })
    }

    /// The newest `limit` jobs, of one API key or (`None`) of every key; an upload still
    /// arriving is left out.
    pub async fn jobs(&self, api_key: Option<Option<&str>>, limit: u32) -> Result<Vec<BatchJob>> {
        let filter = match api_key {
            None => "",
            Some(None) => "AND api_key IS NULL",
            Some(Some(_)) => "AND api_key = $2",
        };
        let sql = format!("SELECT {JOB_COLUMNS} FROM batch_jobs WHERE state <> 'uploading' {filter} ORDER BY created_at DESC, id DESC LIMIT $1");
        on_pool!(self, pool => {
            let mut q = sqlx::query(&sql).bind(i64::from(limit));
            if let Some(Some(key)) = api_key {
                q = q.bind(key);
            }
            let rows = q.fetch_all(pool).await?;
            rows.iter().map(|r| job_from_row(r).map(|(j, _)| j)).collect()
        })
    }

    /// Claims the oldest runnable chunk for `for_`: a pending one, or one whose claim ran out,
    /// of a job that is queued or running. Marks a queued job running.
    pub async fn claim_chunk(&self, for_: Duration) -> Result<Option<Claim>> {
        let at = now();
        let until = after(for_);
        let lease = uuid::Uuid::new_v4().to_string();
        let lock = match self.backend() {
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        // Job by job, oldest first, the first runnable chunk in order: one short walk of the
        // index of unfinished chunks (job, seq), however many chunks a job has.
        let find = format!(
            "SELECT seq FROM batch_chunks WHERE job = $1 AND state <> 'done' \
             AND ((state = 'pending' AND (not_before IS NULL OR not_before <= $2)) \
                  OR (state = 'running' AND lease_until < $2)) \
             ORDER BY seq LIMIT 1 {lock}"
        );
        on_pool!(self, pool => {
            let mut tx = pool.begin_with(self.write_begin()).await?;
            let jobs: Vec<String> = sqlx::query_scalar("SELECT id FROM batch_jobs WHERE state IN ('queued', 'running') ORDER BY created_at, id")
                .fetch_all(&mut *tx)
                .await?;
            let mut found = None;
            for job in jobs {
                let seq: Option<i64> = sqlx::query_scalar(&find)
                    .bind(&job)
                    .bind(at)
                    .fetch_optional(&mut *tx)
                    .await?;
                if let Some(seq) = seq {
                    found = Some((job, seq));
                    break;
                }
            }
            let Some((job, seq)) = found else {
                tx.commit().await?;
                return Ok(None);
            };
            let row = sqlx::query("UPDATE batch_chunks SET state = 'running', lease = $1, lease_until = $2, attempts = attempts + 1 WHERE job = $3 AND seq = $4 RETURNING first_row, rows, input, results, failed, attempts")
                .bind(&lease)
                .bind(until)
                .bind(&job)
                .bind(seq)
                .fetch_one(&mut *tx)
                .await?;
            // A cancel that commits meanwhile is seen here (the statement waits for it and
            // reads the job again): the job stays cancelled, and this chunk runs as one that
            // was running when it came, its results kept.
            sqlx::query("UPDATE batch_jobs SET state = 'running', started_at = $1, rows_at_start = rows_done WHERE id = $2 AND state = 'queued'")
                .bind(at)
                .bind(&job)
                .execute(&mut *tx)
                .await?;
            let info = sqlx::query("SELECT model, version, label, input_format, layout FROM batch_jobs WHERE id = $1")
                .bind(&job)
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(Some(Claim {
                job,
                seq,
                first_row: row.try_get("first_row")?,
                rows: row.try_get("rows")?,
                input: row.try_get("input")?,
                lease,
                previous: row.try_get("results")?,
                previous_failed: row.try_get("failed")?,
                attempts: row.try_get::<i32, _>("attempts")? as u32,
                model: info.try_get("model")?,
                version: info.try_get("version")?,
                label: info.try_get("label")?,
                input_format: format_of(&info.try_get::<String, _>("input_format")?)?,
                layout: info.try_get("layout")?,
            }))
        })
    }

    /// Extends a claim by `for_`; false when it is no longer held (it ran out and was taken,
    /// or a retry of its job put it back).
    pub async fn renew_claim(&self, claim: &Claim, for_: Duration) -> Result<bool> {
        let until = after(for_);
        on_pool!(self, pool => {
            let renewed = sqlx::query("UPDATE batch_chunks SET lease_until = $1 WHERE job = $2 AND seq = $3 AND lease = $4 AND state = 'running'")
                .bind(until)
                .bind(&claim.job)
                .bind(claim.seq)
                .bind(&claim.lease)
                .execute(pool)
                .await?
                .rows_affected();
            Ok(renewed == 1)
        })
    }

    /// Stores a claimed chunk's results (one line per row, `failed` of them errors) and marks
    /// it done, when the claim still holds it; the job's counts follow in the same
    /// transaction, and the job succeeds with its last chunk. False (nothing written) when the
    /// claim was lost.
    pub async fn complete_chunk(&self, claim: &Claim, results: &[u8], failed: i64) -> Result<bool> {
        let at = now();
        // A retried chunk ran its failed rows again; a first run ran them all.
        let ran = if claim.previous.is_some() {
            claim.previous_failed
        } else {
            claim.rows
        };
        on_pool!(self, pool => {
            let mut tx = pool.begin_with(self.write_begin()).await?;
            // The job's row first, as a retry takes it: a retry then sees every chunk stored
            // before it or none of this one (SQLite's single writer does the same).
            if self.backend() == Backend::Postgres {
                sqlx::query("SELECT id FROM batch_jobs WHERE id = $1 FOR UPDATE")
                    .bind(&claim.job)
                    .execute(&mut *tx)
                    .await?;
            }
            let done = sqlx::query("UPDATE batch_chunks SET state = 'done', results = $1, failed = $2, lease = NULL, lease_until = NULL WHERE job = $3 AND seq = $4 AND lease = $5 AND state = 'running'")
                .bind(results)
                .bind(failed)
                .bind(&claim.job)
                .bind(claim.seq)
                .bind(&claim.lease)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if done != 1 {
                tx.rollback().await?;
                return Ok(false);
            }
            sqlx::query("UPDATE batch_jobs SET rows_done = rows_done + $1, rows_failed = rows_failed + $2, chunks_done = chunks_done + 1 WHERE id = $3")
                .bind(ran)
                .bind(failed)
                .bind(&claim.job)
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE batch_jobs SET state = 'succeeded', finished_at = $1 WHERE id = $2 AND state = 'running' AND chunks_done = chunks_total")
                .bind(at)
                .bind(&claim.job)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(true)
        })
    }

    /// Puts a claimed chunk back, to be claimed again no sooner than `after_` from now (its
    /// rows could not run: no worker answered).
    pub async fn release_claim(&self, claim: &Claim, after_: Duration) -> Result<()> {
        let not_before = after(after_);
        on_pool!(self, pool => {
            sqlx::query("UPDATE batch_chunks SET state = 'pending', lease = NULL, lease_until = NULL, not_before = $1 WHERE job = $2 AND seq = $3 AND lease = $4 AND state = 'running'")
                .bind(not_before)
                .bind(&claim.job)
                .bind(claim.seq)
                .bind(&claim.lease)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Ends a job that cannot run (its model or version is gone), with `error`; false when it
    /// had ended already.
    pub async fn fail_job(&self, job: &str, error: &str) -> Result<bool> {
        self.end_job(job, JobState::Failed, error).await
    }

    /// Cancels a job that has not ended: no chunk of it is claimed again, and a running
    /// chunk's results are still kept. False when it had ended already.
    pub async fn cancel_job(&self, job: &str, why: &str) -> Result<bool> {
        self.end_job(job, JobState::Cancelled, why).await
    }

    async fn end_job(&self, job: &str, state: JobState, error: &str) -> Result<bool> {
        let at = now();
        on_pool!(self, pool => {
            let ended = sqlx::query("UPDATE batch_jobs SET state = $1, error = $2, finished_at = $3 WHERE id = $4 AND state IN ('queued', 'running')")
                .bind(state.as_str())
                .bind(error)
                .bind(at)
                .bind(job)
                .execute(pool)
                .await?
                .rows_affected();
            Ok(ended == 1)
        })
    }

    /// Runs a job's failed rows again, and the rows a cancel or a failure left unrun: its
    /// chunks with failed rows go back to pending (their other rows keep their results) and
    /// the job is queued again. False when the job has not ended, or has nothing to run.
    pub async fn retry_job(&self, job: &str) -> Result<bool> {
        let at = now();
        on_pool!(self, pool => {
            let mut tx = pool.begin_with(self.write_begin()).await?;
            let lock = match self.backend() {
                Backend::Postgres => " FOR UPDATE",
                Backend::Sqlite => "",
            };
            // Locked until the end: no chunk is stored meanwhile, and a second retry waits,
            // then finds the job queued.
            let state: Option<String> = sqlx::query_scalar(&format!("SELECT state FROM batch_jobs WHERE id = $1{lock}"))
                .bind(job)
                .fetch_optional(&mut *tx)
                .await?;
            if !matches!(state.as_deref(), Some("succeeded" | "failed" | "cancelled")) {
                tx.rollback().await?;
                return Ok(false);
            }
            let again: (i64, i64) = {
                let row = sqlx::query("SELECT CAST(COALESCE(SUM(failed), 0) AS BIGINT) AS failed, COUNT(*) AS chunks FROM batch_chunks WHERE job = $1 AND state = 'done' AND failed > 0")
                    .bind(job)
                    .fetch_one(&mut *tx)
                    .await?;
                (row.try_get("failed")?, row.try_get("chunks")?)
            };
            let unrun: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM batch_chunks WHERE job = $1 AND state <> 'done'")
                .bind(job)
                .fetch_one(&mut *tx)
                .await?;
            let failed = again.0;
            if again.1 == 0 && unrun == 0 {
                tx.rollback().await?;
                return Ok(false);
            }
            sqlx::query("UPDATE batch_chunks SET state = 'pending', lease = NULL, lease_until = NULL, not_before = NULL WHERE job = $1 AND (state <> 'done' OR failed > 0)")
                .bind(job)
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE batch_jobs SET state = 'queued', error = NULL, finished_at = NULL, started_at = NULL, rows_done = rows_done - $1, rows_failed = rows_failed - $1, chunks_done = chunks_done - $2 WHERE id = $3")
                .bind(failed)
                .bind(again.1)
                .bind(job)
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE batch_jobs SET updated_at = $1 WHERE id = $2")
                .bind(at)
                .bind(job)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(true)
        })
    }

    /// Up to `limit` chunks of a job after `after_seq`, in order, with their results when done.
    pub async fn chunk_results(
        &self,
        job: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<ChunkResults>> {
        on_pool!(self, pool => {
            let rows = sqlx::query("SELECT seq, first_row, rows, CASE WHEN state = 'done' THEN results END AS results FROM batch_chunks WHERE job = $1 AND seq > $2 ORDER BY seq LIMIT $3")
                .bind(job)
                .bind(after_seq)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(ChunkResults {
                        seq: r.try_get("seq")?,
                        first_row: r.try_get("first_row")?,
                        rows: r.try_get("rows")?,
                        results: r.try_get("results")?,
                    })
                })
                .collect()
        })
    }

    /// Removes jobs that ended more than `keep` ago, and uploads that received nothing for
    /// `abandoned_after` (their process died, or their client went away unnoticed).
    pub async fn expire_jobs(&self, keep: Duration, abandoned_after: Duration) -> Result<Expired> {
        Ok(Expired {
            ended: self
                .delete_jobs_where(
                    "state IN ('succeeded', 'failed', 'cancelled') AND finished_at < $1",
                    before(keep),
                )
                .await?,
            abandoned: self
                .delete_jobs_where(
                    "state = 'uploading' AND updated_at < $1",
                    before(abandoned_after),
                )
                .await?,
        })
    }

    /// Removes the jobs (and their chunks) that `condition`, on a time bound to `$1`, selects;
    /// returns how many.
    async fn delete_jobs_where(&self, condition: &str, at: DateTime<Utc>) -> Result<u64> {
        let sql = format!("SELECT id FROM batch_jobs WHERE {condition}");
        let ids: Vec<String> = on_pool!(self, pool => {
            sqlx::query_scalar(&sql).bind(at).fetch_all(pool).await?
        });
        for id in &ids {
            self.delete_job(id).await?;
        }
        Ok(ids.len() as u64)
    }
}
