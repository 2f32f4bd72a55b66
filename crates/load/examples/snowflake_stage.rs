//! Writes the stage the offline Snowflake check loads (`tests/snowflake/check.sh`), with the
//! real gong-load: starts a nats-server (testkit), publishes the fixture events of
//! `tests/snowflake/fixtures.py` on their GONG_ENRICHED subjects, runs the loader until every
//! message is acknowledged (so every file is durable), and stops it.
//!
//! Usage: `cargo run -p gong-load --example snowflake_stage -- <events.jsonl> <stage dir>`
//!
//! Each input line is `{"subject", "msg_id", "event"}` (a call event, published as given),
//! `{"subject", "fetched_at", "user"}` or `{"subject", "fetched_at", "scorecard"}` (built with
//! `EnrichedUser::new` / `EnrichedScorecard::new`, as gong-enrich builds them, `Nats-Msg-Id` =
//! their event id), or `{"subject", "msg_id", "payload"}` (published as given).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use gong_common::event::{EnrichedEvent, EnrichedScorecard, EnrichedUser};
use gong_common::names;
use gong_common::streams::{ensure_streams, StreamKind, StreamSettings};
use gong_common::Env;
use gong_testkit::{wait_until, NatsServer};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

fn field<'a>(line: &'a Value, name: &str) -> anyhow::Result<&'a Value> {
    line.get(name)
        .with_context(|| format!("fixture line without {name:?}: {line}"))
}

/// The subject, `Nats-Msg-Id` and payload of one fixture line.
fn message(line: &Value) -> anyhow::Result<(String, String, Vec<u8>)> {
    let subject = field(line, "subject")?
        .as_str()
        .context("subject is not a string")?
        .to_string();
    let fetched_at = || -> anyhow::Result<DateTime<Utc>> {
        Ok(serde_json::from_value(field(line, "fetched_at")?.clone())?)
    };
    let (id, payload) = match subject.as_str() {
        names::SUBJECT_ENRICHED_CALL => {
            let event: EnrichedEvent = serde_json::from_value(field(line, "event")?.clone())?;
            let id = field(line, "msg_id")?.as_str().context("msg_id")?;
            (id.to_string(), event.to_json())
        }
        names::SUBJECT_ENRICHED_USER => {
            let user = serde_json::from_value(field(line, "user")?.clone())?;
            let event = EnrichedUser::new(user, fetched_at()?);
            (event.event_id.clone(), event.to_json())
        }
        names::SUBJECT_ENRICHED_SCORECARD => {
            let card = serde_json::from_value(field(line, "scorecard")?.clone())?;
            let event = EnrichedScorecard::new(card, fetched_at()?);
            (event.event_id.clone(), event.to_json())
        }
        _ => {
            let id = field(line, "msg_id")?.as_str().context("msg_id")?;
            (id.to_string(), serde_json::to_vec(field(line, "payload")?)?)
        }
    };
    Ok((subject, id, payload))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [events, stage] = args.as_slice() else {
        bail!("usage: snowflake_stage <events.jsonl> <stage dir>");
    };
    let stage = PathBuf::from(stage);
    if stage.exists() {
        bail!("{} exists; give a new directory", stage.display());
    }
    let text = std::fs::read_to_string(events).with_context(|| format!("reading {events}"))?;

    let nats = NatsServer::start_new();
    let js = nats.jetstream().await;
    ensure_streams(
        &js,
        &StreamSettings::default(),
        &[StreamKind::Enriched, StreamKind::Dlq],
    )
    .await?;
    let mut published = 0u64;
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        let (subject, id, payload) = message(&serde_json::from_str(line)?)?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
        let ack = js
            .publish_with_headers(subject.clone(), headers, Bytes::from(payload))
            .await?
            .await?;
        if ack.duplicate {
            bail!("fixture message {id} on {subject} was dropped as a duplicate");
        }
        published += 1;
    }

    let spool = stage.with_extension("spool");
    let env = Env::from_pairs([
        ("NATS_URL".to_string(), nats.url()),
        ("ADMIN_ADDR".to_string(), "127.0.0.1:0".to_string()),
        (
            "STAGE_URL".to_string(),
            format!("file://{}", stage.display()),
        ),
        ("LOAD_SPOOL_DIR".to_string(), spool.display().to_string()),
        // Several ranges per table, so the check loads several files per table.
        ("LOAD_FLUSH_MAX_ROWS".to_string(), "4".to_string()),
        ("LOAD_FLUSH_MAX_AGE".to_string(), "1s".to_string()),
        ("LOAD_LEASE_TTL".to_string(), "2s".to_string()),
    ]);
    let config = gong_load::LoadConfig::from_env(&env)?;
    let shutdown = CancellationToken::new();
    let running = gong_load::start(config, shutdown.clone()).await?;
    let stream = js.get_stream(names::STREAM_ENRICHED).await?;
    wait_until(
        Duration::from_secs(60),
        "every fixture message acknowledged by gong-load",
        || async {
            let info = stream.consumer_info(names::CONSUMER_LOAD).await.ok()?;
            (info.num_pending == 0
                && info.num_ack_pending == 0
                && info.ack_floor.stream_sequence >= published)
                .then_some(())
        },
    )
    .await;
    shutdown.cancel();
    running.task.await??;
    let _ = std::fs::remove_dir_all(&spool);
    let mut dlq = js.get_stream(names::STREAM_DLQ).await?;
    let dead = dlq.info().await?.state.messages;
    if dead > 0 {
        bail!("{dead} fixture events were dead-lettered");
    }
    eprintln!(
        "snowflake_stage: {published} messages staged under {}",
        stage.display()
    );
    Ok(())
}
