//! The metrics contract: the `gong_*` names the three binaries expose on `/metrics` are exactly
//! those in tests/deploy/expected_metrics.txt (which the alerts and the dashboard are checked
//! against), both on a fresh process and after every code path was touched once.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use gong_testkit::webhook::TestKey;
use gong_testkit::NatsServer;

use crate::support::pipeline::{poll, Options, Pipeline, StageTarget};
use crate::support::process::{binary, Service};
use crate::support::stage::read_local;

/// The names listed in tests/deploy/expected_metrics.txt.
fn expected() -> BTreeSet<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/expected_metrics.txt"
    );
    std::fs::read_to_string(path)
        .unwrap_or_else(|err| panic!("read {path}: {err}"))
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// The `gong_*` metric names in a Prometheus text, histogram suffixes stripped.
fn exposed(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split(['{', ' ']).next())
        .filter(|name| name.starts_with("gong_"))
        .map(|name| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name)
                .to_string()
        })
        .collect()
}

/// Every stage's names, checked against its share of the list: `(missing, unexpected)`.
async fn compare(
    services: [&Service; 3],
    expected: &BTreeSet<String>,
) -> (Vec<String>, Vec<String>) {
    let mut missing = Vec::new();
    let mut unexpected = Vec::new();
    for service in services {
        let prefix = format!("{}_", service.kind.binary_name().replace('-', "_"));
        let text = service
            .metrics()
            .await
            .unwrap_or_else(|err| panic!("{err}"));
        let names = exposed(&text);
        missing.extend(
            expected
                .iter()
                .filter(|name| name.starts_with(&prefix) && !names.contains(*name))
                .cloned(),
        );
        unexpected.extend(
            names
                .iter()
                .filter(|name| !expected.contains(*name))
                .cloned(),
        );
    }
    (missing, unexpected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_binary_exposes_exactly_the_listed_metric_names() {
    let expected = expected();
    for stage in ["ingest", "enrich", "load"] {
        assert!(
            expected
                .iter()
                .any(|name| name.starts_with(&format!("gong_{stage}_"))),
            "expected_metrics.txt lists nothing for {stage}"
        );
    }
    let nats = NatsServer::start_new();
    let root = tempfile::tempdir().expect("tempdir");
    let stage = root.path().join("stage");
    let pipeline =
        Pipeline::start(Options::new(nats.url(), StageTarget::Local(stage.clone()))).await;
    let services = [&pipeline.ingest, pipeline.enrich(), pipeline.load()];

    // A fresh process (ready, nothing received yet) already exposes every name.
    let (missing, unexpected) = compare(services, &expected).await;
    assert!(
        missing.is_empty() && unexpected.is_empty(),
        "fresh processes: missing {missing:?}, not in expected_metrics.txt {unexpected:?}"
    );

    // Touch the code paths cheaply: gong-sim sends signed webhooks (accepted, enriched,
    // staged), one more is a duplicate, and an unsigned request is refused.
    let key = root.path().join("rule_a.key.pem");
    std::fs::write(&key, TestKey::rule_a().private_pem()).expect("write key");
    let url = pipeline.ingest.webhook_url();
    for _ in 0..2 {
        let output = Command::new(binary("gong-sim"))
            .args(["send", "--url", &url, "--count", "3", "--key"])
            .arg(&key)
            .output()
            .expect("run gong-sim send");
        assert!(
            output.status.success(),
            "gong-sim send failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let refused = reqwest::Client::new()
        .post(&url)
        .body("{}")
        .send()
        .await
        .expect("unsigned post");
    assert_eq!(refused.status().as_u16(), 401);
    poll(Duration::from_secs(60), "three calls staged", || {
        let stage = stage.clone();
        async move { (read_local(&stage).event_rows.len() >= 3).then_some(()) }
    })
    .await
    .unwrap_or_else(|reason| panic!("{reason}\n{}", pipeline.explain()));

    let (missing, unexpected) = compare(services, &expected).await;
    assert!(
        missing.is_empty() && unexpected.is_empty(),
        "after traffic: missing {missing:?}, not in expected_metrics.txt {unexpected:?}"
    );
}
