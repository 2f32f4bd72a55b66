//! Sweep benchmark: a history backfill beside live webhooks, against the Gong API double at
//! Gong's default limits (3 requests/s, 10,000/day) with a real nats-server.
//!
//! 1. **Live alone** (the ceiling): webhooks' raw events published at `--live-rate` for
//!    `--live-for`, drained by `gong_enrich::start` (defaults); delay from publish to enriched.
//! 2. **Backfill + live**: the double holds a `--history`-call history over `--days`;
//!    `gong_enrich::sweep` (the `gong-enrich sweep` command) lists and injects it while the same
//!    webhooks keep coming; the same live delay (p99 wanted within 2× of run 1), Gong requests,
//!    429s (none wanted).
//! 3. **Backfill alone**: the same history swept and enriched with no webhooks: Gong requests per
//!    100 calls of a backfill (wanted ≤ 2.5: listing + transcripts + anything else), and per 100
//!    listed calls of a sweep whose calls are all present (wanted ≤ 1).
//!
//! `cargo build --release -p gong-benches && target/release/sweep-bench`
//! (`--quick` for the test suite: a 300-call history at a raised rate, 3 s of webhooks, no
//! assertion on time).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::Utc;
use clap::Parser;
use gong_benches::{machine, Latencies};
use gong_common::event::{content_id, EnrichedEvent};
use gong_common::names::{self, headers};
use gong_common::streams::{ensure_streams, StreamKind, StreamSettings};
use gong_common::Env;
use gong_enrich::{ProgressMode, SweepOptions, SweepSummary};
use gong_testkit::gong_double::{
    GongDouble, GongDoubleConfig, GongStats, DEFAULT_ACCESS_KEY, DEFAULT_ACCESS_KEY_SECRET,
};
use gong_testkit::webhook::call_body;
use gong_testkit::NatsServer;
use tokio_util::sync::CancellationToken;

/// First call id of the history; live webhooks count up from [`LIVE_FIRST_ID`].
const HISTORY_FIRST_ID: u64 = 8_000_000_000_000_000_000;
const LIVE_FIRST_ID: u64 = 6_600_000_000_000_000_000;

#[derive(Parser)]
#[command(name = "sweep-bench")]
struct Args {
    /// Calls in the company's history (what the backfill lists and injects).
    #[arg(long, default_value_t = 10_000)]
    history: u64,
    /// Days the history spans, ending now (the swept window).
    #[arg(long, default_value_t = 30)]
    days: i64,
    /// Gong requests per second (the double's limit and the enricher's setting).
    #[arg(long, default_value_t = 3)]
    rate: u32,
    /// Gong requests per day (the double's quota and the enricher's setting).
    #[arg(long, default_value_t = 10_000)]
    daily_quota: u64,
    /// Live webhooks per second (0.5/s is 43,200 calls a day, beyond what Gong's default quota
    /// enriches; each arrives alone in its 1 s batch and costs 2 requests, 1 request/s in all).
    #[arg(long, default_value_t = 0.5)]
    live_rate: f64,
    /// How long the webhooks come in run 1 (in run 2: as long as the backfill, at least this).
    #[arg(long, default_value = "240s", value_parser = humantime::parse_duration)]
    live_for: Duration,
    /// Tiny run for the test suite: a 300-call history at 30 requests/s, 3 s of webhooks.
    #[arg(long)]
    quick: bool,
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.history = 300;
        args.rate = 30;
        args.live_rate = 5.0;
        args.live_for = Duration::from_secs(3);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(bench(args))
}

/// One run's live webhooks.
struct Live {
    calls: usize,
    delays: Latencies,
}

async fn bench(args: Args) -> anyhow::Result<()> {
    println!("machine: {}", machine());
    println!(
        "sweep-bench: history of {} calls over {} days, live webhooks at {}/s, Gong double at {} req/s and {} req/day, date {}",
        args.history,
        args.days,
        args.live_rate,
        args.rate,
        args.daily_quota,
        Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
    println!();

    // 1. Live alone.
    eprintln!("run 1: live webhooks alone");
    let stack = Stack::start(&args, false).await?;
    let ids = publish_live(&stack, &args, args.live_for, None).await?;
    stack.wait_enriched(ids.len() as u64, None).await?;
    let mut alone = stack.live(&ids).await?;
    let alone_stats = stack.stop().await;

    // 2. Backfill beside live webhooks.
    eprintln!(
        "run 2: backfill of {} calls beside live webhooks",
        args.history
    );
    let stack = Stack::start(&args, true).await?;
    let started = Instant::now();
    let sweeping = tokio::spawn(stack.sweep(&args));
    let done = CancellationToken::new();
    let publishing = publish_live(&stack, &args, args.live_for, Some(done.clone()));
    let waiting = async {
        let summary = sweeping.await;
        done.cancel();
        summary
    };
    let (ids, backfill) = tokio::join!(publishing, waiting);
    let ids = ids?;
    let backfill = backfill.context("sweep task")??;
    let backfill_secs = started.elapsed().as_secs_f64();
    stack
        .wait_enriched(args.history + ids.len() as u64, None)
        .await?;
    let drained_secs = started.elapsed().as_secs_f64();
    let mut beside = stack.live(&ids).await?;
    let beside_stats = stack.stop().await;

    // 3. Backfill alone.
    eprintln!("run 3: backfill of {} calls alone", args.history);
    let stack = Stack::start(&args, true).await?;
    let started = Instant::now();
    let alone_backfill = stack.sweep(&args).await?;
    stack.wait_enriched(args.history, None).await?;
    let alone_backfill_secs = started.elapsed().as_secs_f64();
    let before_again = stack.gong.stats();
    let present_sweep = stack.sweep(&args).await?;
    let alone_backfill_stats = stack.stop().await;

    println!("| run | live webhooks | live publish → enriched p50 s | p99 s | max s | Gong requests | 429 sent | violations |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let row = |name: &str, live: &mut Live, stats: &GongStats| {
        println!(
            "| {name} | {} | {:.2} | {:.2} | {:.2} | {} | {} | {} |",
            live.calls,
            live.delays.quantile_ms(0.5) / 1000.0,
            live.delays.quantile_ms(0.99) / 1000.0,
            live.delays.quantile_ms(1.0) / 1000.0,
            stats.call_requests(),
            stats.rate_limited_sent,
            stats.violations()
        );
    };
    row("1. live alone", &mut alone, &alone_stats);
    row(
        &format!("2. live beside a backfill of {} calls", args.history),
        &mut beside,
        &beside_stats,
    );
    let ratio = beside.delays.quantile_ms(0.99) / alone.delays.quantile_ms(0.99);
    println!();
    println!(
        "live p99 beside the backfill / alone: {ratio:.2} (wanted ≤ 2): {}",
        if ratio <= 2.0 { "met" } else { "NOT met" }
    );
    println!(
        "run 2: backfill listed and injected in {backfill_secs:.1} s, everything enriched after {drained_secs:.1} s; {} listing pages; sweep: listed {}, present {}, injected {}",
        backfill.pages, backfill.listed, backfill.present, backfill.injected
    );
    println!();
    let backfill_requests = alone_backfill_stats.call_requests()
        - present_requests(&alone_backfill_stats, &before_again);
    let present_only = present_requests(&alone_backfill_stats, &before_again);
    let per_100 = |requests: u64, calls: u64| requests as f64 * 100.0 / calls.max(1) as f64;
    println!("| sweep | calls listed | present | injected | Gong requests (listing + transcripts + extensive) | requests per 100 calls | wanted | time s |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| backfill (none present), run 3 | {} | {} | {} | {backfill_requests} ({} + {} + {}) | {:.2} | ≤ 2.5 | {alone_backfill_secs:.1} |",
        alone_backfill.listed,
        alone_backfill.present,
        alone_backfill.injected,
        before_again.list_requests(),
        before_again.requests_to(gong_testkit::gong_double::TRANSCRIPT_PATH),
        before_again.requests_to(gong_testkit::gong_double::EXTENSIVE_PATH) - before_again.list_requests(),
        per_100(backfill_requests, alone_backfill.listed),
    );
    println!(
        "| all present, run 3 | {} | {} | {} | {present_only} | {:.2} | ≤ 1 | — |",
        present_sweep.listed,
        present_sweep.present,
        present_sweep.injected,
        per_100(present_only, present_sweep.listed),
    );
    let days_of_quota = 100_000.0 / 100.0 * per_100(backfill_requests, alone_backfill.listed)
        / (args.daily_quota as f64 * 0.9);
    println!();
    println!(
        "100,000 calls at this cost: {:.0} requests, {:.2} of a day's quota less the 10% reserve; at the backfill's share of the rate ({} of {} slots per 1.1 s) about {:.0} min",
        1000.0 * per_100(backfill_requests, alone_backfill.listed),
        days_of_quota,
        args.rate.saturating_sub(2).max(1),
        args.rate,
        1000.0 * per_100(backfill_requests, alone_backfill.listed) * 1.1
            / f64::from(args.rate.saturating_sub(2).max(1))
            / 60.0,
    );

    let violations = [&alone_stats, &beside_stats, &alone_backfill_stats]
        .iter()
        .map(|stats| stats.violations() + stats.rate_limited_sent)
        .sum::<u64>();
    if violations > 0 {
        bail!("the Gong double sent 429s or counted violations: {violations}");
    }
    for (name, summary) in [("run 2", &backfill), ("run 3", &alone_backfill)] {
        if summary.injected != args.history {
            bail!(
                "{name}: {} of {} calls injected",
                summary.injected,
                args.history
            );
        }
    }
    if present_sweep.injected > 0 {
        bail!("a sweep of a window already present injected calls again");
    }
    Ok(())
}

/// The requests of the last sweep (all present): the difference of the two snapshots.
fn present_requests(after: &GongStats, before: &GongStats) -> u64 {
    after.call_requests() - before.call_requests()
}

/// A nats-server with the three streams, the double (with the history when asked) and one
/// enricher (no continuous sweep: the runs sweep by command).
struct Stack {
    nats: NatsServer,
    gong: GongDouble,
    jetstream: async_nats::jetstream::Context,
    config: gong_enrich::EnrichConfig,
    running: gong_enrich::Running,
    shutdown: CancellationToken,
}

impl Stack {
    async fn start(args: &Args, with_history: bool) -> anyhow::Result<Stack> {
        let nats = NatsServer::start_new();
        let gong = GongDouble::start(GongDoubleConfig {
            rate_per_second: args.rate,
            daily_quota: args.daily_quota,
            ..GongDoubleConfig::default()
        })
        .await?;
        if with_history {
            let now = Utc::now();
            let span = chrono::Duration::days(args.days);
            let step = span.num_milliseconds() / args.history.max(1) as i64;
            gong.add_calls((0..args.history).map(|n| {
                (
                    (HISTORY_FIRST_ID + n).to_string(),
                    now - span + chrono::Duration::milliseconds(step * n as i64),
                )
            }));
        }
        let jetstream = nats.jetstream().await;
        ensure_streams(&jetstream, &StreamSettings::default(), &StreamKind::ALL).await?;
        let vars = Env::from_pairs([
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
            ("ENRICH_SWEEP_INTERVAL", "0".to_string()),
        ]);
        let config = gong_enrich::EnrichConfig::from_env(&vars).context("enrich config")?;
        let shutdown = CancellationToken::new();
        let running = gong_enrich::start(config.clone(), shutdown.clone()).await?;
        Ok(Stack {
            nats,
            gong,
            jetstream,
            config,
            running,
            shutdown,
        })
    }

    /// `gong-enrich sweep` over the history's window (a future that owns what it needs).
    fn sweep(
        &self,
        args: &Args,
    ) -> impl std::future::Future<Output = anyhow::Result<SweepSummary>> + Send + 'static {
        let config = self.config.clone();
        let now = Utc::now();
        let options = SweepOptions {
            since: now - chrono::Duration::days(args.days) - chrono::Duration::hours(1),
            until: Some(now + chrono::Duration::hours(1)),
            dry_run: false,
            progress: ProgressMode::Quiet,
        };
        async move {
            gong_enrich::sweep(config, options, CancellationToken::new())
                .await
                .context("sweep")
        }
    }

    /// Waits until GONG_ENRICHED holds `count` events (no dead letters expected).
    async fn wait_enriched(&self, count: u64, deadline: Option<Instant>) -> anyhow::Result<()> {
        let deadline = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(1800));
        loop {
            let enriched = messages(&self.jetstream, names::STREAM_ENRICHED).await?;
            let dead = messages(&self.jetstream, names::STREAM_DLQ).await?;
            if dead > 0 {
                bail!("{dead} dead letters");
            }
            if enriched >= count {
                anyhow::ensure!(
                    enriched == count,
                    "{enriched} enriched, {count} expected: a call enriched twice"
                );
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "only {enriched} of {count} enriched (nats log: {})",
                    self.nats.log_path().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Delays of the live calls `ids`: stored in GONG_ENRICHED minus received-at.
    async fn live(&self, ids: &[String]) -> anyhow::Result<Live> {
        let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
        let mut delays = Latencies::default();
        let mut stream = self.jetstream.get_stream(names::STREAM_ENRICHED).await?;
        let state = stream.info().await?.state.clone();
        for seq in state.first_sequence..=state.last_sequence {
            let message = stream.get_raw_message(seq).await?;
            let event = EnrichedEvent::from_json(&message.payload).context("enriched event")?;
            if event.call_id().is_some_and(|id| wanted.contains(id)) {
                let stored = gong_enrich::pipeline::to_utc(&message.time);
                delays.record((stored - event.received_at).to_std().unwrap_or_default());
            }
        }
        anyhow::ensure!(
            delays.len() == ids.len(),
            "{} of {} live calls enriched",
            delays.len(),
            ids.len()
        );
        Ok(Live {
            calls: ids.len(),
            delays,
        })
    }

    async fn stop(self) -> GongStats {
        self.shutdown.cancel();
        let _ = self.running.task.await;
        self.gong.stats()
    }
}

/// Publishes live webhooks' raw events at `args.live_rate` for `at_least`, and on until `until`
/// is cancelled when given; returns their call ids.
async fn publish_live(
    stack: &Stack,
    args: &Args,
    at_least: Duration,
    until: Option<CancellationToken>,
) -> anyhow::Result<Vec<String>> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / args.live_rate));
    let mut ids = Vec::new();
    loop {
        ticker.tick().await;
        let elapsed = started.elapsed();
        let more = elapsed < at_least || until.as_ref().is_some_and(|token| !token.is_cancelled());
        if !more {
            return Ok(ids);
        }
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let call_id = (LIVE_FIRST_ID + n).to_string();
        publish_call(&stack.jetstream, &call_id).await?;
        ids.push(call_id);
    }
}

/// Publishes one raw call event with the headers gong-ingest sets (received-at = now).
async fn publish_call(
    jetstream: &async_nats::jetstream::Context,
    call_id: &str,
) -> anyhow::Result<()> {
    let body = call_body(call_id, false);
    let event_id = content_id(&body);
    let received_at = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let mut message_headers = async_nats::HeaderMap::new();
    message_headers.insert(async_nats::header::NATS_MESSAGE_ID, event_id.as_str());
    message_headers.insert(headers::EVENT_ID, event_id.as_str());
    message_headers.insert(headers::RECEIVED_AT, received_at.as_str());
    message_headers.insert(headers::AUTH_MODE, "jwt");
    message_headers.insert(headers::CALL_ID, call_id);
    jetstream
        .publish_with_headers(names::SUBJECT_RAW_CALL, message_headers, body.into())
        .await?
        .await?;
    Ok(())
}

async fn messages(jetstream: &async_nats::jetstream::Context, stream: &str) -> anyhow::Result<u64> {
    let mut stream = jetstream.get_stream(stream).await?;
    Ok(stream.info().await?.state.messages)
}
