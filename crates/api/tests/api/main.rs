//! The api over real HTTP on port 0: standalone with its in-process worker, and in front of
//! worker processes.

mod cluster;
mod helpers;
mod readme;
mod standalone;
mod tfserving;
