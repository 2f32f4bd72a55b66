//! Verified loads in Snowpipe REST mode: notifications survive a crash, every file's load is
//! followed to its outcome through insertReport and loadHistoryScan (against the Snowpipe
//! double, which checks the key-pair JWT), and `snowflake-status` shows them.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use gong_load::ledger::{FileRecord, FileState, Ledger};
use gong_testkit::snowpipe_double::{public_key_fingerprint, Outcome, SnowpipeDouble};
use gong_testkit::wait_until;
use gong_testkit::webhook::TestKey;

use crate::support::{
    call_tables, metric_value, publish_events, read_stage, wait_all_acked, wait_calls_rows, Harness,
};

const BIN: &str = env!("CARGO_BIN_EXE_gong-load");

/// The loader variables of Snowpipe REST mode against `double`, plus `extra`.
fn snowflake_env(
    harness: &Harness,
    double: &SnowpipeDouble,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let key_path = harness.root.path().join("snowflake.p8");
    std::fs::write(&key_path, TestKey::snowflake().private_pem()).unwrap();
    let mut pairs: Vec<(String, String)> = [
        ("SNOWFLAKE_ACCOUNT", "xy12345.us-east-1".to_string()),
        ("SNOWFLAKE_USER", "loader".to_string()),
        ("SNOWFLAKE_PRIVATE_KEY_PATH", key_path.display().to_string()),
        ("SNOWFLAKE_PIPE", "DB.RAW.GONG_{TABLE}_PIPE".to_string()),
        ("SNOWFLAKE_PIPE_URL", double.url()),
        ("SNOWFLAKE_NOTIFY_ATTEMPTS", "1".to_string()),
        ("SNOWFLAKE_VERIFY_POLL", "100ms".to_string()),
    ]
    .into_iter()
    .map(|(var, value)| (var.to_string(), value))
    .collect();
    for (var, value) in extra {
        pairs.retain(|(known, _)| known != var);
        pairs.push((var.to_string(), value.to_string()));
    }
    pairs
}

fn as_refs(pairs: &[(String, String)]) -> Vec<(&str, &str)> {
    pairs
        .iter()
        .map(|(var, value)| (var.as_str(), value.as_str()))
        .collect()
}

async fn double() -> SnowpipeDouble {
    SnowpipeDouble::start(
        "xy12345.us-east-1",
        "loader",
        TestKey::snowflake().public_pem(),
    )
    .await
}

/// Every record of the ledger, by path.
async fn ledger(harness: &Harness) -> BTreeMap<String, FileRecord> {
    let Ok(Some(ledger)) = Ledger::open_existing(&harness.jetstream).await else {
        return BTreeMap::new();
    };
    ledger
        .all()
        .await
        .map(|all| {
            all.into_iter()
                .map(|known| (known.record.path.clone(), known.record))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until every table's file of the one event is staged, each has a record, and `done`
/// holds for the ledger.
async fn wait_ledger(
    harness: &Harness,
    what: &str,
    done: impl Fn(&BTreeMap<String, FileRecord>) -> bool,
) -> BTreeMap<String, FileRecord> {
    wait_until(Duration::from_secs(60), what, || async {
        let staged: Vec<String> = read_stage(&harness.stage_dir()).into_keys().collect();
        let records = ledger(harness).await;
        // Every test here stages one event: a file of each table it has rows for (the files of
        // a range are written one after another, so fewer means the range is still going out).
        let complete = staged.len() == call_tables().len()
            && staged.iter().all(|path| records.contains_key(path));
        (complete && done(&records)).then_some(records)
    })
    .await
}

/// The pattern matching the paths of `table`'s files.
fn folder(table: &str) -> String {
    format!("{table}/dt=")
}

fn state_of(records: &BTreeMap<String, FileRecord>, table: &str) -> FileState {
    records
        .values()
        .find(|record| record.table == table)
        .unwrap_or_else(|| panic!("no {table} file in {records:?}"))
        .state
}

#[tokio::test]
async fn a_file_staged_and_acked_before_snowpipe_accepted_it_is_notified_after_a_crash() {
    let harness = Harness::new().await;
    let double = double().await;
    double.refuse_inserts(true);
    let env = snowflake_env(&harness, &double, &[]);

    let crashing = harness.spawn_loader_process(&as_refs(&env)).await;
    publish_events(&harness.jetstream, 1, 1).await;
    wait_calls_rows(&harness.stage_dir(), 1).await;
    wait_all_acked(&harness.jetstream).await;
    // Acked, and Snowpipe refused every notification so far: each file waits in the ledger.
    let pending = wait_ledger(
        &harness,
        "every staged file pending after a refused insertFiles",
        |records| {
            records
                .values()
                .all(|record| record.state == FileState::Pending && record.failed_rounds >= 1)
        },
    )
    .await;
    assert_eq!(pending.len(), call_tables().len(), "{:?}", pending.keys());
    assert!(double.notified_paths().is_empty());
    for record in pending.values() {
        assert!(
            record
                .last_error
                .as_deref()
                .unwrap_or_default()
                .contains("503"),
            "{record:?}"
        );
    }

    // SIGKILL: no chance to notify on the way out.
    drop(crashing);
    double.refuse_inserts(false);

    let restarted = harness.spawn_loader_process(&as_refs(&env)).await;
    let loaded = wait_ledger(&harness, "every file loaded after the restart", |records| {
        records
            .values()
            .all(|record| record.state == FileState::Loaded)
    })
    .await;
    let notified = double.notified_paths();
    for (path, record) in &loaded {
        assert_eq!(
            notified.iter().filter(|seen| *seen == path).count(),
            1,
            "{path} notified once after the restart: {notified:?}"
        );
        assert_eq!(record.notifications, 1);
        assert_eq!(record.outcome.as_ref().unwrap().status, "LOADED");
    }
    let loaded_gauge = wait_until(Duration::from_secs(30), "the loaded gauge", || {
        metric_value(
            restarted.admin_addr,
            "gong_load_snowflake_files{state=\"loaded\"}",
        )
    })
    .await;
    assert_eq!(loaded_gauge, loaded.len() as f64);
    restarted.stop().await;
}

#[tokio::test]
async fn each_snowpipe_status_is_recorded_and_partially_loaded_is_a_failure() {
    let harness = Harness::new().await;
    let double = double().await;
    double.set_outcome(&folder("calls"), Outcome::loaded());
    double.set_outcome(&folder("call_participants"), Outcome::load_failed());
    double.set_outcome(
        &folder("call_transcript_sentences"),
        Outcome::partially_loaded(),
    );
    // In progress first: the final event only follows once the loader has read the first
    // with insertReport and asks again from its nextBeginMark.
    double.set_outcome(
        &folder("call_trackers"),
        Outcome::loaded().in_progress_first(),
    );
    double.set_outcome(
        &folder("call_topics"),
        Outcome::load_failed().in_progress_first(),
    );
    let env = snowflake_env(&harness, &double, &[]);
    let loader = harness.spawn_loader_process(&as_refs(&env)).await;
    publish_events(&harness.jetstream, 1, 1).await;
    wait_calls_rows(&harness.stage_dir(), 1).await;

    let records = wait_ledger(&harness, "every file in a final state", |records| {
        records.values().all(|record| record.state.is_final())
    })
    .await;
    assert_eq!(state_of(&records, "calls"), FileState::Loaded);
    assert_eq!(
        state_of(&records, "call_participants"),
        FileState::LoadFailed
    );
    assert_eq!(
        state_of(&records, "call_transcript_sentences"),
        FileState::PartiallyLoaded
    );
    assert!(FileState::PartiallyLoaded.is_failure());
    assert_eq!(state_of(&records, "call_trackers"), FileState::Loaded);
    assert_eq!(state_of(&records, "call_topics"), FileState::LoadFailed);
    let failed = records
        .values()
        .find(|record| record.table == "call_participants")
        .unwrap();
    let outcome = failed.outcome.as_ref().unwrap();
    assert_eq!(outcome.status, "LOAD_FAILED");
    assert_eq!(outcome.rows_inserted, Some(0));
    assert!(
        outcome
            .first_error
            .as_deref()
            .unwrap()
            .contains("is not recognized"),
        "{outcome:?}"
    );
    // Every call carried a valid key-pair JWT: insertFiles and insertReport alike.
    let fingerprint = public_key_fingerprint(TestKey::snowflake().public_pem());
    let requests = double.requests();
    assert!(requests
        .iter()
        .any(|request| request.endpoint == "insertReport"));
    for request in &requests {
        let claims = request.claims.as_ref().expect("jwt verifies");
        assert_eq!(claims.sub, "XY12345.LOADER");
        assert_eq!(claims.iss, format!("XY12345.LOADER.{fingerprint}"));
        assert_eq!(request.token_type, "KEYPAIR_JWT");
        assert_eq!(request.status, 200, "{request:?}");
    }

    // Metrics: files per state, failures counted, nothing left unverified.
    let admin = loader.admin_addr;
    let gauge = |state: &'static str| async move {
        metric_value(
            admin,
            &format!("gong_load_snowflake_files{{state=\"{state}\"}}"),
        )
        .await
    };
    wait_until(Duration::from_secs(30), "gauges published", || async {
        (gauge("loaded").await == Some(4.0)).then_some(())
    })
    .await;
    assert_eq!(gauge("load_failed").await, Some(2.0));
    assert_eq!(gauge("partially_loaded").await, Some(1.0));
    assert_eq!(gauge("pending").await, Some(0.0));
    assert_eq!(
        metric_value(
            admin,
            "gong_load_snowflake_verified_total{state=\"partially_loaded\"}"
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        metric_value(admin, "gong_load_snowflake_oldest_unverified_seconds").await,
        Some(0.0)
    );

    // The operator's view.
    let output = Command::new(BIN)
        .args(["snowflake-status", "--since", "1h"])
        .env_clear()
        .env("NATS_URL", harness.nats.url())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("STATE"), "{text}");
    for (path, record) in &records {
        let line = lines
            .iter()
            .find(|line| line.contains(path.as_str()))
            .unwrap_or_else(|| panic!("{path} missing:\n{text}"));
        assert!(line.starts_with(&format!("{} ", record.state)), "{line}");
    }
    assert_eq!(
        lines.last().copied(),
        Some("snowflake-status: 7 files: loaded 4, load_failed 2, partially_loaded 1"),
        "{text}"
    );
    let output = Command::new(BIN)
        .args(["snowflake-status", "--since", "2999-01-01T00:00:00Z"])
        .env_clear()
        .env("NATS_URL", harness.nats.url())
        .output()
        .unwrap();
    assert!(output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stdout).ends_with("snowflake-status: 0 files\n"),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    loader.stop().await;
}

#[tokio::test]
async fn pipes_reporting_paths_below_their_folder_settle_only_their_own_tables_files() {
    let mut harness = Harness::new().await;
    let double = double().await;
    // Each pipe reads its table's folder and reports `dt=D/gong_F-L.parquet`: the same path
    // for every table's file of the range. The calls file loads, call_participants' fails.
    double.report_folder_relative(true);
    double.set_outcome(&folder("calls"), Outcome::loaded());
    double.set_outcome(&folder("call_participants"), Outcome::load_failed());
    let env = snowflake_env(&harness, &double, &[]);
    harness.start_loader(&as_refs(&env)).await;
    publish_events(&harness.jetstream, 1, 1).await;
    wait_calls_rows(&harness.stage_dir(), 1).await;

    let records = wait_ledger(&harness, "every file in a final state", |records| {
        records.values().all(|record| record.state.is_final())
    })
    .await;
    assert_eq!(records.len(), call_tables().len(), "{:?}", records.keys());
    let calls = records
        .values()
        .find(|record| record.table == "calls")
        .unwrap();
    let participants = records
        .values()
        .find(|record| record.table == "call_participants")
        .unwrap();
    // Two tables' files of the same range, each with its own pipe's outcome.
    assert_eq!(
        (calls.first, calls.last),
        (participants.first, participants.last)
    );
    assert_eq!(calls.state, FileState::Loaded, "{calls:?}");
    assert_eq!(
        participants.state,
        FileState::LoadFailed,
        "{participants:?}"
    );
    for record in records.values() {
        if record.table != "call_participants" {
            assert_eq!(record.state, FileState::Loaded, "{record:?}");
        }
        assert_eq!(record.outcome.as_ref().unwrap().source, "insertReport");
    }
    harness.stop_loader().await;
}

#[tokio::test]
async fn events_missing_from_insert_report_are_found_in_load_history_scan() {
    let mut harness = Harness::new().await;
    let double = double().await;
    // insertReport leaves these out and says completeResult: false; loadHistoryScan has them,
    // two entries per page.
    double.set_outcome(&folder("calls"), Outcome::loaded().missed_by_report());
    double.set_outcome(
        &folder("call_participants"),
        Outcome::partially_loaded().missed_by_report(),
    );
    double.set_outcome(
        &folder("call_topics"),
        Outcome::load_failed().missed_by_report(),
    );
    double.set_history_page_size(2);
    let env = snowflake_env(&harness, &double, &[]);
    harness.start_loader(&as_refs(&env)).await;
    publish_events(&harness.jetstream, 1, 1).await;
    wait_calls_rows(&harness.stage_dir(), 1).await;

    let records = wait_ledger(&harness, "every file in a final state", |records| {
        records.values().all(|record| record.state.is_final())
    })
    .await;
    assert_eq!(state_of(&records, "calls"), FileState::Loaded);
    assert_eq!(
        state_of(&records, "call_participants"),
        FileState::PartiallyLoaded
    );
    assert_eq!(state_of(&records, "call_topics"), FileState::LoadFailed);
    for record in records.values() {
        let source = &record.outcome.as_ref().unwrap().source;
        let missed = ["calls", "call_participants", "call_topics"].contains(&record.table.as_str());
        assert_eq!(
            source,
            if missed {
                "loadHistoryScan"
            } else {
                "insertReport"
            },
            "{record:?}"
        );
    }
    let scans: Vec<_> = double
        .requests()
        .into_iter()
        .filter(|request| request.endpoint == "loadHistoryScan")
        .collect();
    assert!(!scans.is_empty());
    for scan in &scans {
        assert!(scan.query.contains_key("startTimeInclusive"), "{scan:?}");
        assert!(scan.query.contains_key("endTimeExclusive"), "{scan:?}");
        assert_eq!(scan.status, 200, "{scan:?}");
    }
    harness.stop_loader().await;
}

#[tokio::test]
async fn a_file_snowpipe_never_reports_is_notified_again_once_then_reported_unknown() {
    let mut harness = Harness::new().await;
    let double = double().await;
    double.set_outcome(&folder("calls"), Outcome::never());
    let env = snowflake_env(&harness, &double, &[("SNOWFLAKE_VERIFY_TIMEOUT", "1s")]);
    harness.start_loader(&as_refs(&env)).await;
    publish_events(&harness.jetstream, 1, 1).await;
    wait_calls_rows(&harness.stage_dir(), 1).await;

    let records = wait_ledger(&harness, "every file in a final state", |records| {
        records.values().all(|record| record.state.is_final())
    })
    .await;
    let silent = records
        .values()
        .find(|record| record.table == "calls")
        .unwrap();
    assert_eq!(silent.state, FileState::Unknown, "{silent:?}");
    assert_eq!(silent.notifications, 2, "{silent:?}");
    assert!(
        silent
            .last_error
            .as_deref()
            .unwrap()
            .contains("never reported"),
        "{silent:?}"
    );
    let notified = double.notified_paths();
    assert_eq!(
        notified.iter().filter(|path| **path == silent.path).count(),
        2,
        "notified exactly twice: {notified:?}"
    );
    for record in records.values().filter(|record| record.table != "calls") {
        assert_eq!(record.state, FileState::Loaded, "{record:?}");
        assert_eq!(record.notifications, 1, "{record:?}");
    }
    // Before giving up, the load history was asked too.
    assert!(double.count("loadHistoryScan", 200) >= 1);
    harness.stop_loader().await;
}

#[tokio::test]
async fn a_key_snowflake_does_not_know_leaves_files_pending_with_the_reason() {
    let mut harness = Harness::new().await;
    // The user's registered key is another one: every call is refused with 401.
    let double = SnowpipeDouble::start(
        "xy12345.us-east-1",
        "loader",
        TestKey::rule_a().public_pem(),
    )
    .await;
    let env = snowflake_env(&harness, &double, &[]);
    harness.start_loader(&as_refs(&env)).await;
    publish_events(&harness.jetstream, 1, 1).await;
    wait_calls_rows(&harness.stage_dir(), 1).await;
    wait_all_acked(&harness.jetstream).await;
    let records = wait_ledger(&harness, "every file pending with its failure", |records| {
        records
            .values()
            .all(|record| record.state == FileState::Pending && record.failed_rounds >= 1)
    })
    .await;
    for record in records.values() {
        let error = record.last_error.as_deref().unwrap();
        assert!(
            error.contains("401") && error.contains("JWT token is invalid"),
            "{error}"
        );
    }
    assert!(double.notified_paths().is_empty());
    assert!(double.count("insertFiles", 401) >= 1);
    harness.stop_loader().await;
}
