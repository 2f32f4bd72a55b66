//! Reading the stage back (local directory or S3) with the parquet crate, and the
//! exactly-once verdict.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, StringArray};
use arrow::datatypes::DataType;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::ObjectStore;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::sender::Delivery;

/// What the stage holds, as far as the exactly-once promise is concerned.
#[derive(Debug, Default, Clone)]
pub struct Staged {
    /// Files per table (the directory above `dt=...`).
    pub files_per_table: BTreeMap<String, usize>,
    /// Sequence ranges (from the names) per table.
    pub ranges_per_table: BTreeMap<String, BTreeSet<(u64, u64)>>,
    /// `calls` rows per `event_id`.
    pub event_rows: HashMap<String, usize>,
    /// `calls` rows per `call_id`.
    pub call_rows: HashMap<String, usize>,
    /// Sequence ranges of the `calls` files (from their names).
    pub calls_ranges: Vec<(u64, u64)>,
    /// Objects that are not complete `.parquet` files under the layout (partial uploads,
    /// staging leftovers): must stay empty.
    pub strays: Vec<String>,
    /// `.parquet` files the parquet crate cannot read: must stay empty.
    pub unreadable: Vec<String>,
}

impl Staged {
    fn add(&mut self, relative: &str, bytes: Option<Bytes>) {
        let parts: Vec<&str> = relative.split('/').collect();
        let [table, dt, name] = parts[..] else {
            self.strays.push(relative.to_string());
            return;
        };
        let range = gong_load::stage::parse_file_name(name);
        if !dt.starts_with("dt=") || range.is_none() {
            self.strays.push(relative.to_string());
            return;
        }
        let range = range.expect("checked above");
        *self.files_per_table.entry(table.to_string()).or_default() += 1;
        self.ranges_per_table
            .entry(table.to_string())
            .or_default()
            .insert(range);
        if table != "calls" {
            return;
        }
        let Some(bytes) = bytes else { return };
        match calls_ids(bytes) {
            Ok(rows) => {
                self.calls_ranges.push(range);
                for (event_id, call_id) in rows {
                    *self.event_rows.entry(event_id).or_default() += 1;
                    *self.call_rows.entry(call_id).or_default() += 1;
                }
            }
            Err(reason) => self.unreadable.push(format!("{relative}: {reason}")),
        }
    }

    /// The stream sequences `1..=ack_floor` that no `calls` file covers: acknowledged by
    /// gong-load without being durable on the stage. Empty when the promise holds.
    pub fn uncovered_up_to(&self, ack_floor: u64) -> Vec<u64> {
        let mut ranges = self.calls_ranges.clone();
        ranges.sort();
        let mut uncovered = Vec::new();
        let mut next = 1u64;
        for (first, last) in ranges {
            if first > next {
                uncovered.extend(next..first.min(ack_floor + 1));
            }
            next = next.max(last + 1);
            if next > ack_floor {
                break;
            }
        }
        if next <= ack_floor {
            uncovered.extend(next..=ack_floor);
        }
        uncovered
    }

    /// Tables whose files do not cover exactly the ranges of the `calls` files: a range left
    /// half-written (some tables only) by a crash and never completed. Every event of the Gong
    /// double yields rows in every table, so every range has a file in each.
    pub fn incomplete_ranges(&self) -> Vec<(String, usize)> {
        let calls = self
            .ranges_per_table
            .get("calls")
            .cloned()
            .unwrap_or_default();
        self.ranges_per_table
            .iter()
            .filter(|(_, ranges)| **ranges != calls)
            .map(|(table, ranges)| (table.clone(), ranges.symmetric_difference(&calls).count()))
            .collect()
    }

    /// Pairs of `calls` files whose sequence ranges overlap (a rewrite under another name).
    pub fn overlapping_ranges(&self) -> Vec<((u64, u64), (u64, u64))> {
        let mut ranges = self.calls_ranges.clone();
        ranges.sort();
        ranges
            .windows(2)
            .filter(|pair| pair[1].0 <= pair[0].1)
            .map(|pair| (pair[0], pair[1]))
            .collect()
    }
}

/// `(event_id, call_id)` of every row of a `calls` file.
fn calls_ids(bytes: Bytes) -> Result<Vec<(String, String)>, String> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|builder| builder.build())
        .map_err(|err| err.to_string())?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|err| err.to_string())?;
        let column = |name: &str| -> Result<StringArray, String> {
            let array = batch
                .column_by_name(name)
                .ok_or_else(|| format!("no column {name}"))?;
            let text = arrow::compute::cast(array, &DataType::Utf8).map_err(|e| e.to_string())?;
            text.as_any()
                .downcast_ref::<StringArray>()
                .cloned()
                .ok_or_else(|| format!("{name} is not text"))
        };
        let (event_ids, call_ids) = (column("event_id")?, column("call_id")?);
        for row in 0..batch.num_rows() {
            rows.push((
                event_ids.value(row).to_string(),
                call_ids.value(row).to_string(),
            ));
        }
    }
    Ok(rows)
}

/// Reads a local stage directory (missing: empty).
pub fn read_local(root: &Path) -> Staged {
    let mut staged = Staged::default();
    for (path, relative) in local_files(root) {
        let wanted = relative.starts_with("calls/") && relative.ends_with(".parquet");
        let bytes = wanted
            .then(|| std::fs::read(&path).ok().map(Bytes::from))
            .flatten();
        staged.add(&relative, bytes);
    }
    staged
}

/// Every file below `root` (a missing or unreadable directory: none), with its path relative to
/// `root`.
pub fn local_files(root: &Path) -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let relative = path
                .strip_prefix(root)
                .expect("under the stage")
                .to_string_lossy()
                .to_string();
            files.push((path, relative));
        }
    }
    files
}

/// Reads every object under `prefix` of an S3 store.
pub async fn read_store(store: &Arc<dyn ObjectStore>, prefix: &str) -> Result<Staged, String> {
    let prefix_path = object_store::path::Path::from(prefix);
    let objects: Vec<_> = store
        .list(Some(&prefix_path))
        .try_collect()
        .await
        .map_err(|err| format!("list {prefix}: {err}"))?;
    let mut staged = Staged::default();
    for meta in objects {
        let location = meta.location.as_ref().to_string();
        let relative = location
            .strip_prefix(prefix)
            .unwrap_or(&location)
            .trim_start_matches('/')
            .to_string();
        let wanted = relative.starts_with("calls/") && relative.ends_with(".parquet");
        let bytes = if wanted {
            let result = store
                .get_opts(&meta.location, Default::default())
                .await
                .map_err(|err| format!("get {location}: {err}"))?;
            Some(
                result
                    .bytes()
                    .await
                    .map_err(|err| format!("read {location}: {err}"))?,
            )
        } else {
            None
        };
        staged.add(&relative, bytes);
    }
    Ok(staged)
}

/// The exactly-once verdict over what was sent and what is staged.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Webhooks answered 2xx.
    pub accepted: usize,
    /// Webhooks never answered 2xx (given up).
    pub not_accepted: usize,
    /// 2xx'd event ids absent from `calls`.
    pub missing: Vec<String>,
    /// Event ids with more than one `calls` row (and how many).
    pub duplicate_events: Vec<(String, usize)>,
    /// Call ids with more than one `calls` row.
    pub duplicate_calls: Vec<(String, usize)>,
    /// Event ids staged although never answered 2xx (stored, then the answer was lost or
    /// was a 503): allowed, counted.
    pub staged_without_2xx: usize,
}

impl Verdict {
    /// Compares the deliveries with the stage.
    pub fn of(deliveries: &[Delivery], staged: &Staged) -> Verdict {
        let accepted: HashSet<&str> = deliveries
            .iter()
            .filter_map(|delivery| delivery.event_id.as_deref())
            .collect();
        let mut missing: Vec<String> = accepted
            .iter()
            .filter(|event_id| !staged.event_rows.contains_key(**event_id))
            .map(|event_id| event_id.to_string())
            .collect();
        missing.sort();
        let mut duplicate_events: Vec<(String, usize)> = staged
            .event_rows
            .iter()
            .filter(|(_, rows)| **rows > 1)
            .map(|(id, rows)| (id.clone(), *rows))
            .collect();
        duplicate_events.sort();
        let mut duplicate_calls: Vec<(String, usize)> = staged
            .call_rows
            .iter()
            .filter(|(_, rows)| **rows > 1)
            .map(|(id, rows)| (id.clone(), *rows))
            .collect();
        duplicate_calls.sort();
        Verdict {
            accepted: accepted.len(),
            not_accepted: deliveries.len() - accepted.len(),
            missing,
            duplicate_events,
            duplicate_calls,
            staged_without_2xx: staged
                .event_rows
                .keys()
                .filter(|id| !accepted.contains(id.as_str()))
                .count(),
        }
    }

    /// Every 2xx'd event staged, and no event or call staged twice.
    pub fn exactly_once(&self) -> bool {
        self.missing.is_empty()
            && self.duplicate_events.is_empty()
            && self.duplicate_calls.is_empty()
    }

    /// A one-line summary.
    pub fn line(&self) -> String {
        format!(
            "accepted={} not_accepted={} missing={} duplicate_events={} duplicate_calls={} staged_without_2xx={}",
            self.accepted,
            self.not_accepted,
            self.missing.len(),
            self.duplicate_events.len(),
            self.duplicate_calls.len(),
            self.staged_without_2xx
        )
    }
}

/// The closing check every scenario shares: each 2xx'd event staged exactly once, no partial,
/// stray or unreadable object on the stage, and every range staged in every table. Each failure
/// message starts with `scenario` and ends with `explain` (the stages' log tails).
pub fn assert_clean(verdict: &Verdict, staged: &Staged, scenario: &str, explain: &str) {
    assert!(
        verdict.exactly_once(),
        "{scenario}: not exactly once: {}; first missing {:?}; duplicates {:?} {:?}; \
         overlapping files {:?}\n{explain}",
        verdict.line(),
        verdict.missing.iter().take(5).collect::<Vec<_>>(),
        verdict.duplicate_events.iter().take(5).collect::<Vec<_>>(),
        verdict.duplicate_calls.iter().take(5).collect::<Vec<_>>(),
        staged.overlapping_ranges()
    );
    assert!(
        staged.strays.is_empty() && staged.unreadable.is_empty(),
        "{scenario}: partial or stray objects on the stage: {:?} {:?}\n{explain}",
        staged.strays,
        staged.unreadable
    );
    assert!(
        staged.incomplete_ranges().is_empty(),
        "{scenario}: ranges not staged in every table, e.g. half-written by a crash and never \
         completed (table, differing ranges): {:?}\n{explain}",
        staged.incomplete_ranges()
    );
}

/// One staged file of any table, every row read back (for the per-range content check).
#[derive(Debug, Clone)]
pub struct FileRows {
    /// The table (the directory above `dt=...`).
    pub table: String,
    /// Path relative to the stage root.
    pub relative: String,
    /// The GONG_ENRICHED sequence range in its name.
    pub range: (u64, u64),
    /// Rows per `event_id`.
    pub event_rows: BTreeMap<String, usize>,
    /// `(enriched_stream_seq, event_id)` of every row (the `calls` table only).
    pub seqs: Vec<(u64, String)>,
}

/// Reads every complete `.parquet` file of every table of a local stage. Files that do not
/// follow the layout are skipped ([`read_local`] reports them as strays); files the parquet crate
/// cannot read are returned as `Err(relative: reason)`.
pub fn read_local_files(root: &Path) -> Vec<Result<FileRows, String>> {
    let mut files = Vec::new();
    for (path, relative) in local_files(root) {
        let parts: Vec<&str> = relative.split('/').collect();
        let [table, dt, name] = parts[..] else {
            continue;
        };
        let Some(range) = gong_load::stage::parse_file_name(name) else {
            continue;
        };
        if !dt.starts_with("dt=") {
            continue;
        }
        let read = std::fs::read(&path)
            .map_err(|err| err.to_string())
            .and_then(|bytes| rows_of(Bytes::from(bytes), table == "calls"));
        files.push(
            read.map(|(event_rows, seqs)| FileRows {
                table: table.to_string(),
                relative: relative.clone(),
                range,
                event_rows,
                seqs,
            })
            .map_err(|reason| format!("{relative}: {reason}")),
        );
    }
    files.sort_by(|a, b| match (a, b) {
        (Ok(a), Ok(b)) => (&a.table, a.range).cmp(&(&b.table, b.range)),
        _ => std::cmp::Ordering::Equal,
    });
    files
}

/// Rows per `event_id` of a staged file and, with `with_seqs`, every row's
/// `(enriched_stream_seq, event_id)`.
#[allow(clippy::type_complexity)]
fn rows_of(
    bytes: Bytes,
    with_seqs: bool,
) -> Result<(BTreeMap<String, usize>, Vec<(u64, String)>), String> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|builder| builder.build())
        .map_err(|err| err.to_string())?;
    let mut event_rows = BTreeMap::new();
    let mut seqs = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|err| err.to_string())?;
        let column = |name: &str, to: &DataType| {
            let array = batch
                .column_by_name(name)
                .ok_or_else(|| format!("no column {name}"))?;
            arrow::compute::cast(array, to).map_err(|err| format!("{name}: {err}"))
        };
        let event_ids = column("event_id", &DataType::Utf8)?;
        let event_ids = event_ids
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or("event_id is not text")?;
        for row in 0..batch.num_rows() {
            *event_rows
                .entry(event_ids.value(row).to_string())
                .or_default() += 1;
        }
        if with_seqs {
            let column = column("enriched_stream_seq", &DataType::Int64)?;
            let values = column
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .ok_or("enriched_stream_seq is not an integer")?;
            for row in 0..batch.num_rows() {
                seqs.push((values.value(row) as u64, event_ids.value(row).to_string()));
            }
        }
    }
    Ok((event_rows, seqs))
}
