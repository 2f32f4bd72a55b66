//! Late transcripts: a public call whose transcript Gong did not have yet is asked about again
//! after each delay of `ENRICH_TRANSCRIPT_RECHECK` (default `1h,6h,24h`, counted from its first
//! enrichment).
//!
//! - The enricher publishes the call's enriched event as usual (no transcript) and records the
//!   call in the KV bucket `gong_transcript_rechecks` (key: call id) *before* it acknowledges the
//!   raw event, so a recheck is never forgotten (if the record cannot be written the raw event is
//!   handed back and enriched again).
//! - One replica at a time (lease `transcripts`) scans the bucket, asks Gong for the transcripts
//!   of the calls that are due ([`crate::gong_api::IDS_PER_REQUEST`] per request, through the
//!   shared quota at backfill priority), and for each transcript that appeared publishes a new
//!   enriched event: the previous one (read back from `GONG_ENRICHED` by sequence) with the
//!   transcript, a new `event_id` derived from the raw event id (the same on a retry, so a retry
//!   inside the duplicate window is stored once) and `Gong-Source: transcript_recheck`. Being
//!   the newest enrichment of the call, it is what the `*_LATEST` views show. Then the record
//!   goes.
//! - After the last delay the call is recorded as having no transcript: the
//!   `gong_enrich_transcript_rechecks_total{result="missing"}` counter and a log line, not a
//!   dead letter (the call itself reached the stage).
//!
//! **Time comes from the NATS server only.** "Due" compares two server timestamps: the time the
//! record was first written (the `created` of its first entry, carried in the value from then
//! on) and a fresh server time (the `created` of a write of the `clock` key made just before the
//! scan). No pod's clock is compared with another's.
//!
//! Writes: the enricher `put`s (a newer enrichment of the same call starts the schedule again);
//! the rechecker updates or purges conditionally on the revision it read, so it does not undo
//! such a newer record (on a nats-server 2.9 cluster that condition is checked by the stream
//! leader only, see `gong_common::register`; a lost race costs one recheck of one call, never an
//! event).

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use gong_common::event::{content_id, EnrichedEvent};
use gong_common::lease::{Lease, LeaseState};
use gong_common::names::{self, headers};
use gong_common::streams::{ensure_kv, ProvisionError, StreamSettings};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::error::{GongError, QuotaError};
use crate::gong_api::{CallRequest, GongApi};
use crate::metrics;
use crate::pipeline::{self, to_utc};
use crate::rate_limit::Priority;

/// The key whose writes give the scan a fresh server time (not a call id, so never a record).
const CLOCK_KEY: &str = "clock";

/// How long records stay in the bucket without being written (a rechecker that is down for
/// longer loses them: their calls are simply not rechecked).
const MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);

/// A call waiting for its transcript (JSON under its call id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRecheck {
    /// The raw event the call's enriched event derives from.
    pub raw_event_id: String,
    /// Its `GONG_RAW` sequence.
    pub raw_stream_seq: u64,
    /// When gong-ingest (or the sweep) received it.
    pub received_at: DateTime<Utc>,
    /// `GONG_ENRICHED` sequence of the enriched event published without the transcript.
    pub enriched_seq: u64,
    /// Rechecks already made.
    #[serde(default)]
    pub rechecks: u32,
    /// Server time (Unix milliseconds) of the first write of this record; 0 in that first write
    /// itself (its writer cannot know it), filled in by the rechecker from the entry's time.
    #[serde(default)]
    pub first_ms: i64,
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecheckReport {
    /// Records due this pass.
    pub due: u64,
    /// Transcripts that appeared (a new enriched event each).
    pub found: u64,
    /// Still missing, rechecked again later.
    pub not_yet: u64,
    /// Still missing after the last delay: given up.
    pub missing: u64,
}

/// The bucket and the schedule; cheap to clone.
#[derive(Clone)]
pub struct Rechecks {
    kv: kv::Store,
    delays: Vec<Duration>,
}

/// A record read back with what its entry says.
struct Record {
    call_id: String,
    pending: PendingRecheck,
    revision: u64,
}

impl Rechecks {
    /// Opens (creating if missing) the `gong_transcript_rechecks` bucket; `delays` is
    /// `ENRICH_TRANSCRIPT_RECHECK` (empty: rechecks off, nothing is recorded).
    pub async fn open(
        jetstream: &jetstream::Context,
        settings: &StreamSettings,
        delays: Vec<Duration>,
    ) -> Result<Rechecks, ProvisionError> {
        let kv = ensure_kv(
            jetstream,
            names::BUCKET_TRANSCRIPT_RECHECKS,
            1,
            MAX_AGE,
            settings,
        )
        .await?;
        Ok(Rechecks { kv, delays })
    }

    /// Whether rechecks are on.
    pub fn enabled(&self) -> bool {
        !self.delays.is_empty()
    }

    /// Records `call_id` as waiting for its transcript (acknowledged when this returns `Ok`).
    pub async fn register(
        &self,
        call_id: &str,
        pending: &PendingRecheck,
    ) -> Result<(), async_nats::Error> {
        let value = Bytes::from(serde_json::to_vec(pending)?);
        self.kv.put(call_id, value).await?;
        Ok(())
    }

    /// The calls waiting for a transcript.
    pub async fn pending(&self) -> Result<Vec<String>, async_nats::Error> {
        let keys: Vec<String> = self.kv.keys().await?.try_collect().await?;
        Ok(keys
            .into_iter()
            .filter(|key| gong_common::gong::is_call_id(key))
            .collect())
    }

    /// The record of `call_id`, if any.
    pub async fn get(&self, call_id: &str) -> Result<Option<PendingRecheck>, async_nats::Error> {
        Ok(self
            .kv
            .get(call_id)
            .await?
            .and_then(|value| serde_json::from_slice(&value).ok()))
    }

    /// A fresh NATS server time: the time of a write made now.
    async fn server_now(&self) -> Result<DateTime<Utc>, async_nats::Error> {
        let revision = self.kv.put(CLOCK_KEY, Bytes::from_static(b"tick")).await?;
        let entry = self
            .kv
            .entry(CLOCK_KEY)
            .await?
            .ok_or("the clock key vanished")?;
        if entry.revision < revision {
            // A stream leader elected a moment ago that has not applied our write yet: its
            // time is older, which only makes records due later.
            tracing::debug!(
                written = revision,
                read = entry.revision,
                "clock read behind its write"
            );
        }
        Ok(to_utc(&entry.created))
    }

    /// Reads every record, filling in the time of first writes.
    async fn records(&self) -> Result<Vec<Record>, async_nats::Error> {
        let keys = self.pending().await?;
        futures::stream::iter(keys)
            .map(|call_id| async move {
                let Some(entry) = self.kv.entry(&call_id).await? else {
                    return Ok(None);
                };
                if entry.operation != kv::Operation::Put {
                    return Ok(None);
                }
                let Ok(mut pending) = serde_json::from_slice::<PendingRecheck>(&entry.value) else {
                    tracing::warn!(call_id, "unreadable transcript recheck record; dropped");
                    let _ = self
                        .kv
                        .purge_expect_revision(&call_id, Some(entry.revision))
                        .await;
                    return Ok(None);
                };
                if pending.first_ms == 0 {
                    pending.first_ms = to_utc(&entry.created).timestamp_millis();
                }
                Ok::<_, async_nats::Error>(Some(Record {
                    call_id,
                    pending,
                    revision: entry.revision,
                }))
            })
            .buffer_unordered(32)
            .try_filter_map(|record| async move { Ok(record) })
            .try_collect()
            .await
    }

    /// When a record is due (server time, Unix milliseconds).
    fn due_at_ms(&self, pending: &PendingRecheck) -> i64 {
        let index = (pending.rechecks as usize).min(self.delays.len().saturating_sub(1));
        let delay = self.delays.get(index).copied().unwrap_or_default();
        pending.first_ms + delay.as_millis() as i64
    }

    /// One pass: rechecks every due record. Stops early (leaving the rest for the next pass)
    /// when the quota says not now.
    pub async fn run_once(
        &self,
        api: &GongApi,
        jetstream: &jetstream::Context,
    ) -> Result<RecheckReport, async_nats::Error> {
        let mut report = RecheckReport::default();
        if !self.enabled() {
            return Ok(report);
        }
        let now_ms = self.server_now().await?.timestamp_millis();
        let due: Vec<Record> = self
            .records()
            .await?
            .into_iter()
            .filter(|record| self.due_at_ms(&record.pending) <= now_ms)
            .collect();
        report.due = due.len() as u64;
        for chunk in due.chunks(crate::gong_api::IDS_PER_REQUEST) {
            let ids: Vec<String> = chunk.iter().map(|record| record.call_id.clone()).collect();
            let answer = match api.fetch_transcripts(&ids, Priority::Backfill).await {
                Ok(answer) => answer,
                Err(GongError::Quota(QuotaError::Exhausted { .. } | QuotaError::Paused { .. })) => {
                    tracing::info!(
                        left = report.due - report.found - report.not_yet - report.missing,
                        "gong quota says not now; the other rechecks wait for the next pass"
                    );
                    break;
                }
                Err(err) => return Err(err.into()),
            };
            let fetched_at = Utc::now();
            let mut fallback: Vec<&Record> = Vec::new();
            let mut found: Vec<(&Record, Vec<gong_common::gong::Monologue>)> = Vec::new();
            for record in chunk {
                match answer.transcripts.get(&record.call_id) {
                    Some(transcript) => found.push((record, transcript.clone())),
                    None => self.not_found(record, &mut report).await,
                }
            }
            // The previous enrichment, read back from GONG_ENRICHED by sequence (the leader).
            let stream = jetstream.get_stream(names::STREAM_ENRICHED).await?;
            let mut events: Vec<(&Record, EnrichedEvent)> = Vec::new();
            let mut transcripts: HashMap<String, Vec<gong_common::gong::Monologue>> =
                HashMap::new();
            for (record, transcript) in found {
                let previous = stream
                    .get_raw_message(record.pending.enriched_seq)
                    .await
                    .ok()
                    .and_then(|message| EnrichedEvent::from_json(&message.payload).ok())
                    .filter(|event| {
                        event.raw_event_id == record.pending.raw_event_id
                            && event.call_id() == Some(record.call_id.as_str())
                    });
                match previous {
                    Some(event) => {
                        events.push((record, recheck_event(event, transcript, fetched_at)))
                    }
                    None => {
                        transcripts.insert(record.call_id.clone(), transcript);
                        fallback.push(record);
                    }
                }
            }
            if !fallback.is_empty() {
                // The previous event is gone (GONG_ENRICHED's retention): fetch the call again.
                let requests: Vec<CallRequest> = fallback
                    .iter()
                    .map(|record| CallRequest {
                        call_id: record.call_id.clone(),
                        webhook_private: false,
                    })
                    .collect();
                match api.fetch_batch(&requests, Priority::Backfill).await {
                    Ok(batch) => {
                        for record in fallback {
                            let (Some(call), Some(transcript)) = (
                                batch.calls.get(&record.call_id),
                                transcripts.remove(&record.call_id),
                            ) else {
                                continue;
                            };
                            let event = EnrichedEvent {
                                schema_version: gong_common::event::ENRICHED_SCHEMA_VERSION,
                                event_id: String::new(),
                                raw_event_id: record.pending.raw_event_id.clone(),
                                raw_stream_seq: record.pending.raw_stream_seq,
                                received_at: record.pending.received_at,
                                fetched_at: batch.fetched_at,
                                replay_run_id: None,
                                call: call.clone(),
                                transcript: None,
                            };
                            events.push((record, recheck_event(event, transcript, fetched_at)));
                        }
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, calls = requests.len(), "cannot fetch calls whose previous enrichment is gone; next pass");
                    }
                }
            }
            for (record, event) in events {
                let published = pipeline::publish_enriched_from(
                    jetstream,
                    &event,
                    Some(headers::SOURCE_TRANSCRIPT_RECHECK),
                )
                .await;
                let acked = match published {
                    Ok(pending) => pending.acked().await.map_err(|err| err.to_string()),
                    Err(err) => Err(err.to_string()),
                };
                match acked {
                    Ok(ack) => {
                        report.found += 1;
                        metrics::transcript_recheck("found");
                        tracing::info!(
                            call_id = %record.call_id,
                            rechecks = record.pending.rechecks + 1,
                            enriched_seq = ack.sequence,
                            "late transcript arrived; enriched event published"
                        );
                        self.forget(record).await;
                    }
                    Err(error) => {
                        tracing::warn!(call_id = %record.call_id, %error, "cannot publish the enriched event with the late transcript; next pass");
                    }
                }
            }
        }
        Ok(report)
    }

    /// A due record whose transcript is still missing: schedule the next recheck, or give up
    /// after the last one.
    async fn not_found(&self, record: &Record, report: &mut RecheckReport) {
        let rechecks = record.pending.rechecks + 1;
        if rechecks as usize >= self.delays.len() {
            report.missing += 1;
            metrics::transcript_recheck("missing");
            tracing::warn!(
                call_id = %record.call_id,
                rechecks,
                raw_event_id = %record.pending.raw_event_id,
                "no transcript after the last recheck; the call is recorded without one"
            );
            self.forget(record).await;
            return;
        }
        report.not_yet += 1;
        metrics::transcript_recheck("not_yet");
        let next = PendingRecheck {
            rechecks,
            ..record.pending.clone()
        };
        let value = Bytes::from(serde_json::to_vec(&next).unwrap_or_default());
        if let Err(error) = self
            .kv
            .update(&record.call_id, value, record.revision)
            .await
        {
            // Rewritten meanwhile (a newer enrichment of the call): that record stands.
            tracing::debug!(call_id = %record.call_id, %error, "recheck record changed meanwhile");
        }
    }

    async fn forget(&self, record: &Record) {
        if let Err(error) = self
            .kv
            .purge_expect_revision(&record.call_id, Some(record.revision))
            .await
        {
            tracing::debug!(call_id = %record.call_id, %error, "recheck record changed meanwhile; kept");
        }
    }
}

/// The enriched event carrying a late transcript: `previous` with the transcript, the time Gong
/// answered, and an id derived from the raw event's (stable across retries of this recheck,
/// distinct from the first enrichment's).
pub fn recheck_event(
    previous: EnrichedEvent,
    transcript: Vec<gong_common::gong::Monologue>,
    fetched_at: DateTime<Utc>,
) -> EnrichedEvent {
    EnrichedEvent {
        event_id: content_id(format!("{}:transcript-recheck", previous.raw_event_id).as_bytes()),
        fetched_at,
        transcript: Some(transcript),
        replay_run_id: None,
        ..previous
    }
}

/// Runs rechecks while this replica holds the `transcripts` lease; every replica refreshes the
/// pending gauge. Ends on `shutdown` (releasing the lease).
pub(crate) async fn run(
    rechecks: Rechecks,
    lease: Lease,
    api: GongApi,
    jetstream: jetstream::Context,
    shutdown: CancellationToken,
) {
    let handle = lease.spawn(shutdown.clone());
    let state = handle.state;
    let first = rechecks.delays.first().copied().unwrap_or_default();
    let poll = (first / 4).clamp(Duration::from_millis(200), Duration::from_secs(60));
    let mut ticker = tokio::time::interval(poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        if *state.borrow() == LeaseState::Active {
            let pass = tokio::select! {
                _ = shutdown.cancelled() => break,
                pass = rechecks.run_once(&api, &jetstream) => pass,
            };
            match pass {
                Ok(report) if report.due > 0 => tracing::info!(
                    due = report.due,
                    found = report.found,
                    not_yet = report.not_yet,
                    missing = report.missing,
                    "transcript rechecks done"
                ),
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "transcript recheck pass failed; next pass"),
            }
        }
        match rechecks.pending().await {
            Ok(pending) => metrics::transcripts_pending(pending.len()),
            Err(error) => tracing::debug!(%error, "cannot count pending transcript rechecks"),
        }
    }
    let _ = handle.task.await;
}
