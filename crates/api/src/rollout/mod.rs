//! Which version answers a request: the one it names, the one its label names, or for a
//! request naming neither, the stable version or the canary by the model's split. With a route
//! key (a header, `X-Vatic-Route-Key` by default) the split is sticky: at a fixed weight a key
//! always lands on the same side, and as the canary's weight grows the keys already on it stay.

pub mod controller;
pub mod shadow;
pub mod stats;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use vatic_schema::admin::ModelInfo;
use vatic_store::RolloutOp;

/// `[rollout]`: how the api splits traffic and how long a promote keeps the old version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RolloutSettings {
    /// The header whose value keeps a caller on one side of a split (a user or session id).
    /// Requests without it are split at random.
    pub route_key_header: String,
    /// Seconds the version that was stable stays loaded after a promote, so that a rollback
    /// to it is instant; it is retired then.
    pub promote_grace_secs: u64,
    /// Copies of requests waiting for the shadow; more are dropped (and counted).
    pub shadow_queue: usize,
    /// Bytes of tensors (the request's inputs and the served outputs) the waiting copies may
    /// hold; more are dropped (and counted).
    pub shadow_queue_bytes: usize,
    /// Copies the shadow runs at once from this replica.
    pub shadow_concurrency: usize,
    /// Milliseconds between writes of this replica's rollout figures to the database.
    pub stats_flush_ms: u64,
    /// Milliseconds between the automatic rollout controller's passes.
    pub controller_tick_ms: u64,
    /// Milliseconds the replica running the controller holds it without renewing; another
    /// takes over after that when it stops.
    pub controller_lease_ms: u64,
}

impl Default for RolloutSettings {
    fn default() -> Self {
        RolloutSettings {
            route_key_header: "X-Vatic-Route-Key".into(),
            promote_grace_secs: 3600,
            shadow_queue: 256,
            shadow_queue_bytes: 64 << 20,
            shadow_concurrency: 2,
            stats_flush_ms: 2000,
            controller_tick_ms: 1000,
            controller_lease_ms: 10_000,
        }
    }
}

impl RolloutSettings {
    /// Checks what serde cannot, naming the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        if actix_web::http::header::HeaderName::from_bytes(self.route_key_header.as_bytes())
            .is_err()
        {
            anyhow::bail!(
                "rollout.route_key_header: '{}' is not a valid header name",
                self.route_key_header
            );
        }
        if self.shadow_queue == 0
            || self.shadow_queue_bytes == 0
            || self.shadow_concurrency == 0
            || self.stats_flush_ms == 0
            || self.controller_tick_ms == 0
        {
            anyhow::bail!("rollout.shadow_queue, rollout.shadow_queue_bytes, rollout.shadow_concurrency, rollout.stats_flush_ms and rollout.controller_tick_ms must be at least 1");
        }
        if self.controller_lease_ms < 2 * self.controller_tick_ms {
            anyhow::bail!(
                "rollout.controller_lease_ms ({}) must be at least twice rollout.controller_tick_ms ({}): the controller renews its lease every tick",
                self.controller_lease_ms,
                self.controller_tick_ms
            );
        }
        Ok(())
    }
}

/// What a request names besides its model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selector<'a> {
    /// Nothing: the stable version, or the canary by the split.
    Split {
        /// The route key the request came with, if any.
        key: Option<&'a [u8]>,
    },
    /// A version (as the path spells it).
    Version(&'a str),
    /// A label.
    Label(&'a str),
}

/// Which side of a split answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The stable version, by the split.
    Stable,
    /// The canary, by the split.
    Canary,
    /// The version the request named, by number or label.
    Named,
}

/// Buckets of the split: a weight of `w` percent takes buckets `0 .. w * BUCKETS / 100`.
const BUCKETS: u64 = 10_000;

/// The bucket of a request: from its route key, the same on every replica and every build,
/// and different per model so one caller is not the canary of every model at once; at random
/// without a key.
fn bucket(model: &str, key: Option<&[u8]>) -> u64 {
    match key {
        Some(key) => {
            let digest = Sha256::new()
                .chain_update(model.as_bytes())
                .chain_update([0])
                .chain_update(key)
                .finalize();
            let mut first = [0u8; 8];
            first.copy_from_slice(&digest[..8]);
            u64::from_be_bytes(first) % BUCKETS
        }
        None => rand::random::<u64>() % BUCKETS,
    }
}

/// Whether a request of this bucket goes to a canary of `weight` percent.
fn takes_canary(bucket: u64, weight: u32) -> bool {
    bucket < u64::from(weight.min(100)) * BUCKETS / 100
}

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    /// The version that answers.
    pub version: u64,
    /// How it was chosen.
    pub side: Side,
    /// Whether the model has a rollout running (a canary or a shadow), so the answer counts in
    /// its figures.
    pub tracked: bool,
    /// The shadow version a copy of the request goes to, when the sample picked it.
    pub shadow: Option<u64>,
}

/// Where a request naming neither version nor label goes: the canary when the split picks it
/// and `ready` says it can serve, else the stable version; and a copy to the shadow for its
/// sample of requests.
pub fn split(
    info: &ModelInfo,
    key: Option<&[u8]>,
    ready: impl Fn(u64) -> bool,
) -> Option<Resolved> {
    let stable = info.default_version().map(|v| v.version);
    let canary = info.canary();
    let shadow = info.shadow();
    let tracked = canary.is_some() || shadow.is_some();
    let shadow = shadow
        .filter(|(_, sample)| *sample >= 100 || rand::random::<u32>() % 100 < *sample)
        .map(|(v, _)| v);
    if let Some((canary, weight)) = canary {
        if weight > 0 && takes_canary(bucket(&info.name, key), weight) && ready(canary) {
            return Some(Resolved {
                version: canary,
                side: Side::Canary,
                tracked,
                shadow,
            });
        }
    }
    stable.map(|version| Resolved {
        version,
        side: Side::Stable,
        tracked,
        shadow,
    })
}

impl Resolved {
    /// A version the request named, by number or label.
    pub fn named(version: u64) -> Resolved {
        Resolved {
            version,
            side: Side::Named,
            tracked: false,
            shadow: None,
        }
    }
}

impl Side {
    /// The side's name in the figures: `stable` or `canary`; none for a named version.
    pub fn name(self) -> Option<&'static str> {
        match self {
            Side::Stable => Some("stable"),
            Side::Canary => Some("canary"),
            Side::Named => None,
        }
    }
}

/// The models whose promote grace is over: the version a promote left loaded is due to be
/// retired.
pub fn expired_promotes(models: &[ModelInfo], now: chrono::DateTime<chrono::Utc>) -> Vec<String> {
    models
        .iter()
        .filter(|m| {
            m.traffic.previous_stable.is_some()
                && m.traffic
                    .previous_until
                    .as_deref()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .is_none_or(|until| until <= now)
        })
        .map(|m| m.name.clone())
        .collect()
}

/// Retires the version a promote left loaded, its grace over. Every replica tries; the first
/// does it and the others find nothing left to do.
pub async fn expire(store: &vatic_store::Store, model: &str) {
    let actor = vatic_store::Actor::named("controller");
    match store.rollout(model, &RolloutOp::Expire, &actor).await {
        Ok((_, change)) => {
            tracing::info!(model, version = ?change.version, detail = %change.detail, "promote grace over");
        }
        Err(vatic_store::StoreError::Conflict(reason)) => {
            tracing::debug!(model, %reason, "promote grace: done elsewhere");
        }
        Err(e) => {
            tracing::warn!(model, error = %e, "promote grace: could not retire the old version");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_keeps_its_side_and_stays_on_the_canary_as_its_weight_grows() {
        let keys: Vec<String> = (0..2000).map(|i| format!("user-{i}")).collect();
        let on_canary = |weight: u32| -> Vec<bool> {
            keys.iter()
                .map(|k| takes_canary(bucket("m", Some(k.as_bytes())), weight))
                .collect()
        };
        let at_20 = on_canary(20);
        assert_eq!(at_20, on_canary(20), "the same key, the same side");
        let share = at_20.iter().filter(|c| **c).count() as f64 / keys.len() as f64;
        assert!((0.17..0.23).contains(&share), "{share}");
        let at_50 = on_canary(50);
        assert!(
            at_20.iter().zip(&at_50).all(|(a, b)| !a || *b),
            "a key on the canary at 20% is on it at 50%"
        );
        assert!(on_canary(100).iter().all(|c| *c));
        assert!(on_canary(0).iter().all(|c| !*c));
        let other_model: Vec<bool> = keys
            .iter()
            .map(|k| takes_canary(bucket("other", Some(k.as_bytes())), 20))
            .collect();
        assert_ne!(at_20, other_model, "each model splits its callers afresh");
    }

    #[test]
    fn the_shadow_gets_its_sample_of_requests_and_the_split_is_tracked() {
        use vatic_schema::admin::{LogMode, ModelVersionInfo, Signature, Traffic, VersionState};
        let version = |version: u64, state: VersionState| ModelVersionInfo {
            model: "m".into(),
            version,
            state,
            sha256: String::new(),
            size: 0,
            signature: Signature {
                inputs: vec![],
                outputs: vec![],
                batched: true,
            },
            config: String::new(),
            created_by: String::new(),
            created_at: String::new(),
            updated_by: String::new(),
            updated_at: String::new(),
            loaded: Vec::new(),
        };
        let mut info = ModelInfo {
            name: "m".into(),
            created_at: String::new(),
            log_mode: LogMode::Off,
            log_sample_rate: 1.0,
            cache: Default::default(),
            versions: vec![
                version(1, VersionState::Stable),
                version(2, VersionState::Shadow),
            ],
            labels: Default::default(),
            traffic: Traffic {
                shadow_sample: 25,
                ..Traffic::default()
            },
            revision: 0,
            engine: Default::default(),
        };
        let n = 20_000;
        let copies = (0..n)
            .filter_map(|_| split(&info, None, |_| true))
            .inspect(|r| assert_eq!((r.version, r.side, r.tracked), (1, Side::Stable, true)))
            .filter(|r| r.shadow == Some(2))
            .count() as f64
            / n as f64;
        assert!((0.23..0.27).contains(&copies), "{copies}");
        info.versions[1].state = VersionState::Staged;
        let plain = split(&info, None, |_| true).unwrap();
        assert_eq!((plain.tracked, plain.shadow), (false, None));
    }

    #[test]
    fn random_requests_split_by_the_weight() {
        let n = 20_000;
        let canary = (0..n)
            .filter(|_| takes_canary(bucket("m", None), 10))
            .count() as f64
            / n as f64;
        assert!((0.08..0.12).contains(&canary), "{canary}");
    }
}
