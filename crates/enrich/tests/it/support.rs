//! Shared set-up: a nats-server and a Gong double per test, enrichers started in-process.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::message::StreamMessage;
use gong_common::event::{content_id, EnrichedEvent};
use gong_common::names::{self, headers};
use gong_common::streams::{ensure_streams, StreamKind, StreamSettings};
use gong_common::Env;
use gong_enrich::{EnrichConfig, Running};
use gong_testkit::gong_double::{
    GongDouble, GongDoubleConfig, DEFAULT_ACCESS_KEY, DEFAULT_ACCESS_KEY_SECRET,
};
use gong_testkit::webhook::call_body;
use gong_testkit::{wait_until, NatsServer};
use tokio_util::sync::CancellationToken;

/// Generous bound for any wait in these tests (they finish in seconds when healthy).
pub const TIMEOUT: Duration = Duration::from_secs(60);

pub struct Harness {
    pub nats: NatsServer,
    pub gong: GongDouble,
    pub jetstream: jetstream::Context,
}

pub struct Enricher {
    pub running: Running,
    pub shutdown: CancellationToken,
}

impl Drop for Enricher {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.running.task.abort();
    }
}

impl Harness {
    /// A nats-server with the three streams and a Gong double allowing `rate` requests/s.
    pub async fn start(rate: u32, daily_quota: u64) -> Harness {
        Harness::start_with(GongDoubleConfig {
            rate_per_second: rate,
            daily_quota,
            ..GongDoubleConfig::default()
        })
        .await
    }

    pub async fn start_with(gong_config: GongDoubleConfig) -> Harness {
        let gong = GongDouble::start(gong_config).await.expect("gong double");
        let (nats, jetstream) = nats_with_streams().await;
        Harness {
            nats,
            gong,
            jetstream,
        }
    }

    /// Enricher settings for tests: quick lingers and backoffs, the double's limits.
    pub fn env(&self, rate: u32) -> Env {
        Env::from_pairs([
            ("NATS_URL", self.nats.url()),
            ("ADMIN_ADDR", "127.0.0.1:0".to_string()),
            ("LOG_FORMAT", "pretty".to_string()),
            ("NATS_REQUEST_TIMEOUT", "3s".to_string()),
            ("GONG_API_BASE_URL", self.gong.base_url()),
            ("GONG_ACCESS_KEY", DEFAULT_ACCESS_KEY.to_string()),
            (
                "GONG_ACCESS_KEY_SECRET",
                DEFAULT_ACCESS_KEY_SECRET.to_string(),
            ),
            ("GONG_RATE_LIMIT_PER_SECOND", rate.to_string()),
            ("ENRICH_BATCH_LINGER", "100ms".to_string()),
            ("ENRICH_ACK_WAIT", "5s".to_string()),
            ("ENRICH_RETRY_BACKOFF_BASE", "50ms".to_string()),
            ("ENRICH_RETRY_BACKOFF_MAX", "300ms".to_string()),
            ("ENRICH_HTTP_TIMEOUT", "5s".to_string()),
            ("ENRICH_PENDING_REFRESH", "500ms".to_string()),
            ("ENRICH_SHUTDOWN_GRACE", "2s".to_string()),
            // The sweep's tests turn it on; elsewhere its listing requests would only blur the
            // counts of Gong requests.
            ("ENRICH_SWEEP_INTERVAL", "0".to_string()),
            // Likewise the users and scorecards jobs (the entities tests turn them on).
            ("ENRICH_USERS_REFRESH", "off".to_string()),
            ("ENRICH_SCORECARDS_REFRESH", "off".to_string()),
        ])
    }

    pub fn config(&self, env: &Env) -> EnrichConfig {
        EnrichConfig::from_env(env).expect("enrich config")
    }

    pub async fn enricher(&self, config: EnrichConfig) -> Enricher {
        let shutdown = CancellationToken::new();
        let running = gong_enrich::start(config, shutdown.clone())
            .await
            .expect("enricher starts");
        Enricher { running, shutdown }
    }

    /// Publishes a raw call event as gong-ingest stores it; returns (stream_seq, event_id).
    pub async fn publish_raw(&self, call_id: &str) -> (u64, String) {
        self.publish_body(
            names::SUBJECT_RAW_CALL,
            &call_body(call_id, false),
            Some(call_id),
        )
        .await
    }

    pub async fn publish_body(
        &self,
        subject: &'static str,
        body: &[u8],
        call_id: Option<&str>,
    ) -> (u64, String) {
        let event_id = content_id(body);
        let received_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let mut message_headers = async_nats::HeaderMap::new();
        message_headers.insert(async_nats::header::NATS_MESSAGE_ID, event_id.as_str());
        message_headers.insert(headers::EVENT_ID, event_id.as_str());
        message_headers.insert(headers::RECEIVED_AT, received_at.as_str());
        if let Some(call_id) = call_id {
            message_headers.insert(headers::CALL_ID, call_id);
        }
        let ack = self
            .jetstream
            .publish_with_headers(subject, message_headers, body.to_vec().into())
            .await
            .expect("publish")
            .await
            .expect("publish ack");
        (ack.sequence, event_id)
    }

    /// Publishes `count` raw events for calls `first_id..`; returns their call ids.
    pub async fn publish_calls(&self, first_id: u64, count: u64) -> Vec<String> {
        let mut ids = Vec::new();
        for offset in 0..count {
            let call_id = (first_id + offset).to_string();
            self.publish_raw(&call_id).await;
            ids.push(call_id);
        }
        ids
    }

    pub async fn count(&self, stream: &str) -> u64 {
        let mut stream = self.jetstream.get_stream(stream).await.expect("stream");
        stream.info().await.expect("stream info").state.messages
    }

    pub async fn messages(&self, stream: &str) -> Vec<StreamMessage> {
        let mut stream = self.jetstream.get_stream(stream).await.expect("stream");
        let info = stream.info().await.expect("stream info").clone();
        let mut out = Vec::new();
        for seq in info.state.first_sequence..=info.state.last_sequence {
            if let Ok(message) = stream.get_raw_message(seq).await {
                out.push(message);
            }
        }
        out
    }

    pub async fn enriched(&self) -> Vec<(StreamMessage, EnrichedEvent)> {
        self.messages(names::STREAM_ENRICHED)
            .await
            .into_iter()
            .map(|message| {
                let event = EnrichedEvent::from_json(&message.payload).expect("enriched event");
                (message, event)
            })
            .collect()
    }

    /// Waits until GONG_ENRICHED holds `expected` messages, explaining itself on timeout.
    pub async fn wait_enriched(&self, expected: u64) {
        let what = format!(
            "{expected} enriched events (nats log: {})",
            self.nats.log_path().display()
        );
        wait_until(TIMEOUT, &what, || async {
            (self.count(names::STREAM_ENRICHED).await >= expected).then_some(())
        })
        .await;
    }

    /// Waits until the durable consumer has nothing pending and nothing unacknowledged.
    pub async fn wait_consumer_drained(&self) {
        wait_until(TIMEOUT, "consumer enrich drained", || async {
            let stream = self.jetstream.get_stream(names::STREAM_RAW).await.ok()?;
            let info = stream.consumer_info(names::CONSUMER_ENRICH).await.ok()?;
            (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
        })
        .await;
    }

    pub async fn consumer_info(&self) -> async_nats::jetstream::consumer::Info {
        let stream = self
            .jetstream
            .get_stream(names::STREAM_RAW)
            .await
            .expect("raw stream");
        stream
            .consumer_info(names::CONSUMER_ENRICH)
            .await
            .expect("consumer info")
    }
}

/// A nats-server with the three streams (`NatsServer::start_new` already retries the free-port
/// race on a busy machine).
async fn nats_with_streams() -> (NatsServer, jetstream::Context) {
    let nats = NatsServer::start_new();
    let jetstream = nats.jetstream().await;
    ensure_streams(&jetstream, &StreamSettings::default(), &StreamKind::ALL)
        .await
        .expect("streams");
    (nats, jetstream)
}

pub fn header<'a>(message: &'a StreamMessage, name: &str) -> Option<&'a str> {
    message.headers.get(name).map(|value| value.as_str())
}

/// Enriched events by call id, asserting none is duplicated.
pub fn by_call_id(events: &[(StreamMessage, EnrichedEvent)]) -> HashMap<String, EnrichedEvent> {
    let mut out = HashMap::new();
    for (_, event) in events {
        let call_id = event.call_id().expect("call id").to_string();
        assert!(
            out.insert(call_id.clone(), event.clone()).is_none(),
            "call {call_id} enriched twice"
        );
    }
    out
}

/// One request to the Gong double at `base_url` (its extensive endpoint): what a granted slot
/// is spent on. Returns the status; the double counts the request against its limits on
/// arrival.
pub async fn gong_request(http: &reqwest::Client, base_url: &str) -> u16 {
    http.post(format!(
        "{base_url}{}",
        gong_testkit::gong_double::EXTENSIVE_PATH
    ))
    .basic_auth(DEFAULT_ACCESS_KEY, Some(DEFAULT_ACCESS_KEY_SECRET))
    .json(&serde_json::json!({"filter": {"callIds": ["1"]}}))
    .send()
    .await
    .expect("gong double answers")
    .status()
    .as_u16()
}

/// A TCP proxy in front of `upstream_port` on loopback that holds every byte coming from the
/// server for `delay` (bytes to the server pass at once): a pod whose acks arrive late. Returns
/// the proxy's port; it serves until the runtime ends.
pub async fn slow_downlink_proxy(upstream_port: u16, delay: Duration) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind proxy");
    let port = listener.local_addr().expect("proxy address").port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream_port)).await
            else {
                continue;
            };
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
            });
            let (held, mut release) =
                tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 64 * 1024];
                while let Ok(read) = server_read.read(&mut buffer).await {
                    if read == 0
                        || held
                            .send((tokio::time::Instant::now() + delay, buffer[..read].to_vec()))
                            .is_err()
                    {
                        break;
                    }
                }
            });
            tokio::spawn(async move {
                while let Some((due, bytes)) = release.recv().await {
                    tokio::time::sleep_until(due).await;
                    if client_write.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}
