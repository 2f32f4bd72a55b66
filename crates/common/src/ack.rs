//! Acks are a decision made in one place.
//!
//! A stage turns each consumed message into an [`Outcome`]; [`settle`] maps it to JetStream:
//! `Done` → ack (double ack: confirmed by the server), `Retry` → nak with a delay, `Poison` →
//! dead-letter (payload untouched, reason in headers) and, only once the dead-letter publish is
//! acknowledged, term. Nothing is acknowledged before its output is durable.

use std::time::Duration;

use async_nats::jetstream::{self, message::AckKind};

use crate::dlq::{self, DeadLetter};
use crate::names::Stage;

/// What should happen to a consumed message.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Output is durable: acknowledge.
    Done,
    /// Transient failure: redeliver after `after`.
    Retry {
        /// Delay before redelivery.
        after: Duration,
    },
    /// The message can never succeed: dead-letter it with a reason, then terminate it.
    Poison {
        /// Short machine-readable code (`call_not_found`, `malformed_response`...).
        reason: String,
        /// Human-readable detail (no secrets).
        detail: String,
    },
}

/// Settling failed; the message will be redelivered after `ack_wait` (nothing is lost).
#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    /// The ack, nak or term did not reach the server.
    #[error("cannot settle message (stream_seq {stream_seq}): {source}")]
    Ack {
        /// Stream sequence of the message.
        stream_seq: u64,
        /// Cause.
        #[source]
        source: async_nats::Error,
    },
    /// The dead-letter publish failed; the message was naked instead.
    #[error(transparent)]
    DeadLetter(#[from] dlq::DeadLetterError),
}

/// Applies `outcome` to `message`, consumed by `stage`.
pub async fn settle(
    jetstream: &jetstream::Context,
    stage: Stage,
    message: &jetstream::Message,
    outcome: Outcome,
) -> Result<(), SettleError> {
    let stream_seq = message.info().map(|info| info.stream_sequence).unwrap_or(0);
    let ack_error = |source: async_nats::Error| SettleError::Ack { stream_seq, source };
    match outcome {
        Outcome::Done => message.double_ack().await.map_err(ack_error),
        Outcome::Retry { after } => message
            .ack_with(AckKind::Nak(Some(after)))
            .await
            .map_err(ack_error),
        Outcome::Poison { reason, detail } => {
            let letter = DeadLetter {
                stage,
                reason: &reason,
                detail: &detail,
                original_subject: message.subject.as_str(),
                original_seq: stream_seq,
                original_headers: message.headers.as_ref(),
                payload: message.payload.clone(),
            };
            if let Err(err) = dlq::publish(jetstream, letter).await {
                // Not dead-lettered: make sure it comes back rather than being lost.
                let _ = message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                    .await;
                return Err(err.into());
            }
            tracing::warn!(stage = stage.as_str(), stream_seq, reason = %reason, detail = %detail, "message dead-lettered");
            message
                .double_ack_with(AckKind::Term)
                .await
                .map_err(ack_error)
        }
    }
}
