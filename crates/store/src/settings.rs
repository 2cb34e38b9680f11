//! Where the database is, as a process's settings give it, and opening it at start.

use crate::{ConnectOptions, Result, Store, StoreError};
use serde::{Deserialize, Serialize};

/// Where the database is and whether to migrate it at start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `postgres://user@host:port/db` or `sqlite://path/to/file.db`; unset for none.
    pub url: Option<String>,
    /// Apply pending migrations at start instead of refusing to run.
    pub migrate: bool,
    /// Most connections in the pool.
    pub max_connections: u32,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        DatabaseSettings {
            url: None,
            migrate: false,
            max_connections: 8,
        }
    }
}

impl DatabaseSettings {
    /// Opens the database and checks (or, with `migrate`, brings up to date) its schema; `None`
    /// when no URL is set.
    pub async fn open(&self) -> Result<Option<Store>> {
        let Some(url) = &self.url else {
            return Ok(None);
        };
        let mut opts = ConnectOptions::new(url.clone());
        opts.max_connections = self.max_connections;
        let store = Store::open(&opts, self.migrate)
            .await
            .map_err(|e| StoreError::Open {
                url: redact(url),
                reason: Box::new(e),
            })?;
        Ok(Some(store))
    }
}

/// A database URL with its password replaced by `***`, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => match url[scheme + 3..at].split_once(':') {
            Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
            None => url.to_string(),
        },
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            redact("postgres://vatic:s3cret@db:5432/vatic"),
            "postgres://vatic:***@db:5432/vatic"
        );
        assert_eq!(
            redact("postgres://vatic@db/vatic"),
            "postgres://vatic@db/vatic"
        );
        assert_eq!(redact("sqlite://data/vatic.db"), "sqlite://data/vatic.db");
    }

    #[tokio::test]
    async fn an_unsupported_url_is_named_without_its_password() {
        let settings = DatabaseSettings {
            url: Some("mysql://root:pw@h/db".into()),
            ..Default::default()
        };
        let text = settings.open().await.err().expect("refused").to_string();
        assert!(
            text.starts_with("database mysql://root:***@h/db: "),
            "{text}"
        );
        assert!(text.contains("unsupported database URL"), "{text}");
        assert!(DatabaseSettings::default().open().await.unwrap().is_none());
    }
}
