//! gong-ingest's metrics. Labels never carry a token, a key or a URL path.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};

use crate::auth::AuthError;

/// `outcome` values of `gong_ingest_requests_total` registered at start (alerts and
/// dashboards select on them); rarer ones (`not_found`, `bad_request`...) appear when they
/// first happen.
pub const REQUEST_OUTCOMES: &[&str] = &[
    "accepted",
    "duplicate",
    "dead_lettered",
    "unauthorized",
    "unavailable",
    "overloaded",
    "too_large",
    "timeout",
];

/// `kind` values of `gong_ingest_publish_failures_total`.
pub const PUBLISH_FAILURE_KINDS: &[&str] = &["disconnected", "timeout", "error", "max_payload"];

/// One of each rejection, for their `reason` labels.
const AUTH_ERRORS: [AuthError; 12] = [
    AuthError::MissingAuthorization,
    AuthError::MultipleAuthorization,
    AuthError::TokenTooLarge,
    AuthError::MalformedToken,
    AuthError::AlgorithmNotAllowed,
    AuthError::BadSignature,
    AuthError::Expired,
    AuthError::NotYetValid,
    AuthError::MissingClaim("exp"),
    AuthError::BodyHashMismatch,
    AuthError::WebhookUrlMismatch,
    AuthError::UnknownToken,
];

/// Registers every `gong_ingest_*` metric at zero, so a fresh process exposes the whole
/// contract (tests/deploy/expected_metrics.txt): dashboards show 0 instead of "no data" and
/// `increase()` in alerts sees the first failure. Called once from [`crate::start`].
pub fn register() {
    for (_, counter) in &hot().requests {
        counter.increment(0);
    }
    for error in AUTH_ERRORS {
        metrics::counter!("gong_ingest_auth_failures_total", "reason" => error.label())
            .increment(0);
    }
    for kind in PUBLISH_FAILURE_KINDS {
        metrics::counter!("gong_ingest_publish_failures_total", "kind" => *kind).increment(0);
    }
    // The histogram handles registered their series; they render with zero counts until a
    // sample.
    in_flight(0);
    connections(0);
}

/// Handles of the metrics every request or connection touches, made once: a
/// `metrics::counter!` with labels builds and hashes its key and looks it up in the registry on
/// every call, which showed in the ingest profile. Made on first use, which is [`register`]
/// in [`crate::start`], after the recorder is installed.
struct Hot {
    requests: Vec<(&'static str, Counter)>,
    request_duration: Histogram,
    publish_duration: Histogram,
    body_bytes: Histogram,
    in_flight: Gauge,
    connections: Gauge,
}

fn hot() -> &'static Hot {
    static HOT: OnceLock<Hot> = OnceLock::new();
    HOT.get_or_init(|| Hot {
        requests: REQUEST_OUTCOMES
            .iter()
            .map(|outcome| {
                let counter =
                    metrics::counter!("gong_ingest_requests_total", "outcome" => *outcome);
                (*outcome, counter)
            })
            .collect(),
        request_duration: metrics::histogram!("gong_ingest_request_duration_seconds"),
        publish_duration: metrics::histogram!("gong_ingest_publish_duration_seconds"),
        body_bytes: metrics::histogram!("gong_ingest_body_bytes"),
        in_flight: metrics::gauge!("gong_ingest_requests_in_flight"),
        connections: metrics::gauge!("gong_ingest_connections_open"),
    })
}

/// `gong_ingest_requests_total{outcome}`: every answered request.
pub fn request(outcome: &'static str, elapsed: Duration) {
    let hot = hot();
    match hot.requests.iter().find(|(known, _)| *known == outcome) {
        Some((_, counter)) => counter.increment(1),
        // A rare outcome (`not_found`, `bad_request`...): appears when it first happens.
        None => metrics::counter!("gong_ingest_requests_total", "outcome" => outcome).increment(1),
    }
    hot.request_duration.record(elapsed.as_secs_f64());
}

/// `gong_ingest_auth_failures_total{reason}`.
pub fn auth_failure(reason: &'static str) {
    metrics::counter!("gong_ingest_auth_failures_total", "reason" => reason).increment(1);
}

/// `gong_ingest_publish_duration_seconds`: publish until JetStream's ack.
pub fn publish(elapsed: Duration) {
    hot().publish_duration.record(elapsed.as_secs_f64());
}

/// `gong_ingest_publish_failures_total{kind}`: publishes that ended in a 503.
pub fn publish_failure(kind: &'static str) {
    metrics::counter!("gong_ingest_publish_failures_total", "kind" => kind).increment(1);
}

/// `gong_ingest_body_bytes`: size of accepted bodies.
pub fn body_bytes(len: usize) {
    hot().body_bytes.record(len as f64);
}

/// `gong_ingest_requests_in_flight`.
pub fn in_flight(count: usize) {
    hot().in_flight.set(count as f64);
}

/// `gong_ingest_connections_open`.
pub fn connections(count: usize) {
    hot().connections.set(count as f64);
}
