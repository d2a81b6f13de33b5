//! The schema's files keep their promises without a database: landed
//! migrations never change (existing data folders must keep starting, and
//! refinery refuses a changed one), and the rules the binary embeds are
//! exactly the files of `sql/rules/`, in name order.
#![allow(clippy::unwrap_used)]

use sha2::{Digest, Sha256};

/// Every landed migration and the SHA-256 of its text. A new migration is
/// added here when it lands; an existing line never changes.
const LANDED: &[(&str, &str)] = &[
    (
        "V1__agents.sql",
        "a80d4cc0edb3f2dbc22014c6576e289f2998b8f8b334c8593fb7c55d8dec4a62",
    ),
    (
        "V2__tickets.sql",
        "5cde091cfe1ad9c3ecd5927cbd9bbc64dffaa3168807f9c0bbfb004d780223cd",
    ),
    (
        "V3__presence.sql",
        "d179060f199cce3ecae9138d1b1c725b16d653f54e6c2618c39cb47f84b934f6",
    ),
    (
        "V4__privileges.sql",
        "3e30b9ff3af3385fde5347d8e1cf5ba01daed3cfa5ce7e24c8ec1b6db17133f3",
    ),
    (
        "V5__drafts.sql",
        "b8e7bcd122a8cf44a1af4ba4b46dd32d51960be9c2b144f2617e8695e00cf4d5",
    ),
    (
        "V6__feed_and_mail.sql",
        "36cf4c757444eecd66f051b6546d34a853e675f469d638099d17006cb29647bd",
    ),
    (
        "V7__agent_lifecycle.sql",
        "01150a20a27766c821fbb490880469bd74f8f52ac0f47078945a2f750fd9ea27",
    ),
    (
        "V8__login_links.sql",
        "ac0c38d09e63f3739cbfb174705200c2fda400dc27cd4276bb5846e466f9c2c9",
    ),
    (
        "V9__bus.sql",
        "10372be964353d25f5955505a4a0f921c4fee6f60f82c583ee8a817127e6e3f0",
    ),
    (
        "V10__presence_heartbeat.sql",
        "e767f4f56eb0f1436a31eca4258067d6a4c98bb143a17078c75a0495a215b700",
    ),
    (
        "V11__lean_event_log.sql",
        "fb331e0b150e8647c5e587e0f3129f8d088302245e8f2f492ea0ed7678b49300",
    ),
    (
        "V12__mailer_role_and_feed_owners.sql",
        "e0bf7fa511d26aaed9a3e658c074c49ace6858b8867faa66572c4603e3a3b31f",
    ),
    (
        "V13__mail_consumer_to_mailers.sql",
        "160fe24d31ef45dfba5a43efd0f3ebe2a186806bd4c8ba8fe79eefe16b0188b6",
    ),
    (
        "V14__one_check_per_table.sql",
        "f7c0ccb6c6acdc9a83ec252098cc7a50b5bf78276e7085842c6b487a981f643f",
    ),
    (
        "V15__agent_sessions.sql",
        "9f2fec83188b6b8ca11178ad1e02ae68faddfd4e715db5b596505d4c6aec17a2",
    ),
];

fn sql_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sql")
}

#[test]
fn landed_migrations_are_frozen() {
    for (name, digest) in LANDED {
        let text = std::fs::read(sql_dir().join(name))
            .unwrap_or_else(|e| panic!("sql/{name} is gone ({e}): landed migrations stay"));
        assert_eq!(
            hex::encode(Sha256::digest(&text)),
            *digest,
            "sql/{name} changed after it landed: put the change in a new migration (or in sql/rules/)"
        );
    }
}

#[test]
fn the_binary_embeds_every_rule_file_in_name_order() {
    let mut on_disk: Vec<String> = std::fs::read_dir(sql_dir().join("rules"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".sql"))
        .collect();
    on_disk.sort();
    let embedded: Vec<String> = livedesk::db::migrations::RULES
        .iter()
        .map(|(name, _)| name.to_string())
        .collect();
    assert_eq!(
        embedded, on_disk,
        "src/db/migrations.rs RULES and sql/rules/ differ"
    );
    for (name, text) in livedesk::db::migrations::RULES {
        let file = std::fs::read_to_string(sql_dir().join("rules").join(name)).unwrap();
        assert_eq!(*text, file, "{name}");
        for line in text.lines() {
            let line = line.trim_start();
            assert!(
                !(line.starts_with("CREATE FUNCTION") || line.starts_with("CREATE TRIGGER")),
                "sql/rules/{name}: rules are re-applied, so they use CREATE OR REPLACE: {line}"
            );
        }
    }
}

/// Test settings never read the environment: a `DATABASE_URL` or
/// `LIVEDESK_*` in the shell running the tests must not reach them.
#[test]
fn default_settings_ignore_the_environment() {
    // Each test binary is its own process; this one sets variables that the
    // defaults must not see.
    std::env::set_var("DATABASE_URL", "postgres://nobody@nowhere/none");
    std::env::set_var("LIVEDESK_POOL_SIZE", "999");
    std::env::set_var("LIVEDESK_BIND", "0.0.0.0:1");
    let settings = livedesk::config::Settings::defaults();
    assert_eq!(settings.database_url, None);
    assert_eq!(settings.pool_size, 16);
    assert_eq!(settings.bind.to_string(), "127.0.0.1:8080");
}
