//! Gong's webhook body and REST API types (shapes from Gong's OpenAPI v2 document).
//!
//! Gong adds fields without notice, so every struct is lenient (every field optional) and
//! lossless (unknown fields are kept in `extra` and written back out). Ids are numeric *strings*
//! of up to 20 digits; a number where a string is expected is accepted and kept as its digits.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// Unknown fields, kept verbatim.
pub type Extra = Map<String, Value>;

/// Longest call id Gong issues: ids are numeric strings of up to 20 digits (a `u64`).
pub const MAX_CALL_ID_DIGITS: usize = 20;

/// Whether `text` is a Gong call id: 1 to [`MAX_CALL_ID_DIGITS`] ASCII digits. The one rule
/// ingest routes on and enrich checks again, so an id ingest stores is one enrich accepts.
pub fn is_call_id(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_CALL_ID_DIGITS
        && text.bytes().all(|byte| byte.is_ascii_digit())
}

/// Accepts a JSON string or number and keeps it as a string (ids must never become floats).
pub fn string_or_number<'de, D>(deserializer: D) -> Result<Option<String>, D::Error>
where
    D: Deserializer<'de>,
{
    match Option::<Value>::deserialize(deserializer)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(Value::Number(number)) => Ok(Some(number.to_string())),
        Some(other) => Err(serde::de::Error::custom(format!(
            "expected a string or number id, found {}",
            json_kind(&other)
        ))),
    }
}

/// Accepts a JSON number or a numeric string and keeps it as a float (a measurement Gong documents
/// as a number; a string that is not a number is refused like any other type error). Only finite
/// values: `"NaN"`, `"inf"` or `"1e999"` (which Rust's float parsing takes) are refused too,
/// never stored as NaN or infinity (a FLOAT column would get them, JSON writes them as `null`).
pub fn number_or_string<'de, D>(deserializer: D) -> Result<Option<f64>, D::Error>
where
    D: Deserializer<'de>,
{
    match Option::<Value>::deserialize(deserializer)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(number)) => match number.as_f64() {
            Some(value) if !value.is_finite() => Err(serde::de::Error::custom(format!(
                "expected a finite number, found {number}"
            ))),
            value => Ok(value),
        },
        Some(Value::String(text)) => match text.trim().parse::<f64>() {
            Ok(value) if value.is_finite() => Ok(Some(value)),
            Ok(_) => Err(serde::de::Error::custom(format!(
                "expected a finite number, found the string {text:?}"
            ))),
            Err(_) => Err(serde::de::Error::custom(format!(
                "expected a number, found the string {text:?}"
            ))),
        },
        Some(other) => Err(serde::de::Error::custom(format!(
            "expected a number, found {}",
            json_kind(&other)
        ))),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The body of a Gong automation-rule webhook: exactly `isTest` and `callData`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Webhook {
    /// True for the rule editor's "test now" deliveries.
    #[serde(default)]
    pub is_test: bool,
    /// The call, in the shape of the API's call object.
    #[serde(default)]
    pub call_data: Call,
    /// Unknown top-level fields.
    #[serde(flatten)]
    pub extra: Extra,
}

impl Webhook {
    /// The call id, if the body has one.
    pub fn call_id(&self) -> Option<&str> {
        self.call_data.id()
    }
}

/// A call as the webhook and `POST /v2/calls/extensive` carry it. Every block is optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Call {
    /// Basic facts: id, title, times, direction, scope...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta_data: Option<CallMetaData>,
    /// CRM objects linked to the call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Vec<CallContext>>,
    /// Participants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parties: Option<Vec<Party>>,
    /// Analysis: topics, trackers, brief, outline, highlights...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<CallContent>,
    /// Interaction statistics (kept as Gong sends them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interaction: Option<Value>,
    /// Comments (kept as Gong sends them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collaboration: Option<Value>,
    /// Media URLs (kept as Gong sends them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<Value>,
    /// Unknown blocks.
    #[serde(flatten)]
    pub extra: Extra,
}

impl Call {
    /// `metaData.id`, the call id.
    pub fn id(&self) -> Option<&str> {
        self.meta_data.as_ref().and_then(|meta| meta.id.as_deref())
    }

    /// The `interaction` block read as [`Interaction`] (speakers' talk time, interaction stats).
    /// `None` when the call has no such block or it does not have that shape; the block itself
    /// is kept in [`Call::interaction`] either way.
    pub fn interaction_measures(&self) -> Option<Interaction> {
        Interaction::deserialize(self.interaction.as_ref()?).ok()
    }

    /// `metaData.isPrivate`.
    pub fn is_private(&self) -> bool {
        self.meta_data
            .as_ref()
            .and_then(|meta| meta.is_private)
            .unwrap_or(false)
    }
}

/// `callData.metaData`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CallMetaData {
    /// Call id (numeric string).
    #[serde(
        default,
        deserialize_with = "string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub id: Option<String>,
    /// Link to the call in Gong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Scheduled start, ISO-8601 with offset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled: Option<String>,
    /// Actual start, ISO-8601 with offset (sometimes with microseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    /// Duration in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<f64>,
    /// Host user id (numeric string).
    #[serde(
        default,
        deserialize_with = "string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub primary_user_id: Option<String>,
    /// `Inbound`, `Outbound`, `Conference`, `Unknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    /// Conferencing or telephony system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// `Internal`, `External`, `Unknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// `Video` or `Audio`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<String>,
    /// Language code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// Workspace id (numeric string).
    #[serde(
        default,
        deserialize_with = "string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub workspace_id: Option<String>,
    /// Private calls are not transcribed by public connectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_private: Option<bool>,
    /// Meeting link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meeting_url: Option<String>,
    /// Purpose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// Unknown fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `context[]`: a CRM system and its objects.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CallContext {
    /// CRM system name (e.g. `Salesforce`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// Objects (accounts, opportunities...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objects: Option<Vec<ContextObject>>,
    /// Unknown fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// One CRM object linked to a call.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContextObject {
    /// Object type (`Account`, `Opportunity`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_type: Option<String>,
    /// Object id in the CRM.
    #[serde(
        default,
        deserialize_with = "string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub object_id: Option<String>,
    /// Fields; a value is any JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<Vec<ContextField>>,
    /// Unknown fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `fields[]{name, value}` of a CRM object.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ContextField {
    /// Field name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Any JSON value.
    #[serde(default)]
    pub value: Value,
}

/// `parties[]`: a participant.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Party {
    /// Participant id within the call.
    #[serde(
        default,
        deserialize_with = "string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub id: Option<String>,
    /// Email address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_address: Option<String>,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Job title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Gong user id, for internal participants.
    #[serde(
        default,
        deserialize_with = "string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub user_id: Option<String>,
    /// Joins `transcript[].speakerId`.
    #[serde(
        default,
        deserialize_with = "string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub speaker_id: Option<String>,
    /// `Internal`, `External`, `Unknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affiliation: Option<String>,
    /// Phone number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone_number: Option<String>,
    /// Unknown fields (`methods`, `context`...).
    #[serde(flatten)]
    pub extra: Extra,
}

/// `content`: Gong's analysis of the call.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CallContent {
    /// Topics with time spent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topics: Option<Vec<Topic>>,
    /// Trackers with counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trackers: Option<Vec<Tracker>>,
    /// One-paragraph summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brief: Option<String>,
    /// Unknown and untyped blocks (`structure`, `outline`, `highlights`, `callOutcome`,
    /// `keyPoints`, `pointsOfInterest`...).
    #[serde(flatten)]
    pub extra: Extra,
}

/// `content.topics[]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Topic {
    /// Topic name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Seconds spent on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<f64>,
    /// Unknown fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `content.trackers[]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Tracker {
    /// Tracker id.
    #[serde(
        default,
        deserialize_with = "string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub id: Option<String>,
    /// Tracker name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Occurrences in the call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<i64>,
    /// `KEYWORD` or `SMART`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Unknown fields (`occurrences`, `phrases`...).
    #[serde(flatten)]
    pub extra: Extra,
}

/// One call's transcript from `POST /v2/calls/transcript`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CallTranscript {
    /// Call id.
    #[serde(
        default,
        deserialize_with = "string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub call_id: Option<String>,
    /// Monologues in order.
    #[serde(default)]
    pub transcript: Vec<Monologue>,
    /// Unknown fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A speaker's turn.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Monologue {
    /// Joins `parties[].speakerId`.
    #[serde(
        default,
        deserialize_with = "string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub speaker_id: Option<String>,
    /// Topic of the monologue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Sentences.
    #[serde(default)]
    pub sentences: Vec<Sentence>,
}

/// A sentence; `start` and `end` are milliseconds from the call's start. A field Gong left out
/// stays `None` (it is not 0 or empty: downstream must not invent values).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Sentence {
    /// Milliseconds from the start of the call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<i64>,
    /// Milliseconds from the start of the call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<i64>,
    /// Text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// `interaction` of a call (`contentSelector.exposedFields.interaction`), as far as the tables
/// use it. [`Call::interaction`] keeps the whole block as Gong sent it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Interaction {
    /// Talk time per participant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speakers: Option<Vec<Speaker>>,
    /// Talk Ratio, Longest Monologue, Longest Customer Story, Interactivity, Patience, Question
    /// Rate...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interaction_stats: Option<Vec<InteractionStat>>,
    /// Unknown and untyped blocks (`video`, `questions`...).
    #[serde(flatten)]
    pub extra: Extra,
}

/// `interaction.speakers[]`: one participant's talk time.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Speaker {
    /// The **participant** id (`parties[].id`), not the speaker id.
    #[serde(
        default,
        deserialize_with = "string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub id: Option<String>,
    /// Gong user id, for internal participants.
    #[serde(
        default,
        deserialize_with = "string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub user_id: Option<String>,
    /// Talk duration in seconds.
    #[serde(
        default,
        deserialize_with = "number_or_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub talk_time: Option<f64>,
    /// Unknown fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `interaction.interactionStats[]`: `{name, value}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InteractionStat {
    /// Stat name (`Talk Ratio`, `Interactivity`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Stat measurement.
    #[serde(
        default,
        deserialize_with = "number_or_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub value: Option<f64>,
    /// Unknown fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A Gong user: `GET /v2/users` → `users[]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct User {
    /// User id (numeric string of up to 20 digits).
    #[serde(
        default,
        deserialize_with = "string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub id: Option<String>,
    /// Email address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_address: Option<String>,
    /// Creation time, ISO-8601 with offset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Whether the user is active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<bool>,
    /// Email address aliases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_aliases: Option<Vec<String>>,
    /// First name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    /// Last name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    /// Job title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Phone number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone_number: Option<String>,
    /// The manager's user id.
    #[serde(
        default,
        deserialize_with = "string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub manager_id: Option<String>,
    /// Recording and import settings (kept as Gong sends them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<Value>,
    /// `[{language, primary}]` (kept as Gong sends them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spoken_languages: Option<Value>,
    /// Unknown fields (`trustedEmailAddress`, `extension`, `personalMeetingUrls`,
    /// `meetingConsentPageUrl`...).
    #[serde(flatten)]
    pub extra: Extra,
}

/// An answered scorecard: `POST /v2/stats/activity/scorecards` → `answeredScorecards[]`.
/// Gong sends the ids here as JSON numbers (int64); they are kept as strings, like every id.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AnsweredScorecard {
    /// Id of this answered scorecard.
    #[serde(
        default,
        deserialize_with = "string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub answered_scorecard_id: Option<String>,
    /// Id of the scorecard (the form).
    #[serde(
        default,
        deserialize_with = "string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub scorecard_id: Option<String>,
    /// Scorecard name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scorecard_name: Option<String>,
    /// The call reviewed.
    #[serde(
        default,
        deserialize_with = "string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub call_id: Option<String>,
    /// When the call started, ISO-8601 (a number is kept as its text).
    #[serde(
        default,
        deserialize_with = "string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub call_start_time: Option<String>,
    /// The user reviewed (the call's host).
    #[serde(
        default,
        deserialize_with = "string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub reviewed_user_id: Option<String>,
    /// The user who answered the scorecard.
    #[serde(
        default,
        deserialize_with = "string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub reviewer_user_id: Option<String>,
    /// When the review was published, ISO-8601 (a number is kept as its text).
    #[serde(
        default,
        deserialize_with = "string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub review_time: Option<String>,
    /// `PUBLIC`, `PRIVATE`, `OPT_IN_USERS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visibility_type: Option<String>,
    /// The answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answers: Option<Vec<ScorecardAnswer>>,
    /// Unknown fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `answeredScorecards[].answers[]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScorecardAnswer {
    /// Question id.
    #[serde(
        default,
        deserialize_with = "string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub question_id: Option<String>,
    /// Revision of the question.
    #[serde(
        default,
        deserialize_with = "string_or_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub question_revision_id: Option<String>,
    /// Whether this is the scorecard's overall question.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_overall: Option<bool>,
    /// Score (1 to 50) when answered with a score.
    #[serde(
        default,
        deserialize_with = "number_or_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub score: Option<f64>,
    /// Text answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_text: Option<String>,
    /// The question does not apply to the call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_applicable: Option<bool>,
    /// Ids of the options selected (kept as Gong sends them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selected_options: Option<Value>,
    /// Unknown fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `records` of every list answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Records {
    /// Total across pages.
    #[serde(default)]
    pub total_records: i64,
    /// Items on this page.
    #[serde(default)]
    pub current_page_size: i64,
    /// Zero-based page number.
    #[serde(default)]
    pub current_page_number: i64,
    /// Present when more pages follow; goes in the next request's JSON body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// `filter` of the call requests.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CallsFilter {
    /// Call ids to fetch.
    #[serde(default)]
    pub call_ids: Vec<String>,
    /// Lower bound of the call start, ISO-8601.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_date_time: Option<String>,
    /// Upper bound of the call start, ISO-8601.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_date_time: Option<String>,
    /// Workspace id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_id: Option<String>,
}

/// Body of `POST /v2/calls/extensive`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExtensiveRequest {
    /// Cursor of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// Which calls.
    pub filter: CallsFilter,
    /// Which blocks (`contentSelector`), as Gong spells it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_selector: Option<Value>,
}

/// Answer of `POST /v2/calls/extensive`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExtensiveResponse {
    /// Request id, for Gong support.
    #[serde(default)]
    pub request_id: Option<String>,
    /// Paging.
    #[serde(default)]
    pub records: Records,
    /// Calls on this page.
    #[serde(default)]
    pub calls: Vec<Call>,
}

/// Body of `POST /v2/calls/transcript`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TranscriptRequest {
    /// Cursor of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// Which calls.
    pub filter: CallsFilter,
}

/// Answer of `POST /v2/calls/transcript`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TranscriptResponse {
    /// Request id, for Gong support.
    #[serde(default)]
    pub request_id: Option<String>,
    /// Paging.
    #[serde(default)]
    pub records: Records,
    /// Transcripts on this page.
    #[serde(default)]
    pub call_transcripts: Vec<CallTranscript>,
}

/// Answer of `GET /v2/users` (the cursor of the next page goes in the query string).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UsersResponse {
    /// Request id, for Gong support.
    #[serde(default)]
    pub request_id: Option<String>,
    /// Paging.
    #[serde(default)]
    pub records: Records,
    /// Users on this page.
    #[serde(default)]
    pub users: Vec<User>,
}

/// `filter` of `POST /v2/stats/activity/scorecards`: dates are `YYYY-MM-DD` in the company's
/// time zone, `from` inclusive, `to` exclusive.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AnsweredScorecardsFilter {
    /// First call date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_from_date: Option<String>,
    /// Call date bound (exclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_to_date: Option<String>,
    /// First review date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review_from_date: Option<String>,
    /// Review date bound (exclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review_to_date: Option<String>,
    /// Only these scorecards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scorecard_ids: Option<Vec<String>>,
    /// Only these reviewed users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reviewed_user_ids: Option<Vec<String>>,
}

/// Body of `POST /v2/stats/activity/scorecards`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AnsweredScorecardsRequest {
    /// Cursor of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// Which answered scorecards.
    pub filter: AnsweredScorecardsFilter,
}

/// Answer of `POST /v2/stats/activity/scorecards`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AnsweredScorecardsResponse {
    /// Request id, for Gong support.
    #[serde(default)]
    pub request_id: Option<String>,
    /// Paging.
    #[serde(default)]
    pub records: Records,
    /// Answered scorecards on this page.
    #[serde(default)]
    pub answered_scorecards: Vec<AnsweredScorecard>,
}

/// Error answer: `{requestId, errors[...]}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ErrorResponse {
    /// Request id, for Gong support.
    #[serde(default)]
    pub request_id: Option<String>,
    /// Messages.
    #[serde(default)]
    pub errors: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_keeps_unknown_fields_and_numeric_ids() {
        let raw = r#"{"isTest":false,"callData":{"metaData":{"id":7782342274025937895,
            "started":"2024-01-02T03:04:05.123456-08:00","newField":{"x":1}},
            "parties":[{"speakerId":"6432345678555530067","name":"A"}],"surprise":[1]}}"#;
        let webhook: Webhook = serde_json::from_str(raw).unwrap();
        assert_eq!(webhook.call_id(), Some("7782342274025937895"));
        let meta = webhook.call_data.meta_data.as_ref().unwrap();
        assert_eq!(meta.extra["newField"]["x"], 1);
        assert!(webhook.call_data.extra.contains_key("surprise"));
        let back = serde_json::to_value(&webhook).unwrap();
        assert_eq!(back["callData"]["metaData"]["newField"]["x"], 1);
        assert_eq!(back["callData"]["metaData"]["id"], "7782342274025937895");
    }

    #[test]
    fn missing_sentence_fields_stay_missing() {
        let raw = r#"{"speakerId":"1","sentences":[{"text":"hi"},{"start":0,"end":5}]}"#;
        let monologue: Monologue = serde_json::from_str(raw).unwrap();
        assert_eq!(monologue.sentences[0].start, None);
        assert_eq!(monologue.sentences[0].end, None);
        assert_eq!(monologue.sentences[1].start, Some(0));
        assert_eq!(monologue.sentences[1].text, None);
        let back = serde_json::to_value(&monologue).unwrap();
        assert_eq!(back["sentences"][0], serde_json::json!({"text": "hi"}));
    }

    #[test]
    fn answered_scorecard_ids_are_numbers_kept_as_strings() {
        // Shape from Gong's OpenAPI document: ids are int64 JSON numbers here.
        let raw = r#"{"answeredScorecardId":563515258458745,"scorecardId":6843152929075440037,
            "scorecardName":"SDR Call Scorecard","callId":7782342274025937895,
            "callStartTime":"2024-01-02T03:04:05-08:00","reviewedUserId":234599484848423,
            "reviewerUserId":"563515258458745","reviewTime":1518863400.0,
            "visibilityType":"PUBLIC","newField":true,
            "answers":[{"questionId":1,"questionRevisionId":43955224753211112,"isOverall":true,
                "score":4,"answerText":null,"notApplicable":false,"selectedOptions":["1","3"]}]}"#;
        let card: AnsweredScorecard = serde_json::from_str(raw).unwrap();
        assert_eq!(
            card.answered_scorecard_id.as_deref(),
            Some("563515258458745")
        );
        assert_eq!(card.scorecard_id.as_deref(), Some("6843152929075440037"));
        assert_eq!(card.call_id.as_deref(), Some("7782342274025937895"));
        assert_eq!(card.reviewed_user_id.as_deref(), Some("234599484848423"));
        assert_eq!(card.review_time.as_deref(), Some("1518863400.0"));
        let answer = &card.answers.as_ref().unwrap()[0];
        assert_eq!(
            answer.question_revision_id.as_deref(),
            Some("43955224753211112")
        );
        assert_eq!(answer.score, Some(4.0));
        assert_eq!(answer.answer_text, None);
        assert!(card.extra.contains_key("newField"));
        let back = serde_json::to_value(&card).unwrap();
        assert_eq!(back["callId"], "7782342274025937895");
    }

    #[test]
    fn users_keep_unknown_fields() {
        let raw = r#"{"id":"234599484848423","emailAddress":"jon@x","created":"2018-02-17T02:30:00-08:00",
            "active":true,"emailAliases":["a@x"],"managerId":563515258458745,
            "settings":{"emailsImported":true},"extension":"123"}"#;
        let user: User = serde_json::from_str(raw).unwrap();
        assert_eq!(user.manager_id.as_deref(), Some("563515258458745"));
        assert_eq!(user.extra["extension"], "123");
        assert_eq!(user.settings.as_ref().unwrap()["emailsImported"], true);
    }

    #[test]
    fn interaction_speakers_and_stats_are_read_from_the_block() {
        let raw = r#"{"metaData":{"id":"1"},"interaction":{"speakers":[{"id":"56825452554556",
            "userId":"234599484848423","talkTime":145.5}],"interactionStats":[{"name":"Talk Ratio",
            "value":0.61},{"name":"Patience","value":"0.8"}],"video":[]}}"#;
        let call: Call = serde_json::from_str(raw).unwrap();
        let interaction = call.interaction_measures().unwrap();
        let speaker = &interaction.speakers.as_ref().unwrap()[0];
        assert_eq!(speaker.id.as_deref(), Some("56825452554556"));
        assert_eq!(speaker.talk_time, Some(145.5));
        let stats = interaction.interaction_stats.unwrap();
        assert_eq!(stats[1].value, Some(0.8));
        assert!(interaction.extra.contains_key("video"));
        assert!(Call::default().interaction_measures().is_none());
    }

    #[test]
    fn numbers_in_strings_must_be_finite() {
        let stat = |value: &str| {
            serde_json::from_str::<InteractionStat>(&format!(r#"{{"name":"x","value":{value}}}"#))
        };
        assert_eq!(stat(r#""0.8""#).unwrap().value, Some(0.8));
        assert_eq!(stat(r#"" -12.5e3 ""#).unwrap().value, Some(-12500.0));
        assert_eq!(stat("1e308").unwrap().value, Some(1e308));
        for refused in [
            r#""NaN""#,
            r#""nan""#,
            r#""inf""#,
            r#""-Infinity""#,
            r#""1e999""#,
            r#""-1e400""#,
            "1e999",
            r#""abc""#,
        ] {
            let error = stat(refused).expect_err(refused);
            assert!(error.to_string().contains("number"), "{refused}: {error}");
        }
    }

    #[test]
    fn object_ids_are_rejected() {
        let raw = r#"{"callData":{"metaData":{"id":{"x":1}}}}"#;
        assert!(serde_json::from_str::<Webhook>(raw).is_err());
    }
}
