//! Snowpipe notifications that survive a crash, and the verification of every file's load.
//!
//! The live loader records each staged file in the ledger (`ledger.rs`, KV `gong_load_files`)
//! before it acknowledges the file's messages. The [`Notifier`] runs in the replica that holds
//! the `load` lease (one at a time), and each round (every `SNOWFLAKE_VERIFY_POLL`, and at once
//! when a file was recorded):
//!
//! 1. reads the records it does not know yet (the ones this process recorded; the whole key
//!    list when it takes the lease and every [`RESCAN_EVERY`]);
//! 2. sends `insertFiles` for the `pending` files of each pipe (at most 5,000 per call); a
//!    failed round leaves them `pending` with the error, tried again with backoff (capped at
//!    [`BACKOFF_MAX`]), so a file is notified at least once whatever crashes meanwhile;
//! 3. reads `insertReport` of every pipe with files waiting, from the previous `nextBeginMark`,
//!    and moves each reported file to `loading`, `loaded`, `load_failed` or `partially_loaded`
//!    (a failure for us). Snowflake keeps those events for 10 minutes only: when it answers
//!    `completeResult: false` (events were missed), or after taking the lease (events of an
//!    earlier holder's notifications may be gone), the pipe's `loadHistoryScan` is read from
//!    shortly before the earliest waiting notification, paged on `completeResult` from
//!    `rangeEndTime`;
//! 4. a file with no outcome `SNOWFLAKE_VERIFY_TIMEOUT` after its notification is looked up in
//!    `loadHistoryScan` once more, then notified again (once), and after another timeout
//!    reported `unknown` (an error log, the metrics, `snowflake-status`);
//! 5. writes the changed records and publishes `gong_load_snowflake_files{state}` and
//!    `gong_load_snowflake_oldest_unverified_seconds`.
//!
//! Times are the wall clocks of the recording loader and the notifier, compared with each
//! other only across a lease handover, for a timeout of the order of an hour: a skew of
//! seconds changes nothing, and a wrong guess costs one more `insertFiles` (Snowpipe skips a
//! file name it has loaded) or one more `loadHistoryScan`, never a file.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::time::Duration;

use chrono::{DateTime, Utc};
use gong_common::lease::LeaseState;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::LoadError;
use crate::ledger::{
    count_by_state, file_key, FileRecord, FileState, Known, Ledger, LoadOutcome, Written,
};
use crate::metrics;
use crate::schema::Table;
use crate::snowflake::{snowflake_time, truncate, Endpoint, ReportedFile, Snowpipe};

/// How often the notifier lists the whole ledger (records written by an earlier or
/// overlapping lease holder).
pub const RESCAN_EVERY: Duration = Duration::from_secs(300);

/// Longest wait between two notification rounds of a pending file.
pub const BACKOFF_MAX: Duration = Duration::from_secs(600);

/// Files per `insertFiles` call (Snowflake's limit).
const INSERT_FILES_MAX: usize = 5_000;

/// `loadHistoryScan` starts this long before the earliest waiting notification (the notifier's
/// clock against Snowflake's).
const HISTORY_MARGIN_SECS: i64 = 300;

/// `loadHistoryScan` reaches 14 days back; stay inside.
const HISTORY_REACH_SECS: i64 = 13 * 24 * 3600;

/// Pages of one `loadHistoryScan` before giving up for this round.
const HISTORY_PAGES_MAX: usize = 50;

/// The state Snowflake's `status` moves a file to; `None` for a status this version does not
/// know (left as it is, with a warning).
pub fn state_of_status(status: &str) -> Option<FileState> {
    match status {
        "LOAD_IN_PROGRESS" => Some(FileState::Loading),
        "LOADED" => Some(FileState::Loaded),
        "LOAD_FAILED" => Some(FileState::LoadFailed),
        "PARTIALLY_LOADED" => Some(FileState::PartiallyLoaded),
        _ => None,
    }
}

/// Applies what Snowpipe reported about a file to its (not final) record. True when the
/// record changed.
pub fn apply_report(
    record: &mut FileRecord,
    entry: &ReportedFile,
    source: Endpoint,
    now: DateTime<Utc>,
) -> bool {
    if record.state.is_final() {
        return false;
    }
    let Some(state) = state_of_status(&entry.status) else {
        return false;
    };
    let outcome = LoadOutcome {
        status: entry.status.clone(),
        source: source.as_str().to_string(),
        rows_inserted: entry.rows_inserted,
        rows_parsed: entry.rows_parsed,
        errors_seen: entry.errors_seen,
        first_error: entry
            .first_error
            .as_deref()
            .or(entry.system_error.as_deref())
            .map(|error| truncate(error, 500)),
        last_insert_time: entry.last_insert_time.clone(),
    };
    if record.state == state
        && record.outcome.as_ref().map(|known| &known.status) == Some(&outcome.status)
    {
        return false;
    }
    record.state = state;
    record.outcome = Some(outcome);
    // A report proves a notification reached Snowpipe (perhaps an earlier holder's, whose
    // write was lost): the timeout counts from now at the latest.
    if record.notified_at.is_none() {
        record.notified_at = Some(now);
        record.notifications = record.notifications.max(1);
    }
    if state.is_final() {
        record.last_error = None;
    }
    record.updated_at = now;
    true
}

/// What to do with a notified file Snowpipe has reported no outcome for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overdue {
    /// Within `SNOWFLAKE_VERIFY_TIMEOUT` of its notification: wait.
    Wait,
    /// First timeout: notify it again.
    NotifyAgain,
    /// Second timeout: report it `unknown`.
    GiveUp,
}

/// Decides for a `notified` or `loading` record at `now`.
pub fn overdue(record: &FileRecord, now: DateTime<Utc>, timeout: Duration) -> Overdue {
    if !matches!(record.state, FileState::Notified | FileState::Loading) {
        return Overdue::Wait;
    }
    let Some(notified_at) = record.notified_at else {
        return Overdue::Wait;
    };
    let waited = (now - notified_at).to_std().unwrap_or_default();
    if waited < timeout {
        Overdue::Wait
    } else if record.notifications < 2 {
        Overdue::NotifyAgain
    } else {
        Overdue::GiveUp
    }
}

/// Wait before the next notification round of a file whose last `failed_rounds` failed.
pub fn backoff(failed_rounds: u32, poll: Duration) -> Duration {
    let doublings = failed_rounds.clamp(1, 12) - 1;
    (poll * 2u32.pow(doublings)).min(BACKOFF_MAX)
}

/// A record the notifier is not done with.
struct Open {
    known: Known,
    /// When a pending file may be notified.
    next_attempt: Instant,
    /// Changed since last written.
    dirty: bool,
}

/// What the notifier knows during one stretch of holding the lease.
#[derive(Default)]
struct View {
    open: BTreeMap<String, Open>,
    finals: HashMap<String, FileState>,
    /// `nextBeginMark` of each pipe's last `insertReport`.
    marks: HashMap<Table, String>,
    listed_at: Option<Instant>,
    /// Pipes whose `insertReport` may have missed events.
    gaps: BTreeSet<Table>,
    /// Pipes whose `loadHistoryScan` was read this round.
    scanned: BTreeSet<Table>,
    /// Tables this version does not know, warned about once.
    unknown_tables: BTreeSet<String>,
}

impl View {
    fn adopt(&mut self, known: Known) {
        let key = known.key.clone();
        if known.record.state.is_final() {
            self.open.remove(&key);
            self.finals.insert(key, known.record.state);
        } else {
            self.finals.remove(&key);
            self.open.insert(
                key,
                Open {
                    known,
                    next_attempt: Instant::now(),
                    dirty: false,
                },
            );
        }
    }

    fn table_of(&mut self, record: &FileRecord) -> Option<Table> {
        let table = Table::parse(&record.table);
        if table.is_none() && self.unknown_tables.insert(record.table.clone()) {
            tracing::warn!(table = %record.table, path = %record.path, "file of a table this version does not know; left to a newer version");
        }
        table
    }

    /// Tables with files whose notification may yet be reported.
    fn waiting_tables(&mut self) -> BTreeSet<Table> {
        let records: Vec<FileRecord> = self
            .open
            .values()
            .filter(|open| {
                let record = &open.known.record;
                record.notifications > 0 || record.state != FileState::Pending
            })
            .map(|open| open.known.record.clone())
            .collect();
        records
            .iter()
            .filter_map(|record| self.table_of(record))
            .collect()
    }

    /// The open record of `table` that `path`, reported by `table`'s pipe, means: the record
    /// whose path is exactly `path`, or `<table>/<path>` (a pipe `COPY ... FROM
    /// @STAGE/<table>/` may report paths relative to its folder). Never another table's
    /// record, and never a suffix match: every table's file of one range has the same name
    /// below its folder (`dt=.../gong_F-L.parquet`).
    fn find(&self, table: Table, path: &str) -> Option<String> {
        [path.to_string(), format!("{}/{path}", table.name())]
            .into_iter()
            .find_map(|candidate| {
                let key = file_key(&candidate);
                let open = self.open.get(&key)?;
                let record = &open.known.record;
                (record.path == candidate && record.table == table.name()).then_some(key)
            })
    }

    /// Applies what `table`'s pipe reported (`files`) to that table's open records.
    fn apply_all(&mut self, table: Table, files: &[ReportedFile], source: Endpoint) {
        let now = Utc::now();
        for entry in files {
            if state_of_status(&entry.status).is_none() {
                tracing::warn!(path = %entry.path, status = %entry.status, "snowpipe status this version does not know; ignored");
                continue;
            }
            let Some(key) = self.find(table, &entry.path) else {
                continue;
            };
            let Some(open) = self.open.get_mut(&key) else {
                continue;
            };
            let record = &mut open.known.record;
            if !apply_report(record, entry, source, now) {
                continue;
            }
            open.dirty = true;
            let state = record.state;
            let outcome = record.outcome.clone().unwrap_or_default();
            match state {
                FileState::Loaded => {
                    metrics::snowflake_verified(state);
                    tracing::info!(path = %record.path, rows_inserted = outcome.rows_inserted, source = %source, "snowpipe loaded file");
                }
                FileState::LoadFailed | FileState::PartiallyLoaded => {
                    metrics::snowflake_verified(state);
                    tracing::error!(
                        path = %record.path,
                        table = %record.table,
                        state = %state,
                        rows_inserted = outcome.rows_inserted,
                        rows_parsed = outcome.rows_parsed,
                        errors_seen = outcome.errors_seen,
                        first_error = outcome.first_error.as_deref().unwrap_or(""),
                        source = %source,
                        "snowpipe did not load every row of the file; see docs/operations.md#snowpipe-load-failures"
                    );
                }
                _ => {
                    tracing::debug!(path = %record.path, state = %state, "snowpipe load in progress");
                }
            }
        }
    }

    fn publish_metrics(&self) {
        let counts = count_by_state(
            self.open
                .values()
                .map(|open| open.known.record.state)
                .chain(self.finals.values().copied()),
        );
        metrics::snowflake_files(&counts);
        let now = Utc::now();
        let oldest = self
            .open
            .values()
            .filter(|open| !open.known.record.state.is_final())
            .map(|open| (now - open.known.record.staged_at).num_milliseconds())
            .max()
            .unwrap_or(0)
            .max(0);
        metrics::snowflake_oldest_unverified(oldest as f64 / 1000.0);
    }
}

/// Notifies Snowpipe of the ledger's pending files and follows their loads, while this process
/// holds the `load` lease.
pub struct Notifier {
    ledger: Ledger,
    snowpipe: Snowpipe,
    timeout: Duration,
    poll: Duration,
}

impl Notifier {
    /// A notifier of `ledger`'s files through `snowpipe` (timeout and poll from its config).
    pub fn new(ledger: Ledger, snowpipe: Snowpipe) -> Notifier {
        let timeout = snowpipe.config().verify_timeout;
        let poll = snowpipe.config().verify_poll;
        Notifier {
            ledger,
            snowpipe,
            timeout,
            poll,
        }
    }

    /// Runs until `shutdown`: idle while `lease` is not `Active`.
    pub fn spawn(
        self,
        lease: watch::Receiver<LeaseState>,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move { self.run(lease, shutdown).await })
    }

    async fn run(self, mut lease: watch::Receiver<LeaseState>, shutdown: CancellationToken) {
        loop {
            metrics::snowflake_standby();
            let active = tokio::select! {
                _ = shutdown.cancelled() => return,
                active = lease.wait_for(|state| *state == LeaseState::Active) => active.is_ok(),
            };
            if !active {
                return;
            }
            tracing::info!("holding the load lease: notifying snowpipe and verifying loads");
            let mut view = View::default();
            loop {
                // A round stopped half-way (shutdown, lease lost) only repeats work: a file
                // notified but not yet written as such is notified again by the next holder.
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = lease_lost(&mut lease) => break,
                    _ = self.round(&mut view) => {}
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = lease_lost(&mut lease) => break,
                    _ = tokio::time::sleep(self.poll) => {}
                    _ = self.ledger.recorded() => {}
                }
            }
            tracing::info!("load lease lost: snowpipe notifications left to the new holder");
        }
    }

    async fn round(&self, view: &mut View) {
        view.scanned.clear();
        if let Err(error) = self.refresh(view).await {
            tracing::warn!(%error, "cannot read the file ledger; retrying next round");
        }
        self.notify_pending(view).await;
        self.collect_reports(view).await;
        self.handle_overdue(view).await;
        self.persist(view).await;
        view.publish_metrics();
    }

    /// Reads records not known yet: this process's new ones, or every key when due.
    async fn refresh(&self, view: &mut View) -> Result<(), crate::ledger::LedgerError> {
        let (recent, overflowed) = self.ledger.take_recent();
        let first_listing = view.listed_at.is_none();
        let full = overflowed
            || view
                .listed_at
                .is_none_or(|listed| listed.elapsed() >= RESCAN_EVERY);
        let keys = if full {
            let keys = self.ledger.keys().await?;
            let listed: std::collections::HashSet<&String> = keys.iter().collect();
            view.finals.retain(|key, _| listed.contains(key));
            view.open
                .retain(|key, open| open.dirty || listed.contains(key));
            keys
        } else {
            recent
        };
        let unknown: Vec<String> = keys
            .into_iter()
            .filter(|key| !view.open.contains_key(key) && !view.finals.contains_key(key))
            .collect();
        match self.ledger.read_many(unknown).await {
            Ok(read) => {
                for known in read {
                    view.adopt(known);
                }
            }
            Err(error) => {
                // Read them all next round.
                view.listed_at = None;
                return Err(error);
            }
        }
        if full {
            view.listed_at = Some(Instant::now());
        }
        if first_listing {
            // Notifications of an earlier holder may have been reported more than 10
            // minutes ago: look them up in the load history.
            let waiting = view.waiting_tables();
            view.gaps.extend(waiting);
        }
        Ok(())
    }

    /// Sends `insertFiles` for the pending files that are due, per pipe.
    async fn notify_pending(&self, view: &mut View) {
        let now = Instant::now();
        let due: Vec<(String, FileRecord)> = view
            .open
            .iter()
            .filter(|(_, open)| {
                open.known.record.state == FileState::Pending && open.next_attempt <= now
            })
            .map(|(key, open)| (key.clone(), open.known.record.clone()))
            .collect();
        let mut by_table: BTreeMap<Table, Vec<String>> = BTreeMap::new();
        for (key, record) in due {
            if let Some(table) = view.table_of(&record) {
                by_table.entry(table).or_default().push(key);
            }
        }
        for (table, keys) in by_table {
            for chunk in keys.chunks(INSERT_FILES_MAX) {
                let paths: Vec<String> = chunk
                    .iter()
                    .filter_map(|key| view.open.get(key))
                    .map(|open| open.known.record.path.clone())
                    .collect();
                let result = self.snowpipe.insert_files(table, &paths).await;
                let at = Utc::now();
                if let Err(error) = &result {
                    metrics::snowpipe_failure(table);
                    tracing::error!(
                        pipe = %self.snowpipe.config().pipe_for(table),
                        files = paths.len(),
                        %error,
                        "snowpipe notification failed; the files stay pending and are notified again"
                    );
                }
                for key in chunk {
                    let Some(open) = view.open.get_mut(key) else {
                        continue;
                    };
                    let record = &mut open.known.record;
                    match &result {
                        Ok(()) => {
                            record.state = FileState::Notified;
                            record.notified_at = Some(at);
                            record.notifications += 1;
                            record.failed_rounds = 0;
                            record.last_error = None;
                        }
                        Err(error) => {
                            record.failed_rounds += 1;
                            record.last_error = Some(truncate(&error.to_string(), 300));
                            open.next_attempt =
                                Instant::now() + backoff(record.failed_rounds, self.poll);
                        }
                    }
                    record.updated_at = at;
                    open.dirty = true;
                }
            }
        }
    }

    /// Reads `insertReport` of every pipe with files waiting, and `loadHistoryScan` where a
    /// report may have missed events.
    async fn collect_reports(&self, view: &mut View) {
        let mut tables = view.waiting_tables();
        tables.extend(view.gaps.iter().copied());
        for table in tables {
            let mark = view.marks.get(&table).cloned();
            match self.snowpipe.insert_report(table, mark.as_deref()).await {
                Ok(report) => {
                    if let Some(next) = report.next_begin_mark.clone() {
                        view.marks.insert(table, next);
                    }
                    if !report.complete_result {
                        metrics::snowflake_report_gap();
                        tracing::warn!(
                            pipe = %self.snowpipe.config().pipe_for(table),
                            "insertReport missed events; reading loadHistoryScan"
                        );
                        view.gaps.insert(table);
                    }
                    view.apply_all(table, &report.files, Endpoint::InsertReport);
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot read insertReport; retrying next round");
                }
            }
            if view.gaps.contains(&table) && self.scan_history(view, table).await {
                view.gaps.remove(&table);
            }
        }
    }

    /// Reads `loadHistoryScan` of `table`'s pipe over its waiting notifications, every page.
    /// True when the whole window was read.
    async fn scan_history(&self, view: &mut View, table: Table) -> bool {
        view.scanned.insert(table);
        let earliest = view
            .open
            .values()
            .filter(|open| Table::parse(&open.known.record.table) == Some(table))
            .filter_map(|open| open.known.record.notified_at)
            .min();
        let Some(earliest) = earliest else {
            return true;
        };
        let now = Utc::now();
        let start = (earliest - chrono::Duration::seconds(HISTORY_MARGIN_SECS))
            .max(now - chrono::Duration::seconds(HISTORY_REACH_SECS));
        let mut start = snowflake_time(start);
        let end = snowflake_time(now);
        for _ in 0..HISTORY_PAGES_MAX {
            let page = match self.snowpipe.load_history_page(table, &start, &end).await {
                Ok(page) => page,
                Err(error) => {
                    tracing::warn!(%error, "cannot read loadHistoryScan; retrying next round");
                    return false;
                }
            };
            view.apply_all(table, &page.files, Endpoint::LoadHistoryScan);
            if page.complete_result {
                return true;
            }
            match page.range_end_time {
                Some(next) if next != start => start = next,
                _ => {
                    tracing::warn!(
                        pipe = %self.snowpipe.config().pipe_for(table),
                        %start,
                        "loadHistoryScan is incomplete but does not move on; retrying next round"
                    );
                    return false;
                }
            }
        }
        tracing::warn!(
            pipe = %self.snowpipe.config().pipe_for(table),
            pages = HISTORY_PAGES_MAX,
            "loadHistoryScan has more pages; going on next round"
        );
        false
    }

    /// Files with no outcome a timeout after their notification: one last look in the load
    /// history, then notify again once, or report them `unknown`.
    async fn handle_overdue(&self, view: &mut View) {
        let now = Utc::now();
        let overdue_tables: BTreeSet<Table> = view
            .open
            .values()
            .filter(|open| overdue(&open.known.record, now, self.timeout) != Overdue::Wait)
            .filter_map(|open| Table::parse(&open.known.record.table))
            .collect();
        for table in overdue_tables {
            if !view.scanned.contains(&table) {
                self.scan_history(view, table).await;
            }
        }
        let now = Utc::now();
        let timeout = humantime::format_duration(self.timeout).to_string();
        for open in view.open.values_mut() {
            let record = &mut open.known.record;
            match overdue(record, now, self.timeout) {
                Overdue::Wait => continue,
                Overdue::NotifyAgain => {
                    tracing::warn!(path = %record.path, table = %record.table, %timeout, "snowpipe reported no outcome for the file; notifying it again");
                    record.state = FileState::Pending;
                    record.last_error = Some(format!(
                        "no outcome reported by snowpipe within {timeout}; notified again"
                    ));
                    open.next_attempt = Instant::now();
                }
                Overdue::GiveUp => {
                    metrics::snowflake_verified(FileState::Unknown);
                    tracing::error!(path = %record.path, table = %record.table, %timeout, notifications = record.notifications, "snowpipe never reported the file, though notified twice; it is probably not loaded: see docs/operations.md#snowpipe-load-failures");
                    record.state = FileState::Unknown;
                    record.last_error = Some(format!(
                        "never reported by snowpipe, notified {} times, {timeout} each",
                        record.notifications
                    ));
                }
            }
            record.updated_at = now;
            open.dirty = true;
        }
    }

    /// Writes the changed records; final ones leave the open set once written.
    async fn persist(&self, view: &mut View) {
        let dirty: Vec<String> = view
            .open
            .iter()
            .filter(|(_, open)| open.dirty)
            .map(|(key, _)| key.clone())
            .collect();
        for key in dirty {
            let Some(open) = view.open.get_mut(&key) else {
                continue;
            };
            let written = self
                .ledger
                .write(&key, &open.known.record, open.known.revision)
                .await;
            match written {
                Ok(Written::Stored(revision)) => {
                    open.known.revision = revision;
                    open.dirty = false;
                    if open.known.record.state.is_final() {
                        let state = open.known.record.state;
                        view.open.remove(&key);
                        view.finals.insert(key, state);
                    }
                }
                Ok(Written::Conflict) => {
                    // Another writer (an overlapping lease holder): take its record.
                    tracing::info!(key = %key, "file record changed by another process; reading it again");
                    match self.ledger.read(&key).await {
                        Ok(Some(known)) => view.adopt(known),
                        Ok(None) => {
                            view.open.remove(&key);
                        }
                        Err(error) => {
                            tracing::warn!(%error, "cannot read the file record; retrying next round");
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot write the file record; retrying next round");
                }
            }
        }
    }
}

/// Resolves when the lease is no longer `Active` (or its task ended).
async fn lease_lost(lease: &mut watch::Receiver<LeaseState>) {
    loop {
        if lease.changed().await.is_err() || *lease.borrow() != LeaseState::Active {
            return;
        }
    }
}

/// `--since`: RFC 3339, or a duration before `now` (`24h`, `7d`).
pub fn parse_since(raw: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if let Ok(time) = DateTime::parse_from_rfc3339(raw) {
        return Ok(time.with_timezone(&Utc));
    }
    let ago = humantime::parse_duration(raw)
        .map_err(|_| format!("{raw} is neither an RFC 3339 time nor a duration such as 24h"))?;
    let ago = chrono::Duration::from_std(ago).map_err(|_| format!("{raw} is too long"))?;
    now.checked_sub_signed(ago)
        .ok_or_else(|| format!("{raw} before now is out of range"))
}

/// What `snowflake-status` found.
#[derive(Debug, Clone, Default)]
pub struct StatusSummary {
    /// Files listed.
    pub files: usize,
    /// Files per state.
    pub by_state: BTreeMap<FileState, usize>,
}

/// Prints `records` as a table, then a summary line.
pub fn print_status(
    records: &[FileRecord],
    out: &mut impl Write,
) -> std::io::Result<StatusSummary> {
    let header = [
        "STATE",
        "TABLE",
        "STAGED_AT",
        "NOTIFIED",
        "ROWS",
        "LOADED_ROWS",
        "PATH",
        "DETAIL",
    ];
    let rows: Vec<[String; 8]> = records
        .iter()
        .map(|record| {
            let outcome = record.outcome.as_ref();
            let detail = outcome
                .and_then(|outcome| outcome.first_error.clone())
                .or_else(|| record.last_error.clone())
                .unwrap_or_default();
            [
                record.state.as_str().to_string(),
                record.table.clone(),
                record
                    .staged_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                record.notifications.to_string(),
                record.rows.to_string(),
                outcome
                    .and_then(|outcome| outcome.rows_inserted)
                    .map(|rows| rows.to_string())
                    .unwrap_or_else(|| "-".to_string()),
                record.path.clone(),
                detail.replace(['\n', '\r'], " "),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 8]| {
        let mut text = String::new();
        for (index, cell) in cells.iter().enumerate() {
            if index + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  ", width = widths[index]));
            }
        }
        text.trim_end().to_string()
    };
    writeln!(out, "{}", line(header))?;
    for row in &rows {
        writeln!(out, "{}", line(row.each_ref().map(String::as_str)))?;
    }
    let summary = StatusSummary {
        files: records.len(),
        by_state: count_by_state(records.iter().map(|record| record.state)),
    };
    let counts: Vec<String> = summary
        .by_state
        .iter()
        .filter(|(_, count)| **count > 0)
        .map(|(state, count)| format!("{state} {count}"))
        .collect();
    writeln!(
        out,
        "snowflake-status: {} files{}{}",
        summary.files,
        if counts.is_empty() { "" } else { ": " },
        counts.join(", ")
    )?;
    Ok(summary)
}

/// `gong-load snowflake-status`: the ledger's files staged at or after `since`, as a table.
pub async fn snowflake_status(
    config: &crate::LoadConfig,
    since: Option<DateTime<Utc>>,
    out: &mut impl Write,
) -> Result<StatusSummary, LoadError> {
    let client = gong_common::nats::connect(&config.common, "gong-load").await?;
    let jetstream =
        gong_common::nats::jetstream_context(client, config.common.nats_request_timeout, 16);
    let Some(ledger) = Ledger::open_existing(&jetstream).await? else {
        let _ = writeln!(
            out,
            "snowflake-status: no file ledger (bucket {} does not exist: Snowpipe notifications are off, or nothing was staged with them yet)",
            gong_common::names::BUCKET_LOAD_FILES
        );
        return Ok(StatusSummary::default());
    };
    let records: Vec<FileRecord> = ledger
        .all()
        .await?
        .into_iter()
        .map(|known| known.record)
        .filter(|record| since.is_none_or(|since| record.staged_at >= since))
        .collect();
    print_status(&records, out).map_err(|err| LoadError::Output(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(state: FileState) -> FileRecord {
        let at = DateTime::parse_from_rfc3339("2024-03-04T05:06:07Z")
            .unwrap()
            .with_timezone(&Utc);
        FileRecord {
            path: "calls/dt=2024-03-01/gong_00000000000000000001-00000000000000000002.parquet"
                .to_string(),
            table: "calls".to_string(),
            first: 1,
            last: 2,
            rows: 2,
            bytes: 100,
            state,
            staged_at: at,
            notified_at: Some(at),
            notifications: 1,
            failed_rounds: 0,
            last_error: None,
            outcome: None,
            updated_at: at,
        }
    }

    fn reported(status: &str) -> ReportedFile {
        ReportedFile {
            path: "calls/dt=2024-03-01/gong_00000000000000000001-00000000000000000002.parquet"
                .to_string(),
            status: status.to_string(),
            rows_inserted: Some(1),
            rows_parsed: Some(2),
            errors_seen: Some(1),
            first_error: Some("Numeric value 'x' is not recognized".to_string()),
            ..ReportedFile::default()
        }
    }

    fn open_record(table: &str) -> Known {
        let path =
            format!("{table}/dt=2024-03-01/gong_00000000000000000001-00000000000000000002.parquet");
        Known {
            key: file_key(&path),
            record: FileRecord {
                path,
                table: table.to_string(),
                ..record(FileState::Notified)
            },
            revision: 1,
        }
    }

    fn report(path: &str, status: &str) -> ReportedFile {
        ReportedFile {
            path: path.to_string(),
            ..reported(status)
        }
    }

    fn state_in(view: &View, table: &str) -> FileState {
        view.open
            .values()
            .find(|open| open.known.record.table == table)
            .map(|open| open.known.record.state)
            .unwrap()
    }

    #[test]
    fn a_pipe_report_reaches_only_its_own_tables_file() {
        let mut view = View::default();
        for table in ["calls", "call_participants", "call_topics"] {
            view.adopt(open_record(table));
        }
        let name = "dt=2024-03-01/gong_00000000000000000001-00000000000000000002.parquet";
        // Paths relative to the pipe's folder: the same for every table of the range.
        view.apply_all(
            Table::Calls,
            &[report(name, "LOADED")],
            Endpoint::InsertReport,
        );
        view.apply_all(
            Table::CallParticipants,
            &[report(name, "LOAD_FAILED")],
            Endpoint::InsertReport,
        );
        assert_eq!(state_in(&view, "calls"), FileState::Loaded);
        assert_eq!(state_in(&view, "call_participants"), FileState::LoadFailed);
        assert_eq!(state_in(&view, "call_topics"), FileState::Notified);
        // Full paths too, but only from the table's own pipe.
        let topics = format!("call_topics/{name}");
        view.apply_all(
            Table::Calls,
            &[report(&topics, "LOAD_FAILED")],
            Endpoint::InsertReport,
        );
        assert_eq!(state_in(&view, "call_topics"), FileState::Notified);
        view.apply_all(
            Table::CallTopics,
            &[report(&topics, "LOADED")],
            Endpoint::LoadHistoryScan,
        );
        assert_eq!(state_in(&view, "call_topics"), FileState::Loaded);
        // A path that only ends like ours is not ours.
        let mut other = View::default();
        other.adopt(open_record("calls"));
        other.apply_all(
            Table::Calls,
            &[report(
                "gong_00000000000000000001-00000000000000000002.parquet",
                "LOADED",
            )],
            Endpoint::InsertReport,
        );
        other.apply_all(
            Table::Calls,
            &[report(&format!("elsewhere/calls/{name}"), "LOADED")],
            Endpoint::InsertReport,
        );
        assert_eq!(state_in(&other, "calls"), FileState::Notified);
    }

    #[test]
    fn every_status_has_its_state_and_partially_loaded_is_a_failure() {
        let now = Utc::now();
        for (status, state, failure) in [
            ("LOAD_IN_PROGRESS", FileState::Loading, false),
            ("LOADED", FileState::Loaded, false),
            ("LOAD_FAILED", FileState::LoadFailed, true),
            ("PARTIALLY_LOADED", FileState::PartiallyLoaded, true),
        ] {
            let mut file = record(FileState::Notified);
            assert!(apply_report(
                &mut file,
                &reported(status),
                Endpoint::InsertReport,
                now
            ));
            assert_eq!(file.state, state, "{status}");
            assert_eq!(file.state.is_failure(), failure, "{status}");
            let outcome = file.outcome.unwrap();
            assert_eq!(outcome.status, status);
            assert_eq!(outcome.rows_inserted, Some(1));
            assert_eq!(outcome.source, "insertReport");
        }
        let mut file = record(FileState::Notified);
        assert!(!apply_report(
            &mut file,
            &reported("SOMETHING_NEW"),
            Endpoint::InsertReport,
            now
        ));
        assert_eq!(file.state, FileState::Notified);
    }

    #[test]
    fn a_final_state_is_never_changed_by_a_later_report() {
        let mut file = record(FileState::LoadFailed);
        assert!(!apply_report(
            &mut file,
            &reported("LOADED"),
            Endpoint::LoadHistoryScan,
            Utc::now()
        ));
        assert_eq!(file.state, FileState::LoadFailed);
        // In progress, then loaded.
        let mut file = record(FileState::Notified);
        assert!(apply_report(
            &mut file,
            &reported("LOAD_IN_PROGRESS"),
            Endpoint::InsertReport,
            Utc::now()
        ));
        assert!(!apply_report(
            &mut file,
            &reported("LOAD_IN_PROGRESS"),
            Endpoint::InsertReport,
            Utc::now()
        ));
        assert!(apply_report(
            &mut file,
            &reported("LOADED"),
            Endpoint::InsertReport,
            Utc::now()
        ));
        assert_eq!(file.state, FileState::Loaded);
    }

    #[test]
    fn a_silent_file_is_notified_again_once_then_given_up() {
        let timeout = Duration::from_secs(3600);
        let mut file = record(FileState::Notified);
        let notified = file.notified_at.unwrap();
        let before = notified + chrono::Duration::seconds(3599);
        let after = notified + chrono::Duration::seconds(3600);
        assert_eq!(overdue(&file, before, timeout), Overdue::Wait);
        assert_eq!(overdue(&file, after, timeout), Overdue::NotifyAgain);
        file.notifications = 2;
        assert_eq!(overdue(&file, before, timeout), Overdue::Wait);
        assert_eq!(overdue(&file, after, timeout), Overdue::GiveUp);
        file.state = FileState::Loading;
        assert_eq!(overdue(&file, after, timeout), Overdue::GiveUp);
        // Pending files wait for their notification, not for Snowpipe.
        file.state = FileState::Pending;
        assert_eq!(overdue(&file, after, timeout), Overdue::Wait);
    }

    #[test]
    fn backoff_doubles_from_the_poll_up_to_a_cap() {
        let poll = Duration::from_secs(30);
        assert_eq!(backoff(1, poll), poll);
        assert_eq!(backoff(2, poll), poll * 2);
        assert_eq!(backoff(3, poll), poll * 4);
        assert_eq!(backoff(50, poll), BACKOFF_MAX);
        assert_eq!(
            backoff(0, Duration::from_millis(100)),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn since_takes_a_time_or_a_duration_before_now() {
        let now = DateTime::parse_from_rfc3339("2024-03-04T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            parse_since("24h", now).unwrap(),
            now - chrono::Duration::hours(24)
        );
        assert_eq!(
            parse_since("2024-03-01T00:00:00+01:00", now)
                .unwrap()
                .to_rfc3339(),
            "2024-02-29T23:00:00+00:00"
        );
        assert!(parse_since("yesterday", now).is_err());
    }

    #[test]
    fn status_prints_a_row_per_file_and_a_summary() {
        let mut failed = record(FileState::LoadFailed);
        failed.outcome = Some(LoadOutcome {
            status: "LOAD_FAILED".to_string(),
            first_error: Some("bad\nvalue".to_string()),
            rows_inserted: Some(0),
            ..LoadOutcome::default()
        });
        let loaded = FileRecord {
            path: "users/dt=2024-03-01/x.parquet".to_string(),
            table: "users".to_string(),
            ..record(FileState::Loaded)
        };
        let mut out = Vec::new();
        let summary = print_status(&[failed, loaded], &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].starts_with("STATE"), "{text}");
        assert!(lines[1].starts_with("load_failed  calls"), "{text}");
        assert!(lines[1].ends_with("bad value"), "{text}");
        assert!(lines[2].starts_with("loaded"), "{text}");
        assert_eq!(
            lines[3],
            "snowflake-status: 2 files: loaded 1, load_failed 1"
        );
        assert_eq!(summary.files, 2);
    }
}
