#!/usr/bin/env bash
# The acceptance benchmark of issue 7, as one command:
#
#   benches/acceptance/run.sh            # full run: release, wrk -t2 -c64 -d10s per leg
#   benches/acceptance/run.sh --quick    # the test suite's: debug, 2 s per leg, 4 connections
#
# Three legs, each against a FRESH nats-server (own store, free ports, JetStream on), driven by
# wrk with unique pre-signed Gong webhooks (benches/src/bin/webhook-corpus.rs, each sent once,
# see corpus.lua):
#   gong-ingest     target/<profile>/gong-ingest, RUST_LOG=error
#   FastAPI         the same checks in FastAPI + PyJWT + nats-py (fastapi_ingest.py) under
#                   uvicorn --workers 2 (uvloop, httptools); GONG_RAW provisioned by gong-ingest
#   ceiling         raw JetStream publish-with-ack, same payload size, as many in flight as
#                   connections (target/<profile>/jetstream-ceiling)
# and a markdown report: req/s, p50/p99 (wrk's, --timeout 30s so no slow answer is left out),
# 2xx/non-2xx, peak RSS (VmHWM; for FastAPI the sum over the uvicorn master, its workers and
# multiprocessing's resource tracker), messages stored in GONG_RAW (from nats-server's monitoring
# endpoint), ratios, the issue's goals, and the CPU time of server, nats-server and wrk per request.
#
# Exit status: non-zero only on a correctness failure (a non-2xx answer, a forged or unsigned
# request not refused with 401, stored messages not matching the 2xx answers, a corpus that ran
# out so bodies repeated, a ceiling that lost messages); never on a rate, a latency or a ratio.
#
# Settings (flags or environment): --duration/DURATION (10s), --connections/CONNECTIONS (64),
# --threads/THREADS (wrk threads, 2), --corpus/CORPUS (webhooks, 400000; reused from
# target/acceptance for 4 h since signing is slow), --ceiling-count/CEILING_COUNT (500000),
# FASTAPI_WORKERS (2), BENCH_LOCK (/tmp/gong-bench.lock: a full run measures only while holding it,
# so benchmarks of others on the machine do not overlap; --no-lock skips it), WORK_DIR
# (target/acceptance: corpus, logs, nats stores, last-run.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
RUN_STARTED=$(date +%s)

QUICK=0
USE_LOCK=1
DURATION=${DURATION:-}
CONNECTIONS=${CONNECTIONS:-}
THREADS=${THREADS:-}
CORPUS=${CORPUS:-}
CEILING_COUNT=${CEILING_COUNT:-}
FASTAPI_WORKERS=${FASTAPI_WORKERS:-2}
BENCH_LOCK=${BENCH_LOCK:-/tmp/gong-bench.lock}
WORK_DIR=${WORK_DIR:-target/acceptance}
WEBHOOK_URL=https://bench.example.com/webhooks/gong
CORPUS_TTL_SECS=21600   # tokens' exp: 6 h
CORPUS_REUSE_SECS=14400 # a corpus younger than 4 h is reused

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --no-lock) USE_LOCK=0 ;;
    --duration) DURATION=$2; shift ;;
    --connections) CONNECTIONS=$2; shift ;;
    --threads) THREADS=$2; shift ;;
    --corpus) CORPUS=$2; shift ;;
    --ceiling-count) CEILING_COUNT=$2; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 64 ;;
  esac
  shift
done
if [ "$QUICK" -eq 1 ]; then
  PROFILE=debug
  USE_LOCK=0 # seconds of a debug build measure nothing; never wait for someone's benchmark
  : "${DURATION:=2s}" "${CONNECTIONS:=4}" "${THREADS:=2}" "${CORPUS:=12000}" "${CEILING_COUNT:=5000}"
else
  PROFILE=release
  : "${DURATION:=10s}" "${CONNECTIONS:=64}" "${THREADS:=2}" "${CORPUS:=400000}" "${CEILING_COUNT:=500000}"
fi
if [ $((CONNECTIONS % THREADS)) -ne 0 ] || [ "$CONNECTIONS" -lt "$THREADS" ]; then
  echo "run.sh: connections ($CONNECTIONS) must be a multiple of threads ($THREADS)" >&2
  exit 64
fi
BIN=$ROOT/target/$PROFILE
mkdir -p "$WORK_DIR"
WORK=$(cd "$WORK_DIR" && pwd)

say() { echo "acceptance: $*" >&2; }
calc() { awk "BEGIN {printf \"$1\", ($2)}"; } # format expression: calc %.2f "3 / 2"

# --- what is missing: nats-server and curl (scripts/setup.sh), wrk and procps (apt), Python (PyPI)
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else echo "run.sh: need root to run: $*" >&2; return 1; fi
}
scripts/setup.sh >/dev/null
export PATH="$PATH:/usr/sbin"
NATS_SERVER=${NATS_SERVER_BIN:-$(command -v nats-server)}
if ! command -v wrk >/dev/null 2>&1; then
  say "installing wrk from Debian packages"
  as_root apt-get update -qq || true
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
# ps finds the FastAPI workers (tree_pids); without it their CPU and RSS would silently not count.
if ! command -v ps >/dev/null 2>&1; then
  say "installing procps (ps) from Debian packages"
  as_root apt-get update -qq || true
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq procps >/dev/null || true
  if ! command -v ps >/dev/null 2>&1; then
    say "ps is missing and could not be installed; install procps (apt-get install procps)"
    exit 1
  fi
fi
PY=python3
if ! "$PY" -c 'import fastapi, uvicorn, uvloop, httptools, jwt, cryptography, nats' >/dev/null 2>&1; then
  say "installing fastapi, uvicorn[standard], PyJWT, cryptography, nats-py from PyPI"
  "$PY" -m pip install -q --disable-pip-version-check fastapi 'uvicorn[standard]' PyJWT cryptography nats-py >/dev/null
fi

# --- binaries and corpus (niced: others may be measuring meanwhile)
SOURCE="commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git status --porcelain -- crates/ingest crates/common 2>/dev/null)" ]; then
  SOURCE+=" + uncommitted changes in crates/ingest or crates/common"
fi
if [ "$PROFILE" = release ]; then
  nice -n 19 cargo build --locked --release -p gong-ingest -p gong-benches
else
  nice -n 19 cargo build --locked -p gong-ingest -p gong-benches
fi
CORPUS_FILE=$WORK/corpus-$CORPUS.tsv
KEY_FILE=$WORK/rule_a.pub.b64 # public key only (base64 SPKI DER), for GONG_WEBHOOK_SECRETS
if [ -s "$CORPUS_FILE" ] && [ -s "$KEY_FILE" ] \
  && [ $(($(date +%s) - $(stat -c %Y "$CORPUS_FILE"))) -lt "$CORPUS_REUSE_SECS" ]; then
  say "reusing $CORPUS_FILE (signed less than $((CORPUS_REUSE_SECS / 3600)) h ago, tokens valid for $((CORPUS_TTL_SECS / 3600)) h)"
else
  say "signing $CORPUS unique webhooks (RS256)"
  nice -n 19 "$BIN/webhook-corpus" --count "$CORPUS" --out "$CORPUS_FILE.tmp" --key-out "$KEY_FILE" \
    --url "$WEBHOOK_URL" --ttl-secs "$CORPUS_TTL_SECS" >&2
  mv "$CORPUS_FILE.tmp" "$CORPUS_FILE"
fi
PAYLOAD=$(head -n 1 "$CORPUS_FILE" | cut -f 2 | tr -d '\n' | wc -c)

# --- processes: every one started here is stopped by its pid on exit
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
}
trap cleanup EXIT
stop() { # pid: SIGTERM, then wait (a clean stop)
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  local kept=() pid
  for pid in "${PIDS[@]}"; do [ "$pid" = "$1" ] || kept+=("$pid"); done
  PIDS=("${kept[@]}")
}
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_http_200() { # url what [times in a row]
  local deadline=$(($(date +%s) + 60)) ok=0
  while [ "$ok" -lt "${3:-1}" ]; do
    if curl -sf -o /dev/null "$1"; then ok=$((ok + 1)); else ok=0; sleep 0.1; fi
    if [ "$(date +%s)" -gt "$deadline" ]; then echo "run.sh: $2 not ready within 60 s" >&2; exit 1; fi
  done
}

# A fresh nats-server with JetStream: sets NATS_URL, NATS_MONITOR, NATS_PID, NATS_DIR.
start_nats() { # name
  local dir=$WORK/nats-$1
  NATS_DIR=$dir
  rm -rf "$dir" && mkdir -p "$dir"
  local port monitor
  port=$(free_port) && monitor=$(free_port)
  "$NATS_SERVER" -js -a 127.0.0.1 -p "$port" -m "$monitor" -sd "$dir/store" -l "$dir/nats.log" 9>&- &
  NATS_PID=$!
  PIDS+=("$NATS_PID")
  NATS_URL=nats://127.0.0.1:$port
  NATS_MONITOR=http://127.0.0.1:$monitor
  wait_http_200 "$NATS_MONITOR/healthz" "nats-server"
}
stop_nats() { stop "$NATS_PID"; rm -rf "$NATS_DIR/store"; } # keeps its log
stored_in_raw() { # messages in GONG_RAW, from the server's own monitoring endpoint
  curl -sf "$NATS_MONITOR/jsz?streams=true" | "$PY" -c '
import json, sys
state = json.load(sys.stdin)
streams = [s for a in state.get("account_details", []) for s in a.get("stream_detail", [])]
print(sum(s["state"]["messages"] for s in streams if s["name"] == "GONG_RAW"))'
}
start_ingest() { # sets INGEST_PID, INGEST_PORT, INGEST_ADMIN; returns once ready
  INGEST_PORT=$(free_port) && INGEST_ADMIN=$(free_port)
  NATS_URL=$NATS_URL INGEST_ADDR=127.0.0.1:$INGEST_PORT ADMIN_ADDR=127.0.0.1:$INGEST_ADMIN \
    GONG_WEBHOOK_SECRETS=$(cat "$KEY_FILE") GONG_WEBHOOK_URL=$WEBHOOK_URL RUST_LOG=error \
    "$BIN/gong-ingest" >"$WORK/gong-ingest.log" 2>&1 9>&- &
  INGEST_PID=$!
  PIDS+=("$INGEST_PID")
  wait_http_200 "http://127.0.0.1:$INGEST_ADMIN/readyz" "gong-ingest"
}
tree_pids() { # pid and all its descendants
  local queue=("$1") pid
  while [ "${#queue[@]}" -gt 0 ]; do
    pid=${queue[0]} && queue=("${queue[@]:1}")
    echo "$pid"
    # shellcheck disable=SC2207
    queue+=($(ps -o pid= --ppid "$pid" 2>/dev/null || true))
  done
}
cpu_ticks() { # user + system CPU of a pid and its descendants, in clock ticks
  local pid total=0
  for pid in $(tree_pids "$1"); do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)))
  done
  echo "$total"
}
TICKS=$(getconf CLK_TCK)
peak_rss_kib() { # pid and all its descendants: sum of VmHWM; RSS_PARTS lists each process
  local total=0 pid kib role
  RSS_PARTS=""
  for pid in $(tree_pids "$1"); do
    kib=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
    total=$((total + ${kib:-0}))
    case "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" in
      *resource_tracker*) role="multiprocessing resource tracker" ;;
      *spawn_main*) role=worker ;;
      *) role=$(cat "/proc/$pid/comm" 2>/dev/null || echo "?") ;;
    esac
    [ "$pid" != "$1" ] || role="main process"
    RSS_PARTS+="${RSS_PARTS:+, }$role $(calc %.1f "${kib:-0} / 1024")"
  done
  RSS_KIB=$total
}
# CPU seconds spent during a leg: CPU_SERVER (server tree), CPU_NATS, CPU_CLIENT (load generator).
cpu_before() { CPU0_SERVER=$(cpu_ticks "$1"); CPU0_NATS=$(cpu_ticks "$NATS_PID"); }
cpu_after() { # server-pid client-cpu-seconds
  CPU_SERVER=$(calc %.2f "($(cpu_ticks "$1") - $CPU0_SERVER) / $TICKS")
  CPU_NATS=$(calc %.2f "($(cpu_ticks "$NATS_PID") - $CPU0_NATS) / $TICKS")
  CPU_CLIENT=$2
}
cpu_row() { # name count
  local n=$2 server_per_request=— server=$CPU_SERVER
  [ "$n" -gt 0 ] || n=1
  if [ "$server" = — ]; then server=0; else server_per_request=$(calc %.0f "$server * 1e6 / $n"); fi
  CPU_ROWS+=("| $1 | $2 | $CPU_SERVER | $CPU_NATS | $CPU_CLIENT | $server_per_request \
| $(calc %.0f "$CPU_NATS * 1e6 / $n") | $(calc %.0f "($server + $CPU_NATS + $CPU_CLIENT) * 1e6 / $n") |")
}

FAILURES=()
fail() { FAILURES+=("$*"); echo "acceptance: FAIL: $*" >&2; }

# Forged and unsigned requests must be refused (401) and store nothing: the last corpus line's
# token with another line's body (body_sha256 mismatch), and no Authorization at all.
probe_auth() { # name url
  local dir=$WORK/probe code
  mkdir -p "$dir"
  tail -n 1 "$CORPUS_FILE" | cut -f 1 | sed 's/^/Authorization: /' >"$dir/forged.header"
  head -n 1 "$CORPUS_FILE" | cut -f 2 | tr -d '\n' >"$dir/other.body"
  code=$(curl -s -o /dev/null -w '%{http_code}' -H @"$dir/forged.header" \
    -H 'content-type: application/json' --data-binary @"$dir/other.body" "$2")
  [ "$code" = 401 ] || fail "$1: a body that does not match its token's body_sha256 got $code, not 401"
  code=$(curl -s -o /dev/null -w '%{http_code}' -H 'content-type: application/json' \
    --data-binary @"$dir/other.body" "$2")
  [ "$code" = 401 ] || fail "$1: a request without Authorization got $code, not 401"
}

# wrk over the corpus; fills R from corpus.lua's ACCEPTANCE line.
declare -A R
run_wrk() { # name url server-pid
  local sync=$WORK/sync-$1 out=$WORK/$1.wrk.txt
  rm -rf "$sync" && mkdir -p "$sync"
  echo
  echo "### $1: wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency --timeout 30s"
  cpu_before "$3"
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency --timeout 30s \
    -s benches/acceptance/corpus.lua "$2" -- "$CORPUS_FILE" "$THREADS" "$sync" >"$out" \
    || fail "$1: wrk failed"
  cat "$out"
  local line key value
  line=$(grep '^ACCEPTANCE ' "$out") || { fail "$1: wrk printed no result"; line=""; }
  for key in requests duration_us non2xx connect_errors read_errors write_errors timeouts sent \
    corpus wrapped p50_us p99_us client_cpu_s; do
    value=$(tr ' ' '\n' <<<"$line" | awk -F= -v k="$key" '$1 == k {print $2}')
    R[$key]=${value:-0}
  done
  cpu_after "$3" "${R[client_cpu_s]}"
  cpu_row "$1" "${R[requests]}"
}

# Records one HTTP leg's row and checks it. Needs R, the pid to measure and the stored count.
record_leg() { # name pid stored
  local name=$1 ok=$((R[requests] - R[non2xx])) unknown=$((R[sent] - R[requests]))
  peak_rss_kib "$2"
  local rss=$RSS_KIB
  NOTES+=("peak RSS of $name (VmHWM, MiB): $RSS_PARTS")
  local rate p50 p99 errors
  rate=$(calc %.0f "${R[requests]} / (${R[duration_us]} / 1e6 + 1e-9)")
  p50=$(calc %.2f "${R[p50_us]} / 1000") && p99=$(calc %.2f "${R[p99_us]} / 1000")
  errors="$((R[connect_errors] + R[read_errors] + R[write_errors])) / ${R[timeouts]}"
  ROWS+=("$name|$rate|$p50|$p99|$ok|${R[non2xx]}|$errors|$(calc %.1f "$rss / 1024")|$3")
  [ "${R[requests]}" -gt 0 ] || fail "$name: no request completed"
  [ "${R[non2xx]}" -eq 0 ] || fail "$name: ${R[non2xx]} non-2xx answers"
  [ "${R[wrapped]}" = no ] || fail "$name: the corpus ran out (${R[sent]} requests for \
${R[corpus]} webhooks), bodies were sent twice; raise --corpus"
  # Each 2xx is one stored message. Requests wrk sent but saw no answer for (in flight when the
  # run stopped, or timed out) may or may not have been stored: at most $unknown more.
  if [ "$3" -lt "$ok" ] || [ "$3" -gt $((ok + unknown)) ]; then
    fail "$name: GONG_RAW holds $3 messages for $ok 2xx answers (+ up to $unknown unanswered)"
  fi
}

measure() {
  ROWS=()
  NOTES=()
  CPU_ROWS=()
  # 1. ceiling
  start_nats ceiling
  echo
  echo "### ceiling: jetstream-ceiling --count $CEILING_COUNT --in-flight $CONNECTIONS --payload-bytes $PAYLOAD"
  local line TIMEFORMAT='%U %S'
  cpu_before "$NATS_PID"
  { time "$BIN/jetstream-ceiling" --nats-url "$NATS_URL" --count "$CEILING_COUNT" \
    --in-flight "$CONNECTIONS" --payload-bytes "$PAYLOAD" >"$WORK/ceiling.txt"; } 2>"$WORK/ceiling.time" \
    || { cat "$WORK/ceiling.time" >&2; exit 1; }
  cpu_after "$NATS_PID" "$(calc %.2f "$(tail -n 1 "$WORK/ceiling.time" | tr ' ' +)")"
  CPU_SERVER=—
  cpu_row "ceiling (client: jetstream-ceiling)" "$CEILING_COUNT"
  line=$(cat "$WORK/ceiling.txt")
  echo "$line"
  CEILING_RPS=$(tr ' ' '\n' <<<"$line" | awk -F= '$1 == "publish_per_s" {print $2}')
  local ceiling_stored
  ceiling_stored=$(stored_in_raw)
  [ "$ceiling_stored" -eq "$CEILING_COUNT" ] || fail "ceiling: GONG_RAW holds $ceiling_stored of $CEILING_COUNT messages"
  stop_nats

  # 2. gong-ingest
  start_nats gong-ingest
  start_ingest
  local url=http://127.0.0.1:$INGEST_PORT/webhooks/gong
  probe_auth gong-ingest "$url"
  run_wrk gong-ingest "$url" "$INGEST_PID"
  sleep 1 # answers to requests cut off by wrk's stop may still be landing
  record_leg gong-ingest "$INGEST_PID" "$(stored_in_raw)"
  INGEST_ROW=${ROWS[-1]}
  stop "$INGEST_PID"
  stop_nats

  # 3. FastAPI: the streams provisioned by gong-ingest (then stopped), as in production
  start_nats fastapi
  start_ingest
  stop "$INGEST_PID"
  local port
  port=$(free_port)
  NATS_URL=$NATS_URL GONG_WEBHOOK_SECRETS=$(cat "$KEY_FILE") GONG_WEBHOOK_URL=$WEBHOOK_URL \
    "$PY" -m uvicorn fastapi_ingest:app --app-dir benches/acceptance --host 127.0.0.1 \
    --port "$port" --workers "$FASTAPI_WORKERS" --loop uvloop --http httptools \
    --no-access-log --log-level warning >"$WORK/fastapi.log" 2>&1 9>&- &
  local uvicorn_pid=$!
  PIDS+=("$uvicorn_pid")
  # Every worker answers once its NATS connection is up; many in a row reach both of them.
  wait_http_200 "http://127.0.0.1:$port/readyz" "uvicorn" 20
  local workers
  workers=$(ps -o pid= --ppid "$uvicorn_pid" | wc -l)
  [ "$workers" -ge "$FASTAPI_WORKERS" ] || fail "FastAPI: $workers worker processes, expected $FASTAPI_WORKERS"
  url=http://127.0.0.1:$port/webhooks/gong
  probe_auth FastAPI "$url"
  run_wrk FastAPI "$url" "$uvicorn_pid"
  sleep 1
  record_leg "FastAPI ($FASTAPI_WORKERS workers)" "$uvicorn_pid" "$(stored_in_raw)"
  FASTAPI_ROW=${ROWS[-1]}
  stop "$uvicorn_pid"
  stop_nats
  ROWS+=("ceiling: JetStream publish-with-ack|$(printf '%.0f' "$CEILING_RPS")|—|—|—|—|—|—|$ceiling_stored")
}

# --- measuring, under the shared lock
LOAD_BEFORE=$(cut -d ' ' -f 1-3 /proc/loadavg)
if [ "$USE_LOCK" -eq 1 ]; then
  exec 9>"$BENCH_LOCK"
  say "waiting for $BENCH_LOCK"
  flock 9
fi
MEASURE_STARTED=$(date -u '+%Y-%m-%d %H:%M UTC')
measure
if [ "$USE_LOCK" -eq 1 ]; then exec 9>&-; fi
LOAD_AFTER=$(cut -d ' ' -f 1-3 /proc/loadavg)

# --- report
{
  echo
  echo "> acceptance benchmark (issue 7): $MEASURE_STARTED; $(nproc) cores, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo); $PROFILE build of $SOURCE"
  echo "> wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency, $CORPUS unique signed webhooks of $PAYLOAD bytes, each sent at most once; load average before $LOAD_BEFORE, after $LOAD_AFTER"
  echo
  echo "| server | req/s | p50 ms | p99 ms | 2xx | non-2xx | socket errors / timeouts | peak RSS MiB | stored in GONG_RAW | ratio to ceiling |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  for row in "${ROWS[@]}"; do
    IFS='|' read -r name rps rest <<<"$row"
    echo "| $name | $rps | ${rest//|/ | } | $(calc %.2f "$rps / $CEILING_RPS") |"
  done
  echo
  echo "CPU seconds used during each leg (user + system; the machine has $(nproc) cores):"
  echo
  echo "| leg | requests | server CPU s | nats-server CPU s | load generator CPU s | server CPU µs/req | nats-server CPU µs/req | all three µs/req |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|"
  for row in "${CPU_ROWS[@]}"; do echo "$row"; done
  IFS='|' read -r _ ingest_rps _ ingest_p99 _ _ _ ingest_rss _ <<<"$INGEST_ROW"
  IFS='|' read -r _ fastapi_rps _ <<<"$FASTAPI_ROW"
  verdict() { if [ "$(calc %d "$1 $3 $2")" = 1 ]; then echo met; else echo "not met"; fi; }
  vs_fastapi=$(calc %.2f "$ingest_rps / ($fastapi_rps + 1e-9)")
  vs_ceiling=$(calc %.2f "$ingest_rps / $CEILING_RPS")
  echo
  echo "- gong-ingest / FastAPI: **$vs_fastapi** (goal ≥ 8: $(verdict "$vs_fastapi" 8 '>='))"
  echo "- gong-ingest / ceiling: **$vs_ceiling** (goal ≥ 0.5: $(verdict "$vs_ceiling" 0.5 '>='))"
  echo "- gong-ingest p99 at $CONNECTIONS connections: **$ingest_p99 ms** (goal ≤ 10 ms: $(verdict "$ingest_p99" 10 '<='))"
  echo "- gong-ingest peak RSS: **$ingest_rss MiB** (goal ≤ 64 MiB: $(verdict "$ingest_rss" 64 '<='))"
  if [ "$QUICK" -eq 1 ]; then
    echo "- quick mode: a debug build, $CONNECTIONS connections, $DURATION per leg; this checks that the"
    echo "  benchmark works, the numbers above measure nothing"
  fi
  for note in "${NOTES[@]}"; do echo "- $note"; done
  if [ "${#FAILURES[@]}" -eq 0 ]; then
    echo "- correctness: every request 2xx, forged and unsigned requests refused (401), stored messages match the 2xx answers, no webhook sent twice"
  else
    for failure in "${FAILURES[@]}"; do echo "- **FAILED**: $failure"; done
  fi
  echo "- run took $(($(date +%s) - RUN_STARTED)) s (raw wrk output and logs in $WORK_DIR)"
} | tee "$WORK/last-run.md"

[ "${#FAILURES[@]}" -eq 0 ]
