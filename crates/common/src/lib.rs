//! Everything the three stages share, and the only types that cross a process boundary.
//!
//! Layout:
//! - [`names`]: stream, subject, consumer, bucket and header names (the contract of shared/design.md §5).
//! - [`streams`]: idempotent provisioning of the JetStream streams and KV buckets.
//! - [`config`]: typed reading of environment variables with errors that name the variable.
//! - [`gong`]: Gong's webhook and REST API types, lenient and lossless.
//! - [`event`]: the enriched events published on `GONG_ENRICHED`, one versioned type per
//!   subject (calls, users, answered scorecards).
//! - [`telemetry`]: tracing and the Prometheus recorder.
//! - [`admin`]: the admin HTTP server (`/healthz`, `/readyz`, `/metrics`).
//! - [`shutdown`]: the SIGINT/SIGTERM future and the exit codes.
//! - [`lease`]: one active replica among several (KV lease, hot standbys).
//! - [`register`]: a single-key compare-and-set register, atomic on nats-server 2.9 clusters.
//! - [`nats`]: connecting to NATS and building a bounded JetStream context.
//! - [`ack`]: the one place where a message's [`ack::Outcome`] becomes ack, nak or dead-letter.
//! - [`dlq`]: publishing to `GONG_DLQ` with the reason in headers, and the operator tools.
//! - [`cli`]: the `dlq` subcommand every binary offers.

pub mod ack;
pub mod admin;
pub mod cli;
pub mod config;
pub mod dlq;
pub mod event;
pub mod gong;
pub mod lease;
pub mod names;
pub mod nats;
pub mod register;
pub mod shutdown;
pub mod streams;
pub mod telemetry;

pub use config::{CommonConfig, ConfigError, Env};
pub use shutdown::{EXIT_CONFIG, EXIT_RUNTIME};
