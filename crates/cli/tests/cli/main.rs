//! `vaticctl` run as a user runs it, against the real api in standalone mode.

mod errors;
mod helpers;
mod infer;
