//! Model files, stored in the database in chunks and addressed by their SHA-256.

use crate::{now, on_pool, Result, Store, StoreError};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::Path;

/// Bytes per stored chunk: small enough for any driver, large enough to keep rows few.
const CHUNK: usize = 1 << 20;

/// SHA-256 (lowercase hex) and size of a file, read in chunks.
pub fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), size))
}

impl Store {
    /// Whether an artifact with this hash is stored.
    pub async fn has_artifact(&self, sha256: &str) -> Result<bool> {
        Ok(on_pool!(self, pool => {
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM artifacts WHERE sha256 = $1)")
                .bind(sha256)
                .fetch_one(pool)
                .await?
        }))
    }

    /// Writes an artifact to `dest`, chunk by chunk, through a temporary file beside it that is
    /// renamed into place only once its size and hash match. Returns the size.
    pub async fn fetch_artifact(&self, sha256: &str, dest: &Path) -> Result<u64> {
        fetch_artifact_to(self, sha256, dest).await
    }
}

/// The row count of a statement's result, which sqlx offers per backend only.
pub(crate) trait RowsAffected {
    /// Rows the statement changed.
    fn rows(&self) -> u64;
}

impl RowsAffected for sqlx::postgres::PgQueryResult {
    fn rows(&self) -> u64 {
        self.rows_affected()
    }
}

impl RowsAffected for sqlx::sqlite::SqliteQueryResult {
    fn rows(&self) -> u64 {
        self.rows_affected()
    }
}

/// Stores a file under its hash unless it is stored already; returns whether it stored it. Runs
/// on the caller's transaction, so the chunks are kept only if the whole change commits. The
/// caller has hashed the file; a file that changed since is refused.
pub(crate) async fn put_artifact_in<DB>(
    tx: &mut sqlx::Transaction<'_, DB>,
    file: &Path,
    sha256: &str,
    size: u64,
) -> Result<bool>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i32: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> DateTime<Utc>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Vec<u8>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    DB::QueryResult: RowsAffected,
{
    let chunks = size.div_ceil(CHUNK as u64).max(1);
    let inserted = sqlx::query("INSERT INTO artifacts (sha256, size, chunks, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (sha256) DO NOTHING")
        .bind(sha256)
        .bind(size as i64)
        .bind(chunks as i32)
        .bind(now())
        .execute(&mut **tx)
        .await?
        .rows();
    if inserted == 0 {
        return Ok(false);
    }
    let mut reader = std::fs::File::open(file)?;
    let mut hasher = Sha256::new();
    for seq in 0..chunks {
        let mut buf = Vec::with_capacity(CHUNK);
        (&mut reader).take(CHUNK as u64).read_to_end(&mut buf)?;
        hasher.update(&buf);
        sqlx::query("INSERT INTO artifact_chunks (sha256, seq, data) VALUES ($1, $2, $3)")
            .bind(sha256)
            .bind(seq as i32)
            .bind(buf)
            .execute(&mut **tx)
            .await?;
    }
    let got = hex::encode(hasher.finalize());
    if got != sha256 {
        return Err(StoreError::Artifact {
            sha256: sha256.to_string(),
            reason: format!("the file changed while it was stored (now {got})"),
        });
    }
    Ok(true)
}

/// See [`Store::fetch_artifact`].
pub async fn fetch_artifact_to(store: &Store, sha256: &str, dest: &Path) -> Result<u64> {
    let missing = || StoreError::Artifact {
        sha256: sha256.to_string(),
        reason: "not stored".into(),
    };
    let (size, chunks): (i64, i32) = on_pool!(store, pool => {
        sqlx::query_as("SELECT size, chunks FROM artifacts WHERE sha256 = $1")
            .bind(sha256)
            .fetch_optional(pool)
            .await?
            .ok_or_else(missing)?
    });
    let dir = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.part", uuid::Uuid::new_v4()));
    let result = async {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        let mut hasher = Sha256::new();
        let mut written = 0u64;
        for seq in 0..chunks {
            let data: Vec<u8> = on_pool!(store, pool => {
                sqlx::query_scalar("SELECT data FROM artifact_chunks WHERE sha256 = $1 AND seq = $2")
                    .bind(sha256)
                    .bind(seq)
                    .fetch_optional(pool)
                    .await?
                    .ok_or_else(|| StoreError::Artifact {
                        sha256: sha256.to_string(),
                        reason: format!("chunk {seq} of {chunks} is missing"),
                    })?
            });
            hasher.update(&data);
            written += data.len() as u64;
            out.write_all(&data)?;
        }
        let got = hex::encode(hasher.finalize());
        if got != sha256 || written != size as u64 {
            return Err(StoreError::Artifact {
                sha256: sha256.to_string(),
                reason: format!("stored bytes hash to {got} ({written} bytes, expected {size})"),
            });
        }
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, dest)?;
        Ok(written)
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
