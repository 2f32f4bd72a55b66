//! The compare-and-set register on a 3-node cluster: concurrent writers never lose an update.

use std::sync::Arc;
use std::time::Duration;

use gong_common::register::{Register, RegisterError};
use gong_common::streams::StreamSettings;
use gong_testkit::cluster::NatsCluster;
use gong_testkit::NatsServer;

/// `writers` tasks each add 1 to a counter `per_writer` times (read, write expecting the
/// revision read, retry on conflict). Returns the final counter.
async fn count_concurrently(register: Arc<Register>, writers: usize, per_writer: usize) -> u64 {
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let register = register.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            while done < per_writer {
                let current = register.read().await.expect("read");
                let (value, expected) = match &current {
                    Some(current) => (
                        std::str::from_utf8(&current.value)
                            .unwrap()
                            .parse::<u64>()
                            .unwrap(),
                        Some(current.revision),
                    ),
                    None => (0, None),
                };
                match register
                    .write((value + 1).to_string().into(), expected)
                    .await
                {
                    Ok(_) => done += 1,
                    Err(RegisterError::Conflict { .. }) => {}
                    Err(err) => panic!("write failed: {err}"),
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer");
    }
    let last = register.read().await.unwrap().expect("written");
    std::str::from_utf8(&last.value).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_on_a_three_replica_register_lose_no_update() {
    let cluster = NatsCluster::start(3);
    cluster.wait_jetstream(Duration::from_secs(60)).await;
    let jetstream = async_nats::jetstream::new(cluster.client().await);
    let settings = StreamSettings {
        replicas: 3,
        ..StreamSettings::default()
    };
    let register = Register::open(&jetstream, "test_register", "n", Duration::ZERO, &settings)
        .await
        .expect("register");
    let total = count_concurrently(Arc::new(register), 8, 40).await;
    assert_eq!(total, 8 * 40, "an acknowledged write was lost");
}

#[tokio::test]
async fn a_write_on_a_stale_revision_conflicts_and_the_first_write_creates() {
    let nats = NatsServer::start_new();
    let jetstream = nats.jetstream().await;
    let register = Register::open(
        &jetstream,
        "test_register",
        "n",
        Duration::ZERO,
        &StreamSettings::default(),
    )
    .await
    .unwrap();
    assert!(register.read().await.unwrap().is_none());
    let first = register.write("a".into(), None).await.unwrap();
    assert!(matches!(
        register.write("b".into(), None).await,
        Err(RegisterError::Conflict { .. })
    ));
    let second = register.write("b".into(), Some(first)).await.unwrap();
    assert!(matches!(
        register.write("c".into(), Some(first)).await,
        Err(RegisterError::Conflict { .. })
    ));
    let current = register.read().await.unwrap().unwrap();
    assert_eq!(current.revision, second);
    assert_eq!(current.value.as_ref(), b"b");
    // The server's time of the write, not ours: close to it on one machine.
    let skew = (chrono::Utc::now() - current.created).num_seconds().abs();
    assert!(skew < 60, "created {:?}", current.created);
}
