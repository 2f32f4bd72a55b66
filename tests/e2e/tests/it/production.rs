//! The production topology under faults: a three-node JetStream cluster (streams and buckets at
//! three replicas), one gong-ingest, two gong-enrich and three gong-load, while signed webhooks
//! flow and loaders and enrichers are SIGKILLed at random (and restarted) and the node leading
//! GONG_ENRICHED is killed and restarted.
//!
//! Beyond "every 2xx'd call staged exactly once", it checks the invariant that makes Snowflake's
//! load-each-name-once safe: every staged file holds exactly the events GONG_ENRICHED holds in
//! its `gong_<first>-<last>` range (read from the stream leader, never a possibly stale direct
//! get), in every table, and no two files of a table overlap. Also: no 429 from Gong, no Gong
//! limit violation, no dead letter.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use gong_common::names;
use gong_testkit::cluster::NatsCluster;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::support::content::{self, short};
use crate::support::pipeline::{
    both, leader_of, poll, progress, stream_messages, wait_consumers_drained, Options, Pipeline,
    StageTarget,
};
use crate::support::process::Kind;
use crate::support::sender::{answer_counts, call_ids, last_answer, Sender, Traffic};
use crate::support::stage::{read_local, read_local_files, Verdict};
use crate::support::stream::{read_enriched, read_manifest, RangeRecord};
use crate::support::{first_call_id, report, scaled, seed};

/// One step of the fault schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// SIGKILL a random gong-load replica, restart it.
    Load,
    /// SIGKILL a random gong-enrich replica, restart it.
    Enrich,
    /// SIGKILL the nats-server leading GONG_ENRICHED.
    NatsDown,
    /// Start it again on the same ports and store.
    NatsUp,
}

/// `load` loader kills and `enrich` enricher kills in random order, with `rounds` pairs of
/// NATS node down/up spread evenly between them.
fn schedule(rng: &mut StdRng, load: usize, enrich: usize, rounds: usize) -> Vec<Fault> {
    let mut kills: Vec<Fault> = std::iter::repeat_n(Fault::Load, load)
        .chain(std::iter::repeat_n(Fault::Enrich, enrich))
        .collect();
    kills.shuffle(rng);
    let segments = 2 * rounds + 1;
    let mut faults = Vec::new();
    for segment in 0..segments {
        let from = kills.len() * segment / segments;
        let to = kills.len() * (segment + 1) / segments;
        faults.extend_from_slice(&kills[from..to]);
        if segment + 1 < segments {
            faults.push(if segment % 2 == 0 {
                Fault::NatsDown
            } else {
                Fault::NatsUp
            });
        }
    }
    faults
}

/// `line` without ANSI colour sequences (the stages log in the pretty format).
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... m
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Log lines (at most `max` per file) of `paths` with a field equal to `value` (`...=<value>`),
/// headed by the file.
fn grep_logs(paths: &[std::path::PathBuf], value: u64, max: usize) -> String {
    let needle = format!("={value}");
    let mut out = String::new();
    for path in paths {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let hits: Vec<String> = text
            .lines()
            .map(plain)
            .filter(|line| {
                line.match_indices(&needle).any(|(at, _)| {
                    !line[at + needle.len()..].starts_with(|c: char| c.is_ascii_digit())
                })
            })
            .collect();
        if hits.is_empty() {
            continue;
        }
        out.push_str(&format!(
            "    {} ({} lines with a field ={value}):\n",
            path.display(),
            hits.len()
        ));
        for line in hits.iter().take(max) {
            out.push_str(&format!("      {line}\n"));
        }
    }
    out
}

/// GONG_ENRICHED's state and replicas, and the `load` consumer, as one line each.
async fn stream_state(jetstream: &jetstream::Context) -> String {
    let mut out = String::new();
    match jetstream.get_stream(names::STREAM_ENRICHED).await {
        Ok(mut stream) => match stream.info().await {
            Ok(info) => {
                out.push_str(&format!(
                    "GONG_ENRICHED: messages {}, seqs {}..={}",
                    info.state.messages, info.state.first_sequence, info.state.last_sequence
                ));
                if let Some(cluster) = &info.cluster {
                    out.push_str(&format!(", leader {:?}, replicas [", cluster.leader));
                    for replica in &cluster.replicas {
                        out.push_str(&format!(
                            "{} current={} lag={:?} active={:?}; ",
                            replica.name, replica.current, replica.lag, replica.active
                        ));
                    }
                    out.push(']');
                }
                out.push('\n');
            }
            Err(err) => out.push_str(&format!("GONG_ENRICHED info: {err}\n")),
        },
        Err(err) => out.push_str(&format!("GONG_ENRICHED: {err}\n")),
    }
    out.push_str(&format!(
        "consumer load: {:?}\n",
        progress(jetstream, names::STREAM_ENRICHED, names::CONSUMER_LOAD).await
    ));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_topology_under_kills_stages_every_range_exactly() {
    let seed = seed();
    eprintln!("production seed {seed} (E2E_SEED={seed} replays this schedule)");
    let mut rng = StdRng::seed_from_u64(seed);
    let webhooks = scaled(1000usize, 5000);
    let (load_kills, enrich_kills, nats_rounds) = scaled((4usize, 2usize, 1usize), (16, 8, 2));
    // 8 senders: ~12 s of traffic (short), ~60 s (long), so the faults land while events flow.
    let pace = scaled(Duration::from_millis(80), Duration::from_millis(90));

    let mut cluster = NatsCluster::start(3);
    cluster.wait_jetstream(Duration::from_secs(60)).await;
    let root = tempfile::tempdir().expect("tempdir");
    let stage = root.path().join("stage");
    let mut options = Options::new(cluster.urls(), StageTarget::Local(stage.clone()))
        .with(Kind::Enrich, "ENRICH_BATCH_SIZE", "50")
        .with(Kind::Load, "LOAD_FLUSH_MAX_ROWS", "25");
    options.replicas = 3;
    options.enrich_replicas = 2;
    options.load_replicas = 3;
    let mut pipeline = Pipeline::start(options).await;
    let jetstream = jetstream::new(cluster.client().await);
    let started = Instant::now();
    let sender = Arc::new(Sender::new(pipeline.ingest.webhook_url()));
    let traffic = Traffic::start(sender, call_ids(first_call_id(), webhooks), 8, pace);

    // The fault schedule. The pauses choose *when* to strike; they never wait for state.
    let faults = schedule(&mut rng, load_kills, enrich_kills, nats_rounds);
    eprintln!("production schedule: {faults:?}");
    let mut nats_killed: Vec<usize> = Vec::new();
    let mut down: Option<usize> = None;
    let mut acked_checks = 0usize;
    let mut victims: Vec<String> = Vec::new();
    for fault in faults {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1500))).await;
        match fault {
            Fault::NatsDown => {
                let leader = poll(
                    Duration::from_secs(30),
                    "GONG_ENRICHED to have a leader",
                    || leader_of(&jetstream, names::STREAM_ENRICHED),
                )
                .await
                .unwrap_or_else(|reason| panic!("{reason}; logs {:?}", cluster.log_paths()));
                cluster.stop_node(leader);
                nats_killed.push(leader);
                down = Some(leader);
                victims.push(format!("nats-{leader} down"));
            }
            Fault::NatsUp => {
                if let Some(node) = down.take() {
                    cluster.start_node(node);
                    victims.push(format!("nats-{node} up"));
                }
            }
            Fault::Load | Fault::Enrich => {
                let replicas = match fault {
                    Fault::Load => &mut pipeline.loaders,
                    _ => &mut pipeline.enrichers,
                };
                let index = rng.random_range(0..replicas.len());
                let service = &mut replicas[index];
                victims.push(format!("{}-{index}", service.kind.binary_name()));
                service.kill();
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..600))).await;
                service.restart().await;
            }
        }
        // Whatever gong-load has acknowledged so far is durable on the stage.
        if let Some(load) = progress(&jetstream, names::STREAM_ENRICHED, names::CONSUMER_LOAD).await
        {
            let uncovered = read_local(&stage).uncovered_up_to(load.ack_floor);
            assert!(
                uncovered.is_empty(),
                "production (seed {seed}): gong-load acked sequences {} (ack floor {}) that no \
                 staged calls file holds\n{}",
                short(&uncovered),
                load.ack_floor,
                pipeline.explain()
            );
            acked_checks += 1;
        }
    }
    if let Some(node) = down.take() {
        cluster.start_node(node);
    }

    let deliveries = traffic.finish().await;
    // Until the last answer, not until now: the fault schedule may outlast the traffic.
    let sent_for = last_answer(&deliveries)
        .map_or_else(|| started.elapsed(), |last| last.duration_since(started));
    // Everything enriched and everything acknowledged by the loaders (acked ⇒ staged), not
    // "everything on the stage": a loader that stages a range short acks it all the same, and
    // the checks below must say which file lacks what rather than time out.
    let drained = wait_consumers_drained(&jetstream).await;
    let settled_after = started.elapsed();

    let enriched = read_enriched(&jetstream).await;
    let files = read_local_files(&stage);
    let staged = read_local(&stage);
    let verdict = Verdict::of(&deliveries, &staged);
    let manifest = read_manifest(&jetstream).await;
    let dead_letters = stream_messages(&jetstream, names::STREAM_DLQ).await;
    let gong = pipeline.gong.stats();
    let (ok, unavailable, transport, other) = answer_counts(&deliveries);
    let loader_logs: Vec<_> = pipeline
        .loaders
        .iter()
        .map(|service| service.log_path().to_path_buf())
        .collect();
    let takeovers: usize = pipeline
        .loaders
        .iter()
        .map(|service| service.log_count("taking over a pending range"))
        .sum();
    let lost_claims: usize = pipeline
        .loaders
        .iter()
        .map(|service| service.log_count("range claimed by another replica"))
        .sum();

    let mut problems: Vec<String> = Vec::new();
    if let Err(reason) = &drained {
        problems.push(format!("{reason}: consumers {:?}", both(&jetstream).await));
    }
    let content = match &enriched {
        Ok(enriched) => content::check(enriched, &files),
        Err(reason) => {
            problems.push(format!("GONG_ENRICHED could not be read: {reason}"));
            content::ContentReport::default()
        }
    };
    problems.extend(content.problems.iter().cloned());
    if verdict.accepted != webhooks {
        problems.push(format!(
            "{} of {webhooks} webhooks answered 2xx ({})",
            verdict.accepted,
            verdict.line()
        ));
    }
    if !verdict.exactly_once() {
        problems.push(format!(
            "not exactly once: {}; first missing event ids {:?}; duplicate events {:?}; \
             duplicate calls {:?}",
            verdict.line(),
            verdict.missing.iter().take(5).collect::<Vec<_>>(),
            verdict.duplicate_events.iter().take(5).collect::<Vec<_>>(),
            verdict.duplicate_calls.iter().take(5).collect::<Vec<_>>()
        ));
    }
    if !staged.strays.is_empty() {
        problems.push(format!("stray objects on the stage: {:?}", staged.strays));
    }
    if dead_letters > 0 {
        problems.push(format!(
            "{dead_letters} dead letters (nothing here deserves one)"
        ));
    }
    if gong.rate_limited_sent > 0 || gong.violations() > 0 {
        problems.push(format!(
            "Gong answered {} 429s and counted {} limit violations: {gong:?}",
            gong.rate_limited_sent,
            gong.violations()
        ));
    }
    if other > 0 {
        problems.push(format!("{other} answers other than 2xx/503"));
    }
    // The schedule really happened.
    let load_kills_done: usize = pipeline.loaders.iter().map(|service| service.kills).sum();
    let enrich_kills_done: usize = pipeline.enrichers.iter().map(|service| service.kills).sum();
    if load_kills_done < load_kills || enrich_kills_done < enrich_kills {
        problems.push(format!(
            "the schedule did not run: {load_kills_done}/{load_kills} loader kills, \
             {enrich_kills_done}/{enrich_kills} enricher kills"
        ));
    }
    if nats_killed.len() != nats_rounds || acked_checks == 0 {
        problems.push(format!(
            "the schedule did not run: NATS nodes killed {nats_killed:?} (wanted {nats_rounds}), \
             {acked_checks} acked-implies-staged checks"
        ));
    }
    let manifest = manifest.unwrap_or_else(|reason| {
        problems.push(format!("the range manifest could not be read: {reason}"));
        BTreeMap::new()
    });
    let still_pending: Vec<&RangeRecord> = manifest
        .values()
        .filter(|record| record.state != "done")
        .collect();

    report(
        "production",
        serde_json::json!({
            "seed": seed,
            "webhooks": webhooks,
            "enrich_replicas": pipeline.enrichers.len(),
            "load_replicas": pipeline.loaders.len(),
            "enrich_kills": enrich_kills_done,
            "load_kills": load_kills_done,
            "nats_nodes_killed": nats_killed,
            "faults": victims,
            "accepted": verdict.accepted,
            "missing": verdict.missing.len(),
            "duplicate_events": verdict.duplicate_events.len(),
            "duplicate_calls": verdict.duplicate_calls.len(),
            "staged_without_2xx": verdict.staged_without_2xx,
            "enriched_events": enriched.as_ref().map(|e| e.events.len()).unwrap_or(0),
            "files": content.files,
            "ranges": content.ranges,
            "rows_compared": content.rows,
            "bad_ranges": content.bad_ranges.len(),
            "content_problems": content.problems.len(),
            "manifest_ranges": manifest.len(),
            "manifest_pending": still_pending.len(),
            "load_takeovers": takeovers,
            "load_claims_lost": lost_claims,
            "answers_2xx": ok,
            "answers_503": unavailable,
            "transport_errors": transport,
            "other_answers": other,
            "dead_letters": dead_letters,
            "strays": staged.strays.len() + staged.unreadable.len(),
            "gong_requests": gong.call_requests(),
            "gong_429s": gong.rate_limited_sent,
            "gong_violations": gong.violations(),
            "sent_s": sent_for.as_secs_f64(),
            "settled_s": settled_after.as_secs_f64(),
            "outcome": if problems.is_empty() { "ok" } else { "FAILED" },
        }),
    );
    if problems.is_empty() {
        return;
    }

    // Explain: what the stream and the manifest say about each bad range, and where the logs are.
    let mut explain = format!(
        "production (seed {seed}; E2E_SEED={seed} replays the schedule) found {} problems:\n",
        problems.len()
    );
    explain.push_str(&content::first_problems(&problems, 40));
    explain.push('\n');
    explain.push_str(&stream_state(&jetstream).await);
    explain.push_str(&format!("faults in order: {victims:?}\n"));
    for &(first, last) in content.bad_ranges.iter().take(10) {
        let record = manifest.get(&first);
        explain.push_str(&format!(
            "  range {first}-{last}: manifest {record:?}\n{}",
            grep_logs(&loader_logs, first, 5)
        ));
    }
    if !still_pending.is_empty() {
        explain.push_str(&format!(
            "manifest records still pending: {}\n",
            short(&still_pending)
        ));
    }
    // Keep the NATS logs with the stage logs (the cluster's store dirs go with the test).
    for (index, path) in cluster.log_paths().iter().enumerate() {
        let _ = std::fs::copy(path, pipeline.dir.path().join(format!("nats-{index}.log")));
    }
    explain.push_str(&format!(
        "logs (kept): {}\n{}",
        pipeline.dir.path().display(),
        pipeline.explain()
    ));
    keep_stage(&stage, pipeline.dir.path());
    panic!("{explain}");
}

/// Moves the stage next to the kept logs, so a failure can be inspected
/// (`gong-load inspect <dir>/stage`).
fn keep_stage(stage: &Path, logs: &Path) {
    let _ = std::fs::rename(stage, logs.join("stage"));
}
