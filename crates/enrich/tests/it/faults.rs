//! Gong failing, calls vanishing, instances dying: nothing lost, nothing duplicated.

use std::time::Duration;

use gong_common::names::{self, headers};
use gong_testkit::gong_double::Fault;
use gong_testkit::wait_until;

use crate::support::{by_call_id, header, Harness, TIMEOUT};

#[tokio::test]
async fn a_429_storm_and_server_errors_end_with_everything_enriched() {
    let harness = Harness::start(50, 100_000).await;
    harness.gong.set_fault(
        Fault::RateLimited {
            retry_after_secs: 1,
        },
        3,
    );
    harness.gong.set_fault(Fault::ServerError, 4);
    harness.gong.set_fault(
        Fault::RateLimited {
            retry_after_secs: 1,
        },
        2,
    );
    harness.gong.set_fault(Fault::ServerError, 2);
    let mut env = harness.env(50);
    env.set("ENRICH_BATCH_SIZE", "10");
    let ids = harness.publish_calls(5_000_000_000, 40).await;
    let _enricher = harness.enricher(harness.config(&env)).await;

    harness.wait_enriched(40).await;
    harness.wait_consumer_drained().await;
    assert_eq!(by_call_id(&harness.enriched().await).len(), ids.len());
    assert_eq!(harness.gong.pending_faults(), 0);
    let stats = harness.gong.stats();
    assert_eq!(stats.violations(), 0, "{stats:?}");
    assert!(stats.rate_limited_sent >= 5);
    assert_eq!(harness.count(names::STREAM_DLQ).await, 0);
}

#[tokio::test]
async fn truncated_answers_are_retried_and_persistent_ones_dead_lettered() {
    let harness = Harness::start(50, 100_000).await;
    harness.gong.set_fault(Fault::TruncatedBody, 2);
    harness.publish_calls(4_000_000_000, 10).await;
    let _enricher = harness.enricher(harness.config(&harness.env(50))).await;
    harness.wait_enriched(10).await;
    harness.wait_consumer_drained().await;
    assert_eq!(harness.count(names::STREAM_DLQ).await, 0);

    // An answer that never becomes readable: 1 + ENRICH_MALFORMED_RETRIES (3) deliveries.
    harness.gong.set_fault(Fault::TruncatedBody, 1_000);
    let (seq, event_id) = harness.publish_raw("4000000000100").await;
    wait_until(TIMEOUT, "malformed event dead-lettered", || async {
        (harness.count(names::STREAM_DLQ).await == 1).then_some(())
    })
    .await;
    let dead = harness.messages(names::STREAM_DLQ).await;
    assert_eq!(
        header(&dead[0], headers::DLQ_REASON),
        Some("malformed_response")
    );
    assert_eq!(
        header(&dead[0], headers::DLQ_ORIGINAL_SEQ),
        Some(seq.to_string().as_str())
    );
    assert_eq!(header(&dead[0], headers::EVENT_ID), Some(event_id.as_str()));
    assert_eq!(harness.count(names::STREAM_ENRICHED).await, 10);
    assert_eq!(harness.gong.stats().violations(), 0);
}

#[tokio::test]
async fn deliveries_lost_to_an_outage_do_not_count_as_malformed_answers() {
    let harness = Harness::start(50, 100_000).await;
    // With no retry inside a delivery, six deliveries end in a Gong outage, the seventh gets a
    // truncated answer, the eighth a good one: delivered reaches 7 at the first malformed
    // answer, more than ENRICH_MALFORMED_RETRIES (3), but it is the first malformed answer.
    harness.gong.set_fault(Fault::ServerError, 6);
    harness.gong.set_fault(Fault::TruncatedBody, 1);
    let mut env = harness.env(50);
    env.set("ENRICH_REQUEST_RETRIES", "0");
    let ids = harness.publish_calls(4_100_000_000, 1).await;
    let _enricher = harness.enricher(harness.config(&env)).await;
    harness.wait_enriched(1).await;
    harness.wait_consumer_drained().await;
    assert_eq!(harness.gong.pending_faults(), 0);
    assert_eq!(harness.count(names::STREAM_DLQ).await, 0);
    assert_eq!(by_call_id(&harness.enriched().await).len(), ids.len());
}

#[tokio::test]
async fn deleted_calls_and_unparseable_bodies_are_dead_lettered_with_their_reason() {
    let harness = Harness::start(50, 100_000).await;
    harness.gong.delete_call("3000000000002");
    harness.publish_calls(3_100_000_000_000, 5).await;
    let (deleted_seq, _) = harness.publish_raw("3000000000002").await;
    let garbage: &[u8] = b"{\"isTest\": false, \"callData\": ";
    let (garbage_seq, _) = harness
        .publish_body(names::SUBJECT_RAW_CALL, garbage, None)
        .await;
    let _enricher = harness.enricher(harness.config(&harness.env(50))).await;

    harness.wait_enriched(5).await;
    harness.wait_consumer_drained().await;
    let dead = harness.messages(names::STREAM_DLQ).await;
    assert_eq!(dead.len(), 2);
    let deleted = dead
        .iter()
        .find(|m| header(m, headers::DLQ_ORIGINAL_SEQ) == Some(deleted_seq.to_string().as_str()))
        .expect("deleted call dead-lettered");
    assert_eq!(header(deleted, headers::DLQ_REASON), Some("call_not_found"));
    assert_eq!(header(deleted, headers::DLQ_STAGE), Some("enrich"));
    assert_eq!(deleted.subject.as_str(), "gong.dlq.enrich");
    assert_eq!(
        deleted.payload.as_ref(),
        gong_testkit::webhook::call_body("3000000000002", false).as_slice(),
        "payload untouched"
    );
    let unparseable = dead
        .iter()
        .find(|m| header(m, headers::DLQ_ORIGINAL_SEQ) == Some(garbage_seq.to_string().as_str()))
        .expect("garbage dead-lettered");
    assert_eq!(
        header(unparseable, headers::DLQ_REASON),
        Some("unparseable_webhook")
    );
    assert_eq!(unparseable.payload.as_ref(), garbage);
    assert_eq!(harness.count(names::STREAM_ENRICHED).await, 5);
}

#[tokio::test]
async fn killing_an_instance_between_publishing_and_acking_loses_and_duplicates_nothing() {
    let harness = Harness::start(50, 100_000).await;
    let mut env = harness.env(50);
    env.set("ENRICH_ACK_WAIT", "2s");
    env.set("ENRICH_BATCH_SIZE", "1000");
    let ids = harness.publish_calls(2_000_000_000, 1_200).await;
    let doomed = harness.enricher(harness.config(&env)).await;
    // The first batch (1,000 calls) publishes its enriched events, then acks its raw events one
    // by one: the kill lands as soon as the first enriched event is stored.
    wait_until(TIMEOUT, "the first enriched events stored", || async {
        (harness.count(names::STREAM_ENRICHED).await > 0).then_some(())
    })
    .await;
    doomed.running.task.abort(); // as SIGKILL for the messages: no more nak or ack
                                 // Raw events acked, then enriched events stored (both only grow): some of the stored ones
                                 // have their raw event unacked, so it will be delivered and enriched again.
    let info = harness.consumer_info().await;
    let acked = 1_200 - info.num_pending - info.num_ack_pending as u64;
    let at_kill = harness.count(names::STREAM_ENRICHED).await;
    assert!(
        at_kill < 1_200,
        "the kill landed before every call was enriched ({at_kill})"
    );
    assert!(
        acked < at_kill,
        "the kill landed after {at_kill} enriched events were stored but only {acked} raw \
         events acked: {info:?}"
    );
    drop(doomed);

    let _survivor = harness.enricher(harness.config(&env)).await;
    harness.wait_enriched(1_200).await;
    harness.wait_consumer_drained().await;
    let enriched = harness.enriched().await;
    assert_eq!(enriched.len(), 1_200, "no duplicates on GONG_ENRICHED");
    assert_eq!(by_call_id(&enriched).len(), ids.len());
    assert_eq!(harness.count(names::STREAM_DLQ).await, 0);
}

#[tokio::test]
async fn an_enriched_event_too_large_to_publish_is_dead_lettered_once() {
    let harness = Harness::start(50, 100_000).await;
    // A transcript of 2 MiB: the enriched event is over the server's max_payload (1 MiB).
    let huge = "4300000000001";
    harness.gong.pad_transcript(huge, 2 * 1024 * 1024);
    let (seq, event_id) = harness.publish_raw(huge).await;
    let enricher = harness.enricher(harness.config(&harness.env(50))).await;

    wait_until(TIMEOUT, "the oversized event dead-lettered", || async {
        (harness.count(names::STREAM_DLQ).await >= 1).then_some(())
    })
    .await;
    harness.wait_consumer_drained().await;
    let dead = harness.messages(names::STREAM_DLQ).await;
    assert_eq!(dead.len(), 1, "dead-lettered once");
    assert_eq!(
        header(&dead[0], headers::DLQ_REASON),
        Some("enriched_too_large")
    );
    assert_eq!(
        header(&dead[0], headers::DLQ_ORIGINAL_SEQ),
        Some(seq.to_string().as_str())
    );
    assert_eq!(header(&dead[0], headers::EVENT_ID), Some(event_id.as_str()));
    assert_eq!(
        dead[0].payload.as_ref(),
        gong_testkit::webhook::call_body(huge, false).as_slice(),
        "the raw event, untouched"
    );
    // Settled for good (nothing pending, nothing held): one extensive and one transcript
    // request, never asked again.
    let stats = harness.gong.stats();
    assert_eq!(stats.call_requests(), 2, "{stats:?}");
    assert_eq!(harness.count(names::STREAM_ENRICHED).await, 0);

    // The stage goes on with the next calls.
    harness.publish_calls(4_300_000_000_100, 3).await;
    harness.wait_enriched(3).await;
    harness.wait_consumer_drained().await;
    assert_eq!(harness.count(names::STREAM_DLQ).await, 1);
    assert!(enricher.running.readiness.fault().is_none());
}

#[tokio::test]
async fn a_refused_access_key_makes_the_instance_unready_without_dead_letters() {
    let harness = Harness::start(50, 100_000).await;
    harness.gong.set_fault(Fault::Unauthorized, 2);
    let mut env = harness.env(50);
    env.set("ENRICH_AUTH_RETRY_DELAY", "1s");
    harness.publish_calls(1_000_000_000, 5).await;
    let enricher = harness.enricher(harness.config(&env)).await;

    wait_until(TIMEOUT, "readiness fault after 401", || async {
        enricher.running.readiness.fault()
    })
    .await;
    assert!(enricher.running.readiness.check().await.is_err());
    let ready = reqwest::get(format!("http://{}/readyz", enricher.running.admin_addr))
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    assert_eq!(harness.count(names::STREAM_DLQ).await, 0);

    // The key works again: everything is enriched and the fault clears.
    harness.wait_enriched(5).await;
    wait_until(TIMEOUT, "readiness fault cleared", || async {
        enricher.running.readiness.fault().is_none().then_some(())
    })
    .await;
    assert_eq!(harness.count(names::STREAM_DLQ).await, 0);
    assert!(harness.gong.stats().unauthorized_sent >= 2);
}

#[tokio::test]
async fn a_wrong_access_key_never_dead_letters() {
    let harness = Harness::start(50, 100_000).await;
    let mut env = harness.env(50);
    env.set("GONG_ACCESS_KEY_SECRET", "not-the-secret");
    env.set("ENRICH_AUTH_RETRY_DELAY", "200ms");
    harness.publish_calls(1_100_000_000, 3).await;
    let enricher = harness.enricher(harness.config(&env)).await;
    // Several rounds of 401: the events keep coming back, none is dead-lettered.
    wait_until(TIMEOUT, "repeated 401s", || async {
        (harness.gong.stats().unauthorized_sent >= 3).then_some(())
    })
    .await;
    assert!(enricher.running.readiness.fault().is_some());
    assert_eq!(harness.count(names::STREAM_DLQ).await, 0);
    assert_eq!(harness.count(names::STREAM_ENRICHED).await, 0);
    let info = harness.consumer_info().await;
    assert_eq!(info.num_pending + info.num_ack_pending as u64, 3);
}

#[tokio::test]
async fn held_batches_report_progress_instead_of_being_redelivered() {
    let harness = Harness::start(50, 100_000).await;
    let mut env = harness.env(50);
    env.set("ENRICH_ACK_WAIT", "1s");
    harness.publish_calls(1_800_000_000, 5).await;
    // The first answer takes several ack-waits; a second instance pulls all along.
    harness
        .gong
        .set_fault(Fault::Slow(Duration::from_millis(3_500)), 1);
    let _first = harness.enricher(harness.config(&env)).await;
    let _second = harness.enricher(harness.config(&env)).await;
    harness.wait_enriched(5).await;
    harness.wait_consumer_drained().await;
    let stats = harness.gong.stats();
    assert_eq!(
        stats.requests_to(gong_testkit::gong_double::EXTENSIVE_PATH),
        1,
        "no redelivery to the other instance: {stats:?}"
    );
    assert_eq!(harness.count(names::STREAM_ENRICHED).await, 5);
}
