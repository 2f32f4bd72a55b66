//! Turning one enriched event (a call, a user or an answered scorecard) into rows of the tables.
//!
//! The mapping is a pure function of the event and its GONG_ENRICHED sequence: rewriting a range
//! gives the same rows. Exactly one `calls` row per call event, one `users` row per user event,
//! one `answered_scorecards` row per scorecard event; every row carries the sequence
//! (`enriched_stream_seq`). A value the event does not have is null, never 0, `""` or the JSON
//! text `null`.

use arrow::array::{
    ArrayBuilder, ArrayRef, BooleanBuilder, Date32Builder, Float64Builder, Int64Builder,
    RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::error::ArrowError;
use chrono::{DateTime, Utc};
use gong_common::event::{EnrichedEvent, EnrichedScorecard, EnrichedUser};
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
    /// Days since 1970-01-01.
    Date(Option<i32>),
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
    Date(Date32Builder),
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
            Kind::Date => ColumnBuilder::Date(Date32Builder::new()),
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
            (ColumnBuilder::Date(builder), Cell::Date(value)) => builder.append_option(value),
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
            ColumnBuilder::Date(builder) => builder.append_null(),
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
            ColumnBuilder::Date(builder) => {
                let rows = builder.len();
                let array = builder.finish();
                *builder = Date32Builder::with_capacity(rows);
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

/// [`parse_gong_time`], or seconds since the epoch written as a number (Gong's OpenAPI document
/// shows scorecard times that way, `1518863400.0`).
pub fn parse_gong_time_or_epoch(raw: &str) -> Option<i64> {
    parse_gong_time(raw).or_else(|| {
        let seconds: f64 = raw.trim().parse().ok()?;
        let micros = (seconds * 1_000_000.0).round();
        (micros.is_finite() && micros.abs() < 9.0e18).then_some(micros as i64)
    })
}

/// The UTC day (days since 1970-01-01) of an instant in microseconds.
pub fn utc_day(micros: i64) -> i32 {
    micros.div_euclid(86_400_000_000) as i32
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

/// One loadable event of GONG_ENRICHED, by subject.
#[derive(Debug, Clone)]
pub enum Entity {
    /// `gong.enriched.call`.
    Call(Box<EnrichedEvent>),
    /// `gong.enriched.user`.
    User(Box<EnrichedUser>),
    /// `gong.enriched.scorecard`.
    Scorecard(Box<EnrichedScorecard>),
}

impl Entity {
    /// When the event entered the pipeline: the webhook's arrival for a call, the fetch for a
    /// user or a scorecard. The first one of a range names the range's `dt=` partition.
    pub fn received_at(&self) -> DateTime<Utc> {
        match self {
            Entity::Call(event) => event.received_at,
            Entity::User(event) => event.fetched_at,
            Entity::Scorecard(event) => event.fetched_at,
        }
    }

    /// The event id.
    pub fn event_id(&self) -> &str {
        match self {
            Entity::Call(event) => &event.event_id,
            Entity::User(event) => &event.event_id,
            Entity::Scorecard(event) => &event.event_id,
        }
    }
}

/// Appends the rows of `entity` (stored at `stream_seq` in GONG_ENRICHED) to `tables`.
pub fn append_entity(tables: &mut TableSet, entity: &Entity, stream_seq: u64) {
    match entity {
        Entity::Call(event) => append_event(tables, event, stream_seq),
        Entity::User(event) => append_user(tables, event, stream_seq),
        Entity::Scorecard(event) => append_scorecard(tables, event, stream_seq),
    }
}

/// The JSON text of `value`, or `None` for JSON `null` (a missing value is SQL NULL, not the
/// text `null`).
fn json_value<'s>(scratch: &'s mut Vec<u8>, value: &Value) -> Option<&'s str> {
    if value.is_null() {
        return None;
    }
    json_into(scratch, value)
}

/// Appends the rows of `event` (stored at `stream_seq` in GONG_ENRICHED) to `tables`.
///
/// `call_id` must be present; the loader dead-letters events without one before calling this.
pub fn append_event(tables: &mut TableSet, event: &EnrichedEvent, stream_seq: u64) {
    let call = &event.call;
    let call_id = call.id().unwrap_or_default();
    let event_id = event.event_id.as_str();
    let seq = Cell::Int(Some(stream_seq as i64));
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
        seq.clone(),
        Cell::Text(extra_json),
        Cell::Date(started.map(utc_day)),
    ]);

    // Talk time is keyed by participant id (`interaction.speakers[].id` is `parties[].id`).
    let interaction = call.interaction_measures();
    let talk_time = |participant: Option<&str>| -> Option<f64> {
        let participant = participant?;
        interaction
            .as_ref()?
            .speakers
            .iter()
            .flatten()
            .find(|speaker| speaker.id.as_deref() == Some(participant))?
            .talk_time
    };
    for party in call.parties.iter().flatten() {
        let talk_time_seconds = talk_time(party.id.as_deref());
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
            Cell::Float(talk_time_seconds),
            seq.clone(),
        ]);
    }

    if let Some(interaction) = &interaction {
        for stat in interaction.interaction_stats.iter().flatten() {
            tables.get_mut(Table::CallInteractionStats).push([
                Cell::Text(Some(event_id)),
                Cell::Text(Some(call_id)),
                Cell::Text(stat.name.as_deref()),
                Cell::Float(stat.value),
                seq.clone(),
            ]);
        }
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
                Cell::Int(sentence.start),
                Cell::Int(sentence.end),
                Cell::Text(sentence.text.as_deref()),
                seq.clone(),
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
                seq.clone(),
            ]);
        }
        for topic in content.topics.iter().flatten() {
            tables.get_mut(Table::CallTopics).push([
                Cell::Text(Some(event_id)),
                Cell::Text(Some(call_id)),
                Cell::Text(topic.name.as_deref()),
                Cell::Float(topic.duration),
                Cell::Text(json_text(&mut scratch, &topic.extra)),
                seq.clone(),
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
                    Cell::Text(json_value(&mut scratch, &field.value)),
                    seq.clone(),
                ]);
            }
        }
    }
}

/// The JSON text of `entity`'s fields minus those the table has columns for (`columns`, in
/// Gong's camelCase, and `skip`), plus `unparsed` times; `None` when nothing is left. Keys are
/// in order (a `serde_json::Map`), so the text is a function of the entity.
fn remaining_json<T: Serialize>(
    scratch: &mut Vec<u8>,
    entity: &T,
    columns: &[&str],
    unparsed: Map<String, Value>,
) -> Option<String> {
    let Ok(Value::Object(mut fields)) = serde_json::to_value(entity) else {
        return None;
    };
    for key in columns {
        fields.remove(*key);
    }
    if !unparsed.is_empty() {
        fields.insert("unparsedTimes".into(), Value::Object(unparsed));
    }
    if fields.is_empty() {
        return None;
    }
    json_into(scratch, &fields).map(str::to_string)
}

/// Parses `raw` (named `key` in Gong's JSON) with `parse`, noting an unparseable text in
/// `unparsed` so it is kept in the row's JSON rather than lost.
fn parse_time_noting(
    key: &str,
    raw: Option<&str>,
    parse: fn(&str) -> Option<i64>,
    unparsed: &mut Map<String, Value>,
) -> Option<i64> {
    let raw = raw?;
    let parsed = parse(raw);
    if parsed.is_none() {
        unparsed.insert(key.to_string(), Value::String(raw.to_string()));
    }
    parsed
}

/// Appends the `users` row of `event` (stored at `stream_seq`).
///
/// `user.id` must be present; the loader dead-letters events without one before calling this.
pub fn append_user(tables: &mut TableSet, event: &EnrichedUser, stream_seq: u64) {
    let user = &event.user;
    let mut scratch = Vec::with_capacity(512);
    let mut unparsed = Map::new();
    let created = parse_time_noting(
        "created",
        user.created.as_deref(),
        parse_gong_time,
        &mut unparsed,
    );
    let extra = remaining_json(
        &mut scratch,
        user,
        &[
            "id",
            "emailAddress",
            "firstName",
            "lastName",
            "title",
            "managerId",
            "active",
            "created",
        ],
        unparsed,
    );
    tables.get_mut(Table::Users).push([
        Cell::Text(Some(&event.event_id)),
        Cell::Text(Some(user.id.as_deref().unwrap_or_default())),
        Cell::Text(user.email_address.as_deref()),
        Cell::Text(user.first_name.as_deref()),
        Cell::Text(user.last_name.as_deref()),
        Cell::Text(user.title.as_deref()),
        Cell::Text(user.manager_id.as_deref()),
        Cell::Bool(user.active),
        Cell::Micros(created),
        Cell::Micros(Some(micros(&event.fetched_at))),
        Cell::Int(Some(stream_seq as i64)),
        Cell::Text(extra.as_deref()),
    ]);
}

/// Appends the `answered_scorecards` row and the `answered_scorecard_answers` rows of `event`
/// (stored at `stream_seq`).
///
/// `answeredScorecardId` must be present; the loader dead-letters events without one before
/// calling this.
pub fn append_scorecard(tables: &mut TableSet, event: &EnrichedScorecard, stream_seq: u64) {
    let card = &event.scorecard;
    let id = card.answered_scorecard_id.as_deref().unwrap_or_default();
    let seq = Cell::Int(Some(stream_seq as i64));
    let fetched_at = Cell::Micros(Some(micros(&event.fetched_at)));
    let mut scratch = Vec::with_capacity(512);
    let mut unparsed = Map::new();
    let call_started = parse_time_noting(
        "callStartTime",
        card.call_start_time.as_deref(),
        parse_gong_time_or_epoch,
        &mut unparsed,
    );
    let reviewed_at = parse_time_noting(
        "reviewTime",
        card.review_time.as_deref(),
        parse_gong_time_or_epoch,
        &mut unparsed,
    );
    let extra = remaining_json(
        &mut scratch,
        card,
        &[
            "answeredScorecardId",
            "scorecardId",
            "scorecardName",
            "callId",
            "callStartTime",
            "reviewedUserId",
            "reviewerUserId",
            "reviewTime",
            "visibilityType",
            "answers",
        ],
        unparsed,
    );
    tables.get_mut(Table::AnsweredScorecards).push([
        Cell::Text(Some(&event.event_id)),
        Cell::Text(Some(id)),
        Cell::Text(card.scorecard_id.as_deref()),
        Cell::Text(card.scorecard_name.as_deref()),
        Cell::Text(card.call_id.as_deref()),
        Cell::Micros(call_started),
        Cell::Text(card.reviewed_user_id.as_deref()),
        Cell::Text(card.reviewer_user_id.as_deref()),
        Cell::Micros(reviewed_at),
        Cell::Date(reviewed_at.map(utc_day)),
        Cell::Text(card.visibility_type.as_deref()),
        fetched_at.clone(),
        seq.clone(),
        Cell::Text(extra.as_deref()),
    ]);
    let mut options = Vec::with_capacity(64);
    for answer in card.answers.iter().flatten() {
        let selected = answer
            .selected_options
            .as_ref()
            .and_then(|value| json_value(&mut options, value));
        tables.get_mut(Table::AnsweredScorecardAnswers).push([
            Cell::Text(Some(&event.event_id)),
            Cell::Text(Some(id)),
            Cell::Text(answer.question_id.as_deref()),
            Cell::Text(answer.question_revision_id.as_deref()),
            Cell::Bool(answer.is_overall),
            Cell::Float(answer.score),
            Cell::Text(answer.answer_text.as_deref()),
            Cell::Bool(answer.not_applicable),
            Cell::Text(selected),
            fetched_at.clone(),
            seq.clone(),
            Cell::Text(json_text(&mut scratch, &answer.extra)),
        ]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Date32Type, Float64Type, Int64Type, TimestampMicrosecondType};
    use gong_common::gong::{AnsweredScorecard, User};

    fn batch(tables: &mut TableSet, table: Table) -> RecordBatch {
        tables.get_mut(table).take_batch().unwrap()
    }

    fn texts(batch: &RecordBatch, column: &str) -> Vec<Option<String>> {
        let array = batch.column_by_name(column).unwrap().as_string::<i32>();
        (0..array.len())
            .map(|row| (!array.is_null(row)).then(|| array.value(row).to_string()))
            .collect()
    }

    fn ints(batch: &RecordBatch, column: &str) -> Vec<Option<i64>> {
        let array = batch
            .column_by_name(column)
            .unwrap()
            .as_primitive::<Int64Type>();
        (0..array.len())
            .map(|row| (!array.is_null(row)).then(|| array.value(row)))
            .collect()
    }

    fn floats(batch: &RecordBatch, column: &str) -> Vec<Option<f64>> {
        let array = batch
            .column_by_name(column)
            .unwrap()
            .as_primitive::<Float64Type>();
        (0..array.len())
            .map(|row| (!array.is_null(row)).then(|| array.value(row)))
            .collect()
    }

    fn dates(batch: &RecordBatch, column: &str) -> Vec<Option<i32>> {
        let array = batch
            .column_by_name(column)
            .unwrap()
            .as_primitive::<Date32Type>();
        (0..array.len())
            .map(|row| (!array.is_null(row)).then(|| array.value(row)))
            .collect()
    }

    #[test]
    fn every_row_carries_its_enriched_sequence() {
        let mut event = event();
        event.call.interaction = Some(serde_json::json!({
            "interactionStats": [{"name": "Talk Ratio", "value": 0.5}]}));
        let user = EnrichedUser::new(
            serde_json::from_value(serde_json::json!({"id": "7"})).unwrap(),
            Utc::now(),
        );
        let card = EnrichedScorecard::new(
            serde_json::from_value(serde_json::json!({"answeredScorecardId": 1,
                "answers": [{"questionId": 2}]}))
            .unwrap(),
            Utc::now(),
        );
        let mut tables = TableSet::default();
        append_entity(&mut tables, &Entity::Call(Box::new(event)), 11);
        append_entity(&mut tables, &Entity::User(Box::new(user)), 12);
        append_entity(&mut tables, &Entity::Scorecard(Box::new(card)), 13);
        for table in Table::ALL {
            let rows = batch(&mut tables, table);
            assert!(rows.num_rows() > 0, "{} has rows", table.name());
            let seqs = ints(&rows, crate::schema::ENRICHED_SEQ_COLUMN);
            let expected = match table {
                Table::Users => 12,
                Table::AnsweredScorecards | Table::AnsweredScorecardAnswers => 13,
                _ => 11,
            };
            assert!(
                seqs.iter().all(|seq| *seq == Some(expected)),
                "{}: {seqs:?}",
                table.name()
            );
        }
    }

    #[test]
    fn talk_time_is_matched_on_the_participant_id_not_the_speaker_id() {
        let mut event = event();
        // Participant "1" has speaker id "55"; a speaker entry keyed "55" must not match it.
        event.call.interaction = Some(serde_json::json!({
            "speakers": [{"id": "55", "talkTime": 999}, {"id": "1", "userId": "u", "talkTime": 145.5}],
            "interactionStats": [{"name": "Talk Ratio", "value": 0.61}, {"name": "Patience"}]
        }));
        event.call.parties.as_mut().unwrap().push(
            serde_json::from_value(serde_json::json!({"id": "2", "speakerId": "56"})).unwrap(),
        );
        let mut tables = TableSet::default();
        append_event(&mut tables, &event, 1);
        let parties = batch(&mut tables, Table::CallParticipants);
        assert_eq!(
            floats(&parties, "talk_time_seconds"),
            vec![Some(145.5), None]
        );
        let stats = batch(&mut tables, Table::CallInteractionStats);
        assert_eq!(
            texts(&stats, "name"),
            vec![Some("Talk Ratio".to_string()), Some("Patience".to_string())]
        );
        assert_eq!(floats(&stats, "value"), vec![Some(0.61), None]);
    }

    #[test]
    fn missing_values_are_null_not_invented() {
        let mut event = event();
        event.transcript = Some(
            serde_json::from_value(serde_json::json!([{"speakerId": "55",
                "sentences": [{"text": "no times"}, {"start": 0, "end": 10}]}]))
            .unwrap(),
        );
        event.call.context = Some(
            serde_json::from_value(serde_json::json!([{"system": "Salesforce", "objects": [
                {"objectType": "Account", "fields": [{"name": "Missing"}, {"name": "Null", "value": null},
                    {"name": "Zero", "value": 0}, {"name": "Text", "value": "null"}]}]}]))
            .unwrap(),
        );
        let mut tables = TableSet::default();
        append_event(&mut tables, &event, 1);
        let sentences = batch(&mut tables, Table::CallTranscriptSentences);
        assert_eq!(ints(&sentences, "start_ms"), vec![None, Some(0)]);
        assert_eq!(ints(&sentences, "end_ms"), vec![None, Some(10)]);
        assert_eq!(
            texts(&sentences, "text"),
            vec![Some("no times".to_string()), None]
        );
        let fields = batch(&mut tables, Table::CallContextFields);
        assert_eq!(
            texts(&fields, "value_json"),
            vec![
                None,
                None,
                Some("0".to_string()),
                Some("\"null\"".to_string())
            ]
        );
    }

    #[test]
    fn the_utc_day_of_the_start_does_not_depend_on_its_offset() {
        let mut event = event();
        // 18:00 in Los Angeles on 29 February is 02:00 UTC on 1 March.
        event.call.meta_data.as_mut().unwrap().started = Some("2024-02-29T18:00:00-08:00".into());
        let mut tables = TableSet::default();
        append_event(&mut tables, &event, 1);
        let calls = batch(&mut tables, Table::Calls);
        let march_first = chrono::NaiveDate::from_ymd_opt(2024, 3, 1)
            .unwrap()
            .signed_duration_since(chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap())
            .num_days() as i32;
        assert_eq!(dates(&calls, "started_date_utc"), vec![Some(march_first)]);
        assert_eq!(
            utc_day(-1),
            -1,
            "an instant before 1970 is on the day before"
        );
    }

    #[test]
    fn users_keep_their_other_fields_as_json() {
        let user: User = serde_json::from_value(serde_json::json!({
            "id": 234599484848423u64, "emailAddress": "jon@x", "firstName": "Jon", "lastName": "Snow",
            "title": "AE", "managerId": "563515258458745", "active": true,
            "created": "2018-02-17T02:30:00-08:00", "emailAliases": ["j@x"], "phoneNumber": "+1",
            "settings": {"emailsImported": true}, "extension": "123"
        }))
        .unwrap();
        let event = EnrichedUser::new(user, "2024-05-06T07:09:00Z".parse().unwrap());
        let mut tables = TableSet::default();
        append_user(&mut tables, &event, 5);
        let users = batch(&mut tables, Table::Users);
        assert_eq!(
            texts(&users, "user_id"),
            vec![Some("234599484848423".into())]
        );
        assert_eq!(
            texts(&users, "manager_id"),
            vec![Some("563515258458745".into())]
        );
        let created = users
            .column_by_name("created")
            .unwrap()
            .as_primitive::<TimestampMicrosecondType>()
            .value(0);
        assert_eq!(Some(created), parse_gong_time("2018-02-17T10:30:00Z"));
        let extra: Value =
            serde_json::from_str(texts(&users, "extra_json")[0].as_deref().unwrap()).unwrap();
        assert_eq!(
            extra,
            serde_json::json!({"emailAliases": ["j@x"], "extension": "123", "phoneNumber": "+1",
                "settings": {"emailsImported": true}})
        );
    }

    #[test]
    fn answered_scorecards_give_a_row_and_one_row_per_answer() {
        let card: AnsweredScorecard = serde_json::from_value(serde_json::json!({
            "answeredScorecardId": 563515258458745u64, "scorecardId": 6843152929075440037u64,
            "scorecardName": "SDR", "callId": 7782342274025937895u64,
            "callStartTime": "2024-01-02T03:04:05-08:00", "reviewedUserId": 234599484848423u64,
            "reviewerUserId": 563515258458745u64, "reviewTime": 1518863400.0,
            "visibilityType": "PUBLIC", "later": 1,
            "answers": [
                {"questionId": 1, "questionRevisionId": 2, "isOverall": true, "score": 4,
                 "notApplicable": false, "selectedOptions": ["1", "3"]},
                {"questionId": 3, "answerText": "good", "selectedOptions": null, "more": "x"}
            ]
        }))
        .unwrap();
        let event = EnrichedScorecard::new(card, "2024-05-06T07:09:00Z".parse().unwrap());
        let mut tables = TableSet::default();
        append_scorecard(&mut tables, &event, 9);
        let cards = batch(&mut tables, Table::AnsweredScorecards);
        assert_eq!(
            texts(&cards, "call_id"),
            vec![Some("7782342274025937895".into())]
        );
        let reviewed = cards
            .column_by_name("reviewed_at")
            .unwrap()
            .as_primitive::<TimestampMicrosecondType>()
            .value(0);
        assert_eq!(reviewed, 1_518_863_400_000_000);
        assert_eq!(
            dates(&cards, "reviewed_date_utc"),
            vec![Some(17_579)],
            "2018-02-17"
        );
        assert_eq!(
            texts(&cards, "extra_json"),
            vec![Some("{\"later\":1}".into())]
        );
        let answers = batch(&mut tables, Table::AnsweredScorecardAnswers);
        assert_eq!(
            texts(&answers, "answered_scorecard_id"),
            vec![Some("563515258458745".into()); 2]
        );
        assert_eq!(floats(&answers, "score"), vec![Some(4.0), None]);
        assert_eq!(
            texts(&answers, "selected_options_json"),
            vec![Some("[\"1\",\"3\"]".into()), None]
        );
        assert_eq!(
            texts(&answers, "extra_json"),
            vec![None, Some("{\"more\":\"x\"}".into())]
        );
    }

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
        assert_eq!(counts, vec![1, 1, 2, 1, 1, 2, 0, 0, 0, 0]);
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
