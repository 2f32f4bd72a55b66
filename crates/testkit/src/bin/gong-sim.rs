//! `gong-sim`: a local stand-in for Gong.
//!
//! - `gong-sim serve`: serves the Gong API double (Basic auth, 3 req/s, daily quota, 100 per page,
//!   cursor in the body, 404 on empty) so gong-enrich can run without credentials.
//! - `gong-sim send`: sends Gong-shaped webhooks signed exactly as Gong signs them (RS256 JWT with
//!   `body_sha256`, `webhook_url`, `exp`), or in URL-token mode, to any gong-ingest — also a real
//!   deployment, for smoke tests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "gong-sim",
    version,
    about = "A local stand-in for Gong: API double and webhook sender"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send signed Gong webhooks to a gong-ingest endpoint.
    Send(SendArgs),
    /// Serve the Gong REST API double.
    Serve(gong_testkit::sim::ServeArgs),
}

#[derive(clap::Args)]
struct SendArgs {
    /// Endpoint to POST to, e.g. http://127.0.0.1:8080/webhooks/gong (JWT mode) or
    /// http://127.0.0.1:8080/webhooks/gong/<token> (URL-token mode).
    #[arg(long)]
    url: String,
    /// How many webhooks (each a different call).
    #[arg(long, default_value_t = 10)]
    count: u64,
    /// PEM file of the rule's RSA private key; without it, no Authorization header is sent
    /// (URL-token mode).
    #[arg(long)]
    key: Option<std::path::PathBuf>,
    /// The rule's destination URL put in the `webhook_url` claim (default: --url).
    #[arg(long)]
    webhook_url: Option<String>,
    /// First call id; ids count up from it.
    #[arg(long, default_value_t = 7_000_000_000_000_000_000)]
    first_call_id: u64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: u64,
    /// Mark the deliveries as the rule editor's "test now" (isTest: true).
    #[arg(long)]
    test: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().context("start the async runtime")?;
    match cli.command {
        Command::Send(args) => runtime.block_on(send(args)),
        Command::Serve(args) => runtime.block_on(gong_testkit::sim::serve(args)),
    }
}

async fn send(args: SendArgs) -> anyhow::Result<()> {
    let key = match &args.key {
        Some(path) => {
            let pem =
                std::fs::read(path).with_context(|| format!("read key {}", path.display()))?;
            Some(Arc::new(
                jsonwebtoken::EncodingKey::from_rsa_pem(&pem)
                    .context("the key is not an RSA private key in PEM")?,
            ))
        }
        None => None,
    };
    let webhook_url = args.webhook_url.clone().unwrap_or_else(|| args.url.clone());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .context("build http client")?;
    let next = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let (http, key, next, accepted) =
            (http.clone(), key.clone(), next.clone(), accepted.clone());
        let (url, webhook_url, count, first, is_test) = (
            args.url.clone(),
            webhook_url.clone(),
            args.count,
            args.first_call_id,
            args.test,
        );
        workers.push(tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::SeqCst);
                if index >= count {
                    return Ok::<(), anyhow::Error>(());
                }
                let call_id = (first + index).to_string();
                let body = gong_testkit::webhook::call_body(&call_id, is_test);
                let mut request = http.post(&url).header("content-type", "application/json");
                if let Some(key) = &key {
                    let claims =
                        gong_testkit::webhook::GongClaims::for_body(&body, &webhook_url, 300);
                    let token = jsonwebtoken::encode(
                        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
                        &claims,
                        key,
                    )
                    .context("sign")?;
                    request = request.header("authorization", format!("Bearer {token}"));
                }
                // Gong's retry behaviour is undocumented; the simulator retries 503s a few times.
                let mut attempt = 0;
                loop {
                    let response = request
                        .try_clone()
                        .context("clone request")?
                        .body(body.clone())
                        .send()
                        .await;
                    match response {
                        Ok(response) if response.status().is_success() => {
                            accepted.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                        Ok(response) if response.status().as_u16() == 503 && attempt < 10 => {}
                        Ok(response) => {
                            let status = response.status();
                            let text = response.text().await.unwrap_or_default();
                            anyhow::bail!("call {call_id}: {status} {text}");
                        }
                        Err(err) if attempt < 10 => {
                            eprintln!("gong-sim: call {call_id}: {err}; retrying");
                        }
                        Err(err) => anyhow::bail!("call {call_id}: {err}"),
                    }
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
            }
        }));
    }
    for worker in workers {
        worker.await.context("worker panicked")??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "sent {} webhook(s), {} accepted, in {:.2}s ({:.0}/s)",
        args.count,
        accepted.load(Ordering::SeqCst),
        elapsed,
        args.count as f64 / elapsed.max(1e-9)
    );
    Ok(())
}
