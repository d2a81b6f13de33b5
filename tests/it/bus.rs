//! The logical bus (issue 18) on its own: no NOTIFY, one temporary slot per
//! process that dies with it and retains no WAL, a lost stream, processes
//! that disagree about the bus, and the start-up errors that name what is
//! missing. The delivery suite runs on both buses in realtime.rs,
//! db_restart.rs and faults.rs.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::ws::{assert_versions, WsClient};
use common::{bus_settings, cluster, fresh_database, writer_role, TestApp};
use futures_util::StreamExt;
use livedesk::config::Bus;
use livedesk::db::embedded::{EmbeddedOptions, EmbeddedPostgres};
use livedesk::db::{migrations, Database};
use livedesk::realtime::stream::STREAM_NAME;
use livedesk::startup::{Application, StartError};
use tokio_postgres::{AsyncMessage, Client, NoTls};

const LONG: Duration = Duration::from_secs(30);

async fn subject_change(sql: &Client, ticket: i64, n: usize) {
    sql.execute(
        "UPDATE tickets SET subject = $2 WHERE id = $1",
        &[&ticket, &format!("subject {n}")],
    )
    .await
    .unwrap();
}

/// A connection that LISTENs on `channel`; what it hears.
async fn listen(
    dbname: &str,
    channel: &str,
) -> (Client, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let (client, mut connection) = cluster().config(dbname).connect(NoTls).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(n) = message {
                let _ = tx.send(n.payload().to_string());
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {channel}"))
        .await
        .unwrap();
    (client, rx)
}

/// This database's replication slots: (temporary, active).
async fn slots(sql: &Client) -> Vec<(bool, bool)> {
    sql.query(
        "SELECT temporary, active FROM pg_replication_slots WHERE database = current_database()",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|row| (row.get(0), row.get(1)))
    .collect()
}

async fn wait_for_slots(sql: &Client, count: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let now = slots(sql).await;
        if now.len() == count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} slots, expected {count}",
            now.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn mode(sql: &Client) -> String {
    sql.query_one("SELECT mode FROM bus_settings", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn the_logical_bus_notifies_nothing_and_its_temporary_slot_retains_no_wal() {
    let mut app = TestApp::spawn_bus(Bus::Logical).await;
    let (_, token) = app.agent("Alice", "agent").await;
    let id = app.ticket(&token, "x").await["id"].as_i64().unwrap();
    let sql = app.sql().await;
    assert_eq!(mode(&sql).await, "logical");
    let (_listener, mut heard) = listen(&app.dbname, "livedesk_events").await;
    let mut ws = WsClient::connect(&app.base, &token).await;
    ws.subscribe(id, None).await;
    ws.next_of("snapshot").await;
    for n in 0..20 {
        subject_change(&sql, id, n).await;
    }
    assert_versions(&ws.events(id, 20, LONG).await, 2, 21);
    assert!(heard.try_recv().is_err(), "no NOTIFY on the logical bus");

    // One slot, temporary and held by the process's stream.
    assert_eq!(slots(&sql).await, vec![(true, true)]);
    // Feedback: the slot's confirmed position follows the WAL written.
    let written: String = sql
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let behind: bool = sql
            .query_one(
                "SELECT confirmed_flush_lsn < $1::text::pg_lsn FROM pg_replication_slots \
                 WHERE database = current_database()",
                &[&written],
            )
            .await
            .unwrap()
            .get(0);
        if !behind {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slot's confirmed position did not advance"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Stopped, the process leaves no slot behind.
    app.stop().await;
    wait_for_slots(&sql, 0, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_lost_stream_alone_loses_nothing() {
    let app = TestApp::spawn_bus(Bus::Logical).await;
    let (_, token) = app.agent("Alice", "agent").await;
    let id = app.ticket(&token, "k").await["id"].as_i64().unwrap();
    let mut ws = WsClient::connect(&app.base, &token).await;
    ws.subscribe(id, None).await;
    ws.next_of("snapshot").await;
    let sql = app.sql().await;
    let killer = app.sql().await;
    let writer = tokio::spawn(async move {
        for n in 0..300 {
            subject_change(&sql, id, n).await;
        }
    });
    let mut kills = 0;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(80)).await;
        kills += killer
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = current_database() AND application_name = $1",
                &[&STREAM_NAME],
            )
            .await
            .unwrap()
            .len();
    }
    writer.await.unwrap();
    assert!(kills >= 1, "the stream was found and killed");
    let events = ws.events(id, 300, LONG).await;
    assert_versions(&events, 2, 301);
    assert!(ws
        .next_within(Duration::from_millis(300))
        .await
        .is_none_or(|f| f["type"] != "event"));
    // Every session made its own temporary slot; the killed ones are gone.
    wait_for_slots(&killer, 1, Duration::from_secs(5)).await;
    // The metrics say it: the stream is up again, after reconnects.
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while app.metric("livedesk_bus_stream_up").await != 1 && std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.metric("livedesk_bus_stream_up").await, 1);
    assert!(app.metric("livedesk_bus_stream_reconnects_total").await >= 1);
}

/// A process started with another bus switches the database; the others
/// follow it (a switch to notify first drains the stream), and no change
/// written through both switches is lost by any process's client.
#[tokio::test]
async fn processes_that_disagree_follow_the_last_one_started() {
    let a = TestApp::spawn_bus(Bus::Logical).await;
    let (_, token) = a.agent("Alice", "agent").await;
    let id = a.ticket(&token, "both").await["id"].as_i64().unwrap();
    let mut on_a = WsClient::connect(&a.base, &token).await;
    on_a.subscribe(id, None).await;
    on_a.next_of("snapshot").await;
    let sql = a.sql().await;
    let watcher = a.sql().await;
    let writer = tokio::spawn(async move {
        for n in 0..300 {
            subject_change(&sql, id, n).await;
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    });

    let b = TestApp::spawn_on(a.dbname.clone(), bus_settings(Bus::Notify)).await;
    assert_eq!(mode(&watcher).await, "notify");
    // A drained its stream and closed it: no slot is left.
    wait_for_slots(&watcher, 0, Duration::from_secs(10)).await;
    let mut on_b = WsClient::connect(&b.base, &token).await;
    on_b.subscribe(id, Some(1)).await;

    let c = TestApp::spawn_on(a.dbname.clone(), bus_settings(Bus::Logical)).await;
    assert_eq!(mode(&watcher).await, "logical");
    // A and B follow: three streams.
    wait_for_slots(&watcher, 3, Duration::from_secs(10)).await;
    let mut on_c = WsClient::connect(&c.base, &token).await;
    on_c.subscribe(id, Some(1)).await;

    writer.await.unwrap();
    for ws in [&mut on_a, &mut on_b, &mut on_c] {
        let events = ws.events(id, 300, LONG).await;
        assert_versions(&events, 2, 301);
    }
}

/// The triggers see the mode as a constant (`ld_bus_mode()`, written again
/// from the row whenever it changes) folded into their cached plans. A
/// writer's session that has already changed tickets must follow a switch
/// at its next change, whoever switched: the owner's plain `UPDATE` of the
/// row, then `ld_bus_set`. Its events name its service agent (the writers
/// lookup, data as well) until another session links the role to another
/// agent.
#[tokio::test]
async fn a_writers_session_follows_a_switch_at_its_next_change() {
    let app = TestApp::spawn().await;
    let (alice, token) = app.agent("Alice", "agent").await;
    let id = app.ticket(&token, "switch").await["id"].as_i64().unwrap();
    let (role, service_agent, writer) = writer_role(&app, "busswitch", false).await;
    let owner = app.sql().await;
    let (_listener, mut heard) = listen(&app.dbname, "livedesk_events").await;
    let quiet = Duration::from_millis(500);

    subject_change(&writer, id, 0).await;
    let heard_version = |payload: String| {
        let wake: serde_json::Value = serde_json::from_str(&payload).unwrap();
        assert_eq!(wake["ticket_id"], id, "{payload}");
        wake["version"].as_i64().unwrap()
    };
    let payload = tokio::time::timeout(LONG, heard.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(heard_version(payload), 2);

    // A slot of our own shows the logical messages the writer emits.
    let decoder = common::connect_as(&app.dbname, "livedesk").await;
    decoder
        .batch_execute(
            "SELECT pg_create_logical_replication_slot('switch_check', 'test_decoding', true)",
        )
        .await
        .unwrap();
    owner
        .batch_execute("UPDATE bus_settings SET mode = 'logical' WHERE id = 1")
        .await
        .unwrap();
    for n in 1..=3 {
        subject_change(&writer, id, n).await;
    }
    assert!(
        tokio::time::timeout(quiet, heard.recv()).await.is_err(),
        "no NOTIFY once the row says logical"
    );
    let emitted = decoder
        .query(
            "SELECT data FROM pg_logical_slot_get_changes('switch_check', NULL, NULL) \
             WHERE data LIKE 'message: transactional: 1 prefix: livedesk_events%'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(emitted.len(), 3, "a logical message per change instead");

    owner
        .batch_execute("SELECT ld_bus_set('notify', 'test')")
        .await
        .unwrap();
    subject_change(&writer, id, 4).await;
    let payload = tokio::time::timeout(LONG, heard.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(heard_version(payload), 6);

    let actors: Vec<Option<i64>> = owner
        .query(
            "SELECT actor_agent_id FROM ticket_events WHERE ticket_id = $1 AND version > 1 ORDER BY version",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(actors, vec![Some(service_agent); 5]);

    // The same for the writer's agent (`ld_writer_agent`, data too): relinked
    // by another session, it names the new agent from the next change on.
    owner
        .execute(
            "UPDATE writers SET agent_id = $1 WHERE role_name = $2",
            &[&alice.id, &role],
        )
        .await
        .unwrap();
    subject_change(&writer, id, 5).await;
    let actor: Option<i64> = owner
        .query_one(
            "SELECT actor_agent_id FROM ticket_events WHERE ticket_id = $1 AND version = 7",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(actor, Some(alice.id));
}

/// Settings and a database as a role that may migrate and serve (a member
/// of livedesk_owner) but lacks the REPLICATION attribute.
async fn role_without_replication(dbname: &str) -> tokio_postgres::Config {
    let role = format!("norepl_{}", std::process::id());
    let admin = Database::new(cluster().admin_config("postgres"), 1).unwrap();
    let client = admin.client().await.unwrap();
    client
        .batch_execute(&format!(
            "DO $$ BEGIN \
               IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN \
                 CREATE ROLE {role} LOGIN NOREPLICATION IN ROLE livedesk_owner; \
               END IF; \
             END $$"
        ))
        .await
        .unwrap();
    drop(client);
    admin.pool().close();
    cluster().config_as(dbname, &role)
}

async fn start_error(
    settings: livedesk::config::Settings,
    config: tokio_postgres::Config,
) -> String {
    let db = Database::with_timeout(config, 2, Duration::from_secs(5)).unwrap();
    match Application::build(settings, db).await {
        Ok(_) => panic!("livedesk started on the logical bus without what it needs"),
        Err(StartError::Bus(e)) => e.to_string(),
        Err(other) => panic!("another start-up error: {other}"),
    }
}

#[tokio::test]
async fn without_replication_or_publication_the_logical_bus_refuses_to_start() {
    // No REPLICATION attribute.
    let dbname = fresh_database().await;
    let config = role_without_replication(&dbname).await;
    let error = start_error(bus_settings(Bus::Logical), config.clone()).await;
    assert!(error.contains("REPLICATION"), "{error}");
    assert!(error.contains("ALTER ROLE norepl_"), "{error}");
    // The same role serves the notify bus.
    let mut app = TestApp::spawn_via(dbname.clone(), bus_settings(Bus::Notify), config).await;
    app.stop().await;

    // No publication.
    let dbname = fresh_database().await;
    let owner = common::connect_as(&dbname, livedesk::db::bootstrap::OWNER).await;
    owner
        .batch_execute("DROP PUBLICATION livedesk_bus")
        .await
        .unwrap();
    let error = start_error(bus_settings(Bus::Logical), cluster().config(&dbname)).await;
    assert!(error.contains("CREATE PUBLICATION livedesk_bus"), "{error}");
    assert_eq!(mode(&owner).await, "notify", "nothing was switched");
}

/// The real binary with DATABASE_URL: exit code 2, and the fix on stderr.
#[tokio::test]
async fn the_binary_names_the_missing_replication_attribute() {
    let dbname = fresh_database().await;
    let config = role_without_replication(&dbname).await;
    let url = format!(
        "host={} port={} user={} dbname={dbname}",
        cluster().socket_dir.display(),
        cluster().port,
        config.get_user().unwrap()
    );
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_livedesk"))
            .env("DATABASE_URL", url)
            .env("LIVEDESK_BUS", "logical")
            .env("LIVEDESK_BIND", "127.0.0.1:0")
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("lacks the REPLICATION attribute"),
        "{stderr}"
    );
    assert!(stderr.contains("LIVEDESK_BUS=notify"), "{stderr}");
}

/// A PostgreSQL with wal_level = replica: the logical bus is refused at
/// start (naming wal_level and the fix), and by the database itself; the
/// notify bus runs.
#[tokio::test]
async fn a_server_without_logical_wal_is_named_at_start() {
    let dir = tempfile::Builder::new()
        .prefix("livedesk-replica-")
        .tempdir_in("/tmp")
        .unwrap();
    let mut options = EmbeddedOptions::new(dir.path());
    options.unsafe_fast = true;
    options
        .settings
        .push(("wal_level".into(), "replica".into()));
    let mut pg = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(options))
        .await
        .unwrap()
        .unwrap();
    let admin = Database::new(pg.admin_config(), 1).unwrap();
    livedesk::db::bootstrap::embedded(&admin).await.unwrap();
    admin.pool().close();
    let db = Database::new(pg.config(), 2).unwrap();
    migrations::run(&db).await.unwrap();

    let error = start_error(bus_settings(Bus::Logical), pg.config()).await;
    assert!(error.contains("wal_level = replica"), "{error}");
    assert!(
        error.contains("ALTER SYSTEM SET wal_level = logical"),
        "{error}"
    );
    let client = db.client().await.unwrap();
    let refused = client
        .query_one("SELECT ld_bus_set('logical', 'test')", &[])
        .await
        .unwrap_err();
    assert_eq!(refused.code().unwrap().code(), "55000");
    drop(client);

    let mut app =
        TestApp::spawn_via("livedesk".into(), bus_settings(Bus::Notify), pg.config()).await;
    app.stop().await;
    db.pool().close();
    tokio::task::spawn_blocking(move || pg.stop())
        .await
        .unwrap();
}

/// A PostgreSQL with no WAL senders, then one whose only WAL sender is
/// taken by another livedesk process: the logical bus is refused at start,
/// each time naming what is missing and the fix, and the database's mode is
/// left alone. (pg_hba.conf cannot refuse the stream alone: a logical
/// replication connection is matched by the database's own lines, so a
/// role refused there cannot migrate or serve either.)
#[tokio::test]
async fn no_free_wal_sender_is_named_at_start() {
    let dir = tempfile::Builder::new()
        .prefix("livedesk-nosenders-")
        .tempdir_in("/tmp")
        .unwrap();
    let start = |senders: &str| {
        let mut options = EmbeddedOptions::new(dir.path());
        options.unsafe_fast = true;
        options.settings = vec![
            ("max_wal_senders".into(), senders.into()),
            ("max_replication_slots".into(), senders.into()),
        ];
        tokio::task::spawn_blocking(move || EmbeddedPostgres::start(options))
    };
    let mut pg = start("0").await.unwrap().unwrap();
    let admin = Database::new(pg.admin_config(), 1).unwrap();
    livedesk::db::bootstrap::embedded(&admin).await.unwrap();
    admin.pool().close();
    let db = Database::new(pg.config(), 2).unwrap();
    migrations::run(&db).await.unwrap();

    let error = start_error(bus_settings(Bus::Logical), pg.config()).await;
    assert!(
        error.contains("max_replication_slots = 0, max_wal_senders = 0"),
        "{error}"
    );
    assert!(error.contains("raise them with ALTER SYSTEM"), "{error}");
    assert_eq!(mode(&db.client().await.unwrap()).await, "notify");
    db.pool().close();
    tokio::task::spawn_blocking(move || pg.stop())
        .await
        .unwrap();

    // One WAL sender, and a first process streaming through it.
    let mut pg = start("1").await.unwrap().unwrap();
    let mut first =
        TestApp::spawn_via("livedesk".into(), bus_settings(Bus::Logical), pg.config()).await;
    let error = start_error(bus_settings(Bus::Logical), pg.config()).await;
    assert!(
        error.contains("cannot open a replication connection as livedesk_owner"),
        "{error}"
    );
    assert!(error.contains("exceeds max_wal_senders"), "{error}");
    assert!(error.contains("a free WAL sender"), "{error}");
    // The first process still streams: a change reaches its client.
    let (_, token) = first.agent("Alice", "agent").await;
    let ticket = first.ticket(&token, "Refund").await;
    let (t, v) = (
        ticket["id"].as_i64().unwrap(),
        ticket["version"].as_i64().unwrap(),
    );
    let mut ws = WsClient::connect(&first.base, &token).await;
    ws.subscribe(t, Some(v)).await;
    first
        .db
        .client()
        .await
        .unwrap()
        .batch_execute(&format!(
            "UPDATE tickets SET priority = 'high' WHERE id = {t}"
        ))
        .await
        .unwrap();
    assert_versions(&ws.events(t, 1, LONG).await, v + 1, v + 1);
    first.stop().await;
    tokio::task::spawn_blocking(move || pg.stop())
        .await
        .unwrap();
}

/// `pg_logical_emit_message` needs no right in PostgreSQL, so a writer can
/// forge a wake-up on the logical bus as it can a NOTIFY: it must reach no
/// client as an event, and a version that never comes is given up after a
/// few reads (no loop), the next real change arriving as the next version.
#[tokio::test]
async fn a_forged_logical_message_is_harmless() {
    let app = TestApp::spawn_bus(Bus::Logical).await;
    let common::Watched {
        ticket: t,
        version: v,
        mut ws,
        writer: w,
    } = common::watched_ticket(&app, "f").await;
    for payload in [
        serde_json::json!({"ticket_id": t, "version": v + 3}).to_string(),
        serde_json::json!({"ticket_id": t, "version": -1}).to_string(),
        serde_json::json!({"ticket_id": 987654321, "version": 1}).to_string(),
        "not json".to_string(),
        "x".repeat(100_000),
    ] {
        for transactional in [true, false] {
            w.execute(
                "SELECT pg_logical_emit_message($1, 'livedesk_events', $2)",
                &[&transactional, &payload],
            )
            .await
            .unwrap();
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    while let Some(frame) = ws
        .next_within(deadline.saturating_duration_since(tokio::time::Instant::now()))
        .await
    {
        assert_eq!(frame["type"], "presence", "unexpected frame {frame}");
    }
    w.batch_execute(&format!(
        "UPDATE tickets SET priority = 'high' WHERE id = {t}"
    ))
    .await
    .unwrap();
    let events = ws.events(t, 1, LONG).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["version"], v + 1);
    // The stream survived the forgeries.
    assert_eq!(slots(&app.sql().await).await, vec![(true, true)]);
}

/// A writer's forged `livedesk_bus` announcement (NOTIFY needs no right) is
/// only a reason to read `bus_settings` again: a process on the logical bus
/// keeps its stream when told "notify", one on NOTIFY opens none when told
/// "logical", and both deliver the next real change at once. (Before,
/// the payload was believed: the logical process dropped its stream and
/// delivered nothing until the next reconnect.)
#[tokio::test]
async fn a_forged_bus_announcement_is_not_followed() {
    for (bus, forged) in [(Bus::Logical, "notify"), (Bus::Notify, "logical")] {
        let app = TestApp::spawn_bus(bus).await;
        let common::Watched {
            ticket: t,
            version: v,
            mut ws,
            writer: w,
        } = common::watched_ticket(&app, "fb").await;
        let sql = app.sql().await;
        let slots_before = slots(&sql).await;
        w.batch_execute(&format!("NOTIFY livedesk_bus, '{forged}'"))
            .await
            .unwrap();
        w.execute("SELECT pg_notify('livedesk_bus', $1)", &[&forged])
            .await
            .unwrap();
        // Time for the process to act on it, as it did before the fix.
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(
            mode(&sql).await,
            bus.as_str(),
            "the database's mode is untouched"
        );
        assert_eq!(
            slots(&sql).await,
            slots_before,
            "{}: no stream dropped or opened",
            bus.as_str()
        );
        w.batch_execute(&format!(
            "UPDATE tickets SET priority = 'high' WHERE id = {t}"
        ))
        .await
        .unwrap();
        let events = ws.events(t, 1, Duration::from_secs(5)).await;
        assert_eq!(
            events.len(),
            1,
            "{}: the next change is delivered",
            bus.as_str()
        );
        assert_eq!(events[0]["version"], v + 1);
    }
}

/// With `DATABASE_URL` over TCP and `sslmode=verify-full`, the replication
/// connection checks the server's certificate like the pool does (`db::tls`)
/// (issuer and host name) and is encrypted.
#[tokio::test]
async fn the_stream_connects_with_the_urls_verify_full_tls() {
    use super::db_tls::{authority, write_certificates};
    let certs = tempfile::Builder::new()
        .prefix("livedesk-bus-tls-")
        .tempdir_in("/tmp")
        .unwrap();
    write_certificates(certs.path(), &authority("livedesk bus test CA"));
    let data = tempfile::Builder::new()
        .prefix("livedesk-bus-tls-pg-")
        .tempdir_in("/tmp")
        .unwrap();
    let mut options = EmbeddedOptions::new(data.path());
    options.unsafe_fast = true;
    for (name, value) in [
        ("listen_addresses", "127.0.0.1".to_string()),
        ("ssl", "on".to_string()),
        (
            "ssl_cert_file",
            certs.path().join("server.crt").display().to_string(),
        ),
        (
            "ssl_key_file",
            certs.path().join("server.key").display().to_string(),
        ),
    ] {
        options.settings.push((name.to_string(), value));
    }
    let mut pg = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(options))
        .await
        .unwrap()
        .unwrap();
    let admin = Database::new(pg.admin_config(), 1).unwrap();
    livedesk::db::bootstrap::embedded(&admin).await.unwrap();
    migrations::run(&Database::new(pg.config(), 1).unwrap())
        .await
        .unwrap();
    let url = format!(
        "postgresql://livedesk_owner@localhost:{}/livedesk?sslmode=verify-full&sslrootcert={}",
        pg.socket().1,
        certs.path().join("ca.pem").display()
    );
    // Healthy means the stream is up (the logical bus needs it).
    let mut app = TestApp::spawn_url("livedesk".into(), bus_settings(Bus::Logical), &url).await;
    let client = admin.client().await.unwrap();
    let ssl: Vec<bool> = client
        .query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = $1",
            &[&STREAM_NAME],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(ssl, vec![true], "one stream, encrypted");
    drop(client);
    app.stop().await;
    admin.pool().close();
    tokio::task::spawn_blocking(move || pg.stop())
        .await
        .unwrap();
}
