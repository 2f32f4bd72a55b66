//! Stages started together with a cluster that cannot serve JetStream yet (two of three nodes
//! still down, as when an operator applies everything at once): every stage waits, unready and
//! saying why, instead of exiting and being restarted with growing back-off; once the cluster
//! has its quorum they provision and the pipeline works.

use std::sync::Arc;
use std::time::Duration;

use gong_testkit::cluster::NatsCluster;

use crate::support::pipeline::{poll, wait_drained, Options, Pipeline, StageTarget};
use crate::support::sender::{call_ids, Sender, Traffic};
use crate::support::stage::{assert_clean, read_local, Verdict};
use crate::support::{first_call_id, report};

/// The `/readyz` body of a stage, or why it could not be read.
async fn readyz(url: &str) -> (u16, String) {
    match reqwest::get(format!("{url}/readyz")).await {
        Ok(response) => {
            let status = response.status().as_u16();
            (status, response.text().await.unwrap_or_default())
        }
        Err(err) => (0, err.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stages_started_before_the_cluster_has_a_quorum_wait_instead_of_exiting() {
    let mut cluster = NatsCluster::start(3);
    // Two nodes down before JetStream ever formed: no quorum, no meta leader.
    cluster.stop_node(1);
    cluster.stop_node(2);
    let root = tempfile::tempdir().expect("tempdir");
    let stage = root.path().join("stage");
    let mut options = Options::new(cluster.urls(), StageTarget::Local(stage.clone()));
    options.replicas = 3;
    options.enrich_replicas = 2;
    options.load_replicas = 2;
    let mut pipeline = Pipeline::spawn(options).await;

    // Every stage reports the provisioning fault on /readyz while it retries.
    let urls: Vec<String> = pipeline
        .services()
        .map(|service| service.admin_url())
        .collect();
    for url in &urls {
        poll(
            Duration::from_secs(60),
            "a provisioning fault on /readyz",
            || async {
                let (status, body) = readyz(url).await;
                (status == 503 && body.contains("provisioning")).then_some(())
            },
        )
        .await
        .unwrap_or_else(|reason| panic!("{reason} ({url})\n{}", pipeline.explain()));
    }
    // ... for a while: several retries later, none has exited.
    for service in pipeline.services() {
        let needle = "provisioning failed, retrying";
        poll(
            Duration::from_secs(60),
            "three provisioning retries",
            || async { (service.log_count(needle) >= 3).then_some(()) },
        )
        .await
        .unwrap_or_else(|reason| panic!("{reason}\n{}", service.log_tail(30)));
    }
    let exited: Vec<&'static str> = std::iter::once(&mut pipeline.ingest)
        .chain(pipeline.enrichers.iter_mut())
        .chain(pipeline.loaders.iter_mut())
        .filter_map(|service| (!service.is_running()).then_some(service.kind.binary_name()))
        .collect();
    assert!(
        exited.is_empty(),
        "exited without a quorum: {exited:?}\n{}",
        pipeline.explain()
    );

    // The quorum comes back: every stage provisions and becomes ready, and webhooks flow.
    cluster.start_node(1);
    cluster.start_node(2);
    for service in std::iter::once(&mut pipeline.ingest)
        .chain(pipeline.enrichers.iter_mut())
        .chain(pipeline.loaders.iter_mut())
    {
        if let Err(reason) = service.wait_ready(Duration::from_secs(120)).await {
            panic!("{reason}\n{}", service.log_tail(40));
        }
    }
    let jetstream = async_nats::jetstream::new(cluster.client().await);
    let webhooks = 50;
    let sender = Arc::new(Sender::new(pipeline.ingest.webhook_url()));
    let traffic = Traffic::start(
        sender,
        call_ids(first_call_id(), webhooks),
        2,
        Duration::from_millis(20),
    );
    let deliveries = traffic.finish().await;
    let drained = wait_drained(&jetstream, &deliveries, || async { read_local(&stage) }).await;
    let staged = read_local(&stage);
    let verdict = Verdict::of(&deliveries, &staged);
    if let Err(reason) = drained {
        panic!("{reason}: {}\n{}", verdict.line(), pipeline.explain());
    }
    report(
        "fresh_cluster",
        serde_json::json!({"webhooks": webhooks, "accepted": verdict.accepted}),
    );
    assert_eq!(verdict.accepted, webhooks);
    assert_clean(&verdict, &staged, "fresh_cluster", &pipeline.explain());
}
