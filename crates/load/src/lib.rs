//! gong-load: enriched events from JetStream to typed Parquet tables on an object-store stage,
//! with exactly-once file names, for Snowflake to load.
//!
//! Layout (the same file set in every stage crate):
//! - `lib.rs`: [`run`] and [`start`] (the live loader), [`replay::replay`], [`inspect`].
//! - `main.rs`: glue (subcommands, config, tracing, signals, exit codes).
//! - `config.rs`: [`config::LoadConfig`] from the environment.
//! - `error.rs`: [`error::LoadError`], named after the failing step.
//! - `loader.rs`: the live loop: hold the `load` lease (or stand by), batch a contiguous
//!   sequence range, write it, then ack.
//! - `ranges.rs`: the range manifest in KV (`gong_load_ranges`): claims, head, takeover.
//! - `range_writer.rs`: writing a range (from held messages or from the stream) to the stage.
//! - `schema.rs`: the tables' columns (Arrow and Snowflake types from one list).
//! - `rows.rs`: an enriched event → rows.
//! - `parquet_writer.rs`: rows → Parquet spool files (zstd, row groups, statistics).
//! - `stage.rs`: the object store (`file://`, `s3://`, `gs://`, `az://`) and the file layout.
//! - `snowflake.rs`: setup SQL and the Snowpipe REST client (`insertFiles`, `insertReport`,
//!   `loadHistoryScan`; key-pair JWT).
//! - `ledger.rs`: the staged files Snowpipe must load, in KV (`gong_load_files`), recorded
//!   before their messages are acknowledged.
//! - `verify.rs`: the notifier (in the `load` lease holder): notifies pending files, follows
//!   each load to `loaded`, `load_failed`, `partially_loaded` or `unknown`;
//!   `gong-load snowflake-status`.
//! - `replay.rs`: rebuild staged files of recorded ranges from GONG_ENRICHED.
//! - `inspect.rs`: print schema and rows of staged files.
//! - `metrics.rs`: `gong_load_*` metrics.
//!
//! Invariants: only this crate depends on arrow/parquet; a message is acknowledged only after
//! every file of its range is durable; a file name is a function of its sequence range and a
//! range's content is a function of the stream, so a rewrite never changes what a name holds.

pub mod config;
pub mod error;
pub mod inspect;
pub mod ledger;
pub mod loader;
pub mod metrics;
pub mod parquet_writer;
pub mod range_writer;
pub mod ranges;
pub mod replay;
pub mod rows;
pub mod schema;
pub mod snowflake;
pub mod stage;
pub mod verify;

use std::net::SocketAddr;

use gong_common::admin::{self, Readiness};
use gong_common::lease::Lease;
use gong_common::names;
use gong_common::streams::{ensure_streams, provision_with_retry, StreamKind};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::LoadConfig;
pub use error::LoadError;

use crate::ledger::Ledger;
use crate::range_writer::Ctx;
use crate::ranges::Ranges;
use crate::snowflake::Snowpipe;
use crate::stage::Stage;

/// A started gong-load.
pub struct Running {
    /// Where `/healthz`, `/readyz`, `/metrics` are served.
    pub admin_addr: SocketAddr,
    /// Ends when shutdown has completed (the open batch flushed or handed back).
    pub task: JoinHandle<Result<(), LoadError>>,
}

/// Starts gong-load and consumes until `shutdown` is cancelled.
pub async fn run(config: LoadConfig, shutdown: CancellationToken) -> Result<(), LoadError> {
    let running = match start(config, shutdown.clone()).await {
        Ok(running) => running,
        // Stopped while still waiting for the cluster: a clean stop, not a failure.
        Err(LoadError::Interrupted { .. }) if shutdown.is_cancelled() => return Ok(()),
        Err(err) => return Err(err),
    };
    running.task.await.map_err(LoadError::Task)?
}

/// Connects, provisions the streams, the range bucket, the lease and the consumer (retrying
/// while the cluster is not ready, `/readyz` saying why), opens the stage, and returns once the
/// loop runs (holding the lease or standing by).
pub async fn start(config: LoadConfig, shutdown: CancellationToken) -> Result<Running, LoadError> {
    let (readiness, admin_addr) = admin::start(
        &config.common,
        vec![names::STREAM_ENRICHED, names::STREAM_DLQ],
        shutdown.clone(),
    )
    .await?;
    metrics::register();
    let stage = Stage::open(&config.stage_url, &config.stage_env())?;
    let client = gong_common::nats::connect(&config.common, "gong-load").await?;
    let jetstream =
        gong_common::nats::jetstream_context(client, config.common.nats_request_timeout, 256);
    readiness.set_jetstream(jetstream.clone());
    let owner = format!("load-{}", uuid::Uuid::now_v7());
    let provisioned =
        provision_with_retry("streams, buckets, consumer", &readiness, &shutdown, || {
            provision(&config, &jetstream, owner.clone())
        })
        .await?;
    let Some((stream, ranges, consumer, lease, ledger)) = provisioned else {
        return Err(LoadError::Interrupted {
            step: "provisioning",
        });
    };
    let snowpipe = config.snowpipe.clone().map(Snowpipe::new);
    let ctx = Ctx {
        snowpipe: snowpipe.clone(),
        ledger: ledger.clone(),
        config,
        jetstream,
        stream,
        ranges,
        stage,
    };
    // The backlog is known before the first message arrives (an idle or stuck loader too).
    metrics::consumer_pending(consumer.cached_info().num_pending);
    // The lease outlives the loop: it is released only after the open batch was flushed.
    let lease_shutdown = CancellationToken::new();
    let lease = lease.spawn(lease_shutdown.clone());
    // The Snowpipe notifier works only while this replica holds the lease, beside the loop.
    let notifier_stop = shutdown.child_token();
    let notifier = match (ledger, snowpipe) {
        (Some(ledger), Some(snowpipe)) => Some((
            verify::Notifier::new(ledger, snowpipe)
                .spawn(lease.state.clone(), notifier_stop.clone()),
            notifier_stop,
        )),
        _ => None,
    };
    let task = tokio::spawn(run_holding(
        ctx,
        consumer,
        readiness,
        shutdown,
        lease,
        lease_shutdown,
        notifier,
    ));
    Ok(Running { admin_addr, task })
}

async fn run_holding(
    ctx: Ctx,
    consumer: async_nats::jetstream::consumer::PullConsumer,
    readiness: Readiness,
    shutdown: CancellationToken,
    lease: gong_common::lease::LeaseHandle,
    lease_shutdown: CancellationToken,
    notifier: Option<(JoinHandle<()>, CancellationToken)>,
) -> Result<(), LoadError> {
    let outcome = loader::run(ctx, consumer, readiness, shutdown, lease.state).await;
    // Stop the notifier before the lease is released (after a fatal error too).
    if let Some((notifier, stop)) = notifier {
        stop.cancel();
        let _ = notifier.await;
    }
    lease_shutdown.cancel();
    let _ = lease.task.await;
    outcome
}

/// Streams, range manifest, lease, consumer and (with Snowpipe) the file ledger: every step
/// idempotent, so a retry after a partial success is safe.
async fn provision(
    config: &LoadConfig,
    jetstream: &async_nats::jetstream::Context,
    owner: String,
) -> Result<
    (
        async_nats::jetstream::stream::Stream,
        Ranges,
        async_nats::jetstream::consumer::PullConsumer,
        Lease,
        Option<Ledger>,
    ),
    LoadError,
> {
    let (stream, ranges) = open_stream_and_ranges(config, jetstream, owner.clone()).await?;
    let lease = Lease::open(
        jetstream,
        &config.common.streams,
        &config.lease_job,
        owner,
        config.lease_ttl,
    )
    .await?;
    let consumer = loader::ensure_consumer(&stream, config).await?;
    let ledger = match &config.snowpipe {
        Some(snowpipe) => {
            Some(Ledger::open(jetstream, &config.common.streams, snowpipe.verify_timeout).await?)
        }
        None => None,
    };
    Ok((stream, ranges, consumer, lease, ledger))
}

async fn open_stream_and_ranges(
    config: &LoadConfig,
    jetstream: &async_nats::jetstream::Context,
    owner: String,
) -> Result<(async_nats::jetstream::stream::Stream, Ranges), LoadError> {
    ensure_streams(
        jetstream,
        &config.common.streams,
        &[StreamKind::Enriched, StreamKind::Dlq],
    )
    .await?;
    let stream = jetstream
        .get_stream(names::STREAM_ENRICHED)
        .await
        .map_err(|err| LoadError::Consumer {
            consumer: names::CONSUMER_LOAD.to_string(),
            stream: names::STREAM_ENRICHED.to_string(),
            source: err.into(),
        })?;
    let ranges = Ranges::open(jetstream, &config.common.streams, owner).await?;
    Ok((stream, ranges))
}

/// Connects to NATS, provisions streams and the range bucket, opens the stage: what replay
/// (and a test or bench writing ranges directly) needs; no lease, no consumer, no Snowpipe
/// ledger (a replay rewrites files under the names and with the bytes the live loader staged
/// and recorded; Snowpipe skips a name it has loaded).
pub async fn connect(config: LoadConfig) -> Result<Ctx, LoadError> {
    let stage = Stage::open(&config.stage_url, &config.stage_env())?;
    let client = gong_common::nats::connect(&config.common, "gong-load").await?;
    let jetstream =
        gong_common::nats::jetstream_context(client, config.common.nats_request_timeout, 256);
    let owner = format!("load-{}", uuid::Uuid::now_v7());
    let (stream, ranges) = open_stream_and_ranges(&config, &jetstream, owner).await?;
    let snowpipe = config.snowpipe.clone().map(Snowpipe::new);
    Ok(Ctx {
        config,
        jetstream,
        stream,
        ranges,
        stage,
        snowpipe,
        ledger: None,
    })
}
