//! Prompt notice of registry and key changes: PostgreSQL LISTEN/NOTIFY. SQLite has no equivalent, so
//! its readers poll.

use crate::{Pool, Result, Store};
use sqlx::postgres::PgListener;

/// The channel registry changes are announced on; the payload is the model name.
pub const REGISTRY_CHANNEL: &str = "vatic_registry";

/// A subscription to registry changes.
pub struct Listener {
    inner: PgListener,
}

impl Store {
    /// Subscribes to registry changes; `None` on SQLite.
    pub async fn listen(&self) -> Result<Option<Listener>> {
        self.listen_on(REGISTRY_CHANNEL).await
    }

    /// Subscribes to the changes announced on `channel` ([`REGISTRY_CHANNEL`],
    /// [`crate::KEYS_CHANNEL`]); `None` on SQLite.
    pub async fn listen_on(&self, channel: &str) -> Result<Option<Listener>> {
        match &self.pool {
            Pool::Postgres(pool) => {
                let mut inner = PgListener::connect_with(pool).await?;
                inner.listen(channel).await?;
                Ok(Some(Listener { inner }))
            }
            Pool::Sqlite(_) => Ok(None),
        }
    }
}

impl Listener {
    /// Waits for the next change and returns the model it names. An error means the
    /// connection broke; the caller should poll and subscribe again.
    pub async fn recv(&mut self) -> Result<String> {
        // `try_recv` reports a lost connection as `None` rather than reconnecting silently, so
        // the caller knows to catch up on what it missed.
        match self.inner.try_recv().await? {
            Some(n) => Ok(n.payload().to_string()),
            None => Err(crate::StoreError::Database(sqlx::Error::Io(
                std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "the LISTEN connection was lost",
                ),
            ))),
        }
    }
}
