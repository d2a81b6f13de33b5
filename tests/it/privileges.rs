//! Contract §4a, tried as an attacker with a writer's connection would: every
//! way to switch the rules off or corrupt the event log is refused (or, for
//! NOTIFY, harmless), and afterwards every ticket's log is still gapless and
//! names its actors. The writer and reader roles are made by `livedesk writer
//! add`, the same code the CLI runs.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{cluster, TestApp};
use livedesk::db::Database;
use serde_json::json;
use tokio_postgres::{Client, NoTls};

/// A role made by `livedesk writer add`, its agent id, a connection as it.
async fn writer_role(app: &TestApp, read_only: bool) -> (String, i64, Client) {
    let (name, agent, client) = common::writer_role(app, "w", read_only).await;
    let agents = app.sql().await;
    let role: String = agents
        .query_one("SELECT role FROM agents WHERE id = $1", &[&agent])
        .await
        .unwrap()
        .get(0);
    assert_eq!(role, "service");
    (name, agent, client)
}

/// The SQLSTATE of a statement that must fail (panics when it succeeds).
async fn refused(client: &Client, sql: &str) -> String {
    match client.batch_execute(sql).await {
        Ok(()) => panic!("the writer could run: {sql}"),
        Err(e) => {
            let code = e.code().map(|c| c.code().to_string()).unwrap_or_default();
            // A refused statement inside BEGIN leaves the transaction aborted.
            let _ = client.batch_execute("ROLLBACK").await;
            code
        }
    }
}

/// Every ticket's log is 1..version, one event each, and every event names an actor
/// (checked as the owner).
async fn assert_logs_gapless(app: &TestApp) {
    let sql = app.sql().await;
    let broken = sql
        .query(
            "SELECT t.id, t.version, count(e.version), min(e.version), max(e.version) \
             FROM tickets t LEFT JOIN ticket_events e ON e.ticket_id = t.id \
             GROUP BY t.id, t.version \
             HAVING count(e.version) <> t.version OR min(e.version) <> 1 OR max(e.version) <> t.version",
            &[],
        )
        .await
        .unwrap();
    assert!(broken.is_empty(), "tickets with a broken log: {broken:?}");
    let anonymous: i64 = sql
        .query_one(
            "SELECT count(*) FROM ticket_events WHERE actor_agent_id IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(anonymous, 0, "every event names its actor");
}

#[tokio::test]
async fn a_writer_cannot_switch_the_rules_off_or_forge_the_log() {
    let app = TestApp::spawn().await;
    let (alice, token) = app.agent("Alice", "agent").await;
    let ticket = app.ticket(&token, "Refund").await;
    let t = ticket["id"].as_i64().unwrap();
    let (role, writer_agent, w) = writer_role(&app, false).await;

    // Each attack, and the SQLSTATE it must get (42501: insufficient privilege).
    let attacks: Vec<(String, &str)> = vec![
        ("ALTER TABLE tickets DISABLE TRIGGER ALL".to_string(), "42501"),
        ("ALTER TABLE tickets DISABLE TRIGGER tickets_30_change".to_string(), "42501"),
        ("ALTER TABLE ticket_tags DISABLE TRIGGER USER".to_string(), "42501"),
        ("DROP TRIGGER tickets_30_change ON tickets".to_string(), "42501"),
        ("ALTER TRIGGER tickets_30_change ON tickets RENAME TO x".to_string(), "42501"),
        ("CREATE OR REPLACE TRIGGER tickets_30_change BEFORE UPDATE ON tickets FOR EACH ROW EXECUTE FUNCTION ld_tickets_insert()".to_string(), "42501"),
        ("TRUNCATE ticket_events".to_string(), "42501"),
        ("TRUNCATE tickets CASCADE".to_string(), "42501"),
        ("TRUNCATE messages".to_string(), "42501"),
        (format!("DELETE FROM tickets WHERE id = {t}"), "42501"),
        (format!("DELETE FROM messages WHERE ticket_id = {t}"), "42501"),
        (format!("INSERT INTO ticket_events (ticket_id, version, kind, actor_agent_id, data) VALUES ({t}, 4, 'ticket.updated', NULL, '{{}}')"), "42501"),
        (format!("UPDATE ticket_events SET data = '{{}}' WHERE ticket_id = {t}"), "42501"),
        (format!("DELETE FROM ticket_events WHERE ticket_id = {t}"), "42501"),
        ("COPY ticket_events (ticket_id, version, kind, data) FROM STDIN".to_string(), "42501"),
        ("SELECT token_hash FROM agents".to_string(), "42501"),
        ("SELECT * FROM agents".to_string(), "42501"),
        ("UPDATE agents SET role = 'admin'".to_string(), "42501"),
        ("UPDATE agents SET token_hash = NULL".to_string(), "42501"),
        ("INSERT INTO agents (name, email, role) VALUES ('Eve', 'eve@example.com', 'admin')".to_string(), "42501"),
        ("DELETE FROM agents".to_string(), "42501"),
        ("INSERT INTO field_definitions (key, label, type) VALUES ('x', 'X', 'text')".to_string(), "42501"),
        ("UPDATE field_definitions SET type = 'number'".to_string(), "42501"),
        ("DELETE FROM field_definitions".to_string(), "42501"),
        (format!("UPDATE tickets SET child_changed = true WHERE id = {t}"), "42501"),
        (format!("UPDATE tickets SET updated_at = now() WHERE id = {t}"), "42501"),
        (format!("UPDATE tickets SET created_at = now() WHERE id = {t}"), "42501"),
        (format!("UPDATE tickets SET id = id + 1000 WHERE id = {t}"), "42501"),
        ("INSERT INTO tickets (id, subject) VALUES (999999, 'chosen id')".to_string(), "42501"),
        ("INSERT INTO tickets (subject, version) VALUES ('v', 7)".to_string(), "42501"),
        ("INSERT INTO tickets (subject, child_changed) VALUES ('v', true)".to_string(), "42501"),
        (format!("INSERT INTO messages (id, ticket_id, kind, author_agent_id, body) VALUES (1, {t}, 'note', {writer_agent}, 'x')"), "42501"),
        (format!("UPDATE messages SET body = 'edited' WHERE ticket_id = {t}"), "42501"),
        ("UPDATE ticket_tags SET tag = 'x'".to_string(), "42501"),
        ("SELECT setval('tickets_id_seq', 1)".to_string(), "42501"),
        ("SELECT setval('messages_id_seq', 1)".to_string(), "42501"),
        ("SELECT * FROM presence".to_string(), "42501"),
        ("SELECT * FROM drafts".to_string(), "42501"),
        ("SELECT * FROM writers".to_string(), "42501"),
        ("INSERT INTO writers (role_name, agent_id) VALUES ('x', 1)".to_string(), "42501"),
        (format!("INSERT INTO tag_batches (ticket_id, xact) VALUES ({t}, pg_current_xact_id())"), "42501"),
        ("SELECT * FROM rules_applied".to_string(), "42501"),
        ("UPDATE rules_applied SET sha256 = 'x'".to_string(), "42501"),
        ("SELECT * FROM refinery_schema_history".to_string(), "42501"),
        ("CREATE FUNCTION public.ld_actor(x int) RETURNS bigint LANGUAGE sql AS 'SELECT 1::bigint'".to_string(), "42501"),
        ("CREATE OR REPLACE FUNCTION ld_actor() RETURNS bigint LANGUAGE sql AS 'SELECT 1::bigint'".to_string(), "42501"),
        ("ALTER FUNCTION ld_emit(bigint, bigint, text, bigint, jsonb) SECURITY INVOKER".to_string(), "42501"),
        ("CREATE TABLE public.shadow (x int)".to_string(), "42501"),
        ("CREATE TEMP TABLE agents (id bigint, name text)".to_string(), "42501"),
        ("CREATE SCHEMA evil".to_string(), "42501"),
        ("CREATE INDEX ON tickets (subject)".to_string(), "42501"),
        ("COMMENT ON TABLE tickets IS 'x'".to_string(), "42501"),
        ("ALTER TABLE tickets ADD COLUMN x int".to_string(), "42501"),
        ("DROP TABLE ticket_events".to_string(), "42501"),
        ("SET ROLE livedesk_owner".to_string(), "42501"),
        ("SET SESSION AUTHORIZATION livedesk_owner".to_string(), "42501"),
        (format!("ALTER ROLE {role} SUPERUSER"), "42501"),
        (format!("GRANT livedesk_owner TO {role}"), "42501"),
        // The event bus's mode (issue 18): only the owner may switch it.
        ("UPDATE bus_settings SET mode = 'logical'".to_string(), "42501"),
        ("UPDATE bus_settings SET mode = 'notify'".to_string(), "42501"),
        ("DELETE FROM bus_settings".to_string(), "42501"),
        ("INSERT INTO bus_settings (id, mode) VALUES (2, 'logical')".to_string(), "42501"),
        ("SELECT ld_bus_set('logical', 'writer')".to_string(), "42501"),
        ("SELECT ld_bus_set('notify', 'writer')".to_string(), "42501"),
        ("ALTER PUBLICATION livedesk_bus ADD TABLE tickets".to_string(), "42501"),
        ("DROP PUBLICATION livedesk_bus".to_string(), "42501"),
        ("ALTER TABLE bus_settings DISABLE TRIGGER ALL".to_string(), "42501"),
        ("SELECT pg_create_logical_replication_slot('evil', 'pgoutput', true)".to_string(), "42501"),
        // Internal helpers: no EXECUTE (the catalog test below covers all).
        (format!("SELECT ld_bump_ticket({t})"), "42501"),
        (format!("SELECT ld_emit({t}, 4, 'ticket.updated', NULL, '{{}}')"), "42501"),
        (format!("SELECT ld_tags_changed({t}, ARRAY['x'], '{{}}', NULL)"), "42501"),
        (format!("SELECT ld_presence_set(gen_random_uuid(), 'k', 1, {t}, 1, 'viewing')"), "42501"),
        ("SELECT ld_put_field('x', 'X', 'text', NULL, 0)".to_string(), "42501"),
        ("SELECT ld_agent_add('Eve', 'eve@example.com', 'admin', sha256('x'))".to_string(), "42501"),
        ("SELECT ld_agent_by_token(sha256('x'))".to_string(), "42501"),
        ("SELECT ld_writer_add('eve', 'x', false)".to_string(), "42501"),
        ("SELECT pg_read_file('/etc/passwd')".to_string(), "42501"),
    ];
    for (sql, expected) in &attacks {
        let code = refused(&w, sql).await;
        assert_eq!(&code, expected, "{sql}");
    }
    let mode: String = app
        .sql()
        .await
        .query_one("SELECT mode FROM bus_settings", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(mode, "notify", "the writer could not switch the bus");

    // The round-1 bypass settings no longer change anything: a no-op stays
    // a no-op, a tag still writes its event, a field change keeps its rules.
    let before = version(&w, t).await;
    w.batch_execute(&format!(
        "BEGIN; SET LOCAL livedesk.internal_bump = '{t}'; \
         UPDATE tickets SET subject = subject WHERE id = {t}; COMMIT"
    ))
    .await
    .unwrap();
    assert_eq!(version(&w, t).await, before, "a no-op stays a no-op");
    w.batch_execute(&format!(
        "BEGIN; SET LOCAL livedesk.defer_tag_events = 'on'; \
         INSERT INTO ticket_tags (ticket_id, tag) VALUES ({t}, 'quiet'); COMMIT"
    ))
    .await
    .unwrap();
    assert_eq!(
        version(&w, t).await,
        before + 1,
        "the tag bumped the version"
    );
    let take = format!(
        "UPDATE tickets SET assignee_id = {alice} WHERE id = {t}",
        alice = alice.id
    );
    w.batch_execute(&take).await.unwrap();
    let steal = format!(
        "BEGIN; SET LOCAL livedesk.internal_bump = '{t}'; \
         UPDATE tickets SET assignee_id = {writer_agent}, status = 'open' WHERE id = {t}"
    );
    let code = refused(&w, &steal).await;
    assert_eq!(code, "LD002", "the assignee rule still holds");

    // The writer's own changes name its service agent.
    let sql = app.sql().await;
    let actors: Vec<Option<i64>> = sql
        .query(
            "SELECT actor_agent_id FROM ticket_events WHERE ticket_id = $1 AND version > $2 ORDER BY version",
            &[&t, &before],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(actors, vec![Some(writer_agent), Some(writer_agent)]);

    assert_logs_gapless(&app).await;
}

async fn version(client: &Client, t: i64) -> i64 {
    client
        .query_one("SELECT version FROM tickets WHERE id = $1", &[&t])
        .await
        .unwrap()
        .get(0)
}

/// The `ld_*` names a piece of documentation mentions.
fn ld_names(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("ld_"))
        .map(str::to_string)
        .collect()
}

/// Functions a writer may call: exactly those docs/direct-sql.md names
/// outside its last section, "Email functions", whose functions only mail
/// roles (livedesk_mailer) may call on top; enumerated from the catalog so
/// that a new helper is covered automatically.
#[tokio::test]
async fn a_writer_may_execute_exactly_the_documented_functions() {
    let app = TestApp::spawn().await;
    let (_, _, w) = writer_role(&app, false).await;
    let (_, _, r) = writer_role(&app, true).await;
    let (_, _, m) = common::mail_role(&app, "mail").await;
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/direct-sql.md"))
        .unwrap();
    let (for_writers, for_mailers) = doc
        .split_once("### Email functions")
        .expect("docs/direct-sql.md has a section \"Email functions\"");
    let mail_only: BTreeSet<String> = ld_names(for_mailers)
        .difference(&ld_names(for_writers))
        .cloned()
        .collect();
    assert!(mail_only.contains("ld_mail_sent"), "{mail_only:?}");
    let documented = ld_names(for_writers);
    let mailer_may: BTreeSet<String> = m
        .query(
            "SELECT DISTINCT p.proname::text FROM pg_proc p \
             WHERE p.pronamespace = 'public'::regnamespace AND has_function_privilege(p.oid, 'EXECUTE')",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        mailer_may,
        documented.union(&mail_only).cloned().collect(),
        "a mail role may execute the writers' functions and the email functions, nothing else"
    );
    let rows = w
        .query(
            "SELECT p.proname::text, p.oid::regprocedure::text, \
                    has_function_privilege(p.oid, 'EXECUTE'), p.prosecdef, \
                    coalesce(array_to_string(p.proconfig, ','), '') \
             FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace ORDER BY 2",
            &[],
        )
        .await
        .unwrap();
    assert!(rows.len() > 60, "only {} functions found", rows.len());
    let mut callable = BTreeSet::new();
    for row in &rows {
        let (name, signature, may): (String, String, bool) = (row.get(0), row.get(1), row.get(2));
        if may {
            callable.insert(name.clone());
            assert!(
                documented.contains(&name),
                "{signature} is executable by writers but not documented in docs/direct-sql.md"
            );
        }
        let secdef: bool = row.get(3);
        let config: String = row.get(4);
        if secdef {
            assert!(
                config.contains("search_path=pg_catalog, public, pg_temp"),
                "{signature} is SECURITY DEFINER without a pinned search_path: {config}"
            );
        }
    }
    for name in &documented {
        if rows.iter().any(|row| &row.get::<_, String>(0) == name) {
            assert!(
                callable.contains(name),
                "{name} is documented for writers but not executable by them"
            );
        }
    }
    // A reader may call nothing at all.
    let reader_may: i64 = r
        .query_one(
            "SELECT count(*) FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace \
             AND has_function_privilege(p.oid, 'EXECUTE')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(reader_may, 0, "functions a reader may execute");
    // Every trigger function runs as the owner with a pinned search_path.
    let loose: Vec<String> = w
        .query(
            "SELECT DISTINCT p.oid::regprocedure::text FROM pg_trigger g JOIN pg_proc p ON p.oid = g.tgfoid \
             WHERE NOT g.tgisinternal AND (NOT p.prosecdef OR p.proconfig IS NULL)",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        loose.is_empty(),
        "trigger functions that are not SECURITY DEFINER with a pinned search_path: {loose:?}"
    );
}

#[tokio::test]
async fn a_reader_can_read_and_nothing_else() {
    let app = TestApp::spawn().await;
    let (_, token) = app.agent("Alice", "agent").await;
    let t = app.ticket(&token, "Refund").await["id"].as_i64().unwrap();
    let (_, _, r) = writer_role(&app, true).await;
    for sql in [
        "SELECT id, subject, version FROM tickets",
        "SELECT * FROM messages",
        "SELECT * FROM ticket_events",
        "SELECT * FROM ticket_tags",
        "SELECT * FROM customers",
        "SELECT * FROM field_definitions",
        "SELECT id, name, email, avatar_url, role FROM agents",
        "LISTEN livedesk_events",
    ] {
        r.batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    for sql in [
        "INSERT INTO tickets (subject) VALUES ('x')".to_string(),
        format!("UPDATE tickets SET status = 'open' WHERE id = {t}"),
        format!("INSERT INTO messages (ticket_id, kind, author_agent_id, body) VALUES ({t}, 'note', 1, 'x')"),
        format!("INSERT INTO ticket_tags (ticket_id, tag) VALUES ({t}, 'x')"),
        format!("DELETE FROM ticket_tags WHERE ticket_id = {t}"),
        "INSERT INTO customers (email) VALUES ('c@example.com')".to_string(),
        "SELECT ld_create_ticket(NULL, 'x', 'email', NULL, NULL, NULL)".to_string(),
        format!("SELECT ld_change_tags({t}, NULL, ARRAY['x'], NULL)"),
        format!("SELECT ld_get_ticket({t})"),
        "SELECT token_hash FROM agents".to_string(),
    ] {
        assert_eq!(refused(&r, &sql).await, "42501", "{sql}");
    }
    assert_logs_gapless(&app).await;
}

/// NOTIFY needs no right in PostgreSQL, so a writer can send a forged
/// notification: it must reach no client as an event, and must not make the
/// server believe in versions that do not exist.
#[tokio::test]
async fn a_forged_notify_is_harmless() {
    let app = TestApp::spawn().await;
    let common::Watched {
        ticket: t,
        version: v,
        mut ws,
        writer: w,
    } = common::watched_ticket(&app, "w").await;
    for payload in [
        json!({"ticket_id": t, "version": v + 3}).to_string(),
        json!({"ticket_id": t, "version": -1}).to_string(),
        json!({"ticket_id": 987654321, "version": 1}).to_string(),
        "not json".to_string(),
        "x".repeat(7000),
    ] {
        w.execute("SELECT pg_notify('livedesk_events', $1)", &[&payload])
            .await
            .unwrap();
        w.execute("SELECT pg_notify('livedesk_presence', $1)", &[&payload])
            .await
            .unwrap();
    }
    // Nothing but presence may arrive for the forged notifications.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    while let Some(frame) = ws
        .next_within(deadline.saturating_duration_since(tokio::time::Instant::now()))
        .await
    {
        assert_eq!(frame["type"], "presence", "unexpected frame {frame}");
    }
    // The next real change arrives as the next version, with no reset.
    w.batch_execute(&format!(
        "UPDATE tickets SET priority = 'high' WHERE id = {t}"
    ))
    .await
    .unwrap();
    let events = ws.events(t, 1, Duration::from_secs(5)).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["version"], v + 1);
    assert_logs_gapless(&app).await;
}

/// `livedesk writer add` end to end against DATABASE_URL: the printed URL
/// logs in as the new role, whose writes are attributed to its agent.
#[tokio::test]
async fn writer_cli_prints_a_working_connection_string() {
    let app = TestApp::spawn().await;
    let admin_url = format!(
        "host={} port={} user=livedesk dbname={}",
        cluster().socket_dir.display(),
        cluster().port,
        app.dbname
    );
    let name = format!("cli{}", std::process::id());
    let run = |args: Vec<String>| {
        let url = admin_url.clone();
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_livedesk"))
                .args(&args)
                .env("DATABASE_URL", url)
                .env("RUST_LOG", "warn")
                .output()
                .await
                .unwrap()
        }
    };
    let out = run(vec!["writer".into(), "add".into(), name.clone()]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let url = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(url.starts_with(&format!("postgresql://{name}:")), "{url}");
    let (client, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(connection);
    let row = client
        .query_one(
            "INSERT INTO tickets (subject, channel) VALUES ('From the gateway', 'email') RETURNING id",
            &[],
        )
        .await
        .unwrap();
    let t: i64 = row.get(0);
    let actor: String = app
        .sql()
        .await
        .query_one(
            "SELECT a.name FROM ticket_events e JOIN agents a ON a.id = e.actor_agent_id \
             WHERE e.ticket_id = $1 AND e.version = 1",
            &[&t],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(actor, name);

    let mailer = format!("climail{}", std::process::id());
    let out = run(vec![
        "writer".into(),
        "add".into(),
        mailer.clone(),
        "--mail".into(),
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = run(vec!["writer".into(), "list".into()]).await;
    let list = String::from_utf8_lossy(&list.stdout).to_string();
    assert!(list.contains(&format!("{name}\twriter\t")), "{list}");
    assert!(list.contains(&format!("{mailer}\twriter+mail\t")), "{list}");
    let again = run(vec!["writer".into(), "add".into(), name.clone()]).await;
    assert!(
        !again.status.success(),
        "adding the same writer twice must fail"
    );
    let removed = run(vec!["writer".into(), "remove".into(), name.clone()]).await;
    assert!(
        removed.status.success(),
        "{}",
        String::from_utf8_lossy(&removed.stderr)
    );
    assert!(
        tokio_postgres::connect(&url, NoTls).await.is_err(),
        "a removed writer cannot log in"
    );
}

/// A writer cannot make the mail gateway skip or fake a reply (V12): another
/// role's feed consumer is not its to move, and the mail functions belong to
/// livedesk_mailer. Tried with every right a writer holds.
#[tokio::test]
async fn a_writer_cannot_move_another_consumer_or_speak_for_the_mail_gateway() {
    let app = TestApp::spawn().await;
    let (_, _, m) = common::mail_role(&app, "m").await;
    let (_, _, w) = writer_role(&app, false).await;

    m.query_one("SELECT ld_feed_start('mailer', 'now')", &[])
        .await
        .unwrap();
    let t: i64 = w
        .query_one(
            "INSERT INTO tickets (subject, channel) VALUES ('Refund', 'email') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // Reading the feed is open to every writer (the events are theirs to
    // read anyway); wait until the ticket's event is in it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while w
        .query("SELECT 1 FROM ld_feed_read('mailer', 10)", &[])
        .await
        .unwrap()
        .is_empty()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the feed never caught up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The attacker: no acknowledging, no claiming, no mail function.
    let ack = format!("SELECT ld_feed_ack('mailer', {t}, 1)");
    assert_eq!(refused(&w, &ack).await, "42501");
    assert_eq!(
        refused(&w, "SELECT ld_feed_start('mailer', 'beginning')").await,
        "42501"
    );
    for sql in [
        "SELECT ld_mail_sent(1)",
        "SELECT ld_mail_failed(1, 'no', true)",
        "SELECT ld_mail_prepare(1, 'example.com')",
        "SELECT ld_mail_bounced('a@example.com', 'b@example.com', 'no')",
        "SELECT ld_mail_receive('a@example.com', '{}', 'c@example.com', 'C', 'S', 'B')",
    ] {
        assert_eq!(refused(&w, sql).await, "42501", "{sql}");
    }
    let position: serde_json::Value = m
        .query_one("SELECT ld_feed_position('mailer')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        position["ticket_id"],
        json!(-1),
        "the attacker moved nothing"
    );

    // The mail role itself: it acknowledges, and may call the mail functions.
    m.query_one(&ack, &[]).await.unwrap();
    let may: bool = m
        .query_one(
            "SELECT has_function_privilege('ld_mail_sent(bigint)', 'EXECUTE')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(may, "a livedesk_mailer member may mark a reply sent");

    // The mail sender's consumer is shared by the mail roles and the owner
    // (`serve --mail` and `mail send` take turns), still not by writers.
    app.sql()
        .await
        .query_one("SELECT ld_mail_feed_start('outbox', 'now')", &[])
        .await
        .unwrap();
    m.query_one("SELECT ld_mail_feed_start('outbox', 'now')", &[])
        .await
        .unwrap();
    let ack_outbox = format!("SELECT ld_feed_ack('outbox', {t}, 1)");
    assert_eq!(refused(&w, &ack_outbox).await, "42501");
    assert_eq!(
        refused(&w, "SELECT ld_mail_feed_start('outbox', 'now')").await,
        "42501"
    );
    m.query_one(&ack_outbox, &[]).await.unwrap();
    // ... and one a writer squatted first is refused to the mail role, loudly.
    w.query_one("SELECT ld_feed_start('squatted', 'now')", &[])
        .await
        .unwrap();
    assert_eq!(
        refused(&m, "SELECT ld_mail_feed_start('squatted', 'now')").await,
        "42501"
    );

    // A consumer made before V12 belongs to nobody: nobody acknowledges for
    // it until a role starts it again, which claims it.
    app.sql()
        .await
        .execute(
            "INSERT INTO feed_consumers (name, xid, ticket_id, version) VALUES ('legacy', '0', -1, -1)",
            &[],
        )
        .await
        .unwrap();
    let ack_legacy = format!("SELECT ld_feed_ack('legacy', {t}, 1)");
    assert_eq!(refused(&m, &ack_legacy).await, "42501");
    m.query_one("SELECT ld_feed_start('legacy', 'now')", &[])
        .await
        .unwrap();
    m.query_one(&ack_legacy, &[]).await.unwrap();
    assert_eq!(refused(&w, &ack_legacy).await, "42501");
}

/// A data folder whose schema the superuser made (round 1 migrated and
/// served as the superuser) keeps starting: the bootstrap hands every object
/// to the owner, which then migrates and serves without superuser rights.
#[tokio::test]
async fn a_superuser_owned_schema_is_handed_to_the_owner() {
    use livedesk::db::embedded::{EmbeddedOptions, EmbeddedPostgres};
    use livedesk::db::{bootstrap, migrations};
    let dir = tempfile::Builder::new()
        .prefix("livedesk-handover-")
        .tempdir_in("/tmp")
        .unwrap();
    let mut options = EmbeddedOptions::new(dir.path());
    options.unsafe_fast = true;
    let pg = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(options))
        .await
        .unwrap()
        .unwrap();
    // The old way: everything created by the superuser.
    let admin = Database::new(pg.admin_config(), 1).unwrap();
    migrations::run(&admin).await.unwrap();
    admin
        .client()
        .await
        .unwrap()
        .batch_execute("INSERT INTO tickets (subject) VALUES ('from round 1')")
        .await
        .unwrap();
    // The new start.
    bootstrap::embedded(&admin).await.unwrap();
    admin.pool().close();
    let db = Database::new(pg.config(), 2).unwrap();
    migrations::run(&db).await.unwrap();
    let client = db.client().await.unwrap();
    let row = client
        .query_one(
            "SELECT rolsuper, (SELECT count(*) FROM pg_class c \
                 WHERE c.relnamespace = 'public'::regnamespace AND c.relowner <> r.oid), \
                    (SELECT count(*) FROM pg_proc p \
                 WHERE p.pronamespace = 'public'::regnamespace AND p.proowner <> r.oid) \
             FROM pg_roles r WHERE r.rolname = current_user",
            &[],
        )
        .await
        .unwrap();
    let (superuser, foreign_relations, foreign_functions): (bool, i64, i64) =
        (row.get(0), row.get(1), row.get(2));
    assert!(!superuser, "the server's role is not a superuser");
    assert_eq!(
        (foreign_relations, foreign_functions),
        (0, 0),
        "objects not owned by the owner"
    );
    // The owner works the old ticket through the rules.
    client
        .batch_execute(
            "UPDATE tickets SET status = 'open' WHERE subject = 'from round 1'; \
             SELECT ld_change_tags(id, NULL, ARRAY['kept'], NULL) FROM tickets",
        )
        .await
        .unwrap();
    let version: i64 = client
        .query_one("SELECT version FROM tickets", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, 3);
    drop(client);
    db.pool().close();
    tokio::task::spawn_blocking(move || drop(pg)).await.unwrap();
}

/// The triggers read a writer role's agent from `ld_writer_agent`, a
/// function every change to `writers` writes again. Two transactions that
/// change `writers` at once both commit: the second waits for the first,
/// then writes a function that knows both roles.
#[tokio::test]
async fn writers_added_at_once_both_take_effect() {
    let app = TestApp::spawn().await;
    let (alice, _) = app.agent("Alice", "agent").await;
    let (bob, _) = app.agent("Bob", "agent").await;
    let first = app.sql().await;
    let second = app.sql().await;
    first
        .batch_execute(&format!(
            "BEGIN; INSERT INTO writers (role_name, agent_id) VALUES ('at_once_one', {})",
            alice.id
        ))
        .await
        .unwrap();
    let sql = format!(
        "INSERT INTO writers (role_name, agent_id) VALUES ('at_once_two', {})",
        bob.id
    );
    let pending = tokio::spawn(async move { second.batch_execute(&sql).await.map(|_| second) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pending.is_finished(), "the second waits for the first");
    first.batch_execute("COMMIT").await.unwrap();
    let second = pending.await.unwrap().unwrap();
    let row = second
        .query_one(
            "SELECT ld_writer_agent('at_once_one'), ld_writer_agent('at_once_two')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, Option<i64>>(0), row.get::<_, Option<i64>>(1)),
        (Some(alice.id), Some(bob.id))
    );
}

/// Applying the rules locks `writers` and `bus_settings` first, and later
/// other tables (a trigger on `agents`) and the bus row. `livedesk writer
/// add` (agents, then writers) and a starting process's `ld_bus_set` (the
/// row, then the table) lock their table first too, so while an apply
/// runs they wait for it instead of deadlocking with it (40P01).
#[tokio::test]
async fn a_writer_add_or_a_bus_switch_waits_for_an_apply_without_deadlock() {
    let app = TestApp::spawn().await;
    let apply = app.sql().await;
    // `livedesk writer add` runs as a role that may create roles.
    let writer_add = common::connect_as(&app.dbname, "livedesk").await;
    let bus_set = app.sql().await;
    // What an apply holds from its first statement (sql/rules/00_helpers.sql).
    apply
        .batch_execute("BEGIN; LOCK TABLE writers, bus_settings IN SHARE ROW EXCLUSIVE MODE")
        .await
        .unwrap();
    // Roles are cluster-wide: a name no other test uses.
    let added = tokio::spawn(async move {
        writer_add
            .query_one(
                "SELECT ld_writer_add('apply_wait_writer', 'not-a-verifier', false)::text",
                &[],
            )
            .await
            .map(|_| ())
    });
    let switched = tokio::spawn(async move {
        bus_set
            .query_one("SELECT ld_bus_set('notify', 'test')", &[])
            .await
            .map(|_| ())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!added.is_finished() && !switched.is_finished(), "both wait");
    // What the apply takes later: a trigger on agents, the bus row.
    apply
        .batch_execute(
            "LOCK TABLE agents IN SHARE ROW EXCLUSIVE MODE; \
             UPDATE bus_settings SET mode = mode WHERE id = 1; COMMIT",
        )
        .await
        .unwrap();
    added.await.unwrap().unwrap();
    switched.await.unwrap().unwrap();
}

/// The same with a real apply of every rule file (what a process does when
/// it starts a new release), raced by what runs beside it in production: a
/// writer role changing its ticket, `livedesk writer add` and `remove`, and
/// a starting process's bus switch, all in loops for as long as the apply
/// runs, several applies in a row. Nothing may fail (a deadlock, 40P01, is a
/// failure), and afterwards every role maps to its agent and the writer's
/// changes are all in the log, each naming its agent.
#[tokio::test]
async fn real_rule_applies_raced_by_writers_role_changes_and_bus_switches() {
    use livedesk::db::migrations;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let app = TestApp::spawn().await;
    let (_, writer_agent, writer) = writer_role(&app, false).await;
    let ticket: i64 = writer
        .query_one(
            "INSERT INTO tickets (subject) VALUES ('raced by applies') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let owner = app.sql().await;
    let admin = Database::new(cluster().admin_config(&app.dbname), 2).unwrap();
    let applying = Arc::new(AtomicBool::new(true));
    let changes = tokio::spawn({
        let applying = applying.clone();
        async move {
            let mut made = 0i64;
            while applying.load(Ordering::Acquire) {
                writer
                    .execute(
                        "UPDATE tickets SET subject = $2 WHERE id = $1",
                        &[&ticket, &format!("change {made}")],
                    )
                    .await
                    .unwrap_or_else(|e| {
                        panic!("a writer's change failed during an apply: {}", why(&e))
                    });
                made += 1;
            }
            made
        }
    });
    let roles = tokio::spawn({
        let (applying, admin) = (applying.clone(), admin.clone());
        let prefix = format!("apply_race_{}", std::process::id());
        async move {
            let mut kept = Vec::new();
            let mut n = 0;
            while applying.load(Ordering::Acquire) {
                let name = format!("{prefix}_{n}");
                let (added, _) = livedesk::domain::writers::add(&admin, &name, false)
                    .await
                    .unwrap_or_else(|e| panic!("writer add failed during an apply: {e:?}"));
                // Every other one is removed again.
                if n % 2 == 0 {
                    kept.push((name, added.agent.id));
                } else {
                    livedesk::domain::writers::remove(&admin, &name)
                        .await
                        .unwrap_or_else(|e| panic!("writer remove failed during an apply: {e:?}"));
                }
                n += 1;
            }
            kept
        }
    });
    let switches = tokio::spawn({
        let applying = applying.clone();
        let bus = app.sql().await;
        async move {
            let mut made = 0;
            while applying.load(Ordering::Acquire) {
                bus.query_one("SELECT ld_bus_set('notify', 'test')", &[])
                    .await
                    .unwrap_or_else(|e| panic!("a bus switch failed during an apply: {}", why(&e)));
                made += 1;
            }
            made
        }
    });
    for _ in 0..4 {
        owner
            .batch_execute("UPDATE rules_applied SET sha256 = 'an older release'")
            .await
            .unwrap();
        let report = migrations::run(&app.db).await.unwrap();
        assert!(report.rules, "the rules were applied again");
    }
    applying.store(false, Ordering::Release);
    let made = changes.await.unwrap();
    let kept = roles.await.unwrap();
    let switched = switches.await.unwrap();
    assert!(
        made > 0 && kept.len() > 1 && switched > 0,
        "each ran during the applies: {made} changes, {} roles kept, {switched} switches",
        kept.len()
    );
    for (name, agent) in &kept {
        let mapped: Option<i64> = owner
            .query_one("SELECT ld_writer_agent($1)", &[name])
            .await
            .unwrap()
            .get(0);
        assert_eq!(mapped, Some(*agent), "{name} maps to its agent");
    }
    let row = owner
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE actor_agent_id = $2), \
                    max(version) - min(version) + 1 \
             FROM ticket_events WHERE ticket_id = $1 AND kind = 'ticket.updated'",
            &[&ticket, &writer_agent],
        )
        .await
        .unwrap();
    let (events, named, span): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        (events, named, span),
        (made, made, made),
        "every change logged once, gapless, naming the writer's agent"
    );
    for (name, _) in kept {
        livedesk::domain::writers::remove(&admin, &name)
            .await
            .unwrap();
    }
    admin.pool().close();
}

/// A statement's SQLSTATE and PostgreSQL's message, for a failure's panic.
fn why(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// A writer cannot take advisory locks, so it cannot hold livedesk's turns
/// (the migrations' key, the mail sender's, a writer change's) for ever; the
/// mail gateway's role keeps `pg_try_advisory_lock` for its sender's turn,
/// and anyone may still unlock (only their own).
#[tokio::test]
async fn a_writer_cannot_take_advisory_locks() {
    let app = TestApp::spawn().await;
    let (_, _, writer) = writer_role(&app, false).await;
    for function in [
        "pg_advisory_lock",
        "pg_advisory_lock_shared",
        "pg_try_advisory_lock",
        "pg_try_advisory_lock_shared",
        "pg_advisory_xact_lock",
        "pg_advisory_xact_lock_shared",
        "pg_try_advisory_xact_lock",
        "pg_try_advisory_xact_lock_shared",
    ] {
        // The migrations' key, and the two-key form.
        for args in ["x'6c646d696772'::bigint", "1, 2"] {
            let call = format!("BEGIN; SELECT {function}({args})");
            assert_eq!(refused(&writer, &call).await, "42501", "{call}");
        }
    }
    writer
        .batch_execute("SELECT pg_advisory_unlock_all()")
        .await
        .unwrap();
    let (_, _, mailer) = common::mail_role(&app, "lockm").await;
    let taken: bool = mailer
        .query_one("SELECT pg_try_advisory_lock(x'6c646d61696c'::bigint)", &[])
        .await
        .unwrap()
        .get(0);
    assert!(taken, "the mail gateway takes the sender's turn");
    // Which is how a real one stands by: the server's sender waits for it.
    let owner = app.sql().await;
    let free: bool = owner
        .query_one("SELECT pg_try_advisory_lock(x'6c646d61696c'::bigint)", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!free, "the owner sees the turn taken");
}
