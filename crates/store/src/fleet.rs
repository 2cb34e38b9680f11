//! The worker fleet: one heartbeat row per running worker.

use crate::{now, on_pool, rfc3339, Result, Store};
use chrono::{DateTime, Utc};
use sqlx::Row;
use vatic_schema::admin::{LoadedVersionStatus, WorkerStatus};

/// What a worker publishes every few seconds.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    /// Process id, made at start.
    pub id: String,
    /// Base URL api replicas reach it at.
    pub address: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// The versions it holds and their state.
    pub loaded: Vec<LoadedVersionStatus>,
    /// Requests it is answering now.
    pub in_flight: u64,
}

impl Store {
    /// Writes or refreshes a worker's row.
    pub async fn heartbeat(&self, beat: &Heartbeat) -> Result<()> {
        let loaded = serde_json::to_string(&beat.loaded)?;
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO workers (id, address, started_at, heartbeat_at, loaded, in_flight) VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (id) DO UPDATE SET address = excluded.address, heartbeat_at = excluded.heartbeat_at, loaded = excluded.loaded, in_flight = excluded.in_flight",
            )
            .bind(&beat.id)
            .bind(&beat.address)
            .bind(beat.started_at)
            .bind(now())
            .bind(&loaded)
            .bind(i64::try_from(beat.in_flight).unwrap_or(i64::MAX))
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Removes a worker's row (it is stopping).
    pub async fn remove_worker(&self, id: &str) -> Result<()> {
        on_pool!(self, pool => {
            sqlx::query("DELETE FROM workers WHERE id = $1").bind(id).execute(pool).await?;
        });
        Ok(())
    }

    /// Removes rows whose heartbeat is older than `older_than`; returns how many.
    pub async fn prune_workers(&self, older_than: chrono::Duration) -> Result<u64> {
        let cutoff = now() - older_than;
        Ok(on_pool!(self, pool => {
            sqlx::query("DELETE FROM workers WHERE heartbeat_at < $1")
                .bind(cutoff)
                .execute(pool)
                .await?
                .rows_affected()
        }))
    }

    /// Every worker row, freshest first, with the age of its heartbeat by this clock.
    pub async fn workers(&self) -> Result<Vec<WorkerStatus>> {
        let at = now();
        on_pool!(self, pool => {
            let rows = sqlx::query("SELECT id, address, started_at, heartbeat_at, loaded, in_flight FROM workers ORDER BY heartbeat_at DESC, id")
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(|r| -> Result<WorkerStatus> {
                    let heartbeat: DateTime<Utc> = r.try_get("heartbeat_at")?;
                    let loaded: String = r.try_get("loaded")?;
                    Ok(WorkerStatus {
                        id: r.try_get("id")?,
                        address: r.try_get("address")?,
                        started_at: rfc3339(r.try_get("started_at")?),
                        heartbeat_at: rfc3339(heartbeat),
                        heartbeat_age_secs: (at - heartbeat).num_milliseconds().max(0) as f64 / 1000.0,
                        loaded: serde_json::from_str(&loaded)?,
                        in_flight: r.try_get::<i64, _>("in_flight")?.max(0) as u64,
                    })
                })
                .collect()
        })
    }
}
