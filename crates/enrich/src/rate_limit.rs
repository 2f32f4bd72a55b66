//! One Gong budget for the whole deployment, kept in the JetStream KV bucket `gong_quota`.
//!
//! Gong limits per company (3 requests in any second, 10,000 per UTC day by default), not per
//! process, so every replica and every replay run takes its slots from one key holding
//! [`QuotaState`]: the times of the last `rate` requests, the UTC day and its count, and a pause
//! ordered by Gong.
//!
//! **One clock: the server's.** Every time in the state is a NATS server time: the timestamp
//! JetStream gives each write of the key (the stream leader's clock when it proposed the write,
//! stored unchanged on every replica). No pod's wall clock is compared with another's, so a pod
//! whose clock is off by seconds (or on the other side of midnight) changes nothing:
//! - a write that takes a slot records it as "made by this write" (`grants_in_this_write`); the
//!   next reader resolves it to that write's server time ([`QuotaState::resolve`]), as it does a
//!   Gong-ordered pause (`pause_ms_from_this_write`);
//! - "now" is the server time of the entry read (`resolved_at_ms`): a lower bound of the server's
//!   present, so "the window is free now" is concluded only when it was already free then. When
//!   it was not, the limiter sleeps the difference (a local, monotonic duration) and then writes a
//!   *tick* (the state with a counter bumped) to get a fresh server time, and checks again;
//! - the UTC day, its count and the reset come from the same server time, so two pods never
//!   disagree about which day it is. A request granted within the margin before midnight counts
//!   on both days (Gong's clock and ours may differ by that much);
//! - if the server time ever goes back (a new stream leader whose clock is behind), the state is
//!   moved into the new clock's frame keeping every age it had, and the day never goes back.
//!   A new leader whose clock is *ahead* cannot be told from time passing: past requests look
//!   older by the difference, once. The NATS servers' clocks must be kept in sync (NTP); the
//!   pods' clocks need not be.
//!
//! **Compare-and-set that holds on a cluster.** A slot is taken by a write conditional on the
//! revision read, through [`gong_common::register::Register`]: on nats-server 2.9 a KV
//! `update(key, value, revision)` is checked by the stream leader only before it proposes the
//! write, so two concurrent updates of one revision can both succeed on an R3 bucket
//! (nats-server#4320, fixed in 2.9.21); the register writes with `Nats-Expected-Last-Sequence`
//! instead, which every replica checks when it applies the write, in log order. Reads go to the
//! stream leader (the bucket has no direct gets).
//!
//! **A slot is used only if its write was quick.** The slot's time is when the server received
//! the write; the request goes out after the write's ack. If that round trip took longer than
//! half of `ENRICH_RATE_LIMIT_MARGIN` (a stream leader failing over mid-write can delay the ack by
//! seconds), other replicas may already have counted the window from the recorded time, so the
//! slot is left unused and another one is taken.
//!
//! A request may go only when the `rate`-th newest request is at least one second plus the margin
//! old. [`Priority::Backfill`] (replays, the sweep, transcript rechecks, enrichment of batches
//! holding only swept calls) only takes a slot when two stay free for live enrichment in the
//! current window (one when the rate is 2: a live batch's two requests, extensive then
//! transcript, then never wait for backfill work), and stops at the daily quota minus a reserve.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream;
use bytes::Bytes;
use chrono::{NaiveDate, Utc};
use gong_common::names;
use gong_common::register::{Register, RegisterError};
use gong_common::streams::{ProvisionError, StreamSettings};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::config::QuotaConfig;
use crate::error::QuotaError;
use crate::metrics;

/// The key holding the whole state (the only key of the bucket).
pub const QUOTA_KEY: &str = "gong_api";

/// How far a pod's clock may be from the server's before a warning (it changes no decision).
const CLOCK_WARN_MS: i64 = 2_000;

/// Who is asking for a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// Live enrichment: every slot, up to the full daily quota.
    Live,
    /// Replays, sweeps, rechecks: leaves two slots per window (one at a rate of 2) and the daily
    /// reserve to live enrichment.
    Backfill,
}

/// A pod's wall clock. The limiter decides nothing from it (every decision uses server times);
/// it only compares it with the server's to warn about a pod whose clock is off. Injectable so
/// tests can run replicas with skewed clocks.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Unix milliseconds.
    fn now_ms(&self) -> i64;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_millis() as i64)
            .unwrap_or(0)
    }
}

/// The value stored under [`QUOTA_KEY`] (JSON). Times are Unix milliseconds of the NATS server's
/// clock, never a pod's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QuotaState {
    /// Server times of the most recent requests, oldest first (at most `rate` kept).
    #[serde(default)]
    pub recent_ms: Vec<i64>,
    /// The UTC day (of server time) `day_count` belongs to (`YYYY-MM-DD`).
    #[serde(default)]
    pub day: String,
    /// Requests granted on `day`.
    #[serde(default)]
    pub day_count: u64,
    /// No request before this server time, ordered by a 429's `Retry-After`.
    #[serde(default)]
    pub paused_until_ms: i64,
    /// The server time this state was resolved at: the time of the write before the one holding
    /// it (a lower bound of the server's present when read).
    #[serde(default)]
    pub resolved_at_ms: i64,
    /// Slots taken by the write holding this value. Their time is that write's server time,
    /// which its writer cannot know; the next reader fills it in ([`QuotaState::resolve`]).
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub grants_in_this_write: u32,
    /// A pause ordered by Gong, in milliseconds from the server time of the write holding this
    /// value (resolved like the grants).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub pause_ms_from_this_write: u64,
    /// Writes made only to learn a fresh server time.
    #[serde(default)]
    pub ticks: u64,
}

fn is_zero_u32(value: &u32) -> bool {
    *value == 0
}

fn is_zero_u64(value: &u64) -> bool {
    *value == 0
}

impl QuotaState {
    /// Requests spent on the UTC day of `now_ms` (a server time): `day_count`, or 0 when the
    /// stored count belongs to another day.
    pub fn spent_on_day_of(&self, now_ms: i64) -> u64 {
        if self.day == utc_day(now_ms) {
            self.day_count
        } else {
            0
        }
    }

    /// The state as it stands once the write holding it is known to have happened at
    /// `written_at_ms` (the entry's server time): this write's grants and pause get that time,
    /// the day rolls over, and at most `keep` recent grants are kept.
    ///
    /// If the server time went back (a new stream leader whose clock is behind), the state is
    /// moved into the new clock's frame with every age it had at the previous write (real time
    /// only ever passed, so this errs on the safe side) and the day is kept until the new clock
    /// reaches the next one.
    pub fn resolve(mut self, written_at_ms: i64, keep: usize, margin_ms: i64) -> QuotaState {
        if written_at_ms < self.resolved_at_ms {
            let back = self.resolved_at_ms - written_at_ms;
            for at in &mut self.recent_ms {
                *at -= back;
            }
            if self.paused_until_ms > 0 {
                self.paused_until_ms -= back;
            }
        }
        let now = written_at_ms;
        let today = utc_day(now);
        // ISO dates compare as strings; an unreadable day restarts the count.
        if self.day.len() != today.len() || today > self.day {
            let midnight = start_of_utc_day(now);
            // Granted just before midnight: Gong's clock may already count it on the new day.
            self.day_count = self
                .recent_ms
                .iter()
                .filter(|at| (midnight - margin_ms..midnight).contains(*at))
                .count() as u64;
            self.day = today;
        }
        for _ in 0..self.grants_in_this_write {
            self.recent_ms.push(now);
        }
        self.day_count += u64::from(self.grants_in_this_write);
        if self.pause_ms_from_this_write > 0 {
            self.paused_until_ms = self
                .paused_until_ms
                .max(now.saturating_add(self.pause_ms_from_this_write as i64));
        }
        self.grants_in_this_write = 0;
        self.pause_ms_from_this_write = 0;
        self.recent_ms.sort_unstable();
        if self.recent_ms.len() > keep {
            self.recent_ms.drain(..self.recent_ms.len() - keep);
        }
        self.resolved_at_ms = now;
        self
    }
}

/// A slot was taken.
#[derive(Debug, Clone, Copy)]
pub struct Grant {
    /// The revision of the write that took it (its server time is that entry's time).
    pub revision: u64,
}

/// What [`RateLimiter::check`] saw.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    /// Requests spent today by the whole deployment (every priority; 0 on a new UTC day).
    pub spent_today: u64,
    /// The server time (Unix milliseconds) the state was read at: the day `spent_today` belongs
    /// to, and the time of day quota pacing uses.
    pub at_ms: i64,
}

/// The key's latest value, resolved.
struct Loaded {
    state: QuotaState,
    /// `None` when the key was never written.
    revision: Option<u64>,
}

/// A slot taken by a write whose ack came too late to use it.
struct Unused {
    /// The write's revision.
    revision: u64,
    /// The day of the state read before that write.
    day: String,
}

impl Unused {
    /// Whether `state` (read at `revision`) counts this slot in its day count: it is at or after
    /// the write, and still on the day of the read before it (the write's server time lies
    /// between the two, so it was counted on that day).
    fn counted_in(&self, state: &QuotaState, revision: Option<u64>) -> bool {
        revision.is_some_and(|revision| revision >= self.revision) && state.day == self.day
    }
}

/// What a read allows.
enum Decision {
    Take,
    Wait(Duration),
    Refuse(QuotaError),
}

/// The shared limiter; cheap to clone.
#[derive(Clone)]
pub struct RateLimiter {
    register: Register,
    config: QuotaConfig,
    clock: Arc<dyn Clock>,
    /// The revision of this limiter's last write and the pod's clock when its ack came.
    last_write: Arc<Mutex<Option<(u64, i64)>>>,
    clock_warned: Arc<AtomicBool>,
}

impl RateLimiter {
    /// Opens (creating if needed) the `gong_quota` bucket with `ensure_kv`.
    pub async fn open(
        jetstream: &jetstream::Context,
        config: QuotaConfig,
        streams: &StreamSettings,
    ) -> Result<RateLimiter, ProvisionError> {
        RateLimiter::open_with_clock(jetstream, config, streams, Arc::new(SystemClock)).await
    }

    /// As [`RateLimiter::open`], with the pod's wall clock injected (tests skew it).
    pub async fn open_with_clock(
        jetstream: &jetstream::Context,
        config: QuotaConfig,
        streams: &StreamSettings,
        clock: Arc<dyn Clock>,
    ) -> Result<RateLimiter, ProvisionError> {
        let register = Register::open(
            jetstream,
            names::BUCKET_GONG_QUOTA,
            QUOTA_KEY,
            Duration::ZERO,
            streams,
        )
        .await?;
        Ok(RateLimiter {
            register,
            config,
            clock,
            last_write: Arc::new(Mutex::new(None)),
            clock_warned: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Takes one request slot, waiting for the sliding window (and for a Gong-ordered pause up
    /// to `max_hold`). Fails fast when the daily quota for `priority` is spent or Gong's pause is
    /// longer; the caller hands its events back and stops pulling.
    pub async fn acquire(&self, priority: Priority) -> Result<Grant, QuotaError> {
        // The revision of the previous read in this call: an entry newer than it was written
        // after that read was served, so its server time is no older than that read.
        let mut previous: Option<u64> = None;
        // Slots taken by writes whose ack came too late to use them. Their window slots stay
        // taken; the day count gets them back with this call's next successful write.
        let mut unused: Vec<Unused> = Vec::new();
        loop {
            let loaded = self.load().await?;
            let fresh =
                matches!((loaded.revision, previous), (Some(now), Some(before)) if now > before);
            previous = loaded.revision.or(previous);
            let mut state = loaded.state;
            let (returned, later): (Vec<Unused>, Vec<Unused>) = unused
                .into_iter()
                .partition(|slot| slot.counted_in(&state, loaded.revision));
            state.day_count = state.day_count.saturating_sub(returned.len() as u64);
            self.publish_gauges(&state);
            // Until a write carrying the correction succeeds, it is still owed.
            unused = later;
            match self.decide(&state, priority) {
                Decision::Take => {
                    let mut next = state.clone();
                    next.grants_in_this_write = 1;
                    let started = Instant::now();
                    match self.write(&next, loaded.revision).await? {
                        Some(revision) => {
                            let took = started.elapsed();
                            if took <= self.usable_within() {
                                state.day_count += 1;
                                self.publish_gauges(&state);
                                return Ok(Grant { revision });
                            }
                            tracing::warn!(
                                write_ms = took.as_millis() as u64,
                                usable_within_ms = self.usable_within().as_millis() as u64,
                                "quota write acknowledged too late to use its slot; taking another"
                            );
                            unused.push(Unused {
                                revision,
                                day: state.day.clone(),
                            });
                        }
                        None => {
                            unused.extend(returned);
                            // Another writer was first: read again.
                            tokio::time::sleep(jitter(5)).await;
                        }
                    }
                }
                Decision::Wait(wait) => {
                    // Computed from a time that may be old: learn the server's time first.
                    if fresh {
                        tokio::time::sleep(wait + jitter(15)).await;
                    }
                    if !self.tick(state, loaded.revision).await? {
                        unused.extend(returned);
                    }
                }
                Decision::Refuse(err) => {
                    if fresh {
                        return Err(err);
                    }
                    if !self.tick(state, loaded.revision).await? {
                        unused.extend(returned);
                    }
                }
            }
        }
    }

    /// Records a pause ordered by Gong (429 `Retry-After`): no replica sends before it ends
    /// (counted from the server time of this write).
    pub async fn pause_for(&self, retry_after: Duration) -> Result<(), QuotaError> {
        loop {
            let loaded = self.load().await?;
            let mut next = loaded.state;
            next.pause_ms_from_this_write = retry_after.as_millis().max(1) as u64;
            if self.write(&next, loaded.revision).await?.is_some() {
                tracing::warn!(
                    retry_after_ms = retry_after.as_millis() as u64,
                    "gong rate limited us; every replica pauses"
                );
                return Ok(());
            }
        }
    }

    /// Whether a slot could be had for `priority` without taking one: `Err` when the daily quota
    /// is spent or Gong's pause is longer than `max_hold` (then nothing should be pulled). Takes
    /// no slot; before refusing it writes a tick, so a refusal is never based on an old time.
    /// The [`Snapshot`] also says what was spent today, for the linger's pacing.
    pub async fn check(&self, priority: Priority) -> Result<Snapshot, QuotaError> {
        let mut previous: Option<u64> = None;
        loop {
            let loaded = self.load().await?;
            let fresh =
                matches!((loaded.revision, previous), (Some(now), Some(before)) if now > before);
            previous = loaded.revision.or(previous);
            let state = loaded.state;
            self.publish_gauges(&state);
            match self.decide(&state, priority) {
                Decision::Refuse(err) if fresh => return Err(err),
                Decision::Refuse(_) => {
                    self.tick(state, loaded.revision).await?;
                }
                Decision::Take | Decision::Wait(_) => {
                    return Ok(Snapshot {
                        spent_today: state.day_count,
                        at_ms: state.resolved_at_ms,
                    })
                }
            }
        }
    }

    /// The current state, resolved to the server time of its latest write (for tests and
    /// tools).
    pub async fn state(&self) -> Result<QuotaState, QuotaError> {
        Ok(self.load().await?.state)
    }

    fn decide(&self, state: &QuotaState, priority: Priority) -> Decision {
        let now = state.resolved_at_ms;
        if state.paused_until_ms > now {
            let remaining = Duration::from_millis((state.paused_until_ms - now) as u64);
            if remaining > self.config.max_hold {
                return Decision::Refuse(QuotaError::Paused { remaining });
            }
            return Decision::Wait(remaining);
        }
        if state.day_count >= self.daily_limit(priority) {
            return Decision::Refuse(QuotaError::Exhausted {
                resets_in: until_next_utc_day(now),
            });
        }
        let window_ms = self.window_ms();
        let allowed = self.allowed_in_window(priority);
        let in_window: Vec<i64> = state
            .recent_ms
            .iter()
            .copied()
            .filter(|at| now - at < window_ms)
            .collect();
        if in_window.len() >= allowed {
            // The request that must age out before a slot frees for this priority.
            let blocking = in_window[in_window.len() - allowed];
            return Decision::Wait(Duration::from_millis(
                (blocking + window_ms - now).max(1) as u64
            ));
        }
        Decision::Take
    }

    fn window_ms(&self) -> i64 {
        1000 + self.config.margin.as_millis() as i64
    }

    /// The longest write round trip after which a slot may still be used.
    fn usable_within(&self) -> Duration {
        self.config.margin / 2
    }

    fn daily_limit(&self, priority: Priority) -> u64 {
        match priority {
            Priority::Live => self.config.daily_quota,
            Priority::Backfill => self
                .config
                .daily_quota
                .saturating_sub(self.config.backfill_reserve),
        }
    }

    fn allowed_in_window(&self, priority: Priority) -> usize {
        let rate = self.config.rate_per_second.max(1) as usize;
        match priority {
            Priority::Live => rate,
            // Leave a live batch's two requests (extensive, transcript) free; at a rate of 2
            // one, at a rate of 1 nothing (docs/benchmarks.md, "Sweep").
            Priority::Backfill => rate.saturating_sub(2).max(1),
        }
    }

    fn publish_gauges(&self, state: &QuotaState) {
        let remaining = self.config.daily_quota.saturating_sub(state.day_count);
        metrics::quota(remaining, remaining == 0);
    }

    /// Reads the latest entry from the stream leader and resolves it to its server time.
    async fn load(&self) -> Result<Loaded, QuotaError> {
        let keep = self.config.rate_per_second.max(1) as usize;
        let margin_ms = self.config.margin.as_millis() as i64;
        let Some(current) = self.register.read().await.map_err(store_error)? else {
            return Ok(Loaded {
                state: QuotaState::default().resolve(0, keep, margin_ms),
                revision: None,
            });
        };
        let written_at_ms = current.created.timestamp_millis();
        self.compare_clocks(current.revision, written_at_ms);
        let state = if current.is_put {
            // An unreadable value (written by a future version?) restarts from empty rather than
            // blocking enrichment; the revision still guards the write.
            serde_json::from_slice(&current.value).unwrap_or_else(|err| {
                tracing::warn!(error = %err, "quota state unreadable; starting afresh");
                QuotaState::default()
            })
        } else {
            QuotaState::default()
        };
        Ok(Loaded {
            state: state.resolve(written_at_ms, keep, margin_ms),
            revision: Some(current.revision),
        })
    }

    /// Writes `state` if the key is still at `revision`; `Ok(None)` when another writer won.
    async fn write(
        &self,
        state: &QuotaState,
        revision: Option<u64>,
    ) -> Result<Option<u64>, QuotaError> {
        let value = Bytes::from(
            serde_json::to_vec(state).map_err(|err| QuotaError::Store(err.to_string()))?,
        );
        match self.register.write(value, revision).await {
            Ok(written) => {
                if let Ok(mut last) = self.last_write.lock() {
                    *last = Some((written, self.clock.now_ms()));
                }
                Ok(Some(written))
            }
            Err(RegisterError::Conflict { .. }) => Ok(None),
            Err(err) => Err(store_error(err)),
        }
    }

    /// Writes the state unchanged but for the tick counter, to learn a fresh server time;
    /// `false` when another writer was first (as good: the winner's write is as fresh).
    async fn tick(&self, mut state: QuotaState, revision: Option<u64>) -> Result<bool, QuotaError> {
        state.ticks += 1;
        Ok(self.write(&state, revision).await?.is_some())
    }

    /// Warns once when this pod's clock is far from the server's (measured on this limiter's
    /// own last write: its server time lies between sending it and its ack). Nothing here
    /// depends on it; other things a pod does with its clock might.
    fn compare_clocks(&self, revision: u64, written_at_ms: i64) {
        let Some((written, pod_ms_at_ack)) = self.last_write.lock().ok().and_then(|last| *last)
        else {
            return;
        };
        if written != revision {
            return;
        }
        let offset_ms = pod_ms_at_ack - written_at_ms;
        if offset_ms.abs() > CLOCK_WARN_MS && !self.clock_warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                pod_clock_offset_ms = offset_ms,
                "this pod's clock is far from the nats server's; the gong quota does not use it, but check the node's time sync"
            );
        }
    }
}

fn store_error(err: RegisterError) -> QuotaError {
    QuotaError::Store(err.to_string())
}

fn utc_day(now_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(now_ms)
        .unwrap_or_else(Utc::now)
        .date_naive()
        .to_string()
}

fn start_of_utc_day(now_ms: i64) -> i64 {
    now_ms - now_ms.rem_euclid(86_400_000)
}

fn until_next_utc_day(now_ms: i64) -> Duration {
    let now = chrono::DateTime::from_timestamp_millis(now_ms).unwrap_or_else(Utc::now);
    let tomorrow: NaiveDate = now.date_naive().succ_opt().unwrap_or(now.date_naive());
    let midnight = tomorrow
        .and_hms_opt(0, 0, 0)
        .map(|naive| naive.and_utc())
        .unwrap_or(now);
    (midnight - now).to_std().unwrap_or(Duration::from_secs(1))
}

fn jitter(max_ms: u64) -> Duration {
    Duration::from_millis(rand::rng().random_range(0..=max_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unix milliseconds of an RFC 3339 time.
    fn at(time: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(time)
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn a_write_s_grants_and_pause_take_its_server_time() {
        let written = at("2024-03-10T12:00:00Z");
        let state = QuotaState {
            recent_ms: vec![written - 2_000, written - 500],
            day: "2024-03-10".into(),
            day_count: 7,
            resolved_at_ms: written - 500,
            grants_in_this_write: 1,
            pause_ms_from_this_write: 3_000,
            ..QuotaState::default()
        };
        let resolved = state.resolve(written, 2, 100);
        assert_eq!(resolved.recent_ms, vec![written - 500, written]);
        assert_eq!(resolved.day_count, 8);
        assert_eq!(resolved.paused_until_ms, written + 3_000);
        assert_eq!(resolved.resolved_at_ms, written);
        assert_eq!(resolved.grants_in_this_write, 0);
        assert_eq!(resolved.pause_ms_from_this_write, 0);
        // Resolving again (another reader of the same entry) changes nothing.
        assert_eq!(resolved.clone().resolve(written, 2, 100), resolved);
    }

    #[test]
    fn a_new_server_day_restarts_the_count_except_for_grants_just_before_midnight() {
        let midnight = at("2024-03-11T00:00:00Z");
        let state = QuotaState {
            recent_ms: vec![midnight - 5_000, midnight - 60],
            day: "2024-03-10".into(),
            day_count: 42,
            paused_until_ms: 7,
            resolved_at_ms: midnight - 60,
            grants_in_this_write: 1,
            ..QuotaState::default()
        };
        let same_day = state.clone().resolve(midnight - 1, 3, 100);
        assert_eq!(same_day.day, "2024-03-10");
        assert_eq!(same_day.day_count, 43);
        let next = state.resolve(midnight + 10, 3, 100);
        assert_eq!(next.day, "2024-03-11");
        // The grant 60 ms before midnight counts on both days, and this write's grant.
        assert_eq!(next.day_count, 2);
        assert_eq!(next.paused_until_ms, 7);
    }

    #[test]
    fn a_server_clock_going_back_keeps_every_age_and_the_day() {
        let before = at("2024-03-11T00:00:01Z");
        let state = QuotaState {
            recent_ms: vec![before - 900, before - 100],
            day: "2024-03-11".into(),
            day_count: 5,
            paused_until_ms: before + 2_000,
            resolved_at_ms: before,
            ..QuotaState::default()
        };
        // A new leader whose clock is 3 s behind: its time is still 2024-03-10.
        let behind = before - 3_000;
        let resolved = state.resolve(behind, 3, 100);
        assert_eq!(resolved.recent_ms, vec![behind - 900, behind - 100]);
        assert_eq!(resolved.paused_until_ms, behind + 2_000);
        assert_eq!(resolved.resolved_at_ms, behind);
        assert_eq!(resolved.day, "2024-03-11", "the day never goes back");
        assert_eq!(resolved.day_count, 5);
    }

    #[test]
    fn a_value_from_before_server_times_still_reads() {
        // The shape written by earlier versions: no resolved time, no pending fields.
        let old: QuotaState = serde_json::from_str(
            r#"{"recent_ms":[1,2],"day":"2024-01-01","day_count":42,"paused_until_ms":7}"#,
        )
        .unwrap();
        assert_eq!(old.day_count, 42);
        assert_eq!(old.grants_in_this_write, 0);
        let written = at("2024-01-01T10:00:00Z");
        assert_eq!(old.resolve(written, 3, 100).day_count, 42);
    }

    #[test]
    fn midnight_is_at_most_a_day_away() {
        let until = until_next_utc_day(SystemClock.now_ms());
        assert!(until <= Duration::from_secs(86_400));
        assert!(!until.is_zero());
        assert_eq!(
            start_of_utc_day(at("2024-03-10T13:14:15.5Z")),
            at("2024-03-10T00:00:00Z")
        );
    }
}
