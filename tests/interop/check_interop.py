#!/usr/bin/env python3
"""Interop check with independent implementations: PyJWT signs webhooks as Gong does, nats-py
reads GONG_RAW, pyarrow and DuckDB read the staged Parquet.

Runs the real binaries (target/debug, built by scripts/test.sh) against a fresh nats-server and
gong-sim, all on loopback, and prints `N passed, M failed`. Needs: PyJWT, cryptography, nats-py,
pyarrow, duckdb (scripts/setup.sh --test installs them).
"""
import asyncio
import base64
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import duckdb
import jwt
import nats
import pyarrow.parquet as pq

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.path.join(ROOT, "target", "debug")
KEYS = os.path.join(ROOT, "crates", "testkit", "keys")
URL_TOKEN = "interop-token-0123456789"
RESULTS = {"passed": 0, "failed": 0}


def check(name, condition, detail=""):
    if condition:
        RESULTS["passed"] += 1
        print(f"ok - {name}")
    else:
        RESULTS["failed"] += 1
        print(f"FAIL - {name} {detail}")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(what, predicate, timeout=60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception:  # noqa: BLE001 - polling until the service answers
            pass
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


def http(method, url, body=None, headers=None):
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def body_for(call_id):
    # Odd spacing on purpose: stored bytes must be these bytes, not a re-serialisation.
    return (
        '{"isTest": false,  "callData": {"metaData": {"id": "%s", "title": "Interop %s",'
        ' "started": "2024-05-02T16:01:02.123456-07:00", "duration": 60}}}' % (call_id, call_id)
    ).encode()


def sign(key_pem, body, webhook_url, ttl=300):
    now = int(time.time())
    claims = {
        "body_sha256": hashlib.sha256(body).hexdigest(),
        "webhook_url": webhook_url,
        "exp": now + ttl,
        "iat": now,
    }
    return jwt.encode(claims, key_pem, algorithm="RS256")


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def main():
    work = tempfile.mkdtemp(prefix="gong-interop-")
    procs = []
    try:
        run(work, procs)
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)
    print(f"{RESULTS['passed']} passed, {RESULTS['failed']} failed")
    return 1 if RESULTS["failed"] else 0


def start(procs, work, name, args, env):
    log = open(os.path.join(work, f"{name}.log"), "wb")
    full_env = dict(os.environ, LOG_FORMAT="json", RUST_LOG="info", **env)
    proc = subprocess.Popen(args, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    procs.append(proc)
    return proc


def ready(port):
    status, _ = http("GET", f"http://127.0.0.1:{port}/readyz")
    return status == 200


def run(work, procs):
    nats_bin = os.environ.get("NATS_SERVER_BIN") or shutil.which("nats-server") or "/usr/sbin/nats-server"
    nats_port, sim_port, ingest_port = free_port(), free_port(), free_port()
    admin = {name: free_port() for name in ("ingest", "enrich", "load")}
    stage = os.path.join(work, "stage")
    start(procs, work, "nats", [nats_bin, "-js", "-a", "127.0.0.1", "-p", str(nats_port),
                                "--store_dir", os.path.join(work, "nats")], {})
    wait_for("nats-server", lambda: socket.create_connection(("127.0.0.1", nats_port), 1))
    nats_url = f"nats://127.0.0.1:{nats_port}"
    start(procs, work, "gong-sim", [os.path.join(BIN, "gong-sim"), "serve", "--addr",
                                    f"127.0.0.1:{sim_port}", "--access-key", "k", "--access-key-secret", "s"], {})
    webhook_url = f"https://hooks.example.com/webhooks/gong"
    with open(os.path.join(KEYS, "rule_a.pub.pem")) as handle:
        pub_a = "".join(line for line in handle.read().splitlines() if not line.startswith("-----"))
    with open(os.path.join(KEYS, "rule_b.pub.pem")) as handle:
        pub_b = handle.read()
    start(procs, work, "gong-ingest", [os.path.join(BIN, "gong-ingest")], {
        "NATS_URL": nats_url, "INGEST_ADDR": f"127.0.0.1:{ingest_port}",
        "ADMIN_ADDR": f"127.0.0.1:{admin['ingest']}",
        "GONG_WEBHOOK_SECRETS": pub_a + "\n" + pub_b, "GONG_WEBHOOK_URL": webhook_url,
        "GONG_WEBHOOK_URL_TOKENS": URL_TOKEN})
    start(procs, work, "gong-enrich", [os.path.join(BIN, "gong-enrich")], {
        "NATS_URL": nats_url, "ADMIN_ADDR": f"127.0.0.1:{admin['enrich']}",
        "GONG_API_BASE_URL": f"http://127.0.0.1:{sim_port}", "GONG_ACCESS_KEY": "k",
        "GONG_ACCESS_KEY_SECRET": "s", "ENRICH_BATCH_LINGER": "200ms"})
    start(procs, work, "gong-load", [os.path.join(BIN, "gong-load")], {
        "NATS_URL": nats_url, "ADMIN_ADDR": f"127.0.0.1:{admin['load']}",
        "STAGE_URL": "file://" + stage, "LOAD_FLUSH_MAX_AGE": "1s"})
    for name, port in admin.items():
        wait_for(f"gong-{name} ready", lambda port=port: ready(port))

    key_a = open(os.path.join(KEYS, "rule_a.key.pem")).read()
    key_b = open(os.path.join(KEYS, "rule_b.key.pem")).read()
    endpoint = f"http://127.0.0.1:{ingest_port}/webhooks/gong"
    sent = []
    for index in range(30):
        body = body_for(str(8_100_000_000_000_000_000 + index))
        if index % 3 == 0:
            status, answer = http("POST", endpoint, body, {"Authorization": "Bearer " + sign(key_a, body, webhook_url)})
        elif index % 3 == 1:
            status, answer = http("POST", endpoint, body, {"Authorization": sign(key_b, body, webhook_url + "/")})
        else:
            status, answer = http("POST", f"{endpoint}/{URL_TOKEN}", body)
        sent.append(body)
        check(f"webhook {index} accepted (202)", status == 202, f"{status} {answer[:200]!r}")

    body = body_for("8100000000000009999")
    claims = {"body_sha256": hashlib.sha256(body).hexdigest(), "webhook_url": webhook_url,
              "exp": int(time.time()) + 300}
    header_none = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    alg_none = f"{header_none}.{b64url(json.dumps(claims).encode())}."
    header_hs = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    signing_input = f"{header_hs}.{b64url(json.dumps(claims).encode())}"
    hs_sig = hmac.new(open(os.path.join(KEYS, "rule_a.pub.pem"), "rb").read(), signing_input.encode(), hashlib.sha256).digest()
    hostile = {
        "no header": {},
        "alg none": {"Authorization": alg_none},
        "HS256 keyed with the public key": {"Authorization": f"{signing_input}.{b64url(hs_sig)}"},
        "expired": {"Authorization": sign(key_a, body, webhook_url, ttl=-3600)},
        "other webhook_url": {"Authorization": sign(key_a, body, "https://evil.example.com/webhooks/gong")},
        "body changed": {"Authorization": sign(key_a, body + b" ", webhook_url)},
    }
    for name, headers in hostile.items():
        status, answer = http("POST", endpoint, body, headers)
        parsed = json.loads(answer or b"{}")
        check(f"hostile '{name}' refused with 401 and a JSON reason", status == 401 and "reason" in parsed, f"{status} {answer!r}")
    status, _ = http("POST", f"{endpoint}/wrong-token-0123456789", body)
    check("wrong URL token refused with 401", status == 401)

    stored = asyncio.run(read_raw(nats_url))
    check("GONG_RAW holds exactly the accepted bodies, byte-identical (nats-py)",
          sorted(stored) == sorted(sent), f"{len(stored)} stored vs {len(sent)} sent")

    calls_dir = os.path.join(stage, "calls")
    def staged():
        if not os.path.isdir(calls_dir):
            return None
        table = pq.read_table(calls_dir)
        return table if table.num_rows >= len(sent) else None
    table = wait_for("every call staged", staged, timeout=120)
    schema = table.schema
    check("calls.call_id is a string (pyarrow)", str(schema.field("call_id").type) in ("string", "large_string"))
    check("calls.started is a UTC timestamp (pyarrow)", str(schema.field("started").type).startswith("timestamp[us, tz=UTC]"), str(schema.field("started").type))
    for table_name in ("calls", "call_participants", "call_transcript_sentences"):
        path = os.path.join(stage, table_name)
        t = pq.read_table(path)
        check(f"{table_name}: event_id on every row", t.column("event_id").null_count == 0 and t.num_rows > 0)
    sentences = pq.read_table(os.path.join(stage, "call_transcript_sentences"))
    check("sentence text is in `text`", "text" in sentences.schema.names and sentences.column("text").null_count == 0)
    con = duckdb.connect()
    glob = os.path.join(calls_dir, "**", "*.parquet")
    total, distinct = con.execute(f"select count(*), count(distinct call_id) from read_parquet('{glob}')").fetchone()
    check("DuckDB: every call exactly once in calls", total == len(sent) and distinct == len(sent), f"{total} rows, {distinct} distinct")
    started_type = con.execute(f"select typeof(started) from read_parquet('{glob}') limit 1").fetchone()[0]
    check("DuckDB: started is TIMESTAMP WITH TIME ZONE", started_type == "TIMESTAMP WITH TIME ZONE", started_type)


async def read_raw(url):
    client = await nats.connect(url)
    try:
        js = client.jetstream()
        info = await js.stream_info("GONG_RAW")
        bodies = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            message = await js.get_msg("GONG_RAW", seq)
            bodies.append(bytes(message.data))
        return bodies
    finally:
        await client.close()


if __name__ == "__main__":
    sys.exit(main())
