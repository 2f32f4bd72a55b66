//! The staged tables: one column list per table, the single source of truth for the Arrow
//! schema written to Parquet and for the Snowflake `CREATE TABLE` statements.
//!
//! Conventions: ids are strings; times are `Timestamp(µs, "UTC")`; units are in column names
//! (`duration_seconds`, `start_ms`); booleans are booleans; JSON (unknown fields, CRM values)
//! travels as JSON text in `*_json` columns. The file's key-value metadata carries
//! [`SCHEMA_VERSION`] under [`META_SCHEMA_VERSION`].

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// Version of the staged table layout; bumped on any column change.
pub const SCHEMA_VERSION: u32 = 1;

/// Key-value metadata key holding [`SCHEMA_VERSION`].
pub const META_SCHEMA_VERSION: &str = "gong.schema_version";
/// Key-value metadata key holding the table name.
pub const META_TABLE: &str = "gong.table";
/// Key-value metadata key holding the first GONG_ENRICHED sequence of the file's range.
pub const META_RANGE_FIRST: &str = "gong.range_first";
/// Key-value metadata key holding the last GONG_ENRICHED sequence of the file's range.
pub const META_RANGE_LAST: &str = "gong.range_last";

/// The kind of a column, mapped to Arrow and to Snowflake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// UTF-8 text (`VARCHAR`).
    Text,
    /// JSON as text (`VARCHAR` in the table; views parse it with `TRY_PARSE_JSON`).
    Json,
    /// Microseconds since the epoch, UTC (`TIMESTAMP_TZ`).
    Timestamp,
    /// 64-bit integer (`NUMBER(38,0)`).
    Int,
    /// 64-bit float (`FLOAT`).
    Float,
    /// Boolean (`BOOLEAN`).
    Bool,
}

impl Kind {
    /// The Arrow type of the column.
    pub fn arrow_type(self) -> DataType {
        match self {
            Kind::Text | Kind::Json => DataType::Utf8,
            Kind::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            Kind::Int => DataType::Int64,
            Kind::Float => DataType::Float64,
            Kind::Bool => DataType::Boolean,
        }
    }

    /// The Snowflake type of the column.
    pub fn snowflake_type(self) -> &'static str {
        match self {
            Kind::Text | Kind::Json => "VARCHAR",
            Kind::Timestamp => "TIMESTAMP_TZ",
            Kind::Int => "NUMBER(38,0)",
            Kind::Float => "FLOAT",
            Kind::Bool => "BOOLEAN",
        }
    }
}

/// One column of a staged table.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    /// Column name (lower snake case; Snowflake matches it case-insensitively).
    pub name: &'static str,
    /// Its kind.
    pub kind: Kind,
    /// Whether it may be null.
    pub nullable: bool,
    /// What it holds (becomes the Snowflake column comment).
    pub doc: &'static str,
}

const fn col(name: &'static str, kind: Kind, nullable: bool, doc: &'static str) -> Column {
    Column {
        name,
        kind,
        nullable,
        doc,
    }
}

use Kind::{Bool, Float, Int, Json, Text, Timestamp};

const CALLS: &[Column] = &[
    col(
        "event_id",
        Text,
        false,
        "id of the enriched event (dedupe key)",
    ),
    col(
        "raw_event_id",
        Text,
        false,
        "id of the raw webhook event (sha-256 of the body)",
    ),
    col(
        "replay_run_id",
        Text,
        true,
        "set when a replay produced the event",
    ),
    col("call_id", Text, false, "Gong call id"),
    col("started", Timestamp, true, "actual start of the call, UTC"),
    col(
        "scheduled",
        Timestamp,
        true,
        "scheduled start of the call, UTC",
    ),
    col("title", Text, true, "call title"),
    col("duration_seconds", Int, true, "call duration in seconds"),
    col(
        "direction",
        Text,
        true,
        "Inbound, Outbound, Conference, Unknown",
    ),
    col("scope", Text, true, "Internal, External, Unknown"),
    col("system", Text, true, "conferencing or telephony system"),
    col("media", Text, true, "Video or Audio"),
    col("language", Text, true, "language code"),
    col("primary_user_id", Text, true, "Gong user id of the host"),
    col("workspace_id", Text, true, "Gong workspace id"),
    col(
        "is_private",
        Bool,
        true,
        "private call (not transcribed by public connectors)",
    ),
    col("url", Text, true, "link to the call in Gong"),
    col("meeting_url", Text, true, "meeting link"),
    col("purpose", Text, true, "call purpose"),
    col("brief", Text, true, "Gong's one-paragraph summary"),
    col(
        "received_at",
        Timestamp,
        false,
        "when gong-ingest received the webhook, UTC",
    ),
    col(
        "fetched_at",
        Timestamp,
        false,
        "when the Gong API answered, UTC",
    ),
    col(
        "raw_stream_seq",
        Int,
        false,
        "sequence of the raw event in GONG_RAW",
    ),
    col(
        "enriched_stream_seq",
        Int,
        false,
        "sequence of the enriched event in GONG_ENRICHED",
    ),
    col(
        "extra_json",
        Json,
        true,
        "fields the schema does not know yet, as JSON",
    ),
];

const CALL_PARTICIPANTS: &[Column] = &[
    col("event_id", Text, false, "id of the enriched event"),
    col("call_id", Text, false, "Gong call id"),
    col(
        "participant_id",
        Text,
        true,
        "participant id within the call",
    ),
    col(
        "speaker_id",
        Text,
        true,
        "joins call_transcript_sentences.speaker_id",
    ),
    col(
        "user_id",
        Text,
        true,
        "Gong user id, for internal participants",
    ),
    col("name", Text, true, "display name"),
    col("email", Text, true, "email address"),
    col("title", Text, true, "job title"),
    col("affiliation", Text, true, "Internal, External, Unknown"),
    col("phone_number", Text, true, "phone number"),
    col(
        "extra_json",
        Json,
        true,
        "fields the schema does not know yet, as JSON",
    ),
];

const CALL_TRANSCRIPT_SENTENCES: &[Column] = &[
    col("event_id", Text, false, "id of the enriched event"),
    col("call_id", Text, false, "Gong call id"),
    col(
        "speaker_id",
        Text,
        true,
        "joins call_participants.speaker_id",
    ),
    col("topic", Text, true, "topic of the monologue"),
    col(
        "monologue_index",
        Int,
        false,
        "position of the monologue in the transcript",
    ),
    col(
        "sentence_index",
        Int,
        false,
        "position of the sentence in the monologue",
    ),
    col(
        "start_ms",
        Int,
        false,
        "milliseconds from the start of the call",
    ),
    col(
        "end_ms",
        Int,
        false,
        "milliseconds from the start of the call",
    ),
    col("text", Text, false, "the sentence"),
];

const CALL_TRACKERS: &[Column] = &[
    col("event_id", Text, false, "id of the enriched event"),
    col("call_id", Text, false, "Gong call id"),
    col("tracker_id", Text, true, "tracker id"),
    col("name", Text, true, "tracker name"),
    col("type", Text, true, "KEYWORD or SMART"),
    col("count", Int, true, "occurrences in the call"),
    col(
        "extra_json",
        Json,
        true,
        "fields the schema does not know yet, as JSON",
    ),
];

const CALL_TOPICS: &[Column] = &[
    col("event_id", Text, false, "id of the enriched event"),
    col("call_id", Text, false, "Gong call id"),
    col("name", Text, true, "topic name"),
    col(
        "duration_seconds",
        Float,
        true,
        "seconds spent on the topic",
    ),
    col(
        "extra_json",
        Json,
        true,
        "fields the schema does not know yet, as JSON",
    ),
];

const CALL_CONTEXT_FIELDS: &[Column] = &[
    col("event_id", Text, false, "id of the enriched event"),
    col("call_id", Text, false, "Gong call id"),
    col("system", Text, true, "CRM system (Salesforce, HubSpot...)"),
    col(
        "object_type",
        Text,
        true,
        "CRM object type (Account, Opportunity...)",
    ),
    col("object_id", Text, true, "CRM object id"),
    col("field_name", Text, true, "CRM field name"),
    col("value_json", Json, true, "CRM field value, as JSON"),
];

/// A staged table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// One row per enriched call event.
    Calls,
    /// One row per participant.
    CallParticipants,
    /// One row per transcript sentence.
    CallTranscriptSentences,
    /// One row per tracker.
    CallTrackers,
    /// One row per topic.
    CallTopics,
    /// One row per CRM field of a linked CRM object.
    CallContextFields,
}

impl Table {
    /// All tables, in file-writing order.
    pub const ALL: [Table; 6] = [
        Table::Calls,
        Table::CallParticipants,
        Table::CallTranscriptSentences,
        Table::CallTrackers,
        Table::CallTopics,
        Table::CallContextFields,
    ];

    /// The table name: the stage folder and the Snowflake table.
    pub fn name(self) -> &'static str {
        match self {
            Table::Calls => "calls",
            Table::CallParticipants => "call_participants",
            Table::CallTranscriptSentences => "call_transcript_sentences",
            Table::CallTrackers => "call_trackers",
            Table::CallTopics => "call_topics",
            Table::CallContextFields => "call_context_fields",
        }
    }

    /// Parses [`Table::name`].
    pub fn parse(name: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|table| table.name() == name)
    }

    /// Position in [`Table::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The columns, in file order.
    pub fn columns(self) -> &'static [Column] {
        match self {
            Table::Calls => CALLS,
            Table::CallParticipants => CALL_PARTICIPANTS,
            Table::CallTranscriptSentences => CALL_TRANSCRIPT_SENTENCES,
            Table::CallTrackers => CALL_TRACKERS,
            Table::CallTopics => CALL_TOPICS,
            Table::CallContextFields => CALL_CONTEXT_FIELDS,
        }
    }

    /// The Arrow schema, with the schema version and table name in its metadata.
    pub fn schema(self) -> SchemaRef {
        let fields: Vec<Field> = self
            .columns()
            .iter()
            .map(|column| Field::new(column.name, column.kind.arrow_type(), column.nullable))
            .collect();
        let metadata: std::collections::HashMap<String, String> = [
            (META_SCHEMA_VERSION.to_string(), SCHEMA_VERSION.to_string()),
            (META_TABLE.to_string(), self.name().to_string()),
        ]
        .into_iter()
        .collect();
        Arc::new(Schema::new_with_metadata(fields, metadata))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_strings_and_times_are_utc_micros() {
        let schema = Table::Calls.schema();
        assert_eq!(
            schema.field_with_name("call_id").unwrap().data_type(),
            &DataType::Utf8
        );
        assert_eq!(
            schema.field_with_name("started").unwrap().data_type(),
            &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        );
        assert_eq!(
            schema.field_with_name("is_private").unwrap().data_type(),
            &DataType::Boolean
        );
        for table in Table::ALL {
            assert_eq!(Table::parse(table.name()), Some(table));
            assert_eq!(table.columns()[0].name, "event_id");
            assert_eq!(Table::ALL[table.index()], table);
        }
    }
}
