use std::time::Duration;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use gong_common::names;
use gong_common::streams::{
    ensure_kv, ensure_pull_consumer, ensure_streams, StreamKind, StreamSettings,
};
use gong_testkit::NatsServer;

#[tokio::test]
async fn streams_are_created_idempotently_and_limits_follow_config() {
    let nats = NatsServer::start_new();
    let jetstream = nats.jetstream().await;
    let settings = StreamSettings::default();
    ensure_streams(&jetstream, &settings, &StreamKind::ALL)
        .await
        .unwrap();
    ensure_streams(&jetstream, &settings, &StreamKind::ALL)
        .await
        .unwrap();
    let mut raw = jetstream.get_stream(names::STREAM_RAW).await.unwrap();
    let info = raw.info().await.unwrap();
    assert_eq!(info.config.subjects, vec![names::SUBJECTS_RAW.to_string()]);
    assert_eq!(
        info.config.storage,
        async_nats::jetstream::stream::StorageType::File
    );

    let changed = StreamSettings {
        raw_max_age: Duration::from_secs(7 * 24 * 3600),
        duplicate_window: Duration::from_secs(600),
        ..settings
    };
    ensure_streams(&jetstream, &changed, &[StreamKind::Raw])
        .await
        .unwrap();
    let info = raw.info().await.unwrap();
    assert_eq!(info.config.max_age, Duration::from_secs(7 * 24 * 3600));
    assert_eq!(info.config.duplicate_window, Duration::from_secs(600));
}

#[tokio::test]
async fn kv_bucket_works_on_the_old_server_with_compare_and_set() {
    let nats = NatsServer::start_new();
    let jetstream = nats.jetstream().await;
    let settings = StreamSettings::default();
    let kv = ensure_kv(&jetstream, "test_bucket", 1, Duration::ZERO, &settings)
        .await
        .unwrap();
    let revision = kv.create("key", "one".into()).await.unwrap();
    assert!(
        kv.create("key", "again".into()).await.is_err(),
        "create must fail when the key exists"
    );
    let next = kv.update("key", "two".into(), revision).await.unwrap();
    assert!(
        kv.update("key", "stale".into(), revision).await.is_err(),
        "stale revision must lose"
    );
    assert!(next > revision);
    let again = ensure_kv(&jetstream, "test_bucket", 1, Duration::ZERO, &settings)
        .await
        .unwrap();
    assert_eq!(again.get("key").await.unwrap().unwrap().as_ref(), b"two");
    let mut backing = jetstream.get_stream("KV_test_bucket").await.unwrap();
    assert!(!backing.info().await.unwrap().config.allow_direct);
}

#[tokio::test]
async fn an_existing_bucket_takes_the_configured_max_age_and_history() {
    let nats = NatsServer::start_new();
    let jetstream = nats.jetstream().await;
    let settings = StreamSettings::default();
    let hour = Duration::from_secs(3600);
    let kv = ensure_kv(&jetstream, "aging", 1, hour, &settings)
        .await
        .unwrap();
    kv.put("key", "kept".into()).await.unwrap();
    let mut backing = jetstream.get_stream("KV_aging").await.unwrap();
    assert_eq!(backing.info().await.unwrap().config.max_age, hour);

    // Redeployed with a longer verification timeout (or enriched max age) and more history.
    let day = Duration::from_secs(24 * 3600);
    let again = ensure_kv(&jetstream, "aging", 5, day, &settings)
        .await
        .unwrap();
    let config = backing.info().await.unwrap().config.clone();
    assert_eq!(config.max_age, day);
    assert_eq!(config.max_messages_per_subject, 5);
    assert!(!config.allow_direct);
    assert_eq!(again.get("key").await.unwrap().unwrap().as_ref(), b"kept");

    // And back to a max age shorter than the duplicate window it had.
    let minute = Duration::from_secs(60);
    ensure_kv(&jetstream, "aging", 1, minute, &settings)
        .await
        .unwrap();
    let config = backing.info().await.unwrap().config.clone();
    assert_eq!(config.max_age, minute);
    assert_eq!(config.max_messages_per_subject, 1);
    assert!(config.duplicate_window <= minute);
}

#[tokio::test]
async fn kv_keys_are_listed_by_prefix_from_the_stream_state() {
    use gong_common::streams::list_kv_keys;

    let nats = NatsServer::start_new();
    let jetstream = nats.jetstream().await;
    let kv = ensure_kv(
        &jetstream,
        "listed",
        1,
        Duration::ZERO,
        &StreamSettings::default(),
    )
    .await
    .unwrap();
    for key in ["range.1", "range.22", "ranges", "other.x", "head"] {
        kv.put(key, "v".into()).await.unwrap();
    }
    // Rewritten: listed once.
    kv.put("range.1", "w".into()).await.unwrap();
    let stream = jetstream.get_stream("KV_listed").await.unwrap();
    let list = |prefix: &'static str| {
        let stream = stream.clone();
        async move {
            let mut keys = list_kv_keys(&stream, "listed", prefix, Duration::from_secs(10))
                .await
                .unwrap();
            keys.sort();
            keys
        }
    };
    assert_eq!(list("range.").await, ["range.1", "range.22"]);
    assert_eq!(list("range.2").await, ["range.22"]);
    assert_eq!(list("ran").await, ["range.1", "range.22", "ranges"]);
    assert_eq!(
        list("").await,
        ["head", "other.x", "range.1", "range.22", "ranges"]
    );
    assert!(list("none.").await.is_empty());
}

#[tokio::test]
async fn a_bucket_made_with_direct_gets_loses_them() {
    let nats = NatsServer::start_new();
    let jetstream = nats.jetstream().await;
    jetstream
        .create_stream(async_nats::jetstream::stream::Config {
            name: "KV_old_bucket".to_string(),
            subjects: vec!["$KV.old_bucket.>".to_string()],
            max_messages_per_subject: 1,
            allow_direct: true,
            allow_rollup: true,
            deny_delete: true,
            ..Default::default()
        })
        .await
        .unwrap();
    ensure_kv(
        &jetstream,
        "old_bucket",
        1,
        Duration::ZERO,
        &StreamSettings::default(),
    )
    .await
    .unwrap();
    let mut backing = jetstream.get_stream("KV_old_bucket").await.unwrap();
    assert!(!backing.info().await.unwrap().config.allow_direct);
}

#[tokio::test]
async fn pull_consumers_are_updated_in_place_or_kept_when_the_server_refuses() {
    let nats = NatsServer::start_new();
    let jetstream = nats.jetstream().await;
    ensure_streams(&jetstream, &StreamSettings::default(), &[StreamKind::Raw])
        .await
        .unwrap();
    let stream = jetstream.get_stream(names::STREAM_RAW).await.unwrap();
    let wanted = pull::Config {
        durable_name: Some("probe".to_string()),
        ack_wait: Duration::from_secs(30),
        ..Default::default()
    };
    ensure_pull_consumer(&stream, wanted.clone()).await.unwrap();

    // A setting that may change: changed in place.
    let longer = pull::Config {
        ack_wait: Duration::from_secs(90),
        ..wanted.clone()
    };
    let mut consumer = ensure_pull_consumer(&stream, longer).await.unwrap();
    assert_eq!(
        consumer.info().await.unwrap().config.ack_wait,
        Duration::from_secs(90)
    );

    // One the server refuses to change: the existing consumer is kept as it is.
    let refused = pull::Config {
        deliver_policy: DeliverPolicy::New,
        ..wanted.clone()
    };
    let mut kept = ensure_pull_consumer(&stream, refused).await.unwrap();
    let info = kept.info().await.unwrap();
    assert_eq!(info.config.deliver_policy, DeliverPolicy::All);
    assert_eq!(info.config.ack_wait, Duration::from_secs(90));

    // No consumer to keep: the create's error.
    let missing = jetstream
        .create_stream(async_nats::jetstream::stream::Config {
            name: "OTHER".to_string(),
            subjects: vec!["other.>".to_string()],
            ..Default::default()
        })
        .await
        .unwrap();
    let invalid = pull::Config {
        durable_name: Some("bad".to_string()),
        filter_subject: "not.in.this.stream".to_string(),
        ..Default::default()
    };
    assert!(ensure_pull_consumer(&missing, invalid).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_waits_for_a_cluster_that_has_no_quorum_yet() {
    use gong_common::admin::Readiness;
    use gong_common::streams::provision_with_retry;
    use gong_testkit::cluster::NatsCluster;
    use tokio_util::sync::CancellationToken;

    let mut cluster = NatsCluster::start(3);
    cluster.wait_jetstream(Duration::from_secs(60)).await;
    // Two of three nodes down: no quorum, JetStream requests time out or are refused.
    cluster.stop_node(1);
    cluster.stop_node(2);
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(cluster.node(0).url())
        .await
        .unwrap();
    let jetstream = async_nats::jetstream::ContextBuilder::new()
        .timeout(Duration::from_millis(500))
        .build(client);
    let settings = StreamSettings {
        replicas: 3,
        ..StreamSettings::default()
    };
    let readiness = Readiness::new(vec![]);
    let shutdown = CancellationToken::new();
    let provisioning = {
        let readiness = readiness.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            provision_with_retry("streams", &readiness, &shutdown, || {
                ensure_streams(&jetstream, &settings, &StreamKind::ALL)
            })
            .await
        })
    };
    // Not ready, and saying why, while it retries.
    gong_testkit::wait_until(Duration::from_secs(30), "a provisioning fault", || {
        let readiness = readiness.clone();
        async move {
            readiness
                .fault()
                .filter(|fault| fault.contains("provisioning"))
        }
    })
    .await;
    assert!(!provisioning.is_finished(), "gave up without quorum");
    cluster.start_node(1);
    cluster.start_node(2);
    let outcome = tokio::time::timeout(Duration::from_secs(90), provisioning)
        .await
        .expect("provisioned once the cluster has quorum")
        .unwrap();
    assert!(matches!(outcome, Ok(Some(()))), "{:?}", outcome.err());
    assert_eq!(readiness.fault(), None);
}

#[tokio::test]
async fn provisioning_stops_at_once_on_an_error_no_retry_fixes() {
    use gong_common::admin::Readiness;
    use gong_common::streams::provision_with_retry;
    use tokio_util::sync::CancellationToken;

    let nats = NatsServer::start_new();
    let jetstream = nats.jetstream().await;
    // Three replicas on a server that is not clustered: refused for good.
    let settings = StreamSettings {
        replicas: 3,
        ..StreamSettings::default()
    };
    let mut attempts = 0;
    let outcome = provision_with_retry(
        "streams",
        &Readiness::new(vec![]),
        &CancellationToken::new(),
        || {
            attempts += 1;
            ensure_streams(&jetstream, &settings, &[StreamKind::Raw])
        },
    )
    .await;
    let err = outcome.expect_err("a permanent error is returned");
    assert!(!err.is_retryable(), "{err}");
    assert_eq!(attempts, 1);
}
