//! The range manifest: which GONG_ENRICHED sequence ranges became which files.
//!
//! KV bucket `gong_load_ranges` (opened with `ensure_kv`, history 1, max age = the enriched
//! stream's, so a record lives as long as the events it covers):
//! - `range.<first:020>` → [`RangeRecord`] `{first, last, state, owner, updated_at}`;
//! - `head` → `{next}`: the first sequence not covered by any range.
//!
//! Ranges chain: every batch starts at `head.next`, so ranges never overlap and cover every
//! sequence once. A batch is claimed with a compare-and-set `create` of `range.<first>` (only
//! one replica can create it); the winner then moves `head` past its range with a CAS update
//! (any replica that finds a record ahead of `head` helps it forward, so a crash between the two
//! steps leaves no hole). Records are marked `done` once the files are durable and the held
//! messages acknowledged; they are kept as the manifest replay uses to rebuild the same files.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use async_nats::jetstream::kv::{self, CreateErrorKind, UpdateErrorKind};
use async_nats::jetstream::{self};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use gong_common::names;
use gong_common::streams::{ensure_kv, StreamSettings};
use serde::{Deserialize, Serialize};

/// Key of the head record.
pub const HEAD_KEY: &str = "head";

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
    /// When the record was last written (owner's clock; used only to decide a takeover).
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
    owner: String,
    cache: Mutex<BTreeMap<u64, Known>>,
}

impl Ranges {
    /// Creates (if missing) and opens the bucket. `owner` names this process in records.
    pub async fn open(
        jetstream: &jetstream::Context,
        settings: &StreamSettings,
        owner: String,
    ) -> Result<Ranges, gong_common::streams::ProvisionError> {
        let kv = ensure_kv(
            jetstream,
            names::BUCKET_LOAD_RANGES,
            1,
            settings.enriched_max_age,
            settings,
        )
        .await?;
        Ok(Ranges {
            kv,
            owner,
            cache: Mutex::new(BTreeMap::new()),
        })
    }

    /// This process's owner id.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The first sequence not covered by a range, if any range was ever recorded.
    pub async fn head(&self) -> Result<Option<(u64, u64)>, RangeError> {
        let entry = self
            .kv
            .entry(HEAD_KEY)
            .await
            .map_err(|err| range_error("read", HEAD_KEY)(err.into()))?;
        Ok(entry.and_then(|entry| {
            if entry.operation != kv::Operation::Put {
                return None;
            }
            let head: Head = serde_json::from_slice(&entry.value).ok()?;
            Some((head.next, entry.revision))
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
            match self.kv.create(HEAD_KEY, value).await {
                Ok(_) => return Ok(initial),
                Err(err) if err.kind() == CreateErrorKind::AlreadyExists => continue,
                Err(err) => return Err(range_error("create", HEAD_KEY)(err.into())),
            }
        }
    }

    /// Moves the head forward to `to` (never backwards).
    pub async fn advance_head(&self, to: u64) -> Result<(), RangeError> {
        for _ in 0..100 {
            let value = Bytes::from(serde_json::to_vec(&Head { next: to }).unwrap_or_default());
            match self.head().await? {
                Some((next, _)) if next >= to => return Ok(()),
                Some((_, revision)) => match self.kv.update(HEAD_KEY, value, revision).await {
                    Ok(_) => return Ok(()),
                    Err(err) if err.kind() == UpdateErrorKind::WrongLastRevision => continue,
                    Err(err) => return Err(range_error("update", HEAD_KEY)(err.into())),
                },
                None => match self.kv.create(HEAD_KEY, value).await {
                    Ok(_) => return Ok(()),
                    Err(err) if err.kind() == CreateErrorKind::AlreadyExists => continue,
                    Err(err) => return Err(range_error("create", HEAD_KEY)(err.into())),
                },
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

    /// Marks a range done (compare-and-set on `revision`). Returns false when the record
    /// changed meanwhile (another replica took it over and will mark it).
    pub async fn mark_done(&self, record: &RangeRecord, revision: u64) -> Result<bool, RangeError> {
        let key = range_key(record.first);
        let done = RangeRecord {
            state: RangeState::Done,
            owner: self.owner.clone(),
            updated_at: Utc::now(),
            ..record.clone()
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
    pub async fn covering(&self, seq: u64) -> Result<Option<Known>, RangeError> {
        if let Some(done) = self.cached_done(seq) {
            return Ok(Some(done));
        }
        let cached = self.cached_first(seq);
        if let Some(first) = cached {
            if let Some(known) = self.fetch(first).await? {
                if known.record.covers(seq) {
                    return Ok(Some(known));
                }
            }
        }
        let firsts = self.firsts().await?;
        let Some(first) = firsts.into_iter().filter(|first| *first <= seq).max() else {
            return Ok(None);
        };
        Ok(self
            .fetch(first)
            .await?
            .filter(|known| known.record.covers(seq)))
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

    async fn firsts(&self) -> Result<Vec<u64>, RangeError> {
        let keys = tokio::time::timeout(Duration::from_secs(30), async {
            let keys = self
                .kv
                .keys()
                .await
                .map_err(|err| range_error("list", "range.*")(err.into()))?;
            keys.try_collect::<Vec<String>>()
                .await
                .map_err(|err| range_error("list", "range.*")(err.into()))
        })
        .await
        .map_err(|_| range_error("list", "range.*")("timed out".into()))??;
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

    fn cached_first(&self, seq: u64) -> Option<u64> {
        let cache = self.cache.lock().ok()?;
        cache
            .range(..=seq)
            .next_back()
            .filter(|(_, known)| known.record.covers(seq))
            .map(|(first, _)| *first)
    }

    fn remember(&self, known: Known) {
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
