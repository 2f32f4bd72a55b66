//! A lease: one active process among replicas, the others hot standbys.
//!
//! Replicated work that must not run twice at once (the live loader, a sweep) is guarded by a
//! [`Register`] (a KV bucket of its own, `gong_lease_<job>`, compare-and-set that is atomic on
//! a nats-server 2.9 cluster, unlike `kv::Store::update`). The value names the holder; the holder renews it by compare-and-set every
//! `ttl / 3`. Nothing compares one pod's wall clock with another's:
//!
//! - a standby reads the key every `ttl / 5` (at most every 2 s) and takes the lease (CAS on the revision it read)
//!   when the key is missing or released, or when the **same revision** has stood for a whole
//!   `ttl` by the standby's own monotonic clock (the holder stopped renewing);
//! - the holder measures from the moment it *sent* its last successful renewal: once `ttl -
//!   ttl / 4` has passed without another one succeeding, it steps down before any standby can
//!   have taken over (a standby starts counting only after it saw that renewal, which is later);
//! - a renewal that loses its compare-and-set means another process took the lease: step down
//!   at once;
//! - on shutdown the holder writes the key as released, so a standby takes over within a poll.
//!
//! The bucket has no direct gets (`ensure_kv`), so every read comes from the stream leader and
//! a stale follower can never make a standby believe the holder has stopped renewing (a leader
//! elected a moment ago may lag; a takeover based on its answer loses its compare-and-set).
//!
//! A lease makes the common case single-writer; it is not the only guard. Work under a lease
//! stays safe if two processes briefly overlap (a holder paused longer than the margin): the
//! loader's range claims are compare-and-set too, and a range's files are a pure function of it.

use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::register::{Register, RegisterError};
use crate::streams::{ProvisionError, StreamSettings};

/// The value under a lease key (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The holder's id; empty when released.
    pub holder: String,
    /// Renewals by this holder (makes every renewal a new value).
    pub renewals: u64,
}

/// Where a lease stands, as seen by this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    /// Another process holds it (or this process has not read it yet).
    Standby,
    /// This process holds it: act.
    Active,
}

/// A lease to run for: [`Lease::spawn`] keeps trying to hold it until shutdown.
#[derive(Clone)]
pub struct Lease {
    register: Register,
    key: String,
    holder: String,
    ttl: Duration,
}

/// The running lease task.
pub struct LeaseHandle {
    /// `Active` while this process holds the lease.
    pub state: watch::Receiver<LeaseState>,
    /// Ends after shutdown, once the lease was released (if held).
    pub task: tokio::task::JoinHandle<()>,
}

impl Lease {
    /// Opens the lease of `job` (bucket `gong_lease_<job>`, created if missing), held as
    /// `holder` (unique per process) for `ttl`.
    pub async fn open(
        jetstream: &jetstream::Context,
        settings: &StreamSettings,
        job: &str,
        holder: String,
        ttl: Duration,
    ) -> Result<Lease, ProvisionError> {
        let bucket = format!("{}{job}", crate::names::BUCKET_LEASE_PREFIX);
        let register =
            Register::open(jetstream, &bucket, "holder", Duration::ZERO, settings).await?;
        Ok(Lease {
            register,
            key: job.to_string(),
            holder,
            ttl: ttl.max(Duration::from_secs(1)),
        })
    }

    /// This process's holder id.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// The record under the key and its revision, read from the stream leader.
    pub async fn read(&self) -> Result<Option<(LeaseRecord, u64)>, RegisterError> {
        let current = self.register.read().await?;
        Ok(current.map(|current| {
            let record = if current.is_put {
                serde_json::from_slice(&current.value).unwrap_or(LeaseRecord {
                    // Unreadable (a future version?): held by someone unknown, so it is taken
                    // only after a whole ttl without change.
                    holder: "?".to_string(),
                    renewals: 0,
                })
            } else {
                LeaseRecord {
                    holder: String::new(),
                    renewals: 0,
                }
            };
            (record, current.revision)
        }))
    }

    /// Starts the task that acquires, renews and, on `shutdown`, releases the lease.
    pub fn spawn(self, shutdown: CancellationToken) -> LeaseHandle {
        let (sender, state) = watch::channel(LeaseState::Standby);
        let task = tokio::spawn(async move { self.run(sender, shutdown).await });
        LeaseHandle { state, task }
    }

    async fn write(&self, record: &LeaseRecord, revision: Option<u64>) -> Result<u64, WriteError> {
        let value = Bytes::from(serde_json::to_vec(record).unwrap_or_default());
        match self.register.write(value, revision).await {
            Ok(revision) => Ok(revision),
            Err(RegisterError::Conflict { .. }) => Err(WriteError::Lost),
            Err(err) => Err(WriteError::Other(err.to_string())),
        }
    }

    async fn run(self, sender: watch::Sender<LeaseState>, shutdown: CancellationToken) {
        // Often enough to see a release within a couple of seconds, whatever the ttl.
        let poll = (self.ttl / 5).min(Duration::from_secs(2));
        let renew_every = self.ttl / 3;
        let step_down_after = self.ttl - self.ttl / 4;
        // Standby: the revision seen and since when it has stood unchanged.
        let mut observed: Option<(u64, Instant)> = None;
        let mut held: Option<Held> = None;
        loop {
            let Some(current) = held.as_mut() else {
                if let Some(taken) = self.try_take(&mut observed).await {
                    tracing::info!(lease = %self.key, holder = %self.holder, "lease acquired");
                    held = Some(Held {
                        next_at: taken.sent_at + renew_every,
                        ..taken
                    });
                    let _ = sender.send(LeaseState::Active);
                    continue;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(poll) => {}
                }
                continue;
            };
            tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = sender.send(LeaseState::Standby);
                    self.release(current.revision).await;
                    return;
                }
                _ = tokio::time::sleep_until(current.next_at) => {}
            }
            let sending = Instant::now();
            let record = LeaseRecord {
                holder: self.holder.clone(),
                renewals: current.renewals + 1,
            };
            match self.write(&record, Some(current.revision)).await {
                Ok(revision) => {
                    *current = Held {
                        revision,
                        sent_at: sending,
                        renewals: record.renewals,
                        next_at: sending + renew_every,
                    }
                }
                Err(WriteError::Lost) => {
                    tracing::warn!(lease = %self.key, "lease taken by another process; stepping down");
                    held = None;
                    observed = None;
                    let _ = sender.send(LeaseState::Standby);
                }
                Err(WriteError::Other(error)) if current.sent_at.elapsed() >= step_down_after => {
                    tracing::warn!(lease = %self.key, %error, "lease not renewed in time; stepping down");
                    observed = Some((current.revision, current.sent_at));
                    held = None;
                    let _ = sender.send(LeaseState::Standby);
                }
                Err(WriteError::Other(error)) => {
                    tracing::warn!(lease = %self.key, %error, "lease renewal failed, retrying");
                    current.next_at = Instant::now() + poll;
                }
            }
        }
    }

    /// One standby round: takes the lease when it is free, released, or unchanged for a ttl.
    async fn try_take(&self, observed: &mut Option<(u64, Instant)>) -> Option<Held> {
        let current = match self.read().await {
            Ok(current) => current,
            Err(error) => {
                tracing::debug!(lease = %self.key, %error, "cannot read lease");
                return None;
            }
        };
        let revision = match &current {
            None => None,
            Some((record, revision)) => {
                let free = record.holder.is_empty();
                let stale = match observed {
                    Some((seen, since)) if *seen == *revision => since.elapsed() >= self.ttl,
                    _ => {
                        *observed = Some((*revision, Instant::now()));
                        false
                    }
                };
                if !free && !stale {
                    return None;
                }
                if stale {
                    tracing::warn!(lease = %self.key, previous = %record.holder, "lease holder stopped renewing; taking over");
                }
                Some(*revision)
            }
        };
        let sending = Instant::now();
        let record = LeaseRecord {
            holder: self.holder.clone(),
            renewals: 0,
        };
        match self.write(&record, revision).await {
            Ok(next) => Some(Held {
                revision: next,
                sent_at: sending,
                renewals: 0,
                next_at: sending,
            }),
            Err(_) => {
                *observed = None;
                None
            }
        }
    }

    async fn release(&self, revision: u64) {
        let record = LeaseRecord {
            holder: String::new(),
            renewals: 0,
        };
        match self.write(&record, Some(revision)).await {
            Ok(_) => tracing::info!(lease = %self.key, "lease released"),
            Err(_) => {
                tracing::warn!(lease = %self.key, "lease not released; a standby takes it after its ttl")
            }
        }
    }
}

/// The lease as its holder knows it.
struct Held {
    /// Revision of the last successful write.
    revision: u64,
    /// When that write was sent (the holder steps down `ttl - ttl/4` after it).
    sent_at: Instant,
    /// Renewals so far.
    renewals: u64,
    /// When to renew next.
    next_at: Instant,
}

enum WriteError {
    /// The compare-and-set failed: someone else wrote the key.
    Lost,
    /// NATS unreachable, timeout.
    Other(String),
}
