//! Turning one enriched event into rows of every table.
//!
//! The mapping is a pure function of the event and its GONG_ENRICHED sequence: rewriting a range
//! gives the same rows. Exactly one `calls` row per event.

use arrow::array::{
    ArrayBuilder, ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, RecordBatch,
    StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::error::ArrowError;
use chrono::{DateTime, Utc};
use gong_common::event::EnrichedEvent;
use gong_common::gong::{CallMetaData, Extra};
use serde::{Serialize, Serializer};
use serde_json::{Map, Value};

use crate::schema::{Kind, Table};

/// A value pushed into a column; must match the column's [`Kind`].
#[derive(Debug, Clone)]
pub enum Cell<'a> {
    /// Text or JSON text.
    Text(Option<&'a str>),
    /// Microseconds since the epoch, UTC.
    Micros(Option<i64>),
    /// Integer.
    Int(Option<i64>),
    /// Float.
    Float(Option<f64>),
    /// Boolean.
    Bool(Option<bool>),
}

enum ColumnBuilder {
    Text(StringBuilder),
    Timestamp(TimestampMicrosecondBuilder),
    Int(Int64Builder),
    Float(Float64Builder),
    Bool(BooleanBuilder),
}

impl ColumnBuilder {
    fn new(kind: Kind) -> ColumnBuilder {
        match kind {
            Kind::Text | Kind::Json => ColumnBuilder::Text(StringBuilder::new()),
            Kind::Timestamp => {
                ColumnBuilder::Timestamp(TimestampMicrosecondBuilder::new().with_timezone("UTC"))
            }
            Kind::Int => ColumnBuilder::Int(Int64Builder::new()),
            Kind::Float => ColumnBuilder::Float(Float64Builder::new()),
            Kind::Bool => ColumnBuilder::Bool(BooleanBuilder::new()),
        }
    }

    fn push(&mut self, cell: Cell<'_>) {
        match (self, cell) {
            (ColumnBuilder::Text(builder), Cell::Text(value)) => builder.append_option(value),
            (ColumnBuilder::Timestamp(builder), Cell::Micros(value)) => {
                builder.append_option(value)
            }
            (ColumnBuilder::Int(builder), Cell::Int(value)) => builder.append_option(value),
            (ColumnBuilder::Float(builder), Cell::Float(value)) => builder.append_option(value),
            (ColumnBuilder::Bool(builder), Cell::Bool(value)) => builder.append_option(value),
            // A mismatch is a programming error caught by the unit tests; keep the column
            // length right so the batch still builds, with a null.
            (builder, _) => builder.push_null(),
        }
    }

    fn push_null(&mut self) {
        match self {
            ColumnBuilder::Text(builder) => builder.append_null(),
            ColumnBuilder::Timestamp(builder) => builder.append_null(),
            ColumnBuilder::Int(builder) => builder.append_null(),
            ColumnBuilder::Float(builder) => builder.append_null(),
            ColumnBuilder::Bool(builder) => builder.append_null(),
        }
    }

    /// Takes the column and leaves an empty builder sized like the column taken: the next chunk
    /// is usually as large, and Arrow's `finish` drops the capacity (regrowing it by doubling
    /// copied every value about twice).
    fn finish(&mut self) -> ArrayRef {
        match self {
            ColumnBuilder::Text(builder) => {
                let (rows, bytes) = (builder.len(), builder.values_slice().len());
                let array = builder.finish();
                *builder = StringBuilder::with_capacity(rows, bytes);
                std::sync::Arc::new(array)
            }
            ColumnBuilder::Timestamp(builder) => {
                let rows = builder.len();
                let array = builder.finish();
                *builder = TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC");
                std::sync::Arc::new(array)
            }
            ColumnBuilder::Int(builder) => {
                let rows = builder.len();
                let array = builder.finish();
                *builder = Int64Builder::with_capacity(rows);
                std::sync::Arc::new(array)
            }
            ColumnBuilder::Float(builder) => {
                let rows = builder.len();
                let array = builder.finish();
                *builder = Float64Builder::with_capacity(rows);
                std::sync::Arc::new(array)
            }
            ColumnBuilder::Bool(builder) => {
                let rows = builder.len();
                let array = builder.finish();
                *builder = BooleanBuilder::with_capacity(rows);
                std::sync::Arc::new(array)
            }
        }
    }
}

/// Column builders for one table.
pub struct TableRows {
    table: Table,
    columns: Vec<ColumnBuilder>,
    rows: usize,
}

impl TableRows {
    /// Empty builders for `table`.
    pub fn new(table: Table) -> TableRows {
        TableRows {
            table,
            columns: table
                .columns()
                .iter()
                .map(|column| ColumnBuilder::new(column.kind))
                .collect(),
            rows: 0,
        }
    }

    /// Appends one row; `cells` are in column order (an array or a `Vec`).
    pub fn push<'a, I>(&mut self, cells: I)
    where
        I: IntoIterator<Item = Cell<'a>>,
        I::IntoIter: ExactSizeIterator,
    {
        let mut cells = cells.into_iter();
        debug_assert_eq!(cells.len(), self.columns.len(), "{}", self.table.name());
        for builder in &mut self.columns {
            match cells.next() {
                Some(cell) => builder.push(cell),
                None => builder.push_null(),
            }
        }
        self.rows += 1;
    }

    /// Rows buffered.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// True when no row is buffered.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Takes the buffered rows as a record batch and empties the builders.
    pub fn take_batch(&mut self) -> Result<RecordBatch, ArrowError> {
        let arrays: Vec<ArrayRef> = self.columns.iter_mut().map(ColumnBuilder::finish).collect();
        self.rows = 0;
        RecordBatch::try_new(self.table.schema(), arrays)
    }
}

/// Builders for every table.
pub struct TableSet {
    /// Indexed by [`Table::index`].
    pub tables: Vec<TableRows>,
}

impl Default for TableSet {
    fn default() -> Self {
        TableSet {
            tables: Table::ALL.into_iter().map(TableRows::new).collect(),
        }
    }
}

impl TableSet {
    /// The builders of `table`.
    pub fn get_mut(&mut self, table: Table) -> &mut TableRows {
        &mut self.tables[table.index()]
    }
}

/// Parses a Gong timestamp (ISO-8601 with offset, optional fraction) to UTC microseconds.
pub fn parse_gong_time(raw: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(raw.trim())
        .ok()
        .map(|time| time.with_timezone(&Utc).timestamp_micros())
}

fn micros(time: &DateTime<Utc>) -> i64 {
    time.timestamp_micros()
}

/// Serialises `value` as compact JSON into `scratch` (reused across rows, so no allocation per
/// cell) and returns it as text.
fn json_into<'s, T: Serialize + ?Sized>(scratch: &'s mut Vec<u8>, value: &T) -> Option<&'s str> {
    scratch.clear();
    serde_json::to_writer(&mut *scratch, value).ok()?;
    std::str::from_utf8(scratch).ok()
}

/// JSON text of a map of unknown fields; `None` when there are none.
fn json_text<'s>(scratch: &'s mut Vec<u8>, map: &Extra) -> Option<&'s str> {
    if map.is_empty() {
        return None;
    }
    json_into(scratch, map)
}

/// A value of the calls row's `extra_json`, borrowed from the event rather than cloned.
enum ExtraValue<'a> {
    Map(&'a Extra),
    Value(&'a Value),
    Owned(Value),
}

impl Serialize for ExtraValue<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            ExtraValue::Map(map) => map.serialize(serializer),
            ExtraValue::Value(value) => value.serialize(serializer),
            ExtraValue::Owned(value) => value.serialize(serializer),
        }
    }
}

/// The calls row's `extra_json` object. Keys are sorted and a later insert replaces an earlier
/// one, exactly as in a `serde_json::Map` (a `BTreeMap` without `preserve_order`), so the text
/// is the same as serialising the equivalent `Map`.
type ExtraObject<'a> = std::collections::BTreeMap<&'a str, ExtraValue<'a>>;

fn insert_nonempty<'a>(target: &mut ExtraObject<'a>, key: &'a str, map: &'a Extra) {
    if !map.is_empty() {
        target.insert(key, ExtraValue::Map(map));
    }
}

/// Appends the rows of `event` (stored at `stream_seq` in GONG_ENRICHED) to `tables`.
///
/// `call_id` must be present; the loader dead-letters events without one before calling this.
pub fn append_event(tables: &mut TableSet, event: &EnrichedEvent, stream_seq: u64) {
    let call = &event.call;
    let call_id = call.id().unwrap_or_default();
    let event_id = event.event_id.as_str();
    let no_meta;
    let meta = match &call.meta_data {
        Some(meta) => meta,
        None => {
            no_meta = CallMetaData::default();
            &no_meta
        }
    };
    // JSON text of each row's JSON column is written here, one row at a time.
    let mut scratch = Vec::with_capacity(1024);

    // Unknown fields of the call, and blocks the schema keeps only as JSON.
    let mut extra = ExtraObject::new();
    insert_nonempty(&mut extra, "metaData", &meta.extra);
    if let Some(content) = &call.content {
        insert_nonempty(&mut extra, "content", &content.extra);
    }
    for (key, value) in [
        ("interaction", &call.interaction),
        ("collaboration", &call.collaboration),
        ("media", &call.media),
    ] {
        if let Some(value) = value {
            extra.insert(key, ExtraValue::Value(value));
        }
    }
    for (key, value) in &call.extra {
        extra.insert(key, ExtraValue::Value(value));
    }
    let mut unparsed = Map::new();
    let started = meta.started.as_deref().and_then(|raw| {
        let parsed = parse_gong_time(raw);
        if parsed.is_none() {
            unparsed.insert("started".into(), Value::String(raw.to_string()));
        }
        parsed
    });
    let scheduled = meta.scheduled.as_deref().and_then(|raw| {
        let parsed = parse_gong_time(raw);
        if parsed.is_none() {
            unparsed.insert("scheduled".into(), Value::String(raw.to_string()));
        }
        parsed
    });
    if !unparsed.is_empty() {
        extra.insert("unparsedTimes", ExtraValue::Owned(Value::Object(unparsed)));
    }
    let brief = call
        .content
        .as_ref()
        .and_then(|content| content.brief.as_deref());
    let extra_json = if extra.is_empty() {
        None
    } else {
        json_into(&mut scratch, &extra)
    };
    tables.get_mut(Table::Calls).push([
        Cell::Text(Some(event_id)),
        Cell::Text(Some(&event.raw_event_id)),
        Cell::Text(event.replay_run_id.as_deref()),
        Cell::Text(Some(call_id)),
        Cell::Micros(started),
        Cell::Micros(scheduled),
        Cell::Text(meta.title.as_deref()),
        Cell::Int(meta.duration.map(|seconds| seconds.round() as i64)),
        Cell::Text(meta.direction.as_deref()),
        Cell::Text(meta.scope.as_deref()),
        Cell::Text(meta.system.as_deref()),
        Cell::Text(meta.media.as_deref()),
        Cell::Text(meta.language.as_deref()),
        Cell::Text(meta.primary_user_id.as_deref()),
        Cell::Text(meta.workspace_id.as_deref()),
        Cell::Bool(meta.is_private),
        Cell::Text(meta.url.as_deref()),
        Cell::Text(meta.meeting_url.as_deref()),
        Cell::Text(meta.purpose.as_deref()),
        Cell::Text(brief),
        Cell::Micros(Some(micros(&event.received_at))),
        Cell::Micros(Some(micros(&event.fetched_at))),
        Cell::Int(Some(event.raw_stream_seq as i64)),
        Cell::Int(Some(stream_seq as i64)),
        Cell::Text(extra_json),
    ]);

    for party in call.parties.iter().flatten() {
        tables.get_mut(Table::CallParticipants).push([
            Cell::Text(Some(event_id)),
            Cell::Text(Some(call_id)),
            Cell::Text(party.id.as_deref()),
            Cell::Text(party.speaker_id.as_deref()),
            Cell::Text(party.user_id.as_deref()),
            Cell::Text(party.name.as_deref()),
            Cell::Text(party.email_address.as_deref()),
            Cell::Text(party.title.as_deref()),
            Cell::Text(party.affiliation.as_deref()),
            Cell::Text(party.phone_number.as_deref()),
            Cell::Text(json_text(&mut scratch, &party.extra)),
        ]);
    }

    for (monologue_index, monologue) in event.transcript.iter().flatten().enumerate() {
        for (sentence_index, sentence) in monologue.sentences.iter().enumerate() {
            tables.get_mut(Table::CallTranscriptSentences).push([
                Cell::Text(Some(event_id)),
                Cell::Text(Some(call_id)),
                Cell::Text(monologue.speaker_id.as_deref()),
                Cell::Text(monologue.topic.as_deref()),
                Cell::Int(Some(monologue_index as i64)),
                Cell::Int(Some(sentence_index as i64)),
                Cell::Int(Some(sentence.start)),
                Cell::Int(Some(sentence.end)),
                Cell::Text(Some(&sentence.text)),
            ]);
        }
    }

    if let Some(content) = &call.content {
        for tracker in content.trackers.iter().flatten() {
            tables.get_mut(Table::CallTrackers).push([
                Cell::Text(Some(event_id)),
                Cell::Text(Some(call_id)),
                Cell::Text(tracker.id.as_deref()),
                Cell::Text(tracker.name.as_deref()),
                Cell::Text(tracker.kind.as_deref()),
                Cell::Int(tracker.count),
                Cell::Text(json_text(&mut scratch, &tracker.extra)),
            ]);
        }
        for topic in content.topics.iter().flatten() {
            tables.get_mut(Table::CallTopics).push([
                Cell::Text(Some(event_id)),
                Cell::Text(Some(call_id)),
                Cell::Text(topic.name.as_deref()),
                Cell::Float(topic.duration),
                Cell::Text(json_text(&mut scratch, &topic.extra)),
            ]);
        }
    }

    for context in call.context.iter().flatten() {
        for object in context.objects.iter().flatten() {
            for field in object.fields.iter().flatten() {
                tables.get_mut(Table::CallContextFields).push([
                    Cell::Text(Some(event_id)),
                    Cell::Text(Some(call_id)),
                    Cell::Text(context.system.as_deref()),
                    Cell::Text(object.object_type.as_deref()),
                    Cell::Text(object.object_id.as_deref()),
                    Cell::Text(field.name.as_deref()),
                    Cell::Text(json_into(&mut scratch, &field.value)),
                ]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;
    use arrow::datatypes::{Int64Type, TimestampMicrosecondType};

    fn event() -> EnrichedEvent {
        let raw = serde_json::json!({
            "schema_version": 1,
            "event_id": "ev1",
            "raw_event_id": "ev1",
            "raw_stream_seq": 3,
            "received_at": "2024-05-06T07:08:09Z",
            "fetched_at": "2024-05-06T07:09:00Z",
            "call": {
                "metaData": {"id": "7782342274025937895", "started": "2024-01-02T03:04:05.123456-08:00",
                              "duration": 1830, "isPrivate": false, "newField": 1},
                "parties": [{"id": "1", "speakerId": "55", "name": "Ann", "emailAddress": "a@x", "methods": ["x"]}],
                "content": {"brief": "b", "topics": [{"name": "Pricing", "duration": 12.5}],
                            "trackers": [{"id": "9", "name": "Competitors", "count": 2, "type": "KEYWORD"}],
                            "outline": []},
                "context": [{"system": "Salesforce", "objects": [{"objectType": "Account", "objectId": "001",
                              "fields": [{"name": "Amount", "value": 1000}, {"name": "Name", "value": "Acme"}]}]}]
            },
            "transcript": [{"speakerId": "55", "topic": "Intro", "sentences": [{"start": 0, "end": 1500, "text": "hi"}, {"start": 1500, "end": 2000, "text": "there"}]}]
        });
        serde_json::from_value(raw).unwrap()
    }

    #[test]
    fn one_event_gives_rows_in_every_table() {
        let mut tables = TableSet::default();
        append_event(&mut tables, &event(), 42);
        let counts: Vec<usize> = tables.tables.iter().map(TableRows::len).collect();
        assert_eq!(counts, vec![1, 1, 2, 1, 1, 2]);
        let calls = tables.get_mut(Table::Calls).take_batch().unwrap();
        let started = calls
            .column_by_name("started")
            .unwrap()
            .as_primitive::<TimestampMicrosecondType>()
            .value(0);
        // 03:04:05.123456 at -08:00 is 11:04:05.123456 UTC.
        assert_eq!(
            started,
            parse_gong_time("2024-01-02T11:04:05.123456Z").unwrap()
        );
        let extra = calls
            .column_by_name("extra_json")
            .unwrap()
            .as_string::<i32>();
        let extra: Value = serde_json::from_str(extra.value(0)).unwrap();
        assert_eq!(extra["metaData"]["newField"], 1);
        assert!(extra["content"]["outline"].is_array());
        // The enriched sequence is the one the row was appended at, not the event's raw one.
        let seq_of = |column: &str| {
            calls
                .column_by_name(column)
                .unwrap()
                .as_primitive::<Int64Type>()
                .value(0)
        };
        assert_eq!(seq_of("enriched_stream_seq"), 42);
        assert_eq!(seq_of("raw_stream_seq"), 3);
        let context = tables
            .get_mut(Table::CallContextFields)
            .take_batch()
            .unwrap();
        let values = context
            .column_by_name("value_json")
            .unwrap()
            .as_string::<i32>();
        assert_eq!(values.value(0), "1000");
        assert_eq!(values.value(1), "\"Acme\"");
    }

    #[test]
    fn extra_json_is_the_text_of_the_equivalent_json_map() {
        // The borrowed object must serialise exactly as the `serde_json::Map` it stands for
        // (same key order, same replacement rule), so rewritten ranges keep their bytes.
        let mut event = event();
        event.call.interaction =
            Some(serde_json::json!({"speakers": [{"id": "1", "talkTime": 1.5}]}));
        event.call.collaboration = Some(serde_json::json!({"publicComments": []}));
        event.call.extra.insert("zeta".into(), Value::from(1));
        event
            .call
            .extra
            .insert("alpha".into(), serde_json::json!({"b": 2, "a": [1, "x"]}));
        if let Some(meta) = event.call.meta_data.as_mut() {
            meta.scheduled = Some("not a time".into());
        }
        let call = &event.call;
        let mut expected = Map::new();
        let meta = call.meta_data.clone().unwrap();
        expected.insert("metaData".into(), Value::Object(meta.extra.clone()));
        let content = call.content.clone().unwrap();
        expected.insert("content".into(), Value::Object(content.extra.clone()));
        expected.insert("interaction".into(), call.interaction.clone().unwrap());
        expected.insert("collaboration".into(), call.collaboration.clone().unwrap());
        for (key, value) in &call.extra {
            expected.insert(key.clone(), value.clone());
        }
        expected.insert(
            "unparsedTimes".into(),
            serde_json::json!({"scheduled": "not a time"}),
        );
        let mut tables = TableSet::default();
        append_event(&mut tables, &event, 1);
        let calls = tables.get_mut(Table::Calls).take_batch().unwrap();
        let extra = calls
            .column_by_name("extra_json")
            .unwrap()
            .as_string::<i32>();
        assert_eq!(extra.value(0), serde_json::to_string(&expected).unwrap());
    }

    #[test]
    fn builders_are_reusable_after_a_batch() {
        let mut tables = TableSet::default();
        append_event(&mut tables, &event(), 1);
        let first = tables.get_mut(Table::Calls).take_batch().unwrap();
        append_event(&mut tables, &event(), 2);
        let second = tables.get_mut(Table::Calls).take_batch().unwrap();
        assert_eq!(first.num_rows(), 1);
        assert_eq!(second.num_rows(), 1);
        assert_eq!(first.schema(), second.schema());
        assert_eq!(first.column(0), second.column(0));
    }

    #[test]
    fn gong_times_with_and_without_fraction_parse() {
        assert_eq!(
            parse_gong_time("2024-01-02T03:04:05Z"),
            Some(1_704_164_645_000_000)
        );
        assert_eq!(
            parse_gong_time("2024-01-02T04:04:05+01:00"),
            Some(1_704_164_645_000_000)
        );
        assert_eq!(parse_gong_time("yesterday"), None);
    }
}
