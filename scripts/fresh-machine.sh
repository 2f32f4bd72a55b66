#!/usr/bin/env bash
# Checks the README's "Two commands" on a fresh Debian 12 machine: a container made from a bare
# bookworm root file system (mmdebstrap --variant=apt: Essential packages, apt, git and
# ca-certificates, nothing else), given only what the README says must already exist:
#   - git and a clean clone of this repository's HEAD at /src/gong-pipeline, with a copy of
#     ../shared/rustsec-advisory-db at /src/shared/rustsec-advisory-db;
#   - the host's rustup toolchains (/root/.rustup, read-only) and the rustup proxies in a fresh
#     CARGO_HOME (/root/.cargo: empty registry, no cargo-deny).
# Then runs, as root in that one container, `scripts/run-local.sh --once` and `CI=true
# scripts/test.sh` (as .ci/run does) exactly as written, and prints each command's result and time.
# Slow (a cold build, then the whole suite): not part of scripts/test.sh.
#
#   scripts/fresh-machine.sh                 # both commands
#   scripts/fresh-machine.sh --run-only      # only scripts/run-local.sh --once
#   scripts/fresh-machine.sh --rebuild-rootfs  # remake the Debian image with current packages
#   scripts/fresh-machine.sh --keep          # leave the container running afterwards (podman exec)
#
# Needs root, podman, runc and mmdebstrap (scripts/setup.sh --test installs them). The container
# runs with host networking and --privileged (the suite's image step runs podman and mmdebstrap
# inside it, with its own store under $FRESH_DIR/containers). Downloads (crates.io, PyPI) go
# through the host's CA bundle, mounted over the container's (FRESH_CA_BUNDLE= to not mount it).
# Work files: $FRESH_DIR (default /var/tmp/gong-fresh), removed at the start of each run.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

REBUILD=0
TEST=1
KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --rebuild-rootfs) REBUILD=1 ;;
    --run-only) TEST=0 ;;
    --keep) KEEP=1 ;;
    -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 64 ;;
  esac
  shift
done

say() { echo "fresh: $*"; }
die() { echo "fresh: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (podman's root store, mmdebstrap --mode=root)"
for tool in podman runc mmdebstrap; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is missing (scripts/setup.sh --test installs it)"
done
RUSTUP_HOME_HOST=${RUSTUP_HOME:-$HOME/.rustup}
RUSTUP_BIN=$(command -v rustup) || die "no rustup on PATH: the container borrows the host's"
[ -d "$RUSTUP_HOME_HOST/toolchains" ] || die "no rustup toolchains under $RUSTUP_HOME_HOST"
SNAPSHOT=${ADVISORY_DB_SNAPSHOT:-$REPO/../shared/rustsec-advisory-db}
[ -d "$SNAPSHOT/crates" ] || die "no RustSec snapshot at $SNAPSHOT"
CA_BUNDLE=${FRESH_CA_BUNDLE-/etc/ssl/certs/ca-certificates.crt}

IMAGE=localhost/gong-fresh-debian:bookworm
FRESH_DIR=${FRESH_DIR:-/var/tmp/gong-fresh}
NAME=gong-fresh-$$
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org}
PODMAN=(podman --runtime runc)

# --- the fresh machine's image ---------------------------------------------------------------
if [ "$REBUILD" -eq 1 ] || ! podman image exists "$IMAGE"; then
  say "making $IMAGE (mmdebstrap --variant=apt, plus git and ca-certificates)"
  work=$(mktemp -d "${TMPDIR:-/tmp}/gong-fresh-rootfs.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  mmdebstrap --quiet --variant=apt --mode=root --format=tar --include=git,ca-certificates \
    bookworm "$work/rootfs.tar" \
    "deb $MIRROR/debian bookworm main" \
    "deb $MIRROR/debian bookworm-updates main" \
    "deb $MIRROR/debian-security bookworm-security main" </dev/null
  # root's PATH on Debian, with rustup's ~/.cargo/bin first as its installer leaves it.
  podman import --quiet \
    --change "ENV PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change 'ENV LANG=C.UTF-8' \
    --change 'WORKDIR /root' \
    --message "fresh Debian bookworm (variant apt, git, ca-certificates): scripts/fresh-machine.sh" \
    "$work/rootfs.tar" "$IMAGE" >/dev/null
  rm -rf "$work"
  trap - EXIT
fi

# --- the machine -----------------------------------------------------------------------------
rm -rf "$FRESH_DIR"
mkdir -p "$FRESH_DIR/containers"
mounts=(
  -v "$REPO:/mnt/repo:ro"
  -v "$(cd "$SNAPSHOT" && pwd):/mnt/rustsec-advisory-db:ro"
  -v "$RUSTUP_HOME_HOST:/root/.rustup:ro"
  -v "$RUSTUP_BIN:/mnt/rustup:ro"
  -v "$FRESH_DIR/containers:/var/lib/containers"
)
if [ -n "$CA_BUNDLE" ]; then mounts+=(-v "$CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro"); fi

cleanup() {
  if [ "$KEEP" -eq 1 ]; then
    say "container $NAME left running: podman exec -it $NAME bash; podman rm -f $NAME"
  else
    podman rm -f -t 0 "$NAME" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT
"${PODMAN[@]}" run -d --name "$NAME" --privileged --network=host \
  --ulimit nofile=20000:20000 --ulimit nproc=32768:32768 \
  "${mounts[@]}" "$IMAGE" sleep infinity >/dev/null

# What the README says exists on the machine, and nothing more: a clone of HEAD with the RustSec
# snapshot beside it, and rustup's proxies (cargo, rustc, rustfmt, clippy, ...) on PATH.
podman exec "$NAME" bash -euo pipefail -c '
  git clone --quiet --no-local /mnt/repo /src/gong-pipeline
  mkdir -p /src/shared && cp -a /mnt/rustsec-advisory-db /src/shared/rustsec-advisory-db
  mkdir -p /root/.cargo/bin && cp /mnt/rustup /root/.cargo/bin/rustup
  for proxy in cargo cargo-clippy cargo-fmt clippy-driver rustc rustdoc rustfmt rust-gdb; do
    ln -s rustup "/root/.cargo/bin/$proxy"
  done
  echo "fresh: clone of $(git -C /src/gong-pipeline log -1 --format="%h %s" | cut -c1-80)"
  echo "fresh: $(cargo --version), $(rustc --version)"
'

# The container shares the host's network: run-local.sh's fixed ports moved away from their
# defaults, which a run of scripts/test.sh on the host may hold at the same time.
PORTS=(-e NATS_PORT=24222 -e SIM_PORT=28090 -e INGEST_PORT=28080
  -e ADMIN_INGEST=29091 -e ADMIN_ENRICH=29092 -e ADMIN_LOAD=29093)

results=()
run_step() { # label, command (run by bash in /src/gong-pipeline)
  local label=$1 command=$2 started=$SECONDS status=0
  say "=== $label: $command"
  podman exec -w /src/gong-pipeline "${PORTS[@]}" "$NAME" nice -n 15 bash -c "$command" \
    || status=$?
  local took=$((SECONDS - started))
  results+=("$(printf '%-16s exit %-3s %3d min %02d s  %s' "$label" "$status" \
    $((took / 60)) $((took % 60)) "$command")")
  say "=== $label: exit $status after $((took / 60)) min $((took % 60)) s"
  return "$status"
}

overall=0
run_step "first command" "scripts/run-local.sh --once" || overall=1
if [ "$TEST" -eq 1 ] && [ "$overall" -eq 0 ]; then
  run_step "second command" "CI=true scripts/test.sh" || overall=1
fi
echo
say "results (clone at /src/gong-pipeline in $NAME):"
printf '  %s\n' "${results[@]}"
exit "$overall"
