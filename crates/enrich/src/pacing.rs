//! Quota pacing of the batch linger: wait longer for batches to fill while today's Gong spend
//! runs ahead of an even pace through the UTC day.
//!
//! Every pull that gets at least one call costs two requests (extensive + transcript), however
//! few calls it holds. A burst fills batches of 100 (0.02 requests per call), but a steady
//! trickle closes a batch every `ENRICH_BATCH_LINGER` with whatever arrived: at 0.1 call/s and
//! a 1 s linger every batch holds one call, 2 requests per call, and the daily quota is spent by
//! midday (the limiter then refuses every request until 00:00 UTC). Pacing trades a little
//! freshness for requests only when the spend says it must.
//!
//! **The rule** ([`Pacing::linger`]), evaluated before every pull from the shared quota state
//! (read without taking a slot, [`crate::RateLimiter::check`]):
//!
//! ```text
//! allowed_by_now = ceil(GONG_DAILY_QUOTA x elapsed_of_utc_day / 24 h) + ENRICH_PACE_SLACK
//! linger         = ENRICH_BATCH_LINGER_MAX  if spent_today > allowed_by_now
//!                  ENRICH_BATCH_LINGER      otherwise
//! ```
//!
//! `spent_today` is the deployment-wide day count of the `gong_quota` key (every replica and
//! every replay), which restarts at 00:00 UTC, when `allowed_by_now` restarts at the slack too.
//! Both take the time of day from the same clock: the NATS server time of the quota entry read
//! ([`crate::rate_limit::Snapshot::at_ms`]), never the pod's, so every replica paces by the same
//! day and hour as the count it reads.
//! A pull still closes as soon as `ENRICH_BATCH_SIZE` events arrived, so a backlog is never
//! slowed down, and no call waits for batching longer than `ENRICH_BATCH_LINGER_MAX`. With both
//! lingers equal pacing is off. Only live enrichment is paced: a replay reads a recorded range,
//! so its batches are full anyway (it keeps `ENRICH_BATCH_LINGER` and its daily reserve).

use std::time::Duration;

use crate::config::EnrichConfig;

/// Milliseconds in a UTC day (Unix time has no leap seconds).
const DAY_MS: u64 = 86_400_000;

/// The pacing settings (see the module documentation for the rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacing {
    /// `GONG_DAILY_QUOTA`: the day's budget, spread evenly over 24 h.
    pub daily_quota: u64,
    /// `ENRICH_PACE_SLACK`: requests the spend may be ahead of the even pace.
    pub slack: u64,
    /// `ENRICH_BATCH_LINGER`: the linger on pace.
    pub base: Duration,
    /// `ENRICH_BATCH_LINGER_MAX`: the linger ahead of pace.
    pub max: Duration,
}

impl Pacing {
    /// The settings of `config`.
    pub fn from_config(config: &EnrichConfig) -> Pacing {
        Pacing {
            daily_quota: config.quota.daily_quota,
            slack: config.pace_slack,
            base: config.batch_linger,
            max: config.batch_linger_max,
        }
    }

    /// Requests the even pace allows by `now_ms` (Unix milliseconds, the quota's server time):
    /// the elapsed share of the UTC day of the daily quota, rounded up, plus the slack.
    pub fn allowed_by(&self, now_ms: i64) -> u64 {
        let into_day = now_ms.rem_euclid(DAY_MS as i64) as u128;
        let paced = (u128::from(self.daily_quota) * into_day).div_ceil(u128::from(DAY_MS));
        (paced as u64).saturating_add(self.slack)
    }

    /// Whether `spent_today` (requests spent on the UTC day of `now_ms`) runs ahead of pace.
    pub fn is_ahead(&self, spent_today: u64, now_ms: i64) -> bool {
        spent_today > self.allowed_by(now_ms)
    }

    /// How long the next pull waits for its batch to fill.
    pub fn linger(&self, spent_today: u64, now_ms: i64) -> Duration {
        if self.is_ahead(spent_today, now_ms) {
            self.max
        } else {
            self.base
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limit::QuotaState;

    const BASE: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(60);

    fn pacing() -> Pacing {
        Pacing {
            daily_quota: 10_000,
            slack: 500,
            base: BASE,
            max: MAX,
        }
    }

    /// Unix milliseconds of `time` (`HH:MM:SS`) on 2024-03-10 (or the day after with `next`).
    fn at(time: &str, next: bool) -> i64 {
        let day = if next { "2024-03-11" } else { "2024-03-10" };
        chrono::DateTime::parse_from_rfc3339(&format!("{day}T{time}Z"))
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn the_pace_is_the_elapsed_share_of_the_day_plus_the_slack() {
        let pacing = pacing();
        assert_eq!(pacing.allowed_by(at("00:00:00", false)), 500);
        assert_eq!(pacing.allowed_by(at("06:00:00", false)), 3_000);
        assert_eq!(pacing.allowed_by(at("12:00:00", false)), 5_500);
        // Rounded up: one request is allowed as soon as the day has started.
        assert_eq!(pacing.allowed_by(at("00:00:00", false) + 1), 501);
        assert_eq!(pacing.allowed_by(at("23:59:59", false) + 999), 10_500);
    }

    #[test]
    fn ahead_of_pace_waits_the_longest_linger() {
        let pacing = pacing();
        // 20,000 requests a day (2 per call at 0.1 call/s) is 10,000 by noon.
        assert_eq!(pacing.linger(10_000, at("12:00:00", false)), MAX);
        assert_eq!(pacing.linger(5_501, at("12:00:00", false)), MAX);
        assert_eq!(pacing.linger(501, at("00:00:00", false)), MAX);
    }

    #[test]
    fn on_pace_keeps_the_base_linger() {
        let pacing = pacing();
        assert_eq!(pacing.linger(5_500, at("12:00:00", false)), BASE);
        assert_eq!(pacing.linger(0, at("12:00:00", false)), BASE);
        assert_eq!(pacing.linger(500, at("00:00:00", false)), BASE);
        // The same spend is ahead in the morning and on pace again later in the day.
        assert_eq!(pacing.linger(4_000, at("06:00:00", false)), MAX);
        assert_eq!(pacing.linger(4_000, at("09:00:00", false)), BASE);
    }

    #[test]
    fn a_new_utc_day_starts_on_pace() {
        let pacing = pacing();
        let late = at("23:59:00", false);
        let state = QuotaState {
            day: "2024-03-10".into(),
            day_count: 9_990,
            ..QuotaState::default()
        };
        // Late on 2024-03-10 nearly the whole quota is on pace.
        assert_eq!(state.spent_on_day_of(late), 9_990);
        assert_eq!(pacing.linger(state.spent_on_day_of(late), late), BASE);
        // Just after midnight the pace restarts at the slack, and so does the stored count:
        // yesterday's spend does not count against today's pace.
        let early = at("00:00:01", true);
        assert_eq!(pacing.allowed_by(early), 501);
        assert_eq!(state.spent_on_day_of(early), 0);
        assert_eq!(pacing.linger(state.spent_on_day_of(early), early), BASE);
        assert_eq!(
            pacing.linger(9_990, early),
            MAX,
            "a count not restarted would be ahead"
        );
        // Today's own spend ahead of the restarted pace stretches the linger again.
        let today = QuotaState {
            day: "2024-03-11".into(),
            day_count: 600,
            ..QuotaState::default()
        };
        assert_eq!(pacing.linger(today.spent_on_day_of(early), early), MAX);
    }

    #[test]
    fn equal_lingers_turn_pacing_off() {
        let off = Pacing {
            max: BASE,
            ..pacing()
        };
        assert_eq!(off.linger(10_000, at("00:00:01", false)), BASE);
    }
}
