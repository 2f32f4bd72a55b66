//! Users and answered scorecards end to end: gong-enrich fetches them from the Gong double at
//! start (through the shared quota), publishes them to GONG_ENRICHED beside the calls, and
//! gong-load stages them as the `users`, `answered_scorecards` and `answered_scorecard_answers`
//! tables, their ids as text that joins `calls.call_id` and `users.user_id` (Gong sends the
//! scorecards' ids as JSON numbers).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, StringArray};
use arrow::datatypes::DataType;
use chrono::Utc;
use gong_testkit::gong_double::{answered_scorecard_json, user_json, GongDouble};
use gong_testkit::NatsServer;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::support::first_call_id;
use crate::support::pipeline::{poll, Options, Pipeline, StageTarget};
use crate::support::sender::{call_ids, Sender};
use crate::support::stage::local_files;

/// More users than one page of the double (100), so the job follows the cursor.
const USERS: u64 = 130;
const FIRST_USER: u64 = 234_500_000_000_000_000;
const CALLS: usize = 20;
/// Answered scorecards, one per call, each with 4 answers.
const SCORECARDS: u64 = CALLS as u64;
const ANSWERS_PER_SCORECARD: usize = 4;
/// Reviewed 10 days ago: outside `ENRICH_SCORECARDS_LOOKBACK` (7 days), never fetched.
const OLD_SCORECARD: u64 = 7_790_000_000_000_000;

fn calls() -> Vec<String> {
    call_ids(first_call_id() + 900_000, CALLS)
}

fn seed(gong: &GongDouble) {
    gong.add_users((0..USERS).map(|n| {
        let manager = (n > 0).then(|| FIRST_USER.to_string());
        user_json(&(FIRST_USER + n).to_string(), manager.as_deref())
    }));
    let now = Utc::now();
    let mut cards: Vec<_> = calls()
        .iter()
        .enumerate()
        .map(|(n, call)| {
            answered_scorecard_json(
                7_780_000_000_000_000 + n as u64,
                call.parse().expect("numeric call id"),
                FIRST_USER + 1 + n as u64,
                FIRST_USER,
                now - chrono::Duration::hours(2 + 6 * n as i64),
            )
        })
        .collect();
    cards.push(answered_scorecard_json(
        OLD_SCORECARD,
        calls()[0].parse().expect("numeric call id"),
        FIRST_USER + 1,
        FIRST_USER,
        now - chrono::Duration::days(10),
    ));
    assert_eq!(gong.add_answered_scorecards(cards), CALLS + 1);
}

/// Every value of `column` (as text; null as "") in `table`'s files on a local stage.
fn column(stage: &Path, table: &str, column: &str) -> Vec<String> {
    let mut values = Vec::new();
    for (path, _) in local_files(&stage.join(table)) {
        if path.extension().and_then(|ext| ext.to_str()) != Some("parquet") {
            continue;
        }
        let bytes = bytes::Bytes::from(std::fs::read(&path).expect("read staged file"));
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .and_then(|builder| builder.build())
            .expect("a readable parquet file");
        for batch in reader {
            let batch = batch.expect("a readable batch");
            let array = batch
                .column_by_name(column)
                .unwrap_or_else(|| panic!("{table} has no column {column}"));
            let text = arrow::compute::cast(array, &DataType::Utf8).expect("cast to text");
            let text = text.as_any().downcast_ref::<StringArray>().unwrap();
            for row in 0..text.len() {
                values.push(match text.is_null(row) {
                    true => String::new(),
                    false => text.value(row).to_string(),
                });
            }
        }
    }
    values
}

fn distinct(values: &[String]) -> BTreeSet<String> {
    values.iter().cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_answered_scorecards_reach_the_stage_and_join_the_calls() {
    let nats = NatsServer::start_new();
    let root = tempfile::tempdir().expect("tempdir");
    let stage = root.path().join("stage");
    let mut options = Options::new(nats.url(), StageTarget::Local(stage.clone()));
    options.seed_gong = Some(seed);
    let pipeline = Pipeline::start(options).await;

    let sender = Arc::new(Sender::new(pipeline.ingest.webhook_url()));
    for call in calls() {
        let delivery = sender.deliver(&call).await;
        assert!(delivery.accepted(), "webhook of {call}: {delivery:?}");
    }

    let want_calls: BTreeSet<String> = calls().into_iter().collect();
    let staged = poll(
        Duration::from_secs(90),
        "calls, users and answered scorecards staged",
        || {
            let stage = stage.clone();
            let want_calls = want_calls.clone();
            async move {
                let calls = distinct(&column(&stage, "calls", "call_id"));
                let users = column(&stage, "users", "user_id");
                let cards = column(&stage, "answered_scorecards", "answered_scorecard_id");
                let answers = column(
                    &stage,
                    "answered_scorecard_answers",
                    "answered_scorecard_id",
                );
                (calls == want_calls
                    && users.len() >= USERS as usize
                    && cards.len() >= SCORECARDS as usize
                    && answers.len() >= SCORECARDS as usize * ANSWERS_PER_SCORECARD)
                    .then_some((users, cards, answers))
            }
        },
    )
    .await;
    let (users, cards, answers) = staged.unwrap_or_else(|waited| {
        panic!(
            "{waited}; staged: users {}, answered_scorecards {}, answers {}; {}",
            column(&stage, "users", "user_id").len(),
            column(&stage, "answered_scorecards", "answered_scorecard_id").len(),
            column(
                &stage,
                "answered_scorecard_answers",
                "answered_scorecard_id"
            )
            .len(),
            pipeline.explain()
        )
    });

    // Every user once (one fetch at start, both pages), ids as Gong's text.
    let want_users: BTreeSet<String> = (0..USERS).map(|n| (FIRST_USER + n).to_string()).collect();
    assert_eq!(users.len(), USERS as usize, "each user staged once");
    assert_eq!(distinct(&users), want_users);
    let managers = distinct(&column(&stage, "users", "manager_id"));
    assert_eq!(
        managers,
        BTreeSet::from([String::new(), FIRST_USER.to_string()])
    );

    // The scorecards in the lookback, once each, never the one reviewed 10 days ago; their
    // numeric ids staged as the same text as the calls' and users' ids, so they join.
    assert_eq!(
        cards.len(),
        SCORECARDS as usize,
        "each scorecard staged once"
    );
    assert!(!cards.contains(&OLD_SCORECARD.to_string()));
    let card_calls = column(&stage, "answered_scorecards", "call_id");
    assert_eq!(distinct(&card_calls), want_calls, "scorecards join calls");
    for reviewed in column(&stage, "answered_scorecards", "reviewed_user_id")
        .iter()
        .chain(column(&stage, "answered_scorecards", "reviewer_user_id").iter())
    {
        assert!(want_users.contains(reviewed), "{reviewed} joins users");
    }
    let mut per_card: BTreeMap<&String, usize> = BTreeMap::new();
    for card in &answers {
        *per_card.entry(card).or_default() += 1;
    }
    assert_eq!(
        distinct(&cards),
        per_card.keys().map(|c| (*c).clone()).collect()
    );
    assert!(per_card.values().all(|n| *n == ANSWERS_PER_SCORECARD));

    // Fetched through the shared quota: nothing over the double's limits.
    let stats = pipeline.gong.stats();
    assert_eq!(stats.violations(), 0, "{stats:?}");
}
