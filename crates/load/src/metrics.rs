//! gong-load's metrics (`gong_load_*`).

use std::collections::BTreeMap;

use crate::ledger::FileState;
use crate::schema::Table;

/// Why a batch was flushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushReason {
    /// `LOAD_FLUSH_MAX_ROWS` reached.
    Rows,
    /// `LOAD_FLUSH_MAX_BYTES` reached.
    Bytes,
    /// `LOAD_FLUSH_MAX_AGE` elapsed.
    Age,
    /// Shutdown.
    Shutdown,
}

impl FlushReason {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            FlushReason::Rows => "rows",
            FlushReason::Bytes => "bytes",
            FlushReason::Age => "age",
            FlushReason::Shutdown => "shutdown",
        }
    }
}

/// Every [`FlushReason`].
pub const FLUSH_REASONS: [FlushReason; 4] = [
    FlushReason::Rows,
    FlushReason::Bytes,
    FlushReason::Age,
    FlushReason::Shutdown,
];

/// `reason` values of `gong_load_dead_letters_total` (what [`crate::range_writer::decode`]
/// calls poison).
pub const DEAD_LETTER_REASONS: &[&str] = &[
    "undecodable_event",
    "unsupported_schema_version",
    "missing_call_id",
    "missing_user_id",
    "missing_answered_scorecard_id",
];

/// Registers every `gong_load_*` metric at its starting value, so a fresh process exposes the
/// whole contract (tests/deploy/expected_metrics.txt) and `increase()` in alerts sees the
/// first event: counters at zero per table/reason, histograms empty, and
/// `gong_load_last_flush_timestamp_seconds` at the process start (no flush yet; 0 would make
/// "time since the last flush" fire at once after every restart, absence would hide a loader
/// that never manages to flush). `gong_load_consumer_pending` is published by
/// [`crate::start`] from the consumer. Called once from [`crate::start`].
pub fn register() {
    for table in Table::ALL {
        let name = table.name();
        metrics::counter!("gong_load_rows_total", "table" => name).increment(0);
        metrics::counter!("gong_load_files_total", "table" => name).increment(0);
        metrics::counter!("gong_load_bytes_total", "table" => name).increment(0);
        metrics::counter!("gong_load_snowpipe_failures_total", "table" => name).increment(0);
    }
    for reason in FLUSH_REASONS {
        metrics::counter!("gong_load_flushes_total", "reason" => reason.as_str()).increment(0);
    }
    for reason in DEAD_LETTER_REASONS {
        metrics::counter!("gong_load_dead_letters_total", "reason" => reason.to_string())
            .increment(0);
    }
    for state in FileState::FINAL {
        metrics::counter!("gong_load_snowflake_verified_total", "state" => state.as_str())
            .increment(0);
    }
    metrics::counter!("gong_load_snowflake_report_gaps_total").increment(0);
    snowflake_standby();
    metrics::counter!("gong_load_stage_errors_total").increment(0);
    metrics::counter!("gong_load_ranges_lost_total").increment(0);
    metrics::counter!("gong_load_ranges_taken_over_total").increment(0);
    lease_active(false);
    metrics::counter!("gong_load_expired_unstaged_total").increment(0);
    open_batch(0);
    // A histogram handle registers the series; it renders with zero counts until a sample.
    let _ = metrics::histogram!("gong_load_file_size_bytes");
    let _ = metrics::histogram!("gong_load_event_to_staged_seconds");
    let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
    metrics::gauge!("gong_load_last_flush_timestamp_seconds").set(now);
}

/// One file made durable: `gong_load_rows_total`, `gong_load_files_total`,
/// `gong_load_bytes_total` (per table) and `gong_load_file_size_bytes`.
pub fn file_staged(table: Table, rows: usize, bytes: u64) {
    let name = table.name();
    metrics::counter!("gong_load_rows_total", "table" => name).increment(rows as u64);
    metrics::counter!("gong_load_files_total", "table" => name).increment(1);
    metrics::counter!("gong_load_bytes_total", "table" => name).increment(bytes);
    metrics::histogram!("gong_load_file_size_bytes").record(bytes as f64);
}

/// `gong_load_flushes_total{reason}` and `gong_load_last_flush_timestamp_seconds`.
pub fn flushed(reason: FlushReason) {
    metrics::counter!("gong_load_flushes_total", "reason" => reason.as_str()).increment(1);
    let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
    metrics::gauge!("gong_load_last_flush_timestamp_seconds").set(now);
}

/// `gong_load_event_to_staged_seconds`: webhook received → file durable.
pub fn event_to_staged(seconds: f64) {
    metrics::histogram!("gong_load_event_to_staged_seconds").record(seconds.max(0.0));
}

/// `gong_load_stage_errors_total`.
pub fn stage_error() {
    metrics::counter!("gong_load_stage_errors_total").increment(1);
}

/// `gong_load_consumer_pending`: messages not yet delivered to the consumer.
pub fn consumer_pending(pending: u64) {
    metrics::gauge!("gong_load_consumer_pending").set(pending as f64);
}

/// `gong_load_ranges_lost_total`: claims lost to another replica.
pub fn range_lost() {
    metrics::counter!("gong_load_ranges_lost_total").increment(1);
}

/// `gong_load_ranges_taken_over_total`: pending ranges rewritten after their owner stopped.
pub fn range_taken_over() {
    metrics::counter!("gong_load_ranges_taken_over_total").increment(1);
}

/// `gong_load_open_batch_events`: events the active loader holds in its open batch (staged at
/// the next flush; handed back if it dies). 0 on a standby.
pub fn open_batch(events: usize) {
    metrics::gauge!("gong_load_open_batch_events").set(events as f64);
}

/// `gong_load_expired_unstaged_total`: enriched events that expired from GONG_ENRICHED before
/// any loader staged them (the head jumped over them; replay them from GONG_RAW).
pub fn expired_unstaged(events: u64) {
    metrics::counter!("gong_load_expired_unstaged_total").increment(events);
}

/// `gong_load_lease_active`: 1 while this replica holds the `load` lease (the active loader),
/// 0 on a hot standby. Summed over replicas it is 1 in a healthy deployment.
pub fn lease_active(active: bool) {
    metrics::gauge!("gong_load_lease_active").set(if active { 1.0 } else { 0.0 });
}

/// `gong_load_dead_letters_total{reason}`.
pub fn dead_letter(reason: &str) {
    metrics::counter!("gong_load_dead_letters_total", "reason" => reason.to_string()).increment(1);
}

/// `gong_load_snowpipe_failures_total{table}`: `insertFiles` calls that failed after their
/// attempts (`SNOWFLAKE_NOTIFY_ATTEMPTS`). The files stay `pending` in the ledger and are
/// notified again with backoff.
pub fn snowpipe_failure(table: Table) {
    metrics::counter!("gong_load_snowpipe_failures_total", "table" => table.name()).increment(1);
}

/// `gong_load_snowflake_files{state}`: files in the ledger (`gong_load_files`) per state, as
/// the notifier (the `load` lease holder) last saw them; 0 on a standby, so the sum over
/// replicas is the ledger's count.
pub fn snowflake_files(counts: &BTreeMap<FileState, usize>) {
    for state in FileState::ALL {
        let count = counts.get(&state).copied().unwrap_or(0);
        metrics::gauge!("gong_load_snowflake_files", "state" => state.as_str()).set(count as f64);
    }
}

/// `gong_load_snowflake_oldest_unverified_seconds`: age (since it was staged) of the oldest
/// file with no final state yet (pending, notified, loading); 0 when there is none.
pub fn snowflake_oldest_unverified(seconds: f64) {
    metrics::gauge!("gong_load_snowflake_oldest_unverified_seconds").set(seconds.max(0.0));
}

/// `gong_load_snowflake_verified_total{state}`: files that reached a final state (`loaded`,
/// `load_failed`, `partially_loaded`, `unknown`).
pub fn snowflake_verified(state: FileState) {
    metrics::counter!("gong_load_snowflake_verified_total", "state" => state.as_str()).increment(1);
}

/// `gong_load_snowflake_report_gaps_total`: `insertReport` answers with `completeResult`
/// false (events missed; `loadHistoryScan` is read instead).
pub fn snowflake_report_gap() {
    metrics::counter!("gong_load_snowflake_report_gaps_total").increment(1);
}

/// The Snowflake gauges of a replica that does not notify (a standby, or no Snowpipe): zero.
pub fn snowflake_standby() {
    snowflake_files(&BTreeMap::new());
    snowflake_oldest_unverified(0.0);
}
