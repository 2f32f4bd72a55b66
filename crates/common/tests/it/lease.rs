//! The KV lease: one holder at a time, takeover when the holder stops renewing, fast handover
//! on release, and stepping down when another process took the key.

use std::time::Duration;

use gong_common::lease::{Lease, LeaseRecord, LeaseState};
use gong_common::streams::StreamSettings;
use gong_testkit::{wait_until, NatsServer};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const TIMEOUT: Duration = Duration::from_secs(30);

async fn lease(nats: &NatsServer, holder: &str, ttl: Duration) -> Lease {
    Lease::open(
        &nats.jetstream().await,
        &StreamSettings::default(),
        "job",
        holder.to_string(),
        ttl,
    )
    .await
    .expect("lease bucket")
}

async fn wait_state(state: &watch::Receiver<LeaseState>, wanted: LeaseState, what: &str) {
    let state = state.clone();
    wait_until(TIMEOUT, what, || {
        let state = state.clone();
        let wanted = wanted.clone();
        async move { (*state.borrow() == wanted).then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn one_holder_and_a_takeover_only_after_the_holder_stops_renewing() {
    let nats = NatsServer::start_new();
    let ttl = Duration::from_secs(2);
    let first = lease(&nats, "a", ttl).await.spawn(CancellationToken::new());
    wait_state(&first.state, LeaseState::Active, "a to hold the lease").await;
    let second = lease(&nats, "b", ttl).await.spawn(CancellationToken::new());

    // While `a` renews, `b` stays a standby through several ttls: observe renewals, not time.
    let probe = lease(&nats, "probe", ttl).await;
    let (_, start) = probe.read().await.unwrap().expect("lease written");
    wait_until(TIMEOUT, "a to renew over 2 ttls", || async {
        let (record, _) = probe.read().await.unwrap().expect("lease written");
        assert_eq!(
            record.holder, "a",
            "the lease moved while its holder renewed"
        );
        assert_eq!(*second.state.borrow(), LeaseState::Standby);
        (record.renewals >= 7).then_some(())
    })
    .await;
    assert!(probe.read().await.unwrap().unwrap().1 > start);

    // `a` dies without releasing: `b` takes over once the revision stood still for a ttl.
    first.task.abort();
    wait_state(&second.state, LeaseState::Active, "b to take over").await;
    let (record, _) = probe.read().await.unwrap().expect("lease written");
    assert_eq!(record.holder, "b");
}

#[tokio::test]
async fn a_released_lease_is_taken_at_once_not_after_the_ttl() {
    let nats = NatsServer::start_new();
    // An hour: a takeover inside the test can only come from the release.
    let ttl = Duration::from_secs(3600);
    let stop_first = CancellationToken::new();
    let first = lease(&nats, "a", ttl).await.spawn(stop_first.clone());
    wait_state(&first.state, LeaseState::Active, "a to hold the lease").await;
    let second = lease(&nats, "b", ttl).await.spawn(CancellationToken::new());
    stop_first.cancel();
    first.task.await.unwrap();
    wait_state(
        &second.state,
        LeaseState::Active,
        "b to take the released lease",
    )
    .await;
}

#[tokio::test]
async fn a_holder_whose_key_was_taken_steps_down() {
    let nats = NatsServer::start_new();
    let ttl = Duration::from_secs(2);
    let first = lease(&nats, "a", ttl).await.spawn(CancellationToken::new());
    wait_state(&first.state, LeaseState::Active, "a to hold the lease").await;
    // Another process writes the key (as a takeover would): a's next renewal loses its CAS.
    let kv = nats
        .jetstream()
        .await
        .get_key_value("gong_lease_job")
        .await
        .unwrap();
    let (_, revision) = lease(&nats, "x", ttl).await.read().await.unwrap().unwrap();
    let intruder = LeaseRecord {
        holder: "x".to_string(),
        renewals: 0,
    };
    kv.update(
        "holder",
        serde_json::to_vec(&intruder).unwrap().into(),
        revision,
    )
    .await
    .unwrap();
    wait_state(&first.state, LeaseState::Standby, "a to step down").await;
}
