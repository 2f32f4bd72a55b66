//! Writes N unique, pre-signed Gong webhooks to a file for an external load generator (wrk), as
//! `ingest-bench` makes them in memory: `call_body` with a distinct call id, signed RS256 by
//! `TestKey::rule_a()` for the given destination URL.
//!
//! One line per request: the `Authorization` value (`Bearer <jwt>`), a tab, the body (compact
//! JSON, checked to contain no tab or newline). The key's public base64 SPKI DER, as Gong's rule
//! editor shows it, goes to `--key-out` (for `GONG_WEBHOOK_SECRETS`), never to stdout.
//!
//! `target/release/webhook-corpus --count 600000 --out corpus.tsv --key-out key.b64`

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Parser;
use gong_testkit::webhook::{call_body, TestKey};

#[derive(Parser)]
#[command(name = "webhook-corpus")]
struct Args {
    /// Number of unique webhooks.
    #[arg(long, default_value_t = 100_000)]
    count: usize,
    /// Corpus file (one `Authorization<TAB>body` line per webhook).
    #[arg(long)]
    out: PathBuf,
    /// File for the rule key's public base64 SPKI DER.
    #[arg(long)]
    key_out: PathBuf,
    /// Destination URL the tokens are signed for (the server's `GONG_WEBHOOK_URL`).
    #[arg(long, default_value = "https://bench.example.com/webhooks/gong")]
    url: String,
    /// Token lifetime in seconds (long enough for the whole run).
    #[arg(long, default_value_t = 7200)]
    ttl_secs: i64,
    /// Signing threads (RS256 signing dominates the time).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// First call id (ids are consecutive from it; all have the same number of digits).
    #[arg(long, default_value_t = 5_000_000_000_000_000_000)]
    first_call_id: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    let started = Instant::now();
    let threads = args.threads.max(1);
    let per_thread = args.count.div_ceil(threads);
    // Each thread signs a contiguous range; the ranges are written in order.
    let chunks: Vec<Vec<u8>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|thread| {
                let args = &args;
                scope.spawn(move || {
                    let key = TestKey::rule_a();
                    let start = (thread * per_thread).min(args.count);
                    let end = ((thread + 1) * per_thread).min(args.count);
                    let mut out = Vec::with_capacity((end - start) * 1500);
                    for index in start..end {
                        let body =
                            call_body(&format!("{}", args.first_call_id + index as u64), false);
                        let token = key.sign_webhook(&body, &args.url, args.ttl_secs);
                        if body
                            .iter()
                            .chain(token.as_bytes())
                            .any(|b| *b == b'\n' || *b == b'\t')
                        {
                            bail!("webhook {index} contains a tab or newline");
                        }
                        out.extend_from_slice(b"Bearer ");
                        out.extend_from_slice(token.as_bytes());
                        out.push(b'\t');
                        out.extend_from_slice(&body);
                        out.push(b'\n');
                    }
                    Ok(out)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().expect("signing thread panicked"))
            .collect::<anyhow::Result<_>>()
    })?;

    let file = std::fs::File::create(&args.out)
        .with_context(|| format!("create {}", args.out.display()))?;
    let mut writer = std::io::BufWriter::new(file);
    for chunk in &chunks {
        writer.write_all(chunk)?;
    }
    writer.flush()?;
    std::fs::write(&args.key_out, TestKey::rule_a().public_base64_der())
        .with_context(|| format!("write {}", args.key_out.display()))?;

    let payload = call_body(&format!("{}", args.first_call_id), false).len();
    let bytes: usize = chunks.iter().map(Vec::len).sum();
    println!(
        "webhook-corpus: {} webhooks, body {payload} bytes, file {:.1} MiB, exp in {} s, {:.1} s",
        args.count,
        bytes as f64 / 1048576.0,
        args.ttl_secs,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
