//! The admin API of rollouts, `/admin/v1/models/{name}/labels/...` and `.../rollout...`:
//! labels, the canary's share, promote, rollback, status and history. Every change is one
//! transaction with its history and audit records; a label or a canary can name only a version
//! that is ready somewhere, so no request is sent where it cannot be answered.

use super::admin::{actor, admin_group, store, AdminError};
use crate::state::State;
use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use std::time::Duration;
use vatic_schema::admin::{
    AutoStart, ControllerLease, LabelSet, RollbackRequest, RolloutSet, RolloutStart, RolloutStatus,
    ShadowStart, VersionState, BUILTIN_LABELS,
};
use vatic_schema::rollout::SideSummary;
use vatic_server::{Need, Routes};
use vatic_store::RolloutOp;

/// Registers the rollout routes.
pub fn configure(routes: &mut Routes<'_>) {
    routes.group(admin_group(), |routes| {
        routes
            .add(
                Method::PUT,
                "/admin/v1/models/{name}/labels/{label}",
                Need::Deploy,
                "Point a label at a ready version",
                put_label,
            )
            .add(
                Method::DELETE,
                "/admin/v1/models/{name}/labels/{label}",
                Need::Deploy,
                "Remove a label",
                delete_label,
            )
            .add(
                Method::GET,
                "/admin/v1/models/{name}/rollout",
                Need::ModelRead,
                "The model's split, labels and what each version's readiness is",
                get_status,
            )
            .add(
                Method::PUT,
                "/admin/v1/models/{name}/rollout/shadow",
                Need::Deploy,
                "Copy a sample of requests to a staged version and compare its answers",
                put_shadow,
            )
            .add(
                Method::DELETE,
                "/admin/v1/models/{name}/rollout/shadow",
                Need::Deploy,
                "Stop the shadow",
                delete_shadow,
            )
            .add(
                Method::POST,
                "/admin/v1/models/{name}/rollout/auto",
                Need::Deploy,
                "Start an automatic rollout: the share steps up while the canary holds up, and rolls back on a breach",
                start_auto,
            )
            .add(
                Method::PATCH,
                "/admin/v1/models/{name}/rollout",
                Need::Deploy,
                "Change the canary's share",
                set,
            )
            .add(
                Method::POST,
                "/admin/v1/models/{name}/rollout/promote",
                Need::Deploy,
                "Make the canary stable; the old stable stays loaded for the grace period",
                promote,
            )
            .add(
                Method::POST,
                "/admin/v1/models/{name}/rollout/rollback",
                Need::Deploy,
                "End the canary, or return to the version stable before the last promote",
                rollback,
            )
            .add(
                Method::POST,
                "/admin/v1/models/{name}/rollout",
                Need::Deploy,
                "Start a canary: a version takes a share of unversioned requests",
                start,
            )
            .add(
                Method::GET,
                "/admin/v1/models/{name}/rollout/history",
                Need::ModelRead,
                "Every change of the model's labels and traffic, newest first",
                history,
            );
    });
}

/// Labels an operator may set: a letter, then letters, digits, `_`, `-` or `.`; at most 64;
/// not one of the labels rollouts set.
fn check_label(label: &str) -> Result<(), AdminError> {
    if BUILTIN_LABELS.contains(&label) {
        return Err(AdminError::BadRequest(format!(
            "the label '{label}' is set by rollouts: use `vaticctl rollout start`, `promote` or `rollback`"
        )));
    }
    let ok = label.len() <= 64
        && label
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic())
        && label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !ok {
        return Err(AdminError::BadRequest(format!(
            "invalid label '{label}': use letters, digits, '_', '-' and '.', starting with a letter, at most 64 characters"
        )));
    }
    Ok(())
}

/// Refuses to send requests to a retired version, or to one no worker (or, standalone, this
/// process) has ready.
async fn check_ready(s: &State, model: &str, version: u64, what: &str) -> Result<(), AdminError> {
    if store(s)?.model_version(model, version).await?.state == VersionState::Retired {
        return Err(AdminError::Store(vatic_store::StoreError::Conflict(
            format!("model '{model}' version {version} is retired; push it again to serve it"),
        )));
    }
    if s.backend.version_ready(model, version) {
        return Ok(());
    }
    Err(AdminError::NotReady(format!(
        "model '{model}' version {version} is not ready on any worker (still loading, or it failed to load); {what} can name only a ready version: see `vaticctl workers` and retry when it is READY"
    )))
}

/// Applies `op`, brings this replica up to date and answers with the model afterwards.
async fn change(
    s: &State,
    req: &HttpRequest,
    model: &str,
    op: RolloutOp,
) -> Result<HttpResponse, AdminError> {
    let actor = actor(req);
    let (info, change) = store(s)?.rollout(model, &op, &actor).await?;
    tracing::info!(model, action = change.action, version = ?change.version, detail = %change.detail, actor = %actor.label, "rollout change");
    s.registry_changed().await;
    Ok(HttpResponse::Ok().json(info))
}

async fn put_label(
    s: State,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Json<LabelSet>,
) -> Result<HttpResponse, AdminError> {
    let (name, label) = path.into_inner();
    check_label(&label)?;
    check_ready(&s, &name, body.version, "a label").await?;
    let op = RolloutOp::Label {
        label,
        version: body.version,
    };
    change(&s, &req, &name, op).await
}

async fn delete_label(
    s: State,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, AdminError> {
    let (name, label) = path.into_inner();
    check_label(&label)?;
    change(&s, &req, &name, RolloutOp::Unlabel { label }).await
}

async fn start(
    s: State,
    req: HttpRequest,
    name: web::Path<String>,
    body: web::Json<RolloutStart>,
) -> Result<HttpResponse, AdminError> {
    check_share(body.canary)?;
    check_ready(&s, &name, body.version, "a canary").await?;
    let op = RolloutOp::Start {
        version: body.version,
        weight: body.canary,
    };
    change(&s, &req, &name, op).await
}

async fn set(
    s: State,
    req: HttpRequest,
    name: web::Path<String>,
    body: web::Json<RolloutSet>,
) -> Result<HttpResponse, AdminError> {
    check_share(body.canary)?;
    let op = RolloutOp::Set {
        weight: body.canary,
    };
    change(&s, &req, &name, op).await
}

fn check_share(percent: u32) -> Result<(), AdminError> {
    if percent > 100 {
        return Err(AdminError::BadRequest(format!(
            "canary: a share is a percent from 0 to 100, got {percent}"
        )));
    }
    Ok(())
}

async fn promote(
    s: State,
    req: HttpRequest,
    name: web::Path<String>,
) -> Result<HttpResponse, AdminError> {
    let model = store(&s)?.model(&name).await?;
    if let Some((canary, _)) = model.canary() {
        check_ready(&s, &name, canary, "the stable version").await?;
    }
    let op = RolloutOp::Promote {
        grace: Duration::from_secs(s.rollout.promote_grace_secs),
    };
    change(&s, &req, &name, op).await
}

async fn rollback(
    s: State,
    req: HttpRequest,
    name: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, AdminError> {
    let body: RollbackRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RollbackRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| AdminError::BadRequest(format!("invalid JSON body: {e}")))?
    };
    let model = store(&s)?.model(&name).await?;
    // Returning to the previous stable version sends every request there: it must be ready.
    if model.canary().is_none() && model.shadow().is_none() {
        if let Some(previous) = model.traffic.previous_stable {
            check_ready(&s, &name, previous, "a rollback").await?;
        }
    }
    let op = RolloutOp::Rollback {
        reason: body.reason,
    };
    change(&s, &req, &name, op).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusQuery {
    /// Seconds back from now.
    window: Option<u64>,
}

async fn get_status(
    s: State,
    name: web::Path<String>,
    q: web::Query<StatusQuery>,
) -> Result<HttpResponse, AdminError> {
    let window_secs = q.window.unwrap_or(300);
    if window_secs == 0 || window_secs > 86_400 {
        return Err(AdminError::BadRequest(format!(
            "window: from 1 to 86400 seconds, got {window_secs}"
        )));
    }
    let store = store(&s)?;
    let model = store.model(&name).await?;
    let ready = model
        .versions
        .iter()
        .filter(|v| v.state != VersionState::Retired)
        .map(|v| (v.version, s.backend.version_ready(&name, v.version)))
        .collect();
    let since = chrono::Utc::now() - chrono::Duration::seconds(window_secs as i64);
    let sides = store
        .rollout_window(&name, since)
        .await?
        .iter()
        .map(|(version, side, stats)| SideSummary::of(side, *version, stats))
        .collect();
    let controller = store
        .lease(crate::rollout::controller::LEASE)
        .await?
        .map(|(holder, until)| ControllerLease { holder, until });
    Ok(HttpResponse::Ok().json(RolloutStatus {
        model,
        ready,
        window_secs,
        sides,
        controller,
        replica: s.replica.clone(),
    }))
}

async fn put_shadow(
    s: State,
    req: HttpRequest,
    name: web::Path<String>,
    body: web::Json<ShadowStart>,
) -> Result<HttpResponse, AdminError> {
    if !(1..=100).contains(&body.sample) {
        return Err(AdminError::BadRequest(format!(
            "sample: a percent from 1 to 100, got {}",
            body.sample
        )));
    }
    check_ready(&s, &name, body.version, "a shadow").await?;
    let op = RolloutOp::Shadow {
        version: body.version,
        sample: body.sample,
    };
    change(&s, &req, &name, op).await
}

/// Checks an automatic rollout's settings, naming the one at fault.
fn check_auto(a: &AutoStart) -> Result<(), AdminError> {
    let bad = |m: String| Err(AdminError::BadRequest(m));
    if a.steps.is_empty() || a.steps.len() > 100 {
        return bad(format!(
            "steps: from 1 to 100 shares, got {}",
            a.steps.len()
        ));
    }
    if a.steps.iter().any(|s| !(1..=100).contains(s)) || a.steps.windows(2).any(|w| w[0] >= w[1]) {
        return bad(format!(
            "steps: increasing percents from 1 to 100, got {:?}",
            a.steps
        ));
    }
    if !(1..=86_400).contains(&a.interval_secs) {
        return bad(format!(
            "interval_secs: from 1 to 86400, got {}",
            a.interval_secs
        ));
    }
    for (name, v) in [
        ("max_error_ratio", a.max_error_ratio),
        ("max_p99", a.max_p99),
    ] {
        if !(v.is_finite() && v >= 1.0) {
            return bad(format!(
                "{name}: a multiple of the stable version's, at least 1, got {v}"
            ));
        }
    }
    if !(a.p99_slack_ms.is_finite() && a.p99_slack_ms >= 0.0) {
        return bad(format!(
            "p99_slack_ms: milliseconds, at least 0, got {}",
            a.p99_slack_ms
        ));
    }
    if a.min_requests == 0 {
        return bad("min_requests: at least 1".into());
    }
    if let Some(v) = a.min_agreement {
        if !(v > 0.0 && v <= 1.0) {
            return bad(format!(
                "min_agreement: a share above 0 and at most 1, got {v}"
            ));
        }
    }
    if !(0.0..=1.0).contains(&a.error_floor) {
        return bad(format!(
            "error_floor: a share from 0 to 1, got {}",
            a.error_floor
        ));
    }
    Ok(())
}

async fn start_auto(
    s: State,
    req: HttpRequest,
    name: web::Path<String>,
    body: web::Json<AutoStart>,
) -> Result<HttpResponse, AdminError> {
    check_auto(&body)?;
    check_ready(&s, &name, body.version, "an automatic rollout").await?;
    let op = RolloutOp::Auto {
        start: body.into_inner(),
    };
    change(&s, &req, &name, op).await
}

async fn delete_shadow(
    s: State,
    req: HttpRequest,
    name: web::Path<String>,
) -> Result<HttpResponse, AdminError> {
    change(&s, &req, &name, RolloutOp::ShadowStop).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    limit: Option<u32>,
}

async fn history(
    s: State,
    name: web::Path<String>,
    q: web::Query<HistoryQuery>,
) -> Result<HttpResponse, AdminError> {
    let limit = q.limit.unwrap_or(100).min(10_000);
    Ok(HttpResponse::Ok().json(store(&s)?.rollout_history(&name, limit).await?))
}
