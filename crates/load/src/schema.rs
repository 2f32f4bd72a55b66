//! The staged tables: one column list per table, the single source of truth for the Arrow
//! schema written to Parquet and for the Snowflake `CREATE TABLE` statements and views.
//!
//! Conventions: ids are strings; instants are `Timestamp(µs, "UTC")` (`TIMESTAMP_TZ` in
//! Snowflake, which shows them in the loading session's time zone), and the days analysts group
//! by have a `*_date_utc` column (`Date32`, `DATE`) that is the UTC day whatever the session's
//! zone; units are in column names (`duration_seconds`, `start_ms`); booleans are booleans;
//! JSON (unknown fields, CRM values) travels as JSON text in `*_json` columns; a value Gong did
//! not send is null, never 0 or empty. Every row carries `event_id` and `enriched_stream_seq`,
//! the GONG_ENRICHED sequence of its event: one enrichment (or one fetch) of an entity is the
//! set of rows sharing that sequence, which is how the `*_LATEST` views keep rows of a single
//! enrichment. The file's key-value metadata carries [`SCHEMA_VERSION`] under
//! [`META_SCHEMA_VERSION`].

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// Version of the staged table layout; bumped on any column change. Version 2: every row carries
/// `enriched_stream_seq`; `calls.started_date_utc`, `call_participants.talk_time_seconds`;
/// transcript `start_ms`, `end_ms`, `text` nullable; tables `call_interaction_stats`, `users`,
/// `answered_scorecards`, `answered_scorecard_answers` (docs/operations.md, "Schema version 2").
pub const SCHEMA_VERSION: u32 = 2;

/// Key-value metadata key holding [`SCHEMA_VERSION`].
pub const META_SCHEMA_VERSION: &str = "gong.schema_version";
/// Key-value metadata key holding the table name.
pub const META_TABLE: &str = "gong.table";
/// Key-value metadata key holding the first GONG_ENRICHED sequence of the file's range.
pub const META_RANGE_FIRST: &str = "gong.range_first";
/// Key-value metadata key holding the last GONG_ENRICHED sequence of the file's range.
pub const META_RANGE_LAST: &str = "gong.range_last";

/// The column every row carries: the GONG_ENRICHED sequence of the row's event.
pub const ENRICHED_SEQ_COLUMN: &str = "enriched_stream_seq";

/// The kind of a column, mapped to Arrow and to Snowflake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// UTF-8 text (`VARCHAR`).
    Text,
    /// JSON as text (`VARCHAR` in the table; views parse it with `TRY_PARSE_JSON`).
    Json,
    /// Microseconds since the epoch, UTC (`TIMESTAMP_TZ`).
    Timestamp,
    /// A calendar day, UTC (`DATE`): days since 1970-01-01.
    Date,
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
            Kind::Date => DataType::Date32,
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
            Kind::Date => "DATE",
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

use Kind::{Bool, Date, Float, Int, Json, Text, Timestamp};

/// Comment of an instant column: `what` and how to get its UTC day.
macro_rules! instant_doc {
    ($what:literal) => {
        concat!(
            $what,
            "; an instant, staged in UTC and shown in the session's TIMEZONE: ",
            "CONVERT_TIMEZONE('UTC', <column>) gives its UTC time and day"
        )
    };
}

const SEQ_DOC: &str = "sequence of the event in GONG_ENRICHED: rows of one enrichment or fetch share it; the *_LATEST views keep the greatest";

const CALLS: &[Column] = &[
    col(
        "event_id",
        Text,
        false,
        "id of the enriched event (the raw event id for live enrichment; a repeat of a raw event shares it)",
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
    col(
        "started",
        Timestamp,
        true,
        instant_doc!("actual start of the call (STARTED_DATE_UTC is its UTC day)"),
    ),
    col(
        "scheduled",
        Timestamp,
        true,
        instant_doc!("scheduled start of the call"),
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
        instant_doc!("when gong-ingest received the webhook"),
    ),
    col(
        "fetched_at",
        Timestamp,
        false,
        instant_doc!("when the Gong API answered"),
    ),
    col(
        "raw_stream_seq",
        Int,
        false,
        "sequence of the raw event in GONG_RAW",
    ),
    col(ENRICHED_SEQ_COLUMN, Int, false, SEQ_DOC),
    col(
        "extra_json",
        Json,
        true,
        "fields the schema does not know yet, as JSON",
    ),
    col(
        "started_date_utc",
        Date,
        true,
        "UTC day of STARTED, the same in every session time zone (STARTED::DATE is the day in the session's zone)",
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
        "Gong user id, for internal participants (joins users.user_id)",
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
    col(
        "talk_time_seconds",
        Float,
        true,
        "seconds this participant talked (interaction.speakers[] whose id is this participant id); null when Gong did not say",
    ),
    col(ENRICHED_SEQ_COLUMN, Int, false, SEQ_DOC),
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
        true,
        "milliseconds from the start of the call; null when Gong did not say",
    ),
    col(
        "end_ms",
        Int,
        true,
        "milliseconds from the start of the call; null when Gong did not say",
    ),
    col("text", Text, true, "the sentence"),
    col(ENRICHED_SEQ_COLUMN, Int, false, SEQ_DOC),
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
    col(ENRICHED_SEQ_COLUMN, Int, false, SEQ_DOC),
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
    col(ENRICHED_SEQ_COLUMN, Int, false, SEQ_DOC),
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
    col(
        "value_json",
        Json,
        true,
        "CRM field value, as JSON; null when the CRM has no value",
    ),
    col(ENRICHED_SEQ_COLUMN, Int, false, SEQ_DOC),
];

const CALL_INTERACTION_STATS: &[Column] = &[
    col("event_id", Text, false, "id of the enriched event"),
    col("call_id", Text, false, "Gong call id"),
    col(
        "name",
        Text,
        true,
        "Talk Ratio, Longest Monologue, Longest Customer Story, Interactivity, Patience, Question Rate...",
    ),
    col("value", Float, true, "the measurement, as Gong gives it"),
    col(ENRICHED_SEQ_COLUMN, Int, false, SEQ_DOC),
];

const USERS: &[Column] = &[
    col(
        "event_id",
        Text,
        false,
        "id of the user event (sha-256 of the user as fetched: equal for an unchanged user)",
    ),
    col("user_id", Text, false, "Gong user id"),
    col("email", Text, true, "email address"),
    col("first_name", Text, true, "first name"),
    col("last_name", Text, true, "last name"),
    col("title", Text, true, "job title"),
    col(
        "manager_id",
        Text,
        true,
        "Gong user id of the manager (joins users.user_id)",
    ),
    col("active", Bool, true, "whether the user is active in Gong"),
    col(
        "created",
        Timestamp,
        true,
        instant_doc!("when the user was created in Gong"),
    ),
    col(
        "fetched_at",
        Timestamp,
        false,
        instant_doc!("when the Gong API answered"),
    ),
    col(ENRICHED_SEQ_COLUMN, Int, false, SEQ_DOC),
    col(
        "extra_json",
        Json,
        true,
        "the user's other fields (emailAliases, phoneNumber, settings, spokenLanguages...) and fields the schema does not know yet, as JSON",
    ),
];

const ANSWERED_SCORECARDS: &[Column] = &[
    col(
        "event_id",
        Text,
        false,
        "id of the scorecard event (sha-256 of the answered scorecard as fetched)",
    ),
    col(
        "answered_scorecard_id",
        Text,
        false,
        "Gong id of this answered scorecard",
    ),
    col(
        "scorecard_id",
        Text,
        true,
        "Gong id of the scorecard (the form)",
    ),
    col("scorecard_name", Text, true, "scorecard name"),
    col(
        "call_id",
        Text,
        true,
        "the call reviewed (joins calls.call_id)",
    ),
    col(
        "call_started",
        Timestamp,
        true,
        instant_doc!("when the call started"),
    ),
    col(
        "reviewed_user_id",
        Text,
        true,
        "user reviewed, the call's host (joins users.user_id)",
    ),
    col(
        "reviewer_user_id",
        Text,
        true,
        "user who answered the scorecard (joins users.user_id)",
    ),
    col(
        "reviewed_at",
        Timestamp,
        true,
        instant_doc!("when the review was published (REVIEWED_DATE_UTC is its UTC day)"),
    ),
    col(
        "reviewed_date_utc",
        Date,
        true,
        "UTC day of REVIEWED_AT, the same in every session time zone",
    ),
    col("visibility", Text, true, "PUBLIC, PRIVATE, OPT_IN_USERS"),
    col(
        "fetched_at",
        Timestamp,
        false,
        instant_doc!("when the Gong API answered"),
    ),
    col(ENRICHED_SEQ_COLUMN, Int, false, SEQ_DOC),
    col(
        "extra_json",
        Json,
        true,
        "fields the schema does not know yet, as JSON",
    ),
];

const ANSWERED_SCORECARD_ANSWERS: &[Column] = &[
    col("event_id", Text, false, "id of the scorecard event"),
    col(
        "answered_scorecard_id",
        Text,
        false,
        "joins answered_scorecards.answered_scorecard_id",
    ),
    col("question_id", Text, true, "Gong id of the question"),
    col(
        "question_revision_id",
        Text,
        true,
        "revision of the question",
    ),
    col("is_overall", Bool, true, "the scorecard's overall question"),
    col(
        "score",
        Float,
        true,
        "score (1 to 50) when the question was scored; null otherwise",
    ),
    col("answer_text", Text, true, "text answer, when given"),
    col(
        "not_applicable",
        Bool,
        true,
        "the question does not apply to the call",
    ),
    col(
        "selected_options_json",
        Json,
        true,
        "ids of the options selected, as JSON",
    ),
    col(
        "fetched_at",
        Timestamp,
        false,
        instant_doc!("when the Gong API answered"),
    ),
    col(ENRICHED_SEQ_COLUMN, Int, false, SEQ_DOC),
    col(
        "extra_json",
        Json,
        true,
        "fields the schema does not know yet, as JSON",
    ),
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
    /// One row per interaction stat of a call.
    CallInteractionStats,
    /// One row per user event (a user per fetch).
    Users,
    /// One row per answered-scorecard event.
    AnsweredScorecards,
    /// One row per answer of an answered scorecard.
    AnsweredScorecardAnswers,
}

/// How a table's `*_LATEST` view picks its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Latest {
    /// One row per `key`: the one with the greatest `enriched_stream_seq` (the latest
    /// enrichment of a call, the latest fetch of a user or answered scorecard).
    Entity {
        /// The entity's id column.
        key: &'static str,
    },
    /// The rows of the `parent`'s latest row: same `key` and same `enriched_stream_seq`, each
    /// distinct row once (a file loaded twice repeats identical rows).
    Child {
        /// The table whose latest rows select these.
        parent: Table,
        /// The entity id column both tables carry.
        key: &'static str,
    },
}

impl Table {
    /// Number of tables.
    pub const COUNT: usize = 10;

    /// All tables, in file-writing order.
    pub const ALL: [Table; Table::COUNT] = [
        Table::Calls,
        Table::CallParticipants,
        Table::CallTranscriptSentences,
        Table::CallTrackers,
        Table::CallTopics,
        Table::CallContextFields,
        Table::CallInteractionStats,
        Table::Users,
        Table::AnsweredScorecards,
        Table::AnsweredScorecardAnswers,
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
            Table::CallInteractionStats => "call_interaction_stats",
            Table::Users => "users",
            Table::AnsweredScorecards => "answered_scorecards",
            Table::AnsweredScorecardAnswers => "answered_scorecard_answers",
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
            Table::CallInteractionStats => CALL_INTERACTION_STATS,
            Table::Users => USERS,
            Table::AnsweredScorecards => ANSWERED_SCORECARDS,
            Table::AnsweredScorecardAnswers => ANSWERED_SCORECARD_ANSWERS,
        }
    }

    /// How the table's `*_LATEST` view picks its rows.
    pub fn latest(self) -> Latest {
        match self {
            Table::Calls => Latest::Entity { key: "call_id" },
            Table::CallParticipants
            | Table::CallTranscriptSentences
            | Table::CallTrackers
            | Table::CallTopics
            | Table::CallContextFields
            | Table::CallInteractionStats => Latest::Child {
                parent: Table::Calls,
                key: "call_id",
            },
            Table::Users => Latest::Entity { key: "user_id" },
            Table::AnsweredScorecards => Latest::Entity {
                key: "answered_scorecard_id",
            },
            Table::AnsweredScorecardAnswers => Latest::Child {
                parent: Table::AnsweredScorecards,
                key: "answered_scorecard_id",
            },
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
            schema
                .field_with_name("started_date_utc")
                .unwrap()
                .data_type(),
            &DataType::Date32
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

    #[test]
    fn every_row_is_keyed_to_its_enrichment_and_views_have_their_keys() {
        for table in Table::ALL {
            let column = |name: &str| {
                table
                    .columns()
                    .iter()
                    .find(|column| column.name == name)
                    .unwrap_or_else(|| panic!("{} has no {name}", table.name()))
            };
            let seq = column(ENRICHED_SEQ_COLUMN);
            assert!(!seq.nullable && seq.kind == Int, "{}", table.name());
            let key = match table.latest() {
                Latest::Entity { key } => key,
                Latest::Child { parent, key } => {
                    assert!(
                        matches!(parent.latest(), Latest::Entity { key: parent_key } if parent_key == key),
                        "{} joins {} on {key}",
                        table.name(),
                        parent.name()
                    );
                    key
                }
            };
            assert_eq!(column(key).kind, Text, "{}", table.name());
            let mut names: Vec<&str> = table.columns().iter().map(|column| column.name).collect();
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), table.columns().len(), "{}", table.name());
        }
        // Entity keys identify the entity: never null.
        for table in [Table::Calls, Table::Users, Table::AnsweredScorecards] {
            let Latest::Entity { key } = table.latest() else {
                panic!("{} is an entity table", table.name());
            };
            assert!(table.columns().iter().any(|c| c.name == key && !c.nullable));
        }
    }
}
