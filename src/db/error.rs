//! Failures of the database layer itself (configuration, reachability,
//! migrations). Rule violations raised by SQL are turned into domain errors in
//! `domain::error`, the single SQLSTATE mapping.

/// What went wrong talking to PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid database configuration: {0}")]
    Config(String),
    /// No answer in time, or no connection (the reason, when no error of
    /// the driver or the pool is behind it).
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// The pool could not hand out a connection (timed out, closed, or a
    /// hook failed); its error is kept as the source.
    #[error("the database is unavailable: {0}")]
    Pool(#[source] deadpool_postgres::PoolError),
    #[error("migration failed: {0}")]
    Migration(String),
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
            DbError::Query(e) => e.is_closed() || e.code().is_none() && e.as_db_error().is_none(),
            _ => false,
        }
    }
}
