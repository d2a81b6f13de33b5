//! Failures of the mail gateway, each with the exit code an MTA understands
//! (sysexits.h): 65 the message itself is unusable (bounce it), 75 try again
//! later (the database is down or refused for a reason that is not the
//! message's), 78 livedesk's mail settings are wrong.

use crate::db::DbError;
use crate::domain::{DomainError, Rejection};
use crate::mail::connect::error_chain;
use crate::mail::outbound::SmtpError;

/// EX_DATAERR: the input data was incorrect.
pub const EX_DATAERR: u8 = 65;
/// EX_SOFTWARE: an internal error.
pub const EX_SOFTWARE: u8 = 70;
/// EX_IOERR: reading stdin failed.
pub const EX_IOERR: u8 = 74;
/// EX_TEMPFAIL: temporary failure, the MTA keeps the message and retries.
pub const EX_TEMPFAIL: u8 = 75;
/// EX_CONFIG: a configuration error.
pub const EX_CONFIG: u8 = 78;

/// What went wrong receiving or sending mail.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// The message cannot become a ticket (no sender address, not a message).
    #[error("unusable message: {0}")]
    Data(String),
    /// The database did not answer in time (no error to keep: a timeout).
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// The connection to the database failed; the driver's error is kept.
    #[error("the database is unavailable: {}", error_chain(.0))]
    Connect(#[source] tokio_postgres::Error),
    /// The embedded database could not be opened.
    #[error("the database is unavailable: {0}")]
    Start(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Missing or inconsistent mail settings (no error behind it).
    #[error("mail settings: {0}")]
    Config(String),
    /// `LIVEDESK_SMTP_URL` or `LIVEDESK_MAIL_FROM` missing or unusable.
    #[error("mail settings: {0}")]
    Smtp(#[from] SmtpError),
    /// `LIVEDESK_MAIL_DATABASE_URL` is not a usable connection string.
    #[error("mail settings: {0}")]
    DatabaseUrl(#[source] DbError),
    /// The mail gateway's writer role could not be made.
    #[error("mail settings: cannot make the writer role {role}: {}", error_chain(.source))]
    WriterRole {
        role: String,
        #[source]
        source: tokio_postgres::Error,
    },
    /// Reading the message failed.
    #[error("reading the message: {0}")]
    Io(#[from] std::io::Error),
    /// A database refusal or failure.
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// Stopped before the work was done.
    #[error("stopped")]
    Stopped,
}

impl From<tokio_postgres::Error> for MailError {
    fn from(e: tokio_postgres::Error) -> Self {
        MailError::Domain(DomainError::from(e))
    }
}

impl MailError {
    /// The sysexits code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            MailError::Data(_) => EX_DATAERR,
            MailError::Unavailable(_)
            | MailError::Connect(_)
            | MailError::Start(_)
            | MailError::Stopped => EX_TEMPFAIL,
            MailError::Config(_)
            | MailError::Smtp(_)
            | MailError::DatabaseUrl(_)
            | MailError::WriterRole { .. } => EX_CONFIG,
            MailError::Io(_) => EX_IOERR,
            // The rules refused the message's content (an invalid address, …).
            MailError::Domain(DomainError::Rejected {
                kind: Rejection::Invalid,
                ..
            }) => EX_DATAERR,
            // Anything else the database said is not the message's fault:
            // keep it queued while an operator looks (a missing privilege, a
            // schema not migrated yet, a lost connection).
            MailError::Domain(DomainError::Db(_) | DomainError::Rejected { .. }) => EX_TEMPFAIL,
            MailError::Domain(DomainError::Unexpected(_) | DomainError::Decode { .. }) => {
                EX_SOFTWARE
            }
        }
    }

    /// Whether a retry may succeed without anyone acting (the database came back).
    pub fn is_transient(&self) -> bool {
        match self {
            MailError::Unavailable(_) | MailError::Connect(_) | MailError::Start(_) => true,
            MailError::Domain(DomainError::Db(e)) => e.is_unavailable(),
            _ => false,
        }
    }
}
