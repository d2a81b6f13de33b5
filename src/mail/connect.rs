//! The mail gateway's database connection: one dedicated connection (the
//! sender holds a session-level advisory lock on it, so it never comes from
//! the pool), as a writer role.
//!
//! Three ways to get one:
//! - `LIVEDESK_MAIL_DATABASE_URL`: the connection string printed by
//!   `livedesk writer add mail_gateway --mail` (any deployment);
//! - the embedded default without it: the cluster's superuser connects and
//!   switches to the writer role `mail_gateway` with `SET SESSION
//!   AUTHORIZATION` (so `session_user` is the writer and its events name its
//!   agent), after making the role on first use;
//! - `serve --mail`: the server's own role (the schema owner).

use std::time::Duration;

use rand::RngCore;
use tokio_postgres::{Client, Config};

use super::MailError;
use crate::db::Database;

/// The writer role the embedded default's mail gateway writes as.
pub const EMBEDDED_WRITER: &str = "mail_gateway";

/// The longest connecting (and switching role) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How to open the mail gateway's connection.
#[derive(Clone)]
pub struct MailDatabase {
    config: Config,
    /// The TLS the URL asked for (`db::tls`).
    tls: crate::db::tls::Connector,
    /// `SET SESSION AUTHORIZATION` to this role after connecting.
    session_role: Option<String>,
    /// The longest one exchange may take (LIVEDESK_DB_TIMEOUT_MS): a
    /// database that stops answering is given up on and reconnected.
    timeout: Duration,
}

impl std::fmt::Debug for MailDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailDatabase")
            .field("user", &self.config.get_user())
            .field("session_role", &self.session_role)
            .finish()
    }
}

impl MailDatabase {
    /// A writer role's connection string.
    pub fn from_url(url: &str) -> Result<Self, MailError> {
        let (config, tls) = crate::db::tls::parse(url).map_err(MailError::DatabaseUrl)?;
        Ok(MailDatabase {
            config,
            tls,
            session_role: None,
            timeout: crate::db::pool::DEFAULT_TIMEOUT,
        })
    }

    /// The server's own connection settings (`serve --mail`).
    pub fn server(db: &Database) -> Self {
        MailDatabase {
            config: db.config().clone(),
            tls: db.tls(),
            session_role: None,
            timeout: db.timeout(),
        }
    }

    /// The same, with another budget for one exchange.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The budget of one exchange with PostgreSQL.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A superuser connection that switches to `role`; the role is made
    /// (a writer, linked to a service agent) when it does not exist yet,
    /// and holds the mail gateway's right (livedesk_mailer).
    pub async fn as_writer_via_superuser(admin: Config, role: &str) -> Result<Self, MailError> {
        let db = MailDatabase {
            config: admin.clone(),
            tls: crate::db::tls::unchecked(),
            session_role: None,
            timeout: crate::db::pool::DEFAULT_TIMEOUT,
        };
        let client = db.connect().await?;
        ensure_writer(&client, role).await?;
        Ok(MailDatabase {
            config: admin,
            tls: db.tls.clone(),
            session_role: Some(role.to_string()),
            timeout: db.timeout,
        })
    }

    /// Open a connection (within 5 s, else `Unavailable`).
    pub async fn connect(&self) -> Result<Client, MailError> {
        let mut config = self.config.clone();
        config.application_name("livedesk-mail");
        config.connect_timeout(CONNECT_TIMEOUT);
        // A peer that vanished must surface as an error within seconds (as
        // for the server's pool), not after the kernel's retransmissions.
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3)
            .tcp_user_timeout(Duration::from_secs(30));
        let open = async {
            let (client, connection) = config.connect(self.tls.clone()).await?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "mail database connection ended");
                }
            });
            if let Some(role) = &self.session_role {
                client
                    .batch_execute(&format!(
                        "SET SESSION AUTHORIZATION {}",
                        quote_identifier(role)
                    ))
                    .await?;
            }
            Ok::<_, tokio_postgres::Error>(client)
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, open).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) if e.as_db_error().is_some() => Err(MailError::from(e)),
            Ok(Err(e)) => Err(MailError::Connect(e)),
            Err(_) => Err(MailError::Unavailable(format!(
                "no connection within {} s",
                CONNECT_TIMEOUT.as_secs()
            ))),
        }
    }
}

/// Make the writer role unless it exists (the race of two first deliveries
/// at once is settled by looking again), with the mail gateway's right.
async fn ensure_writer(client: &Client, role: &str) -> Result<(), MailError> {
    make_writer(client, role).await?;
    client
        .execute("SELECT ld_writer_allow_mail($1)", &[&role])
        .await
        .map_err(|source| MailError::WriterRole {
            role: role.to_string(),
            source,
        })?;
    Ok(())
}

async fn make_writer(client: &Client, role: &str) -> Result<(), MailError> {
    if writer_exists(client, role).await? {
        return Ok(());
    }
    // Nobody ever logs in with this password: the role is only entered by
    // SET SESSION AUTHORIZATION. A random verifier keeps it unusable.
    let mut bytes = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut bytes);
    let verifier = postgres_protocol::password::scram_sha_256(hex::encode(bytes).as_bytes());
    let made = client
        .query_one(
            "SELECT ld_writer_add($1, $2, false)::text",
            &[&role, &verifier],
        )
        .await;
    match made {
        Ok(_) => {
            tracing::info!(role, "made the writer role of the mail gateway");
            Ok(())
        }
        Err(e) if writer_exists(client, role).await? => {
            tracing::debug!(error = %e, "another delivery made the writer role first");
            Ok(())
        }
        Err(e) => Err(MailError::WriterRole {
            role: role.to_string(),
            source: e,
        }),
    }
}

async fn writer_exists(client: &Client, role: &str) -> Result<bool, MailError> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM writers w WHERE w.role_name = $1 AND NOT w.read_only)",
            &[&role],
        )
        .await?;
    Ok(row.get(0))
}

/// `"name"` with inner quotes doubled.
fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The error and its causes in one line (the driver's own words).
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
