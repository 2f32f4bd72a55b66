//! Connecting to NATS and building a bounded JetStream context.

use std::time::Duration;

use async_nats::jetstream;

use crate::config::{split_list, CommonConfig};

/// Connecting failed (bad URL, or the server could not be reached before shutdown).
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to NATS: {0}")]
pub struct ConnectError(#[source] pub async_nats::ConnectError);

/// Connects to NATS. The client reconnects by itself for ever after the first connection; the
/// first connection is retried too, so a stage started before NATS waits instead of crashing.
pub async fn connect(
    config: &CommonConfig,
    name: &str,
) -> Result<async_nats::Client, ConnectError> {
    let urls: Vec<async_nats::ServerAddr> = split_list(&config.nats_url)
        .iter()
        .filter_map(|url| url.parse().ok())
        .collect();
    async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(2))
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| {
            // Quick first retries so a restarted server is picked up within a second or two.
            Duration::from_millis((100 * 2u64.saturating_pow(attempts.min(5) as u32)).min(2_000))
        })
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Disconnected => tracing::warn!("nats disconnected"),
                async_nats::Event::Connected => tracing::info!("nats connected"),
                other => tracing::debug!(event = %other, "nats event"),
            }
        })
        .connect(urls)
        .await
        .map_err(ConnectError)
}

/// A JetStream context with explicit bounds: API timeout, publish acks in flight, and
/// backpressure (wait for a free slot) when that bound is reached.
pub fn jetstream_context(
    client: async_nats::Client,
    request_timeout: Duration,
    max_ack_inflight: usize,
) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(request_timeout)
        .ack_timeout(request_timeout)
        .max_ack_inflight(max_ack_inflight)
        .backpressure_on_inflight(true)
        .build(client)
}
