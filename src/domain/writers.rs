//! Direct writers (contract §4a): one LOGIN role per service, in the group
//! `livedesk_writer` (or `livedesk_reader`), linked to a `service` agent that
//! names its changes. The password is shown once; PostgreSQL only ever sees
//! its SCRAM verifier.

use rand::RngCore;
use serde::Deserialize;

use super::{Agent, DomainError};
use crate::db::Database;

/// A writer role as `ld_writer_add` / `ld_writer_list` describe it.
#[derive(Debug, Clone, Deserialize)]
pub struct Writer {
    pub name: String,
    pub agent: Agent,
    pub read_only: bool,
    /// A member of livedesk_mailer: may call the mail gateway's functions.
    #[serde(default)]
    pub mail: bool,
    #[serde(default = "role_exists_default")]
    pub role_exists: bool,
}

fn role_exists_default() -> bool {
    true
}

/// A new writer's password, to print once inside its connection string.
pub struct Password(pub String);

/// Create the role and its agent. `admin` must be allowed to create roles
/// (the embedded default's superuser, or a role with CREATEROLE).
pub async fn add(
    admin: &Database,
    name: &str,
    read_only: bool,
) -> Result<(Writer, Password), DomainError> {
    let (password, verifier) = new_password();
    let client = admin.client().await?;
    let row = client
        .query_one(
            "SELECT ld_writer_add($1, $2, $3)::text",
            &[&name, &verifier, &read_only],
        )
        .await?;
    let writer = parse(row.get(0))?;
    Ok((writer, password))
}

/// Create a writer that also speaks for the mail gateway (`writer add
/// --mail`), in one transaction: when the mail right cannot be given, no
/// role is left behind whose password was never shown.
pub async fn add_mailer(admin: &Database, name: &str) -> Result<(Writer, Password), DomainError> {
    let (password, verifier) = new_password();
    let mut client = admin.client().await?;
    let tx = client.transaction().await?;
    let row = tx
        .query_one(
            "SELECT ld_writer_add($1, $2, false)::text",
            &[&name, &verifier],
        )
        .await?;
    tx.execute("SELECT ld_writer_allow_mail($1)", &[&name])
        .await?;
    tx.commit().await?;
    let writer = Writer {
        mail: true,
        ..parse(row.get(0))?
    };
    Ok((writer, password))
}

/// A random password and its SCRAM verifier (all PostgreSQL ever sees).
fn new_password() -> (Password, String) {
    let mut bytes = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut bytes);
    let password = hex::encode(bytes);
    let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
    (Password(password), verifier)
}

/// Every writer of this database.
pub async fn list(db: &Database) -> Result<Vec<Writer>, DomainError> {
    let client = db.client().await?;
    let row = client
        .query_one("SELECT ld_writer_list()::text", &[])
        .await?;
    parse(row.get(0))
}

/// Drop the role (its sessions are ended); its agent stays in the history.
pub async fn remove(admin: &Database, name: &str) -> Result<(), DomainError> {
    let client = admin.client().await?;
    client
        .query_one("SELECT ld_writer_remove($1)::text", &[&name])
        .await?;
    Ok(())
}

/// A `postgresql://` URL for the new role on the same server and database
/// as `config` (the server's own settings).
pub fn connection_url(config: &tokio_postgres::Config, name: &str, password: &Password) -> String {
    use tokio_postgres::config::{Host, SslMode};
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let dbname = config.get_dbname().unwrap_or("livedesk");
    let mut query = Vec::new();
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(host)) if host.contains(':') => format!("[{host}]:{port}"),
        Some(Host::Tcp(host)) => format!("{host}:{port}"),
        Some(Host::Unix(path)) => {
            query.push(format!("host={}", percent_encode(&path.to_string_lossy())));
            query.push(format!("port={port}"));
            String::new()
        }
        None => format!("localhost:{port}"),
    };
    match config.get_ssl_mode() {
        SslMode::Require => query.push("sslmode=require".into()),
        SslMode::Disable => query.push("sslmode=disable".into()),
        _ => {}
    }
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{}", query.join("&"))
    };
    format!(
        "postgresql://{name}:{}@{host}/{}{query}",
        password.0,
        percent_encode(dbname)
    )
}

/// Percent-encode everything but unreserved URL characters.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn parse<T: serde::de::DeserializeOwned>(text: String) -> Result<T, DomainError> {
    serde_json::from_str(&text).map_err(|e| DomainError::decode("writer roles", e))
}
