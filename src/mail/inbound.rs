//! Email in: one RFC 5322 message → `ld_mail_receive` (a new email ticket,
//! or a customer message on the ticket the message answers).
//!
//! `mail-parser` does the decoding (MIME parts, quoted-printable, base64,
//! RFC 2047 headers, legacy charsets such as windows-1251 and KOI8-R, HTML
//! to text); this module only picks what a ticket needs.

use mail_parser::{HeaderValue, MessageParser, MimeHeaders};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio_postgres::Client;

use super::MailError;

/// The largest message read from stdin; MTAs usually stop far below
/// (Postfix's default message_size_limit is 10 MB).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// The largest body stored (the HTTP API's message limit): longer text is cut.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// What a received email becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// Without angle brackets; a digest of the raw message when it has none,
    /// so that a duplicate delivery is still recognised.
    pub message_id: String,
    /// `References` then `In-Reply-To`: oldest first, the direct parent last.
    pub references: Vec<String>,
    /// The customer: `From:`, or, for a mail from one of the form senders
    /// (`LIVEDESK_MAIL_FORM_SENDERS`, a contact form sending from
    /// `noreply@…`), its one usable `Reply-To:` address.
    pub customer_email: String,
    pub customer_name: Option<String>,
    pub subject: Option<String>,
    /// The text (HTML turned to text), then the list of attachments.
    pub body: String,
    /// Attachments by name and decoded size (not stored).
    pub attachments: Vec<(String, usize)>,
    /// A delivery status notification (a bounce): the Message-ID of the
    /// message that could not be delivered, and why.
    pub bounce: Option<Bounce>,
    /// Sent by a machine (an out-of-office answer, a list): kept, but it
    /// opens no closed ticket again (`machine_sent`).
    pub auto: bool,
}

/// What a bounce says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bounce {
    /// The undelivered message's Message-ID, without angle brackets.
    pub original: String,
    /// The remote server's answer (`Diagnostic-Code`, else `Status`).
    pub reason: String,
}

/// An address a customer can have: one `@` between a local part and a
/// dotted domain, no spaces (a bad Reply-To must not bounce a good email).
fn usable_address(address: &str) -> bool {
    match address.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !address.chars().any(|c| c.is_whitespace() || c.is_control())
        }
        None => false,
    }
}

/// Parse a raw message; its customer is `From:`.
pub fn parse(raw: &[u8]) -> Result<Inbound, MailError> {
    parse_from(raw, &[])
}

/// Parse a raw message whose customer, when `From:` is one of
/// `form_senders` (compared case-insensitively), is its `Reply-To:`.
pub fn parse_from(raw: &[u8], form_senders: &[String]) -> Result<Inbound, MailError> {
    let message = MessageParser::default()
        .parse(raw)
        .ok_or_else(|| MailError::Data("not an RFC 5322 message".into()))?;
    if message.headers().is_empty() {
        return Err(MailError::Data("the message has no headers".into()));
    }
    let from = message
        .from()
        .and_then(|address| address.iter().find(|a| a.address().is_some()))
        .ok_or_else(|| MailError::Data("the message has no From: address".into()))?;
    let from_email = from
        .address()
        .map(|a| a.trim().to_string())
        .filter(|a| a.contains('@'))
        .ok_or_else(|| MailError::Data("the From: address is not an email address".into()))?;
    // A contact form sends every request from its own address with the
    // customer in Reply-To. Only for senders named as forms: DMARC vouches
    // for From, never for Reply-To, so anyone else's Reply-To would let an
    // outsider write as (and thread onto the tickets of) any customer
    // (found by a review). One usable address, with its own name (the
    // form's From name is the website's); else From.
    let form = form_senders
        .iter()
        .any(|sender| sender.trim().eq_ignore_ascii_case(&from_email));
    let reply_to = message.reply_to().filter(|_| form).and_then(|list| {
        let mut usable = list
            .iter()
            .filter(|a| a.address().is_some_and(|x| usable_address(x.trim())));
        let first = usable.next()?;
        usable.next().is_none().then_some(first)
    });
    let (customer, customer_email) = match reply_to.and_then(|to| Some((to, to.address()?))) {
        Some((to, address)) => (to, address.trim().to_string()),
        None => (from, from_email),
    };
    // One line: an encoded name may carry a line break (`=?utf-8?q?Eve=0AJones?=`).
    let customer_name = customer
        .name()
        .map(super::one_line)
        .filter(|n| !n.is_empty() && n.chars().count() <= 200);

    // An unusable Message-ID (over RFC 5322's line length, or with a NUL,
    // which PostgreSQL's text refuses) is replaced by the message's digest,
    // as a missing one is.
    let message_id = match message
        .message_id()
        .map(str::trim)
        .filter(|id| !id.is_empty() && id.len() <= 998 && !id.contains('\0'))
    {
        Some(id) => id.trim_matches(|c| c == '<' || c == '>').to_string(),
        None => format!(
            "sha256-{}@livedesk.invalid",
            hex::encode(Sha256::digest(raw))
        ),
    };
    let mut references = ids(message.references());
    references.extend(ids(message.in_reply_to()));

    let subject = message
        .subject()
        .map(|s| {
            s.replace('\0', "")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|s| !s.is_empty());

    let text = message
        .body_text(0)
        .map(|t| t.replace("\r\n", "\n").replace('\0', ""))
        .unwrap_or_default();
    let attachments: Vec<(String, usize)> = message
        .attachments()
        .map(|part| {
            let name = part
                .attachment_name()
                .map(str::to_string)
                .unwrap_or_else(|| "(unnamed)".to_string());
            (name, part.contents().len())
        })
        .collect();

    let bounce = bounce(&message);
    let auto = machine_sent(&message);
    // The earlier thread is cut from an answer only: a new email (a forward,
    // a first message quoting a log) is all the ticket will have of it.
    let text = text.trim();
    let words = if references.is_empty() {
        text
    } else {
        strip_quoted(text).trim()
    };
    Ok(Inbound {
        bounce,
        message_id,
        references,
        customer_email,
        customer_name,
        subject,
        body: body(words, &attachments),
        attachments,
        auto,
    })
}

/// A delivery status notification (RFC 3464: multipart/report with
/// report-type=delivery-status) names the undelivered message in its
/// returned message or headers part.
fn bounce(message: &mail_parser::Message<'_>) -> Option<Bounce> {
    let ct = message.content_type()?;
    let is_report = ct.ctype().eq_ignore_ascii_case("multipart")
        && ct
            .subtype()
            .is_some_and(|s| s.eq_ignore_ascii_case("report"))
        && ct
            .attribute("report-type")
            .is_some_and(|r| r.eq_ignore_ascii_case("delivery-status"));
    if !is_report {
        return None;
    }
    let mut original = None;
    let mut reason = None;
    for part in message.parts.iter().skip(1) {
        let Some(pct) = part.content_type() else {
            continue;
        };
        let kind = (
            pct.ctype().to_ascii_lowercase(),
            pct.subtype().unwrap_or_default().to_ascii_lowercase(),
        );
        match (kind.0.as_str(), kind.1.as_str()) {
            ("message", "delivery-status" | "global-delivery-status") => {
                let report = String::from_utf8_lossy(part.contents());
                // "delayed" (still retrying), "delivered", "relayed",
                // "expanded": not a failure, so not a bounce of the reply.
                if !reports_failure(&report) {
                    return None;
                }
                reason = reason.or_else(|| diagnostic(&report));
            }
            ("message", "rfc822" | "global") => {
                if let Some(id) = part.message().and_then(|m| m.message_id()) {
                    original = original.or_else(|| Some(id.to_string()));
                }
            }
            ("text", "rfc822-headers" | "global-headers") => {
                let headers = MessageParser::default().parse(part.contents());
                if let Some(id) = headers.as_ref().and_then(|m| m.message_id()) {
                    original = original.or_else(|| Some(id.to_string()));
                }
            }
            _ => {}
        }
    }
    Some(Bounce {
        original: original?
            .trim()
            .trim_matches(|c| c == '<' || c == '>')
            .to_string(),
        reason: reason.unwrap_or_else(|| "the message was returned as undeliverable".into()),
    })
}

/// The `Diagnostic-Code` of a delivery-status report (with its folded
/// lines), else its `Status`.
fn diagnostic(report: &str) -> Option<String> {
    let field = |name: &str| -> Option<String> {
        let mut lines = report.lines();
        let first = lines.find(|l| {
            l.get(..name.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(name))
        })?;
        let mut value = first[name.len()..].trim().to_string();
        for more in lines.take_while(|l| l.starts_with([' ', '\t'])) {
            value.push(' ');
            value.push_str(more.trim());
        }
        Some(value)
    };
    field("Diagnostic-Code:").or_else(|| field("Status:").map(|s| format!("status {s}")))
}

/// Whether a machine sent the email, as the headers of autoresponders and
/// lists say: RFC 3834's `Auto-Submitted` other than `no`; `Precedence:
/// auto_reply`, `bulk` or `junk`; `X-Autoreply`, `X-Autorespond`.
fn machine_sent(message: &mail_parser::Message<'_>) -> bool {
    let value = |name: &'static str| {
        message
            .header_raw(name)
            .map(|v| v.trim().to_ascii_lowercase())
    };
    value("Auto-Submitted").is_some_and(|v| !v.is_empty() && !v.starts_with("no"))
        || value("Precedence").is_some_and(|v| matches!(v.as_str(), "auto_reply" | "bulk" | "junk"))
        || value("X-Autoreply").is_some()
        || value("X-Autorespond").is_some()
}

/// Whether a delivery-status report says a delivery failed: an `Action:
/// failed` field, or no `Action:` field at all (a report that names none is
/// taken at its word as a bounce).
fn reports_failure(report: &str) -> bool {
    let actions: Vec<&str> = report
        .lines()
        .filter_map(|l| {
            l.get(..7)
                .filter(|head| head.eq_ignore_ascii_case("action:"))
                .map(|_| l[7..].trim())
        })
        .collect();
    actions.is_empty() || actions.iter().any(|a| a.eq_ignore_ascii_case("failed"))
}

/// Message-IDs of a header (one or a list), without angle brackets.
fn ids(value: &HeaderValue<'_>) -> Vec<String> {
    let list: Vec<&str> = match value {
        HeaderValue::Text(id) => vec![id.as_ref()],
        HeaderValue::TextList(ids) => ids.iter().map(|id| id.as_ref()).collect(),
        _ => Vec::new(),
    };
    list.into_iter()
        .map(|id| id.trim().trim_matches(|c| c == '<' || c == '>').to_string())
        .filter(|id| !id.is_empty())
        .collect()
}

/// The customer's new words: mail clients append the whole earlier thread
/// ("On … wrote:" and a `>` quote, or Outlook's "-----Original Message-----"
/// block), which the ticket already shows. Only a quote at the end is cut
/// (answers written between quoted lines stay), and never everything.
pub fn strip_quoted(text: &str) -> &str {
    let lines: Vec<&str> = text.lines().collect();
    let offsets: Vec<usize> = lines
        .iter()
        .map(|line| line.as_ptr() as usize - text.as_ptr() as usize)
        .collect();
    let cut_at = |index: usize| -> Option<&str> {
        let kept = text[..offsets[index]].trim_end();
        (!kept.is_empty()).then_some(kept)
    };
    // Outlook: everything after its separator is the earlier thread.
    for (i, line) in lines.iter().enumerate() {
        let line = line.trim();
        let outlook_rule = line.len() >= 20
            && line.chars().all(|c| c == '_')
            && lines
                .get(i + 1)
                .is_some_and(|next| next.trim_start().starts_with("From:"));
        if line == "-----Original Message-----" || outlook_rule {
            if let Some(kept) = cut_at(i) {
                return kept;
            }
        }
    }
    // A trailing `>` quote, and the attribution line right above it.
    let mut i = lines.len();
    let mut quoted = false;
    while i > 0 {
        let line = lines[i - 1].trim();
        if line.starts_with('>') {
            quoted = true;
        } else if !line.is_empty() {
            break;
        }
        i -= 1;
    }
    if !quoted || i == 0 {
        return text;
    }
    let above = lines[i - 1].trim();
    let mut start = i;
    if above.ends_with(':') && above.chars().count() <= 300 {
        start = i - 1;
        // Gmail wraps a long attribution after the sender's "<".
        if start > 0 && lines[start - 1].trim_end().ends_with('<') {
            start -= 1;
        }
    }
    cut_at(start).unwrap_or(text)
}

/// The stored body: the text (cut at MAX_BODY_BYTES), then the attachments.
/// How many attachments an email's text lists by name.
const LISTED_ATTACHMENTS: usize = 100;

fn body(text: &str, attachments: &[(String, usize)]) -> String {
    let mut body = if text.len() > MAX_BODY_BYTES {
        let mut end = MAX_BODY_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}\n\n[… the rest of this email was cut]", &text[..end])
    } else {
        text.to_string()
    };
    if !attachments.is_empty() {
        if !body.is_empty() {
            body.push_str("\n\n");
        }
        // Bounded like the text: at most LISTED_ATTACHMENTS names, each cut
        // to 200 characters (an email with thousands of attachments stored
        // megabytes of list past the text's limit: found by a review).
        body.push_str("Attachments (not stored):");
        for (name, size) in attachments.iter().take(LISTED_ATTACHMENTS) {
            let name: String = super::one_line(name).chars().take(200).collect();
            body.push_str(&format!("\n- {name} ({})", human_size(*size)));
        }
        if attachments.len() > LISTED_ATTACHMENTS {
            body.push_str(&format!(
                "\n- … and {} more",
                attachments.len() - LISTED_ATTACHMENTS
            ));
        }
    }
    if body.is_empty() {
        body.push_str("(empty email)");
    }
    body
}

/// 532 B, 12.3 KB, 4.0 MB.
pub fn human_size(bytes: usize) -> String {
    match bytes {
        b if b < 1024 => format!("{b} B"),
        b if b < 1024 * 1024 => format!("{:.1} KB", b as f64 / 1024.0),
        b => format!("{:.1} MB", b as f64 / (1024.0 * 1024.0)),
    }
}

/// What `ld_mail_receive` did.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Received {
    /// False for a duplicate delivery (nothing was written).
    pub created: bool,
    pub ticket_id: i64,
    pub message_id: Option<i64>,
    /// True when the email opened a new ticket.
    pub new_ticket: bool,
    /// True when it was a bounce of a reply livedesk sent (recorded as a
    /// note on that ticket).
    #[serde(default)]
    pub bounce: bool,
}

/// Write the email (as the connection's role: a writer). A bounce of a
/// reply livedesk sent is recorded on that reply's ticket instead; any other
/// bounce is an email like the rest.
pub async fn store(client: &Client, mail: &Inbound) -> Result<Received, MailError> {
    if let Some(bounce) = &mail.bounce {
        let row = client
            .query_one(
                "SELECT ld_mail_bounced($1, $2, $3)::text",
                &[&mail.message_id, &bounce.original, &bounce.reason],
            )
            .await?;
        if let Some(text) = row.get::<_, Option<String>>(0) {
            return received(&text);
        }
    }
    let row = client
        .query_one(
            "SELECT ld_mail_receive($1, $2, $3, $4, $5, $6, $7)::text",
            &[
                &mail.message_id,
                &mail.references,
                &mail.customer_email,
                &mail.customer_name,
                &mail.subject,
                &mail.body,
                &mail.auto,
            ],
        )
        .await?;
    let text: String = row.get(0);
    received(&text)
}

fn received(text: &str) -> Result<Received, MailError> {
    serde_json::from_str(text).map_err(|e| {
        MailError::Domain(crate::domain::DomainError::decode(
            format!("the database answered {text}"),
            e,
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_message_with_a_reply_chain() {
        let raw = b"From: Dana <dana@example.com>\r\nTo: support@example.com\r\n\
Subject: =?UTF-8?B?UmU6INCf0YDQuNCy0LXRgg==?=\r\nMessage-ID: <abc@mail.example.com>\r\n\
In-Reply-To: <parent@x>\r\nReferences: <root@x> <parent@x>\r\n\r\nHello\r\n";
        let mail = parse(raw).unwrap();
        assert_eq!(mail.message_id, "abc@mail.example.com");
        assert_eq!(mail.references, vec!["root@x", "parent@x", "parent@x"]);
        assert_eq!(mail.customer_email, "dana@example.com");
        assert_eq!(mail.customer_name.as_deref(), Some("Dana"));
        assert_eq!(mail.subject.as_deref(), Some("Re: Привет"));
        assert_eq!(mail.body, "Hello");
    }

    /// A contact form (a sender named as one) sends from its own address
    /// with the customer in `Reply-To:`: the customer is the Reply-To
    /// address, with its name (not the form's). From anyone else, Reply-To
    /// changes nothing (DMARC vouches for From only); an unusable or second
    /// address falls back to From.
    #[test]
    fn a_form_senders_reply_to_is_the_customer_and_nobody_elses() {
        let forms = ["NoReply@shop.example".to_string()];
        let form =
            b"From: Website <noreply@shop.example>\r\nReply-To: Jane Roe <Jane@Example.org>\r\n\
Subject: Contact form\r\nMessage-ID: <form-1@shop.example>\r\n\r\nWhere is my order?\r\n";
        let mail = parse_from(form, &forms).unwrap();
        assert_eq!(mail.customer_email, "Jane@Example.org");
        assert_eq!(mail.customer_name.as_deref(), Some("Jane Roe"));
        assert_eq!(
            parse(form).unwrap().customer_email,
            "noreply@shop.example",
            "not a form here"
        );

        let unnamed = b"From: Website <noreply@shop.example>\r\nReply-To: jane@example.org\r\n\
Message-ID: <form-2@shop.example>\r\n\r\nHi\r\n";
        let mail = parse_from(unnamed, &forms).unwrap();
        assert_eq!(mail.customer_email, "jane@example.org");
        assert_eq!(mail.customer_name, None, "not the website's name");

        let outsider = b"From: Mallory <mallory@evil.example>\r\nReply-To: victim@bank.example\r\n\
In-Reply-To: <v1@bank.example>\r\nMessage-ID: <m1@evil.example>\r\n\r\nRefund to my IBAN\r\n";
        let mail = parse_from(outsider, &forms).unwrap();
        assert_eq!(
            mail.customer_email, "mallory@evil.example",
            "an outsider's Reply-To is not believed"
        );

        for bad in [
            "x@",
            "@",
            "a@b@c",
            "jane@example",
            "Jane <jane@exa mple.org>",
            "a@b, c@d",
        ] {
            let raw = format!(
                "From: Website <noreply@shop.example>\r\nReply-To: {bad}\r\nMessage-ID: <b@x>\r\n\r\nHi\r\n"
            );
            let mail = parse_from(raw.as_bytes(), &forms).unwrap();
            assert_eq!(
                mail.customer_email, "noreply@shop.example",
                "{bad}: From, and no bounce"
            );
        }
    }

    /// Found by a review: a line break in an encoded name, a forward's
    /// quoted content on a new ticket, a NUL byte, an overlong Message-ID.
    #[test]
    fn names_are_one_line_and_a_new_email_keeps_its_quotes() {
        let raw = b"From: =?utf-8?q?Eve=0D=0AJones?= <eve@example.com>\r\nSubject: Fwd: invoice\r\n\
Message-ID: <fwd-1@example.com>\r\n\r\nSee below.\r\n\r\n-----Original Message-----\r\nFrom: Billing\r\n\r\n\
Invoice 42: 120 EUR\x00\r\n";
        let mail = parse(raw).unwrap();
        assert_eq!(mail.customer_name.as_deref(), Some("Eve Jones"));
        assert!(mail.body.ends_with("Invoice 42: 120 EUR"), "{}", mail.body);
        let long_id = format!(
            "From: a@example.com\r\nMessage-ID: <{}@x>\r\n\r\nHi\r\n",
            "i".repeat(1000)
        );
        let mail = parse(long_id.as_bytes()).unwrap();
        assert!(
            mail.message_id.starts_with("sha256-"),
            "{}",
            mail.message_id
        );
    }

    #[test]
    fn a_delay_notice_is_not_a_bounce() {
        let report = |action: &str| {
            format!(
                "From: MAILER-DAEMON@mx.example\r\nMessage-ID: <dsn-{action}@mx.example>\r\n\
Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n\
--b\r\nContent-Type: text/plain\r\n\r\nNotice\r\n\
--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example\r\n\r\n\
Final-Recipient: rfc822; c@example.org\r\nAction: {action}\r\nStatus: 4.4.1\r\n\r\n\
--b\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: <livedesk.1.2.abc@example.com>\r\n\r\n--b--\r\n"
            )
        };
        assert!(parse(report("delayed").as_bytes())
            .unwrap()
            .bounce
            .is_none());
        let failed = parse(report("failed").as_bytes()).unwrap().bounce.unwrap();
        assert_eq!(failed.original, "livedesk.1.2.abc@example.com");
    }

    #[test]
    fn the_attachment_list_is_bounded() {
        let many: Vec<(String, usize)> = (0..5000).map(|i| (format!("{i}.png"), 10)).collect();
        let text = body("Hi", &many);
        assert!(text.len() < 5000, "{}", text.len());
        assert!(text.ends_with("… and 4900 more"), "{text}");
    }

    #[test]
    fn quoted_history_at_the_end_is_cut() {
        assert_eq!(
            strip_quoted("Thanks!\n\nOn Tue, Nov 14, 2023 at 10:20 AM Support <\nsupport@example.com> wrote:\n\n> Old\n> text\n"),
            "Thanks!"
        );
        assert_eq!(
            strip_quoted("Yes.\n\n-----Original Message-----\nFrom: Support\nSent: Monday\n\nOld"),
            "Yes."
        );
        assert_eq!(
            strip_quoted(
                "Fine\n________________________________\nFrom: Support <s@example.com>\nOld"
            ),
            "Fine"
        );
        // Answers between quotes stay; a message that is only a quote stays.
        let inline = "> Which plan?\nPro.\n> Since when?\nMay.";
        assert_eq!(strip_quoted(inline), inline);
        assert_eq!(strip_quoted("> only a quote"), "> only a quote");
        assert_eq!(strip_quoted("Hello\n> quoted\nbye"), "Hello\n> quoted\nbye");
    }

    #[test]
    fn no_from_address_is_a_data_error() {
        let err = parse(b"Subject: x\r\n\r\nbody\r\n").unwrap_err();
        assert_eq!(err.exit_code(), super::super::error::EX_DATAERR);
    }

    #[test]
    fn a_message_without_message_id_gets_a_stable_one() {
        let raw = b"From: a@example.com\r\nSubject: x\r\n\r\nbody\r\n";
        assert_eq!(
            parse(raw).unwrap().message_id,
            parse(raw).unwrap().message_id
        );
    }
}
