//! The webhook server: routing, authentication, body limits, publishing, answers.
//!
//! A request is authenticated from its head first (URL token, or the JWT's signature, expiry
//! and destination), before it takes one of `INGEST_MAX_CONCURRENT_REQUESTS` slots and before
//! its body is read; only then is the body read (capped, timed) and compared with the signed
//! `body_sha256`. A forged request never holds a slot, and its body is not read beyond the small
//! amount `discard_unread_body` throws away.
//!
//! Every request ends in exactly one of: 202 after JetStream's publish ack (to `GONG_RAW`, or to
//! `GONG_DLQ` for authentic but unparseable bodies), a 4xx with `{error, reason}` and nothing
//! stored, or a 503 with `Retry-After` when the ack could not be had. Never a 2xx without an ack.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;
use gong_common::names::{self, headers, Stage};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, AUTHORIZATION, CONTENT_LENGTH, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::auth::{AuthError, VerifiedJwt};
use crate::config::IngestConfig;
use crate::metrics;

/// Path of the signed-JWT endpoint.
pub const JWT_PATH: &str = "/webhooks/gong";
const TOKEN_PREFIX: &str = "/webhooks/gong/";

/// Shared by every connection.
pub struct Ingest {
    pub(crate) jetstream: jetstream::Context,
    pub(crate) config: IngestConfig,
    pub(crate) in_flight: Semaphore,
}

type HttpResponse = Response<Full<Bytes>>;

/// How a request was authenticated.
#[derive(Clone, Copy)]
enum AuthMode {
    Jwt,
    UrlToken,
}

impl AuthMode {
    fn as_str(self) -> &'static str {
        match self {
            AuthMode::Jwt => "jwt",
            AuthMode::UrlToken => "url_token",
        }
    }
}

/// A rejection: status, stable error code and a reason safe to show (no secrets).
struct Reject {
    status: StatusCode,
    error: &'static str,
    reason: String,
    outcome: &'static str,
}

impl Reject {
    fn new(
        status: StatusCode,
        error: &'static str,
        reason: impl Into<String>,
        outcome: &'static str,
    ) -> Reject {
        Reject {
            status,
            error,
            reason: reason.into(),
            outcome,
        }
    }

    fn unauthorized(err: AuthError) -> Reject {
        metrics::auth_failure(err.label());
        Reject::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            err.to_string(),
            "unauthorized",
        )
    }

    fn unavailable(reason: &str, retry_after: u64, outcome: &'static str) -> Reject {
        Reject::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("{reason}; retry after {retry_after}s"),
            outcome,
        )
    }
}

impl Ingest {
    /// Answers one request. Never panics, never errors: every failure is an HTTP answer.
    pub async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
    ) -> Result<HttpResponse, Infallible> {
        let started = Instant::now();
        let answered = self.handle_inner(request).await;
        // The request's permit is released by now, whichever way it ended (4xx after the body
        // was read included), so the gauge cannot stay high.
        metrics::in_flight(
            self.config
                .max_concurrent_requests
                .saturating_sub(self.in_flight.available_permits()),
        );
        let (outcome, response) = match answered {
            Ok((outcome, response)) => (outcome, response),
            Err(reject) => {
                let retry_after = (reject.status == StatusCode::SERVICE_UNAVAILABLE)
                    .then_some(self.config.retry_after_secs);
                (reject.outcome, reject_response(&reject, retry_after))
            }
        };
        metrics::request(outcome, started.elapsed());
        Ok(response)
    }

    async fn handle_inner(
        &self,
        request: Request<Incoming>,
    ) -> Result<(&'static str, HttpResponse), Reject> {
        // Everything that can be decided from the head is decided before a request slot is taken
        // and before the body is read: a forged request costs one RSA verification, no slot, and
        // at most DISCARD_MAX_BYTES of reading (see `discard_unread_body`).
        let head = self.authenticate_head(&request).and_then(|authenticated| {
            check_declared_length(&request, self.config.max_body_bytes)?;
            Ok(authenticated)
        });
        let (mode, jwt) = match head {
            Ok(authenticated) => authenticated,
            Err(reject) => {
                discard_unread_body(request);
                return Err(reject);
            }
        };

        let _permit = match self.in_flight.try_acquire() {
            Ok(permit) => permit,
            Err(_) => {
                discard_unread_body(request);
                return Err(Reject::unavailable(
                    "too many requests in flight",
                    self.config.retry_after_secs,
                    "overloaded",
                ));
            }
        };
        metrics::in_flight(
            self.config
                .max_concurrent_requests
                .saturating_sub(self.in_flight.available_permits()),
        );

        let body = self.read_body(request).await?;

        // One hash of the raw bytes serves the body_sha256 check and the event id.
        let event_id = gong_common::event::content_id(&body);
        if let Some(jwt) = &jwt {
            jwt.check_body(&event_id).map_err(Reject::unauthorized)?;
        }

        self.store(mode, body, event_id).await
    }

    /// Routes a request and authenticates it from its head alone: the URL token, or the JWT's
    /// algorithm, signature, `exp`/`nbf` and `webhook_url`. What is left for the body is the
    /// returned token's `body_sha256`.
    fn authenticate_head(
        &self,
        request: &Request<Incoming>,
    ) -> Result<(AuthMode, Option<VerifiedJwt>), Reject> {
        let path = request.uri().path();
        let mode = if path == JWT_PATH || path == TOKEN_PREFIX {
            AuthMode::Jwt
        } else if let Some(token) = path.strip_prefix(TOKEN_PREFIX).filter(|t| !t.contains('/')) {
            if request.method() == Method::POST {
                // No tokens configured: none matches. The token itself is never logged.
                self.config
                    .verifier
                    .verify_url_token(token)
                    .map_err(Reject::unauthorized)?;
            }
            AuthMode::UrlToken
        } else {
            return Err(Reject::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint",
                "not_found",
            ));
        };
        if request.method() != Method::POST {
            return Err(Reject::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "use POST",
                "method_not_allowed",
            ));
        }
        let AuthMode::Jwt = mode else {
            return Ok((mode, None));
        };
        if !self.config.verifier.jwt_enabled() {
            return Err(Reject::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "signed-JWT mode is not configured on this server",
                "not_found",
            ));
        }
        let mut values = request.headers().get_all(AUTHORIZATION).iter();
        let first = values
            .next()
            .ok_or_else(|| Reject::unauthorized(AuthError::MissingAuthorization))?;
        if values.next().is_some() {
            return Err(Reject::unauthorized(AuthError::MultipleAuthorization));
        }
        let jwt = self
            .config
            .verifier
            .verify_header(first.as_bytes())
            .map_err(Reject::unauthorized)?;
        Ok((mode, Some(jwt)))
    }

    /// Reads the body within the cap and the body timeout.
    async fn read_body(&self, request: Request<Incoming>) -> Result<Bytes, Reject> {
        let max = self.config.max_body_bytes;
        let limited = Limited::new(request.into_body(), max);
        match tokio::time::timeout(self.config.body_timeout, limited.collect()).await {
            Err(_) => Err(Reject::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "body not received in time",
                "timeout",
            )),
            Ok(Err(err)) if err.is::<http_body_util::LengthLimitError>() => Err(too_large(max)),
            Ok(Err(_)) => Err(Reject::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "body could not be read",
                "bad_request",
            )),
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
        }
    }

    /// Publishes an authenticated body and answers 202 after the ack.
    async fn store(
        &self,
        mode: AuthMode,
        body: Bytes,
        event_id: String,
    ) -> Result<(&'static str, HttpResponse), Reject> {
        let received_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let classified = classify(&body);

        let mut message_headers = async_nats::HeaderMap::new();
        message_headers.insert(async_nats::header::NATS_MESSAGE_ID, event_id.as_str());
        message_headers.insert(headers::EVENT_ID, event_id.as_str());
        message_headers.insert(headers::RECEIVED_AT, received_at.as_str());
        message_headers.insert(headers::AUTH_MODE, mode.as_str());
        let (subject, dead_letter_reason) = match &classified {
            Ok(webhook) => {
                message_headers.insert(headers::CALL_ID, webhook.call_id.as_str());
                let subject = if webhook.is_test {
                    names::SUBJECT_RAW_TEST
                } else {
                    names::SUBJECT_RAW_CALL
                };
                (subject, None)
            }
            Err(reason) => {
                message_headers.insert(headers::DLQ_REASON, "unparseable_webhook");
                message_headers.insert(headers::DLQ_DETAIL, reason.as_str());
                message_headers.insert(headers::DLQ_STAGE, Stage::Ingest.as_str());
                message_headers.insert(headers::DLQ_AT, received_at.as_str());
                (Stage::Ingest.dlq_subject(), Some(reason.clone()))
            }
        };
        let body_len = body.len();

        let ack = self.publish(subject, message_headers, body).await?;
        metrics::body_bytes(body_len);

        let outcome = match (&dead_letter_reason, ack.duplicate) {
            (Some(_), _) => "dead_lettered",
            (None, true) => "duplicate",
            (None, false) => "accepted",
        };
        if let Some(reason) = &dead_letter_reason {
            tracing::warn!(event_id = %event_id, stream_seq = ack.sequence, auth_mode = mode.as_str(), reason = %reason, "authenticated webhook dead-lettered");
        } else {
            tracing::debug!(event_id = %event_id, stream_seq = ack.sequence, duplicate = ack.duplicate, subject, "webhook stored");
        }
        let dead_lettered = dead_letter_reason.is_some();
        let answer = Accepted {
            event_id: &event_id,
            stream_seq: ack.sequence,
            duplicate: ack.duplicate,
            dead_lettered: dead_lettered.then_some(true),
            stream: dead_lettered.then_some(names::STREAM_DLQ),
        };
        Ok((
            outcome,
            gong_common::admin::json(StatusCode::ACCEPTED, &answer),
        ))
    }

    async fn publish(
        &self,
        subject: &'static str,
        message_headers: async_nats::HeaderMap,
        body: Bytes,
    ) -> Result<jetstream::publish::PublishAck, Reject> {
        let retry_after = self.config.retry_after_secs;
        if self.jetstream.client().connection_state() != async_nats::connection::State::Connected {
            metrics::publish_failure("disconnected");
            return Err(Reject::unavailable(
                "event store unreachable",
                retry_after,
                "unavailable",
            ));
        }
        let started = Instant::now();
        let deadline = self.config.publish_timeout;
        let publish = PublishMessage::build()
            .payload(body)
            .headers(message_headers);
        let attempt = async {
            let pending = self.jetstream.send_publish(subject, publish).await?;
            pending.await
        };
        match tokio::time::timeout(deadline, attempt).await {
            Ok(Ok(ack)) => {
                metrics::publish(started.elapsed());
                Ok(ack)
            }
            Ok(Err(err)) if err.kind() == PublishErrorKind::MaxPayloadExceeded => {
                metrics::publish_failure("max_payload");
                Err(Reject::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "body exceeds the event store's max_payload",
                    "too_large",
                ))
            }
            Ok(Err(err)) => {
                metrics::publish_failure("error");
                tracing::warn!(subject, error = %err, "publish to jetstream failed");
                Err(Reject::unavailable(
                    "event store did not acknowledge",
                    retry_after,
                    "unavailable",
                ))
            }
            Err(_) => {
                metrics::publish_failure("timeout");
                tracing::warn!(
                    subject,
                    timeout_ms = deadline.as_millis() as u64,
                    "publish ack timed out"
                );
                Err(Reject::unavailable(
                    "event store did not acknowledge in time",
                    retry_after,
                    "unavailable",
                ))
            }
        }
    }
}

/// Largest declared body of a refused request that is still read (and thrown away) after the
/// answer, so that a sender that reads the answer only once its upload is done sees it, and the
/// connection stays usable. Gong's webhooks are well under it.
pub const DISCARD_MAX_BYTES: u64 = 256 * 1024;

/// How long such a discarded body may take to arrive before the connection is closed.
const DISCARD_TIMEOUT: Duration = Duration::from_secs(2);

/// What becomes of the body of a request answered without reading it (refused from its head, or
/// over the request bound). A small declared body is read and thrown away in the background,
/// holding no request slot and no bytes, within [`DISCARD_TIMEOUT`]. Anything else (larger, or
/// no `Content-Length`) is not read at all: dropping it makes hyper take what is already
/// buffered and otherwise close the connection after the answer, so a forged 5 MiB upload is
/// cut off rather than read.
fn discard_unread_body(request: Request<Incoming>) {
    if !reads_to_discard(request.headers()) {
        return;
    }
    let mut body = request.into_body();
    tokio::spawn(async move {
        // hyper stops at the declared length, so at most DISCARD_MAX_BYTES are read.
        let drain = async { while let Some(Ok(_)) = body.frame().await {} };
        let _ = tokio::time::timeout(DISCARD_TIMEOUT, drain).await;
    });
}

/// Whether an unread body is small enough to be read and thrown away (see
/// [`discard_unread_body`]): a declared length of 1 to [`DISCARD_MAX_BYTES`].
fn reads_to_discard(request_headers: &hyper::HeaderMap) -> bool {
    request_headers
        .get(CONTENT_LENGTH)
        .and_then(|length| length.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|declared| declared > 0 && declared <= DISCARD_MAX_BYTES)
}

fn too_large(max: usize) -> Reject {
    Reject::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("body exceeds {max} bytes"),
        "too_large",
    )
}

/// Refuses a declared `Content-Length` over the cap (or not a number) before the body is read.
/// Bodies without one are cut at the cap while they are read.
fn check_declared_length(request: &Request<Incoming>, max: usize) -> Result<(), Reject> {
    let Some(length) = request.headers().get(CONTENT_LENGTH) else {
        return Ok(());
    };
    match length
        .to_str()
        .ok()
        .and_then(|text| text.parse::<u64>().ok())
    {
        Some(declared) if declared > max as u64 => Err(too_large(max)),
        Some(_) => Ok(()),
        None => Err(Reject::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "invalid Content-Length",
            "bad_request",
        )),
    }
}

/// What ingest needs from a body: enough to route it. Everything else is the enricher's job.
#[derive(Deserialize)]
struct Probe {
    #[serde(rename = "isTest", default)]
    is_test: Option<bool>,
    #[serde(rename = "callData")]
    call_data: Option<ProbeCall>,
}

#[derive(Deserialize)]
struct ProbeCall {
    #[serde(rename = "metaData")]
    meta_data: Option<ProbeMeta>,
}

#[derive(Deserialize)]
struct ProbeMeta {
    id: Option<serde_json::Value>,
}

/// How an authenticated body is routed.
#[derive(Debug)]
pub struct Classified {
    /// `isTest`: stored on `gong.raw.test`.
    pub is_test: bool,
    /// `callData.metaData.id`.
    pub call_id: String,
}

/// Routes a body: test delivery or call, with its call id; or why it cannot be understood
/// (the reason is safe to store and show). Public for the fuzz targets.
pub fn classify(body: &[u8]) -> Result<Classified, String> {
    let probe: Probe = serde_json::from_slice(body).map_err(|err| {
        gong_common::dlq::clip_detail(&format!("body is not a JSON webhook: {err}"))
    })?;
    let id = probe
        .call_data
        .and_then(|call| call.meta_data)
        .and_then(|meta| meta.id)
        .ok_or_else(|| "callData.metaData.id is missing".to_string())?;
    let call_id = match id {
        serde_json::Value::String(text) if gong_common::gong::is_call_id(&text) => text,
        serde_json::Value::Number(number) if number.is_u64() => number.to_string(),
        _ => return Err("callData.metaData.id is not a numeric call id".to_string()),
    };
    Ok(Classified {
        is_test: probe.is_test.unwrap_or(false),
        call_id,
    })
}

/// The 202 body: a typed struct, so no `serde_json::Value` map is built per accepted webhook.
#[derive(serde::Serialize)]
struct Accepted<'a> {
    event_id: &'a str,
    stream_seq: u64,
    duplicate: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    dead_lettered: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<&'static str>,
}

fn reject_response(reject: &Reject, retry_after: Option<u64>) -> HttpResponse {
    let body = serde_json::json!({"error": reject.error, "reason": reject.reason});
    let mut response = gong_common::admin::json(reject.status, &body);
    if reject.status == StatusCode::METHOD_NOT_ALLOWED {
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST"));
    }
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_routes_tests_and_calls() {
        let call = classify(br#"{"isTest":false,"callData":{"metaData":{"id":"123"}}}"#).unwrap();
        assert!(!call.is_test);
        assert_eq!(call.call_id, "123");
        let test = classify(br#"{"isTest":true,"callData":{"metaData":{"id":456}}}"#).unwrap();
        assert!(test.is_test);
        assert_eq!(test.call_id, "456");
    }

    #[test]
    fn classify_explains_bad_bodies() {
        assert!(classify(b"not json").unwrap_err().contains("not a JSON"));
        assert!(classify(b"{}").unwrap_err().contains("missing"));
        assert!(classify(br#"{"callData":{"metaData":{"id":"12a"}}}"#).is_err());
        assert!(classify(&[0xff, 0xfe]).is_err());
        let deep = "[".repeat(10_000);
        assert!(classify(deep.as_bytes()).is_err());
    }

    #[test]
    fn classify_cuts_long_non_ascii_reasons_on_a_character_boundary() {
        // serde quotes the bad value in its message: multi-byte characters reach the cut.
        for pad in 0..4 {
            let body = format!(r#"{{"isTest":"{}{}"}}"#, "x".repeat(pad), "é".repeat(400));
            let reason = classify(body.as_bytes()).unwrap_err();
            assert!(reason.starts_with("body is not a JSON webhook"), "{reason}");
            assert!(reason.chars().count() <= gong_common::dlq::MAX_DETAIL_CHARS);
        }
    }

    #[test]
    fn only_small_declared_bodies_are_read_to_be_discarded() {
        let with_length = |length: &str| {
            let mut map = hyper::HeaderMap::new();
            map.insert(CONTENT_LENGTH, HeaderValue::from_str(length).unwrap());
            map
        };
        assert!(reads_to_discard(&with_length("1")));
        assert!(reads_to_discard(&with_length(
            &DISCARD_MAX_BYTES.to_string()
        )));
        // A forged 5 MiB upload, or one of unknown length, is cut off rather than read.
        assert!(!reads_to_discard(&with_length(
            &(DISCARD_MAX_BYTES + 1).to_string()
        )));
        assert!(!reads_to_discard(&with_length("5242880")));
        assert!(!reads_to_discard(&with_length("0")));
        assert!(!reads_to_discard(&with_length("nonsense")));
        assert!(!reads_to_discard(&hyper::HeaderMap::new()));
    }

    #[test]
    fn call_ids_are_what_enrich_accepts() {
        let id = |id: &str| format!(r#"{{"callData":{{"metaData":{{"id":"{id}"}}}}}}"#);
        assert!(classify(id(&"9".repeat(20)).as_bytes()).is_ok());
        assert!(classify(id(&"9".repeat(21)).as_bytes()).is_err());
        assert!(classify(id("").as_bytes()).is_err());
    }
}
