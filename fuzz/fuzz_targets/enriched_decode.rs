//! Decoders of data that crossed a process boundary: the enriched event (what gong-load reads)
//! and Gong's webhook body and API answers. Must never panic; what decodes must re-encode and
//! decode to the same value.
#![no_main]

use gong_common::event::EnrichedEvent;
use gong_common::gong::{ExtensiveResponse, TranscriptResponse, Webhook};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = EnrichedEvent::from_json(data) {
        let again = EnrichedEvent::from_json(&event.to_json()).expect("re-encoded event decodes");
        assert_eq!(again.event_id, event.event_id);
        assert_eq!(again.call_id(), event.call_id());
    }
    if let Ok(webhook) = serde_json::from_slice::<Webhook>(data) {
        let bytes = serde_json::to_vec(&webhook).expect("encode");
        let again: Webhook = serde_json::from_slice(&bytes).expect("re-encoded webhook decodes");
        assert_eq!(again.call_id(), webhook.call_id());
    }
    let _ = serde_json::from_slice::<ExtensiveResponse>(data);
    let _ = serde_json::from_slice::<TranscriptResponse>(data);
});
