//! What a range holds is decided by consistent reads, on the topology we ship (a 3-node
//! cluster, streams at 3 replicas); failures that no retry fixes are not retried for ever.

use std::time::Duration;

use async_nats::jetstream;
use gong_common::names;
use gong_common::streams::{ensure_streams, StreamKind, StreamSettings};
use gong_common::Env;
use gong_load::range_writer::{Ctx, Existing};
use gong_load::{LoadConfig, LoadError};
use gong_testkit::cluster::NatsCluster;
use tokio_util::sync::CancellationToken;

use crate::support::{event_json, publish, publish_events, Harness};

fn cluster_config(nats_url: String, stage: &std::path::Path) -> LoadConfig {
    LoadConfig::from_env(&Env::from_pairs([
        ("NATS_URL", nats_url),
        ("STREAM_REPLICAS", "3".to_string()),
        ("NATS_REQUEST_TIMEOUT", "5s".to_string()),
        ("STAGE_URL", format!("file://{}", stage.display())),
        (
            "LOAD_SPOOL_DIR",
            stage.with_extension("spool").display().to_string(),
        ),
    ]))
    .expect("config")
}

/// Reading a range back right after its last publish was acknowledged, the moment a loader
/// filling a gap reads it: every range holds its event. Direct gets on an R3 stream were
/// answered by followers that had not received the message yet, about 1.5% of the time,
/// and the range was then written empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_read_right_after_the_publish_ack_is_never_short() {
    let cluster = NatsCluster::start(3);
    cluster.wait_jetstream(Duration::from_secs(60)).await;
    let root = tempfile::tempdir().unwrap();
    let jetstream = jetstream::new(cluster.client().await);
    let settings = StreamSettings {
        replicas: 3,
        ..StreamSettings::default()
    };
    ensure_streams(
        &jetstream,
        &settings,
        &[StreamKind::Enriched, StreamKind::Dlq],
    )
    .await
    .unwrap();
    // The reader talks to a node that only follows GONG_ENRICHED: a direct get is then
    // answered by that node's replica (queue members on the local server are preferred).
    let mut stream = jetstream.get_stream(names::STREAM_ENRICHED).await.unwrap();
    let info = stream.info().await.unwrap();
    let leader = info
        .cluster
        .as_ref()
        .and_then(|cluster| cluster.leader.clone());
    let follower = (0..cluster.size())
        .find(|index| leader.as_deref() != Some(format!("gong-node-{index}").as_str()))
        .unwrap();
    let config = cluster_config(cluster.node(follower).url(), &root.path().join("stage"));
    let ctx: Ctx = gong_load::connect(config).await.expect("connect");
    let never = CancellationToken::new();
    let mut short = Vec::new();
    for index in 1..=400u64 {
        let seq = publish(&jetstream, &format!("ev-{index}"), event_json(index)).await;
        let staged = ctx
            .rewrite_range(seq, seq, &never, Existing::Keep)
            .await
            .expect("range");
        if staged.events != 1 {
            short.push(seq);
        }
    }
    assert!(
        short.is_empty(),
        "ranges written without their event: {short:?}"
    );
}

/// A spool file that vanished before its upload cannot be uploaded by retrying: the error
/// comes back (the loader then rebuilds the range from the stream) instead of a retry loop
/// that lasts until shutdown.
#[tokio::test]
async fn a_lost_spool_file_is_an_error_not_a_retry_loop() {
    let harness = Harness::new().await;
    publish_events(&harness.jetstream, 1, 3).await;
    let config = LoadConfig::from_env(&harness.env(&[])).unwrap();
    let ctx = gong_load::connect(config).await.unwrap();
    let spool = ctx.new_spool().unwrap();
    let spool = ctx.append_from_stream(spool, 1, 3).await.unwrap();
    let spooled = ctx.finish(spool, 1, 3).await.unwrap();
    std::fs::remove_file(&spooled.files[0].path).unwrap();
    let never = CancellationToken::new();
    let outcome = tokio::time::timeout(
        Duration::from_secs(60),
        ctx.upload_with_retry(&spooled, 1, 3, &[], &never, Existing::Keep),
    )
    .await
    .expect("upload_with_retry retried a missing spool file instead of failing");
    assert!(
        matches!(
            outcome,
            Err(LoadError::Stage(
                gong_load::stage::StageError::ReadSpool { .. }
            ))
        ),
        "{:?}",
        outcome.err()
    );
}

/// A spool directory that can never be written is not any message's fault: gong-load says so,
/// becomes unready and exits 1 instead of failing every flush for ever.
#[tokio::test]
async fn an_unwritable_spool_directory_stops_the_loader_with_exit_code_1() {
    let harness = Harness::new().await;
    let not_a_dir = harness.root.path().join("a-file");
    std::fs::write(&not_a_dir, b"x").unwrap();
    let spool = not_a_dir.join("spool").display().to_string();
    let loader = harness
        .spawn_loader_process(&[("LOAD_SPOOL_DIR", spool.as_str())])
        .await;
    publish_events(&harness.jetstream, 1, 2).await;
    let status = loader.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(1), "gong-load exited with {status}");
}
