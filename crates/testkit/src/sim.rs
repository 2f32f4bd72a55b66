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
    /// Calls in the company's history, listed by `POST /v2/calls/extensive` with a date range
    /// (what `gong-enrich sweep` finds), started evenly over the last `--history-days`.
    #[arg(long, default_value_t = 0)]
    pub history_calls: u64,
    /// Days the history spans, ending now.
    #[arg(long, default_value_t = 30)]
    pub history_days: u64,
    /// First call id of the history; ids count up from it.
    #[arg(long, default_value_t = 8_000_000_000_000_000_000)]
    pub history_first_id: u64,
    /// Every N-th history call has a late transcript (empty for `--late-transcript-delay`); 0: none.
    #[arg(long, default_value_t = 0)]
    pub late_transcript_every: u64,
    /// How long a late transcript stays empty, from the start of the server.
    #[arg(long, default_value = "2h", value_parser = humantime_duration)]
    pub late_transcript_delay: std::time::Duration,
    /// Users served by `GET /v2/users` (ids from `--users-first-id`; every user after the first
    /// two reports to one of them).
    #[arg(long, default_value_t = 0)]
    pub users: u64,
    /// First user id; ids count up from it.
    #[arg(long, default_value_t = 234_000_000_000_000_000)]
    pub users_first_id: u64,
    /// Answered scorecards served by `POST /v2/stats/activity/scorecards`, reviewed evenly over
    /// the last 6 days, of the history's calls (or of made-up call ids without a history), their
    /// reviewers and reviewed users among `--users`.
    #[arg(long, default_value_t = 0)]
    pub scorecards: u64,
}

/// Seeds the users and answered scorecards `args` asks for.
fn seed_people(double: &GongDouble, args: &ServeArgs) {
    use crate::gong_double::{answered_scorecard_json, user_json};
    let user = |n: u64| args.users_first_id + n % args.users.max(1);
    let managers = [user(0), user(1)].map(|id| id.to_string());
    double.add_users((0..args.users).map(|n| {
        let manager = (n >= 2).then(|| managers[(n % 2) as usize].as_str());
        user_json(&user(n).to_string(), manager)
    }));
    let now = chrono::Utc::now();
    let step = chrono::Duration::days(6) / args.scorecards.max(1) as i32;
    let call = |n: u64| match args.history_calls {
        0 => 5_500_000_000_000_000_000 + n,
        calls => args.history_first_id + n % calls,
    };
    double.add_answered_scorecards((0..args.scorecards).map(|n| {
        answered_scorecard_json(
            7_700_000_000_000_000 + n,
            call(n),
            user(n + 2),
            user(n % 2),
            now - step * (n + 1) as i32,
        )
    }));
}

fn humantime_duration(raw: &str) -> Result<std::time::Duration, String> {
    let (number, unit) = raw.split_at(raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len()));
    let number: u64 = number
        .parse()
        .map_err(|_| format!("not a duration: {raw}"))?;
    let seconds = match unit {
        "ms" => return Ok(std::time::Duration::from_millis(number)),
        "s" | "" => number,
        "m" => number * 60,
        "h" => number * 3600,
        "d" => number * 86_400,
        _ => return Err(format!("not a duration (use s, m, h or d): {raw}")),
    };
    Ok(std::time::Duration::from_secs(seconds))
}

/// Serves until Ctrl-C or SIGTERM, then prints what the double saw.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let double = GongDouble::start(GongDoubleConfig {
        addr: args.addr,
        access_key: args.access_key.clone(),
        access_key_secret: args.access_key_secret.clone(),
        rate_per_second: args.rate_per_second,
        daily_quota: args.daily_quota,
        deleted_calls: args.deleted.clone(),
        private_calls: args.private.clone(),
        ..GongDoubleConfig::default()
    })
    .await?;
    if args.history_calls > 0 {
        let now = chrono::Utc::now();
        let span = chrono::Duration::days(args.history_days.max(1) as i64);
        let step = span / args.history_calls.max(1) as i32;
        double.add_calls((0..args.history_calls).map(|n| {
            let call_id = (args.history_first_id + n).to_string();
            (call_id, now - span + step * n as i32)
        }));
        if args.late_transcript_every > 0 {
            for n in (0..args.history_calls).step_by(args.late_transcript_every as usize) {
                double.delay_transcript(
                    &(args.history_first_id + n).to_string(),
                    args.late_transcript_delay,
                );
            }
        }
    }
    seed_people(&double, &args);
    println!(
        "gong-sim serving the Gong API double on {} ({} calls in the history, {} users, {} answered scorecards)",
        double.base_url(),
        double.history_len(),
        args.users,
        args.scorecards
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
