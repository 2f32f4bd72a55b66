//! Replay: a wiped stage is rebuilt under the same names with the same rows.

use gong_load::replay::{replay, ReplayWindow};
use gong_load::LoadConfig;
use tokio_util::sync::CancellationToken;

use crate::support::{
    differing_files, publish_events, read_stage, render_rows, stage_bytes, wait_calls_rows, Harness,
};

#[tokio::test]
async fn replay_after_wiping_the_stage_reproduces_names_and_rows() {
    let mut harness = Harness::new().await;
    harness.start_loader(&[("LOAD_FLUSH_MAX_ROWS", "4")]).await;
    publish_events(&harness.jetstream, 1, 10).await;
    wait_calls_rows(&harness.stage_dir(), 10).await;
    harness.wait_all_acked().await;
    harness.stop_loader().await;
    let live = render_rows(&read_stage(&harness.stage_dir()));
    let live_bytes = stage_bytes(&harness.stage_dir());
    assert!(live.len() >= 3 * 6, "{:?}", live.keys());

    std::fs::remove_dir_all(harness.stage_dir()).unwrap();
    let config = LoadConfig::from_env(&harness.env(&[])).unwrap();
    let mut reports = Vec::new();
    let summary = replay(
        config,
        ReplayWindow {
            from_seq: Some(1),
            ..Default::default()
        },
        CancellationToken::new(),
        |progress| reports.push(progress.clone()),
    )
    .await
    .expect("replay");
    assert_eq!(summary.events, 10);
    assert_eq!(summary.left_to_live, 0);
    assert_eq!(
        reports.last().map(|progress| progress.done),
        Some(summary.ranges)
    );
    let replayed = render_rows(&read_stage(&harness.stage_dir()));
    assert_eq!(
        replayed.keys().collect::<Vec<_>>(),
        live.keys().collect::<Vec<_>>(),
        "replay must reproduce the live file names"
    );
    assert_eq!(replayed, live, "replay must reproduce the live rows");
    let differing = differing_files(&live_bytes, &stage_bytes(&harness.stage_dir()));
    assert!(
        differing.is_empty(),
        "replay must reproduce the live files byte for byte: {differing:?}"
    );

    // A window in the middle rewrites only the ranges that overlap it, whole.
    std::fs::remove_dir_all(harness.stage_dir()).unwrap();
    let config = LoadConfig::from_env(&harness.env(&[])).unwrap();
    let summary = replay(
        config,
        ReplayWindow {
            from_seq: Some(6),
            ..Default::default()
        },
        CancellationToken::new(),
        |_| {},
    )
    .await
    .expect("replay");
    let partial = render_rows(&read_stage(&harness.stage_dir()));
    assert!(summary.ranges >= 1);
    for (path, rows) in &partial {
        assert_eq!(live.get(path), Some(rows), "{path}");
    }
    for (path, bytes) in stage_bytes(&harness.stage_dir()) {
        assert!(
            live_bytes.get(&path) == Some(&bytes),
            "{path} changed bytes"
        );
    }
    assert!(partial.len() < live.len());
}

#[tokio::test]
async fn replay_binary_ends_by_itself_and_rebuilds_the_same_files() {
    let mut harness = Harness::new().await;
    harness.start_loader(&[("LOAD_FLUSH_MAX_ROWS", "3")]).await;
    publish_events(&harness.jetstream, 1, 7).await;
    wait_calls_rows(&harness.stage_dir(), 7).await;
    harness.wait_all_acked().await;
    harness.stop_loader().await;
    let live = render_rows(&read_stage(&harness.stage_dir()));
    let live_bytes = stage_bytes(&harness.stage_dir());
    std::fs::remove_dir_all(harness.stage_dir()).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_gong-load"))
        .args(["replay", "--since", "2000-01-01T00:00:00Z"])
        .env_clear()
        .env("NATS_URL", harness.nats.url())
        .env(
            "STAGE_URL",
            format!("file://{}", harness.stage_dir().display()),
        )
        .env("LOAD_SPOOL_DIR", harness.root.path().join("spool"))
        .env("LOG_FORMAT", "json")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("replayed 3 ranges"), "{stderr}");
    assert_eq!(render_rows(&read_stage(&harness.stage_dir())), live);
    let differing = differing_files(&live_bytes, &stage_bytes(&harness.stage_dir()));
    assert!(differing.is_empty(), "bytes differ: {differing:?}");
}
