//! Webhook authentication: Gong's signed-JWT header, or a secret token in the URL.
//!
//! JWT mode (per shared/design.md §2): the token is in `Authorization`, with or without
//! `Bearer `; it must be RS256 (the algorithm is pinned: `none`, HS*, anything else fails,
//! whatever key it names) and verify against one of the configured rule keys (several at once,
//! for rotation). Claims: `body_sha256` equals the SHA-256 of the raw body bytes (compared in
//! constant time, before any parsing), `webhook_url` equals the configured destination after
//! normalisation, `exp` in the future within a small leeway. Header fields such as `kid`, `jku`
//! or `x5u` are ignored: keys come from configuration only, never from the token.
//!
//! The signature covers the header and the claims, not the body, so everything except
//! `body_sha256` is checked from the `Authorization` header alone ([`Verifier::verify_header`]),
//! before the request takes a slot or its body is read: a forged, expired or misdirected token
//! costs one RSA verification and no body bytes. Only then is the body read and its hash compared
//! with the signed claim ([`VerifiedJwt::check_body`]).
//!
//! Signatures are checked with aws-lc-rs against keys parsed once at start
//! ([`aws_lc_rs::signature::ParsedPublicKey`] keeps the RSA Montgomery context between requests;
//! verifying through a per-call parse costs several times more CPU per webhook). The header is
//! decoded with jsonwebtoken; the claims are checked here.
//!
//! URL mode: the path's last segment is compared in constant time with the configured tokens.
//! Neither a token nor a JWT ever reaches a log line, a metric or an error body.

use std::time::Duration;

use aws_lc_rs::signature::{ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Longest `Authorization` value considered (Gong's tokens are well under 2 KiB).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Why a request was not authenticated. The `reason` strings are safe to return to callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header.
    #[error("missing Authorization header")]
    MissingAuthorization,
    /// More than one `Authorization` header.
    #[error("more than one Authorization header")]
    MultipleAuthorization,
    /// Over [`MAX_TOKEN_BYTES`].
    #[error("Authorization header too large")]
    TokenTooLarge,
    /// Not a JWT (three base64url parts with a JSON header).
    #[error("Authorization is not a well-formed JWT")]
    MalformedToken,
    /// `alg` is not RS256.
    #[error("JWT algorithm not allowed (only RS256)")]
    AlgorithmNotAllowed,
    /// No configured key verifies the signature.
    #[error("JWT signature does not verify with any configured key")]
    BadSignature,
    /// `exp` is in the past (beyond the leeway).
    #[error("JWT expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("JWT not yet valid")]
    NotYetValid,
    /// A required claim is absent or has the wrong type.
    #[error("JWT claim missing or invalid: {0}")]
    MissingClaim(&'static str),
    /// `body_sha256` does not match the body.
    #[error("body_sha256 does not match the request body")]
    BodyHashMismatch,
    /// `webhook_url` is not this endpoint's configured URL.
    #[error("webhook_url does not match the configured GONG_WEBHOOK_URL")]
    WebhookUrlMismatch,
    /// The URL token is not one of the configured tokens.
    #[error("unknown URL token")]
    UnknownToken,
}

impl AuthError {
    /// A short label for metrics (`gong_ingest_auth_failures_total{reason}`).
    pub fn label(self) -> &'static str {
        match self {
            AuthError::MissingAuthorization => "missing_authorization",
            AuthError::MultipleAuthorization => "multiple_authorization",
            AuthError::TokenTooLarge => "token_too_large",
            AuthError::MalformedToken => "malformed_token",
            AuthError::AlgorithmNotAllowed => "algorithm_not_allowed",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::MissingClaim(_) => "missing_claim",
            AuthError::BodyHashMismatch => "body_hash_mismatch",
            AuthError::WebhookUrlMismatch => "webhook_url_mismatch",
            AuthError::UnknownToken => "unknown_token",
        }
    }
}

/// A configured public key could not be read.
#[derive(Debug, thiserror::Error)]
#[error("GONG_WEBHOOK_SECRETS entry {index} is not an RSA public key (PEM, or base64 SPKI DER): {reason}")]
pub struct KeyError {
    /// Zero-based position in the list.
    pub index: usize,
    /// What went wrong.
    pub reason: String,
}

/// A rule's public key, parsed once at start.
#[derive(Clone)]
pub struct RuleKey(ParsedPublicKey);

impl RuleKey {
    fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        self.0.verify_sig(message, signature).is_ok()
    }
}

/// Parses one rule key: PEM (`PUBLIC KEY` or `RSA PUBLIC KEY`), or bare base64 of the SPKI DER as
/// Gong's rule editor shows it. Done once at start.
pub fn parse_public_key(index: usize, raw: &str) -> Result<RuleKey, KeyError> {
    let trimmed = raw.trim();
    let base64_body: String = if trimmed.starts_with("-----BEGIN") {
        trimmed
            .lines()
            .filter(|line| !line.starts_with("-----"))
            .flat_map(str::split_whitespace)
            .collect()
    } else {
        trimmed.split_whitespace().collect()
    };
    let der = base64::engine::general_purpose::STANDARD
        .decode(&base64_body)
        .map_err(|err| KeyError {
            index,
            reason: format!("not base64: {err}"),
        })?;
    ParsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, der)
        .map(RuleKey)
        .map_err(|err| KeyError {
            index,
            reason: format!("not an RSA public key of 2048 bits or more: {err}"),
        })
}

/// Splits `GONG_WEBHOOK_SECRETS`: PEM blocks are kept whole (they contain newlines), other
/// entries are separated by commas or newlines.
pub fn split_keys(raw: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut rest = raw;
    while let Some(start) = rest.find("-----BEGIN") {
        keys.extend(gong_common::config::split_list(&rest[..start]));
        let after = &rest[start..];
        let Some(end_marker) = after.find("-----END") else {
            keys.push(after.trim().to_string());
            return keys;
        };
        let tail = &after[end_marker..];
        let end = tail[8..]
            .find("-----")
            .map(|pos| end_marker + 8 + pos + 5)
            .unwrap_or(after.len());
        keys.push(after[..end].trim().to_string());
        rest = &after[end..];
    }
    keys.extend(gong_common::config::split_list(rest));
    keys
}

/// Normalises a URL for comparison: scheme and host lower-case (done by the parser), default
/// port dropped, fragment dropped, trailing slash of the path dropped.
pub fn normalize_url(raw: &str) -> Option<String> {
    let mut url = url::Url::parse(raw.trim()).ok()?;
    url.set_fragment(None);
    let path = url.path().trim_end_matches('/').to_string();
    url.set_path(&path);
    let mut text = url.to_string();
    if url.query().is_none() && text.ends_with('/') {
        text.pop();
    }
    Some(text)
}

#[derive(Deserialize)]
struct Claims {
    body_sha256: Option<serde_json::Value>,
    webhook_url: Option<serde_json::Value>,
    exp: Option<serde_json::Value>,
    nbf: Option<serde_json::Value>,
}

/// A token whose signature, `exp`/`nbf` and `webhook_url` verified from the `Authorization`
/// header alone ([`Verifier::verify_header`]); what is left is its `body_sha256` claim, checked
/// by [`VerifiedJwt::check_body`] once the body is read.
#[derive(Debug)]
pub struct VerifiedJwt {
    /// The claim, lowercase hex (64 characters).
    body_sha256: String,
}

impl VerifiedJwt {
    /// Compares the signed `body_sha256` with the lowercase hex SHA-256 of the body read, in
    /// constant time (the request path hashes the body once, for this check and the event id).
    pub fn check_body(&self, body_sha256: &str) -> Result<(), AuthError> {
        if bool::from(self.body_sha256.as_bytes().ct_eq(body_sha256.as_bytes())) {
            Ok(())
        } else {
            Err(AuthError::BodyHashMismatch)
        }
    }
}

/// Verifies requests; built once from the configuration, shared by every connection. Holds
/// URL tokens only as digests; `Debug` prints counts, never keys or tokens.
#[derive(Clone)]
pub struct Verifier {
    keys: Vec<RuleKey>,
    webhook_url: Option<String>,
    leeway_secs: f64,
    token_digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("keys", &self.keys.len())
            .field("webhook_url", &self.webhook_url)
            .field("leeway_secs", &self.leeway_secs)
            .field(
                "url_tokens",
                &format_args!("<{} redacted>", self.token_digests.len()),
            )
            .finish()
    }
}

impl Verifier {
    /// `keys` from `GONG_WEBHOOK_SECRETS`, `webhook_url` from `GONG_WEBHOOK_URL` (normalised),
    /// `tokens` from `GONG_WEBHOOK_URL_TOKENS`.
    pub fn new(
        keys: Vec<RuleKey>,
        webhook_url: Option<String>,
        tokens: &[String],
        leeway: Duration,
    ) -> Verifier {
        Verifier {
            keys,
            webhook_url: webhook_url.as_deref().and_then(normalize_url),
            leeway_secs: leeway.as_secs_f64(),
            token_digests: tokens
                .iter()
                .map(|token| Sha256::digest(token.as_bytes()).into())
                .collect(),
        }
    }

    /// Whether JWT mode is configured (at least one key).
    pub fn jwt_enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Whether URL-token mode is configured (at least one token).
    pub fn url_tokens_enabled(&self) -> bool {
        !self.token_digests.is_empty()
    }

    /// Verifies everything a JWT says without the body: RS256 only, the signature with one of
    /// the configured keys, `exp` and `nbf` within the leeway, `webhook_url` equal to the
    /// configured destination, and a well-formed `body_sha256` claim. The signature covers only
    /// the header and the claims, so a forged or stale token is refused here, before a request
    /// slot is taken or a byte of the body is read.
    pub fn verify_header(&self, authorization: &[u8]) -> Result<VerifiedJwt, AuthError> {
        let token = strip_bearer(authorization)?;
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::MalformedToken)?;
        if header.alg != Algorithm::RS256 {
            return Err(AuthError::AlgorithmNotAllowed);
        }
        let claims = self.decode_with_any_key(token)?;

        let Some(serde_json::Value::String(mut claimed_hash)) = claims.body_sha256 else {
            return Err(AuthError::MissingClaim("body_sha256"));
        };
        // Not a hex SHA-256: no body can match it, so there is no point reading one.
        if claimed_hash.len() != 64 || !claimed_hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(AuthError::MissingClaim("body_sha256"));
        }
        claimed_hash.make_ascii_lowercase();

        let Some(serde_json::Value::String(claimed_url)) = claims.webhook_url else {
            return Err(AuthError::MissingClaim("webhook_url"));
        };
        match (&self.webhook_url, normalize_url(&claimed_url)) {
            (Some(expected), Some(claimed)) if *expected == claimed => Ok(VerifiedJwt {
                body_sha256: claimed_hash,
            }),
            _ => Err(AuthError::WebhookUrlMismatch),
        }
    }

    /// Verifies Gong's JWT for `body`: [`Verifier::verify_header`], then
    /// [`VerifiedJwt::check_body`] (the request path does the two steps around reading the body).
    pub fn verify_jwt(&self, authorization: &[u8], body: &[u8]) -> Result<(), AuthError> {
        self.verify_header(authorization)?
            .check_body(&gong_common::event::content_id(body))
    }

    /// Checks the signature with every configured key, then `exp` and `nbf`; returns the claims.
    /// The caller has checked the header's `alg` (RS256).
    fn decode_with_any_key(&self, token: &str) -> Result<Claims, AuthError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::MalformedToken);
        };
        let signature = decode_part(signature)?;
        let message = &token.as_bytes()[..header.len() + 1 + payload.len()];
        if !self
            .keys
            .iter()
            .any(|key| key.verifies(message, &signature))
        {
            return Err(AuthError::BadSignature);
        }
        let claims: Claims = serde_json::from_slice(&decode_part(payload)?)
            .map_err(|_| AuthError::MalformedToken)?;
        let now = chrono::Utc::now().timestamp() as f64;
        let exp = claims
            .exp
            .as_ref()
            .and_then(serde_json::Value::as_f64)
            .ok_or(AuthError::MissingClaim("exp"))?;
        if exp + self.leeway_secs < now {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = &claims.nbf {
            let nbf = nbf.as_f64().ok_or(AuthError::MissingClaim("nbf"))?;
            if nbf - self.leeway_secs > now {
                return Err(AuthError::NotYetValid);
            }
        }
        Ok(claims)
    }

    /// Checks a URL-mode token in constant time against every configured token.
    pub fn verify_url_token(&self, token: &str) -> Result<(), AuthError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = subtle::Choice::from(0u8);
        for known in &self.token_digests {
            found |= known.ct_eq(&digest);
        }
        if bool::from(found) {
            Ok(())
        } else {
            Err(AuthError::UnknownToken)
        }
    }
}

/// Decodes a base64url JWT part (padding tolerated).
fn decode_part(part: &str) -> Result<Vec<u8>, AuthError> {
    URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| AuthError::MalformedToken)
}

fn strip_bearer(authorization: &[u8]) -> Result<&str, AuthError> {
    if authorization.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::TokenTooLarge);
    }
    let text = std::str::from_utf8(authorization)
        .map_err(|_| AuthError::MalformedToken)?
        .trim();
    let token = if text.eq_ignore_ascii_case("bearer") {
        ""
    } else if text.len() >= 7
        && text.is_char_boundary(7)
        && text[..7].eq_ignore_ascii_case("bearer ")
    {
        text[7..].trim_start()
    } else {
        text
    };
    if token.is_empty() {
        return Err(AuthError::MissingAuthorization);
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gong_testkit::webhook::{GongClaims, TestKey};

    const URL: &str = "https://hooks.example.com/webhooks/gong";

    fn verifier() -> Verifier {
        let keys = vec![
            parse_public_key(0, &TestKey::rule_a().public_base64_der()).unwrap(),
            parse_public_key(1, TestKey::rule_b().public_pem()).unwrap(),
        ];
        Verifier::new(
            keys,
            Some(URL.to_string()),
            &["tok-1".to_string(), "tok-2".to_string()],
            Duration::from_secs(30),
        )
    }

    fn unsigned_token(header: &str, claims: &serde_json::Value, signature: &[u8]) -> String {
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            URL_SAFE_NO_PAD.encode(signature)
        )
    }

    #[test]
    fn accepts_both_rotation_keys_with_and_without_bearer() {
        let verifier = verifier();
        let body = b"{\"isTest\":false}";
        let token_a = TestKey::rule_a().sign_webhook(body, URL, 300);
        let token_b = TestKey::rule_b().sign_webhook(body, URL, 300);
        assert_eq!(verifier.verify_jwt(token_a.as_bytes(), body), Ok(()));
        let bearer = format!("Bearer {token_b}");
        assert_eq!(verifier.verify_jwt(bearer.as_bytes(), body), Ok(()));
        let lower = format!("bearer {token_a}");
        assert_eq!(verifier.verify_jwt(lower.as_bytes(), body), Ok(()));
    }

    #[test]
    fn webhook_url_is_normalised() {
        let verifier = verifier();
        let body = b"x";
        for url in [
            "HTTPS://Hooks.Example.com/webhooks/gong/",
            "https://hooks.example.com:443/webhooks/gong",
        ] {
            let token = TestKey::rule_a().sign_webhook(body, url, 300);
            assert_eq!(verifier.verify_jwt(token.as_bytes(), body), Ok(()), "{url}");
        }
        let token =
            TestKey::rule_a().sign_webhook(body, "https://evil.example.com/webhooks/gong", 300);
        assert_eq!(
            verifier.verify_jwt(token.as_bytes(), body),
            Err(AuthError::WebhookUrlMismatch)
        );
        let token = TestKey::rule_a().sign_webhook(body, "https://hooks.example.com/other", 300);
        assert_eq!(
            verifier.verify_jwt(token.as_bytes(), body),
            Err(AuthError::WebhookUrlMismatch)
        );
    }

    #[test]
    fn body_changed_after_signing_fails() {
        let token = TestKey::rule_a().sign_webhook(b"original", URL, 300);
        assert_eq!(
            verifier().verify_jwt(token.as_bytes(), b"tampered"),
            Err(AuthError::BodyHashMismatch)
        );
    }

    #[test]
    fn uppercase_hex_body_hash_is_accepted() {
        let body = b"abc";
        let mut claims = GongClaims::for_body(body, URL, 300);
        claims.body_sha256 = claims.body_sha256.map(|hash| hash.to_uppercase());
        let token = TestKey::rule_a().sign(&claims);
        assert_eq!(verifier().verify_jwt(token.as_bytes(), body), Ok(()));
    }

    #[test]
    fn expired_and_not_yet_valid_fail() {
        let body = b"x";
        let expired = TestKey::rule_a().sign_webhook(body, URL, -3600);
        assert_eq!(
            verifier().verify_jwt(expired.as_bytes(), body),
            Err(AuthError::Expired)
        );
        let mut claims = GongClaims::for_body(body, URL, 300);
        claims.nbf = Some(chrono::Utc::now().timestamp() + 3600);
        let future = TestKey::rule_a().sign(&claims);
        assert_eq!(
            verifier().verify_jwt(future.as_bytes(), body),
            Err(AuthError::NotYetValid)
        );
    }

    #[test]
    fn missing_claims_fail() {
        let body = b"x";
        let mut claims = GongClaims::for_body(body, URL, 300);
        claims.body_sha256 = None;
        let token = TestKey::rule_a().sign(&claims);
        assert_eq!(
            verifier().verify_jwt(token.as_bytes(), body),
            Err(AuthError::MissingClaim("body_sha256"))
        );
        let mut claims = GongClaims::for_body(body, URL, 300);
        claims.webhook_url = None;
        let token = TestKey::rule_a().sign(&claims);
        assert_eq!(
            verifier().verify_jwt(token.as_bytes(), body),
            Err(AuthError::MissingClaim("webhook_url"))
        );
        let mut claims = GongClaims::for_body(body, URL, 300);
        claims.exp = None;
        let token = TestKey::rule_a().sign(&claims);
        assert_eq!(
            verifier().verify_jwt(token.as_bytes(), body),
            Err(AuthError::MissingClaim("exp"))
        );
    }

    #[test]
    fn unknown_key_fails() {
        let body = b"x";
        let verifier = Verifier::new(
            vec![parse_public_key(0, TestKey::rule_b().public_pem()).unwrap()],
            Some(URL.into()),
            &[],
            Duration::from_secs(30),
        );
        let token = TestKey::rule_a().sign_webhook(body, URL, 300);
        assert_eq!(
            verifier.verify_jwt(token.as_bytes(), body),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn alg_none_and_hs256_with_public_key_fail() {
        let body = b"x";
        let claims = serde_json::to_value(GongClaims::for_body(body, URL, 300)).unwrap();
        let none = unsigned_token(r#"{"alg":"none","typ":"JWT"}"#, &claims, b"");
        assert!(matches!(
            verifier().verify_jwt(none.as_bytes(), body),
            Err(AuthError::MalformedToken | AuthError::AlgorithmNotAllowed)
        ));

        // The classic confusion attack: HS256 keyed with the RSA public key's bytes.
        let hs_key =
            jsonwebtoken::EncodingKey::from_secret(TestKey::rule_a().public_pem().as_bytes())
                .unwrap();
        let hs = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &claims,
            &hs_key,
        )
        .unwrap();
        assert_eq!(
            verifier().verify_jwt(hs.as_bytes(), body),
            Err(AuthError::AlgorithmNotAllowed)
        );
        let rs512 = unsigned_token(r#"{"alg":"RS512"}"#, &claims, b"sig");
        assert_eq!(
            verifier().verify_jwt(rs512.as_bytes(), body),
            Err(AuthError::AlgorithmNotAllowed)
        );
    }

    #[test]
    fn key_urls_in_header_are_ignored() {
        // A token naming a key by kid/jku/x5u but signed by an unknown key still fails.
        let body = b"x";
        let claims = GongClaims::for_body(body, URL, 300);
        let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
        header.kid = Some("attacker".into());
        header.jku = Some("https://attacker.example/jwks".into());
        header.x5u = Some("https://attacker.example/cert".into());
        let key =
            jsonwebtoken::EncodingKey::from_rsa_pem(TestKey::snowflake().private_pem().as_bytes())
                .unwrap();
        let token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
        assert_eq!(
            verifier().verify_jwt(token.as_bytes(), body),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn forged_and_stale_tokens_fail_from_the_header_alone() {
        // No body is involved: verify_header must refuse these before the body would be read.
        let body = b"x";
        let cases = [
            (
                TestKey::snowflake().sign_webhook(body, URL, 300),
                AuthError::BadSignature,
            ),
            (
                TestKey::rule_a().sign_webhook(body, URL, -3600),
                AuthError::Expired,
            ),
            (
                TestKey::rule_a().sign_webhook(body, "https://evil.example.com/webhooks/gong", 300),
                AuthError::WebhookUrlMismatch,
            ),
        ];
        for (token, expected) in cases {
            assert_eq!(
                verifier().verify_header(token.as_bytes()).err(),
                Some(expected)
            );
        }
        let claims = serde_json::to_value(GongClaims::for_body(body, URL, 300)).unwrap();
        let none = unsigned_token(r#"{"alg":"none","typ":"JWT"}"#, &claims, b"");
        assert!(verifier().verify_header(none.as_bytes()).is_err());
    }

    #[test]
    fn a_verified_header_still_needs_the_signed_body() {
        let body = b"signed body";
        let token = TestKey::rule_a().sign_webhook(body, URL, 300);
        let verified = verifier().verify_header(token.as_bytes()).unwrap();
        let hash = gong_common::event::content_id(body);
        assert_eq!(verified.check_body(&hash), Ok(()));
        assert_eq!(
            verified.check_body(&gong_common::event::content_id(b"other body")),
            Err(AuthError::BodyHashMismatch)
        );
        assert_eq!(
            verified.check_body(&hash[..63]),
            Err(AuthError::BodyHashMismatch)
        );
    }

    #[test]
    fn a_body_sha256_that_is_no_hash_is_refused_before_the_body() {
        for bad in ["", "abc", &"g".repeat(64), &"a".repeat(65)] {
            let mut claims = GongClaims::for_body(b"x", URL, 300);
            claims.body_sha256 = Some(bad.to_string());
            let token = TestKey::rule_a().sign(&claims);
            assert_eq!(
                verifier().verify_header(token.as_bytes()).err(),
                Some(AuthError::MissingClaim("body_sha256")),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn garbage_and_oversized_fail() {
        let verifier = verifier();
        assert_eq!(
            verifier.verify_jwt(b"garbage", b"x"),
            Err(AuthError::MalformedToken)
        );
        assert_eq!(
            verifier.verify_jwt(b"Bearer ", b"x"),
            Err(AuthError::MissingAuthorization)
        );
        assert_eq!(
            verifier.verify_jwt(&vec![b'a'; MAX_TOKEN_BYTES + 1], b"x"),
            Err(AuthError::TokenTooLarge)
        );
        assert_eq!(
            verifier.verify_jwt(&[0xff, 0xfe, b'.'], b"x"),
            Err(AuthError::MalformedToken)
        );
    }

    #[test]
    fn url_tokens_compare_exactly() {
        let verifier = verifier();
        assert_eq!(verifier.verify_url_token("tok-1"), Ok(()));
        assert_eq!(verifier.verify_url_token("tok-2"), Ok(()));
        assert_eq!(
            verifier.verify_url_token("tok-"),
            Err(AuthError::UnknownToken)
        );
        assert_eq!(
            verifier.verify_url_token("tok-10"),
            Err(AuthError::UnknownToken)
        );
        assert_eq!(verifier.verify_url_token(""), Err(AuthError::UnknownToken));
    }

    #[test]
    fn keys_parse_from_pem_and_bare_base64_and_bad_keys_are_named() {
        let mixed = format!(
            "{}\n{},{}",
            TestKey::rule_a().public_pem(),
            TestKey::rule_b().public_base64_der(),
            TestKey::rule_a().public_base64_der()
        );
        let keys = split_keys(&mixed);
        assert_eq!(keys.len(), 3, "{keys:?}");
        for (index, key) in keys.iter().enumerate() {
            parse_public_key(index, key).unwrap();
        }
        let err = parse_public_key(4, "not a key!").err().unwrap();
        assert_eq!(err.index, 4);
        // PKCS#1 "RSA PUBLIC KEY" PEM of rule A verifies rule A's tokens.
        let pkcs1 =
            parse_public_key(0, include_str!("../../testkit/keys/rule_a.pkcs1.pub.pem")).unwrap();
        let verifier = Verifier::new(vec![pkcs1], Some(URL.into()), &[], Duration::from_secs(30));
        let token = TestKey::rule_a().sign_webhook(b"x", URL, 300);
        assert_eq!(verifier.verify_jwt(token.as_bytes(), b"x"), Ok(()));
    }
}
