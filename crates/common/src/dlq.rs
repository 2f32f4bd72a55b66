//! The dead-letter stream `GONG_DLQ`: events that need a human.
//!
//! A dead letter keeps the payload byte for byte and the original headers, and adds
//! `Gong-Dlq-Stage`, `Gong-Dlq-Reason`, `Gong-Dlq-Detail`, `Gong-Dlq-Original-Subject`,
//! `Gong-Dlq-Original-Seq` and `Gong-Dlq-At`. Its `Nats-Msg-Id` is derived from the stage and
//! the original sequence, so dead-lettering the same message twice stores it once.

use async_nats::jetstream;
use bytes::Bytes;

use crate::names::{headers, Stage};

/// A message to dead-letter.
pub struct DeadLetter<'a> {
    /// The stage giving up.
    pub stage: Stage,
    /// Short machine-readable code.
    pub reason: &'a str,
    /// Human-readable detail (no secrets).
    pub detail: &'a str,
    /// Subject the message was consumed from.
    pub original_subject: &'a str,
    /// Its stream sequence.
    pub original_seq: u64,
    /// Its headers, carried over.
    pub original_headers: Option<&'a async_nats::HeaderMap>,
    /// Its payload, untouched.
    pub payload: Bytes,
}

/// The dead-letter publish was not acknowledged.
#[derive(Debug, thiserror::Error)]
#[error("cannot dead-letter message from {stage} (original_seq {original_seq}): {source}")]
pub struct DeadLetterError {
    /// Stage name.
    pub stage: &'static str,
    /// Original sequence.
    pub original_seq: u64,
    /// Cause.
    #[source]
    pub source: async_nats::Error,
}

/// Publishes `letter` to `gong.dlq.<stage>` and waits for JetStream's ack.
pub async fn publish(
    jetstream: &jetstream::Context,
    letter: DeadLetter<'_>,
) -> Result<jetstream::publish::PublishAck, DeadLetterError> {
    let mut message_headers = async_nats::HeaderMap::new();
    if let Some(original) = letter.original_headers {
        for (name, values) in original.iter() {
            let name: &str = name.as_ref();
            if name.eq_ignore_ascii_case("Nats-Msg-Id") || name.starts_with("Nats-") {
                continue;
            }
            for value in values {
                message_headers.append(name, value.as_str());
            }
        }
    }
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let detail: String = letter
        .detail
        .chars()
        .filter(|c| !c.is_control())
        .take(500)
        .collect();
    message_headers.insert(headers::DLQ_STAGE, letter.stage.as_str());
    message_headers.insert(headers::DLQ_REASON, letter.reason);
    message_headers.insert(headers::DLQ_DETAIL, detail.as_str());
    message_headers.insert(headers::DLQ_ORIGINAL_SUBJECT, letter.original_subject);
    message_headers.insert(
        headers::DLQ_ORIGINAL_SEQ,
        letter.original_seq.to_string().as_str(),
    );
    message_headers.insert(headers::DLQ_AT, now.as_str());
    let message_id = format!("dlq-{}-{}", letter.stage.as_str(), letter.original_seq);
    message_headers.insert(async_nats::header::NATS_MESSAGE_ID, message_id.as_str());
    let error = |source: async_nats::Error| DeadLetterError {
        stage: letter.stage.as_str(),
        original_seq: letter.original_seq,
        source,
    };
    jetstream
        .publish_with_headers(
            letter.stage.dlq_subject(),
            message_headers,
            letter.payload.clone(),
        )
        .await
        .map_err(|err| error(err.into()))?
        .await
        .map_err(|err| error(err.into()))
}
