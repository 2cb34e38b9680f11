//! The prediction log table: batched, idempotent inserts (on PostgreSQL a COPY, through a
//! staging table when some records may be stored already), day partitions on PostgreSQL, and
//! retention.

use crate::{on_pool, Pool, Result, Store, StoreError};
use chrono::{DateTime, Days, NaiveDate, SecondsFormat, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use sqlx::Row;

/// One logged prediction. `id` is made when the prediction is accepted into the log, so a
/// record written twice (a replay after an answer was lost) is stored once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictionRecord {
    /// Unique id of this record.
    pub id: uuid::Uuid,
    /// When the request arrived; stored to the microsecond (finer digits are dropped).
    pub at: DateTime<Utc>,
    /// The request id (`X-Request-ID`).
    pub request_id: String,
    /// Model name.
    pub model: String,
    /// Version that answered.
    pub version: String,
    /// API key id, when the request carried one.
    pub api_key: Option<String>,
    /// HTTP status of the answer.
    pub status: u16,
    /// Time from arrival to answer, in microseconds.
    pub latency_us: u64,
    /// Request inputs as V2 JSON, in `full` mode.
    pub request: Option<String>,
    /// Response outputs as V2 JSON, in `full` mode.
    pub response: Option<String>,
}

/// What retention removed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RetentionReport {
    /// Day partitions dropped (PostgreSQL).
    pub partitions_dropped: Vec<String>,
    /// Rows deleted (SQLite).
    pub rows_deleted: u64,
}

const COLUMNS: &str =
    "id, at, request_id, model, version, api_key, status, latency_us, request, response";

fn partition_name(day: NaiveDate) -> String {
    format!("predictions_p{}", day.format("%Y%m%d"))
}

/// Escapes a value for COPY's text format. The runs between special characters (all of them
/// ASCII, so never inside a UTF-8 sequence) are copied whole.
fn copy_text(out: &mut String, value: Option<&str>) {
    let Some(value) = value else {
        out.push_str("\\N");
        return;
    };
    let mut start = 0;
    for (i, b) in value.bytes().enumerate() {
        let escaped = match b {
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            _ => continue,
        };
        out.push_str(&value[start..i]);
        out.push_str(escaped);
        start = i + 1;
    }
    out.push_str(&value[start..]);
}

/// SQLSTATE of a row no partition accepts (a check violation; the table has no other checks).
const NO_PARTITION: &str = "23514";
/// SQLSTATE of a duplicate key: a record stored already.
const DUPLICATE: &str = "23505";

fn has_code(e: &StoreError, code: &str) -> bool {
    matches!(e, StoreError::Database(sqlx::Error::Database(e)) if e.code().as_deref() == Some(code))
}

/// Copies COPY text rows straight into the log; fails as a whole with [`DUPLICATE`] when any
/// of them is stored already. Returns how many were stored.
async fn copy_direct(pool: &sqlx::PgPool, data: &[u8]) -> Result<u64> {
    let mut conn = pool.acquire().await?;
    let mut copy = conn
        .copy_in_raw(&format!("COPY predictions ({COLUMNS}) FROM STDIN"))
        .await?;
    copy.send(data).await?;
    Ok(copy.finish().await?)
}

/// Stores COPY text rows, skipping the ones stored already; returns how many were new. Records
/// are new but for a replay (a batch written again after its answer was lost), so the rows go
/// straight in first; only when that meets a duplicate do they go through a staging table and
/// an `INSERT ... ON CONFLICT DO NOTHING`, which costs the database about twice the work.
async fn copy_insert(pool: &sqlx::PgPool, data: &[u8]) -> Result<u64> {
    match copy_direct(pool, data).await {
        Err(e) if has_code(&e, DUPLICATE) => copy_staged(pool, data).await,
        result => result,
    }
}

/// Copies COPY text rows into a staging table and moves the ones not stored yet into the log,
/// in one transaction; returns how many were new.
async fn copy_staged(pool: &sqlx::PgPool, data: &[u8]) -> Result<u64> {
    let mut tx = pool.begin().await?;
    sqlx::query("CREATE TEMP TABLE predictions_in (LIKE predictions) ON COMMIT DROP")
        .execute(&mut *tx)
        .await?;
    let mut copy = tx
        .copy_in_raw(&format!("COPY predictions_in ({COLUMNS}) FROM STDIN"))
        .await?;
    copy.send(data).await?;
    copy.finish().await?;
    let new = sqlx::query(&format!(
        "INSERT INTO predictions ({COLUMNS}) SELECT {COLUMNS} FROM predictions_in ON CONFLICT DO NOTHING"
    ))
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(new)
}

impl Store {
    /// Inserts records, skipping any already stored (same id); returns how many were new.
    /// All or nothing: on error none of them is stored.
    pub async fn insert_predictions(&self, records: &[PredictionRecord]) -> Result<u64> {
        if records.is_empty() {
            return Ok(0);
        }
        match &self.pool {
            Pool::Postgres(pool) => {
                self.ensure_partitions(records).await?;
                let mut data = String::with_capacity(records.len() * 160);
                for r in records {
                    let fields = [
                        Some(r.id.to_string()),
                        Some(r.at.to_rfc3339_opts(SecondsFormat::Micros, true)),
                        Some(r.request_id.clone()),
                        Some(r.model.clone()),
                        Some(r.version.clone()),
                        r.api_key.clone(),
                        Some(r.status.to_string()),
                        Some(r.latency_us.to_string()),
                        r.request.clone(),
                        r.response.clone(),
                    ];
                    for (i, f) in fields.iter().enumerate() {
                        if i > 0 {
                            data.push('\t');
                        }
                        copy_text(&mut data, f.as_deref());
                    }
                    data.push('\n');
                }
                match copy_insert(pool, data.as_bytes()).await {
                    // No partition for a row: another process (retention) dropped a day this
                    // handle remembers making. Make the days again and retry once.
                    Err(e) if has_code(&e, NO_PARTITION) => {
                        self.forget_partitions(records);
                        self.ensure_partitions(records).await?;
                        copy_insert(pool, data.as_bytes()).await
                    }
                    result => result,
                }
            }
            Pool::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                let mut new = 0;
                for r in records {
                    new += sqlx::query(&format!(
                        "INSERT INTO predictions ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (id) DO NOTHING"
                    ))
                    .bind(r.id.to_string())
                    .bind(r.at.trunc_subsecs(6))
                    .bind(&r.request_id)
                    .bind(&r.model)
                    .bind(&r.version)
                    .bind(&r.api_key)
                    .bind(r.status as i64)
                    .bind(r.latency_us as i64)
                    .bind(&r.request)
                    .bind(&r.response)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                }
                tx.commit().await?;
                Ok(new)
            }
        }
    }

    /// Forgets that the records' day partitions exist, so the next insert makes them again.
    fn forget_partitions(&self, records: &[PredictionRecord]) {
        let mut known = self.partitions.lock().expect("partitions lock");
        for r in records {
            known.remove(&r.at.date_naive());
        }
    }

    /// Creates the day partitions the records fall in, once per day per process.
    async fn ensure_partitions(&self, records: &[PredictionRecord]) -> Result<()> {
        let Pool::Postgres(pool) = &self.pool else {
            return Ok(());
        };
        let mut days: Vec<NaiveDate> = records.iter().map(|r| r.at.date_naive()).collect();
        days.sort_unstable();
        days.dedup();
        for day in days {
            if self
                .partitions
                .lock()
                .expect("partitions lock")
                .contains(&day)
            {
                continue;
            }
            let next = day + Days::new(1);
            let sql = format!(
                "CREATE TABLE IF NOT EXISTS {} PARTITION OF predictions FOR VALUES FROM ('{day} 00:00:00+00') TO ('{next} 00:00:00+00')",
                partition_name(day)
            );
            if let Err(e) = sqlx::query(&sql).execute(pool).await {
                // Another replica may have created it between our check and our statement.
                let exists: bool =
                    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_class WHERE relname = $1)")
                        .bind(partition_name(day))
                        .fetch_one(pool)
                        .await?;
                if !exists {
                    return Err(e.into());
                }
            }
            self.partitions.lock().expect("partitions lock").insert(day);
        }
        Ok(())
    }

    /// Rows in the prediction log, for one model or all.
    pub async fn prediction_count(&self, model: Option<&str>) -> Result<u64> {
        let n: i64 = on_pool!(self, pool => {
            sqlx::query_scalar("SELECT COUNT(*) FROM predictions WHERE $1 IS NULL OR model = $1")
                .bind(model)
                .fetch_one(pool)
                .await?
        });
        Ok(n as u64)
    }

    /// The newest records of a model, newest first.
    pub async fn recent_predictions(
        &self,
        model: &str,
        limit: u32,
    ) -> Result<Vec<PredictionRecord>> {
        on_pool!(self, pool => {
            let sql = match self.backend() {
                crate::Backend::Postgres => "SELECT id::text AS id, at, request_id, model, version, api_key, status, latency_us, request::text AS request, response::text AS response FROM predictions WHERE model = $1 ORDER BY at DESC LIMIT $2".to_string(),
                crate::Backend::Sqlite => format!("SELECT {COLUMNS} FROM predictions WHERE model = $1 ORDER BY at DESC LIMIT $2"),
            };
            let rows = sqlx::query(&sql).bind(model).bind(limit as i64).fetch_all(pool).await?;
            rows.iter()
                .map(|r| -> Result<PredictionRecord> {
                    let id: String = r.try_get("id")?;
                    Ok(PredictionRecord {
                        id: id.parse().map_err(|e| crate::StoreError::Corrupt(format!("prediction id {id}: {e}")))?,
                        at: r.try_get("at")?,
                        request_id: r.try_get("request_id")?,
                        model: r.try_get("model")?,
                        version: r.try_get("version")?,
                        api_key: r.try_get("api_key")?,
                        status: r.try_get::<i16, _>("status")? as u16,
                        latency_us: r.try_get::<i64, _>("latency_us")? as u64,
                        request: r.try_get("request")?,
                        response: r.try_get("response")?,
                    })
                })
                .collect()
        })
    }

    /// Removes predictions from before the start of the day `keep_days` days before today (UTC):
    /// whole day partitions are dropped on PostgreSQL, rows deleted on SQLite. Audited as
    /// `actor`.
    pub async fn apply_retention(&self, keep_days: u32, actor: &str) -> Result<RetentionReport> {
        let cutoff = Utc::now().date_naive() - Days::new(keep_days as u64);
        let mut report = RetentionReport::default();
        match &self.pool {
            Pool::Postgres(pool) => {
                let names: Vec<String> = sqlx::query_scalar(
                    "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
                     JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'predictions' ORDER BY 1",
                )
                .fetch_all(pool)
                .await?;
                for name in names {
                    let Some(day) = name
                        .strip_prefix("predictions_p")
                        .and_then(|d| NaiveDate::parse_from_str(d, "%Y%m%d").ok())
                    else {
                        continue;
                    };
                    if day < cutoff {
                        // The name was read back from the catalogue and matched our pattern.
                        sqlx::query(&format!("DROP TABLE IF EXISTS {name}"))
                            .execute(pool)
                            .await?;
                        self.partitions
                            .lock()
                            .expect("partitions lock")
                            .remove(&day);
                        report.partitions_dropped.push(name);
                    }
                }
            }
            Pool::Sqlite(pool) => {
                let cutoff = cutoff.and_hms_opt(0, 0, 0).expect("midnight").and_utc();
                report.rows_deleted = sqlx::query("DELETE FROM predictions WHERE at < $1")
                    .bind(cutoff)
                    .execute(pool)
                    .await?
                    .rows_affected();
            }
        }
        let detail = serde_json::json!({"keep_days": keep_days, "report": &report}).to_string();
        self.audit(actor, "retention", None, &detail).await?;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_escapes_what_copy_reads_specially() {
        let mut out = String::new();
        copy_text(&mut out, Some("a\tb\nc\\d\re"));
        out.push('|');
        copy_text(&mut out, None);
        assert_eq!(out, "a\\tb\\nc\\\\d\\re|\\N");
        let mut out = String::new();
        copy_text(&mut out, Some("naïve\t日本語 🎉\\"));
        assert_eq!(out, "naïve\\t日本語 🎉\\\\");
    }
}
