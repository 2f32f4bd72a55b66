//! One Gong budget for the whole deployment: replicas never exceed it together.

use std::time::Duration;

use gong_common::names;
use gong_common::streams::StreamSettings;
use gong_enrich::config::QuotaConfig;
use gong_enrich::error::QuotaError;
use gong_enrich::{Priority, RateLimiter};
use gong_testkit::wait_until;

use crate::support::{by_call_id, Harness, TIMEOUT};

/// `instances` enrichers at Gong's real rate (3/s) with small batches, so they compete for
/// slots all the time.
async fn instances_share_the_rate(instances: usize) {
    let harness = Harness::start(3, 100_000).await;
    let mut env = harness.env(3);
    env.set("ENRICH_BATCH_SIZE", "5");
    env.set("ENRICH_BATCH_LINGER", "50ms");
    let ids = harness.publish_calls(8_000_000_000, 60).await;
    let mut enrichers = Vec::new();
    for _ in 0..instances {
        enrichers.push(harness.enricher(harness.config(&env)).await);
    }
    harness.wait_enriched(60).await;
    harness.wait_consumer_drained().await;
    assert_eq!(by_call_id(&harness.enriched().await).len(), ids.len());
    let stats = harness.gong.stats();
    assert_eq!(stats.violations(), 0, "{stats:?}");
    assert_eq!(stats.rate_limited_sent, 0, "{stats:?}");
    assert!(stats.call_requests() >= 20);
}

#[tokio::test]
async fn two_instances_cause_no_rate_limit_violations() {
    instances_share_the_rate(2).await;
}

#[tokio::test]
async fn three_instances_cause_no_rate_limit_violations() {
    instances_share_the_rate(3).await;
}

#[tokio::test]
async fn a_spent_daily_quota_stops_pulling_without_violations() {
    let harness = Harness::start(50, 1_000).await;
    let mut env = harness.env(50);
    env.set("GONG_DAILY_QUOTA", "4");
    env.set("ENRICH_BATCH_SIZE", "5");
    harness.publish_calls(9_000_000_000, 30).await;
    let enricher = harness.enricher(harness.config(&env)).await;

    // Two batches (extensive + transcript each) spend the quota; the rest stays in the stream.
    harness.wait_enriched(10).await;
    wait_until(TIMEOUT, "the rest left pending, nothing held", || async {
        let info = harness.consumer_info().await;
        (info.num_pending == 20 && info.num_ack_pending == 0).then_some(())
    })
    .await;
    let jetstream = harness.jetstream.clone();
    let limiter = RateLimiter::open(
        &jetstream,
        harness.config(&env).quota,
        &StreamSettings::default(),
    )
    .await
    .unwrap();
    assert_eq!(limiter.state().await.unwrap().day_count, 4);
    assert!(matches!(
        limiter.check(Priority::Live).await,
        Err(QuotaError::Exhausted { .. })
    ));
    let stats = harness.gong.stats();
    assert_eq!(stats.call_requests(), 4);
    assert_eq!(stats.violations(), 0);
    assert_eq!(harness.count(names::STREAM_ENRICHED).await, 10);
    assert_eq!(harness.count(names::STREAM_DLQ).await, 0);
    assert!(enricher.running.readiness.fault().is_none());
}

#[tokio::test]
async fn backfill_leaves_headroom_and_the_daily_reserve_to_live() {
    let harness = Harness::start(3, 100_000).await;
    let jetstream = harness.jetstream.clone();
    let config = QuotaConfig {
        rate_per_second: 3,
        daily_quota: 10,
        backfill_reserve: 4,
        margin: Duration::from_millis(100),
        max_hold: Duration::from_secs(30),
    };
    let limiter = RateLimiter::open(&jetstream, config, &StreamSettings::default())
        .await
        .unwrap();
    for _ in 0..6 {
        limiter.acquire(Priority::Backfill).await.unwrap();
        let recent = limiter.state().await.unwrap().recent_ms;
        let newest = *recent.last().unwrap();
        let in_window = recent.iter().filter(|at| newest - **at < 1100).count();
        assert!(
            in_window <= 2,
            "backfill leaves a slot per window: {recent:?}"
        );
    }
    assert!(matches!(
        limiter.acquire(Priority::Backfill).await,
        Err(QuotaError::Exhausted { .. })
    ));
    for _ in 0..4 {
        limiter.acquire(Priority::Live).await.unwrap();
    }
    assert!(matches!(
        limiter.acquire(Priority::Live).await,
        Err(QuotaError::Exhausted { .. })
    ));
    assert_eq!(limiter.state().await.unwrap().day_count, 10);
}

#[tokio::test]
async fn concurrent_acquires_never_share_a_window_slot() {
    let harness = Harness::start(3, 100_000).await;
    let jetstream = harness.jetstream.clone();
    let config = QuotaConfig {
        rate_per_second: 4,
        daily_quota: 1_000,
        backfill_reserve: 0,
        margin: Duration::from_millis(100),
        max_hold: Duration::from_secs(30),
    };
    let mut limiters = Vec::new();
    for _ in 0..3 {
        limiters.push(
            RateLimiter::open(&jetstream, config.clone(), &StreamSettings::default())
                .await
                .unwrap(),
        );
    }
    let granted = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for limiter in limiters {
        let granted = granted.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..4 {
                let grant = limiter.acquire(Priority::Live).await.unwrap();
                granted.lock().unwrap().push(grant.at_ms);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let mut times = granted.lock().unwrap().clone();
    times.sort();
    assert_eq!(times.len(), 12);
    for window in times.windows(5) {
        assert!(
            window[4] - window[0] >= 1100,
            "five grants within a second (plus margin) at rate 4: {window:?}"
        );
    }
}
