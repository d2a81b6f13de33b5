//! Email in and out (docs/email.md), built on the durable feed
//! (`sql/rules/80_feed.sql`): `livedesk mail receive` turns one RFC 5322
//! message into a ticket or a customer message, `livedesk mail send` (or
//! `serve --mail`) sends agents' replies on email tickets over SMTP.
//!
//! Both write as a writer role (contract §4a): the rules that hold for any
//! service writing plain SQL hold for the mail gateway too, and its changes
//! name its `service` agent.

pub mod connect;
pub mod error;
pub mod feed;
pub mod inbound;
pub mod outbound;
pub mod settings;
pub mod waiting;

pub use connect::MailDatabase;
pub use error::MailError;
pub use settings::{MailCommand, MailSettings};

/// A name as one header line: control characters (a CR or LF from an
/// email's encoded name, or typed into an agent's or customer's name)
/// become spaces. A header must not take a line break, and lettre panics
/// on one in a display name.
pub(crate) fn one_line(name: &str) -> String {
    name.split(|c: char| c.is_control())
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}
