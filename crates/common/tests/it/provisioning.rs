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
