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
    machine, peak_rss_mib, per_second, sibling_binary, wait_ready, ChildGuard, Latencies,
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
    /// Tiny run for the test suite: 200 requests at 1 and 8 connections.
    #[arg(long)]
    quick: bool,
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.requests = 200;
        args.concurrency = vec![1, 8];
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(bench(args))
}

async fn bench(args: Args) -> anyhow::Result<()> {
    let total: usize = args.requests * args.concurrency.len();
    eprintln!("pre-signing {total} unique webhooks");
    let key = TestKey::rule_a();
    let mut bodies = Vec::with_capacity(total);
    for index in 0..total {
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
        "ingest-bench: {} requests per level, date {}",
        args.requests,
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
    println!();

    println!(
        "| concurrency | ingest req/s | p50 ms | p99 ms | p999 ms | ceiling publish/s | ratio |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let mut chunks = bodies.chunks(args.requests);
    let mut peak_rss = 0.0f64;
    for &concurrency in &args.concurrency {
        let chunk = chunks.next().context("bodies")?.to_vec();

        // Ceiling: raw JetStream publish-with-ack, same payload size, same in-flight count.
        let ceiling = {
            let nats = NatsServer::start_new();
            raw_publish_rate(&nats, args.requests, concurrency, payload_len).await?
        };

        // gong-ingest as a separate process, so its RSS is its own.
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
        let started = Instant::now();
        let mut latencies = drive(port, chunk, concurrency).await?;
        let elapsed = started.elapsed();
        let rate = per_second(latencies.len(), elapsed);
        if let Some(rss) = peak_rss_mib(guard.0.id()) {
            peak_rss = peak_rss.max(rss);
        }
        println!(
            "| {concurrency} | {rate:.0} | {:.2} | {:.2} | {:.2} | {ceiling:.0} | {:.2} |",
            latencies.quantile_ms(0.5),
            latencies.quantile_ms(0.99),
            latencies.quantile_ms(0.999),
            rate / ceiling
        );
        drop(guard);
    }
    println!();
    println!("peak RSS of gong-ingest: {peak_rss:.1} MiB; payload {payload_len} bytes");
    Ok(())
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

/// Publish-with-ack rate with `in_flight` publishers, each waiting for its ack (as ingest does).
async fn raw_publish_rate(
    nats: &NatsServer,
    count: usize,
    in_flight: usize,
    payload_len: usize,
) -> anyhow::Result<f64> {
    let client = nats.client().await;
    let jetstream = gong_common::nats::jetstream_context(client, Duration::from_secs(5), 4096);
    gong_common::streams::ensure_streams(
        &jetstream,
        &gong_common::streams::StreamSettings::default(),
        &[gong_common::streams::StreamKind::Raw],
    )
    .await?;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
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
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", format!("ceiling-{index}").as_str());
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
