//! gong-ingest's errors, named after the step that failed.

use std::net::SocketAddr;

/// A failure that stops gong-ingest (per-request failures are HTTP answers, not errors).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The stage's task panicked or was cancelled: a bug, reported as a failure (exit 1).
    #[error("the stage task ended abnormally: {0}")]
    Task(#[source] tokio::task::JoinError),
    /// The admin server could not bind.
    #[error(transparent)]
    BindAdmin(#[from] gong_common::admin::BindError),
    /// The webhook listener could not bind.
    #[error("cannot bind webhook listener on {addr}: {source}")]
    BindListener {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// NATS could not be reached.
    #[error(transparent)]
    Connect(#[from] gong_common::nats::ConnectError),
    /// Streams could not be provisioned.
    #[error(transparent)]
    Provision(#[from] gong_common::streams::ProvisionError),
    /// Shutdown was requested while the streams were still being provisioned.
    #[error("shutdown requested while provisioning")]
    Interrupted,
}
