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

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
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
            Err(err) if is_conflict(&err) => Err(RegisterError::Conflict {
                key: self.key.clone(),
                expected,
            }),
            Err(err) => Err(nats_error(err.into())),
        }
    }
}

/// Whether a failed publish means another write came first. async-nats says so by kind for
/// nats-server's code 10071 (all that 2.9.10 sends); later servers may answer 10164 ("wrong last
/// sequence" in its constant form), which async-nats 0.51 reports as `Other` with the API error
/// as its source: matched by that code, and by its text as a last resort.
fn is_conflict(error: &PublishError) -> bool {
    if error.kind() == PublishErrorKind::WrongLastSequence {
        return true;
    }
    if error.kind() != PublishErrorKind::Other {
        return false;
    }
    let source = std::error::Error::source(error);
    if let Some(api) = source.and_then(|source| source.downcast_ref::<jetstream::Error>()) {
        return api.error_code() == jetstream::ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT;
    }
    let text = source.map(ToString::to_string).unwrap_or_default();
    text.contains("error code 10164") || text.to_ascii_lowercase().contains("wrong last sequence")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(err_code: u64, description: &str) -> jetstream::Error {
        serde_json::from_value(serde_json::json!({
            "code": 400,
            "err_code": err_code,
            "description": description,
        }))
        .unwrap()
    }

    #[test]
    fn conflicts_are_told_by_kind_then_by_the_servers_code() {
        // What async-nats makes of 10071, the only code nats-server 2.9.10 sends.
        let wrong_last = PublishError::with_source(
            PublishErrorKind::WrongLastSequence,
            api_error(10071, "wrong last sequence: 4"),
        );
        assert!(is_conflict(&wrong_last));
        assert!(is_conflict(&PublishError::new(
            PublishErrorKind::WrongLastSequence
        )));
        // A later server's constant form arrives as Other.
        let constant = PublishError::with_source(
            PublishErrorKind::Other,
            api_error(10164, "wrong last sequence: 4"),
        );
        assert!(is_conflict(&constant));
        // Timeouts, other API errors, errors of other kinds: not conflicts, whatever the text.
        assert!(!is_conflict(&PublishError::new(PublishErrorKind::TimedOut)));
        let other_api = PublishError::with_source(
            PublishErrorKind::Other,
            api_error(10077, "maximum messages exceeded (wrong last sequence?)"),
        );
        assert!(!is_conflict(&other_api));
        let duplicate_id = PublishError::with_source(
            PublishErrorKind::WrongLastMessageId,
            api_error(10070, "wrong last msg ID: 1"),
        );
        assert!(!is_conflict(&duplicate_id));
        // No API error to read (another client in between?): the text decides.
        let text_only = PublishError::with_source(
            PublishErrorKind::Other,
            "nats: wrong last sequence: 4 (error code 10164)",
        );
        assert!(is_conflict(&text_only));
        assert!(!is_conflict(&PublishError::new(PublishErrorKind::Other)));
    }
}
