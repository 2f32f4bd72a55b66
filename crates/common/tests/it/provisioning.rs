use std::time::Duration;

use gong_common::names;
use gong_common::streams::{ensure_kv, ensure_streams, StreamKind, StreamSettings};
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
