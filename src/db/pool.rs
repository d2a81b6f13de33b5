//! A pool of connections for request handlers, plus the settings to open the
//! dedicated LISTEN connection (which never comes from the pool).

use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use super::DbError;

/// Where the database is and a pool of connections to it.
#[derive(Clone)]
pub struct Database {
    config: tokio_postgres::Config,
    pool: Pool,
}

impl Database {
    /// Parse a `DATABASE_URL` (or key=value string).
    pub fn parse_url(url: &str) -> Result<tokio_postgres::Config, DbError> {
        tokio_postgres::Config::from_str(url).map_err(|e| DbError::Config(e.to_string()))
    }

    /// Build a pool of `size` connections; nothing is connected until first use.
    pub fn new(mut config: tokio_postgres::Config, size: usize) -> Result<Self, DbError> {
        if config.get_application_name().is_none() {
            config.application_name("livedesk");
        }
        config.connect_timeout(Duration::from_secs(5));
        // A peer that vanished (network partition, failover) must surface as
        // an error within seconds, not after the kernel's 15-minute
        // retransmission limit: a hung read would stall event delivery.
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3)
            .tcp_user_timeout(Duration::from_secs(30));
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| DbError::Config(e.to_string()))?;
        Ok(Database { config, pool })
    }

    /// The pool for handlers.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The connection settings, for the LISTEN connection and for tools.
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// A pooled connection, or `DbError::Unavailable`.
    pub async fn client(&self) -> Result<deadpool_postgres::Object, DbError> {
        self.pool.get().await.map_err(DbError::from)
    }

    /// Whether the database answers a trivial query now.
    pub async fn ping(&self) -> bool {
        match self.client().await {
            Ok(client) => client.simple_query("SELECT 1").await.is_ok(),
            Err(_) => false,
        }
    }
}
