//! An S3 stage (moto's server): files land under the prefix and read back.

use std::sync::Arc;

use futures::TryStreamExt;
use gong_testkit::s3::MotoServer;
use gong_testkit::wait_until;
use object_store::path::Path;
use object_store::ObjectStore;

use crate::support::{publish_events, read_parquet, Harness};

#[tokio::test]
async fn s3_stage_receives_complete_files() {
    let moto = MotoServer::start();
    moto.create_bucket("gong-stage");
    let mut harness = Harness::new().await;
    let mut vars: Vec<(String, String)> = moto.env();
    vars.push(("STAGE_URL".into(), "s3://gong-stage/pipeline/v1".into()));
    let extra: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    harness.start_loader(&extra).await;
    publish_events(&harness.jetstream, 1, 3).await;

    let store: Arc<dyn ObjectStore> = Arc::new(moto.store("gong-stage"));
    let listing = wait_until(
        std::time::Duration::from_secs(60),
        "one object per table with rows on S3",
        || {
            let store = store.clone();
            async move {
                let prefix = Path::from("pipeline/v1");
                let objects: Vec<_> = store.list(Some(&prefix)).try_collect().await.ok()?;
                (objects.len() >= crate::support::call_tables().len()).then_some(objects)
            }
        },
    )
    .await;
    let calls = listing
        .iter()
        .find(|meta| {
            meta.location
                .as_ref()
                .starts_with("pipeline/v1/calls/dt=2024-03-04/gong_")
        })
        .unwrap_or_else(|| {
            panic!(
                "no calls file in {listing:?}; moto log {}",
                moto.log_path().display()
            )
        });
    let bytes = store
        .get_opts(&calls.location, Default::default())
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(read_parquet(&bytes).rows, 3);
    harness.wait_all_acked().await;
    harness.stop_loader().await;
}

/// An event whose transcript carries `bytes` of text that does not compress (so a few dozen
/// events make a file of tens of MiB).
fn bulky_event(index: u64, bytes: usize) -> Vec<u8> {
    let mut state = index.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let text: String = (0..bytes)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            alphabet[(state % 64) as usize] as char
        })
        .collect();
    let mut event: serde_json::Value =
        serde_json::from_slice(&crate::support::event_json(index)).unwrap();
    event["transcript"][0]["sentences"][0]["text"] = serde_json::Value::String(text);
    serde_json::to_vec(&event).unwrap()
}

/// A file larger than two upload parts (10 MiB each) goes up as a multipart upload of several
/// parts, and what lands on S3 is the whole file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_over_two_parts_is_uploaded_in_parts_and_reads_back_whole() {
    let moto = MotoServer::start();
    moto.create_bucket("gong-stage");
    let mut harness = Harness::new().await;
    let events = 36u64;
    for index in 1..=events {
        crate::support::publish(
            &harness.jetstream,
            &format!("ev-{index}"),
            bulky_event(index, 900 * 1024),
        )
        .await;
    }
    let mut vars: Vec<(String, String)> = moto.env();
    vars.push(("STAGE_URL".into(), "s3://gong-stage/big".into()));
    vars.push(("LOAD_FLUSH_MAX_ROWS".into(), events.to_string()));
    vars.push(("LOAD_FLUSH_MAX_AGE".into(), "30s".into()));
    vars.push(("LOAD_ACK_WAIT".into(), "60s".into()));
    let extra: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    harness.start_loader(&extra).await;
    harness.wait_all_acked().await;
    harness.stop_loader().await;

    let store = moto.store("gong-stage");
    let prefix = Path::from("big/call_transcript_sentences");
    let objects: Vec<_> = store.list(Some(&prefix)).try_collect().await.unwrap();
    assert_eq!(objects.len(), 1, "{objects:?}");
    assert!(
        objects[0].size > 20 * 1024 * 1024,
        "the file must span more than two 10 MiB parts: {} bytes",
        objects[0].size
    );
    let log = std::fs::read_to_string(moto.log_path()).unwrap_or_default();
    assert!(
        log.contains("partNumber=2") && log.contains("partNumber=3"),
        "no multipart upload of 3+ parts in moto's log {}",
        moto.log_path().display()
    );
    let bytes = store
        .get_opts(&objects[0].location, Default::default())
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(bytes.len() as u64, objects[0].size);
    let content = read_parquet(&bytes);
    // Three sentences per event; every one read back from the assembled parts.
    assert_eq!(content.rows, 3 * events as usize);
}
