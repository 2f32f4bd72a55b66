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

/// Copies every header of `from` into `to` but those whose name starts with one of `skip`
/// (compared without case: header names are case-insensitive).
fn copy_headers(from: &async_nats::HeaderMap, to: &mut async_nats::HeaderMap, skip: &[&str]) {
    for (name, values) in from.iter() {
        let name: &str = name.as_ref();
        let skipped = skip.iter().any(|prefix| {
            name.get(..prefix.len())
                .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
        });
        if skipped {
            continue;
        }
        for value in values {
            to.append(name, value.as_str());
        }
    }
}

/// Longest `Gong-DLQ-Detail`, in characters.
pub const MAX_DETAIL_CHARS: usize = 500;

/// A dead letter's detail as it may be stored in a header: control characters dropped (a
/// header value cannot carry a line break), at most [`MAX_DETAIL_CHARS`] characters, cut on a
/// character boundary (never inside a multi-byte one).
pub fn clip_detail(detail: &str) -> String {
    detail
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_DETAIL_CHARS)
        .collect()
}

/// Publishes `letter` to `gong.dlq.<stage>` and waits for JetStream's ack.
pub async fn publish(
    jetstream: &jetstream::Context,
    letter: DeadLetter<'_>,
) -> Result<jetstream::publish::PublishAck, DeadLetterError> {
    let mut message_headers = async_nats::HeaderMap::new();
    if let Some(original) = letter.original_headers {
        // Not NATS's own (`Nats-Msg-Id` would make JetStream drop the letter as a duplicate).
        copy_headers(original, &mut message_headers, &["Nats-"]);
    }
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let detail = clip_detail(letter.detail);
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

/// A dead letter as read back by the operator tools.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Entry {
    /// Sequence in `GONG_DLQ`.
    pub seq: u64,
    /// When it was dead-lettered (stream time, RFC 3339).
    pub time: String,
    /// Stage that gave up (`ingest`, `enrich`, `load`).
    pub stage: String,
    /// Reason code.
    pub reason: String,
    /// Reason detail.
    pub detail: String,
    /// Call id, when known.
    pub call_id: String,
    /// Subject before dead-lettering.
    pub original_subject: String,
    /// Payload size in bytes.
    pub bytes: usize,
}

/// An operator tool failed.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// `GONG_DLQ` could not be read.
    #[error("cannot read {stream}: {source}")]
    ReadStream {
        /// Stream name.
        stream: &'static str,
        /// Cause.
        #[source]
        source: async_nats::Error,
    },
    /// No dead letter at that sequence.
    #[error("no dead letter at sequence {0}")]
    NotFound(u64),
    /// The message cannot be redriven (unknown stage or subject).
    #[error("dead letter {seq} cannot be redriven: {reason}")]
    NotRedrivable {
        /// Sequence.
        seq: u64,
        /// Why.
        reason: String,
    },
    /// The redrive publish or the delete after it failed.
    #[error("redrive of {seq} failed: {source}")]
    Redrive {
        /// Sequence.
        seq: u64,
        /// Cause.
        #[source]
        source: async_nats::Error,
    },
}

fn header(message: &async_nats::jetstream::message::StreamMessage, name: &str) -> String {
    message
        .headers
        .get(name)
        .map(|value| value.as_str().to_string())
        .unwrap_or_default()
}

async fn dlq_stream(
    jetstream: &jetstream::Context,
) -> Result<jetstream::stream::Stream, ToolError> {
    jetstream
        .get_stream(crate::names::STREAM_DLQ)
        .await
        .map_err(|err| ToolError::ReadStream {
            stream: crate::names::STREAM_DLQ,
            source: err.into(),
        })
}

fn entry(message: &async_nats::jetstream::message::StreamMessage) -> Entry {
    Entry {
        seq: message.sequence,
        time: message.time.to_string(),
        stage: header(message, headers::DLQ_STAGE),
        reason: header(message, headers::DLQ_REASON),
        detail: header(message, headers::DLQ_DETAIL),
        call_id: header(message, headers::CALL_ID),
        original_subject: header(message, headers::DLQ_ORIGINAL_SUBJECT),
        bytes: message.payload.len(),
    }
}

/// Lists dead letters, oldest first, optionally only those of `stage`, at most `limit`.
pub async fn list(
    jetstream: &jetstream::Context,
    stage: Option<Stage>,
    limit: usize,
) -> Result<Vec<Entry>, ToolError> {
    let mut stream = dlq_stream(jetstream).await?;
    let state = stream
        .info()
        .await
        .map_err(|err| ToolError::ReadStream {
            stream: crate::names::STREAM_DLQ,
            source: err.into(),
        })?
        .state
        .clone();
    let mut entries = Vec::new();
    if state.messages == 0 {
        return Ok(entries);
    }
    for seq in state.first_sequence..=state.last_sequence {
        if entries.len() >= limit {
            break;
        }
        let Ok(message) = stream.get_raw_message(seq).await else {
            continue; // deleted (redriven or purged) sequences leave gaps
        };
        let found = entry(&message);
        if stage.is_some_and(|wanted| wanted.as_str() != found.stage) {
            continue;
        }
        entries.push(found);
    }
    Ok(entries)
}

/// One dead letter with its headers and payload.
pub async fn show(
    jetstream: &jetstream::Context,
    seq: u64,
) -> Result<async_nats::jetstream::message::StreamMessage, ToolError> {
    let stream = dlq_stream(jetstream).await?;
    stream
        .get_raw_message(seq)
        .await
        .map_err(|_| ToolError::NotFound(seq))
}

/// Where a dead letter of `stage` goes back to: the subject the failed stage consumes.
pub fn redrive_subject(stage: Stage, original_subject: &str) -> Option<&'static str> {
    match stage {
        // Ingest dead-letters bodies it could not route; enrich re-reads them as calls.
        Stage::Ingest => Some(crate::names::SUBJECT_RAW_CALL),
        Stage::Enrich if original_subject == crate::names::SUBJECT_RAW_CALL => {
            Some(crate::names::SUBJECT_RAW_CALL)
        }
        Stage::Load if original_subject == crate::names::SUBJECT_ENRICHED_CALL => {
            Some(crate::names::SUBJECT_ENRICHED_CALL)
        }
        _ => None,
    }
}

/// Republishes dead letter `seq` to the subject its stage consumes (payload untouched, dead-letter
/// headers dropped, `Gong-Redriven-From` set), waits for the ack, then deletes it from `GONG_DLQ`.
/// Returns the new stream sequence.
pub async fn redrive(jetstream: &jetstream::Context, seq: u64) -> Result<u64, ToolError> {
    let stream = dlq_stream(jetstream).await?;
    let message = stream
        .get_raw_message(seq)
        .await
        .map_err(|_| ToolError::NotFound(seq))?;
    let stage_name = header(&message, headers::DLQ_STAGE);
    let original_subject = header(&message, headers::DLQ_ORIGINAL_SUBJECT);
    let stage = Stage::parse(&stage_name).ok_or_else(|| ToolError::NotRedrivable {
        seq,
        reason: format!("unknown stage {stage_name:?}"),
    })?;
    let subject =
        redrive_subject(stage, &original_subject).ok_or_else(|| ToolError::NotRedrivable {
            seq,
            reason: format!("no stage consumes {original_subject:?}"),
        })?;
    let mut message_headers = async_nats::HeaderMap::new();
    copy_headers(
        &message.headers,
        &mut message_headers,
        &["Gong-Dlq-", "Nats-"],
    );
    message_headers.insert(headers::REDRIVEN_FROM, seq.to_string().as_str());
    // A fresh dedupe id: the original id may still be inside the duplicate window.
    let message_id = format!(
        "redrive-{seq}-{}",
        crate::event::content_id(&message.payload)
    );
    message_headers.insert(async_nats::header::NATS_MESSAGE_ID, message_id.as_str());
    let redrive_error = |source: async_nats::Error| ToolError::Redrive { seq, source };
    let ack = jetstream
        .publish_with_headers(subject, message_headers, message.payload.clone())
        .await
        .map_err(|err| redrive_error(err.into()))?
        .await
        .map_err(|err| redrive_error(err.into()))?;
    stream
        .delete_message(seq)
        .await
        .map_err(|err| redrive_error(err.into()))?;
    Ok(ack.sequence)
}

/// Deletes dead letters: one sequence, one stage's subject, or everything. Returns how many.
pub async fn purge(
    jetstream: &jetstream::Context,
    seq: Option<u64>,
    stage: Option<Stage>,
) -> Result<u64, ToolError> {
    let stream = dlq_stream(jetstream).await?;
    let purge_error = |source: async_nats::Error| ToolError::ReadStream {
        stream: crate::names::STREAM_DLQ,
        source,
    };
    if let Some(seq) = seq {
        let deleted = stream
            .delete_message(seq)
            .await
            .map_err(|_| ToolError::NotFound(seq))?;
        return Ok(u64::from(deleted));
    }
    let response = match stage {
        Some(stage) => stream.purge().filter(stage.dlq_subject()).await,
        None => stream.purge().await,
    }
    .map_err(|err| purge_error(err.into()))?;
    Ok(response.purged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_copies_skip_prefixes_whatever_their_case() {
        let mut from = async_nats::HeaderMap::new();
        from.insert("Nats-Msg-Id", "a");
        from.insert("nats-expected-stream", "b");
        from.insert("Gong-Dlq-Reason", "c");
        from.insert(headers::CALL_ID, "42");
        let mut to = async_nats::HeaderMap::new();
        copy_headers(&from, &mut to, &["Gong-Dlq-", "Nats-"]);
        let names: Vec<String> = to.iter().map(|(name, _)| name.to_string()).collect();
        assert_eq!(names, vec![headers::CALL_ID.to_string()]);
        assert_eq!(to.get(headers::CALL_ID).unwrap().as_str(), "42");
    }

    #[test]
    fn details_are_cut_on_characters_without_control_characters() {
        let detail = format!("line\nbreak {}", "é".repeat(600));
        let clipped = clip_detail(&detail);
        assert!(clipped.starts_with("linebreak "));
        assert_eq!(clipped.chars().count(), MAX_DETAIL_CHARS);
    }
}
