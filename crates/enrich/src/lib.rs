//! gong-enrich: turns raw Gong call webhooks into enriched call events, batching call ids into
//! few Gong API requests under one deployment-wide quota.
//!
//! Layout (the same file set in every stage crate):
//! - `lib.rs`: [`run`] and [`start`]: connect, provision, consume until shutdown.
//! - `main.rs`: glue (config, tracing, signals, exit codes, the `replay` subcommand).
//! - `config.rs`: [`config::EnrichConfig`] from the environment.
//! - `error.rs`: [`error::EnrichError`] (named after the failing step), [`error::GongError`],
//!   [`error::QuotaError`].
//! - `worker.rs`: the stage loop: quota check, pull a batch, enrich, publish, settle.
//! - `pacing.rs`: the batch linger paced to the daily quota ([`pacing::Pacing`]).
//! - `pipeline.rs`: raw event reading, per-event [`pipeline::Verdict`], enriched-event publishing
//!   (shared by the loop and replays).
//! - `gong_api.rs`: batched, paged calls to Gong's REST API.
//! - `rate_limit.rs`: the shared quota in the `gong_quota` KV bucket.
//! - `replay.rs`: `gong-enrich replay`.
//! - `metrics.rs`: `gong_enrich_*` metrics.
//!
//! **Invariant**: a raw event is acked only after its enriched event (or its dead letter) is
//! acknowledged by JetStream; every Gong request first takes a slot from the shared quota.

pub mod config;
pub mod error;
pub mod gong_api;
pub mod metrics;
pub mod pacing;
pub mod pipeline;
pub mod rate_limit;
pub mod replay;
mod worker;

use std::net::SocketAddr;

use gong_common::admin::{self, Readiness};
use gong_common::names;
use gong_common::streams::{ensure_streams, provision_with_retry, StreamKind};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::EnrichConfig;
pub use error::EnrichError;
pub use rate_limit::{Priority, RateLimiter};
pub use replay::{replay, ProgressMode, ReplayOptions, ReplayStart, ReplaySummary};

/// A started gong-enrich.
pub struct Running {
    /// Where `/healthz`, `/readyz`, `/metrics` are served.
    pub admin_addr: SocketAddr,
    /// The readiness behind `/readyz` (a 401 from Gong makes it unready).
    pub readiness: Readiness,
    /// Ends when shutdown has completed (the batch in hand settled or handed back).
    pub task: JoinHandle<Result<(), EnrichError>>,
}

/// Starts gong-enrich and consumes until `shutdown` is cancelled.
pub async fn run(config: EnrichConfig, shutdown: CancellationToken) -> Result<(), EnrichError> {
    let running = match start(config, shutdown).await {
        Ok(running) => running,
        // Stopped while still waiting for the cluster: a clean stop, not a failure.
        Err(EnrichError::Interrupted) => return Ok(()),
        Err(err) => return Err(err),
    };
    running.task.await.map_err(EnrichError::Task)?
}

/// Connects, provisions the streams, the quota bucket and the durable consumer, and returns once
/// the loop is consuming.
pub async fn start(
    config: EnrichConfig,
    shutdown: CancellationToken,
) -> Result<Running, EnrichError> {
    let (readiness, admin_addr) = admin::start(
        &config.common,
        vec![names::STREAM_RAW, names::STREAM_ENRICHED, names::STREAM_DLQ],
        shutdown.clone(),
    )
    .await?;
    metrics::register();
    // The linger before the first quota read; the loop updates it before every pull.
    metrics::batch_linger(config.batch_linger);

    let client = gong_common::nats::connect(&config.common, "gong-enrich").await?;
    let jetstream = gong_common::nats::jetstream_context(
        client,
        config.common.nats_request_timeout,
        config.max_ack_inflight,
    );
    readiness.set_jetstream(jetstream.clone());
    // A cluster still forming answers timeouts or "no stream found" for a while: retry
    // (unready, saying why) rather than exit and be restarted with growing back-off.
    let provisioned = provision_with_retry(
        "streams, quota bucket, consumer",
        &readiness,
        &shutdown,
        || async {
            ensure_streams(
                &jetstream,
                &config.common.streams,
                &[StreamKind::Raw, StreamKind::Enriched, StreamKind::Dlq],
            )
            .await?;
            let limiter =
                RateLimiter::open(&jetstream, config.quota.clone(), &config.common.streams).await?;
            let consumer = worker::ensure_consumer(&jetstream, &config).await?;
            Ok::<_, EnrichError>((limiter, consumer))
        },
    )
    .await?;
    let Some((limiter, consumer)) = provisioned else {
        return Err(EnrichError::Interrupted);
    };
    // Publishes the quota gauges from the shared state before the first scrape (a spent or
    // unreadable quota is the worker's business, not a start failure).
    let _ = limiter.check(Priority::Live).await;
    let api = gong_api::GongApi::new(config.gong.clone(), limiter)?;
    let info = consumer.cached_info();
    metrics::consumer_pending(info.num_pending, info.num_ack_pending);
    readiness.set_started(true);
    let worker = worker::Worker {
        config,
        jetstream,
        consumer,
        api,
        readiness: readiness.clone(),
    };
    let task = tokio::spawn(worker::run(worker, shutdown));
    Ok(Running {
        admin_addr,
        readiness,
        task,
    })
}
