//! The dedicated LISTEN connection (never from the pool, never in a
//! transaction). Its driver forwards notifications to the hub; when it is
//! lost, the listener reconnects with backoff and asks for a catch-up read of
//! every watched ticket, so nothing committed meanwhile is missed.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio_postgres::AsyncMessage;

use super::{bus, Realtime};

const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// `application_name` of the LISTEN connection, to find it in `pg_stat_activity`.
pub const LISTENER_NAME: &str = "livedesk-listener";

/// The ticket id of a `livedesk_events` payload `{"ticket_id": …, "version": …}`.
pub fn ticket_of(payload: &str) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct Payload {
        ticket_id: i64,
    }
    serde_json::from_str::<Payload>(payload)
        .ok()
        .map(|p| p.ticket_id)
}

/// The ticket id and version of a `livedesk_events` payload.
pub fn event_of(payload: &str) -> Option<(i64, i64)> {
    #[derive(serde::Deserialize)]
    struct Payload {
        ticket_id: i64,
        version: i64,
    }
    serde_json::from_str::<Payload>(payload)
        .ok()
        .map(|p| (p.ticket_id, p.version))
}

/// Read the database's bus mode (`bus_settings`, which only the owner
/// writes) and follow it; false when it could not be read.
async fn follow_the_databases_bus(
    rt: &Realtime,
    client: &tokio_postgres::Client,
    limit: Duration,
) -> bool {
    match tokio::time::timeout(limit, bus::read_mode(client)).await {
        Ok(Ok(mode)) => {
            rt.follow_bus(mode);
            true
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot read the database's event bus");
            false
        }
        Err(_) => {
            tracing::warn!("reading the database's event bus got no answer in time");
            false
        }
    }
}

/// Keep a LISTEN connection up until shutdown.
pub async fn run(rt: Realtime) {
    let mut backoff = Duration::from_millis(50);
    let mut connected_before = false;
    loop {
        if rt.bus_stop.is_cancelled() {
            return;
        }
        let mut config = rt.db.config().clone();
        config.application_name(LISTENER_NAME);
        // The whole start-up exchange is bounded, not only the TCP connect:
        // a peer that accepts and never answers must not hold us here.
        let limit = rt.db.timeout();
        let connected = match tokio::time::timeout(limit, config.connect(rt.db.tls())).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {} ms", limit.as_millis())),
        };
        match connected {
            Ok((client, mut connection)) => {
                let relay = rt.clone();
                // A `livedesk_bus` notification only says "read the mode
                // again": anyone may NOTIFY on any channel, so its payload
                // is not believed (the loop below reads `bus_settings`).
                let bus_changed = Arc::new(Notify::new());
                let heard = bus_changed.clone();
                let mut driver = tokio::spawn(async move {
                    let mut messages =
                        futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                    while let Some(message) = messages.next().await {
                        match message {
                            Ok(AsyncMessage::Notification(n)) if n.channel() == bus::CHANNEL => {
                                heard.notify_one()
                            }
                            Ok(AsyncMessage::Notification(n)) => {
                                relay.on_notification(n.channel(), n.payload())
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, "LISTEN connection failed");
                                break;
                            }
                        }
                    }
                });
                let listen = tokio::time::timeout(
                    limit,
                    client.batch_execute(
                        "LISTEN livedesk_events; LISTEN livedesk_presence; LISTEN livedesk_fields; \
                         LISTEN livedesk_bus",
                    ),
                );
                match listen.await {
                    Ok(Ok(())) => {
                        // Before the catch-up: did the database go back in time?
                        let seen = match tokio::time::timeout(
                            limit,
                            super::rewind::identity(&client),
                        )
                        .await
                        {
                            Ok(Ok(identity)) => Some(identity),
                            Ok(Err(e)) => {
                                tracing::warn!(error = %e, "cannot read the database's identity; checking versions only");
                                None
                            }
                            Err(_) => None,
                        };
                        super::rewind::observe(&rt, seen, connected_before);
                        // The bus may have been switched while we were away.
                        follow_the_databases_bus(&rt, &client, limit).await;
                        rt.set_listener_up(true);
                        if connected_before {
                            rt.metrics.listener_reconnects.inc();
                            tracing::info!("LISTEN connection restored; catching up");
                        }
                        connected_before = true;
                        backoff = Duration::from_millis(50);
                        // Anything committed while we were not listening is in the log.
                        rt.work.catch_up_everything(true);
                        rt.presence.republish();
                        // Half the interval asleep, at most half waiting for
                        // the answer: a silent connection is noticed within
                        // one probe interval of its last sign of life.
                        let half = rt.settings.listener_probe() / 2;
                        loop {
                            tokio::select! {
                                _ = &mut driver => break,
                                _ = rt.bus_stop.cancelled() => break,
                                _ = bus_changed.notified() => {
                                    if !follow_the_databases_bus(&rt, &client, limit).await {
                                        // A reconnect reads it again.
                                        break;
                                    }
                                }
                                _ = tokio::time::sleep(half) => {
                                    let probe = tokio::time::timeout(half.min(limit), client.simple_query("SELECT 1"));
                                    if !matches!(probe.await, Ok(Ok(_))) {
                                        tracing::warn!(probe_ms = half.min(limit).as_millis() as u64, "the LISTEN connection did not answer its probe; reconnecting");
                                        break;
                                    }
                                }
                            }
                        }
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "LISTEN failed"),
                    Err(_) => tracing::warn!("LISTEN got no answer in time"),
                }
                rt.set_listener_up(false);
                // Dropping the client ends the session cleanly (Terminate);
                // the driver then returns. A dead socket gets no such grace.
                drop(client);
                if !driver.is_finished()
                    && tokio::time::timeout(Duration::from_secs(1), &mut driver)
                        .await
                        .is_err()
                {
                    driver.abort();
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot open the LISTEN connection")
            }
        }
        tokio::select! {
            _ = rt.bus_stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
