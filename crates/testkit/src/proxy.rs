//! A TCP proxy in front of a server, switchable down and up: the endpoint disappears (refused
//! connections, open ones cut) while the server behind it keeps its data.
//!
//! Used for an S3 outage (moto keeps its objects in memory, so stopping moto itself would
//! lose what was already staged) and for a partition between one client and a nats-server
//! (the client connects through the proxy, others directly).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The proxy; down on drop.
pub struct Proxy {
    port: u16,
    upstream: SocketAddr,
    running: Arc<Mutex<Option<CancellationToken>>>,
}

impl Proxy {
    /// Starts forwarding a free loopback port to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let proxy = Proxy {
            port: crate::nats::free_port(),
            upstream,
            running: Arc::new(Mutex::new(None)),
        };
        proxy.up().await;
        proxy
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `nats://127.0.0.1:<port>`: a NATS client's url through the proxy.
    pub fn nats_url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The port the proxy listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Listens again on the same port (retrying while the old socket lingers).
    pub async fn up(&self) {
        if self.running.lock().expect("proxy state").is_some() {
            return;
        }
        let listener = crate::wait_until(
            Duration::from_secs(20),
            "the proxy port to be free again",
            || async { TcpListener::bind(("127.0.0.1", self.port)).await.ok() },
        )
        .await;
        let token = CancellationToken::new();
        *self.running.lock().expect("proxy state") = Some(token.clone());
        let upstream = self.upstream;
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = token.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((mut client, _)) = accepted else {
                    continue;
                };
                let token = token.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    }
                });
            }
        });
    }

    /// Stops listening and cuts every open connection.
    pub fn down(&self) {
        if let Some(token) = self.running.lock().expect("proxy state").take() {
            token.cancel();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.down();
    }
}
