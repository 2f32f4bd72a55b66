//! The enriched event: what gong-enrich publishes on `gong.enriched.call` and gong-load reads.
//!
//! Versioned: readers accept every version up to [`ENRICHED_SCHEMA_VERSION`] and reject newer
//! ones with a clear error (a newer writer may carry meaning an older reader would drop).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::gong::{Call, Monologue};

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

impl EnrichedEvent {
    /// Encodes as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain data with string keys cannot fail.
        serde_json::to_vec(self).expect("enriched event serialises")
    }

    /// Decodes and checks the version. One pass in the common case; only a body that does not
    /// decode as this version is read again for its `schema_version`, so that a newer event
    /// says "unsupported version" rather than a field error.
    pub fn from_json(bytes: &[u8]) -> Result<EnrichedEvent, DecodeError> {
        #[derive(Deserialize)]
        struct VersionProbe {
            schema_version: u32,
        }
        let unsupported = |found: u32| DecodeError::UnsupportedVersion {
            found,
            supported: ENRICHED_SCHEMA_VERSION,
        };
        match serde_json::from_slice::<EnrichedEvent>(bytes) {
            Ok(event) if event.schema_version > ENRICHED_SCHEMA_VERSION => {
                Err(unsupported(event.schema_version))
            }
            Ok(event) => Ok(event),
            Err(err) => match serde_json::from_slice::<VersionProbe>(bytes) {
                Ok(probe) if probe.schema_version > ENRICHED_SCHEMA_VERSION => {
                    Err(unsupported(probe.schema_version))
                }
                _ => Err(err.into()),
            },
        }
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
    fn content_id_is_sha256_hex() {
        assert_eq!(
            content_id(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
