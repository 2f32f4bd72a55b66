//! The live loop: pull enriched events, batch them into a contiguous sequence range, write the
//! range's files, then acknowledge.
//!
//! The durable consumer `load` takes every subject of GONG_ENRICHED (`gong.enriched.>`: calls,
//! users, answered scorecards); a message's subject decides its rows.
//!
//! Per message (stream sequence `seq`):
//! - poison (undecodable, newer schema, no entity id) → dead-lettered through `settle`; its
//!   sequence still belongs to the range (it simply yields no rows); a subject this version has
//!   no tables for yields no rows either, and is acknowledged with its range;
//! - `seq` inside the open batch (a redelivery) → held again, acknowledged with the batch;
//! - `seq` at or after the batch's next sequence → appended; a gap is filled by reading the
//!   missing sequences from the stream, so the batch is always exactly `first..=next-1`;
//! - `seq` below the head of the manifest → covered by a recorded range: acknowledged if that
//!   range is done, rewritten (takeover) if it is pending: this loader holds the lease, so
//!   whoever claimed it (an earlier holder, or this one before a failed flush) is not writing
//!   it any more.
//!
//! A batch starts at the manifest's head and is flushed on rows, bytes, age (a timer that fires
//! without traffic) or shutdown: claim the range (CAS), upload every table's file, record the
//! files in the Snowpipe ledger (Snowpipe REST mode, `ledger.rs`), then ack the held messages,
//! then mark the range done. A lost claim discards the files and naks the held messages; they
//! come back as covered.
//!
//! Only the holder of the `load` lease ([`gong_common::lease`]) pulls; other replicas are hot
//! standbys that take over when the holder stops renewing or releases the lease on shutdown.
//! Replicas add availability, not duplicate work. Losing the lease stops pulling at once and
//! hands the open batch back.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use gong_common::ack::{settle, Outcome};
use gong_common::admin::Readiness;
use gong_common::lease::LeaseState;
use gong_common::names::{self, Stage as PipelineStage};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::LoadError;
use crate::metrics::{self, FlushReason};
use crate::parquet_writer::Spool;
use crate::range_writer::{decode, Ctx, Decoded, Existing, ENCODE_CHUNK};
use crate::ranges::{Claim, RangeState};
use crate::rows::Entity;

/// Delay before a message given back (nak) comes back: a batch handed back, a lost claim, a
/// failed step.
const COVERED_RETRY: Duration = Duration::from_secs(1);

struct Batch {
    first: u64,
    next: u64,
    spool: Spool,
    unencoded: Vec<(u64, Entity)>,
    held: Vec<jetstream::Message>,
    deadline: Instant,
}

impl Batch {
    /// Loadable events in the batch: those already in the spool and those waiting to be encoded.
    fn events(&self) -> usize {
        self.spool.events() + self.unencoded.len()
    }
}

/// The configuration of the durable consumer `load`, starting at `deliver_policy`.
fn consumer_config(
    config: &crate::LoadConfig,
    deliver_policy: jetstream::consumer::DeliverPolicy,
) -> pull::Config {
    pull::Config {
        durable_name: Some(names::CONSUMER_LOAD.to_string()),
        description: Some("gong-load: enriched events to Parquet on the stage".to_string()),
        filter_subject: names::SUBJECTS_ENRICHED.to_string(),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: config.ack_wait,
        max_ack_pending: config.max_ack_pending,
        max_deliver: -1,
        deliver_policy,
        ..Default::default()
    }
}

fn consumer_error(source: impl Into<async_nats::Error>) -> LoadError {
    LoadError::Consumer {
        consumer: names::CONSUMER_LOAD.to_string(),
        stream: names::STREAM_ENRICHED.to_string(),
        source: source.into(),
    }
}

/// Creates the durable consumer `load` (filter `gong.enriched.>`), or updates the settings an
/// update may change on one that already has that filter (its start position kept).
///
/// A consumer with another filter (an older version's `gong.enriched.call`) is left exactly as
/// it is: nats-server 2.9.10 accepts a filter change on update but applies it only partly
/// (no wake-ups for the new subjects, wrong matching when wildcards differ). The replica that
/// holds the load lease replaces it before pulling ([`migrate_filter`]).
pub async fn ensure_consumer(
    stream: &jetstream::stream::Stream,
    config: &crate::LoadConfig,
) -> Result<jetstream::consumer::Consumer<pull::Config>, LoadError> {
    let deliver_policy = match stream.consumer_info(names::CONSUMER_LOAD).await {
        Ok(info) if info.config.filter_subject != names::SUBJECTS_ENRICHED => {
            tracing::info!(
                filter = %info.config.filter_subject,
                "consumer load has an older filter; the lease holder replaces it before pulling"
            );
            return stream
                .get_consumer(names::CONSUMER_LOAD)
                .await
                .map_err(consumer_error);
        }
        Ok(info) => info.config.deliver_policy,
        Err(err) if is_not_found(&err) => jetstream::consumer::DeliverPolicy::All,
        Err(err) => return Err(consumer_error(err)),
    };
    gong_common::streams::ensure_pull_consumer(stream, consumer_config(config, deliver_policy))
        .await
        .map_err(consumer_error)
}

fn is_not_found(err: &jetstream::context::ConsumerInfoError) -> bool {
    match err.kind() {
        jetstream::context::ConsumerInfoErrorKind::NotFound => true,
        jetstream::context::ConsumerInfoErrorKind::JetStream(js) => {
            js.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND
        }
        _ => false,
    }
}

fn is_delete_not_found(err: &jetstream::stream::ConsumerError) -> bool {
    matches!(
        err.kind(),
        jetstream::stream::ConsumerErrorKind::JetStream(js)
            if js.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND
    )
}

/// Makes sure the consumer `load` filters `gong.enriched.>`, replacing a consumer with another
/// filter: delete it, then create it afresh starting where nothing is lost: the first sequence
/// of the oldest pending range (its messages must come back so the range is written), else the
/// manifest's head (everything below it is in done ranges), else the stream's start. Messages
/// redelivered below the head are covered by done ranges and acknowledged without rewriting.
///
/// Run by the lease holder only, before it pulls: no replica pulls from the consumer meanwhile.
/// Returns `Some(new consumer)` when it replaced the consumer.
pub async fn migrate_filter(
    ctx: &Ctx,
) -> Result<Option<jetstream::consumer::Consumer<pull::Config>>, LoadError> {
    let stream = &ctx.stream;
    let filter = match stream.consumer_info(names::CONSUMER_LOAD).await {
        Ok(info) if info.config.filter_subject == names::SUBJECTS_ENRICHED => return Ok(None),
        Ok(info) if info.num_waiting > 0 => {
            // Pull requests this process did not make (it has not pulled yet): an older
            // gong-load is still running. Replacing the consumer under it would hand it
            // user and scorecard events it cannot read. Wait until it is gone.
            return Err(LoadError::OlderLoaderPulling {
                waiting: info.num_waiting,
            });
        }
        Ok(info) => Some(info.config.filter_subject),
        Err(err) if is_not_found(&err) => None,
        Err(err) => return Err(consumer_error(err)),
    };
    let pending_first = ctx
        .ranges
        .all()
        .await?
        .into_iter()
        .filter(|known| known.record.state == RangeState::Pending)
        .map(|known| known.record.first)
        .min();
    let head = ctx.ranges.head().await?.map(|(next, _)| next);
    let start = match (pending_first, head) {
        (Some(pending), Some(head)) => Some(pending.min(head)),
        (pending, head) => pending.or(head),
    };
    let deliver_policy = match start {
        Some(start_sequence) => {
            jetstream::consumer::DeliverPolicy::ByStartSequence { start_sequence }
        }
        None => jetstream::consumer::DeliverPolicy::All,
    };
    tracing::warn!(
        old_filter = filter.as_deref().unwrap_or("(consumer missing)"),
        new_filter = names::SUBJECTS_ENRICHED,
        start_sequence = start,
        "replacing consumer load to take every subject of GONG_ENRICHED"
    );
    if filter.is_some() {
        match stream.delete_consumer(names::CONSUMER_LOAD).await {
            Ok(_) => {}
            Err(err) if is_delete_not_found(&err) => {}
            Err(err) => return Err(consumer_error(err)),
        }
    }
    let wanted = consumer_config(&ctx.config, deliver_policy);
    match stream.create_consumer(wanted).await {
        Ok(consumer) => Ok(Some(consumer)),
        Err(create_error) => {
            // Another replica starting up may have created it meanwhile (from the stream's
            // start: slower, never lossy). Keep it if it has the right filter.
            match stream.consumer_info(names::CONSUMER_LOAD).await {
                Ok(info) if info.config.filter_subject == names::SUBJECTS_ENRICHED => stream
                    .get_consumer(names::CONSUMER_LOAD)
                    .await
                    .map(Some)
                    .map_err(consumer_error),
                _ => Err(consumer_error(create_error)),
            }
        }
    }
}

/// How a stretch of consuming ended.
enum Interruption {
    /// Shutdown was requested.
    Shutdown,
    /// The lease went to another replica (or could not be renewed in time).
    LeaseLost,
    /// The message stream ended.
    PullClosed,
}

/// Runs the live loop until `shutdown`: standby until this process holds the lease, consume
/// while it does; then flushes the open batch within the grace period. An error is returned
/// only for a failure no retry can fix (the stage then exits non-zero).
pub async fn run(
    ctx: Ctx,
    mut consumer: jetstream::consumer::Consumer<pull::Config>,
    readiness: Readiness,
    shutdown: CancellationToken,
    mut lease: watch::Receiver<LeaseState>,
) -> Result<(), LoadError> {
    let mut loader = Loader {
        ctx,
        batch: None,
        shutdown: shutdown.clone(),
        readiness: readiness.clone(),
    };
    // A standby is ready: it is what makes the deployment available.
    readiness.set_started(true);
    let outcome = loop {
        metrics::lease_active(false);
        let active = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            active = lease.wait_for(|state| *state == LeaseState::Active) => active.is_ok(),
        };
        if !active {
            tracing::error!("the lease task ended; gong-load cannot tell whether it may load");
            break Err(LoadError::LeaseTask);
        }
        metrics::lease_active(true);
        // Before pulling: the consumer must take every subject (an older version's consumer
        // is replaced here, by the lease holder alone).
        match migrate_filter(&loader.ctx).await {
            Ok(Some(replacement)) => consumer = replacement,
            Ok(None) => {}
            Err(err) => {
                let waiting_for_old = matches!(err, LoadError::OlderLoaderPulling { .. });
                if waiting_for_old {
                    tracing::error!(error = %err, "not pulling until the older gong-load pods are gone (docs/operations.md#upgrade)");
                    readiness.set_fault(Some(err.to_string()));
                } else {
                    tracing::warn!(error = %err, "cannot check the load consumer's filter; retrying before pulling");
                }
                let pause = if waiting_for_old { 5 } else { 1 };
                tokio::select! {
                    _ = shutdown.cancelled() => break Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(pause)) => {}
                }
                continue;
            }
        }
        readiness.set_fault(None);
        tracing::info!(stage = %loader.ctx.stage.url(), "holding the load lease: consuming");
        match loader.consume(&consumer, &mut lease).await {
            Ok(Interruption::Shutdown) => break Ok(()),
            Ok(Interruption::LeaseLost) => {
                tracing::warn!("load lease lost: standing by, open batch handed back");
                loader.hand_back_batch().await;
            }
            Ok(Interruption::PullClosed) => {
                tracing::warn!("message stream ended; pulling again");
                tokio::select! {
                    _ = shutdown.cancelled() => break Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            Err(err) => {
                loader.hand_back_batch().await;
                break Err(err);
            }
        }
    };
    readiness.set_started(false);
    metrics::lease_active(false);
    if loader.batch.is_some() && outcome.is_ok() {
        tracing::info!("shutting down: flushing the open batch");
        let grace = loader.ctx.config.shutdown_grace;
        let give_up = CancellationToken::new();
        let timer = {
            let give_up = give_up.clone();
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                give_up.cancel();
            })
        };
        loader.shutdown = give_up;
        if let Err(err) = loader.flush(FlushReason::Shutdown).await {
            tracing::warn!(error = %err, "open batch not flushed; its messages will be redelivered");
        }
        timer.abort();
    }
    tracing::info!("gong-load stopped");
    outcome
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

struct Loader {
    ctx: Ctx,
    batch: Option<Batch>,
    shutdown: CancellationToken,
    readiness: Readiness,
}

impl Loader {
    /// Pulls and handles messages while this process holds the lease.
    async fn consume(
        &mut self,
        consumer: &jetstream::consumer::Consumer<pull::Config>,
        lease: &mut watch::Receiver<LeaseState>,
    ) -> Result<Interruption, LoadError> {
        let mut messages = loop {
            match consumer
                .stream()
                .max_messages_per_batch(self.ctx.config.fetch_batch)
                .heartbeat(Duration::from_secs(5))
                .expires(Duration::from_secs(30))
                .messages()
                .await
            {
                Ok(messages) => break messages,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot start pulling, retrying");
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return Ok(Interruption::Shutdown),
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        loop {
            let deadline = self.batch.as_ref().map(|batch| batch.deadline);
            tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(Interruption::Shutdown),
                changed = lease.changed() => {
                    if changed.is_err() || *lease.borrow() != LeaseState::Active {
                        return Ok(Interruption::LeaseLost);
                    }
                }
                _ = sleep_until(deadline) => {
                    let flushed = self.flush(FlushReason::Age).await;
                    self.after_flush(flushed).await?;
                    self.publish_open_batch();
                }
                next = messages.next() => match next {
                    Some(Ok(message)) => {
                        let handled = self.on_message(message).await;
                        self.after_flush(handled).await?;
                        self.publish_open_batch();
                    }
                    Some(Err(err)) => {
                        tracing::warn!(error = %err, "pull failed");
                    }
                    None => return Ok(Interruption::PullClosed),
                }
            }
        }
    }

    /// Gives the open batch's messages back (nak) without writing it.
    async fn hand_back_batch(&mut self) {
        if let Some(batch) = self.batch.take() {
            abandon_held(&self.ctx, &batch.held).await;
        }
        self.publish_open_batch();
    }

    /// `gong_load_open_batch_events`: events held in the open batch, not yet staged.
    fn publish_open_batch(&self) {
        metrics::open_batch(self.batch.as_ref().map_or(0, Batch::events));
    }

    async fn on_message(&mut self, mut message: jetstream::Message) -> Result<(), LoadError> {
        let Ok(info) = message.info() else {
            tracing::warn!(subject = %message.subject, "message without jetstream metadata ignored");
            return Ok(());
        };
        let seq = info.stream_sequence;
        metrics::consumer_pending(info.pending);
        let decoded = decode(message.subject.as_str(), &message.payload);
        if !matches!(decoded, Decoded::Poison { .. }) {
            // Keep only what acking needs; the rows are built from `decoded`. Poison keeps its
            // payload for the dead-letter copy.
            message.message.payload = bytes::Bytes::new();
        }

        if let Some(batch) = &mut self.batch {
            if seq >= batch.first && seq < batch.next {
                return self.hold_or_poison(message, decoded).await;
            }
        }
        if self.batch.is_none() {
            let head = self.batch_start(seq).await?;
            if seq >= head {
                self.open_batch(head)?;
            }
        }
        let in_batch = self.batch.as_ref().is_some_and(|batch| seq >= batch.next);
        if !in_batch {
            return self.on_covered(message, decoded, seq).await;
        }
        self.append(message, decoded, seq).await?;
        self.check_limits().await
    }

    /// Where the next batch starts: the manifest's head, moved past a range already recorded
    /// there (a head that lags the claims, e.g. one an older version advanced elsewhere) and
    /// past events that expired from GONG_ENRICHED before anyone staged them (a loader outage
    /// longer than `STREAM_ENRICHED_MAX_AGE`, or a purge): those can never be read back, and a
    /// batch starting below the stream would fail for ever.
    async fn batch_start(&mut self, seq: u64) -> Result<u64, LoadError> {
        let mut head = self.ctx.ranges.head_or_init(seq).await?;
        for _ in 0..100 {
            match self.ctx.ranges.fetch(head).await? {
                Some(existing) => {
                    self.ctx
                        .ranges
                        .advance_head(existing.record.last + 1)
                        .await?;
                    head = existing.record.last + 1;
                }
                None => break,
            }
        }
        if head >= seq {
            return Ok(head);
        }
        let info = self
            .ctx
            .stream
            .get_info()
            .await
            .map_err(|err| LoadError::ReadStream {
                stream: names::STREAM_ENRICHED.to_string(),
                seq: head,
                source: err.into(),
            })?;
        let first = info.state.first_sequence;
        if head < first {
            let lost = first - head;
            tracing::error!(
                head,
                stream_first = first,
                lost,
                "events expired from GONG_ENRICHED before they were staged; replay them from GONG_RAW (gong-enrich replay)"
            );
            metrics::expired_unstaged(lost);
            self.ctx.ranges.advance_head(first).await?;
            head = first;
        }
        Ok(head)
    }

    fn open_batch(&mut self, first: u64) -> Result<(), LoadError> {
        self.batch = Some(Batch {
            first,
            next: first,
            spool: self.ctx.new_spool()?,
            unencoded: Vec::new(),
            held: Vec::new(),
            deadline: Instant::now() + self.ctx.config.flush_max_age,
        });
        Ok(())
    }

    async fn append(
        &mut self,
        message: jetstream::Message,
        decoded: Decoded,
        seq: u64,
    ) -> Result<(), LoadError> {
        let Some(mut batch) = self.batch.take() else {
            return Ok(());
        };
        if seq > batch.next {
            // Sequences this replica was not given (another replica holds them, or they were
            // redelivered elsewhere): read them from the stream so the range stays contiguous.
            let spool = self
                .ctx
                .encode(batch.spool, std::mem::take(&mut batch.unencoded))
                .await;
            let spool = match spool {
                Ok(spool) => {
                    self.ctx
                        .append_from_stream(spool, batch.next, seq - 1)
                        .await
                }
                Err(err) => Err(err),
            };
            match spool {
                Ok(spool) => batch.spool = spool,
                Err(err) => {
                    abandon_held(&self.ctx, &batch.held).await;
                    nak(&self.ctx, &message).await;
                    return Err(err);
                }
            }
        }
        batch.next = seq + 1;
        match decoded {
            Decoded::Entity(entity) => {
                batch.unencoded.push((seq, entity));
                batch.held.push(message);
            }
            Decoded::Ignored => batch.held.push(message),
            Decoded::Poison { reason, detail } => {
                dead_letter(&self.ctx, &message, reason, detail).await;
            }
        }
        if batch.unencoded.len() >= ENCODE_CHUNK {
            match self
                .ctx
                .encode(batch.spool, std::mem::take(&mut batch.unencoded))
                .await
            {
                Ok(spool) => batch.spool = spool,
                Err(err) => {
                    abandon_held(&self.ctx, &batch.held).await;
                    return Err(err);
                }
            }
        }
        self.batch = Some(batch);
        Ok(())
    }

    async fn check_limits(&mut self) -> Result<(), LoadError> {
        let Some(batch) = &self.batch else {
            return Ok(());
        };
        if batch.events() >= self.ctx.config.flush_max_rows {
            return self.flush(FlushReason::Rows).await;
        }
        if batch.spool.bytes() >= self.ctx.config.flush_max_bytes {
            return self.flush(FlushReason::Bytes).await;
        }
        Ok(())
    }

    async fn hold_or_poison(
        &mut self,
        message: jetstream::Message,
        decoded: Decoded,
    ) -> Result<(), LoadError> {
        match decoded {
            Decoded::Poison { reason, detail } => {
                dead_letter(&self.ctx, &message, reason, detail).await
            }
            Decoded::Entity(_) | Decoded::Ignored => {
                if let Some(batch) = &mut self.batch {
                    batch.held.push(message);
                }
            }
        }
        Ok(())
    }

    /// Flushes the open batch: claim, write, ack, mark done.
    async fn flush(&mut self, reason: FlushReason) -> Result<(), LoadError> {
        let Some(mut batch) = self.batch.take() else {
            return Ok(());
        };
        let first = batch.first;
        let last = batch.next.saturating_sub(1);
        if batch.next <= batch.first {
            return Ok(());
        }
        let spool = match self
            .ctx
            .encode(batch.spool, std::mem::take(&mut batch.unencoded))
            .await
        {
            Ok(spool) => spool,
            Err(err) => {
                abandon_held(&self.ctx, &batch.held).await;
                return Err(err);
            }
        };
        let spooled = match self.ctx.finish(spool, first, last).await {
            Ok(spooled) => spooled,
            Err(err) => {
                abandon_held(&self.ctx, &batch.held).await;
                return Err(err);
            }
        };
        let revision = match self.ctx.ranges.claim(first, last).await {
            Ok(Claim::Won { revision }) => revision,
            Ok(Claim::Lost { existing }) => {
                metrics::range_lost();
                tracing::info!(
                    first,
                    last,
                    winner_last = existing.as_ref().map(|known| known.record.last),
                    "range claimed by another replica; messages handed back"
                );
                abandon_held(&self.ctx, &batch.held).await;
                return Ok(());
            }
            Err(err) => {
                abandon_held(&self.ctx, &batch.held).await;
                return Err(err.into());
            }
        };
        let staged = match self
            .ctx
            .upload_with_retry(
                &spooled,
                first,
                last,
                &batch.held,
                &self.shutdown,
                Existing::Keep,
            )
            .await
        {
            Ok(staged) => staged,
            Err(err) => {
                // The claim stays pending; the messages come back at once and, covered by this
                // pending range, make the active loader rewrite exactly this range from the
                // stream (a lost spool file included).
                abandon_held(&self.ctx, &batch.held).await;
                return Err(err);
            }
        };
        // Snowpipe must learn about the files even if this process dies after the ack.
        if let Err(err) = self.ctx.record_for_snowpipe(&staged).await {
            abandon_held(&self.ctx, &batch.held).await;
            return Err(err);
        }
        if self.ctx.config.crash_after_write {
            tracing::error!(
                first,
                last,
                "LOAD_TEST_CRASH_AFTER_WRITE: aborting before acks"
            );
            std::process::abort();
        }
        ack_all(&self.ctx, &batch.held).await;
        self.ctx.ranges.mark_done(first, last, revision).await;
        metrics::flushed(reason);
        self.ctx.report_durable(&staged);
        self.readiness.set_fault(None);
        Ok(())
    }
}

async fn ack_all(ctx: &Ctx, held: &[jetstream::Message]) {
    let jetstream = &ctx.jetstream;
    futures::stream::iter(held)
        .for_each_concurrent(64, |message| async move {
            if let Err(err) = settle(jetstream, PipelineStage::Load, message, Outcome::Done).await {
                // Redelivered later, found covered by a done range, and acked then.
                tracing::warn!(error = %err, "ack failed");
            }
        })
        .await;
}

/// Gives held messages back (nak, redelivered after [`COVERED_RETRY`]) after a failure that lost
/// the batch or a claim lost to another replica.
async fn abandon_held(ctx: &Ctx, held: &[jetstream::Message]) {
    for message in held {
        nak(ctx, message).await;
    }
}

async fn nak(ctx: &Ctx, message: &jetstream::Message) {
    let _ = settle(
        &ctx.jetstream,
        PipelineStage::Load,
        message,
        Outcome::Retry {
            after: COVERED_RETRY,
        },
    )
    .await;
}

impl Loader {
    /// Decides what a failed step means: a failure no retry can fix (no message is at fault,
    /// e.g. the spool directory cannot be written) ends the loop with the error; any other is
    /// logged, makes the stage unready until a flush succeeds, and is retried (its messages
    /// were handed back or come back after the ack wait).
    async fn after_flush(&mut self, outcome: Result<(), LoadError>) -> Result<(), LoadError> {
        let err = match outcome {
            Ok(()) => return Ok(()),
            Err(err) => err,
        };
        metrics::stage_error();
        if err.is_fatal() {
            tracing::error!(error = %err, "gong-load cannot go on; exiting");
            self.readiness.set_fault(Some(format!("fatal: {err}")));
            return Err(err);
        }
        tracing::warn!(error = %err, "flush failed; messages will be redelivered");
        self.readiness
            .set_fault(Some(format!("flush failing: {err}")));
        // A dropped batch's messages were nak'd or will time out; back off a little so a
        // persistent failure does not spin.
        tokio::select! {
            _ = self.shutdown.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        Ok(())
    }
}

async fn dead_letter(
    ctx: &Ctx,
    message: &jetstream::Message,
    reason: &'static str,
    detail: String,
) {
    metrics::dead_letter(reason);
    let outcome = Outcome::Poison {
        reason: reason.to_string(),
        detail,
    };
    if let Err(err) = settle(&ctx.jetstream, PipelineStage::Load, message, outcome).await {
        tracing::warn!(error = %err, "dead-letter failed; the message will be redelivered");
    }
}

impl Loader {
    /// A message whose sequence is below the head: some recorded range covers it.
    async fn on_covered(
        &mut self,
        message: jetstream::Message,
        decoded: Decoded,
        seq: u64,
    ) -> Result<(), LoadError> {
        if let Decoded::Poison { reason, detail } = decoded {
            dead_letter(&self.ctx, &message, reason, detail).await;
            return Ok(());
        }
        let known = match self.ctx.ranges.covering_confirmed(seq).await {
            Ok(known) => known,
            Err(err) => {
                nak(&self.ctx, &message).await;
                return Err(err.into());
            }
        };
        let Some(known) = known else {
            // Below the head but in no record: the manifest lost it (bucket reset or records
            // expired). Claim it alone so it is still staged exactly once from now on.
            tracing::warn!(
                stream_seq = seq,
                "sequence below the range head has no record; staging it alone"
            );
            return self.stage_orphan(message, seq).await;
        };
        let record = &known.record;
        if record.state == RangeState::Done {
            let _ = settle(
                &self.ctx.jetstream,
                PipelineStage::Load,
                &message,
                Outcome::Done,
            )
            .await;
            return Ok(());
        }
        // Pending: its claimer is not writing it now. This process holds the lease, so another
        // claimer has stopped being the active loader (it died, or lost the lease; if it is
        // still finishing, both write the same bytes under the same names); and this loader
        // writes one range at a time, inline, so a pending range of its own is one whose
        // flush failed after the claim. Rewrite it now. No clock is compared.
        let Some(revision) = self.ctx.ranges.take_over(&known).await? else {
            nak(&self.ctx, &message).await;
            return Ok(());
        };
        metrics::range_taken_over();
        tracing::info!(first = record.first, last = record.last, previous_owner = %record.owner, "taking over a pending range");
        let staged = self
            .rewrite_then_ack(&message, record.first, record.last)
            .await?;
        self.ctx
            .ranges
            .mark_done(record.first, record.last, revision)
            .await;
        self.ctx.report_durable(&staged);
        Ok(())
    }

    /// Rewrites `first..=last` and acks `message` once every file is durable; on failure the
    /// message is nak'd (redelivered later) and the error returned.
    async fn rewrite_then_ack(
        &mut self,
        message: &jetstream::Message,
        first: u64,
        last: u64,
    ) -> Result<crate::range_writer::StagedRange, LoadError> {
        let rewritten = match self
            .ctx
            .rewrite_range(first, last, &self.shutdown, Existing::Keep)
            .await
        {
            Ok(staged) => self.ctx.record_for_snowpipe(&staged).await.map(|()| staged),
            Err(err) => Err(err),
        };
        match rewritten {
            Ok(staged) => {
                let _ = settle(
                    &self.ctx.jetstream,
                    PipelineStage::Load,
                    message,
                    Outcome::Done,
                )
                .await;
                Ok(staged)
            }
            Err(err) => {
                nak(&self.ctx, message).await;
                Err(err)
            }
        }
    }

    async fn stage_orphan(
        &mut self,
        message: jetstream::Message,
        seq: u64,
    ) -> Result<(), LoadError> {
        match self.ctx.ranges.claim(seq, seq).await? {
            Claim::Won { revision } => {
                let staged = self.rewrite_then_ack(&message, seq, seq).await?;
                self.ctx.ranges.mark_done(seq, seq, revision).await;
                self.ctx.report_durable(&staged);
            }
            Claim::Lost { .. } => nak(&self.ctx, &message).await,
        }
        Ok(())
    }
}
