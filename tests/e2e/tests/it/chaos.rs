//! Chaos: signed webhooks flow through the whole pipeline while gong-enrich and gong-load are
//! SIGKILLed at random moments and restarted. Every webhook answered 2xx must end up on the
//! stage exactly once (guarantees 1 and 2 of shared/design.md §4), without a dead letter, and
//! the Gong quota is never exceeded (guarantee 4).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gong_common::names;
use gong_testkit::NatsServer;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::support::pipeline::{
    both, stream_messages, wait_drained, Options, Pipeline, StageTarget,
};
use crate::support::process::Kind;
use crate::support::sender::{answer_counts, call_ids, Sender, Traffic};
use crate::support::stage::{assert_clean, read_local, Verdict};
use crate::support::{first_call_id, report, scaled, seed};

/// Files (complete or not) under `<stage>/calls/`, every day.
fn calls_files(stage: &Path) -> usize {
    std::fs::read_dir(stage.join("calls"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|day| std::fs::read_dir(day.path()).ok())
        .map(|files| files.count())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_enrich_and_load_lose_and_duplicate_nothing() {
    let seed = seed();
    eprintln!("chaos seed {seed} (E2E_SEED={seed} replays this schedule)");
    let mut rng = StdRng::seed_from_u64(seed);
    let webhooks = scaled(500usize, 2000);
    let kills_each = scaled(3usize, 10);
    // Spread the webhooks over a few seconds (8 senders) so kills land while events flow.
    let pace = scaled(Duration::from_millis(90), Duration::from_millis(100));

    let nats = NatsServer::start_new();
    let root = tempfile::tempdir().expect("tempdir");
    let stage = root.path().join("stage");
    // Small batches and small files: many flushes and claims, so kills land mid-range.
    let options = Options::new(nats.url(), StageTarget::Local(stage.clone()))
        .with(Kind::Enrich, "ENRICH_BATCH_SIZE", "50")
        .with(Kind::Load, "LOAD_FLUSH_MAX_ROWS", "25");
    let mut pipeline = Pipeline::start(options).await;
    let jetstream = nats.jetstream().await;
    let started = Instant::now();
    let sender = Arc::new(Sender::new(pipeline.ingest.webhook_url()));
    let traffic = Traffic::start(sender, call_ids(first_call_id(), webhooks), 8, pace);

    // The chaos schedule: each victim gets `kills_each` SIGKILLs, in random order, at random
    // moments. The pauses below choose *when* to strike; they never wait for state.
    let mut victims: Vec<Kind> = std::iter::repeat_n(Kind::Enrich, kills_each)
        .chain(std::iter::repeat_n(Kind::Load, kills_each))
        .collect();
    victims.shuffle(&mut rng);
    let mut acked_checks = 0usize;
    let mut kills_mid_range = 0usize;
    for victim in victims {
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..1500))).await;
        if victim == Kind::Load && rng.random_bool(0.5) {
            // Strike right after a new `calls` file appears: the loader is then uploading the
            // same range's other tables, so the range is half on the stage, claimed, unacked.
            let before = calls_files(&stage);
            let deadline = Instant::now() + Duration::from_secs(5);
            while calls_files(&stage) <= before && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            kills_mid_range += usize::from(Instant::now() < deadline);
        }
        let service = match victim {
            Kind::Enrich => &mut pipeline.enrich,
            _ => &mut pipeline.load,
        };
        service.kill();
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..600))).await;
        service.restart().await;
        // Whatever gong-load has acknowledged so far is durable on the stage.
        if let Some((_, load)) = both(&jetstream).await {
            let uncovered = read_local(&stage).uncovered_up_to(load.ack_floor);
            assert!(
                uncovered.is_empty(),
                "gong-load acked sequences {uncovered:?} (ack floor {}) that no staged calls file holds\n{}",
                load.ack_floor,
                pipeline.explain()
            );
            acked_checks += 1;
        }
    }

    let deliveries = traffic.finish().await;
    let sent_for = started.elapsed();
    let drained = wait_drained(&jetstream, &deliveries, || async { read_local(&stage) }).await;
    let staged = read_local(&stage);
    let verdict = Verdict::of(&deliveries, &staged);
    if let Err(reason) = drained {
        panic!(
            "{reason}: {}; consumers {:?}; first missing {:?}\n{}",
            verdict.line(),
            both(&jetstream).await,
            verdict.missing.iter().take(5).collect::<Vec<_>>(),
            pipeline.explain()
        );
    }
    let settled_after = started.elapsed();

    // A second, independent reader: gong-load's own inspect summary.
    let summary = gong_load::inspect::summary(&stage).expect("inspect summary");
    let dead_letters = stream_messages(&jetstream, names::STREAM_DLQ).await;
    let gong = pipeline.gong.stats();
    let (ok, unavailable, transport, other) = answer_counts(&deliveries);
    report(
        "chaos",
        serde_json::json!({
            "seed": seed,
            "webhooks": webhooks,
            "enrich_kills": pipeline.enrich.kills,
            "load_kills": pipeline.load.kills,
            "load_kills_mid_range": kills_mid_range,
            "accepted": verdict.accepted,
            "missing": verdict.missing.len(),
            "duplicate_events": verdict.duplicate_events.len(),
            "duplicate_calls": verdict.duplicate_calls.len(),
            "answers_2xx": ok,
            "answers_503": unavailable,
            "transport_errors": transport,
            "other_answers": other,
            "calls_files": staged.files_per_table.get("calls").copied().unwrap_or(0),
            "dead_letters": dead_letters,
            "strays": staged.strays.len() + staged.unreadable.len(),
            "load_takeovers": pipeline.load.log_count("taking over a pending range"),
            "gong_requests": gong.call_requests(),
            "gong_violations": gong.violations(),
            "sent_s": sent_for.as_secs_f64(),
            "settled_s": settled_after.as_secs_f64(),
        }),
    );

    assert_eq!(
        verdict.accepted,
        webhooks,
        "ingest was never disturbed: every webhook is answered 2xx ({})",
        verdict.line()
    );
    assert_clean(&verdict, &staged, "chaos", &pipeline.explain());
    assert_eq!(verdict.staged_without_2xx, 0, "{}", verdict.line());
    assert_eq!(
        staged.files_per_table.len(),
        6,
        "files of every table: {:?}",
        staged.files_per_table
    );
    assert!(
        staged.overlapping_ranges().is_empty(),
        "calls files with overlapping ranges: {:?}",
        staged.overlapping_ranges()
    );
    assert_eq!(
        (summary.distinct_events, summary.duplicate_event_rows),
        (webhooks, 0),
        "gong-load inspect --summary disagrees"
    );
    assert_eq!(dead_letters, 0, "nothing here deserves a dead letter");
    assert_eq!(
        gong.violations(),
        0,
        "the Gong quota was exceeded: {gong:?}"
    );
    assert!(acked_checks > 0, "the acked-implies-staged check never ran");
    assert!(pipeline.enrich.kills >= kills_each && pipeline.load.kills >= kills_each);
}
