//! Snowflake: the checked-in setup SQL, and Snowpipe notifications with key-pair JWTs.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use sha2::Digest;

use gong_load::snowflake::{setup_sql, JwtClaims};
use gong_testkit::wait_until;
use gong_testkit::webhook::TestKey;

use crate::support::{publish_events, wait_calls_rows, Harness};

#[test]
fn checked_in_setup_sql_equals_the_generated_sql() {
    let checked_in = include_str!("../../../../deploy/snowflake/setup.sql");
    assert!(
        checked_in == setup_sql(),
        "deploy/snowflake/setup.sql is stale: regenerate it with `cargo run -p gong-load -- snowflake-sql > deploy/snowflake/setup.sql`"
    );
}

#[derive(Debug, Clone)]
struct Seen {
    path: String,
    token_type: String,
    claims: Result<JwtClaims, String>,
    body: serde_json::Value,
}

async fn snowpipe_double(public_pem: &'static str) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                break;
            };
            let record = record.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                        let record = record.clone();
                        async move {
                            let path = request.uri().path().to_string();
                            let token_type = request
                                .headers()
                                .get("x-snowflake-authorization-token-type")
                                .and_then(|value| value.to_str().ok())
                                .unwrap_or_default()
                                .to_string();
                            let token = request
                                .headers()
                                .get("authorization")
                                .and_then(|value| value.to_str().ok())
                                .unwrap_or_default()
                                .trim_start_matches("Bearer ")
                                .to_string();
                            let key =
                                jsonwebtoken::DecodingKey::from_rsa_pem(public_pem.as_bytes())
                                    .unwrap();
                            let mut validation =
                                jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
                            validation.required_spec_claims = ["exp", "iss", "sub"]
                                .iter()
                                .map(|s| s.to_string())
                                .collect();
                            let claims =
                                jsonwebtoken::decode::<JwtClaims>(&token, &key, &validation)
                                    .map(|data| data.claims)
                                    .map_err(|err| err.to_string());
                            let body = request.into_body().collect().await.unwrap().to_bytes();
                            let body =
                                serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                            record.lock().unwrap().push(Seen {
                                path,
                                token_type,
                                claims,
                                body,
                            });
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                                br#"{"responseCode":"SUCCESS"}"#,
                            ))))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), seen)
}

/// The fingerprint computed independently from the public key file.
fn expected_fingerprint(public_pem: &str) -> String {
    let der = base64::engine::general_purpose::STANDARD
        .decode(TestKey::snowflake().public_base64_der())
        .unwrap();
    assert!(public_pem.contains("PUBLIC KEY"));
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(der))
    )
}

#[tokio::test]
async fn snowpipe_is_notified_with_a_valid_key_pair_jwt() {
    let key = TestKey::snowflake();
    let (base_url, seen) = snowpipe_double(key.public_pem()).await;
    let mut harness = Harness::new().await;
    let key_path = harness.root.path().join("snowflake.p8");
    std::fs::write(&key_path, key.private_pem()).unwrap();
    let key_path = key_path.display().to_string();
    harness
        .start_loader(&[
            ("SNOWFLAKE_ACCOUNT", "xy12345.us-east-1"),
            ("SNOWFLAKE_USER", "loader"),
            ("SNOWFLAKE_PRIVATE_KEY_PATH", &key_path),
            ("SNOWFLAKE_PIPE", "DB.RAW.GONG_{TABLE}_PIPE"),
            ("SNOWFLAKE_PIPE_URL", &base_url),
        ])
        .await;
    publish_events(&harness.jetstream, 1, 2).await;
    wait_calls_rows(&harness.stage_dir(), 2).await;
    harness.wait_all_acked().await;
    // One file per table the range has rows in.
    let tables = crate::support::call_tables().len();
    let requests = wait_until(
        Duration::from_secs(30),
        "an insertFiles call per file",
        || {
            let seen = seen.clone();
            async move {
                let seen = seen.lock().unwrap().clone();
                (seen.len() >= tables).then_some(seen)
            }
        },
    )
    .await;
    let files = crate::support::read_stage(&harness.stage_dir());
    let fingerprint = expected_fingerprint(key.public_pem());
    for request in &requests {
        let claims = request
            .claims
            .clone()
            .expect("jwt verifies with the public key");
        assert_eq!(claims.sub, "XY12345.LOADER");
        assert_eq!(claims.iss, format!("XY12345.LOADER.{fingerprint}"));
        assert!(
            claims.exp > claims.iat && claims.exp - claims.iat <= 3600,
            "{claims:?}"
        );
        assert_eq!(request.token_type, "KEYPAIR_JWT");
        assert!(
            request.path.starts_with("/v1/data/pipes/DB.RAW.GONG_"),
            "{}",
            request.path
        );
        assert!(
            request.path.ends_with("_PIPE/insertFiles"),
            "{}",
            request.path
        );
        let path = request.body["files"][0]["path"].as_str().unwrap();
        assert!(
            files.contains_key(path),
            "{path} not staged: {:?}",
            files.keys()
        );
        let table = path.split('/').next().unwrap().to_ascii_uppercase();
        assert_eq!(
            request.path,
            format!("/v1/data/pipes/DB.RAW.GONG_{table}_PIPE/insertFiles")
        );
    }
    harness.stop_loader().await;
}
