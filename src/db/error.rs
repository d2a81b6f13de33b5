//! Failures of the database layer itself (configuration, reachability,
//! migrations). Rule violations raised by SQL are turned into domain errors in
//! `domain::error`, the single SQLSTATE mapping.

/// What went wrong talking to PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid database configuration: {0}")]
    Config(String),
    /// `DATABASE_URL` (or a settings-built configuration) that the driver
    /// refused; its error is kept.
    #[error("invalid database configuration: {0}")]
    Url(#[source] tokio_postgres::Error),
    /// The pool could not be built from the configuration.
    #[error("invalid database configuration: {0}")]
    Build(#[source] deadpool_postgres::BuildError),
    /// `sslrootcert` could not be read or used; the reason is kept.
    #[error("invalid database configuration: sslrootcert {path}: {source}")]
    RootCert {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// No answer in time, or no connection (the reason, when no error of
    /// the driver or the pool is behind it).
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// The pool could not hand out a connection (timed out, closed, or a
    /// hook failed); its error is kept as the source.
    #[error("the database is unavailable: {0}")]
    Pool(#[source] deadpool_postgres::PoolError),
    /// refinery refused or failed a migration; its error is kept.
    #[error("migration failed: {0}")]
    Migrations(#[source] refinery::Error),
    /// A file of sql/ (a rule, the bootstrap) failed; PostgreSQL's error is
    /// kept, and the message says which file, in PostgreSQL's own words.
    #[error("migration failed: {file}: {text}")]
    SqlFile {
        file: String,
        text: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(transparent)]
    Query(#[from] tokio_postgres::Error),
}

impl From<deadpool_postgres::PoolError> for DbError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => DbError::Query(e),
            other => DbError::Pool(other),
        }
    }
}

impl DbError {
    /// Whether the error means "the database cannot be reached" (→ 503) rather
    /// than "this statement failed".
    pub fn is_unavailable(&self) -> bool {
        match self {
            DbError::Unavailable(_) | DbError::Pool(_) => true,
            DbError::Query(e) => {
                e.is_closed() || e.code().is_none() && e.as_db_error().is_none() || self.timed_out()
            }
            _ => false,
        }
    }

    /// Whether PostgreSQL cancelled the statement: it ran past the pool's
    /// `statement_timeout` (`LIVEDESK_DB_TIMEOUT_MS`; most often a row held
    /// by another transaction), or an administrator cancelled it. Nothing
    /// of it was kept; trying again may succeed.
    pub fn timed_out(&self) -> bool {
        matches!(self, DbError::Query(e) if e.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED))
    }
}
