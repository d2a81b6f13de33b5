//! The database layer: the pool, the migrations, the embedded server, and the
//! one place where PostgreSQL errors become domain errors.

pub mod bootstrap;
pub mod embedded;
pub mod error;
pub mod migrations;
pub mod pool;
pub mod tls;

pub use error::DbError;
pub use pool::Database;
