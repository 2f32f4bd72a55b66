//! `gong-load`: see the library's docs. This file is glue only.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use gong_common::{Env, EXIT_CONFIG, EXIT_RUNTIME};

/// Loads enriched Gong calls from NATS JetStream (GONG_ENRICHED) into typed Parquet tables on a
/// stage (local directory, S3, GCS or Azure) for Snowflake.
///
/// Configuration comes from environment variables: NATS_URL, ADMIN_ADDR, LOG_FORMAT, RUST_LOG,
/// STAGE_URL (file:///path, s3://bucket/prefix, gs://..., az://...; default ./stage),
/// LOAD_FLUSH_MAX_ROWS, LOAD_FLUSH_MAX_BYTES, LOAD_FLUSH_MAX_AGE (e.g. 60s), LOAD_ROW_GROUP_ROWS,
/// LOAD_MAX_ACK_PENDING, LOAD_ACK_WAIT, LOAD_SPOOL_DIR, AWS_* (S3 credentials and endpoint), and
/// optionally SNOWFLAKE_ACCOUNT, SNOWFLAKE_USER, SNOWFLAKE_PRIVATE_KEY_PATH, SNOWFLAKE_PIPE
/// (with {TABLE}) for Snowpipe notifications, SNOWFLAKE_VERIFY_TIMEOUT (default 1h) and
/// SNOWFLAKE_VERIFY_POLL (default 30s) for following each file's load.
#[derive(Parser)]
#[command(name = "gong-load", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the loader (the default).
    Run,
    /// Print the Snowflake setup SQL (file format, stage, tables, pipes, views).
    SnowflakeSql,
    /// List the staged files Snowpipe was told about and their load state (uses NATS_URL).
    SnowflakeStatus {
        /// Only files staged at or after this time: RFC 3339, or a duration before now (24h).
        #[arg(long)]
        since: Option<String>,
    },
    /// Rebuild the staged files of recorded ranges from GONG_ENRICHED, then exit.
    Replay {
        /// First GONG_ENRICHED sequence to rebuild.
        #[arg(long, conflicts_with = "since")]
        from_seq: Option<u64>,
        /// First event time to rebuild (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Last event time to rebuild (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        /// Write files that are already on the stage again (after a fix to how rows are
        /// built). By default they are kept: Snowflake would load a file with new bytes under
        /// an old name again.
        #[arg(long)]
        overwrite: bool,
    },
    /// Dead-letter tools: list, show, redrive, purge (uses NATS_URL).
    Dlq(gong_common::cli::DlqArgs),
    /// Print schema and first rows of staged Parquet files (a file or a directory).
    Inspect {
        /// A .parquet file or a directory searched recursively.
        path: PathBuf,
        /// Rows to print per file.
        #[arg(long, default_value_t = 10)]
        rows: usize,
        /// Print a summary instead: files and rows per table, distinct calls, duplicates, samples.
        #[arg(long)]
        summary: bool,
        /// With --summary: print it as one JSON object.
        #[arg(long, requires = "summary")]
        json: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::SnowflakeSql => {
            print!("{}", gong_load::snowflake::setup_sql());
        }
        Command::Inspect {
            path,
            summary: true,
            json,
            ..
        } => match gong_load::inspect::summary(&path) {
            Ok(summary) if json => {
                println!("{}", serde_json::to_string(&summary).unwrap_or_default());
            }
            Ok(summary) => {
                gong_load::inspect::print_summary(&summary, &mut std::io::stdout().lock())
            }
            Err(err) => {
                eprintln!("gong-load: {err}");
                std::process::exit(EXIT_RUNTIME);
            }
        },
        Command::Inspect { path, rows, .. } => {
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            if let Err(err) = gong_load::inspect::inspect(&path, rows, &mut out) {
                eprintln!("gong-load: {err}");
                std::process::exit(EXIT_RUNTIME);
            }
        }
        Command::Run => run(),
        Command::SnowflakeStatus { since } => snowflake_status(since),
        Command::Dlq(args) => {
            std::process::exit(gong_common::cli::dlq_main(&Env::from_process(), args));
        }
        Command::Replay {
            from_seq,
            since,
            until,
            overwrite,
        } => replay(from_seq, since, until, overwrite),
    }
}

fn load_config() -> gong_load::LoadConfig {
    let env = Env::from_process();
    match gong_load::LoadConfig::from_env(&env) {
        Ok(config) => {
            gong_common::telemetry::init_tracing(config.common.log_format);
            config
        }
        Err(err) => {
            eprintln!("gong-load: {err}");
            std::process::exit(EXIT_CONFIG);
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("gong-load: cannot start the async runtime: {err}");
            std::process::exit(EXIT_RUNTIME);
        }
    }
}

fn run() {
    let config = load_config();
    let outcome = runtime().block_on(async {
        let shutdown = gong_common::shutdown::token_from_signals();
        gong_load::run(config, shutdown).await
    });
    if let Err(err) = outcome {
        tracing::error!(error = %anyhow::Error::from(err), "gong-load failed");
        std::process::exit(EXIT_RUNTIME);
    }
}

fn snowflake_status(since: Option<String>) {
    let since = since.map(|raw| {
        gong_load::verify::parse_since(&raw, chrono::Utc::now()).unwrap_or_else(|reason| {
            eprintln!("gong-load: --since: {reason}");
            std::process::exit(EXIT_CONFIG);
        })
    });
    let config = load_config();
    let outcome = runtime().block_on(async {
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        gong_load::verify::snowflake_status(&config, since, &mut out).await
    });
    if let Err(err) = outcome {
        eprintln!("gong-load: {err}");
        std::process::exit(EXIT_RUNTIME);
    }
}

fn parse_time(flag: &str, raw: Option<String>) -> Option<chrono::DateTime<chrono::Utc>> {
    let raw = raw?;
    match chrono::DateTime::parse_from_rfc3339(&raw) {
        Ok(time) => Some(time.with_timezone(&chrono::Utc)),
        Err(err) => {
            eprintln!("gong-load: {flag} must be an RFC 3339 time: {err}");
            std::process::exit(EXIT_CONFIG);
        }
    }
}

fn replay(from_seq: Option<u64>, since: Option<String>, until: Option<String>, overwrite: bool) {
    let window = gong_load::replay::ReplayWindow {
        from_seq,
        since: parse_time("--since", since),
        until: parse_time("--until", until),
        existing: if overwrite {
            gong_load::range_writer::Existing::Overwrite
        } else {
            gong_load::range_writer::Existing::Keep
        },
    };
    if window.from_seq.is_none() && window.since.is_none() {
        eprintln!("gong-load: replay needs --from-seq N or --since RFC3339");
        std::process::exit(EXIT_CONFIG);
    }
    let config = load_config();
    let terminal = std::io::stderr().is_terminal();
    let outcome = runtime().block_on(async {
        let shutdown = gong_common::shutdown::token_from_signals();
        let bar = terminal.then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} replay [{bar:40}] {pos}/{len} ranges {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        });
        let result = gong_load::replay::replay(config, window, shutdown, |progress| match &bar {
            Some(bar) => {
                bar.set_length(progress.total as u64);
                bar.set_position(progress.done as u64);
                bar.set_message(format!("{}..={}", progress.first, progress.last));
            }
            None => {
                if progress.done % 10 == 0 || progress.done == progress.total {
                    tracing::info!(
                        done = progress.done,
                        total = progress.total,
                        first = progress.first,
                        last = progress.last,
                        "replay progress"
                    );
                }
            }
        })
        .await;
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        result
    });
    match outcome {
        Ok(summary) => {
            eprintln!(
                "gong-load: replayed {} ranges ({} files written, {} already on the stage kept, {} events) for sequences {}..={}; {} later sequences are left to the live loader",
                summary.ranges, summary.files, summary.kept, summary.events, summary.from_seq, summary.to_seq, summary.left_to_live
            );
            if summary.expired > 0 {
                eprintln!(
                    "gong-load: {} ranges were skipped: part of their events expired from GONG_ENRICHED, their staged files are left as they are",
                    summary.expired
                );
            }
        }
        Err(err) => {
            tracing::error!(error = %anyhow::Error::from(err), "replay failed");
            std::process::exit(EXIT_RUNTIME);
        }
    }
}
