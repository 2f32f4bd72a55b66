#!/usr/bin/env bash
# Starts a replay Job with the image and configuration of the live Deployment.
#
#   deploy/k8s/jobs/replay.sh enrich --since 2025-03-01T00:00:00Z --until 2025-03-02T00:00:00Z
#   deploy/k8s/jobs/replay.sh enrich --from-seq 120000
#   deploy/k8s/jobs/replay.sh enrich --since 2025-03-01T00:00:00Z --call-id 7782342274025937895
#   deploy/k8s/jobs/replay.sh load --from-seq 1
#
# NAMESPACE (default gong-pipeline) selects the namespace; DRY_RUN=1 prints the Job instead of
# creating it. See docs/operations.md#replay.
set -euo pipefail

usage() {
    echo "usage: $0 enrich|load --from-seq N | --since RFC3339 [--until RFC3339] [--call-id ID]" >&2
    exit 64
}

[[ $# -ge 2 ]] || usage
stage=$1
shift
[[ $stage == enrich || $stage == load ]] || usage

namespace=${NAMESPACE:-gong-pipeline}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
deployment="gong-$stage"

image=$(kubectl -n "$namespace" get deployment "$deployment" \
    -o jsonpath='{.spec.template.spec.containers[0].image}')
config_map=$(kubectl -n "$namespace" get deployment "$deployment" \
    -o jsonpath='{.spec.template.spec.containers[0].envFrom[0].configMapRef.name}')
[[ -n $image && -n $config_map ]] || { echo "cannot read image/config of $deployment" >&2; exit 1; }

args='"replay"'
for arg in "$@"; do
    [[ $arg =~ ^[A-Za-z0-9:._+-]+$ ]] || { echo "unexpected characters in argument: $arg" >&2; exit 64; }
    args+=", \"$arg\""
done
job="gong-$stage-replay-$(date -u +%Y%m%d-%H%M%S)"

manifest=$(sed \
    -e "s|^  name: gong-$stage-replay\$|  name: $job|" \
    -e "s|image: registry.example.com/gong-pipeline:0.1.0|image: $image|" \
    -e "s|name: gong-pipeline-config-CHANGEME|name: $config_map|" \
    -e "s|^          args: .*|          args: [$args]|" \
    "$here/$stage-replay.yaml")

if [[ ${DRY_RUN:-0} == 1 ]]; then
    printf '%s\n' "$manifest"
    exit 0
fi
printf '%s\n' "$manifest" | kubectl -n "$namespace" create -f -
echo "follow: kubectl -n $namespace logs -f job/$job"
