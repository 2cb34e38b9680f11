//! Where the database is, as a process's settings give it, and opening it at start.

use crate::{ConnectOptions, Result, Store, StoreError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where the database is and whether to migrate it at start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `postgres://user@host:port/db` or `sqlite://path/to/file.db`; unset for none.
    pub url: Option<String>,
    /// A file holding PostgreSQL's password (a compose or Kubernetes secret), used in place of
    /// a password in `url`; one trailing newline is ignored.
    pub password_file: Option<PathBuf>,
    /// Apply pending migrations at start instead of refusing to run.
    pub migrate: bool,
    /// Most connections in the pool.
    pub max_connections: u32,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        DatabaseSettings {
            url: None,
            password_file: None,
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
        let opened = |e| StoreError::Open {
            url: redact(url),
            reason: Box::new(e),
        };
        let mut opts = ConnectOptions::new(url.clone());
        opts.max_connections = self.max_connections;
        if let Some(file) = &self.password_file {
            opts.password =
                Some(read_password(file, "database.password_file").map_err(|e| opened(e.into()))?);
        }
        let store = Store::open(&opts, self.migrate).await.map_err(opened)?;
        Ok(Some(store))
    }
}

/// The password in `file`, without one trailing newline; an error naming `setting` and the
/// file when it cannot be read or is empty. Never shows what the file holds.
pub fn read_password(file: &Path, setting: &str) -> std::io::Result<String> {
    let named =
        |reason: String| std::io::Error::other(format!("{setting} {}: {reason}", file.display()));
    let text = std::fs::read(file).map_err(|e| named(format!("cannot read it: {e}")))?;
    let text = String::from_utf8(text).map_err(|_| named("is not UTF-8 text".into()))?;
    let password = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    if password.is_empty() {
        return Err(named("is empty".into()));
    }
    Ok(password.to_string())
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

    #[tokio::test]
    async fn a_password_file_is_read_and_its_errors_name_it_without_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        assert_eq!(read_password(&file, "x").unwrap(), "s3cret");
        std::fs::write(&file, "s3cret\r\n").unwrap();
        assert_eq!(read_password(&file, "x").unwrap(), "s3cret");
        std::fs::write(&file, "two\nlines\n").unwrap();
        assert_eq!(read_password(&file, "x").unwrap(), "two\nlines");
        for (content, want) in [
            (&b"\n"[..], "is empty"),
            (&b"\xff\xfe"[..], "is not UTF-8 text"),
        ] {
            std::fs::write(&file, content).unwrap();
            let err = read_password(&file, "database.password_file")
                .unwrap_err()
                .to_string();
            assert_eq!(
                err,
                format!("database.password_file {}: {want}", file.display())
            );
        }
        let missing = dir.path().join("none");
        let settings = DatabaseSettings {
            url: Some("postgres://vatic@127.0.0.1:1/vatic".into()),
            password_file: Some(missing.clone()),
            ..Default::default()
        };
        let text = settings.open().await.err().expect("refused").to_string();
        assert!(
            text.contains(&format!(
                "database.password_file {}: cannot read it",
                missing.display()
            )),
            "{text}"
        );
        std::fs::write(&file, "pw\n").unwrap();
        let sqlite = DatabaseSettings {
            url: Some(format!("sqlite://{}", dir.path().join("v.db").display())),
            password_file: Some(file),
            ..Default::default()
        };
        let text = sqlite.open().await.err().expect("refused").to_string();
        assert!(
            text.contains("a sqlite:// database has no password"),
            "{text}"
        );
    }
}
