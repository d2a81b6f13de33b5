//! Mail settings: every flag mirrors an environment variable (contract §7
//! fixes `LIVEDESK_SMTP_URL` and `LIVEDESK_MAIL_FROM`).

use std::time::Duration;

use clap::{Args, Subcommand};

/// `livedesk mail …`.
#[derive(Debug, Subcommand)]
pub enum MailCommand {
    /// Read one RFC 5322 message on stdin and write it as a ticket or a
    /// customer message (exit 0 done, 75 try again later, 65 unreadable mail).
    Receive(MailSettings),
    /// Send agents' replies on email tickets over SMTP, until stopped.
    Send(MailSettings),
}

/// Where mail goes and as whom livedesk writes it.
#[derive(Debug, Clone, Default, Args)]
pub struct MailSettings {
    /// SMTP server for replies: smtp://host:port, smtp+starttls://host:port,
    /// smtps://user:pass@host:port (contract: LIVEDESK_SMTP_URL).
    #[arg(long, env = "LIVEDESK_SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<String>,

    /// The address customers write to and replies come from, e.g.
    /// "Example Support <support@example.com>" (contract: LIVEDESK_MAIL_FROM).
    #[arg(long, env = "LIVEDESK_MAIL_FROM")]
    pub mail_from: Option<String>,

    /// Connection string of the writer role the mail commands write as
    /// (`livedesk writer add mail_gateway --mail`). Without it, the embedded default
    /// uses the role `mail_gateway`, made on first use; with DATABASE_URL it
    /// is required.
    #[arg(long, env = "LIVEDESK_MAIL_DATABASE_URL", hide_env_values = true)]
    pub mail_database_url: Option<String>,

    /// First wait after a failed send, in milliseconds; it doubles per
    /// attempt up to --mail-retry-max-ms.
    #[arg(long, env = "LIVEDESK_MAIL_RETRY_MS", default_value_t = 2_000)]
    pub mail_retry_ms: u64,

    /// Longest wait between two attempts of one send, in milliseconds.
    #[arg(long, env = "LIVEDESK_MAIL_RETRY_MAX_MS", default_value_t = 300_000)]
    pub mail_retry_max_ms: u64,

    /// Addresses that send contact forms (comma-separated), e.g.
    /// `noreply@shop.example`: a mail from one of them has its customer in
    /// `Reply-To:`. Only these: DMARC vouches for From, never for Reply-To.
    #[arg(long, env = "LIVEDESK_MAIL_FORM_SENDERS", value_delimiter = ',')]
    pub mail_form_senders: Vec<String>,

    /// How long a reply is retried after temporary failures (a full mailbox,
    /// a server down) before it fails for good and the agents are told on
    /// the ticket, in milliseconds (default 5 days, as Postfix's
    /// `maximal_queue_lifetime`).
    #[arg(long, env = "LIVEDESK_MAIL_GIVE_UP_MS", default_value_t = 432_000_000)]
    pub mail_give_up_ms: u64,

    /// How often the sender looks for new replies when idle, in milliseconds.
    #[arg(long, env = "LIVEDESK_MAIL_POLL_MS", default_value_t = 1_000)]
    pub mail_poll_ms: u64,
}

impl MailSettings {
    /// The first retry delay (at least 10 ms).
    pub fn retry(&self) -> Duration {
        Duration::from_millis(self.mail_retry_ms.max(10))
    }

    /// How long temporary failures are retried.
    pub fn give_up(&self) -> Duration {
        Duration::from_millis(self.mail_give_up_ms)
    }

    /// The longest retry delay.
    pub fn retry_max(&self) -> Duration {
        Duration::from_millis(self.mail_retry_max_ms.max(self.mail_retry_ms).max(10))
    }

    /// The idle poll interval (at least 10 ms).
    pub fn poll(&self) -> Duration {
        Duration::from_millis(self.mail_poll_ms.max(10))
    }
}
