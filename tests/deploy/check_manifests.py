#!/usr/bin/env python3
"""Static checks of the deployment: rendered kustomize overlays, CRD shapes, the Dockerfile and its
build context, NATS values, monitoring rules and dashboard.

Usage (tests/deploy/check.sh runs it):

    check_manifests.py --repo . --overlay dev=/tmp/dev.yaml --overlay prod=/tmp/prod.yaml

Each check prints `ok - <name>` or `FAIL - <name>: <why>`; the last line is
`N passed, M failed` and the exit code is non-zero when anything failed. Needs PyYAML only
(Python >= 3.11 for tomllib).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import yaml

STAGES = ("ingest", "enrich", "load")
DEPLOYMENTS = tuple(f"gong-{stage}" for stage in STAGES)
NAMESPACE = "gong-pipeline"
SECRET_NAME = "gong-pipeline-secrets"
UID = 65532

# The ten component kinds every overlay must render (Secret or ExternalSecret counts as one).
REQUIRED_KINDS = (
    "Namespace",
    "Deployment",
    "Service",
    "Ingress",
    "ConfigMap",
    "Secret|ExternalSecret",
    "HorizontalPodAutoscaler",
    "ServiceMonitor",
    "NetworkPolicy",
    "PodDisruptionBudget",
)

# The environment contract (shared/design.md §5) the ConfigMap must carry.
CONFIG_KEYS = (
    "NATS_URL",
    "LOG_FORMAT",
    "RUST_LOG",
    "INGEST_ADDR",
    "ADMIN_ADDR",
    "GONG_WEBHOOK_URL",
    "GONG_API_BASE_URL",
    "GONG_RATE_LIMIT_PER_SECOND",
    "GONG_DAILY_QUOTA",
    "STAGE_URL",
    "LOAD_FLUSH_MAX_ROWS",
    "LOAD_FLUSH_MAX_BYTES",
    "LOAD_FLUSH_MAX_AGE",
    "STREAM_REPLICAS",
)

SECRET_KEYS = (
    "GONG_WEBHOOK_SECRETS",
    "GONG_WEBHOOK_URL_TOKENS",
    "GONG_ACCESS_KEY",
    "GONG_ACCESS_KEY_SECRET",
    "snowflake_private_key.p8",
)

PRIVATE_RANGES = {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"}

METRIC_RE = re.compile(r"gong_[a-z_]+")
HISTOGRAM_SUFFIX_RE = re.compile(r"_(bucket|sum|count)$")


class Checker:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def check(self, name: str, ok: bool, why: str = "") -> bool:
        if ok:
            self.passed += 1
            print(f"ok - {name}")
        else:
            self.failed += 1
            print(f"FAIL - {name}: {why}" if why else f"FAIL - {name}")
        return ok

    def problems(self, name: str, problems: list[str]) -> bool:
        """One check that passes when `problems` is empty; lists them otherwise."""
        return self.check(name, not problems, "; ".join(problems[:12]))


# ------------------------------------------------------------------------------------------------
# helpers


def load_docs(path: Path) -> list[dict]:
    with path.open() as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [doc for doc in docs if doc.get("kind") == kind]


def named(docs: list[dict], kind: str, name: str) -> dict | None:
    for doc in by_kind(docs, kind):
        if doc["metadata"]["name"] == name:
            return doc
    return None


def labels_match(selector: dict, labels: dict) -> bool:
    return all(labels.get(key) == value for key, value in (selector or {}).items())


def container_port(container: dict, port: object) -> int | None:
    if isinstance(port, int):
        return port
    for declared in container.get("ports", []):
        if declared.get("name") == port:
            return declared["containerPort"]
    return None


def metric_names(expr: str) -> set[str]:
    return {HISTOGRAM_SUFFIX_RE.sub("", name) for name in METRIC_RE.findall(expr)}


def dashboard_exprs(node: object) -> list[str]:
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                found.append(value)
            else:
                found.extend(dashboard_exprs(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(dashboard_exprs(item))
    return found


# ------------------------------------------------------------------------------------------------
# rendered overlays


def check_overlay(c: Checker, overlay: str, docs: list[dict]) -> None:
    kinds = {doc["kind"] for doc in docs}
    missing = [kind for kind in REQUIRED_KINDS if not any(k in kinds for k in kind.split("|"))]
    c.problems(f"{overlay}: all ten component kinds render", [f"missing {m}" for m in missing])

    c.problems(
        f"{overlay}: namespaced objects live in {NAMESPACE}",
        [
            f"{doc['kind']}/{doc['metadata']['name']} in {doc['metadata'].get('namespace')}"
            for doc in docs
            if doc["kind"] != "Namespace" and doc["metadata"].get("namespace") != NAMESPACE
        ],
    )
    c.check(
        f"{overlay}: Namespace {NAMESPACE} enforces the restricted pod security standard",
        (named(docs, "Namespace", NAMESPACE) or {})
        .get("metadata", {})
        .get("labels", {})
        .get("pod-security.kubernetes.io/enforce")
        == "restricted",
    )

    deployments = {doc["metadata"]["name"]: doc for doc in by_kind(docs, "Deployment")}
    c.check(
        f"{overlay}: Deployments {', '.join(DEPLOYMENTS)}",
        set(DEPLOYMENTS) <= set(deployments),
        f"have {sorted(deployments)}",
    )
    config_maps = {doc["metadata"]["name"]: doc for doc in by_kind(docs, "ConfigMap")}
    service_accounts = {doc["metadata"]["name"]: doc for doc in by_kind(docs, "ServiceAccount")}

    for name in DEPLOYMENTS:
        deployment = deployments.get(name)
        if deployment is None:
            continue
        check_deployment(c, overlay, deployment, config_maps, service_accounts)

    check_config(c, overlay, docs)
    check_secrets(c, overlay, docs, deployments)
    check_services(c, overlay, docs, deployments)
    check_ingress(c, overlay, docs)
    check_autoscaling(c, overlay, docs, deployments)
    check_service_monitors(c, overlay, docs)
    check_network_policies(c, overlay, docs)
    check_pdbs(c, overlay, docs, deployments)
    check_prometheus_rule_shape(c, overlay, docs)


def check_deployment(
    c: Checker, overlay: str, deployment: dict, config_maps: dict, service_accounts: dict
) -> None:
    name = deployment["metadata"]["name"]
    label = f"{overlay}: {name}"
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    containers = pod.get("containers", []) + pod.get("initContainers", [])

    # Hardened: pod and every container.
    problems = []
    pod_sc = pod.get("securityContext") or {}
    if pod_sc.get("runAsNonRoot") is not True:
        problems.append("pod runAsNonRoot")
    if pod_sc.get("runAsUser") != UID:
        problems.append(f"pod runAsUser != {UID}")
    if (pod_sc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        problems.append("pod seccompProfile")
    for container in containers:
        sc = container.get("securityContext") or {}
        cname = container["name"]
        if sc.get("runAsNonRoot") is not True:
            problems.append(f"{cname} runAsNonRoot")
        if sc.get("runAsUser") != UID:
            problems.append(f"{cname} runAsUser != {UID}")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{cname} readOnlyRootFilesystem")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{cname} allowPrivilegeEscalation")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            problems.append(f"{cname} capabilities.drop ALL")
        if (sc.get("capabilities") or {}).get("add"):
            problems.append(f"{cname} adds capabilities")
        if (sc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            problems.append(f"{cname} seccompProfile")
        if sc.get("privileged"):
            problems.append(f"{cname} privileged")
    if pod.get("automountServiceAccountToken") is not False:
        problems.append("automountServiceAccountToken not false")
    if pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"):
        problems.append("host namespaces")
    c.problems(f"{label} is hardened", problems)

    account = pod.get("serviceAccountName")
    c.check(
        f"{label} has its own ServiceAccount without token automount",
        account == name
        and account in service_accounts
        and service_accounts[account].get("automountServiceAccountToken") is False,
        f"serviceAccountName={account}",
    )

    # The read-only root needs a writable /tmp.
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    tmp_ok = all(
        any(
            mount["mountPath"] == "/tmp" and "emptyDir" in volumes.get(mount["name"], {})
            for mount in container.get("volumeMounts", [])
        )
        for container in pod.get("containers", [])
    )
    c.check(f"{label} mounts an emptyDir on /tmp", tmp_ok)

    # Probed: liveness /healthz and readiness /readyz on the admin port 9090.
    problems = []
    for container in pod.get("containers", []):
        for probe_name, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            probe = (container.get(probe_name) or {}).get("httpGet")
            if not probe:
                problems.append(f"{container['name']} has no {probe_name}.httpGet")
                continue
            if probe.get("path") != path:
                problems.append(f"{container['name']} {probe_name} path {probe.get('path')}")
            if container_port(container, probe.get("port")) != 9090:
                problems.append(f"{container['name']} {probe_name} port is not 9090")
    c.problems(f"{label} has liveness /healthz and readiness /readyz on 9090", problems)

    # Resourced.
    problems = []
    for container in pod.get("containers", []):
        resources = container.get("resources") or {}
        for section in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if resource not in (resources.get(section) or {}):
                    problems.append(f"{container['name']} {section}.{resource}")
    c.problems(f"{label} sets cpu/memory requests and limits", problems)

    # The right binary, the image, the ports.
    main = pod["containers"][0]
    c.check(
        f"{label} runs command {name}",
        main.get("command") == [name],
        f"command={main.get('command')}",
    )
    ports = {port["containerPort"] for port in main.get("ports", [])}
    wanted_ports = {8080, 9090} if name == "gong-ingest" else {9090}
    c.check(f"{label} exposes ports {sorted(wanted_ports)}", wanted_ports <= ports, f"{ports}")

    env_from = [
        ref["configMapRef"]["name"] for ref in main.get("envFrom", []) if "configMapRef" in ref
    ]
    c.check(
        f"{label} reads the environment contract ConfigMap",
        bool(env_from) and all(ref in config_maps for ref in env_from),
        f"envFrom={env_from}",
    )

    c.check(
        f"{label} spreads over topology (topologySpreadConstraints)",
        bool(pod.get("topologySpreadConstraints")),
    )

    strategy = spec.get("strategy") or {}
    rolling = strategy.get("rollingUpdate") or {}
    if name == "gong-ingest":
        c.check(
            f"{label} rolls with maxUnavailable 0",
            strategy.get("type") == "RollingUpdate" and rolling.get("maxUnavailable") in (0, "0%"),
            f"strategy={strategy}",
        )
    else:
        c.check(f"{label} uses a RollingUpdate strategy", strategy.get("type") == "RollingUpdate")


def check_config(c: Checker, overlay: str, docs: list[dict]) -> None:
    contract = [
        doc
        for doc in by_kind(docs, "ConfigMap")
        if doc["metadata"]["name"].startswith("gong-pipeline-config")
    ]
    if not c.check(f"{overlay}: environment contract ConfigMap exists", len(contract) == 1):
        return
    data = contract[0].get("data") or {}
    c.problems(
        f"{overlay}: ConfigMap carries the environment contract",
        [f"missing {key}" for key in CONFIG_KEYS if key not in data],
    )
    expected = {
        "LOG_FORMAT": "json",
        "ADMIN_ADDR": "0.0.0.0:9090",
        "INGEST_ADDR": "0.0.0.0:8080",
        "GONG_RATE_LIMIT_PER_SECOND": "3",
        "GONG_DAILY_QUOTA": "10000",
        "LOAD_FLUSH_MAX_AGE": "60s",
    }
    if overlay == "prod":
        expected["STREAM_REPLICAS"] = "3"
    if overlay == "dev":
        expected["STREAM_REPLICAS"] = "1"
        expected["STAGE_URL"] = "file:///stage"
    c.problems(
        f"{overlay}: ConfigMap values",
        [f"{key}={data.get(key)!r}, want {value!r}" for key, value in expected.items() if data.get(key) != value],
    )
    if overlay == "prod":
        c.check(
            "prod: STAGE_URL is an s3:// stage",
            str(data.get("STAGE_URL", "")).startswith("s3://"),
            f"STAGE_URL={data.get('STAGE_URL')}",
        )
    secretish = [key for key in data if re.search(r"SECRET|TOKEN|PASSWORD|ACCESS_KEY", key)]
    c.problems(f"{overlay}: no secret in the ConfigMap", [f"{key} in ConfigMap" for key in secretish])


def check_secrets(c: Checker, overlay: str, docs: list[dict], deployments: dict) -> None:
    secret = named(docs, "Secret", SECRET_NAME)
    external = named(docs, "ExternalSecret", SECRET_NAME)
    if overlay == "prod":
        c.check("prod: the Secret template is not rendered", secret is None)
        c.check("prod: an ExternalSecret provides the secrets", external is not None)
    else:
        c.check(f"{overlay}: the Secret template is rendered", secret is not None)

    provided: set[str] = set()
    if secret is not None:
        values = {**(secret.get("stringData") or {}), **(secret.get("data") or {})}
        provided |= set(values)
        c.problems(
            f"{overlay}: the Secret template holds no values",
            [f"{key} is not empty" for key, value in values.items() if value not in ("", None)],
        )
        c.problems(
            f"{overlay}: the Secret template names every secret key",
            [f"missing {key}" for key in SECRET_KEYS if key not in values],
        )
    if external is not None:
        problems = []
        spec = external.get("spec") or {}
        if external.get("apiVersion") != "external-secrets.io/v1beta1":
            problems.append(f"apiVersion {external.get('apiVersion')}")
        store = spec.get("secretStoreRef") or {}
        if not store.get("name") or store.get("kind") not in ("SecretStore", "ClusterSecretStore"):
            problems.append("secretStoreRef needs name and kind")
        if (spec.get("target") or {}).get("name") != SECRET_NAME:
            problems.append("target.name")
        for item in spec.get("data") or []:
            if not item.get("secretKey") or not (item.get("remoteRef") or {}).get("key"):
                problems.append(f"data item {item}")
            provided.add(item.get("secretKey"))
        if not spec.get("data") and not spec.get("dataFrom"):
            problems.append("no data")
        c.problems(f"{overlay}: ExternalSecret shape", problems)

    # Every required secretKeyRef and the Snowflake key file are provided.
    problems = []
    for deployment in deployments.values():
        pod = deployment["spec"]["template"]["spec"]
        for container in pod["containers"]:
            for env in container.get("env", []):
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref and ref.get("name") == SECRET_NAME and not ref.get("optional"):
                    if ref["key"] not in provided:
                        problems.append(f"{deployment['metadata']['name']} needs {ref['key']}")
    c.problems(f"{overlay}: every required secret key is provided", problems)

    load = deployments.get("gong-load")
    if load is not None:
        pod = load["spec"]["template"]["spec"]
        volumes = [v for v in pod.get("volumes", []) if (v.get("secret") or {}).get("secretName") == SECRET_NAME]
        items = [item["key"] for v in volumes for item in v["secret"].get("items", [])]
        c.check(
            f"{overlay}: gong-load mounts the Snowflake private key as a file",
            "snowflake_private_key.p8" in items and "snowflake_private_key.p8" in provided,
            f"items={items}",
        )


def check_services(c: Checker, overlay: str, docs: list[dict], deployments: dict) -> None:
    services = {doc["metadata"]["name"]: doc for doc in by_kind(docs, "Service")}
    ingest = services.get("gong-ingest")
    ok = ingest is not None and any(
        port.get("port") == 80 and port.get("targetPort") in ("http", 8080)
        for port in ingest["spec"].get("ports", [])
    )
    c.check(f"{overlay}: Service gong-ingest maps 80 -> 8080", ok)
    for name in DEPLOYMENTS:
        admin = services.get(f"{name}-admin")
        ok = admin is not None and any(
            port.get("port") == 9090 and port.get("name") == "admin" for port in admin["spec"]["ports"]
        )
        c.check(f"{overlay}: Service {name}-admin exposes admin 9090", ok)

    problems = []
    for service in services.values():
        selector = service["spec"].get("selector") or {}
        matches = [
            d for d in deployments.values()
            if labels_match(selector, d["spec"]["template"]["metadata"].get("labels", {}))
        ]
        if len(matches) != 1:
            problems.append(f"{service['metadata']['name']} selects {len(matches)} Deployments")
    c.problems(f"{overlay}: each Service selects exactly one Deployment", problems)


def check_ingress(c: Checker, overlay: str, docs: list[dict]) -> None:
    ingresses = by_kind(docs, "Ingress")
    if not c.check(f"{overlay}: one Ingress", len(ingresses) == 1):
        return
    ingress = ingresses[0]
    spec = ingress["spec"]
    annotations = ingress["metadata"].get("annotations") or {}
    tls_hosts = {host for tls in spec.get("tls") or [] for host in tls.get("hosts", [])}
    rule_hosts = {rule.get("host") for rule in spec.get("rules", [])}
    c.check(
        f"{overlay}: Ingress has TLS for its hosts",
        bool(tls_hosts) and rule_hosts <= tls_hosts and all(t.get("secretName") for t in spec["tls"]),
        f"tls={tls_hosts} rules={rule_hosts}",
    )
    c.check(f"{overlay}: Ingress class nginx", spec.get("ingressClassName") == "nginx")
    c.check(
        f"{overlay}: Ingress certificate from cert-manager",
        bool(annotations.get("cert-manager.io/cluster-issuer")),
    )
    c.check(
        f"{overlay}: Ingress proxy-body-size 5m",
        annotations.get("nginx.ingress.kubernetes.io/proxy-body-size") == "5m",
    )
    paths = [
        (path.get("path"), path["backend"]["service"]["name"])
        for rule in spec.get("rules", [])
        for path in rule["http"]["paths"]
    ]
    c.check(
        f"{overlay}: Ingress routes only /webhooks/gong to gong-ingest",
        paths and all(p == ("/webhooks/gong", "gong-ingest") for p in paths),
        f"{paths}",
    )


def check_autoscaling(c: Checker, overlay: str, docs: list[dict], deployments: dict) -> None:
    hpas = by_kind(docs, "HorizontalPodAutoscaler")
    hpa = next((h for h in hpas if h["spec"]["scaleTargetRef"]["name"] == "gong-ingest"), None)
    if c.check(f"{overlay}: HPA (autoscaling/v2) for gong-ingest", hpa is not None and hpa["apiVersion"] == "autoscaling/v2"):
        cpu = any(
            m.get("type") == "Resource" and m["resource"]["name"] == "cpu" for m in hpa["spec"].get("metrics", [])
        )
        c.check(f"{overlay}: gong-ingest HPA scales on CPU", cpu)
        floor = {"prod": 3, "dev": 1}.get(overlay)
        if floor is not None:
            c.check(
                f"{overlay}: gong-ingest HPA minReplicas {floor}",
                hpa["spec"].get("minReplicas") == floor,
                f"minReplicas={hpa['spec'].get('minReplicas')}",
            )

    scaled = {doc["spec"]["scaleTargetRef"]["name"]: doc for doc in by_kind(docs, "ScaledObject")}
    triggers_wanted = {"gong-enrich": ("GONG_RAW", "enrich")}
    for name, (stream, consumer) in triggers_wanted.items():
        obj = scaled.get(name)
        problems = []
        if obj is None:
            problems.append("missing")
        else:
            if obj.get("apiVersion") != "keda.sh/v1alpha1":
                problems.append(f"apiVersion {obj.get('apiVersion')}")
            triggers = obj["spec"].get("triggers") or []
            jetstream = [t for t in triggers if t.get("type") == "nats-jetstream"]
            if len(jetstream) != 1:
                problems.append("needs one nats-jetstream trigger")
            else:
                meta = jetstream[0].get("metadata") or {}
                for key in ("natsServerMonitoringEndpoint", "account", "stream", "consumer", "lagThreshold"):
                    if not isinstance(meta.get(key), str) or not meta.get(key):
                        problems.append(f"metadata.{key} must be a non-empty string")
                if meta.get("account") != "$G":
                    problems.append("account must be $G")
                if (meta.get("stream"), meta.get("consumer")) != (stream, consumer):
                    problems.append(f"stream/consumer {meta.get('stream')}/{meta.get('consumer')}")
                if not str(meta.get("lagThreshold", "")).isdigit():
                    problems.append("lagThreshold must be an integer string")
            low, high = obj["spec"].get("minReplicaCount", 0), obj["spec"].get("maxReplicaCount", 100)
            if low > high:
                problems.append("minReplicaCount > maxReplicaCount")
            floor = {"prod": 2, "dev": 1}.get(overlay)
            if floor is not None and low != floor:
                problems.append(f"minReplicaCount {low}, want {floor}")
        c.problems(f"{overlay}: KEDA ScaledObject for {name} on {stream}/{consumer}", problems)

    # gong-load is one active loader (lease holder) plus standbys: a fixed count, never scaled on
    # lag (more loaders add no throughput).
    load_replicas = deployments.get("gong-load", {}).get("spec", {}).get("replicas")
    want_load = {"prod": 2, "dev": 1}.get(overlay)
    c.check(
        f"{overlay}: gong-load has a fixed replica count (active loader + standbys), no scaler",
        "gong-load" not in scaled
        and isinstance(load_replicas, int)
        and (want_load is None or load_replicas == want_load),
        f"replicas={load_replicas}, scaled={'gong-load' in scaled}",
    )

    # Autoscaled Deployments carry no replica count (kubectl apply would reset the scaler's).
    targets = {"gong-ingest"} | set(scaled)
    c.problems(
        f"{overlay}: autoscaled Deployments leave spec.replicas to their scaler",
        [name for name in targets if name in deployments and "replicas" in deployments[name]["spec"]],
    )


def check_service_monitors(c: Checker, overlay: str, docs: list[dict]) -> None:
    services = by_kind(docs, "Service")
    monitors = by_kind(docs, "ServiceMonitor")
    for name in DEPLOYMENTS:
        problems = []
        monitor = named(docs, "ServiceMonitor", name)
        if monitor is None:
            problems.append("missing")
        else:
            if monitor.get("apiVersion") != "monitoring.coreos.com/v1":
                problems.append(f"apiVersion {monitor.get('apiVersion')}")
            endpoints = monitor["spec"].get("endpoints") or []
            if not any(e.get("port") == "admin" and e.get("path") == "/metrics" for e in endpoints):
                problems.append("no endpoint port admin path /metrics")
            selector = (monitor["spec"].get("selector") or {}).get("matchLabels") or {}
            selected = [
                s for s in services
                if labels_match(selector, s["metadata"].get("labels", {}))
                and any(p.get("name") == "admin" for p in s["spec"]["ports"])
            ]
            if len(selected) != 1 or selected[0]["metadata"]["name"] != f"{name}-admin":
                problems.append(f"selects {[s['metadata']['name'] for s in selected]}")
        c.problems(f"{overlay}: ServiceMonitor {name} scrapes /metrics on the admin Service", problems)
    c.check(f"{overlay}: one ServiceMonitor per Deployment", len(monitors) == len(DEPLOYMENTS))


def _peer_namespace(peer: dict) -> str | None:
    return ((peer.get("namespaceSelector") or {}).get("matchLabels") or {}).get("kubernetes.io/metadata.name")


def _ports(rule: dict) -> set[tuple[str, int]]:
    return {(p.get("protocol", "TCP"), p.get("port")) for p in rule.get("ports", [])}


def check_network_policies(c: Checker, overlay: str, docs: list[dict]) -> None:
    policies = by_kind(docs, "NetworkPolicy")

    def applies(policy: dict, component: str | None) -> bool:
        selector = (policy["spec"].get("podSelector") or {}).get("matchLabels") or {}
        if component is None:
            return not selector
        labels = {
            "app.kubernetes.io/component": component,
            "app.kubernetes.io/name": f"gong-{component}",
            "app.kubernetes.io/part-of": "gong-pipeline",
        }
        return labels_match(selector, labels)

    deny = [
        p for p in policies
        if applies(p, None)
        and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    c.check(f"{overlay}: NetworkPolicy default deny (ingress and egress)", bool(deny))

    def ingress_allowed(component: str, namespace: str, port: int) -> bool:
        for policy in policies:
            if not applies(policy, component):
                continue
            for rule in policy["spec"].get("ingress", []):
                if ("TCP", port) in _ports(rule) and any(_peer_namespace(p) == namespace for p in rule.get("from", [])):
                    return True
        return False

    def egress_allowed(component: str, port: int, protocol: str = "TCP", namespace: str | None = None, cidr: str | None = None) -> bool:
        for policy in policies:
            if not applies(policy, component):
                continue
            for rule in policy["spec"].get("egress", []):
                if (protocol, port) not in _ports(rule):
                    continue
                for peer in rule.get("to", []):
                    if namespace and _peer_namespace(peer) == namespace:
                        return True
                    block = peer.get("ipBlock") or {}
                    if cidr and block.get("cidr") == cidr and PRIVATE_RANGES <= set(block.get("except", [])):
                        return True
        return False

    c.check(f"{overlay}: ingress-nginx may reach gong-ingest:8080", ingress_allowed("ingest", "ingress-nginx", 8080))
    c.check(
        f"{overlay}: ingress-nginx reaches no stage but gong-ingest",
        not ingress_allowed("enrich", "ingress-nginx", 8080) and not ingress_allowed("load", "ingress-nginx", 8080),
    )
    for stage in STAGES:
        c.check(f"{overlay}: monitoring may scrape gong-{stage}:9090", ingress_allowed(stage, "monitoring", 9090))
        c.check(f"{overlay}: gong-{stage} may reach NATS 4222", egress_allowed(stage, 4222, namespace="nats"))
        c.check(
            f"{overlay}: gong-{stage} may resolve DNS (53 UDP and TCP)",
            egress_allowed(stage, 53, "UDP", namespace="kube-system")
            and egress_allowed(stage, 53, "TCP", namespace="kube-system"),
        )
    c.check(
        f"{overlay}: gong-enrich may reach public 443 (Gong API), private ranges excluded",
        egress_allowed("enrich", 443, cidr="0.0.0.0/0"),
    )
    c.check(
        f"{overlay}: gong-load may reach public 443 (object store), private ranges excluded",
        egress_allowed("load", 443, cidr="0.0.0.0/0"),
    )
    c.check(f"{overlay}: gong-ingest has no internet egress", not egress_allowed("ingest", 443, cidr="0.0.0.0/0"))


def check_pdbs(c: Checker, overlay: str, docs: list[dict], deployments: dict) -> None:
    for name in DEPLOYMENTS:
        pdb = named(docs, "PodDisruptionBudget", name)
        problems = []
        if pdb is None:
            problems.append("missing")
        else:
            spec = pdb["spec"]
            target = deployments.get(name)
            if target and not labels_match(spec["selector"].get("matchLabels"), target["spec"]["template"]["metadata"]["labels"]):
                problems.append("selector does not match the pods")
            if name == "gong-ingest" and overlay != "dev":
                if spec.get("minAvailable") != 1:
                    problems.append(f"minAvailable {spec.get('minAvailable')}, want 1")
            elif name == "gong-ingest":
                # dev runs one ingest pod: minAvailable 1 would block every node drain.
                if spec.get("minAvailable") != 1 and spec.get("maxUnavailable") != 1:
                    problems.append("needs minAvailable 1 (or maxUnavailable 1 with one replica)")
            elif spec.get("maxUnavailable") != 1:
                problems.append(f"maxUnavailable {spec.get('maxUnavailable')}, want 1")
        c.problems(f"{overlay}: PodDisruptionBudget {name}", problems)


def check_prometheus_rule_shape(c: Checker, overlay: str, docs: list[dict]) -> None:
    rules = by_kind(docs, "PrometheusRule")
    c.check(f"{overlay}: PrometheusRule rendered", len(rules) == 1)
    dashboards = [
        d for d in by_kind(docs, "ConfigMap") if (d["metadata"].get("labels") or {}).get("grafana_dashboard") == "1"
    ]
    ok = len(dashboards) == 1
    if ok:
        body = next(iter(dashboards[0]["data"].values()))
        ok = bool(json.loads(body).get("panels"))
    c.check(f"{overlay}: Grafana dashboard ConfigMap rendered", ok)


# ------------------------------------------------------------------------------------------------
# monitoring sources


def check_monitoring(c: Checker, repo: Path) -> None:
    expected_path = repo / "tests/deploy/expected_metrics.txt"
    listed = [line.strip() for line in expected_path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    expected = set(listed)
    # The exact set is the e2e metrics contract's business (tests/e2e/tests/it/metrics_contract.rs
    # scrapes the binaries); here: well-formed, unique, every stage present.
    c.problems(
        f"expected_metrics.txt lists unique gong_<stage>_ metric names ({len(expected)})",
        [f"{name} listed twice" for name in sorted(expected) if listed.count(name) > 1]
        + [f"{name} is not gong_<stage>_..." for name in listed if not re.fullmatch(r"gong_(ingest|enrich|load)_[a-z0-9_]+", name)]
        + [f"no gong_{stage}_ metric" for stage in STAGES if not any(n.startswith(f"gong_{stage}_") for n in expected)],
    )

    rule_doc = yaml.safe_load((repo / "deploy/monitoring/prometheusrule.yaml").read_text())
    problems = []
    if rule_doc.get("apiVersion") != "monitoring.coreos.com/v1" or rule_doc.get("kind") != "PrometheusRule":
        problems.append("apiVersion/kind")
    alerts = [rule for group in rule_doc["spec"]["groups"] for rule in group["rules"]]
    for rule in alerts:
        if not rule.get("alert") or not rule.get("expr"):
            problems.append(f"rule without alert/expr: {rule}")
            continue
        if (rule.get("labels") or {}).get("severity") not in ("warning", "critical"):
            problems.append(f"{rule['alert']} severity")
        if not (rule.get("annotations") or {}).get("summary"):
            problems.append(f"{rule['alert']} summary")
    c.problems("PrometheusRule alerts have severity and summary", problems)

    rule_metrics = set().union(*(metric_names(rule["expr"]) for rule in alerts))
    c.problems(
        "PrometheusRule uses only exported metrics",
        [f"unknown metric {m}" for m in sorted(rule_metrics - expected)],
    )
    wanted_alert_metrics = {
        "gong_ingest_requests_total",
        "gong_ingest_auth_failures_total",
        "gong_enrich_consumer_pending",
        "gong_load_consumer_pending",
        "gong_enrich_quota_remaining_today",
        "gong_enrich_quota_exhausted",
        "gong_enrich_rate_limited_total",
        "gong_enrich_events_total",
        "gong_load_last_flush_timestamp_seconds",
        "gong_load_stage_errors_total",
        "gong_load_snowpipe_failures_total",
    }
    c.problems(
        "PrometheusRule covers 5xx, auth, backlog, quota, 429, DLQ, staging, Snowpipe",
        [f"no alert on {m}" for m in sorted(wanted_alert_metrics - rule_metrics)],
    )
    all_exprs = " ".join(rule["expr"] for rule in alerts)
    dead_lettered = {
        metric
        for metric, matcher in re.findall(r'(gong_[a-z_]+)\{outcome=~?"([^"]*)"', all_exprs)
        if "dead_lettered" in matcher.split("|")
    }
    c.check(
        "PrometheusRule alerts on dead-lettering in ingest and enrich",
        {"gong_ingest_requests_total", "gong_enrich_events_total"} <= dead_lettered,
        f"dead_lettered matched on {sorted(dead_lettered)}",
    )

    dashboard = json.loads((repo / "deploy/monitoring/grafana-dashboard.json").read_text())
    exprs = dashboard_exprs(dashboard)
    dash_metrics = set().union(*(metric_names(e) for e in exprs)) if exprs else set()
    c.problems(
        "Grafana dashboard uses only exported metrics",
        [f"unknown metric {m}" for m in sorted(dash_metrics - expected)],
    )
    c.problems(
        "Grafana dashboard shows every exported metric",
        [f"not shown: {m}" for m in sorted(expected - dash_metrics)],
    )
    c.check(
        "Grafana dashboard covers all three stages",
        all(any(m.startswith(f"gong_{stage}_") for m in dash_metrics) for stage in STAGES),
    )
    c.check("Grafana dashboard has a uid and a Prometheus datasource variable",
            bool(dashboard.get("uid")) and any(v.get("type") == "datasource" for v in dashboard.get("templating", {}).get("list", [])))

    text = (repo / "deploy/monitoring/alertmanager.yaml").read_text()
    config = yaml.safe_load(text)
    slack = [s for r in config.get("receivers", []) for s in r.get("slack_configs", []) or []]
    c.check(
        "Alertmanager example: Slack receivers read the webhook URL from a file",
        bool(slack) and all(s.get("api_url_file") and not s.get("api_url") for s in slack)
        and "hooks.slack.com/services/" not in text,
    )


# ------------------------------------------------------------------------------------------------
# NATS values


def check_nats(c: Checker, repo: Path) -> None:
    values = yaml.safe_load((repo / "deploy/nats/values.yaml").read_text())
    config = values.get("config") or {}
    problems = []
    cluster = config.get("cluster") or {}
    if cluster.get("enabled") is not True or cluster.get("replicas") != 3:
        problems.append("config.cluster enabled with 3 replicas")
    jetstream = config.get("jetstream") or {}
    if jetstream.get("enabled") is not True:
        problems.append("config.jetstream.enabled")
    pvc = ((jetstream.get("fileStore") or {}).get("pvc")) or {}
    if pvc.get("size") != "20Gi" or pvc.get("enabled") is False:
        problems.append(f"fileStore pvc size {pvc.get('size')}")
    raw = str((config.get("merge") or {}).get("max_payload", ""))
    match = re.fullmatch(r"(?:<<\s*)?(\d+)\s*(MB|MiB|M)?(?:\s*>>)?", raw.strip())
    size = int(match.group(1)) * (1 << 20 if match.group(2) else 1) if match else 0
    if size < 8 * (1 << 20):
        problems.append(f"max_payload {raw!r} < 8MB")
    if not (values.get("podTemplate") or {}).get("topologySpreadConstraints"):
        problems.append("podTemplate.topologySpreadConstraints")
    c.problems("NATS values: 3-node JetStream cluster, 20Gi file store, max_payload >= 8MB, spread", problems)


# ------------------------------------------------------------------------------------------------
# Dockerfile and build context


def dockerfile_stages(text: str) -> list[list[tuple[str, str]]]:
    """Instructions grouped by stage, continuation lines joined, comments dropped."""
    logical: list[str] = []
    buffer = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        logical.append(buffer + stripped)
        buffer = ""
    stages: list[list[tuple[str, str]]] = []
    for line in logical:
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction, rest.strip()))
    return stages


def dockerfile_global_args(text: str) -> dict[str, str]:
    """Defaults of the ARGs declared before the first FROM (the ones FROM lines may use)."""
    args: dict[str, str] = {}
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.upper().startswith("FROM "):
            break
        if stripped.upper().startswith("ARG "):
            name, _, default = stripped[4:].strip().partition("=")
            args[name.strip()] = default.strip().strip('"')
    return args


def substitute_args(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), value)


def check_dockerfile(c: Checker, repo: Path) -> None:
    text = (repo / "Dockerfile").read_text()
    stages = dockerfile_stages(text)
    if not c.check("Dockerfile has a builder and a final stage", len(stages) >= 2):
        return
    args = dockerfile_global_args(text)
    builder, final = stages[0], stages[-1]
    c.check("Dockerfile builder is rust:*-bookworm", "rust:" in builder[0][1] and "bookworm" in builder[0][1], builder[0][1])
    run = " ".join(rest for instruction, rest in builder if instruction == "RUN")
    profile = tomllib.loads((repo / "Cargo.toml").read_text()).get("profile", {}).get("image", {})
    c.check(
        "Cargo profile `image` is release without debug info",
        profile.get("inherits") == "release"
        and profile.get("debug", True) in (False, 0, "none")
        and profile.get("strip") in ("debuginfo", "symbols", True),
        f"[profile.image] = {profile}",
    )
    c.check(
        "Dockerfile builds the three binaries with the `image` profile and copies them from target/image",
        "--profile image" in run
        and all(f"--bin gong-{stage}" in run for stage in STAGES)
        and all(f"target/image/gong-{stage}" in run for stage in STAGES),
    )
    c.check(
        "Dockerfile hands the builder a CA bundle only as a build secret (never a layer)",
        "--mount=type=secret,id=ca-bundle" in run
        and not any(
            ".crt" in rest or "ca-certificates" in rest
            for stage in stages
            for instruction, rest in stage
            if instruction in ("COPY", "ADD")
        ),
    )
    c.check(
        "Dockerfile caches the cargo registry and target with BuildKit mounts",
        "--mount=type=cache" in run and "/usr/local/cargo/registry" in run and "target" in run,
    )
    c.check(
        "Dockerfile runtime base is the build argument RUNTIME_BASE (scripts/image.sh sets it)",
        final[0][1].split()[0] in ("${RUNTIME_BASE}", "$RUNTIME_BASE"),
        final[0][1],
    )
    c.check(
        "Dockerfile runtime base defaults to distroless cc nonroot",
        substitute_args(final[0][1], args).startswith("gcr.io/distroless/cc-debian12:nonroot"),
        substitute_args(final[0][1], args),
    )
    users = [rest for instruction, rest in final if instruction == "USER"]
    user = users[-1].split(":")[0] if users else ""
    c.check(
        "Dockerfile final stage runs as a non-root USER (65532)",
        bool(users) and user not in ("0", "root") and user in ("65532", "nonroot"),
        f"USER {users}",
    )
    exposed = {port for instruction, rest in final if instruction == "EXPOSE" for port in rest.split()}
    c.check("Dockerfile exposes 8080 and 9090", {"8080", "9090"} <= exposed, f"{exposed}")
    entrypoints = [rest for instruction, rest in final if instruction == "ENTRYPOINT"]
    c.check(
        "Dockerfile entrypoint is gong-ingest (exec form)",
        bool(entrypoints) and json.loads(entrypoints[-1]) in (["gong-ingest"], ["/usr/local/bin/gong-ingest"]),
        f"{entrypoints}",
    )
    copies = " ".join(rest for instruction, rest in final if instruction == "COPY")
    c.check(
        "Dockerfile installs the binaries in /usr/local/bin",
        "--from=builder" in copies and "/usr/local/bin" in copies and all(f"gong-{s}" in copies for s in STAGES),
    )
    c.check(
        "Dockerfile final stage has no shell-form RUN (distroless has no shell)",
        not any(instruction == "RUN" for instruction, _ in final),
    )


def dockerignore_patterns(repo: Path) -> list[tuple[bool, re.Pattern]]:
    patterns = []
    for line in (repo / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line[1:] if negate else line).lstrip("/")
        regex = ""
        index = 0
        while index < len(pattern):
            if pattern.startswith("**/", index):
                regex += "(?:.*/)?"
                index += 3
            elif pattern.startswith("**", index):
                regex += ".*"
                index += 2
            elif pattern[index] == "*":
                regex += "[^/]*"
                index += 1
            elif pattern[index] == "?":
                regex += "[^/]"
                index += 1
            else:
                regex += re.escape(pattern[index])
                index += 1
        patterns.append((negate, re.compile(regex + "$")))
    return patterns


def excluded(path: str, patterns: list[tuple[bool, re.Pattern]]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a parent directory
    matches everything under it."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for negate, regex in patterns:
        if any(regex.match(prefix) for prefix in prefixes):
            result = not negate
    return result


def check_build_context(c: Checker, repo: Path) -> None:
    patterns = dockerignore_patterns(repo)
    tracked = subprocess.run(
        ["git", "-C", str(repo), "ls-files", "--cached", "--others", "--exclude-standard"],
        check=True, capture_output=True, text=True,
    ).stdout.split()
    context = [path for path in tracked if not excluded(path, patterns)]

    c.check(".dockerignore keeps target/ and .git out", excluded("target/release/gong-ingest", patterns)
            and excluded(".git/HEAD", patterns) and excluded("crates/load/target/x", patterns))
    c.check(".dockerignore keeps deploy/, docs/ and stage dirs out",
            excluded("deploy/k8s/base/ingest.yaml", patterns) and excluded("docs/operations.md", patterns)
            and excluded(".stage/calls/x.parquet", patterns))

    workspace = tomllib.loads((repo / "Cargo.toml").read_text()).get("workspace", {})
    members: list[str] = []
    for member in workspace.get("members", []):
        if any(ch in member for ch in "*?["):
            members.extend(
                str(path.relative_to(repo))
                for path in sorted(repo.glob(member))
                if (path / "Cargo.toml").exists()
            )
        else:
            members.append(member)
    needed = ["Cargo.toml", "Cargo.lock"] + [f"{member}/Cargo.toml" for member in members]
    c.problems(
        "build context holds the workspace manifests and every member",
        [f"{path} excluded or missing" for path in needed if path not in context],
    )
    sources = [p for p in context if p.endswith(".rs") and any(p.startswith(f"{m}/src/") for m in members)]
    c.check("build context holds the members' sources", len(sources) > 0)

    cargo = shutil.which("cargo")
    if cargo is None:
        print("skip - cargo metadata on the filtered build context (cargo not installed)")
        return
    with tempfile.TemporaryDirectory(prefix="gong-docker-context-") as tmp:
        for path in context:
            source = repo / path
            if source.is_file():
                target = Path(tmp) / path
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
        result = subprocess.run(
            [cargo, "metadata", "--format-version", "1", "--no-deps", "--offline"],
            cwd=tmp, capture_output=True, text=True,
        )
        c.check(
            "cargo loads the workspace from the filtered build context",
            result.returncode == 0,
            result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "",
        )
        if result.returncode == 0:
            packages = {p["name"]: p for p in json.loads(result.stdout)["packages"]}
            bins = {t["name"] for p in packages.values() for t in p["targets"] if "bin" in t["kind"]}
            c.check(
                "the build context defines the three binaries",
                {f"gong-{s}" for s in STAGES} <= bins,
                f"bins={sorted(bins)}",
            )


# ------------------------------------------------------------------------------------------------
# replay Jobs and repository hygiene


def check_jobs(c: Checker, repo: Path) -> None:
    for stage in ("enrich", "load"):
        job = yaml.safe_load((repo / f"deploy/k8s/jobs/{stage}-replay.yaml").read_text())
        pod = job["spec"]["template"]["spec"]
        container = pod["containers"][0]
        sc = container.get("securityContext") or {}
        ok = (
            container.get("command") == [f"gong-{stage}"]
            and (container.get("args") or [None])[0] == "replay"
            and pod.get("restartPolicy") == "Never"
            and pod.get("automountServiceAccountToken") is False
            and (pod.get("securityContext") or {}).get("runAsNonRoot") is True
            and sc.get("readOnlyRootFilesystem") is True
            and sc.get("allowPrivilegeEscalation") is False
            and "ALL" in (sc.get("capabilities") or {}).get("drop", [])
            and job["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == stage
        )
        c.check(f"replay Job for gong-{stage} runs `gong-{stage} replay`, hardened, with the {stage} egress", ok)


def github_anchor(heading: str) -> str:
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def check_runbook(c: Checker, repo: Path) -> None:
    path = repo / "docs/operations.md"
    if not c.check("docs/operations.md exists", path.exists()):
        return
    text = path.read_text()
    anchors = {github_anchor(m) for m in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}
    rule_doc = yaml.safe_load((repo / "deploy/monitoring/prometheusrule.yaml").read_text())
    links = {
        rule["annotations"]["runbook_url"].split("#", 1)[1]
        for group in rule_doc["spec"]["groups"]
        for rule in group["rules"]
        if "#" in (rule.get("annotations") or {}).get("runbook_url", "")
    }
    links |= set(re.findall(r"\]\(#([^)]+)\)", text))
    c.problems(
        "runbook links (alerts and docs) point at headings of docs/operations.md",
        [f"#{link} has no heading" for link in sorted(links - anchors)],
    )
    topics = {
        "helm install of NATS": "helm upgrade --install nats",
        "kubectl apply -k of the prod overlay": "kubectl apply -k deploy/k8s/overlays/prod",
        "Snowflake setup.sql": "deploy/snowflake/setup.sql",
        "webhook key rotation with two keys": "GONG_WEBHOOK_SECRETS=\"<old>,<new>\"",
        "Snowflake RSA_PUBLIC_KEY_2": "RSA_PUBLIC_KEY_2",
        "enrich replay": "gong-enrich replay --from-seq N",
        "load replay": "gong-load replay --from-seq N",
        "replay as a Job": "deploy/k8s/jobs/replay.sh",
        "enrich replicas sharing the quota": "more enrich replicas never",
    }
    c.problems(
        "docs/operations.md covers deploy, rotation, replay",
        [f"no mention of {what}" for what, needle in topics.items() if needle not in text],
    )


def check_no_secrets(c: Checker, repo: Path) -> None:
    patterns = {
        "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
        "AWS access key id": re.compile(r"AKIA[0-9A-Z]{16}"),
        "Slack webhook": re.compile(r"hooks\.slack\.com/services/T[0-9A-Z]+"),
    }
    problems = []
    files = [repo / "Dockerfile"] + [p for p in (repo / "deploy").rglob("*") if p.is_file()]
    for path in files:
        text = path.read_text(errors="replace")
        for what, regex in patterns.items():
            if regex.search(text):
                problems.append(f"{what} in {path.relative_to(repo)}")
    c.problems("no credentials committed under deploy/ or in the Dockerfile", problems)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[2])
    parser.add_argument("--overlay", action="append", default=[], metavar="NAME=RENDERED.yaml")
    args = parser.parse_args()
    repo = args.repo.resolve()
    c = Checker()

    for spec in args.overlay:
        name, _, path = spec.partition("=")
        check_overlay(c, name, load_docs(Path(path)))
    check_monitoring(c, repo)
    check_nats(c, repo)
    check_dockerfile(c, repo)
    check_build_context(c, repo)
    check_jobs(c, repo)
    check_runbook(c, repo)
    check_no_secrets(c, repo)

    print(f"{c.passed} passed, {c.failed} failed")
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
