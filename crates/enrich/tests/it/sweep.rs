//! The reconciliation sweep and late transcripts, against a real nats-server and the Gong
//! double's call history.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, SubsecRound, Utc};
use gong_common::gong::Webhook;
use gong_common::names::{self, headers};
use gong_enrich::sweep::{Checkpoint, SweepKind};
use gong_enrich::{ProgressMode, SweepOptions, SweepSummary};
use gong_testkit::gong_double::{GongDoubleConfig, EXTENSIVE_PATH, TRANSCRIPT_PATH};
use gong_testkit::wait_until;
use tokio_util::sync::CancellationToken;

use crate::support::{by_call_id, header, Harness, TIMEOUT};

/// `count` calls of the double's history, ids from `first`, one a minute from `start`.
fn history(harness: &Harness, first: u64, count: u64, start: DateTime<Utc>) -> Vec<String> {
    let calls: Vec<(String, DateTime<Utc>)> = (0..count)
        .map(|n| {
            (
                (first + n).to_string(),
                start + chrono::Duration::minutes(n as i64),
            )
        })
        .collect();
    harness.gong.add_calls(calls.clone());
    calls.into_iter().map(|(id, _)| id).collect()
}

fn options(since: DateTime<Utc>, until: DateTime<Utc>) -> SweepOptions {
    SweepOptions {
        since,
        until: Some(until),
        dry_run: false,
        progress: ProgressMode::Quiet,
    }
}

async fn sweep(harness: &Harness, env: &gong_common::Env, options: SweepOptions) -> SweepSummary {
    gong_enrich::sweep(harness.config(env), options, CancellationToken::new())
        .await
        .expect("sweep completes")
}

/// Raw call events by call id: how many, and how many the sweep injected.
async fn raw_by_call(harness: &Harness) -> HashMap<String, (usize, usize)> {
    let mut out: HashMap<String, (usize, usize)> = HashMap::new();
    for message in harness.messages(names::STREAM_RAW).await {
        let call_id = header(&message, headers::CALL_ID)
            .expect("call id header")
            .to_string();
        let entry = out.entry(call_id).or_default();
        entry.0 += 1;
        if header(&message, headers::SOURCE) == Some(headers::SOURCE_SWEEP) {
            entry.1 += 1;
        }
    }
    out
}

#[tokio::test]
async fn webhooks_for_four_in_five_then_a_sweep_enrich_every_call_once() {
    let harness = Harness::start(50, 100_000).await;
    let env = harness.env(50);
    // Whole seconds: Gong's times carry microseconds.
    let start = (Utc::now() - chrono::Duration::days(5)).trunc_subsecs(0);
    let calls = history(&harness, 3_000_000_000, 50, start);
    let _enricher = harness.enricher(harness.config(&env)).await;
    let webhooks: Vec<&String> = calls
        .iter()
        .enumerate()
        .filter(|(n, _)| n % 5 != 4)
        .map(|(_, id)| id)
        .collect();
    for call_id in &webhooks {
        harness.publish_raw(call_id).await;
    }
    harness.wait_enriched(40).await;
    harness.wait_consumer_drained().await;
    let before = harness.gong.stats();

    let window = || {
        options(
            start - chrono::Duration::hours(1),
            start + chrono::Duration::days(1),
        )
    };
    let first = sweep(&harness, &env, window()).await;
    assert_eq!(
        (first.listed, first.present, first.injected),
        (50, 40, 10),
        "{first:?}"
    );
    harness.wait_enriched(50).await;
    harness.wait_consumer_drained().await;

    // Every call enriched, none twice; the swept ones carry the history's data and a transcript.
    let enriched = by_call_id(&harness.enriched().await);
    assert_eq!(enriched.len(), 50);
    for call_id in &calls {
        let event = &enriched[call_id];
        assert!(event.transcript.as_ref().is_some_and(|t| !t.is_empty()));
    }
    let swept = &enriched[&calls[4]];
    let started = swept
        .call
        .meta_data
        .as_ref()
        .unwrap()
        .started
        .as_deref()
        .unwrap();
    assert_eq!(
        DateTime::parse_from_rfc3339(started).unwrap(),
        start + chrono::Duration::minutes(4)
    );
    // The raw events: one per call, the sweep's only for calls without a webhook, in the
    // webhook's shape.
    let raw = raw_by_call(&harness).await;
    assert_eq!(raw.len(), 50);
    for (n, call_id) in calls.iter().enumerate() {
        let expected = if n % 5 == 4 { (1, 1) } else { (1, 0) };
        assert_eq!(raw[call_id], expected, "call {call_id}");
    }
    let injected = harness
        .messages(names::STREAM_RAW)
        .await
        .into_iter()
        .find(|message| header(message, headers::SOURCE).is_some())
        .unwrap();
    let body: Webhook = serde_json::from_slice(&injected.payload).unwrap();
    assert!(!body.is_test);
    assert!(
        body.call_data.parties.is_some(),
        "the listing's extensive data"
    );

    // Economy: one listing page; the swept calls were not fetched again, only their
    // transcripts (at most one batch each of what the enricher pulled).
    let after = harness.gong.stats();
    let listings = after.list_requests() - before.list_requests();
    assert_eq!(listings, 1);
    assert_eq!(
        after.requests_to(EXTENSIVE_PATH) - before.requests_to(EXTENSIVE_PATH),
        listings,
        "no extensive request by id for swept calls"
    );
    assert!(after.requests_to(TRANSCRIPT_PATH) - before.requests_to(TRANSCRIPT_PATH) <= 2);
    assert_eq!(after.violations(), 0);

    // A second sweep of the same window finds everything present.
    let second = sweep(&harness, &env, window()).await;
    assert_eq!(
        (second.listed, second.present, second.injected),
        (50, 50, 0),
        "{second:?}"
    );
    assert_eq!(harness.count(names::STREAM_RAW).await, 50);
}

#[tokio::test]
async fn a_dry_run_counts_and_publishes_nothing() {
    let harness = Harness::start(50, 100_000).await;
    let env = harness.env(50);
    let start = Utc::now() - chrono::Duration::days(2);
    let calls = history(&harness, 3_100_000_000, 12, start);
    harness.publish_raw(&calls[0]).await;
    let summary = sweep(
        &harness,
        &env,
        SweepOptions {
            dry_run: true,
            ..options(start, start + chrono::Duration::hours(1))
        },
    )
    .await;
    // Nothing enriched the webhook yet: nothing is present.
    assert_eq!(
        (summary.listed, summary.present, summary.injected),
        (12, 0, 0)
    );
    assert_eq!(summary.would_inject, 12);
    assert_eq!(harness.count(names::STREAM_RAW).await, 1);
    // An empty window is Gong's 404: a clean, empty sweep.
    let empty = sweep(
        &harness,
        &env,
        options(
            start - chrono::Duration::days(30),
            start - chrono::Duration::days(29),
        ),
    )
    .await;
    assert_eq!((empty.listed, empty.injected, empty.pages), (0, 0, 1));
}

#[tokio::test]
async fn a_webhook_racing_the_sweep_costs_one_extra_enrichment_never_a_lost_call() {
    let harness = Harness::start(50, 100_000).await;
    let env = harness.env(50);
    let start = Utc::now() - chrono::Duration::days(1);
    let calls = history(&harness, 3_200_000_000, 20, start);
    // The webhooks are in GONG_RAW but no enricher has taken them yet when the sweep runs.
    for call_id in &calls {
        harness.publish_raw(call_id).await;
    }
    let summary = sweep(
        &harness,
        &env,
        options(start, start + chrono::Duration::hours(1)),
    )
    .await;
    assert_eq!((summary.listed, summary.injected), (20, 20));
    let _enricher = harness.enricher(harness.config(&env)).await;
    harness.wait_enriched(40).await;
    harness.wait_consumer_drained().await;
    let mut per_call: HashMap<String, usize> = HashMap::new();
    for (_, event) in harness.enriched().await {
        *per_call
            .entry(event.call_id().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(per_call.len(), 20, "no call lost");
    assert!(per_call.values().all(|count| *count == 2), "{per_call:?}");
    // Now both are recorded: the next sweep injects nothing.
    let again = sweep(
        &harness,
        &env,
        options(start, start + chrono::Duration::hours(1)),
    )
    .await;
    assert_eq!(again.injected, 0);
}

#[tokio::test]
async fn a_continuous_mode_service_finds_calls_on_its_own() {
    let harness = Harness::start(50, 100_000).await;
    let mut env = harness.env(50);
    env.set("ENRICH_SWEEP_INTERVAL", "2s");
    env.set("ENRICH_SWEEP_LOOKBACK", "72h");
    let now = Utc::now();
    let first = history(
        &harness,
        3_300_000_000,
        30,
        now - chrono::Duration::hours(3),
    );
    let enricher = harness.enricher(harness.config(&env)).await;
    harness.wait_enriched(30).await;
    // Calls that appear later are found by a later sweep, with no webhook at all.
    let later = history(
        &harness,
        3_400_000_000,
        5,
        now - chrono::Duration::minutes(30),
    );
    harness.wait_enriched(35).await;
    harness.wait_consumer_drained().await;
    let enriched = by_call_id(&harness.enriched().await);
    for call_id in first.iter().chain(&later) {
        assert!(enriched.contains_key(call_id), "{call_id} found");
    }
    let raw = raw_by_call(&harness).await;
    assert!(
        raw.values()
            .all(|(events, swept)| *events == 1 && *swept == 1),
        "{raw:?}"
    );
    // The gauges say when the deployment last swept, as the server's clock tells.
    let url = format!("http://{}/metrics", enricher.running.admin_addr);
    wait_until(TIMEOUT, "sweep gauges", || {
        let url = url.clone();
        async move {
            let body = reqwest::get(&url).await.ok()?.text().await.ok()?;
            let value = |series: &str| -> Option<f64> {
                body.lines()
                    .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            };
            let last = value("gong_enrich_sweep_last_success_timestamp_seconds")?;
            let near = (last - Utc::now().timestamp() as f64).abs() < 3600.0;
            (near
                && value("gong_enrich_sweep_last_calls{result=\"listed\"}")? >= 0.0
                && value("gong_enrich_sweep_calls_total{result=\"injected\"}")? >= 35.0
                && body.contains("gong_enrich_transcripts_pending_recheck"))
            .then_some(())
        }
    })
    .await;
    assert_eq!(harness.gong.stats().violations(), 0);
}

#[tokio::test]
async fn a_killed_sweep_resumes_without_listing_done_pages_again() {
    let harness = Harness::start_with(GongDoubleConfig {
        rate_per_second: 2,
        page_size: 10,
        ..GongDoubleConfig::default()
    })
    .await;
    let mut env = harness.env(2);
    env.set("ENRICH_SWEEP_LEASE_TTL", "2s");
    let start = Utc::now() - chrono::Duration::days(3);
    let calls = history(&harness, 3_500_000_000, 100, start);
    let window = || options(start, start + chrono::Duration::days(1));
    let checkpoint = Checkpoint::open(
        &harness.jetstream,
        &gong_common::streams::StreamSettings::default(),
        SweepKind::Command,
    )
    .await
    .unwrap();

    // Killed mid-pages: the task is aborted (its lease is not released, as with a SIGKILL).
    let killed = tokio::spawn(gong_enrich::sweep(
        harness.config(&env),
        window(),
        CancellationToken::new(),
    ));
    wait_until(TIMEOUT, "three pages checkpointed", || async {
        let read = checkpoint.read().await.ok()?;
        (read.state.counts.pages >= 3).then_some(())
    })
    .await;
    killed.abort();
    let _ = killed.await;
    let at_kill = checkpoint.read().await.unwrap().state;
    assert!(at_kill.unfinished());
    let done_pages = at_kill.counts.pages as usize;
    let listed_before = harness.gong.stats().listed_pages.len();
    assert!(listed_before >= done_pages && listed_before <= done_pages + 1);

    let resumed = sweep(&harness, &env, window()).await;
    let listed = harness.gong.stats().listed_pages;
    // The resumed run started at the checkpoint's cursor: no page already done was listed again.
    assert_eq!(listed[listed_before].offset, done_pages * 10, "{listed:?}");
    assert!(resumed.resumed);
    assert_eq!(
        resumed.listed, 100,
        "the counts include the killed run's pages"
    );
    let offsets: Vec<usize> = listed.iter().map(|page| page.offset).collect();
    let distinct: HashSet<usize> = offsets.iter().copied().collect();
    assert_eq!(distinct.len(), 10);
    assert!(
        offsets.len() <= 11,
        "at most the page in flight twice: {offsets:?}"
    );
    // Every call injected exactly once.
    let raw = raw_by_call(&harness).await;
    assert_eq!(raw.len(), 100);
    for call_id in &calls {
        assert_eq!(raw[call_id], (1, 1), "call {call_id}");
    }
    assert!(!checkpoint.read().await.unwrap().state.unfinished());
}

#[tokio::test]
async fn two_replicas_sweeping_at_once_inject_each_call_once() {
    let harness = Harness::start(50, 100_000).await;
    let mut env = harness.env(50);
    env.set("ENRICH_SWEEP_INTERVAL", "1h");
    let now = Utc::now();
    let calls = history(
        &harness,
        3_600_000_000,
        60,
        now - chrono::Duration::hours(2),
    );
    let (_first, _second) = tokio::join!(
        harness.enricher(harness.config(&env)),
        harness.enricher(harness.config(&env))
    );
    harness.wait_enriched(60).await;
    harness.wait_consumer_drained().await;
    // Two command sweeps at once as well: one waits for the other's lease, then finds all present.
    let window = || options(now - chrono::Duration::hours(3), now);
    let (a, b) = tokio::join!(
        sweep(&harness, &env, window()),
        sweep(&harness, &env, window())
    );
    assert_eq!(a.injected + b.injected, 0, "{a:?} {b:?}");
    assert_eq!((a.listed, b.listed), (60, 60));
    let raw = raw_by_call(&harness).await;
    assert_eq!(raw.len(), 60);
    for call_id in &calls {
        assert_eq!(raw[call_id], (1, 1), "call {call_id}");
    }
    assert_eq!(by_call_id(&harness.enriched().await).len(), 60);
    // One continuous sweep for the deployment, not one per replica.
    assert_eq!(harness.gong.stats().list_requests(), 1 + 2);
}

#[tokio::test]
async fn two_command_sweeps_at_once_inject_each_call_once() {
    let harness = Harness::start(50, 100_000).await;
    let env = harness.env(50);
    let start = Utc::now() - chrono::Duration::days(4);
    let calls = history(&harness, 3_700_000_000, 40, start);
    let window = || options(start, start + chrono::Duration::days(1));
    let (a, b) = tokio::join!(
        sweep(&harness, &env, window()),
        sweep(&harness, &env, window())
    );
    assert_eq!(a.injected + b.injected, 40, "{a:?} {b:?}");
    let raw = raw_by_call(&harness).await;
    for call_id in &calls {
        assert_eq!(raw[call_id], (1, 1), "call {call_id}");
    }
}

#[tokio::test]
async fn a_late_transcript_arrives_after_a_recheck() {
    let harness = Harness::start(50, 100_000).await;
    let mut env = harness.env(50);
    env.set("ENRICH_TRANSCRIPT_RECHECK", "1s,2s,3s");
    let late = "3800000001";
    let never = "3800000002";
    let on_time = "3800000003";
    harness.gong.hold_transcript(late);
    harness.gong.hold_transcript(never);
    let _enricher = harness.enricher(harness.config(&env)).await;
    for call_id in [late, never, on_time] {
        harness.publish_raw(call_id).await;
    }
    harness.wait_enriched(3).await;
    harness.wait_consumer_drained().await;
    let rechecks = gong_enrich::rechecks::Rechecks::open(
        &harness.jetstream,
        &gong_common::streams::StreamSettings::default(),
        Vec::new(),
    )
    .await
    .unwrap();
    let first = by_call_id(&harness.enriched().await);
    assert!(first[late].transcript.is_none());
    assert!(first[on_time].transcript.is_some());
    let pending = rechecks.get(late).await.unwrap().expect("recheck recorded");
    assert_eq!(pending.raw_event_id, first[late].raw_event_id);
    assert!(rechecks.get(on_time).await.unwrap().is_none());

    // A recheck that still finds nothing (the first answer and one recheck were empty)...
    wait_until(TIMEOUT, "a recheck made", || async {
        (harness.gong.stats().empty_transcripts_served >= 4).then_some(())
    })
    .await;
    // ... then the transcript appears, and a later recheck brings it.
    harness.gong.release_transcript(late);
    harness.wait_enriched(4).await;
    let events = harness.enriched().await;
    let (message, event) = events.last().unwrap();
    assert_eq!(event.call_id(), Some(late));
    assert!(event.transcript.as_ref().is_some_and(|t| !t.is_empty()));
    assert_eq!(event.raw_event_id, first[late].raw_event_id);
    assert_ne!(event.event_id, first[late].event_id);
    assert_eq!(event.call, first[late].call, "the call as first enriched");
    assert_eq!(
        header(message, headers::SOURCE),
        Some(headers::SOURCE_TRANSCRIPT_RECHECK)
    );
    wait_until(TIMEOUT, "the late call's record gone", || async {
        rechecks.get(late).await.ok()?.is_none().then_some(())
    })
    .await;
    // The one that never gets a transcript is given up after the last recheck: no dead letter,
    // no further event.
    wait_until(TIMEOUT, "the missing call's record gone", || async {
        rechecks.get(never).await.ok()?.is_none().then_some(())
    })
    .await;
    assert_eq!(harness.count(names::STREAM_DLQ).await, 0);
    let per_call = harness
        .enriched()
        .await
        .into_iter()
        .filter(|(_, event)| event.call_id() == Some(never))
        .count();
    assert_eq!(per_call, 1);
    assert!(rechecks.pending().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_webhook_is_not_held_behind_a_batch_of_swept_calls() {
    let harness = Harness::start(50, 100_000).await;
    let mut env = harness.env(50);
    env.set("ENRICH_HTTP_TIMEOUT", "60s");
    let start = Utc::now() - chrono::Duration::days(2);
    let swept = history(&harness, 3_900_000_000, 10, start);
    let summary = sweep(
        &harness,
        &env,
        options(start, start + chrono::Duration::hours(1)),
    )
    .await;
    assert_eq!(summary.injected, 10);
    // The swept batch's transcript request is the enricher's first: Gong answers it slowly.
    harness.gong.set_fault(
        gong_testkit::gong_double::Fault::Slow(std::time::Duration::from_secs(20)),
        1,
    );
    let _enricher = harness.enricher(harness.config(&env)).await;
    wait_until(TIMEOUT, "the swept batch's request in flight", || async {
        (harness.gong.stats().in_flight >= 1).then_some(())
    })
    .await;
    harness.publish_raw("3900000099").await;
    harness.wait_enriched(1).await;
    let enriched = harness.enriched().await;
    assert_eq!(
        enriched[0].1.call_id(),
        Some("3900000099"),
        "the webhook went first"
    );
    assert_eq!(
        harness.gong.stats().in_flight,
        1,
        "the swept batch still waits for Gong"
    );
    harness.wait_enriched(11).await;
    let enriched = by_call_id(&harness.enriched().await);
    assert!(swept.iter().all(|call_id| enriched.contains_key(call_id)));
}
