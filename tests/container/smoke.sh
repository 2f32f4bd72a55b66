#!/usr/bin/env bash
# Container smoke test: the image scripts/image.sh built, run the way the Kubernetes Deployments
# run it (deploy/k8s/base/*.yaml), against a nats-server and the Gong simulator on the host.
#
#   scripts/image.sh && bash tests/container/smoke.sh
#
# - The image: runs as 65532:65532, has no shell, carries a CA bundle without the host's own
#   authorities, stays under 100 MiB, and each binary's --help runs in it.
# - The pipeline: gong-ingest, gong-enrich and gong-load as three containers with the pod security
#   of the Deployments (read-only root file system and no other writable path than the emptyDir
#   mounts, user 65532, all capabilities dropped, no privilege escalation, the memory limits) and
#   their environment rendered from deploy/k8s/base/config.env plus test values (the host's NATS
#   and simulator, the dev overlay's file:///stage on a mounted directory). Signed webhooks in,
#   Parquet out on the mounted stage, /readyz and /metrics answered by the processes inside the
#   containers, JSON logs without secrets, and exit code 0 after `podman stop` (SIGTERM to PID 1).
# - The operator commands as docs/operations.md and deploy/k8s/jobs run them: `gong-ingest dlq
#   list` by exec in the running container, and both replay Jobs as one-shot containers (a deleted
#   stage comes back byte for byte).
#
# Needs podman and runc (scripts/setup.sh --test), root, nats-server, curl, and gong-sim
# (GONG_SIM, default target/debug/gong-sim: `cargo build -p gong-testkit --bin gong-sim`).
# Containers run with --network=host (loopback ports chosen free at start), --runtime runc and
# explicit ulimits (podman's defaults are refused here). Prints `ok - ...` per check and ends with
# `N passed, M failed`; exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/../.."

VERSION=$(sed -n '/^\[workspace\.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
IMAGE=${IMAGE:-localhost/gong-pipeline:$VERSION}
SIM=${GONG_SIM:-target/debug/gong-sim}
export PATH="$PATH:/usr/sbin"
NATS=${NATS_SERVER_BIN:-$(command -v nats-server || echo /usr/sbin/nats-server)}
COUNT=${SMOKE_COUNT:-40}
MAX_BYTES=$((100 * 1024 * 1024))

PODMAN=(podman --runtime runc)
RUN=("${PODMAN[@]}" run --network=host --ulimit nofile=20000:20000 --ulimit nproc=32768:32768)
# The Deployments' securityContext: runAsUser/runAsGroup 65532, readOnlyRootFilesystem (and no
# tmpfs of podman's own: only the volumes below are writable), capabilities drop ALL,
# allowPrivilegeEscalation false, seccomp RuntimeDefault (podman's default profile).
SECURE=(--read-only --read-only-tmpfs=false --user 65532:65532 --cap-drop=ALL
  --security-opt=no-new-privileges)

passed=0
failed=0
pass() { passed=$((passed + 1)); echo "ok - $1"; }
fail() { failed=$((failed + 1)); echo "FAIL - $1"; [ $# -lt 2 ] || printf '%s\n' "$2" | sed 's/^/    /' | tail -n 30; }
finish() { echo "$passed passed, $failed failed"; [ "$failed" -eq 0 ]; }
die() { fail "$1" "${2:-}"; finish; exit 1; }

for tool in podman runc curl "$NATS" "$SIM"; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is available (scripts/setup.sh --test; cargo build -p gong-testkit)"
done
podman image exists "$IMAGE" || die "image $IMAGE exists (build it with scripts/image.sh)"

work=$(mktemp -d "${TMPDIR:-/tmp}/gong-smoke.XXXXXX")
run_id="gong-smoke-$$"
PIDS=()
CONTAINERS=()
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  local name pid
  for name in "${CONTAINERS[@]}"; do
    if [ "$status" -ne 0 ] && podman container exists "$name"; then
      echo "--- last log lines of $name"
      podman logs --tail 15 "$name" 2>&1 | sed 's/^/    /' || true
    fi
    podman rm -f -t 0 "$name" >/dev/null 2>&1 || true
  done
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT INT TERM

# --- the image ---------------------------------------------------------------------------------
config() { podman image inspect --format "$1" "$IMAGE"; }
user=$(config '{{.Config.User}}')
if [ "$user" = "65532:65532" ]; then pass "image runs as 65532:65532"; else fail "image runs as 65532:65532 (USER is '$user')"; fi
entrypoint=$(config '{{json .Config.Entrypoint}}')
if [ "$entrypoint" = '["/usr/local/bin/gong-ingest"]' ]; then pass "image entrypoint is gong-ingest"
else fail "image entrypoint is gong-ingest (is $entrypoint)"; fi
size=$(config '{{.Size}}')
if [ "$size" -lt "$MAX_BYTES" ]; then pass "image is under 100 MiB ($((size / 1048576)) MiB)"
else fail "image is under 100 MiB ($size bytes)"; fi

for shell in /bin/sh /bin/bash /usr/bin/sh /bin/busybox; do
  if "${RUN[@]}" --rm "${SECURE[@]}" --entrypoint "$shell" "$IMAGE" -c true >/dev/null 2>&1; then
    fail "image has no shell ($shell runs)"
  else
    pass "image has no shell ($shell does not run)"
  fi
done

for bin in gong-ingest gong-enrich gong-load; do
  case $bin in
    gong-ingest) needle=GONG_WEBHOOK_SECRETS ;;
    gong-enrich) needle=GONG_ACCESS_KEY ;;
    gong-load) needle=STAGE_URL ;;
  esac
  if out=$("${RUN[@]}" --rm "${SECURE[@]}" --entrypoint "$bin" "$IMAGE" --help 2>&1) \
    && grep -q "$needle" <<<"$out"; then
    pass "$bin --help runs in the image (mentions $needle)"
  else
    fail "$bin --help runs in the image (mentions $needle)" "$out"
  fi
done
if out=$("${RUN[@]}" --rm "${SECURE[@]}" "$IMAGE" --help 2>&1) && grep -q GONG_WEBHOOK_SECRETS <<<"$out"; then
  pass "the default entrypoint answers --help as gong-ingest"
else
  fail "the default entrypoint answers --help as gong-ingest" "$out"
fi

# The CA bundle: Mozilla's list from the ca-certificates package, never the host's own authorities.
cid=$(podman create "$IMAGE")
podman cp "$cid:/etc/ssl/certs/ca-certificates.crt" "$work/image-ca.crt" 2>/dev/null || true
podman cp "$cid:/etc/passwd" "$work/image-passwd" 2>/dev/null || true
podman rm "$cid" >/dev/null
certs=$(grep -c 'BEGIN CERTIFICATE' "$work/image-ca.crt" 2>/dev/null || true)
if [ "${certs:-0}" -ge 100 ]; then pass "image has a CA bundle at /etc/ssl/certs/ca-certificates.crt ($certs certificates)"
else fail "image has a CA bundle at /etc/ssl/certs/ca-certificates.crt (${certs:-0} certificates)"; fi
tr -d '\n' <"$work/image-ca.crt" >"$work/image-ca.flat" 2>/dev/null || true
leaked=()
for host_ca in /usr/local/share/ca-certificates/*.crt; do
  [ -f "$host_ca" ] || continue
  body=$(sed '/-----/d' "$host_ca" | tr -d '\n\r')
  if [ -n "$body" ] && grep -qF "$body" "$work/image-ca.flat"; then leaked+=("$host_ca"); fi
done
if [ ${#leaked[@]} -eq 0 ]; then pass "the host's own CA certificates are not in the image's bundle"
else fail "the host's own CA certificates are not in the image's bundle: ${leaked[*]}"; fi
if grep -q '^nonroot:x:65532:65532:' "$work/image-passwd" 2>/dev/null; then pass "image's /etc/passwd names nonroot 65532"
else fail "image's /etc/passwd names nonroot 65532"; fi

# --- host side: nats-server and the Gong simulator ------------------------------------------------
read -r NATS_PORT SIM_PORT INGEST_PORT ADMIN_INGEST ADMIN_ENRICH ADMIN_LOAD < <(python3 - <<'PY'
import socket
socks = [socket.socket() for _ in range(6)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
)
mkdir -p "$work/nats" "$work/stage" "$work/snowflake" "$work/logs"
# The stage is the dev overlay's emptyDir at /stage: writable by the pod's fsGroup 65532.
chown 65532:65532 "$work/stage"
cat >"$work/nats.conf" <<CONF
listen: 127.0.0.1:$NATS_PORT
max_payload: 8MB
jetstream {
  store_dir: "$work/nats"
}
CONF
"$NATS" -c "$work/nats.conf" >"$work/logs/nats.log" 2>&1 &
PIDS+=($!)
ACCESS_KEY=smoke-key
ACCESS_SECRET="smoke-secret-$$-do-not-log"
"$SIM" serve --addr "127.0.0.1:$SIM_PORT" --access-key "$ACCESS_KEY" --access-key-secret "$ACCESS_SECRET" \
  >"$work/logs/gong-sim.log" 2>&1 &
PIDS+=($!)

wait_port() { # name port
  local deadline=$((SECONDS + 30))
  until (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || die "$1 listens on 127.0.0.1:$2" "$(tail -n 20 "$work/logs/$1.log")"
    sleep 0.1
  done
}
wait_port nats "$NATS_PORT"
wait_port gong-sim "$SIM_PORT"

# --- environment: the ConfigMap (config.env) with test values, plus each Deployment's secrets -----
render_env() { # out-file KEY=VALUE...
  local out=$1 line key
  shift
  local -A override=()
  local order=()
  for line in "$@"; do override[${line%%=*}]=${line#*=}; order+=("${line%%=*}"); done
  : >"$out"
  chmod 600 "$out"
  while IFS= read -r line || [ -n "$line" ]; do
    [[ $line =~ ^[A-Z_][A-Z0-9_]*= ]] || continue
    key=${line%%=*}
    if [ -n "${override[$key]+set}" ]; then
      echo "$key=${override[$key]}" >>"$out"
      unset "override[$key]"
    else
      echo "$line" >>"$out"
    fi
  done <deploy/k8s/base/config.env
  for key in "${order[@]}"; do
    [ -n "${override[$key]+set}" ] && echo "$key=${override[$key]}" >>"$out"
  done
  return 0
}
common=(
  "NATS_URL=nats://127.0.0.1:$NATS_PORT"
  "STREAM_REPLICAS=1"
  "INGEST_ADDR=127.0.0.1:$INGEST_PORT"
  "GONG_WEBHOOK_URL=http://127.0.0.1:$INGEST_PORT/webhooks/gong"
  "GONG_API_BASE_URL=http://127.0.0.1:$SIM_PORT"
  "STAGE_URL=file:///stage"
  "LOAD_FLUSH_MAX_AGE=2s"
)
webhook_key=$(sed '/-----/d' crates/testkit/keys/rule_a.pub.pem | tr -d '\n')
render_env "$work/ingest.env" "${common[@]}" "ADMIN_ADDR=127.0.0.1:$ADMIN_INGEST" \
  "GONG_WEBHOOK_SECRETS=$webhook_key"
render_env "$work/enrich.env" "${common[@]}" "ADMIN_ADDR=127.0.0.1:$ADMIN_ENRICH" \
  "GONG_ACCESS_KEY=$ACCESS_KEY" "GONG_ACCESS_KEY_SECRET=$ACCESS_SECRET"
render_env "$work/load.env" "${common[@]}" "ADMIN_ADDR=127.0.0.1:$ADMIN_LOAD"
if grep -q '^SNOWFLAKE_ACCOUNT=$' "$work/load.env" && grep -q '^RUST_LOG=info$' "$work/load.env" \
  && grep -q '^LOG_FORMAT=json$' "$work/load.env" && grep -q '^STREAM_REPLICAS=1$' "$work/load.env"; then
  pass "environment rendered from deploy/k8s/base/config.env (empty SNOWFLAKE_* kept, as the ConfigMap has them)"
else
  fail "environment rendered from deploy/k8s/base/config.env" "$(cat "$work/load.env")"
fi

# --- the three stages as containers ---------------------------------------------------------------
start() { # stage memory-limit tmp-size extra-args...
  local stage=$1 memory=$2 tmp=$3
  shift 3
  local name="$run_id-$stage"
  CONTAINERS+=("$name")
  if ! out=$("${RUN[@]}" -d --name "$name" "${SECURE[@]}" --memory "$memory" \
    --tmpfs "/tmp:rw,size=$tmp,mode=1777" --env-file "$work/$stage.env" "$@" \
    --entrypoint "gong-$stage" "$IMAGE" 2>&1); then
    die "gong-$stage starts as a container" "$out"
  fi
}
# Limits and emptyDir sizes from deploy/k8s/base/{ingest,enrich,load}.yaml.
start ingest 256m 64m
start enrich 512m 64m
start load 1g 1g -v "$work/stage:/stage:rw" -v "$work/snowflake:/var/run/secrets/gong/snowflake:ro"

ready() { # admin port
  curl -fsS -o /dev/null "http://127.0.0.1:$1/readyz" 2>/dev/null
}
unready=0
for pair in "ingest:$ADMIN_INGEST" "enrich:$ADMIN_ENRICH" "load:$ADMIN_LOAD"; do
  stage=${pair%%:*} port=${pair#*:}
  deadline=$((SECONDS + 60))
  until ready "$port" || [ $SECONDS -ge $deadline ]; do
    [ "$(podman inspect --format '{{.State.Running}}' "$run_id-$stage")" = true ] || break
    sleep 0.2
  done
  if ready "$port"; then
    pass "gong-$stage in its container answers /readyz 200"
  else
    fail "gong-$stage in its container answers /readyz 200" "$(podman logs --tail 20 "$run_id-$stage" 2>&1)"
    unready=$((unready + 1))
  fi
  if curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; then
    pass "gong-$stage answers /healthz"
  else
    fail "gong-$stage answers /healthz"
  fi
done
[ "$unready" -eq 0 ] || die "every stage became ready"

# --- signed webhooks in, Parquet out ---------------------------------------------------------------
first_id=$((7100000000000000000 + $$ * 1000))
if out=$("$SIM" send --url "http://127.0.0.1:$INGEST_PORT/webhooks/gong" --count "$COUNT" \
  --key crates/testkit/keys/rule_a.key.pem --first-call-id "$first_id" 2>&1); then
  pass "gong-sim sent $COUNT signed webhooks to the ingest container"
else
  fail "gong-sim sent $COUNT signed webhooks to the ingest container" "$out"
fi

inspect() { # gong-load inspect in the image, the stage mounted read-only
  "${RUN[@]}" --rm "${SECURE[@]}" -v "$work/stage:/stage:ro" --entrypoint gong-load "$IMAGE" \
    inspect /stage --summary --json 2>/dev/null
}
staged_calls() {
  inspect | sed -n 's/.*"distinct_calls":\([0-9]*\).*/\1/p' | head -n 1
}
deadline=$((SECONDS + 180))
staged=0
while [ $SECONDS -lt $deadline ]; do
  staged=$(staged_calls)
  staged=${staged:-0}
  [ "$staged" -ge "$COUNT" ] && break
  sleep 1
done
if [ "$staged" -eq "$COUNT" ]; then
  pass "all $COUNT calls staged as Parquet on the mounted stage (gong-load inspect in the image)"
else
  fail "all $COUNT calls staged as Parquet on the mounted stage: $staged of $COUNT" \
    "$(podman logs --tail 10 "$run_id-load" 2>&1)"
fi
files=$(find "$work/stage" -name 'gong_*.parquet' -path '*/calls/dt=*' | wc -l)
foreign=$(find "$work/stage" -type f ! -uid 65532 | wc -l)
if [ "$files" -ge 1 ] && [ "$foreign" -eq 0 ]; then
  pass "stage files are <table>/dt=<day>/gong_<range>.parquet, written by uid 65532 ($files calls files)"
else
  fail "stage files are <table>/dt=<day>/gong_<range>.parquet, written by uid 65532 ($files calls files, $foreign not owned by 65532)"
fi

# --- /metrics from inside the containers ----------------------------------------------------------
metric() { # port name label-regex: the sum of the matching samples
  curl -fsS "http://127.0.0.1:$1/metrics" 2>/dev/null \
    | awk -v name="$2" -v labels="$3" '
        index($0, name) == 1 && (substr($0, length(name) + 1, 1) == "{" || substr($0, length(name) + 1, 1) == " ") \
          && $0 ~ labels { sum += $NF; found = 1 }
        END { if (found) printf "%d\n", sum; else print "none" }'
}
check_metric() { # description port name label-regex expected (exact number, or + for > 0)
  local got
  got=$(metric "$2" "$3" "$4")
  if { [ "$5" = "+" ] && [ "$got" != none ] && [ "$got" -gt 0 ]; } || [ "$got" = "$5" ]; then
    pass "$1 ($3 = $got)"
  else
    fail "$1 ($3 = $got, want $5)"
  fi
}
check_metric "gong-ingest's /metrics counts the accepted webhooks" "$ADMIN_INGEST" \
  gong_ingest_requests_total 'outcome="accepted"' "$COUNT"
check_metric "gong-enrich's /metrics counts the enriched events" "$ADMIN_ENRICH" \
  gong_enrich_events_total 'outcome="enriched"' "$COUNT"
check_metric "gong-load's /metrics counts staged files" "$ADMIN_LOAD" gong_load_files_total '' +

# --- operator commands as the runbook and the replay Jobs run them ---------------------------------
# docs/operations.md: `kubectl exec deploy/gong-ingest -- gong-ingest dlq list` (no shell needed).
if out=$(podman exec "$run_id-ingest" gong-ingest dlq list 2>&1); then
  pass "gong-ingest dlq list runs by exec in the running container"
else
  fail "gong-ingest dlq list runs by exec in the running container" "$out"
fi
# deploy/k8s/jobs/*-replay.yaml: the same image, environment and pod security, one-shot.
if out=$("${RUN[@]}" --rm "${SECURE[@]}" --memory 512m --tmpfs "/tmp:rw,size=64m,mode=1777" \
  --env-file "$work/enrich.env" --entrypoint gong-enrich "$IMAGE" replay --from-seq 1 --dry-run 2>&1); then
  pass "gong-enrich replay --dry-run runs as a Job container and exits 0"
else
  fail "gong-enrich replay --dry-run runs as a Job container and exits 0" "$out"
fi
(cd "$work/stage" && find . -type f -name '*.parquet' -exec sha256sum {} + | LC_ALL=C sort) >"$work/stage-before"
# A lost stage (docs/operations.md, disaster recovery): the replay must bring the files back.
find "$work/stage" -type f -name '*.parquet' -delete
if out=$("${RUN[@]}" --rm "${SECURE[@]}" --memory 1g --tmpfs "/tmp:rw,size=1g,mode=1777" \
  --env-file "$work/load.env" -v "$work/stage:/stage:rw" --entrypoint gong-load "$IMAGE" \
  replay --from-seq 1 2>&1); then
  pass "gong-load replay --from-seq 1 runs as a Job container and exits 0"
else
  fail "gong-load replay --from-seq 1 runs as a Job container and exits 0" "$out"
fi
(cd "$work/stage" && find . -type f -name '*.parquet' -exec sha256sum {} + | LC_ALL=C sort) >"$work/stage-after"
if [ -s "$work/stage-before" ] && cmp -s "$work/stage-before" "$work/stage-after"; then
  pass "the replay rewrote the deleted stage files under the same names with the same bytes"
else
  fail "the replay rewrote the deleted stage files under the same names with the same bytes" \
    "$(diff "$work/stage-before" "$work/stage-after" | head -n 12)"
fi

# --- shutdown and logs ----------------------------------------------------------------------------
# Kubernetes sends SIGTERM to the container's PID 1 (the binary itself: no init) and waits
# terminationGracePeriodSeconds.
for stage in ingest enrich load; do
  name="$run_id-$stage"
  podman stop -t 60 "$name" >/dev/null 2>&1 || true
  code=$(podman inspect --format '{{.State.ExitCode}}' "$name")
  if [ "$code" = 0 ]; then
    pass "gong-$stage exits 0 on SIGTERM as PID 1"
  else
    fail "gong-$stage exits 0 on SIGTERM as PID 1 (exit code $code)" "$(podman logs --tail 10 "$name" 2>&1)"
  fi
  podman logs "$name" >"$work/logs/$stage.log" 2>&1 || true
  if python3 - "$work/logs/$stage.log" <<'PY'
import json, sys
lines = [line for line in open(sys.argv[1]) if line.strip()]
assert lines, "no log lines"
for line in lines:
    record = json.loads(line)
    assert "level" in record and "target" in record, line
PY
  then
    pass "gong-$stage logs JSON lines (LOG_FORMAT=json from the ConfigMap)"
  else
    fail "gong-$stage logs JSON lines (LOG_FORMAT=json from the ConfigMap)" "$(head -n 3 "$work/logs/$stage.log")"
  fi
done
if grep -qF -e "$ACCESS_SECRET" -e "$webhook_key" "$work"/logs/{ingest,enrich,load}.log; then
  fail "no secret (Gong access key secret, webhook key) in the containers' logs"
else
  pass "no secret (Gong access key secret, webhook key) in the containers' logs"
fi

finish
