//! A real nats-server with JetStream per test.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Hint printed when the binary is missing.
pub const INSTALL_HINT: &str = "nats-server not found on PATH (or in NATS_SERVER_BIN). \
Install it with `sudo apt-get install -y nats-server` (Debian/Ubuntu), or run `scripts/setup.sh`.";

/// A running `nats-server -js` on a free loopback port with its own store directory.
///
/// [`NatsServer::stop`] and [`NatsServer::start`] restart it on the same port and store (to test
/// outages); dropping it kills the process and removes the store.
pub struct NatsServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    extra_args: Vec<String>,
}

impl NatsServer {
    /// Starts a server; panics with an install hint when `nats-server` is missing.
    pub fn start_new() -> NatsServer {
        NatsServer::start_with_args(Vec::new())
    }

    /// Starts a server with extra command-line arguments (cluster settings, for instance).
    pub fn start_with_args(extra_args: Vec<String>) -> NatsServer {
        let dir = tempfile::Builder::new()
            .prefix("gong-nats-")
            .tempdir()
            .expect("create nats store dir");
        let mut server = NatsServer {
            port: free_port(),
            dir,
            child: None,
            extra_args,
        };
        server.start();
        server
    }

    /// The path of the `nats-server` binary (`NATS_SERVER_BIN` or `PATH`).
    pub fn binary() -> PathBuf {
        if let Ok(path) = std::env::var("NATS_SERVER_BIN") {
            return PathBuf::from(path);
        }
        for candidate in std::env::var("PATH").unwrap_or_default().split(':') {
            let path = Path::new(candidate).join("nats-server");
            if path.is_file() {
                return path;
            }
        }
        for fallback in ["/usr/sbin/nats-server", "/usr/bin/nats-server"] {
            if Path::new(fallback).is_file() {
                return PathBuf::from(fallback);
            }
        }
        panic!("{INSTALL_HINT}");
    }

    /// (Re)starts the process on the same port and store; returns once it accepts connections.
    pub fn start(&mut self) {
        if self.child.is_some() {
            return;
        }
        let store = self.dir.path().join("store");
        let log = self.log_path();
        let child = Command::new(NatsServer::binary())
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("--store_dir")
            .arg(&store)
            .arg("-l")
            .arg(&log)
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot spawn nats-server: {err}. {INSTALL_HINT}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                panic!(
                    "nats-server did not listen on {} within 20s; log: {}",
                    self.port,
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the process (SIGKILL: an outage, not a clean shutdown); the store is kept.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's log file, for failing tests to point at.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats-server.log")
    }

    /// The store directory.
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// Connects a plain client (tests use it to inspect streams).
    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url())
            .await
            .unwrap_or_else(|err| panic!("connect to {}: {err}", self.url()))
    }

    /// A JetStream context on a new client.
    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.client().await)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A currently free loopback TCP port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("bind an ephemeral port")
}
