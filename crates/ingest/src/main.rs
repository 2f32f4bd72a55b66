//! `gong-ingest`: see the library's docs. This file is glue only.

use clap::Parser;
use gong_common::{Env, EXIT_CONFIG, EXIT_RUNTIME};

/// Authenticates Gong webhooks and stores them, byte for byte, in NATS JetStream (GONG_RAW).
///
/// Configuration comes from environment variables (see README.md): NATS_URL, ADMIN_ADDR,
/// LOG_FORMAT, RUST_LOG, INGEST_ADDR, GONG_WEBHOOK_SECRETS, GONG_WEBHOOK_URL,
/// GONG_WEBHOOK_URL_TOKENS, INGEST_MAX_BODY_BYTES and the other INGEST_* limits.
#[derive(Parser)]
#[command(name = "gong-ingest", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Dead-letter tools: list, show, redrive, purge (uses NATS_URL).
    Dlq(gong_common::cli::DlqArgs),
}

fn main() {
    let cli = Cli::parse();
    let env = Env::from_process();
    if let Some(Command::Dlq(args)) = cli.command {
        std::process::exit(gong_common::cli::dlq_main(&env, args));
    }
    let config = match gong_ingest::IngestConfig::from_env(&env) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("gong-ingest: {err}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    gong_common::telemetry::init_tracing(config.common.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("gong-ingest: cannot start the async runtime: {err}");
            std::process::exit(EXIT_RUNTIME);
        }
    };
    let outcome = runtime.block_on(async {
        let shutdown = gong_common::shutdown::token_from_signals();
        gong_ingest::run(config, shutdown).await
    });
    if let Err(err) = outcome {
        tracing::error!(error = %anyhow::Error::from(err), "gong-ingest failed");
        std::process::exit(EXIT_RUNTIME);
    }
}
