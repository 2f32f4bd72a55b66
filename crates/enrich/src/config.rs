//! gong-enrich configuration, read once from the environment before any I/O.

use std::fmt;
use std::time::Duration;

use gong_common::{CommonConfig, ConfigError, Env};
use serde_json::Value;

/// How to reach Gong's REST API.
#[derive(Clone)]
pub struct GongApiConfig {
    /// `GONG_API_BASE_URL` (default `https://api.gong.io`), without a trailing slash.
    pub base_url: String,
    /// `GONG_ACCESS_KEY` (HTTP Basic user).
    pub access_key: String,
    /// `GONG_ACCESS_KEY_SECRET` (HTTP Basic password). Never logged.
    pub access_key_secret: String,
    /// `ENRICH_HTTP_TIMEOUT` (default `30s`): one request, connect to last body byte.
    pub http_timeout: Duration,
    /// `ENRICH_CONTENT_SELECTOR`: the `contentSelector` JSON sent to `/v2/calls/extensive`
    /// (default: context `Extended`, parties, content, interaction, collaboration; no media).
    pub content_selector: Value,
    /// `ENRICH_REQUEST_RETRIES` (default 4): in-process retries of one request on 429, 5xx,
    /// timeouts and connection errors, before the batch is handed back to JetStream.
    pub request_retries: u32,
    /// `ENRICH_RETRY_BACKOFF_BASE` (default `500ms`): first backoff step.
    pub retry_backoff_base: Duration,
    /// `ENRICH_RETRY_BACKOFF_MAX` (default `30s`): backoff cap.
    pub retry_backoff_max: Duration,
}

impl fmt::Debug for GongApiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GongApiConfig")
            .field("base_url", &self.base_url)
            .field("access_key", &"<redacted>")
            .field("access_key_secret", &"<redacted>")
            .field("http_timeout", &self.http_timeout)
            .field("request_retries", &self.request_retries)
            .finish_non_exhaustive()
    }
}

/// The deployment-wide Gong budget (shared by every replica through a KV bucket).
#[derive(Debug, Clone)]
pub struct QuotaConfig {
    /// `GONG_RATE_LIMIT_PER_SECOND` (default 3): requests in any sliding second.
    pub rate_per_second: u32,
    /// `GONG_DAILY_QUOTA` (default 10000): requests per UTC day.
    pub daily_quota: u64,
    /// `ENRICH_BACKFILL_DAILY_RESERVE` (default `10%`, or a number of requests): the part of the
    /// daily quota replays never touch, kept for live enrichment.
    pub backfill_reserve: u64,
    /// `ENRICH_RATE_LIMIT_MARGIN` (default `100ms`, at least `20ms`): added to the one-second
    /// window to absorb the time between a slot's write reaching the NATS server and the request
    /// reaching Gong. A slot whose write took longer than half of it to be acknowledged is not
    /// used (see [`crate::rate_limit`]).
    pub margin: Duration,
    /// `ENRICH_QUOTA_MAX_HOLD` (default `30s`): a pause ordered by Gong (429 `Retry-After`)
    /// up to this long is waited out while holding the batch; longer ones hand it back.
    pub max_hold: Duration,
}

/// The reconciliation sweep ([`crate::sweep`]).
#[derive(Debug, Clone)]
pub struct SweepConfig {
    /// `ENRICH_SWEEP_INTERVAL` (default `1h`; `0` turns the continuous sweep off): how often the
    /// deployment (one replica at a time) sweeps the lookback window.
    pub interval: Duration,
    /// `ENRICH_SWEEP_LOOKBACK` (default `72h`): the window the continuous sweep lists, ending now.
    pub lookback: Duration,
    /// `ENRICH_SWEEP_LEASE_TTL` (default `30s`, at least `1s`): the time to live of the sweep's
    /// lease and of the transcript rechecks' lease; a sweep whose process died is taken over (and
    /// resumed) after it.
    pub lease_ttl: Duration,
    /// `ENRICH_SWEEP_MAX_BACKLOG` (default `ENRICH_BATCH_SIZE`): the sweep lists its next page
    /// only while fewer raw events than this wait for the `enrich` consumer or are being
    /// enriched, so webhooks queue behind at most about one batch of swept calls.
    pub max_backlog: u64,
}

/// The entity jobs ([`crate::entities`]): users and answered scorecards fetched from Gong on a
/// schedule, one replica at a time, under the sweep's lease ttl (`ENRICH_SWEEP_LEASE_TTL`).
#[derive(Debug, Clone)]
pub struct EntitiesConfig {
    /// `ENRICH_USERS_REFRESH` (default `24h`; `0` or `off`: never): how often the deployment
    /// fetches every user (`GET /v2/users`), and once when it never has.
    pub users_refresh: Duration,
    /// `ENRICH_SCORECARDS_REFRESH` (default `1h`; `0` or `off`: never): how often the deployment
    /// fetches the answered scorecards reviewed in the lookback, and once when it never has.
    pub scorecards_refresh: Duration,
    /// `ENRICH_SCORECARDS_LOOKBACK` (default `7d`): the review dates each scorecards fetch
    /// covers, ending now (widened by a day at each end for the company's unknown time zone).
    pub scorecards_lookback: Duration,
}

/// Everything gong-enrich needs. `Debug` never prints the access key or its secret.
#[derive(Debug, Clone)]
pub struct EnrichConfig {
    /// Shared settings (`NATS_URL`, `ADMIN_ADDR`, `LOG_FORMAT`, `STREAM_*`).
    pub common: CommonConfig,
    /// Gong's REST API.
    pub gong: GongApiConfig,
    /// The shared budget.
    pub quota: QuotaConfig,
    /// `ENRICH_BATCH_SIZE` (default 100): raw events per batch, hence call ids per request.
    pub batch_size: usize,
    /// `ENRICH_BATCH_LINGER` (default `1s`): how long a pull waits for a batch to fill while
    /// today's Gong spend is on pace.
    pub batch_linger: Duration,
    /// `ENRICH_BATCH_LINGER_MAX` (default `60s`, at least `ENRICH_BATCH_LINGER`): how long a
    /// pull waits for a batch to fill while today's spend runs ahead of an even pace through the
    /// UTC day (see [`crate::pacing`]). Equal to `ENRICH_BATCH_LINGER`, pacing is off.
    pub batch_linger_max: Duration,
    /// `ENRICH_PACE_SLACK` (default `5%` of `GONG_DAILY_QUOTA`, or a number of requests): how
    /// far ahead of the even pace today's spend may be before the linger stretches.
    pub pace_slack: u64,
    /// `ENRICH_ACK_WAIT` (default `60s`): redelivery delay of an unacknowledged raw event.
    pub ack_wait: Duration,
    /// `ENRICH_MAX_DELIVER` (default `-1`, unlimited): see [`EnrichConfig::from_env`].
    pub max_deliver: i64,
    /// `ENRICH_MAX_ACK_PENDING` (default 1000): raw events in flight across all replicas.
    pub max_ack_pending: i64,
    /// `ENRICH_MALFORMED_RETRIES` (default 3): retries of an event whose Gong answer could not
    /// be understood before it is dead-lettered `malformed_response` (`1 + retries` malformed
    /// answers, counted per process; deliveries for other reasons do not count).
    pub malformed_retries: i64,
    /// `ENRICH_AUTH_RETRY_DELAY` (default `60s`): after a 401/403, raw events are handed back
    /// with this delay and pulling pauses as long.
    pub auth_retry_delay: Duration,
    /// `ENRICH_PENDING_REFRESH` (default `10s`): how often the consumer's pending count is read.
    pub pending_refresh: Duration,
    /// `ENRICH_MAX_ACK_INFLIGHT` (default 1024): enriched-event publish acks in flight.
    pub max_ack_inflight: usize,
    /// `ENRICH_SHUTDOWN_GRACE` (default `25s`): time the batch in hand gets to finish on shutdown;
    /// what is left is handed back to JetStream at once.
    pub shutdown_grace: Duration,
    /// The reconciliation sweep.
    pub sweep: SweepConfig,
    /// `ENRICH_TRANSCRIPT_RECHECK` (default `1h,6h,24h`; `off` for none): when a public call's
    /// transcript was not ready, how long after its first enrichment to ask again (increasing).
    pub transcript_recheck: Vec<Duration>,
    /// The users and answered scorecards jobs.
    pub entities: EntitiesConfig,
}

/// The default `contentSelector`.
pub fn default_content_selector() -> Value {
    serde_json::json!({
        "context": "Extended",
        "exposedFields": {
            "parties": true,
            "content": {
                "topics": true,
                "trackers": true,
                "brief": true,
                "outline": true,
                "highlights": true,
                "callOutcome": true,
                "keyPoints": true
            },
            "interaction": {
                "speakers": true,
                "personInteractionStats": true,
                "questions": true,
                "video": true
            },
            "collaboration": {"publicComments": true},
            "media": false
        }
    })
}

impl EnrichConfig {
    /// Reads and validates the variables; `GONG_ACCESS_KEY` and `GONG_ACCESS_KEY_SECRET` are
    /// required.
    ///
    /// `ENRICH_MAX_DELIVER` defaults to unlimited (`-1`): JetStream silently stops delivering a
    /// message after `max_deliver` attempts, and most redeliveries here are not the message's
    /// fault (Gong down for hours, a revoked key, the daily quota spent). Poison is decided by
    /// the enricher itself and always dead-lettered: unparseable webhooks and deleted calls at
    /// once, malformed answers after `ENRICH_MALFORMED_RETRIES`.
    pub fn from_env(env: &Env) -> Result<EnrichConfig, ConfigError> {
        EnrichConfig::load(env, true)
    }

    /// As [`EnrichConfig::from_env`], but Gong credentials may be missing (`replay --dry-run`
    /// never calls Gong).
    pub fn from_env_without_credentials(env: &Env) -> Result<EnrichConfig, ConfigError> {
        EnrichConfig::load(env, false)
    }

    fn load(env: &Env, require_credentials: bool) -> Result<EnrichConfig, ConfigError> {
        let common = CommonConfig::from_env(env)?;
        let base_url = env
            .string_or("GONG_API_BASE_URL", "https://api.gong.io")
            .trim_end_matches('/')
            .to_string();
        match url_scheme_and_host(&base_url) {
            Some(("http" | "https", host)) if !host.is_empty() => {}
            _ => {
                return Err(ConfigError::new(
                    "GONG_API_BASE_URL",
                    "must be an absolute http(s) URL such as https://api.gong.io",
                ))
            }
        }
        let (access_key, access_key_secret) = if require_credentials {
            (
                env.required("GONG_ACCESS_KEY")?,
                env.required("GONG_ACCESS_KEY_SECRET")?,
            )
        } else {
            (
                env.string_or("GONG_ACCESS_KEY", ""),
                env.string_or("GONG_ACCESS_KEY_SECRET", ""),
            )
        };
        let content_selector = match env.get("ENRICH_CONTENT_SELECTOR") {
            None => default_content_selector(),
            Some(raw) => match serde_json::from_str::<Value>(raw) {
                Ok(value @ Value::Object(_)) => value,
                _ => {
                    return Err(ConfigError::new(
                        "ENRICH_CONTENT_SELECTOR",
                        "must be a JSON object in Gong's contentSelector shape",
                    ))
                }
            },
        };
        let retry_backoff_base =
            env.duration_or("ENRICH_RETRY_BACKOFF_BASE", Duration::from_millis(500))?;
        let retry_backoff_max =
            env.duration_or("ENRICH_RETRY_BACKOFF_MAX", Duration::from_secs(30))?;
        if retry_backoff_base.is_zero() || retry_backoff_max < retry_backoff_base {
            return Err(ConfigError::new(
                "ENRICH_RETRY_BACKOFF_MAX",
                "must be at least ENRICH_RETRY_BACKOFF_BASE, which must be above zero",
            ));
        }
        let gong = GongApiConfig {
            base_url,
            access_key,
            access_key_secret,
            http_timeout: positive_duration(env, "ENRICH_HTTP_TIMEOUT", Duration::from_secs(30))?,
            content_selector,
            request_retries: env.parse_or("ENRICH_REQUEST_RETRIES", 4)?,
            retry_backoff_base,
            retry_backoff_max,
        };

        let rate_per_second: u32 = env.positive_or("GONG_RATE_LIMIT_PER_SECOND", 3)?;
        let daily_quota: u64 = env.positive_or("GONG_DAILY_QUOTA", 10_000)?;
        let backfill_reserve = parse_quota_share(
            env.get("ENRICH_BACKFILL_DAILY_RESERVE").unwrap_or("10%"),
            daily_quota,
        )
        .ok_or_else(|| {
            ConfigError::new(
                "ENRICH_BACKFILL_DAILY_RESERVE",
                "must be a percentage such as 10% or a number of requests below GONG_DAILY_QUOTA",
            )
        })?;
        let margin = env.duration_or("ENRICH_RATE_LIMIT_MARGIN", Duration::from_millis(100))?;
        if margin < Duration::from_millis(20) {
            return Err(ConfigError::new(
                "ENRICH_RATE_LIMIT_MARGIN",
                "must be at least 20ms (a slot is used only if its quota write took under half of it)",
            ));
        }
        let quota = QuotaConfig {
            rate_per_second,
            daily_quota,
            backfill_reserve,
            margin,
            max_hold: env.duration_or("ENRICH_QUOTA_MAX_HOLD", Duration::from_secs(30))?,
        };

        let batch_size: usize = env.positive_or("ENRICH_BATCH_SIZE", 100)?;
        if batch_size > 1000 {
            return Err(ConfigError::new(
                "ENRICH_BATCH_SIZE",
                "must be between 1 and 1000",
            ));
        }
        let ack_wait = positive_duration(env, "ENRICH_ACK_WAIT", Duration::from_secs(60))?;
        if ack_wait < Duration::from_secs(1) {
            return Err(ConfigError::new(
                "ENRICH_ACK_WAIT",
                "must be at least 1s (progress is reported every third of it)",
            ));
        }
        let max_deliver = match env.get("ENRICH_MAX_DELIVER") {
            None => -1,
            Some(raw) if raw.eq_ignore_ascii_case("unlimited") => -1,
            Some(raw) => match raw.parse::<i64>() {
                Ok(-1) => -1,
                Ok(value) if value > 0 => value,
                _ => {
                    return Err(ConfigError::new(
                        "ENRICH_MAX_DELIVER",
                        "must be a positive number, or -1 / unlimited",
                    ))
                }
            },
        };
        let max_ack_pending: i64 = env.positive_or("ENRICH_MAX_ACK_PENDING", 1000)?;
        if (max_ack_pending as u64) < batch_size as u64 {
            return Err(ConfigError::new(
                "ENRICH_MAX_ACK_PENDING",
                "must be at least ENRICH_BATCH_SIZE",
            ));
        }
        let batch_linger = positive_duration(env, "ENRICH_BATCH_LINGER", Duration::from_secs(1))?;
        // 60 s: under a trickle every pull that got a call costs 2 requests, so at the longest
        // linger a replica spends at most 2 x 86,400 / 60 = 2,880 requests a day and the three
        // replicas KEDA may run stay under the default 10,000 (30 s would let two replicas spend
        // 11,520). Held events report progress, so it may exceed ENRICH_ACK_WAIT.
        let batch_linger_max = positive_duration(
            env,
            "ENRICH_BATCH_LINGER_MAX",
            batch_linger.max(Duration::from_secs(60)),
        )?;
        if batch_linger_max < batch_linger {
            return Err(ConfigError::new(
                "ENRICH_BATCH_LINGER_MAX",
                "must be at least ENRICH_BATCH_LINGER (equal turns quota pacing off)",
            ));
        }
        let slack = env.get("ENRICH_PACE_SLACK").unwrap_or("5%");
        let pace_slack = parse_quota_share(slack, daily_quota).ok_or_else(|| {
            ConfigError::new(
                "ENRICH_PACE_SLACK",
                "must be a percentage such as 5% or a number of requests below GONG_DAILY_QUOTA",
            )
        })?;
        let sweep = SweepConfig {
            interval: env.duration_or("ENRICH_SWEEP_INTERVAL", Duration::from_secs(3600))?,
            lookback: positive_duration(
                env,
                "ENRICH_SWEEP_LOOKBACK",
                Duration::from_secs(72 * 3600),
            )?,
            lease_ttl: env.duration_or("ENRICH_SWEEP_LEASE_TTL", Duration::from_secs(30))?,
            max_backlog: env.positive_or("ENRICH_SWEEP_MAX_BACKLOG", batch_size as u64)?,
        };
        if sweep.lease_ttl < Duration::from_secs(1) {
            return Err(ConfigError::new(
                "ENRICH_SWEEP_LEASE_TTL",
                "must be at least 1s",
            ));
        }
        let transcript_recheck =
            parse_rechecks(env.get("ENRICH_TRANSCRIPT_RECHECK").unwrap_or("1h,6h,24h"))
                .ok_or_else(|| {
                    ConfigError::new(
                        "ENRICH_TRANSCRIPT_RECHECK",
                        "must be increasing durations such as 1h,6h,24h, or off",
                    )
                })?;
        let entities = EntitiesConfig {
            users_refresh: refresh(env, "ENRICH_USERS_REFRESH", Duration::from_secs(24 * 3600))?,
            scorecards_refresh: refresh(
                env,
                "ENRICH_SCORECARDS_REFRESH",
                Duration::from_secs(3600),
            )?,
            scorecards_lookback: positive_duration(
                env,
                "ENRICH_SCORECARDS_LOOKBACK",
                Duration::from_secs(7 * 24 * 3600),
            )?,
        };
        if entities.scorecards_lookback > Duration::from_secs(366 * 24 * 3600) {
            return Err(ConfigError::new(
                "ENRICH_SCORECARDS_LOOKBACK",
                "must be at most 366d",
            ));
        }
        let malformed_retries: i64 = env.parse_or("ENRICH_MALFORMED_RETRIES", 3)?;
        if malformed_retries < 0 {
            return Err(ConfigError::new(
                "ENRICH_MALFORMED_RETRIES",
                "must be zero or more",
            ));
        }
        Ok(EnrichConfig {
            common,
            gong,
            quota,
            batch_size,
            batch_linger,
            batch_linger_max,
            pace_slack,
            ack_wait,
            max_deliver,
            max_ack_pending,
            malformed_retries,
            auth_retry_delay: positive_duration(
                env,
                "ENRICH_AUTH_RETRY_DELAY",
                Duration::from_secs(60),
            )?,
            pending_refresh: positive_duration(
                env,
                "ENRICH_PENDING_REFRESH",
                Duration::from_secs(10),
            )?,
            max_ack_inflight: env.positive_or("ENRICH_MAX_ACK_INFLIGHT", 1024)?,
            shutdown_grace: env.duration_or("ENRICH_SHUTDOWN_GRACE", Duration::from_secs(25))?,
            sweep,
            transcript_recheck,
            entities,
        })
    }
}

/// `1h,6h,24h`: increasing positive durations; `off`, `0` or empty: none.
fn parse_rechecks(raw: &str) -> Option<Vec<Duration>> {
    let raw = raw.trim();
    if raw.is_empty() || raw == "0" || raw.eq_ignore_ascii_case("off") {
        return Some(Vec::new());
    }
    let mut delays: Vec<Duration> = Vec::new();
    for item in gong_common::config::split_list(raw) {
        let delay = humantime::parse_duration(&item).ok()?;
        if delay.is_zero() || delays.last().is_some_and(|last| *last >= delay) {
            return None;
        }
        delays.push(delay);
    }
    Some(delays)
}

/// A job's refresh interval: a duration, or `0` / `off` for never (`Duration::ZERO`).
fn refresh(env: &Env, var: &str, default: Duration) -> Result<Duration, ConfigError> {
    match env.get(var).map(str::trim) {
        Some(raw) if raw.eq_ignore_ascii_case("off") || raw == "0" => Ok(Duration::ZERO),
        _ => env.duration_or(var, default),
    }
}

fn positive_duration(env: &Env, var: &str, default: Duration) -> Result<Duration, ConfigError> {
    let value = env.duration_or(var, default)?;
    if value.is_zero() {
        return Err(ConfigError::new(var, "must be greater than zero"));
    }
    Ok(value)
}

fn url_scheme_and_host(url: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    Some((scheme, host))
}

/// `10%` of `daily_quota`, or a plain number of requests; `None` unless below `daily_quota`.
fn parse_quota_share(raw: &str, daily_quota: u64) -> Option<u64> {
    let raw = raw.trim();
    let reserve = if let Some(percent) = raw.strip_suffix('%') {
        let percent: f64 = percent.trim().parse().ok()?;
        if !(0.0..100.0).contains(&percent) {
            return None;
        }
        (daily_quota as f64 * percent / 100.0).ceil() as u64
    } else {
        raw.parse().ok()?
    };
    (reserve < daily_quota).then_some(reserve)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        let mut env = Env::from_pairs([
            ("GONG_ACCESS_KEY", "key-123"),
            ("GONG_ACCESS_KEY_SECRET", "very-secret-456"),
        ]);
        for (var, value) in pairs {
            env.set(*var, *value);
        }
        env
    }

    #[test]
    fn defaults_follow_the_contract() {
        let config = EnrichConfig::from_env(&env(&[])).unwrap();
        assert_eq!(config.gong.base_url, "https://api.gong.io");
        assert_eq!(config.quota.rate_per_second, 3);
        assert_eq!(config.quota.daily_quota, 10_000);
        assert_eq!(config.quota.backfill_reserve, 1_000);
        assert_eq!(config.batch_size, 100);
        assert_eq!(config.batch_linger, Duration::from_secs(1));
        assert_eq!(config.batch_linger_max, Duration::from_secs(60));
        assert_eq!(config.pace_slack, 500);
        assert_eq!(config.ack_wait, Duration::from_secs(60));
        assert_eq!(config.max_deliver, -1);
        assert_eq!(config.max_ack_pending, 1000);
        assert_eq!(config.malformed_retries, 3);
        assert_eq!(config.sweep.interval, Duration::from_secs(3600));
        assert_eq!(config.sweep.lookback, Duration::from_secs(72 * 3600));
        assert_eq!(config.sweep.max_backlog, 100);
        assert_eq!(
            config.entities.users_refresh,
            Duration::from_secs(24 * 3600)
        );
        assert_eq!(
            config.entities.scorecards_refresh,
            Duration::from_secs(3600)
        );
        assert_eq!(
            config.entities.scorecards_lookback,
            Duration::from_secs(7 * 24 * 3600)
        );
        assert_eq!(
            config.transcript_recheck,
            [1, 6, 24].map(|hours| Duration::from_secs(hours * 3600))
        );
        assert_eq!(
            config.gong.content_selector["exposedFields"]["content"]["keyPoints"],
            true
        );
        assert_eq!(
            config.gong.content_selector["exposedFields"]["media"],
            false
        );
    }

    #[test]
    fn credentials_are_required_and_never_printed() {
        let missing = EnrichConfig::from_env(&Env::from_pairs([("GONG_ACCESS_KEY", "k")]));
        assert_eq!(missing.unwrap_err().var, "GONG_ACCESS_KEY_SECRET");
        let config = EnrichConfig::from_env(&env(&[])).unwrap();
        let printed = format!("{config:?}");
        assert!(!printed.contains("key-123"), "{printed}");
        assert!(!printed.contains("very-secret-456"), "{printed}");
        assert!(
            EnrichConfig::from_env_without_credentials(&Env::from_pairs::<&str, &str>([])).is_ok()
        );
    }

    #[test]
    fn invalid_values_name_their_variable() {
        for (var, value) in [
            ("GONG_API_BASE_URL", "api.gong.io"),
            ("GONG_RATE_LIMIT_PER_SECOND", "0"),
            ("ENRICH_BATCH_SIZE", "5000"),
            ("ENRICH_BACKFILL_DAILY_RESERVE", "100%"),
            ("ENRICH_MAX_DELIVER", "0"),
            ("ENRICH_CONTENT_SELECTOR", "[1]"),
            ("ENRICH_ACK_WAIT", "10ms"),
            ("ENRICH_BATCH_LINGER_MAX", "500ms"),
            ("ENRICH_PACE_SLACK", "100%"),
            ("ENRICH_RATE_LIMIT_MARGIN", "5ms"),
            ("ENRICH_SWEEP_INTERVAL", "hourly"),
            ("ENRICH_SWEEP_LOOKBACK", "0"),
            ("ENRICH_SWEEP_LEASE_TTL", "100ms"),
            ("ENRICH_SWEEP_MAX_BACKLOG", "0"),
            ("ENRICH_TRANSCRIPT_RECHECK", "6h,1h"),
            ("ENRICH_TRANSCRIPT_RECHECK", "1h,x"),
            ("ENRICH_USERS_REFRESH", "daily"),
            ("ENRICH_SCORECARDS_REFRESH", "-1h"),
            ("ENRICH_SCORECARDS_LOOKBACK", "0"),
            ("ENRICH_SCORECARDS_LOOKBACK", "400d"),
        ] {
            let err = EnrichConfig::from_env(&env(&[(var, value)])).unwrap_err();
            assert_eq!(err.var, var, "{value}");
        }
    }

    #[test]
    fn the_longest_linger_is_never_below_the_base_one() {
        let config = EnrichConfig::from_env(&env(&[("ENRICH_BATCH_LINGER", "2m")])).unwrap();
        assert_eq!(config.batch_linger_max, Duration::from_secs(120));
        let off = EnrichConfig::from_env(&env(&[
            ("ENRICH_BATCH_LINGER", "250ms"),
            ("ENRICH_BATCH_LINGER_MAX", "250ms"),
            ("ENRICH_PACE_SLACK", "0"),
        ]))
        .unwrap();
        assert_eq!(off.batch_linger_max, off.batch_linger);
        assert_eq!(off.pace_slack, 0);
    }

    #[test]
    fn sweep_and_rechecks_can_be_turned_off() {
        let config = EnrichConfig::from_env(&env(&[
            ("ENRICH_SWEEP_INTERVAL", "0"),
            ("ENRICH_TRANSCRIPT_RECHECK", "off"),
        ]))
        .unwrap();
        assert!(config.sweep.interval.is_zero());
        assert!(config.transcript_recheck.is_empty());
        let jobs_off = EnrichConfig::from_env(&env(&[
            ("ENRICH_USERS_REFRESH", "off"),
            ("ENRICH_SCORECARDS_REFRESH", "0"),
        ]))
        .unwrap();
        assert!(jobs_off.entities.users_refresh.is_zero());
        assert!(jobs_off.entities.scorecards_refresh.is_zero());
        assert_eq!(
            parse_rechecks("30m, 2h"),
            Some(vec![Duration::from_secs(1800), Duration::from_secs(7200)])
        );
    }

    #[test]
    fn reserve_accepts_percentages_and_counts() {
        assert_eq!(parse_quota_share("10%", 10_000), Some(1_000));
        assert_eq!(parse_quota_share("250", 10_000), Some(250));
        assert_eq!(parse_quota_share("0%", 10), Some(0));
        assert_eq!(parse_quota_share("10", 10), None);
        assert_eq!(parse_quota_share("x", 10), None);
    }
}
