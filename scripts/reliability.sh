#!/usr/bin/env bash
# The long reliability runs (docs/reliability.md): the whole-pipeline scenarios of tests/e2e at
# E2E_SCALE=long, one at a time, then short fuzz runs of the fuzz/ targets.
#
#   scripts/reliability.sh                    # everything (about 10 minutes on 2 cores)
#   scripts/reliability.sh --skip-fuzz        # only the pipeline scenarios
#   scripts/reliability.sh --only chaos       # one scenario (a test-name filter)
#   scripts/reliability.sh --fuzz-seconds 300 # longer fuzzing per target (default 60)
#
# Long scale: chaos sends 2,000 webhooks through ten SIGKILLs of gong-enrich and ten of
# gong-load; production sends 5,000 through a 3-node cluster with 2 enrichers and 3 loaders,
# 24 SIGKILLs and the GONG_ENRICHED leader killed and restarted twice; the NATS outage lasts
# 20 s; the cluster loses its GONG_RAW leader three times under load; the stage is down 20 s.
# Each scenario prints a RESULT line; all of them are collected in a JSON-lines report and
# printed as a Markdown table for docs/reliability.md.
# E2E_SEED=<n> replays a chaos/production schedule (each prints its seed, also in the table);
# E2E_KEEP_LOGS=1 keeps every stage's logs.
set -euo pipefail
cd "$(dirname "$0")/.."

SKIP_FUZZ=0
ONLY=""
FUZZ_SECONDS=60
while [ $# -gt 0 ]; do
  case "$1" in
    --skip-fuzz) SKIP_FUZZ=1 ;;
    --only) ONLY="$2"; shift ;;
    --fuzz-seconds) FUZZ_SECONDS="$2"; shift ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 64 ;;
  esac
  shift
done

scripts/setup.sh --test
export PATH="$PATH:/usr/sbin"
export RUST_BACKTRACE=1

REPORT_DIR=${REPORT_DIR:-target/reliability}
mkdir -p "$REPORT_DIR"
REPORT="$REPORT_DIR/results-$(date -u +%Y%m%dT%H%M%SZ).jsonl"
: >"$REPORT"

echo "==> building the binaries the scenarios run"
cargo build --workspace --bins --locked

echo "==> whole-pipeline scenarios, long scale (one at a time; report $REPORT)"
status=0
E2E_SCALE=long E2E_REPORT_FILE="$PWD/$REPORT" \
  cargo test -p gong-e2e --locked --test it -- --test-threads=1 --nocapture ${ONLY:+"$ONLY"} \
  2>&1 | tee "$REPORT_DIR/e2e.log" || status=$?

echo
echo "==> results ($(uname -srm), $(nproc) cores)"
python3 - "$REPORT" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
if not rows:
    print("no RESULT lines (did the scenarios run?)")
    sys.exit(0)
print("| date (UTC) | scenario | webhooks | faults | missing | duplicates | strays | 503s | recovery | seed | outcome |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    scenario = r["scenario"] + (f" ({r['fault']})" if "fault" in r else "")
    if r["scenario"] == "chaos":
        faults = (f"{r['enrich_kills']} enrich + {r['load_kills']} load SIGKILLs "
                  f"({r['load_kills_mid_range']} mid-range), {r['ranges_taken_over']} pending "
                  f"ranges of killed loaders completed by another process")
        recovery = f"all staged {r['settled_s'] - r['sent_s']:.1f} s after the last webhook"
    elif r["scenario"] == "production":
        faults = (f"{r['enrich_kills']} enrich + {r['load_kills']} load SIGKILLs "
                  f"({r['enrich_replicas']} + {r['load_replicas']} replicas), NATS node(s) "
                  f"{r['nats_nodes_killed']} killed and restarted; {r['content_problems']} "
                  f"file/range problems in {r['bad_ranges']} ranges, {r['gong_429s']} Gong 429s")
        recovery = f"all acked {r['settled_s'] - r['sent_s']:.1f} s after the last webhook"
    elif r["scenario"] == "nats_outage":
        faults = f"NATS down {r['outage_s']:.0f} s"
        recovery = f"first 2xx {r['ingest_first_2xx_after_restart_s']:.1f} s after restart"
    elif r["scenario"] == "cluster":
        faults = f"leader killed {len(r['nodes_killed'])}x (nodes {r['nodes_killed']})"
        recovery = f"longest gap between 2xx {r['longest_gap_between_2xx_s']:.1f} s"
    else:
        faults = f"stage down {r['outage_s']:.0f} s, {r['stage_errors_during_outage']:.0f} stage errors"
        recovery = f"first ack {r['first_ack_after_repair_s']:.1f} s after repair"
    duplicates = r["duplicate_events"] + r["duplicate_calls"]
    clean = (r["missing"] == 0 and duplicates == 0 and r["strays"] == 0
             and r["accepted"] == r["webhooks"] and r.get("outcome", "ok") == "ok")
    print(f"| {r['date']} | {scenario} | {r['accepted']}/{r['webhooks']} 2xx | {faults} "
          f"| {r['missing']} | {duplicates} | {r['strays']} | {r.get('answers_503', 0)} | {recovery} "
          f"| {r.get('seed', '')} | {'ok' if clean else 'FAILED'} |")
PY
grep -E '^test .*(FAILED|panicked)|^thread .* panicked' "$REPORT_DIR/e2e.log" \
  | sed 's/^/failed: /' || true

if [ "$SKIP_FUZZ" -eq 1 ]; then
  echo "==> fuzzing skipped (--skip-fuzz)"
elif ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> fuzzing skipped: cargo-fuzz is not installed (cargo install cargo-fuzz)"
else
  if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    fuzz() { cargo +nightly fuzz run "$@"; }
    echo "==> fuzzing with the nightly toolchain, ${FUZZ_SECONDS}s per target"
  else
    # No nightly: the stable compiler with nightly flags allowed, without sanitizers.
    fuzz() { RUSTC_BOOTSTRAP=1 cargo fuzz run -s none "$@"; }
    echo "==> fuzzing with RUSTC_BOOTSTRAP=1 (no nightly toolchain), ${FUZZ_SECONDS}s per target"
  fi
  for target in webhook_auth enriched_decode; do
    # New inputs go to a scratch corpus; the checked-in one only seeds the run. Crashes land
    # in fuzz/artifacts/<target>/.
    scratch=$(mktemp -d "${TMPDIR:-/tmp}/gong-fuzz-$target.XXXXXX")
    echo "--> $target"
    set +e
    fuzz "$target" "$scratch" "fuzz/corpus/$target" -- -max_total_time="$FUZZ_SECONDS" 2>&1 \
      | tail -n 5
    result=${PIPESTATUS[0]}
    set -e
    if [ "$result" -ne 0 ]; then
      echo "$target failed (exit $result); crash inputs are in fuzz/artifacts/$target/" >&2
      status=1
    fi
    rm -rf "$scratch"
  done
fi

echo
if [ "$status" -eq 0 ]; then
  echo "reliability runs passed (report: $REPORT)"
else
  echo "reliability runs FAILED (report: $REPORT)" >&2
fi
exit "$status"
