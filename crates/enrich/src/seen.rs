//! The index of calls that have reached `GONG_RAW`: KV bucket `gong_calls_seen`, one key per
//! call id, shared by every replica and by the sweep.
//!
//! Written by the enricher for every raw event it takes (webhook or swept), while it asks Gong
//! about the batch, and by the sweep for every call it injected, once `GONG_RAW` acknowledged
//! it. A key is only ever written after its raw event is durable in `GONG_RAW` (which keeps it
//! and redelivers it until enriched), so a call found here is never lost by being skipped: a
//! stale or failed read can only make the sweep inject a call again (one extra enrichment),
//! never skip one. Values are plain puts: every writer writes "seen", so no write can be lost
//! to a concurrent one in a way that matters (no compare-and-set is needed). Reads go to the
//! stream leader (`ensure_kv` makes the bucket without direct gets). Keys live as long as
//! `GONG_RAW` keeps its events (`STREAM_RAW_MAX_AGE`).

use std::collections::HashSet;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use gong_common::names;
use gong_common::streams::{ensure_kv, ProvisionError, StreamSettings};
use serde::{Deserialize, Serialize};

/// Reads and writes in flight at once.
const CONCURRENCY: usize = 64;

/// The value under a call id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenRecord {
    /// `webhook` or `sweep`: who brought the call to `GONG_RAW` (as far as the writer knows).
    pub source: String,
    /// A `GONG_RAW` sequence of a raw event of the call.
    pub raw_seq: u64,
}

/// The index; cheap to clone.
#[derive(Clone)]
pub struct SeenIndex {
    kv: kv::Store,
}

impl SeenIndex {
    /// Opens (creating if missing) the `gong_calls_seen` bucket.
    pub async fn open(
        jetstream: &jetstream::Context,
        settings: &StreamSettings,
    ) -> Result<SeenIndex, ProvisionError> {
        let kv = ensure_kv(
            jetstream,
            names::BUCKET_CALLS_SEEN,
            1,
            settings.raw_max_age,
            settings,
        )
        .await?;
        Ok(SeenIndex { kv })
    }

    /// The ids of `call_ids` found in the index (read from the stream leader).
    pub async fn present(&self, call_ids: &[String]) -> Result<HashSet<String>, async_nats::Error> {
        futures::stream::iter(call_ids.iter().cloned())
            .map(|call_id| async move {
                let entry = self.kv.entry(&call_id).await?;
                let seen = entry.is_some_and(|entry| entry.operation == kv::Operation::Put);
                Ok::<_, async_nats::Error>(seen.then_some(call_id))
            })
            .buffer_unordered(CONCURRENCY)
            .try_filter_map(|found| async move { Ok(found) })
            .try_collect()
            .await
    }

    /// Records `entries` (call id, record); every put is acknowledged when this returns `Ok`.
    pub async fn mark(&self, entries: Vec<(String, SeenRecord)>) -> Result<(), async_nats::Error> {
        futures::stream::iter(entries)
            .map(|(call_id, record)| async move {
                let value = Bytes::from(serde_json::to_vec(&record)?);
                self.kv.put(&call_id, value).await?;
                Ok::<_, async_nats::Error>(())
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect::<()>()
            .await
    }

    /// The record of `call_id`, if any (for tools and tests).
    pub async fn get(&self, call_id: &str) -> Result<Option<SeenRecord>, async_nats::Error> {
        Ok(self
            .kv
            .get(call_id)
            .await?
            .and_then(|value| serde_json::from_slice(&value).ok()))
    }
}
