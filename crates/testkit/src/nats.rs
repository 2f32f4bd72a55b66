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
        // The free port picked at creation can be taken by another process before the server
        // binds it (the machine is shared). On the first start a new port is tried; a restart
        // must keep its port, so it retries the same one until the old socket is released.
        let first_start = !self.store_dir().exists();
        for attempt in 0..20 {
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(reason) if attempt < 19 => {
                    if first_start {
                        self.port = free_port();
                    } else {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    eprintln!("nats-server start attempt {attempt} failed ({reason}); retrying");
                }
                Err(reason) => panic!("{reason}"),
            }
        }
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let store = self.store_dir();
        let log = self.log_path();
        let ready_count = |log: &Path| {
            std::fs::read_to_string(log)
                .map(|text| text.matches("Server is ready").count())
                .unwrap_or(0)
        };
        let ready_before = ready_count(&log);
        let mut child = Command::new(NatsServer::binary())
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
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "nats-server exited with {status} before listening on {}; log: {}",
                    self.port,
                    log.display()
                ));
            }
            // Our own log says when our process listens: another process on the same port
            // (the free-port race) cannot fake that.
            let ready = ready_count(&log) > ready_before;
            if ready && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "nats-server did not listen on {} within 20s; log: {}",
                    self.port,
                    log.display()
                ));
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

    /// The process id while the server runs (benches read its CPU time from /proc).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
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
