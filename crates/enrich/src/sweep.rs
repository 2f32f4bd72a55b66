//! The reconciliation sweep: every call Gong has in a window of start times reaches `GONG_RAW`,
//! whether or not its webhook came.
//!
//! A sweep lists the calls started in `[since, until)` with `POST /v2/calls/extensive` and a date
//! filter ([`GongApi::list_page`]: 100 calls per page, the cursor in the body, one slot of the
//! shared quota per page at [`Priority::Backfill`], so live enrichment goes first and the daily
//! reserve is kept). Each listed call is looked up in the index of calls seen
//! ([`crate::seen`]); a call not there is published to `GONG_RAW` on `gong.raw.call` as a raw
//! event of the webhook's shape, `{"isTest":false,"callData":<the listing's call>}`, with
//! `Gong-Source: sweep`, so enrichment, replay and everything downstream treat it as a webhook
//! (the enricher takes the call data from the body and asks Gong only for the transcript).
//!
//! **Never a lost call, at most one extra enrichment.** A call is skipped only when the index
//! says it is present, and the index is written only after a raw event of the call is durable in
//! `GONG_RAW` (which redelivers it until enriched). A webhook racing the sweep (its raw event
//! stored, not yet taken by the enricher) or a stale read makes the sweep inject the call a
//! second time: one more enrichment of it, nothing lost. The injected body is a pure function of
//! Gong's answer and its event id is the body's SHA-256 (`Nats-Msg-Id`), so two sweeps injecting
//! the same answer inside the duplicate window store it once.
//!
//! **Resumable, one at a time.** A sweep holds the lease `sweep` ([`gong_common::lease`]) while
//! it runs, and checkpoints after every page in a [`Register`] (compare-and-set that is atomic on
//! a nats-server 2.9 cluster): the windows still to list, the cursor of the next page, the
//! counts. The command (`gong-enrich sweep`) and the continuous mode have a checkpoint each
//! (`gong_sweep_command`, `gong_sweep_continuous`). A sweep that finds its checkpoint unfinished
//! (its process was killed) first finishes that sweep from its cursor, then lists the parts of
//! the requested window it did not cover: pages already done are not listed again. A write that
//! loses its compare-and-set means another process took over: this one stops.
//!
//! **Pacing.** Before each page the sweep waits until fewer than `ENRICH_SWEEP_MAX_BACKLOG` raw
//! events wait for the `enrich` consumer or are being enriched, so webhooks queue behind about
//! one batch of swept calls, not behind the whole history.
//!
//! **Continuous mode** (`ENRICH_SWEEP_INTERVAL`, `ENRICH_SWEEP_LOOKBACK`): every replica looks
//! every `interval / 12` (1 s to 5 min) whether a sweep is due; the one that gets the lease
//! writes its checkpoint to learn the NATS server's time (the entry's timestamp) and sweeps the
//! lookback window ending then if the last continuous sweep completed at least an interval
//! before (server times both), or resumes an unfinished one. No pod's clock is compared with
//! another's.

use std::io::IsTerminal;
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishAckFuture};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use gong_common::event::content_id;
use gong_common::lease::{Lease, LeaseState};
use gong_common::names::{self, headers};
use gong_common::register::{Register, RegisterError};
use gong_common::streams::{ensure_streams, ProvisionError, StreamKind, StreamSettings};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::EnrichConfig;
use crate::error::{EnrichError, GongError, QuotaError};
use crate::gong_api::GongApi;
use crate::metrics;
use crate::rate_limit::{Priority, RateLimiter};
use crate::replay::ProgressMode;
use crate::seen::{SeenIndex, SeenRecord};

/// The checkpoint's key (alone in its bucket).
const CHECKPOINT_KEY: &str = "state";

/// A window of call start times, `[since, until)`, in Unix milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// Inclusive start.
    pub since_ms: i64,
    /// Exclusive end.
    pub until_ms: i64,
}

impl Window {
    /// `[since, until)`.
    pub fn new(since: DateTime<Utc>, until: DateTime<Utc>) -> Window {
        Window {
            since_ms: since.timestamp_millis(),
            until_ms: until.timestamp_millis(),
        }
    }

    /// The start.
    pub fn since(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.since_ms).unwrap_or_default()
    }

    /// The end.
    pub fn until(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.until_ms).unwrap_or_default()
    }
}

/// The parts of `window` that none of `covered` covers, in order.
pub fn subtract(window: Window, covered: &[Window]) -> Vec<Window> {
    let mut parts = vec![window];
    for cut in covered {
        parts = parts
            .into_iter()
            .flat_map(|part| {
                let mut left = Vec::new();
                if cut.until_ms <= part.since_ms || cut.since_ms >= part.until_ms {
                    left.push(part);
                } else {
                    if cut.since_ms > part.since_ms {
                        left.push(Window {
                            since_ms: part.since_ms,
                            until_ms: cut.since_ms,
                        });
                    }
                    if cut.until_ms < part.until_ms {
                        left.push(Window {
                            since_ms: cut.until_ms,
                            until_ms: part.until_ms,
                        });
                    }
                }
                left
            })
            .collect();
    }
    parts
}

/// Where a checkpoint stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// No sweep running.
    #[default]
    Idle,
    /// A sweep is running, or was killed (resumable).
    Running,
    /// The write holding this value completed a sweep (resolved to `Idle` by the next reader).
    Done,
}

/// What a sweep counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Calls Gong listed.
    pub listed: u64,
    /// Listed calls found in the index of calls seen.
    pub present: u64,
    /// Listed calls published to `GONG_RAW`.
    pub injected: u64,
    /// Listing requests (pages).
    pub pages: u64,
}

/// A checkpoint (JSON in its register). Times are NATS server times (Unix milliseconds).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweepState {
    /// Where the sweep stands.
    #[serde(default)]
    pub status: Status,
    /// Windows still to list; the first one is in progress.
    #[serde(default)]
    pub windows: Vec<Window>,
    /// Cursor of the next page of `windows[0]`; `None`: its first page.
    #[serde(default)]
    pub cursor: Option<String>,
    /// Counts of the sweep in progress (or just completed).
    #[serde(default)]
    pub counts: Counts,
    /// Who wrote it (lease holder id).
    #[serde(default)]
    pub holder: String,
    /// Server time of the last completed sweep; 0 before the first.
    #[serde(default)]
    pub last_success_ms: i64,
    /// Counts of the last completed sweep.
    #[serde(default)]
    pub last_counts: Counts,
    /// Server time of the register's first write; 0 in that write itself.
    #[serde(default)]
    pub created_ms: i64,
    /// Writes made only to learn the server's time.
    #[serde(default)]
    pub ticks: u64,
}

impl SweepState {
    /// The state once the write holding it is known to have been made at `written_ms` (the
    /// entry's server time): a completion gets that time, a first write its creation time.
    pub fn resolve(mut self, written_ms: i64) -> SweepState {
        if self.created_ms == 0 {
            self.created_ms = written_ms;
        }
        if self.status == Status::Done {
            self.status = Status::Idle;
            self.last_success_ms = written_ms;
            self.last_counts = self.counts;
        }
        self
    }

    /// Whether a sweep was left unfinished.
    pub fn unfinished(&self) -> bool {
        self.status == Status::Running && !self.windows.is_empty()
    }
}

/// Which checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweepKind {
    /// `gong-enrich sweep`.
    Command,
    /// The live service's continuous mode.
    Continuous,
}

impl SweepKind {
    fn bucket(self) -> &'static str {
        match self {
            SweepKind::Command => names::BUCKET_SWEEP_COMMAND,
            SweepKind::Continuous => names::BUCKET_SWEEP_CONTINUOUS,
        }
    }
}

/// A sweep's checkpoint register.
#[derive(Clone)]
pub struct Checkpoint {
    register: Register,
}

/// A checkpoint as read: resolved state, revision, server time of its write.
#[derive(Debug, Clone)]
pub struct Read {
    /// The state, resolved.
    pub state: SweepState,
    /// Its revision (`None`: never written).
    pub revision: Option<u64>,
    /// Server time of its write (Unix milliseconds; 0 when never written).
    pub written_ms: i64,
}

impl Checkpoint {
    /// Opens (creating if missing) the checkpoint of `kind`.
    pub async fn open(
        jetstream: &jetstream::Context,
        settings: &StreamSettings,
        kind: SweepKind,
    ) -> Result<Checkpoint, ProvisionError> {
        Checkpoint::open_bucket(jetstream, settings, kind.bucket()).await
    }

    /// Opens (creating if missing) a checkpoint in the single-key bucket `bucket`: the same
    /// state, ticks and server-time completions for another scheduled job (the entity jobs).
    pub async fn open_bucket(
        jetstream: &jetstream::Context,
        settings: &StreamSettings,
        bucket: &str,
    ) -> Result<Checkpoint, ProvisionError> {
        let register =
            Register::open(jetstream, bucket, CHECKPOINT_KEY, Duration::ZERO, settings).await?;
        Ok(Checkpoint { register })
    }

    /// The current checkpoint, read from the stream leader.
    pub async fn read(&self) -> Result<Read, RegisterError> {
        let Some(current) = self.register.read().await? else {
            return Ok(Read {
                state: SweepState::default(),
                revision: None,
                written_ms: 0,
            });
        };
        let written_ms = current.created.timestamp_millis();
        let state = if current.is_put {
            serde_json::from_slice::<SweepState>(&current.value).unwrap_or_else(|error| {
                tracing::warn!(%error, "sweep checkpoint unreadable; starting afresh");
                SweepState::default()
            })
        } else {
            SweepState::default()
        };
        Ok(Read {
            state: state.resolve(written_ms),
            revision: Some(current.revision),
            written_ms,
        })
    }

    /// Writes `state` if the checkpoint is still at `expected` (`SweepTakenOver` when another
    /// process wrote it meanwhile).
    pub(crate) async fn write(
        &self,
        state: &SweepState,
        expected: Option<u64>,
    ) -> Result<u64, EnrichError> {
        let value = Bytes::from(serde_json::to_vec(state).unwrap_or_default());
        match self.register.write(value, expected).await {
            Ok(revision) => Ok(revision),
            Err(RegisterError::Conflict { .. }) => Err(EnrichError::SweepTakenOver),
            Err(error) => Err(EnrichError::Checkpoint(error)),
        }
    }

    /// Writes the checkpoint back (a tick) and reads it again: the state and the server's time
    /// now (the time of that write).
    pub async fn tick(&self) -> Result<Read, EnrichError> {
        let read = self.read().await.map_err(EnrichError::Checkpoint)?;
        let mut state = read.state;
        state.ticks += 1;
        self.write(&state, read.revision).await?;
        self.read().await.map_err(EnrichError::Checkpoint)
    }
}

/// What to sweep (the command).
#[derive(Debug, Clone)]
pub struct SweepOptions {
    /// Start of the window (inclusive).
    pub since: DateTime<Utc>,
    /// End of the window (exclusive); default now.
    pub until: Option<DateTime<Utc>>,
    /// List and count; publish nothing, write no checkpoint.
    pub dry_run: bool,
    /// Progress display.
    pub progress: ProgressMode,
}

/// What a sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepSummary {
    /// Calls Gong listed.
    pub listed: u64,
    /// Listed calls already present.
    pub present: u64,
    /// Calls published to `GONG_RAW` (0 in a dry run).
    pub injected: u64,
    /// Calls a dry run would have injected.
    pub would_inject: u64,
    /// Listing requests.
    pub pages: u64,
    /// True when an unfinished sweep was resumed first (the counts include its earlier part).
    pub resumed: bool,
}

impl SweepSummary {
    fn from_counts(counts: Counts, resumed: bool) -> SweepSummary {
        SweepSummary {
            listed: counts.listed,
            present: counts.present,
            injected: counts.injected,
            would_inject: 0,
            pages: counts.pages,
            resumed,
        }
    }
}

/// One page's outcome.
struct PageOutcome {
    listed: u64,
    present: u64,
    injected: u64,
    cursor: Option<String>,
    total: Option<u64>,
}

/// What every sweep needs; cheap to clone.
#[derive(Clone)]
pub(crate) struct Sweeper {
    pub(crate) jetstream: jetstream::Context,
    pub(crate) api: GongApi,
    pub(crate) seen: SeenIndex,
    pub(crate) max_backlog: u64,
}

impl Sweeper {
    /// Lists one page of `window` and injects the calls not seen yet (none in a dry run).
    async fn page(
        &self,
        window: Window,
        cursor: Option<&str>,
        dry_run: bool,
        shutdown: &CancellationToken,
    ) -> Result<PageOutcome, EnrichError> {
        if !dry_run {
            self.wait_for_backlog(shutdown).await?;
        }
        let page = self.list(window, cursor, shutdown).await?;
        let mut ids = Vec::new();
        let mut calls = Vec::new();
        let mut unique = std::collections::HashSet::new();
        for call in page.calls {
            let id = match call.pointer("/metaData/id") {
                Some(Value::String(text)) => text.clone(),
                Some(Value::Number(number)) => number.to_string(),
                _ => String::new(),
            };
            if !gong_common::gong::is_call_id(&id) {
                tracing::warn!(call_id = %id, "listed call without a valid id; skipped");
                continue;
            }
            if unique.insert(id.clone()) {
                ids.push(id);
                calls.push(call);
            }
        }
        let listed = ids.len() as u64;
        let present = self
            .seen
            .present(&ids)
            .await
            .map_err(EnrichError::SeenIndex)?;
        let missing: Vec<(String, Value)> = ids
            .into_iter()
            .zip(calls)
            .filter(|(id, _)| !present.contains(id))
            .collect();
        let outcome = PageOutcome {
            listed,
            present: present.len() as u64,
            injected: if dry_run { 0 } else { missing.len() as u64 },
            cursor: page.cursor,
            total: page.total,
        };
        if dry_run {
            return Ok(PageOutcome {
                injected: missing.len() as u64,
                ..outcome
            });
        }
        let injected = self.inject(missing).await?;
        // Only an optimisation (the enricher records them too when it takes them).
        if let Err(error) = self.seen.mark(injected).await {
            tracing::warn!(%error, "cannot record injected calls as seen");
        }
        metrics::sweep_calls(outcome.listed, outcome.present, outcome.injected);
        Ok(outcome)
    }

    /// Publishes each call as a webhook-shaped raw event; returns what to record as seen once
    /// every publish is acknowledged.
    async fn inject(
        &self,
        calls: Vec<(String, Value)>,
    ) -> Result<Vec<(String, SeenRecord)>, EnrichError> {
        let received_at = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let mut acks: Vec<(String, PublishAckFuture)> = Vec::with_capacity(calls.len());
        for (call_id, call) in calls {
            let body = serde_json::json!({"isTest": false, "callData": call});
            let body = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
            let event_id = content_id(&body);
            let mut message_headers = async_nats::HeaderMap::new();
            message_headers.insert(async_nats::header::NATS_MESSAGE_ID, event_id.as_str());
            message_headers.insert(headers::EVENT_ID, event_id.as_str());
            message_headers.insert(headers::RECEIVED_AT, received_at.as_str());
            message_headers.insert(headers::CALL_ID, call_id.as_str());
            message_headers.insert(headers::SOURCE, headers::SOURCE_SWEEP);
            let ack = self
                .jetstream
                .publish_with_headers(names::SUBJECT_RAW_CALL, message_headers, body)
                .await
                .map_err(|err| EnrichError::Inject {
                    call_id: call_id.clone(),
                    source: err.into(),
                })?;
            acks.push((call_id, ack));
        }
        let mut injected = Vec::with_capacity(acks.len());
        for (call_id, ack) in acks {
            let ack = ack.await.map_err(|err| EnrichError::Inject {
                call_id: call_id.clone(),
                source: err.into(),
            })?;
            tracing::debug!(
                call_id,
                raw_seq = ack.sequence,
                duplicate = ack.duplicate,
                "call injected"
            );
            injected.push((
                call_id,
                SeenRecord {
                    source: headers::SOURCE_SWEEP.to_string(),
                    raw_seq: ack.sequence,
                },
            ));
        }
        Ok(injected)
    }

    /// One listing page, waiting out a spent quota or a pause Gong ordered.
    async fn list(
        &self,
        window: Window,
        cursor: Option<&str>,
        shutdown: &CancellationToken,
    ) -> Result<crate::gong_api::ListedPage, EnrichError> {
        let mut warned = false;
        loop {
            let attempt = tokio::select! {
                _ = shutdown.cancelled() => return Err(EnrichError::Cancelled),
                attempt = self.api.list_page(window.since(), window.until(), cursor, Priority::Backfill) => attempt,
            };
            let wait = match attempt {
                Ok(page) => return Ok(page),
                Err(GongError::Quota(QuotaError::Exhausted { resets_in })) => resets_in,
                Err(GongError::Quota(QuotaError::Paused { remaining })) => remaining,
                Err(error @ GongError::Auth { .. }) => {
                    return Err(EnrichError::GongAuth(error.to_string()))
                }
                Err(error) => return Err(EnrichError::List(error)),
            };
            if !warned {
                tracing::warn!(
                    retry_in_secs = wait.as_secs(),
                    "sweep waiting for the gong quota (live enrichment keeps its reserve)"
                );
                warned = true;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Err(EnrichError::Cancelled),
                _ = tokio::time::sleep(wait.min(Duration::from_secs(60))) => {}
            }
        }
    }

    /// Waits while `max_backlog` or more raw events wait for the `enrich` consumer or are being
    /// enriched (delivered, not yet acknowledged): the next page is listed once the enricher is
    /// done with the last one, so swept batches never pile up.
    async fn wait_for_backlog(&self, shutdown: &CancellationToken) -> Result<(), EnrichError> {
        let mut last_log: Option<Instant> = None;
        loop {
            let pending = match self.jetstream.get_stream(names::STREAM_RAW).await {
                Ok(stream) => match stream.consumer_info(names::CONSUMER_ENRICH).await {
                    Ok(info) => info.num_pending + info.num_ack_pending as u64,
                    // No enricher ever ran: nothing to pace against.
                    Err(_) => return Ok(()),
                },
                Err(err) => {
                    return Err(EnrichError::ReadStream {
                        stream: names::STREAM_RAW.to_string(),
                        source: err.into(),
                    })
                }
            };
            if pending < self.max_backlog {
                return Ok(());
            }
            if last_log.is_none_or(|at| at.elapsed() >= Duration::from_secs(30)) {
                tracing::info!(
                    pending,
                    max_backlog = self.max_backlog,
                    "sweep waiting for gong-enrich to take the calls already injected"
                );
                last_log = Some(Instant::now());
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Err(EnrichError::Cancelled),
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    /// Lists `window` without publishing or checkpointing anything.
    async fn dry_run(
        &self,
        window: Window,
        progress: &mut Progress,
        shutdown: &CancellationToken,
    ) -> Result<SweepSummary, EnrichError> {
        let mut summary = SweepSummary::default();
        let mut cursor: Option<String> = None;
        loop {
            let page = self.page(window, cursor.as_deref(), true, shutdown).await?;
            summary.pages += 1;
            summary.listed += page.listed;
            summary.present += page.present;
            summary.would_inject += page.injected;
            progress.page(
                page.total,
                &Counts {
                    listed: summary.listed,
                    present: summary.present,
                    injected: 0,
                    pages: summary.pages,
                },
            );
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(summary),
            }
        }
    }

    /// Runs a checkpointed sweep of `requested` (after finishing an unfinished one first)
    /// while `lease` stays active.
    async fn run(
        &self,
        checkpoint: &Checkpoint,
        requested: Option<Window>,
        holder: &str,
        lease: &watch::Receiver<LeaseState>,
        progress: &mut Progress,
        shutdown: &CancellationToken,
    ) -> Result<SweepSummary, EnrichError> {
        let read = checkpoint.read().await.map_err(EnrichError::Checkpoint)?;
        let mut state = read.state;
        let resumed = state.unfinished();
        if resumed {
            if let Some(requested) = requested {
                let rest = subtract(requested, &state.windows);
                state.windows.extend(rest);
            }
            tracing::info!(
                previous_holder = %state.holder,
                windows = state.windows.len(),
                pages_done = state.counts.pages,
                listed = state.counts.listed,
                injected = state.counts.injected,
                "resuming an unfinished sweep from its checkpoint"
            );
        } else {
            let Some(requested) = requested else {
                return Ok(SweepSummary::default());
            };
            state.windows = vec![requested];
            state.cursor = None;
            state.counts = Counts::default();
        }
        state.status = Status::Running;
        state.holder = holder.to_string();
        let mut revision = checkpoint.write(&state, read.revision).await?;
        while let Some(window) = state.windows.first().copied() {
            if *lease.borrow() != LeaseState::Active {
                return Err(EnrichError::SweepTakenOver);
            }
            let page = self
                .page(window, state.cursor.as_deref(), false, shutdown)
                .await?;
            state.counts.pages += 1;
            state.counts.listed += page.listed;
            state.counts.present += page.present;
            state.counts.injected += page.injected;
            match page.cursor {
                Some(next) => state.cursor = Some(next),
                None => {
                    state.windows.remove(0);
                    state.cursor = None;
                }
            }
            revision = checkpoint.write(&state, Some(revision)).await?;
            progress.page(page.total, &state.counts);
        }
        state.status = Status::Done;
        checkpoint.write(&state, Some(revision)).await?;
        Ok(SweepSummary::from_counts(state.counts, resumed))
    }
}

/// A job's lease (the sweep's, an entity job's), held.
pub(crate) struct Held {
    pub(crate) state: watch::Receiver<LeaseState>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Held {
    /// Releases the lease (a standby takes it within a poll).
    pub(crate) async fn release(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Held {
    /// Dropped without [`Held::release`] (the sweep's task aborted, as if killed): the lease is
    /// not released and another process takes it over after its ttl.
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Runs for the lease until it is held (`None`: until `wait` passed or shutdown).
pub(crate) async fn acquire(
    lease: &Lease,
    wait: Option<Duration>,
    shutdown: &CancellationToken,
) -> Option<Held> {
    let stop = shutdown.child_token();
    let handle = lease.clone().spawn(stop.clone());
    let mut state = handle.state.clone();
    let held = Held {
        state: handle.state,
        stop,
        task: Some(handle.task),
    };
    let active = async {
        state
            .wait_for(|state| *state == LeaseState::Active)
            .await
            .is_ok()
    };
    let got = match wait {
        Some(wait) => tokio::select! {
            _ = shutdown.cancelled() => false,
            got = tokio::time::timeout(wait, active) => got.unwrap_or(false),
        },
        None => tokio::select! {
            _ = shutdown.cancelled() => false,
            got = active => got,
        },
    };
    if got {
        Some(held)
    } else {
        held.release().await;
        None
    }
}

/// Connects, provisions what a sweep needs and opens the Gong client.
async fn connect(config: &EnrichConfig) -> Result<Sweeper, EnrichError> {
    let client = gong_common::nats::connect(&config.common, "gong-enrich-sweep").await?;
    let jetstream = gong_common::nats::jetstream_context(
        client,
        config.common.nats_request_timeout,
        config.max_ack_inflight,
    );
    ensure_streams(&jetstream, &config.common.streams, &[StreamKind::Raw]).await?;
    let limiter =
        RateLimiter::open(&jetstream, config.quota.clone(), &config.common.streams).await?;
    let api = GongApi::new(config.gong.clone(), limiter)?;
    let seen = SeenIndex::open(&jetstream, &config.common.streams).await?;
    Ok(Sweeper {
        jetstream,
        api,
        seen,
        max_backlog: config.sweep.max_backlog,
    })
}

/// `gong-enrich sweep`: sweeps `[since, until)` (resuming an unfinished command sweep first)
/// under the sweep lease, waiting for it while another sweep runs. Ends when done
/// (`Err(Cancelled)` on shutdown: the checkpoint keeps the place).
pub async fn sweep(
    config: EnrichConfig,
    options: SweepOptions,
    shutdown: CancellationToken,
) -> Result<SweepSummary, EnrichError> {
    let until = options.until.unwrap_or_else(Utc::now);
    if options.since >= until {
        return Err(EnrichError::EmptyWindow {
            since: options.since,
            until,
        });
    }
    let window = Window::new(options.since, until);
    let sweeper = connect(&config).await?;
    let mut progress = Progress::new(options.progress);
    tracing::info!(since = %window.since(), until = %window.until(), dry_run = options.dry_run, "sweep starting");
    if options.dry_run {
        let summary = sweeper.dry_run(window, &mut progress, &shutdown).await?;
        progress.finish();
        tracing::info!(
            listed = summary.listed,
            present = summary.present,
            would_inject = summary.would_inject,
            pages = summary.pages,
            "sweep dry run done"
        );
        return Ok(summary);
    }
    let checkpoint = Checkpoint::open(
        &sweeper.jetstream,
        &config.common.streams,
        SweepKind::Command,
    )
    .await?;
    let holder = format!("sweep-command-{}", uuid::Uuid::now_v7());
    let lease = Lease::open(
        &sweeper.jetstream,
        &config.common.streams,
        names::LEASE_SWEEP,
        holder.clone(),
        config.sweep.lease_ttl,
    )
    .await?;
    if let Ok(Some((record, _))) = lease.read().await {
        if !record.holder.is_empty() {
            tracing::info!(holder = %record.holder, "another sweep holds the sweep lease; waiting for it");
        }
    }
    let Some(held) = acquire(&lease, None, &shutdown).await else {
        return Err(EnrichError::Cancelled);
    };
    let outcome = sweeper
        .run(
            &checkpoint,
            Some(window),
            &holder,
            &held.state,
            &mut progress,
            &shutdown,
        )
        .await;
    held.release().await;
    progress.finish();
    let summary = outcome?;
    tracing::info!(
        listed = summary.listed,
        present = summary.present,
        injected = summary.injected,
        pages = summary.pages,
        resumed = summary.resumed,
        "sweep done"
    );
    Ok(summary)
}

/// The continuous mode's settings.
#[derive(Clone)]
pub(crate) struct Continuous {
    pub(crate) sweeper: Sweeper,
    pub(crate) checkpoint: Checkpoint,
    pub(crate) lease: Lease,
    pub(crate) interval: Duration,
    pub(crate) lookback: Duration,
    pub(crate) lease_ttl: Duration,
}

/// Publishes the last-sweep gauges from the continuous checkpoint (every replica the same).
pub(crate) async fn publish_gauges(checkpoint: &Checkpoint) -> Result<Read, RegisterError> {
    let read = checkpoint.read().await?;
    let state = &read.state;
    let at_ms = if state.last_success_ms > 0 {
        state.last_success_ms
    } else {
        state.created_ms
    };
    metrics::sweep_last(
        at_ms as f64 / 1000.0,
        state.last_counts.listed,
        state.last_counts.present,
        state.last_counts.injected,
    );
    Ok(read)
}

/// The live service's continuous sweep; ends on `shutdown`.
pub(crate) async fn continuous(ctx: Continuous, shutdown: CancellationToken) {
    let poll = (ctx.interval / 12).clamp(Duration::from_secs(1), Duration::from_secs(300));
    // Long enough to take over from a holder that died (a whole ttl unchanged, plus polls).
    let wait = ctx.lease_ttl + ctx.lease_ttl / 2 + Duration::from_secs(5);
    let holder = ctx.lease.holder().to_string();
    tracing::info!(
        interval_secs = ctx.interval.as_secs(),
        lookback_secs = ctx.lookback.as_secs(),
        "continuous sweep on"
    );
    loop {
        if let Err(error) = publish_gauges(&ctx.checkpoint).await {
            tracing::debug!(%error, "cannot read the sweep checkpoint");
        }
        if let Some(held) = acquire(&ctx.lease, Some(wait), &shutdown).await {
            let outcome = round(&ctx, &holder, &held.state, &shutdown).await;
            held.release().await;
            match outcome {
                Ok(Some(summary)) => {
                    tracing::info!(
                        listed = summary.listed,
                        present = summary.present,
                        injected = summary.injected,
                        pages = summary.pages,
                        resumed = summary.resumed,
                        "continuous sweep done"
                    );
                    let _ = publish_gauges(&ctx.checkpoint).await;
                }
                Ok(None) => {}
                Err(EnrichError::Cancelled) => return,
                Err(error) => {
                    tracing::warn!(%error, "continuous sweep failed; it resumes from its checkpoint")
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

/// One look, holding the lease: sweeps (or resumes) when due. `None`: not due.
async fn round(
    ctx: &Continuous,
    holder: &str,
    lease: &watch::Receiver<LeaseState>,
    shutdown: &CancellationToken,
) -> Result<Option<SweepSummary>, EnrichError> {
    let now = ctx.checkpoint.tick().await?;
    let state = &now.state;
    let interval_ms = ctx.interval.as_millis() as i64;
    if !state.unfinished()
        && state.last_success_ms > 0
        && now.written_ms - state.last_success_ms < interval_ms
    {
        return Ok(None);
    }
    let until_ms = now.written_ms;
    let requested = Window {
        since_ms: until_ms - ctx.lookback.as_millis() as i64,
        until_ms,
    };
    let mut progress = Progress::new(ProgressMode::Quiet);
    ctx.sweeper
        .run(
            &ctx.checkpoint,
            Some(requested),
            holder,
            lease,
            &mut progress,
            shutdown,
        )
        .await
        .map(Some)
}

/// A bar on a terminal, log lines otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    log_every: Option<Duration>,
    last_log: Instant,
}

impl Progress {
    fn new(mode: ProgressMode) -> Progress {
        let (bar, log_every) = match mode {
            ProgressMode::Auto if std::io::stderr().is_terminal() => {
                let bar = ProgressBar::new(0);
                if let Ok(style) = ProgressStyle::with_template(
                    "{spinner} sweep [{bar:40}] {pos}/{len} calls listed ({per_sec}, eta {eta}) {msg}",
                ) {
                    bar.set_style(style.progress_chars("=> "));
                }
                (Some(bar), None)
            }
            ProgressMode::Auto => (None, Some(Duration::from_secs(5))),
            ProgressMode::Quiet => (None, None),
        };
        Progress {
            bar,
            log_every,
            last_log: Instant::now(),
        }
    }

    /// After a page: `total` is the current window's total when Gong says.
    fn page(&mut self, total: Option<u64>, counts: &Counts) {
        if let Some(bar) = &self.bar {
            if let Some(total) = total {
                bar.set_length(total.max(counts.listed));
            }
            bar.set_position(counts.listed);
            bar.set_message(format!(
                "{} present, {} injected",
                counts.present, counts.injected
            ));
        }
        if let Some(every) = self.log_every {
            if self.last_log.elapsed() >= every {
                self.last_log = Instant::now();
                tracing::info!(
                    pages = counts.pages,
                    listed = counts.listed,
                    present = counts.present,
                    injected = counts.injected,
                    window_total = total,
                    "sweep progress"
                );
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(since_ms: i64, until_ms: i64) -> Window {
        Window { since_ms, until_ms }
    }

    #[test]
    fn subtracting_windows_leaves_the_uncovered_parts() {
        assert_eq!(subtract(window(0, 10), &[]), vec![window(0, 10)]);
        assert_eq!(subtract(window(0, 10), &[window(0, 10)]), vec![]);
        assert_eq!(
            subtract(window(5, 15), &[window(0, 10)]),
            vec![window(10, 15)]
        );
        assert_eq!(
            subtract(window(0, 20), &[window(5, 10)]),
            vec![window(0, 5), window(10, 20)]
        );
        assert_eq!(
            subtract(window(0, 20), &[window(5, 10), window(12, 30)]),
            vec![window(0, 5), window(10, 12)]
        );
        assert_eq!(subtract(window(0, 5), &[window(5, 9)]), vec![window(0, 5)]);
    }

    #[test]
    fn a_completion_and_a_first_write_take_their_entry_s_time() {
        let first = SweepState::default().resolve(1_000);
        assert_eq!(first.created_ms, 1_000);
        assert_eq!(first.last_success_ms, 0);
        let done = SweepState {
            status: Status::Done,
            counts: Counts {
                listed: 7,
                present: 5,
                injected: 2,
                pages: 1,
            },
            ..first.clone()
        }
        .resolve(9_000);
        assert_eq!(done.status, Status::Idle);
        assert_eq!(done.last_success_ms, 9_000);
        assert_eq!(done.last_counts.injected, 2);
        assert_eq!(done.created_ms, 1_000, "the creation time is kept");
        // Read again (by another replica, or after a tick carrying it): unchanged.
        assert_eq!(done.clone().resolve(12_000), done);
    }
}
