//! `gong-load replay`: rebuild the staged files of a sequence or time window from GONG_ENRICHED.
//!
//! The batch boundaries are the ones recorded in the range manifest (`gong_load_ranges`): every
//! recorded range that overlaps the window is rewritten whole, under its deterministic names,
//! with rows read back from the stream. A wiped stage followed by `replay --from-seq 1` therefore
//! reproduces exactly the files the live loader wrote. Sequences after the manifest's head have
//! never been batched; the live loader stages them (replay reports how many).

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::config::LoadConfig;
use crate::error::LoadError;
use crate::ranges::RangeState;

/// Which part of GONG_ENRICHED to rebuild.
#[derive(Debug, Clone, Default)]
pub struct ReplayWindow {
    /// First sequence (inclusive).
    pub from_seq: Option<u64>,
    /// First event time (inclusive), resolved to a sequence.
    pub since: Option<DateTime<Utc>>,
    /// Last event time (inclusive), resolved to a sequence.
    pub until: Option<DateTime<Utc>>,
    /// Files already on the stage: kept (the default: a replay restores what is missing) or
    /// overwritten (`--overwrite`, after a fix to how rows are built; Snowflake then loads the
    /// changed files again and the views keep one row per event).
    pub existing: crate::range_writer::Existing,
}

/// Progress of a replay, reported after each range.
#[derive(Debug, Clone)]
pub struct ReplayProgress {
    /// Ranges rewritten so far.
    pub done: usize,
    /// Ranges to rewrite.
    pub total: usize,
    /// The range just rewritten.
    pub first: u64,
    /// Its last sequence.
    pub last: u64,
}

/// What a replay did.
#[derive(Debug, Clone, Default)]
pub struct ReplaySummary {
    /// Ranges rewritten.
    pub ranges: usize,
    /// Files written.
    pub files: usize,
    /// Files already on the stage and kept as they were (not counted in `files`).
    pub kept: usize,
    /// Events written (calls rows).
    pub events: usize,
    /// Sequences of the window after the manifest head (left to the live loader).
    pub left_to_live: u64,
    /// Recorded ranges skipped because part of them expired from GONG_ENRICHED (their staged
    /// files are left as they are; a rewrite would be short).
    pub expired: usize,
    /// The resolved window.
    pub from_seq: u64,
    /// The resolved window.
    pub to_seq: u64,
}

/// Rewrites every recorded range overlapping `window`; ends when done.
pub async fn replay(
    config: LoadConfig,
    window: ReplayWindow,
    shutdown: CancellationToken,
    mut on_progress: impl FnMut(&ReplayProgress),
) -> Result<ReplaySummary, LoadError> {
    let mut ctx = crate::connect(config).await?;
    let info = ctx
        .stream
        .info()
        .await
        .map_err(|err| LoadError::ReadStream {
            stream: gong_common::names::STREAM_ENRICHED.to_string(),
            seq: 0,
            source: err.into(),
        })?
        .clone();
    let stream_first = info.state.first_sequence.max(1);
    let stream_last = info.state.last_sequence;
    let from_seq = match (window.from_seq, window.since) {
        (Some(seq), None) => seq.max(1),
        (None, Some(since)) => first_at_or_after(&ctx, since, stream_first, stream_last).await?,
        (None, None) => stream_first,
        (Some(_), Some(_)) => {
            return Err(LoadError::ReplayRange(
                "give --from-seq or --since, not both".into(),
            ))
        }
    };
    let to_seq = match window.until {
        Some(until) => {
            let after = first_at_or_after(
                &ctx,
                until + chrono::Duration::microseconds(1),
                stream_first,
                stream_last,
            )
            .await?;
            after.saturating_sub(1)
        }
        None => stream_last,
    };
    let head = ctx.ranges.head().await?.map(|(next, _)| next).unwrap_or(1);
    let (ranges, expired): (Vec<_>, Vec<_>) = ctx
        .ranges
        .all()
        .await?
        .into_iter()
        .filter(|known| known.record.last >= from_seq && known.record.first <= to_seq)
        .partition(|known| known.record.first >= stream_first);
    for known in &expired {
        // Its first events are gone from the stream: a rewrite would be short. The staged
        // files stay as they are.
        tracing::warn!(
            first = known.record.first,
            last = known.record.last,
            stream_first,
            "range partly expired from GONG_ENRICHED; its files are left as they are"
        );
    }
    let mut summary = ReplaySummary {
        from_seq,
        to_seq,
        expired: expired.len(),
        left_to_live: if to_seq >= head {
            to_seq + 1 - head.max(from_seq)
        } else {
            0
        },
        ..Default::default()
    };
    let total = ranges.len();
    tracing::info!(from_seq, to_seq, ranges = total, "replay started");
    for known in ranges {
        if shutdown.is_cancelled() {
            return Err(LoadError::Interrupted { step: "replaying" });
        }
        let record = &known.record;
        let staged = ctx
            .rewrite_range(record.first, record.last, &shutdown, window.existing)
            .await?;
        if record.state == RangeState::Pending {
            // The files are durable now; holders of its messages may acknowledge them.
            ctx.ranges
                .mark_done(record.first, record.last, known.revision)
                .await;
        }
        ctx.report_durable(&staged);
        summary.ranges += 1;
        summary.kept += staged.files.iter().filter(|file| file.kept).count();
        summary.files += staged.files.iter().filter(|file| !file.kept).count();
        summary.events += staged.events;
        on_progress(&ReplayProgress {
            done: summary.ranges,
            total,
            first: record.first,
            last: record.last,
        });
    }
    tracing::info!(
        ranges = summary.ranges,
        files = summary.files,
        events = summary.events,
        left_to_live = summary.left_to_live,
        "replay finished"
    );
    Ok(summary)
}

/// The first sequence of GONG_ENRICHED (any subject) stored at or after `time` (binary search over
/// sequences, read through the stream leader; stream timestamps grow with sequences).
async fn first_at_or_after(
    ctx: &crate::range_writer::Ctx,
    time: DateTime<Utc>,
    stream_first: u64,
    stream_last: u64,
) -> Result<u64, LoadError> {
    let wanted = time.timestamp_nanos_opt().unwrap_or(i64::MAX) as i128;
    let mut low = stream_first;
    let mut high = stream_last + 1;
    while low < high {
        let middle = low + (high - low) / 2;
        let next = match ctx
            .stream
            .get_first_raw_message_by_subject(gong_common::names::SUBJECTS_ENRICHED, middle)
            .await
        {
            Ok(message) => Some(message),
            Err(err)
                if err.kind()
                    == async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound =>
            {
                None
            }
            Err(err) => {
                return Err(LoadError::ReadStream {
                    stream: gong_common::names::STREAM_ENRICHED.to_string(),
                    seq: middle,
                    source: err.into(),
                })
            }
        };
        match next {
            Some(message) if message.sequence <= stream_last => {
                if message.time.unix_timestamp_nanos() >= wanted {
                    high = middle;
                } else {
                    low = message.sequence + 1;
                }
            }
            _ => high = middle,
        }
    }
    Ok(low)
}
