//! `vaticctl migrate`: brings the registry database's schema up to this build's, or checks it.
//! This command talks to the database itself, not to the API server.

use crate::output::{self, OutputFormat};
use crate::GlobalArgs;
use anyhow::{anyhow, bail, Context};
use clap::Args;
use serde_json::json;
use std::io::Write;
use std::path::Path;
use vatic_store::{redact, ConnectOptions, Store, StoreError};

/// Arguments of `vaticctl migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The registry database: postgres://user:password@host:port/db or sqlite://path/to/file.db
    #[arg(long, env = "DATABASE_URL", value_name = "URL", hide_env_values = true)]
    pub database_url: String,
    /// A file holding PostgreSQL's password (a compose or Kubernetes secret), used in place of
    /// a password in the URL
    #[arg(long, env = "DATABASE_PASSWORD_FILE", value_name = "FILE")]
    pub password_file: Option<std::path::PathBuf>,
    /// Only compare the database's schema version with this build's; exit 1 when they differ
    #[arg(long)]
    pub check: bool,
}

/// Runs `vaticctl migrate`.
pub fn run(global: &GlobalArgs, args: &MigrateArgs) -> anyhow::Result<()> {
    let url = args.database_url.as_str();
    let shown = redact(url);
    if args.check {
        if let Some(path) = sqlite_path(url) {
            // Opening would create it; an absent file is a database that is not set up.
            if !Path::new(path).exists() {
                bail!("database {shown}: there is no SQLite database at {path}");
            }
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let mut opts = ConnectOptions::new(url);
        if let Some(file) = &args.password_file {
            opts.password = Some(
                vatic_store::read_password(file, "--password-file")
                    .map_err(|e| anyhow!("database {shown}: {e}"))?,
            );
        }
        let store = Store::connect_lazy(&opts).map_err(|e| store_error(&shown, e))?;
        let result = if args.check {
            check(&store, &shown, global.output).await
        } else {
            migrate(&store, &shown, global.output).await
        };
        store.close().await;
        result
    })
}

/// Applies the pending migrations and prints what it did.
async fn migrate(store: &Store, shown: &str, format: OutputFormat) -> anyhow::Result<()> {
    let applied = store.migrate().await.map_err(|e| store_error(shown, e))?;
    let version = store
        .schema_version()
        .await
        .map_err(|e| store_error(shown, e))?;
    let out = &mut std::io::stdout().lock();
    match format {
        OutputFormat::Json => output::print_json(
            &json!({ "applied": applied, "schema_version": version }),
            out,
        )?,
        OutputFormat::Table if applied.is_empty() => {
            writeln!(out, "already at version {version}: nothing to apply")?;
        }
        OutputFormat::Table => {
            let list: Vec<String> = applied.iter().map(|v| v.to_string()).collect();
            writeln!(
                out,
                "applied {} migration{} ({}): the schema is at version {version}",
                applied.len(),
                if applied.len() == 1 { "" } else { "s" },
                list.join(", ")
            )?;
        }
    }
    Ok(())
}

/// Compares the schema version with this build's; a difference is an error.
async fn check(store: &Store, shown: &str, format: OutputFormat) -> anyhow::Result<()> {
    let found = store
        .schema_version()
        .await
        .map_err(|e| store_error(shown, e))?;
    let known = store.known_schema_version();
    let differs = match found.cmp(&known) {
        std::cmp::Ordering::Greater => Some(StoreError::SchemaTooNew { found, known }),
        std::cmp::Ordering::Less => Some(StoreError::SchemaBehind { found, known }),
        std::cmp::Ordering::Equal => None,
    };
    if let Some(e) = differs {
        return Err(store_error(shown, e));
    }
    let out = &mut std::io::stdout().lock();
    match format {
        OutputFormat::Json => output::print_json(
            &json!({ "schema_version": found, "known_schema_version": known }),
            out,
        )?,
        OutputFormat::Table => writeln!(
            out,
            "the schema is at version {found}, the version this build needs: up to date"
        )?,
    }
    Ok(())
}

/// A store error as a message that names the database (without its password).
fn store_error(shown: &str, e: StoreError) -> anyhow::Error {
    match e {
        StoreError::UnsupportedUrl(_) => anyhow!(
            "unsupported database URL '{shown}': use postgres://user@host:port/db or \
             sqlite://path/to/file.db"
        ),
        StoreError::Database(sqlx::Error::PoolTimedOut) => anyhow!(
            "cannot connect to the database {shown} within {} s: is it running, and reachable \
             from here?",
            ConnectOptions::new("").acquire_timeout.as_secs()
        ),
        StoreError::Database(e) => anyhow!("cannot use the database {shown}: {}", root_cause(&e)),
        other => anyhow!("database {shown}: {other}"),
    }
}

/// The innermost error, which says what actually went wrong ("database \"x\" does not exist"
/// rather than "error returned from database").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = e;
    while let Some(source) = inner.source() {
        inner = source;
    }
    inner.to_string()
}

/// The file of a `sqlite://` URL.
fn sqlite_path(url: &str) -> Option<&str> {
    let path = url.strip_prefix("sqlite://")?;
    Some(path.split('?').next().unwrap_or(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_name_their_file() {
        assert_eq!(
            sqlite_path("sqlite://data/v.db?mode=rwc"),
            Some("data/v.db")
        );
        assert_eq!(sqlite_path("postgres://h/db"), None);
    }

    #[test]
    fn an_unsupported_url_is_shown_without_its_password() {
        let e = store_error(
            &redact("mysql://root:pw@h/db"),
            StoreError::UnsupportedUrl("mysql://root:pw@h/db".into()),
        );
        let text = e.to_string();
        assert!(text.contains("'mysql://root:***@h/db'"), "{text}");
        assert!(!text.contains("pw"), "{text}");
    }
}
