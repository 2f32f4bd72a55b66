//! One Gong budget for the whole deployment: replicas never exceed it together, whatever their
//! own clocks say, on one server and on a 3-node cluster losing the bucket's leader.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use gong_common::names;
use gong_common::streams::StreamSettings;
use gong_enrich::config::QuotaConfig;
use gong_enrich::error::QuotaError;
use gong_enrich::rate_limit::{Clock, SystemClock};
use gong_enrich::{Priority, RateLimiter};
use gong_testkit::cluster::NatsCluster;
use gong_testkit::gong_double::{GongDouble, GongDoubleConfig};
use gong_testkit::wait_until;
use tokio::task::JoinHandle;

use crate::support::{by_call_id, gong_request, slow_downlink_proxy, Harness, TIMEOUT};

/// A pod's wall clock, `offset_ms` away from the system's.
#[derive(Debug)]
struct SkewedClock {
    offset_ms: i64,
}

impl Clock for SkewedClock {
    fn now_ms(&self) -> i64 {
        SystemClock.now_ms() + self.offset_ms
    }
}

fn quota(rate_per_second: u32, daily_quota: u64) -> QuotaConfig {
    QuotaConfig {
        rate_per_second,
        daily_quota,
        backfill_reserve: 0,
        margin: Duration::from_millis(100),
        max_hold: Duration::from_secs(30),
    }
}

/// A replica's limiter whose pod clock is `offset_ms` off.
async fn replica(
    jetstream: &jetstream::Context,
    config: &QuotaConfig,
    settings: &StreamSettings,
    offset_ms: i64,
) -> RateLimiter {
    RateLimiter::open_with_clock(
        jetstream,
        config.clone(),
        settings,
        Arc::new(SkewedClock { offset_ms }),
    )
    .await
    .expect("quota bucket")
}

/// A replica spending slots: takes up to `wanted` (fewer when the daily quota is spent) and
/// sends one request to the Gong double at `base_url` with each. Returns how many it took.
fn spend(limiter: RateLimiter, base_url: String, wanted: usize) -> JoinHandle<usize> {
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut taken = 0;
        while taken < wanted {
            match limiter.acquire(Priority::Live).await {
                Ok(_) => {
                    gong_request(&http, &base_url).await;
                    taken += 1;
                }
                Err(QuotaError::Exhausted { .. }) => break,
                // A NATS node going away: retried after a short backoff, as the stage does.
                Err(QuotaError::Store(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(err) => panic!("no pause was ordered: {err}"),
            }
        }
        taken
    })
}

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
            in_window <= 1,
            "backfill leaves two slots per window: {recent:?}"
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
    let harness = Harness::start(4, 100_000).await;
    let config = quota(4, 1_000);
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let limiter = replica(&harness.jetstream, &config, &StreamSettings::default(), 0).await;
        tasks.push(spend(limiter, harness.gong.base_url(), 4));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), 4);
    }
    let stats = harness.gong.stats();
    assert_eq!(stats.call_requests(), 12);
    assert_eq!(
        stats.violations(),
        0,
        "five requests within a second at rate 4: {stats:?}"
    );
    let limiter = replica(&harness.jetstream, &config, &StreamSettings::default(), 0).await;
    assert_eq!(limiter.state().await.unwrap().day_count, 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_whose_clocks_are_seconds_apart_stay_within_the_rate() {
    let harness = Harness::start(5, 100_000).await;
    let config = quota(5, 100_000);
    let settings = StreamSettings::default();
    let behind = replica(&harness.jetstream, &config, &settings, -4_000).await;
    let ahead = replica(&harness.jetstream, &config, &settings, 4_000).await;
    // The replica whose clock is behind spends first: judged by the pods' clocks, the other
    // would see those requests as 8 s old and send a whole window more at once.
    let first = spend(behind, harness.gong.base_url(), 15);
    wait_until(TIMEOUT, "the first replica's window spent", || async {
        (harness.gong.stats().call_requests() >= 5).then_some(())
    })
    .await;
    let second = spend(ahead.clone(), harness.gong.base_url(), 15);
    assert_eq!(first.await.unwrap() + second.await.unwrap(), 30);
    let stats = harness.gong.stats();
    assert_eq!(stats.call_requests(), 30, "{stats:?}");
    assert_eq!(stats.violations(), 0, "{stats:?}");
    assert_eq!(ahead.state().await.unwrap().day_count, 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_both_sides_of_midnight_share_one_day() {
    // The double allows 20 requests per UTC day (of this host's clock, the NATS server's too).
    let harness = Harness::start(10, 20).await;
    let config = quota(10, 20);
    let settings = StreamSettings::default();
    let now = SystemClock.now_ms();
    let midnight = now - now.rem_euclid(86_400_000) + 86_400_000;
    // One pod's clock says 23:59:58, the other's 00:00:02 of the next day.
    let before = replica(
        &harness.jetstream,
        &config,
        &settings,
        midnight - 2_000 - now,
    )
    .await;
    let after = replica(
        &harness.jetstream,
        &config,
        &settings,
        midnight + 2_000 - now,
    )
    .await;
    let first = spend(before, harness.gong.base_url(), 30);
    let second = spend(after.clone(), harness.gong.base_url(), 30);
    let taken = first.await.unwrap() + second.await.unwrap();
    let stats = harness.gong.stats();
    assert!(
        taken >= 20,
        "the day's quota is spent, then refused: {taken}"
    );
    assert_eq!(stats.call_requests(), taken as u64, "{stats:?}");
    assert_eq!(
        stats.quota_violations, 0,
        "more than 20 requests on one UTC day: {stats:?}"
    );
    assert_eq!(stats.violations(), 0, "{stats:?}");
    assert!(matches!(
        after.check(Priority::Live).await,
        Err(QuotaError::Exhausted { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_whose_write_is_acknowledged_late_is_not_used() {
    let harness = Harness::start(2, 100_000).await;
    let config = quota(2, 100_000);
    let settings = StreamSettings::default();
    // This replica hears from NATS a second late: the slot it takes is recorded at the server
    // time of its write, but it could send only a second after that.
    let proxy = slow_downlink_proxy(harness.nats.port(), Duration::from_secs(1)).await;
    let late_client = async_nats::connect(format!("nats://127.0.0.1:{proxy}"))
        .await
        .expect("connect through the proxy");
    let late = replica(&jetstream::new(late_client), &config, &settings, 0).await;
    let fast = replica(&harness.jetstream, &config, &settings, 0).await;
    let late_sender = spend(late, harness.gong.base_url(), 1);
    wait_until(TIMEOUT, "the late replica's slot written", || async {
        (fast.state().await.ok()?.day_count >= 1).then_some(())
    })
    .await;
    // The other replica counts the window from that slot's server time and spends at once:
    // one request now, two more as soon as the slot is 1.1 s old.
    let sent = spend(fast.clone(), harness.gong.base_url(), 5)
        .await
        .unwrap();
    assert_eq!(sent, 5);
    late_sender.abort();
    let stats = harness.gong.stats();
    assert_eq!(
        stats.violations(),
        0,
        "a request sent a second after its slot's time: {stats:?}"
    );
    assert_eq!(
        stats.call_requests(),
        5,
        "the late slot went unused: {stats:?}"
    );
}

/// A 3-node cluster whose buckets have 3 replicas, and a client on it.
async fn cluster() -> (NatsCluster, jetstream::Context, StreamSettings) {
    let cluster = NatsCluster::start(3);
    cluster.wait_jetstream(Duration::from_secs(60)).await;
    let jetstream = jetstream::new(cluster.client().await);
    let settings = StreamSettings {
        replicas: 3,
        ..StreamSettings::default()
    };
    (cluster, jetstream, settings)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_three_node_cluster_every_grant_is_counted() {
    let (cluster, jetstream, settings) = cluster().await;
    // A window the test never fills: only the compare-and-set is exercised.
    let config = quota(200, 1_000_000);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let jetstream = jetstream::new(cluster.client().await);
        let limiter = replica(&jetstream, &config, &settings, 0).await;
        tasks.push(tokio::spawn(async move {
            let mut granted = Vec::new();
            for _ in 0..40 {
                granted.push(
                    limiter
                        .acquire(Priority::Live)
                        .await
                        .expect("slot")
                        .revision,
                );
            }
            granted
        }));
    }
    let mut revisions = Vec::new();
    for task in tasks {
        revisions.extend(task.await.unwrap());
    }
    revisions.sort_unstable();
    revisions.dedup();
    assert_eq!(revisions.len(), 160, "every grant its own write");
    let limiter = replica(&jetstream, &config, &settings, 0).await;
    let counted = limiter.state().await.unwrap().day_count;
    assert!(
        counted >= 160,
        "160 grants, {counted} counted: concurrent writes overwrote each other (logs: {:?})",
        cluster.log_paths()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_quota_leader_lets_no_request_over_the_rate() {
    let (mut cluster, jetstream, settings) = cluster().await;
    let gong = GongDouble::start(GongDoubleConfig {
        rate_per_second: 10,
        daily_quota: 100_000,
        ..GongDoubleConfig::default()
    })
    .await
    .unwrap();
    let config = quota(10, 100_000);
    let mut replicas = Vec::new();
    for _ in 0..2 {
        // Each replica on its own connection, as two pods.
        let own = jetstream::new(cluster.client().await);
        let limiter = replica(&own, &config, &settings, 0).await;
        replicas.push(spend(limiter, gong.base_url(), 40));
    }
    wait_until(TIMEOUT, "the replicas spending", || async {
        (gong.stats().call_requests() >= 20).then_some(())
    })
    .await;
    let bucket_stream = format!("KV_{}", names::BUCKET_GONG_QUOTA);
    let leader = jetstream
        .get_stream(&bucket_stream)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .cluster
        .clone()
        .and_then(|cluster| cluster.leader)
        .expect("the bucket has a leader");
    let index: usize = leader
        .strip_prefix("gong-node-")
        .and_then(|index| index.parse().ok())
        .unwrap_or_else(|| panic!("unexpected server name {leader}"));
    let before = gong.stats().call_requests();
    cluster.stop_node(index);
    let mut taken = 0;
    for task in replicas {
        taken += task.await.unwrap();
    }
    assert_eq!(taken, 80);
    let stats = gong.stats();
    assert!(
        before < 80,
        "the leader was lost mid-run: {before} of 80 sent before"
    );
    assert_eq!(stats.call_requests(), 80, "{stats:?}");
    assert_eq!(
        stats.violations(),
        0,
        "{stats:?} (logs: {:?})",
        cluster.log_paths()
    );
}
