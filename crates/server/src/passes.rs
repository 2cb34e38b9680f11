//! Asking a background loop for a pass and waiting until one that began after the ask has
//! finished: how a registry change made in this process takes effect here before its caller
//! hears back.

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// Pass numbers: how many began, and the number of the last that finished.
#[derive(Debug, Clone, Copy, Default)]
struct Count {
    began: u64,
    finished: u64,
}

/// Shared by a loop (which calls [`Passes::begin`] and [`Passes::finish`] around each pass and
/// waits on [`Passes::requested`]) and the code that asks it for passes.
#[derive(Debug, Clone)]
pub struct Passes {
    ask: Arc<Notify>,
    count: Arc<watch::Sender<Count>>,
}

impl Default for Passes {
    fn default() -> Self {
        Passes {
            ask: Arc::new(Notify::new()),
            count: Arc::new(watch::channel(Count::default()).0),
        }
    }
}

impl Passes {
    /// Asks for a pass without waiting.
    pub fn request(&self) {
        self.ask.notify_one();
    }

    /// Asks for a pass and waits until one that began after now has finished (whether it
    /// succeeded or not); false when none finished within `within`.
    pub async fn run(&self, within: Duration) -> bool {
        let mut count = self.count.subscribe();
        let after = count.borrow().began;
        self.request();
        tokio::time::timeout(within, count.wait_for(|c| c.finished > after))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// For the loop: resolves when a pass is asked for.
    pub async fn requested(&self) {
        self.ask.notified().await;
    }

    /// For the loop: a pass begins; returns its number.
    pub fn begin(&self) -> u64 {
        let mut number = 0;
        self.count.send_modify(|c| {
            c.began += 1;
            number = c.began;
        });
        number
    }

    /// For the loop: pass `number` has finished.
    pub fn finish(&self, number: u64) {
        self.count
            .send_modify(|c| c.finished = c.finished.max(number));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_run_waits_for_a_pass_that_began_after_it() {
        let passes = Passes::default();
        // A pass already under way when the run asks does not count.
        let early = passes.begin();
        let loop_side = passes.clone();
        let worker = tokio::spawn(async move {
            loop_side.finish(early);
            loop_side.requested().await;
            let n = loop_side.begin();
            loop_side.finish(n);
            n
        });
        assert!(passes.run(Duration::from_secs(10)).await);
        assert_eq!(worker.await.unwrap(), 2);
    }

    #[tokio::test]
    async fn a_run_with_no_loop_gives_up() {
        let passes = Passes::default();
        assert!(!passes.run(Duration::from_millis(10)).await);
    }
}
