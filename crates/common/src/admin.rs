//! The admin HTTP server on `ADMIN_ADDR`: `GET /healthz` (alive), `GET /readyz` (JetStream
//! reachable, streams present, and the stage's own readiness flag), `GET /metrics` (Prometheus).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What `/readyz` checks. Cheap to clone; stages flip [`Readiness::set_fault`] when they know
/// they cannot do useful work (for instance Gong answered 401).
#[derive(Clone)]
pub struct Readiness {
    inner: Arc<ReadinessInner>,
}

struct ReadinessInner {
    jetstream: Mutex<Option<async_nats::jetstream::Context>>,
    streams: Vec<&'static str>,
    started: AtomicBool,
    fault: Mutex<Option<String>>,
}

impl Readiness {
    /// Ready once [`Readiness::set_jetstream`] and [`Readiness::set_started`] were called, every
    /// stream in `streams` exists, and no fault is set.
    pub fn new(streams: Vec<&'static str>) -> Readiness {
        Readiness {
            inner: Arc::new(ReadinessInner {
                jetstream: Mutex::new(None),
                streams,
                started: AtomicBool::new(false),
                fault: Mutex::new(None),
            }),
        }
    }

    /// Gives the JetStream context to check.
    pub fn set_jetstream(&self, jetstream: async_nats::jetstream::Context) {
        *self.inner.jetstream.lock().expect("readiness lock") = Some(jetstream);
    }

    /// Marks the stage as started (listening, consuming).
    pub fn set_started(&self, started: bool) {
        self.inner.started.store(started, Ordering::SeqCst);
    }

    /// Sets or clears a fault that makes the stage unready (reason must not hold secrets).
    pub fn set_fault(&self, fault: Option<String>) {
        *self.inner.fault.lock().expect("readiness lock") = fault;
    }

    /// The current fault, if any.
    pub fn fault(&self) -> Option<String> {
        self.inner.fault.lock().expect("readiness lock").clone()
    }

    /// `Ok` when ready, else why not.
    pub async fn check(&self) -> Result<(), String> {
        if let Some(fault) = self.fault() {
            return Err(fault);
        }
        if !self.inner.started.load(Ordering::SeqCst) {
            return Err("starting".to_string());
        }
        let jetstream = self
            .inner
            .jetstream
            .lock()
            .expect("readiness lock")
            .clone()
            .ok_or_else(|| "not connected to jetstream yet".to_string())?;
        if jetstream.client().connection_state() != async_nats::connection::State::Connected {
            return Err("nats disconnected".to_string());
        }
        for stream in &self.inner.streams {
            match tokio::time::timeout(Duration::from_secs(2), jetstream.get_stream(*stream)).await
            {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return Err(format!("stream {stream} missing or unreachable")),
                Err(_) => return Err("jetstream timed out".to_string()),
            }
        }
        Ok(())
    }
}

/// Binds `addr` and serves the admin endpoints until `shutdown`. Returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    readiness: Readiness,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, "admin server listening");
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let Ok((stream, _)) = accepted else { continue };
            let readiness = readiness.clone();
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    handle(request, readiness.clone(), metrics.clone())
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(5))
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(local)
}

async fn handle(
    request: Request<Incoming>,
    readiness: Readiness,
    metrics: PrometheusHandle,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.method() != Method::GET {
        return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"));
    }
    let response = match request.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match readiness.check().await {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(reason) => {
                let body = serde_json::json!({"error": "not_ready", "reason": reason});
                json(StatusCode::SERVICE_UNAVAILABLE, &body)
            }
        },
        "/metrics" => {
            metrics.run_upkeep();
            let mut response = text(StatusCode::OK, &metrics.render());
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            response
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    Ok(response)
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
}

/// A JSON response; shared by the stages for their `{error, reason}` bodies and ingest's 202
/// (a typed body is serialised straight to bytes, with no `serde_json::Value` built first).
pub fn json<T: serde::Serialize + ?Sized>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    // Serialising plain strings, numbers and maps cannot fail.
    let mut response = Response::new(Full::new(Bytes::from(
        serde_json::to_vec(body).unwrap_or_default(),
    )));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// The admin server could not bind its address.
#[derive(Debug, thiserror::Error)]
#[error("cannot bind admin server on {addr}: {source}")]
pub struct BindError {
    /// `ADMIN_ADDR`.
    pub addr: SocketAddr,
    /// Cause.
    #[source]
    pub source: std::io::Error,
}

/// What every stage does first: install the Prometheus recorder, create the readiness for
/// `streams`, and serve the admin endpoints on `common.admin_addr` until `shutdown`.
/// Returns the readiness (not ready until the stage says so) and the bound address.
pub async fn start(
    common: &crate::CommonConfig,
    streams: Vec<&'static str>,
    shutdown: CancellationToken,
) -> Result<(Readiness, SocketAddr), BindError> {
    let metrics_handle = crate::telemetry::install_metrics();
    let readiness = Readiness::new(streams);
    let addr = serve(
        common.admin_addr,
        readiness.clone(),
        metrics_handle,
        shutdown,
    )
    .await
    .map_err(|source| BindError {
        addr: common.admin_addr,
        source,
    })?;
    Ok((readiness, addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_taken_admin_address_is_a_bind_error_naming_it() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let env = crate::Env::from_pairs([("ADMIN_ADDR", addr.to_string())]);
        let common = crate::CommonConfig::from_env(&env).unwrap();
        let err = start(&common, vec![], CancellationToken::new())
            .await
            .err()
            .expect("the address is taken");
        assert_eq!(err.addr, addr);
        assert_eq!(err.source.kind(), std::io::ErrorKind::AddrInUse);
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }
}
