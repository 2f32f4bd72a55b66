//! A crash between writing the files and acknowledging: same names, no loss, no duplicates.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gong_common::names;
use gong_load::ranges::{range_key, RangeRecord, RangeState};
use gong_testkit::nats::free_port;
use gong_testkit::wait_until;

use crate::support::{
    ack_floor, call_event_ids, publish_events, read_stage, render_rows, wait_all_acked, Harness,
};

const BIN: &str = env!("CARGO_BIN_EXE_gong-load");

fn spawn_loader(harness: &Harness, crash: bool) -> Child {
    let log = harness
        .root
        .path()
        .join(if crash { "crash.log" } else { "restart.log" });
    let mut command = Command::new(BIN);
    command
        .env_clear()
        .env("NATS_URL", harness.nats.url())
        .env("ADMIN_ADDR", format!("127.0.0.1:{}", free_port()))
        .env(
            "STAGE_URL",
            format!("file://{}", harness.stage_dir().display()),
        )
        .env("LOAD_SPOOL_DIR", harness.root.path().join("spool"))
        .env("LOAD_FLUSH_MAX_ROWS", "5")
        .env("LOAD_FLUSH_MAX_AGE", "1s")
        .env("LOAD_ACK_WAIT", "3s")
        .env("LOAD_LEASE_TTL", "2s")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(log)
                .map(Stdio::from)
                .unwrap_or(Stdio::null()),
        );
    if crash {
        command.env("LOAD_TEST_CRASH_AFTER_WRITE", "1");
    }
    command.spawn().expect("spawn gong-load")
}

#[tokio::test]
async fn killed_between_write_and_ack_then_restarted_keeps_names_and_rows() {
    let harness = Harness::new().await;
    publish_events(&harness.jetstream, 1, 5).await;

    // First run: writes range 1..=5, then aborts before any ack.
    let mut crashing = spawn_loader(&harness, true);
    let status = tokio::task::spawn_blocking(move || crashing.wait().unwrap())
        .await
        .unwrap();
    assert!(!status.success(), "the failpoint should abort the process");
    let after_crash = read_stage(&harness.stage_dir());
    let bytes_after_crash = crate::support::stage_bytes(&harness.stage_dir());
    assert!(
        after_crash
            .keys()
            .any(|path| path.ends_with("gong_00000000000000000001-00000000000000000005.parquet")),
        "files must be durable before the crash: {:?}",
        after_crash.keys()
    );
    assert_eq!(
        ack_floor(&harness.jetstream).await,
        0,
        "nothing may be acked before the crash"
    );

    // Second run: the redelivered messages fall in the recorded range, which is rewritten
    // under the same names; then new traffic goes on from sequence 6.
    let mut restarted = spawn_loader(&harness, false);
    publish_events(&harness.jetstream, 6, 8).await;
    wait_all_acked(&harness.jetstream).await;
    let kv = harness
        .jetstream
        .get_key_value(names::BUCKET_LOAD_RANGES)
        .await
        .unwrap();
    wait_until(Duration::from_secs(30), "range 1..=5 marked done", || {
        let kv = kv.clone();
        async move {
            let value = kv.get(range_key(1)).await.ok()??;
            let record: RangeRecord = serde_json::from_slice(&value).ok()?;
            (record.state == RangeState::Done && record.last == 5).then_some(())
        }
    })
    .await;
    crate::support::wait_calls_rows(&harness.stage_dir(), 8).await;
    wait_all_acked(&harness.jetstream).await;
    let files = read_stage(&harness.stage_dir());
    let bytes_after_restart = crate::support::stage_bytes(&harness.stage_dir());
    let _ = Command::new("kill")
        .args(["-TERM", &restarted.id().to_string()])
        .status();
    let _ = tokio::task::spawn_blocking(move || restarted.wait()).await;

    // Same names and rows for the crashed range; nothing lost, nothing twice.
    let before = render_rows(&after_crash);
    let after = render_rows(&files);
    for (path, rows) in &before {
        assert_eq!(
            after.get(path),
            Some(rows),
            "{path} changed after the restart"
        );
    }
    // The rewrite gave the same bytes (Snowflake's load history is keyed on names).
    for (path, bytes) in &bytes_after_crash {
        assert!(
            bytes_after_restart.get(path) == Some(bytes),
            "{path} has other bytes after the rewrite"
        );
    }
    let mut ids = call_event_ids(&files);
    ids.sort();
    let expected: Vec<String> = {
        let mut ids: Vec<String> = (1..=8).map(|index| format!("ev-{index}")).collect();
        ids.sort();
        ids
    };
    assert_eq!(ids, expected, "stage: {:?}", files.keys());
}
