//! Shared set-up: a nats-server per test and gong-ingest started in-process.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use async_nats::jetstream;
use gong_common::names;
use gong_common::Env;
use gong_ingest::{IngestConfig, Running};
use gong_testkit::nats::free_port;
use gong_testkit::webhook::TestKey;
use gong_testkit::{wait_until, NatsServer};
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
    Env::from_pairs(env_pairs(nats))
}

/// The test configuration as variables (both auth modes, a 64 KiB body cap, 3s Retry-After).
pub fn env_pairs(nats: &NatsServer) -> Vec<(String, String)> {
    let keys = format!(
        "{},{}",
        TestKey::rule_a().public_base64_der(),
        TestKey::rule_b().public_base64_der()
    );
    [
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
    ]
    .into_iter()
    .map(|(name, value)| (name.to_string(), value))
    .collect()
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

/// The value of one unlabelled or fully labelled series (`name{label="value"}`) in a Prometheus
/// text page.
pub fn metric_value(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// gong-ingest as a child process, for tests that read its metrics: the in-process servers of
/// the other tests share one process-wide recorder, a child has its own.
pub struct Process {
    pub nats: NatsServer,
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub http: reqwest::Client,
    child: Child,
    logs: tempfile::NamedTempFile,
}

impl Process {
    /// Starts `gong-ingest` with the test configuration plus `extra`, and waits for `/readyz`.
    pub async fn start(extra: &[(&str, &str)]) -> Process {
        let nats = NatsServer::start_new();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let logs = tempfile::NamedTempFile::new().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_gong-ingest"));
        command.env_clear();
        for (name, value) in env_pairs(&nats) {
            command.env(name, value);
        }
        command
            .env("INGEST_ADDR", addr.to_string())
            .env("ADMIN_ADDR", admin_addr.to_string())
            .env("RUST_LOG", "info")
            .env("LOG_FORMAT", "json");
        for (name, value) in extra {
            command.env(name, value);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(logs.reopen().unwrap())
            .spawn()
            .expect("spawn gong-ingest");
        let process = Process {
            nats,
            addr,
            admin_addr,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
            child,
            logs,
        };
        let http = process.http.clone();
        wait_until(Duration::from_secs(30), "gong-ingest ready", || {
            let http = http.clone();
            async move {
                let response = http
                    .get(format!("http://{admin_addr}/readyz"))
                    .send()
                    .await
                    .ok()?;
                (response.status().as_u16() == 200).then_some(())
            }
        })
        .await;
        process
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Its `/metrics` page.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("http://{}/metrics", self.admin_addr))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// One series of its `/metrics` (panics when absent: every series is registered at start).
    pub async fn metric(&self, series: &str) -> f64 {
        let page = self.metrics().await;
        metric_value(&page, series).unwrap_or_else(|| panic!("no series {series} in\n{page}"))
    }

    /// Waits until `series` reads `expected`.
    pub async fn wait_for_metric(&self, series: &str, expected: f64) {
        wait_until(
            Duration::from_secs(20),
            &format!("{series} == {expected}"),
            || async {
                let page = self.metrics().await;
                (metric_value(&page, series) == Some(expected)).then_some(())
            },
        )
        .await
    }

    /// What it logged so far (JSON lines), for failure messages.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.logs.path()).unwrap_or_default()
    }

    pub async fn count(&self, stream: &str) -> u64 {
        match self.nats.jetstream().await.get_stream(stream).await {
            Ok(mut stream) => stream.info().await.map(|i| i.state.messages).unwrap_or(0),
            Err(_) => 0,
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // Our own child, by its handle.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
