//! Request spans: every answer carries a fresh `x-request-id`, the log
//! lines of that request carry the same id, and the span records no secret
//! (neither the WebSocket's `access_token` query parameter nor the
//! `Authorization` header).
#![allow(clippy::unwrap_used)]

use crate::common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use actix_web::{web, App, HttpResponse};
use common::TestApp;
use livedesk::http::{observe, request_span};

/// The id of an answer, checked to be a UUID.
fn id_of(response: &reqwest::Response) -> String {
    let id = response
        .headers()
        .get("x-request-id")
        .unwrap_or_else(|| panic!("no x-request-id on {}", response.url()))
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(id.len(), 36, "not a UUID: {id}");
    assert_eq!(id.matches('-').count(), 4, "not a UUID: {id}");
    id
}

#[tokio::test]
async fn every_answer_carries_a_request_id_of_its_own() {
    let app = TestApp::spawn().await;
    let (_, token) = app.agent("Alice", "agent").await;
    let mut seen = HashSet::new();
    let mut statuses = HashSet::new();
    let requests = [
        ("/healthz", None),
        ("/api/me", Some(token.as_str())),
        ("/api/me", None),                     // 401
        ("/api/tickets/999999", Some(&token)), // 404 from SQL
        ("/no/such/route", None),              // 404 from the router
        ("/ws", None),                         // 401 at the handshake
        ("/healthz", None),
    ];
    for (path, token) in requests {
        let mut request = app.http.get(format!("{}{path}", app.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        statuses.insert(response.status().as_u16());
        let id = id_of(&response);
        assert!(seen.insert(id.clone()), "{id} answered twice");
    }
    assert!(statuses.contains(&200) && statuses.contains(&401) && statuses.contains(&404));
}

/// A writer the test reads back: what the log would have said.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[actix_web::test]
async fn the_requests_log_lines_carry_its_id_and_no_secret() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .finish();
    // This thread only: the test service runs on it.
    let _guard = tracing::subscriber::set_default(subscriber);
    // The other tests' servers run the same callsites (the access line) on
    // other threads at the same time, with no subscriber: an interest they
    // cached as "never" while this one was being registered would hide the
    // lines from it (failed once in a full run). Compute it again now.
    tracing::callsite::rebuild_interest_cache();
    // The server's own composition: the span outermost, the access line inside.
    let service = actix_web::test::init_service(
        App::new()
            .wrap_fn(observe)
            .wrap(request_span::middleware())
            .route(
                "/ws",
                web::get().to(|| async {
                    tracing::warn!("inside the handler");
                    HttpResponse::Ok().finish()
                }),
            ),
    )
    .await;
    let request = actix_web::test::TestRequest::get()
        .uri("/ws?access_token=SECRET-QUERY-TOKEN")
        .insert_header(("authorization", "Bearer SECRET-HEADER-TOKEN"))
        .insert_header(("cookie", "session=SECRET-COOKIE"))
        .to_request();
    let response = actix_web::test::call_service(&service, request).await;
    let id = response
        .headers()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    drop(response);
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(!log.contains("SECRET"), "a secret reached the log:\n{log}");
    let lines: Vec<&str> = log.lines().collect();
    let handler = lines
        .iter()
        .find(|l| l.contains("inside the handler"))
        .unwrap_or_else(|| panic!("no handler line:\n{log}"));
    let access = lines
        .iter()
        .find(|l| l.contains("path=/ws"))
        .unwrap_or_else(|| panic!("no access line:\n{log}"));
    for line in [handler, access] {
        assert!(
            line.contains(&format!("request_id={id}")),
            "line without the request's id {id}: {line}"
        );
    }
}
