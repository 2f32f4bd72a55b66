//! A compare-and-set register: one key in a KV bucket of its own, updated atomically even on a
//! replicated (R3) stream of nats-server 2.9.
//!
//! Why not `kv::Store::update(key, value, revision)`: it sends
//! `Nats-Expected-Last-Subject-Sequence`, which nats-server 2.9.10 checks only on the leader,
//! before proposing, against what it has applied; in-flight proposals are not tracked, so two
//! concurrent updates with the same revision can **both** be stored and acknowledged on a
//! cluster (nats-server issue 4320, fixed in 2.9.21). `Nats-Expected-Last-Sequence` (the whole
//! stream's last sequence) is checked by every replica when it applies the entry, in raft order:
//! atomic. In a bucket that holds a single key the stream's last sequence *is* the key's
//! revision, so this register writes with that header. The first write (no revision yet) uses
//! `Nats-Expected-Last-Subject-Sequence: 0`, which 2.9.10 also checks when applying.
//!
//! Reads go through the stream leader (the bucket has no direct gets, see
//! [`crate::streams::ensure_kv`]). A leader elected a moment ago may not have applied the newest
//! write yet; a write based on such a read simply fails with [`RegisterError::Conflict`].
//! Every stored value carries the server's timestamp ([`Versioned::created`], set by the stream
//! leader when it proposed the write): the one clock all replicas of a stage can share.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::streams::{ensure_kv, ProvisionError, StreamSettings};

/// A value with its revision and server time.
#[derive(Debug, Clone)]
pub struct Versioned {
    /// The stored bytes (empty for a delete or purge marker).
    pub value: Bytes,
    /// The revision (the stream sequence of the write): the `expected` of the next write.
    pub revision: u64,
    /// When the stream leader proposed the write (its clock).
    pub created: DateTime<Utc>,
    /// False for a delete or purge marker.
    pub is_put: bool,
}

/// A register operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// Another writer changed the register since `expected` (or created it first).
    #[error("register {key} changed since revision {expected:?}")]
    Conflict {
        /// The key.
        key: String,
        /// The revision the write expected.
        expected: Option<u64>,
    },
    /// NATS unreachable, timeout, or an unexpected answer.
    #[error("register {key}: {operation} failed: {source}")]
    Nats {
        /// The key.
        key: String,
        /// `read` or `write`.
        operation: &'static str,
        /// Cause.
        #[source]
        source: async_nats::Error,
    },
}

/// One key, alone in its bucket, written by compare-and-set on the stream's last sequence.
#[derive(Clone)]
pub struct Register {
    jetstream: jetstream::Context,
    kv: kv::Store,
    key: String,
    subject: String,
}

impl Register {
    /// Opens (creating if missing) bucket `bucket` for the single key `key`. Nothing else may
    /// write to that bucket: another key would make every write here a conflict.
    pub async fn open(
        jetstream: &jetstream::Context,
        bucket: &str,
        key: &str,
        max_age: Duration,
        settings: &StreamSettings,
    ) -> Result<Register, ProvisionError> {
        let kv = ensure_kv(jetstream, bucket, 1, max_age, settings).await?;
        Ok(Register {
            jetstream: jetstream.clone(),
            kv,
            key: key.to_string(),
            subject: format!("$KV.{bucket}.{key}"),
        })
    }

    /// The key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The current value, read from the stream leader; `None` when never written.
    pub async fn read(&self) -> Result<Option<Versioned>, RegisterError> {
        let entry = self
            .kv
            .entry(&self.key)
            .await
            .map_err(|err| RegisterError::Nats {
                key: self.key.clone(),
                operation: "read",
                source: err.into(),
            })?;
        Ok(entry.map(|entry| {
            let nanos = entry.created.unix_timestamp_nanos();
            Versioned {
                created: DateTime::from_timestamp_nanos(nanos.clamp(0, i64::MAX as i128) as i64),
                is_put: entry.operation == kv::Operation::Put,
                value: entry.value,
                revision: entry.revision,
            }
        }))
    }

    /// Writes `value` if the register is still at `expected` (`None`: never written). Returns
    /// the new revision, or [`RegisterError::Conflict`] when another write came first.
    pub async fn write(&self, value: Bytes, expected: Option<u64>) -> Result<u64, RegisterError> {
        let mut headers = HeaderMap::new();
        match expected {
            Some(revision) => headers.insert(
                async_nats::header::NATS_EXPECTED_LAST_SEQUENCE,
                revision.to_string().as_str(),
            ),
            None => headers.insert(async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, "0"),
        }
        let nats_error = |source: async_nats::Error| RegisterError::Nats {
            key: self.key.clone(),
            operation: "write",
            source,
        };
        let ack = self
            .jetstream
            .publish_with_headers(self.subject.clone(), headers, value)
            .await
            .map_err(|err| nats_error(err.into()))?;
        match ack.await {
            Ok(ack) => Ok(ack.sequence),
            Err(err) => {
                let text = err.to_string();
                // 10071: wrong last sequence; 10164 (later servers): wrong last subject
                // sequence. Both mean another write came first.
                if text.contains("10071")
                    || text.contains("10164")
                    || text.to_ascii_lowercase().contains("wrong last")
                {
                    Err(RegisterError::Conflict {
                        key: self.key.clone(),
                        expected,
                    })
                } else {
                    Err(nats_error(err.into()))
                }
            }
        }
    }
}
