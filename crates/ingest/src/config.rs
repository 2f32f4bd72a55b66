//! gong-ingest configuration, read once from the environment before any port is bound.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use gong_common::{CommonConfig, ConfigError, Env};

use crate::auth;

/// Everything gong-ingest needs. `Debug` never prints keys or tokens.
#[derive(Clone)]
pub struct IngestConfig {
    /// Shared settings (`NATS_URL`, `ADMIN_ADDR`, `LOG_FORMAT`, `STREAM_*`).
    pub common: CommonConfig,
    /// `INGEST_ADDR` (default `0.0.0.0:8080`).
    pub listen_addr: SocketAddr,
    /// `GONG_WEBHOOK_SECRETS` (the rules' public keys, parsed), `GONG_WEBHOOK_URL` (the
    /// destination URL configured on the rule, normalised), `GONG_WEBHOOK_URL_TOKENS` (kept only
    /// as SHA-256 digests) and `INGEST_JWT_LEEWAY` (default `60s`, for `exp`/`nbf`), built
    /// once into the verifier every request uses.
    pub verifier: auth::Verifier,
    /// `INGEST_MAX_BODY_BYTES` (default 5 MiB; over it 413).
    pub max_body_bytes: usize,
    /// `INGEST_MAX_CONCURRENT_REQUESTS` (default 1024; over it 503).
    pub max_concurrent_requests: usize,
    /// `INGEST_MAX_CONNECTIONS` (default 10000; over it new connections wait in the backlog).
    pub max_connections: usize,
    /// `INGEST_HEADER_TIMEOUT` (default `10s`): time to send the request head (slowloris).
    pub header_timeout: Duration,
    /// `INGEST_BODY_TIMEOUT` (default `30s`): time to send the body.
    pub body_timeout: Duration,
    /// `INGEST_PUBLISH_TIMEOUT` (default `5s`): wait for JetStream's ack before answering 503.
    pub publish_timeout: Duration,
    /// `INGEST_MAX_ACK_INFLIGHT` (default 2048): publish acks in flight.
    pub max_ack_inflight: usize,
    /// `INGEST_SHUTDOWN_GRACE` (default `25s`): time in-flight requests get on shutdown.
    pub shutdown_grace: Duration,
    /// `INGEST_RETRY_AFTER_SECS` (default 5): `Retry-After` on 503.
    pub retry_after_secs: u64,
}

impl fmt::Debug for IngestConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IngestConfig")
            .field("common", &self.common)
            .field("listen_addr", &self.listen_addr)
            .field("verifier", &self.verifier)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish_non_exhaustive()
    }
}

impl IngestConfig {
    /// Reads and validates the variables; keys are parsed here, once.
    pub fn from_env(env: &Env) -> Result<IngestConfig, ConfigError> {
        let common = CommonConfig::from_env(env)?;
        let raw_keys = auth::split_keys(env.get("GONG_WEBHOOK_SECRETS").unwrap_or(""));
        let webhook_keys = raw_keys
            .iter()
            .enumerate()
            .map(|(index, raw)| auth::parse_public_key(index, raw))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| ConfigError::new("GONG_WEBHOOK_SECRETS", err.to_string()))?;
        let webhook_url = env.get("GONG_WEBHOOK_URL").map(str::to_string);
        if let Some(url) = &webhook_url {
            if auth::normalize_url(url).is_none() {
                return Err(ConfigError::new(
                    "GONG_WEBHOOK_URL",
                    "must be an absolute URL",
                ));
            }
        }
        if !webhook_keys.is_empty() && webhook_url.is_none() {
            return Err(ConfigError::new(
                "GONG_WEBHOOK_URL",
                "is required when GONG_WEBHOOK_SECRETS is set (it is checked against the webhook_url claim)",
            ));
        }
        let url_tokens = env.list("GONG_WEBHOOK_URL_TOKENS");
        if url_tokens
            .iter()
            .any(|token| token.len() < 16 || token.contains('/'))
        {
            return Err(ConfigError::new(
                "GONG_WEBHOOK_URL_TOKENS",
                "each token must be at least 16 characters and contain no '/'",
            ));
        }
        if webhook_keys.is_empty() && url_tokens.is_empty() {
            return Err(ConfigError::new(
                "GONG_WEBHOOK_SECRETS",
                "set GONG_WEBHOOK_SECRETS (signed-JWT mode) or GONG_WEBHOOK_URL_TOKENS (URL mode), or both",
            ));
        }
        let jwt_leeway = env.duration_or("INGEST_JWT_LEEWAY", Duration::from_secs(60))?;
        Ok(IngestConfig {
            common,
            listen_addr: env.socket_addr_or("INGEST_ADDR", "0.0.0.0:8080")?,
            verifier: auth::Verifier::new(webhook_keys, webhook_url, &url_tokens, jwt_leeway),
            max_body_bytes: env.positive_or("INGEST_MAX_BODY_BYTES", 5 * 1024 * 1024)?,
            max_concurrent_requests: env.positive_or("INGEST_MAX_CONCURRENT_REQUESTS", 1024)?,
            max_connections: env.positive_or("INGEST_MAX_CONNECTIONS", 10_000)?,
            header_timeout: env.duration_or("INGEST_HEADER_TIMEOUT", Duration::from_secs(10))?,
            body_timeout: env.duration_or("INGEST_BODY_TIMEOUT", Duration::from_secs(30))?,
            publish_timeout: env.duration_or("INGEST_PUBLISH_TIMEOUT", Duration::from_secs(5))?,
            max_ack_inflight: env.positive_or("INGEST_MAX_ACK_INFLIGHT", 2048)?,
            shutdown_grace: env.duration_or("INGEST_SHUTDOWN_GRACE", Duration::from_secs(25))?,
            retry_after_secs: env.positive_or("INGEST_RETRY_AFTER_SECS", 5)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gong_testkit::webhook::TestKey;

    #[test]
    fn needs_an_auth_mode() {
        let err = IngestConfig::from_env(&Env::from_pairs::<&str, &str>([])).unwrap_err();
        assert_eq!(err.var, "GONG_WEBHOOK_SECRETS");
    }

    #[test]
    fn jwt_mode_needs_the_webhook_url() {
        let env = Env::from_pairs([(
            "GONG_WEBHOOK_SECRETS",
            TestKey::rule_a().public_base64_der(),
        )]);
        assert_eq!(
            IngestConfig::from_env(&env).unwrap_err().var,
            "GONG_WEBHOOK_URL"
        );
    }

    #[test]
    fn bad_keys_are_named_and_tokens_never_printed() {
        let env = Env::from_pairs([
            ("GONG_WEBHOOK_SECRETS", "bm90IGEga2V5"),
            ("GONG_WEBHOOK_URL", "https://x.example/webhooks/gong"),
        ]);
        assert_eq!(
            IngestConfig::from_env(&env).unwrap_err().var,
            "GONG_WEBHOOK_SECRETS"
        );
        let env = Env::from_pairs([("GONG_WEBHOOK_URL_TOKENS", "super-secret-token-123")]);
        let config = IngestConfig::from_env(&env).unwrap();
        assert!(!format!("{config:?}").contains("super-secret"));
    }

    #[test]
    fn short_tokens_are_refused() {
        let env = Env::from_pairs([("GONG_WEBHOOK_URL_TOKENS", "short")]);
        assert_eq!(
            IngestConfig::from_env(&env).unwrap_err().var,
            "GONG_WEBHOOK_URL_TOKENS"
        );
    }
}
