//! The allocator of every vatic process, and its upkeep.
//!
//! jemalloc, as Triton's documentation advises for model servers: glibc's malloc keeps what a
//! thread freed (the load-time profile's large batches, say) in that thread's arena for good,
//! where jemalloc hands unused pages back to the system within seconds. Declared here, in the
//! library every vatic server links, so that each binary (and each test of one) gets it.

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Starts jemalloc's background threads, which hand unused pages back to the system after
/// `dirty_decay_ms` (10 s), also while the process is idle; without them pages are only
/// purged as a side effect of later allocations. Logs and goes on when it cannot.
pub fn purge_in_background() {
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::warn!(error = %e, "jemalloc background purging is off");
    }
}
