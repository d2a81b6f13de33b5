//! The web console end to end, in a real browser (Debian's Chromium driven by
//! Playwright, `tests/e2e/console.mjs`) against a real server and database:
//! two agents on one ticket — presence (viewing, typing a reply / writing a
//! note, has a draft, idle), a live note, the duplicate-reply race, a reply
//! held because a colleague's reply or a customer message arrived while
//! writing, drafts kept in the database (reload, ticket switch, another
//! device), concurrent tag edits, the Take and handover races, direct SQL
//! writes (subject, channel and customer, an assignment that notifies, a
//! permanent hole in the event log), history, Load earlier, close code 4001
//! and axe-core scans. Screenshots go to `<target>/e2e-screenshots/`. See
//! docs/browser-tests.md.
//!
//! Also here, because it needs Node.js too: the client package's own tests
//! (`clients/js/test/`, Node's test runner) against a real server, with a
//! small control endpoint through which they ask this side for what only it
//! can do (a hole in the event log, disabling an agent, a server restart).
//!
//! Ignored by default (they need Chromium, Node.js and `npm ci` in tests/e2e
//! and clients/js); CI runs them with `--include-ignored`. When run, a
//! missing browser or module fails the test: it never passes silently.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::TestApp;
use livedesk::domain::agents;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

/// Why Node.js cannot run here, if it cannot (both ignored tests need it).
fn node_missing() -> Option<String> {
    let node_ok = std::process::Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    (!node_ok).then(|| {
        "`node` is not on PATH — install Node.js >= 20 (`apt-get install nodejs npm`)".into()
    })
}

/// Where the browser is expected (Debian's package `chromium`); `CHROMIUM` overrides.
const DEFAULT_CHROMIUM: &str = "/usr/bin/chromium";
/// The whole browser run, including Chromium's start.
const SCRIPT_LIMIT: Duration = Duration::from_secs(150);

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `<CARGO_TARGET_DIR or target>/e2e-screenshots`, emptied.
fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| {
            if p.is_absolute() {
                p
            } else {
                manifest_dir().join(p)
            }
        })
        .unwrap_or_else(|| manifest_dir().join("target"));
    let dir = target.join("e2e-screenshots");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the screenshot folder");
    dir
}

/// Everything the browser test needs, or a panic that says how to get it.
fn prerequisites() -> (PathBuf, PathBuf) {
    let e2e = manifest_dir().join("tests/e2e");
    let chromium =
        PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| DEFAULT_CHROMIUM.into()));
    let mut missing = Vec::new();
    if !chromium.is_file() {
        missing.push(format!(
            "Chromium is not at {} — install it with `apt-get install chromium` \
             (or point CHROMIUM at a Chromium binary)",
            chromium.display()
        ));
    }
    if !e2e
        .join("node_modules/playwright-core/package.json")
        .is_file()
    {
        missing.push(format!(
            "{}/node_modules/playwright-core is missing — run `cd tests/e2e && npm ci` \
             (needs Node.js >= 20 and npm: `apt-get install nodejs npm`)",
            e2e.display()
        ));
    }
    missing.extend(node_missing());
    assert!(
        missing.is_empty(),
        "the browser tests cannot run (see docs/browser-tests.md):\n  - {}",
        missing.join("\n  - ")
    );
    (chromium, e2e)
}

/// PUT a custom field definition as an admin.
async fn put_field(app: &TestApp, admin: &str, key: &str, def: Value) {
    let (status, body) = common::send(
        app.req(reqwest::Method::PUT, &format!("/api/fields/{key}"), admin)
            .json(&def),
    )
    .await;
    assert_eq!(status, 200, "PUT /api/fields/{key}: {body}");
}

/// What the script printed (stdout and stderr, interleaved by arrival).
#[derive(Default)]
struct Transcript(Vec<String>);

impl Transcript {
    fn text(&self) -> String {
        self.0.join("\n")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium and tests/e2e/node_modules: run with cargo test -- --include-ignored (see docs/browser-tests.md)"]
async fn two_agents_work_one_ticket_in_the_web_console() {
    let (chromium, e2e) = prerequisites();
    let shots = screenshot_dir();

    // ------------------------------------------------------------ the data
    let app = TestApp::spawn().await;
    // Full names (the harness's `agent()` derives the e-mail from the name).
    let (alice, token_a) = agents::add(&app.db, "Alice Archer", "alice@e2e.test", "agent")
        .await
        .unwrap();
    let (bob, token_b) = agents::add(&app.db, "Bob Baker", "bob@e2e.test", "agent")
        .await
        .unwrap();
    let (carol, token_c) = agents::add(&app.db, "Carol Chen", "carol@e2e.test", "agent")
        .await
        .unwrap();
    // Dana logs in with a one-time link (a session of her own) and, in a
    // second tab, with her API token: "Log out" in the first ends only it.
    let (dana, token_d) = agents::add(&app.db, "Dana Dunn", "dana@e2e.test", "agent")
        .await
        .unwrap();
    let login_d = agents::login_link(&app.db, dana.id, std::time::Duration::from_secs(600))
        .await
        .unwrap();
    let (token_a, token_b) = (token_a.0, token_b.0);
    let (_, admin) = app.agent("Root", "admin").await;
    let (_, gateway) = app.agent("Gateway", "service").await;
    put_field(
        &app,
        &admin,
        "plan",
        json!({"label": "Plan", "type": "select", "options": ["free", "pro", "enterprise"]}),
    )
    .await;
    // An older ticket, so the inbox is not a list of one.
    let printer = app.ticket(&token_a, "Printer on fire").await["id"]
        .as_i64()
        .unwrap();
    // A long thread (60 notes), for "Load earlier".
    let long = app.ticket(&token_a, "Long thread").await["id"]
        .as_i64()
        .unwrap();
    for n in 1..=60 {
        let (status, body) = app
            .post(
                &format!("/api/tickets/{long}/messages"),
                &token_a,
                json!({"kind": "note", "body": format!("note {n}")}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, ticket) = app
        .post(
            "/api/tickets",
            &gateway,
            json!({"subject": "Refund for order 1042", "channel": "email",
                   "customer": {"email": "eve@example.com", "name": "Eve Evans"},
                   "body": "Hello, I was charged twice for order 1042. Can I get a refund?"}),
        )
        .await;
    assert_eq!(status, 201, "{ticket}");
    let id = ticket["id"].as_i64().unwrap();
    let (status, body) = app
        .post(
            &format!("/api/tickets/{id}/tags"),
            &admin,
            json!({"add": ["billing", "refund"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app
        .patch(
            &format!("/api/tickets/{id}"),
            &admin,
            json!({"changes": {"custom_fields.plan": {"from": null, "to": "pro"}}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // ------------------------------------------------------------ the browser run
    let mut child = Command::new("node")
        .arg(e2e.join("console.mjs"))
        .current_dir(&e2e)
        .env("BASE", &app.base)
        .env("TICKET", id.to_string())
        .env("TOKEN_A", &token_a)
        .env("TOKEN_B", &token_b)
        .env("TOKEN_SERVICE", &gateway)
        .env("NAME_A", &alice.name)
        .env("NAME_B", &bob.name)
        .env("AGENT_A", alice.id.to_string())
        .env("AGENT_B", bob.id.to_string())
        .env("NAME_C", &carol.name)
        .env("AGENT_C", carol.id.to_string())
        .env("TOKEN_C", &token_c.0)
        .env("TOKEN_D", &token_d.0)
        .env("LOGIN_D", &login_d.0)
        .env("SCREENSHOT_DIR", &shots)
        .env("PRINTER_TICKET", printer.to_string())
        .env("LONG_TICKET", long.to_string())
        .env("CHROMIUM", &chromium)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start node tests/e2e/console.mjs");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();

    let sql = app.sql().await;
    let admin_sql = app.admin_sql().await;
    let mut hole_subject: Option<String> = None;
    let mut transcript = Transcript::default();
    let mut result: Option<Value> = None;
    let mut sql_subject: Option<String> = None;
    let run = async {
        let (mut out_open, mut err_open) = (true, true);
        while out_open || err_open {
            tokio::select! {
                line = stdout.next_line(), if out_open => match line.unwrap() {
                    None => out_open = false,
                    Some(line) => {
                        if let Some(subject) = line.strip_prefix("SQL_UPDATE_SUBJECT ") {
                            // A direct write, as another service would do it: no API.
                            let n = sql
                                .execute(
                                    "UPDATE tickets SET subject = $1 WHERE id = $2",
                                    &[&subject, &id],
                                )
                                .await
                                .expect("the direct SQL update");
                            assert_eq!(n, 1);
                            sql_subject = Some(subject.to_string());
                            stdin.write_all(b"SQL_DONE\n").await.unwrap();
                            stdin.flush().await.unwrap();
                        }
                        if let Some(subject) = line.strip_prefix("SQL_HOLE ") {
                            // A permanent gap: as the superuser, with the
                            // triggers off, the ticket jumps two versions and
                            // only the second has an event (what a restore or a
                            // writer bypassing the rules could leave behind).
                            make_hole(&admin_sql, id, subject).await;
                            hole_subject = Some(subject.to_string());
                            stdin.write_all(b"SQL_DONE\n").await.unwrap();
                            stdin.flush().await.unwrap();
                        }
                        if line == "DISABLE_CAROL" {
                            // `livedesk agent disable carol@e2e.test`, as the CLI does it.
                            agents::set_disabled(&app.db, "carol@e2e.test", true)
                                .await
                                .expect("disable Carol");
                            stdin.write_all(b"SQL_DONE\n").await.unwrap();
                            stdin.flush().await.unwrap();
                        }
                        if line == "SQL_CHANNEL_CUSTOMER" {
                            // Another service moves the ticket to chat with a new customer.
                            let n = sql
                                .execute(
                                    "WITH c AS (INSERT INTO customers (name, email) \
                                     VALUES ('Frank Finch', 'frank@example.com') RETURNING id) \
                                     UPDATE tickets SET channel = 'chat', \
                                     customer_id = (SELECT id FROM c) WHERE id = $1",
                                    &[&id],
                                )
                                .await
                                .expect("the direct SQL channel and customer change");
                            assert_eq!(n, 1);
                            stdin.write_all(b"SQL_DONE\n").await.unwrap();
                            stdin.flush().await.unwrap();
                        }
                        if let Some(args) = line.strip_prefix("SQL_ASSIGN ") {
                            // An assignment by another service, straight in SQL.
                            let ids: Vec<i64> =
                                args.split(' ').filter_map(|x| x.parse().ok()).collect();
                            let n = sql
                                .execute(
                                    "UPDATE tickets SET assignee_id = $2 WHERE id = $1",
                                    &[&ids[0], &ids[1]],
                                )
                                .await
                                .expect("the direct SQL assignment");
                            assert_eq!(n, 1);
                            stdin.write_all(b"SQL_DONE\n").await.unwrap();
                            stdin.flush().await.unwrap();
                        }
                        if let Some(json) = line.strip_prefix("RESULT ") {
                            result = serde_json::from_str(json).ok();
                        }
                        transcript.0.push(line);
                    }
                },
                line = stderr.next_line(), if err_open => match line.unwrap() {
                    None => err_open = false,
                    Some(line) => transcript.0.push(format!("stderr: {line}")),
                },
            }
        }
        child.wait().await.unwrap()
    };
    let status = tokio::time::timeout(SCRIPT_LIMIT, run).await;
    let output = transcript.text();
    let status = match status {
        Ok(status) => status,
        Err(_) => panic!(
            "the browser script did not finish within {SCRIPT_LIMIT:?}; its output so far:\n{output}"
        ),
    };
    assert!(
        status.success(),
        "the browser script failed ({status}); screenshots in {}; its output:\n{output}",
        shots.display()
    );
    let result = result
        .unwrap_or_else(|| panic!("the script printed no RESULT line; its output:\n{output}"));

    // ------------------------------------------------------------ the database agrees
    let (status, full) = app.get(&format!("/api/tickets/{id}"), &token_a).await;
    assert_eq!(status, 200, "{full}");
    let t = &full["ticket"];
    assert!(sql_subject.is_some(), "{output}");
    assert_eq!(
        Some(t["subject"].as_str().unwrap_or_default()),
        hole_subject.as_deref(),
        "{output}"
    );
    assert_eq!(result["subject"], t["subject"], "{output}");
    assert_eq!(t["tags"], json!(["refund", "vip"]), "{output}");
    assert_eq!(result["tags"], t["tags"], "{output}");
    // After the Take race, the handover race: Carol (the owner's handover
    // won) or the other agent ("Take over" won), as the browsers showed.
    let take_winner = match result["take_winner"].as_str() {
        Some("A") => alice.id,
        Some("B") => bob.id,
        other => panic!("no take winner ({other:?}); output:\n{output}"),
    };
    let take_loser = if take_winner == alice.id {
        bob.id
    } else {
        alice.id
    };
    let assignee = result["assignee"].as_i64();
    assert!(
        assignee == Some(carol.id) || assignee == Some(take_loser),
        "{assignee:?}; output:\n{output}"
    );
    assert_eq!(t["assignee"]["id"], json!(assignee), "{output}");
    assert_eq!(t["status"], "open", "{output}");
    assert_eq!(t["channel"], "chat", "{output}");
    assert_eq!(t["customer"]["name"], "Frank Finch", "{output}");
    let (_, printer_full) = app.get(&format!("/api/tickets/{printer}"), &token_a).await;
    assert_eq!(printer_full["ticket"]["assignee"]["id"], bob.id, "{output}");
    let messages = full["messages"].as_array().unwrap();
    let kinds: Vec<&str> = messages
        .iter()
        .map(|m| m["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "customer", "note", "reply", "reply", "reply", "customer", "reply", "customer",
            "reply", "reply", "customer", "customer", "reply", "note", "reply"
        ],
        "{output}"
    );
    let replier = match result["reply_winner"].as_str() {
        Some("A") => alice.id,
        Some("B") => bob.id,
        other => panic!("no reply winner ({other:?}); output:\n{output}"),
    };
    assert_eq!(messages[2]["author"]["id"], replier, "{output}");
    assert_eq!(messages[1]["author"]["id"], alice.id, "the note is A's");
    // The held duplicate: A's reply, then B's "Send anyway", then B's reply
    // after the customer's message was acknowledged.
    assert_eq!(messages[3]["author"]["id"], alice.id, "{output}");
    assert_eq!(messages[4]["author"]["id"], bob.id, "{output}");
    assert_eq!(messages[6]["author"]["id"], bob.id, "{output}");
    // The customer's second message, acknowledged by scrolling, and B's reply.
    assert_eq!(messages[8]["author"]["id"], bob.id, "{output}");
    // A held send shows everything unseen: A's reply, two customer
    // messages, B's reply sent anyway; then A's note whose answer was lost.
    assert_eq!(messages[9]["author"]["id"], alice.id, "{output}");
    assert_eq!(messages[12]["author"]["id"], bob.id, "{output}");
    assert_eq!(messages[13]["author"]["id"], alice.id, "{output}");
    // A's draft, restored after a reload, a ticket switch and on another device, then sent.
    assert_eq!(messages[14]["author"]["id"], alice.id, "{output}");
    assert!(
        messages[14]["body"]
            .as_str()
            .unwrap_or_default()
            .ends_with("if you send the invoice."),
        "{output}"
    );

    let listed = screenshots(&shots);
    assert!(
        listed.len() >= 14,
        "expected a screenshot per step and agent in {}, found {listed:?}",
        shots.display()
    );
    println!("{output}\nscreenshots in {}:", shots.display());
    for name in listed {
        println!("  {name}");
    }
}

/// Move the ticket two versions on with the triggers off and write only the
/// second version's event: version v+1 is missing from the log for good.
async fn make_hole(admin: &tokio_postgres::Client, id: i64, subject: &str) {
    admin
        .batch_execute("BEGIN; SET LOCAL session_replication_role = replica")
        .await
        .unwrap();
    let row = admin
        .query_one(
            "UPDATE tickets t SET version = t.version + 2, subject = $2 \
             FROM (SELECT subject AS old FROM tickets WHERE id = $1) o \
             WHERE t.id = $1 RETURNING t.version, o.old",
            &[&id, &subject],
        )
        .await
        .unwrap();
    let version: i64 = row.get(0);
    let old: String = row.get(1);
    admin
        .execute(
            "INSERT INTO ticket_events (ticket_id, version, kind, actor_agent_id, data) \
             VALUES ($1, $2, 'ticket.updated', NULL, \
                     jsonb_build_object('changes', jsonb_build_object('subject', \
                         jsonb_build_object('from', $3::text, 'to', $4::text))))",
            &[&id, &version, &old, &subject],
        )
        .await
        .unwrap();
    admin
        .execute(
            "SELECT pg_notify('livedesk_events', json_build_object('ticket_id', $1::bigint, 'version', $2::bigint)::text)",
            &[&id, &version],
        )
        .await
        .unwrap();
    admin.batch_execute("COMMIT").await.unwrap();
}

fn screenshots(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".png"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

// ---------------------------------------------------------------------------
// The client package (`clients/js/`, `@livedesk/client`): its own tests, with
// Node's test runner, against a real server, database and WebSocket.

/// The whole Node run (it restarts the server once and waits out backoffs).
const NODE_TESTS_LIMIT: Duration = Duration::from_secs(240);

/// Node and the package's devDependencies (`npm ci` in clients/js), or a panic that says how.
fn js_client_prerequisites() -> PathBuf {
    let dir = manifest_dir().join("clients/js");
    let mut missing = Vec::new();
    for module in ["typescript", "ws"] {
        if !dir
            .join(format!("node_modules/{module}/package.json"))
            .is_file()
        {
            missing.push(format!(
                "{}/node_modules/{module} is missing — run `cd clients/js && npm ci` \
                 (needs Node.js >= 20 and npm: `apt-get install nodejs npm`)",
                dir.display()
            ));
        }
    }
    missing.extend(node_missing());
    assert!(
        missing.is_empty(),
        "the client package's tests cannot run (see clients/js/README.md):\n  - {}",
        missing.join("\n  - ")
    );
    dir
}

/// What the Node tests may ask of the Rust side, which holds the superuser
/// connection and the server itself.
struct Control {
    app: tokio::sync::Mutex<TestApp>,
    admin_sql: tokio_postgres::Client,
    sql: tokio_postgres::Client,
}

impl Control {
    /// `POST /<action>?<params>` → JSON, or an error message (answered 500).
    async fn handle(&self, action: &str, params: &[(String, String)]) -> Result<Value, String> {
        let param = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .ok_or_else(|| format!("{action}: no parameter {name}"))
        };
        let sql_err = |e: tokio_postgres::Error| format!("{action}: {e}");
        match action {
            // A version without its event (only the superuser can skip the
            // triggers), then a normal change: a hole in the log the server
            // answers with `reset` (as in tests/faults.rs).
            "hole" => {
                let id: i64 = param("ticket")?.parse().map_err(|_| "ticket")?;
                let subject = param("subject")?;
                self.admin_sql
                    .batch_execute(&format!(
                        "BEGIN; SET LOCAL session_replication_role = replica; \
                         UPDATE tickets SET version = version + 1 WHERE id = {id}; COMMIT"
                    ))
                    .await
                    .map_err(sql_err)?;
                let row = self
                    .sql
                    .query_one(
                        "UPDATE tickets SET subject = $1 WHERE id = $2 RETURNING version",
                        &[&subject, &id],
                    )
                    .await
                    .map_err(sql_err)?;
                Ok(json!({"version": row.get::<_, i64>(0)}))
            }
            // `livedesk agent disable <email>`, as the CLI does it.
            "disable" => {
                let email = param("email")?;
                let app = self.app.lock().await;
                agents::set_disabled(&app.db, &email, true)
                    .await
                    .map_err(|e| format!("disable {email}: {e}"))?;
                Ok(json!({"disabled": email}))
            }
            // Stop the server (its WebSockets close), change the ticket with
            // plain SQL while it is down, start it again on the same address.
            "restart" => {
                let down: u64 = param("down_ms")?.parse().map_err(|_| "down_ms")?;
                let id: i64 = param("ticket")?.parse().map_err(|_| "ticket")?;
                let subject = param("subject")?;
                let mut app = self.app.lock().await;
                let started = std::time::Instant::now();
                app.stop().await;
                let n = self
                    .sql
                    .execute(
                        "UPDATE tickets SET subject = $1 WHERE id = $2",
                        &[&subject, &id],
                    )
                    .await
                    .map_err(sql_err)?;
                if n != 1 {
                    return Err(format!("restart: ticket {id} not found"));
                }
                tokio::time::sleep(Duration::from_millis(down).saturating_sub(started.elapsed()))
                    .await;
                let mut settings = common::test_settings();
                settings.bind = app.address;
                *app = TestApp::spawn_on(app.dbname.clone(), settings).await;
                let up_at_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis() as u64;
                Ok(json!({"up_at_ms": up_at_ms}))
            }
            other => Err(format!("unknown action {other}")),
        }
    }
}

/// A minimal HTTP/1.1 server for the control actions (one request per
/// connection; the Node tests use `fetch`).
async fn serve_control(listener: tokio::net::TcpListener, control: std::sync::Arc<Control>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let control = control.clone();
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&head);
            let target = head.split(' ').nth(1).unwrap_or("/");
            let url = reqwest::Url::parse(&format!("http://control{target}")).unwrap();
            let params: Vec<(String, String)> = url.query_pairs().into_owned().collect();
            let action = url.path().trim_start_matches('/').to_string();
            let (status, body) = match control.handle(&action, &params).await {
                Ok(body) => ("200 OK", body),
                Err(message) => ("500 Internal Server Error", json!({"error": message})),
            };
            let body = body.to_string();
            let answer = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(answer.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Node.js and clients/js/node_modules: run with cargo test -- --include-ignored (see clients/js/README.md)"]
async fn the_client_package_passes_its_node_tests_against_a_real_server() {
    let dir = js_client_prerequisites();
    let app = TestApp::spawn().await;
    let (_, token_a) = agents::add(&app.db, "Ada Client", "ada@js.test", "agent")
        .await
        .unwrap();
    let (_, token_b) = agents::add(&app.db, "Ben Client", "ben@js.test", "agent")
        .await
        .unwrap();
    let (_, token_revoked) = agents::add(&app.db, "Cy Revoked", "cy@js.test", "agent")
        .await
        .unwrap();
    let base = app.base.clone();
    let sql = app.sql().await;
    let admin_sql = app.admin_sql().await;
    let control = std::sync::Arc::new(Control {
        app: tokio::sync::Mutex::new(app),
        admin_sql,
        sql,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let control_url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(serve_control(listener, control.clone()));

    // Explicit files (Node 20 takes paths, Node 22 globs), one at a time:
    // one of them restarts the server.
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("test"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".test.mjs"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "the package's tests: {files:?}");
    let mut child = Command::new("node")
        .arg("--test")
        .arg("--test-concurrency=1")
        .arg("--test-timeout=60000")
        .arg("--test-force-exit")
        .arg("--test-reporter=spec")
        .args(&files)
        .current_dir(&dir)
        .env("LIVEDESK_URL", &base)
        .env("LIVEDESK_CONTROL_URL", &control_url)
        .env("LIVEDESK_TOKEN_A", &token_a.0)
        .env("LIVEDESK_TOKEN_B", &token_b.0)
        .env("LIVEDESK_TOKEN_REVOKED", &token_revoked.0)
        .env("LIVEDESK_EMAIL_REVOKED", "cy@js.test")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start node --test");
    // Both streams into one transcript as they come, so that a run that
    // hangs still shows how far it got.
    let transcript = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut readers = Vec::new();
    for (stream, prefix) in [
        (
            Box::new(child.stdout.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            "",
        ),
        (Box::new(child.stderr.take().unwrap()), "stderr: "),
    ] {
        let transcript = transcript.clone();
        readers.push(tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                transcript.lock().unwrap().push(format!("{prefix}{line}"));
            }
        }));
    }
    let status = tokio::time::timeout(NODE_TESTS_LIMIT, child.wait()).await;
    let status = match status {
        Ok(status) => status.expect("wait for node --test"),
        Err(_) => {
            let _ = child.kill().await;
            panic!(
                "node --test did not finish within {NODE_TESTS_LIMIT:?}; its output so far:\n{}",
                transcript.lock().unwrap().join("\n")
            );
        }
    };
    for reader in readers {
        let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
    }
    server.abort();
    let text = transcript.lock().unwrap().join("\n");
    assert!(
        status.success(),
        "node --test clients/js/test/ failed ({status}):\n{text}"
    );
    // Every file ran and nothing was skipped: the summary counts tests.
    let count = |label: &str| {
        text.lines()
            .find_map(|l| l.trim_start_matches(['ℹ', '#', ' ']).strip_prefix(label))
            .and_then(|n| n.trim().parse::<u32>().ok())
            .unwrap_or_else(|| panic!("no `{label}` line in the output:\n{text}"))
    };
    assert!(count("pass") >= 15, "too few tests passed:\n{text}");
    assert_eq!(count("fail"), 0, "{text}");
    assert_eq!(count("skipped"), 0, "{text}");
    println!("{text}");
    control.app.lock().await.stop().await;
}
