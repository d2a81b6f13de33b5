//! An upgrade as an operator meets it: a data folder made by the release
//! before V12 (its roles, its tables, its rules, its data) started by this
//! binary. The start must apply V12 to V14 and the current rules over the
//! old ones, keep every row, keep what the old writers could do (mail
//! included, docs/security.md), give the mail sender's feed position to the
//! mail roles, and serve.

use serde_json::json;

use livedesk::db::embedded::{EmbeddedOptions, EmbeddedPostgres};
use livedesk::db::{bootstrap, migrations, Database};

use crate::common::{test_settings, TestApp};

/// `tests/fixtures/upgrade_v11/`: the old release's superuser step and rules.
const OLD_BOOTSTRAP: &str = include_str!("../fixtures/upgrade_v11/bootstrap.sql");
const OLD_RULES: &str = include_str!("../fixtures/upgrade_v11/rules.sql");

#[tokio::test]
async fn a_data_folder_of_the_release_before_v12_upgrades_and_keeps_everything() {
    let (_dir, mut pg) = own_cluster("livedesk-upgrade-").await;

    // The old release: its bootstrap as the superuser, then as the owner the
    // tables up to V11, its rules and its data, as its start did.
    let admin = Database::new(pg.admin_config(), 1).unwrap();
    admin
        .client()
        .await
        .unwrap()
        .batch_execute(OLD_BOOTSTRAP)
        .await
        .unwrap();
    let db = Database::new(pg.config(), 2).unwrap();
    let (ticket, before) = the_release_before_v12(&pg, &admin, &db).await;

    // This binary's start: its bootstrap, then the migrations and rules.
    bootstrap::embedded(&admin).await.unwrap();
    let report = migrations::run(&db).await.unwrap();
    // V14 validates its two CHECK constraints against the old rows; V15
    // adds the login sessions.
    assert_eq!(report.migrations, 4, "V12, V13, V14 and V15");
    assert!(report.rules, "the current rules replace the old ones");
    let owner = db.client().await.unwrap();

    // Every row kept.
    assert_eq!(events_of(&owner, ticket).await, before);
    both_writers_are_mailers(&owner).await;
    // The mail sender's position belongs to the mail roles at once (V13);
    // another consumer goes to the first role that starts it again.
    let owners: Vec<(String, Option<String>)> = owner
        .query(
            "SELECT name, owner_role FROM feed_consumers ORDER BY name",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        owners,
        vec![
            ("crm".to_string(), None),
            ("mailer".to_string(), Some("livedesk_mailer".to_string()))
        ]
    );
    let crm = login(&pg, "crm_sync", "livedesk").await;
    crm.execute("SELECT ld_feed_start('crm', 'beginning')", &[])
        .await
        .unwrap();
    let claimed: Option<String> = owner
        .query_one(
            "SELECT owner_role FROM feed_consumers WHERE name = 'crm'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(claimed.as_deref(), Some("crm_sync"));
    // Once the administrator takes the mail role back from the CRM sync
    // (docs/security.md), it cannot move the mail sender's position.
    admin
        .client()
        .await
        .unwrap()
        .batch_execute("REVOKE livedesk_mailer FROM crm_sync")
        .await
        .unwrap();
    let refused = crm
        .query_one("SELECT ld_feed_ack('mailer', $1, 1)", &[&ticket])
        .await
        .unwrap_err();
    assert_eq!(refused.code().map(|c| c.code()), Some("42501"), "{refused}");
    drop(crm);
    drop(owner);

    // And it serves: the old ticket reads, and changes through HTTP (write
    // batches) and SQL continue its versions.
    let mut app = TestApp::spawn_via("livedesk".into(), test_settings(), pg.config()).await;
    let (_, token) = app.agent("Alice", "agent").await;
    let (status, detail) = app.get(&format!("/api/tickets/{ticket}"), &token).await;
    assert_eq!(status, 200, "{detail}");
    assert_eq!(detail["ticket"]["subject"], "before the upgrade");
    assert_eq!(detail["ticket"]["version"], 3);
    let (status, patched) = app
        .patch(
            &format!("/api/tickets/{ticket}"),
            &token,
            json!({"changes": {"priority": {"from": "normal", "to": "high"}}}),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["version"], 4);
    let newest = detail["messages"][0]["id"].as_i64().unwrap();
    let (status, reply) = app
        .post(
            &format!("/api/tickets/{ticket}/messages"),
            &token,
            json!({"kind": "reply", "body": "after the upgrade", "seen_message_id": newest}),
        )
        .await;
    assert_eq!(status, 201, "{reply}");
    let owner = db.client().await.unwrap();
    let versions: Vec<i64> = events_of(&owner, ticket)
        .await
        .iter()
        .map(|(version, _)| *version)
        .collect();
    assert_eq!(versions, vec![1, 2, 3, 4, 5]);
    drop(owner);
    app.stop().await;
    db.pool().close();
    admin.pool().close();
    tokio::task::spawn_blocking(move || pg.stop())
        .await
        .unwrap();
}

/// On `db` (as its owner), the release before V12: the tables up to V11,
/// its rules, a ticket with history, and two writer roles (a CRM sync and
/// the mail gateway) with the feed consumer each started. Returns the
/// ticket and its events.
async fn the_release_before_v12(
    pg: &EmbeddedPostgres,
    admin: &Database,
    db: &Database,
) -> (i64, Vec<(i64, String)>) {
    assert_eq!(migrations::run_tables_until(db, 11).await.unwrap(), 11);
    let owner = db.client().await.unwrap();
    owner.batch_execute(OLD_RULES).await.unwrap();
    owner
        .execute(
            "INSERT INTO rules_applied (id, sha256) VALUES (1, 'the release before V12')",
            &[],
        )
        .await
        .unwrap();
    let ticket: i64 = owner
        .query_one(
            "SELECT (ld_create_ticket(NULL, 'before the upgrade', 'email', 'c@example.com', 'C', 'hello')->>'id')::bigint",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    owner
        .execute(
            "SELECT ld_patch_ticket($1, NULL, '{\"status\": {\"from\": \"new\", \"to\": \"open\"}}', NULL)",
            &[&ticket],
        )
        .await
        .unwrap();
    admin
        .client()
        .await
        .unwrap()
        .batch_execute(
            "CREATE ROLE crm_sync LOGIN; GRANT livedesk_writer TO crm_sync;
             CREATE ROLE mail_gateway LOGIN; GRANT livedesk_writer TO mail_gateway;",
        )
        .await
        .unwrap();
    let dbname = db.config().get_dbname().unwrap_or("livedesk").to_string();
    for (role, consumer) in [("crm_sync", "crm"), ("mail_gateway", "mailer")] {
        let writer = login(pg, role, &dbname).await;
        writer
            .execute("SELECT ld_feed_start($1, 'beginning')", &[&consumer])
            .await
            .unwrap();
    }
    let before = events_of(&owner, ticket).await;
    assert_eq!(
        before.len(),
        3,
        "created, its first message, changed: {before:?}"
    );
    (ticket, before)
}

/// A login as `role` to `dbname` (the embedded cluster trusts its socket).
async fn login(pg: &EmbeddedPostgres, role: &str, dbname: &str) -> tokio_postgres::Client {
    let mut config = pg.config();
    config.user(role).dbname(dbname);
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// The ticket's events: (version, kind).
async fn events_of(client: &tokio_postgres::Client, ticket: i64) -> Vec<(i64, String)> {
    client
        .query(
            "SELECT version, kind FROM ticket_events WHERE ticket_id = $1 ORDER BY version",
            &[&ticket],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// The same release on a database of its own (`DATABASE_URL`), whose owner
/// may create roles, with no bootstrap (that is the embedded default's):
/// V12 itself creates `livedesk_mailer` and gives it to the existing
/// writers once, V13 gives it the mail sender's position, every event is
/// kept.
#[tokio::test]
async fn a_database_url_database_of_the_release_before_v12_upgrades_when_its_owner_may_create_roles(
) {
    let (_dir, mut pg) = own_cluster("livedesk-upgrade-url-").await;
    let admin = Database::new(pg.admin_config(), 1).unwrap();
    let superuser = admin.client().await.unwrap();
    superuser
        .batch_execute("CREATE ROLE app_owner LOGIN CREATEROLE")
        .await
        .unwrap();
    superuser
        .batch_execute("CREATE DATABASE app OWNER app_owner")
        .await
        .unwrap();
    drop(superuser);
    let mut config = pg.admin_config();
    config.user("app_owner").dbname("app");
    let db = Database::new(config, 2).unwrap();
    let (ticket, before) = the_release_before_v12(&pg, &admin, &db).await;
    let mailer_role: bool = admin
        .client()
        .await
        .unwrap()
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'livedesk_mailer')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!mailer_role, "the old release had no livedesk_mailer");

    let report = migrations::run(&db).await.unwrap();
    // V14 validates its two CHECK constraints against the old rows; V15
    // adds the login sessions.
    assert_eq!(report.migrations, 4, "V12, V13, V14 and V15");
    assert!(report.rules);
    let owner = db.client().await.unwrap();
    assert_eq!(events_of(&owner, ticket).await, before);
    both_writers_are_mailers(&owner).await;
    let mailer: Option<String> = owner
        .query_one(
            "SELECT owner_role FROM feed_consumers WHERE name = 'mailer'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(mailer.as_deref(), Some("livedesk_mailer"));
    drop(owner);
    db.pool().close();
    admin.pool().close();
    tokio::task::spawn_blocking(move || pg.stop())
        .await
        .unwrap();
}

/// A PostgreSQL of the test's own (the upgrade makes cluster-wide roles);
/// the folder goes when the returned guard is dropped.
async fn own_cluster(prefix: &str) -> (tempfile::TempDir, EmbeddedPostgres) {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .unwrap();
    let mut options = EmbeddedOptions::new(dir.path());
    options.unsafe_fast = true;
    let pg = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(options))
        .await
        .unwrap()
        .unwrap();
    (dir, pg)
}

/// Both old writers are given `livedesk_mailer` once, so they keep the
/// mail functions they had (revoking them from a service that sends no
/// mail is the administrator's, docs/security.md).
async fn both_writers_are_mailers(owner: &tokio_postgres::Client) {
    for role in ["crm_sync", "mail_gateway"] {
        let member: bool = owner
            .query_one(
                "SELECT pg_has_role($1, 'livedesk_mailer', 'MEMBER')",
                &[&role],
            )
            .await
            .unwrap()
            .get(0);
        assert!(member, "{role} is given livedesk_mailer");
    }
}
