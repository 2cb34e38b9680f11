//! What a rollout measures of each side (stable, canary, shadow) of a model: requests, errors,
//! latency, and for a shadow how its answers compare with the served ones. Each api replica adds
//! up its requests into a [`SideStats`] and writes it out every few seconds; a window's figures
//! are the sum of those records.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Upper bounds, in milliseconds, of the latency buckets; a last bucket takes the rest.
pub const LATENCY_BOUNDS_MS: [f64; 24] = [
    0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 50.0, 75.0, 100.0, 150.0, 200.0,
    300.0, 500.0, 750.0, 1000.0, 2000.0, 5000.0, 10000.0, 30000.0,
];

/// The absolute differences of one output between the shadow's and the served answers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DiffStats {
    /// Largest absolute difference of an element.
    pub max_abs: f64,
    /// Sum of the elements' absolute differences.
    pub sum_abs: f64,
    /// Elements compared.
    pub count: u64,
}

/// One side's figures over some time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SideStats {
    /// Requests answered (for a shadow: copies it answered or failed).
    pub requests: u64,
    /// Of them, answers that were not a success: a request the stable version answers and
    /// this side refuses (a changed signature) fails the side as much as a crash does.
    pub errors: u64,
    /// Request counts per latency bucket ([`LATENCY_BOUNDS_MS`], then the rest).
    pub latency: Vec<u64>,
    /// Shadow: copies dropped because the shadow fell behind.
    #[serde(default)]
    pub dropped: u64,
    /// Shadow: answers compared with the served ones.
    #[serde(default)]
    pub compared: u64,
    /// Shadow: rows whose label or argmax was compared.
    #[serde(default)]
    pub rows: u64,
    /// Shadow: of them, rows where the shadow agreed with the served answer.
    #[serde(default)]
    pub agreeing_rows: u64,
    /// Shadow: differences per output.
    #[serde(default)]
    pub outputs: BTreeMap<String, DiffStats>,
}

impl SideStats {
    /// Counts one answer.
    pub fn answered(&mut self, status: u16, latency_ms: f64) {
        self.requests += 1;
        if !(200..300).contains(&status) {
            self.errors += 1;
        }
        if self.latency.len() < LATENCY_BOUNDS_MS.len() + 1 {
            self.latency.resize(LATENCY_BOUNDS_MS.len() + 1, 0);
        }
        let bucket = LATENCY_BOUNDS_MS
            .iter()
            .position(|b| latency_ms <= *b)
            .unwrap_or(LATENCY_BOUNDS_MS.len());
        self.latency[bucket] += 1;
    }

    /// Adds `other` to these figures.
    pub fn merge(&mut self, other: &SideStats) {
        self.requests += other.requests;
        self.errors += other.errors;
        if self.latency.len() < other.latency.len() {
            self.latency.resize(other.latency.len(), 0);
        }
        for (a, b) in self.latency.iter_mut().zip(&other.latency) {
            *a += b;
        }
        self.dropped += other.dropped;
        self.compared += other.compared;
        self.rows += other.rows;
        self.agreeing_rows += other.agreeing_rows;
        for (name, d) in &other.outputs {
            let mine = self.outputs.entry(name.clone()).or_default();
            mine.max_abs = mine.max_abs.max(d.max_abs);
            mine.sum_abs += d.sum_abs;
            mine.count += d.count;
        }
    }

    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.requests == 0 && self.dropped == 0
    }

    /// Errors per request; 0 without requests.
    pub fn error_ratio(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    /// The latency at quantile `q` (0 to 1) in milliseconds, interpolated within its bucket;
    /// `None` without requests.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * total as f64).max(1.0);
        let mut seen = 0u64;
        for (i, n) in self.latency.iter().enumerate() {
            if *n > 0 && (seen + n) as f64 >= rank {
                let low = if i == 0 {
                    0.0
                } else {
                    LATENCY_BOUNDS_MS[i - 1]
                };
                let high = LATENCY_BOUNDS_MS.get(i).copied().unwrap_or(low * 2.0);
                let within = (rank - seen as f64) / *n as f64;
                return Some(low + (high - low) * within);
            }
            seen += n;
        }
        None
    }

    /// Rows the shadow agreed on, per compared row; `None` before any.
    pub fn agreement(&self) -> Option<f64> {
        (self.rows > 0).then(|| self.agreeing_rows as f64 / self.rows as f64)
    }
}

/// One side as `rollout status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SideSummary {
    /// `stable`, `canary` or `shadow`.
    pub side: String,
    /// The version on that side.
    pub version: u64,
    /// Requests answered in the window.
    pub requests: u64,
    /// Answers other than a success, per request.
    pub error_ratio: f64,
    /// Median latency, milliseconds.
    pub p50_ms: Option<f64>,
    /// 99th percentile latency, milliseconds.
    pub p99_ms: Option<f64>,
    /// Shadow: copies dropped because it fell behind.
    pub dropped: u64,
    /// Shadow: answers compared.
    pub compared: u64,
    /// Shadow: share of compared rows with the same label or argmax.
    pub agreement: Option<f64>,
    /// Shadow: per output, the largest and the mean absolute difference.
    pub outputs: BTreeMap<String, OutputDiff>,
}

/// An output's difference between shadow and served answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputDiff {
    /// Largest absolute difference of an element.
    pub max_abs: f64,
    /// Mean absolute difference.
    pub mean_abs: f64,
}

impl SideSummary {
    /// The summary of `stats` for `side` and `version`.
    pub fn of(side: &str, version: u64, stats: &SideStats) -> SideSummary {
        SideSummary {
            side: side.to_string(),
            version,
            requests: stats.requests,
            error_ratio: stats.error_ratio(),
            p50_ms: stats.quantile_ms(0.5),
            p99_ms: stats.quantile_ms(0.99),
            dropped: stats.dropped,
            compared: stats.compared,
            agreement: stats.agreement(),
            outputs: stats
                .outputs
                .iter()
                .map(|(name, d)| {
                    let mean = if d.count == 0 {
                        0.0
                    } else {
                        d.sum_abs / d.count as f64
                    };
                    (
                        name.clone(),
                        OutputDiff {
                            max_abs: d.max_abs,
                            mean_abs: mean,
                        },
                    )
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_buckets_and_merging_adds_up() {
        let mut a = SideStats::default();
        for _ in 0..98 {
            a.answered(200, 4.0);
        }
        a.answered(503, 40.0);
        let mut b = SideStats::default();
        b.answered(200, 400.0);
        a.merge(&b);
        assert_eq!((a.requests, a.errors), (100, 1));
        assert_eq!(a.error_ratio(), 0.01);
        let p50 = a.quantile_ms(0.5).unwrap();
        assert!((3.0..=5.0).contains(&p50), "{p50}");
        let p99 = a.quantile_ms(0.99).unwrap();
        assert!((30.0..=50.0).contains(&p99), "{p99}");
        let p100 = a.quantile_ms(1.0).unwrap();
        assert!((300.0..=500.0).contains(&p100), "{p100}");
        assert_eq!(SideStats::default().quantile_ms(0.5), None);
        let mut slow = SideStats::default();
        slow.answered(200, 60_000.0);
        assert_eq!(slow.quantile_ms(0.5), Some(60_000.0), "past the last bound");
    }

    #[test]
    fn shadow_figures_merge_per_output() {
        let mut a = SideStats {
            rows: 4,
            agreeing_rows: 3,
            ..Default::default()
        };
        a.outputs.insert(
            "p".into(),
            DiffStats {
                max_abs: 0.5,
                sum_abs: 1.0,
                count: 4,
            },
        );
        let mut b = a.clone();
        b.outputs.get_mut("p").unwrap().max_abs = 0.25;
        a.merge(&b);
        assert_eq!(a.agreement(), Some(0.75));
        let s = SideSummary::of("shadow", 2, &a);
        assert_eq!(s.outputs["p"].max_abs, 0.5);
        assert_eq!(s.outputs["p"].mean_abs, 0.25);
    }
}
