//! The benchmark's world: a durable embedded PostgreSQL (fsync on) in a temp
//! folder, and livedesk server processes against it, all on loopback.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use livedesk::db::embedded::{find_bin_dir, EmbeddedOptions, EmbeddedPostgres, SUPERUSER};
use livedesk::db::{migrations, Database};
use livedesk::domain::{agents, writers};

/// A running cluster, a server process, and agents with tokens.
pub struct BenchEnv {
    /// Declared before `pg`: fields drop in order, and the pool must close
    /// before PostgreSQL stops.
    pub db: Database,
    pub pg: EmbeddedPostgres,
    pub bin_dir: PathBuf,
    pub server: Child,
    pub base: String,
    pub server_pid: u32,
    pub tokens: Vec<(i64, String)>,
    /// The role pgbench's direct writes run as: a writer made with
    /// `livedesk writer add`, as another service would be.
    pub writer: String,
    _dir: tempfile::TempDir,
}

/// The role [`BenchEnv::start`] makes for the direct-SQL scenarios.
const BENCH_WRITER: &str = "bench_writer";

impl BenchEnv {
    /// Start everything; `agents` agents are created with tokens.
    pub async fn start(agent_count: usize) -> Result<BenchEnv> {
        raise_fd_limit();
        let dir = tempfile::Builder::new()
            .prefix("livedesk-bench-")
            .tempdir_in("/tmp")?;
        let mut options = EmbeddedOptions::new(dir.path());
        options
            .settings
            .push(("shared_buffers".into(), "256MB".into()));
        options
            .settings
            .push(("max_connections".into(), "300".into()));
        let pg = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(options)).await??;
        let admin = Database::new(pg.admin_config(), 1)?;
        livedesk::db::bootstrap::embedded(&admin).await?;
        let db = Database::new(pg.config(), 16)?;
        migrations::run(&db).await?;
        // The password is not needed: the embedded cluster trusts local
        // connections (docs/configuration.md).
        let (writer, _password) = writers::add(&admin, BENCH_WRITER, false).await?;
        admin.pool().close();
        let mut tokens = Vec::new();
        for n in 0..agent_count {
            let (agent, token) = agents::add(
                &db,
                &format!("Bench {n}"),
                &format!("bench{n}@bench.local"),
                "agent",
            )
            .await?;
            tokens.push((agent.id, token.0));
        }
        let bin_dir = find_bin_dir().context("PostgreSQL binaries")?;
        let (server, base) = spawn_server(&pg, false)?;
        let server_pid = server.id();
        let env = BenchEnv {
            db,
            pg,
            bin_dir,
            server,
            base,
            server_pid,
            tokens,
            writer: writer.name,
            _dir: dir,
        };
        env.wait_healthy().await?;
        Ok(env)
    }

    async fn wait_healthy(&self) -> Result<()> {
        for _ in 0..400 {
            if let Ok(r) = reqwest::get(format!("{}/healthz", self.base)).await {
                if r.status() == 200 {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the livedesk server did not become healthy")
    }

    /// A libpq key=value string for pgbench: the bench's writer role, so
    /// direct writes meet the privileges a real service has.
    pub fn conninfo(&self) -> String {
        self.conninfo_as(&self.writer)
    }

    /// The same as the cluster's superuser (what may switch the triggers'
    /// `SECURITY DEFINER` off for a comparison).
    pub fn superuser_conninfo(&self) -> String {
        self.conninfo_as(SUPERUSER)
    }

    fn conninfo_as(&self, user: &str) -> String {
        let (dir, port) = self.pg.socket();
        format!(
            "host={} port={port} user={user} dbname=livedesk",
            dir.display()
        )
    }

    /// A direct connection, as another service would have.
    pub async fn sql(&self) -> Result<tokio_postgres::Client> {
        let (client, connection) = self.pg.config().connect(tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        Ok(client)
    }

    /// A direct connection as the cluster's superuser (fixtures that must
    /// skip the triggers: `session_replication_role = replica`).
    pub async fn admin_sql(&self) -> Result<tokio_postgres::Client> {
        let (client, connection) = self
            .pg
            .admin_config()
            .connect(tokio_postgres::NoTls)
            .await?;
        tokio::spawn(connection);
        Ok(client)
    }

    /// Resident memory of the server process, in KiB.
    pub fn server_rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.server_pid))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// `n` fresh tickets; their ids.
    pub async fn tickets(&self, n: i64) -> Result<Vec<i64>> {
        let sql = self.sql().await?;
        let rows = sql
            .query("INSERT INTO tickets (subject) SELECT 'bench ' || g FROM generate_series(1, $1::bigint) g RETURNING id", &[&n])
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// The cluster's WAL insert position, in bytes.
    pub async fn wal_lsn(&self) -> Result<i64> {
        let sql = self.sql().await?;
        let row = sql
            .query_one(
                "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint",
                &[],
            )
            .await?;
        Ok(row.get(0))
    }
}

impl Drop for BenchEnv {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.server.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.server.wait();
        self.db.pool().close();
    }
}

/// Start one more livedesk process on the same database (several processes
/// behind a load balancer); it is stopped with [`stop_server`].
pub async fn spawn_extra_server(env: &BenchEnv) -> Result<(Child, String)> {
    spawn_extra_server_with(env, false).await
}

/// The same, with the abuse limits at their defaults (`limits`): what the
/// abuse scenario measures.
pub async fn spawn_extra_server_with(env: &BenchEnv, limits: bool) -> Result<(Child, String)> {
    let (child, base) = spawn_server(&env.pg, limits)?;
    for _ in 0..400 {
        if let Ok(r) = reqwest::get(format!("{base}/healthz")).await {
            if r.status() == 200 {
                return Ok((child, base));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_server(child);
    bail!("an extra livedesk server did not become healthy")
}

/// One more livedesk process on the database with `LIVEDESK_BUS=bus`
/// (`notify` or `logical`): the database's bus switches to it, and other
/// running processes follow (`livedesk-bench --bus`).
pub async fn spawn_extra_server_on_bus(env: &BenchEnv, bus: &str) -> Result<(Child, String)> {
    let (child, base) = spawn_server_env(&env.pg, false, &[("LIVEDESK_BUS", bus)])?;
    for _ in 0..400 {
        if let Ok(r) = reqwest::get(format!("{base}/healthz")).await {
            if r.status() == 200 {
                return Ok((child, base));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_server(child);
    bail!("a livedesk server on the {bus} bus did not become healthy")
}

/// SIGTERM a server process and wait for it.
pub fn stop_server(mut child: Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
}

fn spawn_server(pg: &EmbeddedPostgres, limits: bool) -> Result<(Child, String)> {
    spawn_server_env(pg, limits, &[])
}

fn spawn_server_env(
    pg: &EmbeddedPostgres,
    limits: bool,
    extra: &[(&str, &str)],
) -> Result<(Child, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let exe = std::env::current_exe()?;
    let livedesk = exe.with_file_name("livedesk");
    if !livedesk.exists() {
        bail!("{} not found: build it with `cargo build --release` (cargo run --release --bin livedesk-bench does)", livedesk.display());
    }
    let (dir, pg_port) = pg.socket();
    let log = std::fs::File::create(
        dir.parent()
            .unwrap_or(dir)
            .join(format!("livedesk-server-{port}.log")),
    )?;
    let mut command = Command::new(livedesk);
    command.envs(extra.iter().copied());
    if !limits {
        // The bench is one client address with a few tokens: the abuse
        // limits (contract §5a) would measure themselves, not livedesk.
        command
            .env("LIVEDESK_RATE_PER_TOKEN", "1000000")
            .env("LIVEDESK_BURST_PER_TOKEN", "1000000")
            .env("LIVEDESK_RATE_PER_ADDRESS", "1000000")
            // Thousands of sockets of a few agents subscribe at once.
            .env("LIVEDESK_AGENT_SUBSCRIBES_PER_SECOND", "1000000")
            .env("LIVEDESK_AGENT_PRESENCE_PER_SECOND", "1000000");
    }
    let child = command
        .env(
            "DATABASE_URL",
            format!(
                "host={} port={pg_port} user=livedesk_owner dbname=livedesk",
                dir.display()
            ),
        )
        .env("LIVEDESK_BIND", format!("127.0.0.1:{port}"))
        .env("LIVEDESK_MAX_CONNECTIONS", "15000")
        .env("LIVEDESK_POOL_SIZE", "16")
        // Thousands of sockets share a few agents here.
        .env("LIVEDESK_MAX_CONNECTIONS_PER_AGENT", "20000")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    Ok((child, format!("http://127.0.0.1:{port}")))
}

/// Raise the soft open-files limit to the hard limit (10,000 sockets need it);
/// children (the server) inherit it.
pub fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
