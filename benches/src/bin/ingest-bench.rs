//! Ingest benchmark: unique, pre-signed Gong webhooks at fixed concurrency against a real
//! gong-ingest process and nats-server, beside the raw JetStream publish-with-ack ceiling for the
//! same payload size and in-flight count, measured in the same run.
//!
//! `cargo build --release -p gong-ingest -p gong-benches && target/release/ingest-bench`
//! (`--quick` for the test suite: tiny counts, no assertion on time).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use gong_benches::{
    cpu_seconds, machine, own_cpu_seconds, peak_rss_mib, per_second, raw_publish_rate,
    sibling_binary, wait_ready, ChildGuard, Latencies,
};
use gong_testkit::nats::free_port;
use gong_testkit::webhook::{call_body, TestKey};
use gong_testkit::NatsServer;
use http_body_util::{BodyExt, Full};

const WEBHOOK_URL: &str = "https://bench.example.com/webhooks/gong";

#[derive(Parser)]
#[command(name = "ingest-bench")]
struct Args {
    /// Requests per concurrency level.
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// Concurrency levels (connections, one request in flight each).
    #[arg(long, value_delimiter = ',', default_value = "1,64,256")]
    concurrency: Vec<usize>,
    /// Rounds per level; each round runs the ceiling then gong-ingest, and the best of each
    /// is reported (a shared machine only ever makes a run slower).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Tiny run for the test suite: 200 requests at 1 and 8 connections, one round.
    #[arg(long)]
    quick: bool,
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.requests = 200;
        args.concurrency = vec![1, 8];
        args.rounds = 1;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(bench(args))
}

async fn bench(args: Args) -> anyhow::Result<()> {
    // Every run gets a fresh nats-server, so one set of unique bodies serves every level and
    // round without a duplicate reaching JetStream's dedupe window.
    eprintln!("pre-signing {} unique webhooks", args.requests);
    let key = TestKey::rule_a();
    let mut bodies = Vec::with_capacity(args.requests);
    for index in 0..args.requests {
        let body = call_body(
            &format!("{}", 5_000_000_000_000_000_000u64 + index as u64),
            false,
        );
        let token = key.sign_webhook(&body, WEBHOOK_URL, 3600);
        bodies.push((Bytes::from(body), format!("Bearer {token}")));
    }
    let payload_len = bodies[0].0.len();
    println!("machine: {}", machine());
    println!(
        "ingest-bench: {} requests per run, best of {} rounds (ceiling and ingest alternate), \
         date {}",
        args.requests,
        args.rounds,
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
    println!();

    println!(
        "| concurrency | ingest req/s | p50 ms | p99 ms | p999 ms | ceiling publish/s | ratio | \
         CPU µs/request: gong-ingest | nats-server | load generator | \
         CPU µs/publish (ceiling): publisher | nats-server |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut peak_rss = 0.0f64;
    for &concurrency in &args.concurrency {
        let mut best_ceiling: Option<CeilingRun> = None;
        let mut best_ingest: Option<IngestRun> = None;
        for _ in 0..args.rounds.max(1) {
            let ceiling = ceiling_run(args.requests, concurrency, payload_len).await?;
            if best_ceiling
                .as_ref()
                .is_none_or(|best| ceiling.rate > best.rate)
            {
                best_ceiling = Some(ceiling);
            }
            let ingest = ingest_run(&key, bodies.clone(), concurrency).await?;
            peak_rss = peak_rss.max(ingest.peak_rss_mib);
            if best_ingest
                .as_ref()
                .is_none_or(|best| ingest.rate > best.rate)
            {
                best_ingest = Some(ingest);
            }
        }
        let (Some(ceiling), Some(mut ingest)) = (best_ceiling, best_ingest) else {
            bail!("no run");
        };
        println!(
            "| {concurrency} | {:.0} | {:.2} | {:.2} | {:.2} | {:.0} | {:.2} | \
             {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            ingest.rate,
            ingest.latencies.quantile_ms(0.5),
            ingest.latencies.quantile_ms(0.99),
            ingest.latencies.quantile_ms(0.999),
            ceiling.rate,
            ingest.rate / ceiling.rate,
            ingest.cpu.server,
            ingest.cpu.nats,
            ingest.cpu.own,
            ceiling.cpu.own,
            ceiling.cpu.nats,
        );
    }
    println!();
    println!("peak RSS of gong-ingest: {peak_rss:.1} MiB; payload {payload_len} bytes");
    println!(
        "CPU µs per request or publish: user + system time of each process over the measured \
         part, divided by the count (the load generator and the ceiling's publisher are this \
         process); latencies and CPU are those of the best round"
    );
    Ok(())
}

struct CeilingRun {
    rate: f64,
    cpu: CpuPerItem,
}

/// Raw JetStream publish-with-ack, same message size, same in-flight count, fresh server.
async fn ceiling_run(
    count: usize,
    in_flight: usize,
    payload_len: usize,
) -> anyhow::Result<CeilingRun> {
    let nats = NatsServer::start_new();
    let client = nats.client().await;
    let meter = CpuMeter::start(&nats, None);
    let rate = raw_publish_rate(client, count, in_flight, payload_len).await?;
    Ok(CeilingRun {
        rate,
        cpu: meter.per_item(&nats, None, count),
    })
}

struct IngestRun {
    rate: f64,
    latencies: Latencies,
    cpu: CpuPerItem,
    peak_rss_mib: f64,
}

/// gong-ingest as a separate process (so its RSS is its own) on a fresh nats-server.
async fn ingest_run(
    key: &TestKey,
    bodies: Vec<(Bytes, String)>,
    concurrency: usize,
) -> anyhow::Result<IngestRun> {
    let nats = NatsServer::start_new();
    let port = free_port();
    let admin = free_port();
    let child = std::process::Command::new(sibling_binary("gong-ingest"))
        .env("NATS_URL", nats.url())
        .env("INGEST_ADDR", format!("127.0.0.1:{port}"))
        .env("ADMIN_ADDR", format!("127.0.0.1:{admin}"))
        .env("GONG_WEBHOOK_SECRETS", key.public_base64_der())
        .env("GONG_WEBHOOK_URL", WEBHOOK_URL)
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("spawn gong-ingest (build it first: cargo build -p gong-ingest)")?;
    let guard = ChildGuard(child);
    wait_ready(admin, "gong-ingest", Duration::from_secs(30)).await?;
    let meter = CpuMeter::start(&nats, Some(guard.0.id()));
    let started = Instant::now();
    let latencies = drive(port, bodies, concurrency).await?;
    let elapsed = started.elapsed();
    let cpu = meter.per_item(&nats, Some(guard.0.id()), latencies.len());
    Ok(IngestRun {
        rate: per_second(latencies.len(), elapsed),
        cpu,
        peak_rss_mib: peak_rss_mib(guard.0.id()).unwrap_or(f64::NAN),
        latencies,
    })
}

/// CPU seconds of nats-server, this process and optionally a server child, at a start point.
struct CpuMeter {
    nats: f64,
    own: f64,
    server: f64,
}

/// CPU microseconds per item for each process.
struct CpuPerItem {
    nats: f64,
    own: f64,
    server: f64,
}

impl CpuMeter {
    fn read(nats: &NatsServer, server: Option<u32>) -> CpuMeter {
        CpuMeter {
            nats: nats.pid().and_then(cpu_seconds).unwrap_or(f64::NAN),
            own: own_cpu_seconds().unwrap_or(f64::NAN),
            server: server.and_then(cpu_seconds).unwrap_or(f64::NAN),
        }
    }

    fn start(nats: &NatsServer, server: Option<u32>) -> CpuMeter {
        CpuMeter::read(nats, server)
    }

    fn per_item(&self, nats: &NatsServer, server: Option<u32>, items: usize) -> CpuPerItem {
        let now = CpuMeter::read(nats, server);
        let per = |end: f64, start: f64| (end - start) * 1e6 / items.max(1) as f64;
        CpuPerItem {
            nats: per(now.nats, self.nats),
            own: per(now.own, self.own),
            server: per(now.server, self.server),
        }
    }
}

/// `concurrency` keep-alive connections, each sending its share sequentially.
async fn drive(
    port: u16,
    bodies: Vec<(Bytes, String)>,
    concurrency: usize,
) -> anyhow::Result<Latencies> {
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (bodies, next) = (bodies.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            stream.set_nodelay(true)?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            let mut latencies = Latencies::default();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some((body, authorization)) = bodies.get(index) else {
                    return Ok::<_, anyhow::Error>(latencies);
                };
                let request = hyper::Request::post("/webhooks/gong")
                    .header("host", "bench")
                    .header("authorization", authorization)
                    .header("content-type", "application/json")
                    .body(Full::new(body.clone()))?;
                let started = Instant::now();
                sender.ready().await?;
                let response = sender.send_request(request).await?;
                let status = response.status();
                response.into_body().collect().await?;
                if status.as_u16() != 202 {
                    bail!("unexpected status {status}");
                }
                latencies.record(started.elapsed());
            }
        }));
    }
    let mut all = Latencies::default();
    for worker in workers {
        all.extend(worker.await??);
    }
    Ok(all)
}
