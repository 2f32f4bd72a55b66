//! Gong-shaped webhook bodies and RS256 signatures made exactly as Gong makes them.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use sha2::Digest;

/// A rule's RSA key pair (fixed test keys checked in under `crates/testkit/keys`).
pub struct TestKey {
    private_pem: &'static str,
    public_pem: &'static str,
}

impl TestKey {
    /// The first rule key.
    pub fn rule_a() -> TestKey {
        TestKey {
            private_pem: include_str!("../keys/rule_a.key.pem"),
            public_pem: include_str!("../keys/rule_a.pub.pem"),
        }
    }

    /// A second rule key (rotation partner of [`TestKey::rule_a`]).
    pub fn rule_b() -> TestKey {
        TestKey {
            private_pem: include_str!("../keys/rule_b.key.pem"),
            public_pem: include_str!("../keys/rule_b.pub.pem"),
        }
    }

    /// A key pair used as a Snowflake user key in tests.
    pub fn snowflake() -> TestKey {
        TestKey {
            private_pem: include_str!("../keys/snowflake.key.pem"),
            public_pem: include_str!("../keys/snowflake.pub.pem"),
        }
    }

    /// PKCS#8 PEM of the private key.
    pub fn private_pem(&self) -> &'static str {
        self.private_pem
    }

    /// PEM of the public key (SubjectPublicKeyInfo).
    pub fn public_pem(&self) -> &'static str {
        self.public_pem
    }

    /// The public key as Gong shows it in the rule editor: bare base64 of the SPKI DER.
    pub fn public_base64_der(&self) -> String {
        self.public_pem
            .lines()
            .filter(|line| !line.starts_with("-----"))
            .collect::<String>()
    }

    /// Signs `claims` with RS256.
    pub fn sign<C: Serialize>(&self, claims: &C) -> String {
        let key = EncodingKey::from_rsa_pem(self.private_pem.as_bytes()).expect("test key parses");
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), claims, &key).expect("sign")
    }

    /// The `Authorization` value Gong sends for `body` posted to a rule whose destination is
    /// `webhook_url`, valid for `ttl_secs`.
    pub fn sign_webhook(&self, body: &[u8], webhook_url: &str, ttl_secs: i64) -> String {
        self.sign(&GongClaims::for_body(body, webhook_url, ttl_secs))
    }
}

/// The claims of Gong's webhook JWT.
#[derive(Debug, Clone, Serialize)]
pub struct GongClaims {
    /// Lowercase hex SHA-256 of the body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_sha256: Option<String>,
    /// The rule's destination URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// Expiry, seconds since the epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    /// Issued at.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    /// Not before (Gong does not send it; hostile tests do).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
}

impl GongClaims {
    /// Claims for `body` to `webhook_url`, expiring in `ttl_secs`.
    pub fn for_body(body: &[u8], webhook_url: &str, ttl_secs: i64) -> GongClaims {
        let now = chrono::Utc::now().timestamp();
        GongClaims {
            body_sha256: Some(sha256_hex(body)),
            webhook_url: Some(webhook_url.to_string()),
            exp: Some(now + ttl_secs),
            iat: Some(now),
            nbf: None,
        }
    }
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A realistic webhook body for `call_id` (Gong's field names and value shapes).
pub fn call_body(call_id: &str, is_test: bool) -> Vec<u8> {
    let body = serde_json::json!({
        "isTest": is_test,
        "callData": {
            "metaData": {
                "id": call_id,
                "url": format!("https://app.gong.io/call?id={call_id}"),
                "title": format!("Discovery call {call_id}"),
                "scheduled": "2024-05-02T16:00:00-07:00",
                "started": "2024-05-02T16:01:02.123456-07:00",
                "duration": 1834,
                "primaryUserId": "234599484848423",
                "direction": "Conference",
                "system": "Zoom",
                "scope": "External",
                "media": "Video",
                "language": "eng",
                "workspaceId": "623457276584334",
                "isPrivate": false,
                "meetingUrl": "https://zoom.us/j/123"
            },
            "context": [],
            "parties": [
                {"id": "56825452554556", "name": "Ada Lovelace", "emailAddress": "ada@example.com",
                 "speakerId": "6432345678555530067", "userId": "234599484848423", "affiliation": "Internal"}
            ]
        }
    });
    serde_json::to_vec(&body).expect("serialise body")
}
