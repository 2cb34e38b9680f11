//! The data layer of vatic, and the only place with SQL: the model registry, artifacts stored in
//! chunks, the worker fleet, the audit log and the prediction log, on PostgreSQL (production) or
//! SQLite (standalone), chosen by the database URL.
//!
//! Both backends run the same SQL text where they can (`$1` placeholders work on both); the
//! prediction log uses COPY and day partitions on PostgreSQL.

#![forbid(unsafe_code)]

mod artifacts;
mod batch;
mod error;
mod fleet;
mod keys;
mod notify;
mod predictions;
mod registry;
mod rollout;
mod sealing;
mod settings;

pub use artifacts::{fetch_artifact_to, sha256_file};
pub use batch::{ChunkResults, Claim, Expired, NewJob};
pub use error::{Result, StoreError};
pub use fleet::Heartbeat;
pub use keys::{ApiKey, KEYS_CHANNEL};
pub use notify::{Listener, REGISTRY_CHANNEL};
pub use predictions::{Delivery, PredictionQuery, PredictionRecord, RetentionReport};
pub use registry::{Actor, AuditQuery, AuditRecord, NewVersion};
pub use rollout::{plan, Change, RolloutOp};
pub use sealing::{check_key_id, new_data_key, DataKeys, SealError, Sealed, DATA_KEY_LEN};
pub use settings::{read_password, redact, DatabaseSettings};

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use std::collections::HashSet;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("../../migrations/postgres");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("../../migrations/sqlite");

/// Runs the same body against whichever pool the store holds; the body is compiled once per
/// backend, so generic sqlx calls type-check against each.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.pool {
            $crate::Pool::Postgres($pool) => $body,
            $crate::Pool::Sqlite($pool) => $body,
        }
    };
}
pub(crate) use on_pool;

#[derive(Clone)]
pub(crate) enum Pool {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// Which database a store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL.
    Postgres,
    /// SQLite.
    Sqlite,
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// `postgres://...` or `sqlite://path` (the file is created if missing).
    pub url: String,
    /// Most connections in the pool.
    pub max_connections: u32,
    /// How long to wait for a connection before giving up.
    pub acquire_timeout: Duration,
    /// PostgreSQL's password, in place of the one `url` may hold.
    pub password: Option<String>,
}

impl ConnectOptions {
    /// Options with a pool of 8 connections and a 5-second acquire timeout.
    pub fn new(url: impl Into<String>) -> ConnectOptions {
        ConnectOptions {
            url: url.into(),
            max_connections: 8,
            acquire_timeout: Duration::from_secs(5),
            password: None,
        }
    }
}

/// A handle on the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pub(crate) pool: Pool,
    /// Day partitions of the prediction log known to exist.
    pub(crate) partitions: Arc<Mutex<HashSet<chrono::NaiveDate>>>,
}

impl Store {
    /// Opens a pool without touching the schema. Connections are made lazily, so a database
    /// that is down at start-up only fails the first statement.
    pub fn connect_lazy(opts: &ConnectOptions) -> Result<Store> {
        let url = opts.url.as_str();
        let pool = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let mut connect = PgConnectOptions::from_str(url)?;
            if let Some(password) = &opts.password {
                connect = connect.password(password);
            }
            Pool::Postgres(
                PgPoolOptions::new()
                    .max_connections(opts.max_connections)
                    .acquire_timeout(opts.acquire_timeout)
                    .connect_lazy_with(connect),
            )
        } else if let Some(path) = url.strip_prefix("sqlite://") {
            if opts.password.is_some() {
                return Err(StoreError::PasswordForSqlite);
            }
            let path = path.split('?').next().unwrap_or(path);
            if let Some(parent) = std::path::Path::new(path).parent() {
                if !parent.as_os_str().is_empty() {
                    std::fs::create_dir_all(parent)?;
                }
            }
            let connect = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(10));
            Pool::Sqlite(
                SqlitePoolOptions::new()
                    .max_connections(opts.max_connections)
                    .acquire_timeout(opts.acquire_timeout)
                    .connect_lazy_with(connect),
            )
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_string()));
        };
        Ok(Store {
            pool,
            partitions: Arc::default(),
        })
    }

    /// Opens a pool and checks the schema: migrates first when `migrate` is set, else refuses
    /// a schema that is behind or ahead of this build.
    pub async fn open(opts: &ConnectOptions, migrate: bool) -> Result<Store> {
        let store = Store::connect_lazy(opts)?;
        if migrate {
            store.migrate().await?;
        }
        store.check_schema().await?;
        Ok(store)
    }

    /// Which backend this is.
    pub fn backend(&self) -> Backend {
        match self.pool {
            Pool::Postgres(_) => Backend::Postgres,
            Pool::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// The statement that opens a transaction that writes. SQLite's `BEGIN` takes the write
    /// lock only at the first write, and a transaction that has read by then fails at once
    /// with "database is locked" when another connection wrote meanwhile (its busy timeout
    /// does not apply); `BEGIN IMMEDIATE` takes the lock first, waiting within the timeout.
    pub(crate) fn read_snapshot(&self) -> &'static str {
        match self.backend() {
            Backend::Postgres => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
            Backend::Sqlite => "BEGIN",
        }
    }

    pub(crate) fn write_begin(&self) -> &'static str {
        match self.backend() {
            Backend::Postgres => "BEGIN",
            Backend::Sqlite => "BEGIN IMMEDIATE",
        }
    }

    /// Connections of the pool now: (open, idle, most allowed).
    pub fn pool_usage(&self) -> (u32, u32, u32) {
        on_pool!(self, pool => (
            pool.size(),
            pool.num_idle() as u32,
            pool.options().get_max_connections(),
        ))
    }

    fn migrator(&self) -> &'static Migrator {
        match self.pool {
            Pool::Postgres(_) => &POSTGRES_MIGRATIONS,
            Pool::Sqlite(_) => &SQLITE_MIGRATIONS,
        }
    }

    /// The newest schema version this build carries.
    pub fn known_schema_version(&self) -> i64 {
        self.migrator().iter().map(|m| m.version).max().unwrap_or(0)
    }

    /// The newest migration applied to the database, 0 when none is.
    pub async fn schema_version(&self) -> Result<i64> {
        let exists: bool = on_pool!(self, pool => {
            let sql = match self.backend() {
                Backend::Postgres => "SELECT EXISTS (SELECT 1 FROM pg_tables WHERE tablename = '_sqlx_migrations' AND schemaname = current_schema())",
                Backend::Sqlite => "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations')",
            };
            sqlx::query_scalar(sql).fetch_one(pool).await?
        });
        if !exists {
            return Ok(0);
        }
        let version: Option<i64> = on_pool!(self, pool => {
            sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(pool)
                .await?
        });
        Ok(version.unwrap_or(0))
    }

    /// Applies the migrations the database lacks; returns the versions applied.
    pub async fn migrate(&self) -> Result<Vec<i64>> {
        let before = self.schema_version().await?;
        let known = self.known_schema_version();
        if before > known {
            return Err(StoreError::SchemaTooNew {
                found: before,
                known,
            });
        }
        on_pool!(self, pool => self.migrator().run(pool).await?);
        Ok(self
            .migrator()
            .iter()
            .map(|m| m.version)
            .filter(|v| *v > before)
            .collect())
    }

    /// Refuses a schema other than the one this build carries.
    pub async fn check_schema(&self) -> Result<()> {
        let found = self.schema_version().await?;
        let known = self.known_schema_version();
        match found.cmp(&known) {
            std::cmp::Ordering::Greater => Err(StoreError::SchemaTooNew { found, known }),
            std::cmp::Ordering::Less => Err(StoreError::SchemaBehind { found, known }),
            std::cmp::Ordering::Equal => Ok(()),
        }
    }

    /// Whether the database answers now.
    pub async fn ping(&self) -> bool {
        on_pool!(self, pool => sqlx::query("SELECT 1").execute(pool).await.is_ok())
    }

    /// Closes every connection.
    pub async fn close(&self) {
        on_pool!(self, pool => pool.close().await);
    }
}

/// The current time, in the form every timestamp column holds.
pub(crate) fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

/// RFC 3339 with milliseconds, the wire form of times.
pub(crate) fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
