//! API keys: their public id, role, model scope, rate limit, life, and the SHA-256 of their
//! secret (the secret itself is never stored). A revocation is announced on [`KEYS_CHANNEL`]
//! (PostgreSQL) so every api replica drops the key at once; SQLite readers poll.

use crate::{now, on_pool, Result, Store};
use chrono::{DateTime, Utc};
use sqlx::Row;

/// The channel key changes are announced on; the payload is the key id.
pub const KEYS_CHANNEL: &str = "vatic_keys";

/// An API key as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKey {
    /// The public id, the `<id>` of `vk_<id>_<secret>`.
    pub id: String,
    /// What it is for, as given at creation.
    pub name: String,
    /// `admin`, `deployer`, `predictor` or `viewer`.
    pub role: String,
    /// The models it may use; `None` for every model.
    pub models: Option<Vec<String>>,
    /// SHA-256 of the whole key.
    pub secret_hash: Vec<u8>,
    /// Requests per second, when it has a limit of its own.
    pub rate: Option<f64>,
    /// Requests allowed at once above the rate, when it has a limit of its own.
    pub burst: Option<u32>,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// Who made it (a key id, or `bootstrap`).
    pub created_by: String,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
}

impl Store {
    /// Stores a new key.
    pub async fn create_key(&self, key: &ApiKey) -> Result<()> {
        let models = key
            .models
            .as_ref()
            .map(|m| serde_json::to_string(m).expect("names serialize"));
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO api_keys (id, name, role, models, secret_hash, rate, burst, created_at, created_by, expires_at, revoked_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .bind(&key.id)
            .bind(&key.name)
            .bind(&key.role)
            .bind(models)
            .bind(&key.secret_hash)
            .bind(key.rate)
            .bind(key.burst.map(|b| i32::try_from(b).unwrap_or(i32::MAX)))
            .bind(key.created_at)
            .bind(&key.created_by)
            .bind(key.expires_at)
            .bind(key.revoked_at)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Every key, revoked and expired ones included, oldest first.
    pub async fn api_keys(&self) -> Result<Vec<ApiKey>> {
        on_pool!(self, pool => {
            let rows = sqlx::query(
                "SELECT id, name, role, models, secret_hash, rate, burst, created_at, created_by, expires_at, revoked_at \
                 FROM api_keys ORDER BY created_at, id",
            )
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|r| -> Result<ApiKey> {
                    let models: Option<String> = r.try_get("models")?;
                    Ok(ApiKey {
                        id: r.try_get("id")?,
                        name: r.try_get("name")?,
                        role: r.try_get("role")?,
                        models: models
                            .map(|m| serde_json::from_str(&m))
                            .transpose()
                            .map_err(|e| crate::StoreError::Corrupt(format!("api_keys.models: {e}")))?,
                        secret_hash: r.try_get("secret_hash")?,
                        rate: r.try_get("rate")?,
                        burst: r
                            .try_get::<Option<i32>, _>("burst")?
                            .map(|b| u32::try_from(b).unwrap_or(1)),
                        created_at: r.try_get("created_at")?,
                        created_by: r.try_get("created_by")?,
                        expires_at: r.try_get("expires_at")?,
                        revoked_at: r.try_get("revoked_at")?,
                    })
                })
                .collect()
        })
    }

    /// Revokes key `id`; false when there is no such key or it was revoked already. Every
    /// replica hears of it at once on PostgreSQL.
    pub async fn revoke_key(&self, id: &str) -> Result<bool> {
        on_pool!(self, pool => {
            let mut tx = pool.begin_with(self.write_begin()).await?;
            let done = sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(now())
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected() == 1;
            if done && self.backend() == crate::Backend::Postgres {
                sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(KEYS_CHANNEL)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(done)
        })
    }
}
