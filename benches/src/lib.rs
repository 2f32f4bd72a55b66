//! Shared measurement helpers for the bench binaries: latency percentiles, peak RSS of a child
//! process, a child-process guard, readiness polling, realistic enriched events, and the
//! machine description printed at the top of every full run.

use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

/// Latency samples in microseconds.
#[derive(Default)]
pub struct Latencies {
    samples: Vec<u64>,
}

impl Latencies {
    /// Adds one sample.
    pub fn record(&mut self, elapsed: Duration) {
        self.samples.push(elapsed.as_micros() as u64);
    }

    /// Merges another set.
    pub fn extend(&mut self, other: Latencies) {
        self.samples.extend(other.samples);
    }

    /// The `q` quantile (0..=1) in milliseconds.
    pub fn quantile_ms(&mut self, q: f64) -> f64 {
        if self.samples.is_empty() {
            return f64::NAN;
        }
        self.samples.sort_unstable();
        let index = ((self.samples.len() as f64 - 1.0) * q).round() as usize;
        self.samples[index] as f64 / 1000.0
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

/// Peak resident set size (VmHWM) of a process, in MiB (Linux).
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// CPU time (user + system) a process has used so far, in seconds (Linux: /proc/PID/stat).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (per_second > 0).then(|| ticks / per_second as f64)
}

/// CPU time used by this process so far, in seconds.
pub fn own_cpu_seconds() -> Option<f64> {
    cpu_seconds(std::process::id())
}

/// Path of a workspace binary built next to the running bench binary (same profile).
pub fn sibling_binary(name: &str) -> PathBuf {
    let me = std::env::current_exe().expect("current exe");
    let dir = me.parent().expect("exe dir");
    let candidate = dir.join(name);
    if candidate.exists() {
        return candidate;
    }
    // `cargo run --bin` places binaries in target/<profile>/; examples in deps/ one level down.
    dir.parent()
        .map(|parent| parent.join(name))
        .unwrap_or(candidate)
}

/// Kills a child process on drop.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `GET /readyz` on `127.0.0.1:admin_port` answers 200 (at most `timeout`).
pub async fn wait_ready(admin_port: u16, what: &str, timeout: Duration) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", admin_port)).await {
            stream
                .write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                .await?;
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).await?;
            if answer.starts_with(b"HTTP/1.1 200") {
                return Ok(());
            }
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("{what} not ready within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A realistic enriched event for `call_id`, as gong-enrich builds it from the Gong double's
/// answers (the enricher's default `contentSelector`, the call's transcript), stored at
/// `raw_stream_seq` in GONG_RAW.
pub fn enriched_event(
    call_id: &str,
    raw_stream_seq: u64,
    content_selector: &serde_json::Value,
) -> gong_common::event::EnrichedEvent {
    use gong_common::event::{content_id, EnrichedEvent, ENRICHED_SCHEMA_VERSION};
    use gong_common::gong::{Call, CallTranscript};
    use gong_testkit::gong_double::{call_json, transcript_json};

    let call: Call = serde_json::from_value(call_json(call_id, false, content_selector))
        .expect("the double's call parses as a Gong call");
    let transcript: CallTranscript = serde_json::from_value(transcript_json(call_id))
        .expect("the double's transcript parses as a Gong transcript");
    let raw_event_id = content_id(&gong_testkit::webhook::call_body(call_id, false));
    let now = chrono::Utc::now();
    EnrichedEvent {
        schema_version: ENRICHED_SCHEMA_VERSION,
        event_id: raw_event_id.clone(),
        raw_event_id,
        raw_stream_seq,
        received_at: now,
        fetched_at: now,
        replay_run_id: None,
        call,
        transcript: Some(transcript.transcript),
    }
}

/// One line describing the machine: cores, CPU model, memory (Linux).
pub fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|count| count.get())
        .unwrap_or(0);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|line| line.starts_with("model name"))
        .and_then(|line| line.split(':').nth(1))
        .map(str::trim)
        .unwrap_or("unknown CPU");
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_gib = meminfo
        .lines()
        .find(|line| line.starts_with("MemTotal:"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<f64>().ok())
        .map(|kib| kib / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    format!("nproc {cores}, {model}, {memory_gib:.1} GiB RAM")
}

/// Formats a number of requests per second.
pub fn per_second(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// The ingest benchmarks' ceiling: raw JetStream publish-with-ack of `count` messages of
/// `payload_len` bytes (each unique, with its own `Nats-Msg-Id` and the other headers gong-ingest
/// stores, so the message is the same size) on `gong.raw.call`, by
/// `in_flight` publishers each waiting for its ack before the next publish, as gong-ingest does.
/// Provisions `GONG_RAW` with the default settings first. Returns messages per second.
pub async fn raw_publish_rate(
    client: async_nats::Client,
    count: usize,
    in_flight: usize,
    payload_len: usize,
) -> anyhow::Result<f64> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let jetstream = gong_common::nats::jetstream_context(client, Duration::from_secs(5), 4096);
    gong_common::streams::ensure_streams(
        &jetstream,
        &gong_common::streams::StreamSettings::default(),
        &[gong_common::streams::StreamKind::Raw],
    )
    .await?;
    let next = Arc::new(AtomicUsize::new(0));
    let started = std::time::Instant::now();
    let mut workers = Vec::new();
    for _ in 0..in_flight {
        let (jetstream, next) = (jetstream.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= count {
                    return Ok::<(), anyhow::Error>(());
                }
                let mut payload = vec![b'x'; payload_len];
                payload[..8].copy_from_slice(&(index as u64).to_le_bytes());
                // The headers gong-ingest stores with every webhook, with values of the same
                // length: the ceiling publishes the same message size, headers included.
                let id = format!("{index:064x}");
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
                headers.insert(gong_common::names::headers::EVENT_ID, id.as_str());
                headers.insert(
                    gong_common::names::headers::RECEIVED_AT,
                    "2026-11-28T15:00:00.000000Z",
                );
                headers.insert(gong_common::names::headers::AUTH_MODE, "jwt");
                headers.insert(
                    gong_common::names::headers::CALL_ID,
                    format!("{:019}", index).as_str(),
                );
                jetstream
                    .publish_with_headers(
                        gong_common::names::SUBJECT_RAW_CALL,
                        headers,
                        payload.into(),
                    )
                    .await?
                    .await?;
            }
        }));
    }
    for worker in workers {
        worker.await??;
    }
    Ok(per_second(count, started.elapsed()))
}
