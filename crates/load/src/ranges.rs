//! The range manifest: which GONG_ENRICHED sequence ranges became which files.
//!
//! - KV bucket `gong_load_ranges` (opened with `ensure_kv`, history 1, max age = the enriched
//!   stream's, so a record lives as long as the events it covers): `range.<first:020>` →
//!   [`RangeRecord`] `{first, last, state, owner, updated_at}`;
//! - the head, a [`Register`] of its own (bucket `gong_load_head`) → `{next}`: the first
//!   sequence not covered by any range. (Older versions kept it as the key `head` of the ranges
//!   bucket; it is carried over once.)
//!
//! Ranges chain: every batch starts at the head, so ranges never overlap and cover every
//! sequence once. A batch is claimed with a `create` of `range.<first>` (atomic: one creator
//! wins, checked by every replica); the winner then moves the head past its range. The head
//! moves only forward, by compare-and-set on a single-key register (atomic even on a
//! nats-server 2.9 cluster, where `kv::Store::update` is not), and only to the end of a range
//! whose key exists; so the head leaves a value `h` only through the one range created at `h`,
//! and two ranges can never overlap. Any replica that finds a record at the head helps the head
//! past it, so a crash between the two steps leaves no hole.
//!
//! Records are marked `done` once the files are durable and the held messages acknowledged;
//! they are kept as the manifest replay uses to rebuild the same files. `done`/`pending`/owner
//! updates use `kv::Store::update`, which a 2.9 cluster does not make atomic: they only decide
//! whether a range is rewritten again (same names, same bytes), never what a file holds.
//!
//! Every read comes from the stream leader (no direct gets): a record or the head is never
//! answered by a follower that missed the newest write.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use async_nats::jetstream::kv::{self, CreateErrorKind, UpdateErrorKind};
use async_nats::jetstream::{self};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use gong_common::names;
use gong_common::register::{Register, RegisterError};
use gong_common::streams::{ensure_kv, ProvisionError, StreamSettings};
use serde::{Deserialize, Serialize};

/// Key of the head in its register (and, in older versions, in the ranges bucket).
pub const HEAD_KEY: &str = "head";

/// A key written only to make the ranges bucket's stream leader catch up before a listing
/// (see [`Ranges::covering_confirmed`]); never a range.
pub const BARRIER_KEY: &str = "barrier";

/// The bucket of the head register.
pub const HEAD_BUCKET: &str = "gong_load_head";

/// The key of the range starting at `first`.
pub fn range_key(first: u64) -> String {
    format!("range.{first:020}")
}

fn parse_range_key(key: &str) -> Option<u64> {
    key.strip_prefix("range.")?.parse().ok()
}

/// State of a recorded range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RangeState {
    /// Claimed; files may or may not be written yet.
    Pending,
    /// Files durable on the stage.
    Done,
}

/// One recorded range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RangeRecord {
    /// First GONG_ENRICHED sequence (inclusive).
    pub first: u64,
    /// Last GONG_ENRICHED sequence (inclusive).
    pub last: u64,
    /// Pending or done.
    pub state: RangeState,
    /// Process that owns (or last wrote) it.
    pub owner: String,
    /// When the record was last written (the writer's clock; for people reading the manifest,
    /// no decision uses it).
    pub updated_at: DateTime<Utc>,
}

impl RangeRecord {
    /// True when `seq` is in the range.
    pub fn covers(&self, seq: u64) -> bool {
        self.first <= seq && seq <= self.last
    }
}

/// A record with its KV revision.
#[derive(Debug, Clone)]
pub struct Known {
    /// The record.
    pub record: RangeRecord,
    /// Its revision, for compare-and-set updates.
    pub revision: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Head {
    next: u64,
}

/// A KV operation on the manifest failed (NATS unreachable, timeout).
#[derive(Debug, thiserror::Error)]
#[error("range manifest {operation} failed for {key}: {source}")]
pub struct RangeError {
    /// What was attempted.
    pub operation: &'static str,
    /// The key.
    pub key: String,
    /// Cause.
    #[source]
    pub source: async_nats::Error,
}

fn range_error<'a>(
    operation: &'static str,
    key: &'a str,
) -> impl FnOnce(async_nats::Error) -> RangeError + 'a {
    move |source| RangeError {
        operation,
        key: key.to_string(),
        source,
    }
}

/// Result of a claim.
#[derive(Debug)]
pub enum Claim {
    /// This process owns the range; `revision` of its record.
    Won {
        /// Revision of the created record.
        revision: u64,
    },
    /// Another claim starts at the same sequence.
    Lost {
        /// The record that won.
        existing: Option<Known>,
    },
}

/// The manifest, with a cache of the records seen.
pub struct Ranges {
    kv: kv::Store,
    head: Register,
    /// The ranges bucket's backing stream, for listing keys through its leader.
    stream: jetstream::stream::Stream,
    owner: String,
    cache: Mutex<BTreeMap<u64, Known>>,
    /// First sequences of every range known (from listings and claims).
    firsts: Mutex<std::collections::BTreeSet<u64>>,
}

fn register_error(operation: &'static str) -> impl FnOnce(RegisterError) -> RangeError {
    move |err| RangeError {
        operation,
        key: HEAD_KEY.to_string(),
        source: err.into(),
    }
}

impl Ranges {
    /// Creates (if missing) and opens the bucket. `owner` names this process in records.
    pub async fn open(
        jetstream: &jetstream::Context,
        settings: &StreamSettings,
        owner: String,
    ) -> Result<Ranges, ProvisionError> {
        let kv = ensure_kv(
            jetstream,
            names::BUCKET_LOAD_RANGES,
            1,
            settings.enriched_max_age,
            settings,
        )
        .await?;
        let head = Register::open(
            jetstream,
            HEAD_BUCKET,
            HEAD_KEY,
            std::time::Duration::ZERO,
            settings,
        )
        .await?;
        let stream_name = format!("KV_{}", names::BUCKET_LOAD_RANGES);
        let stream =
            jetstream
                .get_stream(&stream_name)
                .await
                .map_err(|err| ProvisionError::KeyValue {
                    bucket: names::BUCKET_LOAD_RANGES.to_string(),
                    source: err.into(),
                })?;
        let ranges = Ranges {
            kv,
            head,
            stream,
            owner,
            cache: Mutex::new(BTreeMap::new()),
            firsts: Mutex::new(Default::default()),
        };
        ranges
            .carry_over_old_head()
            .await
            .map_err(|err| ProvisionError::KeyValue {
                bucket: HEAD_BUCKET.to_string(),
                source: err.into(),
            })?;
        Ok(ranges)
    }

    /// Moves a head kept by an older version (key `head` of the ranges bucket) into the
    /// register, once.
    async fn carry_over_old_head(&self) -> Result<(), RangeError> {
        if self.head().await?.is_some() {
            return Ok(());
        }
        let old = self
            .kv
            .entry(HEAD_KEY)
            .await
            .map_err(|err| range_error("read", HEAD_KEY)(err.into()))?;
        let Some(old) = old.filter(|entry| entry.operation == kv::Operation::Put) else {
            return Ok(());
        };
        let Ok(head) = serde_json::from_slice::<Head>(&old.value) else {
            return Ok(());
        };
        tracing::info!(
            next = head.next,
            "range head carried over to its own register"
        );
        self.advance_head(head.next).await
    }

    /// This process's owner id.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The first sequence not covered by a range, and the head's revision, if any range was
    /// ever recorded.
    pub async fn head(&self) -> Result<Option<(u64, u64)>, RangeError> {
        let current = self.head.read().await.map_err(register_error("read"))?;
        Ok(current.and_then(|current| {
            if !current.is_put {
                return None;
            }
            let head: Head = serde_json::from_slice(&current.value).ok()?;
            Some((head.next, current.revision))
        }))
    }

    /// The head, creating it at `initial` when no range was ever recorded.
    pub async fn head_or_init(&self, initial: u64) -> Result<u64, RangeError> {
        loop {
            if let Some((next, _)) = self.head().await? {
                return Ok(next);
            }
            let value =
                Bytes::from(serde_json::to_vec(&Head { next: initial }).unwrap_or_default());
            match self.head.write(value, None).await {
                Ok(_) => return Ok(initial),
                Err(RegisterError::Conflict { .. }) => {
                    // Created meanwhile (or a leader that lags): read again, not in a tight loop.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                Err(err) => return Err(register_error("create")(err)),
            }
        }
    }

    /// Moves the head forward to `to` (never backwards), by compare-and-set.
    pub async fn advance_head(&self, to: u64) -> Result<(), RangeError> {
        for _ in 0..100 {
            let value = Bytes::from(serde_json::to_vec(&Head { next: to }).unwrap_or_default());
            let expected = match self.head().await? {
                Some((next, _)) if next >= to => return Ok(()),
                Some((_, revision)) => Some(revision),
                None => None,
            };
            match self.head.write(value, expected).await {
                Ok(_) => return Ok(()),
                Err(RegisterError::Conflict { .. }) => continue,
                Err(err) => return Err(register_error("update")(err)),
            }
        }
        Err(range_error("update", HEAD_KEY)(
            "head kept changing under contention".into(),
        ))
    }

    /// Claims `first..=last` (compare-and-set create), then moves the head past it.
    pub async fn claim(&self, first: u64, last: u64) -> Result<Claim, RangeError> {
        let key = range_key(first);
        let record = RangeRecord {
            first,
            last,
            state: RangeState::Pending,
            owner: self.owner.clone(),
            updated_at: Utc::now(),
        };
        let value = Bytes::from(serde_json::to_vec(&record).unwrap_or_default());
        match self.kv.create(&key, value).await {
            Ok(revision) => {
                self.remember(Known { record, revision });
                self.advance_head(last + 1).await?;
                Ok(Claim::Won { revision })
            }
            // A create (`Nats-Expected-Last-Subject-Sequence: 0`) is checked by every replica
            // when applied: exactly one claim of `range.<first>` wins, even on a cluster.
            Err(err) if err.kind() == CreateErrorKind::AlreadyExists => {
                let existing = self.fetch(first).await?;
                if let Some(known) = &existing {
                    self.advance_head(known.record.last + 1).await?;
                }
                Ok(Claim::Lost { existing })
            }
            Err(err) => Err(range_error("create", &key)(err.into())),
        }
    }

    /// Marks `first..=last` done (compare-and-set on `revision`) and logs a failure: the
    /// files are durable either way; a range left pending is only rewritten (same names, same
    /// bytes) when its messages come back. Returns false when the record changed meanwhile
    /// (another process took it over and will mark it) or the write failed.
    pub async fn mark_done(&self, first: u64, last: u64, revision: u64) -> bool {
        match self.try_mark_done(first, last, revision).await {
            Ok(marked) => marked,
            Err(err) => {
                tracing::warn!(error = %err, first, last, "cannot mark range done; redelivered messages will rewrite it");
                false
            }
        }
    }

    async fn try_mark_done(
        &self,
        first: u64,
        last: u64,
        revision: u64,
    ) -> Result<bool, RangeError> {
        let key = range_key(first);
        let done = RangeRecord {
            first,
            last,
            state: RangeState::Done,
            owner: self.owner.clone(),
            updated_at: Utc::now(),
        };
        let value = Bytes::from(serde_json::to_vec(&done).unwrap_or_default());
        match self.kv.update(&key, value, revision).await {
            Ok(revision) => {
                self.remember(Known {
                    record: done,
                    revision,
                });
                Ok(true)
            }
            Err(err) if err.kind() == UpdateErrorKind::WrongLastRevision => Ok(false),
            Err(err) => Err(range_error("update", &key)(err.into())),
        }
    }

    /// Takes over a pending range whose owner stopped (compare-and-set). Returns the new
    /// revision, or `None` when someone else changed the record first.
    pub async fn take_over(&self, known: &Known) -> Result<Option<u64>, RangeError> {
        let key = range_key(known.record.first);
        let mine = RangeRecord {
            owner: self.owner.clone(),
            updated_at: Utc::now(),
            ..known.record.clone()
        };
        let value = Bytes::from(serde_json::to_vec(&mine).unwrap_or_default());
        match self.kv.update(&key, value, known.revision).await {
            Ok(revision) => {
                self.remember(Known {
                    record: mine,
                    revision,
                });
                Ok(Some(revision))
            }
            Err(err) if err.kind() == UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(err) => Err(range_error("update", &key)(err.into())),
        }
    }

    /// Reads the record starting at `first` from the bucket.
    pub async fn fetch(&self, first: u64) -> Result<Option<Known>, RangeError> {
        let key = range_key(first);
        let entry = self
            .kv
            .entry(key.clone())
            .await
            .map_err(|err| range_error("read", &key)(err.into()))?;
        let known = entry.and_then(|entry| {
            if entry.operation != kv::Operation::Put {
                return None;
            }
            let record: RangeRecord = serde_json::from_slice(&entry.value).ok()?;
            Some(Known {
                record,
                revision: entry.revision,
            })
        });
        if let Some(known) = &known {
            self.remember(known.clone());
        }
        Ok(known)
    }

    /// The recorded range covering `seq`. A range known `Done` is answered from the cache: its
    /// files are written and a redelivered message in it only needs its ack (a rewrite by a
    /// replay writes the same files). Otherwise the record is re-read from the bucket so its
    /// state and revision are current (the cache only narrows the search). After a lost claim
    /// every message of the range comes back, so this saves a KV read per message.
    ///
    /// `None` only after the bucket's key list, read through its stream leader, was searched:
    /// an answer that decides to stage a sequence on its own must not come from a stale
    /// follower.
    pub async fn covering(&self, seq: u64) -> Result<Option<Known>, RangeError> {
        if let Some(done) = self.cached_done(seq) {
            return Ok(Some(done));
        }
        if let Some(first) = self.known_first(seq) {
            if let Some(known) = self.fetch(first).await? {
                if known.record.covers(seq) {
                    return Ok(Some(known));
                }
            }
        }
        self.refresh_firsts().await?;
        let Some(first) = self.known_first(seq) else {
            return Ok(None);
        };
        Ok(self
            .fetch(first)
            .await?
            .filter(|known| known.record.covers(seq)))
    }

    /// As [`Ranges::covering`], but a `None` is confirmed after a write to the bucket: the
    /// write's acknowledgement comes from a stream leader that has applied every earlier write
    /// (a leader elected a moment ago may not have yet, and would list too few keys). Used
    /// before a sequence is staged on its own, which must never happen to a covered one.
    pub async fn covering_confirmed(&self, seq: u64) -> Result<Option<Known>, RangeError> {
        if let Some(known) = self.covering(seq).await? {
            return Ok(Some(known));
        }
        let barrier = Bytes::from(self.owner.clone());
        self.kv
            .put(BARRIER_KEY, barrier)
            .await
            .map_err(|err| range_error("put", BARRIER_KEY)(err.into()))?;
        self.covering(seq).await
    }

    /// The greatest known range start at or below `seq`.
    fn known_first(&self, seq: u64) -> Option<u64> {
        let firsts = self.firsts.lock().ok()?;
        firsts.range(..=seq).next_back().copied()
    }

    async fn refresh_firsts(&self) -> Result<(), RangeError> {
        let listed = self.firsts().await?;
        if let Ok(mut firsts) = self.firsts.lock() {
            firsts.extend(listed);
        }
        Ok(())
    }

    /// Every recorded range, in sequence order (for replay).
    pub async fn all(&self) -> Result<Vec<Known>, RangeError> {
        let mut firsts = self.firsts().await?;
        firsts.sort_unstable();
        let mut out = Vec::with_capacity(firsts.len());
        for first in firsts {
            if let Some(known) = self.fetch(first).await? {
                out.push(known);
            }
        }
        Ok(out)
    }

    /// Every range start, from the key list of the bucket's stream as its leader knows it
    /// (`STREAM.INFO` with a subjects filter; `kv::Store::keys` would read through a consumer
    /// that may sit on a follower).
    async fn firsts(&self) -> Result<Vec<u64>, RangeError> {
        let keys = gong_common::streams::list_kv_keys(
            &self.stream,
            names::BUCKET_LOAD_RANGES,
            "range.",
            Duration::from_secs(30),
        )
        .await
        .map_err(|err| range_error("list", "range.*")(err.into()))?;
        Ok(keys.iter().filter_map(|key| parse_range_key(key)).collect())
    }

    fn cached_done(&self, seq: u64) -> Option<Known> {
        let cache = self.cache.lock().ok()?;
        cache
            .range(..=seq)
            .next_back()
            .map(|(_, known)| known)
            .filter(|known| known.record.covers(seq) && known.record.state == RangeState::Done)
            .cloned()
    }

    fn remember(&self, known: Known) {
        if let Ok(mut firsts) = self.firsts.lock() {
            firsts.insert(known.record.first);
        }
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(known.record.first, known);
            // Bound the cache: only recent ranges are looked up on the hot path.
            while cache.len() > 4096 {
                let Some(oldest) = cache.keys().next().copied() else {
                    break;
                };
                cache.remove(&oldest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_sequence_and_parse_back() {
        assert!(range_key(9) < range_key(10));
        assert_eq!(parse_range_key(&range_key(12345)), Some(12345));
        assert_eq!(parse_range_key(HEAD_KEY), None);
    }
}
