//! Errors of the data layer.

/// What went wrong talking to the database or reading what it holds.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused a statement or could not be reached.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database was migrated by a newer build.
    #[error("the database schema is at version {found}, newer than this build of vatic knows ({known}); run a vatic at least as new as the one that migrated it")]
    SchemaTooNew {
        /// Newest migration applied to the database.
        found: i64,
        /// Newest migration this build carries.
        known: i64,
    },
    /// The database needs migrations this build carries.
    #[error("the database schema is at version {found} but this build needs version {known}; run `vaticctl migrate --database-url <url>` or start with migrate = true")]
    SchemaBehind {
        /// Newest migration applied to the database (0 for none).
        found: i64,
        /// Newest migration this build carries.
        known: i64,
    },
    /// The URL names no backend vatic supports.
    #[error("unsupported database URL '{0}': use postgres://user@host:port/db or sqlite://path/to/file.db")]
    UnsupportedUrl(String),
    /// A password was given for a SQLite database, which has none.
    #[error("a password file is for PostgreSQL; a sqlite:// database has no password")]
    PasswordForSqlite,
    /// No model of that name.
    #[error("model '{0}' not found")]
    ModelNotFound(String),
    /// The model has no such version.
    #[error("model '{model}' has no version {version}")]
    VersionNotFound {
        /// Model name.
        model: String,
        /// Version asked for.
        version: u64,
    },
    /// The model has no such label.
    #[error("model '{model}' has no label '{label}'; its labels: {labels}")]
    LabelNotFound {
        /// Model name.
        model: String,
        /// Label asked for.
        label: String,
        /// The labels it has.
        labels: String,
    },
    /// The change contradicts what the registry holds.
    #[error("{0}")]
    Conflict(String),
    /// Stored bytes do not match their hash or size.
    #[error("artifact {sha256}: {reason}")]
    Artifact {
        /// The artifact's hash.
        sha256: String,
        /// What did not match.
        reason: String,
    },
    /// A local file could not be read or written.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A stored value could not be decoded.
    #[error("stored data: {0}")]
    Corrupt(String),
    /// The database of a process's settings could not be opened at start.
    #[error("database {url}: {reason}")]
    Open {
        /// The URL, its password hidden.
        url: String,
        /// Why.
        reason: Box<StoreError>,
    },
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Corrupt(e.to_string())
    }
}

impl StoreError {
    /// A push under a version number the model already has.
    pub fn version_taken(model: &str, version: u64) -> Self {
        StoreError::Conflict(format!(
            "model '{model}' already has version {version}; versions are immutable, push under a new number"
        ))
    }
}

/// Results of the data layer.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
