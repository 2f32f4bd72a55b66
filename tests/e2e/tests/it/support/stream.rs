//! What GONG_ENRICHED and the range manifest hold, read from a consistent source: the stream
//! leader (`STREAM.MSG.GET` through `Stream::get_raw_message` and
//! `get_last_raw_message_by_subject`), never a direct get, which a follower of an R3 stream
//! may answer from a stale copy.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, stream::LastRawMessageErrorKind};
use futures::{StreamExt, TryStreamExt};
use gong_common::names;
use gong_load::range_writer::{decode, Decoded};
use gong_load::rows::{append_entity, TableSet};
use gong_load::schema::Table;

/// One loadable enriched event (a call, a user, a scorecard) as the stream holds it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its `event_id`.
    pub event_id: String,
    /// How many rows gong-load makes of it, per table (indexed like [`Table::ALL`]).
    pub rows: [usize; Table::COUNT],
}

/// GONG_ENRICHED at one moment.
#[derive(Debug, Clone, Default)]
pub struct Enriched {
    /// Loadable events, by stream sequence (decoded by subject with gong-load's own
    /// `range_writer::decode`).
    pub events: BTreeMap<u64, Entry>,
    /// Sequences of messages gong-load cannot load (it would dead-letter them).
    pub poison: Vec<u64>,
    /// Messages on subjects gong-load has no tables for (acknowledged without rows).
    pub ignored: usize,
    /// The stream's last sequence when it was read.
    pub last_sequence: u64,
}

impl Enriched {
    /// `event_id → rows` of `table` for the events in `first..=last` (events without rows in the
    /// table left out): what the table's file of that range must hold.
    pub fn expected_rows(&self, table: Table, first: u64, last: u64) -> BTreeMap<String, usize> {
        let mut rows = BTreeMap::new();
        for entry in self.events.range(first..=last).map(|(_, entry)| entry) {
            if entry.rows[table.index()] > 0 {
                *rows.entry(entry.event_id.clone()).or_default() += entry.rows[table.index()];
            }
        }
        rows
    }
}

/// Retries a leader read that failed for a transient reason (a leader election after a node
/// was killed), at most 20 times, 250 ms apart.
async fn retried<T, E: std::fmt::Display, F, Fut>(what: &str, mut read: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut last_error = String::new();
    for _ in 0..20 {
        match read().await {
            Ok(value) => return Ok(value),
            Err(err) => last_error = err.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(format!("{what}: {last_error}"))
}

/// Reads every message of GONG_ENRICHED from the stream leader, one `STREAM.MSG.GET` per
/// sequence (16 in flight), and works out each event's rows with gong-load's own decoding and
/// row builder.
pub async fn read_enriched(jetstream: &jetstream::Context) -> Result<Enriched, String> {
    let state = retried("GONG_ENRICHED info", || async {
        let mut stream = jetstream
            .get_stream(names::STREAM_ENRICHED)
            .await
            .map_err(|err| err.to_string())?;
        let info = stream.info().await.map_err(|err| err.to_string())?;
        Ok::<_, String>(info.state.clone())
    })
    .await?;
    let stream = retried("get stream GONG_ENRICHED", || {
        jetstream.get_stream(names::STREAM_ENRICHED)
    })
    .await?;
    let stream = &stream;
    let messages: Vec<(u64, Option<jetstream::message::StreamMessage>)> =
        futures::stream::iter(state.first_sequence.max(1)..=state.last_sequence)
            .map(|seq| async move {
                let mut attempts = 0;
                loop {
                    match stream.get_raw_message(seq).await {
                        Ok(message) => return Ok((seq, Some(message))),
                        Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => {
                            return Ok((seq, None))
                        }
                        Err(err) if attempts >= 20 => {
                            return Err(format!("STREAM.MSG.GET GONG_ENRICHED seq {seq}: {err}"))
                        }
                        Err(_) => {
                            attempts += 1;
                            tokio::time::sleep(Duration::from_millis(250)).await;
                        }
                    }
                }
            })
            .buffer_unordered(16)
            .try_collect()
            .await?;
    let mut enriched = Enriched {
        last_sequence: state.last_sequence,
        ..Enriched::default()
    };
    for (seq, message) in messages {
        let Some(message) = message else { continue };
        match decode(message.subject.as_str(), &message.payload) {
            Decoded::Entity(entity) => {
                let mut tables = TableSet::default();
                append_entity(&mut tables, &entity, seq);
                let mut rows = [0usize; Table::COUNT];
                for table in Table::ALL {
                    rows[table.index()] = tables.get_mut(table).len();
                }
                enriched.events.insert(
                    seq,
                    Entry {
                        event_id: entity.event_id().to_string(),
                        rows,
                    },
                );
            }
            Decoded::Ignored => enriched.ignored += 1,
            Decoded::Poison { .. } => enriched.poison.push(seq),
        }
    }
    enriched.poison.sort_unstable();
    Ok(enriched)
}

/// One record of the range manifest (`gong_load_ranges`, key `range.<first:020>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeRecord {
    /// First sequence.
    pub first: u64,
    /// Last sequence.
    pub last: u64,
    /// `pending` or `done` (as the JSON says).
    pub state: String,
    /// The process that claimed it, took it over, or marked it done.
    pub owner: String,
}

/// Every `range.*` record of the manifest, by first sequence, read from the bucket stream's
/// leader. Missing bucket: empty.
pub async fn read_manifest(
    jetstream: &jetstream::Context,
) -> Result<BTreeMap<u64, RangeRecord>, String> {
    let bucket = names::BUCKET_LOAD_RANGES;
    let Ok(kv) = jetstream.get_key_value(bucket).await else {
        return Ok(BTreeMap::new());
    };
    let keys: Vec<String> = retried("list manifest keys", || async {
        tokio::time::timeout(Duration::from_secs(10), async {
            kv.keys()
                .await
                .map_err(|err| err.to_string())?
                .try_collect::<Vec<String>>()
                .await
                .map_err(|err| err.to_string())
        })
        .await
        .map_err(|_| "timed out".to_string())?
    })
    .await?;
    let stream = retried("get the manifest stream", || {
        jetstream.get_stream(format!("KV_{bucket}"))
    })
    .await?;
    let mut records = BTreeMap::new();
    for key in keys.iter().filter(|key| key.starts_with("range.")) {
        let subject = format!("$KV.{bucket}.{key}");
        let message = retried(&format!("read {subject}"), || async {
            match stream.get_last_raw_message_by_subject(&subject).await {
                Ok(message) => Ok(Some(message)),
                Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
                Err(err) => Err(err),
            }
        })
        .await?;
        let Some(message) = message else { continue };
        if message.headers.get("KV-Operation").is_some() {
            continue; // deleted or purged
        }
        let json: serde_json::Value = serde_json::from_slice(&message.payload)
            .map_err(|err| format!("{subject} is not JSON: {err}"))?;
        let field = |name: &str| json.get(name).cloned().unwrap_or_default();
        let record = RangeRecord {
            first: field("first")
                .as_u64()
                .ok_or(format!("{subject}: no first"))?,
            last: field("last")
                .as_u64()
                .ok_or(format!("{subject}: no last"))?,
            state: field("state").as_str().unwrap_or_default().to_string(),
            owner: field("owner").as_str().unwrap_or_default().to_string(),
        };
        records.insert(record.first, record);
    }
    Ok(records)
}
