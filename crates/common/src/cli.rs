//! Command-line pieces shared by the binaries: the dead-letter tools (`<binary> dlq ...`).

use clap::{Args, Subcommand};

use crate::config::CommonConfig;
use crate::dlq;
use crate::names::Stage;

/// Inspect and act on `GONG_DLQ` (events that need a human).
#[derive(Debug, Args)]
pub struct DlqArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: DlqAction,
}

/// Dead-letter actions.
#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// List dead letters (sequence, time, stage, reason, call id), oldest first.
    List {
        /// Only this stage's dead letters (ingest, enrich, load).
        #[arg(long, value_parser = parse_stage)]
        stage: Option<Stage>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter: headers and payload.
    Show {
        /// Sequence in GONG_DLQ.
        seq: u64,
    },
    /// Send dead letters back to the stage that failed, then delete them from GONG_DLQ.
    Redrive {
        /// Sequences to redrive.
        #[arg(required_unless_present = "all")]
        seq: Vec<u64>,
        /// Redrive every dead letter (optionally of one --stage).
        #[arg(long)]
        all: bool,
        /// With --all: only this stage's dead letters.
        #[arg(long, value_parser = parse_stage)]
        stage: Option<Stage>,
    },
    /// Delete dead letters for good.
    Purge {
        /// Only this sequence.
        #[arg(long, conflicts_with_all = ["stage", "all"])]
        seq: Option<u64>,
        /// Only this stage's dead letters.
        #[arg(long, value_parser = parse_stage, conflicts_with = "all")]
        stage: Option<Stage>,
        /// Everything (required when neither --seq nor --stage is given).
        #[arg(long)]
        all: bool,
    },
}

fn parse_stage(raw: &str) -> Result<Stage, String> {
    Stage::parse(raw).ok_or_else(|| "expected ingest, enrich or load".to_string())
}

/// A dead-letter command failed.
#[derive(Debug, thiserror::Error)]
pub enum DlqCommandError {
    /// NATS could not be reached.
    #[error(transparent)]
    Connect(#[from] crate::nats::ConnectError),
    /// The tool failed.
    #[error(transparent)]
    Tool(#[from] dlq::ToolError),
    /// Refused: the command would purge everything without `--all`.
    #[error("refusing to purge everything without --all")]
    PurgeNeedsAll,
}

/// Runs a dead-letter command against `config.nats_url`, printing to stdout.
pub async fn run_dlq(config: &CommonConfig, args: DlqArgs) -> Result<(), DlqCommandError> {
    let client = crate::nats::connect(config, "gong-dlq-tool").await?;
    let jetstream = crate::nats::jetstream_context(client, config.nats_request_timeout, 256);
    match args.action {
        DlqAction::List { stage, limit, json } => {
            let entries = dlq::list(&jetstream, stage, limit).await?;
            if json {
                for entry in &entries {
                    println!("{}", serde_json::to_string(entry).unwrap_or_default());
                }
            } else {
                println!(
                    "{:>8}  {:<30}  {:<7}  {:<22}  {:<20}  detail",
                    "seq", "time", "stage", "reason", "call_id"
                );
                for entry in &entries {
                    println!(
                        "{:>8}  {:<30}  {:<7}  {:<22}  {:<20}  {}",
                        entry.seq,
                        entry.time,
                        entry.stage,
                        entry.reason,
                        entry.call_id,
                        entry.detail
                    );
                }
                println!("{} dead letter(s)", entries.len());
            }
        }
        DlqAction::Show { seq } => {
            let message = dlq::show(&jetstream, seq).await?;
            println!("seq: {}", message.sequence);
            println!("subject: {}", message.subject);
            println!("time: {}", message.time);
            for (name, values) in message.headers.iter() {
                for value in values {
                    println!("{}: {}", name.as_ref() as &str, value.as_str());
                }
            }
            println!();
            match serde_json::from_slice::<serde_json::Value>(&message.payload) {
                Ok(value) => println!(
                    "{}",
                    serde_json::to_string_pretty(&value).unwrap_or_default()
                ),
                Err(_) => println!("{}", String::from_utf8_lossy(&message.payload)),
            }
        }
        DlqAction::Redrive { seq, all, stage } => {
            let targets: Vec<u64> = if all {
                dlq::list(&jetstream, stage, usize::MAX)
                    .await?
                    .into_iter()
                    .map(|entry| entry.seq)
                    .collect()
            } else {
                seq
            };
            for seq in targets {
                let new_seq = dlq::redrive(&jetstream, seq).await?;
                println!("redriven dlq_seq={seq} new_stream_seq={new_seq}");
            }
        }
        DlqAction::Purge { seq, stage, all } => {
            if seq.is_none() && stage.is_none() && !all {
                return Err(DlqCommandError::PurgeNeedsAll);
            }
            let purged = dlq::purge(&jetstream, seq, stage).await?;
            println!("purged {purged} dead letter(s)");
        }
    }
    Ok(())
}

/// Entry point for `<binary> dlq ...`: reads the shared config, runs the command, and returns
/// the process exit code (64 for bad configuration, 1 for a failure).
pub fn dlq_main(env: &crate::Env, args: DlqArgs) -> i32 {
    let config = match CommonConfig::from_env(env) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{err}");
            return crate::EXIT_CONFIG;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cannot start the async runtime: {err}");
            return crate::EXIT_RUNTIME;
        }
    };
    match runtime.block_on(run_dlq(&config, args)) {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("dlq: {err}");
            crate::EXIT_RUNTIME
        }
    }
}
