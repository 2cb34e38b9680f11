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

/// A model's sides: (version, side) -> figures.
type Sides = HashMap<(u64, &'static str), SideStats>;

/// What this replica counted since its last write, by model.
#[derive(Default)]
pub struct Tally {
    models: Mutex<HashMap<String, Sides>>,
}

impl Tally {
    /// The figures of one side, made when missing; the model's name is copied only then.
    fn with_side(
        &self,
        model: &str,
        version: u64,
        side: &'static str,
        f: impl FnOnce(&mut SideStats),
    ) {
        let mut models = self.models.lock().expect("tally lock");
        let sides = match models.get_mut(model) {
            Some(sides) => sides,
            None => models.entry(model.to_string()).or_default(),
        };
        f(sides.entry((version, side)).or_default());
    }

    /// Counts one answer of `side` (`stable` or `canary`).
    pub fn answered(&self, model: &str, version: u64, side: &'static str, status: u16, ms: f64) {
        self.with_side(model, version, side, |s| s.answered(status, ms));
    }

    /// Adds figures of `side` (a shadow's comparison).
    pub fn add(&self, model: &str, version: u64, side: &'static str, stats: &SideStats) {
        self.with_side(model, version, side, |s| s.merge(stats));
    }

    /// Takes what was counted so far.
    pub fn take(&self) -> Vec<(String, u64, String, SideStats)> {
        let models = std::mem::take(&mut *self.models.lock().expect("tally lock"));
        models
            .into_iter()
            .flat_map(|(model, sides)| {
                sides.into_iter().map(move |((version, side), stats)| {
                    (model.clone(), version, side.to_string(), stats)
                })
            })
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

/// Writes `tallies` to `store` every `every` until the runtime stops, one row per model,
/// version and side; a failed write is kept for the next. The served requests and the shadow's
/// thread count in tallies of their own, so that neither waits for a lock the other holds
/// (the shadow's thread runs at the lowest priority, and may be held off a core for long).
pub fn flush(store: Store, tallies: Vec<Arc<Tally>>, replica: String, every: Duration) {
    tokio::spawn(async move {
        let mut failing = false;
        loop {
            tokio::time::sleep(every).await;
            let merged = Tally::default();
            for tally in &tallies {
                merged.put_back(tally.take());
            }
            let rows = merged.take();
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
                    tallies[0].put_back(rows);
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tally_adds_up_per_model_version_and_side_and_empties_when_taken() {
        let tally = Tally::default();
        tally.answered("m", 1, "stable", 200, 2.0);
        tally.answered("m", 1, "stable", 503, 4.0);
        tally.answered("m", 2, "canary", 200, 3.0);
        tally.add(
            "n",
            3,
            "shadow",
            &SideStats {
                dropped: 2,
                ..SideStats::default()
            },
        );
        let mut rows = tally.take();
        rows.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        let figures: Vec<(&str, u64, &str, u64, u64, u64)> = rows
            .iter()
            .map(|(m, v, s, f)| (m.as_str(), *v, s.as_str(), f.requests, f.errors, f.dropped))
            .collect();
        assert_eq!(
            figures,
            [
                ("m", 1, "stable", 2, 1, 0),
                ("m", 2, "canary", 1, 0, 0),
                ("n", 3, "shadow", 0, 0, 2)
            ]
        );
        assert!(tally.take().is_empty());
    }
}
