#!/usr/bin/env bash
# Installs what gong-pipeline needs on a fresh Debian/Ubuntu machine: nats-server and curl (Debian
# packages) and, with --test, the Python helpers the test suite starts (moto's S3 server,
# kubernetes-validate) and the acceptance benchmark's tools (wrk, FastAPI, uvicorn). Safe to run
# again: it only installs what is missing.
set -euo pipefail

want_test_tools=0
for arg in "$@"; do
  case "$arg" in
    --test) want_test_tools=1 ;;
    -h|--help)
      echo "usage: scripts/setup.sh [--test]"
      echo "  installs nats-server and curl (apt) when missing; --test also installs the test helpers from PyPI:"
      echo "  moto[server], kubernetes-validate, PyJWT, cryptography, nats-py, pyarrow, duckdb,"
      echo "  fastapi, uvicorn[standard]; and wrk (apt) for benches/acceptance/run.sh"
      exit 0 ;;
  esac
done

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else
    echo "setup: need root to run: $*" >&2
    return 1
  fi
}

have_nats() {
  command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || [ -n "${NATS_SERVER_BIN:-}" ]
}

if ! have_nats; then
  echo "setup: installing nats-server from Debian packages"
  if command -v apt-get >/dev/null 2>&1; then
    as_root apt-get update -qq || true
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null || {
      echo "setup: could not install nats-server. Install it yourself (apt-get install nats-server)," >&2
      echo "       or put a nats-server binary on PATH, or set NATS_SERVER_BIN=/path/to/nats-server" >&2
      exit 1
    }
  else
    echo "setup: nats-server is missing and apt-get is not available." >&2
    echo "       Install nats-server (>= 2.9) and put it on PATH, or set NATS_SERVER_BIN." >&2
    exit 1
  fi
fi
if ! command -v curl >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing curl from Debian packages"
    as_root apt-get update -qq || true
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null || true
  fi
  if ! command -v curl >/dev/null 2>&1; then
    echo "setup: curl is missing and could not be installed (scripts/run-local.sh and the" >&2
    echo "       benchmarks need it). Install it yourself (apt-get install curl) and run again." >&2
    exit 1
  fi
fi
# Debian installs it under /usr/sbin, which is not always on a user's PATH.
if ! command -v nats-server >/dev/null 2>&1 && [ -x /usr/sbin/nats-server ]; then
  export PATH="$PATH:/usr/sbin"
fi

if [ "$want_test_tools" -eq 1 ]; then
  py=python3
  if ! "$py" -c 'import moto.server' >/dev/null 2>&1; then
    echo "setup: installing moto[server] (S3 test double) from PyPI"
    "$py" -m pip install -q --disable-pip-version-check 'moto[server]>=5' >/dev/null
  fi
  if ! "$py" -c 'import jwt, nats, pyarrow, duckdb, cryptography' >/dev/null 2>&1; then
    echo "setup: installing PyJWT, cryptography, nats-py, pyarrow, duckdb (independent interop checks)"
    "$py" -m pip install -q --disable-pip-version-check PyJWT cryptography nats-py pyarrow duckdb >/dev/null
  fi
  if ! "$py" -c 'import fastapi, uvicorn, uvloop, httptools' >/dev/null 2>&1; then
    echo "setup: installing fastapi, uvicorn[standard] (the acceptance benchmark's Python baseline)"
    "$py" -m pip install -q --disable-pip-version-check fastapi 'uvicorn[standard]' >/dev/null
  fi
  if ! command -v wrk >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing wrk from Debian packages (the acceptance benchmark's load generator)"
    as_root apt-get update -qq || true
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
  fi
  if ! command -v kubernetes-validate >/dev/null 2>&1 && ! "$py" -c 'import kubernetes_validate' >/dev/null 2>&1; then
    echo "setup: installing kubernetes-validate from PyPI"
    "$py" -m pip install -q --disable-pip-version-check kubernetes-validate >/dev/null
  fi
fi
echo "setup: ok (nats-server $(nats-server --version 2>/dev/null || /usr/sbin/nats-server --version))"
