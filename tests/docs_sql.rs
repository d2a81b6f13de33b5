//! The examples of `docs/direct-sql.md` run as written: every ```sql block, in
//! order, on a fresh migrated database, over a plain PostgreSQL connection
//! (as another service would write). A block whose first line is
//! `-- expect: <SQLSTATE>` must fail with exactly that SQLSTATE; every other
//! block must succeed.
#![allow(clippy::unwrap_used)]

mod common;

use common::TestApp;

/// One ```sql block of the document.
struct Block {
    /// 1-based line of the opening fence, for messages.
    line: usize,
    sql: String,
    expect: Option<String>,
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
                });
            }
            None => {}
            Some(_) if line.trim_end() == "```" => {
                let mut block = current.take().unwrap();
                block.expect = block
                    .sql
                    .lines()
                    .next()
                    .and_then(|first| first.trim().strip_prefix("-- expect:"))
                    .map(|code| code.trim().to_string());
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
        "LD001", "LD002", "LD003", "LD004", "LD005", "LD400", "LD404", "23514", "23505",
    ] {
        assert!(
            blocks.iter().any(|b| b.expect.as_deref() == Some(code)),
            "docs/direct-sql.md has no `-- expect: {code}` example"
        );
    }

    let app = TestApp::spawn().await;
    let sql = app.sql().await;
    for block in &blocks {
        let result = sql.batch_execute(&block.sql).await;
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
    let row = sql
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
