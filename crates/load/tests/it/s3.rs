//! An S3 stage (moto's server): files land under the prefix and read back.

use std::sync::Arc;

use futures::TryStreamExt;
use gong_testkit::s3::MotoServer;
use gong_testkit::wait_until;
use object_store::aws::AmazonS3Builder;
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

    let store: Arc<dyn ObjectStore> = Arc::new(
        AmazonS3Builder::new()
            .with_bucket_name("gong-stage")
            .with_endpoint(moto.endpoint())
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .with_region(gong_testkit::s3::REGION)
            .with_access_key_id(gong_testkit::s3::ACCESS_KEY)
            .with_secret_access_key(gong_testkit::s3::SECRET_KEY)
            .build()
            .unwrap(),
    );
    let listing = wait_until(
        std::time::Duration::from_secs(60),
        "six objects on S3",
        || {
            let store = store.clone();
            async move {
                let prefix = Path::from("pipeline/v1");
                let objects: Vec<_> = store.list(Some(&prefix)).try_collect().await.ok()?;
                (objects.len() >= 6).then_some(objects)
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
