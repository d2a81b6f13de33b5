//! livedesk: a real-time collaboration server for helpdesk agents.
//!
//! PostgreSQL is the source of truth and the bus: triggers log every ticket
//! change and NOTIFY; this crate serves the HTTP API, relays the log to
//! WebSocket subscribers, and tracks presence. See `docs/architecture.md`.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod cli;
pub mod config;
pub mod db;
pub mod domain;
pub mod http;
pub mod mail;
pub mod metrics;
pub mod realtime;
pub mod startup;
pub mod telemetry;
