//! Live loading: files read back, flush policy, poison, metrics.

use std::time::Duration;

use gong_common::names::{self, headers};
use gong_load::metrics::FLUSH_REASONS;
use gong_load::schema::{Table, META_SCHEMA_VERSION, SCHEMA_VERSION};
use gong_load::stage::{file_name, parse_file_name};
use gong_testkit::wait_until;

use crate::support::{
    ack_floor, assert_no_nulls, call_event_ids, call_tables, metric_value, publish, publish_events,
    read_stage, rows_per_table, wait_calls_rows, FileContent, Harness, ROWS_PER_EVENT,
};

#[tokio::test]
async fn files_read_back_match_the_events_and_the_schema() {
    let harness = Harness::new().await;
    publish_events(&harness.jetstream, 1, 12).await;
    // A child process, so its metrics count this test's files only.
    let loader = harness
        .spawn_loader_process(&[("LOAD_FLUSH_MAX_ROWS", "5")])
        .await;
    let started_at = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
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
    for table in call_tables() {
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
    // Column types are checked against the documentation in schema.rs's unit tests; here the
    // file read back must carry exactly that schema.
    assert_eq!(batch.schema().fields(), Table::Calls.schema().fields());
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

    // Metrics: every series is registered at zero on start, so check the counts of what was
    // staged. A range's metrics follow its acks: wait until every range's flush is counted.
    let admin = loader.admin_addr;
    let flushes = || async move {
        let mut total = 0.0;
        for reason in FLUSH_REASONS {
            let series = format!("gong_load_flushes_total{{reason=\"{}\"}}", reason.as_str());
            total += metric_value(admin, &series).await?;
        }
        Some(total)
    };
    wait_until(Duration::from_secs(30), "every flush counted", || async {
        (flushes().await? >= ranges.len() as f64).then_some(())
    })
    .await;
    assert_eq!(flushes().await, Some(ranges.len() as f64));
    let metric = |series: String| async move {
        metric_value(admin, &series)
            .await
            .unwrap_or_else(|| panic!("{series} missing from /metrics"))
    };
    assert_eq!(
        metric("gong_load_flushes_total{reason=\"rows\"}".into()).await,
        2.0,
        "ranges 1..=5 and 6..=10 are flushed on rows"
    );
    for table in Table::ALL {
        let name = table.name();
        let staged: Vec<&FileContent> = files
            .iter()
            .filter(|(path, _)| path.starts_with(&format!("{name}/")))
            .map(|(_, content)| content)
            .collect();
        let bytes: u64 = files
            .keys()
            .filter(|path| path.starts_with(&format!("{name}/")))
            .map(|path| {
                std::fs::metadata(harness.stage_dir().join(path))
                    .unwrap()
                    .len()
            })
            .sum();
        let rows: usize = staged.iter().map(|content| content.rows).sum();
        let labels = format!("{{table=\"{name}\"}}");
        assert_eq!(
            metric(format!("gong_load_rows_total{labels}")).await,
            rows as f64,
            "{name}"
        );
        assert_eq!(
            metric(format!("gong_load_files_total{labels}")).await,
            staged.len() as f64,
            "{name}"
        );
        assert_eq!(
            metric(format!("gong_load_bytes_total{labels}")).await,
            bytes as f64,
            "{name}"
        );
    }
    assert_eq!(
        metric("gong_load_rows_total{table=\"calls\"}".into()).await,
        12.0
    );
    assert_eq!(
        metric("gong_load_file_size_bytes_count".into()).await,
        files.len() as f64
    );
    assert_eq!(
        metric("gong_load_event_to_staged_seconds_count".into()).await,
        ranges.len() as f64
    );
    assert!(
        metric("gong_load_last_flush_timestamp_seconds".into()).await > started_at,
        "the last flush is later than the start"
    );
    metric("gong_load_consumer_pending".into()).await;
    loader.stop().await;
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
    assert_eq!(rows_per_table(&files).len(), call_tables().len());
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
    let harness = Harness::new().await;
    let stage = harness.stage_dir();
    std::fs::create_dir_all(&stage).unwrap();
    // A regular file where the `calls` folder must go: every write fails, even as root.
    std::fs::write(stage.join("calls"), b"in the way").unwrap();
    // What a write killed half-way through leaves beside a name of range 1..=2 (the local
    // store's `<name>#<n>` staging file): completing that name must remove it.
    let participants = stage.join("call_participants/dt=2024-03-04");
    std::fs::create_dir_all(&participants).unwrap();
    let leftover = participants.join(format!("{}#3", file_name(1, 2)));
    std::fs::write(&leftover, b"half a file").unwrap();
    // Published before the loader starts, so both are in its first batch: range 1..=2.
    publish_events(&harness.jetstream, 1, 2).await;
    // A child process, so the stage errors counted are this loader's.
    let loader = harness
        .spawn_loader_process(&[("LOAD_RETRY_MAX_BACKOFF", "200ms")])
        .await;
    let admin = loader.admin_addr;
    wait_until(Duration::from_secs(30), "a stage error", || async move {
        let errors = metric_value(admin, "gong_load_stage_errors_total").await?;
        (errors > 0.0).then_some(())
    })
    .await;
    assert_eq!(
        ack_floor(&harness.jetstream).await,
        0,
        "acked before the files were durable"
    );
    std::fs::remove_file(stage.join("calls")).unwrap();
    wait_calls_rows(&stage, 2).await;
    harness.wait_all_acked().await;
    loader.stop().await;
    let calls: Vec<String> = read_stage(&stage)
        .into_keys()
        .filter(|path| path.starts_with("calls/"))
        .collect();
    assert_eq!(
        calls,
        [format!("calls/dt=2024-03-04/{}", file_name(1, 2))],
        "one range, 1..=2, whose name the leftover shares"
    );
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
