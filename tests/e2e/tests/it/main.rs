//! The whole pipeline as real processes (gong-ingest, gong-enrich, gong-load, gong-sim) against
//! real nats-server processes, the Gong double and moto: faults that span stages.
//!
//! Needs the binaries: `cargo build --workspace --bins` (scripts/test.sh does it first).
//! `E2E_SCALE=long` runs the long versions (scripts/reliability.sh). docs/reliability.md says
//! what each scenario checks.

mod support;

mod analyst_data;
mod chaos;
mod cluster;
mod fresh_cluster;
mod metrics_contract;
mod nats_outage;
mod production;
mod stage_faults;
