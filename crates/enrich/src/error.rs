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
        source: async_nats::Error,
    },
    /// The run was cancelled before the range was done.
    #[error("cancelled before the replay range was done")]
    Cancelled,
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
    /// `POST /v2/calls/extensive`.
    Extensive,
    /// `POST /v2/calls/transcript`.
    Transcript,
}

impl Endpoint {
    /// The path below the base URL.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Extensive => "/v2/calls/extensive",
            Endpoint::Transcript => "/v2/calls/transcript",
        }
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Extensive => "extensive",
            Endpoint::Transcript => "transcript",
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
