//! Building the application: the database (embedded or given), migrations,
//! the realtime side and the HTTP server bound to its own listener.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::dev::{Server, Service, ServiceResponse};
use actix_web::{web, App, HttpServer};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::db::embedded::{EmbeddedOptions, EmbeddedPostgres};
use crate::db::{migrations, Database};
use crate::http::{self, ApiError, AppState};
use crate::metrics::Metrics;
use crate::realtime::Realtime;

/// Why the application could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Embedded(#[from] crate::db::embedded::EmbeddedError),
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    #[error(transparent)]
    Bus(#[from] crate::realtime::bus::BusError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The embedded PostgreSQL's start-up task panicked or was cancelled.
    #[error(transparent)]
    Task(#[from] tokio::task::JoinError),
    /// The database answers no connection; the pool's or the driver's error
    /// is kept (the message shows its whole chain).
    #[error("the database is unavailable: {}", error_chain(.0))]
    Unreachable(#[source] crate::db::DbError),
}

/// The database livedesk uses: a `DATABASE_URL`, or its own embedded cluster.
pub struct DatabaseHandle {
    pub db: Database,
    /// Present in the embedded default; stopping it stops PostgreSQL.
    pub embedded: Option<EmbeddedPostgres>,
    /// Migrations applied by this start.
    pub applied: usize,
}

/// Connect to (or start) the database and apply migrations.
pub async fn open_database(settings: &Settings) -> Result<DatabaseHandle, StartError> {
    let size = settings.pool_size as usize;
    let (db, embedded) = match &settings.database_url {
        // TLS as the URL asks (sslmode, sslrootcert: db::tls).
        Some(url) => (Database::from_url(url, size, settings.db_timeout())?, None),
        None => {
            let mut options = EmbeddedOptions::new(&settings.data_dir);
            options.unsafe_fast = settings.embedded_unsafe_fast;
            let pg =
                tokio::task::spawn_blocking(move || EmbeddedPostgres::start(options)).await??;
            let (dir, port) = pg.socket();
            tracing::info!(socket = %dir.display(), port, "embedded PostgreSQL is ready");
            // Superuser only creates the roles; the owner migrates and serves.
            let admin = Database::new(pg.admin_config(), 1)?;
            let bootstrapped = crate::db::bootstrap::embedded(&admin).await;
            admin.pool().close();
            bootstrapped?;
            let db = Database::with_timeout(pg.config(), size, settings.db_timeout())?;
            (db, Some(pg))
        }
    };
    if !db.ping().await {
        // Say why, with the driver's own words.
        return Err(match db.client().await {
            Err(e) => StartError::Unreachable(e),
            Ok(_) => crate::db::DbError::Unavailable(String::new()).into(),
        });
    }
    let applied = migrations::run(&db).await?.migrations;
    Ok(DatabaseHandle {
        db,
        embedded,
        applied,
    })
}

/// A built, not yet awaited, server and what it needs to stop cleanly.
pub struct Application {
    pub address: SocketAddr,
    pub server: Server,
    pub realtime: Realtime,
    pub shutdown: CancellationToken,
}

impl Application {
    /// Bind the listener (port 0 picks a free port), start realtime, build the server.
    pub async fn build(settings: Settings, db: Database) -> Result<Application, StartError> {
        let listener = TcpListener::bind(settings.bind).map_err(|source| StartError::Bind {
            addr: settings.bind,
            source,
        })?;
        let address = listener.local_addr().map_err(|source| StartError::Bind {
            addr: settings.bind,
            source,
        })?;
        let mut settings = settings;
        settings.bind = address;
        let settings = Arc::new(settings);
        let metrics = Arc::new(Metrics::new());
        let shutdown = CancellationToken::new();
        let realtime = Realtime::start(
            db.clone(),
            settings.clone(),
            metrics.clone(),
            shutdown.clone(),
        )
        .await?;
        let state = web::Data::new(AppState::new(
            db,
            settings.clone(),
            metrics,
            realtime.clone(),
        ));
        // Ends with `shutdown`, before the pool closes (it owns its connection).
        tokio::spawn(http::agent_watch::run(
            state.db.clone(),
            state.auth.clone(),
            realtime.clone(),
            shutdown.clone(),
        ));
        let config_settings = settings.clone();
        let deadline = settings.request_timeout();
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .wrap_fn(move |req, srv| within_deadline(deadline, srv.call(req)))
                .wrap_fn(http::observe)
                // Outermost: every request runs in a span with its id.
                .wrap(http::request_span::middleware())
                .configure(|cfg| http::configure(cfg, &config_settings))
        })
        .on_connect(no_delay)
        .shutdown_timeout(10)
        .disable_signals();
        if let Some(workers) = settings.workers {
            server = server.workers(workers.max(1));
        }
        let server = server
            .listen(listener)
            .map_err(|source| StartError::Bind {
                addr: address,
                source,
            })?
            .run();
        Ok(Application {
            address,
            server,
            realtime,
            shutdown,
        })
    }

    /// Serve until the server stops (it stops accepting and drains HTTP
    /// when `shutdown` is cancelled and the server handle is stopped), then
    /// stop the realtime side in order. The caller closes the pool (and an
    /// embedded PostgreSQL) afterwards: nothing here uses it any more.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let Application {
            server,
            realtime,
            shutdown,
            ..
        } = self;
        // The realtime side stops as soon as shutdown is asked for, while
        // actix drains HTTP (it checks its connections once a second).
        let serve = async {
            let result = server.await;
            shutdown.cancel();
            result
        };
        let stop_realtime = async {
            shutdown.cancelled().await;
            realtime.stop().await;
        };
        let (result, ()) = tokio::join!(serve, stop_realtime);
        result
    }
}

/// Answer 503 `unavailable` when a request is not done within its budget
/// (PostgreSQL unreachable or stuck): no request hangs. A write cut short
/// this way may still have committed; clients retry with `client_id`.
async fn within_deadline(
    limit: std::time::Duration,
    response: impl std::future::Future<Output = Result<ServiceResponse, actix_web::Error>>,
) -> Result<ServiceResponse, actix_web::Error> {
    match tokio::time::timeout(limit, response).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(limit_ms = limit.as_millis() as u64, "request timed out");
            Err(
                ApiError::Unavailable("The database did not answer in time; retry later.".into())
                    .into(),
            )
        }
    }
}

/// An error with its causes, "outer: inner: root".
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Live events are small writes that must leave at once: without
/// TCP_NODELAY, Nagle's algorithm holds a write back until the previous one
/// is acknowledged, and the peer's delayed ACK adds up to 40 ms.
fn no_delay(connection: &dyn std::any::Any, _: &mut actix_web::dev::Extensions) {
    if let Some(stream) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() {
        let _ = stream.set_nodelay(true);
    }
}
