//! gong-e2e: whole-pipeline reliability tests (no library code).
//!
//! The integration-test binary `tests/it` runs the real `gong-ingest`, `gong-enrich`,
//! `gong-load` and `gong-sim` binaries as child processes, from the workspace target directory,
//! against real nats-server processes (one, or a three-node JetStream cluster), the Gong API
//! double and moto's S3 server, and reads the stage back with the parquet crate and
//! `gong_load::inspect::summary`.
//!
//! Build the binaries first (`scripts/test.sh` does): `cargo build --workspace --bins`, then
//! `cargo test -p gong-e2e`. `E2E_SCALE=long` runs the same scenarios longer
//! (`scripts/reliability.sh`); `E2E_SEED=<n>` replays a chaos schedule. What each scenario
//! checks is written down in `docs/reliability.md`.
