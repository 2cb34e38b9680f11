//! The keys an api replica knows: every key of the database, held in memory and read again when
//! one changes (at once on PostgreSQL, by LISTEN/NOTIFY; by polling on SQLite), so a revocation
//! takes effect on every replica within a second.

use super::token;
use super::Role;
use chrono::{DateTime, Utc};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::Duration;
use vatic_store::{ApiKey, Store};

/// A key as the guard uses it.
#[derive(Debug)]
pub struct KnownKey {
    /// Its public id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The models it may use; `None` for every model.
    pub models: Option<HashSet<String>>,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// Whether it was revoked.
    pub revoked: bool,
    /// Its own rate limit (requests per second, burst), when it has one.
    pub limit: Option<(f64, u32)>,
    hash: Vec<u8>,
}

/// Why a key was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// No key of that id, or the secret is wrong.
    #[error("the API key is not valid")]
    Unknown,
    /// The key was revoked.
    #[error("the API key has been revoked")]
    Revoked,
    /// The key expired.
    #[error("the API key expired at {0}")]
    Expired(String),
}

/// The default rate limit of keys without one of their own, and how many api replicas share
/// each key's limit.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RateLimits {
    /// Requests per second and burst of a key with no limit of its own; none when `None`.
    pub default: Option<(f64, u32)>,
    /// The api replicas a client's requests are spread over: each enforces 1/`replicas` of a
    /// key's rate and burst (at least one request). 0 or 1: one replica, the whole limit.
    pub replicas: u32,
}

impl RateLimits {
    /// The limit this replica enforces for `key`: its share of the key's own limit or of the
    /// default.
    fn of(&self, key: &KnownKey) -> Option<(f64, u32)> {
        let (rate, burst) = key.limit.or(self.default)?;
        let n = self.replicas.max(1);
        Some((rate / f64::from(n), burst.div_ceil(n).max(1)))
    }
}

/// A key over its rate limit.
#[derive(Debug, Clone, PartialEq)]
pub struct OverLimit {
    /// The rate enforced here, requests per second.
    pub rate: f64,
    /// The burst enforced here.
    pub burst: u32,
    /// When a request would pass again.
    pub retry_after: Duration,
}

type Limiter = governor::DefaultDirectRateLimiter;

/// A limit: requests per second, burst.
type Limit = (f64, u32);

/// The keys of the database, in memory.
pub struct KeyRing {
    store: Store,
    keys: RwLock<Arc<HashMap<String, Arc<KnownKey>>>>,
    limits: RateLimits,
    /// Each key's token bucket, with the limit it was made for.
    buckets: RwLock<HashMap<String, (Limit, Arc<Limiter>)>>,
    /// One read of the key table at a time, so an older read never replaces a newer one.
    reading: tokio::sync::Mutex<()>,
}

impl KeyRing {
    /// Reads every key of `store`; keys are held to `limits`.
    pub async fn load(store: &Store, limits: RateLimits) -> anyhow::Result<Arc<KeyRing>> {
        let ring = Arc::new(KeyRing {
            store: store.clone(),
            keys: RwLock::new(Arc::default()),
            limits,
            buckets: RwLock::default(),
            reading: tokio::sync::Mutex::new(()),
        });
        ring.refresh().await?;
        Ok(ring)
    }

    /// The database the keys are kept in.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Reads the keys again.
    pub async fn refresh(&self) -> anyhow::Result<()> {
        let _one_at_a_time = self.reading.lock().await;
        let mut keys = HashMap::new();
        for key in self.store.api_keys().await? {
            let role: Role = match key.role.parse() {
                Ok(role) => role,
                Err(e) => {
                    tracing::error!(key = %key.id, error = %e, "a key with an unknown role is ignored");
                    continue;
                }
            };
            keys.insert(
                key.id.clone(),
                Arc::new(KnownKey {
                    id: key.id,
                    name: key.name,
                    role,
                    models: key.models.map(|m| m.into_iter().collect()),
                    expires_at: key.expires_at,
                    revoked: key.revoked_at.is_some(),
                    limit: key
                        .rate
                        .map(|rate| (rate, key.burst.unwrap_or_else(|| default_burst(rate)))),
                    hash: key.secret_hash,
                }),
            );
        }
        self.buckets
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|id, _| keys.contains_key(id));
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
        Ok(())
    }

    /// Takes one request from `key`'s token bucket; refuses when it is empty.
    pub fn take(&self, key: &KnownKey) -> Result<(), OverLimit> {
        let Some(limit) = self.limits.of(key) else {
            return Ok(());
        };
        let bucket = {
            let buckets = self.buckets.read().unwrap_or_else(PoisonError::into_inner);
            buckets
                .get(&key.id)
                .filter(|(made_for, _)| *made_for == limit)
                .map(|(_, b)| b.clone())
        };
        let bucket = match bucket {
            Some(b) => b,
            None => {
                let mut buckets = self.buckets.write().unwrap_or_else(PoisonError::into_inner);
                let entry = buckets
                    .entry(key.id.clone())
                    .or_insert_with(|| (limit, Arc::new(bucket_of(limit))));
                if entry.0 != limit {
                    *entry = (limit, Arc::new(bucket_of(limit)));
                }
                entry.1.clone()
            }
        };
        bucket.check().map_err(|not_until| {
            use governor::clock::{Clock, DefaultClock};
            OverLimit {
                rate: limit.0,
                burst: limit.1,
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
            }
        })
    }

    /// The key `secret` is, if it is a usable one.
    pub fn authenticate(&self, secret: &str) -> Result<Arc<KnownKey>, Rejected> {
        let keys = self
            .keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let key = keys
            .get(&token::id_of(secret))
            .filter(|k| token::matches(secret, &k.hash))
            .ok_or(Rejected::Unknown)?;
        if key.revoked {
            return Err(Rejected::Revoked);
        }
        if let Some(at) = key.expires_at.filter(|at| *at <= Utc::now()) {
            return Err(Rejected::Expired(
                at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            ));
        }
        Ok(key.clone())
    }

    /// The key of id `id`, as last read.
    pub fn key(&self, id: &str) -> Option<Arc<KnownKey>> {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    /// Whether a usable admin key exists.
    pub fn has_admin(&self) -> bool {
        let now = Utc::now();
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .any(|k| k.role == Role::Admin && !k.revoked && k.expires_at.is_none_or(|at| at > now))
    }

    /// Stores a new key whose whole text is `secret` (made here when `None`) and reads the keys
    /// again; returns the stored record and the key, to show once.
    pub async fn create(
        &self,
        mut key: ApiKey,
        secret: Option<String>,
    ) -> anyhow::Result<(ApiKey, String)> {
        let secret = match secret {
            Some(s) => s,
            None => token::generate().secret,
        };
        key.id = token::id_of(&secret);
        key.secret_hash = token::hash(&secret).to_vec();
        self.store.create_key(&key).await?;
        self.refresh().await?;
        Ok((key, secret))
    }

    /// Reads the keys again whenever one changes: at once on PostgreSQL (LISTEN/NOTIFY, with a
    /// poll every `poll` besides), every `poll` on SQLite. Stops when the ring is dropped.
    pub fn follow(self: &Arc<Self>, poll: Duration) {
        let ring: Weak<KeyRing> = Arc::downgrade(self);
        let store = self.store.clone();
        tokio::spawn(async move {
            let mut listener = None;
            loop {
                if listener.is_none() {
                    listener = store
                        .listen_on(vatic_store::KEYS_CHANNEL)
                        .await
                        .unwrap_or_else(|e| {
                            tracing::warn!(error = %e, "cannot listen for key changes; polling");
                            None
                        });
                }
                let heard = async {
                    match listener.as_mut() {
                        Some(l) => l.recv().await.is_ok(),
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    ok = heard => if !ok { listener = None; },
                    () = tokio::time::sleep(poll) => {}
                }
                let Some(ring) = ring.upgrade() else {
                    return;
                };
                if let Err(e) = ring.refresh().await {
                    tracing::warn!(error = %e, "reading the API keys failed; the keys known stay");
                }
            }
        });
    }
}

/// The burst of a rate given without one: a second's worth, at least one request.
pub fn default_burst(rate: f64) -> u32 {
    // Saturating: a rate past u32::MAX requests a second is as good as none.
    (rate.ceil() as u32).max(1)
}

/// A token bucket of `rate` requests a second holding `burst`.
fn bucket_of((rate, burst): (f64, u32)) -> Limiter {
    // At most a year a request (the api refuses rates under one a day, before sharing).
    let period = Duration::try_from_secs_f64(1.0 / rate)
        .unwrap_or(Duration::MAX)
        .clamp(Duration::from_nanos(1), Duration::from_secs(365 * 86_400));
    let quota = governor::Quota::with_period(period)
        .expect("a period of at least 1 ns")
        .allow_burst(std::num::NonZeroU32::new(burst.max(1)).expect("at least 1"));
    governor::RateLimiter::direct(quota)
}
