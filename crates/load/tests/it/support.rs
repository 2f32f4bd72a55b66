//! Shared set-up: a nats-server per test, enriched events published directly, a local stage,
//! and Parquet read back with the parquet crate.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch};
use async_nats::jetstream;
use gong_common::names;
use gong_common::streams::{ensure_streams, StreamKind, StreamSettings};
use gong_common::Env;
use gong_load::schema::Table;
use gong_load::{LoadConfig, Running};
use gong_testkit::nats::free_port;
use gong_testkit::{wait_until, NatsServer};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tokio_util::sync::CancellationToken;

/// Rows one [`event_json`] event gives per table, in `Table::ALL` order (a call event: no
/// rows in the user and scorecard tables).
pub const ROWS_PER_EVENT: [usize; Table::COUNT] = [1, 2, 3, 1, 1, 1, 2, 0, 0, 0];

/// The tables one [`event_json`] event has rows in.
pub fn call_tables() -> Vec<Table> {
    Table::ALL
        .into_iter()
        .filter(|table| ROWS_PER_EVENT[table.index()] > 0)
        .collect()
}

/// The call id of event `index`.
pub fn call_id(index: u64) -> String {
    format!("{}", 7_000_000_000_000_000_000u64 + index)
}

/// An enriched event (schema version 1) for call `index`.
pub fn event_json(index: u64) -> Vec<u8> {
    serde_json::json!({
        "schema_version": 1,
        "event_id": format!("ev-{index}"),
        "raw_event_id": format!("ev-{index}"),
        "raw_stream_seq": index,
        "received_at": "2024-03-04T05:06:07.123456Z",
        "fetched_at": "2024-03-04T05:16:07Z",
        "call": {
            "metaData": {
                "id": call_id(index),
                "title": format!("Call {index}"),
                "started": "2024-03-01T09:30:00.5-08:00",
                "scheduled": "2024-03-01T09:30:00-08:00",
                "duration": 1800,
                "direction": "Outbound",
                "scope": "External",
                "primaryUserId": "234599484848423",
                "workspaceId": "623457276584334",
                "isPrivate": false,
                "brandNewField": {"x": index}
            },
            "parties": [
                {"id": "1", "speakerId": "6432345678555530067", "name": "Ann", "emailAddress": "ann@example.com", "affiliation": "Internal", "userId": "234599484848423"},
                {"id": "2", "speakerId": "6432345678555530068", "name": "Bob", "affiliation": "External"}
            ],
            "content": {
                "brief": "pricing talk",
                "topics": [{"name": "Pricing", "duration": 120.5}],
                "trackers": [{"id": "99", "name": "Competitors", "count": 3, "type": "KEYWORD"}]
            },
            "context": [{"system": "Salesforce", "objects": [{"objectType": "Opportunity", "objectId": "006x", "fields": [{"name": "Amount", "value": 1000}]}]}],
            "interaction": {
                "speakers": [{"id": "1", "userId": "234599484848423", "talkTime": 1100.5}, {"id": "2", "talkTime": 640}],
                "interactionStats": [{"name": "Talk Ratio", "value": 0.63}, {"name": "Interactivity", "value": 4.2}]
            }
        },
        "transcript": [
            {"speakerId": "6432345678555530067", "topic": "Intro", "sentences": [
                {"start": 0, "end": 1200, "text": "hello"},
                {"start": 1200, "end": 2500, "text": "how are you"}]},
            {"speakerId": "6432345678555530068", "topic": "Intro", "sentences": [
                {"start": 2500, "end": 3000, "text": "fine"}]}
        ]
    })
    .to_string()
    .into_bytes()
}

/// Creates the streams the way the stages do.
pub async fn provision(nats: &NatsServer) -> jetstream::Context {
    let jetstream = nats.jetstream().await;
    ensure_streams(
        &jetstream,
        &StreamSettings::default(),
        &[StreamKind::Enriched, StreamKind::Dlq],
    )
    .await
    .expect("streams");
    jetstream
}

/// Publishes `payload` on `gong.enriched.call` with a `Nats-Msg-Id`; returns its sequence.
pub async fn publish(jetstream: &jetstream::Context, message_id: &str, payload: Vec<u8>) -> u64 {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, message_id);
    jetstream
        .publish_with_headers(names::SUBJECT_ENRICHED_CALL, headers, payload.into())
        .await
        .expect("publish")
        .await
        .expect("publish ack")
        .sequence
}

/// Publishes events `from..=to`.
pub async fn publish_events(jetstream: &jetstream::Context, from: u64, to: u64) {
    for index in from..=to {
        publish(jetstream, &format!("ev-{index}"), event_json(index)).await;
    }
}

/// Loader variables for a local stage.
pub fn env_for(nats: &NatsServer, stage: &Path, extra: &[(&str, &str)]) -> Env {
    Env::from_pairs(env_pairs(nats, stage, extra))
}

/// [`env_for`]'s variables as pairs (`extra` last, so it overrides), to pass to a child process.
pub fn env_pairs(nats: &NatsServer, stage: &Path, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = [
        ("NATS_URL", nats.url()),
        ("ADMIN_ADDR", "127.0.0.1:0".to_string()),
        ("LOG_FORMAT", "pretty".to_string()),
        ("NATS_REQUEST_TIMEOUT", "2s".to_string()),
        ("STAGE_URL", format!("file://{}", stage.display())),
        (
            "LOAD_SPOOL_DIR",
            stage.with_extension("spool").display().to_string(),
        ),
        ("LOAD_FLUSH_MAX_AGE", "1s".to_string()),
        ("LOAD_ACK_WAIT", "4s".to_string()),
        ("LOAD_LEASE_TTL", "2s".to_string()),
        ("LOAD_FLUSH_MAX_ROWS", "1000".to_string()),
        ("LOAD_SHUTDOWN_GRACE", "5s".to_string()),
    ]
    .into_iter()
    .map(|(var, value)| (var.to_string(), value))
    .collect();
    for (var, value) in extra {
        pairs.retain(|(known, _)| known != var);
        pairs.push((var.to_string(), value.to_string()));
    }
    pairs
}

/// A nats-server, a stage directory and, once started, the loader in-process.
pub struct Harness {
    pub nats: NatsServer,
    pub root: tempfile::TempDir,
    pub jetstream: jetstream::Context,
    pub loader: Option<(Running, CancellationToken)>,
}

impl Harness {
    pub async fn new() -> Harness {
        let nats = NatsServer::start_new();
        let jetstream = provision(&nats).await;
        Harness {
            nats,
            root: tempfile::tempdir().expect("tempdir"),
            jetstream,
            loader: None,
        }
    }

    pub fn stage_dir(&self) -> PathBuf {
        self.root.path().join("stage")
    }

    pub fn env(&self, extra: &[(&str, &str)]) -> Env {
        env_for(&self.nats, &self.stage_dir(), extra)
    }

    pub async fn start_loader(&mut self, extra: &[(&str, &str)]) {
        let config = LoadConfig::from_env(&self.env(extra)).expect("config");
        let shutdown = CancellationToken::new();
        let running = gong_load::start(config, shutdown.clone())
            .await
            .expect("loader starts");
        self.loader = Some((running, shutdown));
    }

    pub async fn stop_loader(&mut self) {
        if let Some((running, shutdown)) = self.loader.take() {
            shutdown.cancel();
            running.task.await.expect("join").expect("clean stop");
        }
    }

    /// Starts the `gong-load` binary as a child process. Its metrics are its own, whereas the
    /// in-process loaders of the tests running in parallel share one global recorder, so use
    /// this when a test asserts metric values.
    pub async fn spawn_loader_process(&self, extra: &[(&str, &str)]) -> LoaderProcess {
        let admin_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin = admin_addr.to_string();
        let mut extra = extra.to_vec();
        extra.push(("ADMIN_ADDR", &admin));
        let log = std::fs::File::create(
            self.root
                .path()
                .join(format!("gong-load-{}.log", admin_addr.port())),
        )
        .map(Stdio::from)
        .unwrap_or(Stdio::null());
        let child = Command::new(env!("CARGO_BIN_EXE_gong-load"))
            .env_clear()
            .envs(env_pairs(&self.nats, &self.stage_dir(), &extra))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn gong-load");
        let process = LoaderProcess {
            child: Some(child),
            admin_addr,
        };
        wait_until(
            Duration::from_secs(30),
            "gong-load serving /metrics",
            || metric_value(admin_addr, "gong_load_stage_errors_total"),
        )
        .await;
        process
    }

    /// Waits until the `load` consumer has delivered and acknowledged everything.
    pub async fn wait_all_acked(&self) {
        wait_all_acked(&self.jetstream).await
    }
}

/// The `gong-load` binary running as a child process; killed if dropped without [`stop`].
///
/// [`stop`]: LoaderProcess::stop
pub struct LoaderProcess {
    child: Option<Child>,
    pub admin_addr: SocketAddr,
}

impl LoaderProcess {
    /// Stops it with SIGTERM, as an orchestrator does, and expects a clean exit.
    pub async fn stop(mut self) {
        let mut child = self.child.take().expect("running");
        let pid = child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(
            status.is_ok_and(|status| status.success()),
            "kill -TERM {pid}"
        );
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "gong-load exited with {status}");
    }
}

impl LoaderProcess {
    /// Waits for the process to exit by itself (panics after `timeout`).
    pub async fn wait_exit(mut self, timeout: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = child.kill();
                panic!("gong-load did not exit within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for LoaderProcess {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The value of one series on the `/metrics` page served at `admin`: `series` is the name with
/// its labels as rendered (`gong_load_rows_total{table="calls"}`). `None` when the page cannot
/// be read or has no such series.
pub async fn metric_value(admin: SocketAddr, series: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.trim().parse().ok())?
    })
}

/// The `load` consumer's state, looked up fresh.
pub async fn load_consumer_info(
    jetstream: &jetstream::Context,
) -> Option<jetstream::consumer::Info> {
    let stream = jetstream.get_stream(names::STREAM_ENRICHED).await.ok()?;
    stream.consumer_info(names::CONSUMER_LOAD).await.ok()
}

/// The stream sequence up to which the `load` consumer has acknowledged every message.
pub async fn ack_floor(jetstream: &jetstream::Context) -> u64 {
    load_consumer_info(jetstream)
        .await
        .expect("load consumer info")
        .ack_floor
        .stream_sequence
}

/// Waits until every message is acknowledged, which the loader does only once every file of
/// its range is durable, so the stage read afterwards is complete.
pub async fn wait_all_acked(jetstream: &jetstream::Context) {
    wait_until(
        Duration::from_secs(60),
        "every message acknowledged by load",
        || async {
            let mut stream = jetstream.get_stream(names::STREAM_ENRICHED).await.ok()?;
            let last = stream.info().await.ok()?.state.last_sequence;
            let info = load_consumer_info(jetstream).await?;
            (info.num_ack_pending == 0
                && info.num_pending == 0
                && info.ack_floor.stream_sequence >= last)
                .then_some(())
        },
    )
    .await
}

/// One staged file read back.
#[derive(Debug, Clone)]
pub struct FileContent {
    pub rows: usize,
    pub batches: Vec<RecordBatch>,
    pub metadata: BTreeMap<String, String>,
}

/// Every `.parquet` file under `dir`, keyed by path relative to `dir`.
pub fn read_stage(dir: &Path) -> BTreeMap<String, FileContent> {
    let mut out = BTreeMap::new();
    let Ok(files) = gong_load::inspect::parquet_files(dir) else {
        return out;
    };
    for path in files {
        let relative = path
            .strip_prefix(dir)
            .expect("under the stage")
            .to_string_lossy()
            .to_string();
        out.insert(
            relative,
            read_parquet(&std::fs::read(&path).expect("read file")),
        );
    }
    out
}

/// The exact bytes of every staged file, by path relative to the stage. Snowflake's load
/// history is keyed on names, so a rewrite must give the same bytes, not only the same rows.
pub fn stage_bytes(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for path in gong_load::inspect::parquet_files(dir).unwrap_or_default() {
        let relative = path
            .strip_prefix(dir)
            .expect("under the stage")
            .to_string_lossy()
            .to_string();
        out.insert(relative, std::fs::read(&path).expect("read file"));
    }
    out
}

/// Paths whose bytes differ between two stage listings (or exist in one only).
pub fn differing_files(
    before: &BTreeMap<String, Vec<u8>>,
    after: &BTreeMap<String, Vec<u8>>,
) -> Vec<String> {
    before
        .keys()
        .chain(after.keys())
        .filter(|path| before.get(*path) != after.get(*path))
        .cloned()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Reads a Parquet file with the parquet crate.
pub fn read_parquet(bytes: &[u8]) -> FileContent {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::copy_from_slice(bytes))
        .expect("parquet footer");
    let metadata = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .into_iter()
        .flatten()
        .map(|kv| (kv.key.clone(), kv.value.clone().unwrap_or_default()))
        .collect();
    let batches: Vec<RecordBatch> = builder
        .build()
        .expect("reader")
        .collect::<Result<_, _>>()
        .expect("batches");
    FileContent {
        rows: batches.iter().map(RecordBatch::num_rows).sum(),
        batches,
        metadata,
    }
}

/// Rows per table over a stage listing.
pub fn rows_per_table(files: &BTreeMap<String, FileContent>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for (path, content) in files {
        let table = path.split('/').next().unwrap_or_default().to_string();
        *out.entry(table).or_insert(0) += content.rows;
    }
    out
}

/// The event ids in the calls files.
pub fn call_event_ids(files: &BTreeMap<String, FileContent>) -> Vec<String> {
    let mut ids = Vec::new();
    for (path, content) in files {
        if !path.starts_with("calls/") {
            continue;
        }
        for batch in &content.batches {
            let column = batch
                .column_by_name("event_id")
                .expect("event_id")
                .as_string::<i32>();
            for index in 0..column.len() {
                ids.push(column.value(index).to_string());
            }
        }
    }
    ids
}

/// A readable rendering of every row of every file (to compare two stages).
pub fn render_rows(files: &BTreeMap<String, FileContent>) -> BTreeMap<String, String> {
    files
        .iter()
        .map(|(path, content)| {
            let mut buffer = Vec::new();
            {
                let mut writer = arrow::json::LineDelimitedWriter::new(&mut buffer);
                for batch in &content.batches {
                    let batch = gong_load::inspect::displayable(batch).expect("render");
                    writer.write(&batch).expect("render");
                }
                writer.finish().expect("render");
            }
            (path.clone(), String::from_utf8_lossy(&buffer).to_string())
        })
        .collect()
}

/// Waits until the stage holds `events` calls rows.
pub async fn wait_calls_rows(dir: &Path, events: usize) -> BTreeMap<String, FileContent> {
    let dir = dir.to_path_buf();
    wait_until(
        Duration::from_secs(60),
        &format!("{events} calls rows on the stage"),
        || {
            let dir = dir.clone();
            async move {
                let files = read_stage(&dir);
                let rows = rows_per_table(&files).get("calls").copied().unwrap_or(0);
                (rows >= events).then_some(files)
            }
        },
    )
    .await
}

/// Column is null-free text.
pub fn assert_no_nulls(batch: &RecordBatch, column: &str) {
    let array = batch
        .column_by_name(column)
        .unwrap_or_else(|| panic!("column {column}"));
    assert_eq!(array.null_count(), 0, "{column} has nulls");
}
