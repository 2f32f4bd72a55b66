//! The range manifest's cache: what `covering` answers without asking the bucket.

use gong_common::names;
use gong_common::streams::StreamSettings;
use gong_load::ranges::{range_key, Claim, RangeState, Ranges};
use gong_testkit::NatsServer;

use crate::support::provision;

/// A range known done is answered from the cache (a redelivered message in it only needs its
/// ack); a pending one is read again, so a change by another replica is seen.
#[tokio::test]
async fn covering_reads_pending_ranges_again_but_not_done_ones() {
    let nats = NatsServer::start_new();
    let jetstream = provision(&nats).await;
    let ranges = Ranges::open(&jetstream, &StreamSettings::default(), "a".to_string())
        .await
        .unwrap();
    let Claim::Won { revision } = ranges.claim(1, 4).await.unwrap() else {
        panic!("a fresh bucket lost a claim");
    };
    let Claim::Won { .. } = ranges.claim(5, 8).await.unwrap() else {
        panic!("a fresh bucket lost a claim");
    };
    let done = ranges.covering(2).await.unwrap().expect("range 1..=4");
    assert!(
        ranges
            .mark_done(done.record.first, done.record.last, revision)
            .await
    );

    // Both records vanish from the bucket behind the cache's back.
    let kv = jetstream
        .get_key_value(names::BUCKET_LOAD_RANGES)
        .await
        .unwrap();
    kv.purge(range_key(1)).await.unwrap();
    kv.purge(range_key(5)).await.unwrap();

    let cached = ranges
        .covering(3)
        .await
        .unwrap()
        .expect("done range, from the cache");
    assert_eq!((cached.record.first, cached.record.last), (1, 4));
    assert_eq!(cached.record.state, RangeState::Done);
    assert!(
        ranges.covering(6).await.unwrap().is_none(),
        "a pending range must be read again"
    );
}
