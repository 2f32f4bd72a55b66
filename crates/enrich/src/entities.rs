//! The entity jobs: Gong's users and answered scorecards, fetched on a schedule and published to
//! `GONG_ENRICHED` (`gong.enriched.user`, `gong.enriched.scorecard`), where gong-load turns them
//! into the `USERS` and `ANSWERED_SCORECARDS` / `ANSWERED_SCORECARD_ANSWERS` tables.
//!
//! - **Users** (`ENRICH_USERS_REFRESH`, default `24h`): every page of `GET /v2/users` (the cursor
//!   in the query string), one [`EnrichedUser`] per user.
//! - **Answered scorecards** (`ENRICH_SCORECARDS_REFRESH`, default `1h`, over
//!   `ENRICH_SCORECARDS_LOOKBACK`, default `7d`): every page of `POST /v2/stats/activity/scorecards`
//!   for the review dates of the lookback, one [`EnrichedScorecard`] per answered scorecard. Gong
//!   reads `reviewFromDate` (inclusive) and `reviewToDate` (exclusive) as dates in the company's
//!   time zone, which we do not know; the window is widened by one day at each end (from the UTC
//!   date of `now - lookback` minus one day to the UTC date of `now` plus two, exclusive), so
//!   it covers the lookback in any zone from UTC-12 to UTC+14 with no setting to get wrong. The
//!   extra days cost a few more scorecards per fetch, stored once (below).
//!
//! **Through the shared quota.** Every page takes a slot of the deployment-wide quota at
//! [`Priority::Backfill`] (live enrichment first, the daily reserve kept); a spent quota or a
//! pause Gong ordered is waited out, page by page; 429, 5xx and transport failures are retried
//! in process by [`GongApi`]; 404 is an empty page.
//!
//! **Nothing counts as done before JetStream acked it.** Each page's events are published with
//! `Nats-Msg-Id` = their `event_id` (the entity's content hash, [`gong_common::event::entity_id`])
//! and every ack is awaited before the next page is asked for; a fetch completes only after its
//! last ack. An unchanged entity fetched again inside the stream's duplicate window is stored
//! once; a changed one is a new event, and the `*_LATEST` views keep the latest.
//!
//! **One replica at a time, due by server time.** Each job is the continuous sweep's pattern
//! ([`crate::sweep`]) with its own names: every replica looks every `interval / 12` (1 s to
//! 5 min) whether the job is due; the one that gets the job's lease (`users`, `scorecards`)
//! writes the job's checkpoint register (`gong_job_users`, `gong_job_scorecards`) to learn the
//! NATS server's time, and fetches if the last completed fetch is at least an interval older
//! (server times both) or there never was one. The completion is a compare-and-set on that
//! register, so an overlapping holder is noticed; what both published is deduplicated by
//! `Nats-Msg-Id`. A restart of every replica reads the same register: a fetch made an hour ago
//! is not made again. In the checkpoint's counts, `listed` is the items Gong returned,
//! `injected` the events published (acknowledged) and `present` the items skipped (no id, not
//! readable, too large to publish: each logged).
//!
//! **Failures.** A failed fetch (Gong failing after the in-process retries, NATS down) is
//! logged with its fields and tried again from its first page after a backoff that grows from
//! one poll to the interval (at most 15 min); it never ends the service. A fetch is a few
//! pages: it is not resumed from a cursor (Gong does not promise how long one lives).

use std::time::Duration;

use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};
use bytes::Bytes;
use chrono::{DateTime, Days, NaiveDate, Utc};
use gong_common::event::{EnrichedScorecard, EnrichedUser};
use gong_common::gong::{AnsweredScorecard, User};
use gong_common::lease::{Lease, LeaseState};
use gong_common::names::{self, headers};
use gong_common::register::RegisterError;
use gong_common::streams::{ProvisionError, StreamSettings};
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::error::{EnrichError, GongError, PublishError, QuotaError};
use crate::gong_api::{backoff, EntityPage, GongApi};
use crate::metrics;
use crate::rate_limit::Priority;
use crate::sweep::{acquire, Checkpoint, Counts, Read, Status};

/// Upper bound on pages of one fetch (a cursor loop is a malformed answer).
const MAX_PAGES: u64 = 10_000;

/// Which entity job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    /// `GET /v2/users` → `gong.enriched.user`.
    Users,
    /// `POST /v2/stats/activity/scorecards` → `gong.enriched.scorecard`.
    Scorecards,
}

impl Job {
    /// The name in logs, metrics (`job` label) and errors.
    pub fn name(self) -> &'static str {
        match self {
            Job::Users => "users",
            Job::Scorecards => "scorecards",
        }
    }

    /// The checkpoint register's bucket.
    pub fn bucket(self) -> &'static str {
        match self {
            Job::Users => names::BUCKET_JOB_USERS,
            Job::Scorecards => names::BUCKET_JOB_SCORECARDS,
        }
    }

    /// The lease's name.
    pub fn lease(self) -> &'static str {
        match self {
            Job::Users => names::LEASE_USERS,
            Job::Scorecards => names::LEASE_SCORECARDS,
        }
    }

    fn subject(self) -> &'static str {
        match self {
            Job::Users => names::SUBJECT_ENRICHED_USER,
            Job::Scorecards => names::SUBJECT_ENRICHED_SCORECARD,
        }
    }
}

/// The review dates `[from, to)` a scorecards fetch asks for, at server time `now`: the UTC
/// dates of the lookback widened by one day at each end, so any company time zone (UTC-12 to
/// UTC+14) has its dates of `[now - lookback, now]` inside.
pub fn review_dates(now: DateTime<Utc>, lookback: Duration) -> (NaiveDate, NaiveDate) {
    let lookback = chrono::Duration::from_std(lookback).unwrap_or(chrono::Duration::days(366));
    let from = (now - lookback).date_naive() - Days::new(1);
    let to = now.date_naive() + Days::new(2);
    (from, to)
}

/// Opens a job's checkpoint register.
pub async fn checkpoint(
    jetstream: &jetstream::Context,
    settings: &StreamSettings,
    job: Job,
) -> Result<Checkpoint, ProvisionError> {
    Checkpoint::open_bucket(jetstream, settings, job.bucket()).await
}

/// A scheduled entity job of the live service.
pub(crate) struct EntityJob {
    pub(crate) job: Job,
    pub(crate) jetstream: jetstream::Context,
    pub(crate) api: GongApi,
    pub(crate) checkpoint: Checkpoint,
    pub(crate) lease: Lease,
    /// Refresh interval (never zero here: a job turned off is not started).
    pub(crate) interval: Duration,
    /// The scorecards' lookback (unused by users).
    pub(crate) lookback: Duration,
    pub(crate) lease_ttl: Duration,
}

/// What one completed fetch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FetchSummary {
    /// Pages asked for.
    pub pages: u64,
    /// Items Gong returned.
    pub fetched: u64,
    /// Events published and acknowledged.
    pub published: u64,
    /// Items skipped (no id, unreadable, too large), each logged.
    pub skipped: u64,
}

/// Publishes a job's gauges from its checkpoint (every replica the same): the server time of the
/// last completed fetch (before the first: when the job was first set up), what it published,
/// and the interval.
pub(crate) async fn publish_gauges(
    job: Job,
    checkpoint: &Checkpoint,
    interval: Duration,
) -> Result<Read, RegisterError> {
    let read = checkpoint.read().await?;
    let state = &read.state;
    let at_ms = if state.last_success_ms > 0 {
        state.last_success_ms
    } else {
        state.created_ms
    };
    metrics::entities_last(
        job.name(),
        at_ms as f64 / 1000.0,
        state.last_counts.injected,
        interval,
    );
    Ok(read)
}

/// Runs `ctx`'s job until `shutdown`.
pub(crate) async fn run(ctx: EntityJob, shutdown: CancellationToken) {
    let job = ctx.job.name();
    let poll = (ctx.interval / 12).clamp(Duration::from_secs(1), Duration::from_secs(300));
    // Long enough to take over from a holder that died (a whole ttl unchanged, plus polls).
    let wait = ctx.lease_ttl + ctx.lease_ttl / 2 + Duration::from_secs(5);
    let retry_max = ctx.interval.clamp(poll, Duration::from_secs(900).max(poll));
    let mut failures: u32 = 0;
    tracing::info!(
        job,
        interval_secs = ctx.interval.as_secs(),
        lookback_secs = ctx.lookback.as_secs(),
        "entity job on"
    );
    loop {
        if let Err(error) = publish_gauges(ctx.job, &ctx.checkpoint, ctx.interval).await {
            tracing::debug!(job, %error, "cannot read the job's checkpoint");
        }
        let mut pause = poll;
        if let Some(held) = acquire(&ctx.lease, Some(wait), &shutdown).await {
            let outcome = round(&ctx, &held.state, &shutdown).await;
            held.release().await;
            match outcome {
                Ok(Some(summary)) => {
                    failures = 0;
                    tracing::info!(
                        job,
                        pages = summary.pages,
                        fetched = summary.fetched,
                        published = summary.published,
                        skipped = summary.skipped,
                        "entity fetch done"
                    );
                    let _ = publish_gauges(ctx.job, &ctx.checkpoint, ctx.interval).await;
                }
                Ok(None) => failures = 0,
                Err(EnrichError::Cancelled) => return,
                Err(EnrichError::SweepTakenOver) => {
                    tracing::info!(job, "another replica took the job over");
                }
                Err(error) => {
                    pause = backoff(failures, poll, retry_max).max(poll / 2);
                    failures = failures.saturating_add(1);
                    tracing::warn!(
                        job,
                        %error,
                        failures,
                        retry_in_secs = pause.as_secs(),
                        "entity fetch failed; it is tried again from its first page"
                    );
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// One look, holding the lease: fetches when due. `None`: not due.
async fn round(
    ctx: &EntityJob,
    lease: &watch::Receiver<LeaseState>,
    shutdown: &CancellationToken,
) -> Result<Option<FetchSummary>, EnrichError> {
    let now = ctx.checkpoint.tick().await?;
    let interval_ms = ctx.interval.as_millis() as i64;
    let last = now.state.last_success_ms;
    if last > 0 && now.written_ms - last < interval_ms {
        return Ok(None);
    }
    let server_now = DateTime::from_timestamp_millis(now.written_ms).unwrap_or_else(Utc::now);
    tracing::info!(
        job = ctx.job.name(),
        last_success_ms = last,
        "entity fetch due"
    );
    let summary = fetch(ctx, server_now, lease, shutdown).await?;
    let mut done = now.state;
    done.status = Status::Done;
    done.holder = ctx.lease.holder().to_string();
    done.windows.clear();
    done.cursor = None;
    done.counts = Counts {
        listed: summary.fetched,
        present: summary.skipped,
        injected: summary.published,
        pages: summary.pages,
    };
    ctx.checkpoint.write(&done, now.revision).await?;
    Ok(Some(summary))
}

/// Every page of the job's listing, each published and acknowledged before the next is asked.
async fn fetch(
    ctx: &EntityJob,
    now: DateTime<Utc>,
    lease: &watch::Receiver<LeaseState>,
    shutdown: &CancellationToken,
) -> Result<FetchSummary, EnrichError> {
    let job = ctx.job;
    let dates = review_dates(now, ctx.lookback);
    let mut summary = FetchSummary::default();
    let mut cursor: Option<String> = None;
    let mut seen_cursors = std::collections::HashSet::new();
    loop {
        if *lease.borrow() != LeaseState::Active {
            return Err(EnrichError::SweepTakenOver);
        }
        if summary.pages >= MAX_PAGES {
            return Err(EnrichError::FetchEntities {
                job: job.name(),
                source: GongError::Malformed {
                    endpoint: endpoint(job),
                    detail: format!("more than {MAX_PAGES} pages"),
                },
            });
        }
        let page = page_waiting(ctx, dates, cursor.as_deref(), shutdown).await?;
        summary.pages += 1;
        summary.fetched += page.items.len() as u64;
        let fetched_at = Utc::now();
        let mut pending: Vec<(String, usize, PublishAckFuture)> = Vec::new();
        for (position, item) in page.items.into_iter().enumerate() {
            let Some((event_id, payload)) = event_for(job, item, fetched_at, position) else {
                summary.skipped += 1;
                metrics::entities(job.name(), "skipped", 1);
                continue;
            };
            let size = payload.len();
            let message = PublishMessage::build()
                .message_id(&event_id)
                .header(headers::EVENT_ID, event_id.as_str())
                .payload(payload);
            match ctx.jetstream.send_publish(job.subject(), message).await {
                Ok(ack) => pending.push((event_id, size, ack)),
                Err(err) => {
                    skip_too_large(job, event_id, PublishError::from_nats(size, err))?;
                    summary.skipped += 1;
                }
            }
        }
        let mut page_published = 0;
        for (event_id, size, ack) in pending {
            match ack.await {
                Ok(_) => page_published += 1,
                Err(err) => {
                    skip_too_large(job, event_id, PublishError::from_nats(size, err))?;
                    summary.skipped += 1;
                }
            }
        }
        summary.published += page_published;
        metrics::entities(job.name(), "published", page_published);
        match page.cursor {
            None => return Ok(summary),
            Some(next) => {
                if !seen_cursors.insert(next.clone()) {
                    return Err(EnrichError::FetchEntities {
                        job: job.name(),
                        source: GongError::Malformed {
                            endpoint: endpoint(job),
                            detail: "records.cursor repeats".to_string(),
                        },
                    });
                }
                cursor = Some(next);
            }
        }
    }
}

/// A publish failure of one entity event: one that can never succeed (too large) is logged and
/// counted as skipped (`Ok`); any other fails the fetch, which is tried again.
fn skip_too_large(job: Job, event_id: String, error: PublishError) -> Result<(), EnrichError> {
    if !error.is_permanent() {
        return Err(EnrichError::PublishEntity {
            job: job.name(),
            event_id,
            source: error,
        });
    }
    metrics::entities(job.name(), "skipped", 1);
    tracing::error!(
        job = job.name(),
        event_id,
        %error,
        "entity event too large to publish; skipped (raise the stream's max message size)"
    );
    Ok(())
}

fn endpoint(job: Job) -> crate::error::Endpoint {
    match job {
        Job::Users => crate::error::Endpoint::Users,
        Job::Scorecards => crate::error::Endpoint::Scorecards,
    }
}

/// The event of one listed item: `(event_id, payload)`, or `None` (logged) when it cannot be
/// one (unreadable, or without the id the loader keys it on).
fn event_for(
    job: Job,
    item: Value,
    fetched_at: DateTime<Utc>,
    position: usize,
) -> Option<(String, Bytes)> {
    let skip = |reason: &str, detail: String| {
        tracing::warn!(
            job = job.name(),
            position,
            reason,
            detail,
            "gong item skipped"
        );
    };
    match job {
        Job::Users => match serde_json::from_value::<User>(item) {
            Ok(user)
                if user
                    .id
                    .as_deref()
                    .is_some_and(gong_common::gong::is_call_id) =>
            {
                let event = EnrichedUser::new(user, fetched_at);
                Some((event.event_id.clone(), Bytes::from(event.to_json())))
            }
            Ok(user) => {
                skip(
                    "invalid_user_id",
                    format!("id {:?} is not a numeric id", user.id),
                );
                None
            }
            Err(err) => {
                skip("unreadable_user", err.to_string());
                None
            }
        },
        Job::Scorecards => match serde_json::from_value::<AnsweredScorecard>(item) {
            Ok(card)
                if card
                    .answered_scorecard_id
                    .as_deref()
                    .is_some_and(|id| !id.is_empty()) =>
            {
                let event = EnrichedScorecard::new(card, fetched_at);
                Some((event.event_id.clone(), Bytes::from(event.to_json())))
            }
            Ok(_) => {
                skip(
                    "missing_answered_scorecard_id",
                    "answeredScorecardId is absent".to_string(),
                );
                None
            }
            Err(err) => {
                skip("unreadable_scorecard", err.to_string());
                None
            }
        },
    }
}

/// One page, waiting out a spent quota or a pause Gong ordered (the lease is kept meanwhile).
async fn page_waiting(
    ctx: &EntityJob,
    dates: (NaiveDate, NaiveDate),
    cursor: Option<&str>,
    shutdown: &CancellationToken,
) -> Result<EntityPage, EnrichError> {
    let mut warned = false;
    loop {
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => return Err(EnrichError::Cancelled),
            attempt = async {
                match ctx.job {
                    Job::Users => ctx.api.users_page(cursor, Priority::Backfill).await,
                    Job::Scorecards => {
                        ctx.api
                            .scorecards_page(dates.0, dates.1, cursor, Priority::Backfill)
                            .await
                    }
                }
            } => attempt,
        };
        let wait = match attempt {
            Ok(page) => return Ok(page),
            Err(GongError::Quota(QuotaError::Exhausted { resets_in })) => resets_in,
            Err(GongError::Quota(QuotaError::Paused { remaining })) => remaining,
            Err(source) => {
                return Err(EnrichError::FetchEntities {
                    job: ctx.job.name(),
                    source,
                })
            }
        };
        if !warned {
            tracing::warn!(
                job = ctx.job.name(),
                retry_in_secs = wait.as_secs(),
                "entity job waiting for the gong quota (live enrichment keeps its reserve)"
            );
            warned = true;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Err(EnrichError::Cancelled),
            _ = tokio::time::sleep(wait.min(Duration::from_secs(60))) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn review_dates_cover_the_lookback_in_every_time_zone() {
        let now = DateTime::parse_from_rfc3339("2026-03-10T23:30:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let lookback = Duration::from_secs(7 * 24 * 3600);
        let (from, to) = review_dates(now, lookback);
        assert_eq!((from, to), (date("2026-03-02"), date("2026-03-12")));
        // Every instant of the lookback, in UTC-12 and UTC+14, has its local date inside.
        for offset_hours in [-12, 0, 14] {
            let zone = chrono::FixedOffset::east_opt(offset_hours * 3600).unwrap();
            for instant in [now - chrono::Duration::days(7), now] {
                let local = instant.with_timezone(&zone).date_naive();
                assert!(from <= local && local < to, "{offset_hours}: {local}");
            }
        }
    }

    #[test]
    fn items_without_their_id_are_skipped_and_ids_may_be_numbers() {
        let now = Utc::now();
        let user = event_for(
            Job::Users,
            serde_json::json!({"id": 234599484848423u64, "emailAddress": "a@example.com"}),
            now,
            0,
        )
        .expect("a user");
        let decoded = EnrichedUser::from_json(&user.1).unwrap();
        assert_eq!(decoded.user_id(), Some("234599484848423"));
        assert_eq!(user.0, decoded.event_id);
        assert!(event_for(Job::Users, serde_json::json!({"emailAddress": "x"}), now, 1).is_none());
        assert!(event_for(Job::Users, serde_json::json!({"id": "abc"}), now, 2).is_none());
        let card = event_for(
            Job::Scorecards,
            serde_json::json!({"answeredScorecardId": 5, "callId": 7, "answers": []}),
            now,
            0,
        )
        .expect("a scorecard");
        let decoded = EnrichedScorecard::from_json(&card.1).unwrap();
        assert_eq!(decoded.answered_scorecard_id(), Some("5"));
        assert!(event_for(Job::Scorecards, serde_json::json!({"callId": 7}), now, 1).is_none());
    }
}
