//! The webhook path before anything is stored: JWT header verification and the body check
//! against arbitrary Authorization values and bodies, then body classification. Must never
//! panic, and must never accept a token not signed by the configured key.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use gong_ingest::auth::{parse_public_key, Verifier};
use gong_testkit::webhook::TestKey;
use libfuzzer_sys::fuzz_target;

const URL: &str = "https://hooks.example.com/webhooks/gong";

fn verifier() -> &'static Verifier {
    static VERIFIER: OnceLock<Verifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let key = parse_public_key(0, &TestKey::rule_a().public_base64_der()).expect("test key");
        Verifier::new(vec![key], Some(URL.to_string()), &["fuzz-token-0123456789".to_string()], Duration::from_secs(60))
    })
}

fuzz_target!(|data: &[u8]| {
    // First byte splits the input into an Authorization value and a body.
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let (authorization, body) = rest.split_at((first as usize).min(rest.len()));
    let verifier = verifier();
    let _ = verifier.verify_header(authorization);
    // The fuzzer cannot forge an RS256 signature: acceptance would be a bug.
    assert!(verifier.verify_jwt(authorization, body).is_err());
    let _ = verifier.verify_url_token(&String::from_utf8_lossy(authorization));
    let _ = gong_ingest::server::classify(body);
    // A correctly signed token over the fuzzed body must be accepted: the hash covers raw bytes.
    if body.len() < 4096 && data.len() % 64 == 0 {
        let token = TestKey::rule_a().sign_webhook(body, URL, 300);
        assert!(verifier.verify_jwt(token.as_bytes(), body).is_ok());
    }
});
