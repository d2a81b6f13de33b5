//! The psql test scripts of `sql/tests/` (rules for direct SQL writers,
//! deterministic two-session races), run as part of `cargo test`.

#[test]
fn the_sql_test_scripts_pass() {
    let output = std::process::Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/sql/tests/run.sh"))
        .output()
        .expect("run sql/tests/run.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "sql/tests/run.sh failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("0 failed"), "{stdout}");
}
