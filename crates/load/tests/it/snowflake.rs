//! Snowflake: the checked-in setup SQL, and Snowpipe notifications with key-pair JWTs.

use std::time::Duration;

use base64::Engine;
use sha2::Digest;

use gong_load::snowflake::setup_sql;
use gong_testkit::snowpipe_double::SnowpipeDouble;
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
    let double = SnowpipeDouble::start("xy12345.us-east-1", "loader", key.public_pem()).await;
    let base_url = double.url();
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
        || async {
            let seen: Vec<_> = double
                .requests()
                .into_iter()
                .filter(|request| request.endpoint == "insertFiles")
                .collect();
            (seen.len() >= tables).then_some(seen)
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
        assert_eq!(request.status, 200);
        let path = request.body["files"][0]["path"].as_str().unwrap();
        assert!(
            files.contains_key(path),
            "{path} not staged: {:?}",
            files.keys()
        );
        let table = path.split('/').next().unwrap().to_ascii_uppercase();
        assert_eq!(request.pipe, format!("DB.RAW.GONG_{table}_PIPE"));
        assert!(
            request.query.contains_key("requestId"),
            "{:?}",
            request.query
        );
    }
    harness.stop_loader().await;
}
