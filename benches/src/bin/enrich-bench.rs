//! Enrichment-economy benchmark: a burst of raw call events (published on `gong.raw.call` with the
//! headers gong-ingest sets) drained by gong-enrich (in-process `gong_enrich::start`, a real
//! nats-server) against the Gong API double at Gong's default limit of 3 requests/s. Reports Gong
//! requests per call, call ids per request, the time to drain beside its lower bound
//! (requests / rate) and the double's limit violations (must be 0). Beside it, the naive
//! one-call-per-request enricher (`ENRICH_BATCH_SIZE=1`) on a smaller sample, extrapolated.
//!
//! Then a steady low rate (5 calls/s for 60 s), where the 1 s linger closes small batches: with
//! the shared quota state seeded exactly on an even pace through the UTC day, the quota-paced
//! linger (`ENRICH_BATCH_LINGER_MAX`) against pacing off (`ENRICH_BATCH_LINGER_MAX` =
//! `ENRICH_BATCH_LINGER`): requests per call and the delay from publish to enriched.
//!
//! `cargo build --release -p gong-benches && target/release/enrich-bench`
//! (`--quick` for the test suite: 300 calls at a raised rate, 3 s of steady rate with a 2 s
//! longest linger, no assertion on time).

use std::future::IntoFuture;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use futures::future::try_join_all;
use gong_benches::{machine, Latencies};
use gong_common::event::{content_id, EnrichedEvent};
use gong_common::names::{self, headers};
use gong_common::streams::{ensure_streams, StreamKind, StreamSettings};
use gong_common::Env;
use gong_enrich::pacing::Pacing;
use gong_enrich::rate_limit::{QuotaState, QUOTA_KEY};
use gong_testkit::gong_double::{
    GongDouble, GongDoubleConfig, GongStats, DEFAULT_ACCESS_KEY, DEFAULT_ACCESS_KEY_SECRET,
};
use gong_testkit::webhook::call_body;
use gong_testkit::NatsServer;
use tokio_util::sync::CancellationToken;

/// The economy goal of the issue: Gong requests per call.
const GOAL_REQUESTS_PER_CALL: f64 = 0.03;

#[derive(Parser)]
#[command(name = "enrich-bench")]
struct Args {
    /// Calls in the burst drained by the batching enricher.
    #[arg(long, default_value_t = 10_000)]
    calls: usize,
    /// Calls drained by the naive one-call-per-request enricher (then extrapolated to `calls`).
    #[arg(long, default_value_t = 100)]
    naive_calls: usize,
    /// Gong requests per second (the double's limit and the enricher's setting).
    #[arg(long, default_value_t = 3)]
    rate: u32,
    /// Gong requests per day (the double's quota and the enricher's setting).
    #[arg(long, default_value_t = 10_000)]
    daily_quota: u64,
    /// Calls per second of the steady low rate.
    #[arg(long, default_value_t = 5.0)]
    steady_rate: f64,
    /// How long the steady rate lasts.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    steady_for: Duration,
    /// `ENRICH_BATCH_LINGER_MAX` of the paced run (the enricher's default).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    linger_max: Duration,
    /// Tiny run for the test suite: 300 calls (naive 20) at 30 requests/s; 3 s of steady rate
    /// with a 2 s longest linger.
    #[arg(long)]
    quick: bool,
}

/// `ENRICH_BATCH_LINGER` of every run (the enricher's default).
const BASE_LINGER: Duration = Duration::from_secs(1);

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.calls = 300;
        args.naive_calls = 20;
        args.rate = 30;
        args.steady_for = Duration::from_secs(3);
        args.linger_max = Duration::from_secs(2);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(bench(args))
}

/// One drained burst.
struct Drained {
    calls: usize,
    batch_size: usize,
    publish: Duration,
    drain: Duration,
    dead_lettered: u64,
    stats: GongStats,
}

impl Drained {
    fn requests(&self) -> u64 {
        self.stats.call_requests()
    }

    fn requests_per_call(&self) -> f64 {
        self.requests() as f64 / self.calls as f64
    }
}

async fn bench(args: Args) -> anyhow::Result<()> {
    println!("machine: {}", machine());
    println!(
        "enrich-bench: burst of {} calls (naive sample {}), Gong double at {} req/s and {} req/day, date {}",
        args.calls,
        args.naive_calls,
        args.rate,
        args.daily_quota,
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
    println!();
    let batched = drain_burst(&args, args.calls, 100, 0).await?;
    let naive = drain_burst(&args, args.naive_calls, 1, 1_000_000).await?;

    let rate = f64::from(args.rate);
    println!("| enricher | calls | Gong requests | requests/call | call ids/request mean (min–max) | time to drain s | lower bound s (requests / {rate} per s) | drain / lower bound | 429 sent | violations |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (name, run) in [
        ("gong-enrich, ENRICH_BATCH_SIZE=100 (default)", &batched),
        ("naive, ENRICH_BATCH_SIZE=1", &naive),
    ] {
        let ids = &run.stats.call_ids_per_request;
        let mean = ids.iter().sum::<usize>() as f64 / ids.len().max(1) as f64;
        let lower_bound = run.requests() as f64 / rate;
        let drain = run.drain.as_secs_f64();
        println!(
            "| {name} | {} | {} | {:.4} | {mean:.1} ({}–{}) | {drain:.1} | {lower_bound:.1} | {:.2} | {} | {} |",
            run.calls,
            run.requests(),
            run.requests_per_call(),
            ids.iter().min().unwrap_or(&0),
            ids.iter().max().unwrap_or(&0),
            drain / lower_bound.max(1e-9),
            run.stats.rate_limited_sent,
            run.stats.violations(),
        );
    }
    // The naive enricher is rate-bound: its drain time scales with the calls.
    let naive_requests = naive.requests_per_call() * args.calls as f64;
    let naive_seconds = naive.drain.as_secs_f64() / naive.calls as f64 * args.calls as f64;
    let days = (naive_requests / args.daily_quota as f64).ceil();
    println!(
        "| naive, extrapolated to {} calls | {} | {naive_requests:.0} | {:.4} | 1 | ≥ {naive_seconds:.0} ({:.1} h), and {naive_requests:.0} requests need the daily quota ({}) of {days:.0} UTC days | {:.0} | — | — | — |",
        args.calls,
        args.calls,
        naive.requests_per_call(),
        naive_seconds / 3600.0,
        args.daily_quota,
        naive_requests / rate,
    );
    println!();
    println!(
        "burst published in {:.2} s (batched run); dead-lettered: {} batched, {} naive; goal requests/call ≤ {GOAL_REQUESTS_PER_CALL}: {}",
        batched.publish.as_secs_f64(),
        batched.dead_lettered,
        naive.dead_lettered,
        if batched.requests_per_call() <= GOAL_REQUESTS_PER_CALL { "met" } else { "NOT met" },
    );
    println!(
        "batch sizes {} and {}: every request carries that many call ids (extensive, then transcript)",
        batched.batch_size, naive.batch_size
    );
    println!();
    steady_low_rate(&args).await?;
    let violations = batched.stats.violations() + naive.stats.violations();
    if violations > 0 {
        bail!("the Gong double counted {violations} limit violations (must be 0)");
    }
    Ok(())
}

/// Starts a nats-server, the double and one enricher; publishes `calls` raw events at once and
/// waits until every one is enriched (or dead-lettered).
async fn drain_burst(
    args: &Args,
    calls: usize,
    batch_size: usize,
    id_offset: u64,
) -> anyhow::Result<Drained> {
    eprintln!("draining {calls} calls with batch size {batch_size}");
    let stack = Stack::start(args, &[("ENRICH_BATCH_SIZE", batch_size.to_string())], None).await?;

    // The burst: every publish in flight at once (in slices), each acked by JetStream.
    let started = Instant::now();
    let mut sent = 0usize;
    while sent < calls {
        let slice = (calls - sent).min(1000);
        let mut acks = Vec::with_capacity(slice);
        for offset in 0..slice {
            let call_id =
                (6_000_000_000_000_000_000u64 + id_offset + (sent + offset) as u64).to_string();
            acks.push(publish_call(&stack.jetstream, &call_id).await?);
        }
        try_join_all(acks.into_iter().map(IntoFuture::into_future)).await?;
        sent += slice;
    }
    let publish = started.elapsed();

    let lower_bound_secs = (2 * calls).div_ceil(batch_size) as f64 / f64::from(args.rate);
    let deadline = started + Duration::from_secs_f64(lower_bound_secs * 3.0 + 60.0);
    let (_, dead_lettered) = stack.wait_settled(calls, deadline).await?;
    let drain = started.elapsed();
    Ok(Drained {
        calls,
        batch_size,
        publish,
        drain,
        dead_lettered,
        stats: stack.stop().await,
    })
}

/// A nats-server with the three streams, the Gong double at `args`' limits and one in-process
/// enricher.
struct Stack {
    nats: NatsServer,
    gong: GongDouble,
    jetstream: async_nats::jetstream::Context,
    running: gong_enrich::Running,
    shutdown: CancellationToken,
}

impl Stack {
    /// Starts everything; `env` adds to (or overrides) the enricher's settings, and `seed`
    /// writes the shared quota state before the enricher starts.
    async fn start(
        args: &Args,
        env: &[(&str, String)],
        seed: Option<&QuotaState>,
    ) -> anyhow::Result<Stack> {
        let nats = NatsServer::start_new();
        let gong = GongDouble::start(GongDoubleConfig {
            rate_per_second: args.rate,
            daily_quota: args.daily_quota,
            ..GongDoubleConfig::default()
        })
        .await?;
        let jetstream = nats.jetstream().await;
        ensure_streams(
            &jetstream,
            &StreamSettings::default(),
            &[StreamKind::Raw, StreamKind::Enriched, StreamKind::Dlq],
        )
        .await?;
        let mut vars = Env::from_pairs([
            ("NATS_URL", nats.url()),
            ("ADMIN_ADDR", "127.0.0.1:0".to_string()),
            ("GONG_API_BASE_URL", gong.base_url()),
            ("GONG_ACCESS_KEY", DEFAULT_ACCESS_KEY.to_string()),
            (
                "GONG_ACCESS_KEY_SECRET",
                DEFAULT_ACCESS_KEY_SECRET.to_string(),
            ),
            ("GONG_RATE_LIMIT_PER_SECOND", args.rate.to_string()),
            ("GONG_DAILY_QUOTA", args.daily_quota.to_string()),
        ]);
        for (var, value) in env {
            vars.set(*var, value.as_str());
        }
        let config = gong_enrich::EnrichConfig::from_env(&vars).context("enrich config")?;
        if let Some(state) = seed {
            // As rate_limit.rs stores it: the JSON state under one key of the quota bucket.
            gong_enrich::RateLimiter::open(
                &jetstream,
                config.quota.clone(),
                &StreamSettings::default(),
            )
            .await?;
            let kv = jetstream.get_key_value(names::BUCKET_GONG_QUOTA).await?;
            kv.put(QUOTA_KEY, serde_json::to_vec(state)?.into()).await?;
        }
        let shutdown = CancellationToken::new();
        let running = gong_enrich::start(config, shutdown.clone()).await?;
        Ok(Stack {
            nats,
            gong,
            jetstream,
            running,
            shutdown,
        })
    }

    /// Waits until `calls` raw events are enriched or dead-lettered; (enriched, dead-lettered).
    async fn wait_settled(&self, calls: usize, deadline: Instant) -> anyhow::Result<(u64, u64)> {
        let (enriched, dead_lettered) = loop {
            let enriched = messages(&self.jetstream, names::STREAM_ENRICHED).await?;
            let dead_lettered = messages(&self.jetstream, names::STREAM_DLQ).await?;
            if enriched + dead_lettered >= calls as u64 {
                break (enriched, dead_lettered);
            }
            if Instant::now() > deadline {
                bail!(
                    "only {enriched} enriched and {dead_lettered} dead-lettered of {calls} (nats log: {})",
                    self.nats.log_path().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        anyhow::ensure!(
            enriched + dead_lettered == calls as u64,
            "{enriched} enriched + {dead_lettered} dead-lettered != {calls}"
        );
        Ok((enriched, dead_lettered))
    }

    /// Stops the enricher; what the Gong double saw.
    async fn stop(self) -> GongStats {
        self.shutdown.cancel();
        let _ = self.running.task.await;
        self.gong.stats()
    }
}

/// Publishes one raw call event with the headers gong-ingest sets (received-at = now).
async fn publish_call(
    jetstream: &async_nats::jetstream::Context,
    call_id: &str,
) -> anyhow::Result<async_nats::jetstream::context::PublishAckFuture> {
    let body = call_body(call_id, false);
    let event_id = content_id(&body);
    let received_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let mut message_headers = async_nats::HeaderMap::new();
    message_headers.insert(async_nats::header::NATS_MESSAGE_ID, event_id.as_str());
    message_headers.insert(headers::EVENT_ID, event_id.as_str());
    message_headers.insert(headers::RECEIVED_AT, received_at.as_str());
    message_headers.insert(headers::AUTH_MODE, "jwt");
    message_headers.insert(headers::CALL_ID, call_id);
    Ok(jetstream
        .publish_with_headers(names::SUBJECT_RAW_CALL, message_headers, body.into())
        .await?)
}

/// One steady-rate run.
struct Steady {
    calls: usize,
    linger_max: Duration,
    /// Publish (received-at) to stored in GONG_ENRICHED.
    delays: Latencies,
    stats: GongStats,
}

/// The steady low rate, paced and not, from the same seeded quota state.
async fn steady_low_rate(args: &Args) -> anyhow::Result<()> {
    let calls = (args.steady_rate * args.steady_for.as_secs_f64()).round() as usize;
    anyhow::ensure!(calls > 0, "the steady run publishes no call");
    let pacing = Pacing {
        daily_quota: args.daily_quota,
        slack: 0,
        base: BASE_LINGER,
        max: args.linger_max,
    };
    // Exactly on an even pace through the UTC day at the start (the state of a deployment that
    // has spent its share so far), leaving room for the unpaced run's requests.
    let now = chrono::Utc::now();
    let room = 2 * calls as u64 + 10;
    let on_pace = pacing.allowed_by(now.timestamp_millis());
    let spent = on_pace.min(args.daily_quota.saturating_sub(room));
    if spent < on_pace {
        eprintln!("late in the UTC day: seeding {spent} spent, behind the pace ({on_pace})");
    }
    let seed = QuotaState {
        day: now.date_naive().to_string(),
        day_count: spent,
        ..QuotaState::default()
    };
    println!(
        "steady low rate: {calls} calls at {} calls/s ({} s), ENRICH_BATCH_SIZE=100, ENRICH_BATCH_LINGER={}, GONG_DAILY_QUOTA={} (enricher and double), ENRICH_PACE_SLACK=0; quota state seeded with {spent} requests spent at {} (the even pace: {on_pace})",
        args.steady_rate,
        args.steady_for.as_secs_f64(),
        humantime::format_duration(BASE_LINGER),
        args.daily_quota,
        now.format("%H:%M:%S UTC"),
    );
    let paced = steady_run(args, calls, args.linger_max, &seed).await?;
    let unpaced = steady_run(args, calls, BASE_LINGER, &seed).await?;

    println!();
    println!("| enricher, steady {} calls/s | calls | Gong requests | requests/call | call ids/request mean (min–max) | publish → enriched p50 s | p99 s | max s | requests/day if sustained | violations |", args.steady_rate);
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (name, mut run) in [("pacing on", paced), ("pacing off", unpaced)] {
        let ids = &run.stats.call_ids_per_request;
        let mean = ids.iter().sum::<usize>() as f64 / ids.len().max(1) as f64;
        let requests = run.stats.call_requests();
        let per_call = requests as f64 / run.calls as f64;
        println!(
            "| {name}, ENRICH_BATCH_LINGER_MAX={} | {} | {requests} | {per_call:.4} | {mean:.1} ({}–{}) | {:.2} | {:.2} | {:.2} | {:.0} | {} |",
            humantime::format_duration(run.linger_max),
            run.calls,
            ids.iter().min().unwrap_or(&0),
            ids.iter().max().unwrap_or(&0),
            run.delays.quantile_ms(0.5) / 1000.0,
            run.delays.quantile_ms(0.99) / 1000.0,
            run.delays.quantile_ms(1.0) / 1000.0,
            per_call * args.steady_rate * 86_400.0,
            run.stats.violations(),
        );
        if run.stats.violations() > 0 {
            bail!("the Gong double counted limit violations in the steady run ({name})");
        }
    }
    Ok(())
}

/// Publishes `calls` raw events at `args.steady_rate` and waits until every one is enriched.
async fn steady_run(
    args: &Args,
    calls: usize,
    linger_max: Duration,
    seed: &QuotaState,
) -> anyhow::Result<Steady> {
    eprintln!(
        "steady {calls} calls, ENRICH_BATCH_LINGER_MAX={}",
        humantime::format_duration(linger_max)
    );
    let stack = Stack::start(
        args,
        &[
            (
                "ENRICH_BATCH_LINGER",
                humantime::format_duration(BASE_LINGER).to_string(),
            ),
            (
                "ENRICH_BATCH_LINGER_MAX",
                humantime::format_duration(linger_max).to_string(),
            ),
            ("ENRICH_PACE_SLACK", "0".to_string()),
        ],
        Some(seed),
    )
    .await?;
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / args.steady_rate));
    for n in 0..calls {
        ticker.tick().await;
        let call_id = (6_500_000_000_000_000_000u64 + n as u64).to_string();
        publish_call(&stack.jetstream, &call_id).await?.await?;
    }
    // The last batch may linger its longest.
    let deadline = Instant::now() + linger_max + Duration::from_secs(60);
    let (enriched, _) = stack.wait_settled(calls, deadline).await?;
    eprintln!(
        "published and enriched in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    anyhow::ensure!(enriched == calls as u64, "dead letters in the steady run");

    let mut delays = Latencies::default();
    let mut stream = stack.jetstream.get_stream(names::STREAM_ENRICHED).await?;
    let state = stream.info().await?.state.clone();
    for seq in state.first_sequence..=state.last_sequence {
        let message = stream.get_raw_message(seq).await?;
        let event = EnrichedEvent::from_json(&message.payload).context("enriched event")?;
        let stored = gong_enrich::pipeline::to_utc(&message.time);
        delays.record((stored - event.received_at).to_std().unwrap_or_default());
    }
    Ok(Steady {
        calls,
        linger_max,
        delays,
        stats: stack.stop().await,
    })
}

async fn messages(jetstream: &async_nats::jetstream::Context, stream: &str) -> anyhow::Result<u64> {
    let mut stream = jetstream.get_stream(stream).await?;
    Ok(stream.info().await?.state.messages)
}
