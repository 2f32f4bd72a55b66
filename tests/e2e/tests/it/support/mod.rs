//! Shared set-up for the whole-pipeline tests.

pub mod content;
pub mod pipeline;
pub mod process;
pub mod sender;
pub mod stage;
pub mod stream;

use std::io::Write;

/// `E2E_SCALE=long` (scripts/reliability.sh) runs every scenario longer; anything else short.
pub fn long() -> bool {
    std::env::var("E2E_SCALE").is_ok_and(|scale| scale == "long")
}

/// `short` in the normal suite, `long` under `E2E_SCALE=long`.
pub fn scaled<T>(short: T, long_value: T) -> T {
    if long() {
        long_value
    } else {
        short
    }
}

/// The random seed: `E2E_SEED` to replay a run, else a fresh one (printed by the tests).
pub fn seed() -> u64 {
    std::env::var("E2E_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(rand::random)
}

/// A first call id no other test of this run uses (call ids only need to be distinct per
/// test: each test has its own nats-server and stage).
pub fn first_call_id() -> u64 {
    7_100_000_000_000_000_000
}

/// Prints one result line and, when `E2E_REPORT_FILE` is set, appends it there as JSON (the
/// results table of docs/reliability.md is made from these lines).
pub fn report(scenario: &str, fields: serde_json::Value) {
    let mut line = serde_json::json!({
        "scenario": scenario,
        "scale": if long() { "long" } else { "short" },
        "date": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    });
    if let (Some(target), Some(extra)) = (line.as_object_mut(), fields.as_object()) {
        target.extend(extra.clone());
    }
    eprintln!("RESULT {line}");
    if let Ok(path) = std::env::var("E2E_REPORT_FILE") {
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(file, "{line}");
        }
    }
}
