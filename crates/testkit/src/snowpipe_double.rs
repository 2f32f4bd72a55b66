//! A Snowpipe REST API double: an HTTP server (hyper 1) answering `insertFiles`,
//! `insertReport` and `loadHistoryScan` the way Snowflake documents them, behind Snowflake's
//! key-pair JWT check, with scripted load outcomes.
//!
//! What it enforces and answers:
//! - **Authentication** on every endpoint: `Authorization: Bearer <jwt>` and
//!   `X-Snowflake-Authorization-Token-Type: KEYPAIR_JWT`; the JWT is RS256, verifies with the
//!   user's public key, has `iss` = `ACCOUNT.USER.SHA256:<base64 SHA-256 of the public key's
//!   SPKI DER>` and `sub` = `ACCOUNT.USER` (account without region, both upper case), `iat`,
//!   and an `exp` in the future at most one hour after `iat`. Anything else: `401 {"code":
//!   "390144", "message": "JWT token is invalid.", ...}`.
//! - `POST /v1/data/pipes/<pipe>/insertFiles?requestId=` with `{"files": [{"path": ...}]}`:
//!   `200 {"requestId", "responseCode": "SUCCESS"}` (or `503` while
//!   [`SnowpipeDouble::refuse_inserts`] is on). Each file then "loads" at once with its
//!   scripted [`Outcome`] (default `LOADED`); a path already loaded is skipped, as Snowpipe
//!   skips a file name it has loaded.
//! - `GET .../insertReport?requestId=&beginMark=`: the pipe's load events from `beginMark` on,
//!   those of the last [`SnowpipeDouble::set_report_retention`] (10 minutes) and at most
//!   10,000; `files[]` with `path, stageLocation, fileSize, timeReceived, lastInsertTime,
//!   rowsInserted, rowsParsed, errorsSeen, errorLimit, complete, status, firstError...`,
//!   `nextBeginMark` (`"1_<next event>"`), and `completeResult: false` when events after
//!   `beginMark` are no longer in the report (expired, or scripted
//!   [`Outcome::missed_by_report`]).
//! - `GET .../loadHistoryScan?startTimeInclusive=&endTimeExclusive=`: the latest entry of each
//!   file whose `lastInsertTime` is in the window, oldest first, at most
//!   [`SnowpipeDouble::set_history_page_size`] (10,000) per answer; `completeResult: false`
//!   when more follow (ask again from `rangeEndTime`), `startTimeInclusive`,
//!   `endTimeExclusive`, `rangeStartTime`, `rangeEndTime`.
//! - Reported paths are the paths notified, or with [`SnowpipeDouble::report_folder_relative`]
//!   relative to the pipe's folder (the first path segment dropped, and `stageLocation` ending
//!   in that folder), as a pipe `COPY ... FROM @STAGE/<folder>/` reports them.
//! - Statuses `LOAD_IN_PROGRESS` (first, with [`Outcome::in_progress_first`]; the final event
//!   follows once an `insertReport` has returned it), `LOADED`, `LOAD_FAILED`,
//!   `PARTIALLY_LOADED`; [`Outcome::never`] files are accepted and never reported.
//!
//! Every request is kept ([`SnowpipeDouble::requests`]) with its verified claims.

use std::collections::{BTreeMap, HashSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::Digest;
use tokio::net::TcpListener;

/// The claims of a Snowflake key-pair JWT, as the double verified them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPairClaims {
    /// `ACCOUNT.USER.SHA256:<fingerprint>`.
    pub iss: String,
    /// `ACCOUNT.USER`.
    pub sub: String,
    /// Issued at.
    pub iat: i64,
    /// Expiry.
    pub exp: i64,
}

/// How a file a pipe was told about loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadStatus {
    /// `LOADED`: every row.
    Loaded,
    /// `LOAD_FAILED`: no row.
    LoadFailed,
    /// `PARTIALLY_LOADED`: some rows skipped.
    PartiallyLoaded,
}

impl LoadStatus {
    fn as_str(self) -> &'static str {
        match self {
            LoadStatus::Loaded => "LOADED",
            LoadStatus::LoadFailed => "LOAD_FAILED",
            LoadStatus::PartiallyLoaded => "PARTIALLY_LOADED",
        }
    }
}

/// The scripted outcome of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// `None`: accepted, never loaded, never reported.
    pub status: Option<LoadStatus>,
    /// Report `LOAD_IN_PROGRESS` before the final status.
    pub in_progress_first: bool,
    /// The file's events are missing from `insertReport` (which then says
    /// `completeResult: false`); `loadHistoryScan` has them.
    pub missed_by_report: bool,
}

impl Outcome {
    /// `LOADED`.
    pub fn loaded() -> Outcome {
        Outcome {
            status: Some(LoadStatus::Loaded),
            in_progress_first: false,
            missed_by_report: false,
        }
    }

    /// `LOAD_FAILED`.
    pub fn load_failed() -> Outcome {
        Outcome {
            status: Some(LoadStatus::LoadFailed),
            ..Outcome::loaded()
        }
    }

    /// `PARTIALLY_LOADED`.
    pub fn partially_loaded() -> Outcome {
        Outcome {
            status: Some(LoadStatus::PartiallyLoaded),
            ..Outcome::loaded()
        }
    }

    /// Never reported.
    pub fn never() -> Outcome {
        Outcome {
            status: None,
            ..Outcome::loaded()
        }
    }

    /// With a `LOAD_IN_PROGRESS` event first.
    pub fn in_progress_first(self) -> Outcome {
        Outcome {
            in_progress_first: true,
            ..self
        }
    }

    /// Missing from `insertReport`.
    pub fn missed_by_report(self) -> Outcome {
        Outcome {
            missed_by_report: true,
            ..self
        }
    }
}

/// One request the double received.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    /// `insertFiles`, `insertReport`, `loadHistoryScan`, or the path when unknown.
    pub endpoint: String,
    /// The pipe in the path.
    pub pipe: String,
    /// Query parameters.
    pub query: BTreeMap<String, String>,
    /// The JSON body (`Null` for none).
    pub body: Value,
    /// `X-Snowflake-Authorization-Token-Type`.
    pub token_type: String,
    /// The JWT's claims, or why it was refused.
    pub claims: Result<KeyPairClaims, String>,
    /// The status answered.
    pub status: u16,
}

#[derive(Debug, Clone)]
struct Event {
    seq: u64,
    at: DateTime<Utc>,
    path: String,
    entry: Value,
    hidden: bool,
}

#[derive(Debug, Default)]
struct Pipe {
    events: Vec<Event>,
    next_seq: u64,
    /// Final events waiting for their `LOAD_IN_PROGRESS` event to be reported.
    deferred: Vec<(u64, String, LoadStatus, bool)>,
    /// Paths with a final load (skipped when notified again).
    loaded: HashSet<String>,
}

struct State {
    requests: Vec<SeenRequest>,
    refuse_inserts: bool,
    default_outcome: Outcome,
    outcomes: Vec<(String, Outcome)>,
    pipes: BTreeMap<String, Pipe>,
    report_retention: Duration,
    history_page_size: usize,
    last_time: DateTime<Utc>,
    folder_relative: bool,
}

impl State {
    /// Now, strictly after every earlier event time (millisecond resolution).
    fn tick(&mut self) -> DateTime<Utc> {
        let now = Utc::now();
        let now = DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now);
        let next = if now > self.last_time {
            now
        } else {
            self.last_time + chrono::Duration::milliseconds(1)
        };
        self.last_time = next;
        next
    }

    fn outcome_for(&self, path: &str) -> Outcome {
        self.outcomes
            .iter()
            .find(|(pattern, _)| path.contains(pattern.as_str()))
            .map(|(_, outcome)| *outcome)
            .unwrap_or(self.default_outcome)
    }
}

/// `entry` as reported: with its path relative to its first segment when `folder_relative`.
fn as_reported(entry: &Value, folder_relative: bool) -> Value {
    let mut entry = entry.clone();
    if folder_relative {
        let path = entry["path"].as_str().unwrap_or_default().to_string();
        if let Some((folder, rest)) = path.split_once('/') {
            let location = entry["stageLocation"].as_str().unwrap_or_default();
            entry["stageLocation"] = json!(format!("{location}{folder}/"));
            entry["path"] = json!(rest);
        }
    }
    entry
}

fn time_text(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn entry(path: &str, status: &str, received: DateTime<Utc>, at: DateTime<Utc>) -> Value {
    let (inserted, errors, first_error, complete) = match status {
        "LOADED" => (10, 0, None, true),
        "LOAD_FAILED" => (0, 10, Some("Numeric value 'abc' is not recognized"), true),
        "PARTIALLY_LOADED" => (7, 3, Some("NULL result in a non-nullable column"), true),
        _ => (4, 0, None, false),
    };
    let mut value = json!({
        "path": path,
        "stageLocation": "s3://gong-stage/prefix/",
        "fileSize": 4096,
        "timeReceived": time_text(received),
        "lastInsertTime": time_text(at),
        "rowsInserted": inserted,
        "rowsParsed": inserted + errors,
        "errorsSeen": errors,
        "errorLimit": 1,
        "complete": complete,
        "status": status,
    });
    if let Some(error) = first_error {
        value["firstError"] = json!(error);
        value["firstErrorLineNum"] = json!(1);
        value["firstErrorCharacterPos"] = json!(1);
        value["firstErrorColumnName"] = json!("\"CALLS\"[\"DURATION\":5]");
    }
    value
}

impl Pipe {
    fn push(&mut self, at: DateTime<Utc>, path: &str, entry: Value, hidden: bool) -> u64 {
        self.next_seq += 1;
        let seq = self.next_seq;
        self.events.push(Event {
            seq,
            at,
            path: path.to_string(),
            entry,
            hidden,
        });
        seq
    }
}

/// The running double; stops when dropped.
pub struct SnowpipeDouble {
    url: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SnowpipeDouble {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the JWT must say.
#[derive(Clone)]
struct Auth {
    key: jsonwebtoken::DecodingKey,
    issuer: String,
    subject: String,
}

/// The `SHA256:<base64>` fingerprint Snowflake shows for `public_pem` (`DESC USER`).
pub fn public_key_fingerprint(public_pem: &str) -> String {
    let body: String = public_pem
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .map(str::trim)
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("public key PEM");
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(der))
    )
}

impl SnowpipeDouble {
    /// Starts the double on a free local port for `account`'s `user`, whose registered public
    /// key is `public_pem`.
    pub async fn start(account: &str, user: &str, public_pem: &str) -> SnowpipeDouble {
        let subject = format!(
            "{}.{}",
            account
                .split('.')
                .next()
                .unwrap_or(account)
                .to_ascii_uppercase(),
            user.to_ascii_uppercase()
        );
        let auth = Auth {
            key: jsonwebtoken::DecodingKey::from_rsa_pem(public_pem.as_bytes())
                .expect("public key PEM"),
            issuer: format!("{subject}.{}", public_key_fingerprint(public_pem)),
            subject,
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let state = Arc::new(Mutex::new(State {
            requests: Vec::new(),
            refuse_inserts: false,
            default_outcome: Outcome::loaded(),
            outcomes: Vec::new(),
            pipes: BTreeMap::new(),
            report_retention: Duration::from_secs(600),
            history_page_size: 10_000,
            last_time: DateTime::<Utc>::MIN_UTC,
            folder_relative: false,
        }));
        let served = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    break;
                };
                let state = served.clone();
                let auth = auth.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let state = state.clone();
                        let auth = auth.clone();
                        async move { Ok::<_, Infallible>(handle(request, &state, &auth).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        SnowpipeDouble { url, state, task }
    }

    /// The base URL (`SNOWFLAKE_PIPE_URL`).
    pub fn url(&self) -> String {
        self.url.clone()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// While `refuse` is true, `insertFiles` answers `503`.
    pub fn refuse_inserts(&self, refuse: bool) {
        self.state().refuse_inserts = refuse;
    }

    /// The outcome of files no pattern matches (default `LOADED`).
    pub fn set_default_outcome(&self, outcome: Outcome) {
        self.state().default_outcome = outcome;
    }

    /// The outcome of files whose path contains `pattern` (first match wins).
    pub fn set_outcome(&self, pattern: &str, outcome: Outcome) {
        self.state().outcomes.push((pattern.to_string(), outcome));
    }

    /// How long `insertReport` keeps events (default 10 minutes).
    pub fn set_report_retention(&self, retention: Duration) {
        self.state().report_retention = retention;
    }

    /// Entries per `loadHistoryScan` answer (default 10,000).
    pub fn set_history_page_size(&self, size: usize) {
        self.state().history_page_size = size.max(1);
    }

    /// While `relative` is true, `insertReport` and `loadHistoryScan` report each path
    /// relative to its first segment (`calls/dt=D/f.parquet` as `dt=D/f.parquet`, with
    /// `stageLocation` ending in `calls/`): what a pipe reading a folder of the stage reports.
    pub fn report_folder_relative(&self, relative: bool) {
        self.state().folder_relative = relative;
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.state().requests.clone()
    }

    /// Paths of accepted `insertFiles` calls, one entry per call and file.
    pub fn notified_paths(&self) -> Vec<String> {
        self.state()
            .requests
            .iter()
            .filter(|request| request.endpoint == "insertFiles" && request.status == 200)
            .flat_map(|request| {
                request.body["files"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|file| file["path"].as_str().map(str::to_string))
            })
            .collect()
    }

    /// Requests to `endpoint` answered with `status`.
    pub fn count(&self, endpoint: &str, status: u16) -> usize {
        self.state()
            .requests
            .iter()
            .filter(|request| request.endpoint == endpoint && request.status == status)
            .count()
    }
}

fn respond(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn verify(token: &str, auth: &Auth) -> Result<KeyPairClaims, String> {
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_required_spec_claims(&["exp", "iss", "sub", "iat"]);
    validation.leeway = 60;
    let claims = jsonwebtoken::decode::<KeyPairClaims>(token, &auth.key, &validation)
        .map_err(|err| err.to_string())?
        .claims;
    if claims.iss != auth.issuer {
        return Err(format!("iss {} is not {}", claims.iss, auth.issuer));
    }
    if claims.sub != auth.subject {
        return Err(format!("sub {} is not {}", claims.sub, auth.subject));
    }
    if claims.exp - claims.iat > 3600 {
        return Err("exp is more than one hour after iat".to_string());
    }
    Ok(claims)
}

async fn handle(
    request: Request<Incoming>,
    state: &Mutex<State>,
    auth: &Auth,
) -> Response<Full<Bytes>> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query: BTreeMap<String, String> =
        reqwest::Url::parse(&format!("http://double{}", request.uri()))
            .map(|url| {
                url.query_pairs()
                    .map(|(name, value)| (name.to_string(), value.to_string()))
                    .collect()
            })
            .unwrap_or_default();
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let token_type = header("x-snowflake-authorization-token-type");
    let authorization = header("authorization");
    let claims = match authorization
        .strip_prefix("Bearer ")
        .or_else(|| authorization.strip_prefix("BEARER "))
    {
        Some(token) => verify(token, auth),
        None => Err("no bearer token".to_string()),
    };
    let body = request
        .into_body()
        .collect()
        .await
        .map(|body| body.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (pipe, endpoint) = match path
        .strip_prefix("/v1/data/pipes/")
        .and_then(|rest| rest.rsplit_once('/'))
    {
        Some((pipe, endpoint)) => (pipe.to_string(), endpoint.to_string()),
        None => (String::new(), path.clone()),
    };
    let mut state = state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let response = if claims.is_err() || token_type != "KEYPAIR_JWT" {
        respond(
            StatusCode::UNAUTHORIZED,
            json!({"data": null, "code": "390144", "message": "JWT token is invalid.", "success": false, "headers": null}),
        )
    } else {
        match (method, endpoint.as_str()) {
            (Method::POST, "insertFiles") => insert_files(&mut state, &pipe, &body, &query),
            (Method::GET, "insertReport") => insert_report(&mut state, &pipe, &query),
            (Method::GET, "loadHistoryScan") => load_history_scan(&mut state, &pipe, &query),
            _ => respond(
                StatusCode::NOT_FOUND,
                json!({"code": "404", "message": "not found", "success": false}),
            ),
        }
    };
    state.requests.push(SeenRequest {
        endpoint,
        pipe,
        query,
        body,
        token_type,
        claims,
        status: response.status().as_u16(),
    });
    response
}

fn insert_files(
    state: &mut State,
    pipe_name: &str,
    body: &Value,
    query: &BTreeMap<String, String>,
) -> Response<Full<Bytes>> {
    if state.refuse_inserts {
        return respond(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"code": "503", "message": "service unavailable", "success": false}),
        );
    }
    let Some(files) = body["files"].as_array() else {
        return respond(
            StatusCode::BAD_REQUEST,
            json!({"code": "400", "message": "files is required", "success": false}),
        );
    };
    let paths: Vec<String> = files
        .iter()
        .filter_map(|file| file["path"].as_str().map(str::to_string))
        .collect();
    if paths.len() != files.len() || paths.len() > 5_000 {
        return respond(
            StatusCode::BAD_REQUEST,
            json!({"code": "400", "message": "every file needs a path; at most 5000", "success": false}),
        );
    }
    for path in paths {
        let outcome = state.outcome_for(&path);
        let received = state.tick();
        let at = state.tick();
        let pipe = state.pipes.entry(pipe_name.to_string()).or_default();
        let Some(status) = outcome.status else {
            continue;
        };
        if pipe.loaded.contains(&path) {
            continue;
        }
        pipe.loaded.insert(path.clone());
        if outcome.in_progress_first {
            let seq = pipe.push(
                at,
                &path,
                entry(&path, "LOAD_IN_PROGRESS", received, at),
                outcome.missed_by_report,
            );
            pipe.deferred
                .push((seq, path.clone(), status, outcome.missed_by_report));
        } else {
            pipe.push(
                at,
                &path,
                entry(&path, status.as_str(), received, at),
                outcome.missed_by_report,
            );
        }
    }
    respond(
        StatusCode::OK,
        json!({
            "requestId": query.get("requestId").cloned().unwrap_or_default(),
            "responseCode": "SUCCESS",
        }),
    )
}

fn parse_mark(mark: &str) -> Option<u64> {
    mark.split_once('_')?.1.parse().ok()
}

fn insert_report(
    state: &mut State,
    pipe_name: &str,
    query: &BTreeMap<String, String>,
) -> Response<Full<Bytes>> {
    let mark = match query.get("beginMark") {
        Some(raw) => match parse_mark(raw) {
            Some(mark) => Some(mark),
            None => {
                return respond(
                    StatusCode::BAD_REQUEST,
                    json!({"code": "400", "message": "invalid beginMark", "success": false}),
                )
            }
        },
        None => None,
    };
    // A final event follows its LOAD_IN_PROGRESS once a report has returned that one.
    let now = state.tick();
    let folder_relative = state.folder_relative;
    let retention = chrono::Duration::from_std(state.report_retention).unwrap_or_default();
    let pipe = state.pipes.entry(pipe_name.to_string()).or_default();
    let seen_up_to = mark.unwrap_or(0);
    let ready: Vec<(u64, String, LoadStatus, bool)> = pipe
        .deferred
        .iter()
        .filter(|(seq, ..)| *seq < seen_up_to)
        .cloned()
        .collect();
    pipe.deferred.retain(|(seq, ..)| *seq >= seen_up_to);
    for (_, path, status, hidden) in ready {
        let received = pipe
            .events
            .iter()
            .rev()
            .find(|event| event.path == path)
            .and_then(|event| event.entry["timeReceived"].as_str().map(str::to_string));
        let mut value = entry(&path, status.as_str(), now, now);
        if let Some(received) = received {
            value["timeReceived"] = json!(received);
        }
        pipe.push(now, &path, value, hidden);
    }
    let retained: Vec<&Event> = {
        let recent: Vec<&Event> = pipe
            .events
            .iter()
            .filter(|event| now - event.at <= retention)
            .collect();
        let skip = recent.len().saturating_sub(10_000);
        recent.into_iter().skip(skip).collect()
    };
    let from = mark.unwrap_or_else(|| {
        retained
            .first()
            .map_or(pipe.next_seq + 1, |event| event.seq)
    });
    let oldest_kept = retained
        .first()
        .map_or(pipe.next_seq + 1, |event| event.seq);
    let expired = from < oldest_kept && from <= pipe.next_seq;
    let hidden = retained
        .iter()
        .any(|event| event.seq >= from && event.hidden);
    let files: Vec<Value> = retained
        .iter()
        .filter(|event| event.seq >= from && !event.hidden)
        .map(|event| as_reported(&event.entry, folder_relative))
        .collect();
    let next = pipe.next_seq.max(from.saturating_sub(1)) + 1;
    respond(
        StatusCode::OK,
        json!({
            "pipe": pipe_name,
            "completeResult": !(expired || hidden),
            "nextBeginMark": format!("1_{next}"),
            "files": files,
            "statistics": {"activeFilesCount": pipe.deferred.len()},
        }),
    )
}

fn load_history_scan(
    state: &mut State,
    pipe_name: &str,
    query: &BTreeMap<String, String>,
) -> Response<Full<Bytes>> {
    let parse = |name: &str| {
        query
            .get(name)
            .and_then(|raw| DateTime::parse_from_rfc3339(raw).ok())
            .map(|time| time.with_timezone(&Utc))
    };
    let Some(start) = parse("startTimeInclusive") else {
        return respond(
            StatusCode::BAD_REQUEST,
            json!({"code": "400", "message": "startTimeInclusive must be an ISO-8601 time", "success": false}),
        );
    };
    let end = match query.get("endTimeExclusive") {
        Some(_) => match parse("endTimeExclusive") {
            Some(end) => end,
            None => {
                return respond(
                    StatusCode::BAD_REQUEST,
                    json!({"code": "400", "message": "endTimeExclusive must be an ISO-8601 time", "success": false}),
                )
            }
        },
        None => Utc::now(),
    };
    let page_size = state.history_page_size;
    let folder_relative = state.folder_relative;
    let pipe = state.pipes.entry(pipe_name.to_string()).or_default();
    // The latest entry of each file, by load time.
    let mut latest: BTreeMap<&str, &Event> = BTreeMap::new();
    for event in &pipe.events {
        latest.insert(event.path.as_str(), event);
    }
    let mut entries: Vec<&Event> = latest
        .into_values()
        .filter(|event| event.at >= start && event.at < end)
        .collect();
    entries.sort_by_key(|event| (event.at, event.seq));
    let complete = entries.len() <= page_size;
    entries.truncate(page_size);
    let range_start = entries.first().map(|event| time_text(event.at));
    let range_end = entries.last().map(|event| time_text(event.at));
    respond(
        StatusCode::OK,
        json!({
            "pipe": pipe_name,
            "completeResult": complete,
            "startTimeInclusive": time_text(start),
            "endTimeExclusive": time_text(end),
            "rangeStartTime": range_start,
            "rangeEndTime": range_end,
            "files": entries
                .iter()
                .map(|event| as_reported(&event.entry, folder_relative))
                .collect::<Vec<_>>(),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::TestKey;

    fn token(key: &TestKey, issuer_fingerprint: &str) -> String {
        let now = Utc::now().timestamp();
        key.sign(&KeyPairClaims {
            iss: format!("XY12345.LOADER.{issuer_fingerprint}"),
            sub: "XY12345.LOADER".to_string(),
            iat: now,
            exp: now + 3000,
        })
    }

    async fn call(
        double: &SnowpipeDouble,
        token: &str,
        method: &str,
        rest: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let url = format!("{}/v1/data/pipes/DB.S.P/{rest}", double.url());
        let client = reqwest::Client::new();
        let request = match method {
            "POST" => client.post(url).json(&body.unwrap_or(Value::Null)),
            _ => client.get(url),
        };
        let response = request
            .bearer_auth(token)
            .header("X-Snowflake-Authorization-Token-Type", "KEYPAIR_JWT")
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    #[tokio::test]
    async fn answers_like_snowpipe_behind_the_key_pair_jwt() {
        let key = TestKey::snowflake();
        let double = SnowpipeDouble::start("xy12345.us-east-1", "loader", key.public_pem()).await;
        let good = token(&key, &public_key_fingerprint(key.public_pem()));

        // Another key, or the right key with another fingerprint in iss: 401.
        let other = TestKey::rule_a();
        let wrong_key = token(&other, &public_key_fingerprint(key.public_pem()));
        let wrong_iss = token(&key, &public_key_fingerprint(other.public_pem()));
        for bad in [&wrong_key, &wrong_iss] {
            let (status, body) = call(&double, bad, "GET", "insertReport", None).await;
            assert_eq!(status, 401);
            assert_eq!(body["code"], "390144");
        }

        double.set_outcome("a/", Outcome::loaded().in_progress_first());
        double.set_outcome("b/", Outcome::partially_loaded().missed_by_report());
        let files = json!({"files": [{"path": "a/1.parquet"}, {"path": "b/2.parquet"}]});
        let (status, body) = call(
            &double,
            &good,
            "POST",
            "insertFiles?requestId=r1",
            Some(files),
        )
        .await;
        assert_eq!(
            (status, body["responseCode"].as_str()),
            (200, Some("SUCCESS"))
        );

        // b's event is missing from the report, which says so; a is in progress.
        let (_, report) = call(&double, &good, "GET", "insertReport", None).await;
        assert_eq!(report["completeResult"], false);
        let listed: Vec<&str> = report["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["status"].as_str().unwrap())
            .collect();
        assert_eq!(listed, ["LOAD_IN_PROGRESS"]);
        let mark = report["nextBeginMark"].as_str().unwrap().to_string();
        // From the mark: a's final event, nothing missed any more.
        let (_, report) = call(
            &double,
            &good,
            "GET",
            &format!("insertReport?beginMark={mark}"),
            None,
        )
        .await;
        assert_eq!(report["completeResult"], true, "{report}");
        assert_eq!(report["files"][0]["status"], "LOADED");
        assert_eq!(report["files"][0]["path"], "a/1.parquet");

        // The load history has both, one per page, paged from rangeEndTime.
        double.set_history_page_size(1);
        let start = time_text(Utc::now() - chrono::Duration::minutes(5));
        let end = time_text(Utc::now() + chrono::Duration::minutes(1));
        let (_, page) = call(
            &double,
            &good,
            "GET",
            &format!("loadHistoryScan?startTimeInclusive={start}&endTimeExclusive={end}"),
            None,
        )
        .await;
        assert_eq!(page["completeResult"], false);
        assert_eq!(page["files"][0]["status"], "PARTIALLY_LOADED");
        assert_eq!(page["rangeStartTime"], page["rangeEndTime"]);
        double.set_history_page_size(10);
        let next = page["rangeEndTime"].as_str().unwrap();
        let (_, page) = call(
            &double,
            &good,
            "GET",
            &format!("loadHistoryScan?startTimeInclusive={next}&endTimeExclusive={end}"),
            None,
        )
        .await;
        assert_eq!(page["completeResult"], true);
        let statuses: Vec<&str> = page["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["status"].as_str().unwrap())
            .collect();
        assert_eq!(statuses, ["PARTIALLY_LOADED", "LOADED"]);

        // A pipe reading a folder reports paths below it.
        double.report_folder_relative(true);
        let (_, page) = call(
            &double,
            &good,
            "GET",
            &format!("loadHistoryScan?startTimeInclusive={start}&endTimeExclusive={end}"),
            None,
        )
        .await;
        let reported: Vec<(&str, &str)> = page["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["path"].as_str().unwrap(),
                    f["stageLocation"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            reported,
            [
                ("2.parquet", "s3://gong-stage/prefix/b/"),
                ("1.parquet", "s3://gong-stage/prefix/a/")
            ]
        );
        let (_, report) = call(&double, &good, "GET", "insertReport", None).await;
        let paths: Vec<&str> = report["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["path"].as_str().unwrap())
            .collect();
        assert_eq!(paths, ["1.parquet", "1.parquet"], "{report}");
        double.report_folder_relative(false);

        // Events older than the retention are gone: a mark before them is incomplete.
        double.set_report_retention(Duration::ZERO);
        let (_, report) = call(&double, &good, "GET", "insertReport?beginMark=1_1", None).await;
        assert_eq!(report["completeResult"], false);
        assert!(report["files"].as_array().unwrap().is_empty());
        assert_eq!(double.count("insertReport", 401), 2);
    }
}
