#!/usr/bin/env bash
# The whole pipeline on this machine, with a Gong simulator instead of Gong:
# nats-server (data in .local/nats) → gong-ingest → gong-enrich (against gong-sim's API double)
# → gong-load (Parquet under .local/stage). Sends signed webhooks, waits until every call is
# staged, prints a summary, and keeps running until Ctrl-C (--once: exit after the summary).
#
# Demo keys from crates/testkit/keys are used to sign and verify webhooks: never use them for
# anything real.
set -euo pipefail
cd "$(dirname "$0")/.."

ONCE=0
KEEP=0
COUNT=300
DIR=.local
while [ $# -gt 0 ]; do
  case "$1" in
    --once) ONCE=1 ;;
    --count) COUNT="$2"; shift ;;
    --dir) DIR="$2"; shift ;;
    --keep) KEEP=1 ;;
    -h|--help)
      echo "usage: scripts/run-local.sh [--once] [--count N] [--dir DIR] [--keep]"
      echo "  --once     exit after the summary (default: keep running until Ctrl-C)"
      echo "  --count N  webhooks to send (default 300)"
      echo "  --dir DIR  where NATS data, logs and the stage go (default .local)"
      echo "  --keep     keep DIR's NATS data and stage from the last run (default: start fresh)"
      exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 64 ;;
  esac
  shift
done

scripts/setup.sh
export PATH="$PATH:/usr/sbin"
# Like the testkit and setup.sh: NATS_SERVER_BIN first, then PATH, then Debian's location.
NATS=${NATS_SERVER_BIN:-$(command -v nats-server || echo /usr/sbin/nats-server)}

echo "==> building (debug profile)"
cargo build --quiet --bins -p gong-ingest -p gong-enrich -p gong-load -p gong-testkit
BIN=target/debug

# Fixed loopback ports (override with the variables), away from a system nats-server on 4222.
NATS_PORT=${NATS_PORT:-14222}
SIM_PORT=${SIM_PORT:-18090}
INGEST_PORT=${INGEST_PORT:-18080}
ADMIN_INGEST=${ADMIN_INGEST:-19091}
ADMIN_ENRICH=${ADMIN_ENRICH:-19092}
ADMIN_LOAD=${ADMIN_LOAD:-19093}
# A port already taken (another run-local.sh, a test suite) would let this run's processes die
# while the other's answer /readyz and take the webhooks: refuse to start instead.
for pair in NATS_PORT:$NATS_PORT SIM_PORT:$SIM_PORT INGEST_PORT:$INGEST_PORT \
  ADMIN_INGEST:$ADMIN_INGEST ADMIN_ENRICH:$ADMIN_ENRICH ADMIN_LOAD:$ADMIN_LOAD; do
  if (exec 3<>"/dev/tcp/127.0.0.1/${pair#*:}") 2>/dev/null; then
    echo "port ${pair#*:} on 127.0.0.1 is in use (another run-local.sh?): stop that, or choose" \
      "another with ${pair%%:*}=<port>" >&2
    exit 1
  fi
done
if [ "$KEEP" -eq 0 ] && [ -d "$DIR" ]; then rm -rf "$DIR/nats" "$DIR/stage" "$DIR/logs"; fi
mkdir -p "$DIR/nats" "$DIR/logs" "$DIR/stage"
DIR_ABS=$(cd "$DIR" && pwd)
STAGE="$DIR_ABS/stage"

cat > "$DIR/nats.conf" <<CONF
listen: 127.0.0.1:$NATS_PORT
max_payload: 8MB
jetstream {
  store_dir: "$DIR_ABS/nats"
}
CONF

PIDS=()
cleanup() {
  trap - EXIT INT TERM
  echo "==> stopping"
  # Stages first (they drain and ack), then the simulator, then nats-server last.
  local index
  for (( index=${#PIDS[@]}-1; index>=0; index-- )); do
    kill -TERM "${PIDS[$index]}" 2>/dev/null || true
    wait "${PIDS[$index]}" 2>/dev/null || true
  done
}
trap cleanup EXIT INT TERM

declare -A PID_OF
start() { # name, command...
  local name=$1; shift
  "$@" >"$DIR/logs/$name.log" 2>&1 &
  PIDS+=($!)
  PID_OF[$name]=$!
  echo "    $name (pid $!, log $DIR/logs/$name.log)"
}

wait_ready() { # name, admin port, pid
  for _ in $(seq 1 300); do
    if ! kill -0 "$3" 2>/dev/null; then
      echo "$1 exited; see $DIR/logs/$1.log" >&2
      tail -20 "$DIR/logs/$1.log" >&2 || true
      exit 1
    fi
    if curl -fsS "http://127.0.0.1:$2/readyz" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  echo "$1 did not become ready; see $DIR/logs/$1.log" >&2
  tail -20 "$DIR/logs/$1.log" >&2 || true
  exit 1
}

export NATS_URL="nats://127.0.0.1:$NATS_PORT"
export LOG_FORMAT=pretty
export RUST_LOG=${RUST_LOG:-info}
ACCESS_KEY=local-demo-key
ACCESS_SECRET=local-demo-secret

echo "==> starting"
start nats-server "$NATS" -c "$DIR/nats.conf"
# The simulated company also has users and answered scorecards, which gong-enrich fetches at
# start (the users and answered_scorecards tables).
start gong-sim "$BIN/gong-sim" serve --addr "127.0.0.1:$SIM_PORT" \
  --access-key "$ACCESS_KEY" --access-key-secret "$ACCESS_SECRET" --users 25 --scorecards 40
start gong-ingest env INGEST_ADDR="127.0.0.1:$INGEST_PORT" ADMIN_ADDR="127.0.0.1:$ADMIN_INGEST" \
  GONG_WEBHOOK_SECRETS="$(cat crates/testkit/keys/rule_a.pub.pem)" \
  GONG_WEBHOOK_URL="http://127.0.0.1:$INGEST_PORT/webhooks/gong" \
  "$BIN/gong-ingest"
start gong-enrich env ADMIN_ADDR="127.0.0.1:$ADMIN_ENRICH" GONG_API_BASE_URL="http://127.0.0.1:$SIM_PORT" \
  GONG_ACCESS_KEY="$ACCESS_KEY" GONG_ACCESS_KEY_SECRET="$ACCESS_SECRET" \
  "$BIN/gong-enrich"
start gong-load env ADMIN_ADDR="127.0.0.1:$ADMIN_LOAD" STAGE_URL="file://$STAGE" LOAD_FLUSH_MAX_AGE=5s \
  "$BIN/gong-load"
wait_ready gong-ingest "$ADMIN_INGEST" "${PID_OF[gong-ingest]}"
wait_ready gong-enrich "$ADMIN_ENRICH" "${PID_OF[gong-enrich]}"
wait_ready gong-load "$ADMIN_LOAD" "${PID_OF[gong-load]}"
for name in nats-server gong-sim; do
  if ! kill -0 "${PID_OF[$name]}" 2>/dev/null; then
    echo "$name exited; see $DIR/logs/$name.log" >&2
    tail -20 "$DIR/logs/$name.log" >&2 || true
    exit 1
  fi
done

staged_calls() {
  local n
  n=$("$BIN/gong-load" inspect "$STAGE" --summary --json 2>/dev/null \
    | sed -n 's/.*"distinct_calls":\([0-9]*\).*/\1/p')
  echo "${n:-0}"
}
BEFORE=$(staged_calls)
WANT=$(( BEFORE + COUNT ))

echo "==> sending $COUNT signed webhooks"
FIRST_ID=$(( 7000000000000000000 + $(date +%s) * 1000 ))
"$BIN/gong-sim" send --url "http://127.0.0.1:$INGEST_PORT/webhooks/gong" --count "$COUNT" \
  --key crates/testkit/keys/rule_a.key.pem --first-call-id "$FIRST_ID"

echo "==> waiting until every call is staged (flush age 5s)"
staged=0
for _ in $(seq 1 600); do
  staged=$(staged_calls)
  if [ "$staged" -ge "$WANT" ]; then break; fi
  sleep 0.5
done
if [ "$staged" -lt "$WANT" ]; then
  echo "only $(( staged - BEFORE )) of $COUNT calls staged; logs in $DIR/logs" >&2
  exit 1
fi
# Users and answered scorecards (fetched at start) are on the stage too.
table_rows() {
  local n
  n=$("$BIN/gong-load" inspect "$STAGE" --summary --json 2>/dev/null \
    | sed -n "s/.*\"$1\":{\"files\":[0-9]*,\"rows\":\([0-9]*\)}.*/\1/p")
  echo "${n:-0}"
}
for _ in $(seq 1 120); do
  if [ "$(table_rows users)" -gt 0 ] && [ "$(table_rows answered_scorecards)" -gt 0 ]; then break; fi
  sleep 0.5
done
if [ "$(table_rows users)" -eq 0 ] || [ "$(table_rows answered_scorecards)" -eq 0 ]; then
  echo "users or answered scorecards never staged; logs in $DIR/logs" >&2
  exit 1
fi

echo "==> summary"
"$BIN/gong-load" inspect "$STAGE" --summary
echo
echo "stage: $STAGE   logs: $DIR/logs   dead letters: $BIN/gong-ingest dlq list"
if [ "$ONCE" -eq 1 ]; then exit 0; fi
echo "pipeline running; send more with:"
echo "  $BIN/gong-sim send --url http://127.0.0.1:$INGEST_PORT/webhooks/gong --count 10 --key crates/testkit/keys/rule_a.key.pem"
echo "Ctrl-C to stop"
wait
