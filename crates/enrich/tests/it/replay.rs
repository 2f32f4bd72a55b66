//! `gong-enrich replay`: re-enrichment beside the live service, under the same quota.

use std::collections::HashSet;

use gong_common::names::{self, headers};
use gong_enrich::{ProgressMode, ReplayOptions, ReplayStart};
use gong_testkit::gong_double::Fault;
use gong_testkit::webhook::call_body;

use crate::support::{header, Harness};

fn options(start: ReplayStart) -> ReplayOptions {
    ReplayOptions {
        start,
        until: None,
        call_id: None,
        dry_run: false,
        progress: ProgressMode::Quiet,
        run_id: None,
    }
}

#[tokio::test]
async fn replay_beside_a_live_enricher_causes_no_violations() {
    let harness = Harness::start(3, 100_000).await;
    let mut env = harness.env(3);
    env.set("ENRICH_BATCH_SIZE", "5");
    env.set("ENRICH_BATCH_LINGER", "50ms");
    let first = harness.publish_calls(1_200_000_000, 20).await;
    let _live = harness.enricher(harness.config(&env)).await;
    harness.wait_enriched(20).await;

    // The replay starts while new live events keep arriving.
    let replay = tokio::spawn(gong_enrich::replay(
        harness.config(&env),
        options(ReplayStart::Sequence(1)),
        tokio_util::sync::CancellationToken::new(),
    ));
    let second = harness.publish_calls(1_300_000_000, 15).await;
    let summary = replay.await.unwrap().expect("replay completes");
    harness.wait_enriched(20 + 15 + summary.published).await;
    harness.wait_consumer_drained().await;

    assert!(summary.in_range >= 20, "{summary:?}");
    assert_eq!(summary.published, summary.in_range);
    assert_eq!(summary.failed + summary.not_found + summary.invalid, 0);
    let enriched = harness.enriched().await;
    let replayed: Vec<_> = enriched
        .iter()
        .filter(|(message, _)| header(message, headers::REPLAY_RUN).is_some())
        .collect();
    assert_eq!(replayed.len() as u64, summary.published);
    let live: Vec<_> = enriched
        .iter()
        .filter(|(message, _)| header(message, headers::REPLAY_RUN).is_none())
        .collect();
    assert_eq!(live.len(), first.len() + second.len());
    let live_ids: HashSet<&str> = live
        .iter()
        .map(|(_, event)| event.event_id.as_str())
        .collect();
    for (message, event) in &replayed {
        assert_eq!(
            header(message, headers::REPLAY_RUN),
            Some(summary.run_id.as_str())
        );
        assert_eq!(
            event.replay_run_id.as_deref(),
            Some(summary.run_id.as_str())
        );
        assert_ne!(
            event.event_id, event.raw_event_id,
            "replays get new event ids"
        );
        assert!(!live_ids.contains(event.event_id.as_str()));
        assert_eq!(
            header(message, "Nats-Msg-Id"),
            Some(event.event_id.as_str())
        );
        assert!(event.transcript.is_some());
    }
    let replayed_calls: HashSet<&str> = replayed
        .iter()
        .filter_map(|(_, event)| event.call_id())
        .collect();
    for call_id in &first {
        assert!(
            replayed_calls.contains(call_id.as_str()),
            "{call_id} replayed"
        );
    }
    let stats = harness.gong.stats();
    assert_eq!(stats.violations(), 0, "{stats:?}");
    assert_eq!(stats.rate_limited_sent, 0);
}

#[tokio::test]
async fn dry_run_counts_the_range_and_filters_apply() {
    let harness = Harness::start(50, 100_000).await;
    harness.publish_calls(1_400_000_000, 6).await;
    harness
        .publish_body(
            names::SUBJECT_RAW_TEST,
            &call_body("1400000099", true),
            Some("1400000099"),
        )
        .await;
    let (seventh, _) = harness.publish_raw("1400000006").await;
    let before_last = chrono::Utc::now();
    harness.publish_calls(1_500_000_000, 4).await;
    // A second, different webhook body for an already-seen call.
    let mut other =
        serde_json::from_slice::<serde_json::Value>(&call_body("1400000002", false)).unwrap();
    other["callData"]["metaData"]["title"] = "Renamed".into();
    harness
        .publish_body(
            names::SUBJECT_RAW_CALL,
            other.to_string().as_bytes(),
            Some("1400000002"),
        )
        .await;
    let env = harness.env(50);
    let config = || harness.config(&env);
    let dry = |start| ReplayOptions {
        dry_run: true,
        ..options(start)
    };
    let token = tokio_util::sync::CancellationToken::new;

    let all = gong_enrich::replay(config(), dry(ReplayStart::Sequence(1)), token())
        .await
        .unwrap();
    assert_eq!(all.in_range, 12, "the test delivery is not in range");
    let from = gong_enrich::replay(config(), dry(ReplayStart::Sequence(seventh)), token())
        .await
        .unwrap();
    assert_eq!(from.in_range, 6);
    let one_call = gong_enrich::replay(
        config(),
        ReplayOptions {
            call_id: Some("1400000002".to_string()),
            ..dry(ReplayStart::Sequence(1))
        },
        token(),
    )
    .await
    .unwrap();
    assert_eq!(one_call.in_range, 2);
    let since = gong_enrich::replay(config(), dry(ReplayStart::Time(before_last)), token())
        .await
        .unwrap();
    assert_eq!(since.in_range, 5);
    let until = gong_enrich::replay(
        config(),
        ReplayOptions {
            until: Some(before_last),
            ..dry(ReplayStart::Sequence(1))
        },
        token(),
    )
    .await
    .unwrap();
    assert_eq!(until.in_range, 7);
    let beyond = gong_enrich::replay(config(), dry(ReplayStart::Sequence(1_000)), token())
        .await
        .unwrap();
    assert_eq!(beyond.in_range, 0);
    // Nothing was asked of Gong, nothing published.
    assert_eq!(harness.gong.stats().call_requests(), 0);
    assert_eq!(harness.count(names::STREAM_ENRICHED).await, 0);
}

#[tokio::test]
async fn replay_of_one_call_publishes_only_it() {
    let harness = Harness::start(50, 100_000).await;
    harness.publish_calls(1_600_000_000, 8).await;
    let env = harness.env(50);
    let summary = gong_enrich::replay(
        harness.config(&env),
        ReplayOptions {
            call_id: Some("1600000003".to_string()),
            ..options(ReplayStart::Sequence(1))
        },
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(summary.in_range, 1);
    assert_eq!(summary.published, 1);
    let enriched = harness.enriched().await;
    assert_eq!(enriched.len(), 1);
    assert_eq!(enriched[0].1.call_id(), Some("1600000003"));
    assert_eq!(harness.gong.stats().call_requests(), 2);
}

#[tokio::test]
async fn rounds_lost_to_a_gong_outage_do_not_count_as_malformed_answers() {
    let harness = Harness::start(50, 100_000).await;
    // With no retry inside a round, four rounds end in a Gong outage, the fifth gets a truncated
    // answer, the sixth a good one: four retry rounds, more than ENRICH_MALFORMED_RETRIES (3),
    // precede the first malformed answer, which is still only the first.
    harness.gong.set_fault(Fault::ServerError, 4);
    harness.gong.set_fault(Fault::TruncatedBody, 1);
    let mut env = harness.env(50);
    env.set("ENRICH_REQUEST_RETRIES", "0");
    harness.publish_calls(1_700_000_000, 1).await;
    let summary = gong_enrich::replay(
        harness.config(&env),
        options(ReplayStart::Sequence(1)),
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .expect("replay completes");
    assert_eq!(harness.gong.pending_faults(), 0);
    assert_eq!(summary.failed, 0, "{summary:?}");
    assert_eq!(summary.published, 1, "{summary:?}");
    let enriched = harness.enriched().await;
    assert_eq!(enriched.len(), 1);
    assert_eq!(enriched[0].1.call_id(), Some("1700000000"));
    assert_eq!(
        header(&enriched[0].0, headers::REPLAY_RUN),
        Some(summary.run_id.as_str())
    );
}
