//! Email out: the `mailer` consumer of the durable feed sends every agent
//! reply on an email ticket to the ticket's customer over SMTP.
//!
//! Exactly once, as far as SMTP allows: the outgoing Message-ID is recorded
//! (`ld_mail_prepare`, status `pending`) before the first attempt; when the
//! server accepts the message the send is recorded (`ld_mail_sent`), and
//! the feed is acknowledged after the first attempt. A worker restarted
//! after a crash reads the unacknowledged events again and loads the
//! replies still `pending`, finds a recorded send and does not send again.
//! The one window left — a crash between the server's "250 OK" and the
//! record — can resend, with the same Message-ID, which mail clients treat
//! as the same message. A temporary failure puts the reply in `Waiting`:
//! retried with backoff, ahead of later replies to the same customer, while
//! other customers' replies go on. One sender is active per database at a
//! time (an advisory lock), so `serve --mail` may run on every process.

use std::str::FromStr;
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::AsyncSmtpTransport;
use lettre::{AsyncTransport, Message, Tokio1Executor};
use serde::Deserialize;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::feed::{self, Start};
use super::waiting::Waiting;
use super::{MailDatabase, MailError, MailSettings};

/// The feed consumer the sender reads as.
pub const CONSUMER: &str = "mailer";

/// Session advisory lock key ("ldmail"): one active sender per database.
const SENDER_LOCK: i64 = 0x6c64_6d61_696c;

/// Events read at once.
const BATCH: i32 = 100;

/// Why the SMTP side cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum SmtpError {
    #[error("LIVEDESK_SMTP_URL is not set")]
    NoUrl,
    #[error("LIVEDESK_MAIL_FROM is not set")]
    NoFrom,
    #[error("LIVEDESK_MAIL_FROM is not an address: {from}: {source}")]
    BadFrom {
        from: String,
        #[source]
        source: lettre::address::AddressError,
    },
    #[error("LIVEDESK_MAIL_FROM is not an address: {0}: the domain must be an ASCII host name (use its punycode form)")]
    FromDomain(String),
    #[error("LIVEDESK_SMTP_URL is not usable: {0}")]
    BadUrl(#[source] lettre::transport::smtp::Error),
}

/// A reply as `ld_mail_prepare` describes it.
#[derive(Debug, Clone, Deserialize)]
pub struct Outgoing {
    pub message_id: i64,
    pub ticket_id: i64,
    pub mail_message_id: String,
    pub status: String,
    pub attempts: i32,
    /// How long ago the first attempt was prepared, in milliseconds.
    #[serde(default)]
    pub pending_ms: i64,
    pub to: Recipient,
    pub from_name: Option<String>,
    pub subject: String,
    pub body: String,
    pub in_reply_to: Option<String>,
    pub references: Vec<String>,
}

/// The customer.
#[derive(Debug, Clone, Deserialize)]
pub struct Recipient {
    pub email: String,
    pub name: Option<String>,
}

/// The long-running worker.
pub struct Sender {
    db: MailDatabase,
    settings: MailSettings,
    from: Mailbox,
    domain: String,
    transport: AsyncSmtpTransport<Tokio1Executor>,
}

impl Sender {
    /// Check the settings and build the SMTP transport (nothing is connected yet).
    pub fn new(db: MailDatabase, settings: MailSettings) -> Result<Sender, MailError> {
        let url = settings.smtp_url.as_deref().ok_or(SmtpError::NoUrl)?;
        let from_text = settings.mail_from.as_deref().ok_or(SmtpError::NoFrom)?;
        let from = Mailbox::from_str(from_text.trim()).map_err(|source| SmtpError::BadFrom {
            from: from_text.to_string(),
            source,
        })?;
        let domain = from.email.domain().to_string();
        // It becomes the right-hand side of every Message-ID.
        if domain.is_empty()
            || !domain
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        {
            return Err(SmtpError::FromDomain(from_text.to_string()).into());
        }
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(&lettre_url(url))
            .map_err(SmtpError::BadUrl)?
            .timeout(Some(Duration::from_secs(30)))
            .build();
        Ok(Sender {
            db,
            settings,
            from,
            domain,
            transport,
        })
    }

    /// Send until `stop` is cancelled; database and SMTP failures are
    /// retried with backoff, never fatal.
    pub async fn run(self, stop: CancellationToken) {
        let mut backoff = self.settings.retry();
        loop {
            if stop.is_cancelled() {
                return;
            }
            let started = tokio::time::Instant::now();
            match self.session(&stop).await {
                Ok(()) => return,
                Err(MailError::Stopped) => return,
                Err(e) => {
                    // A session that worked for a while was not part of an
                    // outage: start the backoff over.
                    if started.elapsed() > self.settings.retry_max() {
                        backoff = self.settings.retry();
                    }
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64,
                                   "mail sender: database trouble, starting over");
                }
            }
            if sleep_or_stop(&stop, backoff).await {
                return;
            }
            backoff = (backoff * 2).min(self.settings.retry_max());
        }
    }

    /// One connection's life: take the lock, then follow the feed.
    async fn session(&self, stop: &CancellationToken) -> Result<(), MailError> {
        let client = self.db.connect().await?;
        // Should this worker vanish without closing its connection (a
        // network partition), PostgreSQL ends the session, and so frees the
        // sender lock for a standby, within a minute rather than after the
        // kernel's two hours. (No effect over a unix socket.)
        if let Err(e) = self
            .within(async {
                Ok(client
                    .batch_execute(
                        "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; \
                         SET tcp_keepalives_count = 3; SET tcp_user_timeout = 30000",
                    )
                    .await?)
            })
            .await
        {
            tracing::debug!(error = %e, "mail sender: server-side keepalives not set");
        }
        loop {
            let row = self
                .within(async {
                    Ok(client
                        .query_one("SELECT pg_try_advisory_lock($1)", &[&SENDER_LOCK])
                        .await?)
                })
                .await?;
            if row.get::<_, bool>(0) {
                break;
            }
            tracing::debug!("mail sender: another sender is active; standing by");
            if sleep_or_stop(stop, self.settings.poll() * 5).await {
                return Ok(());
            }
        }
        self.within(feed::start_for_mail(&client, CONSUMER, Start::Now))
            .await?;
        // Replies a sender before this one left waiting (pending): in order, due now.
        let pending = self.within(pending_replies(&client)).await?;
        let mut waiting = Waiting::load(pending, self.settings.retry());
        tracing::info!("mail sender: sending replies on email tickets");
        loop {
            for message_id in waiting.due() {
                if stop.is_cancelled() {
                    return Err(MailError::Stopped);
                }
                self.attempt(&client, message_id, &mut waiting).await?;
            }
            let events = self.within(feed::read(&client, CONSUMER, BATCH)).await?;
            if events.is_empty() {
                let idle = waiting
                    .next_due()
                    .map(|due| due.saturating_duration_since(tokio::time::Instant::now()))
                    .map_or(self.settings.poll(), |wait| wait.min(self.settings.poll()));
                if sleep_or_stop(stop, idle).await {
                    return Ok(());
                }
                continue;
            }
            // A reply is acknowledged (with everything before it) once it
            // was tried: sent, failed for good, or waiting (pending, which a
            // restarted sender loads again); other events at the end of the batch.
            let mut unacked = None;
            for event in &events {
                if let Some(message_id) = reply_id(&event.event) {
                    self.attempt(&client, message_id, &mut waiting).await?;
                    self.within(feed::ack(&client, CONSUMER, event.ticket_id, event.version))
                        .await?;
                    unacked = None;
                } else {
                    unacked = Some(event);
                }
            }
            if let Some(event) = unacked {
                self.within(feed::ack(&client, CONSUMER, event.ticket_id, event.version))
                    .await?;
            }
        }
    }

    /// Try one reply once, unless it was sent or failed for good, or an
    /// older reply to the same customer is still waiting (then it waits
    /// behind it). A temporary SMTP failure puts it in `waiting`, retried
    /// with backoff; other customers' replies do not wait for it.
    async fn attempt(
        &self,
        client: &Client,
        message_id: i64,
        waiting: &mut Waiting,
    ) -> Result<(), MailError> {
        let Some(outgoing) = self
            .within(prepare(client, message_id, &self.domain))
            .await?
        else {
            waiting.remove(message_id);
            return Ok(());
        };
        if outgoing.status != "pending" {
            tracing::debug!(message_id, status = %outgoing.status, "reply already handled");
            waiting.remove(message_id);
            return Ok(());
        }
        let recipient = outgoing.to.email.to_lowercase();
        if waiting.holds(message_id, &recipient) {
            tracing::info!(
                message_id,
                "reply waits behind an older one to the same customer"
            );
            let backoff = waiting.backoff(message_id);
            waiting.push(message_id, &recipient, Duration::ZERO, backoff);
            return Ok(());
        }
        // A panic while building one email (a value lettre cannot
        // write) fails that reply only: it must never stop the sender,
        // which would re-read the same event and stop again at every start.
        let built =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.build(&outgoing)))
                .unwrap_or_else(|_| {
                    Err("the email could not be written (a header value is not usable)".into())
                });
        let email = match built {
            Ok(email) => email,
            Err(reason) => {
                tracing::error!(message_id, %reason, "reply cannot be sent");
                self.within(failed(client, message_id, &reason, true))
                    .await?;
                waiting.remove(message_id);
                return Ok(());
            }
        };
        match self.transport.send(email).await {
            Ok(response) => {
                self.within(async {
                    Ok(client
                        .execute("SELECT ld_mail_sent($1)", &[&message_id])
                        .await?)
                })
                .await?;
                tracing::info!(message_id, ticket_id = outgoing.ticket_id,
                               mail_message_id = %outgoing.mail_message_id,
                               code = %response.code(), "reply sent");
                waiting.remove(message_id);
                Ok(())
            }
            Err(e) if e.is_permanent() => {
                tracing::error!(message_id, error = %e, "the SMTP server refused the reply for good");
                self.within(failed(client, message_id, &e.to_string(), true))
                    .await?;
                waiting.remove(message_id);
                Ok(())
            }
            Err(e) if self.gives_up(&outgoing) => {
                let reason = format!(
                    "still not delivered after {} of retries; the last answer: {e}",
                    spoken_period(self.settings.give_up())
                );
                tracing::error!(message_id, attempts = outgoing.attempts + 1, %reason,
                                "giving up on the reply");
                self.within(failed(client, message_id, &reason, true))
                    .await?;
                waiting.remove(message_id);
                Ok(())
            }
            Err(e) => {
                let backoff = waiting.backoff(message_id);
                tracing::warn!(message_id, error = %e, attempt = outgoing.attempts + 1,
                               retry_in_ms = backoff.as_millis() as u64, "reply not sent yet");
                self.within(failed(client, message_id, &e.to_string(), false))
                    .await?;
                let next = (backoff * 2).min(self.settings.retry_max());
                waiting.push(message_id, &recipient, backoff, next);
                Ok(())
            }
        }
    }

    /// Whether a reply has been retried long enough: a temporary failure
    /// then fails it for good (the agents are told), as an MTA bounces mail
    /// it could not deliver for days, rather than retrying for ever.
    fn gives_up(&self, outgoing: &Outgoing) -> bool {
        u128::try_from(outgoing.pending_ms).unwrap_or(0) >= self.settings.give_up().as_millis()
    }

    /// One exchange with PostgreSQL, within the database budget: a database
    /// that stops answering ends the session (it reconnects), it never
    /// stalls the sender for good.
    async fn within<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, MailError>>,
    ) -> Result<T, MailError> {
        match tokio::time::timeout(self.db.timeout(), work).await {
            Ok(result) => result,
            Err(_) => Err(MailError::Unavailable(format!(
                "no answer within {} ms",
                self.db.timeout().as_millis()
            ))),
        }
    }

    /// The email: the agent's name on the support address, threaded.
    fn build(&self, outgoing: &Outgoing) -> Result<Message, String> {
        let to_address = outgoing.to.email.parse().map_err(|e| {
            format!(
                "the customer's address {} is not usable: {e}",
                outgoing.to.email
            )
        })?;
        let to = Mailbox::new(outgoing.to.name.as_deref().map(super::one_line), to_address);
        let agent = outgoing.from_name.as_deref().map(super::one_line);
        let from_name = match (agent, &self.from.name) {
            (Some(agent), Some(team)) => Some(format!("{agent} ({team})")),
            (Some(agent), None) => Some(agent),
            (None, team) => team.clone(),
        };
        let from = Mailbox::new(from_name, self.from.email.clone());
        let mut builder = Message::builder()
            .from(from)
            .reply_to(self.from.clone())
            .to(to)
            .subject(outgoing.subject.clone())
            .message_id(Some(format!("<{}>", outgoing.mail_message_id)));
        if let Some(parent) = outgoing.in_reply_to.as_deref().filter(|id| usable_id(id)) {
            builder = builder.in_reply_to(format!("<{parent}>"));
        }
        let references: Vec<String> = outgoing
            .references
            .iter()
            .filter(|id| usable_id(id))
            .map(|id| format!("<{id}>"))
            .collect();
        if !references.is_empty() {
            builder = builder.references(references.join(" "));
        }
        builder
            .header(ContentType::TEXT_PLAIN)
            .body(outgoing.body.clone())
            .map_err(|e| e.to_string())
    }
}

/// A retry period as people say it: "5 days", "36 hours", "90 seconds".
fn spoken_period(period: Duration) -> String {
    let seconds = period.as_secs();
    match seconds {
        s if s >= 2 * 86_400 => format!("{} days", s / 86_400),
        s if s >= 2 * 3_600 => format!("{} hours", s / 3_600),
        s if s >= 2 * 60 => format!("{} minutes", s / 60),
        _ => format!("{:.1} seconds", period.as_secs_f64()),
    }
}

/// The message id of an event that may need sending: a created reply.
fn reply_id(event: &serde_json::Value) -> Option<i64> {
    if event.get("kind")?.as_str()? != "message.created" {
        return None;
    }
    let message = event.get("data")?.get("message")?;
    if message.get("kind")?.as_str()? != "reply" {
        return None;
    }
    message.get("id")?.as_i64()
}

/// The replies left pending (tried, not yet sent nor failed for good), oldest first.
async fn pending_replies(client: &Client) -> Result<Vec<i64>, MailError> {
    let rows = client
        .query(
            "SELECT livedesk_message_id FROM mail_messages \
             WHERE direction = 'out' AND status = 'pending' ORDER BY created_at, livedesk_message_id",
            &[],
        )
        .await?;
    Ok(rows.iter().filter_map(|r| r.get(0)).collect())
}

async fn prepare(
    client: &Client,
    message_id: i64,
    domain: &str,
) -> Result<Option<Outgoing>, MailError> {
    let row = client
        .query_one(
            "SELECT ld_mail_prepare($1, $2)::text",
            &[&message_id, &domain],
        )
        .await?;
    let Some(text) = row.get::<_, Option<String>>(0) else {
        return Ok(None);
    };
    serde_json::from_str(&text).map(Some).map_err(|e| {
        MailError::Domain(crate::domain::DomainError::decode(
            format!("ld_mail_prepare answered {text}"),
            e,
        ))
    })
}

async fn failed(
    client: &Client,
    message_id: i64,
    error: &str,
    permanent: bool,
) -> Result<(), MailError> {
    client
        .execute(
            "SELECT ld_mail_failed($1, $2, $3)",
            &[&message_id, &error, &permanent],
        )
        .await?;
    Ok(())
}

/// Sleep, or return true at once when stopped.
async fn sleep_or_stop(stop: &CancellationToken, wait: Duration) -> bool {
    tokio::select! {
        _ = stop.cancelled() => true,
        _ = tokio::time::sleep(wait) => false,
    }
}

/// Contract §7's URL forms in lettre's terms: `smtp+starttls://…` is
/// lettre's `smtp://…?tls=required`; `smtp://` and `smtps://` are the same.
pub fn lettre_url(url: &str) -> String {
    match url.strip_prefix("smtp+starttls://") {
        Some(rest) if rest.contains('?') => format!("smtp://{rest}&tls=required"),
        Some(rest) => format!("smtp://{rest}?tls=required"),
        None => url.to_string(),
    }
}

/// A Message-ID (from a received email) that can go into `In-Reply-To` and
/// `References` as it is: no whitespace, control characters or brackets.
fn usable_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 900
        && !id
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starttls_urls_become_lettre_urls() {
        assert_eq!(
            lettre_url("smtp+starttls://mx:587"),
            "smtp://mx:587?tls=required"
        );
        assert_eq!(lettre_url("smtps://u:p@mx:465"), "smtps://u:p@mx:465");
        assert_eq!(lettre_url("smtp://mx:25"), "smtp://mx:25");
    }

    #[test]
    fn retry_periods_read_as_people_say_them() {
        assert_eq!(spoken_period(Duration::from_secs(5 * 86_400)), "5 days");
        assert_eq!(spoken_period(Duration::from_secs(36 * 3_600)), "36 hours");
        assert_eq!(spoken_period(Duration::from_secs(600)), "10 minutes");
        assert_eq!(spoken_period(Duration::from_millis(1_500)), "1.5 seconds");
    }
}
