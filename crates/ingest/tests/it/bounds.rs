//! The bounds on requests and connections, reached for real: forged floods cost no request slot
//! and no body read, the request bound answers 503 "overloaded", the connection bound holds new
//! connections in the backlog. Each runs gong-ingest as a child process so that its metrics are
//! its own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use gong_common::names;
use gong_testkit::webhook::{call_body, GongClaims, TestKey};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{Process, WEBHOOK_URL};

/// Bound on any single wait for an answer: a hang fails the test instead of blocking it.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// One HTTP/1.1 answer read off a raw connection.
struct RawResponse {
    status: u16,
    body: Vec<u8>,
}

impl RawResponse {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| {
            panic!(
                "non-JSON answer {}: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// The head of a `POST /webhooks/gong` declaring `content_length` body bytes.
fn post_head(authorization: &str, content_length: usize) -> String {
    format!(
        "POST /webhooks/gong HTTP/1.1\r\nhost: ingest\r\nauthorization: Bearer {authorization}\r\n\
         content-type: application/json\r\ncontent-length: {content_length}\r\n\r\n"
    )
}

/// A complete signed request for `body`.
fn signed_request(body: &[u8]) -> Vec<u8> {
    let token = TestKey::rule_a().sign_webhook(body, WEBHOOK_URL, 300);
    let mut request = post_head(&token, body.len()).into_bytes();
    request.extend_from_slice(body);
    request
}

/// Reads exactly one response (head and `content-length` body) from `reader`; an error if the
/// connection ends first or nothing complete arrives within [`ANSWER_WITHIN`].
async fn read_response<R: AsyncRead + Unpin>(reader: &mut R) -> Result<RawResponse, String> {
    let read = async {
        let mut buffer = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buffer[..end]).to_string();
                let mut lines = head.split("\r\n");
                let status_line = lines.next().unwrap_or_default();
                let status = status_line
                    .split(' ')
                    .nth(1)
                    .and_then(|code| code.parse().ok())
                    .ok_or_else(|| format!("bad status line {status_line:?}"))?;
                let headers: Vec<(String, String)> = lines
                    .filter_map(|line| line.split_once(':'))
                    .map(|(name, value)| (name.trim().to_string(), value.trim().to_string()))
                    .collect();
                let length: usize = headers
                    .iter()
                    .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, value)| value.parse().ok())
                    .unwrap_or(0);
                if buffer.len() >= end + 4 + length {
                    return Ok(RawResponse {
                        status,
                        body: buffer[end + 4..end + 4 + length].to_vec(),
                    });
                }
            }
            match reader.read(&mut chunk).await {
                Ok(0) => return Err(format!("connection ended after {} bytes", buffer.len())),
                Ok(read) => buffer.extend_from_slice(&chunk[..read]),
                Err(err) => return Err(format!("read failed after {} bytes: {err}", buffer.len())),
            }
        }
    };
    tokio::time::timeout(ANSWER_WITHIN, read)
        .await
        .map_err(|_| "no complete answer in time".to_string())?
}

/// Whether the server closed the connection (end of stream or reset) rather than keeping it.
async fn closed_by_server<R: AsyncRead + Unpin>(reader: &mut R) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(ANSWER_WITHIN, reader.read(&mut byte)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

fn unsigned_token(header: &str, claims: &serde_json::Value) -> String {
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.{}",
        engine.encode(header),
        engine.encode(claims.to_string()),
        engine.encode(b"not a signature")
    )
}

/// Tokens for `body` that must be refused from the header alone: a key that is not configured,
/// a configured key but expired or for another destination, `alg: none`, and HS256 keyed with
/// the public key.
fn forged_tokens(body: &[u8]) -> Vec<(&'static str, String)> {
    let claims = serde_json::to_value(GongClaims::for_body(body, WEBHOOK_URL, 300)).unwrap();
    let hs256 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(TestKey::rule_a().public_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    vec![
        (
            "unknown key",
            TestKey::snowflake().sign_webhook(body, WEBHOOK_URL, 300),
        ),
        (
            "expired",
            TestKey::rule_a().sign_webhook(body, WEBHOOK_URL, -3600),
        ),
        (
            "other webhook_url",
            TestKey::rule_b().sign_webhook(
                body,
                "https://elsewhere.example.com/webhooks/gong",
                300,
            ),
        ),
        ("alg none", unsigned_token(r#"{"alg":"none"}"#, &claims)),
        ("hs256", hs256),
    ]
}

/// What one forged request saw.
struct ForgedOutcome {
    kind: &'static str,
    stalled: bool,
    answer: Result<RawResponse, String>,
    closed: bool,
}

/// A forged request on the wire: its head and the first 64 KiB of a 5 MiB body sent.
struct Forged {
    kind: &'static str,
    stream: TcpStream,
}

impl Forged {
    async fn start(
        addr: std::net::SocketAddr,
        kind: &'static str,
        token: &str,
        body: &[u8],
    ) -> Forged {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let mut start = post_head(token, body.len()).into_bytes();
        start.extend_from_slice(&body[..64 * 1024]);
        // Refused from the head, the request may be answered and its connection closed while
        // this is still being written: the answer, read next, is what counts.
        let _ = stream.write_all(&start).await;
        Forged { kind, stream }
    }

    /// A stalled request sends nothing more and waits for the answer: an answer proves the
    /// server did not wait for the body. Otherwise the rest of the body is sent while the answer
    /// is read (the server may cut the upload short by closing: those write errors are expected).
    async fn finish(self, body: Arc<Vec<u8>>, stalled: bool) -> ForgedOutcome {
        let (mut reader, mut writer) = self.stream.into_split();
        let upload = (!stalled).then(|| {
            tokio::spawn(async move {
                for chunk in body[64 * 1024..].chunks(256 * 1024) {
                    if writer.write_all(chunk).await.is_err() {
                        return;
                    }
                }
                // Keep the write half open until the answer is read.
                std::future::pending::<()>().await;
            })
        });
        let answer = read_response(&mut reader).await;
        let closed = answer.is_ok() && closed_by_server(&mut reader).await;
        if let Some(upload) = upload {
            upload.abort();
        }
        ForgedOutcome {
            kind: self.kind,
            stalled,
            answer,
            closed,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_5mib_flood_neither_takes_request_slots_nor_gets_its_bodies_read() {
    const SLOTS: usize = 4;
    const FORGERS: usize = 16;
    const SENDERS: usize = SLOTS;
    const REAL_PER_SENDER: usize = 15;
    const MAX_BODY: usize = 5 * 1024 * 1024;
    let ingest = Process::start(&[
        ("INGEST_MAX_CONCURRENT_REQUESTS", "4"),
        ("INGEST_MAX_BODY_BYTES", "5242880"),
        // A forged request still waiting for its body would hold its slot this long.
        ("INGEST_BODY_TIMEOUT", "10s"),
        ("INGEST_HEADER_TIMEOUT", "60s"),
    ])
    .await;
    let forged_body = Arc::new(vec![b' '; MAX_BODY]);
    let tokens = Arc::new(forged_tokens(&forged_body));

    // The flood: FORGERS connections at once, each sending forged requests one after another
    // until the real webhooks are all answered (at least twice each). Half stall after 64 KiB.
    let real_done = Arc::new(AtomicBool::new(false));
    let forgers_started = Arc::new(tokio::sync::Barrier::new(FORGERS + 1));
    let mut forgers = Vec::new();
    for forger in 0..FORGERS {
        let (tokens, body, real_done, started) = (
            tokens.clone(),
            forged_body.clone(),
            real_done.clone(),
            forgers_started.clone(),
        );
        let addr = ingest.addr;
        forgers.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for round in 0..8 {
                if round >= 2 && real_done.load(Ordering::SeqCst) {
                    break;
                }
                let (kind, token) = &tokens[(forger + round) % tokens.len()];
                let forged = Forged::start(addr, kind, token, &body).await;
                if round == 0 {
                    // Every forger's first request is on the wire before the real webhooks start.
                    started.wait().await;
                }
                outcomes.push(forged.finish(body.clone(), forger % 2 == 0).await);
            }
            outcomes
        }));
    }
    forgers_started.wait().await;

    // Real webhooks, SENDERS at a time (never more than the slots), over keep-alive connections.
    let mut senders = Vec::new();
    for sender in 0..SENDERS {
        let http = ingest.http.clone();
        let url = ingest.url("/webhooks/gong");
        senders.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for index in 0..REAL_PER_SENDER {
                let body = call_body(&format!("55{sender:02}{index:04}"), false);
                let token = TestKey::rule_a().sign_webhook(&body, WEBHOOK_URL, 300);
                let response = http
                    .post(&url)
                    .header("authorization", format!("Bearer {token}"))
                    .body(body)
                    .send()
                    .await
                    .expect("real webhook answered");
                statuses.push(response.status().as_u16());
            }
            statuses
        }));
    }
    let mut real_statuses = Vec::new();
    for sender in senders {
        real_statuses.extend(sender.await.unwrap());
    }
    real_done.store(true, Ordering::SeqCst);
    let mut forged = Vec::new();
    for forger in forgers {
        forged.extend(forger.await.unwrap());
    }

    assert_eq!(real_statuses.len(), SENDERS * REAL_PER_SENDER);
    assert!(
        real_statuses.iter().all(|status| *status == 202),
        "a real webhook was turned away during the flood: {real_statuses:?}\nlogs:\n{}",
        ingest.logs()
    );
    assert!(forged.len() >= FORGERS * 2);
    for outcome in &forged {
        let what = format!(
            "forged ({}, {})",
            outcome.kind,
            if outcome.stalled {
                "stalled after 64 KiB"
            } else {
                "whole body"
            }
        );
        let answer = outcome
            .answer
            .as_ref()
            .unwrap_or_else(|err| panic!("{what}: no answer: {err}"));
        // A stalled request answered at all was answered without its body: only 64 KiB of the
        // declared 5 MiB were ever sent.
        assert_eq!(
            answer.status,
            401,
            "{what}: {}",
            String::from_utf8_lossy(&answer.body)
        );
        let json = answer.json();
        assert_eq!(json["error"], "unauthorized", "{what}: {json}");
        assert!(json["reason"].is_string(), "{what}: {json}");
        assert!(
            outcome.closed,
            "{what}: the connection was kept open with an unread body"
        );
    }

    // Exact, because the child process counts only this test's requests.
    let metrics = ingest.metrics().await;
    let value = |series: &str| {
        crate::support::metric_value(&metrics, series)
            .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
    };
    assert_eq!(
        value("gong_ingest_requests_total{outcome=\"accepted\"}"),
        (SENDERS * REAL_PER_SENDER) as f64
    );
    assert_eq!(
        value("gong_ingest_requests_total{outcome=\"unauthorized\"}"),
        forged.len() as f64
    );
    assert_eq!(
        value("gong_ingest_requests_total{outcome=\"overloaded\"}"),
        0.0
    );
    assert_eq!(
        value("gong_ingest_requests_total{outcome=\"timeout\"}"),
        0.0
    );
    // Only the real bodies were stored (and nothing forged reached the dead letters).
    assert_eq!(
        ingest.count(names::STREAM_RAW).await,
        (SENDERS * REAL_PER_SENDER) as u64
    );
    assert_eq!(ingest.count(names::STREAM_DLQ).await, 0);
}

#[tokio::test]
async fn a_request_over_the_concurrency_bound_gets_503_overloaded() {
    const SLOTS: usize = 2;
    let ingest = Process::start(&[
        ("INGEST_MAX_CONCURRENT_REQUESTS", "2"),
        ("INGEST_BODY_TIMEOUT", "60s"),
        ("INGEST_HEADER_TIMEOUT", "60s"),
    ])
    .await;
    // SLOTS authenticated requests whose bodies are held back: each holds a slot.
    let mut held = Vec::new();
    for index in 0..SLOTS {
        let body = call_body(&format!("660{index}"), false);
        let request = signed_request(&body);
        let head_and_some = request.len() - body.len() + 10;
        let mut stream = TcpStream::connect(ingest.addr).await.unwrap();
        stream.write_all(&request[..head_and_some]).await.unwrap();
        held.push((stream, request, head_and_some));
    }
    ingest
        .wait_for_metric("gong_ingest_requests_in_flight", SLOTS as f64)
        .await;

    let extra = ingest
        .http
        .post(ingest.url("/webhooks/gong"))
        .header(
            "authorization",
            TestKey::rule_a().sign_webhook(&call_body("6610", false), WEBHOOK_URL, 300),
        )
        .body(call_body("6610", false))
        .send()
        .await
        .unwrap();
    assert_eq!(extra.status().as_u16(), 503);
    assert_eq!(extra.headers()["retry-after"], "3");
    let answer: serde_json::Value = extra.json().await.unwrap();
    assert_eq!(answer["error"], "unavailable", "{answer}");
    assert_eq!(
        answer["reason"], "too many requests in flight; retry after 3s",
        "{answer}"
    );
    assert_eq!(
        ingest
            .metric("gong_ingest_requests_total{outcome=\"overloaded\"}")
            .await,
        1.0
    );
    assert_eq!(ingest.count(names::STREAM_RAW).await, 0);

    // The held requests finish and give their slots back: the first is stored, the last is
    // refused after its body was read (its bytes are not the signed ones), slot included.
    for (index, (stream, request, sent)) in held.iter_mut().enumerate() {
        let refused = index == SLOTS - 1;
        let mut rest = request[*sent..].to_vec();
        if refused {
            rest[0] ^= 0x20;
        }
        stream.write_all(&rest).await.unwrap();
        let answer = read_response(stream).await.unwrap();
        let expected = if refused { 401 } else { 202 };
        assert_eq!(
            answer.status,
            expected,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
    }
    ingest
        .wait_for_metric("gong_ingest_requests_in_flight", 0.0)
        .await;
    let body = call_body("6611", false);
    let again = ingest
        .http
        .post(ingest.url("/webhooks/gong"))
        .header(
            "authorization",
            TestKey::rule_a().sign_webhook(&body, WEBHOOK_URL, 300),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 202);
    assert_eq!(ingest.count(names::STREAM_RAW).await, SLOTS as u64);
    assert_eq!(
        ingest
            .metric("gong_ingest_requests_total{outcome=\"accepted\"}")
            .await,
        SLOTS as f64
    );
    assert_eq!(
        ingest
            .metric("gong_ingest_auth_failures_total{reason=\"body_hash_mismatch\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_connection_over_the_bound_waits_until_another_closes() {
    let ingest = Process::start(&[
        ("INGEST_MAX_CONNECTIONS", "2"),
        ("INGEST_HEADER_TIMEOUT", "60s"),
    ])
    .await;
    let mut first = TcpStream::connect(ingest.addr).await.unwrap();
    let second = TcpStream::connect(ingest.addr).await.unwrap();
    ingest
        .wait_for_metric("gong_ingest_connections_open", 2.0)
        .await;

    // The kernel completes the handshake (the listener's backlog), but gong-ingest does not
    // accept the connection while both slots are taken: its request goes unanswered.
    let mut third = TcpStream::connect(ingest.addr).await.unwrap();
    third
        .write_all(&signed_request(&call_body("7700", false)))
        .await
        .unwrap();

    // Meanwhile the open connections are served: three requests, sent after the third
    // connection's, answered one after another on the first connection (keep-alive).
    for index in 1..=3 {
        first
            .write_all(&signed_request(&call_body(&format!("770{index}"), false)))
            .await
            .unwrap();
        let answer = read_response(&mut first).await.unwrap();
        assert_eq!(answer.status, 202);
    }
    let mut byte = [0u8; 1];
    match third.try_read(&mut byte) {
        Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the connection over the bound was served: {other:?}"),
    }
    assert_eq!(ingest.metric("gong_ingest_connections_open").await, 2.0);
    assert_eq!(ingest.count(names::STREAM_RAW).await, 3);

    // One closes: the waiting connection is accepted and its request answered.
    drop(second);
    let answer = read_response(&mut third).await.unwrap();
    assert_eq!(
        answer.status,
        202,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(ingest.count(names::STREAM_RAW).await, 4);
}

#[tokio::test]
async fn a_refused_webhook_of_ordinary_size_is_answered_and_its_connection_kept() {
    // Refused from its head, a body up to DISCARD_MAX_BYTES is read and thrown away after the
    // answer, so a sender that reads only after uploading sees the 401 (not a reset), and its
    // keep-alive connection carries the next webhook. Larger than what hyper buffers by itself.
    let ingest = Process::start(&[("INGEST_MAX_BODY_BYTES", "5242880")]).await;
    let body = vec![b' '; 200 * 1024];
    assert!(body.len() as u64 <= gong_ingest::server::DISCARD_MAX_BYTES);
    let mut stream = TcpStream::connect(ingest.addr).await.unwrap();
    for (kind, token) in forged_tokens(&body) {
        stream
            .write_all(post_head(&token, body.len()).as_bytes())
            .await
            .unwrap();
        stream.write_all(&body).await.unwrap();
        let answer = read_response(&mut stream)
            .await
            .unwrap_or_else(|err| panic!("{kind}: {err}"));
        assert_eq!(answer.status, 401, "{kind}");
        assert_eq!(answer.json()["error"], "unauthorized", "{kind}");
    }
    stream
        .write_all(&signed_request(&call_body("8800", false)))
        .await
        .unwrap();
    let answer = read_response(&mut stream).await.unwrap();
    assert_eq!(
        answer.status,
        202,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(ingest.count(names::STREAM_RAW).await, 1);
    assert_eq!(
        ingest
            .metric("gong_ingest_requests_total{outcome=\"unauthorized\"}")
            .await,
        5.0
    );
}
