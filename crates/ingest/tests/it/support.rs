//! Shared set-up: a nats-server per test and gong-ingest started in-process.

use std::time::Duration;

use async_nats::jetstream;
use gong_common::names;
use gong_common::Env;
use gong_ingest::{IngestConfig, Running};
use gong_testkit::webhook::TestKey;
use gong_testkit::NatsServer;
use tokio_util::sync::CancellationToken;

pub const WEBHOOK_URL: &str = "https://hooks.example.com/webhooks/gong";
pub const URL_TOKEN: &str = "tok_0123456789abcdef0123";

pub struct Harness {
    pub nats: NatsServer,
    pub ingest: Running,
    pub shutdown: CancellationToken,
    pub http: reqwest::Client,
}

pub fn env_for(nats: &NatsServer) -> Env {
    let keys = format!(
        "{},{}",
        TestKey::rule_a().public_base64_der(),
        TestKey::rule_b().public_base64_der()
    );
    Env::from_pairs([
        ("NATS_URL", nats.url()),
        ("ADMIN_ADDR", "127.0.0.1:0".to_string()),
        ("INGEST_ADDR", "127.0.0.1:0".to_string()),
        ("GONG_WEBHOOK_SECRETS", keys),
        ("GONG_WEBHOOK_URL", WEBHOOK_URL.to_string()),
        ("GONG_WEBHOOK_URL_TOKENS", URL_TOKEN.to_string()),
        ("INGEST_MAX_BODY_BYTES", "65536".to_string()),
        ("INGEST_PUBLISH_TIMEOUT", "2s".to_string()),
        ("NATS_REQUEST_TIMEOUT", "2s".to_string()),
        ("INGEST_RETRY_AFTER_SECS", "3".to_string()),
    ])
}

impl Harness {
    pub async fn start() -> Harness {
        let nats = NatsServer::start_new();
        let config = IngestConfig::from_env(&env_for(&nats)).expect("config");
        Harness::start_with(nats, config).await
    }

    pub async fn start_with(nats: NatsServer, config: IngestConfig) -> Harness {
        let shutdown = CancellationToken::new();
        let ingest = gong_ingest::start(config, shutdown.clone())
            .await
            .expect("ingest starts");
        Harness {
            nats,
            ingest,
            shutdown,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.ingest.addr, path)
    }

    pub async fn post_signed(&self, body: &[u8], key: &TestKey) -> reqwest::Response {
        let token = key.sign_webhook(body, WEBHOOK_URL, 300);
        self.http
            .post(self.url("/webhooks/gong"))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .expect("request")
    }

    pub async fn jetstream(&self) -> jetstream::Context {
        self.nats.jetstream().await
    }

    /// Number of messages in `stream` (0 if the stream is missing).
    pub async fn count(&self, stream: &str) -> u64 {
        let jetstream = self.jetstream().await;
        match jetstream.get_stream(stream).await {
            Ok(mut stream) => stream
                .info()
                .await
                .map(|info| info.state.messages)
                .unwrap_or(0),
            Err(_) => 0,
        }
    }

    /// All messages of `stream`, in order.
    pub async fn messages(
        &self,
        stream: &str,
    ) -> Vec<async_nats::jetstream::message::StreamMessage> {
        let jetstream = self.jetstream().await;
        let stream = jetstream.get_stream(stream).await.expect("stream");
        let mut stream = stream;
        let last = stream.info().await.unwrap().state.last_sequence;
        let mut out = Vec::new();
        for seq in 1..=last {
            if let Ok(message) = stream.get_raw_message(seq).await {
                out.push(message);
            }
        }
        out
    }
}

pub async fn json(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let body = response.bytes().await.unwrap();
    let value = serde_json::from_slice(&body).unwrap_or_else(|_| {
        panic!(
            "non-JSON answer {status}: {}",
            String::from_utf8_lossy(&body)
        )
    });
    (status, value)
}

pub fn raw_stream() -> &'static str {
    names::STREAM_RAW
}
