//! The integration tests in one binary, so a run starts one PostgreSQL
//! cluster (each test still gets a fresh database of its own, see
//! `common`). The browser test and the tests that restart or rewind the
//! shared cluster (`db_restart`, `faults`) stay separate binaries.
#![allow(clippy::unwrap_used)]

#[path = "../common/mod.rs"]
mod common;

mod agent_budgets;
mod bus;
mod db_tls;
mod docs_sql;
mod drafts;
mod embedded_folders;
mod exact_numbers;
mod fields_live;
mod foundation;
mod fuzz;
mod limits;
mod mail_feed;
mod mail_receive;
mod mail_send;
mod openapi;
mod presence;
mod privileges;
mod read_side;
mod realtime;
mod request_id;
mod schema_files;
mod sql_suite;
mod tickets;
mod upgrade;
mod write_batches;
