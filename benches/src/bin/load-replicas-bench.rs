//! Loader replicas benchmark: CPU per staged row with one gong-load and with three.
//!
//! Each run starts a fresh nats-server (or, with `--cluster`, a three-node cluster with
//! `STREAM_REPLICAS=3`), starts the gong-load processes (built next to this binary) on a local
//! `file://` stage, waits until they are ready, then publishes `--events` enriched events (the
//! benches' realistic event, as gong-enrich publishes it) into GONG_ENRICHED and waits until the
//! `load` consumer has acknowledged every one. The CPU time (user + system, `/proc/PID/stat`) of
//! every loader process over that window, summed, divided by the staged `calls` rows, is the
//! measure; three loaders are compared with one measured in the same run (the ratio should stay
//! near 1: replicas share the work, they do not repeat it). The stage is read back
//! (`gong_load::inspect::summary`) and must hold every event once.
//!
//! `cargo build --release -p gong-benches -p gong-load && target/release/load-replicas-bench`
//! (`--quick` for the test suite: 600 events, one round, no assertion on time or ratio).

use std::fs::File;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use async_nats::jetstream;
use clap::Parser;
use gong_benches::{cpu_seconds, enriched_event, machine, sibling_binary, wait_ready, ChildGuard};
use gong_common::names;
use gong_testkit::cluster::NatsCluster;
use gong_testkit::nats::free_port;
use gong_testkit::NatsServer;

#[derive(Parser)]
#[command(name = "load-replicas-bench")]
struct Args {
    /// Enriched events published (and staged) per run.
    #[arg(long, default_value_t = 20_000)]
    events: usize,
    /// Rounds; each runs one loader then three, and the best (least CPU per row) of each is
    /// compared.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// `LOAD_FLUSH_MAX_ROWS`: events per range.
    #[arg(long, default_value_t = 1000)]
    flush_rows: usize,
    /// Loaders of the replicated run.
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// A three-node JetStream cluster with `STREAM_REPLICAS=3` instead of one nats-server.
    #[arg(long)]
    cluster: bool,
    /// Tiny run for the test suite: 600 events, ranges of 100, one round.
    #[arg(long)]
    quick: bool,
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.events = 600;
        args.flush_rows = 100;
        args.rounds = 1;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(bench(args))
}

/// The NATS side of one run: one server or a cluster, dropped (killed) with the run.
enum Nats {
    Single(NatsServer),
    Cluster(NatsCluster),
}

impl Nats {
    async fn start(cluster: bool) -> Nats {
        if cluster {
            let cluster = NatsCluster::start(3);
            cluster.wait_jetstream(Duration::from_secs(60)).await;
            Nats::Cluster(cluster)
        } else {
            Nats::Single(NatsServer::start_new())
        }
    }

    fn urls(&self) -> String {
        match self {
            Nats::Single(server) => server.url(),
            Nats::Cluster(cluster) => cluster.urls(),
        }
    }

    fn replicas(&self) -> usize {
        match self {
            Nats::Single(_) => 1,
            Nats::Cluster(cluster) => cluster.size(),
        }
    }

    fn pids(&self) -> Vec<u32> {
        match self {
            Nats::Single(server) => server.pid().into_iter().collect(),
            Nats::Cluster(cluster) => (0..cluster.size())
                .filter_map(|index| cluster.node(index).pid())
                .collect(),
        }
    }

    async fn jetstream(&self) -> jetstream::Context {
        let client = match self {
            Nats::Single(server) => server.client().await,
            Nats::Cluster(cluster) => cluster.client().await,
        };
        jetstream::new(client)
    }
}

/// What one run measured.
struct Run {
    loaders: usize,
    rows: usize,
    all_rows: i64,
    files: usize,
    drain: Duration,
    loader_cpu: f64,
    per_loader_cpu: Vec<f64>,
    nats_cpu: f64,
    claims_lost: f64,
    takeovers: f64,
}

impl Run {
    fn loader_us_per_row(&self) -> f64 {
        self.loader_cpu * 1e6 / self.rows.max(1) as f64
    }
}

async fn bench(args: Args) -> anyhow::Result<()> {
    println!("machine: {}", machine());
    println!(
        "load-replicas-bench: {} events per run, LOAD_FLUSH_MAX_ROWS={}, 1 vs {} loaders, {} round(s), {}, date {}",
        args.events,
        args.flush_rows,
        args.replicas,
        args.rounds,
        if args.cluster {
            "3-node cluster, STREAM_REPLICAS=3"
        } else {
            "one nats-server"
        },
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
    println!();
    let payloads = payloads(args.events);
    println!("| round | loaders | calls rows | rows (all tables) | files | drain s | loader CPU s (per process) | loader CPU µs/row | nats-server CPU µs/row | claims lost | takeovers |");
    println!("|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|");
    let mut best: [Option<f64>; 2] = [None, None];
    for round in 1..=args.rounds {
        for (slot, loaders) in [1, args.replicas].into_iter().enumerate() {
            let run = run(&args, loaders, &payloads).await?;
            println!(
                "| {round} | {} | {} | {} | {} | {:.2} | {:.2} ({}) | {:.0} | {:.0} | {:.0} | {:.0} |",
                run.loaders,
                run.rows,
                run.all_rows,
                run.files,
                run.drain.as_secs_f64(),
                run.loader_cpu,
                run.per_loader_cpu
                    .iter()
                    .map(|cpu| format!("{cpu:.2}"))
                    .collect::<Vec<_>>()
                    .join(" + "),
                run.loader_us_per_row(),
                run.nats_cpu * 1e6 / run.rows.max(1) as f64,
                run.claims_lost,
                run.takeovers,
            );
            let per_row = run.loader_us_per_row();
            best[slot] = Some(best[slot].map_or(per_row, |old: f64| old.min(per_row)));
        }
    }
    let (Some(one), Some(many)) = (best[0], best[1]) else {
        bail!("no round ran");
    };
    let ratio = many / one;
    println!();
    println!(
        "loader CPU per staged row, best of {} round(s): 1 loader {one:.0} µs, {} loaders {many:.0} µs (sum of the processes); ratio {ratio:.2} (target ≤ 1.2: {})",
        args.rounds,
        args.replicas,
        if ratio <= 1.2 { "met" } else { "NOT met" }
    );
    Ok(())
}

/// The events' JSON, built once (the same bytes in every run).
fn payloads(count: usize) -> Vec<(String, bytes::Bytes)> {
    let selector = gong_testkit::gong_double::full_content_selector();
    (0..count)
        .map(|index| {
            let call_id = (5_000_000_000_000_000_000u64 + index as u64).to_string();
            let event = enriched_event(&call_id, index as u64 + 1, &selector);
            (event.event_id.clone(), bytes::Bytes::from(event.to_json()))
        })
        .collect()
}

/// Publishes every event to `gong.enriched.call` with its `Nats-Msg-Id` (256 acks in flight).
async fn publish(
    jetstream: &jetstream::Context,
    payloads: &[(String, bytes::Bytes)],
) -> anyhow::Result<()> {
    use futures::StreamExt;
    futures::stream::iter(payloads)
        .map(|(event_id, payload)| async move {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, event_id.as_str());
            headers.insert(names::headers::EVENT_ID, event_id.as_str());
            let ack = jetstream
                .publish_with_headers(names::SUBJECT_ENRICHED_CALL, headers, payload.clone())
                .await?;
            ack.await?;
            Ok::<(), anyhow::Error>(())
        })
        .buffer_unordered(256)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// One run: fresh NATS, `loaders` gong-load processes, publish, drain, measure.
async fn run(
    args: &Args,
    loaders: usize,
    payloads: &[(String, bytes::Bytes)],
) -> anyhow::Result<Run> {
    let work = tempfile::tempdir()?;
    let stage = work.path().join("stage");
    std::fs::create_dir_all(&stage)?;
    let nats = Nats::start(args.cluster).await;
    let jetstream = nats.jetstream().await;

    // One after another, each ready before the next (the measured window starts once all are).
    let mut children = Vec::new();
    let mut admin_ports = Vec::new();
    for index in 0..loaders {
        let admin = free_port();
        let log_path = work.path().join(format!("gong-load-{index}.log"));
        let log = File::create(&log_path)?;
        let child = Command::new(sibling_binary("gong-load"))
            .env("NATS_URL", nats.urls())
            .env("STREAM_REPLICAS", nats.replicas().to_string())
            .env("ADMIN_ADDR", format!("127.0.0.1:{admin}"))
            .env("STAGE_URL", format!("file://{}", stage.display()))
            .env("LOAD_SPOOL_DIR", work.path().join("spool"))
            .env("LOAD_FLUSH_MAX_ROWS", args.flush_rows.to_string())
            .env("LOAD_FLUSH_MAX_AGE", "1s")
            .env("RUST_LOG", "warn")
            .env("LOG_FORMAT", "json")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn gong-load (build it first: cargo build -p gong-load)")?;
        children.push(ChildGuard(child));
        admin_ports.push(admin);
        if let Err(err) = wait_ready(admin, "gong-load", Duration::from_secs(60)).await {
            let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(5).collect();
            bail!(
                "loader {index} of {loaders}: {err}; its log ends with {tail:?}; logs kept in {}",
                work.keep().display()
            );
        }
    }
    let pids: Vec<u32> = children.iter().map(|child| child.0.id()).collect();
    let cpu = |pids: &[u32]| -> Vec<f64> {
        pids.iter()
            .map(|pid| cpu_seconds(*pid).unwrap_or(0.0))
            .collect()
    };
    let loader_before = cpu(&pids);
    let nats_before: f64 = cpu(&nats.pids()).iter().sum();
    let started = Instant::now();
    publish(&jetstream, payloads).await?;
    let total = payloads.len() as u64;
    // The loaders have provisioned GONG_ENRICHED and the `load` consumer before reporting ready.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let stream = jetstream.get_stream(names::STREAM_ENRICHED).await?;
        let info = stream.consumer_info(names::CONSUMER_LOAD).await?;
        if info.ack_floor.stream_sequence >= total
            && info.num_pending == 0
            && info.num_ack_pending == 0
        {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "{loaders} loaders did not drain {total} events within 600 s (ack floor {}, pending {}, ack pending {}); logs kept in {}",
                info.ack_floor.stream_sequence,
                info.num_pending,
                info.num_ack_pending,
                work.keep().display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drain = started.elapsed();
    let per_loader_cpu: Vec<f64> = cpu(&pids)
        .iter()
        .zip(&loader_before)
        .map(|(after, before)| after - before)
        .collect();
    let nats_cpu = cpu(&nats.pids()).iter().sum::<f64>() - nats_before;
    let mut claims_lost = 0.0;
    let mut takeovers = 0.0;
    for admin in &admin_ports {
        let text = metrics(*admin).await.unwrap_or_default();
        claims_lost += metric_sum(&text, "gong_load_ranges_lost_total");
        takeovers += metric_sum(&text, "gong_load_ranges_taken_over_total");
    }
    drop(children);

    let summary = gong_load::inspect::summary(&stage)?;
    if summary.distinct_events != payloads.len() || summary.duplicate_event_rows != 0 {
        bail!(
            "{loaders} loaders staged {} distinct events of {} with {} duplicate rows; stage and logs kept in {}",
            summary.distinct_events,
            payloads.len(),
            summary.duplicate_event_rows,
            work.keep().display()
        );
    }
    let calls = summary.tables.get("calls");
    Ok(Run {
        loaders,
        rows: summary.distinct_events,
        all_rows: summary.tables.values().map(|table| table.rows).sum(),
        files: calls.map(|table| table.files).unwrap_or(0),
        drain,
        loader_cpu: per_loader_cpu.iter().sum(),
        per_loader_cpu,
        nats_cpu,
        claims_lost,
        takeovers,
    })
}

/// `GET /metrics` on `127.0.0.1:admin_port`.
async fn metrics(admin_port: u16) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", admin_port)).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// Sum of every series of `name` in a Prometheus text.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
