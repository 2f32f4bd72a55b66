//! End-to-end freshness benchmark: signed Gong webhooks at a steady rate into gong-ingest, through
//! gong-enrich (against the Gong API double) and gong-load (`LOAD_FLUSH_MAX_AGE`, a `file://`
//! stage), all three as processes built next to this binary, with a real nats-server. For each
//! call it records when gong-ingest accepted the webhook (the 202) and when the call's row first
//! appears in a staged `calls` Parquet file (the stage is polled every `--poll-ms`), and reports
//! p50/p99, split into the enrich and load legs with the row's own `received_at`/`fetched_at`.
//!
//! `cargo build --release -p gong-ingest -p gong-enrich -p gong-load -p gong-benches &&
//! target/release/freshness-bench` (`--quick` for the test suite: a few seconds, no assertion on
//! time).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use arrow::array::{Array, AsArray};
use arrow::datatypes::TimestampMicrosecondType;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use clap::Parser;
use gong_benches::{machine, sibling_binary, wait_ready, ChildGuard, Latencies};
use gong_testkit::gong_double::{
    GongDouble, GongDoubleConfig, DEFAULT_ACCESS_KEY, DEFAULT_ACCESS_KEY_SECRET,
};
use gong_testkit::nats::free_port;
use gong_testkit::webhook::{call_body, TestKey};
use gong_testkit::NatsServer;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

const WEBHOOK_URL: &str = "https://bench.example.com/webhooks/gong";

#[derive(Parser)]
#[command(name = "freshness-bench")]
struct Args {
    /// Webhooks per second.
    #[arg(long, default_value_t = 10)]
    rate: u32,
    /// Seconds of sending.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// gong-load's `LOAD_FLUSH_MAX_AGE`.
    #[arg(long, default_value = "5s")]
    flush_max_age: String,
    /// Gong requests per second (the double's limit and the enricher's setting).
    #[arg(long, default_value_t = 3)]
    gong_rate: u32,
    /// How often the stage is listed.
    #[arg(long, default_value_t = 50)]
    poll_ms: u64,
    /// Tiny run for the test suite: 3 s at 10 webhooks/s, flush age 2s, Gong at 30 req/s.
    #[arg(long)]
    quick: bool,
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.rate = 10;
        args.seconds = 3;
        args.flush_max_age = "2s".to_string();
        args.gong_rate = 30;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(bench(args))
}

/// When each call's row was first seen on the stage, with its `received_at` and `fetched_at`.
#[derive(Default)]
struct Seen {
    rows: HashMap<String, SeenRow>,
    files: HashSet<PathBuf>,
}

struct SeenRow {
    seen: DateTime<Utc>,
    received_at: DateTime<Utc>,
    fetched_at: DateTime<Utc>,
}

async fn bench(args: Args) -> anyhow::Result<()> {
    let flush_max_age =
        humantime::parse_duration(&args.flush_max_age).context("--flush-max-age")?;
    println!("machine: {}", machine());
    println!(
        "freshness-bench: {} webhooks/s for {} s, LOAD_FLUSH_MAX_AGE={}, Gong at {} req/s, stage polled every {} ms, date {}",
        args.rate,
        args.seconds,
        args.flush_max_age,
        args.gong_rate,
        args.poll_ms,
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
    println!();

    let work = tempfile::tempdir()?;
    let stage_dir = work.path().join("stage");
    std::fs::create_dir_all(&stage_dir)?;
    let nats = NatsServer::start_new();
    let gong = GongDouble::start(GongDoubleConfig {
        rate_per_second: args.gong_rate,
        ..GongDoubleConfig::default()
    })
    .await?;
    let key = TestKey::rule_a();

    let ingest_port = free_port();
    let mut children = Vec::new();
    let mut admin_ports = Vec::new();
    for (binary, env) in [
        (
            "gong-ingest",
            vec![
                ("INGEST_ADDR", format!("127.0.0.1:{ingest_port}")),
                ("GONG_WEBHOOK_SECRETS", key.public_base64_der()),
                ("GONG_WEBHOOK_URL", WEBHOOK_URL.to_string()),
            ],
        ),
        (
            "gong-enrich",
            vec![
                ("GONG_API_BASE_URL", gong.base_url()),
                ("GONG_ACCESS_KEY", DEFAULT_ACCESS_KEY.to_string()),
                (
                    "GONG_ACCESS_KEY_SECRET",
                    DEFAULT_ACCESS_KEY_SECRET.to_string(),
                ),
                ("GONG_RATE_LIMIT_PER_SECOND", args.gong_rate.to_string()),
            ],
        ),
        (
            "gong-load",
            vec![
                ("STAGE_URL", format!("file://{}", stage_dir.display())),
                ("LOAD_FLUSH_MAX_AGE", args.flush_max_age.clone()),
                (
                    "LOAD_SPOOL_DIR",
                    work.path().join("spool").display().to_string(),
                ),
            ],
        ),
    ] {
        let admin = free_port();
        let log = File::create(work.path().join(format!("{binary}.log")))?;
        let mut command = Command::new(sibling_binary(binary));
        command
            .env("NATS_URL", nats.url())
            .env("ADMIN_ADDR", format!("127.0.0.1:{admin}"))
            .env("RUST_LOG", "warn")
            .env("LOG_FORMAT", "json")
            .stdout(log.try_clone()?)
            .stderr(log);
        for (name, value) in env {
            command.env(name, value);
        }
        let child = command
            .spawn()
            .with_context(|| format!("spawn {binary} (build it first: cargo build -p {binary})"))?;
        children.push(ChildGuard(child));
        admin_ports.push((binary, admin));
    }
    for (binary, admin) in &admin_ports {
        wait_ready(*admin, binary, Duration::from_secs(60)).await?;
    }

    // The stage watcher: a thread listing `calls/` and reading each new file once.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (seen, stop) = (seen.clone(), stop.clone());
        let calls_dir = stage_dir.join("calls");
        let poll = Duration::from_millis(args.poll_ms);
        std::thread::spawn(move || -> anyhow::Result<()> {
            while !stop.load(Ordering::Relaxed) {
                scan(&calls_dir, &seen)?;
                std::thread::sleep(poll);
            }
            Ok(())
        })
    };

    // Pre-signed webhooks, sent at a steady rate, one task each (a slow answer does not delay
    // the next send); the accept time is when the 202 arrives.
    let total = (u64::from(args.rate) * args.seconds) as usize;
    let bodies: Vec<(String, Bytes, String)> = (0..total)
        .map(|index| {
            let call_id = (4_000_000_000_000_000_000u64 + index as u64).to_string();
            let body = call_body(&call_id, false);
            let token = key.sign_webhook(&body, WEBHOOK_URL, 3600);
            (call_id, Bytes::from(body), format!("Bearer {token}"))
        })
        .collect();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let accepted = Arc::new(Mutex::new(HashMap::<String, DateTime<Utc>>::new()));
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(args.rate)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sends = Vec::with_capacity(total);
    let sending_started = Instant::now();
    for (call_id, body, authorization) in bodies {
        ticker.tick().await;
        let (client, accepted) = (client.clone(), accepted.clone());
        sends.push(tokio::spawn(async move {
            let request =
                hyper::Request::post(format!("http://127.0.0.1:{ingest_port}/webhooks/gong"))
                    .header("authorization", authorization)
                    .header("content-type", "application/json")
                    .body(Full::new(body))?;
            let response = client.request(request).await?;
            let status = response.status();
            response.into_body().collect().await?;
            if status.as_u16() != 202 {
                bail!("gong-ingest answered {status}");
            }
            accepted.lock().expect("lock").insert(call_id, Utc::now());
            Ok::<(), anyhow::Error>(())
        }));
    }
    for send in sends {
        send.await??;
    }
    let sending = sending_started.elapsed();

    // Every call's row on the stage, or a clear failure.
    let deadline = Instant::now() + flush_max_age * 3 + Duration::from_secs(120);
    loop {
        let staged = seen.lock().expect("lock").rows.len();
        if staged >= total {
            break;
        }
        if Instant::now() > deadline || watcher.is_finished() {
            stop.store(true, Ordering::Relaxed);
            bail!(
                "{staged} of {total} calls staged (logs in {}, kept)",
                keep(work).display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    watcher.join().expect("watcher thread")?;
    drop(children);

    let accepted = accepted.lock().expect("lock");
    let seen = seen.lock().expect("lock");
    let mut end_to_end = Latencies::default();
    let mut enrich_leg = Latencies::default();
    let mut load_leg = Latencies::default();
    for (call_id, accepted_at) in accepted.iter() {
        let row = seen.rows.get(call_id).context("accepted call not staged")?;
        end_to_end.record(positive(row.seen - *accepted_at));
        enrich_leg.record(positive(row.fetched_at - row.received_at));
        load_leg.record(positive(row.seen - row.fetched_at));
    }
    println!("| leg | calls | p50 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|");
    for (name, latencies) in [
        ("webhook accepted (202) → calls row staged", &mut end_to_end),
        (
            "received by gong-ingest → fetched from Gong (enrich)",
            &mut enrich_leg,
        ),
        ("fetched from Gong → calls row staged (load)", &mut load_leg),
    ] {
        println!(
            "| {name} | {} | {:.0} | {:.0} | {:.0} |",
            latencies.len(),
            latencies.quantile_ms(0.5),
            latencies.quantile_ms(0.99),
            latencies.quantile_ms(1.0),
        );
    }
    println!();
    println!(
        "{} calls sent in {:.1} s; {} calls files staged; LOAD_FLUSH_MAX_AGE={} (a range is flushed at most this long after its first event; LOAD_FLUSH_MAX_ROWS 10000 never fills at this rate); stage poll resolution {} ms",
        total,
        sending.as_secs_f64(),
        seen.files.len(),
        args.flush_max_age,
        args.poll_ms,
    );
    let stats = gong.stats();
    println!(
        "Gong requests: {} ({:.3} per call; a steady trickle fills smaller batches than a burst), limit violations: {}",
        stats.call_requests(),
        stats.call_requests() as f64 / total as f64,
        stats.violations()
    );
    if stats.violations() > 0 {
        bail!(
            "the Gong double counted {} limit violations (must be 0)",
            stats.violations()
        );
    }
    Ok(())
}

fn positive(delta: chrono::TimeDelta) -> Duration {
    delta.to_std().unwrap_or(Duration::ZERO)
}

/// Keeps the work directory (logs, stage) for a failed run.
fn keep(work: tempfile::TempDir) -> PathBuf {
    work.keep()
}

/// Reads every `calls` Parquet file not seen yet and records its call ids.
fn scan(calls_dir: &Path, seen: &Mutex<Seen>) -> anyhow::Result<()> {
    let mut files = Vec::new();
    collect_parquet(calls_dir, &mut files);
    for path in files {
        if seen.lock().expect("lock").files.contains(&path) {
            continue;
        }
        let now = Utc::now();
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&path)?)?.build()?;
        let mut rows = Vec::new();
        for batch in reader {
            let batch = batch?;
            let column = |name: &str| {
                batch
                    .column_by_name(name)
                    .with_context(|| format!("column {name} in {}", path.display()))
            };
            let call_ids = column("call_id")?.as_string::<i32>().clone();
            let received = column("received_at")?
                .as_primitive::<TimestampMicrosecondType>()
                .clone();
            let fetched = column("fetched_at")?
                .as_primitive::<TimestampMicrosecondType>()
                .clone();
            for row in 0..batch.num_rows() {
                if call_ids.is_null(row) {
                    continue;
                }
                let micros =
                    |value: i64| DateTime::<Utc>::from_timestamp_micros(value).unwrap_or_default();
                rows.push((
                    call_ids.value(row).to_string(),
                    SeenRow {
                        seen: now,
                        received_at: micros(received.value(row)),
                        fetched_at: micros(fetched.value(row)),
                    },
                ));
            }
        }
        let mut seen = seen.lock().expect("lock");
        for (call_id, row) in rows {
            seen.rows.entry(call_id).or_insert(row);
        }
        seen.files.insert(path);
    }
    Ok(())
}

fn collect_parquet(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_parquet(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "parquet") {
            out.push(path);
        }
    }
}
