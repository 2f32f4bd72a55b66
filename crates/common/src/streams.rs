//! Idempotent provisioning of the JetStream streams and KV buckets.
//!
//! Each binary calls [`ensure_streams`] at start with the streams it touches. A stream that is
//! missing is created; one that exists keeps its subjects and has its limits (max age, duplicate
//! window) brought to the configured values, so a redeploy with new settings takes effect.

use std::time::Duration;

use async_nats::jetstream::{self, stream};

use crate::config::{ConfigError, Env};
use crate::names;

/// Limits of the three streams, from `STREAM_*` variables.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// `STREAM_REPLICAS` (default 1; 3 in a production cluster).
    pub replicas: usize,
    /// `STREAM_RAW_MAX_AGE` (default 365d): the source of truth is kept long.
    pub raw_max_age: Duration,
    /// `STREAM_ENRICHED_MAX_AGE` (default 30d): derived, rebuildable by replay.
    pub enriched_max_age: Duration,
    /// `STREAM_DLQ_MAX_AGE` (default 90d).
    pub dlq_max_age: Duration,
    /// `STREAM_DUPLICATE_WINDOW` (default 24h): exact repeats within it are stored once.
    pub duplicate_window: Duration,
    /// `STREAM_STORAGE` `file` (default) or `memory`.
    pub storage: stream::StorageType,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            replicas: 1,
            raw_max_age: Duration::from_secs(365 * 24 * 3600),
            enriched_max_age: Duration::from_secs(30 * 24 * 3600),
            dlq_max_age: Duration::from_secs(90 * 24 * 3600),
            duplicate_window: Duration::from_secs(24 * 3600),
            storage: stream::StorageType::File,
        }
    }
}

impl StreamSettings {
    /// Reads `STREAM_*` variables over the defaults.
    pub fn from_env(env: &Env) -> Result<StreamSettings, ConfigError> {
        let defaults = StreamSettings::default();
        let replicas = env.positive_or("STREAM_REPLICAS", defaults.replicas)?;
        if replicas > 5 {
            return Err(ConfigError::new(
                "STREAM_REPLICAS",
                "must be between 1 and 5",
            ));
        }
        let storage = match env.string_or("STREAM_STORAGE", "file").as_str() {
            "file" => stream::StorageType::File,
            "memory" => stream::StorageType::Memory,
            _ => return Err(ConfigError::new("STREAM_STORAGE", "must be file or memory")),
        };
        Ok(StreamSettings {
            replicas,
            raw_max_age: env.duration_or("STREAM_RAW_MAX_AGE", defaults.raw_max_age)?,
            enriched_max_age: env
                .duration_or("STREAM_ENRICHED_MAX_AGE", defaults.enriched_max_age)?,
            dlq_max_age: env.duration_or("STREAM_DLQ_MAX_AGE", defaults.dlq_max_age)?,
            duplicate_window: env
                .duration_or("STREAM_DUPLICATE_WINDOW", defaults.duplicate_window)?,
            storage,
        })
    }
}

/// One of the pipeline's streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// `GONG_RAW`.
    Raw,
    /// `GONG_ENRICHED`.
    Enriched,
    /// `GONG_DLQ`.
    Dlq,
}

impl StreamKind {
    /// All streams.
    pub const ALL: [StreamKind; 3] = [StreamKind::Raw, StreamKind::Enriched, StreamKind::Dlq];

    /// The stream's name.
    pub fn name(self) -> &'static str {
        match self {
            StreamKind::Raw => names::STREAM_RAW,
            StreamKind::Enriched => names::STREAM_ENRICHED,
            StreamKind::Dlq => names::STREAM_DLQ,
        }
    }

    /// The stream's configuration under `settings`.
    pub fn config(self, settings: &StreamSettings) -> stream::Config {
        let (subjects, max_age, description) = match self {
            StreamKind::Raw => (
                names::SUBJECTS_RAW,
                settings.raw_max_age,
                "Gong webhook bodies exactly as received (source of truth)",
            ),
            StreamKind::Enriched => (
                names::SUBJECTS_ENRICHED,
                settings.enriched_max_age,
                "Gong calls enriched through the REST API (derived, rebuildable)",
            ),
            StreamKind::Dlq => (
                names::SUBJECTS_DLQ,
                settings.dlq_max_age,
                "events that need a human; reason in headers, payload untouched",
            ),
        };
        stream::Config {
            name: self.name().to_string(),
            subjects: vec![subjects.to_string()],
            description: Some(description.to_string()),
            storage: settings.storage,
            num_replicas: settings.replicas,
            max_age,
            duplicate_window: settings.duplicate_window.min(max_age),
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            deny_delete: false,
            allow_direct: true,
            ..Default::default()
        }
    }
}

/// Provisioning failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The stream could not be created or read.
    #[error("cannot create stream {stream}: {source}")]
    CreateStream {
        /// Stream name.
        stream: String,
        /// Cause.
        #[source]
        source: async_nats::Error,
    },
    /// The stream exists but could not be updated to the configured limits.
    #[error("cannot update stream {stream}: {source}")]
    UpdateStream {
        /// Stream name.
        stream: String,
        /// Cause.
        #[source]
        source: async_nats::Error,
    },
    /// A KV bucket could not be created or opened.
    #[error("cannot open key-value bucket {bucket}: {source}")]
    KeyValue {
        /// Bucket name.
        bucket: String,
        /// Cause.
        #[source]
        source: async_nats::Error,
    },
}

impl ProvisionError {
    /// The underlying NATS error.
    fn cause(&self) -> &async_nats::Error {
        match self {
            ProvisionError::CreateStream { source, .. }
            | ProvisionError::UpdateStream { source, .. }
            | ProvisionError::KeyValue { source, .. } => source,
        }
    }

    /// True when a later attempt may succeed: timeouts, no responders, a cluster still forming
    /// or electing leaders, a stream or bucket a peer is creating right now. False for what
    /// only an operator can fix: permissions, a configuration the server refuses (a stream of
    /// the same name with other settings, overlapping subjects, too many replicas for the
    /// cluster), limits of the account.
    pub fn is_retryable(&self) -> bool {
        is_transient(self.cause().as_ref())
    }
}

/// JetStream API error codes that no retry fixes (nats-server's `JSErrCodes`).
const PERMANENT_API_ERRORS: &[u64] = &[
    10002, // account resources exceeded
    10003, // bad request
    10025, // invalid JSON
    10027, // maximum streams limit
    10035, // no account
    10039, // JetStream not enabled for the account
    10052, // stream configuration invalid
    10056, // stream mismatch
    10058, // stream name already in use with a different configuration
    10061, // replicas cannot be changed
    10065, // subjects overlap with an existing stream
    10074, // replicas > 1 not supported in non-clustered mode
];

/// Classifies a NATS error chain: false for permission violations and the API errors in
/// [`PERMANENT_API_ERRORS`], true otherwise (timeouts, no responders, cluster not ready...).
pub fn is_transient(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut text = String::new();
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(err) = current {
        text.push_str(&err.to_string());
        text.push('\n');
        current = err.source();
    }
    let lower = text.to_ascii_lowercase();
    if lower.contains("permission") || lower.contains("authorization violation") {
        return false;
    }
    let code = lower.split("error code ").skip(1).find_map(|rest| {
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u64>().ok()
    });
    !code.is_some_and(|code| PERMANENT_API_ERRORS.contains(&code))
}

/// A start-up step's error that can say whether retrying may help.
pub trait Retryable {
    /// True when the same step may succeed later.
    fn is_retryable(&self) -> bool;
}

impl Retryable for ProvisionError {
    fn is_retryable(&self) -> bool {
        ProvisionError::is_retryable(self)
    }
}

/// Runs a start-up step (connect, provision streams, buckets and consumers) until it succeeds,
/// retrying retryable errors with capped exponential backoff while `readiness` reports the
/// step as a fault (so `/readyz` says why the stage is not ready). A fresh cluster answers
/// `jetstream request timed out` or `no stream found` for a while; a stage that exits then
/// only gets restarted with growing back-off. Returns the first error no retry can fix, or
/// `Ok(None)` when `shutdown` is cancelled first.
pub async fn provision_with_retry<T, E, F, Fut>(
    step: &str,
    readiness: &crate::admin::Readiness,
    shutdown: &tokio_util::sync::CancellationToken,
    mut attempt: F,
) -> Result<Option<T>, E>
where
    E: Retryable + std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut backoff = Duration::from_millis(200);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            outcome = attempt() => outcome,
        };
        match outcome {
            Ok(value) => {
                if attempts > 1 {
                    tracing::info!(step, attempts, "provisioned after retries");
                }
                readiness.set_fault(None);
                return Ok(Some(value));
            }
            Err(err) if err.is_retryable() => {
                tracing::warn!(step, attempts, error = %err, backoff_ms = backoff.as_millis() as u64, "provisioning failed, retrying");
                readiness.set_fault(Some(format!("provisioning ({step}): {err}")));
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(err) => return Err(err),
        }
    }
}

/// Creates the streams that are missing and brings the limits of existing ones to `settings`.
pub async fn ensure_streams(
    jetstream: &jetstream::Context,
    settings: &StreamSettings,
    kinds: &[StreamKind],
) -> Result<(), ProvisionError> {
    for kind in kinds {
        let wanted = kind.config(settings);
        let mut existing = jetstream
            .get_or_create_stream(wanted.clone())
            .await
            .map_err(|err| ProvisionError::CreateStream {
                stream: wanted.name.clone(),
                source: err.into(),
            })?;
        let info = existing
            .info()
            .await
            .map_err(|err| ProvisionError::CreateStream {
                stream: wanted.name.clone(),
                source: err.into(),
            })?;
        let current = &info.config;
        if current.max_age != wanted.max_age
            || current.duplicate_window != wanted.duplicate_window
            || current.num_replicas != wanted.num_replicas
        {
            let mut updated = current.clone();
            updated.max_age = wanted.max_age;
            updated.duplicate_window = wanted.duplicate_window;
            updated.num_replicas = wanted.num_replicas;
            jetstream
                .update_stream(updated)
                .await
                .map_err(|err| ProvisionError::UpdateStream {
                    stream: wanted.name.clone(),
                    source: err.into(),
                })?;
            tracing::info!(stream = %wanted.name, "stream limits updated");
        }
    }
    Ok(())
}

/// Creates the durable pull consumer `wanted` on `stream`, or updates it in place. When the
/// server refuses the change (some settings cannot change on an existing consumer), the
/// existing consumer is kept as it is, with a warning, rather than refusing to start. The error
/// is the create's when there is no consumer to keep.
pub async fn ensure_pull_consumer(
    stream: &stream::Stream,
    wanted: jetstream::consumer::pull::Config,
) -> Result<jetstream::consumer::PullConsumer, async_nats::Error> {
    let name = wanted.durable_name.clone().unwrap_or_default();
    match stream.create_consumer(wanted).await {
        Ok(consumer) => Ok(consumer),
        Err(create_error) => match stream.get_consumer(&name).await {
            Ok(consumer) => {
                tracing::warn!(error = %create_error, consumer = %name, "cannot update the consumer; keeping it with its own settings");
                Ok(consumer)
            }
            Err(_) => Err(create_error.into()),
        },
    }
}

/// Creates (if missing) and opens a KV bucket.
///
/// `jetstream.create_key_value` fails against nats-server 2.9 (it reads an account-info field the
/// old server does not send), so the bucket's backing stream is created by hand with the settings
/// a KV bucket needs, then opened with `get_key_value`.
///
/// An existing bucket has its max age, history (values kept per key) and replicas brought to
/// the values given, so a redeploy with a longer `SNOWFLAKE_VERIFY_TIMEOUT` or
/// `STREAM_ENRICHED_MAX_AGE` keeps records as long as the new value says.
///
/// The bucket is made **without direct gets** (`allow_direct: false`), and an existing bucket
/// that has them is updated: with direct gets any replica of an R3 bucket may answer a read,
/// including a follower that has not yet applied the newest write, and the buckets hold
/// decisions (range claims, the Gong quota, leases). Without them async-nats reads through
/// `STREAM.MSG.GET`, which the stream leader answers.
pub async fn ensure_kv(
    jetstream: &jetstream::Context,
    bucket: &str,
    history: i64,
    max_age: Duration,
    settings: &StreamSettings,
) -> Result<jetstream::kv::Store, ProvisionError> {
    let kv_error = |err: async_nats::Error| ProvisionError::KeyValue {
        bucket: bucket.to_string(),
        source: err,
    };
    let config = stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: history,
        max_age,
        discard: stream::DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: false,
        storage: settings.storage,
        num_replicas: settings.replicas,
        duplicate_window: Duration::from_secs(120).min(if max_age.is_zero() {
            Duration::from_secs(120)
        } else {
            max_age
        }),
        ..Default::default()
    };
    let mut existing = jetstream
        .get_or_create_stream(config.clone())
        .await
        .map_err(|err| kv_error(err.into()))?;
    let info = existing.info().await.map_err(|err| kv_error(err.into()))?;
    let current = &info.config;
    if current.allow_direct
        || current.num_replicas != config.num_replicas
        || current.max_age != config.max_age
        || current.max_messages_per_subject != config.max_messages_per_subject
        || current.duplicate_window != config.duplicate_window
    {
        let mut updated = current.clone();
        updated.allow_direct = false;
        updated.num_replicas = config.num_replicas;
        updated.max_age = config.max_age;
        updated.max_messages_per_subject = config.max_messages_per_subject;
        // Never longer than the max age (the server refuses that).
        updated.duplicate_window = config.duplicate_window;
        jetstream
            .update_stream(updated)
            .await
            .map_err(|err| kv_error(err.into()))?;
        tracing::info!(
            bucket,
            max_age_secs = config.max_age.as_secs(),
            history = config.max_messages_per_subject,
            replicas = config.num_replicas,
            "key-value bucket updated to the configured settings; reads go through the stream leader"
        );
    }
    jetstream
        .get_key_value(bucket)
        .await
        .map_err(|err| kv_error(err.into()))
}

/// Listing a bucket's keys failed.
#[derive(Debug, thiserror::Error)]
pub enum ListKeysError {
    /// `STREAM.INFO` with a subjects filter failed (NATS unreachable, no leader, an error page).
    #[error("cannot list the keys of bucket {bucket}: {source}")]
    Info {
        /// Bucket name.
        bucket: String,
        /// Cause.
        #[source]
        source: async_nats::Error,
    },
    /// The listing (every page) took longer than allowed.
    #[error("listing the keys of bucket {bucket} timed out after {timeout:?}")]
    TimedOut {
        /// Bucket name.
        bucket: String,
        /// The time allowed.
        timeout: Duration,
    },
}

/// The keys of KV bucket `bucket` that start with `prefix` (`""`: every key), read from
/// `stream` (the bucket's backing stream `KV_<bucket>`) with `STREAM.INFO` and a subjects
/// filter, every page, within `timeout`.
///
/// `STREAM.INFO` is answered by the stream leader from what it has applied, so the list holds
/// every key whose write was acknowledged (a leader elected a moment ago may lag; a leaderless
/// group's members all answer, each from its own state). `kv::Store::keys` instead reads
/// through an ordered consumer, which may sit on a follower. A key whose last entry is a
/// delete or purge marker is listed too. The order is the server's.
pub async fn list_kv_keys(
    stream: &stream::Stream,
    bucket: &str,
    prefix: &str,
    timeout: Duration,
) -> Result<Vec<String>, ListKeysError> {
    let subject_prefix = format!("$KV.{bucket}.");
    // A filter can only end in a whole-token wildcard: a prefix ending inside a token is
    // filtered here.
    let filter = match prefix.rfind('.') {
        Some(dot) => format!("{subject_prefix}{}>", &prefix[..=dot]),
        None => format!("{subject_prefix}>"),
    };
    let info_error = |err: async_nats::Error| ListKeysError::Info {
        bucket: bucket.to_string(),
        source: err,
    };
    let subjects = tokio::time::timeout(timeout, async {
        use futures::TryStreamExt;
        let listing = stream
            .info_with_subjects(&filter)
            .await
            .map_err(|err| info_error(err.into()))?;
        listing
            .try_collect::<Vec<(String, usize)>>()
            .await
            .map_err(|err| info_error(err.into()))
    })
    .await
    .map_err(|_| ListKeysError::TimedOut {
        bucket: bucket.to_string(),
        timeout,
    })??;
    Ok(subjects
        .into_iter()
        .filter_map(|(subject, _)| {
            let key = subject.strip_prefix(&subject_prefix)?;
            key.starts_with(prefix).then(|| key.to_string())
        })
        .collect())
}
