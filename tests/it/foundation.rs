//! Foundation: the embedded default, tokens, the HTTP skeleton, bad configuration.

#![allow(clippy::unwrap_used)]

use crate::common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{error_code, send, TestApp};
use livedesk::domain::agents;
use reqwest::Method;

#[tokio::test]
async fn healthz_and_metrics_need_no_token() {
    let app = TestApp::spawn().await;
    let (status, body) = common::send(app.http.get(format!("{}/healthz", app.base))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["database"], true);
    assert_eq!(body["listener"], true);
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("livedesk_http_requests_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("livedesk_db_pool_connections"),
        "{metrics}"
    );
    assert!(metrics.contains("livedesk_listener_up 1"), "{metrics}");
}

#[tokio::test]
async fn a_token_authenticates_and_is_stored_hashed() {
    let app = TestApp::spawn().await;
    let (agent, token) = app.agent("Alice", "agent").await;
    let (status, me) = app.get("/api/me", &token).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["id"], agent.id);
    assert_eq!(me["name"], "Alice");
    assert_eq!(me["role"], "agent");
    assert!(me.get("token_hash").is_none());

    let sql = app.sql().await;
    let row = sql
        .query_one("SELECT token_hash FROM agents WHERE id = $1", &[&agent.id])
        .await
        .unwrap();
    let stored: Vec<u8> = row.get(0);
    assert_eq!(stored.len(), 32, "a SHA-256 digest");
    assert!(!stored
        .windows(token.len().min(16))
        .any(|w| token.as_bytes().starts_with(w)));
    let clear: i64 = sql
        .query_one(
            "SELECT count(*) FROM agents WHERE encode(token_hash, 'escape') LIKE '%' || $1 || '%'",
            &[&&token[4..20]],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(clear, 0, "the token is not stored in clear");
}

#[tokio::test]
async fn wrong_missing_or_malformed_tokens_get_401_in_the_error_shape() {
    let app = TestApp::spawn().await;
    let (_, token) = app.agent("Bob", "agent").await;
    let url = format!("{}/api/me", app.base);
    let cases: Vec<(&str, reqwest::RequestBuilder)> = vec![
        ("missing", app.http.get(&url)),
        ("wrong", app.http.get(&url).bearer_auth("ldk_0000")),
        (
            "tampered",
            app.http.get(&url).bearer_auth(format!("{token}x")),
        ),
        (
            "scheme",
            app.http
                .get(&url)
                .header("authorization", format!("Basic {token}")),
        ),
        (
            "empty",
            app.http.get(&url).header("authorization", "Bearer "),
        ),
        (
            "non-ascii",
            app.http.get(&url).header(
                "authorization",
                reqwest::header::HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap(),
            ),
        ),
    ];
    for (name, request) in cases {
        let (status, body) = common::send(request).await;
        assert_eq!(status, 401, "{name}: {body}");
        assert_eq!(error_code(&body), "unauthorized", "{name}");
    }
}

#[tokio::test]
async fn unknown_routes_and_bad_bodies_use_the_error_shape() {
    let app = TestApp::spawn().await;
    let (_, token) = app.agent("Carol", "agent").await;
    let (status, body) = app.get("/api/nope", &token).await;
    assert_eq!((status, error_code(&body)), (404, "not_found"));
    let (status, body) = common::send(
        app.req(Method::POST, "/api/tickets", &token)
            .header("content-type", "application/json")
            .body("{not json"),
    )
    .await;
    assert_eq!((status, error_code(&body)), (400, "invalid_json"), "{body}");
    let huge = "x".repeat(2 * 1024 * 1024);
    let (status, body) = common::send(
        app.req(Method::POST, "/api/tickets", &token)
            .header("content-type", "application/json")
            .body(format!("{{\"subject\":\"{huge}\"}}")),
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (413, "payload_too_large"),
        "{body}"
    );
}

fn livedesk() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_livedesk"));
    command
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    command
}

/// `GET /api/me` on a server started by a test; the status.
async fn me_status(base: &str, token: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{base}/api/me"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// `livedesk agent add` against the embedded default in `data`; the token.
fn cli_agent_add(data: &std::path::Path, name: &str, email: &str) -> String {
    let output = livedesk()
        .args(["agent", "add", "--name", name, "--email", email])
        .env("LIVEDESK_DATA_DIR", data)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

fn postgres_of(dir: &std::path::Path) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.contains("postgres") && cmdline.contains(&*dir.to_string_lossy()) {
            pids.push(pid);
        }
    }
    pids
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_for(url: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(r) = reqwest::get(url).await {
            if r.status() == 200 {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn the_embedded_default_starts_stops_cleanly_and_keeps_data() {
    let dir = tempfile::Builder::new()
        .prefix("livedesk-embedded-")
        .tempdir_in("/tmp")
        .unwrap();
    let data = dir.path().join("data");
    // An agent made with the CLI against the embedded default.
    let token = cli_agent_add(&data, "Dora", "dora@example.com");
    assert!(
        postgres_of(&data).is_empty(),
        "the CLI stops its PostgreSQL"
    );

    // Round 0: a CLI command next to the running server shares its database.
    // Round 1: the server is killed (-9): its PostgreSQL is orphaned.
    // Round 2: the next start takes the orphan over and stops it at the end.
    for round in 0..3 {
        let port = free_port();
        let mut server = livedesk()
            .env("LIVEDESK_DATA_DIR", &data)
            .env("LIVEDESK_BIND", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        assert!(
            wait_for(&format!("{base}/healthz"), Duration::from_secs(60)).await,
            "round {round}"
        );
        assert_eq!(
            me_status(&base, &token).await,
            200,
            "round {round}: the agent survives restarts"
        );
        assert!(!postgres_of(&data).is_empty());
        if round == 0 {
            let eli = cli_agent_add(&data, "Eli", "eli@example.com");
            assert_eq!(
                me_status(&base, &eli).await,
                200,
                "the running server sees the CLI's agent"
            );
            assert!(
                wait_for(&format!("{base}/healthz"), Duration::from_secs(5)).await,
                "still healthy"
            );
        }
        let signal = if round == 1 {
            nix::sys::signal::Signal::SIGKILL
        } else {
            nix::sys::signal::Signal::SIGTERM
        };
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(server.id() as i32), signal).unwrap();
        let status = tokio::task::spawn_blocking(move || server.wait())
            .await
            .unwrap()
            .unwrap();
        if round == 1 {
            assert!(
                !postgres_of(&data).is_empty(),
                "kill -9 leaves PostgreSQL behind"
            );
        } else {
            assert!(status.success(), "graceful stop: {status:?}");
            assert!(
                postgres_of(&data).is_empty(),
                "no orphan postgres after stop"
            );
        }
    }
}

#[tokio::test]
async fn a_stale_postmaster_pid_from_a_crash_is_handled() {
    let dir = tempfile::Builder::new()
        .prefix("livedesk-stale-")
        .tempdir_in("/tmp")
        .unwrap();
    let data = dir.path().join("data");
    let status = livedesk()
        .arg("migrate")
        .env("LIVEDESK_DATA_DIR", &data)
        .status()
        .unwrap();
    assert!(status.success());
    // A crash leaves postmaster.pid behind, naming a process that is gone.
    std::fs::write(data.join("pg/postmaster.pid"), "999999\n/nowhere\n").unwrap();
    let output = livedesk()
        .arg("migrate")
        .env("LIVEDESK_DATA_DIR", &data)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(postgres_of(&data).is_empty());
}

#[test]
fn bad_configuration_exits_2_with_a_clear_message() {
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            "bad bind",
            vec![("LIVEDESK_BIND", "not-an-address".into())],
            "invalid",
        ),
        (
            "unreachable database",
            vec![(
                "DATABASE_URL",
                "host=/nonexistent port=1 user=x dbname=y".into(),
            )],
            "database",
        ),
        (
            "malformed database url",
            vec![("DATABASE_URL", "postgres://%%%".into())],
            "database",
        ),
        (
            "unusable data folder",
            vec![("LIVEDESK_DATA_DIR", "/proc/livedesk".into())],
            "folder",
        ),
        (
            "bad pool size",
            vec![("LIVEDESK_POOL_SIZE", "0".into())],
            "pool",
        ),
    ];
    for (name, env, needle) in cases {
        let mut command = livedesk();
        command.arg("migrate");
        for (key, value) in env {
            command.env(key, value);
        }
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).to_lowercase();
        assert_eq!(output.status.code(), Some(2), "{name}: {stderr}");
        assert!(stderr.contains(needle), "{name}: {stderr}");
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
    }
}

#[tokio::test]
async fn the_demo_set_loads_once_and_gives_each_agent_a_working_login() {
    let app = TestApp::spawn().await;
    let demo_agents = livedesk::domain::demo::load(&app.db).await.unwrap();
    assert_eq!(demo_agents.len(), 3);
    let mut tokens = Vec::new();
    for agent in &demo_agents {
        let code = agents::login_link(&app.db, agent.id, Duration::from_secs(60))
            .await
            .unwrap();
        let (status, body) = send(
            app.http
                .post(format!("{}/api/login", app.base))
                .json(&serde_json::json!({"code": code.0})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let token = body["token"].as_str().unwrap().to_string();
        let (status, me) = app.get("/api/me", &token).await;
        assert_eq!(status, 200, "{me}");
        assert_eq!(me["name"], agent.name.as_str());
        // A link works once.
        let (status, body) = send(
            app.http
                .post(format!("{}/api/login", app.base))
                .json(&serde_json::json!({"code": code.0})),
        )
        .await;
        assert_eq!((status, error_code(&body)), (404, "not_found"), "{body}");
        tokens.push(token);
    }
    let (_, list) = app.get("/api/tickets", &tokens[0]).await;
    let tickets = list["tickets"].as_array().unwrap();
    assert_eq!(tickets.len(), 3);
    assert!(tickets
        .iter()
        .any(|t| t["channel"] == "chat" && t["subject"] == "Hello"));
    let (_, fields) = app.get("/api/fields", &tokens[0]).await;
    assert_eq!(fields["fields"].as_array().unwrap().len(), 4);
    // A second run adds nothing and replaces nobody's token.
    livedesk::domain::demo::load(&app.db).await.unwrap();
    let (_, list) = app.get("/api/tickets", &tokens[0]).await;
    assert_eq!(list["tickets"].as_array().unwrap().len(), 3);
    // An expired link logs nobody in.
    let code = agents::login_link(&app.db, demo_agents[0].id, Duration::from_millis(1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (status, _) = send(
        app.http
            .post(format!("{}/api/login", app.base))
            .json(&serde_json::json!({"code": code.0})),
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn the_console_is_served_with_a_content_security_policy() {
    let app = TestApp::spawn().await;
    for (path, mime) in [
        ("/", "text/html"),
        ("/app.js", "javascript"),
        ("/livedesk-client.js", "javascript"),
        ("/style.css", "text/css"),
    ] {
        let response = app
            .http
            .get(format!("{}{path}", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers();
        assert!(
            headers["content-type"].to_str().unwrap().contains(mime),
            "{path}: {:?}",
            headers["content-type"]
        );
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("default-src 'self'") && csp.contains("script-src 'self'"),
            "{csp}"
        );
    }
    let response = app
        .http
        .get(format!("{}/README.md", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

#[test]
fn a_data_folder_the_postgres_user_cannot_reach_is_kept_elsewhere_consistently() {
    if !nix::unistd::Uid::effective().is_root() {
        return; // Only root hands the cluster to the postgres user.
    }
    let locked = tempfile::Builder::new()
        .prefix("livedesk-locked-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(
        locked.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let data = locked.path().join("data");
    let add = livedesk()
        .args([
            "agent",
            "add",
            "--name",
            "Lou",
            "--email",
            "lou@example.com",
        ])
        .env("LIVEDESK_DATA_DIR", &data)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&add.stderr).to_string();
    assert!(add.status.success(), "{stderr}");
    let cluster = stderr
        .split("cluster=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .map(|p| p.trim_matches('"').to_string())
        .unwrap_or_else(|| panic!("the relocation is announced: {stderr}"));
    let list = livedesk()
        .args(["agent", "list"])
        .env("LIVEDESK_DATA_DIR", &data)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&cluster);
    assert!(
        String::from_utf8_lossy(&list.stdout).contains("lou@example.com"),
        "same cluster on the next run"
    );
}

#[test]
fn an_existing_data_folder_keeps_its_owner_and_mode() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempfile::Builder::new()
        .prefix("livedesk-existing-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let before = std::fs::metadata(dir.path()).unwrap();
    let output = livedesk()
        .arg("migrate")
        .env("LIVEDESK_DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let after = std::fs::metadata(dir.path()).unwrap();
    assert_eq!(
        (after.uid(), after.mode() & 0o7777),
        (before.uid(), before.mode() & 0o7777)
    );
    assert!(
        dir.path().join("pg/PG_VERSION").exists(),
        "the cluster lives in its own subfolder"
    );
}
