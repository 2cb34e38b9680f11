//! The automatic rollout controller. Every api replica runs the loop; the one holding the
//! `rollout` lease in the database acts, and another takes over when it stops renewing it (the
//! lease lasts `rollout.controller_lease_ms`). Everything it needs is in the database, plans and
//! figures alike, so the replica that takes over carries on where the last one stopped.
//!
//! Each tick, for each running plan it judges the canary over the current step against the
//! stable version over the whole rollout: a breach rolls back at once; a step that held up for
//! its interval on at least `min_requests` requests moves to the next share, and after the last
//! the canary is promoted.

use super::RolloutSettings;
use prometheus::{IntCounter, IntGauge, Registry};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use vatic_schema::admin::{AutoPlan, ModelInfo};
use vatic_schema::rollout::SideStats;
use vatic_server::Passes;
use vatic_store::{Actor, RolloutOp, Store, StoreError};

/// The lease's name.
pub const LEASE: &str = "rollout";

/// What the controller decides of a step.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Not enough evidence yet, or the interval is not over.
    Wait(String),
    /// The step held up.
    Pass(String),
    /// The canary breached a bound.
    Breach(String),
}

fn percent(ratio: f64) -> String {
    format!("{:.2}%", ratio * 100.0)
}

/// Judges a step: `canary` over the step so far, `stable` over the rollout so far, `shadow`
/// the version's shadow phase if one ran, `elapsed` the step's age.
pub fn judge(
    plan: &AutoPlan,
    canary: &SideStats,
    stable: &SideStats,
    shadow: Option<&SideStats>,
    elapsed: Duration,
) -> Verdict {
    if let (Some(bound), Some(agreement)) =
        (plan.min_agreement, shadow.and_then(SideStats::agreement))
    {
        if agreement < bound {
            return Verdict::Breach(format!(
                "the shadow phase agreed on {} of rows, below {}",
                percent(agreement),
                percent(bound)
            ));
        }
    }
    if canary.requests < plan.min_requests {
        return Verdict::Wait(format!(
            "{} of {} canary requests at {}%",
            canary.requests, plan.min_requests, plan.steps[plan.step]
        ));
    }
    let allowed = (stable.error_ratio() * plan.max_error_ratio).max(plan.error_floor);
    if canary.error_ratio() > allowed {
        return Verdict::Breach(format!(
            "canary error ratio {} over {} requests, above {} ({}x stable's {}, floor {})",
            percent(canary.error_ratio()),
            canary.requests,
            percent(allowed),
            plan.max_error_ratio,
            percent(stable.error_ratio()),
            percent(plan.error_floor)
        ));
    }
    if let (Some(c), Some(s)) = (canary.quantile_ms(0.99), stable.quantile_ms(0.99)) {
        let allowed = (s * plan.max_p99).max(s + plan.p99_slack_ms);
        if c > allowed {
            return Verdict::Breach(format!(
                "canary p99 {c:.1} ms, above {allowed:.1} ms ({}x stable's {s:.1} ms, at least {} ms more)",
                plan.max_p99, plan.p99_slack_ms
            ));
        }
    }
    let summary = format!(
        "canary at {}%: {} requests, error ratio {}, p99 {}",
        plan.steps[plan.step],
        canary.requests,
        percent(canary.error_ratio()),
        canary
            .quantile_ms(0.99)
            .map_or_else(|| "-".into(), |p| format!("{p:.1} ms"))
    );
    if elapsed < Duration::from_secs(plan.interval_secs) {
        Verdict::Wait(format!("{summary}; holding for {}s", plan.interval_secs))
    } else {
        Verdict::Pass(summary)
    }
}

/// The controller's metrics.
#[derive(Clone)]
pub struct ControllerMetrics {
    leader: IntGauge,
    rollbacks: IntCounter,
}

impl ControllerMetrics {
    /// Registers them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<ControllerMetrics> {
        let leader = IntGauge::new(
            "vatic_rollout_controller_leader",
            "1 while this api replica runs the automatic rollout controller.",
        )?;
        let rollbacks = IntCounter::new(
            "vatic_rollout_auto_rollbacks_total",
            "Automatic rollouts this replica rolled back on a breach (`vaticctl rollout history` has the model and the reason).",
        )?;
        registry.register(Box::new(leader.clone()))?;
        registry.register(Box::new(rollbacks.clone()))?;
        Ok(ControllerMetrics { leader, rollbacks })
    }
}

/// This replica's controller loop.
pub struct Controller {
    store: Store,
    replica: String,
    stopped: Arc<AtomicBool>,
}

impl Controller {
    /// Stops the loop and gives the lease up, so another replica takes over at its next tick
    /// rather than when the lease runs out.
    pub async fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        if let Err(e) = self.store.release_lease(LEASE, &self.replica).await {
            tracing::warn!(error = %e, "the rollout controller's lease was not given up; it runs out by itself");
        }
    }
}

/// Runs the controller loop of this replica until [`Controller::stop`]; after each change it
/// runs `passes` (the loops that follow the registry here), so this replica routes by the
/// change at once, without waiting for a notification or its next refresh.
pub fn start(
    store: Store,
    settings: RolloutSettings,
    replica: String,
    metrics: ControllerMetrics,
    passes: Vec<Passes>,
) -> Controller {
    let stopped = Arc::new(AtomicBool::new(false));
    let handle = Controller {
        store: store.clone(),
        replica: replica.clone(),
        stopped: stopped.clone(),
    };
    tokio::spawn(async move {
        let tick = Duration::from_millis(settings.controller_tick_ms);
        let lease = Duration::from_millis(settings.controller_lease_ms);
        let mut leading = false;
        while !stopped.load(Ordering::SeqCst) {
            match store.take_lease(LEASE, &replica, lease).await {
                Ok(held) => {
                    if held != leading {
                        if held {
                            tracing::info!(replica = %replica, "this replica runs the rollout controller");
                        } else {
                            tracing::info!(replica = %replica, "another replica runs the rollout controller");
                        }
                        leading = held;
                        metrics.leader.set(i64::from(held));
                    }
                    if held {
                        if let Err(e) = tick_once(&store, &settings, &metrics, &passes).await {
                            tracing::warn!(error = %e, "rollout controller: this pass failed; trying again");
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "rollout controller: the lease could not be read");
                }
            }
            tokio::time::sleep(tick).await;
        }
    });
    handle
}

async fn tick_once(
    store: &Store,
    settings: &RolloutSettings,
    metrics: &ControllerMetrics,
    passes: &[Passes],
) -> Result<(), StoreError> {
    let models = store.models().await?;
    for model in &models {
        let Some(plan) = model.traffic.auto.as_ref().filter(|p| p.is_running()) else {
            continue;
        };
        let verdict = match model.canary() {
            Some((canary, _)) if canary == plan.version => decide(store, model, plan).await?,
            _ => {
                act(
                    store,
                    passes,
                    model,
                    RolloutOp::Cancel {
                        reason: format!("version {} is no longer the canary", plan.version),
                    },
                )
                .await;
                continue;
            }
        };
        match verdict {
            Verdict::Wait(reason) => {
                if reason != plan.reason {
                    store.note_plan(&model.name, &reason).await?;
                }
            }
            Verdict::Pass(reason) => {
                let grace = Duration::from_secs(settings.promote_grace_secs);
                act(store, passes, model, RolloutOp::Advance { reason, grace }).await;
            }
            Verdict::Breach(reason) => {
                tracing::warn!(model = %model.name, version = plan.version, %reason, "automatic rollout breached: rolling back");
                let reason = format!("automatic: {reason}");
                if act(
                    store,
                    passes,
                    model,
                    RolloutOp::Rollback {
                        reason: Some(reason),
                    },
                )
                .await
                {
                    metrics.rollbacks.inc();
                }
            }
        }
    }
    Ok(())
}

/// Reads the figures and judges the running step of `plan`.
async fn decide(store: &Store, model: &ModelInfo, plan: &AutoPlan) -> Result<Verdict, StoreError> {
    let time = |t: &str| {
        chrono::DateTime::parse_from_rfc3339(t)
            .map(|t| t.with_timezone(&chrono::Utc))
            .unwrap_or_else(|_| chrono::Utc::now())
    };
    let (started, step_started) = (time(&plan.started_at), time(&plan.step_started_at));
    let interval = chrono::Duration::seconds(plan.interval_secs as i64);
    let mut canary = SideStats::default();
    let mut stable = SideStats::default();
    let mut shadow = SideStats::default();
    let stable_version = model.default_version().map(|v| v.version);
    for (version, side, stats) in store
        .rollout_window(&model.name, started - interval)
        .await?
    {
        match side.as_str() {
            "stable" if Some(version) == stable_version => stable.merge(&stats),
            "shadow" if version == plan.version => shadow.merge(&stats),
            _ => {}
        }
    }
    for (version, side, stats) in store.rollout_window(&model.name, step_started).await? {
        if side == "canary" && version == plan.version {
            canary.merge(&stats);
        }
    }
    let elapsed = (chrono::Utc::now() - step_started)
        .to_std()
        .unwrap_or_default();
    let shadow = (plan.step == 0 && shadow.compared > 0).then_some(&shadow);
    Ok(judge(plan, &canary, &stable, shadow, elapsed))
}

/// Applies the controller's change to the model as it judged it (refused when the model
/// changed since: an operator acted, or another replica did) and brings this replica up to
/// date with it; false when it was refused (logged).
async fn act(store: &Store, passes: &[Passes], model: &ModelInfo, op: RolloutOp) -> bool {
    match store
        .rollout_from(model, &op, &Actor::named("controller"))
        .await
    {
        Ok((_, change)) => {
            tracing::info!(model = %model.name, action = change.action, version = ?change.version, detail = %change.detail, "rollout controller");
            // Briefly: the loop renews its lease between ticks.
            for p in passes {
                p.run(Duration::from_secs(1)).await;
            }
            true
        }
        Err(e) => {
            tracing::warn!(model = %model.name, error = %e, "rollout controller: change refused");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> AutoPlan {
        AutoPlan {
            version: 2,
            steps: vec![5, 25, 50, 100],
            step: 1,
            interval_secs: 60,
            max_error_ratio: 2.0,
            max_p99: 1.5,
            p99_slack_ms: 5.0,
            min_requests: 100,
            min_agreement: Some(0.99),
            error_floor: 0.005,
            state: "running".into(),
            reason: String::new(),
            started_by: String::new(),
            started_at: String::new(),
            step_started_at: String::new(),
        }
    }

    fn side(requests: u64, errors: u64, ms: f64) -> SideStats {
        let mut s = SideStats::default();
        for i in 0..requests {
            s.answered(if i < errors { 503 } else { 200 }, ms);
        }
        s
    }

    #[test]
    fn a_step_passes_waits_or_breaches_by_its_bounds() {
        let p = plan();
        let minute = Duration::from_secs(60);
        let stable = side(1000, 10, 4.0);
        assert!(
            matches!(judge(&p, &side(99, 0, 4.0), &stable, None, minute), Verdict::Wait(r) if r.contains("99 of 100"))
        );
        assert!(matches!(
            judge(&p, &side(200, 2, 4.0), &stable, None, minute),
            Verdict::Pass(_)
        ));
        assert!(
            matches!(judge(&p, &side(200, 2, 4.0), &stable, None, minute / 2), Verdict::Wait(r) if r.contains("holding"))
        );
        // 2x stable's 1% is 2%: 3% breaches.
        let v = judge(&p, &side(200, 6, 4.0), &stable, None, minute);
        assert!(
            matches!(&v, Verdict::Breach(r) if r.contains("3.00%") && r.contains("2.00%")),
            "{v:?}"
        );
        // Beside a stable version without errors the floor applies.
        let clean = side(1000, 0, 4.0);
        assert!(matches!(
            judge(&p, &side(1000, 4, 4.0), &clean, None, minute),
            Verdict::Pass(_)
        ));
        assert!(matches!(
            judge(&p, &side(1000, 6, 4.0), &clean, None, minute),
            Verdict::Breach(_)
        ));
        // Slow: p99 past 1.5x.
        let v = judge(&p, &side(200, 0, 40.0), &stable, None, minute);
        assert!(
            matches!(&v, Verdict::Breach(r) if r.contains("p99")),
            "{v:?}"
        );
        // Within the slack: 4 ms against 1.5 ms is more than 1.5x, but less than 5 ms more.
        let quick = side(1000, 0, 1.5);
        let v = judge(&p, &side(200, 0, 4.0), &quick, None, minute);
        assert!(matches!(v, Verdict::Pass(_)), "{v:?}");
        // A shadow phase that disagreed too often fails the rollout at once.
        let mut shadow = SideStats {
            rows: 100,
            agreeing_rows: 95,
            ..SideStats::default()
        };
        let v = judge(&p, &side(0, 0, 4.0), &stable, Some(&shadow), minute);
        assert!(
            matches!(&v, Verdict::Breach(r) if r.contains("95.00%")),
            "{v:?}"
        );
        shadow.agreeing_rows = 100;
        assert!(matches!(
            judge(&p, &side(200, 0, 4.0), &stable, Some(&shadow), minute),
            Verdict::Pass(_)
        ));
    }
}
