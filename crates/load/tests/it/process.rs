//! The `gong-load` binary as an operator runs it.

use std::process::Command;

use crate::support::{publish_events, wait_calls_rows, Harness};

const BIN: &str = env!("CARGO_BIN_EXE_gong-load");

#[test]
fn help_lists_the_configuration_and_subcommands() {
    let output = Command::new(BIN).arg("--help").output().unwrap();
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    for word in [
        "STAGE_URL",
        "LOAD_FLUSH_MAX_AGE",
        "replay",
        "inspect",
        "snowflake-sql",
        "snowflake-status",
        "SNOWFLAKE_VERIFY_TIMEOUT",
    ] {
        assert!(text.contains(word), "{word} missing from --help:\n{text}");
    }
}

#[test]
fn bad_configuration_exits_64_naming_the_variable() {
    let output = Command::new(BIN)
        .env_clear()
        .env("LOAD_FLUSH_MAX_AGE", "whenever")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("LOAD_FLUSH_MAX_AGE"));
}

#[tokio::test]
async fn inspect_prints_schema_and_rows_of_staged_files() {
    let mut harness = Harness::new().await;
    harness.start_loader(&[]).await;
    publish_events(&harness.jetstream, 1, 2).await;
    wait_calls_rows(&harness.stage_dir(), 2).await;
    harness.stop_loader().await;
    let output = Command::new(BIN)
        .args(["inspect", "--rows", "1"])
        .arg(harness.stage_dir().join("calls"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("started: Timestamp(µs, \"UTC\")")
            || text.contains("started: Timestamp(Microsecond"),
        "{text}"
    );
    assert!(text.contains("gong.schema_version: 2"), "{text}");
    assert!(text.contains("started_date_utc: Date32"), "{text}");
    assert!(
        text.contains("\"call_id\":\"7000000000000000001\""),
        "{text}"
    );
}
