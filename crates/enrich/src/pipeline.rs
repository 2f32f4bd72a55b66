//! What live enrichment and replays share: reading a raw event, asking Gong about a batch of
//! them, the per-event [`Verdict`], and publishing the enriched event.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use gong_common::event::{content_id, EnrichedEvent, ENRICHED_SCHEMA_VERSION};
use gong_common::gong::{Call, Monologue, Webhook};
use gong_common::names::{self, headers};

use crate::config::EnrichConfig;
use crate::error::{GongError, PublishError, QuotaError};
use crate::gong_api::{backoff, BatchAnswer, CallRequest, GongApi};
use crate::rate_limit::Priority;

/// A raw call event as read from `GONG_RAW`.
#[derive(Debug, Clone)]
pub struct RawEvent {
    /// Content id of the body (`Gong-Event-Id`, or recomputed).
    pub event_id: String,
    /// Sequence in `GONG_RAW`.
    pub stream_seq: u64,
    /// When gong-ingest received it (`Gong-Received-At`, or the stream's timestamp).
    pub received_at: DateTime<Utc>,
    /// JetStream delivery attempt (1 on first delivery).
    pub delivered: i64,
    /// The call id, or why the body cannot be enriched.
    pub call: Result<CallRequest, Invalid>,
    /// `Gong-Source`: `None` for a webhook, `sweep` for a call the sweep listed and injected.
    pub source: Option<String>,
    /// For a swept call: the call as the listing returned it (the extensive data, so live
    /// enrichment asks Gong only for its transcript).
    pub listed: Option<Box<Call>>,
}

/// Why a raw event can never be enriched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// `unparseable_webhook` or `invalid_call_id`.
    pub reason: &'static str,
    /// Detail for the dead letter.
    pub detail: String,
}

impl RawEvent {
    /// Reads a message consumed from `GONG_RAW` (never fails: a bad body becomes `Invalid`).
    pub fn from_message(message: &jetstream::Message) -> RawEvent {
        let info = message.info().ok();
        let stream_seq = info.as_ref().map(|info| info.stream_sequence).unwrap_or(0);
        let delivered = info.as_ref().map(|info| info.delivered).unwrap_or(1);
        let published = info.as_ref().map(|info| to_utc(&info.published));
        let header = |name: &str| {
            message
                .headers
                .as_ref()
                .and_then(|map| map.get(name))
                .map(|value| value.as_str().to_string())
                .filter(|value| !value.is_empty())
        };
        let event_id = header(headers::EVENT_ID).unwrap_or_else(|| content_id(&message.payload));
        let received_at = header(headers::RECEIVED_AT)
            .and_then(|text| DateTime::parse_from_rfc3339(&text).ok())
            .map(|time| time.with_timezone(&Utc))
            .or(published)
            .unwrap_or_else(Utc::now);
        let source = header(headers::SOURCE);
        let call = parse_call(&message.payload);
        let listed = match (&source, &call) {
            (Some(source), Ok(request)) if source == headers::SOURCE_SWEEP => {
                serde_json::from_slice::<Webhook>(&message.payload)
                    .ok()
                    .map(|webhook| webhook.call_data)
                    .filter(|listed| listed.id() == Some(request.call_id.as_str()))
                    .map(Box::new)
            }
            _ => None,
        };
        RawEvent {
            event_id,
            stream_seq,
            received_at,
            delivered,
            call,
            source,
            listed,
        }
    }

    /// The call id, when the body has a valid one.
    pub fn call_id(&self) -> Option<&str> {
        self.call.as_ref().ok().map(|call| call.call_id.as_str())
    }

    /// True for a call the sweep injected.
    pub fn is_swept(&self) -> bool {
        self.source.as_deref() == Some(headers::SOURCE_SWEEP)
    }
}

/// A JetStream timestamp as a chrono UTC time (async-nats uses the `time` crate by default).
pub fn to_utc(time: &async_nats::datetime::DateTime) -> DateTime<Utc> {
    let nanos = time.unix_timestamp_nanos();
    DateTime::from_timestamp(
        nanos.div_euclid(1_000_000_000) as i64,
        nanos.rem_euclid(1_000_000_000) as u32,
    )
    .unwrap_or_else(Utc::now)
}

/// A chrono UTC time as a JetStream timestamp.
pub fn from_utc(time: DateTime<Utc>) -> Result<async_nats::datetime::DateTime, async_nats::Error> {
    let nanos =
        i128::from(time.timestamp()) * 1_000_000_000 + i128::from(time.timestamp_subsec_nanos());
    async_nats::datetime::from_nanos(nanos)
}

/// Parses a webhook body and checks its call id (digits, at most 20).
pub fn parse_call(body: &[u8]) -> Result<CallRequest, Invalid> {
    let webhook: Webhook = serde_json::from_slice(body).map_err(|err| Invalid {
        reason: "unparseable_webhook",
        detail: format!("body is not a Gong webhook: {err}"),
    })?;
    let Some(call_id) = webhook.call_id() else {
        return Err(Invalid {
            reason: "unparseable_webhook",
            detail: "callData.metaData.id is missing".to_string(),
        });
    };
    if !gong_common::gong::is_call_id(call_id) {
        return Err(Invalid {
            reason: "invalid_call_id",
            detail: "callData.metaData.id is not a numeric id of up to 20 digits".to_string(),
        });
    }
    Ok(CallRequest {
        call_id: call_id.to_string(),
        webhook_private: webhook.call_data.is_private(),
    })
}

/// What happened to one raw event of a batch.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Gong knows the call.
    Enriched {
        /// The call from `/v2/calls/extensive`.
        call: Box<Call>,
        /// The transcript (`None` for private calls or when Gong has none).
        transcript: Option<Vec<Monologue>>,
        /// When Gong answered.
        fetched_at: DateTime<Utc>,
        /// A public call whose transcript Gong does not have (yet): worth a recheck.
        transcript_pending: bool,
    },
    /// The body can never be enriched (dead-letter at once).
    Invalid(Invalid),
    /// Gong does not know the call (deleted): dead-letter `call_not_found`.
    NotFound,
    /// Gong's answer could not be understood: limited retries.
    Malformed {
        /// What was wrong.
        detail: String,
    },
    /// Gong failed after the in-process retries (each failure is logged there): hand back for
    /// later.
    Transient,
    /// 401/403: configuration fault.
    AuthFault {
        /// What failed.
        detail: String,
    },
    /// The shared budget is spent or paused: hand back, stop pulling.
    Blocked {
        /// When trying again makes sense.
        retry_in: Duration,
        /// True when the daily quota is spent (false: Gong's pause).
        exhausted: bool,
    },
}

impl Verdict {
    /// From a batch-wide failure.
    pub fn from_error(err: &GongError) -> Verdict {
        match err {
            GongError::Auth { .. } => Verdict::AuthFault {
                detail: err.to_string(),
            },
            GongError::Malformed { .. } | GongError::Rejected { .. } => Verdict::Malformed {
                detail: err.to_string(),
            },
            GongError::Quota(QuotaError::Exhausted { resets_in }) => Verdict::Blocked {
                retry_in: *resets_in,
                exhausted: true,
            },
            GongError::Quota(QuotaError::Paused { remaining }) => Verdict::Blocked {
                retry_in: *remaining,
                exhausted: false,
            },
            GongError::RateLimited { .. }
            | GongError::Server { .. }
            | GongError::Transport { .. }
            | GongError::Quota(QuotaError::Store(_)) => Verdict::Transient,
        }
    }
}

/// How many malformed Gong answers each raw event (by `GONG_RAW` sequence) has had.
///
/// Live enrichment keeps one per process: JetStream's `delivered` counts every delivery (quota
/// waits, Gong outages, auth pauses and failed publishes too), so after a long Gong outage a
/// first malformed answer would have been dead-lettered at once. A replay keeps one per batch:
/// its retry rounds include quota waits and Gong outages too. Only malformed answers are
/// counted here. Live, the count is per process (a restart or another replica starts again at
/// 0), which only ever allows more attempts, never fewer; an entry goes when its event settles,
/// and the map is bounded.
#[derive(Debug, Default)]
pub(crate) struct MalformedAnswers {
    counts: HashMap<u64, i64>,
}

impl MalformedAnswers {
    /// Most events tracked at once; beyond it the counts restart (more retries, never fewer).
    const CAPACITY: usize = 10_000;

    /// Records one more malformed answer for `stream_seq`; returns how many it has had.
    pub(crate) fn record(&mut self, stream_seq: u64) -> i64 {
        if self.counts.len() >= Self::CAPACITY && !self.counts.contains_key(&stream_seq) {
            self.counts.clear();
        }
        let count = self.counts.entry(stream_seq).or_insert(0);
        *count += 1;
        *count
    }

    /// Forgets `stream_seq` (its event settled).
    pub(crate) fn forget(&mut self, stream_seq: u64) {
        self.counts.remove(&stream_seq);
    }
}

/// The one rule for malformed answers, live and in replays: after `answers` malformed answers
/// (this one included, from [`MalformedAnswers::record`]) retry after the returned backoff, or
/// give up (`None`) once there have been more than `ENRICH_MALFORMED_RETRIES`.
pub(crate) fn malformed_retry_after(config: &EnrichConfig, answers: i64) -> Option<Duration> {
    (answers <= config.malformed_retries).then(|| {
        backoff(
            answers.max(1) as u32 - 1,
            config.gong.retry_backoff_base,
            config.gong.retry_backoff_max,
        )
    })
}

/// Asks Gong about every valid event of `events` in one batch and returns one verdict per
/// event, in order. With `use_listed`, the calls a sweep injected are taken from their body
/// (the listing's extensive data) and only their transcripts are asked for; replays fetch
/// everything afresh.
pub async fn enrich(
    api: &GongApi,
    events: &[RawEvent],
    priority: Priority,
    use_listed: bool,
) -> Vec<Verdict> {
    let mut seen = HashSet::new();
    let requests: Vec<CallRequest> = events
        .iter()
        .filter_map(|event| event.call.as_ref().ok())
        .filter(|request| seen.insert(request.call_id.clone()))
        .cloned()
        .collect();
    let known: HashMap<String, Call> = if use_listed {
        events
            .iter()
            .filter_map(|event| {
                let listed = event.listed.as_ref()?;
                Some((event.call_id()?.to_string(), (**listed).clone()))
            })
            .collect()
    } else {
        HashMap::new()
    };
    let answer = if requests.is_empty() {
        Ok(BatchAnswer::default())
    } else {
        api.fetch_batch_with(&requests, &known, priority).await
    };
    events
        .iter()
        .map(|event| match (&event.call, &answer) {
            (Err(invalid), _) => Verdict::Invalid(invalid.clone()),
            (Ok(_), Err(err)) => Verdict::from_error(err),
            (Ok(request), Ok(answer)) => verdict_for(&request.call_id, answer),
        })
        .collect()
}

fn verdict_for(call_id: &str, answer: &BatchAnswer) -> Verdict {
    if let Some(detail) = answer.malformed.get(call_id) {
        return Verdict::Malformed {
            detail: detail.clone(),
        };
    }
    match answer.calls.get(call_id) {
        None => Verdict::NotFound,
        Some(call) => {
            let transcript = if call.is_private() {
                None
            } else {
                answer
                    .transcripts
                    .get(call_id)
                    .filter(|monologues| !monologues.is_empty())
                    .cloned()
            };
            Verdict::Enriched {
                transcript_pending: !call.is_private() && transcript.is_none(),
                transcript,
                call: Box::new(call.clone()),
                fetched_at: answer.fetched_at,
            }
        }
    }
}

/// A replay run's identity, stamped on what it publishes.
#[derive(Debug, Clone)]
pub struct ReplayRun {
    /// The run id (`Gong-Replay-Run`, `replay_run_id`).
    pub run_id: String,
}

/// The enriched event for `raw` (live: `event_id` = raw event id; replay: a new id derived from
/// the raw id and the run id).
pub fn enriched_event(
    raw: &RawEvent,
    call: Call,
    transcript: Option<Vec<Monologue>>,
    fetched_at: DateTime<Utc>,
    replay: Option<&ReplayRun>,
) -> EnrichedEvent {
    let event_id = match replay {
        None => raw.event_id.clone(),
        Some(run) => content_id(format!("{}:{}", raw.event_id, run.run_id).as_bytes()),
    };
    EnrichedEvent {
        schema_version: ENRICHED_SCHEMA_VERSION,
        event_id,
        raw_event_id: raw.event_id.clone(),
        raw_stream_seq: raw.stream_seq,
        received_at: raw.received_at,
        fetched_at,
        replay_run_id: replay.map(|run| run.run_id.clone()),
        call,
        transcript,
    }
}

/// Publishes `event` to `gong.enriched.call` with `Nats-Msg-Id` = its event id and the lineage
/// headers; returns the pending ack (the raw event may be acked only once it resolves).
pub async fn publish_enriched(
    jetstream: &jetstream::Context,
    event: &EnrichedEvent,
) -> Result<PendingPublish, PublishError> {
    publish_enriched_from(jetstream, event, None).await
}

/// As [`publish_enriched`], with a `Gong-Source` header when `source` is given (a transcript
/// recheck's event).
pub async fn publish_enriched_from(
    jetstream: &jetstream::Context,
    event: &EnrichedEvent,
    source: Option<&str>,
) -> Result<PendingPublish, PublishError> {
    let payload = Bytes::from(event.to_json());
    let size = payload.len();
    let mut message = PublishMessage::build()
        .message_id(&event.event_id)
        .header(headers::EVENT_ID, event.event_id.as_str())
        .header(headers::RAW_EVENT_ID, event.raw_event_id.as_str())
        .header(headers::RAW_SEQ, event.raw_stream_seq.to_string().as_str())
        .payload(payload);
    if let Some(call_id) = event.call_id() {
        message = message.header(headers::CALL_ID, call_id);
    }
    if let Some(run_id) = &event.replay_run_id {
        message = message.header(headers::REPLAY_RUN, run_id.as_str());
    }
    if let Some(source) = source {
        message = message.header(headers::SOURCE, source);
    }
    let ack = jetstream
        .send_publish(names::SUBJECT_ENRICHED_CALL, message)
        .await
        .map_err(|err| PublishError::from_nats(size, err))?;
    Ok(PendingPublish { ack, size })
}

/// An enriched event sent, its ack not yet received.
pub struct PendingPublish {
    ack: PublishAckFuture,
    size: usize,
}

impl PendingPublish {
    /// Waits for JetStream's ack (failures classified as by [`publish_enriched`]).
    pub async fn acked(self) -> Result<PublishAck, PublishError> {
        let size = self.size;
        self.ack
            .await
            .map_err(|err| PublishError::from_nats(size, err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_ids_are_checked() {
        let ok = parse_call(&gong_testkit::webhook::call_body(
            "7782342274025937895",
            false,
        ));
        assert_eq!(ok.unwrap().call_id, "7782342274025937895");
        assert_eq!(
            parse_call(b"not json").unwrap_err().reason,
            "unparseable_webhook"
        );
        assert_eq!(
            parse_call(br#"{"isTest":false,"callData":{"metaData":{"id":"abc"}}}"#)
                .unwrap_err()
                .reason,
            "invalid_call_id"
        );
        assert_eq!(
            parse_call(br#"{"isTest":false,"callData":{}}"#)
                .unwrap_err()
                .reason,
            "unparseable_webhook"
        );
    }

    #[test]
    fn replays_get_new_event_ids() {
        let raw = RawEvent {
            event_id: "abc".into(),
            stream_seq: 3,
            received_at: Utc::now(),
            delivered: 1,
            call: Ok(CallRequest {
                call_id: "1".into(),
                webhook_private: false,
            }),
            source: None,
            listed: None,
        };
        let live = enriched_event(&raw, Call::default(), None, Utc::now(), None);
        assert_eq!(live.event_id, "abc");
        let run = ReplayRun {
            run_id: "run-1".into(),
        };
        let replayed = enriched_event(&raw, Call::default(), None, Utc::now(), Some(&run));
        assert_ne!(replayed.event_id, "abc");
        assert_eq!(replayed.raw_event_id, "abc");
        assert_eq!(replayed.replay_run_id.as_deref(), Some("run-1"));
    }

    #[test]
    fn malformed_answers_are_counted_per_event_and_forgotten_when_settled() {
        let mut answers = MalformedAnswers::default();
        assert_eq!(answers.record(7), 1);
        assert_eq!(answers.record(7), 2);
        assert_eq!(answers.record(8), 1);
        answers.forget(7);
        assert_eq!(answers.record(7), 1);
    }

    #[test]
    fn malformed_answers_are_retried_with_backoff_then_given_up() {
        let env = gong_common::Env::from_pairs([
            ("ENRICH_MALFORMED_RETRIES", "2"),
            ("ENRICH_RETRY_BACKOFF_BASE", "100ms"),
            ("ENRICH_RETRY_BACKOFF_MAX", "10s"),
        ]);
        let config = EnrichConfig::from_env_without_credentials(&env).unwrap();
        let first = malformed_retry_after(&config, 1).expect("retried");
        let second = malformed_retry_after(&config, 2).expect("retried");
        assert!(first <= Duration::from_millis(200), "{first:?}");
        assert!(second >= Duration::from_millis(100), "{second:?}");
        assert_eq!(malformed_retry_after(&config, 3), None, "1 + 2 answers");
    }

    #[test]
    fn a_full_map_starts_again_rather_than_grow() {
        let mut answers = MalformedAnswers::default();
        for seq in 0..MalformedAnswers::CAPACITY as u64 {
            answers.record(seq);
        }
        assert_eq!(answers.record(0), 2, "a known event keeps its count");
        assert_eq!(answers.record(u64::MAX), 1);
        assert!(answers.counts.len() <= MalformedAnswers::CAPACITY);
        assert_eq!(
            answers.record(0),
            1,
            "counts restarted: more retries, never fewer"
        );
    }
}
