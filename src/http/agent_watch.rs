//! Every process hears at once when an agent is disabled or its token
//! replaced (`NOTIFY livedesk_agents`, payload: the agent id, sent by the SQL
//! of `sql/rules/70_agents.sql`), and drops what its token cache knows
//! about that agent. While this connection is down the cache cannot hear, so
//! it serves no good answers from memory (every request asks the database).

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use super::auth::Authenticator;
use crate::db::Database;
use crate::realtime::Realtime;

/// `application_name` of this connection, to find it in `pg_stat_activity`.
pub const WATCH_NAME: &str = "livedesk-agent-watch";

/// Keep the watch up until `shutdown`; reconnect after a loss (1 s apart).
pub async fn run(
    db: Database,
    auth: Arc<Authenticator>,
    realtime: Realtime,
    shutdown: CancellationToken,
) {
    loop {
        let mut config = db.config().clone();
        config.application_name(WATCH_NAME);
        let connected = tokio::select! {
            _ = shutdown.cancelled() => return,
            connected = tokio::time::timeout(Duration::from_secs(5), config.connect(db.tls())) => connected,
        };
        if let Ok(Ok((client, mut connection))) = connected {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<i64>(1024);
            let driver = tokio::spawn(async move {
                let mut messages =
                    futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                while let Some(message) = futures_util::StreamExt::next(&mut messages).await {
                    match message {
                        Ok(AsyncMessage::Notification(n)) => {
                            // A payload that is not an id (anyone may NOTIFY):
                            // forget everything, which is always safe.
                            let id = n.payload().trim().parse::<i64>().unwrap_or(-1);
                            if tx.try_send(id).is_err() {
                                let _ = tx.try_send(-1);
                            }
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            });
            if client.batch_execute("LISTEN livedesk_agents").await.is_ok() {
                // What changed while we were not listening is unknown.
                auth.forget_all();
                auth.set_trusted(true);
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => {
                            auth.set_trusted(false);
                            driver.abort();
                            return;
                        }
                        id = rx.recv() => match id {
                            Some(id) if id >= 0 => {
                                auth.forget_agent(id);
                                // Its open WebSockets: closed with 4001 if
                                // their token no longer works.
                                realtime.revalidate(Some(id)).await;
                            }
                            Some(_) => {
                                auth.forget_all();
                                realtime.revalidate(None).await;
                            }
                            None => break,
                        },
                    }
                }
            }
            auth.set_trusted(false);
            driver.abort();
            tracing::warn!("the agent watch connection was lost; reconnecting");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
