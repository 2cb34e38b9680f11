//! Who may call what. One guard stands in front of every route of a process: it finds the
//! route's rule in the table ([`crate::routes`]), and unless the route is open it reads the
//! caller's API key, checks it (known, not revoked, not expired), checks that the key's role may
//! use the route and that the model the path names is in the key's scope, and records the
//! caller for the handler. A path served by a route the table does not know is refused: deny
//! by default.
//!
//! A process without a key ring (a worker, reached over mutual TLS; an api run open on
//! 127.0.0.1) serves every known route to anyone, as the admin `anonymous`.

mod ring;
pub mod token;

pub use ring::{default_burst, KeyRing, KnownKey, OverLimit, RateLimits, Rejected};

use crate::routes::{Found, Need, RuleTable};
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{ALLOW, WWW_AUTHENTICATE};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpResponse};
use prometheus::{IntCounterVec, Opts, Registry};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A key's role: what it may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, keys included.
    Admin,
    /// Push, retire, model settings, labels and rollout, and read what the service holds.
    Deployer,
    /// Inference and model metadata, for the models in its scope.
    Predictor,
    /// Read only: models, statistics, the fleet, the audit log.
    Viewer,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 4] = [Role::Admin, Role::Deployer, Role::Predictor, Role::Viewer];

    /// Whether this role may use a route that needs `need`.
    pub fn may(self, need: Need) -> bool {
        match need {
            Need::Open | Need::AnyKey | Need::ModelRead => true,
            Need::Infer | Need::Batch => matches!(self, Role::Admin | Role::Predictor),
            Need::View => matches!(self, Role::Admin | Role::Deployer | Role::Viewer),
            Need::Deploy => matches!(self, Role::Admin | Role::Deployer),
            Need::Admin => self == Role::Admin,
        }
    }

    /// Its name: `admin`, `deployer`, `predictor`, `viewer`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Deployer => "deployer",
            Role::Predictor => "predictor",
            Role::Viewer => "viewer",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role '{s}' (admin, deployer, predictor or viewer)"))
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who made a request, as the guard found it; handlers read it from the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The key's public id; `None` when the process runs without keys.
    pub key_id: Option<String>,
    /// The key's name (`anonymous` without keys).
    pub name: String,
    /// The key's role (`admin` without keys).
    pub role: Role,
}

impl Caller {
    /// The caller of a process that runs without keys.
    pub fn anonymous() -> Caller {
        Caller {
            key_id: None,
            name: "anonymous".into(),
            role: Role::Admin,
        }
    }

    fn of(key: &KnownKey) -> Caller {
        Caller {
            key_id: Some(key.id.clone()),
            name: key.name.clone(),
            role: key.role,
        }
    }

    /// The audit log's record of this caller making `req`: the key, its role, the remote
    /// address and the request id.
    pub fn actor(&self, req: &actix_web::HttpRequest) -> vatic_store::Actor {
        vatic_store::Actor {
            label: self.label(),
            key_id: self.key_id.clone(),
            key_name: self.key_id.as_ref().map(|_| self.name.clone()),
            role: Some(self.role.as_str().to_string()),
            remote_addr: req.peer_addr().map(|a| a.ip().to_string()),
            request_id: req
                .extensions()
                .get::<crate::RequestId>()
                .map(|id| id.0.clone()),
        }
    }

    /// How the audit log names it: `key <id> (<name>)`, or `anonymous`.
    pub fn label(&self) -> String {
        match &self.key_id {
            Some(id) if self.name.is_empty() => format!("key {id}"),
            Some(id) => format!("key {id} ({})", self.name),
            None => self.name.clone(),
        }
    }
}

/// Why a request was refused, the label of `vatic_requests_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No key, a malformed one, or one that is unknown, revoked or expired: 401.
    Unauthenticated,
    /// A valid key whose role or model scope does not cover the route: 403.
    Forbidden,
    /// Over the key's rate limit: 429.
    RateLimited,
}

impl Refusal {
    const ALL: [Refusal; 3] = [
        Refusal::Unauthenticated,
        Refusal::Forbidden,
        Refusal::RateLimited,
    ];

    fn label(self) -> &'static str {
        match self {
            Refusal::Unauthenticated => "unauthenticated",
            Refusal::Forbidden => "forbidden",
            Refusal::RateLimited => "rate_limited",
        }
    }
}

/// The most records of refused admin attempts written at once.
const AUDIT_SLOTS: usize = 32;

/// A refused request: why, what to tell the caller, and who it was when the key was valid.
#[derive(Debug)]
struct Refused {
    refusal: Refusal,
    message: String,
    retry_after: Option<u64>,
    caller: Option<Caller>,
}

impl Refused {
    fn forbidden(message: String, key: &KnownKey) -> Refused {
        Refused {
            refusal: Refusal::Forbidden,
            message,
            retry_after: None,
            caller: Some(Caller::of(key)),
        }
    }
}

/// The guard's state: the route table, and the keys when the process checks them.
pub struct Access {
    rules: RuleTable,
    keys: Option<Arc<KeyRing>>,
    refused: IntCounterVec,
    openapi: String,
    /// Records of refused admin attempts being written; past the limit, more are not recorded
    /// (a flood of refused requests cannot flood the database).
    audit_slots: Arc<tokio::sync::Semaphore>,
}

impl Access {
    /// The guard of `rules` of the server `title`, checking keys against `keys` (anyone may
    /// call when `None`); its refusal counter is registered in `registry`.
    pub fn new(
        title: &str,
        rules: RuleTable,
        keys: Option<Arc<KeyRing>>,
        registry: &Registry,
    ) -> prometheus::Result<Access> {
        let refused = IntCounterVec::new(
            Opts::new(
                "vatic_requests_refused_total",
                "Requests refused before reaching a handler, by reason: unauthenticated (401), forbidden (403), rate_limited (429).",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(refused.clone()))?;
        for reason in Refusal::ALL {
            refused.with_label_values(&[reason.label()]);
        }
        let openapi = crate::openapi::document(title, rules.rules())
            .to_json()
            .expect("the OpenAPI document serializes");
        Ok(Access {
            rules,
            keys,
            refused,
            openapi,
            audit_slots: Arc::new(tokio::sync::Semaphore::new(AUDIT_SLOTS)),
        })
    }

    /// Records a refused admin attempt in the audit log, in the background (the refusal does
    /// not wait for the database).
    fn audit_refused(
        &self,
        req: &ServiceRequest,
        caller: Option<Caller>,
        why: &str,
        model: Option<String>,
    ) {
        let Some(keys) = &self.keys else {
            return;
        };
        let mut actor = match caller {
            Some(caller) => caller.actor(req.request()),
            None => Caller {
                key_id: None,
                name: "unauthenticated".into(),
                role: Role::Viewer,
            }
            .actor(req.request()),
        };
        if actor.key_id.is_none() {
            actor.role = None;
        }
        let Ok(slot) = self.audit_slots.clone().try_acquire_owned() else {
            tracing::debug!("a refused admin attempt is not recorded: too many being written");
            return;
        };
        let action = format!("{} {}", req.method(), req.path());
        let (store, why) = (keys.store().clone(), why.to_string());
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = store
                .audit_refused(&actor, &action, model.as_deref(), &why)
                .await
            {
                tracing::warn!(error = %e, "a refused admin attempt could not be recorded");
            }
        });
    }

    /// The OpenAPI document of the routes, as JSON.
    pub fn openapi(&self) -> &str {
        &self.openapi
    }

    /// The caller of a request to a route that needs `need` on `model`, or the refusal (with
    /// the seconds to wait, for a rate limit).
    fn check(
        &self,
        req: &ServiceRequest,
        need: Need,
        model: Option<&str>,
    ) -> Result<Caller, Refused> {
        let Some(keys) = &self.keys else {
            return Ok(Caller::anonymous());
        };
        let unauthenticated = |message: String| Refused {
            refusal: Refusal::Unauthenticated,
            message,
            retry_after: None,
            caller: None,
        };
        let secret = token::from_headers(req.headers())
            .map_err(|e| unauthenticated(e.to_string()))?
            .ok_or_else(|| {
                unauthenticated(
                    "this route needs an API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
                        .into(),
                )
            })?;
        let key = keys
            .authenticate(secret)
            .map_err(|e| unauthenticated(e.to_string()))?;
        if !key.role.may(need) {
            return Err(Refused::forbidden(
                format!(
                    "a {} key may not use this route ({} {})",
                    key.role,
                    req.method(),
                    req.path()
                ),
                &key,
            ));
        }
        if let Some(scope) = &key.models {
            match model {
                Some(m) if scope.contains(m) => {}
                // The same answer whether the model exists or not.
                Some(m) => {
                    return Err(Refused::forbidden(
                        format!("this key may not use model '{m}'"),
                        &key,
                    ))
                }
                // A limited key reaches no route beyond its models but the server's metadata.
                // A batch job's model is in its query, checked by the handler.
                None if need == Need::AnyKey || need == Need::Batch => {}
                None => {
                    return Err(Refused::forbidden(
                        "this key is limited to some models; this route is not about one of them"
                            .into(),
                        &key,
                    ))
                }
            }
        }
        if let Err(over) = keys.take(&key) {
            let wait = over.retry_after.as_secs_f64();
            return Err(Refused {
                refusal: Refusal::RateLimited,
                message: format!(
                    "key {} is over its rate limit of {}/s (burst {}) on this replica; retry in {wait:.3} s",
                    key.id, over.rate, over.burst
                ),
                // Whole seconds, at least one.
                retry_after: Some(
                    over.retry_after.as_secs() + u64::from(over.retry_after.subsec_nanos() > 0),
                ),
                caller: Some(Caller::of(&key)),
            });
        }
        Ok(Caller::of(&key))
    }
}

/// What the router will do with a request, checked before it routes: 405 (naming the methods
/// served) for a path served with other methods only, 500 for a path served by a route the table
/// does not know. Everything else goes on to routing, and to the [`guard`] of the resource that
/// answers.
pub async fn routing_check(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let access = req
        .app_data::<web::Data<Access>>()
        .expect("the server installs the access guard's state")
        .clone();
    let Some(pattern) = req.match_pattern() else {
        return Ok(next.call(req).await?.map_into_left_body());
    };
    match access.rules.find(req.method(), &pattern) {
        Found::Served => Ok(next.call(req).await?.map_into_left_body()),
        Found::WrongMethod(served) => {
            let allow: Vec<String> = served.iter().map(ToString::to_string).collect();
            let message = format!("{} is not served on {}", req.method(), req.path());
            let mut response = refusal_response(StatusCode::METHOD_NOT_ALLOWED, message);
            if let Ok(v) = allow.join(", ").try_into() {
                response.headers_mut().insert(ALLOW, v);
            }
            Ok(req.into_response(response).map_into_right_body())
        }
        Found::NoRule => {
            tracing::error!(pattern = %pattern, "a route without an access rule was called; refused");
            let response = refusal_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the route {pattern} has no access rule"),
            );
            Ok(req.into_response(response).map_into_right_body())
        }
    }
}

/// The guard of one route, which needs `need`; it wraps the route's resource, so it runs after
/// routing, on the route that answers (see the module's documentation).
pub async fn guard(
    need: Need,
    tag: &'static str,
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    if need == Need::Open {
        return Ok(next.call(req).await?.map_into_left_body());
    }
    let access = req
        .app_data::<web::Data<Access>>()
        .expect("the server installs the access guard's state")
        .clone();
    // The model the matched route names, as its handler reads it (TF-Serving's verb follows
    // the name: `{model}` is `name:predict`).
    let model = if need.is_model_scoped() {
        let info = req.match_info();
        info.get("model")
            .or_else(|| info.get("name"))
            .map(|m| m.rsplit_once(':').map_or(m, |(name, _)| name).to_string())
    } else {
        None
    };
    match access.check(&req, need, model.as_deref()) {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            Ok(next.call(req).await?.map_into_left_body())
        }
        Err(refused) => {
            let Refused {
                refusal,
                message,
                retry_after,
                caller,
            } = refused;
            access.refused.with_label_values(&[refusal.label()]).inc();
            tracing::info!(reason = refusal.label(), error = %message, "request refused");
            if tag == "admin" {
                access.audit_refused(&req, caller, &message, model);
            }
            let status = match refusal {
                Refusal::Unauthenticated => StatusCode::UNAUTHORIZED,
                Refusal::Forbidden => StatusCode::FORBIDDEN,
                Refusal::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            };
            let mut response = crate::error_response(status, message, retry_after);
            if refusal == Refusal::Unauthenticated {
                response.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    actix_web::http::header::HeaderValue::from_static("Bearer realm=\"vatic\""),
                );
            }
            Ok(req.into_response(response).map_into_right_body())
        }
    }
}

fn refusal_response(status: StatusCode, message: String) -> HttpResponse {
    crate::error_response(status, message, None)
}
