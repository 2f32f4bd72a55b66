//! What the live loader does when the world is not as it expects: events expired before they
//! were staged, a message deleted inside a range, files already on the stage, an older
//! gong-load still pulling, and two loaders active at once.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use gong_common::names;
use gong_load::range_writer::Existing;
use gong_load::replay::{replay, ReplayWindow};
use gong_load::stage::parse_file_name;
use gong_load::LoadConfig;
use gong_testkit::wait_until;
use tokio_util::sync::CancellationToken;

use crate::support::{
    call_event_ids, load_consumer_info, publish_events, read_stage, stage_bytes, wait_calls_rows,
    Harness,
};

const TIMEOUT: Duration = Duration::from_secs(60);

fn sorted_ids(harness: &Harness) -> Vec<String> {
    let mut ids = call_event_ids(&read_stage(&harness.stage_dir()));
    ids.sort();
    ids
}

fn expected_ids(indexes: impl IntoIterator<Item = u64>) -> Vec<String> {
    let mut ids: Vec<String> = indexes
        .into_iter()
        .map(|index| format!("ev-{index}"))
        .collect();
    ids.sort();
    ids
}

/// Events that expired from GONG_ENRICHED before any loader staged them (a loader outage
/// longer than the stream's max age, or a purge) can never be read back: the loader moves past
/// them (an error log and a counter) instead of retrying a range that can never be complete.
#[tokio::test]
async fn events_expired_before_staging_are_skipped_not_retried_for_ever() {
    let mut harness = Harness::new().await;
    harness.start_loader(&[("LOAD_FLUSH_MAX_ROWS", "3")]).await;
    publish_events(&harness.jetstream, 1, 3).await;
    wait_calls_rows(&harness.stage_dir(), 3).await;
    harness.wait_all_acked().await;
    harness.stop_loader().await;
    // 4..=6 arrive while no loader runs, then leave the stream unstaged.
    publish_events(&harness.jetstream, 4, 6).await;
    let stream = harness
        .jetstream
        .get_stream(names::STREAM_ENRICHED)
        .await
        .unwrap();
    stream.purge().await.unwrap();
    publish_events(&harness.jetstream, 7, 9).await;

    harness.start_loader(&[("LOAD_FLUSH_MAX_ROWS", "3")]).await;
    wait_calls_rows(&harness.stage_dir(), 6).await;
    harness.wait_all_acked().await;
    assert_eq!(sorted_ids(&harness), expected_ids([1, 2, 3, 7, 8, 9]));
    harness.stop_loader().await;
}

/// A message deleted from the middle of a range is gone for good: the stream leader lists it
/// as deleted, and the range is written with the others.
#[tokio::test]
async fn a_message_deleted_inside_a_range_is_left_out_and_the_rest_staged() {
    let mut harness = Harness::new().await;
    publish_events(&harness.jetstream, 1, 5).await;
    let stream = harness
        .jetstream
        .get_stream(names::STREAM_ENRICHED)
        .await
        .unwrap();
    stream.delete_message(3).await.unwrap();
    harness.start_loader(&[("LOAD_FLUSH_MAX_ROWS", "4")]).await;
    wait_calls_rows(&harness.stage_dir(), 4).await;
    harness.wait_all_acked().await;
    assert_eq!(sorted_ids(&harness), expected_ids([1, 2, 4, 5]));
    let names: Vec<(u64, u64)> = read_stage(&harness.stage_dir())
        .keys()
        .filter(|path| path.starts_with("calls/"))
        .map(|path| parse_file_name(path.rsplit('/').next().unwrap()).unwrap())
        .collect();
    assert_eq!(names, vec![(1, 5)], "one range over the deleted sequence");
    harness.stop_loader().await;
}

/// A file already on the stage under a range's name is complete (uploads are atomic) and was
/// written for that range: a rewrite keeps it, so Snowflake never sees new bytes under a name
/// it loaded. `replay --overwrite` writes it again on purpose.
#[tokio::test]
async fn files_already_on_the_stage_are_kept_unless_a_replay_overwrites_them() {
    let mut harness = Harness::new().await;
    harness.start_loader(&[("LOAD_FLUSH_MAX_ROWS", "4")]).await;
    publish_events(&harness.jetstream, 1, 8).await;
    wait_calls_rows(&harness.stage_dir(), 8).await;
    harness.wait_all_acked().await;
    harness.stop_loader().await;
    let live = stage_bytes(&harness.stage_dir());
    // Stand-in for a file written by another version: same name, other bytes.
    let (changed, _) = live.iter().next().unwrap();
    std::fs::write(
        harness.stage_dir().join(changed),
        b"written by another version",
    )
    .unwrap();

    let window = || ReplayWindow {
        from_seq: Some(1),
        ..Default::default()
    };
    let config = LoadConfig::from_env(&harness.env(&[])).unwrap();
    let kept = replay(config, window(), CancellationToken::new(), |_| {})
        .await
        .unwrap();
    assert_eq!((kept.files, kept.kept), (0, live.len()));
    assert_eq!(
        std::fs::read(harness.stage_dir().join(changed)).unwrap(),
        b"written by another version"
    );

    let config = LoadConfig::from_env(&harness.env(&[])).unwrap();
    let overwritten = replay(
        config,
        ReplayWindow {
            existing: Existing::Overwrite,
            ..window()
        },
        CancellationToken::new(),
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!((overwritten.files, overwritten.kept), (live.len(), 0));
    assert_eq!(stage_bytes(&harness.stage_dir()), live);
}

/// During an upgrade an older gong-load (which reads every message as a call) may still pull
/// from the consumer the new lease holder must replace: the holder waits, unready and saying
/// why, and replaces it only once nobody else pulls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_loader_still_pulling_delays_the_consumer_migration() {
    let mut harness = Harness::new().await;
    let stream = harness
        .jetstream
        .get_stream(names::STREAM_ENRICHED)
        .await
        .unwrap();
    let old: jetstream::consumer::PullConsumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(names::CONSUMER_LOAD.to_string()),
            filter_subject: names::SUBJECT_ENRICHED_CALL.to_string(),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            max_deliver: -1,
            ..Default::default()
        })
        .await
        .unwrap();
    // The older pod: a pull request outstanding all the time.
    let mut old_pulls = old
        .stream()
        .expires(Duration::from_secs(1))
        .heartbeat(Duration::from_millis(500))
        .messages()
        .await
        .unwrap();
    let old_pod = tokio::spawn(async move { while old_pulls.next().await.is_some() {} });
    wait_until(TIMEOUT, "the old pod's pull request waiting", || async {
        (load_consumer_info(&harness.jetstream).await?.num_waiting > 0).then_some(())
    })
    .await;

    harness.start_loader(&[("LOAD_FLUSH_MAX_ROWS", "3")]).await;
    let admin = harness.loader.as_ref().unwrap().0.admin_addr;
    let readyz = format!("http://{admin}/readyz");
    wait_until(TIMEOUT, "/readyz naming the older gong-load", || async {
        let body = reqwest::get(&readyz).await.ok()?.text().await.ok()?;
        body.contains("older gong-load").then_some(())
    })
    .await;
    let info = load_consumer_info(&harness.jetstream).await.unwrap();
    assert_eq!(info.config.filter_subject, names::SUBJECT_ENRICHED_CALL);

    // The old pod goes away: the holder replaces the consumer and stages everything.
    old_pod.abort();
    let _ = old_pod.await;
    wait_until(TIMEOUT, "the consumer replaced", || async {
        let info = load_consumer_info(&harness.jetstream).await?;
        (info.config.filter_subject == names::SUBJECTS_ENRICHED).then_some(())
    })
    .await;
    publish_events(&harness.jetstream, 1, 6).await;
    wait_calls_rows(&harness.stage_dir(), 6).await;
    harness.wait_all_acked().await;
    assert_eq!(sorted_ids(&harness), expected_ids(1..=6));
    harness.stop_loader().await;
}

/// The lease makes one loader the common case; safety does not rest on it. Two loaders that
/// both believe they are active (different lease jobs) still stage every event exactly once,
/// in disjoint ranges, because range claims are atomic creates and gaps are read from the
/// stream leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_loaders_active_at_once_still_stage_every_event_once() {
    let mut harness = Harness::new().await;
    let settings = |job: &'static str| {
        [
            ("LOAD_FLUSH_MAX_ROWS", "4"),
            ("LOAD_FETCH_BATCH", "3"),
            ("LOAD_TEST_LEASE_JOB", job),
        ]
    };
    harness.start_loader(&settings("load_a")).await;
    let first = harness.loader.take();
    harness.start_loader(&settings("load_b")).await;
    publish_events(&harness.jetstream, 1, 60).await;
    wait_calls_rows(&harness.stage_dir(), 60).await;
    harness.wait_all_acked().await;
    assert_eq!(sorted_ids(&harness), expected_ids(1..=60));
    let mut ranges: Vec<(u64, u64)> = read_stage(&harness.stage_dir())
        .keys()
        .filter(|path| path.starts_with("calls/"))
        .map(|path| parse_file_name(path.rsplit('/').next().unwrap()).unwrap())
        .collect();
    ranges.sort();
    for pair in ranges.windows(2) {
        assert!(pair[0].1 < pair[1].0, "overlapping ranges {ranges:?}");
    }
    harness.stop_loader().await;
    if let Some((running, shutdown)) = first {
        shutdown.cancel();
        running.task.await.unwrap().unwrap();
    }
}
