//! Shared set-up: migrated stores, files to push, and raw SQL for checking and tampering with
//! what the store wrote.

use sqlx::{Connection, PgConnection, SqliteConnection};
use std::path::PathBuf;
use vatic_schema::admin::{ModelVersionInfo, Signature};
use vatic_schema::{DataType, TensorMetadata};
use vatic_store::{ConnectOptions, NewVersion, Store};
use vatic_testkit::TestDb;

/// The backend's name, for assertion messages.
pub fn backend(db: &TestDb) -> &'static str {
    if db.is_postgres() {
        "postgres"
    } else {
        "sqlite"
    }
}

/// A store on `db`, migrated to the newest schema.
pub async fn migrated(db: &TestDb) -> Store {
    Store::open(&ConnectOptions::new(&db.url), true)
        .await
        .unwrap_or_else(|e| panic!("{}: open with migrate: {e}", backend(db)))
}

/// `len` reproducible pseudo-random bytes (xorshift64*), different for each seed.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A model file on disk, with its hash and size.
pub struct ModelFile {
    _dir: tempfile::TempDir,
    /// Where it is.
    pub path: PathBuf,
    /// Its SHA-256, lowercase hex.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// Writes `bytes` to a new temporary file.
pub fn model_file(bytes: &[u8]) -> ModelFile {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("model.onnx");
    std::fs::write(&path, bytes).expect("write model file");
    let (sha256, size) = vatic_store::sha256_file(&path).expect("hash model file");
    ModelFile {
        _dir: dir,
        path,
        sha256,
        size,
        bytes: bytes.to_vec(),
    }
}

/// The signature every pushed test version carries.
pub fn signature() -> Signature {
    Signature {
        inputs: vec![TensorMetadata {
            name: "input".into(),
            datatype: DataType::Fp32,
            shape: vec![-1, 30],
        }],
        outputs: vec![TensorMetadata {
            name: "label".into(),
            datatype: DataType::Int64,
            shape: vec![-1],
        }],
        batched: true,
    }
}

/// Pushes `file` as `model` (version `version`, or the next one) on behalf of `actor`.
pub async fn push(
    store: &Store,
    model: &str,
    version: Option<u64>,
    file: &ModelFile,
    actor: &str,
) -> vatic_store::Result<(ModelVersionInfo, bool)> {
    let signature = signature();
    let actor = &vatic_store::Actor::named(actor);
    store
        .push_version(&NewVersion {
            model,
            version,
            file: &file.path,
            sha256: &file.sha256,
            size: file.size,
            signature: &signature,
            config: "[batching]\nmax_batch_size = 8\n",
            actor,
        })
        .await
}

/// A direct connection to the test database, for statements the store has no API for.
pub enum Raw {
    /// PostgreSQL.
    Postgres(PgConnection),
    /// SQLite.
    Sqlite(SqliteConnection),
}

impl Raw {
    /// Connects to `db`.
    pub async fn connect(db: &TestDb) -> Raw {
        if db.is_postgres() {
            Raw::Postgres(
                PgConnection::connect(&db.url)
                    .await
                    .expect("raw connection"),
            )
        } else {
            Raw::Sqlite(
                SqliteConnection::connect(&db.url)
                    .await
                    .expect("raw connection"),
            )
        }
    }

    /// Runs one statement and returns the single integer it selects.
    pub async fn count(&mut self, sql: &str) -> i64 {
        match self {
            Raw::Postgres(c) => sqlx::query_scalar(sql).fetch_one(c).await,
            Raw::Sqlite(c) => sqlx::query_scalar(sql).fetch_one(c).await,
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Records a migration as applied, as sqlx itself would.
    pub async fn insert_migration(&mut self, version: i64, description: &str) {
        let sql = "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
                   VALUES ($1, $2, TRUE, $3, 0)";
        let checksum = vec![0u8; 48];
        match self {
            Raw::Postgres(c) => sqlx::query(sql)
                .bind(version)
                .bind(description)
                .bind(checksum)
                .execute(c)
                .await
                .map(drop),
            Raw::Sqlite(c) => sqlx::query(sql)
                .bind(version)
                .bind(description)
                .bind(checksum)
                .execute(c)
                .await
                .map(drop),
        }
        .expect("insert migration row");
    }

    /// One stored chunk of an artifact, if present.
    pub async fn chunk(&mut self, sha256: &str, seq: i32) -> Option<Vec<u8>> {
        let sql = "SELECT data FROM artifact_chunks WHERE sha256 = $1 AND seq = $2";
        match self {
            Raw::Postgres(c) => {
                sqlx::query_scalar(sql)
                    .bind(sha256)
                    .bind(seq)
                    .fetch_optional(c)
                    .await
            }
            Raw::Sqlite(c) => {
                sqlx::query_scalar(sql)
                    .bind(sha256)
                    .bind(seq)
                    .fetch_optional(c)
                    .await
            }
        }
        .expect("read chunk")
    }

    /// Overwrites one stored chunk of an artifact.
    pub async fn set_chunk(&mut self, sha256: &str, seq: i32, data: Vec<u8>) {
        let sql = "UPDATE artifact_chunks SET data = $1 WHERE sha256 = $2 AND seq = $3";
        let done = match self {
            Raw::Postgres(c) => sqlx::query(sql)
                .bind(data)
                .bind(sha256)
                .bind(seq)
                .execute(c)
                .await
                .map(|r| r.rows_affected()),
            Raw::Sqlite(c) => sqlx::query(sql)
                .bind(data)
                .bind(sha256)
                .bind(seq)
                .execute(c)
                .await
                .map(|r| r.rows_affected()),
        };
        assert_eq!(
            done.expect("update chunk"),
            1,
            "chunk {seq} of {sha256} updated"
        );
    }

    /// Runs a statement with one text parameter; returns the rows it changed.
    pub async fn execute(&mut self, sql: &str, param: &str) -> u64 {
        match self {
            Raw::Postgres(c) => sqlx::query(sql)
                .bind(param)
                .execute(c)
                .await
                .map(|r| r.rows_affected()),
            Raw::Sqlite(c) => sqlx::query(sql)
                .bind(param)
                .execute(c)
                .await
                .map(|r| r.rows_affected()),
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Sets a worker's last heartbeat to `at`.
    pub async fn set_heartbeat(&mut self, id: &str, at: chrono::DateTime<chrono::Utc>) {
        let sql = "UPDATE workers SET heartbeat_at = $1 WHERE id = $2";
        let done = match self {
            Raw::Postgres(c) => sqlx::query(sql)
                .bind(at)
                .bind(id)
                .execute(c)
                .await
                .map(|r| r.rows_affected()),
            Raw::Sqlite(c) => sqlx::query(sql)
                .bind(at)
                .bind(id)
                .execute(c)
                .await
                .map(|r| r.rows_affected()),
        };
        assert_eq!(
            done.expect("update heartbeat"),
            1,
            "heartbeat of {id} updated"
        );
    }
}
