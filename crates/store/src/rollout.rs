//! Rollouts: labels, the canary's share, promote and rollback. Each operation is planned from
//! the model as the registry holds it ([`plan`], no database) and applied in one transaction
//! ([`Store::apply`]) that checks the model is still at the revision the plan read (every change
//! of a model counts one), so two operators (or an operator and the controller) cannot
//! interleave half-changes: the second is refused and can look again.

use crate::registry::{announce, audit_in, lock_model, Actor};
use crate::{now, on_pool, rfc3339, Backend, Result, Store, StoreError};
use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::Row;
use std::time::Duration;
use vatic_schema::admin::{
    AutoPlan, AutoStart, ModelInfo, RolloutEvent, VersionState, BUILTIN_LABELS,
};
use vatic_schema::rollout::SideStats;

/// A change asked of a model's labels or traffic.
#[derive(Debug, Clone, PartialEq)]
pub enum RolloutOp {
    /// Points an operator's label at a version.
    Label {
        /// The label.
        label: String,
        /// The version.
        version: u64,
    },
    /// Removes an operator's label.
    Unlabel {
        /// The label.
        label: String,
    },
    /// Makes a staged (or shadow) version the canary with a share of unversioned requests.
    Start {
        /// The version.
        version: u64,
        /// Percent of unversioned requests, 0 to 100.
        weight: u32,
    },
    /// Changes the canary's share.
    Set {
        /// Percent of unversioned requests, 0 to 100.
        weight: u32,
    },
    /// Makes a staged version the shadow: it gets a copy of `sample` percent of the requests
    /// the split serves, and its answers are compared, never returned. With the shadow running
    /// already, changes its sample.
    Shadow {
        /// The version.
        version: u64,
        /// Percent of requests copied, 1 to 100.
        sample: u32,
    },
    /// Ends the shadow: its version goes back to staged.
    ShadowStop,
    /// Makes the canary stable; the stable version stays loaded for `grace` so a rollback to
    /// it is instant.
    Promote {
        /// How long the version that was stable stays loaded.
        grace: Duration,
    },
    /// Ends the canary and shadow (traffic returns to stable), or, with neither running,
    /// returns to the version that was stable before the last promote.
    Rollback {
        /// Why, for the history.
        reason: Option<String>,
    },
    /// Retires the version a promote left loaded, its grace period over.
    Expire,
    /// Starts an automatic rollout: the version becomes the canary at the first step's share.
    Auto {
        /// What was asked.
        start: AutoStart,
    },
    /// The controller's step: the canary held up over its interval, so it takes the next
    /// share, or after the last is promoted.
    Advance {
        /// The figures it was judged on.
        reason: String,
        /// How long a promoted-over stable version stays loaded.
        grace: Duration,
    },
    /// Ends a running automatic rollout without changing the traffic.
    Cancel {
        /// Why.
        reason: String,
    },
}

/// What an operation does to the registry, as [`plan`] works it out.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The history's and audit log's name of it.
    pub action: &'static str,
    /// The version it is about, if one.
    pub version: Option<u64>,
    /// What the history records.
    pub detail: serde_json::Value,
    /// Version state changes `(version, from, to)`, in the order they run (a version leaves
    /// stable before another enters it); `from == to` only checks the version is unchanged.
    pub states: Vec<(u64, VersionState, VersionState)>,
    /// The canary and its share afterwards.
    pub canary: Option<(u64, u32)>,
    /// The shadow and its sample afterwards.
    pub shadow: Option<(u64, u32)>,
    /// Labels set (`Some`) or removed (`None`).
    pub labels: Vec<(String, Option<u64>)>,
    /// The version a rollback returns to, and until when it stays loaded, afterwards.
    pub previous: (Option<u64>, Option<DateTime<Utc>>),
    /// The automatic rollout's row afterwards, when the change touches it.
    pub plan: Option<AutoPlan>,
    /// The model's revision the change was planned on: applying it is refused when the model
    /// changed since.
    pub revision: u64,
}

fn conflict(message: String) -> StoreError {
    StoreError::Conflict(message)
}

fn check_weight(weight: u32) -> Result<()> {
    if weight > 100 {
        return Err(conflict(format!(
            "a canary share is a percent from 0 to 100, got {weight}"
        )));
    }
    Ok(())
}

/// Works out what `op` does to `model` at `at`, or why it is refused.
pub fn plan(model: &ModelInfo, op: &RolloutOp, at: DateTime<Utc>) -> Result<Change> {
    let name = &model.name;
    let version_of = |version: u64| -> Result<VersionState> {
        model
            .versions
            .iter()
            .find(|v| v.version == version)
            .map(|v| v.state)
            .ok_or_else(|| StoreError::VersionNotFound {
                model: name.clone(),
                version,
            })
    };
    let previous_until = model
        .traffic
        .previous_until
        .as_deref()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc));
    let mut change = Change {
        action: "",
        version: None,
        detail: json!({}),
        states: Vec::new(),
        canary: model.canary(),
        shadow: model.shadow(),
        labels: Vec::new(),
        previous: (model.traffic.previous_stable, previous_until),
        plan: None,
        revision: model.revision,
    };
    let running = model.traffic.auto.clone().filter(AutoPlan::is_running);
    let stable = model.default_version().map(|v| v.version);
    let custom_labels = |version: u64| -> Vec<&str> {
        model
            .labels
            .iter()
            .filter(|(l, v)| **v == version && !BUILTIN_LABELS.contains(&l.as_str()))
            .map(|(l, _)| l.as_str())
            .collect()
    };
    match op {
        RolloutOp::Label { label, version } => {
            let state = version_of(*version)?;
            if state == VersionState::Retired {
                return Err(conflict(format!(
                    "model '{name}' version {version} is retired; a label can name only a served version"
                )));
            }
            change.action = "label";
            change.version = Some(*version);
            change.detail = json!({"label": label, "from": model.labels.get(label), "to": version});
            change.states.push((*version, state, state));
            change.labels.push((label.clone(), Some(*version)));
        }
        RolloutOp::Unlabel { label } => {
            let Some(version) = model.labels.get(label) else {
                return Err(StoreError::LabelNotFound {
                    model: name.clone(),
                    label: label.clone(),
                    labels: model.labels.keys().cloned().collect::<Vec<_>>().join(", "),
                });
            };
            change.action = "unlabel";
            change.version = Some(*version);
            change.detail = json!({"label": label, "from": version});
            change.labels.push((label.clone(), None));
        }
        RolloutOp::Start { version, weight } => {
            check_weight(*weight)?;
            let state = version_of(*version)?;
            if let Some((canary, share)) = model.canary() {
                return Err(conflict(if canary == *version {
                    format!("model '{name}' version {version} is the canary already ({share}%); change its share with `vaticctl rollout set`")
                } else {
                    format!("model '{name}' version {canary} is the canary ({share}%); promote it or roll it back before starting another")
                }));
            }
            let Some(stable) = stable else {
                return Err(conflict(format!(
                    "model '{name}' has no stable version to split traffic with"
                )));
            };
            match state {
                VersionState::Staged | VersionState::Shadow => {}
                VersionState::Stable => {
                    return Err(conflict(format!(
                        "model '{name}' version {version} is the stable version already"
                    )))
                }
                VersionState::Retired => {
                    return Err(conflict(format!(
                        "model '{name}' version {version} is retired; push it again to roll it out"
                    )))
                }
                VersionState::Canary => unreachable!("a canary was found above"),
            }
            change.action = "start";
            change.version = Some(*version);
            change.detail = json!({"canary": version, "weight": weight, "stable": stable});
            change
                .states
                .push((stable, VersionState::Stable, VersionState::Stable));
            change.states.push((*version, state, VersionState::Canary));
            if state == VersionState::Shadow {
                change.shadow = None;
            }
            change.canary = Some((*version, *weight));
        }
        RolloutOp::Set { weight } => {
            check_weight(*weight)?;
            let Some((canary, from)) = model.canary() else {
                return Err(conflict(format!(
                    "model '{name}' has no canary; start one with `vaticctl rollout start {name} --version N --canary {weight}`"
                )));
            };
            change.action = "set";
            change.version = Some(canary);
            change.detail = json!({"canary": canary, "from": from, "to": weight});
            change
                .states
                .push((canary, VersionState::Canary, VersionState::Canary));
            change.canary = Some((canary, *weight));
        }
        RolloutOp::Shadow { version, sample } => {
            if !(1..=100).contains(sample) {
                return Err(conflict(format!(
                    "a shadow sample is a percent from 1 to 100, got {sample}"
                )));
            }
            let state = version_of(*version)?;
            if let Some((shadow, _)) = model.shadow() {
                if shadow != *version {
                    return Err(conflict(format!(
                        "model '{name}' version {shadow} is the shadow; stop it (`vaticctl rollout shadow {name} --stop`) before shadowing another"
                    )));
                }
            }
            match state {
                VersionState::Staged | VersionState::Shadow => {}
                other => {
                    return Err(conflict(format!(
                        "model '{name}' version {version} is {other}; only a staged version can be the shadow"
                    )))
                }
            }
            change.action = "shadow";
            change.version = Some(*version);
            change.detail =
                json!({"shadow": version, "from": model.shadow().map(|s| s.1), "sample": sample});
            change.states.push((*version, state, VersionState::Shadow));
            change.shadow = Some((*version, *sample));
        }
        RolloutOp::ShadowStop => {
            let Some((shadow, sample)) = model.shadow() else {
                return Err(conflict(format!("model '{name}' has no shadow to stop")));
            };
            change.action = "unshadow";
            change.version = Some(shadow);
            change.detail = json!({"shadow": shadow, "sample": sample});
            change
                .states
                .push((shadow, VersionState::Shadow, VersionState::Staged));
            change.shadow = None;
        }
        RolloutOp::Promote { grace } => {
            let Some((canary, share)) = model.canary() else {
                return Err(conflict(format!(
                    "model '{name}' has no canary to promote; start one with `vaticctl rollout start {name} --version N --canary 10`"
                )));
            };
            change.action = "promote";
            change.version = Some(canary);
            let until = at + chrono::Duration::from_std(*grace).unwrap_or(chrono::Duration::MAX);
            // A version an earlier promote left loaded is superseded now: retired, unless an
            // operator's label keeps it.
            let mut retired = None;
            if let Some(earlier) = model.traffic.previous_stable {
                if Some(earlier) != stable
                    && version_of(earlier).ok() == Some(VersionState::Staged)
                    && custom_labels(earlier).is_empty()
                {
                    change
                        .states
                        .push((earlier, VersionState::Staged, VersionState::Retired));
                    retired = Some(earlier);
                }
            }
            if let Some(stable) = stable {
                change
                    .states
                    .push((stable, VersionState::Stable, VersionState::Staged));
            }
            change
                .states
                .push((canary, VersionState::Canary, VersionState::Stable));
            change.canary = None;
            change.previous = (stable, stable.map(|_| until));
            change.detail = json!({
                "stable": canary, "from": stable, "canary_weight": share,
                "previous_until": stable.map(|_| rfc3339(until)), "retired": retired,
            });
        }
        RolloutOp::Rollback { reason } => {
            let (canary, shadow) = (model.canary(), model.shadow());
            if canary.is_some() || shadow.is_some() {
                change.action = "rollback";
                change.version = canary.or(shadow).map(|(v, _)| v);
                for (v, state) in [
                    (canary, VersionState::Canary),
                    (shadow, VersionState::Shadow),
                ] {
                    if let Some((v, _)) = v {
                        change.states.push((v, state, VersionState::Staged));
                    }
                }
                change.canary = None;
                change.shadow = None;
                change.detail = json!({
                    "canary": canary.map(|c| c.0), "canary_weight": canary.map(|c| c.1),
                    "shadow": shadow.map(|s| s.0), "stable": stable, "reason": reason,
                });
            } else {
                let previous = model
                    .traffic
                    .previous_stable
                    .filter(|v| version_of(*v).ok() == Some(VersionState::Staged));
                let (Some(previous), Some(current)) = (previous, stable) else {
                    return Err(conflict(format!(
                        "model '{name}' has nothing to roll back: no canary or shadow runs, and no version that was stable before a promote is still loaded"
                    )));
                };
                change.action = "rollback";
                change.version = Some(previous);
                change
                    .states
                    .push((current, VersionState::Stable, VersionState::Staged));
                change
                    .states
                    .push((previous, VersionState::Staged, VersionState::Stable));
                change.previous = (None, None);
                change.detail = json!({"stable": previous, "from": current, "reason": reason});
            }
        }
        RolloutOp::Expire => {
            let Some(previous) = model.traffic.previous_stable else {
                return Err(conflict(format!(
                    "model '{name}' has no version left loaded by a promote"
                )));
            };
            change.action = "expire";
            change.version = Some(previous);
            change.previous = (None, None);
            let labels = custom_labels(previous);
            let state = version_of(previous)?;
            if state == VersionState::Staged && labels.is_empty() {
                change
                    .states
                    .push((previous, VersionState::Staged, VersionState::Retired));
                change.detail = json!({"retired": previous});
            } else {
                change.detail = json!({"kept": previous, "state": state, "labels": labels});
            }
        }
        RolloutOp::Auto { start } => {
            let first = *start
                .steps
                .first()
                .ok_or_else(|| conflict("steps: at least one share".into()))?;
            let mut started = plan(
                model,
                &RolloutOp::Start {
                    version: start.version,
                    weight: first,
                },
                at,
            )?;
            started.action = "auto";
            started.detail = json!({
                "canary": start.version, "steps": start.steps, "interval_secs": start.interval_secs,
                "max_error_ratio": start.max_error_ratio, "max_p99": start.max_p99, "p99_slack_ms": start.p99_slack_ms,
                "min_requests": start.min_requests, "min_agreement": start.min_agreement,
                "error_floor": start.error_floor, "stable": stable,
            });
            started.plan = Some(AutoPlan {
                version: start.version,
                steps: start.steps.clone(),
                step: 0,
                interval_secs: start.interval_secs,
                max_error_ratio: start.max_error_ratio,
                max_p99: start.max_p99,
                p99_slack_ms: start.p99_slack_ms,
                min_requests: start.min_requests,
                min_agreement: start.min_agreement,
                error_floor: start.error_floor,
                state: "running".into(),
                reason: format!("started at {first}%"),
                started_by: String::new(),
                started_at: rfc3339(at),
                step_started_at: rfc3339(at),
            });
            return Ok(started);
        }
        RolloutOp::Advance { reason, grace } => {
            let Some(mut auto) = running.clone() else {
                return Err(conflict(format!(
                    "model '{name}' has no automatic rollout running"
                )));
            };
            let mut next = match auto.steps.get(auto.step + 1) {
                Some(weight) => {
                    let mut set = plan(model, &RolloutOp::Set { weight: *weight }, at)?;
                    auto.step += 1;
                    auto.reason = format!("{reason}; now at {weight}%");
                    auto.step_started_at = rfc3339(at);
                    set.action = "auto_step";
                    set.detail["reason"] = json!(reason);
                    set
                }
                None => {
                    let mut promoted = plan(model, &RolloutOp::Promote { grace: *grace }, at)?;
                    auto.state = "succeeded".into();
                    auto.reason = format!("{reason}; promoted");
                    promoted.action = "auto_promote";
                    promoted.detail["reason"] = json!(reason);
                    promoted
                }
            };
            next.plan = Some(auto);
            return Ok(next);
        }
        RolloutOp::Cancel { reason } => {
            let Some(mut auto) = running.clone() else {
                return Err(conflict(format!(
                    "model '{name}' has no automatic rollout running"
                )));
            };
            auto.state = "cancelled".into();
            auto.reason = reason.clone();
            change.action = "auto_cancel";
            change.version = Some(auto.version);
            change.detail = json!({"reason": reason});
            change.plan = Some(auto);
        }
    }
    // A change by hand of the canary ends an automatic rollout: a rollback as rolled back,
    // anything else as taken over.
    if let Some(mut auto) = running {
        let ended = match op {
            RolloutOp::Rollback { reason } => Some((
                "rolled_back",
                reason
                    .clone()
                    .unwrap_or_else(|| "rolled back by hand".into()),
            )),
            RolloutOp::Set { .. } | RolloutOp::Promote { .. } => Some((
                "cancelled",
                format!("taken over by hand: {}", change.action),
            )),
            _ => None,
        };
        if let Some((state, reason)) = ended {
            auto.state = state.into();
            auto.reason = reason;
            change.plan = Some(auto);
        }
    }
    Ok(change)
}

impl Store {
    /// Plans `op` on the model as the registry holds it now and applies it; returns the model
    /// afterwards and what changed.
    pub async fn rollout(
        &self,
        model: &str,
        op: &RolloutOp,
        actor: &Actor,
    ) -> Result<(ModelInfo, Change)> {
        let current = self.model(model).await?;
        self.rollout_from(&current, op, actor).await
    }

    /// Plans `op` on `model` as the caller read it and applies it, refused when the model
    /// changed since (the controller acts only on what it judged).
    pub async fn rollout_from(
        &self,
        model: &ModelInfo,
        op: &RolloutOp,
        actor: &Actor,
    ) -> Result<(ModelInfo, Change)> {
        let change = plan(model, op, now())?;
        self.apply(&model.name, &change, actor).await?;
        Ok((self.model(&model.name).await?, change))
    }

    /// Applies a planned change in one transaction, with its history and audit records; refuses
    /// it when the model changed since the plan read it.
    pub async fn apply(&self, model: &str, change: &Change, actor: &Actor) -> Result<()> {
        let at = now();
        let detail = change.detail.to_string();
        let version = change.version.map(|v| v as i64);
        on_pool!(self, pool => {
            let mut tx = pool.begin_with(self.write_begin()).await?;
            if self.backend() == Backend::Postgres {
                lock_model(&mut *tx, model).await?;
            }
            let current = sqlx::query("UPDATE models SET revision = revision + 1 WHERE name = $1 AND revision = $2")
                .bind(model)
                .bind(change.revision as i64)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if current != 1 {
                return Err(conflict(format!(
                    "model '{model}' changed while this change was made; look at it again (vaticctl rollout status {model}) and retry"
                )));
            }
            for (v, from, to) in &change.states {
                let done = sqlx::query("UPDATE model_versions SET state = $1, updated_by = $2, updated_at = $3 WHERE model = $4 AND version = $5 AND state = $6")
                    .bind(to.as_str())
                    .bind(&actor.label)
                    .bind(at)
                    .bind(model)
                    .bind(*v as i64)
                    .bind(from.as_str())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if done != 1 {
                    return Err(conflict(format!(
                        "model '{model}' version {v} is no longer {from}: the model changed while this change was made; look at it again (vaticctl rollout status {model}) and retry"
                    )));
                }
            }
            sqlx::query("DELETE FROM traffic WHERE model = $1")
                .bind(model)
                .execute(&mut *tx)
                .await?;
            for (share, shadow) in [(change.canary, false), (change.shadow, true)] {
                if let Some((v, weight)) = share {
                    sqlx::query("INSERT INTO traffic (model, version, weight, shadow) VALUES ($1, $2, $3, $4)")
                        .bind(model)
                        .bind(v as i64)
                        .bind(weight as i32)
                        .bind(shadow)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            for (label, target) in &change.labels {
                match target {
                    Some(v) => sqlx::query("INSERT INTO model_labels (model, label, version, updated_by, updated_at) VALUES ($1, $2, $3, $4, $5) \
                                            ON CONFLICT (model, label) DO UPDATE SET version = $3, updated_by = $4, updated_at = $5")
                        .bind(model)
                        .bind(label)
                        .bind(*v as i64)
                        .bind(&actor.label)
                        .bind(at)
                        .execute(&mut *tx)
                        .await?,
                    None => sqlx::query("DELETE FROM model_labels WHERE model = $1 AND label = $2")
                        .bind(model)
                        .bind(label)
                        .execute(&mut *tx)
                        .await?,
                };
            }
            sqlx::query("UPDATE models SET previous_stable = $1, previous_until = $2 WHERE name = $3")
                .bind(change.previous.0.map(|v| v as i64))
                .bind(change.previous.1)
                .bind(model)
                .execute(&mut *tx)
                .await?;
            if let Some(auto) = &change.plan {
                let started_by = if auto.started_by.is_empty() { actor.label.as_str() } else { auto.started_by.as_str() };
                let time = |t: &str| DateTime::parse_from_rfc3339(t).map(|t| t.with_timezone(&Utc)).unwrap_or(at);
                sqlx::query("INSERT INTO rollout_plans (model, version, steps, step, interval_ms, max_error_ratio, max_p99, min_requests, min_agreement, error_floor, state, reason, started_by, started_at, step_started_at, p99_slack_ms) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
                             ON CONFLICT (model) DO UPDATE SET version = $2, steps = $3, step = $4, interval_ms = $5, max_error_ratio = $6, max_p99 = $7, min_requests = $8, \
                             min_agreement = $9, error_floor = $10, state = $11, reason = $12, started_by = $13, started_at = $14, step_started_at = $15, p99_slack_ms = $16")
                    .bind(model)
                    .bind(auto.version as i64)
                    .bind(serde_json::to_string(&auto.steps)?)
                    .bind(auto.step as i32)
                    .bind((auto.interval_secs * 1000) as i64)
                    .bind(auto.max_error_ratio)
                    .bind(auto.max_p99)
                    .bind(auto.min_requests as i64)
                    .bind(auto.min_agreement)
                    .bind(auto.error_floor)
                    .bind(&auto.state)
                    .bind(&auto.reason)
                    .bind(started_by)
                    .bind(time(&auto.started_at))
                    .bind(time(&auto.step_started_at))
                    .bind(auto.p99_slack_ms)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query("INSERT INTO rollout_history (model, at, actor, action, version, detail) VALUES ($1, $2, $3, $4, $5, $6)")
                .bind(model)
                .bind(at)
                .bind(&actor.label)
                .bind(change.action)
                .bind(version)
                .bind(&detail)
                .execute(&mut *tx)
                .await?;
            audit_in(&mut *tx, at, actor, change.action, Some(model), version, &detail).await?;
            if self.backend() == Backend::Postgres {
                announce(&mut *tx, model).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Writes what this replica counted of each rollout side since its last write, and drops
    /// records older than `keep`.
    pub async fn write_rollout_stats(
        &self,
        replica: &str,
        rows: &[(String, u64, String, SideStats)],
        keep: Duration,
    ) -> Result<()> {
        let at = now();
        let oldest = at - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
        on_pool!(self, pool => {
            let mut tx = pool.begin_with(self.write_begin()).await?;
            for (model, version, side, stats) in rows {
                sqlx::query("INSERT INTO rollout_stats (at, replica, model, version, side, stats) VALUES ($1, $2, $3, $4, $5, $6)")
                    .bind(at)
                    .bind(replica)
                    .bind(model)
                    .bind(*version as i64)
                    .bind(side)
                    .bind(serde_json::to_string(stats)?)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query("DELETE FROM rollout_stats WHERE at < $1")
                .bind(oldest)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Each side's figures of a model since `since`, summed over every replica: `(version,
    /// side, figures)`.
    pub async fn rollout_window(
        &self,
        model: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<(u64, String, SideStats)>> {
        let rows = on_pool!(self, pool => {
            sqlx::query("SELECT version, side, stats FROM rollout_stats WHERE model = $1 AND at >= $2")
                .bind(model)
                .bind(since)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| -> Result<(u64, String, String)> {
                    Ok((r.try_get::<i64, _>("version")? as u64, r.try_get("side")?, r.try_get("stats")?))
                })
                .collect::<Result<Vec<_>>>()?
        });
        let mut sums: Vec<(u64, String, SideStats)> = Vec::new();
        for (version, side, stats) in rows {
            let stats: SideStats = serde_json::from_str(&stats)?;
            match sums.iter_mut().find(|s| s.0 == version && s.1 == side) {
                Some(sum) => sum.2.merge(&stats),
                None => sums.push((version, side, stats)),
            }
        }
        sums.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        Ok(sums)
    }

    /// Records the controller's last decision on a running automatic rollout (no history: it
    /// changes nothing).
    pub async fn note_plan(&self, model: &str, reason: &str) -> Result<()> {
        on_pool!(self, pool => {
            sqlx::query("UPDATE rollout_plans SET reason = $1 WHERE model = $2 AND state = 'running'")
                .bind(reason)
                .bind(model)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Takes or renews the lease `name` for `holder` until `for_` from now, when it is free,
    /// expired or `holder`'s already; returns whether `holder` has it.
    pub async fn take_lease(&self, name: &str, holder: &str, for_: Duration) -> Result<bool> {
        let at = now();
        let until = at + chrono::Duration::from_std(for_).unwrap_or(chrono::Duration::MAX);
        let held = on_pool!(self, pool => {
            let mut tx = pool.begin_with(self.write_begin()).await?;
            sqlx::query("INSERT INTO controller_lease (name, holder, until) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING")
                .bind(name)
                .bind(holder)
                .bind(until)
                .execute(&mut *tx)
                .await?;
            let taken = sqlx::query("UPDATE controller_lease SET holder = $1, until = $2 WHERE name = $3 AND (holder = $1 OR until < $4)")
                .bind(holder)
                .bind(until)
                .bind(name)
                .bind(at)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            taken == 1
        });
        Ok(held)
    }

    /// Who holds the lease `name`, and until when.
    pub async fn lease(&self, name: &str) -> Result<Option<(String, String)>> {
        let row = on_pool!(self, pool => {
            sqlx::query("SELECT holder, until FROM controller_lease WHERE name = $1")
                .bind(name)
                .fetch_optional(pool)
                .await?
                .map(|r| -> Result<(String, String)> { Ok((r.try_get("holder")?, rfc3339(r.try_get("until")?))) })
                .transpose()?
        });
        Ok(row)
    }

    /// Gives the lease `name` up, when `holder` has it.
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        on_pool!(self, pool => {
            sqlx::query("DELETE FROM controller_lease WHERE name = $1 AND holder = $2")
                .bind(name)
                .bind(holder)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// The newest `limit` changes of a model's labels and traffic, newest first.
    pub async fn rollout_history(&self, model: &str, limit: u32) -> Result<Vec<RolloutEvent>> {
        self.model(model).await?;
        on_pool!(self, pool => {
            let rows = sqlx::query("SELECT at, actor, action, version, detail FROM rollout_history WHERE model = $1 ORDER BY id DESC LIMIT $2")
                .bind(model)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(|r| -> Result<RolloutEvent> {
                    let detail: String = r.try_get("detail")?;
                    Ok(RolloutEvent {
                        at: rfc3339(r.try_get("at")?),
                        actor: r.try_get("actor")?,
                        action: r.try_get("action")?,
                        version: r.try_get::<Option<i64>, _>("version")?.map(|v| v as u64),
                        detail: serde_json::from_str(&detail)?,
                    })
                })
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vatic_schema::admin::{LogMode, ModelVersionInfo, Signature, Traffic};

    fn model(states: &[VersionState], canary_weight: u32) -> ModelInfo {
        let versions: Vec<ModelVersionInfo> = states
            .iter()
            .enumerate()
            .map(|(i, s)| ModelVersionInfo {
                model: "m".into(),
                version: i as u64 + 1,
                state: *s,
                sha256: String::new(),
                size: 0,
                signature: Signature {
                    inputs: vec![],
                    outputs: vec![],
                    batched: true,
                },
                config: String::new(),
                created_by: String::new(),
                created_at: String::new(),
                updated_by: String::new(),
                updated_at: String::new(),
                loaded: Vec::new(),
            })
            .collect();
        let labels = versions
            .iter()
            .filter_map(|v| v.state.label().map(|l| (l.to_string(), v.version)))
            .collect();
        ModelInfo {
            name: "m".into(),
            created_at: String::new(),
            log_mode: LogMode::Off,
            log_sample_rate: 1.0,
            cache: Default::default(),
            versions,
            labels,
            traffic: Traffic {
                canary_weight,
                ..Traffic::default()
            },
            revision: 0,
            engine: Default::default(),
        }
    }

    use VersionState::{Canary, Retired, Shadow, Stable, Staged};

    fn refused(m: &ModelInfo, op: RolloutOp) -> String {
        plan(m, &op, Utc::now()).expect_err("refused").to_string()
    }

    #[test]
    fn a_canary_starts_from_a_staged_or_shadow_version_and_only_one_runs() {
        let m = model(&[Stable, Staged, Shadow], 0);
        let c = plan(
            &m,
            &RolloutOp::Start {
                version: 2,
                weight: 10,
            },
            Utc::now(),
        )
        .unwrap();
        assert_eq!(c.canary, Some((2, 10)));
        assert_eq!(c.states, [(1, Stable, Stable), (2, Staged, Canary)]);
        let c = plan(
            &m,
            &RolloutOp::Start {
                version: 3,
                weight: 5,
            },
            Utc::now(),
        )
        .unwrap();
        assert_eq!((c.canary, c.shadow), (Some((3, 5)), None));

        let running = model(&[Stable, Canary, Staged], 10);
        assert!(refused(
            &running,
            RolloutOp::Start {
                version: 3,
                weight: 10
            }
        )
        .contains("version 2 is the canary (10%)"));
        assert!(refused(
            &running,
            RolloutOp::Start {
                version: 2,
                weight: 10
            }
        )
        .contains("rollout set"));
        assert!(refused(
            &m,
            RolloutOp::Start {
                version: 1,
                weight: 10
            }
        )
        .contains("stable version already"));
        assert!(refused(
            &model(&[Retired, Stable], 0),
            RolloutOp::Start {
                version: 1,
                weight: 10
            }
        )
        .contains("retired"));
        assert!(refused(
            &m,
            RolloutOp::Start {
                version: 2,
                weight: 101
            }
        )
        .contains("0 to 100, got 101"));
        assert!(refused(
            &m,
            RolloutOp::Start {
                version: 9,
                weight: 1
            }
        )
        .contains("has no version 9"));
    }

    #[test]
    fn promote_keeps_the_old_stable_for_the_grace_and_rollback_returns_to_it() {
        let at = Utc::now();
        let m = model(&[Stable, Canary], 50);
        let c = plan(
            &m,
            &RolloutOp::Promote {
                grace: Duration::from_secs(60),
            },
            at,
        )
        .unwrap();
        assert_eq!(c.states, [(1, Stable, Staged), (2, Canary, Stable)]);
        assert_eq!(c.canary, None);
        assert_eq!(
            c.previous,
            (Some(1), Some(at + chrono::Duration::seconds(60)))
        );

        let mut after = model(&[Staged, Stable], 0);
        after.traffic.previous_stable = Some(1);
        let c = plan(&after, &RolloutOp::Rollback { reason: None }, at).unwrap();
        assert_eq!(c.states, [(2, Stable, Staged), (1, Staged, Stable)]);
        assert_eq!(c.previous, (None, None));

        let expired = model(&[Retired, Stable], 0);
        assert!(refused(&expired, RolloutOp::Rollback { reason: None })
            .contains("nothing to roll back"));
        assert!(refused(
            &expired,
            RolloutOp::Promote {
                grace: Duration::ZERO
            }
        )
        .contains("no canary to promote"));
    }

    #[test]
    fn a_staged_version_shadows_and_only_one_at_a_time() {
        let m = model(&[Stable, Staged, Staged], 0);
        let c = plan(
            &m,
            &RolloutOp::Shadow {
                version: 2,
                sample: 25,
            },
            Utc::now(),
        )
        .unwrap();
        assert_eq!(c.states, [(2, Staged, Shadow)]);
        assert_eq!(c.shadow, Some((2, 25)));
        let mut running = model(&[Stable, Shadow, Staged], 0);
        running.traffic.shadow_sample = 25;
        let c = plan(
            &running,
            &RolloutOp::Shadow {
                version: 2,
                sample: 100,
            },
            Utc::now(),
        )
        .unwrap();
        assert_eq!(
            (c.shadow, c.detail["from"].clone()),
            (Some((2, 100)), json!(25))
        );
        assert!(refused(
            &running,
            RolloutOp::Shadow {
                version: 3,
                sample: 5
            }
        )
        .contains("version 2 is the shadow"));
        assert!(refused(
            &m,
            RolloutOp::Shadow {
                version: 1,
                sample: 5
            }
        )
        .contains("only a staged version"));
        assert!(refused(
            &m,
            RolloutOp::Shadow {
                version: 2,
                sample: 0
            }
        )
        .contains("1 to 100, got 0"));
        let c = plan(&running, &RolloutOp::ShadowStop, Utc::now()).unwrap();
        assert_eq!((c.states, c.shadow), (vec![(2, Shadow, Staged)], None));
        assert!(refused(&m, RolloutOp::ShadowStop).contains("no shadow to stop"));
    }

    #[test]
    fn rollback_ends_the_canary_and_the_shadow_at_once() {
        let mut m = model(&[Stable, Canary, Shadow], 30);
        m.traffic.shadow_sample = 25;
        let c = plan(
            &m,
            &RolloutOp::Rollback {
                reason: Some("errors".into()),
            },
            Utc::now(),
        )
        .unwrap();
        assert_eq!(c.states, [(2, Canary, Staged), (3, Shadow, Staged)]);
        assert_eq!((c.canary, c.shadow), (None, None));
        assert_eq!(c.detail["reason"], "errors");
    }

    #[test]
    fn a_second_promote_retires_the_first_ones_leftover_unless_a_label_keeps_it() {
        let mut m = model(&[Staged, Stable, Canary], 100);
        m.traffic.previous_stable = Some(1);
        let grace = Duration::from_secs(1);
        let c = plan(&m, &RolloutOp::Promote { grace }, Utc::now()).unwrap();
        assert_eq!(c.states[0], (1, Staged, Retired));
        m.labels.insert("blue".into(), 1);
        let c = plan(&m, &RolloutOp::Promote { grace }, Utc::now()).unwrap();
        assert!(c.states.iter().all(|s| s.0 != 1));
        let c = plan(&m, &RolloutOp::Expire, Utc::now()).unwrap();
        assert!(c.states.is_empty(), "the labelled version stays");
        assert_eq!(c.previous, (None, None));
    }

    #[test]
    fn labels_name_served_versions_and_unknown_labels_are_named() {
        let m = model(&[Stable, Retired, Staged], 0);
        let c = plan(
            &m,
            &RolloutOp::Label {
                label: "blue".into(),
                version: 3,
            },
            Utc::now(),
        )
        .unwrap();
        assert_eq!(c.labels, [("blue".to_string(), Some(3))]);
        assert!(refused(
            &m,
            RolloutOp::Label {
                label: "blue".into(),
                version: 2
            }
        )
        .contains("retired"));
        let e = refused(
            &m,
            RolloutOp::Unlabel {
                label: "green".into(),
            },
        );
        assert!(
            e.contains("no label 'green'") && e.contains("stable"),
            "{e}"
        );
        assert!(refused(&m, RolloutOp::Set { weight: 5 }).contains("has no canary"));
    }
}
