//! The embedded default: livedesk runs its own PostgreSQL from the machine's
//! server binaries when no `DATABASE_URL` is given.
//!
//! PostgreSQL refuses to run as root, so when livedesk runs as root the
//! cluster's processes run as the `postgres` system user, which then owns the
//! cluster folder. The server listens on a unix socket inside the data folder
//! only (no TCP listener: the cluster trusts local connections, and a socket
//! in a folder only its owner can enter keeps that trust private).

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::{Pid, Uid, User};

mod host;

pub use host::find_bin_dir;
use host::{
    absolute, check_private, check_reachable, command_error, free_port, give_to, open_private,
    prepare_subfolders, process_alive, relocated,
};

/// The database every livedesk cluster serves.
pub const DATABASE: &str = "livedesk";
/// The cluster's superuser, made by `initdb`.
pub const SUPERUSER: &str = "livedesk";

/// Why the embedded PostgreSQL could not be started.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "No PostgreSQL server binaries were found (looked at `pg_config --bindir`, \
         /usr/lib/postgresql/*/bin and PATH). Install PostgreSQL's server package \
         (for example `apt-get install postgresql`), or set DATABASE_URL to use an existing server."
    )]
    NoBinaries,
    #[error(
        "PostgreSQL refuses to run as root, so livedesk runs it as the `postgres` system user, \
         and that user cannot use the data folder {path}: {reason}. Every parent folder needs \
         the search (x) permission for it (e.g. /root is 700). Choose a reachable folder with \
         LIVEDESK_DATA_DIR=/var/lib/livedesk, or set DATABASE_URL."
    )]
    Unreachable { path: PathBuf, reason: String },
    #[error(
        "the data folder {path} is not safe to keep a database in: {reason}. livedesk keeps \
         its cluster, its socket and its log (which holds colleagues' replies) only in a folder \
         that no other user can write to; choose one with LIVEDESK_DATA_DIR (e.g. /var/lib/livedesk)"
    )]
    UnsafeFolder { path: PathBuf, reason: String },
    #[error("livedesk runs as root but there is no `postgres` system user to run PostgreSQL as; create one (adduser --system postgres) or set DATABASE_URL")]
    NoPostgresUser,
    #[error("cannot prepare the data folder {path}: {source}")]
    Folder {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{program}` failed: {message}")]
    Command { program: String, message: String },
    #[error(
        "PostgreSQL did not become ready within {seconds} s; its log ({log}) ends with:\n{tail}"
    )]
    NotReady {
        seconds: u64,
        log: PathBuf,
        tail: String,
    },
}

/// How to run the cluster.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// The folder holding the cluster (`pg/`), its socket (`run/`) and its log.
    pub data_dir: PathBuf,
    /// Turn off fsync and synchronous commit: only for throw-away clusters.
    pub unsafe_fast: bool,
    /// Extra `-c name=value` server settings.
    pub settings: Vec<(String, String)>,
}

impl EmbeddedOptions {
    /// Durable defaults for a data folder.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        EmbeddedOptions {
            data_dir: data_dir.into(),
            unsafe_fast: false,
            settings: Vec::new(),
        }
    }
}

/// A running PostgreSQL owned by this process; stopped on `stop()` or drop.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    bin_dir: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    port: u16,
    options: EmbeddedOptions,
    run_as: Option<User>,
    child: Option<Child>,
    /// A server this process found running instead of starting it: its pid,
    /// and whether we own it (stop it at the end) or share it with the
    /// livedesk that started it (a CLI command next to a running server).
    adopted: Option<(i32, bool)>,
}

impl EmbeddedPostgres {
    /// Find the binaries, `initdb` on first use, start the server and wait until
    /// it accepts connections. Blocking: call it before or outside the async runtime
    /// (or in `spawn_blocking`).
    pub fn start(options: EmbeddedOptions) -> Result<Self, EmbeddedError> {
        let bin_dir = find_bin_dir().ok_or(EmbeddedError::NoBinaries)?;
        let run_as = if Uid::effective().is_root() {
            Some(
                User::from_name("postgres")
                    .ok()
                    .flatten()
                    .ok_or(EmbeddedError::NoPostgresUser)?,
            )
        } else {
            None
        };
        let existed = options.data_dir.exists();
        let mut root = absolute(&options.data_dir)?;
        check_private(&root, run_as.as_ref())?;
        if let Some(user) = &run_as {
            // Only a folder livedesk made is handed to postgres; an existing
            // one (a home, /tmp) keeps its owner and mode: the cluster lives
            // in its own subfolders.
            if !existed {
                give_to(user, &root)?;
            }
            prepare_subfolders(&root, Some(user))?;
            if let Err(unreachable) = check_reachable(user, &root.join("pg")) {
                // A checkout under /root (mode 700) is the common case: keep
                // the cluster in a reachable place, the same one every time
                // for this data folder, and say where.
                let fallback = relocated(&root);
                absolute(&fallback).map_err(|_| unreachable)?;
                check_private(&fallback, Some(user))?;
                give_to(user, &fallback)?;
                prepare_subfolders(&fallback, Some(user))?;
                check_reachable(user, &fallback.join("pg"))?;
                tracing::warn!(
                    configured = %root.display(),
                    cluster = %fallback.display(),
                    "the postgres user cannot reach the data folder; keeping the cluster in a reachable folder instead"
                );
                root = fallback;
            }
        } else {
            prepare_subfolders(&root, None)?;
        }
        let data_dir = root.join("pg");
        let socket_dir = root.join("run");
        let mut pg = EmbeddedPostgres {
            bin_dir,
            data_dir,
            socket_dir,
            port: 0,
            options,
            run_as,
            child: None,
            adopted: None,
        };
        if !pg.data_dir.join("PG_VERSION").exists() {
            pg.initdb()?;
        }
        match pg.running_postmaster() {
            Some((pid, port)) => {
                pg.adopt(pid, port);
                pg.wait_ready(Duration::from_secs(60))?;
            }
            None => {
                pg.port = pg.stable_port()?;
                pg.spawn()?;
                pg.wait_ready(Duration::from_secs(60))?;
                // Only a server we started and saw ready makes us its owner
                // (two starters on one folder: the loser's postgres exits).
                pg.claim();
            }
        }
        pg.ensure_database()?;
        Ok(pg)
    }

    /// Connection settings for the livedesk database over the unix socket, as
    /// the schema owner (no superuser rights): what the server migrates and
    /// serves with once `db::bootstrap::embedded` has run.
    pub fn config(&self) -> tokio_postgres::Config {
        self.config_as(crate::db::bootstrap::OWNER)
    }

    /// The same as the cluster's superuser: only to create roles (bootstrap,
    /// `livedesk writer add`).
    pub fn admin_config(&self) -> tokio_postgres::Config {
        self.config_as(SUPERUSER)
    }

    fn config_as(&self, user: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&self.socket_dir)
            .port(self.port)
            .user(user)
            .dbname(DATABASE)
            .application_name("livedesk");
        config
    }

    /// The unix-socket folder and port, for `psql -h <dir> -p <port>`.
    pub fn socket(&self) -> (&Path, u16) {
        (&self.socket_dir, self.port)
    }

    /// Process id of the postmaster, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child
            .as_ref()
            .map(Child::id)
            .or(self.adopted.map(|(pid, _)| pid as u32))
    }

    /// Stop the server (fast shutdown) and wait for it, at most 30 s, then kill it.
    pub fn stop(&mut self) {
        if let Some((pid, owned)) = self.adopted.take() {
            if owned {
                let _ = kill(Pid::from_raw(pid), Signal::SIGINT);
                let deadline = Instant::now() + Duration::from_secs(30);
                while process_alive(pid) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = fs::remove_file(self.owner_file());
            }
            return;
        }
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = fs::remove_file(self.owner_file());
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::warn!("PostgreSQL did not stop within 30 s; killing it");
        let _ = kill(pid, Signal::SIGQUIT);
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Stop, then start again on the same port (used by tests of a database restart).
    pub fn restart(&mut self) -> Result<(), EmbeddedError> {
        self.stop();
        self.spawn()?;
        self.wait_ready(Duration::from_secs(60))
    }

    /// The port this folder's cluster used last time, so that connection
    /// strings (`livedesk writer add`, psql) stay valid across restarts. With
    /// no TCP listener the port only names the socket file in our private
    /// `run/` folder, so reusing it cannot collide; a cluster given a TCP
    /// listener (`listen_addresses` in the settings) takes a free port.
    fn stable_port(&self) -> Result<u16, EmbeddedError> {
        let file = self.socket_dir.join("port");
        let tcp = self
            .options
            .settings
            .iter()
            .any(|(name, value)| name == "listen_addresses" && !value.is_empty());
        if !tcp {
            if let Some(port) = fs::read_to_string(&file)
                .ok()
                .and_then(|text| text.trim().parse::<u16>().ok())
                .filter(|port| *port > 0)
            {
                return Ok(port);
            }
        }
        let port = free_port()?;
        if !tcp {
            // Best effort: without it the next start picks a new port.
            let written = open_private(&file, false, None).and_then(|mut f| {
                use std::io::Write;
                f.write_all(port.to_string().as_bytes())
                    .map_err(|source| EmbeddedError::Folder {
                        path: file.clone(),
                        source,
                    })
            });
            if let Err(e) = written {
                tracing::debug!(error = %e, "cannot remember the cluster's port");
            }
        }
        Ok(port)
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin_dir.join(program));
        if let Some(user) = &self.run_as {
            command.uid(user.uid.as_raw()).gid(user.gid.as_raw());
            command.env("HOME", &user.dir);
        }
        command.current_dir(self.data_dir.parent().unwrap_or(Path::new("/")));
        command.env_remove("PGDATA").env("LC_ALL", "C.UTF-8");
        command
    }

    fn initdb(&self) -> Result<(), EmbeddedError> {
        tracing::info!(folder = %self.data_dir.display(), "creating a PostgreSQL cluster (first start)");
        let output = self
            .command("initdb")
            .arg("-D")
            .arg(&self.data_dir)
            .args([
                "-U",
                SUPERUSER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| command_error("initdb", e.to_string()))?;
        if !output.status.success() {
            return Err(command_error(
                "initdb",
                String::from_utf8_lossy(&output.stderr).trim().to_string(),
            ));
        }
        Ok(())
    }

    /// The postmaster serving this folder now, with its port. A process is
    /// trusted only if it is a `postgres` whose working directory is this
    /// cluster (a pid from an old `postmaster.pid` may now be anybody's).
    fn running_postmaster(&self) -> Option<(i32, u16)> {
        let pid_file = self.data_dir.join("postmaster.pid");
        for _ in 0..50 {
            let text = fs::read_to_string(&pid_file).ok()?;
            let mut lines = text.lines();
            let pid: i32 = lines
                .next()
                .and_then(|l| l.trim().parse().ok())
                .unwrap_or(0);
            let port: u16 = lines
                .nth(2)
                .and_then(|l| l.trim().parse().ok())
                .unwrap_or(0);
            if !process_alive(pid) {
                return None; // PostgreSQL itself replaces a lock file of a dead process.
            }
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let cwd = fs::read_link(format!("/proc/{pid}/cwd")).ok();
            if comm.trim() != "postgres" || cwd.as_deref() != Some(self.data_dir.as_path()) {
                // The pid was reused by a process that is not our server: the
                // lock file is stale, and PostgreSQL would refuse to start.
                tracing::info!(
                    pid,
                    "removing a stale postmaster.pid (its pid now belongs to another process)"
                );
                let _ = fs::remove_file(&pid_file);
                return None;
            }
            if port > 0 {
                return Some((pid, port));
            }
            // Our server is still writing its lock file.
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// Use a server already running on this folder. If the livedesk that
    /// started it still runs (a CLI command next to a server), share it;
    /// otherwise it was orphaned by a crash: take it over and stop it at the end.
    fn adopt(&mut self, pid: i32, port: u16) {
        self.port = port;
        let owner = fs::read_to_string(self.owner_file())
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
            .filter(|owner| *owner != std::process::id() as i32 && process_alive(*owner));
        match owner {
            Some(owner) => {
                tracing::info!(
                    pid,
                    owner,
                    "using the PostgreSQL of the livedesk already running on this folder"
                );
                self.adopted = Some((pid, false));
            }
            None => {
                tracing::warn!(
                    pid,
                    "taking over a PostgreSQL left running by an earlier livedesk"
                );
                self.adopted = Some((pid, true));
                self.claim();
            }
        }
    }

    /// Record this process as the one that stops the server.
    fn claim(&self) {
        use std::io::Write;
        if let Ok(mut file) = open_private(&self.owner_file(), false, None) {
            let _ = file.write_all(std::process::id().to_string().as_bytes());
        }
    }

    fn owner_file(&self) -> PathBuf {
        self.data_dir
            .parent()
            .unwrap_or(Path::new("."))
            .join("livedesk.owner")
    }

    fn spawn(&mut self) -> Result<(), EmbeddedError> {
        let log_path = self.log_path();
        let log = open_private(&log_path, true, self.run_as.as_ref())?;
        let log_err = log.try_clone().map_err(|source| EmbeddedError::Folder {
            path: log_path.clone(),
            source,
        })?;
        let mut command = self.command("postgres");
        command
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-c", "listen_addresses="])
            .args(["-c", &format!("port={}", self.port)])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.socket_dir.display()
            ))
            .args(["-c", "unix_socket_permissions=0700"])
            .args(["-c", "max_connections=400"])
            // The logical bus (LIVEDESK_BUS=logical) decodes the WAL: one
            // temporary slot and one WAL sender per livedesk process (and
            // per test app). Always on, so the bus can be switched without
            // restarting PostgreSQL; it costs a little WAL (docs/scaling.md).
            .args(["-c", "wal_level=logical"])
            .args(["-c", "max_wal_senders=64"])
            .args(["-c", "max_replication_slots=64"])
            // A stream whose peer went silent (a partition) holds up a fast
            // shutdown of PostgreSQL until this timeout: the WAL sender
            // waits for its consumer to confirm the shutdown checkpoint.
            // livedesk confirms every second; 60 s (the default) is long.
            .args(["-c", "wal_sender_timeout=10s"]);
        if self.options.unsafe_fast {
            command.args([
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ]);
        }
        for (name, value) in &self.options.settings {
            command.arg("-c").arg(format!("{name}={value}"));
        }
        // Own process group: a Ctrl-C in the terminal reaches livedesk, which then
        // stops PostgreSQL after the HTTP server has drained.
        command
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let child = command
            .spawn()
            .map_err(|e| command_error("postgres", e.to_string()))?;
        self.child = Some(child);
        Ok(())
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<(), EmbeddedError> {
        let deadline = Instant::now() + limit;
        let socket = self.socket_dir.join(format!(".s.PGSQL.{}", self.port));
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(EmbeddedError::NotReady {
                        seconds: 0,
                        log: self.log_path(),
                        tail: format!("(exited with {status})\n{}", self.log_tail()),
                    });
                }
            }
            if socket.exists() && self.pg_isready() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(EmbeddedError::NotReady {
                    seconds: limit.as_secs(),
                    log: self.log_path(),
                    tail: self.log_tail(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pg_isready(&self) -> bool {
        Command::new(self.bin_dir.join("pg_isready"))
            .arg("-q")
            .arg("-h")
            .arg(&self.socket_dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-d",
                "postgres",
                "-U",
                SUPERUSER,
            ])
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    fn ensure_database(&self) -> Result<(), EmbeddedError> {
        let psql = |sql: &str| {
            Command::new(self.bin_dir.join("psql"))
                .arg("-h")
                .arg(&self.socket_dir)
                .args([
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    SUPERUSER,
                    "-d",
                    "postgres",
                ])
                .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-c", sql])
                .output()
                .map_err(|e| command_error("psql", e.to_string()))
        };
        let exists = psql("SELECT 1 FROM pg_database WHERE datname = 'livedesk'")?;
        if String::from_utf8_lossy(&exists.stdout).trim() == "1" {
            return Ok(());
        }
        let output = psql("CREATE DATABASE livedesk")?;
        if !output.status.success() {
            return Err(command_error(
                "psql",
                String::from_utf8_lossy(&output.stderr).trim().to_string(),
            ));
        }
        Ok(())
    }

    fn log_path(&self) -> PathBuf {
        self.data_dir
            .parent()
            .unwrap_or(Path::new("."))
            .join("postgres.log")
    }

    fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = fs::File::open(self.log_path()) {
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = file.seek(SeekFrom::Start(len.saturating_sub(2000)));
            let _ = file.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}
