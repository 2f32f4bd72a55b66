#!/usr/bin/env bash
# The whole test suite, as CI runs it (`.ci/run` calls this script):
# set-up of missing tools, formatting, lints, dependency policy and advisories, every crate's unit
# and integration tests against real nats-server processes, the deployment checks, the container
# image and its smoke test, and the benchmarks in quick mode.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --test
# Python comes from setup.sh's virtual environment (moto_server, the interop and deploy checks,
# the acceptance benchmark's baseline): its bin first on PATH.
export VIRTUAL_ENV="$PWD/${GONG_VENV:-target/venv}"
export PATH="$VIRTUAL_ENV/bin:$PATH:/usr/sbin"
if [ "${CI:-}" = "true" ]; then
  # Cold builds on 2 cores: incremental artefacts only cost time in a fresh clone.
  export CARGO_INCREMENTAL=0
fi
export RUST_BACKTRACE=1

# Each step ends with its duration (the suite must stay under 30 minutes on 2 cores in CI).
step_started=0
step_name="scripts/setup.sh --test"
step() {
  [ -z "$step_name" ] || echo "    ($step_name: $((SECONDS - step_started)) s)"
  step_started=$SECONDS
  step_name=${1:0:40}
  echo; echo "==> $*"
}

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo deny: advisories (RustSec snapshot, offline), bans, licenses, sources"
# deny.toml's db-path and scripts/advisory-db.sh's directory name are this version's.
deny_version=0.20.2
if ! command -v cargo-deny >/dev/null 2>&1; then
  if [ "${CI:-}" = "true" ]; then
    # A debug build of the tool compiles in a fraction of the release build's time.
    cargo install --locked --debug cargo-deny --version "$deny_version"
  else
    echo "cargo-deny not installed: skipping (install with: cargo install --locked cargo-deny --version $deny_version)"
  fi
fi
if command -v cargo-deny >/dev/null 2>&1; then
  # --offline also keeps cargo metadata offline: every platform's crates must be downloaded first.
  cargo fetch --locked --quiet
  if scripts/advisory-db.sh; then
    cargo deny --offline --locked --workspace check
  elif [ "${CI:-}" = "true" ]; then
    echo "the RustSec snapshot is missing: advisories cannot be checked" >&2
    exit 1
  else
    echo "no RustSec snapshot: checking bans, licenses and sources only"
    cargo deny --offline --locked --workspace check bans licenses sources
  fi
fi

step "cargo build (binaries the end-to-end tests run as processes)"
cargo build --workspace --bins --locked

step "cargo test (unit and integration tests, real nats-server per test)"
cargo test --workspace --locked

step "interop: PyJWT-signed webhooks, nats-py reading GONG_RAW, pyarrow and DuckDB reading the stage"
python3 tests/interop/check_interop.py

step "snowflake: setup.sql in fakesnow, a gong-load stage loaded twice, docs/analytics.md answers"
tests/snowflake/check.sh

step "the README's run command, once"
scripts/run-local.sh --once --count 200 --dir target/run-local

if [ -f tests/deploy/check.sh ]; then
  step "deployment checks (kustomize render, strict validation, hardening, metric names)"
  bash tests/deploy/check.sh
fi

step "container image (scripts/image.sh: a runtime base from Debian packages, podman, offline)"
if [ "$(id -u)" -eq 0 ] || [ "${CI:-}" = "true" ]; then
  scripts/image.sh
  step "container smoke test (the three stages as containers of the image, hardened as in deploy/k8s)"
  GONG_SIM=target/debug/gong-sim bash tests/container/smoke.sh
else
  echo "not root: skipping the image and its smoke test (podman's root store; run as root)"
fi

if [ -x benches/quick.sh ]; then
  step "benchmarks, quick mode (no assertion on time)"
  benches/quick.sh
fi

step "done"
echo "all checks passed in $((SECONDS / 60)) min $((SECONDS % 60)) s"
