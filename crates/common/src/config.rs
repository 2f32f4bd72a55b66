//! Typed configuration from environment variables (12-factor, as Kubernetes passes it).
//!
//! Every binary reads its variables once, through an [`Env`], before any I/O. Errors name the
//! variable and what was wrong with it, never its value (values may be secrets).

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use crate::streams::StreamSettings;

/// A configuration variable is missing or invalid. `main` maps it to exit code 64.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {var}: {reason}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub var: String,
    /// What is wrong with it (never its value).
    pub reason: String,
}

impl ConfigError {
    /// Builds an error about `var`.
    pub fn new(var: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            var: var.into(),
            reason: reason.into(),
        }
    }
}

/// A source of variables: the process environment, or a map in tests.
pub struct Env {
    vars: HashMap<String, String>,
}

impl Env {
    /// Snapshot of the process environment.
    pub fn from_process() -> Env {
        Env {
            vars: std::env::vars().collect(),
        }
    }

    /// Variables from pairs, for tests and for tools that build a config in code.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Env {
        Env {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// Sets or overrides one variable.
    pub fn set(&mut self, var: impl Into<String>, value: impl Into<String>) {
        self.vars.insert(var.into(), value.into());
    }

    /// The raw value; empty strings count as unset.
    pub fn get(&self, var: &str) -> Option<&str> {
        self.vars
            .get(var)
            .map(|value| value.trim())
            .filter(|value| !value.is_empty())
    }

    /// A string with a default.
    pub fn string_or(&self, var: &str, default: &str) -> String {
        self.get(var).unwrap_or(default).to_string()
    }

    /// A required string.
    pub fn required(&self, var: &str) -> Result<String, ConfigError> {
        self.get(var)
            .map(str::to_string)
            .ok_or_else(|| ConfigError::new(var, "is required but not set"))
    }

    /// Any `FromStr` value with a default.
    pub fn parse_or<T>(&self, var: &str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        match self.get(var) {
            None => Ok(default),
            Some(raw) => raw
                .parse()
                .map_err(|err| ConfigError::new(var, format!("cannot be parsed: {err}"))),
        }
    }

    /// A positive integer with a default.
    pub fn positive_or<T>(&self, var: &str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + Default,
        T::Err: fmt::Display,
    {
        let value = self.parse_or(var, default)?;
        if value <= T::default() {
            return Err(ConfigError::new(var, "must be greater than zero"));
        }
        Ok(value)
    }

    /// A socket address such as `0.0.0.0:8080`.
    pub fn socket_addr_or(&self, var: &str, default: &str) -> Result<SocketAddr, ConfigError> {
        let raw = self.get(var).unwrap_or(default);
        raw.parse().map_err(|_| {
            ConfigError::new(var, "must be an address with a port, such as 0.0.0.0:8080")
        })
    }

    /// A human duration such as `60s`, `5m`, `30d`.
    pub fn duration_or(&self, var: &str, default: Duration) -> Result<Duration, ConfigError> {
        match self.get(var) {
            None => Ok(default),
            Some(raw) => humantime::parse_duration(raw).map_err(|err| {
                ConfigError::new(var, format!("must be a duration such as 60s or 5m: {err}"))
            }),
        }
    }

    /// A boolean (`true`/`false`/`1`/`0`/`yes`/`no`).
    pub fn bool_or(&self, var: &str, default: bool) -> Result<bool, ConfigError> {
        match self.get(var).map(str::to_ascii_lowercase).as_deref() {
            None => Ok(default),
            Some("true" | "1" | "yes" | "on") => Ok(true),
            Some("false" | "0" | "no" | "off") => Ok(false),
            Some(_) => Err(ConfigError::new(var, "must be true or false")),
        }
    }

    /// A list separated by commas or newlines; blank items are dropped.
    pub fn list(&self, var: &str) -> Vec<String> {
        split_list(self.get(var).unwrap_or(""))
    }
}

/// Splits a comma- or newline-separated list, trimming items and dropping blank ones.
pub fn split_list(raw: &str) -> Vec<String> {
    raw.split([',', '\n'])
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_string)
        .collect()
}

/// Log output format (`LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, for log collectors.
    Json,
    /// Human-readable lines.
    Pretty,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        match raw.to_ascii_lowercase().as_str() {
            "json" => Ok(LogFormat::Json),
            "pretty" | "text" => Ok(LogFormat::Pretty),
            _ => Err("expected json or pretty".to_string()),
        }
    }
}

/// Settings every binary shares.
#[derive(Debug, Clone)]
pub struct CommonConfig {
    /// `NATS_URL` (default `nats://127.0.0.1:4222`); may hold several comma-separated URLs.
    pub nats_url: String,
    /// `ADMIN_ADDR` (default `0.0.0.0:9090`): `/healthz`, `/readyz`, `/metrics`.
    pub admin_addr: SocketAddr,
    /// `LOG_FORMAT` (default `json`).
    pub log_format: LogFormat,
    /// Stream settings used when provisioning (`STREAM_*`).
    pub streams: StreamSettings,
    /// `NATS_REQUEST_TIMEOUT` (default `5s`): JetStream API and publish-ack timeout.
    pub nats_request_timeout: Duration,
}

impl CommonConfig {
    /// Reads the shared variables.
    pub fn from_env(env: &Env) -> Result<CommonConfig, ConfigError> {
        let nats_url = env.string_or("NATS_URL", "nats://127.0.0.1:4222");
        for url in split_list(&nats_url) {
            if !(url.starts_with("nats://") || url.starts_with("tls://") || !url.contains("://")) {
                return Err(ConfigError::new(
                    "NATS_URL",
                    "must be nats:// or tls:// URLs, comma-separated",
                ));
            }
        }
        Ok(CommonConfig {
            nats_url,
            admin_addr: env.socket_addr_or("ADMIN_ADDR", "0.0.0.0:9090")?,
            log_format: env.parse_or("LOG_FORMAT", LogFormat::Json)?,
            streams: StreamSettings::from_env(env)?,
            nats_request_timeout: env
                .duration_or("NATS_REQUEST_TIMEOUT", Duration::from_secs(5))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_when_unset() {
        let config = CommonConfig::from_env(&Env::from_pairs::<&str, &str>([])).unwrap();
        assert_eq!(config.nats_url, "nats://127.0.0.1:4222");
        assert_eq!(config.admin_addr.port(), 9090);
        assert_eq!(config.log_format, LogFormat::Json);
    }

    #[test]
    fn errors_name_the_variable_not_the_value() {
        let env = Env::from_pairs([("ADMIN_ADDR", "s3cr3t-not-an-addr")]);
        let err = CommonConfig::from_env(&env).unwrap_err();
        assert_eq!(err.var, "ADMIN_ADDR");
        assert!(!err.to_string().contains("s3cr3t"));
    }

    #[test]
    fn durations_and_lists_parse() {
        let env = Env::from_pairs([("D", "90s"), ("L", "a, b\nc,,")]);
        assert_eq!(
            env.duration_or("D", Duration::ZERO).unwrap(),
            Duration::from_secs(90)
        );
        assert_eq!(env.list("L"), vec!["a", "b", "c"]);
        assert!(env.duration_or("L", Duration::ZERO).is_err());
    }
}
