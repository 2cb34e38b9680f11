//! Each api replica's count of the rollout sides it served (stable and canary requests, shadow
//! copies), written to the database every `rollout.stats_flush_ms` so that `rollout status`
//! (and the automatic rollout) see every replica's requests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vatic_schema::rollout::SideStats;
use vatic_store::Store;

/// How long the written figures are kept.
const KEEP: Duration = Duration::from_secs(24 * 3600);

type Key = (String, u64, &'static str);

/// What this replica counted since its last write.
#[derive(Default)]
pub struct Tally {
    sides: Mutex<HashMap<Key, SideStats>>,
}

impl Tally {
    /// Counts one answer of `side` (`stable` or `canary`).
    pub fn answered(&self, model: &str, version: u64, side: &'static str, status: u16, ms: f64) {
        let mut sides = self.sides.lock().expect("tally lock");
        let key = (model.to_string(), version, side);
        sides.entry(key).or_default().answered(status, ms);
    }

    /// Adds figures of `side` (a shadow's comparison).
    pub fn add(&self, model: &str, version: u64, side: &'static str, stats: &SideStats) {
        let mut sides = self.sides.lock().expect("tally lock");
        let key = (model.to_string(), version, side);
        sides.entry(key).or_default().merge(stats);
    }

    /// Takes what was counted so far.
    pub fn take(&self) -> Vec<(String, u64, String, SideStats)> {
        let sides = std::mem::take(&mut *self.sides.lock().expect("tally lock"));
        sides
            .into_iter()
            .map(|((model, version, side), stats)| (model, version, side.to_string(), stats))
            .collect()
    }

    /// Puts figures back that could not be written, to go with the next write.
    fn put_back(&self, rows: Vec<(String, u64, String, SideStats)>) {
        for (model, version, side, stats) in rows {
            let side: &'static str = match side.as_str() {
                "stable" => "stable",
                "canary" => "canary",
                _ => "shadow",
            };
            self.add(&model, version, side, &stats);
        }
    }
}

/// Writes `tally` to `store` every `every` until the runtime stops; a failed write is kept for
/// the next.
pub fn flush(store: Store, tally: Arc<Tally>, replica: String, every: Duration) {
    tokio::spawn(async move {
        let mut failing = false;
        loop {
            tokio::time::sleep(every).await;
            let rows = tally.take();
            if rows.is_empty() {
                continue;
            }
            match store.write_rollout_stats(&replica, &rows, KEEP).await {
                Ok(()) => failing = false,
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "rollout figures not written; kept for the next try");
                    }
                    failing = true;
                    tally.put_back(rows);
                }
            }
        }
    });
}
