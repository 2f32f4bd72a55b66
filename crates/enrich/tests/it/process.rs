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
    assert!(text.contains("sweep"), "{text}");
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

#[test]
fn bad_replay_arguments_exit_64() {
    for args in [
        vec!["replay"],
        vec!["replay", "--since", "yesterday"],
        vec![
            "replay",
            "--from-seq",
            "1",
            "--since",
            "2024-01-01T00:00:00Z",
        ],
    ] {
        let output = Command::new(BIN).args(&args).env_clear().output().unwrap();
        assert_eq!(output.status.code(), Some(64), "{args:?}: {output:?}");
    }
}

#[test]
fn bad_sweep_arguments_exit_64() {
    for args in [
        vec!["sweep"],
        vec!["sweep", "--since", "yesterday"],
        vec!["sweep", "--since", "72h", "--until", "soon"],
    ] {
        let output = Command::new(BIN).args(&args).env_clear().output().unwrap();
        assert_eq!(output.status.code(), Some(64), "{args:?}: {output:?}");
    }
}

#[tokio::test]
async fn sweep_prints_its_counts_last_and_exits_0() {
    let harness = Harness::start(50, 100_000).await;
    let now = chrono::Utc::now();
    harness.gong.add_calls((0..7).map(|n| {
        (
            (1_800_000_000 + n).to_string(),
            now - chrono::Duration::hours(n + 1),
        )
    }));
    // One of them came by webhook and was enriched: the sweep finds it present.
    harness.publish_raw("1800000003").await;
    let env = harness.env(50);
    let enricher = harness.enricher(harness.config(&env)).await;
    harness.wait_enriched(1).await;
    harness.wait_consumer_drained().await;
    let run = |extra: &'static [&'static str]| {
        let mut command = tokio::process::Command::new(BIN);
        command
            .arg("sweep")
            .args(["--since", "30d"])
            .args(extra)
            .env_clear()
            .env("NATS_URL", harness.nats.url())
            .env("LOG_FORMAT", "json")
            .env("GONG_API_BASE_URL", harness.gong.base_url())
            .env("GONG_ACCESS_KEY", DEFAULT_ACCESS_KEY)
            .env("GONG_ACCESS_KEY_SECRET", DEFAULT_ACCESS_KEY_SECRET)
            .env("GONG_RATE_LIMIT_PER_SECOND", "50");
        command.output()
    };
    let last_line = |output: &std::process::Output| {
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .last()
            .unwrap_or("")
            .to_string()
    };
    let dry = run(&["--dry-run"]).await.unwrap();
    assert!(dry.status.success(), "{dry:?}");
    assert!(String::from_utf8_lossy(&dry.stdout).contains("would inject 6"));
    assert_eq!(last_line(&dry), "sweep: listed 7, present 1, injected 0");
    assert_eq!(harness.count(gong_common::names::STREAM_RAW).await, 1);

    let real = run(&[]).await.unwrap();
    assert!(real.status.success(), "{real:?}");
    assert_eq!(last_line(&real), "sweep: listed 7, present 1, injected 6");
    let stderr = String::from_utf8_lossy(&real.stderr);
    assert!(stderr.contains("sweep done"), "{stderr}");
    assert!(!stderr.contains(DEFAULT_ACCESS_KEY_SECRET));
    harness.wait_enriched(7).await;
    drop(enricher);
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

#[tokio::test]
async fn the_service_enriches_and_sigterm_exits_cleanly_without_leaking_the_secret() {
    use std::io::Read;
    use std::process::Stdio;

    let harness = Harness::start(50, 100_000).await;
    harness.publish_calls(1_750_000_000, 3).await;
    let admin_port = gong_testkit::nats::free_port();
    let mut child = Command::new(BIN)
        .env_clear()
        .env("NATS_URL", harness.nats.url())
        .env("ADMIN_ADDR", format!("127.0.0.1:{admin_port}"))
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "trace")
        .env("GONG_API_BASE_URL", harness.gong.base_url())
        .env("GONG_ACCESS_KEY", DEFAULT_ACCESS_KEY)
        .env("GONG_ACCESS_KEY_SECRET", DEFAULT_ACCESS_KEY_SECRET)
        .env("GONG_RATE_LIMIT_PER_SECOND", "50")
        .env("ENRICH_BATCH_LINGER", "100ms")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Drain stderr all along: a full pipe would block the logging process.
    let mut stderr = child.stderr.take().unwrap();
    let logs = std::thread::spawn(move || {
        let mut logs = String::new();
        let _ = stderr.read_to_string(&mut logs);
        logs
    });
    harness.wait_enriched(3).await;
    let http = reqwest::Client::new();
    gong_testkit::wait_until(crate::support::TIMEOUT, "gong-enrich ready", || {
        let http = http.clone();
        async move {
            let response = http
                .get(format!("http://127.0.0.1:{admin_port}/readyz"))
                .send()
                .await
                .ok()?;
            (response.status().as_u16() == 200).then_some(())
        }
    })
    .await;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let (code, logs) = tokio::task::spawn_blocking(move || {
        let code = child.wait().unwrap();
        (code, logs.join().unwrap())
    })
    .await
    .unwrap();
    assert_eq!(code.code(), Some(0), "logs: {logs}");
    assert!(logs.contains("gong-enrich consuming"), "{logs}");
    assert!(logs.contains("gong-enrich stopped"), "{logs}");
    assert!(
        !logs.contains(DEFAULT_ACCESS_KEY_SECRET),
        "the access key secret leaked into the logs"
    );
    assert!(
        !logs.to_ascii_lowercase().contains("basic "),
        "the authorization header leaked into the logs"
    );
}
