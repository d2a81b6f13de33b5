//! Faults: clean shutdown, a network that goes silent between livedesk and
//! PostgreSQL (through the TCP fault proxy of `common::proxy`), a database
//! that goes back in time, PostgreSQL killed during writes, and a livedesk
//! process killed under its clients. Every test prints a `FAULT …` line with
//! what it measured; `docs/reliability.md` quotes them.
//!
//! Tests that restart or rewind the cluster this binary shares take the
//! `CLUSTER` lock for writing; the others take it for reading.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::ws::{Ended, WsClient};
use common::{cluster, TestApp};
use livedesk::config::Bus;
use serde_json::Value;

static CLUSTER: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real binary, logging JSON lines at `info` to a pipe.
fn livedesk(port: u16) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_livedesk"));
    command
        .env_remove("DATABASE_URL")
        .env("LIVEDESK_BIND", format!("127.0.0.1:{port}"))
        .env("LIVEDESK_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Collect a child's stdout and stderr lines on threads.
fn capture(
    child: &mut Child,
) -> (
    std::sync::mpsc::Receiver<String>,
    std::thread::JoinHandle<Vec<String>>,
) {
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let log = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    (rx, log)
}

async fn wait_healthy(base: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if reqwest::get(format!("{base}/healthz"))
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{base} never became healthy");
}

fn sigterm(child: &Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
}

/// Wait for the child to exit (polling, at most `limit`).
async fn exited(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Log lines at WARN or ERROR.
fn warnings(log: &[String]) -> Vec<&String> {
    log.iter()
        .filter(|l| l.contains("\"level\":\"WARN\"") || l.contains("\"level\":\"ERROR\""))
        .collect()
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

fn has_viewer(frame: &Value, agent: i64) -> bool {
    frame["viewers"]
        .as_array()
        .is_some_and(|v| v.iter().any(|v| v["agent"]["id"] == agent))
}

/// SIGTERM on the embedded default: sockets closed with 1001, the process
/// exits 0 within 5 s, nothing logged at WARN or above, PostgreSQL stopped.
async fn sigterm_stops_everything_in_order_within_5s_without_warnings(bus: Bus) {
    let dir = tempfile::Builder::new()
        .prefix("livedesk-stop-")
        .tempdir_in("/tmp")
        .unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    // The embedded default runs either bus (wal_level = logical, the
    // owner has REPLICATION): the stream stops cleanly too.
    let mut server = livedesk(port)
        .env("LIVEDESK_DATA_DIR", &data)
        .env("LIVEDESK_BUS", bus.as_str())
        .spawn()
        .unwrap();
    let (stdout, log) = capture(&mut server);
    // The first start prints a one-time login link for the admin.
    let code = tokio::task::spawn_blocking(move || loop {
        let line = stdout.recv_timeout(Duration::from_secs(60)).unwrap();
        if let Some((_, code)) = line.split_once("#login=") {
            return code.trim().to_string();
        }
    })
    .await
    .unwrap();
    wait_healthy(&base, Duration::from_secs(30)).await;
    let token = common::redeem_login(&base, &code).await;
    let http = reqwest::Client::new();
    let ticket: Value = http
        .post(format!("{base}/api/tickets"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"subject": "stop"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = ticket["id"].as_i64().unwrap();
    let mut ws = WsClient::connect(&base, &token).await;
    let me = ws.hello["agent"]["id"].as_i64().unwrap();
    ws.subscribe(id, None).await;
    while !has_viewer(&ws.next_of("presence").await, me) {}
    // An idle keep-alive HTTP connection stays open too (reqwest's pool).

    let started = Instant::now();
    sigterm(&server);
    assert_eq!(
        ws.closed(Duration::from_secs(5)).await,
        Ended::Closed(Some(1001)),
        "the WebSocket is closed with 1001"
    );
    let closed_after = started.elapsed();
    let status = exited(&mut server, Duration::from_secs(5))
        .await
        .expect("livedesk exits within 5 s of SIGTERM");
    let stopped_after = started.elapsed();
    let log = log.join().unwrap();
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        log.join("\n")
    );
    assert!(
        warnings(&log).is_empty(),
        "no warning while stopping:\n{}",
        log.join("\n")
    );
    assert!(
        postgres_of(&data).is_empty(),
        "the embedded PostgreSQL is stopped"
    );
    println!(
        "FAULT [{bus:?}] sigterm: socket closed 1001 after {} ms, process exited 0 after {} ms, 0 warnings",
        closed_after.as_millis(),
        stopped_after.as_millis()
    );
}
crate::both_buses!(sigterm_stops_everything_in_order_within_5s_without_warnings);

/// A stopping process removes its viewers before it closes its pool: the
/// other processes see them leave at once, not after the presence TTL.
#[tokio::test]
async fn sigterm_removes_this_process_viewers_at_once() {
    let _shared = CLUSTER.read().await;
    let app = TestApp::spawn().await;
    let (alice, token_a) = app.agent("Alice", "agent").await;
    let (_, token_b) = app.agent("Bob", "agent").await;
    let id = app.ticket(&token_a, "leave").await["id"].as_i64().unwrap();
    let port = free_port();
    let other_base = format!("http://127.0.0.1:{port}");
    let mut other = livedesk(port)
        .env("DATABASE_URL", cluster().url(&app.dbname))
        .spawn()
        .unwrap();
    let (_stdout, log) = capture(&mut other);
    wait_healthy(&other_base, Duration::from_secs(30)).await;
    let mut bob = WsClient::connect(&app.base, &token_b).await;
    bob.subscribe(id, None).await;
    let mut alice_ws = WsClient::connect(&other_base, &token_a).await;
    alice_ws.subscribe(id, None).await;
    while !has_viewer(&bob.next_of("presence").await, alice.id) {}

    let started = Instant::now();
    sigterm(&other);
    while has_viewer(&bob.next_of("presence").await, alice.id) {}
    let gone_after = started.elapsed();
    // The presence TTL is 30 s: this is the removal, not the expiry.
    assert!(gone_after < Duration::from_secs(5), "{gone_after:?}");
    let status = exited(&mut other, Duration::from_secs(5))
        .await
        .expect("exits within 5 s");
    assert!(status.success());
    let sql = app.sql().await;
    let left: i64 = sql
        .query_one(
            "SELECT count(*) FROM presence WHERE agent_id = $1",
            &[&alice.id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "the process removed its viewers before exiting");
    let log = log.join().unwrap();
    assert!(warnings(&log).is_empty(), "{}", log.join("\n"));
    println!(
        "FAULT sigterm-presence: viewer gone for the other process after {} ms (TTL 30000 ms)",
        gone_after.as_millis()
    );
    drop(alice_ws);
}

// ---------------------------------------------------------------------------
// A network that misbehaves between livedesk and PostgreSQL.

use common::proxy::Proxy;
use common::ws::assert_versions;

/// Short timeouts so faults are noticed in about a second.
fn fault_settings(bus: Bus) -> livedesk::config::Settings {
    let mut settings = common::bus_settings(bus);
    settings.db_timeout_ms = 1000;
    settings.listener_probe_ms = 1000;
    settings.request_timeout_ms = 2000;
    settings
}

/// A fresh database, a proxy in front of the cluster, and an app that
/// reaches PostgreSQL only through it.
async fn app_behind_proxy(bus: Bus) -> (TestApp, Proxy) {
    let cluster = cluster();
    let proxy = Proxy::start(
        cluster
            .socket_dir
            .join(format!(".s.PGSQL.{}", cluster.port)),
    )
    .await;
    let dbname = common::fresh_database().await;
    let config = proxy.route(&cluster.config(&dbname));
    let app = TestApp::spawn_via(dbname, fault_settings(bus), config).await;
    (app, proxy)
}

async fn status_of(app: &TestApp, path: &str, token: &str) -> (u16, Duration) {
    let started = Instant::now();
    let status = match app
        .req(reqwest::Method::GET, path, token)
        .timeout(Duration::from_secs(20))
        .send()
        .await
    {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    };
    (status, started.elapsed())
}

async fn metric_now(app: &TestApp, name: &str) -> u64 {
    app.metric(name).await
}

/// Writes straight to PostgreSQL (not through the proxy): what other
/// services do while livedesk's network is broken.
async fn direct_updates(sql: &tokio_postgres::Client, id: i64, from: usize, count: usize) {
    for n in from..from + count {
        sql.execute(
            "UPDATE tickets SET subject = $2 WHERE id = $1",
            &[&id, &format!("s{n}")],
        )
        .await
        .unwrap();
    }
}

/// The whole network goes silent (nothing closes): the listener's probe
/// notices within its interval, `/healthz` says 503, requests fail fast with
/// 503, and after the restore every change committed meanwhile arrives once,
/// in order.
async fn a_blackholed_database_is_noticed_fast_and_nothing_is_lost(bus: Bus) {
    let _shared = CLUSTER.read().await;
    let (app, proxy) = app_behind_proxy(bus).await;
    let (_, token) = app.agent("Alice", "agent").await;
    let id = app.ticket(&token, "blackhole").await["id"]
        .as_i64()
        .unwrap();
    let mut ws = WsClient::connect(&app.base, &token).await;
    ws.subscribe(id, None).await;
    ws.next_of("snapshot").await;
    let sql = app.sql().await;
    direct_updates(&sql, id, 0, 5).await;
    assert_versions(&ws.events(id, 5, Duration::from_secs(10)).await, 2, 6);

    let started = Instant::now();
    proxy.blackhole();
    // Committed while livedesk hears nothing.
    direct_updates(&sql, id, 5, 50).await;
    // The listener's probe notices (the metric is read without the database).
    let detected = loop {
        if metric_now(&app, "livedesk_listener_up").await == 0 {
            break started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(5), "never noticed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        detected <= Duration::from_millis(1000 + 300),
        "noticed within the probe interval (1 s): {detected:?}"
    );
    let (health, health_took) = status_of(&app, "/healthz", "").await;
    assert_eq!(health, 503, "/healthz while the database is silent");
    assert!(health_took < Duration::from_millis(1500), "{health_took:?}");
    let (api, api_took) = status_of(&app, &format!("/api/tickets/{id}"), &token).await;
    assert_eq!(api, 503, "a request while the database is silent");
    assert!(
        api_took < Duration::from_millis(2500),
        "fails within the request timeout (2 s): {api_took:?}"
    );
    direct_updates(&sql, id, 55, 10).await;

    let restored = Instant::now();
    proxy.restore();
    let events = ws.events(id, 60, Duration::from_secs(20)).await;
    let recovered = restored.elapsed();
    assert_versions(&events, 7, 66);
    // Nothing more (no duplicate) arrives afterwards.
    direct_updates(&sql, id, 65, 1).await;
    let next = ws.events(id, 1, Duration::from_secs(10)).await;
    assert_versions(&next, 67, 67);
    let mut healthy_after = None;
    for _ in 0..100 {
        if status_of(&app, "/healthz", "").await.0 == 200 {
            healthy_after = Some(restored.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let healthy_after = healthy_after.expect("/healthz is 200 again after the restore");
    assert!(metric_now(&app, "livedesk_listener_reconnects_total").await >= 1);
    println!(
        "FAULT [{bus:?}] blackhole: 60 events committed during a {} ms blackhole; noticed after {} ms; \
         /healthz 503 in {} ms; API 503 in {} ms; all 60 delivered {} ms after the restore \
         (lost 0, duplicated 0, reordered 0); /healthz 200 after {} ms",
        restored.duration_since(started).as_millis(),
        detected.as_millis(),
        health_took.as_millis(),
        api_took.as_millis(),
        recovered.as_millis(),
        healthy_after.as_millis()
    );
}
crate::both_buses!(a_blackholed_database_is_noticed_fast_and_nothing_is_lost);

/// Every connection is reset (RST) in the middle of a stream of changes:
/// the listener reconnects at once and catches up from its cursors.
async fn connections_cut_with_a_reset_lose_nothing(bus: Bus) {
    let _shared = CLUSTER.read().await;
    let (app, proxy) = app_behind_proxy(bus).await;
    let (_, token) = app.agent("Alice", "agent").await;
    let id = app.ticket(&token, "rst").await["id"].as_i64().unwrap();
    let mut ws = WsClient::connect(&app.base, &token).await;
    ws.subscribe(id, None).await;
    ws.next_of("snapshot").await;
    let sql = app.sql().await;
    let writer = tokio::spawn(async move {
        direct_updates(&sql, id, 0, 200).await;
        sql
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let cut_at = Instant::now();
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(100)).await;
    proxy.cut();
    let _sql = writer.await.unwrap();
    let events = ws.events(id, 200, Duration::from_secs(20)).await;
    let recovered = cut_at.elapsed();
    assert_versions(&events, 2, 201);
    assert!(metric_now(&app, "livedesk_listener_reconnects_total").await >= 1);
    println!(
        "FAULT [{bus:?}] reset: 200 changes, two RSTs of every livedesk connection; all delivered {} ms after the first (lost 0, duplicated 0, reordered 0)",
        recovered.as_millis()
    );
}
crate::both_buses!(connections_cut_with_a_reset_lose_nothing);

/// 50 ms each way on every chunk: slower, still complete and in order.
async fn latency_slows_delivery_but_loses_nothing(bus: Bus) {
    let _shared = CLUSTER.read().await;
    let (app, proxy) = app_behind_proxy(bus).await;
    let (_, token) = app.agent("Alice", "agent").await;
    let id = app.ticket(&token, "latency").await["id"].as_i64().unwrap();
    let mut ws = WsClient::connect(&app.base, &token).await;
    ws.subscribe(id, None).await;
    ws.next_of("snapshot").await;
    let sql = app.sql().await;
    proxy.latency(Duration::from_millis(50));
    let mut worst = Duration::ZERO;
    for n in 0..10 {
        let started = Instant::now();
        direct_updates(&sql, id, n, 1).await;
        let events = ws.events(id, 1, Duration::from_secs(10)).await;
        assert_versions(&events, 2 + n as i64, 2 + n as i64);
        worst = worst.max(started.elapsed());
    }
    let (status, took) = status_of(&app, &format!("/api/tickets/{id}"), &token).await;
    assert_eq!(status, 200);
    proxy.restore();
    assert!(worst < Duration::from_secs(2), "{worst:?}");
    println!(
        "FAULT [{bus:?}] latency: +50 ms each way: 10 of 10 events in order, worst commit-to-client {} ms; GET ticket {} ms",
        worst.as_millis(),
        took.as_millis()
    );
}
crate::both_buses!(latency_slows_delivery_but_loses_nothing);

/// Every connection open now dies silently (its bytes vanish, nothing
/// closes); new connections work. The pool drops the dead ones when it
/// checks them, requests answer 503 in bounded time meanwhile, and the
/// listener's probe replaces its own.
async fn pool_connections_that_died_silently_are_replaced(bus: Bus) {
    let _shared = CLUSTER.read().await;
    let (app, proxy) = app_behind_proxy(bus).await;
    let (_, token) = app.agent("Alice", "agent").await;
    let id = app.ticket(&token, "silent").await["id"].as_i64().unwrap();
    let mut ws = WsClient::connect(&app.base, &token).await;
    ws.subscribe(id, None).await;
    ws.next_of("snapshot").await;
    // Open every pooled connection.
    let path = format!("/api/tickets/{id}");
    let warm: Vec<_> = (0..16).map(|_| status_of(&app, &path, &token)).collect();
    for (status, _) in futures_util::future::join_all(warm).await {
        assert_eq!(status, 200);
    }
    proxy.blackhole_existing();
    let started = Instant::now();
    let mut worst = Duration::ZERO;
    let mut failed = 0;
    let mut healthy_run = 0;
    while healthy_run < 20 {
        let (status, took) = status_of(&app, &path, &token).await;
        worst = worst.max(took);
        assert!(
            took < Duration::from_millis(2500),
            "no request waits past the 2 s timeout: {took:?}"
        );
        match status {
            200 => healthy_run += 1,
            503 => {
                failed += 1;
                healthy_run = 0;
            }
            other => panic!("unexpected status {other}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the pool never recovered"
        );
    }
    let recovered = started.elapsed();
    // Events flow again: the listener replaced its connection too.
    let sql = app.sql().await;
    direct_updates(&sql, id, 0, 3).await;
    assert_versions(&ws.events(id, 3, Duration::from_secs(10)).await, 2, 4);
    println!(
        "FAULT [{bus:?}] silent-death: 8 pooled connections + the listener died silently; {failed} request(s) answered 503 \
         (slowest {} ms), 20 in a row OK {} ms after; events flowing again",
        worst.as_millis(),
        recovered.as_millis()
    );
}
crate::both_buses!(pool_connections_that_died_silently_are_replaced);

// ---------------------------------------------------------------------------
// A database that goes back in time, and a log with a gap.

/// Stop the shared cluster, run `between` on its data folder, start it again.
fn with_cluster_stopped(between: impl FnOnce(&std::path::Path)) {
    let cluster = cluster();
    let mut pg = cluster.pg.lock().unwrap();
    pg.stop();
    between(&cluster.dir.join("pg"));
    pg.restart().expect("start PostgreSQL again");
}

fn run(program: &str, args: &[&std::ffi::OsStr]) {
    let status = Command::new(program).args(args).status().unwrap();
    assert!(status.success(), "{program} {args:?}");
}

/// A copy of the data folder, taken with the cluster stopped (consistent).
fn snapshot_data() -> std::path::PathBuf {
    let copy = cluster().dir.join("pg-snapshot");
    with_cluster_stopped(|data| {
        let _ = std::fs::remove_dir_all(&copy);
        run("cp", &["-a".as_ref(), data.as_os_str(), copy.as_os_str()]);
    });
    copy
}

/// Put the copy back in place of the data folder. With `new_timeline` the
/// restore ends with an archive recovery that opens a new timeline, as a
/// point-in-time restore or a promoted replica does.
fn restore_data(copy: &std::path::Path, new_timeline: bool) {
    with_cluster_stopped(|data| {
        std::fs::remove_dir_all(data).unwrap();
        std::fs::rename(copy, data).unwrap();
        if new_timeline {
            std::fs::write(data.join("recovery.signal"), "").unwrap();
            let auto = data.join("postgresql.auto.conf");
            let mut text = std::fs::read_to_string(&auto).unwrap_or_default();
            text.push_str("\nrestore_command = 'false'\n");
            std::fs::write(&auto, text).unwrap();
            run(
                "chown",
                &[
                    "--reference".as_ref(),
                    data.as_os_str(),
                    data.join("recovery.signal").as_os_str(),
                ],
            );
        }
    });
}

/// A direct connection to a test database, retried while PostgreSQL starts.
async fn connect_direct(dbname: &str) -> tokio_postgres::Client {
    for _ in 0..200 {
        if let Ok((client, connection)) = cluster()
            .config(dbname)
            .connect(tokio_postgres::NoTls)
            .await
        {
            tokio::spawn(connection);
            return client;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("cannot connect to {dbname}");
}

/// Wait until the restored cluster has finished its recovery (it accepts
/// read-only connections before that).
async fn wait_writable(dbname: &str) {
    for _ in 0..200 {
        let client = connect_direct(dbname).await;
        if let Ok(row) = client.query_one("SELECT pg_is_in_recovery()", &[]).await {
            if !row.get::<_, bool>(0) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the restored cluster never left recovery");
}

/// Frames until a `reset` for `id` (time-limited); the frames before it.
async fn until_reset(ws: &mut WsClient, id: i64, limit: Duration) -> (Value, Vec<Value>) {
    let deadline = Instant::now() + limit;
    let mut before = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = ws
            .next_within(left)
            .await
            .unwrap_or_else(|| panic!("no reset within {limit:?}; got {before:?}"));
        if frame["type"] == "reset" && frame["ticket_id"] == id {
            return (frame, before);
        }
        before.push(frame);
    }
}

/// The data folder is restored from a copy taken earlier, while livedesk
/// runs: the watched ticket is now below the hub's cursor, so its
/// subscribers get `reset`, and a fresh subscribe shows the restored state.
async fn a_restored_older_copy_resets_subscribers(bus: Bus) {
    let _exclusive = CLUSTER.write().await;
    let app = TestApp::spawn_bus(bus).await;
    let (_, token) = app.agent("Alice", "agent").await;
    let id = app.ticket(&token, "rewind").await["id"].as_i64().unwrap();
    let mut ws = WsClient::connect(&app.base, &token).await;
    ws.subscribe(id, None).await;
    ws.next_of("snapshot").await;
    direct_updates(&connect_direct(&app.dbname).await, id, 0, 5).await;
    assert_versions(&ws.events(id, 5, Duration::from_secs(10)).await, 2, 6);

    let copy = tokio::task::spawn_blocking(snapshot_data).await.unwrap();
    // Later changes, delivered, then lost by the restore.
    direct_updates(&connect_direct(&app.dbname).await, id, 5, 10).await;
    assert_versions(&ws.events(id, 10, Duration::from_secs(20)).await, 7, 16);

    let restored = Instant::now();
    tokio::task::spawn_blocking(move || restore_data(&copy, false))
        .await
        .unwrap();
    let (reset, before) = until_reset(&mut ws, id, Duration::from_secs(20)).await;
    let took = restored.elapsed();
    assert_eq!(reset["version"], 6, "{reset}");
    assert_eq!(app.metric("livedesk_resets_total").await, 1);
    assert!(
        before.iter().all(|f| f["type"] != "event"),
        "no event before the reset: {before:?}"
    );
    // A fresh subscribe shows the restored state, and live events follow.
    assert_eq!(ws.subscribe(id, None).await["version"], 6);
    let snapshot = ws.next_of("snapshot").await;
    assert_eq!(snapshot["ticket"]["version"], 6);
    assert_eq!(snapshot["ticket"]["subject"], "s4");
    direct_updates(&connect_direct(&app.dbname).await, id, 100, 1).await;
    let events = ws.events(id, 1, Duration::from_secs(10)).await;
    assert_versions(&events, 7, 7);
    assert_eq!(events[0]["data"]["changes"]["subject"]["to"], "s100");
    println!(
        "FAULT [{bus:?}] rewind-same-timeline: 10 delivered versions undone by a restore; reset (version 6) reached the subscriber {} ms after the restart began; resubscribe shows the restored ticket",
        took.as_millis()
    );
}
crate::both_buses!(a_restored_older_copy_resets_subscribers);

/// A restore, then writes to the restored database that take the ticket
/// past the old cursor before livedesk reconnects (its network was down
/// meanwhile): the versions alone look fine. Every subscriber must still get
/// `reset`, and no event of the new history may be applied on top of the
/// old one. Returns how long the reset took after the network came back.
async fn rewind_past_the_cursor(new_timeline: bool, bus: Bus) -> Duration {
    let (app, proxy) = app_behind_proxy(bus).await;
    let (_, token) = app.agent("Alice", "agent").await;
    let id = app.ticket(&token, "timeline").await["id"].as_i64().unwrap();
    let mut ws = WsClient::connect(&app.base, &token).await;
    ws.subscribe(id, None).await;
    ws.next_of("snapshot").await;
    direct_updates(&connect_direct(&app.dbname).await, id, 0, 5).await;
    assert_versions(&ws.events(id, 5, Duration::from_secs(10)).await, 2, 6);
    let copy = tokio::task::spawn_blocking(snapshot_data).await.unwrap();
    direct_updates(&connect_direct(&app.dbname).await, id, 5, 10).await;
    assert_versions(&ws.events(id, 10, Duration::from_secs(20)).await, 7, 16);

    proxy.blackhole();
    tokio::task::spawn_blocking(move || restore_data(&copy, new_timeline))
        .await
        .unwrap();
    // The new history goes past the old cursor (16) while livedesk is cut off.
    wait_writable(&app.dbname).await;
    direct_updates(&connect_direct(&app.dbname).await, id, 200, 20).await;
    let restored = Instant::now();
    proxy.restore();
    let (reset, before) = until_reset(&mut ws, id, Duration::from_secs(20)).await;
    let took = restored.elapsed();
    assert_eq!(reset["version"], 26, "{reset}");
    assert!(
        before.iter().all(|f| f["type"] != "event"),
        "no event of the new history before the reset: {before:?}"
    );
    assert_eq!(ws.subscribe(id, None).await["version"], 26);
    assert_eq!(ws.next_of("snapshot").await["ticket"]["subject"], "s219");
    took
}

/// The restore opens a new timeline (a backup restored with recovery, a
/// promoted replica): the timeline gives it away.
async fn a_new_timeline_resets_subscribers_even_past_their_cursor(bus: Bus) {
    let _exclusive = CLUSTER.write().await;
    let took = rewind_past_the_cursor(true, bus).await;
    println!(
        "FAULT [{bus:?}] rewind-new-timeline: restore onto a new timeline + 20 writes past the old cursor; reset (version 26) {} ms after the network came back; 0 events of the new history applied to the old",
        took.as_millis()
    );
}
crate::both_buses!(a_new_timeline_resets_subscribers_even_past_their_cursor);

/// The same, with the copy put back by hand on the same timeline: the event
/// at the cursor is not the one that was delivered (another commit time).
async fn a_copy_put_back_resets_subscribers_even_past_their_cursor(bus: Bus) {
    let _exclusive = CLUSTER.write().await;
    let took = rewind_past_the_cursor(false, bus).await;
    println!(
        "FAULT [{bus:?}] rewind-past-cursor: copy put back on the same timeline + 20 writes past the old cursor; reset (version 26) {} ms after the network came back; 0 events of the new history applied to the old",
        took.as_millis()
    );
}
crate::both_buses!(a_copy_put_back_resets_subscribers_even_past_their_cursor);

/// The owner writes a version without its event (triggers bypassed): the
/// log has v and v+2. The subscriber gets one `reset`, not a gap to chase;
/// a resume across the gap gets `reset` too; a fresh subscribe works.
async fn a_gap_in_the_log_gives_one_reset_not_a_loop(bus: Bus) {
    let _shared = CLUSTER.read().await;
    let app = TestApp::spawn_bus(bus).await;
    let (_, token) = app.agent("Alice", "agent").await;
    let id = app.ticket(&token, "gap").await["id"].as_i64().unwrap();
    let mut ws = WsClient::connect(&app.base, &token).await;
    ws.subscribe(id, None).await;
    ws.next_of("snapshot").await;
    let sql = app.sql().await;
    direct_updates(&sql, id, 0, 2).await;
    assert_versions(&ws.events(id, 2, Duration::from_secs(10)).await, 2, 3);

    // Version 4 without an event: only a superuser can skip the triggers.
    let admin = app.admin_sql().await;
    admin
        .batch_execute(&format!(
            "BEGIN; SET LOCAL session_replication_role = replica; \
             UPDATE tickets SET version = version + 1 WHERE id = {id}; COMMIT"
        ))
        .await
        .unwrap();
    direct_updates(&sql, id, 2, 1).await; // version 5, with its event

    let (reset, before) = until_reset(&mut ws, id, Duration::from_secs(10)).await;
    assert_eq!(reset["version"], 5, "{reset}");
    assert!(before.iter().all(|f| f["type"] != "event"), "{before:?}");
    // Nothing else about this ticket: no second reset, no event.
    let mut quiet = Vec::new();
    while let Some(frame) = ws.next_within(Duration::from_millis(1500)).await {
        if frame["ticket_id"] == id {
            quiet.push(frame);
        }
    }
    assert!(quiet.is_empty(), "one reset only: {quiet:?}");
    // Resuming across the gap gets a reset as well (never the gap).
    assert_eq!(ws.subscribe(id, Some(3)).await["version"], 3);
    let (again, before) = until_reset(&mut ws, id, Duration::from_secs(10)).await;
    assert_eq!(again["version"], 5);
    assert!(before.iter().all(|f| f["type"] != "event"), "{before:?}");
    // A fresh subscribe: snapshot at 5, then live events.
    assert_eq!(ws.subscribe(id, None).await["version"], 5);
    ws.next_of("snapshot").await;
    direct_updates(&sql, id, 3, 1).await;
    assert_versions(&ws.events(id, 1, Duration::from_secs(10)).await, 6, 6);
    println!("FAULT [{bus:?}] gap: a version written without its event: 1 reset per gap (and per resume across it), 0 events with a gap sent, live again after a fresh subscribe");
}
crate::both_buses!(a_gap_in_the_log_gives_one_reset_not_a_loop);

// ---------------------------------------------------------------------------
// Processes killed: PostgreSQL during writes, one of two livedesk processes.

/// Kill PostgreSQL the way `pg_ctl stop -m immediate` does (SIGQUIT to the
/// postmaster: every backend exits at once, no checkpoint), then start it
/// again (crash recovery).
fn crash_and_restart_postgres() {
    let cluster = cluster();
    let mut pg = cluster.pg.lock().unwrap();
    if let Some(pid) = pg.pid() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGQUIT,
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    pg.restart().expect("start PostgreSQL again");
}

/// The versions of each ticket as a client applied them must be exactly
/// `2..=` the database's version: nothing lost, doubled or out of order.
async fn assert_converges(ws: &mut WsClient, versions: &std::collections::HashMap<i64, i64>) {
    let mut seen: std::collections::HashMap<i64, Vec<i64>> = Default::default();
    let deadline = Instant::now() + Duration::from_secs(30);
    let done = |seen: &std::collections::HashMap<i64, Vec<i64>>| {
        versions
            .iter()
            .all(|(id, v)| seen.get(id).map_or(0, Vec::len) as i64 >= v - 1)
    };
    while !done(&seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(frame) = ws.next_within(left).await else {
            panic!("the client never converged: {seen:?} vs {versions:?}");
        };
        assert_ne!(
            frame["type"], "reset",
            "no reset after a crash that lost nothing"
        );
        if frame["type"] == "event" {
            let id = frame["ticket_id"].as_i64().unwrap();
            seen.entry(id)
                .or_default()
                .push(frame["version"].as_i64().unwrap());
        }
    }
    for (id, v) in versions {
        let expected: Vec<i64> = (2..=*v).collect();
        assert_eq!(
            seen.get(id).cloned().unwrap_or_default(),
            expected,
            "ticket {id}"
        );
    }
}

/// PostgreSQL is killed in the middle of concurrent HTTP writes (the
/// database commits synchronously, as a production one does): every write
/// answered 2xx is in the database after the restart, and every WebSocket
/// client's view converges to the database's, version by version.
async fn acknowledged_writes_survive_a_postgres_crash(bus: Bus) {
    let _exclusive = CLUSTER.write().await;
    let dbname = common::fresh_database().await;
    // The test cluster runs with synchronous_commit=off for speed; this
    // database commits as a durable one must (fsync off only loses data
    // when the machine itself crashes, not PostgreSQL).
    let (admin, connection) = cluster()
        .admin_config("postgres")
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {dbname} SET synchronous_commit = on"
        ))
        .await
        .unwrap();
    let app = TestApp::spawn_on(dbname, fault_settings(bus)).await;
    let (_, token) = app.agent("Alice", "agent").await;
    let mut ids = Vec::new();
    for n in 0..4 {
        ids.push(
            app.ticket(&token, &format!("crash {n}")).await["id"]
                .as_i64()
                .unwrap(),
        );
    }
    let mut watchers = Vec::new();
    for _ in 0..2 {
        let mut ws = WsClient::connect(&app.base, &token).await;
        for id in &ids {
            ws.subscribe(*id, None).await;
            ws.next_of("snapshot").await;
        }
        watchers.push(ws);
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let mut writers = Vec::new();
    for w in 0..8 {
        let http = app.http.clone();
        let base = app.base.clone();
        let token = token.clone();
        let id = ids[w % ids.len()];
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let (mut acked, mut failed) = (Vec::new(), 0u32);
            let mut n = 0;
            while !stop.is_cancelled() {
                let body = format!("w{w}-{n}");
                n += 1;
                let sent = http
                    .post(format!("{base}/api/tickets/{id}/messages"))
                    .bearer_auth(&token)
                    .json(&serde_json::json!({"kind": "note", "body": body, "client_id": body}))
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().is_success() => acked.push((Instant::now(), body)),
                    _ => {
                        failed += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            (acked, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let crashed = Instant::now();
    tokio::task::spawn_blocking(crash_and_restart_postgres)
        .await
        .unwrap();
    let restarted = Instant::now();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    stop.cancel();
    let (mut acked, mut failed) = (Vec::new(), 0);
    for writer in writers {
        let (a, f) = writer.await.unwrap();
        acked.extend(a);
        failed += f;
    }
    let first_ok_after = acked
        .iter()
        .filter(|(at, _)| *at > restarted)
        .map(|(at, _)| at.duration_since(restarted))
        .min()
        .expect("writes succeed again after the restart");
    let acked_before_crash = acked.iter().filter(|(at, _)| *at < crashed).count();

    let sql = connect_direct(&app.dbname).await;
    let rows = sql
        .query(
            "SELECT body FROM messages WHERE ticket_id = ANY($1)",
            &[&ids],
        )
        .await
        .unwrap();
    let stored: std::collections::HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
    let lost: Vec<&String> = acked
        .iter()
        .map(|(_, body)| body)
        .filter(|b| !stored.contains(*b))
        .collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    let versions: std::collections::HashMap<i64, i64> = sql
        .query(
            "SELECT id, version FROM tickets WHERE id = ANY($1)",
            &[&ids],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let converge_started = Instant::now();
    for ws in &mut watchers {
        assert_converges(ws, &versions).await;
    }
    let events: i64 = versions.values().map(|v| v - 1).sum();
    println!(
        "FAULT [{bus:?}] postgres-crash: {} writes acknowledged ({} before the crash), {} refused or unanswered, \
         0 acknowledged lost; {} unacknowledged but committed; first 2xx {} ms after PostgreSQL was back; \
         2 clients converged on {} events each (lost 0, duplicated 0, reordered 0) within {} ms of the check",
        acked.len(),
        acked_before_crash,
        failed,
        stored.len() - acked.len(),
        first_ok_after.as_millis(),
        events,
        converge_started.elapsed().as_millis()
    );
}
crate::both_buses!(acknowledged_writes_survive_a_postgres_crash);

/// One of two livedesk processes is killed (-9) while changes stream: its
/// viewers vanish within the presence TTL, and its clients reconnect to the
/// other process with `since` and miss nothing.
async fn a_killed_livedesk_loses_no_event_for_its_clients(bus: Bus) {
    let _shared = CLUSTER.read().await;
    let mut settings = common::bus_settings(bus);
    settings.presence_ttl_ms = 2000;
    let app = TestApp::spawn_with(settings).await;
    let (_, token_a) = app.agent("Alice", "agent").await;
    let (_, token_b) = app.agent("Bob", "agent").await;
    let (carol, token_c) = app.agent("Carol", "agent").await;
    let id = app.ticket(&token_a, "kill -9").await["id"]
        .as_i64()
        .unwrap();
    let port = free_port();
    let other_base = format!("http://127.0.0.1:{port}");
    let mut other = livedesk(port)
        .env("DATABASE_URL", cluster().url(&app.dbname))
        .env("LIVEDESK_PRESENCE_TTL_MS", "2000")
        .env("LIVEDESK_BUS", bus.as_str())
        .spawn()
        .unwrap();
    let (_stdout, _log) = capture(&mut other);
    wait_healthy(&other_base, Duration::from_secs(30)).await;
    let mut bob = WsClient::connect(&app.base, &token_b).await;
    bob.subscribe(id, None).await;
    let mut carol_ws = WsClient::connect(&other_base, &token_c).await;
    carol_ws.subscribe(id, None).await;
    let mut alice = WsClient::connect(&other_base, &token_a).await;
    alice.subscribe(id, None).await;
    alice.next_of("snapshot").await;
    while !has_viewer(&bob.next_of("presence").await, carol.id) {}
    // Bob would not answer pings while the test reads Alice: he leaves.
    drop(bob);

    let sql = app.sql().await;
    let presence_sql = app.sql().await;
    let writer = tokio::spawn(async move {
        for n in 0..300 {
            sql.execute(
                "UPDATE tickets SET subject = $2 WHERE id = $1",
                &[&id, &format!("k{n}")],
            )
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    // Alice applies events until her process dies under her.
    let mut applied: Vec<i64> = Vec::new();
    let mut killed_at = None;
    loop {
        if killed_at.is_none() && applied.len() >= 50 {
            other.kill().unwrap();
            other.wait().unwrap();
            killed_at = Some(Instant::now());
        }
        match alice.next_within(Duration::from_secs(10)).await {
            Some(frame) if frame["type"] == "event" => {
                applied.push(frame["version"].as_i64().unwrap())
            }
            Some(_) => {}
            None => break,
        }
    }
    let killed_at = killed_at.expect("the process was killed while streaming");
    let last = *applied.last().unwrap();
    // She reconnects to the surviving process and resumes from what she applied.
    let mut alice = WsClient::connect(&app.base, &token_a).await;
    let reconnected = killed_at.elapsed();
    alice.subscribe(id, Some(last)).await;
    // Read while the writer goes on: a client that stops reading for the
    // TTL (2 s here) is closed with 4002.
    let rest = alice
        .events(id, (301 - last) as usize, Duration::from_secs(20))
        .await;
    writer.await.unwrap();
    applied.extend(rest.iter().map(|e| e["version"].as_i64().unwrap()));
    assert_eq!(
        applied,
        (2..=301).collect::<Vec<i64>>(),
        "every version once, in order"
    );
    if bus == Bus::Logical {
        // The killed process's temporary slot died with its connection:
        // only the survivor's is left, holding no WAL for the dead one.
        loop {
            let slots: i64 = presence_sql
                .query_one(
                    "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if slots == 1 {
                break;
            }
            assert!(
                killed_at.elapsed() < Duration::from_secs(10),
                "the killed process's slot outlived it: {slots} slots"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Carol's viewer (she does not come back) is gone within the TTL.
    loop {
        let rows: i64 = presence_sql
            .query_one(
                "SELECT count(*) FROM presence WHERE agent_id = $1",
                &[&carol.id],
            )
            .await
            .unwrap()
            .get(0);
        if rows == 0 {
            break;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(10),
            "Carol never expired"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let viewer_gone = killed_at.elapsed();
    assert!(
        viewer_gone < Duration::from_millis(2000 + 2000 / 6 + 1500),
        "gone within TTL + TTL/6: {viewer_gone:?}"
    );
    drop(carol_ws);
    println!(
        "FAULT [{bus:?}] livedesk-kill: 1 of 2 processes killed -9 after {} of 300 events; its client resumed on the other \
         with since={last} {} ms after the kill: 300 of 300 (lost 0, duplicated 0, reordered 0); its viewer gone after {} ms (TTL 2000 ms)",
        last - 1,
        reconnected.as_millis(),
        viewer_gone.as_millis()
    );
}
crate::both_buses!(a_killed_livedesk_loses_no_event_for_its_clients);
