//! Users and answered scorecards beside calls: every subject of GONG_ENRICHED becomes rows, an
//! unknown subject yields none, and an older version's `load` consumer (filter
//! `gong.enriched.call`) is replaced by the lease holder without losing or repeating anything.

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use async_nats::jetstream::{self, consumer::pull};
use gong_common::event::{EnrichedScorecard, EnrichedUser};
use gong_common::names::{self, headers};
use gong_load::replay::{replay, ReplayWindow};
use gong_load::schema::{Table, ENRICHED_SEQ_COLUMN};
use gong_load::LoadConfig;
use tokio_util::sync::CancellationToken;

use crate::support::{
    differing_files, event_json, load_consumer_info, read_stage, rows_per_table, stage_bytes,
    wait_all_acked, FileContent, Harness,
};

/// Publishes `payload` on `subject` with `Nats-Msg-Id` = `message_id`; returns the sequence
/// and whether JetStream dropped it as a duplicate.
async fn publish_on(
    jetstream: &jetstream::Context,
    subject: &str,
    message_id: &str,
    payload: Vec<u8>,
) -> (u64, bool) {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, message_id);
    let ack = jetstream
        .publish_with_headers(subject.to_string(), headers, payload.into())
        .await
        .expect("publish")
        .await
        .expect("publish ack");
    (ack.sequence, ack.duplicate)
}

fn user(id: &str, first_name: &str, fetched_at: &str) -> EnrichedUser {
    EnrichedUser::new(
        serde_json::from_value(serde_json::json!({
            "id": id, "firstName": first_name, "emailAddress": format!("{first_name}@example.com"),
            "active": true, "managerId": "900", "created": "2023-01-01T00:00:00Z",
            "spokenLanguages": [{"language": "en-US", "primary": true}]
        }))
        .unwrap(),
        fetched_at.parse().unwrap(),
    )
}

fn scorecard(id: u64, answers: usize) -> EnrichedScorecard {
    let answers: Vec<serde_json::Value> = (0..answers)
        .map(|index| serde_json::json!({"questionId": 100 + index, "score": 3 + index, "isOverall": index == 0}))
        .collect();
    EnrichedScorecard::new(
        serde_json::from_value(serde_json::json!({
            "answeredScorecardId": id, "scorecardId": 6843152929075440037u64,
            "callId": 7000000000000000001u64, "reviewedUserId": 234599484848423u64,
            "reviewTime": "2024-03-04T18:00:00-08:00", "answers": answers
        }))
        .unwrap(),
        "2024-03-05T01:00:00Z".parse().unwrap(),
    )
}

async fn publish_user(jetstream: &jetstream::Context, event: &EnrichedUser) -> (u64, bool) {
    publish_on(
        jetstream,
        names::SUBJECT_ENRICHED_USER,
        &event.event_id,
        event.to_json(),
    )
    .await
}

async fn publish_scorecard(jetstream: &jetstream::Context, event: &EnrichedScorecard) -> u64 {
    publish_on(
        jetstream,
        names::SUBJECT_ENRICHED_SCORECARD,
        &event.event_id,
        event.to_json(),
    )
    .await
    .0
}

async fn publish_call(jetstream: &jetstream::Context, index: u64) -> u64 {
    publish_on(
        jetstream,
        names::SUBJECT_ENRICHED_CALL,
        &format!("ev-{index}"),
        event_json(index),
    )
    .await
    .0
}

/// The `enriched_stream_seq` values of `table`'s rows over a stage listing.
fn seqs(files: &BTreeMap<String, FileContent>, table: Table) -> Vec<i64> {
    let mut out = Vec::new();
    for (path, content) in files {
        if !path.starts_with(&format!("{}/", table.name())) {
            continue;
        }
        for batch in &content.batches {
            let column = batch
                .column_by_name(ENRICHED_SEQ_COLUMN)
                .unwrap()
                .as_primitive::<Int64Type>();
            assert_eq!(column.null_count(), 0);
            out.extend(column.values().iter().copied());
        }
    }
    out.sort_unstable();
    out
}

#[tokio::test]
async fn every_subject_becomes_rows_and_a_replay_rewrites_the_same_bytes() {
    let mut harness = Harness::new().await;
    harness.start_loader(&[("LOAD_FLUSH_MAX_ROWS", "3")]).await;
    let js = harness.jetstream.clone();
    let ann = user("101", "ann", "2024-03-04T06:00:00Z");
    let mut expected_user_seqs = Vec::new();
    let mut expected_card_seqs = Vec::new();
    publish_call(&js, 1).await;
    let (seq, duplicate) = publish_user(&js, &ann).await;
    assert!(!duplicate);
    expected_user_seqs.push(seq as i64);
    expected_card_seqs.push(publish_scorecard(&js, &scorecard(5001, 2)).await as i64);
    publish_call(&js, 2).await;
    // A subject this version has no tables for: acknowledged, no rows, not dead-lettered.
    publish_on(&js, "gong.enriched.deal", "deal-1", b"not ours".to_vec()).await;
    let (seq, _) = publish_user(&js, &user("102", "bob", "2024-03-04T06:00:00Z")).await;
    expected_user_seqs.push(seq as i64);
    // Ann fetched again an hour later, unchanged: same event id, dropped inside the window.
    let (_, duplicate) = publish_user(&js, &user("101", "ann", "2024-03-04T07:00:00Z")).await;
    assert!(
        duplicate,
        "an unchanged refetch is deduplicated by its content id"
    );
    // A user without an id is poison.
    let nameless = EnrichedUser::new(
        serde_json::from_value(serde_json::json!({"firstName": "nobody"})).unwrap(),
        chrono::Utc::now(),
    );
    publish_user(&js, &nameless).await;
    publish_call(&js, 3).await;
    expected_card_seqs.push(publish_scorecard(&js, &scorecard(5002, 1)).await as i64);
    // The last message is not a call: it must be delivered too.
    let (seq, _) = publish_user(&js, &user("103", "cy", "2024-03-04T06:00:00Z")).await;
    expected_user_seqs.push(seq as i64);

    wait_all_acked(&js).await;
    harness.stop_loader().await;
    let files = read_stage(&harness.stage_dir());
    let rows = rows_per_table(&files);
    let count = |table: Table| rows.get(table.name()).copied().unwrap_or(0);
    assert_eq!(count(Table::Calls), 3, "{rows:?}");
    assert_eq!(count(Table::Users), 3, "{rows:?}");
    assert_eq!(count(Table::AnsweredScorecards), 2, "{rows:?}");
    assert_eq!(count(Table::AnsweredScorecardAnswers), 3, "{rows:?}");
    assert_eq!(seqs(&files, Table::Users), expected_user_seqs);
    assert_eq!(seqs(&files, Table::AnsweredScorecards), expected_card_seqs);
    // Users and scorecards are partitioned by their fetch day.
    assert!(files
        .keys()
        .any(|path| path.starts_with("answered_scorecards/dt=2024-03-05/")));

    let mut dlq = js.get_stream(names::STREAM_DLQ).await.unwrap();
    assert_eq!(dlq.info().await.unwrap().state.messages, 1);
    let dead = dlq.get_raw_message(1).await.unwrap();
    assert_eq!(
        dead.headers.get(headers::DLQ_REASON).unwrap().as_str(),
        "missing_user_id"
    );

    // A range's content is every message of its sequences: read back from the stream alone,
    // the files are the same bytes.
    let live = stage_bytes(&harness.stage_dir());
    std::fs::remove_dir_all(harness.stage_dir()).unwrap();
    let config = LoadConfig::from_env(&harness.env(&[])).unwrap();
    replay(
        config,
        ReplayWindow {
            from_seq: Some(1),
            ..Default::default()
        },
        CancellationToken::new(),
        |_| {},
    )
    .await
    .expect("replay");
    let differing = differing_files(&live, &stage_bytes(&harness.stage_dir()));
    assert!(differing.is_empty(), "replay changed {differing:?}");
}

#[tokio::test]
async fn an_old_filter_consumer_is_replaced_and_everything_is_staged_once() {
    let mut harness = Harness::new().await;
    let js = harness.jetstream.clone();
    // What an older gong-load left: its consumer takes calls only.
    let stream = js.get_stream(names::STREAM_ENRICHED).await.unwrap();
    stream
        .create_consumer(pull::Config {
            durable_name: Some(names::CONSUMER_LOAD.to_string()),
            filter_subject: names::SUBJECT_ENRICHED_CALL.to_string(),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            max_deliver: -1,
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .unwrap();
    for index in 1..=4 {
        publish_call(&js, index).await;
    }
    assert_eq!(
        publish_user(&js, &user("101", "ann", "2024-03-04T06:00:00Z"))
            .await
            .0,
        5
    );
    assert_eq!(publish_call(&js, 5).await, 6);
    assert_eq!(publish_scorecard(&js, &scorecard(5001, 2)).await, 7);
    publish_call(&js, 6).await;
    publish_call(&js, 7).await;
    assert_eq!(
        publish_user(&js, &user("102", "bob", "2024-03-04T06:00:00Z"))
            .await
            .0,
        10
    );

    // The older loader staged 1..=4 and claimed 5..=6, then stopped before writing it.
    let config = LoadConfig::from_env(&harness.env(&[])).unwrap();
    let ctx = gong_load::connect(config).await.unwrap();
    let gong_load::ranges::Claim::Won { revision } = ctx.ranges.claim(1, 4).await.unwrap() else {
        panic!("claim 1..=4");
    };
    ctx.rewrite_range(
        1,
        4,
        &CancellationToken::new(),
        gong_load::range_writer::Existing::Keep,
    )
    .await
    .unwrap();
    assert!(ctx.ranges.mark_done(1, 4, revision).await);
    assert!(matches!(
        ctx.ranges.claim(5, 6).await.unwrap(),
        gong_load::ranges::Claim::Won { .. }
    ));
    let staged_before = stage_bytes(&harness.stage_dir());
    assert!(staged_before
        .keys()
        .all(|path| path.contains("-00000000000000000004.")));

    harness
        .start_loader(&[("LOAD_FLUSH_MAX_ROWS", "100")])
        .await;
    wait_all_acked(&js).await;
    harness.stop_loader().await;

    let files = read_stage(&harness.stage_dir());
    assert_eq!(seqs(&files, Table::Calls), vec![1, 2, 3, 4, 6, 8, 9]);
    assert_eq!(seqs(&files, Table::Users), vec![5, 10]);
    assert_eq!(seqs(&files, Table::AnsweredScorecards), vec![7]);
    let calls: Vec<&String> = files
        .keys()
        .filter(|path| path.starts_with("calls/"))
        .collect();
    assert_eq!(calls.len(), 3, "ranges 1..=4, 5..=6, 7..=10: {calls:?}");
    // The range staged before the upgrade was not rewritten.
    for (path, bytes) in &staged_before {
        assert_eq!(
            stage_bytes(&harness.stage_dir()).get(path),
            Some(bytes),
            "{path}"
        );
    }
    let pending = ctx.ranges.fetch(5).await.unwrap().unwrap().record;
    assert_eq!(pending.state, gong_load::ranges::RangeState::Done);
    assert_eq!(pending.last, 6);

    let info = load_consumer_info(&js).await.unwrap();
    assert_eq!(info.config.filter_subject, names::SUBJECTS_ENRICHED);
    // Restarted at the oldest pending range, below the head (7): its messages came back so
    // the claimed range was written. (Start-up left the old consumer alone: an in-place
    // update would have kept `All`.)
    assert_eq!(
        info.config.deliver_policy,
        jetstream::consumer::DeliverPolicy::ByStartSequence { start_sequence: 5 }
    );
}
