//! The raw JetStream ceiling alone, against a given nats-server: `count` publish-with-ack of
//! `payload-bytes` each on `gong.raw.call`, `in-flight` publishers each waiting for its ack (the
//! same measurement as `ingest-bench`'s ceiling, `gong_benches::raw_publish_rate`). Then reads how
//! many messages GONG_RAW holds. Used by `benches/acceptance/run.sh`.
//!
//! Prints one line: `CEILING publish_per_s=<f> count=<n> in_flight=<n> payload=<n> stored=<n>`.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use gong_benches::raw_publish_rate;

#[derive(Parser)]
#[command(name = "jetstream-ceiling")]
struct Args {
    /// NATS server (a fresh one: the count of GONG_RAW is checked afterwards).
    #[arg(long)]
    nats_url: String,
    /// Messages to publish.
    #[arg(long, default_value_t = 500_000)]
    count: usize,
    /// Publishers in flight, each waiting for its ack.
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// Payload size in bytes (at least 8).
    #[arg(long, default_value_t = 675)]
    payload_bytes: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.payload_bytes >= 8,
        "--payload-bytes must be at least 8"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = async_nats::connect(&args.nats_url)
            .await
            .context("connect to NATS")?;
        let rate = raw_publish_rate(
            client.clone(),
            args.count,
            args.in_flight,
            args.payload_bytes,
        )
        .await?;
        let jetstream = gong_common::nats::jetstream_context(client, Duration::from_secs(5), 4096);
        let mut stream = jetstream
            .get_stream(gong_common::names::STREAM_RAW)
            .await
            .context("GONG_RAW")?;
        let stored = stream.info().await.context("GONG_RAW info")?.state.messages;
        println!(
            "CEILING publish_per_s={rate:.1} count={} in_flight={} payload={} stored={stored}",
            args.count, args.in_flight, args.payload_bytes
        );
        Ok(())
    })
}
