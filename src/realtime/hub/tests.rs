//! The hub's unit tests: positions, joins, gaps, resets, overflow.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::*;

fn conn(id: ConnId, capacity: usize) -> (ConnHandle, mpsc::Receiver<Outbound>) {
    let (tx, rx) = mpsc::channel(capacity);
    (
        ConnHandle {
            id,
            tx,
            overflow: Arc::default(),
            handoff: None,
        },
        rx,
    )
}

fn versions(rx: &mut mpsc::Receiver<Outbound>) -> Vec<i64> {
    let mut out = Vec::new();
    while let Ok(Outbound::Event { version, .. }) = rx.try_recv() {
        out.push(version);
    }
    out
}

fn ev(ticket_id: i64, version: i64) -> EventFrame {
    EventFrame {
        ticket_id,
        version,
        frame: ByteString::from(format!("e{version}")),
    }
}

fn items(rx: &mut mpsc::Receiver<Outbound>) -> Vec<String> {
    let mut got = Vec::new();
    while let Ok(item) = rx.try_recv() {
        got.push(match item {
            Outbound::Event { version, .. } => format!("e{version}"),
            Outbound::Reset { version, .. } => format!("reset{version}"),
            Outbound::Frame(frame) => frame.to_string(),
        });
    }
    got
}

#[test]
fn delivers_only_the_next_version_once() {
    let hub = Hub::default();
    let (a, mut rx) = conn(1, 16);
    hub.subscribe(7, &a);
    assert_eq!(hub.join(7, 1, 3), Join::Read);
    hub.fan_out_events(&[(7, 3)], [3, 4, 5, 5, 7, 8].map(|v| ev(7, v)).into());
    // 6 is missing from the log: one reset instead of 7, and the hub
    // forgets the subscriber (8 is not sent either).
    assert_eq!(items(&mut rx), ["e4", "e5", "reset7"]);
    assert!(hub.all_tickets().is_empty());
}

#[test]
fn a_reset_reaches_every_subscriber_once() {
    let hub = Hub::default();
    let (a, mut rx_a) = conn(1, 4);
    let (b, mut rx_b) = conn(2, 4);
    hub.subscribe(3, &a);
    hub.subscribe(3, &b);
    hub.join(3, 1, 10);
    assert_eq!(hub.reset(3, 4).queued, 2);
    assert_eq!(hub.reset(3, 4).queued, 0);
    assert_eq!(hub.join(3, 2, 10), Join::Gone);
    for rx in [&mut rx_a, &mut rx_b] {
        assert_eq!(items(rx), ["reset4"]);
    }
}

#[test]
fn a_full_queue_trips_overflow_once_and_spares_neighbours() {
    let hub = Hub::default();
    let (slow, _slow_rx) = conn(1, 1);
    let (fast, mut fast_rx) = conn(2, 16);
    hub.subscribe(1, &slow);
    hub.subscribe(1, &fast);
    hub.join(1, 1, 0);
    hub.join(1, 2, 0);
    let stats = hub.fan_out_events(&[(1, 0)], (1..=3).map(|v| ev(1, v)).collect());
    assert_eq!(stats.overflowed, 1);
    assert!(slow.overflow.is_tripped());
    assert_eq!(versions(&mut fast_rx), vec![1, 2, 3]);
}

#[test]
fn a_subscriber_behind_the_others_gets_its_gap_from_the_same_read() {
    let hub = Hub::default();
    let (a, mut rx_a) = conn(1, 8);
    let (b, mut rx_b) = conn(2, 8);
    hub.subscribe(9, &a);
    assert_eq!(hub.join(9, 1, 10), Join::Read);
    hub.subscribe(9, &b);
    assert_eq!(hub.join(9, 2, 8), Join::Read);
    assert_eq!(hub.cursors(&HashSet::from([9])), vec![(9, 8)]);
    hub.fan_out_events(&[(9, 8)], (9..=11).map(|v| ev(9, v)).collect());
    assert_eq!(versions(&mut rx_a), vec![11]);
    assert_eq!(versions(&mut rx_b), vec![9, 10, 11]);
    assert_eq!(hub.cursors(&HashSet::from([9])), vec![(9, 11)]);
}

#[test]
fn only_a_join_the_fetcher_already_serves_is_live_at_once() {
    let hub = Hub::default();
    let (a, _rx_a) = conn(1, 4);
    let (b, _rx_b) = conn(2, 4);
    let (c, _rx_c) = conn(3, 4);
    hub.subscribe(5, &a);
    // Wake-ups while nobody had joined were not read: a read is due.
    assert_eq!(hub.join(5, 1, 2), Join::Read);
    hub.subscribe(5, &b);
    assert_eq!(hub.join(5, 2, 2), Join::Live);
    assert_eq!(hub.join(5, 3, 2), Join::Gone);
    // Re-subscribing reads again; the others keep the ticket served.
    hub.subscribe(5, &c);
    hub.subscribe(5, &a);
    assert_eq!(hub.join(5, 1, 4), Join::Live);
    assert_eq!(hub.join(5, 3, 1), Join::Read);
}

#[test]
fn readers_get_frames_not_events_and_a_gap_resets_only_who_would_skip_it() {
    let hub = Hub::default();
    let (a, mut rx_a) = conn(1, 8);
    let (b, mut rx_b) = conn(2, 8);
    let (c, mut rx_c) = conn(3, 8);
    hub.subscribe(4, &a);
    hub.subscribe(4, &b);
    hub.subscribe(4, &c);
    hub.join(4, 1, 3);
    hub.join(4, 2, 5);
    assert_eq!(hub.interest(4), (true, false));
    assert_eq!(hub.interest(8), (false, false));
    hub.fan_out_ticket_frame(4, ByteString::from("viewers"));
    // Version 4 is missing: a (at 3) is reset, b (at 5) goes on.
    hub.fan_out_events(&[(4, 3)], [5, 6].map(|v| ev(4, v)).into());
    assert_eq!(items(&mut rx_a), ["viewers", "reset5"]);
    assert_eq!(items(&mut rx_b), ["viewers", "e6"]);
    assert_eq!(items(&mut rx_c), ["viewers"]);
    assert_eq!(hub.cursors(&HashSet::from([4])), vec![(4, 6)]);
}

#[test]
fn a_subscriber_that_joined_below_a_read_in_flight_waits_for_its_own() {
    let hub = Hub::default();
    let (a, mut rx_a) = conn(1, 8);
    let (b, mut rx_b) = conn(2, 8);
    hub.subscribe(6, &a);
    hub.join(6, 1, 10);
    hub.subscribe(6, &b);
    // The fetcher reads after 10; meanwhile b's snapshot says 9.
    let read = hub.cursors(&HashSet::from([6]));
    assert_eq!(hub.join(6, 2, 9), Join::Read);
    hub.fan_out_events(&read, [11, 12].map(|v| ev(6, v)).into());
    assert_eq!(items(&mut rx_a), ["e11", "e12"]);
    assert!(items(&mut rx_b).is_empty(), "no reset, no gap");
    // The read b's join asked for.
    let read = hub.cursors(&HashSet::from([6]));
    assert_eq!(read, vec![(6, 9)]);
    hub.fan_out_events(&read, (10..=13).map(|v| ev(6, v)).collect());
    assert_eq!(items(&mut rx_a), ["e13"]);
    assert_eq!(items(&mut rx_b), ["e10", "e11", "e12", "e13"]);
}

fn conn_on(
    id: ConnId,
    capacity: usize,
    handoff: &Arc<Handoff>,
) -> (ConnHandle, mpsc::Receiver<Outbound>) {
    let (mut handle, rx) = conn(id, capacity);
    handle.handoff = Some(handoff.clone());
    (handle, rx)
}

/// A worker's hand-off with its task running on this `LocalSet`, its
/// metrics, and a hub to fan out with.
fn running_handoff() -> (Arc<crate::metrics::Metrics>, Arc<Handoff>, Hub) {
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let handoff = Handoff::new(metrics.clone());
    tokio::task::spawn_local(handoff.clone().run());
    (metrics, handoff, Hub::default())
}

#[tokio::test]
async fn the_worker_handoff_keeps_each_connections_order_and_its_overflow() {
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let (metrics, handoff, hub) = running_handoff();
            let (a, mut rx_a) = conn_on(1, 64, &handoff);
            let (b, mut rx_b) = conn_on(2, 2, &handoff);
            // Registered on this worker, busy: everything goes through
            // their queues.
            let mut registrations = busy_on(&hub, 1, [&a, &b]).await;
            hub.fan_out_ticket_frame(1, ByteString::from("viewers"));
            let stats = hub.fan_out_events(&[(1, 0)], (1..=4).map(|v| ev(1, v)).collect());
            // Queued to the hand-off: the connections' own queues are
            // filled by its task, on this thread.
            assert_eq!(stats.queued, 8);
            assert!(rx_a.try_recv().is_err());
            tokio::task::yield_now().await;
            assert_eq!(items(&mut rx_a), ["viewers", "e1", "e2", "e3", "e4"]);
            // b's queue holds two: the third trips its overflow (once).
            assert_eq!(items(&mut rx_b), ["viewers", "e1"]);
            assert!(b.overflow.is_tripped());
            assert_eq!(metrics.ws_closed_slow.get(), 1);
            // A tripped connection gets nothing more.
            hub.fan_out_ticket_frame(1, ByteString::from("later"));
            tokio::task::yield_now().await;
            assert_eq!(items(&mut rx_a), ["later"]);
            assert!(items(&mut rx_b).is_empty());
            // A connection whose session stopped (no longer registered)
            // gets nothing.
            registrations.remove(0);
            hub.fan_out_ticket_frame(1, ByteString::from("gone"));
            tokio::task::yield_now().await;
            assert!(items(&mut rx_a).is_empty());
        })
        .await;
}

#[test]
fn a_full_worker_handoff_overflows_the_connection_not_memory() {
    // No task drains it: the hand-off fills up.
    let handoff = Handoff::new(Arc::new(crate::metrics::Metrics::new()));
    let (a, _rx_a) = conn_on(1, 4, &handoff);
    let (b, _rx_b) = conn_on(2, 4, &handoff);
    let frame = |n: usize| Outbound::Frame(ByteString::from(n.to_string()));
    let mut offers = conn::Offers::default();
    for n in 0..HANDOFF_LIMIT {
        offers.offer(&a, frame(n));
    }
    offers.offer(&b, frame(0));
    offers.offer(&b, frame(1));
    let stats = offers.finish();
    assert_eq!(stats.queued, HANDOFF_LIMIT as u64);
    // b's first item trips its overflow (counted once), its second is dropped.
    assert_eq!(stats.overflowed, 1);
    assert!(b.overflow.is_tripped());
    assert!(!a.overflow.is_tripped());
    let mut offers = conn::Offers::default();
    offers.offer(&b, frame(2));
    assert_eq!(offers.finish().queued, 0);
}

/// Register connections on this thread with real sockets, busy (not
/// parked: everything goes through their queues), and join them to a
/// ticket at version 0. Keep what it returns: it holds the sockets.
async fn busy_on<const N: usize>(
    hub: &Hub,
    ticket_id: i64,
    conns: [&ConnHandle; N],
) -> Vec<(Registration, actix_web::body::BoxBody)> {
    let mut registrations = Vec::new();
    for conn in conns {
        let (ws, body) = socket().await;
        let closing = [Default::default(), Default::default()];
        registrations.push((Registration::new(conn, ws, Sent::default(), closing), body));
        hub.subscribe(ticket_id, conn);
        hub.join(ticket_id, conn.id, 0);
    }
    registrations
}

/// A real actix-ws socket channel (it holds 32 frames), and the response
/// body the dispatcher would write from.
async fn socket() -> (actix_ws::Session, actix_web::body::BoxBody) {
    use actix_web::FromRequest;
    let (request, mut payload) = actix_web::test::TestRequest::default()
        .insert_header(("upgrade", "websocket"))
        .insert_header(("connection", "upgrade"))
        .insert_header(("sec-websocket-version", "13"))
        .insert_header(("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="))
        .to_http_parts();
    let payload = actix_web::web::Payload::from_request(&request, &mut payload)
        .await
        .unwrap();
    let (response, session, _stream) = actix_ws::handle(&request, payload).unwrap();
    (session, response.into_body())
}

/// The text frames the socket would carry now (server frames are unmasked).
fn written(body: &mut actix_web::body::BoxBody) -> Vec<String> {
    use actix_web::body::MessageBody;
    use futures_util::FutureExt;
    let mut bytes = Vec::new();
    while let Some(Some(chunk)) =
        futures_util::future::poll_fn(|cx| std::pin::Pin::new(&mut *body).poll_next(cx))
            .now_or_never()
    {
        bytes.extend_from_slice(&chunk.unwrap());
    }
    let mut frames = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        assert_eq!(bytes[at], 0x81, "a final text frame");
        let len = usize::from(bytes[at + 1]);
        assert!(len < 126, "short frames only");
        frames.push(String::from_utf8(bytes[at + 2..at + 2 + len].to_vec()).unwrap());
        at += 2 + len;
    }
    frames
}

fn names(from: i64, to: i64) -> Vec<String> {
    (from..=to).map(|v| format!("e{v}")).collect()
}

#[tokio::test]
async fn direct_writes_never_overtake_the_sessions_queue() {
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let (metrics, handoff, hub) = running_handoff();
            let (a, mut rx) = conn_on(1, 64, &handoff);
            let (ws, mut body) = socket().await;
            let sent = Sent::default();
            let closing = [
                tokio_util::sync::CancellationToken::new(),
                tokio_util::sync::CancellationToken::new(),
            ];
            let registration = Registration::new(&a, ws, sent.clone(), closing.clone());
            hub.subscribe(1, &a);
            hub.join(1, a.id, 0);
            sent.insert(1, 0);
            registration.park(true);

            // The socket's channel takes 32; the rest wait in the session's
            // queue, in order, and later items follow them there.
            hub.fan_out_events(&[(1, 0)], (1..=40).map(|v| ev(1, v)).collect());
            tokio::task::yield_now().await;
            assert_eq!(written(&mut body), names(1, 32));
            assert_eq!(sent.get(1), Some(32));
            // The socket has room again, but the queue is not empty: a
            // viewer list must not overtake the events waiting there.
            hub.fan_out_ticket_frame(1, ByteString::from("viewers"));
            tokio::task::yield_now().await;
            assert!(written(&mut body).is_empty());
            let mut queued = names(33, 40);
            queued.push("viewers".into());
            assert_eq!(items(&mut rx), queued);
            // (The session delivered them.)
            sent.insert(1, 40);

            // A busy session gets its items through its queue.
            registration.park(false);
            hub.fan_out_events(&[(1, 40)], vec![ev(1, 41)]);
            tokio::task::yield_now().await;
            assert_eq!(items(&mut rx), names(41, 41));
            registration.park(true);
            // Not the next version of what the client has (41 went through
            // the queue, the session has not sent it): the session decides.
            hub.fan_out_events(&[(1, 41)], vec![ev(1, 42)]);
            tokio::task::yield_now().await;
            assert_eq!(items(&mut rx), names(42, 42));
            sent.insert(1, 42);
            // The next version, parked, nothing queued: straight to the socket.
            hub.fan_out_events(&[(1, 42)], vec![ev(1, 43)]);
            tokio::task::yield_now().await;
            assert_eq!(written(&mut body), names(43, 43));
            assert!(items(&mut rx).is_empty());
            // A session about to close (revoked) gets nothing more past it.
            closing[1].cancel();
            hub.fan_out_events(&[(1, 43)], vec![ev(1, 44)]);
            tokio::task::yield_now().await;
            assert!(written(&mut body).is_empty());
            assert_eq!(items(&mut rx), names(44, 44));
            // A reset always goes through the session.
            hub.reset(1, 3);
            tokio::task::yield_now().await;
            assert_eq!(items(&mut rx), ["reset3"]);
            assert_eq!(metrics.ws_direct_writes.get(), 33);

            // Unregistered (the session stopped): nothing more for it.
            drop(registration);
            hub.subscribe(1, &a);
            hub.join(1, a.id, 44);
            hub.fan_out_ticket_frame(1, ByteString::from("later"));
            tokio::task::yield_now().await;
            assert!(items(&mut rx).is_empty());
            assert!(written(&mut body).is_empty());
        })
        .await;
}

#[tokio::test]
async fn a_pass_bigger_than_a_chunk_keeps_its_order() {
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let (_, handoff, hub) = running_handoff();
            let (a, mut rx) = conn_on(1, 1024, &handoff);
            let (b, mut rx_b) = conn_on(2, 1024, &handoff);
            let _registrations = busy_on(&hub, 7, [&a, &b]).await;
            // 2 × 300 items for one worker: handed over in chunks while the
            // hub's pass goes on.
            let stats = hub.fan_out_events(&[(7, 0)], (1..=300).map(|v| ev(7, v)).collect());
            assert_eq!(stats.queued, 600);
            tokio::task::yield_now().await;
            assert_eq!(items(&mut rx), names(1, 300));
            assert_eq!(items(&mut rx_b), names(1, 300));
        })
        .await;
}
