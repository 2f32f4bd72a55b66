//! Shared measurement helpers for the bench binaries: latency percentiles, peak RSS of a child
//! process, and a child-process guard.

use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

/// Latency samples in microseconds.
#[derive(Default)]
pub struct Latencies {
    samples: Vec<u64>,
}

impl Latencies {
    /// Adds one sample.
    pub fn record(&mut self, elapsed: Duration) {
        self.samples.push(elapsed.as_micros() as u64);
    }

    /// Merges another set.
    pub fn extend(&mut self, other: Latencies) {
        self.samples.extend(other.samples);
    }

    /// The `q` quantile (0..=1) in milliseconds.
    pub fn quantile_ms(&mut self, q: f64) -> f64 {
        if self.samples.is_empty() {
            return f64::NAN;
        }
        self.samples.sort_unstable();
        let index = ((self.samples.len() as f64 - 1.0) * q).round() as usize;
        self.samples[index] as f64 / 1000.0
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

/// Peak resident set size (VmHWM) of a process, in MiB (Linux).
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Path of a workspace binary built next to the running bench binary (same profile).
pub fn sibling_binary(name: &str) -> PathBuf {
    let me = std::env::current_exe().expect("current exe");
    let dir = me.parent().expect("exe dir");
    let candidate = dir.join(name);
    if candidate.exists() {
        return candidate;
    }
    // `cargo run --bin` places binaries in target/<profile>/; examples in deps/ one level down.
    dir.parent()
        .map(|parent| parent.join(name))
        .unwrap_or(candidate)
}

/// Kills a child process on drop.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Formats a number of requests per second.
pub fn per_second(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(1e-9)
}
