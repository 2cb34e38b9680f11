//! Integration tests of the data layer against real databases: every scenario runs on a fresh
//! PostgreSQL database and a fresh SQLite file unless the feature exists on one backend only.

mod artifacts;
mod batch;
mod fleet;
mod helpers;
mod notify;
mod predictions;
mod registry;
mod schema;
mod tls;
