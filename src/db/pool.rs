//! A pool of connections for request handlers, plus the settings to open the
//! dedicated LISTEN connection (which never comes from the pool).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::tls::{self, Connector};
use super::DbError;
use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};

/// The default budget of one exchange with PostgreSQL (`LIVEDESK_DB_TIMEOUT_MS`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// A pooled connection is checked with an empty query before use, at most
/// this long: one that died silently (or is stuck behind a query whose
/// caller gave up) is dropped and replaced instead of hanging its next user.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// A connection handed out less than this long ago is not checked again:
/// it just answered (a caller gives up only after the timeout, which is
/// longer), and a check per checkout doubled the round trips of every HTTP
/// request under load (docs/benchmarks.md). Connections idle for longer —
/// the ones that can have died unnoticed — are still checked.
const CHECK_WHEN_IDLE_FOR: Duration = Duration::from_millis(1000);

/// Where the database is and a pool of connections to it.
#[derive(Clone)]
pub struct Database {
    config: tokio_postgres::Config,
    tls: Connector,
    pool: Pool,
    timeout: Duration,
    opened: Arc<AtomicU64>,
}

impl Database {
    /// Parse a `DATABASE_URL` (or key=value string); its TLS parameters
    /// (`sslmode`, `sslrootcert`) are read by `db::tls` (use `from_url` to
    /// keep them).
    pub fn parse_url(url: &str) -> Result<tokio_postgres::Config, DbError> {
        tls::parse(url).map(|(config, _)| config)
    }

    /// A pool for a `DATABASE_URL`, with the TLS it asks for (`db::tls`).
    pub fn from_url(url: &str, size: usize, timeout: Duration) -> Result<Self, DbError> {
        let (config, tls) = tls::parse(url)?;
        Self::build(config, tls, size, timeout)
    }

    /// Build a pool of `size` connections; nothing is connected until first use.
    pub fn new(config: tokio_postgres::Config, size: usize) -> Result<Self, DbError> {
        Self::with_timeout(config, size, DEFAULT_TIMEOUT)
    }

    /// Same, with the budget of one exchange with PostgreSQL: connecting,
    /// checking out a connection, `ping`.
    pub fn with_timeout(
        config: tokio_postgres::Config,
        size: usize,
        timeout: Duration,
    ) -> Result<Self, DbError> {
        Self::build(config, tls::unchecked(), size, timeout)
    }

    fn build(
        mut config: tokio_postgres::Config,
        tls: Connector,
        size: usize,
        timeout: Duration,
    ) -> Result<Self, DbError> {
        if config.get_application_name().is_none() {
            config.application_name("livedesk");
        }
        config.connect_timeout(timeout);
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
            tls.clone(),
            ManagerConfig {
                // Closed connections are dropped here; the empty-query check
                // is the pre_recycle hook below, for idle connections only.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let check_within = CHECK_TIMEOUT.min(timeout);
        let check_when_idle_for = CHECK_WHEN_IDLE_FOR.min(timeout / 2);
        let opened = Arc::new(AtomicU64::new(0));
        let count = opened.clone();
        // A statement may run as long as one exchange may take: past it
        // PostgreSQL cancels it itself, whoever was waiting for it. An HTTP
        // handler is not dropped when its client goes away (actix-web), so
        // without this a request waiting for a row that a direct writer's
        // open transaction holds would keep its connection until that
        // transaction ends, and a handful of them would take the pool.
        // (PostgreSQL's largest value is i32::MAX ms, some 24 days.)
        let statement_timeout = format!(
            "SET statement_timeout = {}",
            timeout.as_millis().min(i32::MAX as u128)
        );
        let pool = Pool::builder(manager)
            .post_create(Hook::async_fn(move |client, _| {
                let (set, count) = (statement_timeout.clone(), count.clone());
                Box::pin(async move {
                    client.batch_execute(&set).await.map_err(|e| {
                        HookError::message(format!("could not set statement_timeout: {e}"))
                    })?;
                    count.fetch_add(1, Ordering::AcqRel);
                    Ok(())
                })
            }))
            // One empty round trip (tens of µs locally) for a connection
            // that was idle: TCP keepalives cannot see a peer that accepts
            // bytes and never answers, this check can (within the timeout).
            .pre_recycle(Hook::async_fn(move |client, metrics| {
                Box::pin(async move {
                    if metrics.last_used() < check_when_idle_for {
                        return Ok(());
                    }
                    match tokio::time::timeout(check_within, client.simple_query("")).await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(e)) => Err(HookError::message(format!(
                            "pooled connection failed its check: {e}"
                        ))),
                        Err(_) => Err(HookError::message(
                            "pooled connection did not answer its check",
                        )),
                    }
                })
            }))
            .max_size(size)
            // The connection used last is handed out first: at a low rate
            // of use one connection stays warm (its backend scheduled, its
            // plans cached, no idle check), where FIFO rotated through all
            // of them and checked each one. The live event read after a
            // lone change took ~1.6 ms with FIFO, ~0.9 ms with LIFO
            // (docs/benchmarks.md, fan-out). Idle ones are still checked.
            .queue_mode(deadpool_postgres::QueueMode::Lifo)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(CHECK_TIMEOUT.min(timeout)))
            .build()
            .map_err(DbError::Build)?;
        Ok(Database {
            config,
            tls,
            pool,
            timeout,
            opened,
        })
    }

    /// How many pooled connections were opened so far. A new connection
    /// may reach a database that restarted, or was restored, since the
    /// last one: the realtime side checks its cursors again when this moves.
    pub fn connections_opened(&self) -> u64 {
        self.opened.load(Ordering::Acquire)
    }

    /// The budget of one exchange with PostgreSQL.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The pool for handlers.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The connection settings, for the LISTEN connection and for tools.
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// The TLS the URL asked for, for connections outside the pool (LISTEN).
    pub fn tls(&self) -> Connector {
        self.tls.clone()
    }

    /// A pooled connection, or `DbError::Unavailable`.
    pub async fn client(&self) -> Result<deadpool_postgres::Object, DbError> {
        self.pool.get().await.map_err(DbError::from)
    }

    /// Run `work` within the timeout: a database that does not answer is
    /// unavailable, not a reason to wait forever.
    pub async fn within<T, E>(
        &self,
        work: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, DbError>
    where
        DbError: From<E>,
    {
        match tokio::time::timeout(self.timeout, work).await {
            Ok(result) => result.map_err(DbError::from),
            Err(_) => Err(self.no_answer()),
        }
    }

    /// Run `work` on a pooled connection within the timeout. Past it the
    /// query is cancelled in its backend and the connection leaves the
    /// pool: dropping the future alone (`within`) leaves the query running
    /// to its end, and the next user of the connection waits behind it.
    /// For the heavy reads (snapshots, event reads).
    pub async fn read_within<T, E>(
        &self,
        work: impl AsyncFnOnce(&deadpool_postgres::Object) -> Result<T, E>,
    ) -> Result<T, DbError>
    where
        DbError: From<E>,
    {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let client = match tokio::time::timeout_at(deadline, self.client()).await {
            Ok(client) => client?,
            Err(_) => return Err(self.no_answer()),
        };
        let outcome = tokio::time::timeout_at(deadline, work(&client)).await;
        match outcome {
            Ok(result) => result.map_err(DbError::from),
            Err(_) => {
                let cancel = client.cancel_token();
                let detached = deadpool_postgres::Object::take(client);
                let tls = self.tls();
                tokio::spawn(async move {
                    if let Err(e) = cancel.cancel_query(tls).await {
                        tracing::debug!(error = %e, "could not cancel a query past its time");
                    }
                    drop(detached);
                });
                Err(self.no_answer())
            }
        }
    }

    fn no_answer(&self) -> DbError {
        DbError::Unavailable(format!("no answer within {} ms", self.timeout.as_millis()))
    }

    /// Whether the database answers a trivial query now (within the timeout:
    /// a database that stopped answering is as down as one that refuses).
    pub async fn ping(&self) -> bool {
        let ping = async {
            match self.client().await {
                Ok(client) => client.simple_query("SELECT 1").await.is_ok(),
                Err(_) => false,
            }
        };
        tokio::time::timeout(self.timeout, ping)
            .await
            .unwrap_or(false)
    }
}
