//! Busy polling: an HTTP thread that has just had a request keeps polling its sockets for a
//! short while instead of going to sleep, so the next request (or a worker's answer) is read at
//! once rather than after the thread is woken.
//!
//! A wake-up from sleep costs a few microseconds on bare metal, more from a deep idle state,
//! and tens of microseconds on a virtual machine whose idle CPUs halt (each wake-up is an exit
//! to the hypervisor and an interrupt back). At low concurrency that wake-up is most of the
//! serving layer's latency. Each HTTP thread runs one polling task. A request marks its thread
//! busy when it arrives and when it is answered, for the thread's polling window from then;
//! while the mark holds and no other task is ready, the task gives the thread back to the
//! runtime at once, which then checks its sockets without waiting (epoll with a timeout of 0),
//! and lets any other thread of the CPU run (`sched_yield`). Then the thread sleeps as before.
//!
//! The window adapts as the kernel's guest halt polling does (`Documentation/virt/
//! guest-halt-polling.rst`), to how long the thread had nothing to do before each request: it
//! starts at 0; a request after an idle time longer than the window but within `busy_poll_us`
//! doubles it (from 50 µs, at most `busy_poll_us`), since polling that long would have caught
//! it; one after a longer idle time sets it back to 0. A thread whose requests come further
//! apart than `busy_poll_us` never polls; one whose requests come closer polls between them,
//! and shows as busy.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// Where an adapting window starts (the kernel's `guest_halt_poll_grow_start`).
const GROW_START: Duration = Duration::from_micros(50);

/// One HTTP thread's polling state.
struct Polling {
    /// The longest window (`busy_poll_us`).
    max: Duration,
    /// The window now.
    window: Cell<Duration>,
    /// The last arrival or answer.
    last: Cell<Instant>,
    /// Poll until then.
    until: Cell<Instant>,
    /// The polling task, when it sleeps.
    sleeping: RefCell<Option<Waker>>,
}

thread_local! {
    static POLLING: RefCell<Option<Rc<Polling>>> = const { RefCell::new(None) };
}

/// Starts the polling task on this thread's runtime (an actix-web worker thread: call it from
/// the `HttpServer::new` factory, which runs on each). Once per thread; a zero `max` starts
/// nothing.
pub fn start(max: Duration) {
    if max.is_zero() {
        return;
    }
    POLLING.with(|p| {
        let mut p = p.borrow_mut();
        if p.is_some() {
            return;
        }
        let now = Instant::now();
        let polling = Rc::new(Polling {
            max,
            window: Cell::new(Duration::ZERO),
            last: Cell::new(now),
            until: Cell::new(now),
            sleeping: RefCell::new(None),
        });
        *p = Some(polling.clone());
        actix_web::rt::spawn(poll(polling));
    });
}

/// A request arrived on this thread `now`: adapts the window to how long the thread had nothing
/// to do, and marks the thread busy for the window from then. Does nothing on a thread without
/// a polling task.
pub fn arrived(now: Instant) {
    mark(now, true);
}

/// A request was answered on this thread `now`: marks it busy for the window from then.
pub fn answered(now: Instant) {
    mark(now, false);
}

fn mark(now: Instant, arrival: bool) {
    POLLING.with(|p| {
        if let Some(p) = &*p.borrow() {
            if arrival {
                let idle = now.saturating_duration_since(p.last.get());
                p.window.set(adapt(p.window.get(), idle, p.max));
            }
            p.last.set(now);
            p.until.set(now + p.window.get());
            // A closed window leaves the task asleep.
            if !p.window.get().is_zero() {
                if let Some(waker) = p.sleeping.borrow_mut().take() {
                    waker.wake();
                }
            }
        }
    });
}

/// The window after a request that arrived when the thread had had nothing to do for `idle`.
fn adapt(window: Duration, idle: Duration, max: Duration) -> Duration {
    if idle <= window {
        window
    } else if idle <= max {
        (window * 2).max(GROW_START).min(max)
    } else {
        Duration::ZERO
    }
}

async fn poll(p: Rc<Polling>) {
    loop {
        if Instant::now() < p.until.get() {
            std::thread::yield_now();
            tokio::task::yield_now().await;
        } else {
            poll_fn(|cx| {
                if Instant::now() < p.until.get() {
                    Poll::Ready(())
                } else {
                    *p.sleeping.borrow_mut() = Some(cx.waker().clone());
                    Poll::Pending
                }
            })
            .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn let_it_run() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    /// The task polls while the mark holds and sleeps once it has passed; a request wakes it.
    #[actix_web::test]
    async fn polls_while_busy_and_sleeps_after() {
        start(Duration::from_secs(60));
        let polling = POLLING.with(|p| p.borrow().clone()).expect("started");
        // A second start on the same thread keeps the first task.
        start(Duration::from_secs(1));
        assert_eq!(polling.max, Duration::from_secs(60));
        let_it_run().await;
        assert!(
            polling.sleeping.borrow().is_some(),
            "asleep before any request"
        );
        // A request within a minute of the last opens the window.
        arrived(Instant::now());
        assert!(polling.window.get() >= GROW_START);
        assert!(polling.sleeping.borrow().is_none(), "woken by a request");
        // However slowly this test runs, the window holds.
        polling.until.set(Instant::now() + Duration::from_secs(60));
        let_it_run().await;
        assert!(
            polling.sleeping.borrow().is_none(),
            "polling within the window"
        );
        // The window passes.
        polling.until.set(Instant::now());
        let_it_run().await;
        assert!(
            polling.sleeping.borrow().is_some(),
            "asleep after the window"
        );
        // A request after longer than `max` with nothing to do closes the window and leaves
        // the task asleep.
        if let Some(long_ago) = Instant::now().checked_sub(Duration::from_secs(61)) {
            polling.last.set(long_ago);
            arrived(Instant::now());
            assert_eq!(polling.window.get(), Duration::ZERO);
            assert!(polling.sleeping.borrow().is_some(), "left asleep");
        }
    }

    #[test]
    fn the_window_grows_while_polling_would_pay_and_closes_when_not() {
        let us = Duration::from_micros;
        let max = us(200);
        // Closed, and a request after 30 µs with nothing to do: polling 50 µs would have
        // caught it.
        assert_eq!(adapt(us(0), us(30), max), us(50));
        // Caught within the window: unchanged.
        assert_eq!(adapt(us(50), us(30), max), us(50));
        // Just missed: doubled, up to the longest.
        assert_eq!(adapt(us(50), us(80), max), us(100));
        assert_eq!(adapt(us(100), us(150), max), us(200));
        assert_eq!(adapt(us(200), us(200), max), us(200));
        // Later than polling could ever wait: closed.
        assert_eq!(adapt(us(200), us(201), max), us(0));
        // A longest window below the start.
        assert_eq!(adapt(us(0), us(10), us(20)), us(20));
    }

    #[actix_web::test]
    async fn a_zero_window_starts_nothing() {
        start(Duration::ZERO);
        assert!(POLLING.with(|p| p.borrow().is_none()));
        // Without a task, requests change nothing.
        arrived(Instant::now());
        answered(Instant::now());
    }
}
