//! `livedesk mail receive` and `livedesk mail send`: the command line's
//! side of `mail` (settings, the embedded database), so that `mail` itself
//! depends on neither `config` nor `startup`.

use std::io::Read;

use crate::config::Settings;
use crate::mail::connect::EMBEDDED_WRITER;
use crate::mail::{inbound, outbound, MailCommand, MailDatabase, MailError, MailSettings};
use crate::startup::{open_database, DatabaseHandle};

/// Run a mail command. The embedded cluster (when it is used) is stopped
/// before returning.
pub async fn run(settings: &Settings, command: MailCommand) -> Result<(), MailError> {
    match command {
        MailCommand::Receive(mail) => {
            // Read first: an MTA expects the whole message to be consumed,
            // and a message we cannot use is refused before any connection.
            let raw = read_stdin()?;
            let parsed = inbound::parse_from(&raw, &mail.mail_form_senders)?;
            let (db, handle) = database(settings, &mail).await?;
            let stored = async {
                let client = db.connect().await?;
                inbound::store(&client, &parsed).await
            };
            let result = tokio::time::timeout(std::time::Duration::from_secs(60), stored).await;
            close(handle).await;
            let received = match result {
                Ok(received) => received?,
                Err(_) => return Err(MailError::Unavailable("no answer within 60 s".into())),
            };
            if received.bounce {
                eprintln!(
                    "livedesk: {} is a bounce of a reply on ticket {}: noted there",
                    parsed.message_id, received.ticket_id
                );
            } else if received.created {
                eprintln!(
                    "livedesk: {} <{}> → ticket {} ({}, message {})",
                    parsed.message_id,
                    parsed.customer_email,
                    received.ticket_id,
                    if received.new_ticket {
                        "new ticket"
                    } else {
                        "reply"
                    },
                    received.message_id.unwrap_or_default()
                );
            } else {
                eprintln!(
                    "livedesk: {} was already received (ticket {}); nothing written",
                    parsed.message_id, received.ticket_id
                );
            }
            Ok(())
        }
        MailCommand::Send(mail) => {
            let (db, handle) = database(settings, &mail).await?;
            let sender = match outbound::Sender::new(db, mail) {
                Ok(sender) => sender,
                Err(e) => {
                    close(handle).await;
                    return Err(e);
                }
            };
            let stop = tokio_util::sync::CancellationToken::new();
            let signal = stop.clone();
            tokio::spawn(async move {
                wait_for_stop_signal().await;
                tracing::info!("mail sender: stopping");
                signal.cancel();
            });
            sender.run(stop).await;
            close(handle).await;
            Ok(())
        }
    }
}

/// The writer role's connection, and the opened database when livedesk
/// had to open it (embedded default).
async fn database(
    settings: &Settings,
    mail: &MailSettings,
) -> Result<(MailDatabase, Option<DatabaseHandle>), MailError> {
    if let Some(url) = &mail.mail_database_url {
        let db = MailDatabase::from_url(url)?.with_timeout(settings.db_timeout());
        return Ok((db, None));
    }
    if settings.database_url.is_some() {
        return Err(MailError::Config(
            "with DATABASE_URL, set LIVEDESK_MAIL_DATABASE_URL to a writer role's connection \
             string (livedesk writer add mail_gateway --mail)"
                .into(),
        ));
    }
    let handle = open_database(settings)
        .await
        .map_err(|e| MailError::Start(Box::new(e)))?;
    let admin = match &handle.embedded {
        Some(pg) => pg.admin_config(),
        None => return Err(MailError::Config("no embedded database".into())),
    };
    match MailDatabase::as_writer_via_superuser(admin, EMBEDDED_WRITER).await {
        Ok(db) => Ok((db.with_timeout(settings.db_timeout()), Some(handle))),
        Err(e) => {
            close(Some(handle)).await;
            Err(e)
        }
    }
}

fn read_stdin() -> Result<Vec<u8>, MailError> {
    let mut raw = Vec::new();
    std::io::stdin()
        .lock()
        .take(inbound::MAX_MESSAGE_BYTES as u64 + 1)
        .read_to_end(&mut raw)?;
    if raw.len() > inbound::MAX_MESSAGE_BYTES {
        return Err(MailError::Data(format!(
            "the message is larger than {}",
            inbound::human_size(inbound::MAX_MESSAGE_BYTES)
        )));
    }
    Ok(raw)
}

/// Close our connections, then stop the embedded PostgreSQL if this
/// process started it (as `livedesk` commands do).
async fn close(handle: Option<DatabaseHandle>) {
    let Some(DatabaseHandle { db, embedded, .. }) = handle else {
        return;
    };
    db.pool().close();
    drop(db);
    if let Some(pg) = embedded {
        let _ = tokio::task::spawn_blocking(move || drop(pg)).await;
    }
}

/// Ctrl-C or SIGTERM.
async fn wait_for_stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
