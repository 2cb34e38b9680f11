//! The prediction log table: batched inserts (on PostgreSQL a COPY, through a staging table that
//! skips the records stored already when a batch is replayed), day partitions on PostgreSQL, and
//! retention.

use crate::sealing::{DataKeys, SealError, Sealed};
use crate::{on_pool, Pool, Result, Store, StoreError};
use chrono::{DateTime, Days, NaiveDate, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use sqlx::Row;

/// One logged prediction. `id` is made when the prediction is accepted into the log, so a
/// record written twice (a replay after an answer was lost) is recognised and stored once.
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
    /// Request and response sealed with a data key, in their place, when one is configured
    /// (`request` and `response` are then empty until [`PredictionRecord::open`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<Sealed>,
    /// A shadow version's answer to a copy of the request `request_id`, stored beside the
    /// served one (the request's payload is that record's).
    #[serde(default)]
    pub shadow: bool,
}

impl PredictionRecord {
    /// Seals the payloads with the newest of `keys`: they move from `request` and `response`
    /// into `sealed`. A record without payloads is left as it is.
    pub fn seal(&mut self, keys: &DataKeys) {
        if self.request.is_none() && self.response.is_none() {
            return;
        }
        let sealed = keys.seal(&self.id, self.request.as_deref(), self.response.as_deref());
        self.request = None;
        self.response = None;
        self.sealed = Some(sealed);
    }

    /// Opens sealed payloads back into `request` and `response`.
    pub fn open(&mut self, keys: &DataKeys) -> std::result::Result<(), SealError> {
        if let Some(sealed) = &self.sealed {
            let (request, response) = keys.open(&self.id, sealed)?;
            self.request = request;
            self.response = response;
            self.sealed = None;
        }
        Ok(())
    }
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
    "id, at, request_id, model, version, api_key, status, latency_us, request, response, data_key, sealed, shadow";

fn partition_name(day: NaiveDate) -> String {
    format!("predictions_p{}", day.format("%Y%m%d"))
}

/// Microseconds from the Unix epoch to PostgreSQL's, 2000-01-01 00:00:00 UTC.
const PG_EPOCH_US: i64 = 946_684_800_000_000;

/// Encodes records as the data of `COPY predictions (COLUMNS) FROM STDIN (FORMAT binary)`: the
/// signature, each row as its field count and each field's length (-1 for NULL) and bytes, then
/// -1. Each field is in the column type's binary form: uuid as its 16 bytes, timestamptz as
/// microseconds since 2000-01-01 UTC (finer digits dropped), smallint and bigint big-endian,
/// text and json as their UTF-8 text, bytea as its bytes, boolean as one byte. The database reads this without parsing numbers, dates
/// or ids from text, and nothing needs escaping.
fn copy_binary(records: &[PredictionRecord]) -> Vec<u8> {
    fn field(out: &mut Vec<u8>, value: Option<&[u8]>) {
        match value {
            Some(bytes) => {
                // PostgreSQL takes no value over 1 GiB, and requests are far smaller. One over
                // 2 GiB would be cut at its length here, and the database would refuse its row
                // (the writer sets such a record aside).
                let len = i32::try_from(bytes.len()).unwrap_or(i32::MAX);
                let bytes = &bytes[..len as usize];
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(bytes);
            }
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    let size: usize = records
        .iter()
        .map(|r| {
            100 + r.request_id.len()
                + r.model.len()
                + r.version.len()
                + r.api_key.as_ref().map_or(0, String::len)
                + r.request.as_ref().map_or(0, String::len)
                + r.response.as_ref().map_or(0, String::len)
                + r.sealed.as_ref().map_or(0, |s| s.key.len() + s.data.len())
        })
        .sum();
    let mut out = Vec::with_capacity(21 + size);
    // Signature, flags (no OIDs), header extension length.
    out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    out.extend_from_slice(&0i32.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
    for r in records {
        out.extend_from_slice(&13i16.to_be_bytes());
        let at = r.at.timestamp_micros() - PG_EPOCH_US;
        // HTTP statuses are three digits; a latency past i64 would be 292,000 years.
        let status = i16::try_from(r.status).unwrap_or(i16::MAX);
        let latency = i64::try_from(r.latency_us).unwrap_or(i64::MAX);
        field(&mut out, Some(r.id.as_bytes()));
        field(&mut out, Some(&at.to_be_bytes()));
        field(&mut out, Some(r.request_id.as_bytes()));
        field(&mut out, Some(r.model.as_bytes()));
        field(&mut out, Some(r.version.as_bytes()));
        field(&mut out, r.api_key.as_deref().map(str::as_bytes));
        field(&mut out, Some(&status.to_be_bytes()));
        field(&mut out, Some(&latency.to_be_bytes()));
        field(&mut out, r.request.as_deref().map(str::as_bytes));
        field(&mut out, r.response.as_deref().map(str::as_bytes));
        field(&mut out, r.sealed.as_ref().map(|s| s.key.as_bytes()));
        field(&mut out, r.sealed.as_ref().map(|s| s.data.as_slice()));
        field(&mut out, Some(&[u8::from(r.shadow)]));
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    out
}

/// SQLSTATE of a row no partition accepts (a check violation; the table has no other checks).
const NO_PARTITION: &str = "23514";

fn has_code(e: &StoreError, code: &str) -> bool {
    matches!(e, StoreError::Database(sqlx::Error::Database(e)) if e.code().as_deref() == Some(code))
}

/// Copies binary COPY rows ([`copy_binary`]) straight into the log; returns how many were stored.
async fn copy_direct(pool: &sqlx::PgPool, data: &[u8]) -> Result<u64> {
    let mut conn = pool.acquire().await?;
    let mut copy = conn
        .copy_in_raw(&format!(
            "COPY predictions ({COLUMNS}) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    copy.send(data).await?;
    Ok(copy.finish().await?)
}

/// Stores binary COPY rows of `records`, skipping the ones stored already (same id and time) and
/// repeats within them; returns how many were new. The rows go to a staging table first, and
/// only those not found in the log move on, in one transaction. The log has no index on ids: the
/// lookup reads the pages the BRIN index on `at` gives for the records' time range, which is
/// short for a batch, since records are written in the order they arrive.
async fn copy_staged(
    pool: &sqlx::PgPool,
    records: &[PredictionRecord],
    data: &[u8],
) -> Result<u64> {
    let (Some(from), Some(to)) = (
        records.iter().map(|r| r.at).min(),
        records.iter().map(|r| r.at).max(),
    ) else {
        return Ok(0);
    };
    let mut tx = pool.begin().await?;
    sqlx::query("CREATE TEMP TABLE predictions_in (LIKE predictions) ON COMMIT DROP")
        .execute(&mut *tx)
        .await?;
    let mut copy = tx
        .copy_in_raw(&format!(
            "COPY predictions_in ({COLUMNS}) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    copy.send(data).await?;
    copy.finish().await?;
    // The bounds are whole microseconds around the stored times (which drop finer digits).
    let new = sqlx::query(&format!(
        "INSERT INTO predictions ({COLUMNS}) SELECT DISTINCT ON (id, at) {COLUMNS} FROM predictions_in s \
         WHERE NOT EXISTS (SELECT 1 FROM predictions p \
         WHERE p.at >= $1 AND p.at <= $2 AND p.id = s.id AND p.at = s.at)"
    ))
    .bind(from.trunc_subsecs(6))
    .bind(to.trunc_subsecs(6))
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(new)
}

/// Which records [`Store::predictions_page`] reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PredictionQuery {
    /// Only this model's records; all when `None`.
    pub model: Option<String>,
    /// From this time on (included).
    pub since: Option<DateTime<Utc>>,
    /// Up to this time (excluded).
    pub until: Option<DateTime<Utc>>,
    /// After this record: its time and id, as the last record of the page before.
    pub after: Option<(DateTime<Utc>, uuid::Uuid)>,
    /// Most records to return.
    pub limit: u32,
}

/// Reads a record from a row of [`Store::select_columns`].
fn record_from_row<R: Row>(r: &R) -> Result<PredictionRecord>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<Vec<u8>>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> DateTime<Utc>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i16: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> bool: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let id: String = r.try_get("id")?;
    let data_key: Option<String> = r.try_get("data_key")?;
    let sealed: Option<Vec<u8>> = r.try_get("sealed")?;
    let sealed = match (data_key, sealed) {
        (Some(key), Some(data)) => Some(Sealed { key, data }),
        (None, None) => None,
        _ => {
            return Err(StoreError::Corrupt(format!(
            "prediction {id}: a sealed payload without its key id, or a key id without a payload"
        )))
        }
    };
    Ok(PredictionRecord {
        id: id
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("prediction id {id}: {e}")))?,
        at: r.try_get("at")?,
        request_id: r.try_get("request_id")?,
        model: r.try_get("model")?,
        version: r.try_get("version")?,
        api_key: r.try_get("api_key")?,
        status: r.try_get::<i16, _>("status")? as u16,
        latency_us: r.try_get::<i64, _>("latency_us")? as u64,
        request: r.try_get("request")?,
        response: r.try_get("response")?,
        sealed,
        shadow: r.try_get("shadow")?,
    })
}

/// Whether a batch's records may be in the log already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Records never handed to the database before: stored as they are, without looking for
    /// copies (on PostgreSQL a plain COPY, the cheapest write there is).
    First,
    /// Records handed over before without a known outcome (a replay from the spool after an
    /// error, when the batch may have been committed all the same): those stored already are
    /// skipped, so a record is stored once however often it is replayed.
    Retry,
}

impl Store {
    /// Inserts records; with [`Delivery::Retry`], skipping any already stored (same id and time).
    /// Returns how many were new. All or nothing: on error none of them is stored.
    pub async fn insert_predictions(
        &self,
        records: &[PredictionRecord],
        delivery: Delivery,
    ) -> Result<u64> {
        if records.is_empty() {
            return Ok(0);
        }
        match &self.pool {
            Pool::Postgres(pool) => {
                self.ensure_partitions(records).await?;
                let data = copy_binary(records);
                let copy = || async {
                    match delivery {
                        Delivery::First => copy_direct(pool, &data).await,
                        Delivery::Retry => copy_staged(pool, records, &data).await,
                    }
                };
                match copy().await {
                    // No partition for a row: another process (retention) dropped a day this
                    // handle remembers making. Make the days again and retry once.
                    Err(e) if has_code(&e, NO_PARTITION) => {
                        self.forget_partitions(records);
                        self.ensure_partitions(records).await?;
                        copy().await
                    }
                    result => result,
                }
            }
            // SQLite keys the table by id, which skips a copy whatever the delivery.
            Pool::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                let mut new = 0;
                for r in records {
                    new += sqlx::query(&format!(
                        "INSERT INTO predictions ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) ON CONFLICT (id) DO NOTHING"
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
                    .bind(r.sealed.as_ref().map(|s| &s.key))
                    .bind(r.sealed.as_ref().map(|s| &s.data))
                    .bind(r.shadow)
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

    /// The newest records of a model, newest first, as stored (sealed payloads stay sealed).
    pub async fn recent_predictions(
        &self,
        model: &str,
        limit: u32,
    ) -> Result<Vec<PredictionRecord>> {
        let sql = format!(
            "SELECT {} FROM predictions WHERE model = $1 ORDER BY at DESC LIMIT $2",
            self.select_columns()
        );
        on_pool!(self, pool => {
            let rows = sqlx::query(&sql).bind(model).bind(limit as i64).fetch_all(pool).await?;
            rows.iter().map(record_from_row).collect()
        })
    }

    /// Records in the order they arrived (by time, then id), as stored: those of `model` (or
    /// all) from `since` up to `until` (excluded), after the record `after` (a position from
    /// an earlier page), at most `limit`. Reading page after page with the last record's
    /// position walks the whole range once.
    pub async fn predictions_page(&self, query: &PredictionQuery) -> Result<Vec<PredictionRecord>> {
        let (after_at, after_id) = match &query.after {
            Some((at, id)) => (Some(at.trunc_subsecs(6)), Some(*id)),
            None => (None, None),
        };
        let after_id = after_id.map(|id| id.to_string());
        // SQLite keeps ids as text, PostgreSQL as uuid: compare in the column's own type.
        let id_type = match self.backend() {
            crate::Backend::Postgres => "::uuid",
            crate::Backend::Sqlite => "",
        };
        let sql = format!(
            "SELECT {} FROM predictions WHERE ($1 IS NULL OR model = $1) \
             AND ($2 IS NULL OR at >= $2) AND ($3 IS NULL OR at < $3) \
             AND ($4 IS NULL OR at > $4 OR (at = $4 AND id > $5{id_type})) \
             ORDER BY at, id LIMIT $6",
            self.select_columns()
        );
        on_pool!(self, pool => {
            let rows = sqlx::query(&sql)
                .bind(query.model.as_deref())
                .bind(query.since)
                .bind(query.until)
                .bind(after_at)
                .bind(after_id)
                .bind(i64::from(query.limit))
                .fetch_all(pool)
                .await?;
            rows.iter().map(record_from_row).collect()
        })
    }

    /// The columns of a record as [`record_from_row`] reads them on this backend.
    fn select_columns(&self) -> &'static str {
        match self.backend() {
            crate::Backend::Postgres => "id::text AS id, at, request_id, model, version, api_key, status, latency_us, request, response, data_key, sealed, shadow",
            crate::Backend::Sqlite => COLUMNS,
        }
    }

    /// Removes predictions from before the start of the day `keep_days` days before today (UTC):
    /// whole day partitions are dropped on PostgreSQL, rows deleted on SQLite. Audited as
    /// `actor`.
    pub async fn apply_retention(
        &self,
        keep_days: u32,
        actor: &crate::Actor,
    ) -> Result<RetentionReport> {
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
    fn copy_binary_lays_out_the_header_rows_and_trailer() {
        let record = PredictionRecord {
            id: uuid::Uuid::from_u128(0x0102030405060708090a0b0c0d0e0f10),
            // One second and 7.5 microseconds after PostgreSQL's epoch.
            at: DateTime::from_timestamp(946_684_801, 7_500).unwrap(),
            request_id: "r\t".into(),
            model: "m".into(),
            version: "1".into(),
            api_key: None,
            status: 503,
            latency_us: 70_000,
            request: Some("{}".into()),
            response: None,
            sealed: None,
            shadow: true,
        };
        let data = copy_binary(std::slice::from_ref(&record));
        let mut want: Vec<u8> = b"PGCOPY\n\xff\r\n\0".to_vec();
        want.extend([0, 0, 0, 0, 0, 0, 0, 0]);
        want.extend([0, 13]);
        want.extend([0, 0, 0, 16]);
        want.extend(1..=16u8);
        want.extend([0, 0, 0, 8]);
        want.extend(1_000_007i64.to_be_bytes());
        want.extend([0, 0, 0, 2]);
        want.extend(b"r\t");
        want.extend([0, 0, 0, 1, b'm']);
        want.extend([0, 0, 0, 1, b'1']);
        want.extend((-1i32).to_be_bytes());
        want.extend([0, 0, 0, 2]);
        want.extend(503i16.to_be_bytes());
        want.extend([0, 0, 0, 8]);
        want.extend(70_000i64.to_be_bytes());
        want.extend([0, 0, 0, 2, b'{', b'}']);
        // No response, nothing sealed, a shadow's answer.
        want.extend((-1i32).to_be_bytes());
        want.extend((-1i32).to_be_bytes());
        want.extend((-1i32).to_be_bytes());
        want.extend([0, 0, 0, 1, 1]);
        want.extend((-1i16).to_be_bytes());
        assert_eq!(data, want);
        // No rows: the header and the trailer.
        assert_eq!(copy_binary(&[]).len(), 19 + 2);
    }

    #[test]
    fn copy_binary_counts_time_from_2000_and_drops_nanoseconds() {
        let at = |secs, nanos| {
            let r = PredictionRecord {
                at: DateTime::from_timestamp(secs, nanos).unwrap(),
                id: uuid::Uuid::nil(),
                request_id: String::new(),
                model: String::new(),
                version: String::new(),
                api_key: None,
                status: 200,
                latency_us: 0,
                request: None,
                response: None,
                sealed: None,
                shadow: false,
            };
            let data = copy_binary(&[r]);
            // Header, field count, the id's length and bytes, the time's length.
            let start = 19 + 2 + 4 + 16 + 4;
            i64::from_be_bytes(data[start..start + 8].try_into().unwrap())
        };
        assert_eq!(at(946_684_800, 0), 0);
        assert_eq!(at(946_684_800, 999), 0);
        assert_eq!(at(946_684_799, 999_999_999), -1);
        // Before 1970 too, whole microseconds rounded down: -0.4999995 s is -500,000 µs.
        assert_eq!(at(-1, 500_000_500), -946_684_800_500_000);
    }
}
