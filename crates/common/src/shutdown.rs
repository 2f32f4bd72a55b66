//! Process shutdown: the signal future `main` injects into `run`, and exit codes.

use tokio_util::sync::CancellationToken;

/// Exit code for invalid configuration (EX_USAGE-style, 64).
pub const EXIT_CONFIG: i32 = 64;
/// Exit code for a failure at run time.
pub const EXIT_RUNTIME: i32 = 1;

/// Resolves on the first SIGINT (Ctrl-C) or SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!(signal = "SIGINT", "shutdown requested"),
        _ = terminate => tracing::info!(signal = "SIGTERM", "shutdown requested"),
    }
}

/// A token cancelled by the first SIGINT or SIGTERM; what `main` passes to `run`.
pub fn token_from_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let child = token.clone();
    tokio::spawn(async move {
        signal().await;
        child.cancel();
    });
    token
}
