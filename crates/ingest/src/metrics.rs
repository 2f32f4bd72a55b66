//! gong-ingest's metrics. Labels never carry a token, a key or a URL path.

use std::time::Duration;

/// `gong_ingest_requests_total{outcome}`: every answered request.
pub fn request(outcome: &'static str, elapsed: Duration) {
    metrics::counter!("gong_ingest_requests_total", "outcome" => outcome).increment(1);
    metrics::histogram!("gong_ingest_request_duration_seconds").record(elapsed.as_secs_f64());
}

/// `gong_ingest_auth_failures_total{reason}`.
pub fn auth_failure(reason: &'static str) {
    metrics::counter!("gong_ingest_auth_failures_total", "reason" => reason).increment(1);
}

/// `gong_ingest_publish_duration_seconds`: publish until JetStream's ack.
pub fn publish(elapsed: Duration) {
    metrics::histogram!("gong_ingest_publish_duration_seconds").record(elapsed.as_secs_f64());
}

/// `gong_ingest_publish_failures_total{kind}`: publishes that ended in a 503.
pub fn publish_failure(kind: &'static str) {
    metrics::counter!("gong_ingest_publish_failures_total", "kind" => kind).increment(1);
}

/// `gong_ingest_body_bytes`: size of accepted bodies.
pub fn body_bytes(len: usize) {
    metrics::histogram!("gong_ingest_body_bytes").record(len as f64);
}

/// `gong_ingest_requests_in_flight`.
pub fn in_flight(count: usize) {
    metrics::gauge!("gong_ingest_requests_in_flight").set(count as f64);
}

/// `gong_ingest_connections_open`.
pub fn connections(count: usize) {
    metrics::gauge!("gong_ingest_connections_open").set(count as f64);
}
