//! Settings, read once at start-up from flags and environment variables.
//!
//! Every flag mirrors an environment variable so operators can script either;
//! the names marked "contract" in `--help` are fixed by `docs/contract.md`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The command line: global settings plus an optional subcommand (serve by default).
#[derive(Debug, Parser)]
#[command(
    name = "livedesk",
    version,
    about = "Real-time collaboration server for helpdesk agents"
)]
pub struct Cli {
    #[command(flatten)]
    pub settings: Settings,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What the binary is asked to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API, the WebSocket relay and the web console (the default).
    Serve(ServeArgs),
    /// Apply the database migrations and exit.
    Migrate,
    /// Manage agents and their API tokens.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Add demo agents, customers, fields and tickets, and print a login link per agent.
    Demo,
    /// Manage the database roles of services that write with plain SQL (contract §4a).
    #[command(subcommand)]
    Writer(WriterCommand),
    /// Email in and out: `mail receive` (one message on stdin) and `mail send`
    /// (the sending worker); see docs/email.md.
    #[command(subcommand)]
    Mail(crate::mail::MailCommand),
}

/// `livedesk writer …`.
#[derive(Debug, Subcommand)]
pub enum WriterCommand {
    /// Create a LOGIN role in livedesk_writer (or livedesk_reader), linked to a
    /// `service` agent of the same name, and print its connection string once.
    Add {
        /// Role and agent name: lower-case letters, digits and _, starting with a letter.
        name: String,
        /// Read only: the role joins livedesk_reader instead.
        #[arg(long, conflicts_with = "mail")]
        read_only: bool,
        /// The mail gateway's role: it also joins livedesk_mailer, which may
        /// mark replies sent or failed (`livedesk mail receive|send`).
        #[arg(long)]
        mail: bool,
    },
    /// List the writer roles.
    List,
    /// Drop a writer role (its open sessions are ended; its agent stays in the history).
    Remove {
        /// The role's name.
        name: String,
    },
}

/// Options of `livedesk serve`.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// Load the demo data set before serving (see `livedesk demo`).
    #[arg(long)]
    pub demo: bool,
    /// Also run the mail sender (`livedesk mail send`) inside the server.
    #[arg(long, env = "LIVEDESK_MAIL_SEND")]
    pub mail: bool,
    /// Settings of the mail sender (with --mail).
    #[command(flatten)]
    pub mail_settings: crate::mail::MailSettings,
}

/// `livedesk agent …`.
#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Create an agent and print its API token (shown once; only a hash is stored).
    Add {
        /// The name colleagues see on avatars and messages.
        #[arg(long)]
        name: String,
        /// The agent's email (unique, case-insensitive).
        #[arg(long)]
        email: String,
        /// agent (works tickets), admin (also manages fields), service (an integration writing customer messages).
        #[arg(long, value_enum, default_value_t = Role::Agent)]
        role: Role,
    },
    /// List the agents.
    List,
    /// Issue a new token for an agent (the old one stops working) and print it.
    Token {
        /// The agent's email.
        email: String,
        /// The token stops working after this many days (default: never).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=3650))]
        expires: Option<u32>,
    },
    /// Disable an agent: its tokens answer 401 at once and its WebSockets
    /// close with 4001, on every process. Its history stays.
    Disable {
        /// The agent's email.
        email: String,
    },
    /// Enable a disabled agent again (its current token works again).
    Enable {
        /// The agent's email.
        email: String,
    },
}

/// An agent's role (contract §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    Agent,
    Admin,
    Service,
}

impl Role {
    /// The value stored in `agents.role`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Admin => "admin",
            Role::Service => "service",
        }
    }
}

/// How logs are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

/// How the database wakes the livedesk processes for a new event
/// (extension `LIVEDESK_BUS`, docs/configuration.md, docs/scaling.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Bus {
    /// NOTIFY livedesk_events (the default): nothing to set up, but
    /// notifying commits are serialised by the notification queue's lock.
    #[default]
    Notify,
    /// A logical-decoding message per change, streamed to each process over
    /// a replication connection: commits are not serialised; needs
    /// `wal_level = logical` and the REPLICATION attribute.
    Logical,
}

impl Bus {
    /// The value stored in `bus_settings.mode`.
    pub fn as_str(self) -> &'static str {
        match self {
            Bus::Notify => "notify",
            Bus::Logical => "logical",
        }
    }

    /// The mode named by a `bus_settings.mode` value (or a `livedesk_bus`
    /// notification).
    pub fn parse(text: &str) -> Option<Bus> {
        match text.trim() {
            "notify" => Some(Bus::Notify),
            "logical" => Some(Bus::Logical),
            _ => None,
        }
    }
}

/// Everything the server needs to know, from flags or the environment.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Address and port to serve on (contract: LIVEDESK_BIND).
    #[arg(
        long,
        env = "LIVEDESK_BIND",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    pub bind: SocketAddr,

    /// PostgreSQL URL; without it livedesk runs its own PostgreSQL in the data folder (contract).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true)]
    pub database_url: Option<String>,

    /// Folder of the embedded PostgreSQL (contract: LIVEDESK_DATA_DIR).
    #[arg(
        long,
        env = "LIVEDESK_DATA_DIR",
        default_value = "./livedesk-data",
        global = true
    )]
    pub data_dir: PathBuf,

    /// Connections in the database pool used by HTTP handlers and event reads.
    #[arg(long, env = "LIVEDESK_POOL_SIZE", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1000), global = true)]
    pub pool_size: u16,

    /// Origins allowed to open WebSockets, comma-separated (contract: LIVEDESK_ALLOWED_ORIGINS).
    /// Default: the server's own origin (http://<bind>, and http://localhost:<port> for loopback).
    #[arg(
        long,
        env = "LIVEDESK_ALLOWED_ORIGINS",
        value_delimiter = ',',
        global = true
    )]
    pub allowed_origins: Vec<String>,

    /// Log format: human (default) or json.
    #[arg(long, env = "LIVEDESK_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human, global = true)]
    pub log_format: LogFormat,

    /// Largest WebSocket frame accepted, in bytes (larger closes with 1009).
    #[arg(long, env = "LIVEDESK_MAX_FRAME_BYTES", default_value_t = 64 * 1024, global = true)]
    pub max_frame_bytes: usize,

    /// Largest HTTP request body, in bytes (larger gets 413).
    #[arg(long, env = "LIVEDESK_MAX_BODY_BYTES", default_value_t = 1024 * 1024, global = true)]
    pub max_body_bytes: usize,

    /// Largest message body, in bytes (larger gets 413).
    #[arg(long, env = "LIVEDESK_MAX_MESSAGE_BYTES", default_value_t = 256 * 1024, global = true)]
    pub max_message_bytes: usize,

    /// Ticket subscriptions allowed per WebSocket connection.
    #[arg(
        long,
        env = "LIVEDESK_MAX_SUBSCRIPTIONS",
        default_value_t = 200,
        global = true
    )]
    pub max_subscriptions: usize,

    /// Frames queued for one WebSocket connection before it is closed with 1013.
    #[arg(long, env = "LIVEDESK_OUTBOUND_QUEUE", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=1_000_000), global = true)]
    pub outbound_queue: u32,

    /// Interval of the server's heartbeat, announced in `hello`, in milliseconds.
    #[arg(long, env = "LIVEDESK_HEARTBEAT_MS", default_value_t = 15_000, value_parser = clap::value_parser!(u64).range(100..), global = true)]
    pub heartbeat_ms: u64,

    /// A connection (and its presence) silent for this long is dropped, in milliseconds.
    #[arg(long, env = "LIVEDESK_PRESENCE_TTL_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(200..), global = true)]
    pub presence_ttl_ms: u64,

    /// Client frames allowed per second per connection before error frames, then a close.
    #[arg(
        long,
        env = "LIVEDESK_MAX_FRAMES_PER_SECOND",
        default_value_t = 200,
        global = true
    )]
    pub max_frames_per_second: u32,

    /// WebSocket connections allowed per process (further ones get 503).
    #[arg(
        long,
        env = "LIVEDESK_MAX_CONNECTIONS",
        default_value_t = 20_000,
        global = true
    )]
    pub max_connections: usize,

    /// WebSocket connections one agent may hold per process (further ones get 429).
    #[arg(
        long,
        env = "LIVEDESK_MAX_CONNECTIONS_PER_AGENT",
        default_value_t = 20,
        global = true
    )]
    pub max_connections_per_agent: usize,

    /// HTTP worker threads (default: one per CPU core).
    #[arg(long, env = "LIVEDESK_WORKERS", global = true)]
    pub workers: Option<usize>,

    /// The longest an HTTP request may take, in milliseconds; past it the
    /// answer is 503 `unavailable` (PostgreSQL unreachable or stuck).
    #[arg(long, env = "LIVEDESK_REQUEST_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..), global = true)]
    pub request_timeout_ms: u64,

    /// The longest one exchange with PostgreSQL may take, in milliseconds:
    /// opening a connection, checking a pooled one before use, the LISTEN
    /// probe, `/healthz`, an event read. A database that stops answering
    /// without closing (a stuck proxy, a storage stall) is noticed by this.
    #[arg(long, env = "LIVEDESK_DB_TIMEOUT_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(50..), global = true)]
    pub db_timeout_ms: u64,

    /// How often the idle LISTEN connection is probed, in milliseconds; a
    /// silent connection is noticed within this interval.
    #[arg(long, env = "LIVEDESK_LISTENER_PROBE_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(100..), global = true)]
    pub listener_probe_ms: u64,

    /// HTTP requests (and WebSocket handshakes) per second per API token,
    /// sustained; beyond it the answer is 429 `rate_limited` with Retry-After.
    #[arg(long, env = "LIVEDESK_RATE_PER_TOKEN", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..), global = true)]
    pub rate_per_token: u32,

    /// Requests a token may send at once above its sustained rate.
    #[arg(long, env = "LIVEDESK_BURST_PER_TOKEN", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..), global = true)]
    pub burst_per_token: u32,

    /// Unauthenticated requests (no token, or one not known to be valid) per
    /// second per client address; a flood of bad tokens is stopped here,
    /// before it costs a database query.
    #[arg(long, env = "LIVEDESK_RATE_PER_ADDRESS", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..), global = true)]
    pub rate_per_address: u32,

    /// Ticket subscribes per second one agent may make on a process, over
    /// all its connections (ten times as many at once); past it a subscribe
    /// is refused `rate_limited` with its `ticket_id`. Each costs a snapshot
    /// or a backlog read.
    #[arg(long, env = "LIVEDESK_AGENT_SUBSCRIBES_PER_SECOND", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..), global = true)]
    pub agent_subscribes_per_second: u32,

    /// Presence changes per second one agent may make on a process, over all
    /// its connections and tickets (five times as many at once); past it the
    /// changes wait, and the latest state of each is written when the budget
    /// allows (never lost, only later).
    #[arg(long, env = "LIVEDESK_AGENT_PRESENCE_PER_SECOND", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..), global = true)]
    pub agent_presence_per_second: u32,

    /// The event bus (extension): `notify` (NOTIFY livedesk_events, the
    /// default) or `logical` (logical decoding over a replication
    /// connection; needs wal_level = logical and the REPLICATION attribute).
    /// Set in the database at start: every process follows the last one
    /// started (docs/scaling.md).
    #[arg(long, env = "LIVEDESK_BUS", value_enum, default_value_t = Bus::Notify, global = true)]
    pub bus: Bus,

    /// Run the embedded PostgreSQL without fsync (throw-away clusters only: tests).
    #[arg(
        long,
        env = "LIVEDESK_EMBEDDED_UNSAFE_FAST",
        hide = true,
        global = true
    )]
    pub embedded_unsafe_fast: bool,
}

impl Settings {
    /// The server heartbeat interval.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    /// How long a silent connection and its presence live.
    pub fn presence_ttl(&self) -> Duration {
        Duration::from_millis(self.presence_ttl_ms)
    }

    /// The budget of one HTTP request.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// The budget of one exchange with PostgreSQL.
    pub fn db_timeout(&self) -> Duration {
        Duration::from_millis(self.db_timeout_ms)
    }

    /// The LISTEN probe interval.
    pub fn listener_probe(&self) -> Duration {
        Duration::from_millis(self.listener_probe_ms)
    }

    /// Settings as they are with no flag and no environment: a base for tests
    /// and tools. The environment is really ignored (a `DATABASE_URL` or
    /// `LIVEDESK_*` of the shell running the tests must not leak into them).
    pub fn defaults() -> Settings {
        use clap::{CommandFactory, FromArgMatches};
        let command = Cli::command().mut_args(|arg| arg.env(None::<&str>));
        command
            .try_get_matches_from(["livedesk"])
            .ok()
            .and_then(|matches| Cli::from_arg_matches(&matches).ok())
            .map(|cli| cli.settings)
            .unwrap_or_else(|| Cli::parse_from(["livedesk"]).settings)
    }
}
