//! `gong-enrich`: see the library's docs. This file is glue only.

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use gong_common::{Env, EXIT_CONFIG, EXIT_RUNTIME};
use gong_enrich::{EnrichConfig, ProgressMode, ReplayOptions, ReplayStart, SweepOptions};

/// Enriches raw Gong call webhooks (GONG_RAW, gong.raw.call) through Gong's REST API and
/// publishes enriched call events (GONG_ENRICHED), batching call ids under one shared quota.
/// Also fetches Gong's users (every ENRICH_USERS_REFRESH, default 24h) and the answered
/// scorecards reviewed in ENRICH_SCORECARDS_LOOKBACK (default 7d, every
/// ENRICH_SCORECARDS_REFRESH, default 1h), one replica at a time, and publishes them to
/// gong.enriched.user and gong.enriched.scorecard.
///
/// Configuration comes from environment variables: NATS_URL, ADMIN_ADDR, LOG_FORMAT, RUST_LOG,
/// GONG_API_BASE_URL, GONG_ACCESS_KEY, GONG_ACCESS_KEY_SECRET, GONG_RATE_LIMIT_PER_SECOND,
/// GONG_DAILY_QUOTA, ENRICH_BATCH_SIZE, ENRICH_BATCH_LINGER, ENRICH_BATCH_LINGER_MAX,
/// ENRICH_PACE_SLACK, ENRICH_ACK_WAIT, ENRICH_MAX_DELIVER, ENRICH_MAX_ACK_PENDING,
/// ENRICH_MALFORMED_RETRIES, ENRICH_BACKFILL_DAILY_RESERVE, ENRICH_CONTENT_SELECTOR,
/// ENRICH_SWEEP_INTERVAL, ENRICH_SWEEP_LOOKBACK, ENRICH_TRANSCRIPT_RECHECK, ENRICH_USERS_REFRESH,
/// ENRICH_SCORECARDS_REFRESH, ENRICH_SCORECARDS_LOOKBACK and the other ENRICH_* settings.
#[derive(Parser)]
#[command(name = "gong-enrich", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Re-drive a range of GONG_RAW through enrichment (new event ids, Gong-Replay-Run header),
    /// under the shared quota with backfill priority; exits 0 when the range is done.
    Replay(ReplayArgs),
    /// List Gong's calls started in a window and inject into GONG_RAW those that never reached
    /// it (Gong-Source: sweep), under the shared quota with backfill priority, one sweep at a
    /// time; resumes an unfinished sweep first. Last line: `sweep: listed N, present M,
    /// injected K`.
    Sweep(SweepArgs),
    /// Dead-letter tools: list, show, redrive, purge (uses NATS_URL).
    Dlq(gong_common::cli::DlqArgs),
}

#[derive(Args)]
struct SweepArgs {
    /// Calls started at or after this time: RFC 3339, or a duration before now (72h, 30d).
    #[arg(long, value_name = "T", value_parser = parse_time_or_ago)]
    since: DateTime<Utc>,
    /// Calls started before this time (default now): RFC 3339, or a duration before now.
    #[arg(long, value_name = "T", value_parser = parse_time_or_ago)]
    until: Option<DateTime<Utc>>,
    /// List and count (this spends listing requests); publish nothing, write no checkpoint.
    #[arg(long)]
    dry_run: bool,
}

/// RFC 3339, or a duration before now (`72h`, `30d`).
fn parse_time_or_ago(raw: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(time) = DateTime::parse_from_rfc3339(raw) {
        return Ok(time.with_timezone(&Utc));
    }
    let ago = humantime::parse_duration(raw).map_err(|_| {
        format!("expected an RFC 3339 time such as 2024-05-01T00:00:00Z or a duration such as 72h or 30d: {raw}")
    })?;
    chrono::Duration::from_std(ago)
        .ok()
        .and_then(|ago| Utc::now().checked_sub_signed(ago))
        .ok_or_else(|| format!("{raw} before now is out of range"))
}

#[derive(Args)]
#[group(id = "start", required = true, multiple = false)]
struct StartArgs {
    /// First GONG_RAW stream sequence to replay.
    #[arg(long, value_name = "N")]
    from_seq: Option<u64>,
    /// Replay events stored at or after this time (RFC 3339).
    #[arg(long, value_name = "RFC3339", value_parser = parse_time)]
    since: Option<DateTime<Utc>>,
}

impl StartArgs {
    /// Where the range starts (clap's group requires exactly one of the two options).
    fn start(&self) -> ReplayStart {
        match self.since {
            Some(since) => ReplayStart::Time(since),
            None => ReplayStart::Sequence(self.from_seq.unwrap_or(1)),
        }
    }
}

#[derive(Args)]
struct ReplayArgs {
    #[command(flatten)]
    start: StartArgs,
    /// Stop at events stored after this time (RFC 3339).
    #[arg(long, value_name = "RFC3339", value_parser = parse_time)]
    until: Option<DateTime<Utc>>,
    /// Only replay events of this call id.
    #[arg(long, value_name = "ID")]
    call_id: Option<String>,
    /// Print how many events the range holds; call nothing, publish nothing.
    #[arg(long)]
    dry_run: bool,
}

fn parse_time(raw: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(raw)
        .map(|time| time.with_timezone(&Utc))
        .map_err(|err| format!("expected an RFC 3339 time such as 2024-05-01T00:00:00Z: {err}"))
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // --help and --version print to stdout and succeed; usage errors exit 64 (EX_USAGE).
            let code = if err.use_stderr() { EXIT_CONFIG } else { 0 };
            let _ = err.print();
            std::process::exit(code);
        }
    };
    let env = Env::from_process();
    let (replay, sweep) = match cli.command {
        Some(Command::Dlq(args)) => std::process::exit(gong_common::cli::dlq_main(&env, args)),
        Some(Command::Replay(args)) => (Some(args), None),
        Some(Command::Sweep(args)) => (None, Some(args)),
        None => (None, None),
    };
    let dry_run = replay.as_ref().is_some_and(|args| args.dry_run);
    let loaded = if dry_run {
        EnrichConfig::from_env_without_credentials(&env)
    } else {
        EnrichConfig::from_env(&env)
    };
    let config = match loaded {
        Ok(config) => config,
        Err(err) => {
            eprintln!("gong-enrich: {err}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    gong_common::telemetry::init_tracing(config.common.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("gong-enrich: cannot start the async runtime: {err}");
            std::process::exit(EXIT_RUNTIME);
        }
    };
    let outcome = runtime.block_on(async {
        let shutdown = gong_common::shutdown::token_from_signals();
        if let Some(args) = sweep {
            let options = SweepOptions {
                since: args.since,
                until: args.until,
                dry_run: args.dry_run,
                progress: ProgressMode::Auto,
            };
            return gong_enrich::sweep(config, options, shutdown)
                .await
                .map(|summary| {
                    if args.dry_run {
                        println!("dry run: would inject {}", summary.would_inject);
                    } else if summary.resumed {
                        println!("resumed an unfinished sweep; the counts include its earlier pages");
                    }
                    println!(
                        "sweep: listed {}, present {}, injected {}",
                        summary.listed, summary.present, summary.injected
                    );
                });
        }
        match replay {
            None => gong_enrich::run(config, shutdown).await,
            Some(args) => {
                let options = ReplayOptions {
                    start: args.start.start(),
                    until: args.until,
                    call_id: args.call_id,
                    dry_run: args.dry_run,
                    progress: ProgressMode::Auto,
                    run_id: None,
                };
                gong_enrich::replay(config, options, shutdown)
                    .await
                    .map(|summary| {
                        if dry_run {
                            println!("{} events in range", summary.in_range);
                        } else {
                            println!(
                                "replay {} done: {} in range, {} published, {} not found, {} invalid, {} failed",
                                summary.run_id,
                                summary.in_range,
                                summary.published,
                                summary.not_found,
                                summary.invalid,
                                summary.failed
                            );
                        }
                    })
            }
        }
    });
    if let Err(err) = outcome {
        tracing::error!(error = %anyhow::Error::from(err), "gong-enrich failed");
        std::process::exit(EXIT_RUNTIME);
    }
}
