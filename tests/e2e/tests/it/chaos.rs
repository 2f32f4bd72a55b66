//! Chaos: signed webhooks flow through the whole pipeline while gong-enrich and gong-load are
//! SIGKILLed at random moments and restarted. Every webhook answered 2xx must end up on the
//! stage exactly once (guarantees 1 and 2 of shared/design.md §4), without a dead letter, and
//! the Gong quota is never exceeded (guarantee 4).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use gong_common::names;
use gong_testkit::NatsServer;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::support::content;
use crate::support::pipeline::{
    both, stream_messages, wait_consumers_drained, Options, Pipeline, StageTarget,
};
use crate::support::process::Kind;
use crate::support::sender::{answer_counts, call_ids, last_answer, Sender, Traffic};
use crate::support::stage::{assert_clean, read_local, read_local_files, Verdict};
use crate::support::stream::{read_enriched, read_manifest, RangeRecord};
use crate::support::{first_call_id, report, scaled, seed};

/// Waits (at most 5 s) until the manifest records a range as pending: a loader just claimed (or
/// took over) a range and is about to write it. Returns whether it saw one.
async fn claim_seen(jetstream: &jetstream::Context) -> bool {
    let Ok(bucket) = jetstream.get_key_value(names::BUCKET_LOAD_RANGES).await else {
        return false;
    };
    let Ok(mut watch) = bucket.watch("range.>").await else {
        return false;
    };
    let pending = async {
        while let Some(Ok(entry)) = watch.next().await {
            let state = serde_json::from_slice::<serde_json::Value>(&entry.value)
                .ok()
                .and_then(|json| json.get("state")?.as_str().map(str::to_string));
            if entry.operation == kv::Operation::Put && state.as_deref() == Some("pending") {
                return true;
            }
        }
        false
    };
    tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .unwrap_or(false)
}

/// Ranges a SIGKILLed loader left pending, as the manifest showed them right after the kill
/// (with one loader, every pending range then belongs to a dead process), and what became of
/// them.
#[derive(Default)]
struct Orphans {
    /// First sequence → the record as the kill left it.
    at_kill: BTreeMap<u64, RangeRecord>,
}

impl Orphans {
    /// Records the pending ranges of a manifest read right after a kill; true when one of them
    /// has an owner not seen before (the process just killed held a range: a mid-range kill).
    fn note(&mut self, manifest: &BTreeMap<u64, RangeRecord>) -> bool {
        let known: BTreeSet<String> = self
            .at_kill
            .values()
            .map(|record| record.owner.clone())
            .collect();
        let mut new_owner = false;
        for record in manifest.values().filter(|record| record.state == "pending") {
            new_owner |= !known.contains(&record.owner);
            self.at_kill
                .entry(record.first)
                .or_insert_with(|| record.clone());
        }
        new_owner
    }

    /// `(taken over, finished by the killed owner's own last write, never completed)` against
    /// the final manifest. "Taken over" = done, and marked so by another process than the one
    /// that held it when it was killed.
    #[allow(clippy::type_complexity)]
    fn outcome(
        &self,
        manifest: &BTreeMap<u64, RangeRecord>,
    ) -> (Vec<&RangeRecord>, Vec<&RangeRecord>, Vec<&RangeRecord>) {
        let (mut taken_over, mut own, mut open) = (Vec::new(), Vec::new(), Vec::new());
        for orphan in self.at_kill.values() {
            match manifest.get(&orphan.first) {
                Some(now) if now.state == "done" && now.owner != orphan.owner => {
                    taken_over.push(orphan)
                }
                Some(now) if now.state == "done" => own.push(orphan),
                _ => open.push(orphan),
            }
        }
        (taken_over, own, open)
    }
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
    let mut strikes_at_claim = 0usize;
    let mut kills_mid_range = 0usize;
    let mut orphans = Orphans::default();
    let mut first_load_kill = true;
    for victim in victims {
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..1500))).await;
        // Half the loader kills (always the first) strike the moment the manifest shows a
        // claim: the loader is then writing the range, claimed and unacknowledged.
        let at_claim = victim == Kind::Load && (first_load_kill || rng.random_bool(0.5));
        if at_claim {
            strikes_at_claim += usize::from(claim_seen(&jetstream).await);
        }
        let service = match victim {
            Kind::Enrich => pipeline.enrich_mut(),
            _ => pipeline.load_mut(),
        };
        service.kill();
        if victim == Kind::Load {
            first_load_kill = false;
            // The loader is dead: whatever it left pending must be completed by another
            // process (the restarted loader has a new owner id).
            match read_manifest(&jetstream).await {
                Ok(manifest) => kills_mid_range += usize::from(orphans.note(&manifest)),
                Err(reason) => panic!("chaos (seed {seed}): manifest unreadable: {reason}"),
            }
        }
        let service = match victim {
            Kind::Enrich => pipeline.enrich_mut(),
            _ => pipeline.load_mut(),
        };
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
    // Until the last answer, not until now: the fault schedule may outlast the traffic.
    let sent_for = last_answer(&deliveries)
        .map_or_else(|| started.elapsed(), |last| last.duration_since(started));
    // Drained consumers, not "everything on the stage": a loader that staged a range short
    // acked it all the same, and the checks below must say which file lacks what.
    let drained = wait_consumers_drained(&jetstream).await;
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
    // Each file holds exactly its range's events, in every table (support::content).
    let enriched = read_enriched(&jetstream)
        .await
        .unwrap_or_else(|reason| panic!("chaos (seed {seed}): {reason}"));
    let content = content::check(&enriched, &read_local_files(&stage));
    let manifest = read_manifest(&jetstream)
        .await
        .unwrap_or_else(|reason| panic!("chaos (seed {seed}): {reason}"));
    let (taken_over, finished_by_owner, never_completed) = orphans.outcome(&manifest);
    let dead_letters = stream_messages(&jetstream, names::STREAM_DLQ).await;
    let gong = pipeline.gong.stats();
    let (ok, unavailable, transport, other) = answer_counts(&deliveries);
    report(
        "chaos",
        serde_json::json!({
            "seed": seed,
            "webhooks": webhooks,
            "enrich_kills": pipeline.enrich().kills,
            "load_kills": pipeline.load().kills,
            "load_strikes_at_claim": strikes_at_claim,
            "load_kills_mid_range": kills_mid_range,
            "ranges_orphaned": orphans.at_kill.len(),
            "ranges_taken_over": taken_over.len(),
            "orphans_finished_by_owner": finished_by_owner.len(),
            "orphans_still_pending": never_completed.len(),
            "content_problems": content.problems.len(),
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
            "load_takeovers": pipeline.load().log_count("taking over a pending range"),
            "gong_requests": gong.call_requests(),
            "gong_violations": gong.violations(),
            "sent_s": sent_for.as_secs_f64(),
            "settled_s": settled_after.as_secs_f64(),
        }),
    );

    assert!(
        content.problems.is_empty(),
        "chaos (seed {seed}): staged files differ from their GONG_ENRICHED ranges:\n{}\n{}",
        content::first_problems(&content.problems, 20),
        pipeline.explain()
    );
    assert_eq!(
        verdict.accepted,
        webhooks,
        "ingest was never disturbed: every webhook is answered 2xx ({})",
        verdict.line()
    );
    assert_clean(&verdict, &staged, "chaos", &pipeline.explain());
    assert_eq!(verdict.staged_without_2xx, 0, "{}", verdict.line());
    // A file in every table the events have rows in (gong-load's own row builder says which).
    let tables_with_rows: BTreeSet<String> = gong_load::schema::Table::ALL
        .into_iter()
        .filter(|table| {
            enriched
                .events
                .values()
                .any(|entry| entry.rows[table.index()] > 0)
        })
        .map(|table| table.name().to_string())
        .collect();
    assert_eq!(
        staged
            .files_per_table
            .keys()
            .cloned()
            .collect::<BTreeSet<_>>(),
        tables_with_rows,
        "files of every table with rows: {:?}",
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
    assert!(pipeline.enrich().kills >= kills_each && pipeline.load().kills >= kills_each);
    // The schedule must have produced what this test exists for; otherwise it passed vacuously.
    assert!(
        kills_mid_range > 0,
        "chaos (seed {seed}): precondition failed: no loader SIGKILL left a claimed range \
         pending ({strikes_at_claim} strikes timed on a claim, {} loader kills), so no takeover \
         was tested; rerun with another seed and look at why claims are not seen",
        pipeline.load().kills
    );
    assert!(
        !taken_over.is_empty(),
        "chaos (seed {seed}): precondition failed: of the {} ranges killed loaders left pending, \
         none was completed by another process (finished by the killed owner's last write: \
         {finished_by_owner:?}; still pending: {never_completed:?})\n{}",
        orphans.at_kill.len(),
        pipeline.explain()
    );
}
