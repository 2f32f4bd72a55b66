//! The happy path: every raw call event becomes one enriched event, cheaply.

use gong_common::names::{self, headers};
use gong_testkit::gong_double::{EXTENSIVE_PATH, TRANSCRIPT_PATH};
use gong_testkit::webhook::call_body;

use crate::support::{by_call_id, header, Harness};

#[tokio::test]
async fn every_call_is_enriched_with_content_and_transcript() {
    let harness = Harness::start(50, 100_000).await;
    let private_call = "9000000000000000005";
    harness.gong.make_private(private_call);
    let mut raw = Vec::new();
    for offset in 0..20u64 {
        let call_id = (9_000_000_000_000_000_000u64 + offset).to_string();
        let (seq, event_id) = harness.publish_raw(&call_id).await;
        raw.push((call_id, seq, event_id));
    }
    // A rule-editor test delivery: stored for inspection, never enriched.
    harness
        .publish_body(
            names::SUBJECT_RAW_TEST,
            &call_body("9100000000000000000", true),
            Some("9100000000000000000"),
        )
        .await;
    let config = harness.config(&harness.env(50));
    let _enricher = harness.enricher(config).await;

    harness.wait_enriched(20).await;
    harness.wait_consumer_drained().await;
    let enriched = harness.enriched().await;
    assert_eq!(enriched.len(), 20);
    let calls = by_call_id(&enriched);
    assert!(!calls.contains_key("9100000000000000000"));
    for (message, event) in &enriched {
        let (call_id, seq, event_id) = raw
            .iter()
            .find(|(call_id, _, _)| Some(call_id.as_str()) == event.call_id())
            .expect("a raw event for every enriched one");
        assert_eq!(
            &event.event_id, event_id,
            "live event id is the raw event id"
        );
        assert_eq!(&event.raw_event_id, event_id);
        assert_eq!(event.raw_stream_seq, *seq);
        assert!(event.replay_run_id.is_none());
        assert_eq!(header(message, "Nats-Msg-Id"), Some(event_id.as_str()));
        assert_eq!(
            header(message, headers::RAW_EVENT_ID),
            Some(event_id.as_str())
        );
        assert_eq!(
            header(message, headers::RAW_SEQ),
            Some(seq.to_string().as_str())
        );
        assert_eq!(header(message, headers::CALL_ID), Some(call_id.as_str()));
        assert!(header(message, headers::REPLAY_RUN).is_none());
        let content = event.call.content.as_ref().expect("content");
        assert!(content.brief.is_some());
        assert!(!content.topics.as_ref().expect("topics").is_empty());
        assert!(content.extra.contains_key("keyPoints"));
        assert!(!event.call.parties.as_ref().expect("parties").is_empty());
        assert!(event.call.context.is_some(), "crm context");
        assert!(
            event.call.media.is_none(),
            "media is not selected by default"
        );
        if call_id == private_call {
            assert!(event.call.is_private());
            assert!(
                event.transcript.is_none(),
                "private calls have no transcript"
            );
        } else {
            let transcript = event.transcript.as_ref().expect("transcript");
            assert!(transcript.len() >= 4);
            let speakers: Vec<&str> = event
                .call
                .parties
                .as_ref()
                .unwrap()
                .iter()
                .filter_map(|party| party.speaker_id.as_deref())
                .collect();
            for monologue in transcript {
                assert!(speakers.contains(&monologue.speaker_id.as_deref().unwrap()));
                assert!(monologue.sentences.iter().all(|s| s.end > s.start));
            }
        }
    }
    let stats = harness.gong.stats();
    assert_eq!(stats.violations(), 0);
    assert_eq!(harness.count(names::STREAM_DLQ).await, 0);
    // The private call is never asked for in a transcript request; the test call never at all:
    // 20 call ids in extensive requests and 19 in transcript requests, each asked for once.
    assert!(stats.requests_to(EXTENSIVE_PATH) >= 1);
    assert!(stats.requests_to(TRANSCRIPT_PATH) >= 1);
    assert_eq!(
        stats.call_ids_per_request.iter().sum::<usize>(),
        20 + 19,
        "{stats:?}"
    );
}

#[tokio::test]
async fn a_burst_of_500_costs_at_most_three_requests_per_hundred_calls() {
    let harness = Harness::start(50, 100_000).await;
    let ids = harness.publish_calls(7_000_000_000, 500).await;
    let config = harness.config(&harness.env(50));
    let _enricher = harness.enricher(config).await;

    harness.wait_enriched(500).await;
    harness.wait_consumer_drained().await;
    let enriched = harness.enriched().await;
    let calls = by_call_id(&enriched);
    assert_eq!(calls.len(), ids.len());
    let stats = harness.gong.stats();
    let requests = stats.call_requests();
    assert!(
        requests as f64 / 500.0 <= 0.03,
        "{requests} gong requests for 500 calls: {stats:?}"
    );
    assert!(
        stats
            .call_ids_per_request
            .iter()
            .filter(|count| **count == 100)
            .count()
            >= 8,
        "batches are full: {:?}",
        stats.call_ids_per_request
    );
    assert_eq!(stats.violations(), 0);
}

#[tokio::test]
async fn metrics_are_exported_under_their_contract_names() {
    let harness = Harness::start(50, 100_000).await;
    harness.publish_calls(6_000_000_000, 5).await;
    harness.gong.set_fault(
        gong_testkit::gong_double::Fault::RateLimited {
            retry_after_secs: 1,
        },
        1,
    );
    let config = harness.config(&harness.env(50));
    let enricher = harness.enricher(config).await;
    harness.wait_enriched(5).await;
    let url = format!("http://{}/metrics", enricher.running.admin_addr);
    let wanted = [
        "gong_enrich_api_requests_total{endpoint=\"extensive\",status=\"200\"}",
        "gong_enrich_api_requests_total{endpoint=\"extensive\",status=\"429\"}",
        "gong_enrich_api_request_duration_seconds_bucket{endpoint=\"extensive\"",
        "gong_enrich_batch_size_bucket",
        "gong_enrich_batch_linger_seconds",
        "gong_enrich_calls_per_request_bucket",
        "gong_enrich_quota_remaining_today",
        "gong_enrich_quota_exhausted",
        "gong_enrich_rate_limited_total",
        "gong_enrich_events_total{outcome=\"enriched\"}",
        "gong_enrich_consumer_pending",
    ];
    let body = gong_testkit::wait_until(crate::support::TIMEOUT, "all metrics exported", || {
        let url = url.clone();
        async move {
            let body = reqwest::get(&url).await.ok()?.text().await.ok()?;
            // Every name is registered at start; these must also have moved (the recorder is
            // process-wide, so at least this instance's work).
            let value = |series: &str| -> f64 {
                body.lines()
                    .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
                    .unwrap_or(0.0)
            };
            let moved =
                value("gong_enrich_api_requests_total{endpoint=\"extensive\",status=\"200\"}")
                    >= 1.0
                    && value(
                        "gong_enrich_api_requests_total{endpoint=\"extensive\",status=\"429\"}",
                    ) >= 1.0
                    && value("gong_enrich_events_total{outcome=\"enriched\"}") >= 5.0
                    && value("gong_enrich_batch_size_count") >= 1.0
                    && value("gong_enrich_calls_per_request_count") >= 1.0;
            (moved && wanted.iter().all(|name| body.contains(name))).then_some(body)
        }
    })
    .await;
    assert!(!body.contains(gong_testkit::gong_double::DEFAULT_ACCESS_KEY_SECRET));
    let ready = reqwest::get(format!("http://{}/readyz", enricher.running.admin_addr))
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 200);
}

#[tokio::test]
async fn the_durable_consumer_follows_the_configuration() {
    let harness = Harness::start(50, 100_000).await;
    let mut env = harness.env(50);
    env.set("ENRICH_MAX_ACK_PENDING", "500");
    let first = harness.enricher(harness.config(&env)).await;
    let info = harness.consumer_info().await;
    assert_eq!(info.config.filter_subject, names::SUBJECT_RAW_CALL);
    assert_eq!(info.config.ack_wait, std::time::Duration::from_secs(5));
    assert_eq!(info.config.max_ack_pending, 500);
    assert_eq!(info.config.max_deliver, -1);
    assert_eq!(
        info.config.ack_policy,
        async_nats::jetstream::consumer::AckPolicy::Explicit
    );
    drop(first);

    // A redeploy with new limits updates the shared consumer in place.
    env.set("ENRICH_ACK_WAIT", "7s");
    env.set("ENRICH_MAX_DELIVER", "50");
    env.set("ENRICH_MAX_ACK_PENDING", "800");
    let _second = harness.enricher(harness.config(&env)).await;
    let info = harness.consumer_info().await;
    assert_eq!(info.config.ack_wait, std::time::Duration::from_secs(7));
    assert_eq!(info.config.max_deliver, 50);
    assert_eq!(info.config.max_ack_pending, 800);
}

#[tokio::test]
async fn batches_larger_than_a_page_follow_the_cursor() {
    let harness = Harness::start(50, 100_000).await;
    let mut env = harness.env(50);
    env.set("ENRICH_BATCH_SIZE", "250");
    let ids = harness.publish_calls(1_900_000_000, 250).await;
    let _enricher = harness.enricher(harness.config(&env)).await;
    harness.wait_enriched(250).await;
    harness.wait_consumer_drained().await;
    assert_eq!(by_call_id(&harness.enriched().await).len(), ids.len());
    let stats = harness.gong.stats();
    // Three pages per endpoint, the cursor in the JSON body (a query cursor would be a 400).
    assert_eq!(stats.requests_to(EXTENSIVE_PATH), 3, "{stats:?}");
    assert_eq!(stats.requests_to(TRANSCRIPT_PATH), 3, "{stats:?}");
    assert!(stats.call_ids_per_request.iter().all(|count| *count == 250));
}

#[tokio::test]
async fn shutdown_finishes_the_batch_in_hand() {
    let harness = Harness::start(50, 100_000).await;
    harness.publish_calls(2_100_000_000, 10).await;
    harness.gong.set_fault(
        gong_testkit::gong_double::Fault::Slow(std::time::Duration::from_millis(500)),
        1,
    );
    let enricher = harness.enricher(harness.config(&harness.env(50))).await;
    gong_testkit::wait_until(crate::support::TIMEOUT, "a request in flight", || async {
        (harness.gong.stats().in_flight >= 1).then_some(())
    })
    .await;
    let mut enricher = enricher;
    enricher.shutdown.cancel();
    (&mut enricher.running.task)
        .await
        .unwrap()
        .expect("clean stop");
    assert_eq!(harness.count(names::STREAM_ENRICHED).await, 10);
    let info = harness.consumer_info().await;
    assert_eq!(info.num_ack_pending, 0);
    assert_eq!(info.num_pending, 0);
}
