//! Hostile clients: slow, idle, malformed. Each is answered 4xx or cut off; the server stays up.

use std::time::Duration;

use gong_common::Env;
use gong_ingest::IngestConfig;
use gong_testkit::webhook::{call_body, TestKey};
use gong_testkit::{wait_until, NatsServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{env_for, json, raw_stream, Harness, WEBHOOK_URL};

async fn harness_with(extra: &[(&str, &str)]) -> Harness {
    let nats = NatsServer::start_new();
    let mut env: Env = env_for(&nats);
    for (name, value) in extra {
        env.set(*name, *value);
    }
    let config = IngestConfig::from_env(&env).unwrap();
    Harness::start_with(nats, config).await
}

/// Reads until the peer closes the connection or answers; returns what was read.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut answer = Vec::new();
    let read = tokio::time::timeout(limit, stream.read_to_end(&mut answer)).await;
    read.ok().map(|_| answer)
}

#[tokio::test]
async fn slowloris_headers_are_cut_off() {
    let harness = harness_with(&[("INGEST_HEADER_TIMEOUT", "1s")]).await;
    let mut stream = TcpStream::connect(harness.ingest.addr).await.unwrap();
    stream
        .write_all(b"POST /webhooks/gong HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    // Never finish the head: the server must close the connection by itself.
    let closed = read_until_closed(&mut stream, Duration::from_secs(20)).await;
    assert!(
        closed.is_some(),
        "connection with an unfinished head stayed open"
    );
    let answer = closed.unwrap();
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

#[tokio::test]
async fn slow_bodies_get_408_and_store_nothing() {
    let harness = harness_with(&[("INGEST_BODY_TIMEOUT", "1s")]).await;
    let mut stream = TcpStream::connect(harness.ingest.addr).await.unwrap();
    let body = call_body("900", false);
    let token = TestKey::rule_a().sign_webhook(&body, crate::support::WEBHOOK_URL, 300);
    let head = format!(
        "POST /webhooks/gong HTTP/1.1\r\nhost: x\r\nauthorization: {token}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body[..10]).await.unwrap();
    let mut answer = vec![0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(
        answer[..read].starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&answer[..read])
    );
    assert_eq!(harness.count(raw_stream()).await, 0);
}

#[tokio::test]
async fn thousands_of_idle_connections_do_not_stop_service() {
    let harness = harness_with(&[("INGEST_HEADER_TIMEOUT", "30s")]).await;
    let mut idle = Vec::new();
    for _ in 0..2000 {
        match TcpStream::connect(harness.ingest.addr).await {
            Ok(stream) => idle.push(stream),
            Err(_) => break, // out of file descriptors on this machine: enough pressure
        }
    }
    assert!(
        idle.len() >= 500,
        "could only open {} connections",
        idle.len()
    );
    let body = call_body("901", false);
    let response = harness.post_signed(&body, &TestKey::rule_a()).await;
    assert_eq!(response.status().as_u16(), 202);
    let open = wait_until(Duration::from_secs(10), "connections gauge", || async {
        let metrics = harness
            .http
            .get(format!("http://{}/metrics", harness.ingest.admin_addr))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        metrics
            .lines()
            .find(|line| line.starts_with("gong_ingest_connections_open "))
            .and_then(|line| line.split_whitespace().nth(1)?.parse::<f64>().ok())
            .filter(|open| *open >= 500.0)
    })
    .await;
    assert!(open >= 500.0);
}

#[tokio::test]
async fn non_utf8_and_deeply_nested_bodies() {
    let harness = Harness::start().await;
    // Signed for another body: the server reads these bodies, hashes them and refuses them
    // (401 body_sha256), whatever they contain.
    let nested = "[".repeat(50_000);
    let token = TestKey::rule_a().sign_webhook(b"{}", WEBHOOK_URL, 300);
    for body in [vec![0xff, 0xfe, 0x00, 0x80], nested.clone().into_bytes()] {
        let response = harness
            .http
            .post(harness.url("/webhooks/gong"))
            .header("authorization", format!("Bearer {token}"))
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, answer) = json(response).await;
        assert_eq!(status, 401, "{answer}");
        assert!(
            answer["reason"].as_str().unwrap().contains("body_sha256"),
            "{answer}"
        );
    }
    // Authenticated: kept for inspection in the DLQ, never dropped, never a crash.
    for body in [vec![0xff, 0xfe, 0x00, 0x80], nested.into_bytes()] {
        let (status, answer) = json(harness.post_signed(&body, &TestKey::rule_a()).await).await;
        assert_eq!(status, 202, "{answer}");
        assert_eq!(answer["dead_lettered"], true);
    }
    assert_eq!(harness.count(gong_common::names::STREAM_DLQ).await, 2);
    assert_eq!(harness.count(raw_stream()).await, 0);
}
