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
    /// A sequence of a range could not be read back from the stream leader, so the range is
    /// not written (it would be short).
    #[error("range not written: sequence {seq} of GONG_ENRICHED is not accounted for ({reason})")]
    RangeIncomplete {
        /// The sequence.
        seq: u64,
        /// What the leader said.
        reason: String,
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
    /// The file ledger (`gong_load_files`) could not be read or written.
    #[error(transparent)]
    Ledger(#[from] crate::ledger::LedgerError),
    /// Writing an operator command's output failed.
    #[error("cannot write the output: {0}")]
    Output(String),
    /// The lease task ended (a bug): without it the loader cannot know whether it may load.
    #[error("the load lease task ended")]
    LeaseTask,
    /// An older gong-load (which reads every message as a call) still pulls from the consumer
    /// the lease holder must replace; it waits until those pods are gone.
    #[error("an older gong-load is still pulling from consumer load ({waiting} pull requests waiting); scale the old pods down to finish the upgrade")]
    OlderLoaderPulling {
        /// Pull requests waiting on the consumer.
        waiting: usize,
    },
    /// A replay argument is invalid or resolves to nothing.
    #[error("invalid replay range: {0}")]
    ReplayRange(String),
}

impl LoadError {
    /// A failure no retry of the same step can fix and no message is at fault for: the live
    /// loader stops (unready, exit code 1) rather than retrying for ever. Spool files that
    /// cannot be created (a missing or read-only `LOAD_SPOOL_DIR`, a full disk) are; a stage
    /// or NATS outage, a lost spool file (the range is rebuilt from the stream) are not.
    pub fn is_fatal(&self) -> bool {
        matches!(self, LoadError::Encode(EncodeError::Spool { .. }))
    }
}

impl gong_common::streams::Retryable for LoadError {
    fn is_retryable(&self) -> bool {
        match self {
            LoadError::Provision(err) => err.is_retryable(),
            LoadError::Consumer { source, .. } => {
                gong_common::streams::is_transient(source.as_ref())
            }
            _ => false,
        }
    }
}
