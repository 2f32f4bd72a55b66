#!/usr/bin/env bash
# Runs every benchmark in quick mode (small counts, debug build, no assertion on time) so the
# benches keep working. Full runs and results: docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin"
cargo build --locked --workspace --bins
for bench in target/debug/*-bench; do
  [ -x "$bench" ] || continue
  echo "--- $(basename "$bench") --quick"
  RUST_LOG=error "$bench" --quick
done
# The acceptance run (gong-ingest vs FastAPI vs the JetStream ceiling, with wrk), tiny.
echo "--- benches/acceptance/run.sh --quick"
benches/acceptance/run.sh --quick
