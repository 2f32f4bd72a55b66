"""gong-ingest's webhook checks written the way a Python team would: FastAPI, PyJWT, nats-py.

The baseline of the acceptance benchmark (benches/acceptance/run.sh), run as

    GONG_WEBHOOK_SECRETS=<base64 SPKI DER or PEM> GONG_WEBHOOK_URL=https://... \
    NATS_URL=nats://127.0.0.1:4222 \
    uvicorn fastapi_ingest:app --workers 2 --no-access-log --log-level warning

POST /webhooks/gong: the JWT in Authorization (with or without "Bearer ") must be RS256 and
verify with a configured key, `exp` must not have passed (60 s leeway), `body_sha256` must be the
SHA-256 hex of the raw body and `webhook_url` the configured URL. The raw body is then published
to JetStream (GONG_RAW: gong.raw.call, or gong.raw.test; GONG_DLQ's gong.dlq.ingest if it is not
a webhook) with the headers gong-ingest sets, and answered 202 {event_id, stream_seq, duplicate}
after the ack. 401 {error, reason} on any authentication failure, 503 when the ack does not come.
The streams are provisioned beforehand (by gong-ingest, as in production).
"""

import base64
import hashlib
import hmac
import json
import os
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from urllib.parse import urlsplit, urlunsplit

import jwt
import nats
from cryptography.hazmat.primitives.serialization import load_der_public_key, load_pem_public_key
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


def load_keys(raw):
    """Bare base64 SPKI DER (as Gong shows it), comma- or newline-separated; or PEM blocks."""
    if "-----BEGIN" in raw:
        blocks = raw.split("-----BEGIN")[1:]
        return [load_pem_public_key(f"-----BEGIN{block}".encode()) for block in blocks]
    return [load_der_public_key(base64.b64decode(key)) for key in raw.replace(",", " ").split()]


def normalize_url(url):
    """Lower-case scheme and host, default port and trailing slash dropped (as gong-ingest)."""
    scheme, netloc, path, query, _ = urlsplit(str(url).strip())
    netloc = netloc.lower().removesuffix(":443" if scheme.lower() == "https" else ":80")
    return urlunsplit((scheme.lower(), netloc, path.rstrip("/"), query, ""))


KEYS = load_keys(os.environ["GONG_WEBHOOK_SECRETS"])  # parsed once per worker
WEBHOOK_URL = normalize_url(os.environ["GONG_WEBHOOK_URL"])
NATS_URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
PUBLISH_TIMEOUT = 5.0


class Unauthorized(Exception):
    pass


def verify(authorization, body_sha256):
    token = authorization.strip()
    if token[:7].lower() == "bearer ":
        token = token[7:].strip()
    if not token:
        raise Unauthorized("missing Authorization header")
    claims = None
    for key in KEYS:
        try:
            claims = jwt.decode(
                token, key, algorithms=["RS256"], leeway=60, options={"require": ["exp"]}
            )
            break
        except jwt.InvalidSignatureError:
            continue
        except jwt.PyJWTError as err:
            raise Unauthorized(f"invalid JWT: {err}") from None
    if claims is None:
        raise Unauthorized("JWT signature does not verify with any configured key")
    if not hmac.compare_digest(str(claims.get("body_sha256", "")).lower(), body_sha256):
        raise Unauthorized("body_sha256 does not match the request body")
    if normalize_url(claims.get("webhook_url", "")) != WEBHOOK_URL:
        raise Unauthorized("webhook_url does not match the configured GONG_WEBHOOK_URL")


@asynccontextmanager
async def lifespan(app):
    app.state.nc = await nats.connect(NATS_URL)  # one connection per worker
    app.state.js = app.state.nc.jetstream()
    yield
    await app.state.nc.drain()


app = FastAPI(lifespan=lifespan)


@app.get("/readyz")
async def readyz(request: Request):
    return {"ready": request.app.state.nc.is_connected}


@app.post("/webhooks/gong")
async def webhook(request: Request):
    body = await request.body()
    event_id = hashlib.sha256(body).hexdigest()
    try:
        verify(request.headers.get("authorization", ""), event_id)
    except Unauthorized as err:
        return JSONResponse({"error": "unauthorized", "reason": str(err)}, status_code=401)

    now = datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
    headers = {"Nats-Msg-Id": event_id, "Gong-Event-Id": event_id,
               "Gong-Received-At": now, "Gong-Auth-Mode": "jwt"}
    try:
        webhook = json.loads(body)
        headers["Gong-Call-Id"] = str(webhook["callData"]["metaData"]["id"])
        subject = "gong.raw.test" if webhook.get("isTest") else "gong.raw.call"
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        subject = "gong.dlq.ingest"  # authentic but not a webhook: kept for a human
        headers.update({"Gong-Dlq-Reason": "unparseable_webhook", "Gong-Dlq-Detail": str(err)[:200],
                        "Gong-Dlq-Stage": "ingest", "Gong-Dlq-At": now})
    try:
        ack = await request.app.state.js.publish(
            subject, body, headers=headers, timeout=PUBLISH_TIMEOUT
        )
    except Exception:  # noqa: BLE001 - timeout, no responders, disconnected: "retry later"
        return JSONResponse({"error": "unavailable", "reason": "event store did not acknowledge"},
                            status_code=503, headers={"Retry-After": "5"})
    return JSONResponse(
        {"event_id": event_id, "stream_seq": ack.seq, "duplicate": bool(ack.duplicate)},
        status_code=202,
    )
