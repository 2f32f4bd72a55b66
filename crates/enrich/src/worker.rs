//! The stage loop: check the shared quota, pull a batch from the durable consumer `enrich`,
//! ask Gong about it (reporting progress on the held messages meanwhile), publish the enriched
//! events, and settle every raw event through [`decide`] and `gong_common::ack::settle`.
//!
//! Nothing is pulled while the daily quota is spent or Gong ordered a long pause, and nothing
//! spins: the loop sleeps until the reset (re-checking each minute) with a WARN log and the
//! `gong_enrich_quota_exhausted` gauge at 1.
//!
//! The same quota read paces the batch linger ([`crate::pacing`]): while today's spend runs
//! ahead of an even pace through the UTC day a pull waits up to `ENRICH_BATCH_LINGER_MAX` for
//! its batch to fill, otherwise `ENRICH_BATCH_LINGER`.
//!
//! Every raw event taken is recorded in the index of calls seen ([`crate::seen`]) while Gong is
//! asked about its batch, so the sweep does not inject it again. Calls the sweep injected carry
//! the listing's extensive data: only their transcripts are asked for, and a batch holding
//! nothing else asks at backfill priority (live webhooks first) and is processed beside the loop
//! (at most [`SWEPT_BATCHES_IN_FLIGHT`] at once), so the webhooks pulled next never wait for its
//! quota slot. A public call whose
//! transcript Gong does not have yet is recorded for a recheck ([`crate::rechecks`]) before its
//! raw event is acknowledged.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer, message::AckKind};
use futures::StreamExt;
use gong_common::ack::{settle, Outcome};
use gong_common::admin::Readiness;
use gong_common::names::{self, Stage};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::config::EnrichConfig;
use crate::error::{EnrichError, PublishError, QuotaError};
use crate::gong_api::{backoff, GongApi};
use crate::metrics;
use crate::pacing::Pacing;
use crate::pipeline::{self, MalformedAnswers, RawEvent, Verdict};
use crate::rate_limit::Priority;
use crate::rechecks::{PendingRecheck, Rechecks};
use crate::seen::{SeenIndex, SeenRecord};

/// Batches holding only swept calls processed beside the loop at once; beyond it the loop waits
/// for one to finish (the sweep's own pacing keeps it far from this).
const SWEPT_BATCHES_IN_FLIGHT: usize = 2;

/// Everything the loop needs.
pub(crate) struct Worker {
    pub(crate) config: EnrichConfig,
    pub(crate) jetstream: jetstream::Context,
    pub(crate) consumer: PullConsumer,
    pub(crate) api: GongApi,
    pub(crate) readiness: Readiness,
    pub(crate) seen: SeenIndex,
    pub(crate) rechecks: Rechecks,
}

/// Creates or updates the durable consumer `enrich` on `gong.raw.call` with the configured
/// limits. Shared by every replica.
pub(crate) async fn ensure_consumer(
    jetstream: &jetstream::Context,
    config: &EnrichConfig,
) -> Result<PullConsumer, EnrichError> {
    let error = |source: async_nats::Error| EnrichError::CreateConsumer {
        stream: names::STREAM_RAW.to_string(),
        consumer: names::CONSUMER_ENRICH.to_string(),
        source,
    };
    let stream = jetstream
        .get_stream(names::STREAM_RAW)
        .await
        .map_err(|err| error(err.into()))?;
    let wanted = jetstream::consumer::pull::Config {
        durable_name: Some(names::CONSUMER_ENRICH.to_string()),
        description: Some("gong-enrich: raw call events to enrich (all replicas)".to_string()),
        filter_subject: names::SUBJECT_RAW_CALL.to_string(),
        deliver_policy: jetstream::consumer::DeliverPolicy::All,
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: config.ack_wait,
        max_deliver: config.max_deliver,
        max_ack_pending: config.max_ack_pending,
        ..Default::default()
    };
    gong_common::streams::ensure_pull_consumer(&stream, wanted)
        .await
        .map_err(error)
}

/// Runs until `shutdown`: finishes the batch in hand (within the grace period), then returns.
pub(crate) async fn run(worker: Worker, shutdown: CancellationToken) -> Result<(), EnrichError> {
    let worker = Arc::new(worker);
    let _pending = AbortOnDropHandle::new(tokio::spawn(refresh_pending(
        worker.consumer.clone(),
        worker.config.pending_refresh,
    )));
    // Malformed answers per raw event; this loop and its swept batches read and write them.
    let malformed = Arc::new(Mutex::new(MalformedAnswers::default()));
    let mut swept_batches: tokio::task::JoinSet<()> = tokio::task::JoinSet::new();
    let mut quota_warned = false;
    let mut auth_pause_until: Option<Instant> = None;
    let pacing = Pacing::from_config(&worker.config);
    let mut linger = pacing.base;
    tracing::info!(
        consumer = names::CONSUMER_ENRICH,
        batch_size = worker.config.batch_size,
        rate_per_second = worker.config.quota.rate_per_second,
        daily_quota = worker.config.quota.daily_quota,
        batch_linger_ms = pacing.base.as_millis() as u64,
        batch_linger_max_ms = pacing.max.as_millis() as u64,
        pace_slack = pacing.slack,
        "gong-enrich consuming"
    );
    while !shutdown.is_cancelled() {
        match worker.api.limiter().check(Priority::Live).await {
            Ok(snapshot) => {
                if quota_warned {
                    tracing::info!("gong quota available again; resuming");
                    quota_warned = false;
                }
                let paced = pacing.linger(snapshot.spent_today, snapshot.at_ms);
                if paced != linger {
                    linger = paced;
                    metrics::batch_linger(linger);
                    let ahead = pacing.is_ahead(snapshot.spent_today, snapshot.at_ms);
                    tracing::info!(
                        batch_linger_ms = linger.as_millis() as u64,
                        spent_today = snapshot.spent_today,
                        allowed_by_now = pacing.allowed_by(snapshot.at_ms),
                        ahead_of_pace = ahead,
                        "batch linger paced to the daily gong quota"
                    );
                }
            }
            Err(err) => {
                let wait = match &err {
                    QuotaError::Exhausted { resets_in } => {
                        if !quota_warned {
                            tracing::warn!(
                                resets_in_secs = resets_in.as_secs(),
                                daily_quota = worker.config.quota.daily_quota,
                                "daily gong quota spent; not pulling until it resets"
                            );
                            quota_warned = true;
                        }
                        *resets_in
                    }
                    QuotaError::Paused { remaining } => {
                        if !quota_warned {
                            tracing::warn!(
                                remaining_secs = remaining.as_secs(),
                                "gong asked us to pause; not pulling meanwhile"
                            );
                            quota_warned = true;
                        }
                        *remaining
                    }
                    QuotaError::Store(detail) => {
                        tracing::warn!(error = %detail, "cannot read the quota bucket");
                        Duration::from_secs(1)
                    }
                };
                sleep_or_shutdown(wait.min(Duration::from_secs(60)), &shutdown).await;
                continue;
            }
        }
        if let Some(until) = auth_pause_until {
            if Instant::now() < until {
                sleep_or_shutdown(until - Instant::now(), &shutdown).await;
                continue;
            }
        }

        let messages = match pull(&worker, linger, &shutdown).await {
            Ok(messages) => messages,
            Err(err) => {
                tracing::warn!(error = %err, "pull failed; retrying");
                sleep_or_shutdown(Duration::from_secs(1), &shutdown).await;
                continue;
            }
        };
        if messages.is_empty() {
            continue;
        }
        if shutdown.is_cancelled() {
            hand_back(&messages).await;
            break;
        }
        metrics::batch_size(messages.len());

        if is_swept_only(&messages) {
            // Backfill priority may wait for a quota slot: beside the loop, so the webhooks
            // pulled next do not wait behind it.
            while swept_batches.len() >= SWEPT_BATCHES_IN_FLIGHT {
                swept_batches.join_next().await;
            }
            let (worker, malformed, shutdown) =
                (worker.clone(), malformed.clone(), shutdown.clone());
            swept_batches.spawn(async move {
                let _ = process_within_grace(&worker, &malformed, &messages, &shutdown).await;
            });
            continue;
        }
        let Some(report) = process_within_grace(&worker, &malformed, &messages, &shutdown).await
        else {
            break;
        };
        if report.auth_fault {
            auth_pause_until = Some(Instant::now() + worker.config.auth_retry_delay);
        } else if report.enriched > 0 {
            auth_pause_until = None;
        }
    }
    // Swept batches in hand finish (or are handed back) within the same grace.
    while swept_batches.join_next().await.is_some() {}
    tracing::info!("gong-enrich stopped");
    Ok(())
}

/// True when every message of the batch is a call the sweep injected.
fn is_swept_only(messages: &[jetstream::Message]) -> bool {
    messages.iter().all(|message| {
        message
            .headers
            .as_ref()
            .and_then(|map| map.get(gong_common::names::headers::SOURCE))
            .is_some_and(|value| value.as_str() == gong_common::names::headers::SOURCE_SWEEP)
    })
}

/// Processes a batch; once shutdown is requested it gets `ENRICH_SHUTDOWN_GRACE`, then what is
/// left is handed back (`None`).
async fn process_within_grace(
    worker: &Worker,
    malformed: &Mutex<MalformedAnswers>,
    messages: &[jetstream::Message],
    shutdown: &CancellationToken,
) -> Option<BatchReport> {
    let grace = worker.config.shutdown_grace;
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        report = process_batch(worker, malformed, messages) => Some(report),
        _ = deadline => {
            tracing::warn!(held = messages.len(), "shutdown grace elapsed; handing the batch back");
            hand_back(messages).await;
            None
        }
    }
}

async fn sleep_or_shutdown(duration: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        _ = tokio::time::sleep(duration) => {}
        _ = shutdown.cancelled() => {}
    }
}

/// Up to `batch_size` raw events, or what arrives within `linger`. The events already
/// delivered report progress while the pull lingers, so a linger longer than a third of
/// `ENRICH_ACK_WAIT` never gets them redelivered.
async fn pull(
    worker: &Worker,
    linger: Duration,
    shutdown: &CancellationToken,
) -> Result<Vec<jetstream::Message>, async_nats::Error> {
    let mut batch = worker
        .consumer
        .batch()
        .max_messages(worker.config.batch_size)
        .expires(linger)
        .messages()
        .await?;
    let every = progress_every(&worker.config);
    let mut progress = tokio::time::interval_at(Instant::now() + every, every);
    let mut messages: Vec<jetstream::Message> = Vec::new();
    loop {
        let next = tokio::select! {
            next = batch.next() => next,
            _ = progress.tick() => {
                for message in &messages {
                    let _ = message.ack_with(AckKind::Progress).await;
                }
                continue;
            }
            _ = shutdown.cancelled() => break,
        };
        match next {
            None => break,
            Some(Ok(message)) => messages.push(message),
            Some(Err(err)) => {
                if messages.is_empty() {
                    return Err(err);
                }
                tracing::debug!(error = %err, "pull ended early");
                break;
            }
        }
    }
    Ok(messages)
}

/// Naks without delay so another replica takes the events at once.
async fn hand_back(messages: &[jetstream::Message]) {
    for message in messages {
        let _ = message.ack_with(AckKind::Nak(None)).await;
    }
}

/// What a batch did, for the loop's own state.
#[derive(Debug, Default)]
struct BatchReport {
    enriched: usize,
    auth_fault: bool,
}

/// How often held raw events tell JetStream they are still in progress.
fn progress_every(config: &EnrichConfig) -> Duration {
    (config.ack_wait / 3).max(Duration::from_millis(200))
}

/// Runs `work` while telling JetStream every `every` that `messages` are still in progress, so
/// they are not redelivered while we wait on the quota or on Gong.
async fn with_progress<F: Future>(
    messages: &[jetstream::Message],
    every: Duration,
    work: F,
) -> F::Output {
    tokio::pin!(work);
    let mut ticker = tokio::time::interval_at(Instant::now() + every, every);
    loop {
        tokio::select! {
            output = &mut work => return output,
            _ = ticker.tick() => {
                for message in messages {
                    let _ = message.ack_with(AckKind::Progress).await;
                }
            }
        }
    }
}

/// What to do with one raw event, decided in one place.
enum Decision {
    /// Publish this enriched event; ack the raw event after the publish ack (and, when the
    /// flag says so, after the call is recorded for a transcript recheck).
    Publish(Box<gong_common::event::EnrichedEvent>, bool),
    /// Settle with this outcome, counted under `label`.
    Settle(Outcome, &'static str),
}

/// Maps a verdict to a decision (the only place where outcomes are chosen). `malformed` is how
/// many malformed answers the event has had, this one included ([`MalformedAnswers`]).
fn decide(config: &EnrichConfig, event: &RawEvent, verdict: Verdict, malformed: i64) -> Decision {
    match verdict {
        Verdict::Enriched {
            call,
            transcript,
            fetched_at,
            transcript_pending,
        } => Decision::Publish(
            Box::new(pipeline::enriched_event(
                event, *call, transcript, fetched_at, None,
            )),
            transcript_pending && !config.transcript_recheck.is_empty(),
        ),
        Verdict::Invalid(invalid) => Decision::Settle(
            Outcome::Poison {
                reason: invalid.reason.to_string(),
                detail: invalid.detail,
            },
            invalid.reason,
        ),
        Verdict::NotFound => Decision::Settle(
            Outcome::Poison {
                reason: "call_not_found".to_string(),
                detail: format!(
                    "gong has no call {} (deleted, or not visible to this access key)",
                    event.call_id().unwrap_or("?")
                ),
            },
            "call_not_found",
        ),
        Verdict::Malformed { detail } => match pipeline::malformed_retry_after(config, malformed) {
            None => Decision::Settle(
                Outcome::Poison {
                    reason: "malformed_response".to_string(),
                    detail,
                },
                "malformed_response",
            ),
            Some(after) => {
                tracing::warn!(stream_seq = event.stream_seq, malformed_answers = malformed, delivered = event.delivered, detail = %detail, "gong answer malformed; will retry");
                Decision::Settle(Outcome::Retry { after }, "retry")
            }
        },
        Verdict::Transient => Decision::Settle(
            Outcome::Retry {
                after: backoff(
                    event.delivered.max(1) as u32,
                    config.gong.retry_backoff_base,
                    config.gong.retry_backoff_max,
                ),
            },
            "retry",
        ),
        Verdict::AuthFault { .. } => Decision::Settle(
            Outcome::Retry {
                after: config.auth_retry_delay,
            },
            "auth_fault",
        ),
        Verdict::Blocked { retry_in, .. } => Decision::Settle(
            Outcome::Retry {
                after: retry_in.min(Duration::from_secs(900)),
            },
            "quota_wait",
        ),
    }
}

async fn process_batch(
    worker: &Worker,
    malformed: &Mutex<MalformedAnswers>,
    messages: &[jetstream::Message],
) -> BatchReport {
    let events: Vec<RawEvent> = messages.iter().map(RawEvent::from_message).collect();
    // Live webhooks first: a batch of swept calls alone waits behind them for the quota.
    let swept_only = events.iter().any(RawEvent::is_swept)
        && events
            .iter()
            .all(|event| event.is_swept() || event.call.is_err());
    let priority = if swept_only {
        Priority::Backfill
    } else {
        Priority::Live
    };
    let marks: Vec<(String, SeenRecord)> = events
        .iter()
        .filter_map(|event| {
            let source = if event.is_swept() {
                gong_common::names::headers::SOURCE_SWEEP
            } else {
                "webhook"
            };
            Some((
                event.call_id()?.to_string(),
                SeenRecord {
                    source: source.to_string(),
                    raw_seq: event.stream_seq,
                },
            ))
        })
        .collect();
    let (verdicts, marked) = with_progress(
        messages,
        progress_every(&worker.config),
        futures::future::join(
            pipeline::enrich(&worker.api, &events, priority, true),
            worker.seen.mark(marks),
        ),
    )
    .await;
    if let Err(error) = marked {
        // Only costs a sweep injecting these calls again (one more enrichment each).
        tracing::warn!(%error, "cannot record the batch's calls as seen");
    }

    let mut report = BatchReport::default();
    let mut auth_detail = None;
    let mut settlements: Vec<(usize, Outcome, &'static str)> = Vec::new();
    let mut publishes = Vec::new();
    let mut recheck: Vec<bool> = vec![false; events.len()];
    for (index, verdict) in verdicts.into_iter().enumerate() {
        let event = &events[index];
        if let Verdict::AuthFault { detail } = &verdict {
            auth_detail = Some(detail.clone());
        }
        let answers = match &verdict {
            Verdict::Malformed { .. } => malformed
                .lock()
                .map(|mut answers| answers.record(event.stream_seq))
                .unwrap_or(1),
            _ => 0,
        };
        match decide(&worker.config, event, verdict, answers) {
            Decision::Publish(enriched, wants_recheck) => {
                recheck[index] = wants_recheck;
                match pipeline::publish_enriched(&worker.jetstream, &enriched).await {
                    Ok(ack) => publishes.push((index, ack)),
                    Err(err) => settlements.push(publish_failed(index, event, err)),
                }
            }
            Decision::Settle(outcome, label) => settlements.push((index, outcome, label)),
        }
    }
    for (index, ack) in publishes {
        match ack.acked().await {
            Ok(ack) => {
                let event = &events[index];
                tracing::debug!(
                    stream_seq = event.stream_seq,
                    call_id = event.call_id().unwrap_or(""),
                    enriched_seq = ack.sequence,
                    duplicate = ack.duplicate,
                    "call enriched"
                );
                if recheck[index] {
                    if let Err(outcome) =
                        register_recheck(&worker.rechecks, event, ack.sequence).await
                    {
                        settlements.push((index, outcome, "retry"));
                        continue;
                    }
                }
                settlements.push((index, Outcome::Done, "enriched"));
            }
            Err(err) => settlements.push(publish_failed(index, &events[index], err)),
        }
    }
    settlements.sort_by_key(|(index, _, _)| *index);
    let mut handed_back = 0usize;
    let mut dead_lettered = 0usize;
    for (index, outcome, label) in settlements {
        match &outcome {
            Outcome::Done => report.enriched += 1,
            Outcome::Retry { .. } => handed_back += 1,
            Outcome::Poison { .. } => dead_lettered += 1,
        }
        if !matches!(outcome, Outcome::Retry { .. }) {
            if let Ok(mut answers) = malformed.lock() {
                answers.forget(events[index].stream_seq);
            }
        }
        if let Err(err) = settle(&worker.jetstream, Stage::Enrich, &messages[index], outcome).await
        {
            tracing::warn!(stream_seq = events[index].stream_seq, error = %err, "cannot settle raw event; it will be redelivered");
            continue;
        }
        metrics::event(label);
    }

    if handed_back > 0 || dead_lettered > 0 {
        tracing::info!(
            batch = messages.len(),
            enriched = report.enriched,
            handed_back,
            dead_lettered,
            "batch settled"
        );
    } else {
        tracing::debug!(
            batch = messages.len(),
            enriched = report.enriched,
            "batch settled"
        );
    }
    if let Some(detail) = auth_detail {
        report.auth_fault = true;
        tracing::error!(error = %detail, retry_in_secs = worker.config.auth_retry_delay.as_secs(), "gong refused the access key; check GONG_ACCESS_KEY and GONG_ACCESS_KEY_SECRET");
        worker.readiness.set_fault(Some(
            "gong refused the access key (401/403); check GONG_ACCESS_KEY and GONG_ACCESS_KEY_SECRET"
                .to_string(),
        ));
    } else if report.enriched > 0 && worker.readiness.fault().is_some() {
        tracing::info!("gong accepts the access key again");
        worker.readiness.set_fault(None);
    }
    report
}

/// Records `event`'s call for a transcript recheck; the raw event is handed back when that
/// fails (its enriched event, published again, is stored once: same `Nats-Msg-Id`).
async fn register_recheck(
    rechecks: &Rechecks,
    event: &RawEvent,
    enriched_seq: u64,
) -> Result<(), Outcome> {
    let Some(call_id) = event.call_id() else {
        return Ok(());
    };
    let pending = PendingRecheck {
        raw_event_id: event.event_id.clone(),
        raw_stream_seq: event.stream_seq,
        received_at: event.received_at,
        enriched_seq,
        rechecks: 0,
        first_ms: 0,
    };
    match rechecks.register(call_id, &pending).await {
        Ok(()) => {
            tracing::info!(
                call_id,
                stream_seq = event.stream_seq,
                enriched_seq,
                "no transcript yet; recheck scheduled"
            );
            Ok(())
        }
        Err(error) => {
            tracing::warn!(call_id, %error, "cannot schedule the transcript recheck; will retry the event");
            Err(Outcome::Retry {
                after: Duration::from_secs(2),
            })
        }
    }
}

/// The settlement of a raw event whose enriched event could not be stored: dead-lettered with
/// the reason when no retry can succeed (it would only spend Gong quota again), retried in 2 s
/// otherwise.
fn publish_failed(
    index: usize,
    event: &RawEvent,
    err: PublishError,
) -> (usize, Outcome, &'static str) {
    if err.is_permanent() {
        tracing::error!(stream_seq = event.stream_seq, call_id = event.call_id().unwrap_or(""), reason = err.reason(), error = %err, "enriched event can never be published; dead-lettering the raw event");
        let reason = err.reason();
        return (
            index,
            Outcome::Poison {
                reason: reason.to_string(),
                detail: err.to_string(),
            },
            reason,
        );
    }
    tracing::warn!(stream_seq = event.stream_seq, error = %err, "cannot publish enriched event; will retry");
    (
        index,
        Outcome::Retry {
            after: Duration::from_secs(2),
        },
        "retry",
    )
}

/// Refreshes `gong_enrich_consumer_pending` from consumer info every `every` (one request a
/// tick, on the consumer the loop holds).
async fn refresh_pending(mut consumer: PullConsumer, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    loop {
        ticker.tick().await;
        match consumer.info().await {
            Ok(info) => metrics::consumer_pending(info.num_pending, info.num_ack_pending),
            Err(err) => tracing::debug!(error = %err, "cannot read consumer info"),
        }
    }
}
