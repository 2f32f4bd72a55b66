//! Gong-signed webhooks sent from the test, with every answer recorded (when, what status,
//! which event id), retrying 503s and connection errors the way Gong might.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gong_testkit::webhook::{call_body, GongClaims, TestKey};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tokio::task::JoinHandle;

/// One HTTP attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// When the request was sent.
    pub started: Instant,
    /// When its answer (or transport error) came.
    pub ended: Instant,
    /// The status, or `None` for a transport error (refused, reset, timeout).
    pub status: Option<u16>,
}

/// Everything that happened to one webhook.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The event id from the 2xx answer.
    pub event_id: Option<String>,
    /// Every attempt, in order.
    pub attempts: Vec<Attempt>,
}

impl Delivery {
    /// Answered 2xx (stored in GONG_RAW, by ingest's promise).
    pub fn accepted(&self) -> bool {
        self.event_id.is_some()
    }
}

/// Signs and posts webhooks to one gong-ingest.
pub struct Sender {
    http: reqwest::Client,
    url: String,
    key: EncodingKey,
    /// How long one webhook is retried (503 and transport errors) before giving up.
    pub give_up_after: Duration,
}

impl Sender {
    /// A sender to `url` (JWT mode, signed with the `rule_a` test key; the `webhook_url` claim
    /// is `url`).
    pub fn new(url: String) -> Sender {
        Sender {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .pool_max_idle_per_host(64)
                .build()
                .expect("http client"),
            url,
            key: EncodingKey::from_rsa_pem(TestKey::rule_a().private_pem().as_bytes())
                .expect("test key"),
            give_up_after: Duration::from_secs(120),
        }
    }

    /// Sends the webhook of `call_id` until it is answered 2xx, another non-503 status, or
    /// [`Sender::give_up_after`] passes. The same bytes go every time (same event id); only the
    /// JWT is fresh.
    pub async fn deliver(&self, call_id: &str) -> Delivery {
        let body = call_body(call_id, false);
        let first = Instant::now();
        let mut delivery = Delivery {
            event_id: None,
            attempts: Vec::new(),
        };
        let mut backoff = Duration::from_millis(50);
        loop {
            let claims = GongClaims::for_body(&body, &self.url, 300);
            let token = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key)
                .expect("sign");
            let started = Instant::now();
            let answer = self
                .http
                .post(&self.url)
                .header("content-type", "application/json")
                .header("authorization", format!("Bearer {token}"))
                .body(body.clone())
                .send()
                .await;
            let (status, event_id) = match answer {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let json: serde_json::Value = response.json().await.unwrap_or_default();
                    let event_id = json["event_id"].as_str().map(str::to_string);
                    (Some(status), event_id)
                }
                Err(_) => (None, None),
            };
            delivery.attempts.push(Attempt {
                started,
                ended: Instant::now(),
                status,
            });
            match status {
                Some(200..=299) => {
                    delivery.event_id =
                        Some(event_id.unwrap_or_else(|| panic!("2xx without event_id")));
                    return delivery;
                }
                Some(503) | None if first.elapsed() < self.give_up_after => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                _ => return delivery,
            }
        }
    }
}

/// Webhooks being sent in the background.
pub struct Traffic {
    /// Webhooks answered 2xx so far.
    pub accepted: Arc<AtomicUsize>,
    /// Webhooks finished (2xx or given up) so far.
    pub finished: Arc<AtomicUsize>,
    handle: JoinHandle<Vec<Delivery>>,
}

impl Traffic {
    /// Sends every call id with `concurrency` webhooks in flight, each worker pausing `pace`
    /// between webhooks (spreads the load over time so faults land mid-load).
    pub fn start(
        sender: Arc<Sender>,
        call_ids: Vec<String>,
        concurrency: usize,
        pace: Duration,
    ) -> Traffic {
        let accepted = Arc::new(AtomicUsize::new(0));
        let finished = Arc::new(AtomicUsize::new(0));
        let queue = Arc::new(std::sync::Mutex::new(call_ids.into_iter()));
        let workers: Vec<JoinHandle<Vec<Delivery>>> = (0..concurrency.max(1))
            .map(|_| {
                let (sender, queue, accepted, finished) = (
                    sender.clone(),
                    queue.clone(),
                    accepted.clone(),
                    finished.clone(),
                );
                tokio::spawn(async move {
                    let mut done = Vec::new();
                    loop {
                        let next = queue.lock().expect("queue").next();
                        let Some(call_id) = next else { return done };
                        let delivery = sender.deliver(&call_id).await;
                        if delivery.accepted() {
                            accepted.fetch_add(1, Ordering::SeqCst);
                        }
                        finished.fetch_add(1, Ordering::SeqCst);
                        done.push(delivery);
                        if !pace.is_zero() {
                            tokio::time::sleep(pace).await;
                        }
                    }
                })
            })
            .collect();
        let handle = tokio::spawn(async move {
            let mut all = Vec::new();
            for worker in workers {
                all.extend(worker.await.expect("sender worker"));
            }
            all
        });
        Traffic {
            accepted,
            finished,
            handle,
        }
    }

    /// Waits until at least `count` webhooks were answered 2xx (or every webhook finished).
    pub async fn wait_accepted(&self, count: usize, total: usize) {
        let accepted = self.accepted.clone();
        let finished = self.finished.clone();
        gong_testkit::wait_until(
            Duration::from_secs(120),
            &format!("{count} webhooks answered 2xx"),
            || {
                let done = accepted.load(Ordering::SeqCst) >= count
                    || finished.load(Ordering::SeqCst) >= total;
                async move { done.then_some(()) }
            },
        )
        .await
    }

    /// Waits for every webhook and returns what happened to each.
    pub async fn finish(self) -> Vec<Delivery> {
        self.handle.await.expect("traffic task")
    }
}

/// `count` call ids (numeric strings of 19 digits) starting at `first`.
pub fn call_ids(first: u64, count: usize) -> Vec<String> {
    (0..count as u64)
        .map(|index| (first + index).to_string())
        .collect()
}

/// Counts answers by status over every delivery: (2xx, 503, transport errors, other).
pub fn answer_counts(deliveries: &[Delivery]) -> (usize, usize, usize, usize) {
    let mut counts = (0, 0, 0, 0);
    for attempt in deliveries.iter().flat_map(|delivery| &delivery.attempts) {
        match attempt.status {
            Some(200..=299) => counts.0 += 1,
            Some(503) => counts.1 += 1,
            None => counts.2 += 1,
            Some(_) => counts.3 += 1,
        }
    }
    counts
}

/// When the last answer (of any attempt) arrived: the end of the traffic as the senders saw it.
pub fn last_answer(deliveries: &[Delivery]) -> Option<Instant> {
    deliveries
        .iter()
        .flat_map(|delivery| &delivery.attempts)
        .map(|attempt| attempt.ended)
        .max()
}
