//! `gong-enrich replay`: re-drive a range of `GONG_RAW` (`gong.raw.call`) through enrichment.
//!
//! An ordered (ephemeral, unacknowledged) consumer starts at a sequence or a time; the range is
//! the `num_pending` the consumer reports at creation (what the stream holds at start), cut
//! short by `--until`. Events are enriched in batches under the same shared quota as live
//! enrichment but with [`Priority::Backfill`] (two slots per window and the daily reserve are
//! left to live), and published with a new `event_id` (SHA-256 of raw event id and run id),
//! `replay_run_id` and the `Gong-Replay-Run` header, so downstream can tell them apart. Nothing
//! is acked or dead-lettered: the raw stream is only read.

use std::io::IsTerminal;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull::OrderedConfig, consumer::DeliverPolicy};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use gong_common::names;
use gong_common::streams::{ensure_streams, StreamKind};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::EnrichConfig;
use crate::error::{EnrichError, PublishError};
use crate::gong_api::{backoff, GongApi};
use crate::pipeline::{self, MalformedAnswers, RawEvent, ReplayRun, Verdict};
use crate::rate_limit::{Priority, RateLimiter};

/// Where the range starts.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplayStart {
    /// `--from-seq N`.
    Sequence(u64),
    /// `--since <RFC3339>`.
    Time(DateTime<Utc>),
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// A bar when stderr is a terminal, structured log lines every few seconds otherwise.
    Auto,
    /// Nothing but the final summary log line.
    Quiet,
}

/// What to replay.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Start of the range.
    pub start: ReplayStart,
    /// Events stored after this time end the range.
    pub until: Option<DateTime<Utc>>,
    /// Only events of this call.
    pub call_id: Option<String>,
    /// Count the events in range, call nothing, publish nothing.
    pub dry_run: bool,
    /// Progress display.
    pub progress: ProgressMode,
    /// The run id (default: a new UUIDv7).
    pub run_id: Option<String>,
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplaySummary {
    /// The run id stamped on published events.
    pub run_id: String,
    /// Events in the range that match the filters (what `--dry-run` prints).
    pub in_range: u64,
    /// Enriched events published.
    pub published: u64,
    /// Calls Gong does not know (deleted).
    pub not_found: u64,
    /// Bodies that can never be enriched.
    pub invalid: u64,
    /// Events given up on (malformed answers after the retries, enriched events too large to
    /// publish).
    pub failed: u64,
    /// Last raw stream sequence handled.
    pub last_seq: u64,
}

/// Runs a replay to the end of its range (or until `shutdown`: then `Err(Cancelled)`).
pub async fn replay(
    config: EnrichConfig,
    options: ReplayOptions,
    shutdown: CancellationToken,
) -> Result<ReplaySummary, EnrichError> {
    let run = ReplayRun {
        run_id: options
            .run_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
    };
    let client = gong_common::nats::connect(&config.common, "gong-enrich-replay").await?;
    let jetstream = gong_common::nats::jetstream_context(
        client,
        config.common.nats_request_timeout,
        config.max_ack_inflight,
    );
    ensure_streams(
        &jetstream,
        &config.common.streams,
        &[StreamKind::Raw, StreamKind::Enriched],
    )
    .await?;
    let read_error = |source: async_nats::Error| EnrichError::ReadStream {
        stream: names::STREAM_RAW.to_string(),
        source,
    };
    let stream = jetstream
        .get_stream(names::STREAM_RAW)
        .await
        .map_err(|err| read_error(err.into()))?;
    let deliver_policy = match &options.start {
        ReplayStart::Sequence(seq) => DeliverPolicy::ByStartSequence {
            start_sequence: (*seq).max(1),
        },
        ReplayStart::Time(time) => DeliverPolicy::ByStartTime {
            start_time: pipeline::from_utc(*time).map_err(read_error)?,
        },
    };
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: names::SUBJECT_RAW_CALL.to_string(),
            deliver_policy,
            description: Some(format!("gong-enrich replay {}", run.run_id)),
            ..Default::default()
        })
        .await
        .map_err(|err| EnrichError::CreateConsumer {
            stream: names::STREAM_RAW.to_string(),
            consumer: "ordered replay".to_string(),
            source: err.into(),
        })?;
    let total = consumer.cached_info().num_pending;
    let mut summary = ReplaySummary {
        run_id: run.run_id.clone(),
        ..ReplaySummary::default()
    };
    let unfiltered = options.until.is_none() && options.call_id.is_none();
    tracing::info!(run_id = %run.run_id, start = ?options.start, until = ?options.until, call_id = ?options.call_id, total, dry_run = options.dry_run, "replay starting");
    if total == 0 || (options.dry_run && unfiltered) {
        summary.in_range = total;
        tracing::info!(run_id = %run.run_id, in_range = total, "replay range counted");
        return Ok(summary);
    }

    let api = if options.dry_run {
        None
    } else {
        let limiter =
            RateLimiter::open(&jetstream, config.quota.clone(), &config.common.streams).await?;
        Some(GongApi::new(config.gong.clone(), limiter)?)
    };
    let mut messages = consumer
        .messages()
        .await
        .map_err(|err| read_error(err.into()))?;
    let mut progress = Progress::new(options.progress, total);
    let mut seen: u64 = 0;
    let mut done = false;
    while !done {
        // Collect a batch: up to batch_size events, or what comes within the linger.
        let mut batch: Vec<RawEvent> = Vec::new();
        let mut deadline: Option<Instant> = None;
        while batch.len() < config.batch_size && seen < total {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return Err(EnrichError::Cancelled),
                _ = sleep_until(deadline) => break,
                next = messages.next() => next,
            };
            let message = match next {
                Some(Ok(message)) => message,
                Some(Err(err)) => return Err(read_error(err.into())),
                None => {
                    done = true;
                    break;
                }
            };
            seen += 1;
            let event = RawEvent::from_message(&message);
            let published = message
                .info()
                .map(|info| pipeline::to_utc(&info.published))
                .unwrap_or(event.received_at);
            if options.until.is_some_and(|until| published > until) {
                done = true;
                break;
            }
            summary.last_seq = event.stream_seq;
            progress.advance(seen, &summary);
            if let Some(wanted) = &options.call_id {
                if event.call_id() != Some(wanted.as_str()) {
                    continue;
                }
            }
            summary.in_range += 1;
            if !options.dry_run {
                batch.push(event);
                deadline.get_or_insert_with(|| Instant::now() + config.batch_linger);
            }
        }
        if seen >= total {
            done = true;
        }
        if let Some(api) = &api {
            if !batch.is_empty() {
                replay_batch(
                    api,
                    &jetstream,
                    &config,
                    &run,
                    batch,
                    &mut summary,
                    &shutdown,
                )
                .await?;
                progress.advance(seen, &summary);
            }
        }
    }
    progress.finish(&summary);
    tracing::info!(run_id = %run.run_id, in_range = summary.in_range, published = summary.published, not_found = summary.not_found, invalid = summary.invalid, failed = summary.failed, last_seq = summary.last_seq, dry_run = options.dry_run, "replay done");
    Ok(summary)
}

/// Enriches one batch, retrying what is worth retrying until every event is settled.
async fn replay_batch(
    api: &GongApi,
    jetstream: &jetstream::Context,
    config: &EnrichConfig,
    run: &ReplayRun,
    mut events: Vec<RawEvent>,
    summary: &mut ReplaySummary,
    shutdown: &CancellationToken,
) -> Result<(), EnrichError> {
    // Retry rounds of this batch (any reason): the backoff after a Gong failure grows with them.
    let mut rounds: u32 = 0;
    // Malformed answers per event: quota waits and Gong failures are not malformed answers.
    let mut malformed = MalformedAnswers::default();
    let mut quota_warned = false;
    while !events.is_empty() {
        let verdicts = tokio::select! {
            _ = shutdown.cancelled() => return Err(EnrichError::Cancelled),
            verdicts = pipeline::enrich(api, &events, Priority::Backfill, false) => verdicts,
        };
        let mut retry = Vec::new();
        let mut wait = Duration::ZERO;
        let mut publishes = Vec::new();
        for (event, verdict) in events.into_iter().zip(verdicts) {
            match verdict {
                Verdict::Enriched {
                    call,
                    transcript,
                    fetched_at,
                    ..
                } => {
                    let enriched =
                        pipeline::enriched_event(&event, *call, transcript, fetched_at, Some(run));
                    match pipeline::publish_enriched(jetstream, &enriched).await {
                        Ok(ack) => publishes.push((event.stream_seq, ack)),
                        Err(err) => publish_failed(event.stream_seq, err, summary)?,
                    }
                }
                Verdict::Invalid(invalid) => {
                    tracing::warn!(
                        stream_seq = event.stream_seq,
                        reason = invalid.reason,
                        "raw event cannot be enriched; skipped"
                    );
                    summary.invalid += 1;
                }
                Verdict::NotFound => {
                    tracing::warn!(
                        stream_seq = event.stream_seq,
                        call_id = event.call_id().unwrap_or(""),
                        "gong has no such call; skipped"
                    );
                    summary.not_found += 1;
                }
                Verdict::Malformed { detail } => {
                    let answers = malformed.record(event.stream_seq);
                    match pipeline::malformed_retry_after(config, answers) {
                        None => {
                            tracing::error!(stream_seq = event.stream_seq, malformed_answers = answers, detail = %detail, "gong answer malformed after retries; event skipped");
                            summary.failed += 1;
                        }
                        Some(after) => {
                            wait = wait.max(after);
                            retry.push(event);
                        }
                    }
                }
                Verdict::Transient => {
                    wait = wait.max(backoff(
                        rounds,
                        config.gong.retry_backoff_base,
                        config.gong.retry_backoff_max,
                    ));
                    retry.push(event);
                }
                Verdict::AuthFault { detail } => return Err(EnrichError::GongAuth(detail)),
                Verdict::Blocked {
                    retry_in,
                    exhausted,
                } => {
                    if !quota_warned {
                        tracing::warn!(
                            retry_in_secs = retry_in.as_secs(),
                            exhausted,
                            "replay waiting for the gong quota (live enrichment keeps its reserve)"
                        );
                        quota_warned = true;
                    }
                    wait = wait.max(retry_in.min(Duration::from_secs(60)));
                    retry.push(event);
                }
            }
        }
        for (stream_seq, ack) in publishes {
            match ack.acked().await {
                Ok(_) => summary.published += 1,
                Err(err) => publish_failed(stream_seq, err, summary)?,
            }
        }
        if !retry.is_empty() {
            rounds += 1;
        }
        events = retry;
        if !events.is_empty() {
            tokio::select! {
                _ = shutdown.cancelled() => return Err(EnrichError::Cancelled),
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
    Ok(())
}

/// An event whose enriched event can never be stored is counted as failed and skipped (the
/// run goes on; a retry would fail the same way); any other publish failure ends the run.
fn publish_failed(
    stream_seq: u64,
    err: PublishError,
    summary: &mut ReplaySummary,
) -> Result<(), EnrichError> {
    if err.is_permanent() {
        tracing::error!(stream_seq, reason = err.reason(), error = %err, "enriched event can never be published; event skipped");
        summary.failed += 1;
        return Ok(());
    }
    Err(EnrichError::Publish {
        stream_seq,
        source: err,
    })
}

/// A bar on a terminal, log lines otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    log_every: Option<Duration>,
    last_log: Instant,
    total: u64,
}

impl Progress {
    fn new(mode: ProgressMode, total: u64) -> Progress {
        let terminal = std::io::stderr().is_terminal();
        let (bar, log_every) = match mode {
            ProgressMode::Auto if terminal => {
                let bar = ProgressBar::new(total);
                if let Ok(style) = ProgressStyle::with_template(
                    "{spinner} replay [{bar:40}] {pos}/{len} raw events ({per_sec}, eta {eta}) {msg}",
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
            total,
        }
    }

    fn advance(&mut self, seen: u64, summary: &ReplaySummary) {
        if let Some(bar) = &self.bar {
            bar.set_position(seen.min(self.total));
            bar.set_message(format!("{} published", summary.published));
        }
        if let Some(every) = self.log_every {
            if self.last_log.elapsed() >= every {
                self.last_log = Instant::now();
                tracing::info!(run_id = %summary.run_id, seen, last_seq = summary.last_seq, in_range = summary.in_range, published = summary.published, not_found = summary.not_found, failed = summary.failed, total = self.total, "replay progress");
            }
        }
    }

    fn finish(&self, summary: &ReplaySummary) {
        if let Some(bar) = &self.bar {
            bar.set_position(self.total);
            bar.finish_with_message(format!("{} published", summary.published));
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
