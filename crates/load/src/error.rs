//! gong-load's errors, named after the step that failed.

use crate::parquet_writer::EncodeError;
use crate::ranges::RangeError;
use crate::stage::StageError;

/// A failure that stops gong-load or a replay (per-message failures are outcomes, not errors).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The stage's task panicked or was cancelled: a bug, reported as a failure (exit 1).
    #[error("the stage task ended abnormally: {0}")]
    Task(#[source] tokio::task::JoinError),
    /// The admin server could not bind.
    #[error(transparent)]
    BindAdmin(#[from] gong_common::admin::BindError),
    /// NATS could not be reached.
    #[error(transparent)]
    Connect(#[from] gong_common::nats::ConnectError),
    /// Streams or the range bucket could not be provisioned.
    #[error(transparent)]
    Provision(#[from] gong_common::streams::ProvisionError),
    /// The durable consumer could not be created or read.
    #[error("cannot create consumer {consumer} on {stream}: {source}")]
    Consumer {
        /// Consumer name.
        consumer: String,
        /// Stream name.
        stream: String,
        /// Cause.
        #[source]
        source: async_nats::Error,
    },
    /// Reading a range back from GONG_ENRICHED failed.
    #[error("cannot read sequence {seq} of {stream}: {source}")]
    ReadStream {
        /// Stream name.
        stream: String,
        /// Sequence.
        seq: u64,
        /// Cause.
        #[source]
        source: async_nats::Error,
    },
    /// The stage could not be opened or written.
    #[error(transparent)]
    Stage(#[from] StageError),
    /// Encoding Parquet failed.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The range manifest could not be read or written.
    #[error(transparent)]
    Ranges(#[from] RangeError),
    /// A blocking encoding task panicked or was cancelled.
    #[error("encoding task failed: {0}")]
    EncodeTask(String),
    /// Shutdown was requested before the step could finish (nothing was acknowledged).
    #[error("shutdown requested while {step}")]
    Interrupted {
        /// What was in progress.
        step: &'static str,
    },
    /// A replay argument is invalid or resolves to nothing.
    #[error("invalid replay range: {0}")]
    ReplayRange(String),
}
