//! The `gong-enrich` binary as an operator runs it.

use std::process::Command;

use gong_testkit::gong_double::{DEFAULT_ACCESS_KEY, DEFAULT_ACCESS_KEY_SECRET};

use crate::support::Harness;

const BIN: &str = env!("CARGO_BIN_EXE_gong-enrich");

#[test]
fn help_describes_the_service_and_replay() {
    let output = Command::new(BIN).arg("--help").output().unwrap();
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("GONG_ACCESS_KEY"), "{text}");
    assert!(text.contains("replay"), "{text}");
    let output = Command::new(BIN)
        .args(["replay", "--help"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    for flag in ["--from-seq", "--since", "--until", "--call-id", "--dry-run"] {
        assert!(text.contains(flag), "{flag}: {text}");
    }
}

#[test]
fn bad_configuration_exits_64_naming_the_variable_not_the_secret() {
    let output = Command::new(BIN)
        .env_clear()
        .env("GONG_ACCESS_KEY", "k")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("GONG_ACCESS_KEY_SECRET"));
    let output = Command::new(BIN)
        .env_clear()
        .env("GONG_ACCESS_KEY", "k")
        .env("GONG_ACCESS_KEY_SECRET", "s3cr3t-value")
        .env("GONG_DAILY_QUOTA", "lots")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("GONG_DAILY_QUOTA"), "{stderr}");
    assert!(!stderr.contains("s3cr3t"));
}

#[tokio::test]
async fn replay_dry_run_prints_the_count_and_exits_0() {
    let harness = Harness::start(50, 100_000).await;
    harness.publish_calls(1_700_000_000, 7).await;
    let output = tokio::process::Command::new(BIN)
        .args(["replay", "--from-seq", "1", "--dry-run"])
        .env_clear()
        .env("NATS_URL", harness.nats.url())
        .env("LOG_FORMAT", "json")
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "7 events in range"
    );

    // A real run of the binary ends by itself too, with the credentials never logged.
    let output = tokio::process::Command::new(BIN)
        .args(["replay", "--since", "2000-01-01T00:00:00Z"])
        .env_clear()
        .env("NATS_URL", harness.nats.url())
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "debug")
        .env("GONG_API_BASE_URL", harness.gong.base_url())
        .env("GONG_ACCESS_KEY", DEFAULT_ACCESS_KEY)
        .env("GONG_ACCESS_KEY_SECRET", DEFAULT_ACCESS_KEY_SECRET)
        .env("GONG_RATE_LIMIT_PER_SECOND", "50")
        .env("ENRICH_BATCH_LINGER", "100ms")
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("7 published"), "{stdout}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains(DEFAULT_ACCESS_KEY_SECRET));
    assert!(stderr.contains("replay progress") || stderr.contains("replay done"));
    assert_eq!(harness.count(gong_common::names::STREAM_ENRICHED).await, 7);
}
