//! The shared test harness: one throw-away PostgreSQL cluster per test binary,
//! a fresh database per test (cloned from a migrated template), and the app
//! on a free port. Quiet unless `TEST_LOG=1`.
#![allow(dead_code, clippy::unwrap_used)]

pub mod ws;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use livedesk::config::{Bus, Settings};
use livedesk::db::embedded::{EmbeddedOptions, EmbeddedPostgres};
use livedesk::db::{migrations, Database};
use livedesk::domain::{agents, Agent};
use livedesk::startup::Application;
use serde_json::Value;
use tokio_postgres::NoTls;

/// The cluster shared by the tests of one binary.
pub struct Cluster {
    pub pg: Mutex<EmbeddedPostgres>,
    pub dir: PathBuf,
    pub socket_dir: PathBuf,
    pub port: u16,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();
static NEXT_DB: AtomicU32 = AtomicU32::new(1);

/// Start (once) the cluster and its template database.
pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| {
        // A thread of its own: the caller may already be inside a runtime.
        std::thread::spawn(start_cluster)
            .join()
            .expect("cluster start panicked")
    })
}

fn start_cluster() -> Cluster {
    if std::env::var_os("TEST_LOG").is_some() {
        livedesk::telemetry::init(livedesk::config::LogFormat::Human);
    }
    let dir = tempfile::Builder::new()
        .prefix("livedesk-test-")
        .tempdir_in("/tmp")
        .expect("temp dir")
        .keep();
    let mut options = EmbeddedOptions::new(&dir);
    options.unsafe_fast = true;
    // With synchronous_commit off a commit reaches the WAL sender (the
    // logical bus) only when the WAL writer flushes it: flush often.
    options
        .settings
        .push(("wal_writer_delay".into(), "10ms".into()));
    // The rewind tests stop the cluster while the network to livedesk is
    // blackholed: a fast shutdown waits this long for the silent stream.
    options
        .settings
        .push(("wal_sender_timeout".into(), "5s".into()));
    let pg = EmbeddedPostgres::start(options).expect("start the test PostgreSQL");
    let (socket_dir, port) = pg.socket();
    let socket_dir = socket_dir.to_path_buf();
    // The watchdog stops the cluster and removes its folder when this test
    // process ends, however it ends (statics are never dropped). It outlives
    // us on purpose, so it is never waited for.
    #[allow(clippy::zombie_processes)]
    Command::new("/bin/sh")
        .arg("-c")
        .arg(
            "while kill -0 \"$1\" 2>/dev/null; do sleep 0.5; done; \
             pid=$(head -1 \"$3/pg/postmaster.pid\" 2>/dev/null); \
             [ -n \"$pid\" ] && kill -INT \"$pid\" 2>/dev/null; \
             for i in $(seq 1 100); do [ -n \"$pid\" ] && kill -0 \"$pid\" 2>/dev/null || break; sleep 0.1; done; \
             rm -rf \"$3\"",
        )
        .arg("watchdog")
        .arg(std::process::id().to_string())
        .arg(pg.pid().unwrap_or(0).to_string())
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("spawn the cluster watchdog");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // As in production: the superuser only creates the roles, the
        // owner (no superuser rights) migrates and serves.
        let admin = Database::new(pg.admin_config(), 1).unwrap();
        livedesk::db::bootstrap::embedded(&admin)
            .await
            .expect("bootstrap the template");
        admin.pool().close();
        let db = Database::new(pg.config(), 2).unwrap();
        migrations::run(&db).await.expect("migrate the template");
    });
    drop(runtime);
    Cluster {
        pg: Mutex::new(pg),
        dir,
        socket_dir,
        port,
    }
}

use std::os::unix::process::CommandExt;

impl Cluster {
    /// Settings for a database of this cluster, as the schema owner (what
    /// the server serves as).
    pub fn config(&self, dbname: &str) -> tokio_postgres::Config {
        self.config_as(dbname, livedesk::db::bootstrap::OWNER)
    }

    /// Settings for a database of this cluster as the cluster's superuser.
    pub fn admin_config(&self, dbname: &str) -> tokio_postgres::Config {
        self.config_as(dbname, "livedesk")
    }

    /// Settings for a database of this cluster as any role.
    pub fn config_as(&self, dbname: &str, user: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&self.socket_dir)
            .port(self.port)
            .user(user)
            .dbname(dbname);
        config
    }

    /// A `DATABASE_URL` for another process (as the schema owner).
    pub fn url(&self, dbname: &str) -> String {
        format!(
            "host={} port={} user={} dbname={dbname}",
            self.socket_dir.display(),
            self.port,
            livedesk::db::bootstrap::OWNER
        )
    }

    /// Restart the PostgreSQL server (same socket and port).
    pub fn restart(&self) {
        self.pg
            .lock()
            .unwrap()
            .restart()
            .expect("restart PostgreSQL");
    }
}

/// A fresh database cloned from the migrated template.
pub async fn fresh_database() -> String {
    let cluster = cluster();
    let name = format!(
        "t_{}_{}",
        std::process::id(),
        NEXT_DB.fetch_add(1, Ordering::Relaxed)
    );
    let (client, connection) = cluster
        .admin_config("postgres")
        .connect(NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut tries = 0;
    loop {
        match client
            .batch_execute(&format!(
                "CREATE DATABASE {name} TEMPLATE livedesk OWNER {owner}",
                owner = livedesk::db::bootstrap::OWNER
            ))
            .await
        {
            Ok(()) => break,
            Err(e) if tries < 50 => {
                // Another test may be cloning the template at this instant.
                tries += 1;
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot create {name}: {e}"),
        }
    }
    // Database-level rights are not copied from a template: take TEMPORARY
    // from PUBLIC again, as sql/rules/90_privileges.sql does on a real one.
    client
        .batch_execute(&format!("REVOKE TEMPORARY ON DATABASE {name} FROM PUBLIC"))
        .await
        .unwrap();
    name
}

/// A running app on a free port over its own database.
pub struct TestApp {
    pub address: std::net::SocketAddr,
    pub base: String,
    pub dbname: String,
    pub db: Database,
    pub http: reqwest::Client,
    pub shutdown: tokio_util::sync::CancellationToken,
    server: actix_web::dev::ServerHandle,
    join: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

/// Settings for a test app (defaults, port 0, small pool).
pub fn test_settings() -> Settings {
    let mut settings = Settings::defaults();
    settings.bind = "127.0.0.1:0".parse().unwrap();
    settings.database_url = None;
    settings.pool_size = 8;
    settings.workers = Some(2);
    settings.allowed_origins = Vec::new();
    // Races and load tests send hundreds of requests per second from one
    // token and address; the limits have tests of their own (tests/limits.rs).
    settings.rate_per_token = 1_000_000;
    settings.burst_per_token = 1_000_000;
    settings.rate_per_address = 1_000_000;
    settings
}

/// Test settings on a given event bus (`LIVEDESK_BUS`).
pub fn bus_settings(bus: Bus) -> Settings {
    let mut settings = test_settings();
    settings.bus = bus;
    settings
}

/// Run one test body once per event bus: `both_buses!(name)` next to
/// `async fn name(bus: Bus)` makes the tests `name::notify` and
/// `name::logical` (the delivery suite holds in both modes, issue 18).
#[macro_export]
macro_rules! both_buses {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn notify() {
                    super::$name(livedesk::config::Bus::Notify).await
                }
                #[tokio::test]
                async fn logical() {
                    super::$name(livedesk::config::Bus::Logical).await
                }
            }
        )+
    };
}

impl TestApp {
    /// A new database and an app serving it.
    pub async fn spawn_bus(bus: Bus) -> TestApp {
        Self::spawn_with(bus_settings(bus)).await
    }

    /// A new database and an app serving it (the default bus, notify).
    pub async fn spawn() -> TestApp {
        Self::spawn_with(test_settings()).await
    }

    /// Same, with custom settings.
    pub async fn spawn_with(settings: Settings) -> TestApp {
        let dbname = fresh_database().await;
        Self::spawn_on(dbname, settings).await
    }

    /// An app on an existing database (several processes on one database).
    pub async fn spawn_on(dbname: String, settings: Settings) -> TestApp {
        let config = cluster().config(&dbname);
        Self::spawn_via(dbname, settings, config).await
    }

    /// Wait until `/healthz` says 200 (the listener is up).
    pub async fn wait_healthy(&self) {
        for _ in 0..200 {
            if let Ok(r) = self.http.get(format!("{}/healthz", self.base)).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the app never became healthy");
    }

    /// A new agent and its token.
    pub async fn agent(&self, name: &str, role: &str) -> (Agent, String) {
        let email = format!(
            "{}-{}@test.local",
            name.to_lowercase(),
            NEXT_DB.fetch_add(1, Ordering::Relaxed)
        );
        let (agent, token) = agents::add(&self.db, name, &email, role).await.unwrap();
        (agent, token.0)
    }

    /// A direct SQL connection, as another service would have.
    pub async fn sql(&self) -> tokio_postgres::Client {
        let (client, connection) = cluster().config(&self.dbname).connect(NoTls).await.unwrap();
        tokio::spawn(connection);
        client
    }

    /// A direct SQL connection as the cluster's superuser: for what only it
    /// may do (skip the triggers, end other sessions), to make faults.
    pub async fn admin_sql(&self) -> tokio_postgres::Client {
        let (client, connection) = cluster()
            .admin_config(&self.dbname)
            .connect(NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
    }

    /// An authenticated request builder.
    pub fn req(&self, method: reqwest::Method, path: &str, token: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(token)
    }

    /// GET → (status, JSON).
    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        send(self.req(reqwest::Method::GET, path, token)).await
    }

    /// POST JSON → (status, JSON).
    pub async fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        send(self.req(reqwest::Method::POST, path, token).json(&body)).await
    }

    /// PATCH JSON → (status, JSON).
    pub async fn patch(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        send(self.req(reqwest::Method::PATCH, path, token).json(&body)).await
    }

    /// Create a ticket over HTTP; its JSON.
    pub async fn ticket(&self, token: &str, subject: &str) -> Value {
        let (status, body) = self
            .post(
                "/api/tickets",
                token,
                serde_json::json!({"subject": subject}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body
    }

    /// The whole `/metrics` exposition.
    pub async fn metrics_text(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of a counter or gauge from `/metrics`.
    pub async fn metric(&self, name: &str) -> u64 {
        let text = self.metrics_text().await;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no metric {name} in {text}"))
            .parse()
            .unwrap()
    }

    /// Stop the server and its realtime tasks.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        self.server.stop(false).await;
        if let Some(join) = self.join.take() {
            let _ = join.await;
        }
    }
}

/// Send and decode (non-JSON bodies become a string value).
pub async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

/// Assert the contract's error shape and return the code.
pub fn error_code(body: &Value) -> &str {
    let error = body
        .get("error")
        .unwrap_or_else(|| panic!("no error object in {body}"));
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "no message in {body}"
    );
    error["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no code in {body}"))
}

pub mod proxy;

impl TestApp {
    /// An app whose database connections (pool and LISTEN) use `config`
    /// (e.g. through a `proxy::Proxy`), with the settings' DB timeout.
    pub async fn spawn_via(
        dbname: String,
        settings: Settings,
        config: tokio_postgres::Config,
    ) -> TestApp {
        let db = Database::with_timeout(config, settings.pool_size as usize, settings.db_timeout())
            .unwrap();
        Self::spawn_db(dbname, settings, db).await
    }

    /// An app on a `DATABASE_URL` (its TLS parameters included, `db::tls`).
    pub async fn spawn_url(dbname: String, settings: Settings, url: &str) -> TestApp {
        let db =
            Database::from_url(url, settings.pool_size as usize, settings.db_timeout()).unwrap();
        Self::spawn_db(dbname, settings, db).await
    }

    /// An app on a given pool.
    pub async fn spawn_db(dbname: String, settings: Settings, db: Database) -> TestApp {
        let app = Application::build(settings, db.clone()).await.unwrap();
        let address = app.address;
        let shutdown = app.shutdown.clone();
        let server = app.server.handle();
        let join = tokio::spawn(app.run_until_stopped());
        let test = TestApp {
            address,
            base: format!("http://{address}"),
            dbname,
            db,
            // Idle connections are dropped well before the server's 5 s
            // keep-alive closes them: a request sent on a connection the
            // server is closing at that moment fails (IncompleteMessage).
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .pool_idle_timeout(Duration::from_secs(2))
                .build()
                .unwrap(),
            shutdown,
            server,
            join: Some(join),
        };
        test.wait_healthy().await;
        test
    }
}

/// Spend a one-time login link's code (printed as `…/#login=<code>` at first
/// start) for a token, as the console does.
pub async fn redeem_login(base: &str, code: &str) -> String {
    let (status, body) = send(
        reqwest::Client::new()
            .post(format!("{base}/api/login"))
            .json(&serde_json::json!({"code": code})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["token"].as_str().unwrap().to_string()
}

static NEXT_ROLE: AtomicU32 = AtomicU32::new(1);

/// A role made by `livedesk writer add` (the CLI's code) for this test's
/// database — in `livedesk_reader` when `read_only` — with its service
/// agent's id and a connection as it. Roles are cluster-wide, so the name
/// is made unique from `prefix`.
pub async fn writer_role(
    app: &TestApp,
    prefix: &str,
    read_only: bool,
) -> (String, i64, tokio_postgres::Client) {
    let kind = if read_only {
        Role::Reader
    } else {
        Role::Writer
    };
    role(app, prefix, kind).await
}

/// The same for a mail gateway's role (`livedesk writer add --mail`: a
/// writer in livedesk_mailer too).
pub async fn mail_role(app: &TestApp, prefix: &str) -> (String, i64, tokio_postgres::Client) {
    role(app, prefix, Role::Mailer).await
}

enum Role {
    Reader,
    Writer,
    Mailer,
}

async fn role(app: &TestApp, prefix: &str, kind: Role) -> (String, i64, tokio_postgres::Client) {
    let name = format!(
        "{prefix}{}_{}",
        std::process::id(),
        NEXT_ROLE.fetch_add(1, Ordering::Relaxed)
    );
    let admin = Database::new(cluster().admin_config(&app.dbname), 1).unwrap();
    let (writer, _password) = match kind {
        Role::Reader => livedesk::domain::writers::add(&admin, &name, true).await,
        Role::Writer => livedesk::domain::writers::add(&admin, &name, false).await,
        Role::Mailer => livedesk::domain::writers::add_mailer(&admin, &name).await,
    }
    .unwrap();
    admin.pool().close();
    let client = connect_as(&app.dbname, &name).await;
    (name, writer.agent.id, client)
}

/// Where the forged-message tests start: an agent watching a fresh ticket
/// over a WebSocket (subscribed at its first version), and a writer role's
/// connection to forge with.
pub struct Watched {
    pub ticket: i64,
    pub version: i64,
    pub ws: ws::WsClient,
    pub writer: tokio_postgres::Client,
}

/// Set up [`Watched`] on `app` (the writer's name made unique from `prefix`).
pub async fn watched_ticket(app: &TestApp, prefix: &str) -> Watched {
    let (_, token) = app.agent("Alice", "agent").await;
    let ticket = app.ticket(&token, "Refund").await;
    let (id, version) = (
        ticket["id"].as_i64().unwrap(),
        ticket["version"].as_i64().unwrap(),
    );
    let mut ws = ws::WsClient::connect(&app.base, &token).await;
    ws.subscribe(id, Some(version)).await;
    let (_, _, writer) = writer_role(app, prefix, false).await;
    Watched {
        ticket: id,
        version,
        ws,
        writer,
    }
}

/// A connection to a test database as any role.
pub async fn connect_as(dbname: &str, user: &str) -> tokio_postgres::Client {
    let (client, connection) = cluster()
        .config_as(dbname, user)
        .connect(NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}
