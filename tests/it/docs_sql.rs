//! The examples of `docs/direct-sql.md` run as written: every ```sql block, in
//! order, on a fresh migrated database, over a plain PostgreSQL connection as
//! a role made by `livedesk writer add` (as another service would write). A
//! block whose first line is `-- expect: <SQLSTATE>` must fail with exactly
//! that SQLSTATE; every other block must succeed. `-- as: owner`,
//! `-- as: reader` and `-- as: mailer` blocks run as the schema owner, a
//! read-only role and a mail gateway's role (`writer add --mail`).
#![allow(clippy::unwrap_used)]

use crate::common;

use common::TestApp;

/// One ```sql block of the document.
struct Block {
    /// 1-based line of the opening fence, for messages.
    line: usize,
    sql: String,
    expect: Option<String>,
    /// `owner`, `reader`, `mailer`, or `writer` (the default).
    role: String,
}

fn sql_blocks(markdown: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut current: Option<Block> = None;
    for (n, line) in markdown.lines().enumerate() {
        match current.as_mut() {
            None if line.trim_end() == "```sql" => {
                current = Some(Block {
                    line: n + 1,
                    sql: String::new(),
                    expect: None,
                    role: "writer".into(),
                });
            }
            None => {}
            Some(_) if line.trim_end() == "```" => {
                let mut block = current.take().unwrap();
                for header in block.sql.lines().take_while(|l| l.starts_with("-- ")) {
                    if let Some(code) = header.trim().strip_prefix("-- expect:") {
                        block.expect = Some(code.trim().to_string());
                    }
                    if let Some(role) = header.trim().strip_prefix("-- as:") {
                        block.role = role.trim().to_string();
                    }
                }
                blocks.push(block);
            }
            Some(block) => {
                block.sql.push_str(line);
                block.sql.push('\n');
            }
        }
    }
    assert!(current.is_none(), "an ```sql block is not closed");
    blocks
}

#[tokio::test]
async fn every_sql_example_in_direct_sql_md_runs_as_documented() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/direct-sql.md");
    let markdown = std::fs::read_to_string(path).unwrap();
    let blocks = sql_blocks(&markdown);
    assert!(blocks.len() >= 20, "only {} sql blocks found", blocks.len());

    // The document shows every SQLSTATE it tells writers about.
    for code in [
        "LD001", "LD002", "LD003", "LD004", "LD005", "LD400", "LD404", "23514", "23505", "42501",
    ] {
        assert!(
            blocks.iter().any(|b| b.expect.as_deref() == Some(code)),
            "docs/direct-sql.md has no `-- expect: {code}` example"
        );
    }

    let app = TestApp::spawn().await;
    let owner = app.sql().await;
    let (_, _, writer) = common::writer_role(&app, "docwriter", false).await;
    let (_, _, reader) = common::writer_role(&app, "docreader", true).await;
    let (_, _, mailer) = common::mail_role(&app, "docmailer").await;
    for block in &blocks {
        let sql = match block.role.as_str() {
            "owner" => &owner,
            "reader" => &reader,
            "writer" => &writer,
            "mailer" => &mailer,
            other => panic!("docs/direct-sql.md:{}: unknown role {other}", block.line),
        };
        let mut result = sql.batch_execute(&block.sql).await;
        // The feed holds back what an older open transaction of the whole
        // cluster might still precede (the document says so): tests running
        // beside this one open such transactions, so wait them out.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while matches!(&result, Err(e) if describe(e).contains("not in the feed yet"))
            && tokio::time::Instant::now() < deadline
        {
            sql.batch_execute("ROLLBACK").await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            result = sql.batch_execute(&block.sql).await;
        }
        match (&block.expect, result) {
            (None, Ok(())) => {}
            (None, Err(e)) => panic!(
                "docs/direct-sql.md:{}: the block failed: {}\n{}",
                block.line,
                describe(&e),
                block.sql
            ),
            (Some(code), Ok(())) => panic!(
                "docs/direct-sql.md:{}: expected SQLSTATE {code}, but the block succeeded\n{}",
                block.line, block.sql
            ),
            (Some(code), Err(e)) => {
                let got = e.code().map(|c| c.code().to_string());
                assert_eq!(
                    got.as_deref(),
                    Some(code.as_str()),
                    "docs/direct-sql.md:{}: wrong error: {}\n{}",
                    block.line,
                    describe(&e),
                    block.sql
                );
                // A failure inside BEGIN leaves the transaction aborted (as in psql).
                sql.batch_execute("ROLLBACK").await.unwrap();
            }
        }
    }

    // The history the examples wrote is gapless and matches the ticket's version.
    let row = owner
        .query_one(
            "SELECT t.version, count(e.*), min(e.version), max(e.version)
             FROM tickets t JOIN ticket_events e ON e.ticket_id = t.id
             WHERE t.id = 1001 GROUP BY t.version",
            &[],
        )
        .await
        .unwrap();
    let (version, count, first, last): (i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!((count, first, last), (version, 1, version));
}

fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "{} {} (detail: {})",
            db.code().code(),
            db.message(),
            db.detail().unwrap_or("-")
        ),
        None => e.to_string(),
    }
}
