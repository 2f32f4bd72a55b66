use bytes::Bytes;
use gong_common::dlq::{self, DeadLetter};
use gong_common::names::{self, headers, Stage};
use gong_common::streams::{ensure_streams, StreamKind, StreamSettings};
use gong_testkit::NatsServer;

async fn letter(
    jetstream: &async_nats::jetstream::Context,
    stage: Stage,
    seq: u64,
    payload: &'static [u8],
) {
    let subject = match stage {
        Stage::Load => names::SUBJECT_ENRICHED_CALL,
        _ => names::SUBJECT_RAW_CALL,
    };
    let mut original = async_nats::HeaderMap::new();
    original.insert(headers::CALL_ID, "123");
    original.insert("Nats-Msg-Id", "original-id");
    dlq::publish(
        jetstream,
        DeadLetter {
            stage,
            reason: "call_not_found",
            detail: "gong has no call 123",
            original_subject: subject,
            original_seq: seq,
            original_headers: Some(&original),
            payload: Bytes::from_static(payload),
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn list_show_redrive_and_purge() {
    let nats = NatsServer::start_new();
    let jetstream = nats.jetstream().await;
    ensure_streams(&jetstream, &StreamSettings::default(), &StreamKind::ALL)
        .await
        .unwrap();
    letter(&jetstream, Stage::Enrich, 7, b"{\"raw\":1}").await;
    letter(&jetstream, Stage::Enrich, 7, b"{\"raw\":1}").await; // same message twice: stored once
    letter(&jetstream, Stage::Load, 9, b"{\"enriched\":1}").await;

    let entries = dlq::list(&jetstream, None, 100).await.unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].stage, "enrich");
    assert_eq!(entries[0].reason, "call_not_found");
    assert_eq!(entries[0].call_id, "123");
    assert_eq!(
        dlq::list(&jetstream, Some(Stage::Load), 100)
            .await
            .unwrap()
            .len(),
        1
    );

    let shown = dlq::show(&jetstream, entries[0].seq).await.unwrap();
    assert_eq!(shown.payload.as_ref(), b"{\"raw\":1}");
    assert_eq!(
        shown
            .headers
            .get(headers::DLQ_ORIGINAL_SEQ)
            .unwrap()
            .as_str(),
        "7"
    );

    let new_seq = dlq::redrive(&jetstream, entries[0].seq).await.unwrap();
    let raw = jetstream.get_stream(names::STREAM_RAW).await.unwrap();
    let redriven = raw.get_raw_message(new_seq).await.unwrap();
    assert_eq!(redriven.subject.as_str(), names::SUBJECT_RAW_CALL);
    assert_eq!(redriven.payload.as_ref(), b"{\"raw\":1}");
    assert!(redriven.headers.get(headers::DLQ_REASON).is_none());
    assert_eq!(
        redriven.headers.get(headers::CALL_ID).unwrap().as_str(),
        "123"
    );
    assert_eq!(dlq::list(&jetstream, None, 100).await.unwrap().len(), 1);

    assert!(matches!(
        dlq::show(&jetstream, 999).await,
        Err(dlq::ToolError::NotFound(999))
    ));
    assert_eq!(
        dlq::purge(&jetstream, None, Some(Stage::Load))
            .await
            .unwrap(),
        1
    );
    assert!(dlq::list(&jetstream, None, 100).await.unwrap().is_empty());
}
