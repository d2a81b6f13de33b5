//! The OpenAPI document (`GET /api/openapi.json`, contract §5) against the
//! code and the contract: every route that `http::configure` registers is in
//! it with the statuses the contract names, and real answers of a run
//! through the API (successes, conflicts, error bodies) validate against its
//! schemas (JSON Schema 2020-12, `$ref`s resolved into `components`).
#![allow(clippy::unwrap_used)]

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{test_settings, ws::WsClient, TestApp};
use reqwest::Method;
use serde_json::{json, Value};

/// The statuses the contract (§5, §5a) names for each operation; the
/// document must list at least these. Every operation behind a token also
/// answers 401 and 429 (checked separately).
const CONTRACT_STATUSES: &[(&str, &str, &[u16])] = &[
    ("get", "/healthz", &[200, 503]),
    ("get", "/metrics", &[200]),
    ("get", "/api/openapi.json", &[200]),
    ("post", "/api/login", &[200, 400, 404, 413, 429]),
    ("get", "/api/me", &[200]),
    ("get", "/api/agents", &[200]),
    ("get", "/api/tickets", &[200, 400]),
    ("post", "/api/tickets", &[201, 400, 413]),
    ("get", "/api/tickets/{id}", &[200, 404]),
    ("patch", "/api/tickets/{id}", &[200, 400, 404, 409, 413]),
    ("get", "/api/tickets/{id}/messages", &[200, 400, 404]),
    (
        "post",
        "/api/tickets/{id}/messages",
        &[200, 201, 400, 403, 404, 409, 413],
    ),
    ("post", "/api/tickets/{id}/tags", &[200, 400, 404, 413]),
    ("get", "/api/tickets/{id}/events", &[200, 400, 404]),
    ("put", "/api/tickets/{id}/draft", &[200, 400, 404, 413]),
    ("get", "/api/tickets/{id}/draft", &[200, 404]),
    ("delete", "/api/tickets/{id}/draft", &[204, 404]),
    ("get", "/api/tickets/{id}/drafts", &[200, 404]),
    ("get", "/api/fields", &[200]),
    ("put", "/api/fields/{key}", &[200, 400, 403, 413]),
    // §6: the token in the header or `access_token`; the Origin allow-list.
    ("get", "/ws", &[101, 401, 403]),
];

/// Operations open without a token.
const OPEN: &[&str] = &["/healthz", "/metrics", "/api/openapi.json", "/api/login"];

/// (method, path) of every `.service(...)` and `.route(...)` in
/// `src/http/mod.rs`'s `configure`, read from the handler's actix attribute.
fn registered_routes() -> Vec<(String, String)> {
    let root = env!("CARGO_MANIFEST_DIR");
    let module = std::fs::read_to_string(format!("{root}/src/http/mod.rs")).unwrap();
    let start = module
        .find("pub fn configure(")
        .expect("configure in src/http/mod.rs");
    let body = &module[start..];
    let body = &body[..body.find("\n}\n").expect("end of configure")];
    let mut routes = Vec::new();
    for line in body.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix(".route(\"") {
            let path = &rest[..rest.find('"').unwrap()];
            let method = rest.split("web::").nth(1).unwrap();
            let method = &method[..method.find('(').unwrap()];
            routes.push((method.to_string(), path.to_string()));
            continue;
        }
        let Some(handler) = line
            .strip_prefix(".service(")
            .and_then(|r| r.strip_suffix(')'))
        else {
            continue;
        };
        let parts: Vec<&str> = handler.split("::").collect();
        let (file, name) = match parts.as_slice() {
            ["routes", module, name] => (format!("{root}/src/http/routes/{module}.rs"), *name),
            [module, name] => (format!("{root}/src/http/{module}.rs"), *name),
            _ => panic!("cannot read the handler of {line}"),
        };
        let source = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
        let at = source
            .find(&format!("pub async fn {name}("))
            .unwrap_or_else(|| panic!("no handler {name} in {file}"));
        // The actix attribute closest above the function.
        let before = &source[..at];
        let (method, path) = ["get", "post", "put", "patch", "delete"]
            .iter()
            .filter_map(|m| {
                let marker = format!("#[{m}(\"");
                before.rfind(&marker).map(|i| {
                    let rest = &before[i + marker.len()..];
                    (
                        i,
                        m.to_string(),
                        rest[..rest.find('"').unwrap()].to_string(),
                    )
                })
            })
            .max_by_key(|(i, _, _)| *i)
            .map(|(_, m, p)| (m, p))
            .unwrap_or_else(|| panic!("no actix attribute above {name} in {file}"));
        routes.push((method, path));
    }
    assert!(routes.len() > 10, "configure was not read: {routes:?}");
    routes
}

/// The document, as served (no token needed).
async fn document(app: &TestApp) -> Value {
    let response = app
        .http
        .get(format!("{}/api/openapi.json", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    response.json().await.unwrap()
}

fn operation<'d>(doc: &'d Value, method: &str, path: &str) -> Option<&'d Value> {
    doc["paths"].get(path)?.get(method)
}

/// Every `$ref` in `value`.
fn refs(value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("$ref", Value::String(r)) => {
                        out.insert(r.clone());
                    }
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn the_document_lists_every_route_with_the_contracts_statuses() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "not OpenAPI 3.1: {}",
        doc["openapi"]
    );
    let mut problems = Vec::new();

    // Every registered route is documented (or excused), and nothing else is.
    let registered = registered_routes();
    for (method, path) in &registered {
        if operation(&doc, method, path).is_none() {
            problems.push(format!(
                "{} {path} is served but not in the document",
                method.to_uppercase()
            ));
        }
    }
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if !registered.iter().any(|(m, p)| m == method && p == path) {
                problems.push(format!(
                    "{} {path} is documented but not served",
                    method.to_uppercase()
                ));
            }
        }
    }

    // The contract's statuses, the error shape, the token.
    for (method, path, statuses) in CONTRACT_STATUSES {
        let Some(op) = operation(&doc, method, path) else {
            problems.push(format!("{} {path}: missing", method.to_uppercase()));
            continue;
        };
        let open = OPEN.contains(path);
        let mut wanted: Vec<u16> = statuses.to_vec();
        if !open {
            wanted.extend([401, 429]);
        }
        for status in wanted {
            if op["responses"].get(status.to_string()).is_none() {
                problems.push(format!(
                    "{} {path}: no {status} answer",
                    method.to_uppercase()
                ));
            }
        }
        let secured = op["security"]
            .as_array()
            .is_some_and(|s| s.iter().any(|r| r.get("bearer").is_some()));
        if secured == open {
            problems.push(format!(
                "{} {path}: bearer security {}",
                method.to_uppercase(),
                if open { "on an open route" } else { "missing" }
            ));
        }
    }
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for (status, response) in op["responses"].as_object().unwrap() {
                let schema = &response["content"]["application/json"]["schema"];
                if status.starts_with('4') && schema["$ref"] != "#/components/schemas/ErrorBody" {
                    problems.push(format!(
                        "{method} {path} {status}: not the error shape: {schema}"
                    ));
                }
                if !matches!(status.as_str(), "101" | "204") && response.get("content").is_none() {
                    problems.push(format!("{method} {path} {status}: no body schema"));
                }
            }
        }
    }
    if !CONTRACT_STATUSES
        .iter()
        .all(|(m, p, _)| registered.iter().any(|(rm, rp)| rm == m && rp == p))
    {
        problems.push("the contract's list names a route that configure does not serve".into());
    }

    // And the server really routes each documented operation: no answer
    // from the catch-all (`There is no METHOD /path.`).
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let concrete = path.replace("{id}", "1").replace("{key}", "plan");
            let request = app.http.request(
                method.to_uppercase().parse().unwrap(),
                format!("{}{concrete}", app.base),
            );
            let (_, body) = common::send(request).await;
            let message = body["error"]["message"].as_str().unwrap_or("");
            if message.starts_with("There is no ") {
                problems.push(format!(
                    "{method} {path} is documented but the server has no such route"
                ));
            }
        }
    }

    // Unique operation ids: client generators name their functions by them.
    let mut ids = BTreeSet::new();
    for item in doc["paths"].as_object().unwrap().values() {
        for (method, op) in item.as_object().unwrap() {
            match op["operationId"].as_str() {
                Some(id) if ids.insert(id.to_string()) => {}
                other => problems.push(format!(
                    "{method}: operationId {other:?} missing or repeated"
                )),
            }
        }
    }

    // Every reference resolves.
    let mut all = BTreeSet::new();
    refs(&doc, &mut all);
    for r in all {
        let name = r.strip_prefix("#/components/schemas/").unwrap_or(&r);
        if doc["components"]["schemas"].get(name).is_none() {
            problems.push(format!("dangling $ref {r}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Validators for the answers of the document's operations.
struct Checker {
    doc: Value,
    checked: BTreeSet<(String, String, u16)>,
}

impl Checker {
    /// The schema of one answer, as a standalone JSON Schema 2020-12 whose
    /// `$ref`s point into a copy of the document's components.
    fn schema(&self, method: &str, path: &str, status: u16) -> Option<Value> {
        let op = operation(&self.doc, method, path)
            .unwrap_or_else(|| panic!("{method} {path} is not in the document"));
        let response = op["responses"].get(status.to_string()).unwrap_or_else(|| {
            panic!("{method} {path} answered {status}, which the document does not list")
        });
        let schema = response["content"]["application/json"].get("schema")?;
        Some(json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "allOf": [schema],
            "components": self.doc["components"],
        }))
    }

    /// Check one answer against the document: its status is listed and its
    /// JSON body matches the schema.
    fn check(&mut self, method: &str, path: &str, status: u16, body: &Value) {
        self.checked
            .insert((method.to_string(), path.to_string(), status));
        if let Some(schema) = self.schema(method, path, status) {
            let what = format!("{} {path} {status}", method.to_uppercase());
            validate(&schema, body, &what);
        }
    }

    /// Check a request body the server accepted against the documented
    /// request body: a client built from the document must be able to send it.
    fn check_request(&self, method: &str, path: &str, body: &Value) {
        let op = operation(&self.doc, method, path)
            .unwrap_or_else(|| panic!("{method} {path} is not in the document"));
        let schema = op["requestBody"]["content"]["application/json"]
            .get("schema")
            .unwrap_or_else(|| {
                panic!("{method} {path} takes a body the document does not describe")
            });
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "allOf": [schema],
            "components": self.doc["components"],
        });
        let what = format!("the request body of {} {path}", method.to_uppercase());
        validate(&schema, body, &what);
    }
}

/// Validate `instance` against a standalone schema; fail with every error.
fn validate(schema: &Value, instance: &Value, what: &str) {
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(schema)
        .unwrap_or_else(|e| panic!("the schema of {what} is invalid: {e}"));
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("  at {}: {e}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{what} does not match the document:\n{}\nbody: {instance:#}",
        errors.join("\n")
    );
}

/// Send, check the answer against the document, return (status, JSON).
async fn call(
    checker: &mut Checker,
    app: &TestApp,
    method: Method,
    template: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = app
        .http
        .request(method.clone(), format!("{}{}", app.base, path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = &body {
        request = request.json(body);
    }
    let (status, answer) = common::send(request).await;
    let lower = method.as_str().to_lowercase();
    checker.check(&lower, template, status, &answer);
    if let (Some(sent), 200..=299) = (&body, status) {
        checker.check_request(&lower, template, sent);
    }
    (status, answer)
}

#[tokio::test]
async fn real_answers_match_the_documents_schemas() {
    let app = TestApp::spawn().await;
    let doc = document(&app).await;
    let mut c = Checker {
        doc,
        checked: BTreeSet::new(),
    };
    let (alice, a) = app.agent("Alice", "agent").await;
    let (bob, b) = app.agent("Bob", "agent").await;
    let (_carol, admin) = app.agent("Carol", "admin").await;
    let (_svc, service) = app.agent("Gateway", "service").await;
    use Method as M;

    // Who, what, health.
    call(&mut c, &app, M::GET, "/api/me", "/api/me", Some(&a), None).await;
    call(
        &mut c,
        &app,
        M::GET,
        "/api/agents",
        "/api/agents",
        Some(&a),
        None,
    )
    .await;
    call(&mut c, &app, M::GET, "/healthz", "/healthz", None, None).await;
    let (status, _) = call(&mut c, &app, M::GET, "/api/me", "/api/me", None, None).await;
    assert_eq!(status, 401);
    let (status, _) = call(
        &mut c,
        &app,
        M::GET,
        "/api/me",
        "/api/me",
        Some("ldk_nope"),
        None,
    )
    .await;
    assert_eq!(status, 401);

    // Field definitions.
    let (status, _) = call(
        &mut c,
        &app,
        M::PUT,
        "/api/fields/{key}",
        "/api/fields/plan",
        Some(&admin),
        Some(json!({"label": "Plan", "type": "select", "options": ["free", "pro"]})),
    )
    .await;
    assert_eq!(status, 200);
    call(
        &mut c,
        &app,
        M::PUT,
        "/api/fields/{key}",
        "/api/fields/order_ref",
        Some(&admin),
        Some(json!({"label": "Order", "type": "text", "position": 2})),
    )
    .await;
    let (status, _) = call(
        &mut c,
        &app,
        M::PUT,
        "/api/fields/{key}",
        "/api/fields/x",
        Some(&a),
        Some(json!({"label": "X", "type": "text"})),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = call(
        &mut c,
        &app,
        M::PUT,
        "/api/fields/{key}",
        "/api/fields/Bad-Key",
        Some(&admin),
        Some(json!({"label": "X", "type": "text"})),
    )
    .await;
    assert_eq!(status, 400);
    call(
        &mut c,
        &app,
        M::GET,
        "/api/fields",
        "/api/fields",
        Some(&a),
        None,
    )
    .await;

    // Tickets.
    let (status, ticket) = call(
        &mut c,
        &app,
        M::POST,
        "/api/tickets",
        "/api/tickets",
        Some(&a),
        Some(json!({"subject": "Printer on fire", "channel": "email",
                    "customer": {"email": "dana@example.com", "name": "Dana"}, "body": "Help!"})),
    )
    .await;
    assert_eq!(status, 201, "{ticket}");
    let id = ticket["id"].as_i64().unwrap();
    let (status, _) = call(
        &mut c,
        &app,
        M::POST,
        "/api/tickets",
        "/api/tickets",
        Some(&a),
        Some(json!({"channel": "chat", "body": "first line\nsecond"})),
    )
    .await;
    assert_eq!(status, 201);
    let (status, _) = call(
        &mut c,
        &app,
        M::POST,
        "/api/tickets",
        "/api/tickets",
        Some(&a),
        Some(json!({"subject": "x", "colour": "red"})),
    )
    .await;
    assert_eq!(status, 400);
    let t = format!("/api/tickets/{id}");

    // Someone on the ticket, so `presence` has a viewer.
    let mut ws = WsClient::connect(&app.base, &b).await;
    c.check("get", "/ws", 101, &Value::Null);
    ws.subscribe(id, None).await;
    let (status, _) = call(&mut c, &app, M::GET, "/ws", "/ws", None, None).await;
    assert_eq!(status, 401);

    // Messages: a customer's, a reply, a colleague's duplicate reply, an idempotent note.
    let m = format!("{t}/messages");
    let tm = "/api/tickets/{id}/messages";
    let (status, customer) = call(
        &mut c, &app, M::POST, tm, &m, Some(&service),
        Some(json!({"kind": "customer", "body": "Still burning", "customer": {"email": "dana@example.com"}})),
    )
    .await;
    assert_eq!(status, 201, "{customer}");
    let seen = customer["id"].as_i64().unwrap();
    let (status, _) = call(
        &mut c,
        &app,
        M::POST,
        tm,
        &m,
        Some(&a),
        Some(json!({"kind": "reply", "body": "On my way", "seen_message_id": seen})),
    )
    .await;
    assert_eq!(status, 201);
    let (status, refused) = call(
        &mut c,
        &app,
        M::POST,
        tm,
        &m,
        Some(&b),
        Some(json!({"kind": "reply", "body": "Me too", "seen_message_id": seen})),
    )
    .await;
    assert_eq!(status, 409);
    assert_eq!(refused["error"]["code"], "duplicate_reply");
    let note = json!({"kind": "note", "body": "extinguisher in room 2", "client_id": "n-1"});
    let (status, _) = call(&mut c, &app, M::POST, tm, &m, Some(&a), Some(note.clone())).await;
    assert_eq!(status, 201);
    let (status, _) = call(&mut c, &app, M::POST, tm, &m, Some(&a), Some(note)).await;
    assert_eq!(status, 200);
    let (status, _) = call(
        &mut c,
        &app,
        M::POST,
        tm,
        &m,
        Some(&a),
        Some(json!({"kind": "customer", "body": "x"})),
    )
    .await;
    assert_eq!(status, 403);
    let big = "x".repeat(300 * 1024);
    let (status, _) = call(
        &mut c,
        &app,
        M::POST,
        tm,
        &m,
        Some(&a),
        Some(json!({"kind": "note", "body": big})),
    )
    .await;
    assert_eq!(status, 413);

    // Drafts.
    let d = format!("{t}/draft");
    let td = "/api/tickets/{id}/draft";
    let (status, _) = call(
        &mut c,
        &app,
        M::PUT,
        td,
        &d,
        Some(&b),
        Some(json!({"kind": "reply", "body": "Dear Dana", "seen_message_id": seen})),
    )
    .await;
    assert_eq!(status, 200);
    call(&mut c, &app, M::GET, td, &d, Some(&b), None).await;
    call(
        &mut c,
        &app,
        M::GET,
        "/api/tickets/{id}/drafts",
        &format!("{t}/drafts"),
        Some(&a),
        None,
    )
    .await;
    let (status, _) = call(&mut c, &app, M::GET, td, &d, Some(&a), None).await;
    assert_eq!(status, 404);
    let (status, _) = call(
        &mut c,
        &app,
        M::PUT,
        td,
        &d,
        Some(&b),
        Some(json!({"kind": "memo", "body": "x"})),
    )
    .await;
    assert_eq!(status, 400);

    // The whole ticket: messages, a viewer, a draft marker.
    let tt = "/api/tickets/{id}";
    let mut viewers = 0;
    for _ in 0..200 {
        let (status, detail) = call(&mut c, &app, M::GET, tt, &t, Some(&a), None).await;
        assert_eq!(status, 200);
        viewers = detail["presence"].as_array().unwrap().len();
        if viewers > 0 {
            assert_eq!(detail["drafts"].as_array().unwrap().len(), 1, "{detail}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(viewers > 0, "Bob never showed up as a viewer");
    let (status, _) = call(&mut c, &app, M::DELETE, td, &d, Some(&b), None).await;
    assert_eq!(status, 204);

    // PATCH: applied, then each kind of conflict, then a bad If-Match.
    let (status, patched) = call(
        &mut c,
        &app,
        M::PATCH,
        tt,
        &t,
        Some(&a),
        Some(json!({"changes": {
            "status": {"from": "new", "to": "open"},
            "assignee_id": {"from": null, "to": alice.id},
            "custom_fields.plan": {"from": null, "to": "pro"},
            "custom_fields.order_ref": {"from": null, "to": "A-17"}}})),
    )
    .await;
    assert_eq!(status, 200, "{patched}");
    let (status, body) = call(
        &mut c,
        &app,
        M::PATCH,
        tt,
        &t,
        Some(&b),
        Some(json!({"changes": {"status": {"from": "new", "to": "pending"}}})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("field_conflict"))
    );
    let (status, body) = call(
        &mut c,
        &app,
        M::PATCH,
        tt,
        &t,
        Some(&b),
        Some(json!({"changes": {"assignee_id": {"from": null, "to": bob.id}}})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("already_assigned"))
    );
    let stale = app
        .req(M::PATCH, &t, &b)
        .header("If-Match", "\"1\"")
        .json(&json!({"changes": {"priority": {"from": "normal", "to": "high"}}}));
    let (status, body) = common::send(stale).await;
    c.check("patch", tt, status, &body);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("stale_version"))
    );
    let bad = app
        .req(M::PATCH, &t, &b)
        .header("If-Match", "W/\"x\"")
        .json(&json!({"changes": {}}));
    let (status, body) = common::send(bad).await;
    c.check("patch", tt, status, &body);
    assert_eq!(status, 400);
    let (status, _) = call(
        &mut c,
        &app,
        M::PATCH,
        tt,
        &t,
        Some(&b),
        Some(json!({"changes": {"custom_fields.plan": {"from": "pro", "to": "gold"}}})),
    )
    .await;
    assert_eq!(status, 400);

    // Tags.
    let g = format!("{t}/tags");
    let tg = "/api/tickets/{id}/tags";
    let (status, _) = call(
        &mut c,
        &app,
        M::POST,
        tg,
        &g,
        Some(&a),
        Some(json!({"add": ["VIP", "billing"]})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = call(
        &mut c,
        &app,
        M::POST,
        tg,
        &g,
        Some(&a),
        Some(json!({"remove": ["vip"]})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = call(
        &mut c,
        &app,
        M::POST,
        tg,
        &g,
        Some(&a),
        Some(json!({"add": ["x"], "remove": ["x"]})),
    )
    .await;
    assert_eq!(status, 400);

    // History (every kind of event), pages, lists.
    let (status, events) = call(
        &mut c,
        &app,
        M::GET,
        "/api/tickets/{id}/events",
        &format!("{t}/events"),
        Some(&a),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let kinds: BTreeSet<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            "ticket.created",
            "ticket.updated",
            "message.created",
            "tags.changed"
        ])
    );
    let (status, _) = call(
        &mut c,
        &app,
        M::GET,
        "/api/tickets/{id}/events",
        &format!("{t}/events?since=abc"),
        Some(&a),
        None,
    )
    .await;
    assert_eq!(status, 400);
    let (status, page) = call(
        &mut c,
        &app,
        M::GET,
        tm,
        &format!("{m}?limit=1"),
        Some(&a),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(page["messages_before"].is_i64(), "{page}");
    let (status, _) = call(
        &mut c,
        &app,
        M::GET,
        tm,
        &format!("{m}?limit=0"),
        Some(&a),
        None,
    )
    .await;
    assert_eq!(status, 400);
    let (status, list) = call(
        &mut c,
        &app,
        M::GET,
        "/api/tickets",
        "/api/tickets?limit=1",
        Some(&a),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(list["next_before"].is_i64(), "{list}");
    call(
        &mut c,
        &app,
        M::GET,
        "/api/tickets",
        "/api/tickets?assignee=me&status=open",
        Some(&a),
        None,
    )
    .await;
    let (status, _) = call(
        &mut c,
        &app,
        M::GET,
        "/api/tickets",
        "/api/tickets?colour=red",
        Some(&a),
        None,
    )
    .await;
    assert_eq!(status, 400);

    // Not found, too large.
    for (template, path) in [
        (tt, "/api/tickets/999999".to_string()),
        (
            "/api/tickets/{id}/events",
            "/api/tickets/999999/events".to_string(),
        ),
        (tm, "/api/tickets/999999/messages".to_string()),
        (
            "/api/tickets/{id}/drafts",
            "/api/tickets/999999/drafts".to_string(),
        ),
    ] {
        let (status, _) = call(&mut c, &app, M::GET, template, &path, Some(&a), None).await;
        assert_eq!(status, 404, "{path}");
    }
    let huge = "y".repeat(2 * 1024 * 1024);
    let (status, _) = call(
        &mut c,
        &app,
        M::POST,
        "/api/tickets",
        "/api/tickets",
        Some(&a),
        Some(json!({"subject": huge})),
    )
    .await;
    assert_eq!(status, 413);

    // Login: a real link, a spent one, a malformed body.
    let code = livedesk::domain::agents::login_link(&app.db, alice.id, Duration::from_secs(60))
        .await
        .unwrap()
        .0;
    let (status, login) = call(
        &mut c,
        &app,
        M::POST,
        "/api/login",
        "/api/login",
        None,
        Some(json!({"code": code})),
    )
    .await;
    assert_eq!(status, 200);
    // Logout: that login's token ends; sent again, it is a 401.
    let session = login["token"].as_str().unwrap().to_string();
    for expected in [204, 401] {
        let (status, _) = call(
            &mut c,
            &app,
            M::POST,
            "/api/logout",
            "/api/logout",
            Some(&session),
            None,
        )
        .await;
        assert_eq!(status, expected);
    }
    let (status, _) = call(
        &mut c,
        &app,
        M::POST,
        "/api/login",
        "/api/login",
        None,
        Some(json!({"code": code})),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = call(
        &mut c,
        &app,
        M::POST,
        "/api/login",
        "/api/login",
        None,
        Some(json!({"code": 5})),
    )
    .await;
    assert_eq!(status, 400);

    // Metrics: text, documented as such.
    let response = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let documented = c.doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    let served = response.headers()["content-type"].to_str().unwrap();
    assert!(served.starts_with(&documented), "{served} vs {documented}");

    // 429, from an app with a budget of one request per second.
    let mut settings = test_settings();
    settings.rate_per_token = 1;
    settings.burst_per_token = 1;
    let strict = TestApp::spawn_with(settings).await;
    let (_, token) = strict.agent("Eve", "agent").await;
    let mut limited = None;
    for _ in 0..20 {
        let (status, body) = common::send(strict.req(M::GET, "/api/me", &token)).await;
        c.check("get", "/api/me", status, &body);
        if status == 429 {
            limited = Some(body);
            break;
        }
    }
    assert!(limited.is_some(), "never rate limited");
    drop(ws);

    // The run reached every documented operation.
    let reached: BTreeSet<(String, String)> = c
        .checked
        .iter()
        .map(|(m, p, _)| (m.clone(), p.clone()))
        .collect();
    let mut missing = Vec::new();
    for (path, item) in c.doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if !reached.contains(&(method.clone(), path.clone()))
                && !matches!(path.as_str(), "/metrics" | "/api/openapi.json")
            {
                missing.push(format!("{method} {path}"));
            }
        }
    }
    assert!(missing.is_empty(), "not exercised: {missing:?}");
}
