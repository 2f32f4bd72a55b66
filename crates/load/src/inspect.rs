//! `gong-load inspect`: schema and first rows of staged Parquet files, for users without
//! Snowflake.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// Inspecting failed.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// A file or directory could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A file is not readable Parquet.
    #[error("{path} is not readable parquet: {reason}")]
    Parquet {
        /// Path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The `.parquet` files under `path` (itself if it is a file), sorted.
pub fn parquet_files(path: &Path) -> Result<Vec<PathBuf>, InspectError> {
    let io_error = |source| InspectError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io_error)?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut pending = vec![path.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|source| InspectError::Io {
            path: dir.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| InspectError::Io {
                path: dir.clone(),
                source,
            })?;
            let entry_path = entry.path();
            if entry_path.is_dir() {
                pending.push(entry_path);
            } else if entry_path.extension().is_some_and(|ext| ext == "parquet") {
                out.push(entry_path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Prints each file's path, row count, key-value metadata, schema and its first `rows` rows as
/// JSON lines.
pub fn inspect(path: &Path, rows: usize, out: &mut dyn Write) -> Result<usize, InspectError> {
    let files = parquet_files(path)?;
    for file_path in &files {
        let parquet_error = |reason: String| InspectError::Parquet {
            path: file_path.clone(),
            reason,
        };
        let io_error = |source| InspectError::Io {
            path: file_path.clone(),
            source,
        };
        let file = File::open(file_path).map_err(io_error)?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|err| parquet_error(err.to_string()))?;
        let metadata = builder.metadata().file_metadata();
        let _ = writeln!(out, "== {}", file_path.display());
        let _ = writeln!(
            out,
            "rows: {}  row groups: {}",
            metadata.num_rows(),
            builder.metadata().num_row_groups()
        );
        for kv in metadata.key_value_metadata().into_iter().flatten() {
            if kv.key.starts_with("gong.") {
                let _ = writeln!(out, "{}: {}", kv.key, kv.value.as_deref().unwrap_or(""));
            }
        }
        let _ = writeln!(out, "schema:");
        for field in builder.schema().fields() {
            let nullable = if field.is_nullable() { "" } else { " not null" };
            let _ = writeln!(out, "  {}: {}{}", field.name(), field.data_type(), nullable);
        }
        if rows == 0 {
            continue;
        }
        let reader = builder
            .with_batch_size(rows.min(8192))
            .with_limit(rows)
            .build()
            .map_err(|err| parquet_error(err.to_string()))?;
        let _ = writeln!(out, "first rows:");
        let mut writer = arrow::json::LineDelimitedWriter::new(&mut *out);
        for batch in reader {
            let batch = batch.map_err(|err| parquet_error(err.to_string()))?;
            let batch = displayable(&batch).map_err(|err| parquet_error(err.to_string()))?;
            writer
                .write(&batch)
                .map_err(|err| parquet_error(err.to_string()))?;
        }
        writer
            .finish()
            .map_err(|err| parquet_error(err.to_string()))?;
    }
    Ok(files.len())
}

/// `batch` with named-zone timestamps (`"UTC"`) recast to the `+00:00` offset, which arrow can
/// render without a time-zone database. Values are unchanged (UTC instants).
pub fn displayable(batch: &RecordBatch) -> Result<RecordBatch, arrow::error::ArrowError> {
    let mut fields = Vec::new();
    let mut columns = Vec::new();
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        match field.data_type() {
            DataType::Timestamp(unit, Some(_)) => {
                let offset = DataType::Timestamp(*unit, Some("+00:00".into()));
                columns.push(arrow::compute::cast(column, &offset)?);
                fields.push(Field::new(field.name(), offset, field.is_nullable()));
            }
            _ => {
                columns.push(column.clone());
                fields.push(field.as_ref().clone());
            }
        }
    }
    RecordBatch::try_new(std::sync::Arc::new(Schema::new(fields)), columns)
}

/// What a stage holds, per table, and the calls in it.
#[derive(Debug, Default, serde::Serialize)]
pub struct Summary {
    /// Files and rows per table (the directory above `dt=...`).
    pub tables: std::collections::BTreeMap<String, TableSummary>,
    /// Distinct `call_id` values in `calls`.
    pub distinct_calls: usize,
    /// Distinct `event_id` values in `calls`.
    pub distinct_events: usize,
    /// `calls` rows whose `event_id` appears more than once (0 on a healthy stage).
    pub duplicate_event_rows: usize,
    /// A few calls: (call_id, started, title).
    pub sample_calls: Vec<(String, String, String)>,
}

/// Files and rows of one table.
#[derive(Debug, Default, serde::Serialize)]
pub struct TableSummary {
    /// Parquet files.
    pub files: usize,
    /// Rows across them.
    pub rows: i64,
}

/// Reads every staged file under `path` and summarises it.
pub fn summary(path: &Path) -> Result<Summary, InspectError> {
    use arrow::array::{Array, StringArray};
    let mut result = Summary::default();
    let mut events = std::collections::HashMap::<String, usize>::new();
    let mut calls = std::collections::HashSet::<String>::new();
    for file_path in parquet_files(path)? {
        let parquet_error = |reason: String| InspectError::Parquet {
            path: file_path.clone(),
            reason,
        };
        let table = file_path
            .parent()
            .and_then(Path::parent)
            .and_then(Path::file_name)
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let file = File::open(&file_path).map_err(|source| InspectError::Io {
            path: file_path.clone(),
            source,
        })?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|err| parquet_error(err.to_string()))?;
        let entry = result.tables.entry(table.clone()).or_default();
        entry.files += 1;
        entry.rows += builder.metadata().file_metadata().num_rows();
        if table != "calls" {
            continue;
        }
        let reader = builder
            .build()
            .map_err(|err| parquet_error(err.to_string()))?;
        for batch in reader {
            let batch = batch.map_err(|err| parquet_error(err.to_string()))?;
            let batch = displayable(&batch).map_err(|err| parquet_error(err.to_string()))?;
            let column = |name: &str| -> Option<StringArray> {
                let array = batch.column_by_name(name)?;
                let text = arrow::compute::cast(array, &DataType::Utf8).ok()?;
                text.as_any().downcast_ref::<StringArray>().cloned()
            };
            let (Some(call_ids), Some(event_ids)) = (column("call_id"), column("event_id")) else {
                return Err(parquet_error(
                    "calls file without call_id or event_id".into(),
                ));
            };
            let started = column("started");
            let titles = column("title");
            for row in 0..batch.num_rows() {
                let call_id = call_ids.value(row).to_string();
                *events.entry(event_ids.value(row).to_string()).or_default() += 1;
                if calls.insert(call_id.clone()) && result.sample_calls.len() < 5 {
                    let text = |array: &Option<StringArray>| {
                        array
                            .as_ref()
                            .filter(|array| !array.is_null(row))
                            .map(|array| array.value(row).to_string())
                            .unwrap_or_default()
                    };
                    result
                        .sample_calls
                        .push((call_id, text(&started), text(&titles)));
                }
            }
        }
    }
    result.distinct_calls = calls.len();
    result.distinct_events = events.len();
    result.duplicate_event_rows = events
        .values()
        .filter(|count| **count > 1)
        .map(|count| count - 1)
        .sum();
    Ok(result)
}

/// Prints [`summary`] as a short human report.
pub fn print_summary(summary: &Summary, out: &mut dyn Write) {
    let _ = writeln!(out, "{:<28} {:>6} {:>10}", "table", "files", "rows");
    for (table, entry) in &summary.tables {
        let _ = writeln!(out, "{:<28} {:>6} {:>10}", table, entry.files, entry.rows);
    }
    let _ = writeln!(
        out,
        "calls: {} distinct call ids, {} distinct events, {} duplicate event rows",
        summary.distinct_calls, summary.distinct_events, summary.duplicate_event_rows
    );
    for (call_id, started, title) in &summary.sample_calls {
        let _ = writeln!(out, "  {call_id}  {started}  {title}");
    }
}
