//! Quota pacing: ahead of an even pace through the day, a trickle of calls is batched.
//!
//! Pacing reads the time of day from the NATS server's clock, which a test cannot move; the
//! numbers are chosen so the assertions hold at every millisecond of a UTC day.

use gong_common::names;
use gong_common::streams::StreamSettings;
use gong_enrich::pacing::Pacing;
use gong_enrich::rate_limit::{QuotaState, QUOTA_KEY};
use gong_enrich::{EnrichConfig, Priority, RateLimiter};
use gong_testkit::wait_until;

use crate::support::{Harness, TIMEOUT};

/// A daily quota so large that `AHEAD` is ahead of the even pace at any time of day.
const QUOTA: u64 = 1_000_000_000;
/// Spent today: above the pace's most (999,999,989 at 23:59:59.999, with no slack), and leaves
/// 5 requests of the quota.
const AHEAD: u64 = 999_999_995;

/// Writes the shared quota state as `rate_limit.rs` stores it: `spent` requests on the UTC day
/// of the write's server time (read back, and written again in the once-a-day case the write
/// landed on another day than the one guessed).
async fn seed_spent_today(harness: &Harness, config: &EnrichConfig, spent: u64) -> RateLimiter {
    let limiter = RateLimiter::open(
        &harness.jetstream,
        config.quota.clone(),
        &StreamSettings::default(),
    )
    .await
    .expect("quota bucket");
    let kv = harness
        .jetstream
        .get_key_value(names::BUCKET_GONG_QUOTA)
        .await
        .expect("quota bucket");
    let mut day = chrono::Utc::now().date_naive().to_string();
    loop {
        let state = QuotaState {
            day: day.clone(),
            day_count: spent,
            ..QuotaState::default()
        };
        kv.put(QUOTA_KEY, serde_json::to_vec(&state).unwrap().into())
            .await
            .expect("seed quota state");
        let written = kv.entry(QUOTA_KEY).await.unwrap().expect("seeded");
        let nanos = written.created.unix_timestamp_nanos() as i64;
        let written_day = chrono::DateTime::from_timestamp_nanos(nanos)
            .date_naive()
            .to_string();
        if written_day == day {
            return limiter;
        }
        day = written_day;
    }
}

#[tokio::test]
async fn ahead_of_pace_a_trickle_is_batched_and_on_pace_it_is_not() {
    let harness = Harness::start(50, 10_000_000).await;
    let mut env = harness.env(50);
    env.set("GONG_DAILY_QUOTA", QUOTA.to_string());
    env.set("ENRICH_PACE_SLACK", "0");
    env.set("ENRICH_BATCH_SIZE", "5");
    // Far longer than the test may take: a batch closes only when full while ahead of pace.
    env.set("ENRICH_BATCH_LINGER_MAX", "10m");
    // The first call is held for longer than this: only its progress reports (sent while the
    // pull lingers) keep JetStream from redelivering it.
    env.set("ENRICH_ACK_WAIT", "1s");
    let config = harness.config(&env);
    let pacing = Pacing::from_config(&config);
    let last_moment_of_a_day = 86_400_000 - 1;
    assert!(pacing.is_ahead(AHEAD, last_moment_of_a_day));
    assert!(!pacing.is_ahead(0, 0));
    let limiter = seed_spent_today(&harness, &config, AHEAD).await;
    let seen = limiter.check(Priority::Live).await.expect("quota left");
    assert_eq!(seen.spent_today, AHEAD, "counted on the day it was written");
    assert!(pacing.is_ahead(seen.spent_today, seen.at_ms));
    let _enricher = harness.enricher(config.clone()).await;

    // A trickle: one call every half ack wait, 5 base lingers (the workload's pace, not a wait
    // for state), each published once the previous ones are held: delivered to the lingering
    // pull, not enriched. At the base linger of 100 ms every call would go alone, 2 requests
    // each; the first call is held for 2 ack waits.
    let spacing = config.ack_wait / 2;
    assert!(spacing > config.batch_linger);
    let ids: Vec<String> = (0..5u64).map(|n| (7_100_000_000 + n).to_string()).collect();
    for (held, call_id) in ids.iter().enumerate() {
        harness.publish_raw(call_id).await;
        if held + 1 == ids.len() {
            break;
        }
        wait_until(
            TIMEOUT,
            "the trickle held by the lingering pull",
            || async {
                let info = harness.consumer_info().await;
                (info.num_pending == 0 && info.num_ack_pending == held + 1).then_some(())
            },
        )
        .await;
        tokio::time::sleep(spacing).await;
        assert_eq!(harness.count(names::STREAM_ENRICHED).await, 0);
    }
    harness.wait_enriched(5).await;
    harness.wait_consumer_drained().await;

    // Back on pace (nothing spent is on pace at any time of day): the next call goes at the
    // base linger (at the longest it would wait 10 min, beyond the wait's timeout). The pull in
    // progress may still be a long one; five calls at once fill it.
    seed_spent_today(&harness, &config, 0).await;
    harness.publish_calls(7_200_000_000, 5).await;
    harness.wait_enriched(10).await;
    harness.wait_consumer_drained().await;
    harness.publish_raw("7300000000").await;
    harness.wait_enriched(11).await;
    harness.wait_consumer_drained().await;

    let stats = harness.gong.stats();
    let per_request = &stats.call_ids_per_request;
    assert_eq!(
        &per_request[..2],
        &[5, 5],
        "the trickle of 5 calls took one extensive and one transcript request: {stats:?}"
    );
    assert_eq!(&per_request[per_request.len() - 2..], &[1, 1], "{stats:?}");
    assert_eq!(stats.violations(), 0);
    assert_eq!(harness.consumer_info().await.num_redelivered, 0);
    assert_eq!(harness.count(names::STREAM_DLQ).await, 0);
}
