//! One Gong budget for the whole deployment, kept in the JetStream KV bucket `gong_quota`.
//!
//! Gong limits per company (3 requests in any second, 10,000 per day by default), not per
//! process, so every replica and every replay run takes its slots from one key holding
//! [`QuotaState`]: the timestamps of the last `rate` requests, the UTC day and its count, and a
//! pause ordered by Gong. A slot is taken by compare-and-set (`kv.create` for the first write,
//! `kv.update` with the revision read): two replicas can never take the same slot.
//!
//! A request may go only when the `rate`-th newest request is at least one second plus a safety
//! margin old (the margin absorbs network jitter and clock differences between hosts; the
//! timestamps are wall-clock milliseconds because they are compared across hosts).
//! [`Priority::Backfill`] (replays) only takes a slot when one stays free for live enrichment in
//! the current window, and stops at the daily quota minus a reserve.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream;
use async_nats::jetstream::kv;
use bytes::Bytes;
use chrono::{NaiveDate, Utc};
use gong_common::names;
use gong_common::streams::{ensure_kv, ProvisionError, StreamSettings};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::config::QuotaConfig;
use crate::error::QuotaError;
use crate::metrics;

/// The key holding the whole state.
pub const QUOTA_KEY: &str = "gong_api";

/// Who is asking for a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// Live enrichment: every slot, up to the full daily quota.
    Live,
    /// Replays: leaves one slot per window and the daily reserve to live enrichment.
    Backfill,
}

/// The value stored under [`QUOTA_KEY`] (JSON).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QuotaState {
    /// Unix milliseconds of the most recent requests, oldest first (at most `rate` kept).
    #[serde(default)]
    pub recent_ms: Vec<i64>,
    /// The UTC day `day_count` belongs to (`YYYY-MM-DD`).
    #[serde(default)]
    pub day: String,
    /// Requests sent on `day`.
    #[serde(default)]
    pub day_count: u64,
    /// No request before this (Unix milliseconds), ordered by a 429's `Retry-After`.
    #[serde(default)]
    pub paused_until_ms: i64,
}

impl QuotaState {
    /// Requests spent on the UTC day of `now_ms` (Unix milliseconds): `day_count`, or 0 when the
    /// stored count belongs to another day (the count restarts at 00:00 UTC, as in `on_day`).
    pub fn spent_on_day_of(&self, now_ms: i64) -> u64 {
        if self.day == utc_day(now_ms) {
            self.day_count
        } else {
            0
        }
    }

    /// The state as seen on `today`: the day count restarts on a new UTC day.
    fn on_day(mut self, today: &str) -> QuotaState {
        if self.day != today {
            self.day = today.to_string();
            self.day_count = 0;
        }
        self
    }
}

/// A slot was taken.
#[derive(Debug, Clone, Copy)]
pub struct Grant {
    /// Unix milliseconds recorded for this request in the shared window.
    pub at_ms: i64,
}

/// What [`RateLimiter::check`] saw.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    /// Requests spent today by the whole deployment (every priority; 0 on a new UTC day).
    pub spent_today: u64,
    /// Wall-clock Unix milliseconds the state was read at (the day `spent_today` belongs to).
    pub at_ms: i64,
}

/// The shared limiter; cheap to clone.
#[derive(Clone)]
pub struct RateLimiter {
    kv: kv::Store,
    config: QuotaConfig,
}

impl RateLimiter {
    /// Opens (creating if needed) the `gong_quota` bucket with `ensure_kv`.
    pub async fn open(
        jetstream: &jetstream::Context,
        config: QuotaConfig,
        streams: &StreamSettings,
    ) -> Result<RateLimiter, ProvisionError> {
        let kv = ensure_kv(
            jetstream,
            names::BUCKET_GONG_QUOTA,
            1,
            Duration::ZERO,
            streams,
        )
        .await?;
        Ok(RateLimiter { kv, config })
    }

    /// Takes one request slot, waiting for the sliding window (and for a Gong-ordered pause up
    /// to `max_hold`). Fails fast when the daily quota for `priority` is spent or Gong's pause is
    /// longer; the caller hands its events back and stops pulling.
    pub async fn acquire(&self, priority: Priority) -> Result<Grant, QuotaError> {
        loop {
            let (state, revision) = self.load().await?;
            let now = now_ms();
            let today = utc_day(now);
            let mut state = state.on_day(&today);
            self.publish_gauges(&state);
            if state.paused_until_ms > now {
                let remaining = Duration::from_millis((state.paused_until_ms - now) as u64);
                if remaining > self.config.max_hold {
                    return Err(QuotaError::Paused { remaining });
                }
                tokio::time::sleep(remaining + jitter(20)).await;
                continue;
            }
            let limit = self.daily_limit(priority);
            if state.day_count >= limit {
                return Err(QuotaError::Exhausted {
                    resets_in: until_next_utc_day(now),
                });
            }
            let window_ms = 1000 + self.config.margin.as_millis() as i64;
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
                let wait = (blocking + window_ms - now).max(1) as u64;
                tokio::time::sleep(Duration::from_millis(wait) + jitter(15)).await;
                continue;
            }
            let mut recent = in_window;
            recent.push(now);
            let keep = self.config.rate_per_second as usize;
            if recent.len() > keep {
                recent.drain(..recent.len() - keep);
            }
            state.recent_ms = recent;
            state.day_count += 1;
            if self.store(&state, revision).await? {
                self.publish_gauges(&state);
                return Ok(Grant { at_ms: now });
            }
            // Another replica took a slot first: read again.
            tokio::time::sleep(jitter(5)).await;
        }
    }

    /// Records a pause ordered by Gong (429 `Retry-After`): no replica sends before it ends.
    pub async fn pause_for(&self, retry_after: Duration) -> Result<(), QuotaError> {
        loop {
            let (state, revision) = self.load().await?;
            let now = now_ms();
            let until = now + retry_after.as_millis() as i64;
            if state.paused_until_ms >= until {
                return Ok(());
            }
            let mut state = state.on_day(&utc_day(now));
            state.paused_until_ms = until;
            if self.store(&state, revision).await? {
                tracing::warn!(
                    retry_after_ms = retry_after.as_millis() as u64,
                    "gong rate limited us; every replica pauses"
                );
                return Ok(());
            }
        }
    }

    /// Whether a slot could be had for `priority` without taking one: `Err` when the daily quota
    /// is spent or Gong's pause is longer than `max_hold` (then nothing should be pulled).
    /// Read-only: the [`Snapshot`] also says what was spent today, for the linger's pacing.
    pub async fn check(&self, priority: Priority) -> Result<Snapshot, QuotaError> {
        let (state, _) = self.load().await?;
        let now = now_ms();
        let state = state.on_day(&utc_day(now));
        self.publish_gauges(&state);
        if state.paused_until_ms > now {
            let remaining = Duration::from_millis((state.paused_until_ms - now) as u64);
            if remaining > self.config.max_hold {
                return Err(QuotaError::Paused { remaining });
            }
        }
        let limit = self.daily_limit(priority);
        if state.day_count >= limit {
            return Err(QuotaError::Exhausted {
                resets_in: until_next_utc_day(now),
            });
        }
        Ok(Snapshot {
            spent_today: state.day_count,
            at_ms: now,
        })
    }

    /// The current state, as stored (for tests and tools).
    pub async fn state(&self) -> Result<QuotaState, QuotaError> {
        Ok(self.load().await?.0)
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
            // Leave a slot for live enrichment; with a rate of 1 there is nothing to leave.
            Priority::Backfill => (rate - 1).max(1),
        }
    }

    fn publish_gauges(&self, state: &QuotaState) {
        let remaining = self.config.daily_quota.saturating_sub(state.day_count);
        metrics::quota(remaining, remaining == 0);
    }

    async fn load(&self) -> Result<(QuotaState, Option<u64>), QuotaError> {
        let entry = self
            .kv
            .entry(QUOTA_KEY)
            .await
            .map_err(|err| QuotaError::Store(err.to_string()))?;
        match entry {
            Some(entry) if entry.operation == kv::Operation::Put => {
                // An unreadable value (written by a future version?) restarts from empty rather
                // than blocking enrichment; the revision still guards the write.
                let state = serde_json::from_slice(&entry.value).unwrap_or_else(|err| {
                    tracing::warn!(error = %err, "quota state unreadable; starting afresh");
                    QuotaState::default()
                });
                Ok((state, Some(entry.revision)))
            }
            Some(entry) => Ok((QuotaState::default(), Some(entry.revision))),
            None => Ok((QuotaState::default(), None)),
        }
    }

    /// Compare-and-set; `Ok(false)` when another writer won.
    async fn store(&self, state: &QuotaState, revision: Option<u64>) -> Result<bool, QuotaError> {
        let value = Bytes::from(
            serde_json::to_vec(state).map_err(|err| QuotaError::Store(err.to_string()))?,
        );
        match revision {
            Some(revision) => match self.kv.update(QUOTA_KEY, value, revision).await {
                Ok(_) => Ok(true),
                Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
                Err(err) => Err(QuotaError::Store(err.to_string())),
            },
            None => match self.kv.create(QUOTA_KEY, value).await {
                Ok(_) => Ok(true),
                Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
                Err(err) => Err(QuotaError::Store(err.to_string())),
            },
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or(0)
}

fn utc_day(now_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(now_ms)
        .unwrap_or_else(Utc::now)
        .date_naive()
        .to_string()
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

    #[test]
    fn a_new_day_restarts_the_count() {
        let state = QuotaState {
            recent_ms: vec![1, 2],
            day: "2024-01-01".into(),
            day_count: 42,
            paused_until_ms: 7,
        };
        let same = state.clone().on_day("2024-01-01");
        assert_eq!(same.day_count, 42);
        let next = state.on_day("2024-01-02");
        assert_eq!(next.day_count, 0);
        assert_eq!(next.recent_ms, vec![1, 2]);
        assert_eq!(next.paused_until_ms, 7);
    }

    #[test]
    fn midnight_is_at_most_a_day_away() {
        let until = until_next_utc_day(now_ms());
        assert!(until <= Duration::from_secs(86_400));
        assert!(!until.is_zero());
    }
}
