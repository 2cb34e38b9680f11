//! The api over real HTTP on port 0: standalone with its in-process worker, and in front of
//! worker processes.

mod auth;
mod batch;
mod cache;
mod cluster;
mod docs;
mod elk;
mod engines;
mod hardening;
mod helpers;
mod loading;
mod logged;
mod logs;
mod metrics;
mod prediction_log;
mod readme;
mod registry;
mod rollout;
mod standalone;
mod tfserving;
mod tls;
