//! A three-node JetStream cluster (streams and KV buckets with three replicas) loses a node
//! under load: the node leading GONG_RAW is killed while webhooks flow. gong-ingest keeps
//! answering 2xx (a few 503s while a new leader is elected are retried by the sender, as Gong
//! might), and every 2xx'd event is staged exactly once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use gong_common::names;
use gong_testkit::cluster::NatsCluster;

use crate::support::pipeline::{
    both, leader_of, poll, stream_messages, wait_drained, Options, Pipeline, StageTarget,
};
use crate::support::sender::{answer_counts, call_ids, Delivery, Sender, Traffic};
use crate::support::stage::{assert_clean, read_local, Verdict};
use crate::support::{first_call_id, report, scaled};

/// The longest time between two consecutive 2xx answers: how long ingest was unavailable
/// to a sender that retries.
fn longest_gap(deliveries: &[Delivery]) -> Duration {
    let mut ends: Vec<Instant> = deliveries
        .iter()
        .flat_map(|delivery| &delivery.attempts)
        .filter(|attempt| matches!(attempt.status, Some(200..=299)))
        .map(|attempt| attempt.ended)
        .collect();
    ends.sort();
    ends.windows(2)
        .map(|pair| pair[1].duration_since(pair[0]))
        .max()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_a_node_of_a_three_node_cluster_loses_nothing() {
    let webhooks = scaled(400usize, 1500);
    // Short: the GONG_RAW leader is killed once and stays down. Long: three rounds of
    // kill-the-leader, let traffic flow, bring it back.
    let rounds = scaled(1usize, 3);

    let mut cluster = NatsCluster::start(3);
    cluster.wait_jetstream(Duration::from_secs(60)).await;
    let root = tempfile::tempdir().expect("tempdir");
    let stage = root.path().join("stage");
    let mut options = Options::new(cluster.urls(), StageTarget::Local(stage.clone()));
    options.replicas = 3;
    let pipeline = Pipeline::start(options).await;
    let jetstream = jetstream::new(cluster.client().await);

    let sender = Arc::new(Sender::new(pipeline.ingest.webhook_url()));
    let traffic = Traffic::start(
        sender,
        call_ids(first_call_id(), webhooks),
        4,
        scaled(Duration::from_millis(80), Duration::from_millis(100)),
    );
    let mut killed = Vec::new();
    for round in 0..rounds {
        let progress_mark = webhooks * (2 * round + 1) / (2 * rounds + 1);
        traffic.wait_accepted(progress_mark, webhooks).await;
        let leader = poll(Duration::from_secs(30), "GONG_RAW to have a leader", || {
            leader_of(&jetstream, names::STREAM_RAW)
        })
        .await
        .unwrap_or_else(|reason| panic!("{reason}; logs {:?}", cluster.log_paths()));
        cluster.stop_node(leader);
        killed.push(leader);
        if round + 1 < rounds {
            // Traffic goes on without the node, then it comes back and catches up.
            let next_mark = webhooks * (2 * round + 2) / (2 * rounds + 1);
            traffic.wait_accepted(next_mark, webhooks).await;
            cluster.start_node(leader);
        }
    }

    let deliveries = traffic.finish().await;
    let drained = wait_drained(&jetstream, &deliveries, || async { read_local(&stage) }).await;
    let staged = read_local(&stage);
    let verdict = Verdict::of(&deliveries, &staged);
    if let Err(reason) = drained {
        panic!(
            "{reason}: {}; consumers {:?}; nats logs {:?}\n{}",
            verdict.line(),
            both(&jetstream).await,
            cluster.log_paths(),
            pipeline.explain()
        );
    }
    let dead_letters = stream_messages(&jetstream, names::STREAM_DLQ).await;
    let (ok, unavailable, transport, other) = answer_counts(&deliveries);
    let gap = longest_gap(&deliveries);
    report(
        "cluster",
        serde_json::json!({
            "webhooks": webhooks,
            "nodes_killed": killed,
            "accepted": verdict.accepted,
            "missing": verdict.missing.len(),
            "duplicate_events": verdict.duplicate_events.len(),
            "duplicate_calls": verdict.duplicate_calls.len(),
            "staged_without_2xx": verdict.staged_without_2xx,
            "answers_2xx": ok,
            "answers_503": unavailable,
            "transport_errors": transport,
            "other_answers": other,
            "longest_gap_between_2xx_s": gap.as_secs_f64(),
            "dead_letters": dead_letters,
            "strays": staged.strays.len() + staged.unreadable.len(),
        }),
    );

    assert_eq!(other, 0, "answers other than 2xx/503");
    assert_eq!(
        verdict.accepted,
        webhooks,
        "every webhook is answered 2xx in the end ({})",
        verdict.line()
    );
    assert_clean(&verdict, &staged, "cluster", &pipeline.explain());
    assert_eq!(dead_letters, 0);
    assert_eq!(pipeline.gong.stats().violations(), 0);
}
