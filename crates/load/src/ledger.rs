//! The ledger of staged files Snowpipe must load: KV bucket `gong_load_files` (Snowpipe REST
//! mode only).
//!
//! - One record per staged file, keyed by [`file_key`] (the path made a valid KV key, plus a
//!   hash of the exact path): [`FileRecord`] `{path, table, first, last, rows, bytes, state,
//!   staged_at, notified_at, notifications, failed_rounds, last_error, outcome, updated_at}`.
//! - The live loader creates the records of a range's files **before** it acknowledges the
//!   range's messages ([`Ledger::record_staged`]): a crash after the ack leaves the file in the
//!   ledger as `pending`, and whichever replica holds the `load` lease next notifies it. A
//!   record that exists already (a range rewritten after a crash or a takeover: same names,
//!   same bytes) is left as it is.
//! - Every later change is the notifier's (`verify.rs`), which runs only in the holder of the
//!   `load` lease. One writer at a time is why plain `kv::Store::update` is enough here (it is
//!   not atomic on a nats-server 2.9 cluster): if two holders ever overlap, the worst a lost
//!   update does is a second `insertFiles` for a file (Snowpipe skips a file name it has
//!   loaded) or a state read again from Snowflake's report.
//! - The bucket has history 1 and a max age of [`Ledger::max_age`]: longer than a file can wait
//!   without its record being written (a pending record is rewritten at every failed round, a
//!   notified one at the latest after `SNOWFLAKE_VERIFY_TIMEOUT`), and a day at least, so an
//!   operator sees yesterday's outcomes with `gong-load snowflake-status`.
//! - Reads go to the stream leader (no direct gets, see `ensure_kv`), and the key list is read
//!   from the leader's stream state, never through a consumer that may sit on a follower.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv::{self, CreateErrorKind, UpdateErrorKind};
use async_nats::jetstream::{self};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use gong_common::names;
use gong_common::streams::{ensure_kv, list_kv_keys, ProvisionError, StreamSettings};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio::sync::Notify;

use crate::range_writer::StagedRange;

/// Where a staged file stands with Snowpipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileState {
    /// Staged; `insertFiles` has not accepted it yet (or it is due to be notified again).
    Pending,
    /// Accepted by `insertFiles`; Snowpipe has reported nothing about it yet.
    Notified,
    /// Snowpipe reports `LOAD_IN_PROGRESS`.
    Loading,
    /// `LOADED`: every row is in the table.
    Loaded,
    /// `LOAD_FAILED`: no row loaded.
    LoadFailed,
    /// `PARTIALLY_LOADED`: some rows were skipped. A failure for this pipeline (Snowflake's
    /// Java SDK counts it as a success).
    PartiallyLoaded,
    /// Never reported by Snowpipe, though notified twice, each time for
    /// `SNOWFLAKE_VERIFY_TIMEOUT`.
    Unknown,
}

impl FileState {
    /// Every state.
    pub const ALL: [FileState; 7] = [
        FileState::Pending,
        FileState::Notified,
        FileState::Loading,
        FileState::Loaded,
        FileState::LoadFailed,
        FileState::PartiallyLoaded,
        FileState::Unknown,
    ];

    /// The final states: the notifier is done with the file.
    pub const FINAL: [FileState; 4] = [
        FileState::Loaded,
        FileState::LoadFailed,
        FileState::PartiallyLoaded,
        FileState::Unknown,
    ];

    /// Name in records, metric labels and `snowflake-status`.
    pub fn as_str(self) -> &'static str {
        match self {
            FileState::Pending => "pending",
            FileState::Notified => "notified",
            FileState::Loading => "loading",
            FileState::Loaded => "loaded",
            FileState::LoadFailed => "load_failed",
            FileState::PartiallyLoaded => "partially_loaded",
            FileState::Unknown => "unknown",
        }
    }

    /// True once Snowpipe's outcome is known (or given up on).
    pub fn is_final(self) -> bool {
        FileState::FINAL.contains(&self)
    }

    /// True for outcomes that need an operator: failed, partially loaded, never seen.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            FileState::LoadFailed | FileState::PartiallyLoaded | FileState::Unknown
        )
    }
}

impl std::fmt::Display for FileState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What Snowpipe last reported about a file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoadOutcome {
    /// Snowflake's status (`LOAD_IN_PROGRESS`, `LOADED`, `LOAD_FAILED`, `PARTIALLY_LOADED`).
    pub status: String,
    /// `insertReport` or `loadHistoryScan`.
    pub source: String,
    /// Rows inserted.
    pub rows_inserted: Option<u64>,
    /// Rows parsed.
    pub rows_parsed: Option<u64>,
    /// Errors seen.
    pub errors_seen: Option<u64>,
    /// Snowflake's first error (or system error), truncated.
    pub first_error: Option<String>,
    /// When rows were last inserted (Snowflake's clock, as it wrote it).
    pub last_insert_time: Option<String>,
}

/// One staged file in the ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Path relative to the stage root: what `insertFiles` is given.
    pub path: String,
    /// The table (its pipe is `SNOWFLAKE_PIPE` with `{TABLE}` filled in).
    pub table: String,
    /// First GONG_ENRICHED sequence of the file's range.
    pub first: u64,
    /// Last GONG_ENRICHED sequence of the file's range.
    pub last: u64,
    /// Rows in the file.
    pub rows: u64,
    /// Bytes of the file.
    pub bytes: u64,
    /// Where it stands.
    pub state: FileState,
    /// When the record was created (the recording loader's clock).
    pub staged_at: DateTime<Utc>,
    /// When `insertFiles` last accepted it (the notifier's clock).
    #[serde(default)]
    pub notified_at: Option<DateTime<Utc>>,
    /// `insertFiles` calls that accepted it (1, or 2 after a renotification).
    #[serde(default)]
    pub notifications: u32,
    /// Notification rounds that failed since the last success.
    #[serde(default)]
    pub failed_rounds: u32,
    /// The last failure or warning (never a secret).
    #[serde(default)]
    pub last_error: Option<String>,
    /// What Snowpipe last reported.
    #[serde(default)]
    pub outcome: Option<LoadOutcome>,
    /// When the record was last written (its writer's clock).
    pub updated_at: DateTime<Utc>,
}

/// A record with its KV revision.
#[derive(Debug, Clone)]
pub struct Known {
    /// Its key.
    pub key: String,
    /// The record.
    pub record: FileRecord,
    /// Its revision.
    pub revision: u64,
}

/// A ledger operation failed (NATS unreachable, timeout).
#[derive(Debug, thiserror::Error)]
#[error("file ledger {operation} failed for {key}: {source}")]
pub struct LedgerError {
    /// What was attempted.
    pub operation: &'static str,
    /// The key.
    pub key: String,
    /// Cause.
    #[source]
    pub source: async_nats::Error,
}

fn ledger_error<'a>(
    operation: &'static str,
    key: &'a str,
) -> impl FnOnce(async_nats::Error) -> LedgerError + 'a {
    move |source| LedgerError {
        operation,
        key: key.to_string(),
        source,
    }
}

/// Result of a compare-and-set write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Stored; the new revision.
    Stored(u64),
    /// The record changed since the revision given.
    Conflict,
}

/// The KV key of `path`: its characters outside `[-/_=A-Za-z0-9]` (the dot included, so no
/// empty subject token can arise) become `_`, and a hash of the exact path follows, so two
/// paths never share a key.
pub fn file_key(path: &str) -> String {
    let mut key: String = path
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '/' | '_' | '=') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if key.is_empty() {
        key.push('_');
    }
    let digest = sha2::Sha256::digest(path.as_bytes());
    key.push('.');
    key.push_str(&hex::encode(&digest[..8]));
    key
}

/// Keys recorded by this process that the notifier has not looked at yet.
#[derive(Default)]
struct Recent {
    keys: Vec<String>,
    /// More were recorded than kept: the notifier must list the bucket.
    overflowed: bool,
}

/// Keys kept for the notifier before it must list the bucket instead.
const RECENT_MAX: usize = 10_000;

/// The ledger (cheap to clone).
#[derive(Clone)]
pub struct Ledger {
    kv: kv::Store,
    stream: jetstream::stream::Stream,
    recent: Arc<Mutex<Recent>>,
    wake: Arc<Notify>,
}

impl Ledger {
    /// The bucket's max age for `verify_timeout`: a day, or twice the timeout and an hour.
    pub fn max_age(verify_timeout: Duration) -> Duration {
        (verify_timeout * 2 + Duration::from_secs(3600)).max(Duration::from_secs(24 * 3600))
    }

    /// Creates (if missing) and opens the bucket.
    pub async fn open(
        jetstream: &jetstream::Context,
        settings: &StreamSettings,
        verify_timeout: Duration,
    ) -> Result<Ledger, ProvisionError> {
        let kv = ensure_kv(
            jetstream,
            names::BUCKET_LOAD_FILES,
            1,
            Ledger::max_age(verify_timeout),
            settings,
        )
        .await?;
        let stream = jetstream
            .get_stream(format!("KV_{}", names::BUCKET_LOAD_FILES))
            .await
            .map_err(|err| ProvisionError::KeyValue {
                bucket: names::BUCKET_LOAD_FILES.to_string(),
                source: err.into(),
            })?;
        Ok(Ledger::from_parts(kv, stream))
    }

    /// Opens the bucket if it exists (for `snowflake-status`, which must not create it).
    pub async fn open_existing(
        jetstream: &jetstream::Context,
    ) -> Result<Option<Ledger>, LedgerError> {
        let stream_name = format!("KV_{}", names::BUCKET_LOAD_FILES);
        let stream = match jetstream.get_stream(&stream_name).await {
            Ok(stream) => stream,
            Err(err)
                if matches!(
                    err.kind(),
                    jetstream::context::GetStreamErrorKind::JetStream(ref js)
                        if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
                ) =>
            {
                return Ok(None)
            }
            Err(err) => return Err(ledger_error("open", names::BUCKET_LOAD_FILES)(err.into())),
        };
        let kv = jetstream
            .get_key_value(names::BUCKET_LOAD_FILES)
            .await
            .map_err(|err| ledger_error("open", names::BUCKET_LOAD_FILES)(err.into()))?;
        Ok(Some(Ledger::from_parts(kv, stream)))
    }

    fn from_parts(kv: kv::Store, stream: jetstream::stream::Stream) -> Ledger {
        Ledger {
            kv,
            stream,
            recent: Arc::new(Mutex::new(Recent::default())),
            wake: Arc::new(Notify::new()),
        }
    }

    /// Records every file of `staged` as `pending` (a file recorded already is left as it
    /// is), then wakes the notifier. Call it before acknowledging the range's messages.
    /// Returns how many records were created.
    pub async fn record_staged(&self, staged: &StagedRange) -> Result<usize, LedgerError> {
        let now = Utc::now();
        let creates = staged.files.iter().map(|file| {
            let record = FileRecord {
                path: file.relative.clone(),
                table: file.table.name().to_string(),
                first: staged.first,
                last: staged.last,
                rows: file.rows as u64,
                bytes: file.bytes,
                state: FileState::Pending,
                staged_at: now,
                notified_at: None,
                notifications: 0,
                failed_rounds: 0,
                last_error: None,
                outcome: None,
                updated_at: now,
            };
            async move {
                let key = file_key(&record.path);
                let created = self.create(&key, &record).await?;
                Ok::<_, LedgerError>((key, created))
            }
        });
        let results = futures::future::try_join_all(creates).await?;
        let mut created = 0;
        {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            for (key, was_created) in results {
                if was_created {
                    created += 1;
                }
                if recent.keys.len() >= RECENT_MAX {
                    recent.overflowed = true;
                } else {
                    recent.keys.push(key);
                }
            }
        }
        self.wake.notify_one();
        Ok(created)
    }

    /// Creates `key` unless it exists; true when created.
    pub async fn create(&self, key: &str, record: &FileRecord) -> Result<bool, LedgerError> {
        let value = Bytes::from(serde_json::to_vec(record).unwrap_or_default());
        match self.kv.create(key, value).await {
            Ok(_) => Ok(true),
            Err(err) if err.kind() == CreateErrorKind::AlreadyExists => Ok(false),
            Err(err) => Err(ledger_error("create", key)(err.into())),
        }
    }

    /// Keys recorded by this process since the last call, and whether some were dropped
    /// (then the whole bucket must be listed).
    pub fn take_recent(&self) -> (Vec<String>, bool) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let taken = std::mem::take(&mut *recent);
        (taken.keys, taken.overflowed)
    }

    /// Resolves when a record was created since the last wait.
    pub async fn recorded(&self) {
        self.wake.notified().await
    }

    /// Every key, from the key list of the bucket's stream as its leader knows it.
    pub async fn keys(&self) -> Result<Vec<String>, LedgerError> {
        list_kv_keys(
            &self.stream,
            names::BUCKET_LOAD_FILES,
            "",
            Duration::from_secs(60),
        )
        .await
        .map_err(|err| ledger_error("list", ">")(err.into()))
    }

    /// The record under `key` (from the stream leader); `None` when missing or unreadable.
    pub async fn read(&self, key: &str) -> Result<Option<Known>, LedgerError> {
        let entry = self
            .kv
            .entry(key)
            .await
            .map_err(|err| ledger_error("read", key)(err.into()))?;
        Ok(entry.and_then(|entry| {
            if entry.operation != kv::Operation::Put {
                return None;
            }
            match serde_json::from_slice::<FileRecord>(&entry.value) {
                Ok(record) => Some(Known {
                    key: key.to_string(),
                    record,
                    revision: entry.revision,
                }),
                Err(error) => {
                    tracing::warn!(key, %error, "unreadable file record skipped");
                    None
                }
            }
        }))
    }

    /// Reads `keys`, a few at a time; missing ones are left out.
    pub async fn read_many(&self, keys: Vec<String>) -> Result<Vec<Known>, LedgerError> {
        let reads: Vec<Result<Option<Known>, LedgerError>> = futures::stream::iter(keys)
            .map(|key| async move { self.read(&key).await })
            .buffered(32)
            .collect()
            .await;
        let mut out = Vec::with_capacity(reads.len());
        for read in reads {
            if let Some(known) = read? {
                out.push(known);
            }
        }
        Ok(out)
    }

    /// Every record, sorted by staging time then path.
    pub async fn all(&self) -> Result<Vec<Known>, LedgerError> {
        let keys = self.keys().await?;
        let mut all = self.read_many(keys).await?;
        all.sort_by(|a, b| {
            (a.record.staged_at, &a.record.path).cmp(&(b.record.staged_at, &b.record.path))
        });
        Ok(all)
    }

    /// Writes `record` under `key` if it is still at `revision`.
    pub async fn write(
        &self,
        key: &str,
        record: &FileRecord,
        revision: u64,
    ) -> Result<Written, LedgerError> {
        let value = Bytes::from(serde_json::to_vec(record).unwrap_or_default());
        match self.kv.update(key, value, revision).await {
            Ok(revision) => Ok(Written::Stored(revision)),
            Err(err) if err.kind() == UpdateErrorKind::WrongLastRevision => Ok(Written::Conflict),
            Err(err) => Err(ledger_error("update", key)(err.into())),
        }
    }
}

/// Records per state.
pub fn count_by_state(states: impl IntoIterator<Item = FileState>) -> BTreeMap<FileState, usize> {
    let mut counts: BTreeMap<FileState, usize> =
        FileState::ALL.iter().map(|state| (*state, 0)).collect();
    for state in states {
        *counts.entry(state).or_insert(0) += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid_kv_key(key: &str) -> bool {
        !key.is_empty()
            && !key.starts_with('.')
            && !key.ends_with('.')
            && !key.contains("..")
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-/_=.".contains(c))
    }

    #[test]
    fn file_keys_are_valid_readable_and_distinct() {
        let path = "calls/dt=2024-03-01/gong_00000000000000000001-00000000000000000005.parquet";
        let key = file_key(path);
        assert!(valid_kv_key(&key), "{key}");
        assert!(
            key.starts_with(
                "calls/dt=2024-03-01/gong_00000000000000000001-00000000000000000005_parquet."
            ),
            "{key}"
        );
        assert_eq!(key, file_key(path), "a key is a function of the path");
        // Paths that sanitise alike still get different keys.
        assert_ne!(file_key("a.b"), file_key("a_b"));
        for odd in ["", ".", "..x", "a b/ü.parquet", "x.", "*", ">"] {
            assert!(valid_kv_key(&file_key(odd)), "{odd:?} -> {}", file_key(odd));
        }
    }

    #[test]
    fn states_serialise_as_their_labels_and_final_ones_are_known() {
        for state in FileState::ALL {
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.as_str()));
        }
        assert!(FileState::PartiallyLoaded.is_final() && FileState::PartiallyLoaded.is_failure());
        assert!(FileState::Loaded.is_final() && !FileState::Loaded.is_failure());
        assert!(!FileState::Loading.is_final());
        assert!(!FileState::Pending.is_final());
    }

    #[test]
    fn the_bucket_outlives_two_verification_windows_and_a_day() {
        assert_eq!(
            Ledger::max_age(Duration::from_secs(3600)),
            Duration::from_secs(24 * 3600)
        );
        assert_eq!(
            Ledger::max_age(Duration::from_secs(24 * 3600)),
            Duration::from_secs(49 * 3600)
        );
    }
}
