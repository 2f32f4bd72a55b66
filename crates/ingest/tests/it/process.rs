//! The `gong-ingest` binary as an operator runs it: exit codes, SIGTERM, logs without secrets.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use gong_testkit::nats::free_port;
use gong_testkit::webhook::call_body;
use gong_testkit::{wait_until, NatsServer};

use crate::support::URL_TOKEN;

const BIN: &str = env!("CARGO_BIN_EXE_gong-ingest");

#[test]
fn bad_configuration_exits_64_naming_the_variable() {
    let output = Command::new(BIN)
        .env_clear()
        .env("INGEST_ADDR", "nonsense")
        .env("GONG_WEBHOOK_URL_TOKENS", URL_TOKEN)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("INGEST_ADDR"));
}

#[test]
fn help_describes_the_binary() {
    let output = Command::new(BIN).arg("--help").output().unwrap();
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("GONG_WEBHOOK_SECRETS"));
}

#[tokio::test]
async fn url_token_never_reaches_logs_and_sigterm_exits_cleanly() {
    let nats = NatsServer::start_new();
    let port = free_port();
    let admin_port = free_port();
    let mut child = Command::new(BIN)
        .env_clear()
        .env("NATS_URL", nats.url())
        .env("INGEST_ADDR", format!("127.0.0.1:{port}"))
        .env("ADMIN_ADDR", format!("127.0.0.1:{admin_port}"))
        .env("GONG_WEBHOOK_URL_TOKENS", URL_TOKEN)
        .env("INGEST_MAX_BODY_BYTES", "4096")
        .env("RUST_LOG", "trace")
        .env("LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    wait_until(Duration::from_secs(30), "gong-ingest ready", || {
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
    let ok = http
        .post(format!("http://127.0.0.1:{port}/webhooks/gong/{URL_TOKEN}"))
        .body(call_body("8000", false))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status().as_u16(), 202);
    let wrong = http
        .post(format!(
            "http://127.0.0.1:{port}/webhooks/gong/{URL_TOKEN}x"
        ))
        .body(call_body("8001", false))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    // Refused from its declared length, before taking an in-flight slot: the gauge stays at 0
    // (bounds.rs has requests refused after taking one).
    let too_large = http
        .post(format!("http://127.0.0.1:{port}/webhooks/gong/{URL_TOKEN}"))
        .body(vec![b' '; 5000])
        .send()
        .await
        .unwrap();
    assert_eq!(too_large.status().as_u16(), 413);
    let metrics = http
        .get(format!("http://127.0.0.1:{admin_port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("gong_ingest_requests_total"));
    assert!(
        metrics.contains("\ngong_ingest_requests_in_flight 0\n"),
        "in-flight gauge not back at 0:\n{metrics}"
    );
    assert!(!metrics.contains(URL_TOKEN));

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || {
        let code = child.wait().unwrap();
        let mut logs = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut logs)
            .unwrap();
        (code, logs)
    })
    .await
    .unwrap();
    assert_eq!(exit.0.code(), Some(0), "logs: {}", exit.1);
    assert!(
        exit.1.contains("gong-ingest accepting webhooks"),
        "{}",
        exit.1
    );
    assert!(
        !exit.1.contains(URL_TOKEN),
        "the URL token leaked into the logs"
    );
}

#[tokio::test]
async fn dlq_commands_list_show_redrive_and_purge() {
    let harness = crate::support::Harness::start().await;
    let response = harness
        .http
        .post(harness.url(&format!("/webhooks/gong/{URL_TOKEN}")))
        .body("definitely not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let nats_url = harness.nats.url();
    let dlq = |args: &[&str]| {
        Command::new(BIN)
            .arg("dlq")
            .args(args)
            .env_clear()
            .env("NATS_URL", &nats_url)
            .output()
            .unwrap()
    };
    let listed = dlq(&["list", "--json"]);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let line = String::from_utf8(listed.stdout).unwrap();
    let entry: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(entry["reason"], "unparseable_webhook");
    assert_eq!(entry["stage"], "ingest");
    let seq = entry["seq"].as_u64().unwrap().to_string();

    let shown = dlq(&["show", &seq]);
    assert!(String::from_utf8_lossy(&shown.stdout).contains("definitely not json"));

    let refused = dlq(&["purge"]);
    assert_eq!(
        refused.status.code(),
        Some(1),
        "purge without --all must refuse"
    );
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("refusing to purge"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let redriven = dlq(&["redrive", &seq]);
    assert!(
        redriven.status.success(),
        "{}",
        String::from_utf8_lossy(&redriven.stderr)
    );
    assert_eq!(harness.count(crate::support::raw_stream()).await, 1);
    assert_eq!(harness.count(gong_common::names::STREAM_DLQ).await, 0);

    let purged = dlq(&["purge", "--all"]);
    assert!(String::from_utf8_lossy(&purged.stdout).contains("purged 0"));
}
