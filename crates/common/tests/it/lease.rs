//! The KV lease: one holder at a time, takeover when the holder stops renewing, fast handover
//! on release, stepping down when another process took the key or when renewals hang (never
//! two holders Active at once), and keeping a renewal stored whose answer was lost.

use std::time::Duration;

use gong_common::lease::{Lease, LeaseRecord, LeaseState};
use gong_common::register::{Register, RegisterError};
use gong_common::streams::StreamSettings;
use gong_testkit::proxy::Proxy;
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

/// The lease bucket's register, written the way a lease holder or standby writes it.
async fn register(nats: &NatsServer) -> Register {
    Register::open(
        &nats.jetstream().await,
        "gong_lease_job",
        "holder",
        Duration::ZERO,
        &StreamSettings::default(),
    )
    .await
    .expect("lease register")
}

fn value(record: &LeaseRecord) -> bytes::Bytes {
    serde_json::to_vec(record).unwrap().into()
}

#[tokio::test]
async fn a_holder_whose_key_was_taken_steps_down() {
    let nats = NatsServer::start_new();
    let ttl = Duration::from_secs(2);
    let first = lease(&nats, "a", ttl).await.spawn(CancellationToken::new());
    wait_state(&first.state, LeaseState::Active, "a to hold the lease").await;
    // Another process takes the key as a standby does (compare-and-set on the revision it
    // read): a's next renewal loses its compare-and-set and finds x's value.
    let register = register(&nats).await;
    let intruder = LeaseRecord {
        holder: "x".to_string(),
        renewals: 0,
    };
    loop {
        let current = register.read().await.unwrap().expect("lease written");
        match register
            .write(value(&intruder), Some(current.revision))
            .await
        {
            Ok(_) => break,
            // a renewed in between: read again.
            Err(RegisterError::Conflict { .. }) => continue,
            Err(err) => panic!("write failed: {err}"),
        }
    }
    wait_state(&first.state, LeaseState::Standby, "a to step down").await;
}

#[tokio::test]
async fn a_renewal_stored_whose_answer_was_lost_keeps_the_lease() {
    let nats = NatsServer::start_new();
    let ttl = Duration::from_secs(2);
    let holder = lease(&nats, "a", ttl).await.spawn(CancellationToken::new());
    wait_state(&holder.state, LeaseState::Active, "a to hold the lease").await;
    let mut state = holder.state.clone();
    let stepped_down = tokio::spawn(async move {
        state
            .wait_for(|state| *state == LeaseState::Standby)
            .await
            .is_ok()
    });

    // Store a's own next renewal behind its back, as if a's write had been stored and its
    // answer lost: a's next renewal writes the same value expecting the revision before, so
    // it conflicts and must recognise its own write.
    let register = register(&nats).await;
    let stored = loop {
        let current = register.read().await.unwrap().expect("lease written");
        let record: LeaseRecord = serde_json::from_slice(&current.value).unwrap();
        assert_eq!(record.holder, "a");
        let next = LeaseRecord {
            holder: "a".to_string(),
            renewals: record.renewals + 1,
        };
        match register.write(value(&next), Some(current.revision)).await {
            Ok(_) => break next.renewals,
            // a renewed in between: its write is the one it knows about; try again.
            Err(RegisterError::Conflict { .. }) => continue,
            Err(err) => panic!("write failed: {err}"),
        }
    };
    // a goes on renewing from there, and never stepped down.
    let probe = lease(&nats, "probe", ttl).await;
    wait_until(TIMEOUT, "a to renew past the adopted write", || async {
        let (record, _) = probe.read().await.unwrap().expect("lease written");
        assert_eq!(record.holder, "a", "a lost the lease");
        (record.renewals >= stored + 3).then_some(())
    })
    .await;
    assert!(
        !stepped_down.is_finished(),
        "a stepped down over its own renewal"
    );
    assert_eq!(*holder.state.borrow(), LeaseState::Active);
}

/// Every transition of the holder's and the standby's state, in the order one task saw them,
/// until the standby is Active; and whether both were ever Active at once.
async fn watch_both(
    mut holder: watch::Receiver<LeaseState>,
    mut standby: watch::Receiver<LeaseState>,
) -> (Vec<(&'static str, LeaseState)>, bool) {
    let mut seen = vec![
        ("holder", holder.borrow_and_update().clone()),
        ("standby", standby.borrow_and_update().clone()),
    ];
    let mut overlap = false;
    loop {
        tokio::select! {
            changed = holder.changed() => {
                changed.expect("holder task alive");
                seen.push(("holder", holder.borrow_and_update().clone()));
            }
            changed = standby.changed() => {
                changed.expect("standby task alive");
                seen.push(("standby", standby.borrow_and_update().clone()));
            }
        }
        let both =
            *holder.borrow() == LeaseState::Active && *standby.borrow() == LeaseState::Active;
        overlap |= both;
        if *standby.borrow() == LeaseState::Active {
            return (seen, overlap);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_cut_off_from_nats_steps_down_before_a_standby_takes_over() {
    let nats = NatsServer::start_new();
    let proxy = Proxy::start(([127, 0, 0, 1], nats.port()).into()).await;
    let ttl = Duration::from_secs(4);
    // The holder reaches NATS through the proxy only, with a request timeout far longer than
    // the ttl: a renewal sent once the proxy is cut hangs for all of it.
    let client = async_nats::connect(proxy.nats_url()).await.unwrap();
    let jetstream = async_nats::jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(120))
        .build(client);
    let holder = Lease::open(
        &jetstream,
        &StreamSettings::default(),
        "job",
        "a".to_string(),
        ttl,
    )
    .await
    .expect("lease bucket")
    .spawn(CancellationToken::new());
    wait_state(&holder.state, LeaseState::Active, "a to hold the lease").await;
    // The standby is connected directly.
    let standby = lease(&nats, "b", ttl).await.spawn(CancellationToken::new());
    let watcher = tokio::spawn(watch_both(holder.state.clone(), standby.state.clone()));
    // Let the standby see a renewal or two, then cut the holder off.
    let probe = lease(&nats, "probe", ttl).await;
    wait_until(TIMEOUT, "a to renew twice", || async {
        let (record, _) = probe.read().await.unwrap().expect("lease written");
        (record.renewals >= 2).then_some(())
    })
    .await;
    proxy.down();

    let (seen, overlap) = tokio::time::timeout(TIMEOUT, watcher)
        .await
        .expect("the standby to take over")
        .unwrap();
    assert!(!overlap, "both Active at once: {seen:?}");
    let stepped_down = seen
        .iter()
        .position(|event| *event == ("holder", LeaseState::Standby))
        .unwrap_or_else(|| panic!("the holder never stepped down: {seen:?}"));
    let took_over = seen
        .iter()
        .position(|event| *event == ("standby", LeaseState::Active))
        .unwrap();
    assert!(stepped_down < took_over, "{seen:?}");
    let (record, _) = probe.read().await.unwrap().expect("lease written");
    assert_eq!(record.holder, "b");
    assert_eq!(*holder.state.borrow(), LeaseState::Standby);
}
