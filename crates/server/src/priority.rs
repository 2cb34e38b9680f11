//! Threads for work no caller waits for (shadow copies, batch jobs): they run at the operating
//! system's lowest scheduling class, so the kernel gives them a core only when no other thread
//! wants it.

use thread_priority::{
    set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy, ThreadPriority,
    ThreadSchedulePolicy,
};

/// Moves the calling thread to the idle scheduling class (`SCHED_IDLE` on Linux). Lowering a
/// thread's priority needs no privilege; where it fails all the same, the thread logs a
/// warning naming `what` and runs on at normal priority.
pub fn lower_to_idle(what: &str) {
    let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
    if let Err(e) = set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, idle) {
        tracing::warn!(thread = %what, error = ?e, "a low-priority thread runs at normal priority");
    }
}
