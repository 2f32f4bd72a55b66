//! NATS outages and shutdown: never a 2xx without an ack, and recovery without a restart.

use std::time::Duration;

use gong_testkit::wait_until;
use gong_testkit::webhook::{call_body, TestKey};

use crate::support::{json, raw_stream, Harness};

#[tokio::test]
async fn nats_down_gives_503_and_ingest_recovers_by_itself() {
    let mut harness = Harness::start().await;
    let before = call_body("6000", false);
    assert_eq!(
        harness
            .post_signed(&before, &TestKey::rule_a())
            .await
            .status()
            .as_u16(),
        202
    );

    harness.nats.stop();
    let during = call_body("6001", false);
    let response = harness.post_signed(&during, &TestKey::rule_a()).await;
    assert_eq!(response.status().as_u16(), 503);
    assert_eq!(response.headers()["retry-after"], "3");
    let (_, answer) = json(response).await;
    assert_eq!(answer["error"], "unavailable");

    harness.nats.start();
    let after = call_body("6002", false);
    let accepted = wait_until(
        Duration::from_secs(30),
        "ingest to accept again",
        || async {
            let response = harness.post_signed(&after, &TestKey::rule_a()).await;
            (response.status().as_u16() == 202).then_some(())
        },
    )
    .await;
    let _: () = accepted;
    let stored = harness.messages(raw_stream()).await;
    let bodies: Vec<&[u8]> = stored.iter().map(|m| m.payload.as_ref()).collect();
    assert!(bodies.contains(&before.as_slice()));
    assert!(bodies.contains(&after.as_slice()));
}

#[tokio::test]
async fn shutdown_under_load_loses_no_acknowledged_event() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let harness = Harness::start().await;
    let answered = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for worker in 0..16 {
        let http = harness.http.clone();
        let url = harness.url("/webhooks/gong");
        let answered = answered.clone();
        tasks.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for index in 0..1000 {
                let body = call_body(&format!("7{worker:02}{index:05}"), false);
                let token = TestKey::rule_a().sign_webhook(&body, crate::support::WEBHOOK_URL, 300);
                let response = http
                    .post(&url)
                    .header("authorization", token)
                    .body(body.clone())
                    .send()
                    .await;
                match response {
                    Ok(response) if response.status().as_u16() == 202 => {
                        answered.fetch_add(1, Ordering::SeqCst);
                        acknowledged.push(body);
                    }
                    // Refused connection or 503 once shutdown began: the sender keeps the event.
                    _ => break,
                }
            }
            acknowledged
        }));
    }
    wait_until(
        Duration::from_secs(30),
        "some webhooks acknowledged",
        || {
            let answered = answered.clone();
            async move { (answered.load(Ordering::SeqCst) >= 50).then_some(()) }
        },
    )
    .await;
    harness.shutdown.cancel();
    let mut acknowledged = Vec::new();
    for task in tasks {
        acknowledged.extend(task.await.unwrap());
    }
    assert!(
        acknowledged.len() < 16 * 1000,
        "shutdown should have stopped the senders"
    );
    let stored = harness.messages(raw_stream()).await;
    let stored: std::collections::HashSet<&[u8]> =
        stored.iter().map(|m| m.payload.as_ref()).collect();
    for body in &acknowledged {
        assert!(
            stored.contains(body.as_slice()),
            "an acknowledged event is missing"
        );
    }
}
