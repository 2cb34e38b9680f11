//! Every route a process serves, with what a caller needs to use it: one table that registers
//! the routes with actix-web, that the access guard reads, and that the OpenAPI document is made
//! from. A route is only registered through [`Routes::add`], so none escapes the guard; a path
//! the guard finds no rule for is refused (see [`crate::auth`]).

use actix_web::body::BoxBody;
use actix_web::dev::ServiceRequest;
use actix_web::http::Method;
use actix_web::middleware::{from_fn, Next};
use actix_web::{guard, web, FromRequest, Handler, Resource, Responder};
use std::collections::HashMap;

/// What a caller needs to use a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Need {
    /// Nothing: the health probes.
    Open,
    /// Any valid key: the server's own metadata.
    AnyKey,
    /// Reading one model's metadata, readiness, configuration and statistics (model scoped).
    ModelRead,
    /// Inference on one model (model scoped).
    Infer,
    /// Reading what the whole service holds: the model list, statistics of every model, the
    /// fleet, the audit log.
    View,
    /// Changing one model: push, retire, settings, labels, rollout (model scoped).
    Deploy,
    /// Batch jobs: submitting (the handler checks the job's model against the key's scope)
    /// and reading, cancelling and retrying the caller's own jobs.
    Batch,
    /// Keys, retention and everything else.
    Admin,
}

impl Need {
    /// Whether the route names one model, whose name a key's model scope must include.
    pub fn is_model_scoped(self) -> bool {
        matches!(self, Need::ModelRead | Need::Infer | Need::Deploy)
    }

    /// Its name in the documentation.
    pub fn as_str(self) -> &'static str {
        match self {
            Need::Open => "open",
            Need::AnyKey => "any key",
            Need::ModelRead => "model read",
            Need::Infer => "infer",
            Need::View => "view",
            Need::Deploy => "deploy",
            Need::Batch => "batch",
            Need::Admin => "admin",
        }
    }
}

/// One route: its method and path, what it needs, and what it does.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The HTTP method.
    pub method: Method,
    /// The path pattern, as actix-web matches it (`/v2/models/{model}/infer`).
    pub path: String,
    /// What a caller needs.
    pub need: Need,
    /// One line on what it does.
    pub summary: &'static str,
    /// Its group in the documentation (`V2`, `TF-Serving`, `admin`, `health`).
    pub tag: &'static str,
}

/// How a group of routes is registered: the tag they are documented under, and what each of
/// their resources carries (extractor settings, say).
#[derive(Clone, Copy)]
pub struct Group {
    /// The tag.
    pub tag: &'static str,
    /// Applied to each resource of the group.
    pub decorate: fn(Resource) -> Resource,
}

impl Group {
    /// A group of plain resources.
    pub const fn plain(tag: &'static str) -> Group {
        Group {
            tag,
            decorate: |r| r,
        }
    }
}

/// The routes of a process, as they are registered: with actix-web when given its
/// configuration, and in the rule table always.
pub struct Routes<'a> {
    cfg: Option<&'a mut web::ServiceConfig>,
    rules: Vec<Rule>,
    group: Group,
}

impl<'a> Routes<'a> {
    /// Registers into `cfg`.
    pub fn register(cfg: &'a mut web::ServiceConfig) -> Routes<'a> {
        Routes {
            cfg: Some(cfg),
            rules: Vec::new(),
            group: Group::plain(""),
        }
    }

    /// Only collects the rules.
    pub fn collect() -> Routes<'static> {
        Routes {
            cfg: None,
            rules: Vec::new(),
            group: Group::plain(""),
        }
    }

    /// Registers the routes `f` adds as members of `group`.
    pub fn group(&mut self, group: Group, f: impl FnOnce(&mut Routes<'a>)) -> &mut Self {
        let outer = std::mem::replace(&mut self.group, group);
        f(self);
        self.group = outer;
        self
    }

    /// Registers `handler` for `method` at `path`, usable by callers with `need`.
    pub fn add<F, Args>(
        &mut self,
        method: Method,
        path: impl Into<String>,
        need: Need,
        summary: &'static str,
        handler: F,
    ) -> &mut Self
    where
        F: Handler<Args>,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        let path = path.into();
        if let Some(cfg) = self.cfg.as_deref_mut() {
            let resource = web::resource(path.as_str())
                .guard(guard::Method(method.clone()))
                .route(web::route().to(handler));
            let tag = self.group.tag;
            // The guard wraps the resource: it runs after routing, on the route that answers.
            let guarded = (self.group.decorate)(resource).wrap(from_fn(
                move |req: ServiceRequest, next: Next<BoxBody>| {
                    crate::auth::guard(need, tag, req, next)
                },
            ));
            cfg.service(guarded);
        }
        self.rules.push(Rule {
            method,
            path,
            need,
            summary,
            tag: self.group.tag,
        });
        self
    }

    /// The rules registered so far.
    pub fn into_rules(self) -> Vec<Rule> {
        self.rules
    }
}

/// The rules of a process, found by method and path pattern.
#[derive(Debug)]
pub struct RuleTable {
    rules: Vec<Rule>,
    /// The methods each path pattern is served with.
    methods: HashMap<String, Vec<Method>>,
}

/// What the table says of a request, before routing.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// A route serves it.
    Served,
    /// The path is served, but only with these methods.
    WrongMethod(Vec<Method>),
    /// The path is served by a route the table does not know (registered around it).
    NoRule,
}

impl RuleTable {
    /// The table of `rules`.
    pub fn new(rules: Vec<Rule>) -> RuleTable {
        let mut methods: HashMap<String, Vec<Method>> = HashMap::new();
        for rule in &rules {
            methods
                .entry(rule.path.clone())
                .or_default()
                .push(rule.method.clone());
        }
        RuleTable { rules, methods }
    }

    /// Every rule, in registration order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Whether a request whose path matched `pattern` is served with `method`.
    pub fn find(&self, method: &Method, pattern: &str) -> Found {
        match self.methods.get(pattern) {
            None => Found::NoRule,
            Some(served) if served.contains(method) => Found::Served,
            Some(served) => Found::WrongMethod(served.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_tells_served_wrong_method_and_unknown_patterns_apart() {
        let mut routes = Routes::collect();
        routes
            .add(
                Method::GET,
                "/m/{model}",
                Need::ModelRead,
                "read",
                || async { "" },
            )
            .add(
                Method::PATCH,
                "/m/{model}",
                Need::Deploy,
                "change",
                || async { "" },
            );
        let table = RuleTable::new(routes.into_rules());
        assert_eq!(table.rules().len(), 2);
        assert_eq!(table.find(&Method::GET, "/m/{model}"), Found::Served);
        assert_eq!(
            table.find(&Method::DELETE, "/m/{model}"),
            Found::WrongMethod(vec![Method::GET, Method::PATCH])
        );
        assert_eq!(table.find(&Method::GET, "/elsewhere"), Found::NoRule);
    }
}
