//! gong-enrich's metrics. Names are part of the contract: dashboards depend on them.
//!
//! - `gong_enrich_api_requests_total{endpoint,status}`: requests to Gong by answer (`200`, `404`,
//!   `429`, `500`..., or `timeout` / `error` when no answer came).
//! - `gong_enrich_api_request_duration_seconds{endpoint}`.
//! - `gong_enrich_batch_size`: raw events per pulled batch.
//! - `gong_enrich_calls_per_request`: call ids per Gong request.
//! - `gong_enrich_batch_linger_seconds`: how long the current pull waits for its batch to fill
//!   (`ENRICH_BATCH_LINGER`, or `ENRICH_BATCH_LINGER_MAX` while the quota spend is ahead of pace).
//! - `gong_enrich_quota_remaining_today`, `gong_enrich_quota_exhausted` (0/1).
//! - `gong_enrich_rate_limited_total`: 429s received from Gong.
//! - `gong_enrich_events_total{outcome}`: raw events by outcome.
//! - `gong_enrich_consumer_pending`, `gong_enrich_consumer_ack_pending`: from consumer info.
//! - `gong_enrich_sweep_calls_total{result}`: calls the sweep `listed`, found `present` in the
//!   index of calls seen, and `injected` into `GONG_RAW` (by this process).
//! - `gong_enrich_sweep_last_calls{result}`: the same counts of the deployment's last completed
//!   continuous sweep (read from its checkpoint, so every replica shows the same; 0 until one
//!   completed).
//! - `gong_enrich_sweep_last_success_timestamp_seconds`: NATS server time of the last completed
//!   continuous sweep (before the first one: the time the continuous sweep was first set up), the
//!   same on every replica. Absent when `ENRICH_SWEEP_INTERVAL` is 0.
//! - `gong_enrich_transcripts_pending_recheck`: calls waiting for a late transcript.
//! - `gong_enrich_transcript_rechecks_total{result}`: rechecks that `found` the transcript,
//!   found it `not_yet` (another recheck follows), or gave up (`missing`, after the last one).
//!
//! - `gong_enrich_entities_total{job,result}`: users and answered scorecards (`job` `users`,
//!   `scorecards`) `published` to `GONG_ENRICHED` (acknowledged) or `skipped` (no id,
//!   unreadable, too large; each logged) by this process.
//! - `gong_enrich_entities_last_success_timestamp_seconds{job}`: NATS server time of the
//!   deployment's last completed fetch of the job (before the first: when the job was first set
//!   up), read from its checkpoint, the same on every replica. Absent for a job turned off.
//! - `gong_enrich_entities_last_published{job}`: events the last completed fetch published.
//! - `gong_enrich_entities_interval_seconds{job}`: the job's refresh interval
//!   (`ENRICH_USERS_REFRESH`, `ENRICH_SCORECARDS_REFRESH`), for the staleness alert.
//!
//! `gong-enrich replay` runs as a command with no metrics endpoint: its counts are in its
//! summary and logs, not here.

use std::time::Duration;

/// `outcome` values of `gong_enrich_events_total` (every one the worker settles with).
pub const EVENT_OUTCOMES: &[&str] = &[
    "enriched",
    "call_not_found",
    "malformed_response",
    "unparseable_webhook",
    "invalid_call_id",
    "enriched_too_large",
    "retry",
    "auth_fault",
    "quota_wait",
];

/// `status` values of `gong_enrich_api_requests_total` registered at start (success and the
/// ones the auth alert selects on); others (`429` has its own counter, `404`, `5xx`,
/// `timeout`...) appear when they first happen.
pub const API_STATUSES: &[&str] = &["200", "401", "403"];

/// `endpoint` values (`list`: the sweep's listing by date; `users`, `scorecards`: the entity
/// jobs).
pub const ENDPOINTS: &[&str] = &["extensive", "transcript", "list", "users", "scorecards"];

/// `job` values of the entity metrics.
pub const ENTITY_JOBS: &[&str] = &["users", "scorecards"];

/// `result` values of `gong_enrich_entities_total`.
pub const ENTITY_RESULTS: &[&str] = &["published", "skipped"];

/// `result` values of `gong_enrich_sweep_calls_total` and `gong_enrich_sweep_last_calls`.
pub const SWEEP_RESULTS: &[&str] = &["listed", "present", "injected"];

/// `result` values of `gong_enrich_transcript_rechecks_total`.
pub const RECHECK_RESULTS: &[&str] = &["found", "not_yet", "missing"];

/// Registers every `gong_enrich_*` metric whose true starting value is known, at zero, so a
/// fresh process exposes the whole contract (tests/deploy/expected_metrics.txt) and
/// `increase()` in alerts sees the first event. The gauges read from shared state (quota,
/// consumer backlog) are not faked here: [`crate::start`] publishes them from JetStream before
/// the stage reports ready. Called once from [`crate::start`].
pub fn register() {
    for endpoint in ENDPOINTS {
        for status in API_STATUSES {
            metrics::counter!("gong_enrich_api_requests_total", "endpoint" => *endpoint, "status" => *status)
                .increment(0);
        }
        // A histogram handle registers the series; it renders with zero counts until a sample.
        let _ = metrics::histogram!("gong_enrich_api_request_duration_seconds", "endpoint" => *endpoint);
    }
    let _ = metrics::histogram!("gong_enrich_calls_per_request");
    let _ = metrics::histogram!("gong_enrich_batch_size");
    metrics::counter!("gong_enrich_rate_limited_total").increment(0);
    for outcome in EVENT_OUTCOMES {
        metrics::counter!("gong_enrich_events_total", "outcome" => *outcome).increment(0);
    }
    for result in SWEEP_RESULTS {
        metrics::counter!("gong_enrich_sweep_calls_total", "result" => *result).increment(0);
    }
    for job in ENTITY_JOBS {
        for result in ENTITY_RESULTS {
            metrics::counter!("gong_enrich_entities_total", "job" => *job, "result" => *result)
                .increment(0);
        }
    }
    for result in RECHECK_RESULTS {
        metrics::counter!("gong_enrich_transcript_rechecks_total", "result" => *result)
            .increment(0);
    }
}

/// One sweep page: calls listed, found present, injected.
pub fn sweep_calls(listed: u64, present: u64, injected: u64) {
    for (result, count) in [
        ("listed", listed),
        ("present", present),
        ("injected", injected),
    ] {
        metrics::counter!("gong_enrich_sweep_calls_total", "result" => result).increment(count);
    }
}

/// The deployment's last completed continuous sweep (server time, seconds) and its counts.
pub fn sweep_last(success_seconds: f64, listed: u64, present: u64, injected: u64) {
    metrics::gauge!("gong_enrich_sweep_last_success_timestamp_seconds").set(success_seconds);
    for (result, count) in [
        ("listed", listed),
        ("present", present),
        ("injected", injected),
    ] {
        metrics::gauge!("gong_enrich_sweep_last_calls", "result" => result).set(count as f64);
    }
}

/// Entity events of `job` published or skipped (`result`).
pub fn entities(job: &'static str, result: &'static str, count: u64) {
    metrics::counter!("gong_enrich_entities_total", "job" => job, "result" => result)
        .increment(count);
}

/// The deployment's last completed fetch of `job` (server time, seconds), what it published, and
/// the job's interval.
pub fn entities_last(job: &'static str, success_seconds: f64, published: u64, interval: Duration) {
    metrics::gauge!("gong_enrich_entities_last_success_timestamp_seconds", "job" => job)
        .set(success_seconds);
    metrics::gauge!("gong_enrich_entities_last_published", "job" => job).set(published as f64);
    metrics::gauge!("gong_enrich_entities_interval_seconds", "job" => job)
        .set(interval.as_secs_f64());
}

/// Calls waiting for a late transcript.
pub fn transcripts_pending(count: usize) {
    metrics::gauge!("gong_enrich_transcripts_pending_recheck").set(count as f64);
}

/// One transcript recheck: `found`, `not_yet` or `missing`.
pub fn transcript_recheck(result: &'static str) {
    metrics::counter!("gong_enrich_transcript_rechecks_total", "result" => result).increment(1);
}

/// One request to Gong answered with `status` (or failed: `timeout`, `error`).
pub fn api_request(endpoint: &'static str, status: &str, elapsed: Duration) {
    metrics::counter!("gong_enrich_api_requests_total", "endpoint" => endpoint, "status" => status.to_string())
        .increment(1);
    metrics::histogram!("gong_enrich_api_request_duration_seconds", "endpoint" => endpoint)
        .record(elapsed.as_secs_f64());
}

/// Call ids in one request.
pub fn calls_per_request(count: usize) {
    metrics::histogram!("gong_enrich_calls_per_request").record(count as f64);
}

/// Raw events in one pulled batch.
pub fn batch_size(count: usize) {
    metrics::histogram!("gong_enrich_batch_size").record(count as f64);
}

/// The linger of the pull about to start (quota pacing, [`crate::pacing`]).
pub fn batch_linger(linger: Duration) {
    metrics::gauge!("gong_enrich_batch_linger_seconds").set(linger.as_secs_f64());
}

/// A 429 from Gong.
pub fn rate_limited() {
    metrics::counter!("gong_enrich_rate_limited_total").increment(1);
}

/// The shared quota as last read: requests left today and whether it is spent.
pub fn quota(remaining_today: u64, exhausted: bool) {
    metrics::gauge!("gong_enrich_quota_remaining_today").set(remaining_today as f64);
    metrics::gauge!("gong_enrich_quota_exhausted").set(if exhausted { 1.0 } else { 0.0 });
}

/// One raw event settled with `outcome` (`enriched`, `call_not_found`, `malformed_response`,
/// `unparseable_webhook`, `invalid_call_id`, `retry`, `auth_fault`, `quota_wait`).
pub fn event(outcome: &'static str) {
    metrics::counter!("gong_enrich_events_total", "outcome" => outcome).increment(1);
}

/// The durable consumer's backlog: not yet delivered, and delivered but not acknowledged.
pub fn consumer_pending(pending: u64, ack_pending: usize) {
    metrics::gauge!("gong_enrich_consumer_pending").set(pending as f64);
    metrics::gauge!("gong_enrich_consumer_ack_pending").set(ack_pending as f64);
}
