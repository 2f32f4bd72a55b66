//! `gong-sim serve`: the Gong API double as a standalone server, for the local pipeline and for
//! smoke-testing a real deployment's enricher without Gong credentials.

use std::net::SocketAddr;

use crate::gong_double::{GongDouble, GongDoubleConfig};

/// Options of `gong-sim serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:18090")]
    pub addr: SocketAddr,
    /// Accepted access key (HTTP Basic user).
    #[arg(long, env = "GONG_ACCESS_KEY", default_value = crate::gong_double::DEFAULT_ACCESS_KEY)]
    pub access_key: String,
    /// Accepted access key secret (HTTP Basic password).
    #[arg(long, env = "GONG_ACCESS_KEY_SECRET", default_value = crate::gong_double::DEFAULT_ACCESS_KEY_SECRET, hide_env_values = true)]
    pub access_key_secret: String,
    /// Requests admitted per sliding second (Gong's default: 3).
    #[arg(long, default_value_t = 3)]
    pub rate_per_second: u32,
    /// Requests admitted per UTC day (Gong's default: 10,000).
    #[arg(long, default_value_t = 10_000)]
    pub daily_quota: u64,
    /// Call ids to treat as deleted (absent from answers), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub deleted: Vec<String>,
    /// Call ids to treat as private (no transcript), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub private: Vec<String>,
}

/// Serves until Ctrl-C or SIGTERM, then prints what the double saw.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let double = GongDouble::start(GongDoubleConfig {
        addr: args.addr,
        access_key: args.access_key,
        access_key_secret: args.access_key_secret,
        rate_per_second: args.rate_per_second,
        daily_quota: args.daily_quota,
        deleted_calls: args.deleted,
        private_calls: args.private,
        ..GongDoubleConfig::default()
    })
    .await?;
    println!(
        "gong-sim serving the Gong API double on {}",
        double.base_url()
    );
    let stats_double = &double;
    let report = || {
        let stats = stats_double.stats();
        println!(
            "gong-sim stats: {} call requests, {} rate violations, {:?}",
            stats.call_requests(),
            stats.violations(),
            stats
        );
    };
    wait_for_signal().await;
    report();
    Ok(())
}

async fn wait_for_signal() {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(stream) => stream,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
