//! Threads for work no caller waits for (shadow copies, batch jobs): they run at the operating
//! system's lowest scheduling class, so the kernel gives them a core only when no other thread
//! wants it.

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use thread_priority::{
    set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy, ThreadPriority,
    ThreadSchedulePolicy,
};
use tikv_jemalloc_ctl::{Access, AsName};

/// Moves the calling thread to the idle scheduling class (`SCHED_IDLE` on Linux). Lowering a
/// thread's priority needs no privilege; where it fails all the same, the thread logs a
/// warning naming `what` and runs on at normal priority.
///
/// The thread also allocates from a jemalloc arena shared only by such threads: a thread at
/// the idle class can be held off a core for long, and while it holds an arena's lock, a
/// real-time thread of the same arena would wait for it.
pub fn lower_to_idle(what: &str) {
    let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
    if let Err(e) = set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, idle) {
        tracing::warn!(thread = %what, error = ?e, "a low-priority thread runs at normal priority");
    }
    if let Some(arena) = idle_arena() {
        if let Err(e) = b"thread.arena\0".name().write(arena) {
            tracing::warn!(thread = %what, error = %e, "a low-priority thread shares the allocator's arenas");
        }
    }
}

/// The jemalloc arena of the next idle-class thread: the idle-class threads take turns over
/// [`IDLE_ARENAS_PER_CORE`] arenas a core, each made on first use. As many as jemalloc gives
/// other threads: the model runs of low-priority runners that shared one arena would contend
/// for its lock and its memory, and run measurably slower than real-time ones.
fn idle_arena() -> Option<u32> {
    static ARENAS: Mutex<Vec<u32>> = Mutex::new(Vec::new());
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let slot = NEXT.fetch_add(1, Ordering::Relaxed) % (IDLE_ARENAS_PER_CORE * cores);
    let mut arenas = ARENAS.lock().unwrap_or_else(|e| e.into_inner());
    while arenas.len() <= slot {
        match b"arenas.create\0".name().read() {
            Ok(arena) => arenas.push(arena),
            Err(e) => {
                static WARNED: AtomicBool = AtomicBool::new(false);
                if !WARNED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "no allocator arena could be made for low-priority threads");
                }
                return arenas.first().copied();
            }
        }
    }
    Some(arenas[slot])
}

/// Arenas a core for the idle-class threads (jemalloc's own default for the others).
const IDLE_ARENAS_PER_CORE: usize = 4;

/// How much of the machine low-priority work may take while real-time requests are being
/// answered (`[low_priority]`). The idle scheduling class alone keeps such work off a core a
/// request wants, but a machine whose cores are all busy answers more slowly all the same: on
/// a virtual machine the host takes cores away from a guest that keeps all of them busy, and
/// cores that share a physical one slow each other down.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LowPrioritySettings {
    /// The share of the cores low-priority work takes at most, on average, while real-time
    /// requests arrive; 1 sets no limit beyond the idle scheduling class.
    pub share: f64,
    /// How long after the last real-time request low-priority work is limited still.
    pub quiet_ms: u64,
}

impl Default for LowPrioritySettings {
    fn default() -> Self {
        LowPrioritySettings {
            share: 0.25,
            quiet_ms: 100,
        }
    }
}

impl LowPrioritySettings {
    /// Checks values that serde cannot, naming the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(self.share > 0.0 && self.share <= 1.0) {
            anyhow::bail!(
                "low_priority.share must be more than 0 and at most 1, not {}",
                self.share
            );
        }
        Ok(())
    }
}

/// Paces low-priority work while real-time requests arrive: the threads doing such work
/// report the time each piece took ([`Pacer::charge`]) and wait before the next
/// ([`Pacer::delay`]) as long as it takes for all of them together to stay within
/// [`LowPrioritySettings::share`] of the cores. With no real-time request for `quiet_ms`
/// they do not wait. One per process, shared by everything that does low-priority work.
#[derive(Debug)]
pub struct Pacer {
    /// Core-seconds of low-priority work per second while limited; `None`: no limit.
    rate: Option<f64>,
    quiet: Duration,
    epoch: Instant,
    /// When the last real-time request arrived, in nanoseconds after `epoch` (0: none yet).
    real_time: AtomicU64,
    /// When low-priority work may go on, once the time it took so far is paid for.
    next: Mutex<Instant>,
}

impl Pacer {
    /// A pacer for `settings` on a machine of `cores` cores.
    pub fn new(settings: &LowPrioritySettings, cores: usize) -> Pacer {
        let epoch = Instant::now();
        Pacer {
            rate: (settings.share < 1.0).then(|| settings.share * cores.max(1) as f64),
            quiet: Duration::from_millis(settings.quiet_ms),
            epoch,
            real_time: AtomicU64::new(0),
            next: Mutex::new(epoch),
        }
    }

    /// A pacer for `settings` on the cores this process may use.
    pub fn for_this_machine(settings: &LowPrioritySettings) -> Pacer {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Pacer::new(settings, cores)
    }

    /// Notes a real-time request that arrived at `at` (an instant the caller has already
    /// read: this costs one atomic store).
    pub fn real_time(&self, at: Instant) {
        if self.rate.is_some() {
            let ns = at.saturating_duration_since(self.epoch).as_nanos() as u64;
            self.real_time.store(ns.max(1), Ordering::Relaxed);
        }
    }

    /// Whether a real-time request arrived within `quiet` of `now`.
    fn limited(&self, now: Instant) -> bool {
        let last = self.real_time.load(Ordering::Relaxed);
        last != 0
            && now.saturating_duration_since(self.epoch).as_nanos() as u64
                <= last + self.quiet.as_nanos() as u64
    }

    /// How long low-priority work waits before its next piece.
    pub fn delay(&self) -> Duration {
        self.delay_at(Instant::now())
    }

    fn delay_at(&self, now: Instant) -> Duration {
        if self.rate.is_none() || !self.limited(now) {
            return Duration::ZERO;
        }
        self.next
            .lock()
            .expect("pacer lock")
            .saturating_duration_since(now)
    }

    /// Reports a piece of low-priority work that took `spent` and ended now.
    pub fn charge(&self, spent: Duration) {
        self.charge_at(spent, Instant::now());
    }

    fn charge_at(&self, spent: Duration, now: Instant) {
        let Some(rate) = self.rate else {
            return;
        };
        let mut next = self.next.lock().expect("pacer lock");
        if !self.limited(now) {
            // Work done while nothing real-time arrived is not paid for later.
            *next = now;
            return;
        }
        // At `rate`, `spent` is paid for `spent / rate` after it began, or after what was
        // charged before it, whichever is later.
        let began = now.checked_sub(spent).unwrap_or(now);
        *next = (*next).max(began) + spent.div_f64(rate);
    }

    /// Waits, on a thread of its own, as long as [`Pacer::delay`] says.
    pub fn wait_blocking(&self) {
        let delay = self.delay();
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
    }

    /// Waits, in a task, as long as [`Pacer::delay`] says.
    pub async fn wait(&self) {
        let delay = self.delay();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pacer(share: f64, cores: usize) -> Pacer {
        Pacer::new(
            &LowPrioritySettings {
                share,
                quiet_ms: 100,
            },
            cores,
        )
    }

    const MS: Duration = Duration::from_millis(1);

    /// The arena the calling thread allocates from.
    fn this_threads_arena() -> u32 {
        b"thread.arena\0".name().read().unwrap()
    }

    #[test]
    fn idle_class_threads_take_turns_over_arenas_of_their_own() {
        let automatic: u32 = b"opt.narenas\0".name().read().unwrap();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let arenas: Vec<u32> = (0..IDLE_ARENAS_PER_CORE * cores)
            .map(|_| {
                std::thread::spawn(|| {
                    lower_to_idle("test");
                    this_threads_arena()
                })
                .join()
                .unwrap()
            })
            .collect();
        // None of the arenas jemalloc gives the other threads.
        assert!(arenas.iter().all(|a| *a >= automatic), "{arenas:?}");
        // Not all in one: two low-priority runners started together run on two.
        let distinct: std::collections::HashSet<_> = arenas.iter().collect();
        assert!(distinct.len() > 1, "{arenas:?}");
        assert!(this_threads_arena() < automatic);
    }

    #[test]
    fn without_real_time_requests_nothing_waits() {
        let p = pacer(0.25, 2);
        let now = p.epoch + 1000 * MS;
        p.charge_at(10 * MS, now);
        assert_eq!(p.delay_at(now), Duration::ZERO);
    }

    #[test]
    fn while_real_time_requests_arrive_work_waits_for_its_share() {
        // A quarter of two cores: half a core-second a second, so 1 ms of work is paid for
        // 2 ms after it began, 1 ms after it ended.
        let p = pacer(0.25, 2);
        let start = p.epoch + 1000 * MS;
        p.real_time(start);
        p.charge_at(MS, start + MS);
        assert_eq!(p.delay_at(start + MS), MS);
        // A second piece that ran beside the first on another core is paid for after it.
        p.charge_at(MS, start + MS);
        assert_eq!(p.delay_at(start + MS), 3 * MS);
        // Once paid for, the next goes at once.
        assert_eq!(p.delay_at(start + 4 * MS), Duration::ZERO);
    }

    #[test]
    fn the_limit_ends_quiet_ms_after_the_last_real_time_request() {
        let p = pacer(0.25, 1);
        let start = p.epoch + 1000 * MS;
        p.real_time(start);
        p.charge_at(50 * MS, start + 50 * MS);
        assert_eq!(p.delay_at(start + 50 * MS), 150 * MS);
        assert_eq!(
            p.delay_at(start + 101 * MS),
            Duration::ZERO,
            "99 ms owed, but quiet"
        );
        // Work done in the quiet is not owed when requests come back.
        p.charge_at(10 * MS, start + 200 * MS);
        p.real_time(start + 200 * MS);
        assert_eq!(p.delay_at(start + 200 * MS), Duration::ZERO);
    }

    #[test]
    fn a_share_of_one_never_waits() {
        let p = pacer(1.0, 2);
        let now = p.epoch + 1000 * MS;
        p.real_time(now);
        p.charge_at(10 * MS, now);
        assert_eq!(p.delay_at(now), Duration::ZERO);
    }

    #[test]
    fn a_share_outside_zero_to_one_is_refused_naming_the_key() {
        for share in [0.0, -0.5, 1.5, f64::NAN] {
            let e = LowPrioritySettings {
                share,
                quiet_ms: 100,
            }
            .validate()
            .unwrap_err();
            assert!(e.to_string().contains("low_priority.share"), "{e}");
        }
        LowPrioritySettings::default().validate().unwrap();
    }
}
