//! Writing a sequence range to the stage: encode, upload with retries, report.
//!
//! Shared by the live loop (rows from the messages it holds, gaps read from the stream), by the
//! takeover of a stopped replica's range, and by replay (rows read from the stream). In every
//! case the content is every message of GONG_ENRICHED whose sequence is in `first..=last`, in
//! sequence order, each turned into rows according to its subject (`gong.enriched.call`,
//! `.user`, `.scorecard`; a subject this version does not know yields no rows), minus the
//! poison ones: a pure function of the range.
//!
//! Reads that decide what a file contains are consistent: every sequence of the range is read
//! by number through `STREAM.MSG.GET`, which only the stream leader answers (a direct get may
//! be answered by a follower that has not received the newest messages, and its "not found"
//! would silently shorten the range). A sequence the leader does not have is accepted as absent
//! only when the leader's stream state lists it as deleted; otherwise (a leader elected a moment
//! ago may lag) it is asked again, and the range is not written until every sequence of
//! `first..=last` is accounted for.

use std::time::Duration;

use async_nats::jetstream::{self, message::AckKind, stream::RawMessageErrorKind};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use gong_common::event::{DecodeError, EnrichedEvent, EnrichedScorecard, EnrichedUser};
use gong_common::names;
use tokio_util::sync::CancellationToken;

use crate::config::LoadConfig;
use crate::error::LoadError;
use crate::ledger::Ledger;
use crate::metrics;
use crate::parquet_writer::{Spool, SpooledRange};
use crate::ranges::Ranges;
use crate::rows::Entity;
use crate::schema::Table;
use crate::snowflake::Snowpipe;
use crate::stage::{relative_path, Stage};

/// Events handed to a blocking encoding task at once.
pub const ENCODE_CHUNK: usize = 256;

/// Stream reads in flight at once while reading a range back (requests to the stream leader).
const READ_CONCURRENCY: usize = 64;

/// How long a sequence the leader does not have is asked for again before the range is given
/// up (for now: its messages come back and the range is tried again).
const ABSENT_RETRY_FOR: Duration = Duration::from_secs(10);

/// A message from GONG_ENRICHED, decoded according to its subject.
#[derive(Debug)]
pub enum Decoded {
    /// A loadable event.
    Entity(Entity),
    /// A subject this version has no tables for (a newer enricher's entity): no rows, not
    /// poison; the message belongs to its range and is acknowledged with it.
    Ignored,
    /// An event that can never be loaded.
    Poison {
        /// Short code.
        reason: &'static str,
        /// Detail.
        detail: String,
    },
}

/// Subjects already reported as unknown, so each is logged once per process.
static UNKNOWN_SUBJECTS: std::sync::Mutex<std::collections::BTreeSet<String>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Decodes the payload of a message on `subject`: undecodable, newer-version and id-less
/// events are poison; a subject without tables is [`Decoded::Ignored`] (logged once).
pub fn decode(subject: &str, payload: &[u8]) -> Decoded {
    match subject {
        names::SUBJECT_ENRICHED_CALL => checked(
            EnrichedEvent::from_json(payload),
            |event| event.call_id(),
            ("missing_call_id", "enriched event has no call.metaData.id"),
            |event| Entity::Call(Box::new(event)),
        ),
        names::SUBJECT_ENRICHED_USER => checked(
            EnrichedUser::from_json(payload),
            |event| event.user_id(),
            ("missing_user_id", "user event has no user.id"),
            |event| Entity::User(Box::new(event)),
        ),
        names::SUBJECT_ENRICHED_SCORECARD => checked(
            EnrichedScorecard::from_json(payload),
            |event| event.answered_scorecard_id(),
            (
                "missing_answered_scorecard_id",
                "scorecard event has no scorecard.answeredScorecardId",
            ),
            |event| Entity::Scorecard(Box::new(event)),
        ),
        other => {
            let mut seen = UNKNOWN_SUBJECTS
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if seen.insert(other.to_string()) {
                tracing::warn!(
                    subject = other,
                    "messages on this subject have no tables in this version; they are acknowledged without rows"
                );
            }
            Decoded::Ignored
        }
    }
}

/// An event decoded as `T`, loadable when its entity id is present and not empty.
fn checked<T>(
    decoded: Result<T, DecodeError>,
    id: impl Fn(&T) -> Option<&str>,
    (reason, detail): (&'static str, &str),
    entity: impl Fn(T) -> Entity,
) -> Decoded {
    match decoded {
        Ok(event) if id(&event).is_some_and(|id| !id.is_empty()) => Decoded::Entity(entity(event)),
        Ok(_) => Decoded::Poison {
            reason,
            detail: detail.to_string(),
        },
        Err(DecodeError::UnsupportedVersion { found, supported }) => Decoded::Poison {
            reason: "unsupported_schema_version",
            detail: format!("schema_version {found} is newer than supported {supported}"),
        },
        Err(err) => Decoded::Poison {
            reason: "undecodable_event",
            detail: err.to_string(),
        },
    }
}

/// One file made durable.
#[derive(Debug, Clone)]
pub struct StagedFile {
    /// Its table.
    pub table: Table,
    /// Path relative to the stage root.
    pub relative: String,
    /// Rows.
    pub rows: usize,
    /// Bytes.
    pub bytes: u64,
    /// True when the file was already on the stage and kept (not written by this call).
    pub kept: bool,
}

/// What to do with a file that is already on the stage under a range's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Existing {
    /// Keep it: it is complete (uploads are atomic) and was written for this very range.
    /// Snowflake keys its load history on the name and the content's checksum, so a file
    /// rewritten with other bytes (another schema version, another `LOAD_ZSTD_LEVEL`) would
    /// be loaded again. The default everywhere.
    #[default]
    Keep,
    /// Write it again (`gong-load replay --overwrite`, after a fix to how rows are built).
    Overwrite,
}

/// A range whose files are all durable.
#[derive(Debug, Clone)]
pub struct StagedRange {
    /// First sequence.
    pub first: u64,
    /// Last sequence.
    pub last: u64,
    /// Files, one per table with rows.
    pub files: Vec<StagedFile>,
    /// `received_at` of the first event.
    pub first_received_at: Option<DateTime<Utc>>,
    /// Events in the range.
    pub events: usize,
}

/// Why the stream leader has no message at a sequence.
enum Absence {
    /// Listed as deleted in the leader's stream state: gone for good.
    Deleted,
    /// Below the stream's first sequence: removed by the retention limits.
    Expired { first: u64 },
    /// Neither: the leader may lag (elected a moment ago). Ask again.
    Unexplained { last: u64 },
}

/// What every writer of ranges shares.
pub struct Ctx {
    /// Configuration.
    pub config: LoadConfig,
    /// JetStream.
    pub jetstream: jetstream::Context,
    /// GONG_ENRICHED, for reading ranges back.
    pub stream: jetstream::stream::Stream,
    /// The range manifest.
    pub ranges: Ranges,
    /// The stage.
    pub stage: Stage,
    /// Snowpipe, when configured.
    pub snowpipe: Option<Snowpipe>,
    /// The ledger of files Snowpipe must load, when Snowpipe is configured (live loader only).
    pub ledger: Option<Ledger>,
}

impl Ctx {
    /// A new spool.
    pub fn new_spool(&self) -> Result<Spool, LoadError> {
        Ok(Spool::new(&self.config.writer_settings())?)
    }

    /// Appends events to `spool` on a blocking thread.
    pub async fn encode(
        &self,
        mut spool: Spool,
        events: Vec<(u64, Entity)>,
    ) -> Result<Spool, LoadError> {
        if events.is_empty() {
            return Ok(spool);
        }
        tokio::task::spawn_blocking(move || {
            for (seq, entity) in &events {
                spool.append_entity(entity, *seq)?;
            }
            Ok::<Spool, LoadError>(spool)
        })
        .await
        .map_err(|err| LoadError::EncodeTask(err.to_string()))?
    }

    /// Closes the spool files on a blocking thread.
    pub async fn finish(
        &self,
        spool: Spool,
        first: u64,
        last: u64,
    ) -> Result<SpooledRange, LoadError> {
        tokio::task::spawn_blocking(move || spool.finish(first, last))
            .await
            .map_err(|err| LoadError::EncodeTask(err.to_string()))?
            .map_err(LoadError::from)
    }

    /// Message `seq` of GONG_ENRICHED, read from the stream leader; `None` when the leader's
    /// stream state lists it as deleted. A sequence below the stream's first (expired) or not
    /// accounted for within [`ABSENT_RETRY_FOR`] is an error: the caller must not write a range
    /// without it.
    pub async fn read_seq(
        &self,
        seq: u64,
    ) -> Result<Option<jetstream::message::StreamMessage>, LoadError> {
        let started = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(50);
        loop {
            let missing = match self.stream.get_raw_message(seq).await {
                Ok(message) => return Ok(Some(message)),
                Err(err) if err.kind() == RawMessageErrorKind::NoMessageFound => {
                    match self.absence(seq).await? {
                        Absence::Deleted => return Ok(None),
                        Absence::Expired { first } => {
                            return Err(LoadError::RangeIncomplete {
                                seq,
                                reason: format!(
                                    "expired: the stream now starts at sequence {first}"
                                ),
                            })
                        }
                        Absence::Unexplained { last } => format!(
                            "the stream leader does not have it (its last sequence is {last})"
                        ),
                    }
                }
                Err(err) => err.to_string(),
            };
            if started.elapsed() >= ABSENT_RETRY_FOR {
                return Err(LoadError::RangeIncomplete {
                    seq,
                    reason: missing,
                });
            }
            tracing::warn!(stream_seq = seq, reason = %missing, "sequence not read, asking again");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    /// Why the stream leader has no message `seq`, from its stream state.
    async fn absence(&self, seq: u64) -> Result<Absence, LoadError> {
        let read_error = |err: async_nats::Error| LoadError::ReadStream {
            stream: names::STREAM_ENRICHED.to_string(),
            seq,
            source: err,
        };
        let info = self
            .stream
            .info_builder()
            .with_deleted(true)
            .fetch()
            .await
            .map_err(|err| read_error(err.into()))?
            .info;
        let state = &info.state;
        if seq < state.first_sequence {
            return Ok(Absence::Expired {
                first: state.first_sequence,
            });
        }
        let deleted = state
            .deleted
            .as_ref()
            .is_some_and(|deleted| deleted.contains(&seq));
        if deleted && seq <= state.last_sequence {
            tracing::warn!(
                stream_seq = seq,
                "sequence deleted from the stream; the range is written without it"
            );
            return Ok(Absence::Deleted);
        }
        Ok(Absence::Unexplained {
            last: state.last_sequence,
        })
    }

    /// Appends to `spool` the loadable events of `from..=to` read from the stream leader,
    /// every sequence accounted for (see [`Ctx::read_seq`]).
    pub async fn append_from_stream(
        &self,
        mut spool: Spool,
        from: u64,
        to: u64,
    ) -> Result<Spool, LoadError> {
        if from > to {
            return Ok(spool);
        }
        let mut reads = futures::stream::iter(from..=to)
            .map(|seq| self.read_seq(seq))
            .buffered(READ_CONCURRENCY);
        let mut chunk = Vec::new();
        while let Some(read) = reads.next().await {
            let Some(message) = read? else {
                continue;
            };
            if let Decoded::Entity(entity) = decode(message.subject.as_str(), &message.payload) {
                chunk.push((message.sequence, entity));
            }
            if chunk.len() >= ENCODE_CHUNK {
                spool = self.encode(spool, std::mem::take(&mut chunk)).await?;
            }
        }
        drop(reads);
        self.encode(spool, chunk).await
    }

    /// Uploads every spooled file of `first..=last`, retrying with backoff until it succeeds
    /// or `give_up` is cancelled. `keepalive` messages get an in-progress ack at each retry so
    /// a long stage outage does not make them redeliver.
    pub async fn upload_with_retry(
        &self,
        spooled: &SpooledRange,
        first: u64,
        last: u64,
        keepalive: &[jetstream::Message],
        give_up: &CancellationToken,
        existing: Existing,
    ) -> Result<StagedRange, LoadError> {
        let mut files = Vec::new();
        if let Some(dt) = spooled.dt {
            for file in &spooled.files {
                let relative = relative_path(file.table, dt, first, last);
                let mut backoff = Duration::from_millis(200);
                let (bytes, kept) = loop {
                    let written = match existing {
                        Existing::Keep => match self.stage.existing_size(&relative).await {
                            Ok(Some(size)) => Ok((size, true)),
                            Ok(None) => self
                                .stage
                                .upload(&file.path, &relative)
                                .await
                                .map(|bytes| (bytes, false)),
                            Err(err) => Err(err),
                        },
                        Existing::Overwrite => self
                            .stage
                            .upload(&file.path, &relative)
                            .await
                            .map(|bytes| (bytes, false)),
                    };
                    match written {
                        Ok(written) => break written,
                        // The spool file is gone (or unreadable): retrying cannot bring it back.
                        // The caller hands the messages back; the range is rebuilt from the
                        // stream under the same names.
                        Err(err @ crate::stage::StageError::ReadSpool { .. }) => {
                            return Err(err.into());
                        }
                        Err(err) => {
                            metrics::stage_error();
                            tracing::warn!(
                                error = %err,
                                path = %relative,
                                backoff_ms = backoff.as_millis() as u64,
                                "stage write failed, retrying"
                            );
                            for message in keepalive {
                                let _ = message.ack_with(AckKind::Progress).await;
                            }
                            tokio::select! {
                                _ = give_up.cancelled() => {
                                    return Err(LoadError::Interrupted { step: "writing to the stage" });
                                }
                                _ = tokio::time::sleep(backoff) => {}
                            }
                            backoff = (backoff * 2).min(self.config.retry_max_backoff);
                        }
                    }
                };
                if kept {
                    tracing::info!(path = %relative, bytes, "file already on the stage; kept");
                }
                files.push(StagedFile {
                    table: file.table,
                    relative,
                    rows: file.rows,
                    bytes,
                    kept,
                });
            }
        }
        Ok(StagedRange {
            first,
            last,
            files,
            first_received_at: spooled.first_received_at,
            events: spooled.events,
        })
    }

    /// Rewrites `first..=last` from the stream under its deterministic names (files already
    /// on the stage are kept unless `existing` says to overwrite them).
    pub async fn rewrite_range(
        &self,
        first: u64,
        last: u64,
        give_up: &CancellationToken,
        existing: Existing,
    ) -> Result<StagedRange, LoadError> {
        let spool = self.new_spool()?;
        let spool = self.append_from_stream(spool, first, last).await?;
        let spooled = self.finish(spool, first, last).await?;
        self.upload_with_retry(&spooled, first, last, &[], give_up, existing)
            .await
    }

    /// Records every file of a durable range in the Snowpipe ledger (when Snowpipe is
    /// configured), so the notifier tells Snowpipe about it even if this process dies next.
    /// Call it before acknowledging the range's messages; on error, do not acknowledge them.
    pub async fn record_for_snowpipe(&self, staged: &StagedRange) -> Result<(), LoadError> {
        let Some(ledger) = &self.ledger else {
            return Ok(());
        };
        if staged.files.is_empty() {
            return Ok(());
        }
        ledger.record_staged(staged).await?;
        Ok(())
    }

    /// Records metrics and logs for a durable range. Snowpipe is not called from here: the
    /// notifier (`verify.rs`) notifies what [`Ctx::record_for_snowpipe`] recorded.
    pub fn report_durable(&self, staged: &StagedRange) {
        for file in staged.files.iter().filter(|file| !file.kept) {
            metrics::file_staged(file.table, file.rows, file.bytes);
        }
        if let Some(received_at) = staged.first_received_at {
            let lag = (Utc::now() - received_at).num_milliseconds() as f64 / 1000.0;
            metrics::event_to_staged(lag);
        }
        tracing::info!(
            first = staged.first,
            last = staged.last,
            events = staged.events,
            files = staged.files.len(),
            "range staged"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poison_is_classified() {
        let call = names::SUBJECT_ENRICHED_CALL;
        assert!(matches!(
            decode(call, b"nope"),
            Decoded::Poison {
                reason: "undecodable_event",
                ..
            }
        ));
        let newer = br#"{"schema_version": 99}"#;
        assert!(matches!(
            decode(call, newer),
            Decoded::Poison {
                reason: "unsupported_schema_version",
                ..
            }
        ));
        let no_id = serde_json::json!({"schema_version": 1, "event_id": "e", "raw_event_id": "e",
            "raw_stream_seq": 1, "received_at": "2024-01-01T00:00:00Z",
            "fetched_at": "2024-01-01T00:00:00Z", "call": {}});
        assert!(matches!(
            decode(call, no_id.to_string().as_bytes()),
            Decoded::Poison {
                reason: "missing_call_id",
                ..
            }
        ));
    }

    #[test]
    fn each_subject_decodes_as_its_own_event() {
        let user = serde_json::json!({"schema_version": 1, "event_id": "u",
            "fetched_at": "2024-01-01T00:00:00Z", "user": {"id": 42}});
        assert!(matches!(
            decode(names::SUBJECT_ENRICHED_USER, user.to_string().as_bytes()),
            Decoded::Entity(Entity::User(event)) if event.user_id() == Some("42")
        ));
        // The same body on the call subject is not a call.
        assert!(matches!(
            decode(names::SUBJECT_ENRICHED_CALL, user.to_string().as_bytes()),
            Decoded::Poison {
                reason: "undecodable_event",
                ..
            }
        ));
        let no_id = serde_json::json!({"schema_version": 1, "event_id": "u",
            "fetched_at": "2024-01-01T00:00:00Z", "user": {"firstName": "Ann"}});
        assert!(matches!(
            decode(names::SUBJECT_ENRICHED_USER, no_id.to_string().as_bytes()),
            Decoded::Poison {
                reason: "missing_user_id",
                ..
            }
        ));
        let card = serde_json::json!({"schema_version": 1, "event_id": "s",
            "fetched_at": "2024-01-01T00:00:00Z", "scorecard": {"answeredScorecardId": 7}});
        assert!(matches!(
            decode(names::SUBJECT_ENRICHED_SCORECARD, card.to_string().as_bytes()),
            Decoded::Entity(Entity::Scorecard(event)) if event.answered_scorecard_id() == Some("7")
        ));
        let newer = serde_json::json!({"schema_version": 2, "scorecard": "other shape"});
        assert!(matches!(
            decode(
                names::SUBJECT_ENRICHED_SCORECARD,
                newer.to_string().as_bytes()
            ),
            Decoded::Poison {
                reason: "unsupported_schema_version",
                ..
            }
        ));
        // A subject without tables is neither rows nor poison, whatever its payload.
        assert!(matches!(
            decode("gong.enriched.deal", b"not even json"),
            Decoded::Ignored
        ));
    }
}
