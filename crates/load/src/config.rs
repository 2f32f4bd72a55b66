//! gong-load configuration, read once from the environment before any I/O.

use std::path::PathBuf;
use std::time::Duration;

use gong_common::{CommonConfig, ConfigError, Env};

use crate::parquet_writer::WriterSettings;
use crate::snowflake::SnowpipeConfig;

/// Everything gong-load needs. `Debug` never prints keys.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Shared settings (`NATS_URL`, `ADMIN_ADDR`, `LOG_FORMAT`, `STREAM_*`).
    pub common: CommonConfig,
    /// `STAGE_URL` (default `./stage`): `file:///path`, a local path, `s3://bucket/prefix`,
    /// `gs://bucket/prefix`, `az://container/prefix`.
    pub stage_url: String,
    /// `AWS_*` variables given to the S3 store (endpoint, allow-http, keys, region).
    pub aws: Vec<(String, String)>,
    /// `LOAD_FLUSH_MAX_ROWS` (default 10000): calls rows (events) per file.
    pub flush_max_rows: usize,
    /// `LOAD_FLUSH_MAX_BYTES` (default 128 MiB): compressed bytes of a range's files.
    pub flush_max_bytes: usize,
    /// `LOAD_FLUSH_MAX_AGE` (default `60s`): a batch is flushed this long after its first
    /// event, with or without new traffic.
    pub flush_max_age: Duration,
    /// `LOAD_ROW_GROUP_ROWS` (default 100000): rows per Parquet row group (bounds memory).
    pub row_group_rows: usize,
    /// `LOAD_ZSTD_LEVEL` (default 3).
    pub zstd_level: i32,
    /// `LOAD_SPOOL_DIR` (default the system temp dir): where files are encoded before upload.
    pub spool_dir: Option<PathBuf>,
    /// `LOAD_MAX_ACK_PENDING` (default twice `LOAD_FLUSH_MAX_ROWS`, at least 1000); must be at
    /// least `LOAD_FLUSH_MAX_ROWS` or a batch could never fill.
    pub max_ack_pending: i64,
    /// `LOAD_ACK_WAIT` (default `LOAD_FLUSH_MAX_AGE` + 2m); must exceed the flush age.
    pub ack_wait: Duration,
    /// `LOAD_FETCH_BATCH` (default 256): messages per pull request.
    pub fetch_batch: usize,
    /// `LOAD_LEASE_TTL` (default `10s`): a standby takes over the `load` lease when the holder
    /// has not renewed it for this long (a holder that shuts down hands it over at once).
    pub lease_ttl: Duration,
    /// `LOAD_RETRY_MAX_BACKOFF` (default `30s`): longest wait between stage retries.
    pub retry_max_backoff: Duration,
    /// `LOAD_SHUTDOWN_GRACE` (default `25s`): time to flush the open batch on shutdown.
    pub shutdown_grace: Duration,
    /// Snowpipe REST mode (notifications, load verification), when `SNOWFLAKE_*` are set.
    pub snowpipe: Option<SnowpipeConfig>,
    /// `LOAD_TEST_LEASE_JOB` (tests only, default `load`): the lease this loader runs for.
    /// Two loaders with different jobs are both active at once, which tests use to check that
    /// safety does not rest on the lease (claims and bytes still keep files exactly once).
    pub lease_job: String,
    /// `LOAD_TEST_CRASH_AFTER_WRITE` (tests only): abort after the files are durable and
    /// before any ack.
    pub crash_after_write: bool,
}

impl LoadConfig {
    /// Reads and validates the variables; the Snowflake key is parsed here, once.
    pub fn from_env(env: &Env) -> Result<LoadConfig, ConfigError> {
        let common = CommonConfig::from_env(env)?;
        let stage_url = env.string_or("STAGE_URL", "./stage");
        if let Some((scheme, rest)) = stage_url.split_once("://") {
            if !matches!(
                scheme,
                "file" | "s3" | "s3a" | "gs" | "az" | "azure" | "abfs"
            ) {
                return Err(ConfigError::new(
                    "STAGE_URL",
                    "must be file:///path, s3://bucket/prefix, gs://bucket/prefix or az://container/prefix",
                ));
            }
            if rest.trim_matches('/').is_empty() {
                return Err(ConfigError::new("STAGE_URL", "names no bucket or path"));
            }
            if rest.contains('@') {
                return Err(ConfigError::new(
                    "STAGE_URL",
                    "must not carry credentials; use the AWS_*/GOOGLE_*/AZURE_* variables",
                ));
            }
        }
        let aws = crate::stage::AWS_VARS
            .iter()
            .filter_map(|var| {
                env.get(var)
                    .map(|value| (var.to_string(), value.to_string()))
            })
            .collect();
        let flush_max_rows: usize = env.positive_or("LOAD_FLUSH_MAX_ROWS", 10_000)?;
        let flush_max_bytes: usize = env.positive_or("LOAD_FLUSH_MAX_BYTES", 128 * 1024 * 1024)?;
        let flush_max_age = env.duration_or("LOAD_FLUSH_MAX_AGE", Duration::from_secs(60))?;
        if flush_max_age.is_zero() {
            return Err(ConfigError::new(
                "LOAD_FLUSH_MAX_AGE",
                "must be greater than zero",
            ));
        }
        let max_ack_pending: i64 = env.positive_or(
            "LOAD_MAX_ACK_PENDING",
            (2 * flush_max_rows as i64).max(1000),
        )?;
        if (max_ack_pending as usize) < flush_max_rows {
            return Err(ConfigError::new(
                "LOAD_MAX_ACK_PENDING",
                "must be at least LOAD_FLUSH_MAX_ROWS",
            ));
        }
        let ack_wait =
            env.duration_or("LOAD_ACK_WAIT", flush_max_age + Duration::from_secs(120))?;
        if ack_wait <= flush_max_age {
            return Err(ConfigError::new(
                "LOAD_ACK_WAIT",
                "must be longer than LOAD_FLUSH_MAX_AGE",
            ));
        }
        let lease_ttl = env.duration_or("LOAD_LEASE_TTL", Duration::from_secs(10))?;
        if lease_ttl < Duration::from_secs(1) {
            return Err(ConfigError::new("LOAD_LEASE_TTL", "must be at least 1s"));
        }
        let lease_job = env.string_or("LOAD_TEST_LEASE_JOB", gong_common::names::LEASE_LOAD);
        if lease_job.is_empty()
            || !lease_job
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(ConfigError::new(
                "LOAD_TEST_LEASE_JOB",
                "must be letters, digits, _ or -",
            ));
        }
        let zstd_level = env.parse_or("LOAD_ZSTD_LEVEL", 3i32)?;
        if !(1..=22).contains(&zstd_level) {
            return Err(ConfigError::new(
                "LOAD_ZSTD_LEVEL",
                "must be between 1 and 22",
            ));
        }
        Ok(LoadConfig {
            common,
            stage_url,
            aws,
            flush_max_rows,
            flush_max_bytes,
            flush_max_age,
            row_group_rows: env.positive_or("LOAD_ROW_GROUP_ROWS", 100_000)?,
            zstd_level,
            spool_dir: env.get("LOAD_SPOOL_DIR").map(PathBuf::from),
            max_ack_pending,
            ack_wait,
            fetch_batch: env.positive_or("LOAD_FETCH_BATCH", 256)?,
            lease_ttl,
            retry_max_backoff: env
                .duration_or("LOAD_RETRY_MAX_BACKOFF", Duration::from_secs(30))?,
            shutdown_grace: env.duration_or("LOAD_SHUTDOWN_GRACE", Duration::from_secs(25))?,
            snowpipe: SnowpipeConfig::from_env(env)?,
            lease_job,
            crash_after_write: env.bool_or("LOAD_TEST_CRASH_AFTER_WRITE", false)?,
        })
    }

    /// The variables the stage is opened with.
    pub fn stage_env(&self) -> Env {
        Env::from_pairs(self.aws.clone())
    }

    /// Encoding settings.
    pub fn writer_settings(&self) -> WriterSettings {
        WriterSettings {
            row_group_rows: self.row_group_rows,
            zstd_level: self.zstd_level,
            spool_dir: self.spool_dir.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_sane() {
        let config = LoadConfig::from_env(&Env::from_pairs::<&str, &str>([])).unwrap();
        assert_eq!(config.stage_url, "./stage");
        assert_eq!(config.flush_max_age, Duration::from_secs(60));
        assert!(config.ack_wait > config.flush_max_age);
        assert!(config.max_ack_pending as usize >= config.flush_max_rows);
        assert!(config.snowpipe.is_none());
    }

    #[test]
    fn inconsistent_limits_name_the_variable() {
        let env = Env::from_pairs([
            ("LOAD_FLUSH_MAX_ROWS", "5000"),
            ("LOAD_MAX_ACK_PENDING", "10"),
        ]);
        assert_eq!(
            LoadConfig::from_env(&env).unwrap_err().var,
            "LOAD_MAX_ACK_PENDING"
        );
        let env = Env::from_pairs([("LOAD_FLUSH_MAX_AGE", "60s"), ("LOAD_ACK_WAIT", "30s")]);
        assert_eq!(LoadConfig::from_env(&env).unwrap_err().var, "LOAD_ACK_WAIT");
        let env = Env::from_pairs([("STAGE_URL", "ftp://x/y")]);
        assert_eq!(LoadConfig::from_env(&env).unwrap_err().var, "STAGE_URL");
        let env = Env::from_pairs([("LOAD_FLUSH_MAX_AGE", "soon")]);
        assert_eq!(
            LoadConfig::from_env(&env).unwrap_err().var,
            "LOAD_FLUSH_MAX_AGE"
        );
    }

    fn snowpipe_env(dir: &std::path::Path, extra: &[(&str, &str)]) -> Env {
        let key = dir.join("key.p8");
        std::fs::write(
            &key,
            gong_testkit::webhook::TestKey::snowflake().private_pem(),
        )
        .unwrap();
        let mut env = Env::from_pairs([
            ("SNOWFLAKE_ACCOUNT", "xy12345"),
            ("SNOWFLAKE_USER", "loader"),
            ("SNOWFLAKE_PIPE", "DB.RAW.GONG_{TABLE}_PIPE"),
        ]);
        env.set("SNOWFLAKE_PRIVATE_KEY_PATH", key.display().to_string());
        for (var, value) in extra {
            env.set(*var, *value);
        }
        env
    }

    #[test]
    fn snowpipe_verification_settings_have_defaults_and_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let config = LoadConfig::from_env(&snowpipe_env(dir.path(), &[])).unwrap();
        let snowpipe = config.snowpipe.expect("snowpipe configured");
        assert_eq!(snowpipe.verify_timeout, Duration::from_secs(3600));
        assert_eq!(snowpipe.verify_poll, Duration::from_secs(30));
        let env = snowpipe_env(
            dir.path(),
            &[
                ("SNOWFLAKE_VERIFY_TIMEOUT", "90s"),
                ("SNOWFLAKE_VERIFY_POLL", "250ms"),
            ],
        );
        let snowpipe = LoadConfig::from_env(&env).unwrap().snowpipe.unwrap();
        assert_eq!(snowpipe.verify_timeout, Duration::from_secs(90));
        assert_eq!(snowpipe.verify_poll, Duration::from_millis(250));
        for (var, value) in [
            ("SNOWFLAKE_VERIFY_TIMEOUT", "0s"),
            ("SNOWFLAKE_VERIFY_TIMEOUT", "later"),
            ("SNOWFLAKE_VERIFY_POLL", "0s"),
            ("SNOWFLAKE_VERIFY_POLL", "10m"),
        ] {
            let env = snowpipe_env(dir.path(), &[(var, value)]);
            assert_eq!(
                LoadConfig::from_env(&env).unwrap_err().var,
                var,
                "{var}={value}"
            );
        }
        // The key never shows in Debug.
        let config = LoadConfig::from_env(&snowpipe_env(dir.path(), &[])).unwrap();
        assert!(!format!("{config:?}").contains("PRIVATE"));
    }
}
