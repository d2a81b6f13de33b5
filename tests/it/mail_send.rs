//! Email out against a real SMTP server (mailin-embedded, started in the
//! test): replies on email tickets are sent once, threaded, with the agent's
//! name; notes and other channels never; a temporary failure (450, greylisting) is
//! retried until it goes through; a restarted worker does not send twice.
//! And the full loop: mail in → live on a WebSocket → reply over HTTP →
//! SMTP → the customer's answer threads back.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::io::Write;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::ws::WsClient;
use common::{cluster, TestApp};
use livedesk::db::Database;
use livedesk::domain::writers;
use livedesk::mail::{inbound, outbound, MailDatabase, MailSettings};
use mailin_embedded::{Handler, Response, Server};
use serde_json::json;
use tokio_util::sync::CancellationToken;

static NEXT_ROLE: AtomicU32 = AtomicU32::new(1);

/// What the SMTP server accepted.
#[derive(Debug, Clone)]
struct Delivered {
    to: Vec<String>,
    raw: Vec<u8>,
}

/// A real SMTP server on a free port; the first `fail_first` recipients are
/// greylisted (450).
#[derive(Clone)]
struct Smtp {
    delivered: Arc<Mutex<Vec<Delivered>>>,
    fail_first: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    /// While set, mail to `full@…` is answered "452 mailbox full" (try later).
    full: Arc<AtomicBool>,
    current: Vec<u8>,
    to: Vec<String>,
}

impl Handler for Smtp {
    fn data_start(&mut self, _domain: &str, _from: &str, _is8bit: bool, to: &[String]) -> Response {
        self.current.clear();
        self.to = to.to_vec();
        mailin_embedded::response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.current.extend_from_slice(buf);
        Ok(())
    }

    /// Greylisting, the everyday temporary failure: "450, try again later".
    /// A mailbox that does not exist: "550 no such user", for good. A full
    /// one (while `full` is set): "452, try again later".
    fn rcpt(&mut self, to: &str) -> Response {
        if to.starts_with("nobody@") {
            return Response::custom(550, "5.1.1 No such user here".into());
        }
        if to.starts_with("full@") && self.full.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Response::custom(452, "4.2.2 Mailbox full, try again later".into());
        }
        if self
            .fail_first
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Response::custom(450, "4.2.0 Greylisted, please try again later".into());
        }
        mailin_embedded::response::OK
    }

    fn data_end(&mut self) -> Response {
        self.delivered.lock().unwrap().push(Delivered {
            to: self.to.clone(),
            raw: std::mem::take(&mut self.current),
        });
        mailin_embedded::response::OK
    }
}

impl Smtp {
    /// Start it; returns the handle and its `smtp://` URL.
    fn start(fail_first: usize) -> (Smtp, String) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let smtp = Smtp {
            delivered: Arc::default(),
            fail_first: Arc::new(AtomicUsize::new(fail_first)),
            refused: Arc::default(),
            full: Arc::new(AtomicBool::new(true)),
            current: Vec::new(),
            to: Vec::new(),
        };
        let mut server = Server::new(smtp.clone());
        server
            .with_name("mx.test.local")
            .with_num_threads(8)
            .with_tcp_listener(listener);
        std::thread::spawn(move || {
            let _ = server.serve();
        });
        (smtp, format!("smtp://127.0.0.1:{port}"))
    }

    fn delivered(&self) -> Vec<Delivered> {
        self.delivered.lock().unwrap().clone()
    }

    /// Wait until `n` messages arrived (panics after 20 s).
    async fn wait_for(&self, n: usize) -> Vec<Delivered> {
        for _ in 0..400 {
            let got = self.delivered();
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "the SMTP server received {} of {n} messages",
            self.delivered().len()
        );
    }
}

/// A mail role's connection string (`livedesk writer add --mail`) and its agent.
async fn writer_url(app: &TestApp, prefix: &str) -> (String, i64) {
    let name = format!(
        "{prefix}{}_{}",
        std::process::id(),
        NEXT_ROLE.fetch_add(1, Ordering::Relaxed)
    );
    let admin = Database::new(cluster().admin_config(&app.dbname), 1).unwrap();
    let (writer, _password) = writers::add_mailer(&admin, &name).await.unwrap();
    admin.pool().close();
    let url = cluster()
        .url(&app.dbname)
        .replace(livedesk::db::bootstrap::OWNER, &name);
    (url, writer.agent.id)
}

fn settings(smtp_url: &str) -> MailSettings {
    MailSettings {
        smtp_url: Some(smtp_url.to_string()),
        mail_from: Some("Example Support <support@example.com>".into()),
        mail_database_url: None,
        mail_retry_ms: 50,
        mail_retry_max_ms: 400,
        mail_give_up_ms: 432_000_000,
        mail_form_senders: Vec::new(),
        mail_poll_ms: 50,
    }
}

/// Start the sender as the writer role; returns once its feed position exists.
async fn start_sender(app: &TestApp, url: &str, smtp_url: &str) -> CancellationToken {
    start_sender_with(app, url, settings(smtp_url)).await
}

/// The same, with these settings.
async fn start_sender_with(app: &TestApp, url: &str, settings: MailSettings) -> CancellationToken {
    let sender = outbound::Sender::new(MailDatabase::from_url(url).unwrap(), settings).unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(sender.run(stop.clone()));
    let sql = app.sql().await;
    for _ in 0..200 {
        let started: i64 = sql
            .query_one(
                "SELECT count(*) FROM feed_consumers WHERE name = 'mailer'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if started == 1 {
            return stop;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the sender never started");
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/mail/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// A child process stopped when the test ends, also when it fails
/// (SIGTERM, then SIGKILL after 10 s): no orphan worker or PostgreSQL.
struct Stopper(Option<std::process::Child>);

impl Stopper {
    /// SIGTERM now; the exit status.
    async fn stop(mut self) -> std::process::ExitStatus {
        let child = self.0.take().unwrap();
        tokio::task::spawn_blocking(move || terminate(child))
            .await
            .unwrap()
    }
}

impl Drop for Stopper {
    fn drop(&mut self) {
        if let Some(child) = self.0.take() {
            terminate(child);
        }
    }
}

fn terminate(mut child: std::process::Child) -> std::process::ExitStatus {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    for _ in 0..1000 {
        if let Ok(Some(status)) = child.try_wait() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    child.wait().unwrap()
}

fn parsed(raw: &[u8]) -> mail_parser::Message<'static> {
    mail_parser::MessageParser::default()
        .parse(raw)
        .unwrap()
        .into_owned()
}

/// The last message id of a ticket (what the agent "saw").
async fn last_message(app: &TestApp, ticket: i64) -> i64 {
    app.sql()
        .await
        .query_one(
            "SELECT max(id) FROM messages WHERE ticket_id = $1",
            &[&ticket],
        )
        .await
        .unwrap()
        .get(0)
}

/// Wait until the mailer's position reached the newest event.
async fn wait_caught_up(app: &TestApp) {
    let sql = app.sql().await;
    for _ in 0..400 {
        let behind: bool = sql
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM ticket_events e, feed_consumers c WHERE c.name = 'mailer' \
                 AND (e.xid, e.ticket_id, e.version) > (c.xid, c.ticket_id, c.version))",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if !behind {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the mailer never caught up");
}

#[tokio::test]
async fn replies_are_sent_once_threaded_notes_never_and_a_restart_sends_nothing_twice() {
    let app = TestApp::spawn().await;
    let (smtp, smtp_url) = Smtp::start(0);
    let (url, _) = writer_url(&app, "mailer").await;
    let stop = start_sender(&app, &url, &smtp_url).await;

    // A customer's email opens a ticket (written by the gateway role).
    let gateway = MailDatabase::from_url(&url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let email = inbound::parse(&fixture("outlook.eml")).unwrap();
    let ticket = inbound::store(&gateway, &email).await.unwrap().ticket_id;
    let (_, alice) = app.agent("Alice", "agent").await;
    let seen = last_message(&app, ticket).await;
    let (status, note) = app
        .post(
            &format!("/api/tickets/{ticket}/messages"),
            &alice,
            json!({"kind": "note", "body": "Checking with the bank first."}),
        )
        .await;
    assert_eq!(status, 201, "{note}");
    let (status, reply) = app
        .post(
            &format!("/api/tickets/{ticket}/messages"),
            &alice,
            json!({"kind": "reply", "body": "Dear Petra,\n\nthe second charge is refunded.\n\nAlice", "seen_message_id": seen}),
        )
        .await;
    assert_eq!(status, 201, "{reply}");
    // A reply on a chat ticket is not an email.
    let chat = app.ticket(&alice, "Chat about something").await;
    let (status, _) = app
        .post(
            &format!("/api/tickets/{}/messages", chat["id"]),
            &alice,
            json!({"kind": "reply", "body": "Hi!", "seen_message_id": 0}),
        )
        .await;
    assert_eq!(status, 201);

    let got = smtp.wait_for(1).await;
    wait_caught_up(&app).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(smtp.delivered().len(), 1, "only the email reply was sent");
    assert_eq!(got[0].to, vec!["petra.novak@contoso.example".to_string()]);
    let sent = parsed(&got[0].raw);
    let from = sent.from().unwrap().first().unwrap();
    assert_eq!(from.address(), Some("support@example.com"));
    assert_eq!(from.name(), Some("Alice (Example Support)"));
    assert_eq!(
        sent.subject(),
        Some("Re: Invoice INV-2023-1147 charged twice")
    );
    assert_eq!(
        sent.in_reply_to().as_text(),
        Some(email.message_id.as_str())
    );
    assert!(sent
        .body_text(0)
        .unwrap()
        .contains("the second charge is refunded."));
    let recorded: (String, String, i32) = {
        let r = app
            .sql()
            .await
            .query_one(
                "SELECT message_id, status, attempts FROM mail_messages WHERE direction = 'out'",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!(
        sent.message_id(),
        Some(recorded.0.as_str()),
        "the Message-ID is recorded"
    );
    assert_eq!((recorded.1.as_str(), recorded.2), ("sent", 1));

    // A worker that died after recording the send but before acknowledging:
    // its successor reads the event again and sends nothing.
    stop.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    app.sql()
        .await
        .batch_execute("UPDATE feed_consumers SET xid = '0', ticket_id = -1, version = -1 WHERE name = 'mailer'")
        .await
        .unwrap();
    let stop = start_sender(&app, &url, &smtp_url).await;
    wait_caught_up(&app).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(smtp.delivered().len(), 1, "a restarted worker sent again");
    stop.cancel();
}

#[tokio::test]
async fn a_temporary_smtp_failure_is_retried_until_it_goes_through() {
    let app = TestApp::spawn().await;
    let (smtp, smtp_url) = Smtp::start(2);
    let (url, _) = writer_url(&app, "mailer").await;
    let stop = start_sender(&app, &url, &smtp_url).await;
    let gateway = MailDatabase::from_url(&url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let ticket = inbound::store(&gateway, &inbound::parse(&fixture("koi8r.eml")).unwrap())
        .await
        .unwrap()
        .ticket_id;
    let (_, bob) = app.agent("Bob", "agent").await;
    let seen = last_message(&app, ticket).await;
    let (status, _) = app
        .post(
            &format!("/api/tickets/{ticket}/messages"),
            &bob,
            json!({"kind": "reply", "body": "Счёт во вложении.", "seen_message_id": seen}),
        )
        .await;
    assert_eq!(status, 201);
    let got = smtp.wait_for(1).await;
    wait_caught_up(&app).await;
    assert_eq!(
        smtp.refused.load(Ordering::SeqCst),
        2,
        "two attempts were greylisted"
    );
    assert_eq!(got.len(), 1);
    let sent = parsed(&got[0].raw);
    assert_eq!(sent.body_text(0).unwrap().trim(), "Счёт во вложении.");
    let row = app
        .sql()
        .await
        .query_one(
            "SELECT status, attempts, last_error FROM mail_messages WHERE direction = 'out'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "sent");
    assert_eq!(row.get::<_, i32>(1), 3);
    assert_eq!(row.get::<_, Option<String>>(2), None);
    stop.cancel();
}

/// Run the real binary's `mail receive`.
fn receive(url: &str, raw: &[u8]) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_livedesk"))
        .args(["mail", "receive"])
        .env("LIVEDESK_MAIL_DATABASE_URL", url)
        .env_remove("DATABASE_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(raw).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn full_loop_mail_in_live_reply_out_answer_threads_back() {
    let app = TestApp::spawn().await;
    let (smtp, smtp_url) = Smtp::start(0);
    let (url, _) = writer_url(&app, "gw").await;
    let (_, alice) = app.agent("Alice", "agent").await;

    // The sender as its own process: `livedesk mail send`.
    let sender = Command::new(env!("CARGO_BIN_EXE_livedesk"))
        .args(["mail", "send"])
        .env("LIVEDESK_MAIL_DATABASE_URL", &url)
        .env("LIVEDESK_SMTP_URL", &smtp_url)
        .env(
            "LIVEDESK_MAIL_FROM",
            "Example Support <support@example.com>",
        )
        .env("LIVEDESK_MAIL_POLL_MS", "50")
        .env("LIVEDESK_MAIL_RETRY_MS", "50")
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sender = Stopper(Some(sender));
    let sql = app.sql().await;
    for attempt in 0.. {
        let started: i64 = sql
            .query_one(
                "SELECT count(*) FROM feed_consumers WHERE name = 'mailer'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if started == 1 {
            break;
        }
        assert!(attempt < 400, "livedesk mail send never started");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    // Mail in → the ticket appears live in the inbox of a connected agent.
    let mut ws = WsClient::connect(&app.base, &alice).await;
    ws.send(json!({"type": "subscribe_inbox"})).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let first = fixture("apple_mail.eml");
    tokio::task::spawn_blocking({
        let url = url.clone();
        move || receive(&url, &first)
    })
    .await
    .unwrap();
    let inbox = ws.next_of("inbox").await;
    assert_eq!(
        inbox["ticket"]["subject"],
        "L’application plante au démarrage"
    );
    assert_eq!(inbox["ticket"]["channel"], "email");
    let ticket = inbox["ticket"]["id"].as_i64().unwrap();
    ws.subscribe(ticket, None).await;
    let snapshot = ws.next_of("snapshot").await;
    let seen = snapshot["messages"][0]["id"].as_i64().unwrap();

    // The agent replies over HTTP → the SMTP server receives it once.
    let (status, reply) = app
        .post(
            &format!("/api/tickets/{ticket}/messages"),
            &alice,
            json!({"kind": "reply", "body": "Bonjour Anaïs, la version 2.4.1 corrige ce plantage.", "seen_message_id": seen}),
        )
        .await;
    assert_eq!(status, 201, "{reply}");
    let got = smtp.wait_for(1).await;
    let sent = parsed(&got[0].raw);
    assert_eq!(got[0].to, vec!["anais.dubois@icloud.example".to_string()]);
    assert_eq!(
        sent.in_reply_to().as_text(),
        Some("8F1E2D3C-4B5A-6978-8A9B-0C1D2E3F4A5B@icloud.example")
    );
    let sent_id = sent.message_id().unwrap().to_string();

    // The customer's answer, threaded only by In-Reply-To/References.
    let answer = format!(
        "From: =?utf-8?Q?Ana=C3=AFs_Dubois?= <anais.dubois@icloud.example>\r\n\
         To: Example Support <support@example.com>\r\n\
         Subject: Re: L'application plante\r\n\
         Message-Id: <A1B2C3D4-answer@icloud.example>\r\n\
         In-Reply-To: <{sent_id}>\r\n\
         References: <8F1E2D3C-4B5A-6978-8A9B-0C1D2E3F4A5B@icloud.example> <{sent_id}>\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\r\n\
         Merci, ça marche maintenant !\r\n"
    );
    tokio::task::spawn_blocking({
        let url = url.clone();
        move || receive(&url, answer.as_bytes())
    })
    .await
    .unwrap();
    loop {
        let frame = ws.next_of("event").await;
        if frame["kind"] == "message.created" && frame["data"]["message"]["kind"] == "customer" {
            assert_eq!(frame["ticket_id"], ticket);
            assert_eq!(
                frame["data"]["message"]["body"],
                "Merci, ça marche maintenant !"
            );
            break;
        }
    }
    let tickets: i64 = sql
        .query_one("SELECT count(*) FROM tickets", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(tickets, 1, "the answer threaded back onto the ticket");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(smtp.delivered().len(), 1, "the reply was sent once");

    // SIGTERM: the worker stops cleanly.
    let status = sender.stop().await;
    assert!(status.success(), "{status:?}");
}

/// The embedded default end to end with the real binaries: `serve --mail`
/// sends from inside the server, and `mail receive` (no URL) writes as the
/// writer role `mail_gateway` it makes on first use, through the running
/// server's PostgreSQL.
#[tokio::test]
async fn embedded_default_serve_with_mail_and_receive_as_mail_gateway() {
    use std::io::{BufRead, BufReader};
    let (smtp, smtp_url) = Smtp::start(0);
    let dir = tempfile::Builder::new()
        .prefix("livedesk-mail-")
        .tempdir_in("/tmp")
        .unwrap();
    let data = dir.path().join("data");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let smtp_url_for_commands = smtp_url.clone();
    let livedesk = move |args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_livedesk"));
        command
            .args(args)
            .env_remove("DATABASE_URL")
            .env_remove("LIVEDESK_MAIL_DATABASE_URL")
            .env("LIVEDESK_DATA_DIR", &data)
            .env("LIVEDESK_BIND", format!("127.0.0.1:{port}"))
            .env("LIVEDESK_EMBEDDED_UNSAFE_FAST", "true")
            .env("LIVEDESK_SMTP_URL", &smtp_url_for_commands)
            .env("LIVEDESK_MAIL_FROM", "support@example.com")
            .env("LIVEDESK_MAIL_POLL_MS", "50")
            .env("RUST_LOG", "warn");
        command
    };
    let mut server = livedesk(&["serve", "--mail"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = server.stdout.take().unwrap();
    let server = Stopper(Some(server));
    let code = tokio::task::spawn_blocking(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some((_, code)) = line.split_once("#login=") {
                return code.trim().to_string();
            }
        }
        panic!("no login link printed");
    })
    .await
    .unwrap();
    let http = reqwest::Client::new();
    for attempt in 0.. {
        let healthy = http
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if healthy {
            break;
        }
        assert!(attempt < 600, "the server never became healthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let token = common::redeem_login(&base, &code).await;

    let mut receive = livedesk(&["mail", "receive"]);
    let receive = tokio::task::spawn_blocking(move || {
        let mut child = receive
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(&fixture("windows1251.eml"))
            .unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        receive.status.success(),
        "{}",
        String::from_utf8_lossy(&receive.stderr)
    );

    let get = |path: String| {
        let http = http.clone();
        let token = token.clone();
        let base = base.clone();
        async move {
            http.get(format!("{base}{path}"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    let tickets = get("/api/tickets".into()).await;
    let ticket = &tickets["tickets"][0];
    assert_eq!(ticket["subject"], "Не приходит письмо с паролем");
    let id = ticket["id"].as_i64().unwrap();
    let events = get(format!("/api/tickets/{id}/events")).await;
    assert_eq!(events["events"][0]["actor"]["name"], "mail_gateway");
    let detail = get(format!("/api/tickets/{id}")).await;
    let seen = detail["messages"][0]["id"].as_i64().unwrap();

    let status = http
        .post(format!("{base}/api/tickets/{id}/messages"))
        .bearer_auth(&token)
        .json(&json!({"kind": "reply", "body": "Сергей, письмо отправлено ещё раз.", "seen_message_id": seen}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 201);
    let got = smtp.wait_for(1).await;
    assert_eq!(got[0].to, vec!["s.ivanov@mail.example.ru".to_string()]);
    let sent = parsed(&got[0].raw);
    assert_eq!(sent.subject(), Some("Re: Не приходит письмо с паролем"));
    assert_eq!(
        sent.from().unwrap().first().unwrap().name(),
        Some("Admin"),
        "the agent's name"
    );

    let status = server.stop().await;
    assert!(status.success(), "{status:?}");
}

/// A server, an SMTP server and a running sender as a mail role, with one
/// email ticket per `From:` value (in order), received as the gateway.
struct EmailTickets {
    app: TestApp,
    smtp: Smtp,
    url: String,
    smtp_url: String,
    stop: CancellationToken,
    gateway_agent: i64,
    tickets: Vec<i64>,
}

async fn email_tickets(senders: &[&str]) -> EmailTickets {
    email_tickets_with(senders, |_| {}).await
}

/// The same, with the sender's settings changed by `adjust`.
async fn email_tickets_with(
    senders: &[&str],
    adjust: impl FnOnce(&mut MailSettings),
) -> EmailTickets {
    let app = TestApp::spawn().await;
    let (smtp, smtp_url) = Smtp::start(0);
    let (url, gateway_agent) = writer_url(&app, "mailer").await;
    let mut sender_settings = settings(&smtp_url);
    adjust(&mut sender_settings);
    let stop = start_sender_with(&app, &url, sender_settings).await;
    let gateway = MailDatabase::from_url(&url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut tickets = Vec::new();
    for (n, from) in senders.iter().enumerate() {
        let raw = format!(
            "From: {from}\r\nSubject: Hello from {n}\r\nMessage-ID: <ticket.{n}@example.org>\r\n\r\nHi\r\n"
        );
        let mail = inbound::parse(raw.as_bytes()).unwrap();
        tickets.push(inbound::store(&gateway, &mail).await.unwrap().ticket_id);
    }
    EmailTickets {
        app,
        smtp,
        url,
        smtp_url,
        stop,
        gateway_agent,
        tickets,
    }
}

/// The note that tells the agents a reply could not be emailed: written by
/// the gateway's agent; its text.
async fn failure_note(sql: &tokio_postgres::Client, ticket: i64, gateway_agent: i64) -> String {
    let note = sql
        .query_one(
            "SELECT author_agent_id, body FROM messages WHERE ticket_id = $1 AND kind = 'note'",
            &[&ticket],
        )
        .await
        .unwrap();
    assert_eq!(note.get::<_, Option<i64>>(0), Some(gateway_agent));
    note.get(1)
}

/// An agent's reply on a ticket, having seen its newest message.
async fn reply(app: &TestApp, token: &str, ticket: i64, body: &str) {
    let seen = last_message(app, ticket).await;
    let (status, answer) = app
        .post(
            &format!("/api/tickets/{ticket}/messages"),
            token,
            json!({"kind": "reply", "body": body, "seen_message_id": seen}),
        )
        .await;
    assert_eq!(status, 201, "{answer}");
}

#[tokio::test]
async fn a_refused_mailbox_fails_for_good_is_told_on_the_ticket_and_blocks_nothing() {
    let EmailTickets {
        app,
        smtp,
        stop,
        gateway_agent,
        tickets,
        ..
    } = email_tickets(&["nobody@example.org", "someone@example.org"]).await;
    let (_, carol) = app.agent("Carol", "agent").await;
    for ticket in &tickets {
        reply(&app, &carol, *ticket, "Hello!").await;
    }
    // The second reply goes through; the first is not retried.
    let got = smtp.wait_for(1).await;
    assert_eq!(got[0].to, vec!["someone@example.org".to_string()]);
    wait_caught_up(&app).await;
    let sql = app.sql().await;
    let row = sql
        .query_one(
            "SELECT status, attempts, last_error FROM mail_messages WHERE direction = 'out' AND ticket_id = $1",
            &[&tickets[0]],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "failed");
    assert_eq!(row.get::<_, i32>(1), 1);
    assert!(row.get::<_, String>(2).contains("No such user"));
    let body = failure_note(&sql, tickets[0], gateway_agent).await;
    assert!(
        body.contains("could not be emailed to nobody@example.org"),
        "{body}"
    );
    assert!(body.contains("No such user"), "{body}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(smtp.delivered().len(), 1);
    stop.cancel();
}

/// A line break in a customer's name (an encoded `From:` name such as
/// `=?utf-8?q?Eve=0AJones?=`) or in an agent's name goes out as a space. It
/// made lettre panic in the sender, which then stopped every reply to every
/// customer, at every restart (found by a review).
#[tokio::test]
async fn a_line_break_in_a_name_is_sent_as_a_space_and_stops_nothing() {
    let EmailTickets {
        app,
        smtp,
        stop,
        tickets,
        ..
    } = email_tickets(&[
        "=?utf-8?q?Eve=0D=0AJones?= <eve@example.org>",
        "Sam Smith <sam@example.org>",
    ])
    .await;
    let (carol, token) = app.agent("Carol", "agent").await;
    app.sql()
        .await
        .execute(
            "UPDATE agents SET name = E'Carol\\nBcc: x@evil.test' WHERE id = $1",
            &[&carol.id],
        )
        .await
        .unwrap();
    for ticket in &tickets {
        reply(&app, &token, *ticket, "Hello!").await;
    }
    let got = smtp.wait_for(2).await;
    let to: Vec<&str> = got.iter().map(|d| d.to[0].as_str()).collect();
    assert_eq!(to, ["eve@example.org", "sam@example.org"]);
    for delivered in &got {
        let message = parsed(&delivered.raw);
        let from = message.from().and_then(|a| a.first()).unwrap();
        assert_eq!(
            from.name(),
            Some("Carol Bcc: x@evil.test (Example Support)")
        );
        assert!(message.header("Bcc").is_none());
    }
    let eve = parsed(&got[0].raw);
    assert_eq!(
        eve.to().and_then(|a| a.first()).unwrap().name(),
        Some("Eve Jones")
    );
    stop.cancel();
}

/// A customer whose mailbox answers "try again later" holds up only their
/// own later replies, which go out after it and in order, never another
/// customer's (found by a review: one full mailbox held every reply of
/// every customer). The waiting replies survive a sender's restart.
#[tokio::test]
async fn a_full_mailbox_holds_up_only_its_own_customers_replies() {
    let EmailTickets {
        app,
        smtp,
        url,
        smtp_url,
        stop,
        tickets,
        ..
    } = email_tickets(&["full@example.org", "fine@example.org"]).await;
    let (_, carol) = app.agent("Carol", "agent").await;
    for (ticket, body) in [
        (tickets[0], "first to full"),
        (tickets[0], "second to full"),
        (tickets[1], "to fine"),
    ] {
        reply(&app, &carol, ticket, body).await;
    }
    // The other customer's reply goes out while the full mailbox is retried.
    let got = smtp.wait_for(1).await;
    assert_eq!(got[0].to, vec!["fine@example.org".to_string()]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(smtp.refused.load(Ordering::SeqCst) >= 2, "retried");
    assert_eq!(smtp.delivered().len(), 1, "nothing to the full mailbox yet");
    // The waiting replies are in the database, not only in the sender: a
    // sender started after this one stops takes them over.
    stop.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stop = start_sender(&app, &url, &smtp_url).await;
    // The mailbox has room again: both replies, in the order written.
    smtp.full.store(false, Ordering::SeqCst);
    let got = smtp.wait_for(3).await;
    let to_full: Vec<String> = got[1..]
        .iter()
        .map(|d| parsed(&d.raw).body_text(0).unwrap().trim().to_string())
        .collect();
    assert_eq!(to_full, ["first to full", "second to full"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(smtp.delivered().len(), 3, "each once");
    stop.cancel();
}

/// A mailbox that stays full is not retried for ever: past the give-up
/// period the reply fails for good, the agents are told on the ticket with
/// the last answer, and the customer's next reply is tried on its own.
/// (Before, a temporary failure was retried without end.)
#[tokio::test]
async fn a_reply_undelivered_past_the_give_up_period_fails_for_good_and_is_told() {
    let EmailTickets {
        app,
        smtp,
        stop,
        gateway_agent,
        tickets,
        ..
    } = email_tickets_with(&["full@example.org"], |s| s.mail_give_up_ms = 1_500).await;
    let (_, carol) = app.agent("Carol", "agent").await;
    reply(&app, &carol, tickets[0], "first").await;
    let sql = app.sql().await;
    let started = std::time::Instant::now();
    let mut last = None;
    while started.elapsed() < Duration::from_secs(15) {
        last = sql
            .query_opt(
                "SELECT status, attempts, coalesce(last_error, '') FROM mail_messages \
                 WHERE direction = 'out' ORDER BY livedesk_message_id LIMIT 1",
                &[],
            )
            .await
            .unwrap()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    r.get::<_, i32>(1),
                    r.get::<_, String>(2),
                )
            });
        if last.as_ref().is_some_and(|(s, _, _)| s == "failed") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (state, attempts, error) = last.unwrap();
    assert_eq!(state, "failed", "{attempts} attempts, {error}");
    assert!(
        started.elapsed() >= Duration::from_millis(1_400),
        "given up too early"
    );
    assert!(attempts >= 2, "retried first: {attempts}");
    assert!(
        error.contains("still not delivered after 1.5 seconds"),
        "{error}"
    );
    assert!(error.contains("Mailbox full"), "{error}");
    let body = failure_note(&sql, tickets[0], gateway_agent).await;
    assert!(
        body.contains("could not be emailed to full@example.org"),
        "{body}"
    );
    assert!(body.contains("still not delivered"), "{body}");

    // No more attempts at it; the mailbox has room again and the next
    // reply goes out alone.
    let refused = smtp.refused.load(Ordering::SeqCst);
    smtp.full.store(false, Ordering::SeqCst);
    reply(&app, &carol, tickets[0], "second").await;
    let got = smtp.wait_for(1).await;
    assert_eq!(parsed(&got[0].raw).body_text(0).unwrap().trim(), "second");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        smtp.delivered().len(),
        1,
        "the failed reply is not sent after all"
    );
    assert_eq!(smtp.refused.load(Ordering::SeqCst), refused);
    stop.cancel();
}

#[tokio::test]
async fn one_sender_is_active_and_a_standby_takes_over_when_it_stops() {
    let app = TestApp::spawn().await;
    let (smtp, smtp_url) = Smtp::start(0);
    let (url, _) = writer_url(&app, "mailer").await;
    let first = start_sender(&app, &url, &smtp_url).await;
    let second = start_sender(&app, &url, &smtp_url).await;
    let gateway = MailDatabase::from_url(&url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mail = inbound::parse(&fixture("html_only_newsletter_reply.eml")).unwrap();
    let ticket = inbound::store(&gateway, &mail).await.unwrap().ticket_id;
    let (_, dana) = app.agent("Dana", "agent").await;
    let reply = |body: &'static str| {
        let app = &app;
        let dana = dana.clone();
        async move {
            let seen = last_message(app, ticket).await;
            let (status, _) = app
                .post(
                    &format!("/api/tickets/{ticket}/messages"),
                    &dana,
                    json!({"kind": "reply", "body": body, "seen_message_id": seen}),
                )
                .await;
            assert_eq!(status, 201);
        }
    };
    reply("CSV export is on every plan.").await;
    smtp.wait_for(1).await;
    wait_caught_up(&app).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        smtp.delivered().len(),
        1,
        "two senders sent one reply twice"
    );

    // The active one stops; the standby takes over and sends the next reply.
    first.cancel();
    reply("Reload the page to see the button.").await;
    let got = smtp.wait_for(2).await;
    wait_caught_up(&app).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(smtp.delivered().len(), 2);
    assert!(parsed(&got[1].raw)
        .body_text(0)
        .unwrap()
        .contains("Reload the page"));
    second.cancel();
}

/// The sender's database goes away: its connections are reset, then the
/// database stops answering for a while. The sender notices within its
/// budget, reconnects with backoff, and every reply is still sent once.
#[tokio::test]
async fn the_sender_survives_a_lost_and_a_silent_database() {
    use common::proxy::Proxy;
    let app = TestApp::spawn().await;
    let (smtp, smtp_url) = Smtp::start(0);
    let (url, _) = writer_url(&app, "mailer").await;
    let role = url
        .split_whitespace()
        .find_map(|part| part.strip_prefix("user="))
        .unwrap()
        .to_string();
    let proxy = Proxy::start(
        cluster()
            .socket_dir
            .join(format!(".s.PGSQL.{}", cluster().port)),
    )
    .await;
    let via_proxy = format!(
        "host=127.0.0.1 port={} user={role} dbname={}",
        proxy.port, app.dbname
    );
    let db = MailDatabase::from_url(&via_proxy)
        .unwrap()
        .with_timeout(Duration::from_millis(500));
    let sender = outbound::Sender::new(db, settings(&smtp_url)).unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(sender.run(stop.clone()));
    let sql = app.sql().await;
    for attempt in 0.. {
        let started: i64 = sql
            .query_one(
                "SELECT count(*) FROM feed_consumers WHERE name = 'mailer'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if started == 1 {
            break;
        }
        assert!(attempt < 400, "the sender never started");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let gateway = MailDatabase::from_url(&url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mail = inbound::parse(&fixture("outlook.eml")).unwrap();
    let ticket = inbound::store(&gateway, &mail).await.unwrap().ticket_id;
    let (_, erin) = app.agent("Erin", "agent").await;
    let reply = |body: &'static str| {
        let app = &app;
        let erin = erin.clone();
        async move {
            let seen = last_message(app, ticket).await;
            let (status, _) = app
                .post(
                    &format!("/api/tickets/{ticket}/messages"),
                    &erin,
                    json!({"kind": "reply", "body": body, "seen_message_id": seen}),
                )
                .await;
            assert_eq!(status, 201);
        }
    };

    proxy.cut();
    reply("First, after a reset connection.").await;
    smtp.wait_for(1).await;
    // Silence the database only once the send is recorded: between the
    // server's 250 OK and ld_mail_sent a lost database may resend, with
    // the same Message-ID (docs/email.md), and a loaded machine can stretch
    // those milliseconds past the blackhole below.
    for attempt in 0.. {
        let recorded: i64 = sql
            .query_one(
                "SELECT count(*) FROM mail_messages WHERE direction = 'out' AND status = 'sent'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if recorded == 1 {
            break;
        }
        assert!(attempt < 400, "the first reply was never recorded as sent");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    proxy.blackhole();
    reply("Second, after the database went silent.").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        smtp.delivered().len(),
        1,
        "nothing can be sent while the database is silent"
    );
    proxy.restore();
    let got = smtp.wait_for(2).await;
    wait_caught_up(&app).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(smtp.delivered().len(), 2, "each reply once");
    assert!(parsed(&got[1].raw)
        .body_text(0)
        .unwrap()
        .contains("went silent"));
    stop.cancel();
}
