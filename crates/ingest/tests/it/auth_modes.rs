//! Accepted and refused webhooks, and what ends up in the streams.

use base64::Engine;
use gong_common::names::{self, headers};
use gong_testkit::webhook::{call_body, GongClaims, TestKey};

use crate::support::{json, raw_stream, Harness, URL_TOKEN, WEBHOOK_URL};

#[tokio::test]
async fn signed_webhooks_are_stored_byte_identical_with_both_rotation_keys() {
    let harness = Harness::start().await;
    let mut sent = Vec::new();
    for (index, key) in [TestKey::rule_a(), TestKey::rule_b()].iter().enumerate() {
        // Odd spacing and key order: the stored bytes must be exactly these, not re-serialised.
        let body = format!(
            "{{ \"isTest\" : false,\n \"callData\": {{\"metaData\": {{\"id\": \"90000000000000000{index}\", \"z\":1}}}} }}"
        )
        .into_bytes();
        let (status, answer) = json(harness.post_signed(&body, key).await).await;
        assert_eq!(status, 202, "{answer}");
        assert_eq!(answer["duplicate"], false);
        assert_eq!(answer["event_id"], gong_testkit::webhook::sha256_hex(&body));
        sent.push((body, answer["stream_seq"].as_u64().unwrap()));
    }
    let stored = harness.messages(raw_stream()).await;
    assert_eq!(stored.len(), 2);
    for (index, ((body, seq), message)) in sent.iter().zip(&stored).enumerate() {
        assert_eq!(message.payload.as_ref(), body.as_slice());
        assert_eq!(message.sequence, *seq);
        assert_eq!(message.subject.as_str(), names::SUBJECT_RAW_CALL);
        let event_id = message.headers.get(headers::EVENT_ID).unwrap().as_str();
        assert_eq!(event_id, gong_testkit::webhook::sha256_hex(body));
        assert_eq!(
            message.headers.get(headers::AUTH_MODE).unwrap().as_str(),
            "jwt"
        );
        let received_at = message.headers.get(headers::RECEIVED_AT).unwrap().as_str();
        assert!(
            chrono::DateTime::parse_from_rfc3339(received_at).is_ok(),
            "{received_at}"
        );
        assert_eq!(
            message.headers.get(headers::CALL_ID).unwrap().as_str(),
            format!("90000000000000000{index}")
        );
    }
}

#[tokio::test]
async fn exact_repeat_is_acknowledged_and_stored_once() {
    let harness = Harness::start().await;
    let body = call_body("1111", false);
    let (first_status, first) = json(harness.post_signed(&body, &TestKey::rule_a()).await).await;
    let (second_status, second) = json(harness.post_signed(&body, &TestKey::rule_b()).await).await;
    assert_eq!((first_status, second_status), (202, 202));
    assert_eq!(first["duplicate"], false);
    assert_eq!(second["duplicate"], true);
    assert_eq!(first["event_id"], second["event_id"]);
    assert_eq!(first["stream_seq"], second["stream_seq"]);
    assert_eq!(harness.count(raw_stream()).await, 1);
}

#[tokio::test]
async fn test_deliveries_go_to_the_test_subject() {
    let harness = Harness::start().await;
    let body = call_body("2222", true);
    let (status, _) = json(harness.post_signed(&body, &TestKey::rule_a()).await).await;
    assert_eq!(status, 202);
    let stored = harness.messages(raw_stream()).await;
    assert_eq!(stored[0].subject.as_str(), names::SUBJECT_RAW_TEST);
}

#[tokio::test]
async fn url_token_mode_accepts_known_tokens_only() {
    let harness = Harness::start().await;
    let body = call_body("3333", false);
    let ok = harness
        .http
        .post(harness.url(&format!("/webhooks/gong/{URL_TOKEN}")))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    let (status, answer) = json(ok).await;
    assert_eq!(status, 202, "{answer}");
    let wrong = harness
        .http
        .post(harness.url("/webhooks/gong/tok_0123456789abcdef0124"))
        .body(call_body("3334", false))
        .send()
        .await
        .unwrap();
    let (status, answer) = json(wrong).await;
    assert_eq!(status, 401);
    assert!(!answer.to_string().contains("tok_"), "{answer}");
    let stored = harness.messages(raw_stream()).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].payload.as_ref(), body.as_slice());
    assert_eq!(
        stored[0].headers.get(headers::AUTH_MODE).unwrap().as_str(),
        "url_token"
    );
}

#[tokio::test]
async fn authentic_but_unparseable_bodies_are_dead_lettered_not_dropped() {
    let harness = Harness::start().await;
    for body in [
        &b"this is not json"[..],
        br#"{"isTest":false,"callData":{}}"#,
    ] {
        let (status, answer) = json(harness.post_signed(body, &TestKey::rule_a()).await).await;
        assert_eq!(status, 202, "{answer}");
        assert_eq!(answer["dead_lettered"], true);
    }
    assert_eq!(harness.count(raw_stream()).await, 0);
    let dead = harness.messages(names::STREAM_DLQ).await;
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0].payload.as_ref(), b"this is not json");
    assert_eq!(dead[0].subject.as_str(), "gong.dlq.ingest");
    assert_eq!(
        dead[0].headers.get(headers::DLQ_REASON).unwrap().as_str(),
        "unparseable_webhook"
    );
    assert!(dead[1]
        .headers
        .get(headers::DLQ_DETAIL)
        .unwrap()
        .as_str()
        .contains("metaData.id"));
}

fn forged(header: &str, claims: &serde_json::Value, signature: &[u8]) -> String {
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.{}",
        engine.encode(header),
        engine.encode(claims.to_string()),
        engine.encode(signature)
    )
}

#[tokio::test]
async fn hostile_requests_get_4xx_with_a_json_reason_and_store_nothing() {
    let harness = Harness::start().await;
    let body = call_body("4444", false);
    let key = TestKey::rule_a();
    let claims = serde_json::to_value(GongClaims::for_body(&body, WEBHOOK_URL, 300)).unwrap();
    let hs256 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(key.public_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    let mut no_hash = GongClaims::for_body(&body, WEBHOOK_URL, 300);
    no_hash.body_sha256 = None;
    let cases: Vec<(&str, Option<String>, Vec<u8>, u16)> = vec![
        ("no header", None, body.clone(), 401),
        ("garbage", Some("Bearer garbage".into()), body.clone(), 401),
        (
            "alg none",
            Some(forged(r#"{"alg":"none"}"#, &claims, b"")),
            body.clone(),
            401,
        ),
        ("hs256 with public key", Some(hs256), body.clone(), 401),
        (
            "expired",
            Some(key.sign_webhook(&body, WEBHOOK_URL, -3600)),
            body.clone(),
            401,
        ),
        (
            "unknown key",
            Some(TestKey::snowflake().sign_webhook(&body, WEBHOOK_URL, 300)),
            body.clone(),
            401,
        ),
        (
            "other webhook_url",
            Some(key.sign_webhook(&body, "https://elsewhere.example.com/webhooks/gong", 300)),
            body.clone(),
            401,
        ),
        (
            "body changed after signing",
            Some(key.sign_webhook(&body, WEBHOOK_URL, 300)),
            call_body("4445", false),
            401,
        ),
        (
            "no body_sha256",
            Some(key.sign(&no_hash)),
            body.clone(),
            401,
        ),
        (
            "oversized",
            Some(key.sign_webhook(&vec![b' '; 70_000], WEBHOOK_URL, 300)),
            vec![b' '; 70_000],
            413,
        ),
        ("huge token", Some("a".repeat(20_000)), body.clone(), 401),
    ];
    for (name, authorization, request_body, expected) in cases {
        let mut request = harness
            .http
            .post(harness.url("/webhooks/gong"))
            .body(request_body);
        if let Some(value) = &authorization {
            request = request.header("authorization", value);
        }
        let (status, answer) = json(request.send().await.unwrap()).await;
        assert_eq!(status, expected, "case {name}: {answer}");
        assert!(
            answer["error"].is_string() && answer["reason"].is_string(),
            "case {name}: {answer}"
        );
        if let Some(value) = &authorization {
            let token = value.trim_start_matches("Bearer ");
            assert!(
                !answer.to_string().contains(token),
                "case {name} echoed the token"
            );
        }
    }
    // Two Authorization headers.
    let token = key.sign_webhook(&body, WEBHOOK_URL, 300);
    let response = harness
        .http
        .post(harness.url("/webhooks/gong"))
        .header("authorization", token.clone())
        .header("authorization", token)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    // Wrong method and unknown path.
    let get = harness
        .http
        .get(harness.url("/webhooks/gong"))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status().as_u16(), 405);
    let (status, _) = json(
        harness
            .http
            .post(harness.url("/nope"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(harness.count(raw_stream()).await, 0);
    assert_eq!(harness.count(names::STREAM_DLQ).await, 0);
}

#[tokio::test]
async fn metrics_show_ingest_counters() {
    let harness = Harness::start().await;
    let body = call_body("5555", false);
    assert_eq!(
        harness
            .post_signed(&body, &TestKey::rule_a())
            .await
            .status()
            .as_u16(),
        202
    );
    let metrics = harness
        .http
        .get(format!("http://{}/metrics", harness.ingest.admin_addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Names are registered at start with zero values, so check the values moved. The recorder
    // is process-wide (other tests count too): at least this request.
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no series {series} in\n{metrics}"))
    };
    assert!(
        value("gong_ingest_requests_total{outcome=\"accepted\"}") >= 1.0,
        "{metrics}"
    );
    assert!(
        value("gong_ingest_publish_duration_seconds_count") >= 1.0,
        "{metrics}"
    );
    assert!(value("gong_ingest_body_bytes_count") >= 1.0, "{metrics}");
    let ready = harness
        .http
        .get(format!("http://{}/readyz", harness.ingest.admin_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 200);
}
