//! Live loading: files read back, flush policy, poison, metrics.

use arrow::datatypes::{DataType, TimeUnit};
use gong_common::names::{self, headers};
use gong_load::schema::{Table, META_SCHEMA_VERSION, SCHEMA_VERSION};
use gong_load::stage::parse_file_name;

use crate::support::{
    assert_no_nulls, call_event_ids, publish, publish_events, read_stage, rows_per_table,
    wait_calls_rows, Harness, ROWS_PER_EVENT,
};

#[tokio::test]
async fn files_read_back_match_the_events_and_the_schema() {
    let mut harness = Harness::new().await;
    publish_events(&harness.jetstream, 1, 12).await;
    harness.start_loader(&[("LOAD_FLUSH_MAX_ROWS", "5")]).await;
    wait_calls_rows(&harness.stage_dir(), 12).await;
    harness.wait_all_acked().await;
    let files = read_stage(&harness.stage_dir());

    // Every table's rows equal the events' rows.
    let per_table = rows_per_table(&files);
    for table in Table::ALL {
        assert_eq!(
            per_table.get(table.name()).copied().unwrap_or(0),
            12 * ROWS_PER_EVENT[table.index()],
            "table {} in {:?}",
            table.name(),
            files.keys().collect::<Vec<_>>()
        );
    }
    // Ranges: two by rows, the rest by age; contiguous from 1 to 12, same names per table.
    let mut ranges: Vec<(u64, u64)> = files
        .keys()
        .filter(|path| path.starts_with("calls/"))
        .map(|path| {
            assert!(path.starts_with("calls/dt=2024-03-04/"), "{path}");
            parse_file_name(path.rsplit('/').next().unwrap()).expect("range name")
        })
        .collect();
    ranges.sort();
    assert_eq!(ranges.first().unwrap().0, 1);
    assert_eq!(ranges.last().unwrap().1, 12);
    for pair in ranges.windows(2) {
        assert_eq!(
            pair[0].1 + 1,
            pair[1].0,
            "ranges {ranges:?} are not contiguous"
        );
    }
    assert_eq!(&ranges[..2], &[(1, 5), (6, 10)]);
    for table in Table::ALL {
        let count = files
            .keys()
            .filter(|path| path.starts_with(&format!("{}/", table.name())))
            .count();
        assert_eq!(
            count,
            ranges.len(),
            "one file per range for {}",
            table.name()
        );
    }
    // No event twice.
    let mut ids = call_event_ids(&files);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 12);

    // Schema as documented.
    let (_, calls) = files
        .iter()
        .find(|(path, _)| path.starts_with("calls/"))
        .unwrap();
    assert_eq!(
        calls.metadata.get(META_SCHEMA_VERSION),
        Some(&SCHEMA_VERSION.to_string())
    );
    let batch = &calls.batches[0];
    let schema = batch.schema();
    assert_eq!(
        schema.field_with_name("call_id").unwrap().data_type(),
        &DataType::Utf8
    );
    assert_eq!(
        schema.field_with_name("started").unwrap().data_type(),
        &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
    );
    assert_eq!(
        schema.field_with_name("is_private").unwrap().data_type(),
        &DataType::Boolean
    );
    assert_no_nulls(batch, "started");
    assert_no_nulls(batch, "call_id");
    let extra = batch
        .column_by_name("extra_json")
        .unwrap()
        .as_any()
        .downcast_ref::<arrow::array::StringArray>()
        .unwrap()
        .value(0)
        .to_string();
    assert!(extra.contains("brandNewField"), "{extra}");

    // Metrics.
    let metrics = reqwest::get(format!("http://{}/metrics", harness.admin_addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "gong_load_rows_total",
        "gong_load_files_total",
        "gong_load_bytes_total",
        "gong_load_flushes_total{reason=\"rows\"}",
        "gong_load_file_size_bytes_bucket",
        "gong_load_event_to_staged_seconds_bucket",
        "gong_load_last_flush_timestamp_seconds",
        "gong_load_consumer_pending",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
    harness.stop_loader().await;
}

#[tokio::test]
async fn age_flush_fires_without_new_traffic() {
    let mut harness = Harness::new().await;
    harness
        .start_loader(&[("LOAD_FLUSH_MAX_ROWS", "1000")])
        .await;
    publish_events(&harness.jetstream, 1, 3).await;
    // Nothing else is published: only the timer can flush these three.
    wait_calls_rows(&harness.stage_dir(), 3).await;
    harness.wait_all_acked().await;
    let files = read_stage(&harness.stage_dir());
    assert_eq!(rows_per_table(&files).len(), Table::ALL.len());
    let names: Vec<&String> = files
        .keys()
        .filter(|path| path.starts_with("calls/"))
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].ends_with("gong_00000000000000000001-00000000000000000003.parquet"));
    harness.wait_all_acked().await;
    harness.stop_loader().await;
}

#[tokio::test]
async fn poison_is_dead_lettered_and_the_rest_is_staged() {
    let mut harness = Harness::new().await;
    harness.start_loader(&[]).await;
    publish(&harness.jetstream, "bad-1", b"not json at all".to_vec()).await;
    let mut newer: serde_json::Value =
        serde_json::from_slice(&crate::support::event_json(2)).unwrap();
    newer["schema_version"] = 99.into();
    publish(&harness.jetstream, "bad-2", newer.to_string().into_bytes()).await;
    publish_events(&harness.jetstream, 3, 4).await;
    wait_calls_rows(&harness.stage_dir(), 2).await;
    harness.wait_all_acked().await;
    let files = read_stage(&harness.stage_dir());
    let mut ids = call_event_ids(&files);
    ids.sort();
    assert_eq!(ids, vec!["ev-3", "ev-4"]);

    let mut dlq = harness
        .jetstream
        .get_stream(names::STREAM_DLQ)
        .await
        .unwrap();
    assert_eq!(dlq.info().await.unwrap().state.messages, 2);
    let first = dlq.get_raw_message(1).await.unwrap();
    assert_eq!(first.subject.as_str(), "gong.dlq.load");
    assert_eq!(first.payload.as_ref(), b"not json at all");
    assert_eq!(
        first.headers.get(headers::DLQ_REASON).unwrap().as_str(),
        "undecodable_event"
    );
    let second = dlq.get_raw_message(2).await.unwrap();
    assert_eq!(
        second.headers.get(headers::DLQ_REASON).unwrap().as_str(),
        "unsupported_schema_version"
    );
    harness.stop_loader().await;
}

#[tokio::test]
async fn stage_errors_are_retried_and_nothing_is_acked_until_files_are_durable() {
    let mut harness = Harness::new().await;
    let stage = harness.stage_dir();
    std::fs::create_dir_all(&stage).unwrap();
    // A regular file where the `calls` folder must go: every write fails, even as root.
    std::fs::write(stage.join("calls"), b"in the way").unwrap();
    harness
        .start_loader(&[("LOAD_RETRY_MAX_BACKOFF", "200ms")])
        .await;
    publish_events(&harness.jetstream, 1, 2).await;
    let metrics_url = format!("http://{}/metrics", harness.admin_addr());
    gong_testkit::wait_until(std::time::Duration::from_secs(30), "a stage error", || {
        let url = metrics_url.clone();
        async move {
            let text = reqwest::get(url).await.ok()?.text().await.ok()?;
            // Registered at zero on start: wait for a count, not for the name.
            let errors = text
                .lines()
                .find_map(|line| line.strip_prefix("gong_load_stage_errors_total "))
                .and_then(|value| value.trim().parse::<f64>().ok())
                .unwrap_or(0.0);
            (errors > 0.0).then_some(())
        }
    })
    .await;
    let stream = harness
        .jetstream
        .get_stream(names::STREAM_ENRICHED)
        .await
        .unwrap();
    let info = stream.consumer_info(names::CONSUMER_LOAD).await.unwrap();
    assert_eq!(
        info.ack_floor.stream_sequence, 0,
        "acked before the files were durable"
    );
    std::fs::remove_file(stage.join("calls")).unwrap();
    wait_calls_rows(&stage, 2).await;
    harness.wait_all_acked().await;
    harness.stop_loader().await;
    // Nothing half-written is left visible: only complete .parquet files.
    let mut pending = vec![stage.clone()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                assert!(
                    path.extension().is_some_and(|ext| ext == "parquet"),
                    "unexpected file on the stage: {}",
                    path.display()
                );
            }
        }
    }
}

#[tokio::test]
async fn two_replicas_stage_every_event_exactly_once_in_disjoint_ranges() {
    let mut harness = Harness::new().await;
    harness
        .start_loader(&[("LOAD_FLUSH_MAX_ROWS", "4"), ("LOAD_FETCH_BATCH", "3")])
        .await;
    let first = harness.loader.take();
    harness
        .start_loader(&[("LOAD_FLUSH_MAX_ROWS", "4"), ("LOAD_FETCH_BATCH", "3")])
        .await;
    publish_events(&harness.jetstream, 1, 40).await;
    wait_calls_rows(&harness.stage_dir(), 40).await;
    harness.wait_all_acked().await;
    let files = read_stage(&harness.stage_dir());
    let mut ids = call_event_ids(&files);
    ids.sort();
    let total = ids.len();
    ids.dedup();
    assert_eq!((total, ids.len()), (40, 40), "{:?}", files.keys());
    let mut ranges: Vec<(u64, u64)> = files
        .keys()
        .filter(|path| path.starts_with("calls/"))
        .map(|path| parse_file_name(path.rsplit('/').next().unwrap()).unwrap())
        .collect();
    ranges.sort();
    for pair in ranges.windows(2) {
        assert!(pair[0].1 < pair[1].0, "overlapping ranges {ranges:?}");
    }
    harness.stop_loader().await;
    if let Some((running, shutdown)) = first {
        shutdown.cancel();
        running.task.await.unwrap().unwrap();
    }
}
