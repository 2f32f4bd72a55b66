//! gong-enrich's errors, named after the step that failed.
//!
//! [`EnrichError`] stops the process (or a replay run). [`GongError`] is one failed call to
//! Gong's API, classified so the stage loop can decide the outcome of the events it holds;
//! [`QuotaError`] is the shared budget saying "not now".

use std::time::Duration;

/// A failure that stops gong-enrich or a replay run.
#[derive(Debug, thiserror::Error)]
pub enum EnrichError {
    /// The stage's task panicked or was cancelled: a bug, reported as a failure (exit 1).
    #[error("the stage task ended abnormally: {0}")]
    Task(#[source] tokio::task::JoinError),
    /// The admin server could not bind.
    #[error(transparent)]
    BindAdmin(#[from] gong_common::admin::BindError),
    /// NATS could not be reached.
    #[error(transparent)]
    Connect(#[from] gong_common::nats::ConnectError),
    /// Streams or the quota bucket could not be provisioned.
    #[error(transparent)]
    Provision(#[from] gong_common::streams::ProvisionError),
    /// The durable consumer (or a replay's ordered consumer) could not be created.
    #[error("cannot create consumer {consumer} on {stream}: {source}")]
    CreateConsumer {
        /// Stream name.
        stream: String,
        /// Consumer name.
        consumer: String,
        /// Cause.
        #[source]
        source: async_nats::Error,
    },
    /// The stream could not be read (replay range, stream info).
    #[error("cannot read stream {stream}: {source}")]
    ReadStream {
        /// Stream name.
        stream: String,
        /// Cause.
        #[source]
        source: async_nats::Error,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the http client: {0}")]
    HttpClient(#[source] reqwest::Error),
    /// Gong refused the credentials during a replay (the live service stays up and unready
    /// instead).
    #[error("gong refused the credentials: {0}")]
    GongAuth(String),
    /// An enriched event could not be published during a replay.
    #[error("cannot publish enriched event (raw stream_seq {stream_seq}): {source}")]
    Publish {
        /// Raw stream sequence.
        stream_seq: u64,
        /// Cause.
        #[source]
        source: PublishError,
    },
    /// The run (a replay or a sweep) was cancelled before its range was done.
    #[error("cancelled before the range was done")]
    Cancelled,
    /// Shutdown was requested while streams, buckets or the consumer were being provisioned.
    #[error("shutdown requested while provisioning")]
    Interrupted,
    /// Gong's listing failed during a sweep, after the in-process retries (the sweep's
    /// checkpoint keeps its place: run it again to resume).
    #[error("sweep: cannot list calls: {0}")]
    List(#[source] GongError),
    /// A swept call could not be published to `GONG_RAW`.
    #[error("sweep: cannot inject call {call_id}: {source}")]
    Inject {
        /// Gong call id.
        call_id: String,
        /// Cause.
        #[source]
        source: async_nats::Error,
    },
    /// The index of calls seen (`gong_calls_seen`) could not be read.
    #[error("sweep: cannot read the index of calls seen: {0}")]
    SeenIndex(#[source] async_nats::Error),
    /// A checkpoint register (the sweep's `gong_sweep`, an entity job's `gong_job_users` or
    /// `gong_job_scorecards`) could not be read or written.
    #[error("checkpoint: {0}")]
    Checkpoint(#[source] gong_common::register::RegisterError),
    /// Another process took the sweep lease (or wrote the checkpoint) while this one swept: it
    /// goes on from the checkpoint; this one stops.
    #[error("sweep: another process took the sweep over")]
    SweepTakenOver,
    /// A Gong fetch of an entity job (users, answered scorecards) failed after the in-process
    /// retries; the job tries again at its next tick.
    #[error("{job} job: cannot fetch from gong: {source}")]
    FetchEntities {
        /// `users` or `scorecards`.
        job: &'static str,
        /// Cause.
        #[source]
        source: GongError,
    },
    /// An entity event could not be published to `GONG_ENRICHED` (or its ack did not come).
    #[error("{job} job: cannot publish entity event {event_id}: {source}")]
    PublishEntity {
        /// `users` or `scorecards`.
        job: &'static str,
        /// The event's id (`Nats-Msg-Id`).
        event_id: String,
        /// Cause.
        #[source]
        source: PublishError,
    },
    /// `--since` is not before `--until`.
    #[error("sweep: the window is empty ({since} is not before {until})")]
    EmptyWindow {
        /// Start.
        since: chrono::DateTime<chrono::Utc>,
        /// End.
        until: chrono::DateTime<chrono::Utc>,
    },
}

impl gong_common::streams::Retryable for EnrichError {
    fn is_retryable(&self) -> bool {
        match self {
            EnrichError::Provision(err) => err.is_retryable(),
            EnrichError::CreateConsumer { source, .. } => {
                gong_common::streams::is_transient(source.as_ref())
            }
            _ => false,
        }
    }
}

/// An enriched event could not be stored on `GONG_ENRICHED`.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The event can never be stored: it is larger than the server's `max_payload` or the
    /// stream's maximum message size. Retrying would only spend Gong quota again.
    #[error("enriched event of {size} bytes is too large to publish: {detail}")]
    TooLarge {
        /// Payload bytes.
        size: usize,
        /// The limit as the client or server stated it.
        detail: String,
    },
    /// Sending the event or receiving its ack failed (NATS unreachable, timeout, no stream).
    #[error("cannot publish enriched event: {0}")]
    Send(#[source] async_nats::jetstream::context::PublishError),
}

impl PublishError {
    /// Classifies a JetStream publish failure of a `size`-byte payload.
    pub fn from_nats(size: usize, err: async_nats::jetstream::context::PublishError) -> Self {
        use async_nats::jetstream::context::PublishErrorKind;
        use async_nats::jetstream::ErrorCode;
        let too_large = match err.kind() {
            PublishErrorKind::MaxPayloadExceeded => true,
            PublishErrorKind::Other => std::error::Error::source(&err)
                .and_then(|source| source.downcast_ref::<async_nats::jetstream::Error>())
                .is_some_and(|js| js.error_code() == ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM),
            _ => false,
        };
        if too_large {
            PublishError::TooLarge {
                size,
                detail: err.to_string(),
            }
        } else {
            PublishError::Send(err)
        }
    }

    /// Can never succeed for this event: dead-letter it instead of retrying.
    pub fn is_permanent(&self) -> bool {
        matches!(self, PublishError::TooLarge { .. })
    }

    /// The dead-letter reason of a permanent failure.
    pub fn reason(&self) -> &'static str {
        match self {
            PublishError::TooLarge { .. } => "enriched_too_large",
            PublishError::Send(_) => "publish_failed",
        }
    }
}

/// The shared Gong budget cannot give a slot now.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QuotaError {
    /// Today's quota (for this priority) is spent; it resets at the next UTC midnight.
    #[error("daily gong quota spent; resets in {}s", resets_in.as_secs())]
    Exhausted {
        /// Time until the reset.
        resets_in: Duration,
    },
    /// Gong ordered a pause (429 with `Retry-After`) longer than we hold events for.
    #[error("gong asked to pause for {}s", remaining.as_secs())]
    Paused {
        /// Time left.
        remaining: Duration,
    },
    /// The quota bucket could not be read or written.
    #[error("cannot use quota bucket: {0}")]
    Store(String),
}

/// The JSON endpoint that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v2/calls/extensive` for call ids.
    Extensive,
    /// `POST /v2/calls/transcript`.
    Transcript,
    /// `POST /v2/calls/extensive` listing a date range (the sweep).
    List,
    /// `GET /v2/users` (the users job; the cursor in the query string).
    Users,
    /// `POST /v2/stats/activity/scorecards` (the answered scorecards job).
    Scorecards,
}

impl Endpoint {
    /// The path below the base URL.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Extensive | Endpoint::List => "/v2/calls/extensive",
            Endpoint::Transcript => "/v2/calls/transcript",
            Endpoint::Users => "/v2/users",
            Endpoint::Scorecards => "/v2/stats/activity/scorecards",
        }
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Extensive => "extensive",
            Endpoint::Transcript => "transcript",
            Endpoint::List => "list",
            Endpoint::Users => "users",
            Endpoint::Scorecards => "scorecards",
        }
    }
}

/// One request to Gong failed.
#[derive(Debug, thiserror::Error)]
pub enum GongError {
    /// 401 or 403: the access key is wrong or revoked (configuration fault).
    #[error("gong {} answered {status}: access key refused", endpoint.label())]
    Auth {
        /// Endpoint.
        endpoint: Endpoint,
        /// HTTP status.
        status: u16,
    },
    /// 429: rate limited; the pause was recorded in the shared quota.
    #[error("gong {} answered 429, retry after {}s", endpoint.label(), retry_after.as_secs())]
    RateLimited {
        /// Endpoint.
        endpoint: Endpoint,
        /// `Retry-After`.
        retry_after: Duration,
    },
    /// 5xx.
    #[error("gong {} answered {status}", endpoint.label())]
    Server {
        /// Endpoint.
        endpoint: Endpoint,
        /// HTTP status.
        status: u16,
    },
    /// Timeout, connection refused or reset, body cut by the transport.
    #[error("gong {} request failed: {source}", endpoint.label())]
    Transport {
        /// Endpoint.
        endpoint: Endpoint,
        /// Cause.
        #[source]
        source: reqwest::Error,
    },
    /// Another 4xx: Gong refused the request itself.
    #[error("gong {} answered {status}: {detail}", endpoint.label())]
    Rejected {
        /// Endpoint.
        endpoint: Endpoint,
        /// HTTP status.
        status: u16,
        /// Gong's first error message.
        detail: String,
    },
    /// A 2xx answer that is not the documented JSON.
    #[error("gong {} answer is malformed: {detail}", endpoint.label())]
    Malformed {
        /// Endpoint.
        endpoint: Endpoint,
        /// What was wrong.
        detail: String,
    },
    /// The shared budget gave no slot.
    #[error(transparent)]
    Quota(#[from] QuotaError),
}

impl GongError {
    /// Worth retrying in process, right away after a backoff (429, 5xx, transport, and a
    /// quota bucket that could not be reached).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            GongError::RateLimited { .. }
                | GongError::Server { .. }
                | GongError::Transport { .. }
                | GongError::Quota(QuotaError::Store(_))
        )
    }
}
