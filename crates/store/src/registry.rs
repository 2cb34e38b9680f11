//! Models, their versions and states, and the audit log.

use crate::artifacts::put_artifact_in;
use crate::{now, on_pool, rfc3339, Backend, Result, Store, StoreError};
use chrono::{DateTime, Utc};
use sqlx::Row;
use std::path::Path;
use std::str::FromStr;
use vatic_schema::admin::{
    AutoPlan, CacheSetting, EngineSetting, LogMode, ModelInfo, ModelSettings, ModelVersionInfo,
    RetireResponse, Signature, Traffic, VersionState,
};

/// A version to record, its ONNX file already checked.
#[derive(Debug, Clone)]
pub struct NewVersion<'a> {
    /// Model name.
    pub model: &'a str,
    /// Version number; the next free one when `None`.
    pub version: Option<u64>,
    /// The checked ONNX file.
    pub file: &'a Path,
    /// Its SHA-256, lowercase hex.
    pub sha256: &'a str,
    /// Its size in bytes.
    pub size: u64,
    /// Its signature.
    pub signature: &'a Signature,
    /// Its `model.toml`, empty for none.
    pub config: &'a str,
    /// Who pushes it.
    pub actor: &'a Actor,
}

const VERSION_COLUMNS: &str = "model, version, state, sha256, size, signature, config, created_by, created_at, updated_by, updated_at";

fn version_from_row<R>(row: &R) -> Result<ModelVersionInfo>
where
    R: Row,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'d> String: sqlx::Decode<'d, R::Database> + sqlx::Type<R::Database>,
    for<'d> i64: sqlx::Decode<'d, R::Database> + sqlx::Type<R::Database>,
    for<'d> DateTime<Utc>: sqlx::Decode<'d, R::Database> + sqlx::Type<R::Database>,
{
    let state: String = row.try_get("state")?;
    let signature: String = row.try_get("signature")?;
    Ok(ModelVersionInfo {
        model: row.try_get("model")?,
        version: row.try_get::<i64, _>("version")? as u64,
        state: VersionState::from_str(&state).map_err(StoreError::Corrupt)?,
        sha256: row.try_get("sha256")?,
        size: row.try_get::<i64, _>("size")? as u64,
        signature: serde_json::from_str(&signature)?,
        config: row.try_get("config")?,
        created_by: row.try_get("created_by")?,
        created_at: rfc3339(row.try_get("created_at")?),
        updated_by: row.try_get("updated_by")?,
        updated_at: rfc3339(row.try_get("updated_at")?),
        loaded: Vec::new(),
    })
}

impl Store {
    /// Records a new version of a model (creating the model on its first push), storing the file
    /// unless the same bytes are already stored. The first version of a model, or one pushed
    /// while the model has no stable version, becomes stable; later ones are staged. Returns
    /// the version and whether the artifact was stored now.
    pub async fn push_version(&self, new: &NewVersion<'_>) -> Result<(ModelVersionInfo, bool)> {
        let at = now();
        let signature = serde_json::to_string(new.signature)?;
        let (version, stored) = on_pool!(self, pool => {
            let mut tx = pool.begin_with(self.write_begin()).await?;
            sqlx::query("INSERT INTO models (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
                .bind(new.model)
                .bind(at)
                .execute(&mut *tx)
                .await?;
            if self.backend() == Backend::Postgres {
                // Pushes to one model run one at a time, so two first pushes cannot both
                // become stable and version numbers are handed out in order.
                lock_model(&mut *tx, new.model).await?;
            }
            let newest: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM model_versions WHERE model = $1")
                .bind(new.model)
                .fetch_one(&mut *tx)
                .await?;
            let version = match new.version {
                Some(v) => {
                    let taken: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM model_versions WHERE model = $1 AND version = $2)")
                        .bind(new.model)
                        .bind(v as i64)
                        .fetch_one(&mut *tx)
                        .await?;
                    if taken {
                        return Err(StoreError::version_taken(new.model, v));
                    }
                    v as i64
                }
                None => newest.unwrap_or(0) + 1,
            };
            let has_stable: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM model_versions WHERE model = $1 AND state = 'stable')")
                .bind(new.model)
                .fetch_one(&mut *tx)
                .await?;
            let state = if has_stable { VersionState::Staged } else { VersionState::Stable };
            // In the push's transaction, so a push that fails leaves no file behind.
            let stored = put_artifact_in(&mut tx, new.file, new.sha256, new.size).await?;
            sqlx::query(&format!("INSERT INTO model_versions ({VERSION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $8, $9)"))
                .bind(new.model)
                .bind(version)
                .bind(state.as_str())
                .bind(new.sha256)
                .bind(new.size as i64)
                .bind(&signature)
                .bind(new.config)
                .bind(&new.actor.label)
                .bind(at)
                .execute(&mut *tx)
                .await
                .map_err(|e| match &e {
                    sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Conflict(format!(
                        "model '{}' version {version} was pushed at the same time by someone else; push again", new.model
                    )),
                    _ => StoreError::Database(e),
                })?;
            let detail = serde_json::json!({"sha256": new.sha256, "size": new.size, "state": state}).to_string();
            audit_in(&mut *tx, at, new.actor, "push", Some(new.model), Some(version), &detail).await?;
            bump_revision(&mut *tx, new.model).await?;
            if self.backend() == Backend::Postgres {
                announce(&mut *tx, new.model).await?;
            }
            tx.commit().await?;
            (version as u64, stored)
        });
        Ok((self.model_version(new.model, version).await?, stored))
    }

    /// One version of a model.
    pub async fn model_version(&self, model: &str, version: u64) -> Result<ModelVersionInfo> {
        let row = on_pool!(self, pool => {
            let row = sqlx::query(&format!("SELECT {VERSION_COLUMNS} FROM model_versions WHERE model = $1 AND version = $2"))
                .bind(model)
                .bind(version as i64)
                .fetch_optional(pool)
                .await?;
            row.map(|r| version_from_row(&r)).transpose()?
        });
        match row {
            Some(v) => Ok(v),
            None => {
                self.model(model).await?;
                Err(StoreError::VersionNotFound {
                    model: model.to_string(),
                    version,
                })
            }
        }
    }

    /// Every model with its versions, labels and traffic, by name.
    pub async fn models(&self) -> Result<Vec<ModelInfo>> {
        let (mut models, versions, labels, traffic, plans) = on_pool!(self, pool => {
            // One snapshot (REPEATABLE READ on PostgreSQL; a SQLite read transaction is one), so a
            // change between the reads cannot show half of itself.
            let mut tx = pool.begin_with(self.read_snapshot()).await?;
            let models = sqlx::query("SELECT name, created_at, log_mode, log_sample_rate, response_cache, engine, previous_stable, previous_until, revision FROM models ORDER BY name")
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| -> Result<ModelInfo> {
                    let mode: String = r.try_get("log_mode")?;
                    let cache: String = r.try_get("response_cache")?;
                    let engine: String = r.try_get("engine")?;
                    let until: Option<DateTime<Utc>> = r.try_get("previous_until")?;
                    Ok(ModelInfo {
                        name: r.try_get("name")?,
                        created_at: rfc3339(r.try_get("created_at")?),
                        log_mode: LogMode::from_str(&mode).map_err(StoreError::Corrupt)?,
                        log_sample_rate: r.try_get("log_sample_rate")?,
                        cache: CacheSetting::from_str(&cache).map_err(StoreError::Corrupt)?,
                        engine: EngineSetting::from_str(&engine).map_err(StoreError::Corrupt)?,
                        versions: Vec::new(),
                        revision: r.try_get::<i64, _>("revision")?.max(0) as u64,
                        labels: Default::default(),
                        traffic: Traffic {
                            previous_stable: r.try_get::<Option<i64>, _>("previous_stable")?.map(|v| v as u64),
                            previous_until: until.map(rfc3339),
                            ..Traffic::default()
                        },
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let versions = sqlx::query(&format!("SELECT {VERSION_COLUMNS} FROM model_versions ORDER BY model, version"))
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(version_from_row)
                .collect::<Result<Vec<_>>>()?;
            let labels = sqlx::query("SELECT model, label, version FROM model_labels")
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| -> Result<(String, String, u64)> {
                    Ok((r.try_get("model")?, r.try_get("label")?, r.try_get::<i64, _>("version")? as u64))
                })
                .collect::<Result<Vec<_>>>()?;
            let traffic = sqlx::query("SELECT model, weight, shadow FROM traffic")
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| -> Result<(String, u32, bool)> {
                    Ok((r.try_get("model")?, r.try_get::<i32, _>("weight")? as u32, r.try_get("shadow")?))
                })
                .collect::<Result<Vec<_>>>()?;
            let plans = sqlx::query("SELECT model, version, steps, step, interval_ms, max_error_ratio, max_p99, p99_slack_ms, min_requests, min_agreement, error_floor, state, reason, started_by, started_at, step_started_at FROM rollout_plans")
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| -> Result<(String, AutoPlan)> {
                    let steps: String = r.try_get("steps")?;
                    Ok((r.try_get("model")?, AutoPlan {
                        version: r.try_get::<i64, _>("version")? as u64,
                        steps: serde_json::from_str(&steps)?,
                        step: r.try_get::<i32, _>("step")? as usize,
                        interval_secs: r.try_get::<i64, _>("interval_ms")? as u64 / 1000,
                        max_error_ratio: r.try_get("max_error_ratio")?,
                        max_p99: r.try_get("max_p99")?,
                        p99_slack_ms: r.try_get("p99_slack_ms")?,
                        min_requests: r.try_get::<i64, _>("min_requests")? as u64,
                        min_agreement: r.try_get("min_agreement")?,
                        error_floor: r.try_get("error_floor")?,
                        state: r.try_get("state")?,
                        reason: r.try_get("reason")?,
                        started_by: r.try_get("started_by")?,
                        started_at: rfc3339(r.try_get("started_at")?),
                        step_started_at: rfc3339(r.try_get("step_started_at")?),
                    }))
                })
                .collect::<Result<Vec<_>>>()?;
            tx.commit().await?;
            (models, versions, labels, traffic, plans)
        });
        for (model, plan) in plans {
            if let Some(m) = models.iter_mut().find(|m| m.name == model) {
                m.traffic.auto = Some(plan);
            }
        }
        for v in versions {
            if let Some(m) = models.iter_mut().find(|m| m.name == v.model) {
                if let Some(label) = v.state.label() {
                    m.labels.insert(label.to_string(), v.version);
                }
                m.versions.push(v);
            }
        }
        for (model, label, version) in labels {
            if let Some(m) = models.iter_mut().find(|m| m.name == model) {
                m.labels.insert(label, version);
            }
        }
        for (model, weight, shadow) in traffic {
            if let Some(m) = models.iter_mut().find(|m| m.name == model) {
                if shadow {
                    m.traffic.shadow_sample = weight;
                } else {
                    m.traffic.canary_weight = weight;
                }
            }
        }
        Ok(models)
    }

    /// One model with its versions.
    pub async fn model(&self, name: &str) -> Result<ModelInfo> {
        // The registry is small; one query shape keeps both backends and callers simple.
        self.models()
            .await?
            .into_iter()
            .find(|m| m.name == name)
            .ok_or_else(|| StoreError::ModelNotFound(name.to_string()))
    }

    /// Retires a version: it leaves the traffic split and workers unload it. Retiring the
    /// stable version makes the newest staged or canary version stable in the same change (and
    /// says so in the audit log), so unversioned requests always have one version to go to.
    /// Retiring a retired version changes nothing.
    pub async fn retire_version(
        &self,
        model: &str,
        version: u64,
        actor: &Actor,
    ) -> Result<RetireResponse> {
        let current = self.model_version(model, version).await?;
        if current.state == VersionState::Retired {
            return Ok(RetireResponse {
                version: current,
                promoted: None,
            });
        }
        let at = now();
        let promoted = on_pool!(self, pool => {
            let mut tx = pool.begin_with(self.write_begin()).await?;
            if self.backend() == Backend::Postgres {
                lock_model(&mut *tx, model).await?;
            }
            let state: String = sqlx::query_scalar("SELECT state FROM model_versions WHERE model = $1 AND version = $2")
                .bind(model)
                .bind(version as i64)
                .fetch_one(&mut *tx)
                .await?;
            let from = VersionState::from_str(&state).map_err(StoreError::Corrupt)?;
            if matches!(from, VersionState::Canary | VersionState::Shadow) {
                return Err(StoreError::Conflict(format!(
                    "model '{model}' version {version} is the {from}: roll it back first (vaticctl rollout rollback {model}), so no request is sent to it while it unloads"
                )));
            }
            let labels: Vec<String> = sqlx::query_scalar("SELECT label FROM model_labels WHERE model = $1 AND version = $2 ORDER BY label")
                .bind(model)
                .bind(version as i64)
                .fetch_all(&mut *tx)
                .await?;
            if !labels.is_empty() {
                return Err(StoreError::Conflict(format!(
                    "model '{model}' version {version} carries the label(s) {}; point them elsewhere or remove them first (vaticctl models label)",
                    labels.join(", ")
                )));
            }
            set_state_in(&mut *tx, model, version as i64, VersionState::Retired, &actor.label, at).await?;
            sqlx::query("DELETE FROM traffic WHERE model = $1 AND version = $2")
                .bind(model)
                .bind(version as i64)
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE models SET previous_stable = NULL, previous_until = NULL WHERE name = $1 AND previous_stable = $2")
                .bind(model)
                .bind(version as i64)
                .execute(&mut *tx)
                .await?;
            let detail = serde_json::json!({"from": from, "to": VersionState::Retired}).to_string();
            audit_in(&mut *tx, at, actor, "retire", Some(model), Some(version as i64), &detail).await?;
            let mut promoted = None;
            if from == VersionState::Stable {
                let successor: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM model_versions WHERE model = $1 AND state IN ('staged', 'canary')")
                    .bind(model)
                    .fetch_one(&mut *tx)
                    .await?;
                if let Some(next) = successor {
                    // A canary that becomes stable no longer takes a share.
                    sqlx::query("DELETE FROM traffic WHERE model = $1 AND version = $2")
                        .bind(model)
                        .bind(next)
                        .execute(&mut *tx)
                        .await?;
                    set_state_in(&mut *tx, model, next, VersionState::Stable, &actor.label, at).await?;
                    let detail = serde_json::json!({"to": VersionState::Stable, "because": format!("version {version} was retired")}).to_string();
                    audit_in(&mut *tx, at, actor, "promote", Some(model), Some(next), &detail).await?;
                    promoted = Some(next as u64);
                }
            }
            bump_revision(&mut *tx, model).await?;
            if self.backend() == Backend::Postgres {
                announce(&mut *tx, model).await?;
            }
            tx.commit().await?;
            promoted
        });
        let promoted = match promoted {
            Some(v) => Some(self.model_version(model, v).await?),
            None => None,
        };
        Ok(RetireResponse {
            version: self.model_version(model, version).await?,
            promoted,
        })
    }

    /// Changes a model's prediction log, response cache and engine settings.
    pub async fn set_model_settings(
        &self,
        model: &str,
        settings: &ModelSettings,
        actor: &Actor,
    ) -> Result<ModelInfo> {
        let current = self.model(model).await?;
        let mode = settings.log_mode.unwrap_or(current.log_mode);
        let rate = settings.log_sample_rate.unwrap_or(current.log_sample_rate);
        let cache = settings.cache.unwrap_or(current.cache);
        let engine = settings.engine.unwrap_or(current.engine);
        if !(0.0..=1.0).contains(&rate) {
            return Err(StoreError::Conflict(format!(
                "log_sample_rate must be between 0 and 1, got {rate}"
            )));
        }
        let at = now();
        on_pool!(self, pool => {
            let mut tx = pool.begin_with(self.write_begin()).await?;
            sqlx::query("UPDATE models SET log_mode = $1, log_sample_rate = $2, response_cache = $3, engine = $4 WHERE name = $5")
                .bind(mode.as_str())
                .bind(rate)
                .bind(cache.as_str())
                .bind(engine.as_str())
                .bind(model)
                .execute(&mut *tx)
                .await?;
            // One record per kind of setting the change names: the prediction log's, the
            // cache's, the engine's.
            let others = settings.cache.is_some() || settings.engine.is_some();
            if settings.log_mode.is_some() || settings.log_sample_rate.is_some() || !others {
                let detail = serde_json::json!({"log_mode": mode, "log_sample_rate": rate}).to_string();
                audit_in(&mut *tx, at, actor, "set_log", Some(model), None, &detail).await?;
            }
            if settings.cache.is_some() {
                let detail = serde_json::json!({"cache": cache}).to_string();
                audit_in(&mut *tx, at, actor, "set_cache", Some(model), None, &detail).await?;
            }
            if settings.engine.is_some() {
                let detail = serde_json::json!({"engine": engine}).to_string();
                audit_in(&mut *tx, at, actor, "set_engine", Some(model), None, &detail).await?;
            }
            bump_revision(&mut *tx, model).await?;
            if self.backend() == Backend::Postgres {
                announce(&mut *tx, model).await?;
            }
            tx.commit().await?;
        });
        self.model(model).await
    }

    /// Writes one audit record of a change done outside any other change.
    pub async fn audit(
        &self,
        actor: &Actor,
        action: &str,
        model: Option<&str>,
        detail: &str,
    ) -> Result<()> {
        on_pool!(self, pool => {
            let mut conn = pool.acquire().await?;
            audit_in(&mut *conn, now(), actor, action, model, None, detail).await?;
        });
        Ok(())
    }

    /// Records an attempt that was refused: `action` names the route, `target` what it named,
    /// `why` the refusal.
    pub async fn audit_refused(
        &self,
        actor: &Actor,
        action: &str,
        target: Option<&str>,
        why: &str,
    ) -> Result<()> {
        let detail = serde_json::json!({ "refused": why }).to_string();
        on_pool!(self, pool => {
            sqlx::query("INSERT INTO audit_log (at, actor, action, model, version, detail, key_id, key_name, role, remote_addr, request_id, target, outcome) \
                         VALUES ($1, $2, $3, NULL, NULL, $4, $5, $6, $7, $8, $9, $10, 'refused')")
                .bind(now())
                .bind(&actor.label)
                .bind(action)
                .bind(&detail)
                .bind(actor.key_id.as_deref())
                .bind(actor.key_name.as_deref())
                .bind(actor.role.as_deref())
                .bind(actor.remote_addr.as_deref())
                .bind(actor.request_id.as_deref())
                .bind(target)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// The newest audit records that `query` picks, newest first.
    pub async fn audit_log(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>> {
        on_pool!(self, pool => {
            let rows = sqlx::query(
                "SELECT at, actor, action, model, version, detail, key_id, key_name, role, remote_addr, request_id, target, outcome \
                 FROM audit_log \
                 WHERE ($1 IS NULL OR at >= $1) AND ($2 IS NULL OR action = $2) AND ($3 IS NULL OR key_id = $3) \
                 ORDER BY id DESC LIMIT $4",
            )
            .bind(query.since)
            .bind(query.action.as_deref())
            .bind(query.key.as_deref())
            .bind(i64::from(query.limit))
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|r| -> Result<AuditRecord> {
                    Ok(AuditRecord {
                        at: rfc3339(r.try_get("at")?),
                        actor: r.try_get("actor")?,
                        action: r.try_get("action")?,
                        model: r.try_get("model")?,
                        version: r.try_get::<Option<i64>, _>("version")?.map(|v| v as u64),
                        detail: r.try_get("detail")?,
                        key_id: r.try_get("key_id")?,
                        key_name: r.try_get("key_name")?,
                        role: r.try_get("role")?,
                        remote_addr: r.try_get("remote_addr")?,
                        request_id: r.try_get("request_id")?,
                        target: r.try_get("target")?,
                        outcome: r.try_get("outcome")?,
                    })
                })
                .collect()
        })
    }
}

/// Which audit records to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditQuery {
    /// At most this many, newest first.
    pub limit: u32,
    /// Only records at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only this action (`push`, `retire`, `keys_create`, ...).
    pub action: Option<String>,
    /// Only records of this key id.
    pub key: Option<String>,
}

impl AuditQuery {
    /// The newest `limit` records.
    pub fn newest(limit: u32) -> AuditQuery {
        AuditQuery {
            limit,
            since: None,
            action: None,
            key: None,
        }
    }
}

/// Who made a change, as the audit log records it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actor {
    /// How the log names them: `key <id> (<name>)`, `anonymous`, `import`.
    pub label: String,
    /// The API key's id, when they used one.
    pub key_id: Option<String>,
    /// Its name.
    pub key_name: Option<String>,
    /// Its role.
    pub role: Option<String>,
    /// The address the request came from.
    pub remote_addr: Option<String>,
    /// The request's id (`X-Request-ID`).
    pub request_id: Option<String>,
}

impl Actor {
    /// An actor known by a name only (the import at start, a test).
    pub fn named(label: &str) -> Actor {
        Actor {
            label: label.to_string(),
            ..Actor::default()
        }
    }
}

/// One audit log entry.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AuditRecord {
    /// When (RFC 3339).
    pub at: String,
    /// Who.
    pub actor: String,
    /// What: push, retire, set_state, set_log, set_cache, set_engine, retention, ...
    pub action: String,
    /// Which model, if any.
    pub model: Option<String>,
    /// Which version, if any.
    pub version: Option<u64>,
    /// Details as JSON.
    pub detail: String,
    /// The API key used, if any.
    pub key_id: Option<String>,
    /// Its name.
    pub key_name: Option<String>,
    /// Its role.
    pub role: Option<String>,
    /// Where the request came from.
    pub remote_addr: Option<String>,
    /// The request's id.
    pub request_id: Option<String>,
    /// What the change was made to: `model/version`, `model`, `key <id>`, ...
    pub target: Option<String>,
    /// `ok`, or `refused` for an attempt the guard turned away.
    pub outcome: String,
}

pub(crate) async fn audit_in<'e, E, DB>(
    conn: E,
    at: DateTime<Utc>,
    actor: &Actor,
    action: &str,
    model: Option<&str>,
    version: Option<i64>,
    detail: &str,
) -> Result<()>
where
    E: sqlx::Executor<'e, Database = DB>,
    DB: sqlx::Database,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'q> DateTime<Utc>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<i64>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let target = match (model, version) {
        (Some(m), Some(v)) => Some(format!("{m}/{v}")),
        (Some(m), None) => Some(m.to_string()),
        _ => serde_json::from_str::<serde_json::Value>(detail)
            .ok()
            .and_then(|d| d["key"].as_str().map(|k| format!("key {k}"))),
    };
    sqlx::query("INSERT INTO audit_log (at, actor, action, model, version, detail, key_id, key_name, role, remote_addr, request_id, target, outcome) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 'ok')")
        .bind(at)
        .bind(actor.label.as_str())
        .bind(action)
        .bind(model)
        .bind(version)
        .bind(detail)
        .bind(actor.key_id.as_deref())
        .bind(actor.key_name.as_deref())
        .bind(actor.role.as_deref())
        .bind(actor.remote_addr.as_deref())
        .bind(actor.request_id.as_deref())
        .bind(target.as_deref())
        .execute(conn)
        .await?;
    Ok(())
}

/// Holds the model's row until the transaction ends (PostgreSQL; SQLite runs one writer at a
/// time anyway).
pub(crate) async fn lock_model<'e, E, DB>(conn: E, model: &str) -> Result<()>
where
    E: sqlx::Executor<'e, Database = DB>,
    DB: sqlx::Database,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    sqlx::query("SELECT name FROM models WHERE name = $1 FOR UPDATE")
        .bind(model)
        .execute(conn)
        .await?;
    Ok(())
}

async fn set_state_in<'e, E, DB>(
    conn: E,
    model: &str,
    version: i64,
    state: VersionState,
    actor: &str,
    at: DateTime<Utc>,
) -> Result<()>
where
    E: sqlx::Executor<'e, Database = DB>,
    DB: sqlx::Database,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'q> DateTime<Utc>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    sqlx::query("UPDATE model_versions SET state = $1, updated_by = $2, updated_at = $3 WHERE model = $4 AND version = $5")
        .bind(state.as_str())
        .bind(actor)
        .bind(at)
        .bind(model)
        .bind(version)
        .execute(conn)
        .await?;
    Ok(())
}

/// Counts a change of a model (see `models.revision`).
pub(crate) async fn bump_revision<'e, E, DB>(conn: E, model: &str) -> Result<()>
where
    E: sqlx::Executor<'e, Database = DB>,
    DB: sqlx::Database,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    sqlx::query("UPDATE models SET revision = revision + 1 WHERE name = $1")
        .bind(model)
        .execute(conn)
        .await?;
    Ok(())
}

/// Announces a change to a model on the registry channel; PostgreSQL delivers it on commit.
pub(crate) async fn announce<'e, E, DB>(conn: E, model: &str) -> Result<()>
where
    E: sqlx::Executor<'e, Database = DB>,
    DB: sqlx::Database,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(crate::REGISTRY_CHANNEL)
        .bind(model)
        .execute(conn)
        .await?;
    Ok(())
}
