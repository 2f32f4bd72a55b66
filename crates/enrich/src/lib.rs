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
//! - `sweep.rs`: the reconciliation sweep (`gong-enrich sweep` and the continuous mode): lists
//!   Gong's calls by date and injects those that never reached `GONG_RAW`.
//! - `seen.rs`: the index of calls seen (`gong_calls_seen`) the sweep checks.
//! - `rechecks.rs`: late transcripts, rechecked on `ENRICH_TRANSCRIPT_RECHECK`.
//! - `entities.rs`: the users and answered scorecards jobs (`ENRICH_USERS_REFRESH`,
//!   `ENRICH_SCORECARDS_REFRESH`), published to `gong.enriched.user` / `gong.enriched.scorecard`.
//! - `metrics.rs`: `gong_enrich_*` metrics.
//!
//! **Invariant**: a raw event is acked only after its enriched event (or its dead letter) is
//! acknowledged by JetStream; every Gong request first takes a slot from the shared quota.

pub mod config;
pub mod entities;
pub mod error;
pub mod gong_api;
pub mod metrics;
pub mod pacing;
pub mod pipeline;
pub mod rate_limit;
pub mod rechecks;
pub mod replay;
pub mod seen;
pub mod sweep;
mod worker;

use std::net::SocketAddr;

use gong_common::admin::{self, Readiness};
use gong_common::lease::Lease;
use gong_common::names;
use gong_common::streams::{ensure_streams, provision_with_retry, StreamKind};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::EnrichConfig;
pub use error::EnrichError;
pub use rate_limit::{Priority, RateLimiter};
pub use replay::{replay, ProgressMode, ReplayOptions, ReplayStart, ReplaySummary};
pub use sweep::{sweep, SweepOptions, SweepSummary};

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
    let owner = format!("enrich-{}", uuid::Uuid::now_v7());
    let provisioned = provision_with_retry(
        "streams, buckets, leases, consumer",
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
            let seen = seen::SeenIndex::open(&jetstream, &config.common.streams).await?;
            let rechecks = rechecks::Rechecks::open(
                &jetstream,
                &config.common.streams,
                config.transcript_recheck.clone(),
            )
            .await?;
            let settings = &config.common.streams;
            let sweep = if config.sweep.interval.is_zero() {
                None
            } else {
                Some((
                    sweep::Checkpoint::open(&jetstream, settings, sweep::SweepKind::Continuous)
                        .await?,
                    Lease::open(
                        &jetstream,
                        settings,
                        names::LEASE_SWEEP,
                        owner.clone(),
                        config.sweep.lease_ttl,
                    )
                    .await?,
                ))
            };
            let recheck_lease = Lease::open(
                &jetstream,
                settings,
                names::LEASE_TRANSCRIPTS,
                owner.clone(),
                config.sweep.lease_ttl,
            )
            .await?;
            let mut jobs = Vec::new();
            for (job, interval) in [
                (entities::Job::Users, config.entities.users_refresh),
                (
                    entities::Job::Scorecards,
                    config.entities.scorecards_refresh,
                ),
            ] {
                if interval.is_zero() {
                    continue;
                }
                let checkpoint = entities::checkpoint(&jetstream, settings, job).await?;
                let lease = Lease::open(
                    &jetstream,
                    settings,
                    job.lease(),
                    owner.clone(),
                    config.sweep.lease_ttl,
                )
                .await?;
                jobs.push((job, interval, checkpoint, lease));
            }
            let consumer = worker::ensure_consumer(&jetstream, &config).await?;
            Ok::<_, EnrichError>((
                limiter,
                seen,
                rechecks,
                sweep,
                recheck_lease,
                jobs,
                consumer,
            ))
        },
    )
    .await?;
    let Some((limiter, seen, rechecks, sweep, recheck_lease, jobs, consumer)) = provisioned else {
        return Err(EnrichError::Interrupted);
    };
    // Publishes the quota gauges from the shared state before the first scrape (a spent or
    // unreadable quota is the worker's business, not a start failure).
    let _ = limiter.check(Priority::Live).await;
    let api = gong_api::GongApi::new(config.gong.clone(), limiter)?;
    let info = consumer.cached_info();
    metrics::consumer_pending(info.num_pending, info.num_ack_pending);
    // The sweep and recheck gauges, from the shared state, before the first scrape.
    if let Some((checkpoint, _)) = &sweep {
        if let Err(error) = sweep::publish_gauges(checkpoint).await {
            tracing::warn!(%error, "cannot read the sweep checkpoint");
        }
    }
    for (job, interval, checkpoint, _) in &jobs {
        if let Err(error) = entities::publish_gauges(*job, checkpoint, *interval).await {
            tracing::warn!(job = job.name(), %error, "cannot read the job's checkpoint");
        }
    }
    match rechecks.pending().await {
        Ok(pending) => metrics::transcripts_pending(pending.len()),
        Err(error) => {
            metrics::transcripts_pending(0);
            tracing::warn!(%error, "cannot count pending transcript rechecks");
        }
    }
    let mut background = Vec::new();
    if let Some((checkpoint, lease)) = sweep {
        let continuous = sweep::Continuous {
            sweeper: sweep::Sweeper {
                jetstream: jetstream.clone(),
                api: api.clone(),
                seen: seen.clone(),
                max_backlog: config.sweep.max_backlog,
            },
            checkpoint,
            lease,
            interval: config.sweep.interval,
            lookback: config.sweep.lookback,
            lease_ttl: config.sweep.lease_ttl,
        };
        background.push(tokio::spawn(sweep::continuous(
            continuous,
            shutdown.clone(),
        )));
    }
    for (job, interval, checkpoint, lease) in jobs {
        let entity_job = entities::EntityJob {
            job,
            jetstream: jetstream.clone(),
            api: api.clone(),
            checkpoint,
            lease,
            interval,
            lookback: config.entities.scorecards_lookback,
            lease_ttl: config.sweep.lease_ttl,
        };
        background.push(tokio::spawn(entities::run(entity_job, shutdown.clone())));
    }
    if rechecks.enabled() {
        background.push(tokio::spawn(rechecks::run(
            rechecks.clone(),
            recheck_lease,
            api.clone(),
            jetstream.clone(),
            shutdown.clone(),
        )));
    }
    readiness.set_started(true);
    let worker = worker::Worker {
        config,
        jetstream,
        consumer,
        api,
        readiness: readiness.clone(),
        seen,
        rechecks,
    };
    let task = tokio::spawn(async move {
        let outcome = worker::run(worker, shutdown).await;
        // The sweep, the rechecks and the entity jobs stop on the same shutdown (releasing their
        // leases).
        for task in background {
            let _ = task.await;
        }
        outcome
    });
    Ok(Running {
        admin_addr,
        readiness,
        task,
    })
}
