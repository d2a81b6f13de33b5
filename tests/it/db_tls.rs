//! TLS to PostgreSQL (issue 16): a PostgreSQL started with `ssl=on` and a
//! certificate made here (rcgen); `sslmode=verify-full` with `sslrootcert`
//! connects and the session is encrypted (pg_stat_ssl); `require` encrypts
//! without a root; a certificate from another authority is refused with a
//! message that says so; the real binary serves (pool and LISTEN) over TLS.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use livedesk::db::embedded::{EmbeddedOptions, EmbeddedPostgres};
use livedesk::db::{bootstrap, migrations, Database};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};

pub(crate) struct Authority {
    cert: rcgen::Certificate,
    key: KeyPair,
}

pub(crate) fn authority(name: &str) -> Authority {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Authority { cert, key }
}

/// Write the CA, the server's certificate (for localhost and 127.0.0.1) and
/// key where the `postgres` user can read them.
pub(crate) fn write_certificates(dir: &Path, ca: &Authority) {
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
    fs::write(dir.join("ca.pem"), ca.cert.pem()).unwrap();
    fs::write(dir.join("server.crt"), cert.pem()).unwrap();
    fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    fs::set_permissions(dir.join("server.key"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    if nix::unistd::Uid::effective().is_root() {
        let pg = nix::unistd::User::from_name("postgres").unwrap().unwrap();
        for file in ["server.crt", "server.key"] {
            nix::unistd::chown(&dir.join(file), Some(pg.uid), Some(pg.gid)).unwrap();
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[tokio::test]
async fn database_url_with_tls_verifies_the_server() {
    let certs = tempfile::Builder::new()
        .prefix("livedesk-tls-")
        .tempdir_in("/tmp")
        .unwrap();
    let ca = authority("livedesk test CA");
    write_certificates(certs.path(), &ca);
    let data = tempfile::Builder::new()
        .prefix("livedesk-tls-pg-")
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
    let pg = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(options))
        .await
        .unwrap()
        .unwrap();
    let port = pg.socket().1;
    let admin = Database::new(pg.admin_config(), 1).unwrap();
    bootstrap::embedded(&admin).await.unwrap();
    admin.pool().close();
    migrations::run(&Database::new(pg.config(), 1).unwrap())
        .await
        .unwrap();
    let ca_file = certs.path().join("ca.pem");
    let url = |host: &str, mode: &str, root: Option<&Path>| {
        let mut url = format!("postgresql://livedesk_owner@{host}:{port}/livedesk?sslmode={mode}");
        if let Some(root) = root {
            url.push_str(&format!("&sslrootcert={}", root.display()));
        }
        url
    };
    let encrypted = |db: Database| async move {
        let client = db.client().await.unwrap();
        let ssl: bool = client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        ssl
    };
    // verify-full, by name and by address; verify-ca; require (no root).
    for (host, mode, root) in [
        ("localhost", "verify-full", Some(ca_file.as_path())),
        ("127.0.0.1", "verify-full", Some(ca_file.as_path())),
        ("127.0.0.1", "verify-ca", Some(ca_file.as_path())),
        ("127.0.0.1", "require", None),
    ] {
        let db = Database::from_url(&url(host, mode, root), 2, Duration::from_secs(5)).unwrap();
        assert!(encrypted(db).await, "{host} {mode}: not encrypted");
    }
    // A certificate from another authority is refused, and the error says why.
    let other = tempfile::Builder::new()
        .prefix("livedesk-tls-other-")
        .tempdir_in("/tmp")
        .unwrap();
    fs::write(
        other.path().join("ca.pem"),
        authority("someone else").cert.pem(),
    )
    .unwrap();
    let db = Database::from_url(
        &url(
            "localhost",
            "verify-full",
            Some(&other.path().join("ca.pem")),
        ),
        1,
        Duration::from_secs(5),
    )
    .unwrap();
    assert!(!db.ping().await);
    let error = error_chain(&db.client().await.err().unwrap());
    assert!(error.contains("certificate"), "{error}");
    eprintln!("wrong authority: {error}");
    // verify-full without a root: a clear configuration error.
    let error = Database::from_url(
        &url("localhost", "verify-full", None),
        1,
        Duration::from_secs(5),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(error.contains("sslrootcert"), "{error}");

    // The real server, pool and LISTEN over verify-full TLS.
    let http_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Command::new(env!("CARGO_BIN_EXE_livedesk"))
        .env(
            "DATABASE_URL",
            url("localhost", "verify-full", Some(&ca_file)),
        )
        .env("LIVEDESK_BIND", format!("127.0.0.1:{http_port}"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let health = loop {
        let answer = reqwest::get(format!("http://127.0.0.1:{http_port}/healthz")).await;
        if let Ok(answer) = answer {
            if answer.status() == 200 {
                break answer.json::<serde_json::Value>().await.unwrap();
            }
        }
        assert!(
            Instant::now() < deadline,
            "the server never became healthy over TLS"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(health["listener"], true, "{health}");
    let admin = Database::new(pg.admin_config(), 1).unwrap();
    let plain: i64 = admin
        .client()
        .await
        .unwrap()
        .query_one(
            "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.usename = 'livedesk_owner' AND a.client_addr IS NOT NULL AND NOT s.ssl",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(plain, 0, "a server connection over TCP without TLS");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = server.wait();
    admin.pool().close();
    tokio::task::spawn_blocking(move || drop(pg)).await.unwrap();
}
