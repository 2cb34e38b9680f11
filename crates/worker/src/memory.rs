//! The allocator's upkeep. The server binaries allocate through jemalloc (their `main.rs`).

/// Starts jemalloc's background threads, which hand unused pages back to the system after
/// `dirty_decay_ms` (10 s), also while the process is idle; without them pages are only
/// purged as a side effect of later allocations. Logs and goes on when it cannot.
pub fn purge_in_background() {
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::warn!(error = %e, "jemalloc background purging is off");
    }
}
