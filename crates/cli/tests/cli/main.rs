//! `vaticctl` run as a user runs it, against the real api in standalone mode.

mod admin;
mod batch;
mod bench;
mod errors;
mod helpers;
mod infer;
mod keys;
mod migrate;
mod models;
mod predictions;
mod tls;
