//! The pipeline's binaries as child processes: spawn, wait for readiness, SIGKILL, SIGTERM,
//! restart on the same ports, read metrics and logs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gong_testkit::nats::free_port;

/// The path of a workspace binary, next to the test executable's directory (`target/<profile>`),
/// like `benches/src/lib.rs::sibling_binary`, or in `E2E_BIN_DIR` when set (to run the scenarios
/// against binaries built elsewhere, e.g. an older commit). Panics when it was not built.
pub fn binary(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("E2E_BIN_DIR") {
        let candidate = PathBuf::from(dir).join(name);
        assert!(
            candidate.is_file(),
            "{name} not found in E2E_BIN_DIR ({})",
            candidate.display()
        );
        return candidate;
    }
    let me = std::env::current_exe().expect("current exe");
    let deps = me.parent().expect("test exe dir");
    let candidates = [deps.join(name), deps.parent().unwrap_or(deps).join(name)];
    for candidate in &candidates {
        if candidate.is_file() {
            return candidate.clone();
        }
    }
    panic!(
        "{name} not found next to the test binary ({}); run `cargo build --workspace --bins` first",
        candidates[1].display()
    );
}

/// Which stage a [`Service`] runs (decides its port variables).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `gong-ingest`: `INGEST_ADDR` and `GONG_WEBHOOK_URL` follow the listen port.
    Ingest,
    /// `gong-enrich`.
    Enrich,
    /// `gong-load`.
    Load,
}

impl Kind {
    /// The binary's name.
    pub fn binary_name(self) -> &'static str {
        match self {
            Kind::Ingest => "gong-ingest",
            Kind::Enrich => "gong-enrich",
            Kind::Load => "gong-load",
        }
    }
}

/// One stage binary as a child process, restartable on the same ports with the same
/// environment. Killed on drop.
pub struct Service {
    /// The stage.
    pub kind: Kind,
    binary: PathBuf,
    env: Vec<(String, String)>,
    admin_port: u16,
    listen_port: u16,
    log: PathBuf,
    child: Option<Child>,
    /// How many times the process was started.
    pub starts: usize,
    /// How many times it was killed with SIGKILL.
    pub kills: usize,
}

impl Service {
    /// A service that is not started yet; its log goes to `<dir>/<binary>.log`.
    pub fn new(kind: Kind, dir: &Path, env: Vec<(String, String)>) -> Service {
        Service::with_log(kind, dir.join(format!("{}.log", kind.binary_name())), env)
    }

    /// Replica `index` of a stage that runs several: its log goes to
    /// `<dir>/<binary>-<index>.log`.
    pub fn replica(kind: Kind, index: usize, dir: &Path, env: Vec<(String, String)>) -> Service {
        Service::with_log(
            kind,
            dir.join(format!("{}-{index}.log", kind.binary_name())),
            env,
        )
    }

    fn with_log(kind: Kind, log: PathBuf, env: Vec<(String, String)>) -> Service {
        Service {
            kind,
            binary: binary(kind.binary_name()),
            env,
            admin_port: free_port(),
            listen_port: free_port(),
            log,
            child: None,
            starts: 0,
            kills: 0,
        }
    }

    /// The log file (every start appends to it).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// `http://127.0.0.1:<admin port>`.
    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    /// The webhook endpoint in JWT mode (ingest only).
    pub fn webhook_url(&self) -> String {
        format!("http://127.0.0.1:{}/webhooks/gong", self.listen_port)
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the process without waiting for it to be ready.
    pub fn spawn(&mut self) {
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open service log");
        let _ = writeln!(log, "==== e2e: start #{} ====", self.starts + 1);
        let mut command = Command::new(&self.binary);
        command
            .env_clear()
            .env("RUST_BACKTRACE", "1")
            .env("LOG_FORMAT", "pretty")
            .env("RUST_LOG", "info")
            .env("ADMIN_ADDR", format!("127.0.0.1:{}", self.admin_port));
        if self.kind == Kind::Ingest {
            command
                .env("INGEST_ADDR", format!("127.0.0.1:{}", self.listen_port))
                .env("GONG_WEBHOOK_URL", self.webhook_url());
        }
        if let Ok(tmp) = std::env::var("TMPDIR") {
            command.env("TMPDIR", tmp);
        }
        command.envs(self.env.iter().map(|(key, value)| (key, value)));
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| panic!("spawn {}: {err}", self.binary.display()));
        self.child = Some(child);
        self.starts += 1;
    }

    /// Starts the process and waits until `/readyz` answers 200. On the very first start a
    /// process that exits at once (a port taken by another process on this shared machine) is
    /// retried on new ports.
    pub async fn start(&mut self) {
        let first = self.starts == 0;
        for attempt in 0..3 {
            self.spawn();
            match self.wait_ready(Duration::from_secs(60)).await {
                Ok(()) => return,
                Err(reason) if first && attempt < 2 && !self.is_running() => {
                    eprintln!(
                        "{} did not start ({reason}); retrying on new ports",
                        self.kind.binary_name()
                    );
                    self.admin_port = free_port();
                    self.listen_port = free_port();
                }
                Err(reason) => panic!("{reason}\n{}", self.log_tail(40)),
            }
        }
    }

    /// Polls `/readyz` until 200, or fails when the process exits or `timeout` passes.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("http client");
        let url = format!("{}/readyz", self.admin_url());
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!(
                        "{} exited with {status} before it was ready; log {}",
                        self.kind.binary_name(),
                        self.log.display()
                    ));
                }
            }
            if let Ok(response) = http.get(&url).send().await {
                if response.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} not ready within {timeout:?}; log {}",
                    self.kind.binary_name(),
                    self.log.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether the process is still running (reaps it when it has exited).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    /// SIGKILL (`kill -9`): no flush, no ack, no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            self.kills += 1;
        }
    }

    /// Starts it again after a kill, on the same ports (retrying while the old sockets linger).
    pub async fn restart(&mut self) {
        self.kill_quietly();
        for _ in 0..20 {
            self.spawn();
            match self.wait_ready(Duration::from_secs(60)).await {
                Ok(()) => return,
                Err(_) if !self.is_running() => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(reason) => panic!("{reason}\n{}", self.log_tail(40)),
            }
        }
        panic!(
            "{} could not be restarted\n{}",
            self.kind.binary_name(),
            self.log_tail(40)
        );
    }

    fn kill_quietly(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> Result<String, String> {
        let url = format!("{}/metrics", self.admin_url());
        let response = reqwest::get(&url)
            .await
            .map_err(|err| format!("GET {url}: {err}"))?;
        response
            .text()
            .await
            .map_err(|err| format!("GET {url}: {err}"))
    }

    /// How many log lines (over every start) contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|line| line.contains(needle))
            .count()
    }

    /// The last `lines` lines of the log, headed by its path.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let tail = all[all.len().saturating_sub(lines)..].join("\n");
        format!(
            "--- {} (last {lines} lines) ---\n{tail}",
            self.log.display()
        )
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill_quietly();
    }
}
