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

/// The keys of the database, in memory.
pub struct KeyRing {
    store: Store,
    keys: RwLock<Arc<HashMap<String, Arc<KnownKey>>>>,
}

impl KeyRing {
    /// Reads every key of `store`.
    pub async fn load(store: &Store) -> anyhow::Result<Arc<KeyRing>> {
        let ring = Arc::new(KeyRing {
            store: store.clone(),
            keys: RwLock::new(Arc::default()),
        });
        ring.refresh().await?;
        Ok(ring)
    }

    /// Reads the keys again.
    pub async fn refresh(&self) -> anyhow::Result<()> {
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
                    hash: key.secret_hash,
                }),
            );
        }
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
        Ok(())
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
