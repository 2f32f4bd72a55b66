//! gong-ingest: authenticates Gong webhooks and stores their bodies, byte for byte, in JetStream.
//!
//! Layout (the same file set in every stage crate):
//! - `lib.rs`: [`run`] and [`start`]: connect, provision streams, serve until shutdown.
//! - `main.rs`: glue (config, tracing, signals, exit codes).
//! - `config.rs`: [`config::IngestConfig`] from the environment.
//! - `error.rs`: [`error::IngestError`], named after the failing step.
//! - `server.rs`: the request loop: route, authenticate the head, take a slot, read the body,
//!   check its hash, publish, answer.
//! - `auth.rs`: Gong's signed-JWT and URL-token checks.
//! - `metrics.rs`: `gong_ingest_*` metrics.

pub mod auth;
pub mod config;
pub mod error;
pub mod metrics;
pub mod server;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use gong_common::admin::{self, Readiness};
use gong_common::streams::{ensure_streams, provision_with_retry, StreamKind};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::IngestConfig;
pub use error::IngestError;

/// A started gong-ingest: its bound addresses and the task serving until shutdown.
pub struct Running {
    /// Where webhooks are accepted.
    pub addr: SocketAddr,
    /// Where `/healthz`, `/readyz`, `/metrics` are served.
    pub admin_addr: SocketAddr,
    /// Ends when shutdown has completed (in-flight requests answered).
    pub task: JoinHandle<Result<(), IngestError>>,
}

/// Starts gong-ingest and serves until `shutdown` is cancelled, then drains in-flight requests.
pub async fn run(config: IngestConfig, shutdown: CancellationToken) -> Result<(), IngestError> {
    let running = match start(config, shutdown).await {
        Ok(running) => running,
        // Stopped while still waiting for the cluster: a clean stop, not a failure.
        Err(IngestError::Interrupted) => return Ok(()),
        Err(err) => return Err(err),
    };
    running.task.await.map_err(IngestError::Task)?
}

/// Connects, provisions, binds both listeners and returns once the server accepts requests.
pub async fn start(
    config: IngestConfig,
    shutdown: CancellationToken,
) -> Result<Running, IngestError> {
    let (readiness, admin_addr) = admin::start(
        &config.common,
        vec![
            gong_common::names::STREAM_RAW,
            gong_common::names::STREAM_DLQ,
        ],
        shutdown.clone(),
    )
    .await?;
    metrics::register();

    let client = gong_common::nats::connect(&config.common, "gong-ingest").await?;
    let jetstream = gong_common::nats::jetstream_context(
        client.clone(),
        config.common.nats_request_timeout,
        config.max_ack_inflight,
    );
    readiness.set_jetstream(jetstream.clone());
    // A cluster still forming answers timeouts for a while: retry (unready, saying why)
    // rather than exit and be restarted with growing back-off.
    let provisioned = provision_with_retry("streams", &readiness, &shutdown, || {
        ensure_streams(
            &jetstream,
            &config.common.streams,
            &[StreamKind::Raw, StreamKind::Dlq],
        )
    })
    .await?;
    if provisioned.is_none() {
        return Err(IngestError::Interrupted);
    }
    let max_payload = client.server_info().max_payload;
    if max_payload > 0 && max_payload < config.max_body_bytes {
        tracing::warn!(
            max_payload,
            max_body_bytes = config.max_body_bytes,
            "nats max_payload is below INGEST_MAX_BODY_BYTES; larger bodies will be refused with 413"
        );
    }

    let listener = TcpListener::bind(config.listen_addr)
        .await
        .map_err(|source| IngestError::BindListener {
            addr: config.listen_addr,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| IngestError::BindListener {
            addr: config.listen_addr,
            source,
        })?;

    let ingest = Arc::new(server::Ingest {
        jetstream,
        in_flight: Semaphore::new(config.max_concurrent_requests),
        config,
    });
    readiness.set_started(true);
    tracing::info!(
        addr = %addr,
        jwt_mode = ingest.config.verifier.jwt_enabled(),
        url_token_mode = ingest.config.verifier.url_tokens_enabled(),
        "gong-ingest accepting webhooks"
    );
    let task = tokio::spawn(serve(listener, ingest, readiness, shutdown));
    Ok(Running {
        addr,
        admin_addr,
        task,
    })
}

async fn serve(
    listener: TcpListener,
    ingest: Arc<server::Ingest>,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> Result<(), IngestError> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let connection_slots = Arc::new(Semaphore::new(ingest.config.max_connections));
    let open_connections = Arc::new(AtomicUsize::new(0));
    loop {
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            slot = connection_slots.clone().acquire_owned() => slot,
        };
        let Ok(slot) = slot else { break };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(err) => {
                // Out of file descriptors and similar: back off briefly instead of spinning.
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let ingest_for_conn = ingest.clone();
        let service =
            hyper::service::service_fn(move |request| ingest_for_conn.clone().handle(request));
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(ingest.config.header_timeout)
            .max_buf_size(64 * 1024)
            .serve_connection(TokioIo::new(stream), service);
        let watched = graceful.watch(connection);
        let open = open_connections.clone();
        metrics::connections(open.fetch_add(1, Ordering::Relaxed) + 1);
        tokio::spawn(async move {
            let _ = watched.await;
            metrics::connections(open.fetch_sub(1, Ordering::Relaxed) - 1);
            drop(slot);
        });
    }
    // Stop accepting, mark unready, then let in-flight requests finish (each ends in an ack or
    // a 503) within the grace period.
    drop(listener);
    readiness.set_started(false);
    tracing::info!("shutting down: draining in-flight requests");
    let grace = ingest.config.shutdown_grace;
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_ms = grace.as_millis() as u64,
            "in-flight requests still open after the grace period"
        );
    }
    tracing::info!("gong-ingest stopped");
    Ok(())
}
