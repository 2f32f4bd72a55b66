#!/usr/bin/env bash
# Offline check of the Snowflake side: deploy/snowflake/setup.sql and upgrade-1-to-2.sql parsed
# by sqlglot and run by fakesnow (Snowflake SQL on DuckDB), a stage written by the real gong-load
# from tests/snowflake/fixtures.py loaded into it, the views' promises and every query of
# docs/analytics.md checked against their expected answers. See tests/snowflake/check.py.
#
# Usage: tests/snowflake/check.sh   (from anywhere; needs cargo, nats-server, python3)
# Uses target/venv/bin/python3 when it exists, else python3 from PATH, and installs fakesnow
# 0.12.1 with snowflake-connector-python<5 there when missing.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
python=python3
if [ -x "$root/target/venv/bin/python3" ]; then
    python="$root/target/venv/bin/python3"
fi

fakesnow_version=0.12.1
if ! "$python" - "$fakesnow_version" <<'EOF' 2>/dev/null; then
import sys
from importlib.metadata import version
import pyarrow, snowflake.connector, sqlglot  # noqa: F401
assert version("fakesnow") == sys.argv[1]
assert int(version("snowflake-connector-python").split(".")[0]) < 5
EOF
    echo "snowflake check: installing fakesnow $fakesnow_version into $("$python" -c 'import sys; print(sys.prefix)')" >&2
    "$python" -m pip install --quiet "fakesnow==$fakesnow_version" "snowflake-connector-python<5" pyarrow
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/gong-snowflake-check.XXXXXX")
trap 'rm -rf "$work"' EXIT

"$python" "$root/tests/snowflake/fixtures.py" >"$work/events.jsonl"
(cd "$root" && cargo run --quiet -p gong-load --example snowflake_stage -- "$work/events.jsonl" "$work/stage")
"$python" "$root/tests/snowflake/check.py" --root "$root" --stage "$work/stage"
