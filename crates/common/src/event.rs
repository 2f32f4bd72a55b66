//! The enriched events: what gong-enrich publishes on `GONG_ENRICHED` and gong-load reads, one
//! type per subject:
//!
//! | subject | type | one event per |
//! |---|---|---|
//! | `gong.enriched.call` | [`EnrichedEvent`] | raw call event enriched |
//! | `gong.enriched.user` | [`EnrichedUser`] | user per fetch of `GET /v2/users` |
//! | `gong.enriched.scorecard` | [`EnrichedScorecard`] | answered scorecard per fetch |
//!
//! Each is versioned on its own: readers accept every version up to the type's current one and
//! reject newer ones with a clear error (a newer writer may carry meaning an older reader would
//! drop). The entity events' `event_id` is [`entity_id`] of the entity: the SHA-256 of the
//! entity's JSON bytes exactly as they appear in the published event, and the publisher sets it
//! as `Nats-Msg-Id`, so a refetch of an unchanged entity inside the duplicate window is stored
//! once, and outside it carries the same `event_id`.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::gong::{AnsweredScorecard, Call, Monologue, User};

/// Current version of [`EnrichedEvent`].
pub const ENRICHED_SCHEMA_VERSION: u32 = 1;

/// A raw call event joined with what Gong's REST API knows about the call.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EnrichedEvent {
    /// Version of this shape.
    pub schema_version: u32,
    /// Id of this enriched event. Equals `raw_event_id` for live enrichment; a replay gives new
    /// ids (and sets `replay_run_id`) so downstream can tell re-enrichments apart.
    pub event_id: String,
    /// Id of the raw event (lowercase hex SHA-256 of the webhook body).
    pub raw_event_id: String,
    /// Stream sequence of the raw event in `GONG_RAW`.
    pub raw_stream_seq: u64,
    /// When gong-ingest received the webhook.
    pub received_at: DateTime<Utc>,
    /// When the Gong API answered.
    pub fetched_at: DateTime<Utc>,
    /// Set when a replay produced this event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_run_id: Option<String>,
    /// The call from `POST /v2/calls/extensive`, unknown fields kept.
    pub call: Call,
    /// The transcript; `None` when not fetched (private call) or Gong has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transcript: Option<Vec<Monologue>>,
}

/// An enriched event could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON of the expected shape.
    #[error("enriched event is not valid JSON of the expected shape: {0}")]
    Json(#[from] serde_json::Error),
    /// Written by a newer version of the pipeline.
    #[error("enriched event schema_version {found} is newer than supported {supported}")]
    UnsupportedVersion {
        /// Version in the event.
        found: u32,
        /// Newest version this build understands.
        supported: u32,
    },
}

/// Decodes `bytes` as `T` and checks its version against `supported`. One pass in the common
/// case; only a body that does not decode is read again for its `schema_version`, so that a newer
/// event says "unsupported version" rather than a field error.
fn decode_versioned<T: DeserializeOwned>(
    bytes: &[u8],
    supported: u32,
    version: impl Fn(&T) -> u32,
) -> Result<T, DecodeError> {
    #[derive(Deserialize)]
    struct VersionProbe {
        schema_version: u32,
    }
    let unsupported = |found: u32| DecodeError::UnsupportedVersion { found, supported };
    match serde_json::from_slice::<T>(bytes) {
        Ok(event) if version(&event) > supported => Err(unsupported(version(&event))),
        Ok(event) => Ok(event),
        Err(err) => match serde_json::from_slice::<VersionProbe>(bytes) {
            Ok(probe) if probe.schema_version > supported => Err(unsupported(probe.schema_version)),
            _ => Err(err.into()),
        },
    }
}

impl EnrichedEvent {
    /// Encodes as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain data with string keys cannot fail.
        serde_json::to_vec(self).expect("enriched event serialises")
    }

    /// Decodes and checks the version.
    pub fn from_json(bytes: &[u8]) -> Result<EnrichedEvent, DecodeError> {
        decode_versioned(bytes, ENRICHED_SCHEMA_VERSION, |event: &EnrichedEvent| {
            event.schema_version
        })
    }

    /// The call id (`call.metaData.id`).
    pub fn call_id(&self) -> Option<&str> {
        self.call.id()
    }
}

/// Lowercase hex SHA-256: the event id of a raw body and its JetStream dedupe key.
pub fn content_id(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The `event_id` of an entity event: [`content_id`] of the entity's compact JSON, which is
/// exactly the text the entity has inside the published event (the same serialiser writes both;
/// unknown fields are written in key order). Equal content gives equal ids, whenever fetched.
pub fn entity_id<T: Serialize>(entity: &T) -> String {
    // Serialising plain data with string keys cannot fail.
    content_id(&serde_json::to_vec(entity).expect("entity serialises"))
}

/// Current version of [`EnrichedUser`].
pub const ENRICHED_USER_SCHEMA_VERSION: u32 = 1;

/// One Gong user as one fetch of `GET /v2/users` returned it, published on
/// `gong.enriched.user` with `Nats-Msg-Id` = `event_id`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EnrichedUser {
    /// Version of this shape.
    pub schema_version: u32,
    /// [`entity_id`] of `user`.
    pub event_id: String,
    /// When the Gong API answered.
    pub fetched_at: DateTime<Utc>,
    /// The user, unknown fields kept. `user.id` is required by the loader.
    pub user: User,
}

impl EnrichedUser {
    /// The event for `user` fetched at `fetched_at`, its `event_id` derived from the content.
    pub fn new(user: User, fetched_at: DateTime<Utc>) -> EnrichedUser {
        EnrichedUser {
            schema_version: ENRICHED_USER_SCHEMA_VERSION,
            event_id: entity_id(&user),
            fetched_at,
            user,
        }
    }

    /// Encodes as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("enriched user serialises")
    }

    /// Decodes and checks the version.
    pub fn from_json(bytes: &[u8]) -> Result<EnrichedUser, DecodeError> {
        decode_versioned(
            bytes,
            ENRICHED_USER_SCHEMA_VERSION,
            |event: &EnrichedUser| event.schema_version,
        )
    }

    /// The user id (`user.id`).
    pub fn user_id(&self) -> Option<&str> {
        self.user.id.as_deref()
    }
}

/// Current version of [`EnrichedScorecard`].
pub const ENRICHED_SCORECARD_SCHEMA_VERSION: u32 = 1;

/// One answered scorecard as one fetch of `POST /v2/stats/activity/scorecards` returned it,
/// published on `gong.enriched.scorecard` with `Nats-Msg-Id` = `event_id`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EnrichedScorecard {
    /// Version of this shape.
    pub schema_version: u32,
    /// [`entity_id`] of `scorecard`.
    pub event_id: String,
    /// When the Gong API answered.
    pub fetched_at: DateTime<Utc>,
    /// The answered scorecard with its answers, unknown fields kept.
    /// `scorecard.answeredScorecardId` is required by the loader.
    pub scorecard: AnsweredScorecard,
}

impl EnrichedScorecard {
    /// The event for `scorecard` fetched at `fetched_at`, its `event_id` derived from the
    /// content.
    pub fn new(scorecard: AnsweredScorecard, fetched_at: DateTime<Utc>) -> EnrichedScorecard {
        EnrichedScorecard {
            schema_version: ENRICHED_SCORECARD_SCHEMA_VERSION,
            event_id: entity_id(&scorecard),
            fetched_at,
            scorecard,
        }
    }

    /// Encodes as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("enriched scorecard serialises")
    }

    /// Decodes and checks the version.
    pub fn from_json(bytes: &[u8]) -> Result<EnrichedScorecard, DecodeError> {
        decode_versioned(
            bytes,
            ENRICHED_SCORECARD_SCHEMA_VERSION,
            |event: &EnrichedScorecard| event.schema_version,
        )
    }

    /// The answered scorecard's id (`scorecard.answeredScorecardId`).
    pub fn answered_scorecard_id(&self) -> Option<&str> {
        self.scorecard.answered_scorecard_id.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> EnrichedEvent {
        EnrichedEvent {
            schema_version: ENRICHED_SCHEMA_VERSION,
            event_id: "e".into(),
            raw_event_id: "e".into(),
            raw_stream_seq: 7,
            received_at: Utc::now(),
            fetched_at: Utc::now(),
            replay_run_id: None,
            call: Call::default(),
            transcript: None,
        }
    }

    #[test]
    fn round_trips() {
        let event = sample();
        assert_eq!(EnrichedEvent::from_json(&event.to_json()).unwrap(), event);
    }

    #[test]
    fn newer_versions_are_refused() {
        let mut value = serde_json::to_value(sample()).unwrap();
        value["schema_version"] = 99.into();
        let err = EnrichedEvent::from_json(value.to_string().as_bytes()).unwrap_err();
        assert!(matches!(
            err,
            DecodeError::UnsupportedVersion { found: 99, .. }
        ));
    }

    #[test]
    fn newer_versions_with_a_new_shape_are_refused_as_newer() {
        let mut value = serde_json::to_value(sample()).unwrap();
        value["schema_version"] = 2.into();
        value["call"] = "a shape version 1 cannot read".into();
        let err = EnrichedEvent::from_json(value.to_string().as_bytes()).unwrap_err();
        assert!(matches!(
            err,
            DecodeError::UnsupportedVersion { found: 2, .. }
        ));
        // The same body at version 1 is a plain decode error.
        value["schema_version"] = 1.into();
        let err = EnrichedEvent::from_json(value.to_string().as_bytes()).unwrap_err();
        assert!(matches!(err, DecodeError::Json(_)), "{err:?}");
    }

    #[test]
    fn entity_events_round_trip_and_refuse_newer_versions() {
        let user: User = serde_json::from_str(
            r#"{"id":234599484848423,"emailAddress":"jon@x","zeta":1,"alpha":{"b":2,"a":1}}"#,
        )
        .unwrap();
        let event = EnrichedUser::new(user, Utc::now());
        assert_eq!(EnrichedUser::from_json(&event.to_json()).unwrap(), event);
        assert_eq!(event.user_id(), Some("234599484848423"));
        let mut value = serde_json::to_value(&event).unwrap();
        value["schema_version"] = 2.into();
        let err = EnrichedUser::from_json(value.to_string().as_bytes()).unwrap_err();
        assert!(matches!(
            err,
            DecodeError::UnsupportedVersion { found: 2, .. }
        ));

        let card: AnsweredScorecard =
            serde_json::from_str(r#"{"answeredScorecardId":5,"answers":[{"questionId":1}]}"#)
                .unwrap();
        let event = EnrichedScorecard::new(card, Utc::now());
        assert_eq!(
            EnrichedScorecard::from_json(&event.to_json()).unwrap(),
            event
        );
        assert_eq!(event.answered_scorecard_id(), Some("5"));
    }

    #[test]
    fn entity_ids_are_the_hash_of_the_entity_bytes_as_published() {
        let raw = r#"{"id":"1","firstName":"Ann","zeta":[1],"alpha":true}"#;
        let user: User = serde_json::from_str(raw).unwrap();
        let first = EnrichedUser::new(user.clone(), Utc::now());
        // Fetched again later, unchanged: same id (JetStream drops it inside the window).
        let again = EnrichedUser::new(
            serde_json::from_str(raw).unwrap(),
            Utc::now() + chrono::Duration::hours(24),
        );
        assert_eq!(first.event_id, again.event_id);
        // The id is the hash of the `user` text inside the published bytes.
        let published = String::from_utf8(first.to_json()).unwrap();
        let user_text = serde_json::to_string(&user).unwrap();
        assert!(
            published.contains(&format!("\"user\":{user_text}")),
            "{published}"
        );
        assert_eq!(first.event_id, content_id(user_text.as_bytes()));
        // Any change, an unknown field included, gives another id.
        let mut changed = user;
        changed.extra.insert("zeta".into(), serde_json::json!([2]));
        assert_ne!(
            EnrichedUser::new(changed, Utc::now()).event_id,
            first.event_id
        );
    }

    #[test]
    fn content_id_is_sha256_hex() {
        assert_eq!(
            content_id(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
