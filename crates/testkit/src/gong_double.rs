//! A Gong REST API double: an HTTP server (hyper 1, no framework) that answers
//! `POST /v2/calls/extensive` and `POST /v2/calls/transcript` the way Gong does, with Gong's
//! limits, so the enricher can be tested for economy and quota safety.
//!
//! Gong rules it enforces (shapes from Gong's OpenAPI v2 document, limits as documented):
//! - **Authentication**: HTTP Basic `accessKey:accessKeySecret`; anything else is answered
//!   `401 {requestId, errors[...]}` and does not count against the limits.
//! - **Rate limit per company**: at most [`GongDoubleConfig::rate_per_second`] admitted requests
//!   in any sliding window of 1000 ms (default 3). A request over it is answered
//!   `429` with `Retry-After` (whole seconds until the window frees) and counted as a
//!   *rate violation*. The window holds admitted requests only (a refused request does not
//!   extend the refusal).
//! - **Daily quota per company**: at most [`GongDoubleConfig::daily_quota`] admitted requests per
//!   UTC day (default 10,000). Over it: `429` with `Retry-After` = seconds until the next UTC
//!   midnight, counted as a *quota violation*.
//! - **Paging**: 100 records per page (configurable); when more follow, `records.cursor` is set
//!   and must come back in the next request's **JSON body**. A `cursor` in the query string is
//!   answered `400` (Gong ignores or refuses it; either way it is a client bug).
//! - **Empty results are 404**: when no call matches the filter, the answer is
//!   `404 {requestId, errors:["No calls found corresponding to the provided filters"]}`.
//! - **Private calls** ([`GongDouble::make_private`]) have `metaData.isPrivate = true` and no
//!   transcript; **deleted calls** ([`GongDouble::delete_call`]) are absent from every answer.
//! - `contentSelector` is honoured: `context` (`None`, `Basic`, `Extended`) and each
//!   `exposedFields` flag decide which blocks a call carries, as in Gong.
//! - **Listing by date**: `POST /v2/calls/extensive` with no `callIds` lists the calls of the
//!   double's history ([`GongDouble::add_calls`]) *started* in `[fromDateTime, toDateTime)`
//!   (from inclusive, to exclusive; either may be absent), ordered by start, 100 per page with
//!   the cursor in the body, 404 when none matches; each page is one request against the
//!   limits. With `callIds` and dates, only the ids started inside the range answer.
//! - **Late transcripts** ([`GongDouble::delay_transcript`], [`GongDouble::hold_transcript`]):
//!   until the configured moment (or [`GongDouble::release_transcript`]) the transcript endpoint
//!   answers the call with an empty `transcript`, as Gong does for a call not transcribed yet.
//!
//! Call data is generated deterministically from the numeric call id (the same id always yields
//! the same call): metadata with ISO-8601 times with offset and microseconds, parties with
//! `speakerId`, CRM context, topics, trackers, brief, outline, highlights, interaction stats,
//! comments and a transcript of several monologues with sentence times in milliseconds.
//!
//! - **Users**: `GET /v2/users` pages through the users seeded with [`GongDouble::add_users`]
//!   (in the order added), [`GongDoubleConfig::page_size`] per page, the cursor in the **query
//!   string** (`?cursor=`; a body is ignored, as for any GET); 404 when there are none.
//! - **Answered scorecards**: `POST /v2/stats/activity/scorecards` with
//!   `filter{reviewFromDate, reviewToDate}` (`YYYY-MM-DD`, anything else is `400`) answers the
//!   scorecards seeded with [`GongDouble::add_answered_scorecards`] whose `reviewTime`, as a
//!   date in the company's time zone ([`GongDouble::set_company_utc_offset`], default UTC), is
//!   in `[reviewFromDate, reviewToDate)`; ids are JSON **numbers**, as Gong sends them; the
//!   cursor in the body; 404 when none matches. Both endpoints are authenticated, limited and
//!   counted like the call endpoints, and take injected faults.
//!
//! Fault injection ([`GongDouble::set_fault`]): the next N admitted requests answer 500, 429
//! with a given `Retry-After`, slowly, with a truncated JSON body, or 401. Counters
//! ([`GongDouble::stats`]): requests per endpoint, call ids per request, 429s sent, violations.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use chrono::{DateTime, FixedOffset, NaiveDate, TimeZone, Utc};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Path of the extensive-calls endpoint.
pub const EXTENSIVE_PATH: &str = "/v2/calls/extensive";
/// Path of the transcript endpoint.
pub const TRANSCRIPT_PATH: &str = "/v2/calls/transcript";
/// Access key the double accepts unless configured otherwise.
pub const DEFAULT_ACCESS_KEY: &str = "double-access-key";
/// Access key secret the double accepts unless configured otherwise.
pub const DEFAULT_ACCESS_KEY_SECRET: &str = "double-access-key-secret";
/// The `errors[0]` of a 404 answer.
pub const NO_CALLS_FOUND: &str = "No calls found corresponding to the provided filters";
/// Path of the users endpoint (`GET`).
pub const USERS_PATH: &str = "/v2/users";
/// Path of the answered scorecards endpoint (`POST`).
pub const SCORECARDS_PATH: &str = "/v2/stats/activity/scorecards";
/// The `errors[0]` of a 404 answer of the users endpoint.
pub const NO_USERS_FOUND: &str = "No users found corresponding to the provided filters";
/// The `errors[0]` of a 404 answer of the answered scorecards endpoint.
pub const NO_SCORECARDS_FOUND: &str =
    "No answered scorecards found corresponding to the provided filters";

/// How the double behaves.
#[derive(Debug, Clone)]
pub struct GongDoubleConfig {
    /// Where to listen (default `127.0.0.1:0`, a free port).
    pub addr: SocketAddr,
    /// The accepted access key.
    pub access_key: String,
    /// The accepted access key secret.
    pub access_key_secret: String,
    /// Admitted requests per sliding second (default 3, Gong's default).
    pub rate_per_second: u32,
    /// Admitted requests per UTC day (default 10,000, Gong's default).
    pub daily_quota: u64,
    /// Records per page (default 100, as Gong).
    pub page_size: usize,
    /// Calls that are private from the start.
    pub private_calls: Vec<String>,
    /// Calls that are deleted from the start.
    pub deleted_calls: Vec<String>,
}

impl Default for GongDoubleConfig {
    fn default() -> Self {
        GongDoubleConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            access_key: DEFAULT_ACCESS_KEY.to_string(),
            access_key_secret: DEFAULT_ACCESS_KEY_SECRET.to_string(),
            rate_per_second: 3,
            daily_quota: 10_000,
            page_size: 100,
            private_calls: Vec::new(),
            deleted_calls: Vec::new(),
        }
    }
}

/// A fault to inject into the next admitted requests.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// `500 {requestId, errors}`.
    ServerError,
    /// `429` with `Retry-After: retry_after_secs` (as if another client spent the budget).
    RateLimited {
        /// Seconds in `Retry-After`.
        retry_after_secs: u64,
    },
    /// The normal answer, after `delay`.
    Slow(Duration),
    /// The normal answer with its JSON body cut in half (status 200).
    TruncatedBody,
    /// `401`, whatever the credentials (a revoked key). Not counted against the limits.
    Unauthorized,
}

/// One listing page served (a request with no `callIds`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedPage {
    /// `filter.fromDateTime` as sent (empty when absent).
    pub from: String,
    /// `filter.toDateTime` as sent (empty when absent).
    pub to: String,
    /// Index of the page's first call in the listing (0 for the first page).
    pub offset: usize,
    /// Calls on the page.
    pub calls: usize,
}

/// What the double has seen and answered.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GongStats {
    /// Requests received per path (every request, whatever the answer).
    pub requests: BTreeMap<String, u64>,
    /// Distinct call ids asked for, per admitted call request (extensive and transcript).
    pub call_ids_per_request: Vec<usize>,
    /// 429 answers sent (limits and injected faults).
    pub rate_limited_sent: u64,
    /// Requests that exceeded the sliding-window rate limit.
    pub rate_violations: u64,
    /// Requests that exceeded the daily quota.
    pub quota_violations: u64,
    /// 401 answers sent.
    pub unauthorized_sent: u64,
    /// Injected faults served.
    pub faults_served: u64,
    /// Requests currently being answered.
    pub in_flight: u64,
    /// Requests admitted today (counted against the daily quota).
    pub admitted_today: u64,
    /// Listing pages served (admitted requests with no `callIds`), in order.
    pub listed_pages: Vec<ListedPage>,
    /// Transcripts answered empty because they were not ready yet.
    pub empty_transcripts_served: u64,
}

impl GongStats {
    /// Requests over any limit (rate or quota): what Gong would hold against the company.
    pub fn violations(&self) -> u64 {
        self.rate_violations + self.quota_violations
    }

    /// Requests received on `path`.
    pub fn requests_to(&self, path: &str) -> u64 {
        self.requests.get(path).copied().unwrap_or(0)
    }

    /// Requests received on both call endpoints.
    pub fn call_requests(&self) -> u64 {
        self.requests_to(EXTENSIVE_PATH) + self.requests_to(TRANSCRIPT_PATH)
    }

    /// Listing pages served.
    pub fn list_requests(&self) -> u64 {
        self.listed_pages.len() as u64
    }
}

struct State {
    window: VecDeque<Instant>,
    day: NaiveDate,
    rate_per_second: u32,
    daily_quota: u64,
    faults: VecDeque<Fault>,
    private: HashSet<String>,
    deleted: HashSet<String>,
    padded: HashMap<String, usize>,
    /// The company's call history for listings: call id to start time.
    history: HashMap<String, DateTime<Utc>>,
    /// Calls whose transcript is empty until the moment (`None`: until released).
    transcript_ready: HashMap<String, Option<Instant>>,
    /// Users of `GET /v2/users`, in order.
    users: Vec<Value>,
    /// Answered scorecards, with their review time.
    scorecards: Vec<(DateTime<Utc>, Value)>,
    /// The company's time zone (scorecard review dates).
    company_offset: FixedOffset,
    stats: GongStats,
    request_counter: u64,
}

struct Shared {
    expected_authorization: String,
    page_size: usize,
    state: Mutex<State>,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means a handler panicked; the counters are still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A running Gong double. Dropping it stops accepting connections.
pub struct GongDouble {
    /// The bound address.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
}

impl GongDouble {
    /// Binds `config.addr` and serves until dropped.
    pub async fn start(config: GongDoubleConfig) -> std::io::Result<GongDouble> {
        let listener = TcpListener::bind(config.addr).await?;
        let addr = listener.local_addr()?;
        let credentials = format!("{}:{}", config.access_key, config.access_key_secret);
        let shared = Arc::new(Shared {
            expected_authorization: format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(credentials)
            ),
            page_size: config.page_size.max(1),
            state: Mutex::new(State {
                window: VecDeque::new(),
                day: Utc::now().date_naive(),
                rate_per_second: config.rate_per_second.max(1),
                daily_quota: config.daily_quota,
                faults: VecDeque::new(),
                private: config.private_calls.into_iter().collect(),
                deleted: config.deleted_calls.into_iter().collect(),
                padded: HashMap::new(),
                history: HashMap::new(),
                transcript_ready: HashMap::new(),
                users: Vec::new(),
                scorecards: Vec::new(),
                company_offset: FixedOffset::east_opt(0).expect("zero offset is valid"),
                stats: GongStats::default(),
                request_counter: 0,
            }),
        });
        let shutdown = CancellationToken::new();
        tokio::spawn(accept_loop(listener, shared.clone(), shutdown.clone()));
        Ok(GongDouble {
            addr,
            shared,
            shutdown,
        })
    }

    /// `http://<addr>`: what `GONG_API_BASE_URL` should be.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> GongStats {
        self.shared.state().stats.clone()
    }

    /// The next `count` admitted requests get `fault` (queued after faults already set).
    pub fn set_fault(&self, fault: Fault, count: usize) {
        let mut state = self.shared.state();
        for _ in 0..count {
            state.faults.push_back(fault.clone());
        }
    }

    /// Drops every queued fault.
    pub fn clear_faults(&self) {
        self.shared.state().faults.clear();
    }

    /// Faults still queued.
    pub fn pending_faults(&self) -> usize {
        self.shared.state().faults.len()
    }

    /// From now on, `call_id` is absent from every answer.
    pub fn delete_call(&self, call_id: &str) {
        self.shared.state().deleted.insert(call_id.to_string());
    }

    /// From now on, `call_id`'s transcript ends with one more monologue holding a sentence of
    /// `bytes` characters (a call whose enriched event is too large to publish).
    pub fn pad_transcript(&self, call_id: &str, bytes: usize) {
        self.shared
            .state()
            .padded
            .insert(call_id.to_string(), bytes);
    }

    /// From now on, `call_id` is private: `isPrivate` true and no transcript.
    pub fn make_private(&self, call_id: &str) {
        self.shared.state().private.insert(call_id.to_string());
    }

    /// Adds calls to the company's history: listings by date return them (by `started`), and
    /// their `metaData.started` is that time in every answer. Ids are numeric strings.
    pub fn add_calls<I, S>(&self, calls: I)
    where
        I: IntoIterator<Item = (S, DateTime<Utc>)>,
        S: Into<String>,
    {
        let mut state = self.shared.state();
        for (call_id, started) in calls {
            state.history.insert(call_id.into(), started);
        }
    }

    /// Calls in the history.
    pub fn history_len(&self) -> usize {
        self.shared.state().history.len()
    }

    /// `call_id`'s transcript is empty (not ready yet) for `delay` from now.
    pub fn delay_transcript(&self, call_id: &str, delay: Duration) {
        self.shared
            .state()
            .transcript_ready
            .insert(call_id.to_string(), Some(Instant::now() + delay));
    }

    /// `call_id`'s transcript is empty until [`GongDouble::release_transcript`].
    pub fn hold_transcript(&self, call_id: &str) {
        self.shared
            .state()
            .transcript_ready
            .insert(call_id.to_string(), None);
    }

    /// `call_id`'s transcript is served from now on.
    pub fn release_transcript(&self, call_id: &str) {
        self.shared.state().transcript_ready.remove(call_id);
    }

    /// Adds users to `GET /v2/users` (served in the order added, as given: see [`user_json`]).
    pub fn add_users<I: IntoIterator<Item = Value>>(&self, users: I) {
        self.shared.state().users.extend(users);
    }

    /// Replaces user `id`'s JSON (an edited user), or adds it.
    pub fn replace_user(&self, user: Value) {
        let mut state = self.shared.state();
        let id = user.get("id").cloned();
        match state
            .users
            .iter_mut()
            .find(|known| known.get("id") == id.as_ref())
        {
            Some(known) => *known = user,
            None => state.users.push(user),
        }
    }

    /// Adds answered scorecards (see [`answered_scorecard_json`]); each needs a `reviewTime`
    /// (ISO-8601 with offset), which the review-date filter reads. Returns how many were added
    /// (those without a readable `reviewTime` are not).
    pub fn add_answered_scorecards<I: IntoIterator<Item = Value>>(&self, scorecards: I) -> usize {
        let mut state = self.shared.state();
        let mut added = 0;
        for card in scorecards {
            let Some(reviewed) = card
                .get("reviewTime")
                .and_then(Value::as_str)
                .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
            else {
                continue;
            };
            state.scorecards.push((reviewed.with_timezone(&Utc), card));
            added += 1;
        }
        added
    }

    /// The company's time zone as an offset from UTC in minutes (default 0): review dates of
    /// answered scorecards are dates there, as in Gong.
    pub fn set_company_utc_offset(&self, minutes: i32) {
        if let Some(offset) = FixedOffset::east_opt(minutes * 60) {
            self.shared.state().company_offset = offset;
        }
    }

    /// Changes the limits (the window and today's count are kept).
    pub fn set_limits(&self, rate_per_second: u32, daily_quota: u64) {
        let mut state = self.shared.state();
        state.rate_per_second = rate_per_second.max(1);
        state.daily_quota = daily_quota;
    }

    /// Stops accepting connections (also done on drop).
    pub fn stop(&self) {
        self.shutdown.cancel();
    }
}

impl Drop for GongDouble {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else { continue };
        let shared = shared.clone();
        let connection_shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(shared, request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                _ = connection_shutdown.cancelled() => {}
            }
        });
    }
}

type HttpResponse = Response<Full<Bytes>>;

struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.stats.in_flight = state.stats.in_flight.saturating_sub(1);
    }
}

/// What the limits decided for one request.
enum Admission {
    Admitted {
        fault: Option<Fault>,
        request_id: String,
    },
    Refused(HttpResponse),
}

async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> HttpResponse {
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    let method = request.method().clone();
    let authorization = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    {
        let mut state = shared.state();
        *state.stats.requests.entry(path.clone()).or_insert(0) += 1;
        state.stats.in_flight += 1;
    }
    let _in_flight = InFlight(shared.clone());

    let (fault, request_id) = match admit(&shared, authorization.as_deref()) {
        Admission::Refused(response) => return response,
        Admission::Admitted { fault, request_id } => (fault, request_id),
    };
    match &fault {
        Some(Fault::ServerError) => {
            return error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &request_id,
                "Internal server error",
            )
        }
        Some(Fault::RateLimited { retry_after_secs }) => {
            return too_many_requests(&request_id, *retry_after_secs, "Too many requests")
        }
        Some(Fault::Slow(delay)) => tokio::time::sleep(*delay).await,
        _ => {}
    }

    if path == USERS_PATH {
        if method != Method::GET {
            return error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &request_id,
                "Method not allowed",
            );
        }
        let cursor = query.split('&').find_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            (name == "cursor").then(|| percent_decode(value))
        });
        return answer_users(&shared, cursor, &request_id);
    }
    // `None`: the answered scorecards endpoint.
    let endpoint = match path.as_str() {
        EXTENSIVE_PATH => Some(Endpoint::Extensive),
        TRANSCRIPT_PATH => Some(Endpoint::Transcript),
        SCORECARDS_PATH => None,
        _ => return error_response(StatusCode::NOT_FOUND, &request_id, "Unknown endpoint"),
    };
    if method != Method::POST {
        return error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &request_id,
            "Method not allowed",
        );
    }
    if query
        .split('&')
        .any(|pair| pair.split('=').next() == Some("cursor"))
    {
        return error_response(
            StatusCode::BAD_REQUEST,
            &request_id,
            "cursor must be sent in the JSON request body, not in the query string",
        );
    }
    let response = match endpoint {
        Some(endpoint) => answer(&shared, endpoint, &body, &request_id),
        None => answer_scorecards(&shared, &body, &request_id),
    };
    if fault == Some(Fault::TruncatedBody) {
        let (parts, full) = response.into_parts();
        let bytes = match full.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(never) => match never {},
        };
        let cut = bytes.slice(..bytes.len() / 2);
        let mut truncated = Response::from_parts(parts, Full::new(cut));
        *truncated.status_mut() = StatusCode::OK;
        return truncated;
    }
    response
}

/// Authentication, injected 401s, the daily quota and the sliding window, in that order.
fn admit(shared: &Shared, authorization: Option<&str>) -> Admission {
    let mut state = shared.state();
    state.request_counter += 1;
    let request_id = request_id(state.request_counter);
    if state.faults.front() == Some(&Fault::Unauthorized) {
        state.faults.pop_front();
        state.stats.faults_served += 1;
        state.stats.unauthorized_sent += 1;
        return Admission::Refused(error_response(
            StatusCode::UNAUTHORIZED,
            &request_id,
            "Invalid credentials",
        ));
    }
    if authorization != Some(shared.expected_authorization.as_str()) {
        state.stats.unauthorized_sent += 1;
        return Admission::Refused(error_response(
            StatusCode::UNAUTHORIZED,
            &request_id,
            "Authentication failed: use HTTP Basic with the access key and secret",
        ));
    }

    let now = Instant::now();
    let today = Utc::now().date_naive();
    if state.day != today {
        state.day = today;
        state.stats.admitted_today = 0;
    }
    if state.stats.admitted_today >= state.daily_quota {
        state.stats.quota_violations += 1;
        state.stats.rate_limited_sent += 1;
        return Admission::Refused(too_many_requests(
            &request_id,
            seconds_until_utc_midnight(Utc::now()),
            "Daily API quota exceeded",
        ));
    }
    while let Some(oldest) = state.window.front() {
        if now.duration_since(*oldest) >= Duration::from_secs(1) {
            state.window.pop_front();
        } else {
            break;
        }
    }
    if state.window.len() >= state.rate_per_second as usize {
        let frees_in = state
            .window
            .front()
            .map(|oldest| Duration::from_secs(1).saturating_sub(now.duration_since(*oldest)))
            .unwrap_or(Duration::from_secs(1));
        state.stats.rate_violations += 1;
        state.stats.rate_limited_sent += 1;
        return Admission::Refused(too_many_requests(
            &request_id,
            frees_in.as_secs_f64().ceil().max(1.0) as u64,
            "Too many requests: rate limit exceeded",
        ));
    }
    state.window.push_back(now);
    state.stats.admitted_today += 1;
    let fault = state.faults.pop_front();
    if let Some(fault) = &fault {
        state.stats.faults_served += 1;
        if matches!(fault, Fault::RateLimited { .. }) {
            state.stats.rate_limited_sent += 1;
        }
    }
    Admission::Admitted { fault, request_id }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Extensive,
    Transcript,
}

/// `%XX` sequences decoded (a query-string value); invalid ones are kept as they are.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let hex = bytes
            .get(index + 1..index + 3)
            .and_then(|pair| std::str::from_utf8(pair).ok())
            .and_then(|pair| u8::from_str_radix(pair, 16).ok());
        match (bytes[index], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                index += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                index += 1;
            }
            (byte, _) => {
                out.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `records` for a page of `page_len` items at `offset` of `total`, with the next cursor.
fn page_records(
    total: usize,
    offset: usize,
    page_len: usize,
    page_size: usize,
    fingerprint: u64,
) -> Value {
    let next = offset + page_len;
    let mut records = json!({
        "totalRecords": total,
        "currentPageSize": page_len,
        "currentPageNumber": offset / page_size.max(1),
    });
    if next < total {
        records["cursor"] = Value::String(encode_cursor(next, fingerprint));
    }
    records
}

fn answer_users(shared: &Shared, cursor: Option<String>, request_id: &str) -> HttpResponse {
    let fingerprint = fingerprint(&["users".to_string()]);
    let offset = match cursor {
        None => 0,
        Some(cursor) => match decode_cursor(&cursor, fingerprint) {
            Some(offset) => offset,
            None => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    request_id,
                    "cursor is invalid or does not belong to this request",
                )
            }
        },
    };
    let users = shared.state().users.clone();
    if users.is_empty() {
        return error_response(StatusCode::NOT_FOUND, request_id, NO_USERS_FOUND);
    }
    let page_size = shared.page_size;
    let page: Vec<Value> = users.iter().skip(offset).take(page_size).cloned().collect();
    let records = page_records(users.len(), offset, page.len(), page_size, fingerprint);
    json_response(
        StatusCode::OK,
        &json!({"requestId": request_id, "records": records, "users": page}),
    )
}

fn answer_scorecards(shared: &Shared, body: &[u8], request_id: &str) -> HttpResponse {
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return error_response(
            StatusCode::BAD_REQUEST,
            request_id,
            "Request body is not valid JSON",
        );
    };
    let mut bounds = [None, None];
    for (slot, field) in bounds.iter_mut().zip(["reviewFromDate", "reviewToDate"]) {
        match request.pointer(&format!("/filter/{field}")) {
            None | Some(Value::Null) => {}
            Some(Value::String(text)) => {
                let parsed = (text.len() == 10)
                    .then(|| NaiveDate::parse_from_str(text, "%Y-%m-%d").ok())
                    .flatten();
                match parsed {
                    Some(date) => *slot = Some((text.clone(), date)),
                    None => {
                        return error_response(
                            StatusCode::BAD_REQUEST,
                            request_id,
                            &format!("filter.{field} must be a date in the format YYYY-MM-DD"),
                        )
                    }
                }
            }
            Some(_) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    request_id,
                    &format!("filter.{field} must be a string"),
                )
            }
        }
    }
    let [from, to] = bounds;
    let text = |side: &Option<(String, NaiveDate)>| {
        side.as_ref()
            .map(|(text, _)| text.clone())
            .unwrap_or_default()
    };
    let fingerprint = fingerprint(&["scorecards".to_string(), text(&from), text(&to)]);
    let offset = match request.get("cursor") {
        None | Some(Value::Null) => 0,
        Some(Value::String(cursor)) => match decode_cursor(cursor, fingerprint) {
            Some(offset) => offset,
            None => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    request_id,
                    "cursor is invalid or does not belong to this filter",
                )
            }
        },
        Some(_) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                request_id,
                "cursor must be a string",
            )
        }
    };
    let matching: Vec<Value> = {
        let state = shared.state();
        let zone = state.company_offset;
        let mut matching: Vec<(DateTime<Utc>, Value)> = state
            .scorecards
            .iter()
            .filter(|(reviewed, _)| {
                let date = reviewed.with_timezone(&zone).date_naive();
                from.as_ref().is_none_or(|(_, from)| date >= *from)
                    && to.as_ref().is_none_or(|(_, to)| date < *to)
            })
            .cloned()
            .collect();
        matching.sort_by_key(|(reviewed, _)| *reviewed);
        matching.into_iter().map(|(_, card)| card).collect()
    };
    if matching.is_empty() {
        return error_response(StatusCode::NOT_FOUND, request_id, NO_SCORECARDS_FOUND);
    }
    let page_size = shared.page_size;
    let page: Vec<Value> = matching
        .iter()
        .skip(offset)
        .take(page_size)
        .cloned()
        .collect();
    let records = page_records(matching.len(), offset, page.len(), page_size, fingerprint);
    json_response(
        StatusCode::OK,
        &json!({"requestId": request_id, "records": records, "answeredScorecards": page}),
    )
}

/// A user as `GET /v2/users` returns it (deterministic from the numeric `id`; the manager's id
/// when given). Ids are strings, as Gong sends them for users.
pub fn user_json(id: &str, manager_id: Option<&str>) -> Value {
    let mut rng = Rng::for_call(id);
    let first = *rng.pick(FIRST_NAMES);
    let last = *rng.pick(LAST_NAMES);
    json!({
        "id": id,
        "emailAddress": format!("{}.{}.{id}@example.com", first.to_lowercase(), last.to_lowercase()),
        "created": "2023-05-04T09:12:33.123456-07:00",
        "active": true,
        "emailAliases": [],
        "trustedEmailAddress": null,
        "firstName": first,
        "lastName": last,
        "title": *rng.pick(&["Account Executive", "SDR", "Sales Manager", "Solutions Engineer"]),
        "phoneNumber": format!("+1 555 {}", rng.digits(7)),
        "extension": null,
        "personalMeetingUrls": [],
        "settings": {"webConferencesRecorded": true, "preventWebConferenceRecording": false,
            "telephonyCallsImported": false, "emailsImported": true,
            "preventEmailImport": false, "nonRecordedMeetingsImported": false,
            "gongConnectEnabled": true},
        "managerId": manager_id,
        "meetingConsentPageUrl": null,
        "spokenLanguages": [{"language": "en-US", "primary": true}],
    })
}

/// An answered scorecard as `POST /v2/stats/activity/scorecards` returns it, its ids JSON
/// numbers as Gong sends them, reviewed at `reviewed_at` (written with a `Z`), with an overall
/// score question, a scored question, a text answer and one not applicable.
pub fn answered_scorecard_json(
    answered_scorecard_id: u64,
    call_id: u64,
    reviewed_user_id: u64,
    reviewer_user_id: u64,
    reviewed_at: DateTime<Utc>,
) -> Value {
    let mut rng = Rng(answered_scorecard_id ^ 0x2545_f491_4f6c_dd1d);
    let started = reviewed_at - chrono::Duration::hours(1 + rng.below(48) as i64);
    json!({
        "answeredScorecardId": answered_scorecard_id,
        "scorecardId": 4_321_000_000_000_000u64 + rng.below(3),
        "scorecardName": *rng.pick(&["Discovery call", "Demo", "Negotiation"]),
        "callId": call_id,
        "callStartTime": started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "reviewedUserId": reviewed_user_id,
        "reviewerUserId": reviewer_user_id,
        "reviewTime": reviewed_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "visibilityType": *rng.pick(&["PUBLIC", "PRIVATE", "OPT_IN_USERS"]),
        "answers": [
            {"questionId": 9_100_000_000_000_001u64, "questionRevisionId": 9_200_000_000_000_001u64,
             "isOverall": true, "score": 1 + rng.below(5), "answerText": null,
             "notApplicable": false, "selectedOptions": null},
            {"questionId": 9_100_000_000_000_002u64, "questionRevisionId": 9_200_000_000_000_002u64,
             "isOverall": false, "score": 1 + rng.below(5), "answerText": null,
             "notApplicable": false, "selectedOptions": null},
            {"questionId": 9_100_000_000_000_003u64, "questionRevisionId": 9_200_000_000_000_003u64,
             "isOverall": false, "score": null, "answerText": "Clear next steps agreed.",
             "notApplicable": false, "selectedOptions": [9_300_000_000_000_001u64]},
            {"questionId": 9_100_000_000_000_004u64, "questionRevisionId": 9_200_000_000_000_004u64,
             "isOverall": false, "score": null, "answerText": null,
             "notApplicable": true, "selectedOptions": null},
        ],
    })
}

fn answer(shared: &Shared, endpoint: Endpoint, body: &[u8], request_id: &str) -> HttpResponse {
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return error_response(
            StatusCode::BAD_REQUEST,
            request_id,
            "Request body is not valid JSON",
        );
    };
    let mut call_ids: Vec<String> = Vec::new();
    let raw_ids = request
        .pointer("/filter/callIds")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for raw in raw_ids {
        let id = match raw {
            Value::String(text) => text,
            Value::Number(number) => number.to_string(),
            _ => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    request_id,
                    "filter.callIds must hold call ids",
                )
            }
        };
        if id.is_empty() || id.len() > 20 || !id.bytes().all(|byte| byte.is_ascii_digit()) {
            return error_response(
                StatusCode::BAD_REQUEST,
                request_id,
                "filter.callIds must hold numeric call ids of up to 20 digits",
            );
        }
        if !call_ids.contains(&id) {
            call_ids.push(id);
        }
    }
    let mut range = [None, None];
    for (slot, field) in range.iter_mut().zip(["fromDateTime", "toDateTime"]) {
        match request.pointer(&format!("/filter/{field}")) {
            None | Some(Value::Null) => {}
            Some(Value::String(text)) => match DateTime::parse_from_rfc3339(text) {
                Ok(time) => *slot = Some((text.clone(), time.with_timezone(&Utc))),
                Err(_) => {
                    return error_response(
                        StatusCode::BAD_REQUEST,
                        request_id,
                        &format!("filter.{field} must be an ISO-8601 date-time"),
                    )
                }
            },
            Some(_) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    request_id,
                    &format!("filter.{field} must be a string"),
                )
            }
        }
    }
    let [from, to] = range;
    let in_range = |started: DateTime<Utc>| {
        from.as_ref().is_none_or(|(_, from)| started >= *from)
            && to.as_ref().is_none_or(|(_, to)| started < *to)
    };
    // Listing: no call ids, the history's calls started inside the range, oldest first.
    let listing = call_ids.is_empty() && endpoint == Endpoint::Extensive;
    let now = Instant::now();
    let (matching, private, padded, history, not_ready) = {
        let mut state = shared.state();
        state.stats.call_ids_per_request.push(call_ids.len());
        let matching: Vec<String> = if listing {
            let mut listed: Vec<(DateTime<Utc>, &String)> = state
                .history
                .iter()
                .filter(|(id, started)| in_range(**started) && !state.deleted.contains(*id))
                .map(|(id, started)| (*started, id))
                .collect();
            listed.sort();
            listed.into_iter().map(|(_, id)| id.clone()).collect()
        } else {
            call_ids
                .iter()
                .filter(|id| !state.deleted.contains(*id))
                .filter(|id| match endpoint {
                    Endpoint::Extensive => true,
                    Endpoint::Transcript => !state.private.contains(*id),
                })
                .filter(|id| {
                    (from.is_none() && to.is_none())
                        || in_range(
                            state
                                .history
                                .get(*id)
                                .copied()
                                .unwrap_or_else(|| facts(id, None).started.with_timezone(&Utc)),
                        )
                })
                .cloned()
                .collect()
        };
        let private: HashSet<String> = matching
            .iter()
            .filter(|id| state.private.contains(*id))
            .cloned()
            .collect();
        let padded: HashMap<String, usize> = matching
            .iter()
            .filter_map(|id| state.padded.get(id).map(|bytes| (id.clone(), *bytes)))
            .collect();
        let history: HashMap<String, DateTime<Utc>> = matching
            .iter()
            .filter_map(|id| state.history.get(id).map(|started| (id.clone(), *started)))
            .collect();
        let not_ready: HashSet<String> = matching
            .iter()
            .filter(|id| {
                state
                    .transcript_ready
                    .get(*id)
                    .is_some_and(|ready| ready.is_none_or(|at| now < at))
            })
            .cloned()
            .collect();
        (matching, private, padded, history, not_ready)
    };
    let fingerprint = if listing {
        let bound = |side: &Option<(String, DateTime<Utc>)>| {
            side.as_ref()
                .map(|(text, _)| text.clone())
                .unwrap_or_default()
        };
        fingerprint(&[bound(&from), bound(&to)])
    } else {
        fingerprint(&call_ids)
    };
    let offset = match request.get("cursor") {
        None | Some(Value::Null) => 0,
        Some(Value::String(cursor)) => match decode_cursor(cursor, fingerprint) {
            Some(offset) => offset,
            None => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    request_id,
                    "cursor is invalid or does not belong to this filter",
                )
            }
        },
        Some(_) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                request_id,
                "cursor must be a string",
            )
        }
    };
    let page_size = shared.page_size;
    let page: Vec<&String> = matching.iter().skip(offset).take(page_size).collect();
    if listing {
        let text = |side: &Option<(String, DateTime<Utc>)>| {
            side.as_ref()
                .map(|(text, _)| text.clone())
                .unwrap_or_default()
        };
        shared.state().stats.listed_pages.push(ListedPage {
            from: text(&from),
            to: text(&to),
            offset,
            calls: page.len(),
        });
    }
    if matching.is_empty() {
        return error_response(StatusCode::NOT_FOUND, request_id, NO_CALLS_FOUND);
    }
    let next = offset + page.len();
    let mut records = json!({
        "totalRecords": matching.len(),
        "currentPageSize": page.len(),
        "currentPageNumber": offset / page_size,
    });
    if next < matching.len() {
        records["cursor"] = Value::String(encode_cursor(next, fingerprint));
    }
    let body = match endpoint {
        Endpoint::Extensive => {
            let selector = request
                .get("contentSelector")
                .cloned()
                .unwrap_or(Value::Null);
            let calls: Vec<Value> = page
                .iter()
                .map(|id| {
                    call_json_started(
                        id,
                        private.contains(*id),
                        &selector,
                        history.get(*id).copied(),
                    )
                })
                .collect();
            json!({"requestId": request_id, "records": records, "calls": calls})
        }
        Endpoint::Transcript => {
            let mut empty = 0u64;
            let transcripts: Vec<Value> = page
                .iter()
                .map(|id| {
                    if not_ready.contains(*id) {
                        empty += 1;
                        return json!({"callId": id, "transcript": []});
                    }
                    let mut transcript = transcript_json(id);
                    if let (Some(bytes), Some(monologues)) =
                        (padded.get(*id), transcript["transcript"].as_array_mut())
                    {
                        let speaker = monologues[0]["speakerId"].clone();
                        monologues.push(json!({
                            "speakerId": speaker,
                            "topic": "Padding",
                            "sentences": [{"start": 0, "end": 1, "text": "x".repeat(*bytes)}],
                        }));
                    }
                    transcript
                })
                .collect();
            shared.state().stats.empty_transcripts_served += empty;
            json!({"requestId": request_id, "records": records, "callTranscripts": transcripts})
        }
    };
    json_response(StatusCode::OK, &body)
}

fn fingerprint(call_ids: &[String]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for id in call_ids {
        for byte in id.bytes().chain(std::iter::once(b',')) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

fn encode_cursor(offset: usize, fingerprint: u64) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{offset}:{fingerprint:x}"))
}

fn decode_cursor(cursor: &str, fingerprint: u64) -> Option<usize> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (offset, hash) = text.split_once(':')?;
    (u64::from_str_radix(hash, 16).ok()? == fingerprint)
        .then(|| offset.parse().ok())
        .flatten()
}

fn request_id(counter: u64) -> String {
    // Gong's request ids look like `4al018gzaztcr8nbukw`: lower-case base 36.
    let mut value = counter.wrapping_mul(0x9e37_79b9_7f4a_7c15) | (1 << 60);
    let mut out = String::new();
    while value > 0 {
        let digit = (value % 36) as u32;
        out.push(std::char::from_digit(digit, 36).unwrap_or('0'));
        value /= 36;
    }
    out
}

fn seconds_until_utc_midnight(now: DateTime<Utc>) -> u64 {
    let tomorrow = now.date_naive().succ_opt().unwrap_or(now.date_naive());
    let midnight = Utc.from_utc_datetime(&tomorrow.and_hms_opt(0, 0, 0).unwrap_or_default());
    (midnight - now).num_seconds().max(1) as u64
}

fn json_response(status: StatusCode, body: &Value) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error_response(status: StatusCode, request_id: &str, message: &str) -> HttpResponse {
    json_response(
        status,
        &json!({"requestId": request_id, "errors": [message]}),
    )
}

fn too_many_requests(request_id: &str, retry_after_secs: u64, message: &str) -> HttpResponse {
    let mut response = error_response(StatusCode::TOO_MANY_REQUESTS, request_id, message);
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
    response
}

/// A small deterministic generator (SplitMix64) seeded from a call id.
struct Rng(u64);

impl Rng {
    fn for_call(call_id: &str) -> Rng {
        let seed = call_id
            .parse::<u128>()
            .map(|value| (value as u64) ^ ((value >> 64) as u64))
            .unwrap_or_else(|_| fingerprint(&[call_id.to_string()]));
        Rng(seed ^ 0x5851_f42d_4c95_7f2d)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    fn digits(&mut self, len: usize) -> String {
        let mut out = String::with_capacity(len);
        out.push(char::from(b'1' + self.below(9) as u8));
        while out.len() < len {
            out.push(char::from(b'0' + self.below(10) as u8));
        }
        out
    }
}

const FIRST_NAMES: &[&str] = &[
    "Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Linus",
];
const LAST_NAMES: &[&str] = &[
    "Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson", "Perlman",
    "Torvalds",
];
const COMPANIES: &[&str] = &["Acme", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay"];
const TOPICS: &[&str] = &[
    "Pricing",
    "Next Steps",
    "Product Demo",
    "Security Review",
    "Integrations",
    "Timeline",
    "Small Talk",
];
const TRACKERS: &[&str] = &[
    "Competitors",
    "Budget",
    "Decision Makers",
    "Objections",
    "Pricing",
];
const SENTENCES: &[&str] = &[
    "Thanks for making the time today.",
    "Could you walk me through your current process?",
    "We mostly export everything to spreadsheets at the moment.",
    "That is exactly the gap we close.",
    "What does the rollout timeline look like on your side?",
    "Security will want to review the data flows first.",
    "Pricing depends on the number of seats.",
    "Let us schedule a follow-up with your team next week.",
];
const OFFSETS_MINUTES: &[i32] = &[-8 * 60, -5 * 60, 0, 60, 5 * 60 + 30];

struct Person {
    party_id: String,
    speaker_id: String,
    user_id: Option<String>,
    name: String,
    email: String,
    internal: bool,
}

fn people(rng: &mut Rng) -> Vec<Person> {
    let count = 2 + rng.below(3) as usize;
    let company = rng.pick(COMPANIES).to_lowercase();
    (0..count)
        .map(|index| {
            let first = *rng.pick(FIRST_NAMES);
            let last = *rng.pick(LAST_NAMES);
            let internal = index == 0 || rng.below(3) == 0;
            let domain = if internal {
                "example.com".to_string()
            } else {
                format!("{company}.example")
            };
            Person {
                party_id: rng.digits(14),
                speaker_id: rng.digits(19),
                user_id: internal.then(|| rng.digits(15)),
                name: format!("{first} {last}"),
                email: format!(
                    "{}.{}@{}",
                    first.to_lowercase(),
                    last.to_lowercase(),
                    domain
                ),
                internal,
            }
        })
        .collect()
}

struct Facts {
    started: DateTime<FixedOffset>,
    duration_secs: u64,
    people: Vec<Person>,
    company: &'static str,
    rng: Rng,
}

/// The call's generated facts; `started` (from the history) replaces the generated start.
fn facts(call_id: &str, started: Option<DateTime<Utc>>) -> Facts {
    let mut rng = Rng::for_call(call_id);
    let base = Utc
        .with_ymd_and_hms(2024, 1, 1, 8, 0, 0)
        .single()
        .unwrap_or_default();
    let generated = base
        + chrono::Duration::seconds(rng.below(365 * 24 * 3600) as i64)
        + chrono::Duration::microseconds(rng.below(1_000_000) as i64);
    let started_utc = started.unwrap_or(generated);
    let offset_minutes = *rng.pick(OFFSETS_MINUTES);
    let offset = FixedOffset::east_opt(offset_minutes * 60)
        .unwrap_or_else(|| FixedOffset::east_opt(0).expect("zero offset is valid"));
    let duration_secs = 300 + rng.below(3300);
    let people = people(&mut rng);
    let company = *rng.pick(COMPANIES);
    Facts {
        started: started_utc.with_timezone(&offset),
        duration_secs,
        people,
        company,
        rng,
    }
}

fn iso(time: DateTime<FixedOffset>) -> String {
    time.format("%Y-%m-%dT%H:%M:%S%.6f%:z").to_string()
}

fn flag(selector: &Value, pointer: &str) -> bool {
    selector
        .pointer(pointer)
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// The call object `POST /v2/calls/extensive` returns for `call_id` under `content_selector`
/// (deterministic: the same id always gives the same call).
pub fn call_json(call_id: &str, is_private: bool, content_selector: &Value) -> Value {
    call_json_started(call_id, is_private, content_selector, None)
}

/// As [`call_json`], with `metaData.started` at `started` when given (a call of the history).
pub fn call_json_started(
    call_id: &str,
    is_private: bool,
    content_selector: &Value,
    started: Option<DateTime<Utc>>,
) -> Value {
    let mut facts = facts(call_id, started);
    let rng = &mut facts.rng;
    let host = &facts.people[0];
    let scheduled = facts.started - chrono::Duration::seconds(rng.below(300) as i64);
    let title = format!("{} <> {}: {}", facts.company, "Example", rng.pick(TOPICS));
    let mut call = json!({
        "metaData": {
            "id": call_id,
            "url": format!("https://app.gong.io/call?id={call_id}"),
            "title": title,
            "scheduled": iso(scheduled),
            "started": iso(facts.started),
            "duration": facts.duration_secs,
            "primaryUserId": host.user_id,
            "direction": *rng.pick(&["Conference", "Outbound", "Inbound"]),
            "system": *rng.pick(&["Zoom", "Google Meet", "Microsoft Teams", "Outreach"]),
            "scope": *rng.pick(&["External", "Internal"]),
            "media": "Video",
            "language": "eng",
            "workspaceId": "623457276584334",
            "sdrDisposition": null,
            "clientUniqueId": null,
            "customData": null,
            "purpose": null,
            "meetingUrl": format!("https://zoom.us/j/{}", rng.digits(10)),
            "isPrivate": is_private,
            "calendarEventId": format!("cal{}", rng.digits(8)),
        }
    });
    let context = content_selector
        .get("context")
        .and_then(Value::as_str)
        .unwrap_or("None");
    if context == "Basic" || context == "Extended" {
        let mut account_fields = vec![json!({"name": "Name", "value": facts.company})];
        let mut opportunity_fields =
            vec![json!({"name": "Name", "value": format!("{} expansion", facts.company)})];
        if context == "Extended" {
            account_fields.push(
                json!({"name": "Industry", "value": *rng.pick(&["Software", "Retail", "Finance"])}),
            );
            account_fields.push(json!({"name": "AnnualRevenue", "value": (rng.below(900) + 100) as f64 * 1_000_000.0}));
            opportunity_fields
                .push(json!({"name": "Amount", "value": (rng.below(200) + 10) * 1000}));
            opportunity_fields.push(json!({"name": "StageName", "value": *rng.pick(&["Discovery", "Proposal", "Negotiation"])}));
            opportunity_fields.push(json!({"name": "IsClosed", "value": false}));
            opportunity_fields.push(json!({"name": "CloseDate", "value": "2024-12-31"}));
        }
        call["context"] = json!([{
            "system": "Salesforce",
            "objects": [
                {"objectType": "Account", "objectId": format!("001{}", rng.digits(12)), "fields": account_fields},
                {"objectType": "Opportunity", "objectId": format!("006{}", rng.digits(12)), "fields": opportunity_fields},
            ]
        }]);
    }
    if flag(content_selector, "/exposedFields/parties") {
        let parties: Vec<Value> = facts
            .people
            .iter()
            .map(|person| {
                json!({
                    "id": person.party_id,
                    "emailAddress": person.email,
                    "name": person.name,
                    "title": if person.internal { "Account Executive" } else { "VP Operations" },
                    "userId": person.user_id,
                    "speakerId": person.speaker_id,
                    "context": [],
                    "affiliation": if person.internal { "Internal" } else { "External" },
                    "phoneNumber": null,
                    "methods": ["Invitee"],
                })
            })
            .collect();
        call["parties"] = Value::Array(parties);
    }
    let duration = facts.duration_secs;
    let mut content = serde_json::Map::new();
    if flag(content_selector, "/exposedFields/content/topics") {
        let topics: Vec<Value> = TOPICS
            .iter()
            .take(3 + rng.below(3) as usize)
            .map(|name| json!({"name": name, "duration": (rng.below(duration / 4) + 10) as f64}))
            .collect();
        content.insert("topics".into(), Value::Array(topics));
    }
    if flag(content_selector, "/exposedFields/content/trackers") {
        let trackers: Vec<Value> = TRACKERS
            .iter()
            .take(2 + rng.below(3) as usize)
            .map(|name| {
                let count = rng.below(5);
                let occurrences: Vec<Value> = (0..count)
                    .map(|_| {
                        json!({
                            "startTime": rng.below(duration) as f64,
                            "speakerId": facts.people[rng.below(facts.people.len() as u64) as usize].speaker_id,
                        })
                    })
                    .collect();
                json!({
                    "id": rng.digits(18),
                    "name": name,
                    "count": count,
                    "type": *rng.pick(&["KEYWORD", "SMART"]),
                    "occurrences": occurrences,
                    "phrases": [],
                })
            })
            .collect();
        content.insert("trackers".into(), Value::Array(trackers));
    }
    if flag(content_selector, "/exposedFields/content/brief") {
        content.insert(
            "brief".into(),
            Value::String(format!(
                "{} reviewed their reporting workflow and agreed to a follow-up on pricing and security.",
                facts.company
            )),
        );
    }
    if flag(content_selector, "/exposedFields/content/outline") {
        content.insert(
            "outline".into(),
            json!([{"section": "Introduction", "startTime": 0.0, "duration": 120.0,
                    "items": [{"text": "Agenda", "startTime": 15.0}]},
                   {"section": "Demo", "startTime": 120.0, "duration": (duration / 2) as f64,
                    "items": [{"text": "Reporting", "startTime": 200.0}]}]),
        );
    }
    if flag(content_selector, "/exposedFields/content/highlights") {
        content.insert(
            "highlights".into(),
            json!([{"title": "Next steps", "items": [{"text": "Send the security questionnaire", "startTimes": [ (duration / 2) as f64 ]}]}]),
        );
    }
    if flag(content_selector, "/exposedFields/content/callOutcome") {
        content.insert(
            "callOutcome".into(),
            json!({"id": rng.digits(6), "category": "Answered", "name": "Follow-up scheduled"}),
        );
    }
    if flag(content_selector, "/exposedFields/content/keyPoints") {
        content.insert(
            "keyPoints".into(),
            json!([{"text": "Budget approved for next quarter"}, {"text": "Security review required"}]),
        );
    }
    if !content.is_empty() {
        call["content"] = Value::Object(content);
    }
    let mut interaction = serde_json::Map::new();
    if flag(content_selector, "/exposedFields/interaction/speakers") {
        let speakers: Vec<Value> = facts
            .people
            .iter()
            .map(|person| json!({"id": person.party_id, "userId": person.user_id, "talkTime": (rng.below(duration / 2) + 1) as f64}))
            .collect();
        interaction.insert("speakers".into(), Value::Array(speakers));
    }
    if flag(
        content_selector,
        "/exposedFields/interaction/personInteractionStats",
    ) {
        interaction.insert(
            "interactionStats".into(),
            json!([{"name": "Interactivity", "value": rng.below(10) as f64},
                   {"name": "Patience", "value": (rng.below(300) as f64) / 100.0},
                   {"name": "Talk Ratio", "value": (rng.below(100) as f64) / 100.0}]),
        );
    }
    if flag(content_selector, "/exposedFields/interaction/questions") {
        interaction.insert(
            "questions".into(),
            json!({"companyCount": rng.below(20), "nonCompanyCount": rng.below(20)}),
        );
    }
    if flag(content_selector, "/exposedFields/interaction/video") {
        interaction.insert(
            "video".into(),
            json!([{"name": "Presentation", "duration": (duration / 3) as f64},
                   {"name": "WebcamPrimaryUser", "duration": (duration / 2) as f64}]),
        );
    }
    if !interaction.is_empty() {
        call["interaction"] = Value::Object(interaction);
    }
    if flag(
        content_selector,
        "/exposedFields/collaboration/publicComments",
    ) {
        call["collaboration"] = json!({"publicComments": [{
            "id": rng.digits(18),
            "audioStartTime": 60.0,
            "audioEndTime": 75.0,
            "commenterUserId": facts.people[0].user_id,
            "comment": "Good discovery question here",
            "posted": iso(facts.started + chrono::Duration::seconds(duration as i64 + 600)),
            "inReplyTo": null,
            "duringCall": false,
        }]});
    }
    if flag(content_selector, "/exposedFields/media") {
        call["media"] = json!({
            "audioUrl": format!("https://media.example/{call_id}.mp3"),
            "videoUrl": format!("https://media.example/{call_id}.mp4"),
        });
    }
    call
}

/// The `callTranscripts[]` item `POST /v2/calls/transcript` returns for `call_id`
/// (deterministic; speaker ids join the call's `parties[].speakerId`).
pub fn transcript_json(call_id: &str) -> Value {
    let mut facts = facts(call_id, None);
    let rng = &mut facts.rng;
    let monologues = 4 + rng.below(5);
    let mut clock_ms: u64 = rng.below(3000);
    let mut transcript = Vec::new();
    for index in 0..monologues {
        let speaker = &facts.people[(index as usize) % facts.people.len()];
        let sentence_count = 1 + rng.below(3);
        let mut sentences = Vec::new();
        for _ in 0..sentence_count {
            let length_ms = 1500 + rng.below(6000);
            sentences.push(json!({
                "start": clock_ms,
                "end": clock_ms + length_ms,
                "text": *rng.pick(SENTENCES),
            }));
            clock_ms += length_ms + rng.below(800);
        }
        transcript.push(json!({
            "speakerId": speaker.speaker_id,
            "topic": *rng.pick(TOPICS),
            "sentences": sentences,
        }));
    }
    json!({"callId": call_id, "transcript": transcript})
}

/// The `contentSelector` that exposes everything (a convenience for tests and the simulator).
pub fn full_content_selector() -> Value {
    json!({
        "context": "Extended",
        "exposedFields": {
            "parties": true,
            "content": {"structure": true, "topics": true, "trackers": true, "trackerOccurrences": true,
                        "pointsOfInterest": true, "brief": true, "outline": true, "highlights": true,
                        "callOutcome": true, "keyPoints": true},
            "interaction": {"speakers": true, "video": true, "personInteractionStats": true, "questions": true},
            "collaboration": {"publicComments": true},
            "media": true
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_calls_are_deterministic_and_join_the_transcript() {
        let selector = full_content_selector();
        let first = call_json("7782342274025937895", false, &selector);
        assert_eq!(first, call_json("7782342274025937895", false, &selector));
        let started = first["metaData"]["started"].as_str().unwrap();
        assert!(DateTime::parse_from_rfc3339(started).is_ok(), "{started}");
        assert_eq!(started.split('.').nth(1).unwrap().len(), 12, "{started}");
        let speakers: HashSet<&str> = first["parties"]
            .as_array()
            .unwrap()
            .iter()
            .map(|party| party["speakerId"].as_str().unwrap())
            .collect();
        let transcript = transcript_json("7782342274025937895");
        for monologue in transcript["transcript"].as_array().unwrap() {
            assert!(speakers.contains(monologue["speakerId"].as_str().unwrap()));
        }
        assert!(first["content"]["brief"].is_string());
        assert!(first["context"][0]["objects"][0]["fields"].is_array());
    }

    async fn post(
        double: &GongDouble,
        path: &str,
        body: Value,
        auth: bool,
    ) -> (u16, Option<String>, Value) {
        let mut request = reqwest::Client::new()
            .post(format!("{}{}", double.base_url(), path))
            .json(&body);
        if auth {
            request = request.basic_auth(DEFAULT_ACCESS_KEY, Some(DEFAULT_ACCESS_KEY_SECRET));
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|value| value.to_str().unwrap().to_string());
        let value = response.json::<Value>().await.unwrap_or(Value::Null);
        (status, retry_after, value)
    }

    #[tokio::test]
    async fn enforces_gong_rules() {
        let double = GongDouble::start(GongDoubleConfig {
            rate_per_second: 2,
            daily_quota: 6,
            deleted_calls: vec!["3".into()],
            ..GongDoubleConfig::default()
        })
        .await
        .unwrap();
        let ids: Vec<String> = (1..=250).map(|id| id.to_string()).collect();
        let filter = json!({"filter": {"callIds": ids}});
        let (status, _, body) = post(&double, EXTENSIVE_PATH, filter.clone(), false).await;
        assert_eq!(status, 401, "{body}");
        let (status, _, first) = post(&double, EXTENSIVE_PATH, filter.clone(), true).await;
        assert_eq!(status, 200);
        assert_eq!(
            first["records"]["totalRecords"], 249,
            "the deleted call is absent"
        );
        assert_eq!(first["calls"].as_array().unwrap().len(), 100);
        // Over the rate (2 per second): some request soon gets 429 with Retry-After.
        let mut refused = None;
        for _ in 0..50 {
            let (status, retry_after, _) =
                post(&double, EXTENSIVE_PATH, filter.clone(), true).await;
            if status == 429 {
                refused = retry_after;
                break;
            }
        }
        assert!(refused.is_some(), "429 with Retry-After");
        let stats = double.stats();
        assert!(stats.rate_violations >= 1, "{stats:?}");
        assert_eq!(stats.violations(), stats.rate_limited_sent);
        assert!(stats.admitted_today <= 6);
    }

    async fn get_users(double: &GongDouble, cursor: Option<&str>) -> (u16, Value) {
        let mut url = format!("{}{}", double.base_url(), USERS_PATH);
        if let Some(cursor) = cursor {
            url = format!("{url}?cursor={cursor}");
        }
        let response = reqwest::Client::new()
            .get(url)
            .basic_auth(DEFAULT_ACCESS_KEY, Some(DEFAULT_ACCESS_KEY_SECRET))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (
            status,
            response.json::<Value>().await.unwrap_or(Value::Null),
        )
    }

    #[tokio::test]
    async fn users_page_by_query_cursor_and_scorecards_filter_by_review_date() {
        let double = GongDouble::start(GongDoubleConfig {
            rate_per_second: 100,
            page_size: 2,
            ..GongDoubleConfig::default()
        })
        .await
        .unwrap();
        let (status, body) = get_users(&double, None).await;
        assert_eq!(
            (status, body["errors"][0].as_str()),
            (404, Some(NO_USERS_FOUND))
        );
        double.add_users((1..=5).map(|id| user_json(&id.to_string(), None)));
        let mut ids = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let (status, body) = get_users(&double, cursor.as_deref()).await;
            assert_eq!(status, 200, "{body}");
            for user in body["users"].as_array().unwrap() {
                ids.push(user["id"].as_str().unwrap().to_string());
            }
            match body["records"]["cursor"].as_str() {
                Some(next) => cursor = Some(next.to_string()),
                None => break,
            }
        }
        assert_eq!(ids, ["1", "2", "3", "4", "5"]);
        let (status, _, _) = post(&double, USERS_PATH, json!({}), true).await;
        assert_eq!(status, 405, "users is a GET");
        let (status, _) = get_users(&double, Some("bogus")).await;
        assert_eq!(status, 400);

        // Scorecards: reviewed 23:30 UTC on the 10th, the 11th in UTC+1.
        let late = Utc.with_ymd_and_hms(2026, 3, 10, 23, 30, 0).unwrap();
        let early = Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap();
        assert_eq!(
            double.add_answered_scorecards([
                answered_scorecard_json(11, 101, 1, 2, late),
                answered_scorecard_json(12, 102, 1, 2, early),
                json!({"answeredScorecardId": 13}),
            ]),
            2
        );
        let filter =
            |from: &str, to: &str| json!({"filter": {"reviewFromDate": from, "reviewToDate": to}});
        let (status, _, body) = post(
            &double,
            SCORECARDS_PATH,
            filter("2026-03-10", "2026-03-11"),
            true,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let cards = body["answeredScorecards"].as_array().unwrap();
        assert_eq!(cards.len(), 1);
        assert!(cards[0]["answeredScorecardId"].is_u64(), "ids are numbers");
        assert!(cards[0]["callId"].is_u64());
        double.set_company_utc_offset(60);
        let (status, _, body) = post(
            &double,
            SCORECARDS_PATH,
            filter("2026-03-10", "2026-03-11"),
            true,
        )
        .await;
        assert_eq!(status, 404, "the 11th in the company's zone: {body}");
        assert_eq!(body["errors"][0], NO_SCORECARDS_FOUND);
        for bad in ["2026-3-10", "2026-03-10T00:00:00Z", "tomorrow"] {
            let (status, _, _) =
                post(&double, SCORECARDS_PATH, filter(bad, "2026-03-12"), true).await;
            assert_eq!(status, 400, "{bad}");
        }
        let (status, _, body) = post(
            &double,
            SCORECARDS_PATH,
            filter("2026-02-01", "2026-04-01"),
            true,
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(body["records"]["totalRecords"], 2);
        assert!(body["records"].get("cursor").is_none());
        let stats = double.stats();
        assert_eq!(stats.requests_to(SCORECARDS_PATH), 6);
        assert_eq!(stats.requests_to(USERS_PATH), 6);
    }

    #[tokio::test]
    async fn pages_follow_the_body_cursor_and_empty_answers_are_404() {
        let double = GongDouble::start(GongDoubleConfig {
            rate_per_second: 100,
            ..GongDoubleConfig::default()
        })
        .await
        .unwrap();
        double.make_private("7");
        let ids: Vec<String> = (1..=150).map(|id| id.to_string()).collect();
        let mut body = json!({"filter": {"callIds": ids}});
        let (status, _, first) = post(&double, TRANSCRIPT_PATH, body.clone(), true).await;
        assert_eq!(status, 200);
        assert_eq!(
            first["records"]["totalRecords"], 149,
            "private calls have no transcript"
        );
        let cursor = first["records"]["cursor"].as_str().unwrap().to_string();
        let in_query = format!("{TRANSCRIPT_PATH}?cursor={cursor}");
        let (status, _, _) = post(&double, &in_query, body.clone(), true).await;
        assert_eq!(status, 400, "a cursor in the query string is refused");
        body["cursor"] = Value::String(cursor);
        let (status, _, second) = post(&double, TRANSCRIPT_PATH, body, true).await;
        assert_eq!(status, 200);
        assert_eq!(second["callTranscripts"].as_array().unwrap().len(), 49);
        assert!(second["records"].get("cursor").is_none());
        assert_eq!(second["records"]["currentPageNumber"], 1);
        double.delete_call("9");
        let (status, _, missing) = post(
            &double,
            EXTENSIVE_PATH,
            json!({"filter": {"callIds": ["9"]}}),
            true,
        )
        .await;
        assert_eq!(status, 404);
        assert_eq!(missing["errors"][0], NO_CALLS_FOUND);
        assert!(missing["requestId"].is_string());
        double.set_fault(Fault::ServerError, 1);
        let (status, _, _) = post(
            &double,
            EXTENSIVE_PATH,
            json!({"filter": {"callIds": ["1"]}}),
            true,
        )
        .await;
        assert_eq!(status, 500);
        assert_eq!(double.stats().faults_served, 1);
        assert_eq!(double.stats().call_ids_per_request, vec![150, 150, 1]);
        assert_eq!(double.stats().requests_to(TRANSCRIPT_PATH), 3);
    }

    #[tokio::test]
    async fn lists_the_history_by_start_time_with_a_body_cursor() {
        let double = GongDouble::start(GongDoubleConfig {
            rate_per_second: 100,
            page_size: 2,
            ..GongDoubleConfig::default()
        })
        .await
        .unwrap();
        let base = Utc.with_ymd_and_hms(2025, 3, 1, 0, 0, 0).unwrap();
        double
            .add_calls((0..5).map(|n| (format!("{}", 900 + n), base + chrono::Duration::hours(n))));
        double.delete_call("903");
        let filter = |from: &str, to: &str| json!({"filter": {"fromDateTime": from, "toDateTime": to}, "contentSelector": {"context": "None"}});
        // [01:00, 04:00): 901, 902 (903 deleted); 904 starts at 04:00, outside (to is exclusive).
        let mut body = filter("2025-03-01T01:00:00Z", "2025-03-01T04:00:00+00:00");
        let (status, _, first) = post(&double, EXTENSIVE_PATH, body.clone(), true).await;
        assert_eq!(status, 200, "{first}");
        assert_eq!(first["records"]["totalRecords"], 2);
        let ids: Vec<&str> = first["calls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|call| call["metaData"]["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["901", "902"]);
        assert!(first["records"].get("cursor").is_none());
        let started = first["calls"][0]["metaData"]["started"].as_str().unwrap();
        assert_eq!(
            DateTime::parse_from_rfc3339(started).unwrap(),
            base + chrono::Duration::hours(1)
        );
        // The whole history pages by 2, the cursor in the body.
        body = filter("2025-03-01T00:00:00Z", "2025-03-02T00:00:00Z");
        let (_, _, page) = post(&double, EXTENSIVE_PATH, body.clone(), true).await;
        assert_eq!(page["calls"].as_array().unwrap().len(), 2);
        body["cursor"] = page["records"]["cursor"].clone();
        let (_, _, page) = post(&double, EXTENSIVE_PATH, body.clone(), true).await;
        assert_eq!(page["calls"][0]["metaData"]["id"], "902");
        // A cursor of another window is refused.
        let mut other = filter("2025-02-01T00:00:00Z", "2025-03-02T00:00:00Z");
        other["cursor"] = body["cursor"].clone();
        let (status, _, _) = post(&double, EXTENSIVE_PATH, other, true).await;
        assert_eq!(status, 400);
        // An empty window is 404, as Gong answers.
        let (status, _, empty) = post(
            &double,
            EXTENSIVE_PATH,
            filter("2020-01-01T00:00:00Z", "2020-01-02T00:00:00Z"),
            true,
        )
        .await;
        assert_eq!(status, 404);
        assert_eq!(empty["errors"][0], NO_CALLS_FOUND);
        let stats = double.stats();
        // The refused cursor served no page.
        assert_eq!(stats.list_requests(), 4);
        assert_eq!(stats.listed_pages[2].offset, 2);
        assert_eq!(stats.listed_pages[3].calls, 0);
    }

    #[tokio::test]
    async fn a_late_transcript_is_empty_until_its_moment() {
        let double = GongDouble::start(GongDoubleConfig {
            rate_per_second: 100,
            ..GongDoubleConfig::default()
        })
        .await
        .unwrap();
        double.hold_transcript("11");
        double.delay_transcript("12", Duration::ZERO);
        let body = json!({"filter": {"callIds": ["11", "12"]}});
        let (status, _, answer) = post(&double, TRANSCRIPT_PATH, body.clone(), true).await;
        assert_eq!(status, 200);
        let by_id = |answer: &Value, id: &str| {
            answer["callTranscripts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|item| item["callId"] == id)
                .unwrap()["transcript"]
                .as_array()
                .unwrap()
                .len()
        };
        assert_eq!(by_id(&answer, "11"), 0, "held: empty");
        assert!(by_id(&answer, "12") > 0, "its moment has come");
        double.release_transcript("11");
        let (_, _, answer) = post(&double, TRANSCRIPT_PATH, body, true).await;
        assert!(by_id(&answer, "11") > 0);
        assert_eq!(double.stats().empty_transcripts_served, 1);
    }

    #[test]
    fn cursors_are_bound_to_their_filter() {
        let ids = vec!["1".to_string(), "2".to_string()];
        let cursor = encode_cursor(100, fingerprint(&ids));
        assert_eq!(decode_cursor(&cursor, fingerprint(&ids)), Some(100));
        assert_eq!(decode_cursor(&cursor, fingerprint(&ids[..1])), None);
        assert_eq!(decode_cursor("garbage", fingerprint(&ids)), None);
    }

    #[test]
    fn midnight_is_in_the_future() {
        let now = Utc::now();
        let secs = seconds_until_utc_midnight(now);
        assert!((1..=86_400).contains(&secs));
    }
}
