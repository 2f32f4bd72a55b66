//! Several gong-load replicas: one active loader holding the `load` lease, hot standbys that
//! take over when it dies, and every event staged once in disjoint ranges.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::TryStreamExt;
use gong_common::lease::LeaseRecord;
use gong_common::names;
use gong_load::ranges::RangeRecord;
use gong_load::stage::parse_file_name;
use gong_testkit::wait_until;

use crate::support::{
    call_event_ids, metric_value, publish_events, read_stage, wait_calls_rows, Harness,
    LoaderProcess,
};

const TIMEOUT: Duration = Duration::from_secs(60);

/// The lease holder's id as the `gong_lease_load` register has it.
async fn lease_holder(harness: &Harness) -> String {
    let kv = harness
        .jetstream
        .get_key_value(format!(
            "{}{}",
            names::BUCKET_LEASE_PREFIX,
            names::LEASE_LOAD
        ))
        .await
        .expect("lease bucket");
    let value = kv.get("holder").await.unwrap().expect("lease written");
    serde_json::from_slice::<LeaseRecord>(&value)
        .unwrap()
        .holder
}

/// Owner of every range record, by first sequence.
async fn range_owners(harness: &Harness) -> Vec<(u64, String)> {
    let kv = harness
        .jetstream
        .get_key_value(names::BUCKET_LOAD_RANGES)
        .await
        .unwrap();
    let keys: Vec<String> = kv.keys().await.unwrap().try_collect().await.unwrap();
    let mut owners = Vec::new();
    for key in keys.iter().filter(|key| key.starts_with("range.")) {
        let value = kv.get(key).await.unwrap().expect("range record");
        let record: RangeRecord = serde_json::from_slice(&value).unwrap();
        owners.push((record.first, record.owner));
    }
    owners.sort();
    owners
}

/// `gong_load_lease_active` of each process, once every one of them serves it.
async fn lease_gauges(loaders: &[&LoaderProcess]) -> Option<Vec<f64>> {
    let mut values = Vec::new();
    for loader in loaders {
        values.push(metric_value(loader.admin_addr, "gong_load_lease_active").await?);
    }
    Some(values)
}

fn assert_staged_once_in_disjoint_ranges(harness: &Harness, events: usize) {
    let files = read_stage(&harness.stage_dir());
    let mut ids = call_event_ids(&files);
    ids.sort();
    let total = ids.len();
    ids.dedup();
    assert_eq!((total, ids.len()), (events, events), "{:?}", files.keys());
    let mut ranges: Vec<(u64, u64)> = files
        .keys()
        .filter(|path| path.starts_with("calls/"))
        .map(|path| parse_file_name(path.rsplit('/').next().unwrap()).unwrap())
        .collect();
    ranges.sort();
    for pair in ranges.windows(2) {
        assert!(pair[0].1 < pair[1].0, "overlapping ranges {ranges:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_loader_works_the_standby_takes_over_when_it_dies() {
    let harness = crate::support::Harness::new().await;
    let settings = [
        ("LOAD_FLUSH_MAX_ROWS", "4"),
        ("LOAD_FETCH_BATCH", "3"),
        ("LOAD_LEASE_TTL", "2s"),
    ];
    let first = harness.spawn_loader_process(&settings).await;
    let second = harness.spawn_loader_process(&settings).await;
    let gauges = wait_until(TIMEOUT, "one active loader and one standby", || async {
        let gauges = lease_gauges(&[&first, &second]).await?;
        (gauges.iter().sum::<f64>() == 1.0).then_some(gauges)
    })
    .await;
    let (active, standby) = if gauges[0] == 1.0 {
        (first, second)
    } else {
        (second, first)
    };

    publish_events(&harness.jetstream, 1, 40).await;
    wait_calls_rows(&harness.stage_dir(), 40).await;
    harness.wait_all_acked().await;
    assert_staged_once_in_disjoint_ranges(&harness, 40);
    // Every range was claimed by the lease holder: the standby built nothing.
    let holder = lease_holder(&harness).await;
    let owners = range_owners(&harness).await;
    assert!(owners.len() >= 10, "{owners:?}");
    assert!(
        owners.iter().all(|(_, owner)| *owner == holder),
        "ranges claimed by a replica without the lease: holder {holder}, {owners:?}"
    );
    assert_eq!(
        metric_value(
            standby.admin_addr,
            "gong_load_flushes_total{reason=\"rows\"}"
        )
        .await,
        Some(0.0),
        "the standby flushed"
    );

    // The active loader dies (SIGKILL, no release): the standby takes over after the ttl.
    drop(active);
    wait_until(TIMEOUT, "the standby to take the lease", || async {
        (metric_value(standby.admin_addr, "gong_load_lease_active").await? == 1.0).then_some(())
    })
    .await;
    publish_events(&harness.jetstream, 41, 80).await;
    wait_calls_rows(&harness.stage_dir(), 80).await;
    harness.wait_all_acked().await;
    assert_staged_once_in_disjoint_ranges(&harness, 80);
    let new_holder = lease_holder(&harness).await;
    assert_ne!(new_holder, holder);
    let owners = range_owners(&harness).await;
    let late: BTreeSet<&String> = owners
        .iter()
        .filter(|(first, _)| *first > 40)
        .map(|(_, owner)| owner)
        .collect();
    assert_eq!(late, BTreeSet::from([&new_holder]), "{owners:?}");
    standby.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loader_shutting_down_flushes_then_hands_the_lease_over_at_once() {
    let harness = crate::support::Harness::new().await;
    // An hour: the standby can only get the lease from a release, not from expiry. A batch
    // of up to 100 events, flushed after a minute: only the shutdown flushes it here.
    let settings = [
        ("LOAD_FLUSH_MAX_ROWS", "100"),
        ("LOAD_FLUSH_MAX_AGE", "60s"),
        ("LOAD_ACK_WAIT", "120s"),
        ("LOAD_LEASE_TTL", "1h"),
    ];
    let first = harness.spawn_loader_process(&settings).await;
    wait_until(TIMEOUT, "the first loader to hold the lease", || async {
        (metric_value(first.admin_addr, "gong_load_lease_active").await? == 1.0).then_some(())
    })
    .await;
    let first_holder = lease_holder(&harness).await;
    let second = harness.spawn_loader_process(&settings).await;
    publish_events(&harness.jetstream, 1, 6).await;
    // The first loader holds all six in its open batch.
    wait_until(
        TIMEOUT,
        "six events in the first loader's open batch",
        || async {
            (metric_value(first.admin_addr, "gong_load_open_batch_events").await? == 6.0)
                .then_some(())
        },
    )
    .await;
    // SIGTERM: the open batch is flushed by the first loader, then the lease released.
    first.stop().await;
    wait_until(
        TIMEOUT,
        "the second loader to take the released lease",
        || async {
            (metric_value(second.admin_addr, "gong_load_lease_active").await? == 1.0).then_some(())
        },
    )
    .await;
    wait_calls_rows(&harness.stage_dir(), 6).await;
    harness.wait_all_acked().await;
    let owners = range_owners(&harness).await;
    assert_eq!(
        owners,
        vec![(1, first_holder.clone())],
        "the batch must be flushed by the loader shutting down, before it lets the lease go"
    );
    assert_eq!(
        metric_value(second.admin_addr, "gong_load_ranges_taken_over_total").await,
        Some(0.0)
    );
    // The new holder works: its batch is flushed when it shuts down in turn.
    publish_events(&harness.jetstream, 7, 12).await;
    // In its open batch, not only delivered: a message fetched but not yet taken into the batch
    // when SIGTERM comes is left to its ack wait (2 minutes here), not flushed.
    wait_until(
        TIMEOUT,
        "six events in the second loader's open batch",
        || async {
            (metric_value(second.admin_addr, "gong_load_open_batch_events").await? == 6.0)
                .then_some(())
        },
    )
    .await;
    second.stop().await;
    wait_calls_rows(&harness.stage_dir(), 12).await;
    harness.wait_all_acked().await;
    assert_staged_once_in_disjoint_ranges(&harness, 12);
}
