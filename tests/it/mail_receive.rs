//! `livedesk mail receive`, the real binary as an MTA's pipe runs it: one
//! message on stdin, written as a writer role; real-world shapes of mail
//! (tests/fixtures/mail/), duplicates, threading, and the exit codes an MTA
//! acts on.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use common::{cluster, TestApp};
use livedesk::db::Database;
use livedesk::domain::writers;
use livedesk::mail::inbound;

static NEXT_ROLE: AtomicU32 = AtomicU32::new(1);

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/mail/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// A writer role for the gateway (`livedesk writer add`), as a
/// LIVEDESK_MAIL_DATABASE_URL, and its service agent's id.
async fn gateway(app: &TestApp) -> (String, i64) {
    let name = format!(
        "mailgw{}_{}",
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

/// Run `livedesk mail receive` with `raw` on stdin; (exit code, stderr).
fn receive(url: &str, raw: &[u8]) -> (i32, String) {
    receive_with(url, raw, &[])
}

/// The same, with more environment (`LIVEDESK_MAIL_FORM_SENDERS`).
fn receive_with(url: &str, raw: &[u8], env: &[(&str, &str)]) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_livedesk"))
        .args(["mail", "receive"])
        .envs(env.iter().copied())
        .env("LIVEDESK_MAIL_DATABASE_URL", url)
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(raw).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn real_world_shapes_are_decoded() {
    let outlook = inbound::parse(&fixture("outlook.eml")).unwrap();
    assert_eq!(
        outlook.subject.as_deref(),
        Some("Invoice INV-2023-1147 charged twice")
    );
    assert_eq!(outlook.customer_email, "petra.novak@contoso.example");
    assert_eq!(outlook.customer_name.as_deref(), Some("Novak, Petra"));
    assert!(
        outlook.body.contains("(2 x 149.00 EUR)"),
        "{}",
        outlook.body
    ); // QP soft break
    assert!(!outlook.body.contains("<html"), "the text part wins");
    assert_eq!(
        outlook.attachments,
        vec![("Statement November.pdf".to_string(), 2064)]
    );
    assert!(outlook
        .body
        .ends_with("Attachments (not stored):\n- Statement November.pdf (2.0 KB)"));

    let gmail = inbound::parse(&fixture("gmail_reply.eml")).unwrap();
    assert_eq!(gmail.customer_name.as_deref(), Some("Jörg Müller"));
    assert_eq!(gmail.subject.as_deref(), Some("Re: Grüße aus München"));
    // The quoted history under "Am … schrieb …:" is cut: the ticket has it.
    assert_eq!(gmail.body, "Danke schön, die Erstattung ist angekommen! ✅");
    assert_eq!(
        gmail.references.last().map(String::as_str),
        Some("livedesk.41.97.5f0c1d2e3a4b4c5d8e9f0a1b2c3d4e5f@example.com")
    );

    let apple = inbound::parse(&fixture("apple_mail.eml")).unwrap();
    assert_eq!(apple.customer_name.as_deref(), Some("Anaïs Dubois"));
    assert_eq!(
        apple.subject.as_deref(),
        Some("L’application plante au démarrage")
    );
    assert!(
        apple
            .body
            .contains("l’application se ferme dès l’ouverture"),
        "{}",
        apple.body
    );
    assert_eq!(apple.attachments.len(), 1);
    assert_eq!(apple.attachments[0].0, "Capture d’écran 2023-11-15.png");

    let cp1251 = inbound::parse(&fixture("windows1251.eml")).unwrap();
    assert_eq!(
        cp1251.subject.as_deref(),
        Some("Не приходит письмо с паролем")
    );
    assert_eq!(cp1251.customer_name.as_deref(), Some("Сергей Иванов"));
    assert!(cp1251.body.contains("Логин — ivanov."), "{}", cp1251.body);

    let koi8 = inbound::parse(&fixture("koi8r.eml")).unwrap();
    assert_eq!(koi8.subject.as_deref(), Some("Счёт на оплату"));
    assert!(
        koi8.body
            .starts_with("Добрый день! Пришлите, пожалуйста, счёт"),
        "{}",
        koi8.body
    );

    let html = inbound::parse(&fixture("html_only_newsletter_reply.eml")).unwrap();
    assert!(
        !html.body.contains('<'),
        "HTML turned to text: {}",
        html.body
    );
    assert!(html.body.contains("export to CSV"), "{}", html.body);
    assert!(
        html.body.contains("is it only on the Pro plan?"),
        "{}",
        html.body
    );
}

/// Postfix's pipe and fetchmail hand over bare LF line ends, and an mbox
/// "From " line may come first: the same message either way.
#[test]
fn line_ends_and_an_mbox_from_line_do_not_matter() {
    for name in [
        "outlook.eml",
        "apple_mail.eml",
        "windows1251.eml",
        "gmail_reply.eml",
    ] {
        let crlf = fixture(name);
        let lf: Vec<u8> = {
            let mut out = b"From MAILER-DAEMON Tue Nov 14 09:12:44 2023\n".to_vec();
            let mut bytes = crlf.iter().peekable();
            while let Some(&b) = bytes.next() {
                if b == b'\r' && bytes.peek() == Some(&&b'\n') {
                    continue;
                }
                out.push(b);
            }
            out
        };
        assert_eq!(
            inbound::parse(&lf).unwrap(),
            inbound::parse(&crlf).unwrap(),
            "{name}"
        );
    }
}

#[tokio::test]
async fn each_fixture_becomes_an_email_ticket_written_by_the_gateway() {
    let app = TestApp::spawn().await;
    let (url, agent) = gateway(&app).await;
    let sql = app.sql().await;
    for (name, subject, email) in [
        (
            "outlook.eml",
            "Invoice INV-2023-1147 charged twice",
            "petra.novak@contoso.example",
        ),
        (
            "apple_mail.eml",
            "L’application plante au démarrage",
            "anais.dubois@icloud.example",
        ),
        (
            "windows1251.eml",
            "Не приходит письмо с паролем",
            "s.ivanov@mail.example.ru",
        ),
        ("koi8r.eml", "Счёт на оплату", "olga@example.su"),
        (
            "html_only_newsletter_reply.eml",
            "Re: Your November product update",
            "ben.carter@fastmail.example",
        ),
        (
            "gmail_reply.eml",
            "Re: Grüße aus München",
            "joerg.mueller@gmail.example",
        ),
    ] {
        let (code, stderr) = tokio::task::spawn_blocking({
            let url = url.clone();
            move || receive(&url, &fixture(name))
        })
        .await
        .unwrap();
        assert_eq!(code, 0, "{name}: {stderr}");
        let row = sql
            .query_one(
                "SELECT t.subject, t.channel, c.email, m.kind, m.author_agent_id, m.body, \
                        (SELECT e.actor_agent_id FROM ticket_events e WHERE e.ticket_id = t.id AND e.version = 1) \
                 FROM tickets t JOIN customers c ON c.id = t.customer_id \
                 JOIN messages m ON m.ticket_id = t.id \
                 WHERE lower(c.email) = $1",
                &[&email],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), subject, "{name}");
        assert_eq!(row.get::<_, String>(1), "email");
        assert_eq!(row.get::<_, String>(3), "customer", "{name}");
        assert_eq!(
            row.get::<_, Option<i64>>(4),
            Some(agent),
            "relayed by the gateway"
        );
        assert_eq!(
            row.get::<_, Option<i64>>(6),
            Some(agent),
            "the event names the gateway"
        );
        assert!(!row.get::<_, String>(5).is_empty());
    }
}

#[tokio::test]
async fn a_duplicate_delivery_writes_nothing_and_an_answer_threads_back() {
    let app = TestApp::spawn().await;
    let (url, _) = gateway(&app).await;
    let sql = app.sql().await;
    let outlook = fixture("outlook.eml");
    let (first, _) = receive(&url, &outlook);
    let (again, stderr) = receive(&url, &outlook);
    assert_eq!((first, again), (0, 0));
    assert!(stderr.contains("already received"), "{stderr}");
    let counts: (i64, i64) = {
        let r = sql
            .query_one(
                "SELECT (SELECT count(*) FROM tickets), (SELECT count(*) FROM messages)",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(counts, (1, 1));

    // Somebody else who knows her Message-ID (a CC, a forward) answers it:
    // that opens a ticket of its own, never a message on hers.
    let first_email =
        "AM6PR05MB6104A1B2C3D4E5F6A7B8C9D0E1F2A3B4C5D6@AM6PR05MB6104.eurprd05.prod.outlook.com";
    let somebody = String::from_utf8(fixture("gmail_reply.eml"))
        .unwrap()
        .replace(
            "livedesk.41.97.5f0c1d2e3a4b4c5d8e9f0a1b2c3d4e5f@example.com",
            first_email,
        );
    let (code, stderr) = receive(&url, somebody.as_bytes());
    assert_eq!(code, 0, "{stderr}");
    let per_ticket = |sql: tokio_postgres::Client| async move {
        sql.query(
            "SELECT t.id, count(m.id), t.status FROM tickets t JOIN messages m ON m.ticket_id = t.id GROUP BY t.id ORDER BY t.id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, i64>(1), r.get::<_, String>(2)))
        .collect::<Vec<_>>()
    };
    assert_eq!(
        per_ticket(app.sql().await).await,
        [(1, "new".to_string()), (1, "new".to_string())],
        "another sender's answer is a ticket of its own"
    );

    // The customer answers herself (References names her first email): the
    // answer lands on the same ticket, which opens again if it was resolved.
    sql.batch_execute("UPDATE tickets SET status = 'resolved'")
        .await
        .unwrap();
    let answer = somebody
        .replace("joerg.mueller@gmail.example", "Petra.Novak@contoso.example")
        .replace("Message-ID: <", "Message-ID: <petra.");
    let (code, stderr) = receive(&url, answer.as_bytes());
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        per_ticket(app.sql().await).await,
        [(2, "open".to_string()), (1, "resolved".to_string())],
        "threaded onto her ticket, which opened again"
    );

    // Her out-of-office answer (RFC 3834) is kept, but opens nothing again
    // (found by a review: autoresponders reopened resolved tickets).
    sql.batch_execute("UPDATE tickets SET status = 'resolved'")
        .await
        .unwrap();
    let away = answer.replace(
        "Message-ID: <petra.",
        "Auto-Submitted: auto-replied\r\nMessage-ID: <away.",
    );
    let (code, stderr) = receive(&url, away.as_bytes());
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        per_ticket(app.sql().await).await,
        [(3, "resolved".to_string()), (1, "resolved".to_string())],
        "kept on her ticket, which stays resolved"
    );
}

/// A contact form named in `LIVEDESK_MAIL_FORM_SENDERS` sends every request
/// from its own `noreply@` address with the customer in `Reply-To:`: each
/// customer gets their ticket (not one `noreply` customer for all), and a
/// customer's answer from their own mailbox threads onto theirs. Anyone
/// else's Reply-To is not believed: an outsider naming a customer there,
/// with a reference to that customer's email, opens a ticket of their own
/// (a review threaded it onto the customer's ticket under their name).
#[tokio::test]
async fn a_contact_forms_reply_to_is_the_customer() {
    let app = TestApp::spawn().await;
    let (url, _) = gateway(&app).await;
    let forms = [(
        "LIVEDESK_MAIL_FORM_SENDERS",
        "other@shop.example, noreply@shop.example",
    )];
    let sql = app.sql().await;
    for (n, customer) in ["Jane Roe <jane@example.org>", "Sam Poe <sam@example.org>"]
        .iter()
        .enumerate()
    {
        let form = format!(
            "From: Shop website <NoReply@shop.example>\r\nReply-To: {customer}\r\n\
             Subject: Contact form\r\nMessage-ID: <form-{n}@shop.example>\r\n\r\nWhere is my order?\r\n"
        );
        let (code, stderr) = receive_with(&url, form.as_bytes(), &forms);
        assert_eq!(code, 0, "{stderr}");
    }
    let customers = |sql: tokio_postgres::Client| async move {
        sql.query(
            "SELECT c.email, c.name, count(m.id) FROM tickets t JOIN customers c ON c.id = t.customer_id \
             JOIN messages m ON m.ticket_id = t.id GROUP BY t.id, c.email, c.name ORDER BY t.id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1), r.get::<_, i64>(2)))
        .collect::<Vec<_>>()
    };
    assert_eq!(
        customers(app.sql().await).await,
        [
            ("jane@example.org".to_string(), "Jane Roe".to_string(), 1),
            ("sam@example.org".to_string(), "Sam Poe".to_string(), 1)
        ]
    );
    let answer = "From: Jane Roe <jane@example.org>\r\nSubject: Re: Contact form\r\n\
                  Message-ID: <jane-1@example.org>\r\nIn-Reply-To: <form-0@shop.example>\r\n\r\nAny news?\r\n";
    let (code, stderr) = receive_with(&url, answer.as_bytes(), &forms);
    assert_eq!(code, 0, "{stderr}");
    let counts: Vec<i64> = customers(app.sql().await)
        .await
        .iter()
        .map(|c| c.2)
        .collect();
    assert_eq!(counts, [2, 1], "her answer is on her ticket");

    let mallory = "From: Mallory <mallory@evil.example>\r\nReply-To: jane@example.org\r\n\
                   Subject: Re: Contact form\r\nMessage-ID: <m-1@evil.example>\r\n\
                   In-Reply-To: <jane-1@example.org>\r\n\r\nRefund to my IBAN please\r\n";
    let (code, stderr) = receive_with(&url, mallory.as_bytes(), &forms);
    assert_eq!(code, 0, "{stderr}");
    let after = customers(sql).await;
    assert_eq!(after.len(), 3, "a ticket of its own: {after:?}");
    assert_eq!(after[2].0, "mallory@evil.example");
    assert_eq!(after[0].2, 2, "nothing added to Jane's ticket");
}

/// A Message-ID that another sender used first is not a redelivery: the
/// second sender's email is kept (found by a review: it was dropped as
/// "already received", exit 0, and the MTA deleted it). Its own
/// redelivery is still one.
#[tokio::test]
async fn a_message_id_reused_by_another_sender_is_not_a_duplicate() {
    let app = TestApp::spawn().await;
    let (url, _) = gateway(&app).await;
    let email = |from: &str, body: &str| {
        format!(
            "From: {from}\r\nSubject: Hello\r\nMessage-ID: <same-1@example.org>\r\n\r\n{body}\r\n"
        )
    };
    let first = email("mallory@evil.example", "first");
    let second = email(
        "alice@victim.example",
        "my account was hacked, lock it now!",
    );
    assert_eq!(receive(&url, first.as_bytes()).0, 0);
    let (code, stderr) = receive(&url, second.as_bytes());
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("already received"), "{stderr}");
    let (code, stderr) = receive(&url, second.as_bytes());
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("already received"), "{stderr}");
    let bodies: Vec<String> = app
        .sql()
        .await
        .query("SELECT body FROM messages ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(bodies, ["first", "my account was hacked, lock it now!"]);
}

#[tokio::test]
async fn exit_codes_tell_the_mta_what_to_do() {
    let app = TestApp::spawn().await;
    let (url, _) = gateway(&app).await;
    // Not a message with a sender: a data error (65), bounced.
    let (code, stderr) = receive(&url, b"this is not an email\n");
    assert_eq!(code, 65, "{stderr}");
    // The database is down (nothing listens there): try again later (75).
    let (code, stderr) = receive(
        "host=127.0.0.1 port=1 user=nobody dbname=livedesk connect_timeout=2",
        &fixture("koi8r.eml"),
    );
    assert_eq!(code, 75, "{stderr}");
    // With DATABASE_URL but no writer role named: a configuration error (78).
    let mut child = Command::new(env!("CARGO_BIN_EXE_livedesk"))
        .args(["mail", "receive"])
        .env("DATABASE_URL", cluster().url(&app.dbname))
        .env_remove("LIVEDESK_MAIL_DATABASE_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&fixture("koi8r.eml"))
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    // Nothing was written by any of them.
    let tickets: i64 = app
        .sql()
        .await
        .query_one("SELECT count(*) FROM tickets", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(tickets, 0);
}

/// The embedded default's way: the superuser connects and becomes the
/// writer role (made on first use), so the rules and the actor are a writer's.
#[tokio::test]
async fn without_a_url_the_gateway_becomes_its_writer_role() {
    let app = TestApp::spawn().await;
    let role = format!("mailsu{}", std::process::id());
    let db = livedesk::mail::MailDatabase::as_writer_via_superuser(
        cluster().admin_config(&app.dbname),
        &role,
    )
    .await
    .unwrap();
    // Twice: the second finds the role.
    let db = {
        drop(db);
        livedesk::mail::MailDatabase::as_writer_via_superuser(
            cluster().admin_config(&app.dbname),
            &role,
        )
        .await
        .unwrap()
    };
    let client = db.connect().await.unwrap();
    let who: (String, String) = {
        let r = client
            .query_one("SELECT session_user::text, current_user::text", &[])
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(who, (role.clone(), role.clone()));
    let refused = client
        .batch_execute("DELETE FROM tickets")
        .await
        .unwrap_err();
    assert_eq!(
        refused.code().unwrap().code(),
        "42501",
        "a writer's rights only"
    );
    let mail = inbound::parse(&fixture("koi8r.eml")).unwrap();
    let received = inbound::store(&client, &mail).await.unwrap();
    assert!(received.created && received.new_ticket);
    let actor: Option<i64> = app
        .sql()
        .await
        .query_one(
            "SELECT e.actor_agent_id FROM ticket_events e JOIN writers w ON w.agent_id = e.actor_agent_id \
             WHERE e.ticket_id = $1 AND e.version = 1 AND w.role_name = $2",
            &[&received.ticket_id, &role],
        )
        .await
        .unwrap()
        .get(0);
    assert!(actor.is_some());
}

#[tokio::test]
async fn a_bounce_of_a_sent_reply_is_noted_on_its_ticket_not_a_ticket_of_its_own() {
    let raw = fixture("bounce_postfix.eml");
    let parsed = inbound::parse(&raw).unwrap();
    assert_eq!(
        parsed.bounce,
        Some(inbound::Bounce {
            original: "livedesk.41.97.5f0c1d2e3a4b4c5d8e9f0a1b2c3d4e5f@example.com".into(),
            reason: "smtp; 550 5.1.1 <petra.novak@contoso.example>: Recipient address rejected: User unknown".into(),
        })
    );

    let app = TestApp::spawn().await;
    let (url, gateway_agent) = gateway(&app).await;
    assert_eq!(receive(&url, &fixture("outlook.eml")).0, 0);
    let sql = app.sql().await;
    let (ticket, seen): (i64, i64) = {
        let r = sql
            .query_one("SELECT ticket_id, id FROM messages", &[])
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    // Alice's reply was sent (as `livedesk mail send` records it).
    let (_, alice) = app.agent("Alice", "agent").await;
    let (status, reply) = app
        .post(
            &format!("/api/tickets/{ticket}/messages"),
            &alice,
            serde_json::json!({"kind": "reply", "body": "Refunded.", "seen_message_id": seen}),
        )
        .await;
    assert_eq!(status, 201);
    let reply_id = reply["id"].as_i64().unwrap();
    let sent: String = sql
        .query_one(
            "SELECT ld_mail_prepare($1, 'example.com') ->> 'mail_message_id'",
            &[&reply_id],
        )
        .await
        .unwrap()
        .get(0);
    sql.execute("SELECT ld_mail_sent($1)", &[&reply_id])
        .await
        .unwrap();

    // The relay accepted it; the customer's server bounced it later.
    let bounce = String::from_utf8(raw.clone()).unwrap().replace(
        "livedesk.41.97.5f0c1d2e3a4b4c5d8e9f0a1b2c3d4e5f@example.com",
        &sent,
    );
    for _ in 0..2 {
        let (code, stderr) = receive(&url, bounce.as_bytes());
        assert_eq!(code, 0, "{stderr}");
    }
    let row = sql
        .query_one(
            "SELECT status, last_error FROM mail_messages WHERE direction = 'out'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "failed");
    assert!(row.get::<_, String>(1).contains("User unknown"));
    let notes = sql
        .query(
            "SELECT author_agent_id, body FROM messages WHERE ticket_id = $1 AND kind = 'note'",
            &[&ticket],
        )
        .await
        .unwrap();
    assert_eq!(notes.len(), 1, "one note, also for a duplicate bounce");
    assert_eq!(notes[0].get::<_, Option<i64>>(0), Some(gateway_agent));
    let body: String = notes[0].get(1);
    assert!(
        body.contains("could not be emailed to petra.novak@contoso.example")
            && body.contains("Recipient address rejected"),
        "{body}"
    );
    let tickets: i64 = sql
        .query_one("SELECT count(*) FROM tickets", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(tickets, 1, "the bounce opened no ticket");

    // A bounce of something livedesk never sent is an email like any other.
    let other = String::from_utf8(raw)
        .unwrap()
        .replace("20231114102103.4R2Zk93Qb7z9sVt", "20231114102104.other");
    assert_eq!(receive(&url, other.as_bytes()).0, 0);
    let subject: String = sql
        .query_one("SELECT subject FROM tickets WHERE id <> $1", &[&ticket])
        .await
        .unwrap()
        .get(0);
    assert_eq!(subject, "Undelivered Mail Returned to Sender");

    // Alice's next reply answers the customer's email, not the bounce
    // report (found by a review: In-Reply-To named the report).
    let newest: i64 = sql
        .query_one(
            "SELECT max(id) FROM messages WHERE ticket_id = $1",
            &[&ticket],
        )
        .await
        .unwrap()
        .get(0);
    let (status, again) = app
        .post(
            &format!("/api/tickets/{ticket}/messages"),
            &alice,
            serde_json::json!({"kind": "reply", "body": "Fixed the address.", "seen_message_id": newest}),
        )
        .await;
    assert_eq!(status, 201, "{again}");
    let parent: String = sql
        .query_one(
            "SELECT ld_mail_prepare($1, 'example.com') ->> 'in_reply_to'",
            &[&again["id"].as_i64().unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        parent,
        "AM6PR05MB6104A1B2C3D4E5F6A7B8C9D0E1F2A3B4C5D6@AM6PR05MB6104.eurprd05.prod.outlook.com"
    );
}
