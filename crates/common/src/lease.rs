//! A lease: one active process among replicas, the others hot standbys.
//!
//! Replicated work that must not run twice at once (the live loader, a sweep) is guarded by a
//! [`Register`] (a KV bucket of its own, `gong_lease_<job>`, compare-and-set that is atomic on
//! a nats-server 2.9 cluster, unlike `kv::Store::update`). The value names the holder; the
//! holder renews it by compare-and-set every `ttl / 3`. Nothing compares one pod's wall clock
//! with another's:
//!
//! - a standby reads the key every `ttl / 5` (at most every 2 s) and takes the lease (CAS on
//!   the revision it read) when the key is missing or released, or when the **same revision**
//!   has stood for a whole `ttl` by the standby's own monotonic clock (the holder stopped
//!   renewing);
//! - the holder measures from the moment it *sent* its last successful renewal: `ttl - ttl / 4`
//!   later it steps down (reports `Standby`) unless another renewal succeeded meanwhile. Every
//!   write and read it makes while holding is raced against that deadline, so a renewal stuck
//!   for the whole NATS request timeout (a partition, an election) cannot keep it `Active`: it
//!   steps down at the deadline with the write still in flight. A standby starts counting only
//!   once it saw that renewal (later than it was sent) and counts a whole `ttl`, so the holder
//!   is `Standby` at least `ttl / 4` before any standby can take over - unless one of the two
//!   processes is frozen (stopped, its runtime starved) for longer than that margin;
//! - a renewal that fails (a conflict, a timeout, no answer) is checked by reading the key: the
//!   write may have been stored with only its answer lost. If the key holds this process's own
//!   value with the renewal count just attempted, the holder adopts that revision and stays
//!   `Active` (its deadline counted from the *first* send of that renewal); another holder's
//!   value (or a release) means another process took the lease: step down at once; the old
//!   revision means the write was not stored: retry until the deadline. A takeover write whose
//!   answer was lost is recognised the same way;
//! - on shutdown the holder reports `Standby`, then writes the key as released, so a standby
//!   takes over within a poll.
//!
//! The bucket has no direct gets (`ensure_kv`), so every read comes from the stream leader and
//! a stale follower can never make a standby believe the holder has stopped renewing (a leader
//! elected a moment ago may lag; a takeover based on its answer loses its compare-and-set).
//!
//! A lease makes the common case single-writer; it is not the only guard. Work under a lease
//! stays safe if two processes briefly overlap (a holder frozen longer than the margin, work
//! already under way when `Standby` was reported): the loader's range claims are
//! compare-and-set too, and a range's files are a pure function of it.

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

    /// Writes `record` if the key is still at `expected`; on any failure (a conflict, or an
    /// error that leaves open whether the write was stored) reads the key to tell whether this
    /// very write is there after all.
    async fn write_checked(&self, record: &LeaseRecord, expected: Option<u64>) -> Written {
        let value = Bytes::from(serde_json::to_vec(record).unwrap_or_default());
        let error = match self.register.write(value, expected).await {
            Ok(revision) => return Written::Stored(revision),
            Err(error) => error,
        };
        let current = match self.read().await {
            Ok(current) => current,
            Err(read_error) => {
                return Written::Unknown(format!("{error}; then cannot read the key: {read_error}"))
            }
        };
        match judge(current.as_ref(), record, expected) {
            Verdict::Landed(revision) => {
                tracing::info!(lease = %self.key, %error, revision, "lease write stored though its answer was lost; keeping it");
                Written::Adopted(revision)
            }
            Verdict::NotStored => Written::Unknown(error.to_string()),
            Verdict::Taken(holder) => Written::Taken(holder),
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
                if let Some(taken) = self.try_take(&mut observed, step_down_after).await {
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
            // Past this instant a standby may soon take over: never report Active after it.
            let deadline = current.sent_at + step_down_after;
            let due = tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = sender.send(LeaseState::Standby);
                    self.release(current.revision).await;
                    return;
                }
                _ = tokio::time::sleep_until(deadline) => false,
                _ = tokio::time::sleep_until(current.next_at) => true,
            };
            let outcome = if due {
                let attempted = current.renewals + 1;
                // Every attempt of one renewal writes the same value: if an earlier one was
                // stored after all, it counts from when it was sent.
                let first_sent = *current.renewing_since.get_or_insert_with(Instant::now);
                let record = LeaseRecord {
                    holder: self.holder.clone(),
                    renewals: attempted,
                };
                let sending = Instant::now();
                tokio::select! {
                    written = self.write_checked(&record, Some(current.revision)) => Some((written, sending, first_sent)),
                    _ = tokio::time::sleep_until(deadline) => None,
                }
            } else {
                None
            };
            let Some((written, sending, first_sent)) = outcome else {
                tracing::warn!(lease = %self.key, "lease not renewed in time; stepping down");
                observed = Some((current.revision, current.sent_at));
                held = None;
                let _ = sender.send(LeaseState::Standby);
                continue;
            };
            match written {
                Written::Stored(revision) => {
                    *current = Held {
                        revision,
                        sent_at: sending,
                        renewals: current.renewals + 1,
                        next_at: sending + renew_every,
                        renewing_since: None,
                    }
                }
                Written::Adopted(revision) => {
                    *current = Held {
                        revision,
                        sent_at: first_sent,
                        renewals: current.renewals + 1,
                        next_at: first_sent + renew_every,
                        renewing_since: None,
                    }
                }
                Written::Taken(holder) => {
                    tracing::warn!(lease = %self.key, %holder, "lease taken by another process; stepping down");
                    held = None;
                    observed = None;
                    let _ = sender.send(LeaseState::Standby);
                }
                Written::Unknown(error) => {
                    tracing::warn!(lease = %self.key, %error, "lease renewal failed, retrying");
                    current.next_at = Instant::now() + poll;
                }
            }
        }
    }

    /// One standby round: takes the lease when it is free, released, or unchanged for a ttl.
    async fn try_take(
        &self,
        observed: &mut Option<(u64, Instant)>,
        step_down_after: Duration,
    ) -> Option<Held> {
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
        let taken = match self.write_checked(&record, revision).await {
            Written::Stored(next) | Written::Adopted(next) => next,
            Written::Taken(_) | Written::Unknown(_) => {
                *observed = None;
                return None;
            }
        };
        if sending.elapsed() >= step_down_after {
            // Held, but the write took so long that the holder would already have to step
            // down: stay a standby; the key is taken again once it stood still for a ttl.
            tracing::warn!(lease = %self.key, "lease taken too slowly to act on; staying a standby");
            *observed = Some((taken, sending));
            return None;
        }
        Some(Held {
            revision: taken,
            sent_at: sending,
            renewals: 0,
            next_at: sending,
            renewing_since: None,
        })
    }

    async fn release(&self, revision: u64) {
        let record = LeaseRecord {
            holder: String::new(),
            renewals: 0,
        };
        let value = Bytes::from(serde_json::to_vec(&record).unwrap_or_default());
        match self.register.write(value, Some(revision)).await {
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
    /// When the first attempt of the renewal under way was sent (retries write the same value).
    renewing_since: Option<Instant>,
}

/// What became of a lease write.
enum Written {
    /// Stored: the new revision.
    Stored(u64),
    /// Failed, but the key holds this very write: its answer was lost. The revision.
    Adopted(u64),
    /// Another process wrote the key (named; empty when released).
    Taken(String),
    /// Not stored as far as can be told (NATS unreachable, timeout, a lagging leader).
    Unknown(String),
}

/// What the key read after a failed write says about that write.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// The key holds the value written, at a revision after the one expected.
    Landed(u64),
    /// The key is still at the expected revision (or the answer is older): not stored.
    NotStored,
    /// Another value is there: another process wrote the key. Its holder.
    Taken(String),
}

/// Judges `current` (the key read after a failed write of `written` expecting `expected`).
fn judge(
    current: Option<&(LeaseRecord, u64)>,
    written: &LeaseRecord,
    expected: Option<u64>,
) -> Verdict {
    let Some((record, revision)) = current else {
        return match expected {
            None => Verdict::NotStored,
            // Purged under us: whatever happened, it is not this holder's any more.
            Some(_) => Verdict::Taken(String::new()),
        };
    };
    let after = expected.is_none_or(|expected| *revision > expected);
    if !after {
        // The expected revision itself, or an older one from a leader that has not applied
        // everything yet: nothing tells the write was stored.
        return Verdict::NotStored;
    }
    if record == written {
        Verdict::Landed(*revision)
    } else {
        Verdict::Taken(record.holder.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(holder: &str, renewals: u64) -> LeaseRecord {
        LeaseRecord {
            holder: holder.to_string(),
            renewals,
        }
    }

    #[test]
    fn a_failed_write_found_in_the_key_is_adopted_only_when_it_is_this_very_write() {
        let written = record("me", 4);
        // Stored, answer lost.
        assert_eq!(
            judge(Some(&(record("me", 4), 11)), &written, Some(10)),
            Verdict::Landed(11)
        );
        // A takeover (first write of the key) whose answer was lost.
        assert_eq!(
            judge(Some(&(record("me", 0), 1)), &record("me", 0), None),
            Verdict::Landed(1)
        );
        // Still the old revision, or an older answer from a lagging leader: not stored.
        assert_eq!(
            judge(Some(&(record("me", 3), 10)), &written, Some(10)),
            Verdict::NotStored
        );
        assert_eq!(
            judge(Some(&(record("me", 2), 9)), &written, Some(10)),
            Verdict::NotStored
        );
        assert_eq!(judge(None, &record("me", 0), None), Verdict::NotStored);
        // Someone else's value, a release, another renewal count, a purge: taken.
        assert_eq!(
            judge(Some(&(record("other", 0), 11)), &written, Some(10)),
            Verdict::Taken("other".to_string())
        );
        assert_eq!(
            judge(Some(&(record("", 0), 11)), &written, Some(10)),
            Verdict::Taken(String::new())
        );
        assert_eq!(
            judge(Some(&(record("me", 5), 11)), &written, Some(10)),
            Verdict::Taken("me".to_string())
        );
        assert_eq!(
            judge(None, &written, Some(10)),
            Verdict::Taken(String::new())
        );
    }
}
