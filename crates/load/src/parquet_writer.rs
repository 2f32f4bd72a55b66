//! Encoding a range's rows into one Parquet file per table, spooled on local disk.
//!
//! Rows are buffered in Arrow builders for a short chunk, then written into a synchronous
//! `ArrowWriter` per table. The writer keeps at most one row group (`LOAD_ROW_GROUP_ROWS`) in
//! memory and streams finished row groups to a spool file, so memory is bounded by the row
//! group whatever the file size. [`Spool`] methods are blocking: callers run them on
//! `spawn_blocking`. The finished files are uploaded to the stage by [`crate::stage`].
//!
//! The files are a pure function of the appended events and the range: Zstandard, row groups cut
//! by row count only, page statistics, a constant `created_by`, and key-value metadata with the
//! schema version, the table and the range.

use std::fs::File;
use std::path::PathBuf;

use chrono::{DateTime, NaiveDate, Utc};
use gong_common::event::EnrichedEvent;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};

use crate::rows::{append_entity, append_event, Entity, TableSet};
use crate::schema::{
    Table, META_RANGE_FIRST, META_RANGE_LAST, META_SCHEMA_VERSION, META_TABLE, SCHEMA_VERSION,
};

/// Builder rows buffered before they are handed to the Parquet writers.
pub const CHUNK_ROWS: usize = 8192;

/// Encoding failed (spool disk full, unwritable spool directory...).
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The spool directory or a spool file could not be created.
    #[error("cannot create spool file under {path}: {source}")]
    Spool {
        /// Directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Arrow rejected a batch (a schema bug).
    #[error("cannot build {table} rows: {source}")]
    Arrow {
        /// Table.
        table: &'static str,
        /// Cause.
        #[source]
        source: arrow::error::ArrowError,
    },
    /// The Parquet writer failed.
    #[error("cannot write parquet for {table}: {source}")]
    Parquet {
        /// Table.
        table: &'static str,
        /// Cause.
        #[source]
        source: parquet::errors::ParquetError,
    },
}

/// How files are encoded.
#[derive(Debug, Clone)]
pub struct WriterSettings {
    /// Rows per row group (`LOAD_ROW_GROUP_ROWS`).
    pub row_group_rows: usize,
    /// Zstandard level.
    pub zstd_level: i32,
    /// Where spool files go (`LOAD_SPOOL_DIR`; the system temp dir when `None`).
    pub spool_dir: Option<PathBuf>,
}

impl WriterSettings {
    /// The Parquet writer properties every file of a range is written with.
    pub fn properties(&self) -> WriterProperties {
        let level = ZstdLevel::try_new(self.zstd_level).unwrap_or_default();
        WriterProperties::builder()
            .set_compression(Compression::ZSTD(level))
            .set_max_row_group_row_count(Some(self.row_group_rows.max(1)))
            .set_max_row_group_bytes(None)
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_created_by(format!(
                "gong-load schema v{}",
                crate::schema::SCHEMA_VERSION
            ))
            .build()
    }
}

/// Rows of a range being encoded.
pub struct Spool {
    dir: tempfile::TempDir,
    properties: WriterProperties,
    tables: TableSet,
    writers: Vec<Option<ArrowWriter<File>>>,
    rows: [usize; Table::COUNT],
    events: usize,
    first_received_at: Option<DateTime<Utc>>,
}

/// One finished spool file.
#[derive(Debug, Clone)]
pub struct SpooledFile {
    /// Its table.
    pub table: Table,
    /// Where it is on local disk.
    pub path: PathBuf,
    /// Rows in it.
    pub rows: usize,
    /// Its size.
    pub bytes: u64,
}

/// The finished files of a range; the spool directory is removed on drop.
pub struct SpooledRange {
    _dir: tempfile::TempDir,
    /// Partition date: the UTC day of the first event's `received_at` (a user's or
    /// scorecard's `fetched_at`).
    pub dt: Option<NaiveDate>,
    /// `received_at` of the first event.
    pub first_received_at: Option<DateTime<Utc>>,
    /// One file per table that has rows, in [`Table::ALL`] order.
    pub files: Vec<SpooledFile>,
    /// Events appended (calls, users and scorecards).
    pub events: usize,
}

impl Spool {
    /// A new spool in a fresh directory under `settings.spool_dir`.
    pub fn new(settings: &WriterSettings) -> Result<Spool, EncodeError> {
        let base = settings
            .spool_dir
            .clone()
            .unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&base).map_err(|source| EncodeError::Spool {
            path: base.clone(),
            source,
        })?;
        let dir = tempfile::Builder::new()
            .prefix("gong-load-")
            .tempdir_in(&base)
            .map_err(|source| EncodeError::Spool {
                path: base.clone(),
                source,
            })?;
        Ok(Spool {
            dir,
            properties: settings.properties(),
            tables: TableSet::default(),
            writers: Table::ALL.iter().map(|_| None).collect(),
            rows: [0; Table::COUNT],
            events: 0,
            first_received_at: None,
        })
    }

    /// Appends the rows of one call event (stored at `stream_seq`).
    pub fn append(&mut self, event: &EnrichedEvent, stream_seq: u64) -> Result<(), EncodeError> {
        if self.first_received_at.is_none() {
            self.first_received_at = Some(event.received_at);
        }
        append_event(&mut self.tables, event, stream_seq);
        self.appended()
    }

    /// Appends the rows of one event of any subject (stored at `stream_seq`).
    pub fn append_entity(&mut self, entity: &Entity, stream_seq: u64) -> Result<(), EncodeError> {
        if self.first_received_at.is_none() {
            self.first_received_at = Some(entity.received_at());
        }
        append_entity(&mut self.tables, entity, stream_seq);
        self.appended()
    }

    fn appended(&mut self) -> Result<(), EncodeError> {
        self.events += 1;
        if self
            .tables
            .tables
            .iter()
            .any(|rows| rows.len() >= CHUNK_ROWS)
        {
            self.drain()?;
        }
        Ok(())
    }

    /// Events appended so far.
    pub fn events(&self) -> usize {
        self.events
    }

    /// Bytes written to spool files plus the encoded size of the row groups in progress: the
    /// compressed size the files will roughly have.
    pub fn bytes(&self) -> usize {
        self.writers
            .iter()
            .flatten()
            .map(|writer| writer.bytes_written() + writer.in_progress_size())
            .sum()
    }

    /// Hands buffered rows to the Parquet writers.
    pub fn drain(&mut self) -> Result<(), EncodeError> {
        for table in Table::ALL {
            let buffered = self.tables.get_mut(table);
            if buffered.is_empty() {
                continue;
            }
            let count = buffered.len();
            let batch = buffered.take_batch().map_err(|source| EncodeError::Arrow {
                table: table.name(),
                source,
            })?;
            let writer = match &mut self.writers[table.index()] {
                Some(writer) => writer,
                slot => {
                    let path = self.dir.path().join(format!("{}.parquet", table.name()));
                    let file = File::create(&path).map_err(|source| EncodeError::Spool {
                        path: path.clone(),
                        source,
                    })?;
                    let writer =
                        ArrowWriter::try_new(file, table.schema(), Some(self.properties.clone()))
                            .map_err(|source| EncodeError::Parquet {
                            table: table.name(),
                            source,
                        })?;
                    slot.insert(writer)
                }
            };
            writer
                .write(&batch)
                .map_err(|source| EncodeError::Parquet {
                    table: table.name(),
                    source,
                })?;
            self.rows[table.index()] += count;
        }
        Ok(())
    }

    /// Writes the footers, recording the range `first..=last` in each file's metadata.
    pub fn finish(mut self, first: u64, last: u64) -> Result<SpooledRange, EncodeError> {
        self.drain()?;
        let mut files = Vec::new();
        for table in Table::ALL {
            let Some(mut writer) = self.writers[table.index()].take() else {
                continue;
            };
            writer.append_key_value_metadata(KeyValue::new(
                META_SCHEMA_VERSION.to_string(),
                SCHEMA_VERSION.to_string(),
            ));
            writer.append_key_value_metadata(KeyValue::new(
                META_TABLE.to_string(),
                table.name().to_string(),
            ));
            writer.append_key_value_metadata(KeyValue::new(
                META_RANGE_FIRST.to_string(),
                first.to_string(),
            ));
            writer.append_key_value_metadata(KeyValue::new(
                META_RANGE_LAST.to_string(),
                last.to_string(),
            ));
            writer.close().map_err(|source| EncodeError::Parquet {
                table: table.name(),
                source,
            })?;
            let path = self.dir.path().join(format!("{}.parquet", table.name()));
            let bytes = std::fs::metadata(&path)
                .map(|meta| meta.len())
                .map_err(|source| EncodeError::Spool {
                    path: path.clone(),
                    source,
                })?;
            files.push(SpooledFile {
                table,
                path,
                rows: self.rows[table.index()],
                bytes,
            });
        }
        Ok(SpooledRange {
            _dir: self.dir,
            dt: self.first_received_at.map(|time| time.date_naive()),
            first_received_at: self.first_received_at,
            files,
            events: self.events,
        })
    }
}
