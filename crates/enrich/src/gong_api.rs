//! Gong's REST API, batched: one `POST /v2/calls/extensive` for many call ids and one
//! `POST /v2/calls/transcript` for the non-private ones, each following `records.cursor` (sent in the JSON body) until it is absent. Every request
//! first takes a slot from the shared [`RateLimiter`]; a 429 records Gong's `Retry-After` there
//! so every replica pauses.
//!
//! The sweep lists calls by date with [`GongApi::list_page`]: `POST /v2/calls/extensive` with
//! `filter{fromDateTime, toDateTime}` and no call ids, one page (100 calls, full extensive data
//! under the configured `contentSelector`) per request; 404 is an empty window. Calls the
//! listing already returned are not fetched again ([`GongApi::fetch_batch_with`]).
//!
//! The entity jobs ([`crate::entities`]) page through `GET /v2/users` ([`GongApi::users_page`],
//! the cursor in the query string) and `POST /v2/stats/activity/scorecards`
//! ([`GongApi::scorecards_page`], review dates and the cursor in the body) with the same quota,
//! retries and 404-is-empty rule.
//!
//! Answers map back per call: a call absent from the answer (deleted) is simply missing from
//! [`BatchAnswer::calls`]; a call whose JSON does not fit Gong's documented shape is listed in
//! [`BatchAnswer::malformed`] without spoiling the others.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, Utc};
use gong_common::gong::{Call, CallTranscript, Monologue, Records};
use rand::Rng;
use serde::Deserialize;
use serde_json::Value;

use crate::config::GongApiConfig;
use crate::error::{Endpoint, EnrichError, GongError};
use crate::metrics;
use crate::rate_limit::{Priority, RateLimiter};

/// Upper bound on pages followed for one request (a cursor loop is a malformed answer).
const MAX_PAGES: usize = 1000;

/// Records per page Gong answers; transcript rechecks ask about this many calls at once.
pub const IDS_PER_REQUEST: usize = 100;

/// A call to enrich: its id and whether the webhook said it was private.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRequest {
    /// Gong call id (numeric string).
    pub call_id: String,
    /// `metaData.isPrivate` from the webhook (the API's answer wins when present).
    pub webhook_private: bool,
}

/// What Gong answered for one batch of calls.
#[derive(Debug, Clone, Default)]
pub struct BatchAnswer {
    /// Calls found, by id.
    pub calls: HashMap<String, Call>,
    /// Transcripts by call id (absent for private calls and calls without one).
    pub transcripts: HashMap<String, Vec<Monologue>>,
    /// Calls whose JSON could not be understood, with why.
    pub malformed: HashMap<String, String>,
    /// When the extensive answer arrived.
    pub fetched_at: DateTime<Utc>,
}

/// The client; cheap to clone.
#[derive(Clone)]
pub struct GongApi {
    http: reqwest::Client,
    config: GongApiConfig,
    limiter: RateLimiter,
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    records: Option<Records>,
    #[serde(default)]
    calls: Option<Vec<Value>>,
    #[serde(default, rename = "callTranscripts")]
    call_transcripts: Option<Vec<Value>>,
    #[serde(default)]
    users: Option<Vec<Value>>,
    #[serde(default, rename = "answeredScorecards")]
    answered_scorecards: Option<Vec<Value>>,
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<Value>,
}

/// One page's items and the next cursor.
struct Page {
    items: Vec<Value>,
    cursor: Option<String>,
    total: Option<u64>,
}

/// Which calls a request is about.
#[derive(Debug, Clone, Copy)]
enum Filter<'a> {
    /// These call ids.
    Ids(&'a [String]),
    /// Every call started in `[from, to)`.
    Window(DateTime<Utc>, DateTime<Utc>),
    /// No filter (`GET /v2/users`: every user).
    Everything,
    /// Answered scorecards reviewed on dates `[from, to)` (the company's time zone).
    ReviewDates(NaiveDate, NaiveDate),
}

/// One page of an entity listing (users, answered scorecards).
#[derive(Debug, Clone, Default)]
pub struct EntityPage {
    /// The items as Gong sent them (ids may be JSON numbers; unknown fields kept).
    pub items: Vec<Value>,
    /// The next page's cursor; `None` on the last page.
    pub cursor: Option<String>,
    /// `records.totalRecords`, when Gong says.
    pub total: Option<u64>,
}

/// One page of a listing by date.
#[derive(Debug, Clone, Default)]
pub struct ListedPage {
    /// The calls as Gong sent them (full extensive data; unknown fields kept).
    pub calls: Vec<Value>,
    /// The next page's cursor; `None` on the last page.
    pub cursor: Option<String>,
    /// `records.totalRecords`: calls in the whole window, when Gong says.
    pub total: Option<u64>,
}

/// Transcripts of a set of calls.
#[derive(Debug, Clone, Default)]
pub struct TranscriptAnswer {
    /// Non-empty transcripts by call id (a call absent here has none yet).
    pub transcripts: HashMap<String, Vec<Monologue>>,
    /// Calls whose transcript JSON could not be understood, with why.
    pub malformed: HashMap<String, String>,
}

impl GongApi {
    /// Builds the HTTP client (Basic auth is added per request; the secret is never logged).
    pub fn new(config: GongApiConfig, limiter: RateLimiter) -> Result<GongApi, EnrichError> {
        let http = reqwest::Client::builder()
            .timeout(config.http_timeout)
            .connect_timeout(config.http_timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("gong-enrich/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(EnrichError::HttpClient)?;
        Ok(GongApi {
            http,
            config,
            limiter,
        })
    }

    /// The shared limiter.
    pub fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    /// Fetches calls and transcripts for `requests` (distinct ids), retrying 429, 5xx and
    /// transport failures in process with capped exponential backoff and jitter. The transcript
    /// request covers the calls found that are not private.
    pub async fn fetch_batch(
        &self,
        requests: &[CallRequest],
        priority: Priority,
    ) -> Result<BatchAnswer, GongError> {
        self.fetch_batch_with(requests, &HashMap::new(), priority)
            .await
    }

    /// As [`GongApi::fetch_batch`], but the calls in `known` (by id: what the sweep's listing
    /// returned) are taken as they are, not fetched again: only their transcripts are asked for.
    pub async fn fetch_batch_with(
        &self,
        requests: &[CallRequest],
        known: &HashMap<String, Call>,
        priority: Priority,
    ) -> Result<BatchAnswer, GongError> {
        let mut seen = HashSet::new();
        let ids: Vec<String> = requests
            .iter()
            .filter(|request| seen.insert(request.call_id.clone()))
            .map(|request| request.call_id.clone())
            .collect();
        let mut answer = BatchAnswer {
            fetched_at: Utc::now(),
            ..BatchAnswer::default()
        };
        if ids.is_empty() {
            return Ok(answer);
        }
        let to_fetch: Vec<String> = ids
            .iter()
            .filter(|id| !known.contains_key(*id))
            .cloned()
            .collect();
        for id in &ids {
            if let Some(call) = known.get(id) {
                answer.calls.insert(id.clone(), call.clone());
            }
        }
        let items = if to_fetch.is_empty() {
            Vec::new()
        } else {
            self.with_retries(|| {
                self.all_pages(Endpoint::Extensive, Filter::Ids(&to_fetch), priority)
            })
            .await?
        };
        answer.fetched_at = Utc::now();
        let wanted: HashSet<&str> = to_fetch.iter().map(String::as_str).collect();
        for item in items {
            let id = item_id(&item, "/metaData/id");
            match serde_json::from_value::<Call>(item) {
                Ok(call) => {
                    if let Some(id) = call.id().filter(|id| wanted.contains(id)) {
                        answer.calls.insert(id.to_string(), call);
                    }
                }
                Err(err) => match id {
                    Some(id) => {
                        answer.malformed.insert(id, format!("call: {err}"));
                    }
                    None => {
                        return Err(GongError::Malformed {
                            endpoint: Endpoint::Extensive,
                            detail: format!("a call without a readable id: {err}"),
                        })
                    }
                },
            }
        }

        let webhook_private: HashMap<&str, bool> = requests
            .iter()
            .map(|request| (request.call_id.as_str(), request.webhook_private))
            .collect();
        let transcript_ids: Vec<String> = ids
            .iter()
            .filter(|id| {
                answer.calls.get(*id).is_some_and(|call| {
                    let private = call
                        .meta_data
                        .as_ref()
                        .and_then(|meta| meta.is_private)
                        .unwrap_or_else(|| {
                            webhook_private.get(id.as_str()).copied().unwrap_or(false)
                        });
                    !private
                })
            })
            .cloned()
            .collect();
        if transcript_ids.is_empty() {
            return Ok(answer);
        }
        let transcripts = self.fetch_transcripts(&transcript_ids, priority).await?;
        answer.transcripts = transcripts.transcripts;
        answer.malformed.extend(transcripts.malformed);
        Ok(answer)
    }

    /// Fetches the transcripts of `ids` (Gong answers [`IDS_PER_REQUEST`] per page). A call Gong
    /// answers with an empty transcript, or not at all, has none yet.
    pub async fn fetch_transcripts(
        &self,
        ids: &[String],
        priority: Priority,
    ) -> Result<TranscriptAnswer, GongError> {
        let mut answer = TranscriptAnswer::default();
        let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
        let items = self
            .with_retries(|| self.all_pages(Endpoint::Transcript, Filter::Ids(ids), priority))
            .await?;
        for item in items {
            let id = item_id(&item, "/callId");
            match serde_json::from_value::<CallTranscript>(item) {
                Ok(transcript) => {
                    if let Some(id) = transcript.call_id.filter(|id| wanted.contains(id.as_str())) {
                        answer
                            .transcripts
                            .entry(id)
                            .or_default()
                            .extend(transcript.transcript);
                    }
                }
                Err(err) => match id {
                    Some(id) => {
                        answer.malformed.insert(id, format!("transcript: {err}"));
                    }
                    None => {
                        return Err(GongError::Malformed {
                            endpoint: Endpoint::Transcript,
                            detail: format!("a transcript without a readable call id: {err}"),
                        })
                    }
                },
            }
        }
        answer
            .transcripts
            .retain(|_, monologues| !monologues.is_empty());
        Ok(answer)
    }

    /// One page of the calls started in `[from, to)` (`cursor`: the previous page's), with the
    /// configured `contentSelector`, retried in process like every request. Takes one slot of
    /// the shared quota at `priority`. 404 is an empty window.
    pub async fn list_page(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        cursor: Option<&str>,
        priority: Priority,
    ) -> Result<ListedPage, GongError> {
        let page = self
            .with_retries(|| self.page(Endpoint::List, Filter::Window(from, to), cursor, priority))
            .await?;
        Ok(ListedPage {
            calls: page.items,
            cursor: page.cursor,
            total: page.total,
        })
    }

    /// One page of `GET /v2/users` (`cursor`: the previous page's, sent as `?cursor=`), retried
    /// in process like every request, one slot of the shared quota at `priority`. 404 is an
    /// empty page.
    pub async fn users_page(
        &self,
        cursor: Option<&str>,
        priority: Priority,
    ) -> Result<EntityPage, GongError> {
        let page = self
            .with_retries(|| self.page(Endpoint::Users, Filter::Everything, cursor, priority))
            .await?;
        Ok(EntityPage {
            items: page.items,
            cursor: page.cursor,
            total: page.total,
        })
    }

    /// One page of `POST /v2/stats/activity/scorecards` for the scorecards reviewed on dates
    /// `[from, to)` (`reviewFromDate` inclusive, `reviewToDate` exclusive, `YYYY-MM-DD`; the cursor
    /// in the body), retried in process, one slot at `priority`. 404 is an empty page.
    pub async fn scorecards_page(
        &self,
        from: NaiveDate,
        to: NaiveDate,
        cursor: Option<&str>,
        priority: Priority,
    ) -> Result<EntityPage, GongError> {
        let page = self
            .with_retries(|| {
                self.page(
                    Endpoint::Scorecards,
                    Filter::ReviewDates(from, to),
                    cursor,
                    priority,
                )
            })
            .await?;
        Ok(EntityPage {
            items: page.items,
            cursor: page.cursor,
            total: page.total,
        })
    }

    async fn with_retries<F, Fut, T>(&self, mut attempt: F) -> Result<T, GongError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, GongError>>,
    {
        let mut failures: u32 = 0;
        loop {
            match attempt().await {
                Ok(value) => return Ok(value),
                Err(err) if err.is_retryable() && failures < self.config.request_retries => {
                    let delay = match &err {
                        // The pause is in the shared quota already; the next acquire waits it
                        // out. A short extra backoff spreads the replicas.
                        GongError::RateLimited { .. } => jittered(self.config.retry_backoff_base),
                        _ => backoff(
                            failures,
                            self.config.retry_backoff_base,
                            self.config.retry_backoff_max,
                        ),
                    };
                    failures += 1;
                    tracing::warn!(error = %err, attempt = failures, delay_ms = delay.as_millis() as u64, "gong request failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(err) => return Err(err),
            }
        }
    }

    async fn all_pages(
        &self,
        endpoint: Endpoint,
        filter: Filter<'_>,
        priority: Priority,
    ) -> Result<Vec<Value>, GongError> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        let mut seen_cursors = HashSet::new();
        for _ in 0..MAX_PAGES {
            let page = self
                .page(endpoint, filter, cursor.as_deref(), priority)
                .await?;
            items.extend(page.items);
            match page.cursor {
                None => return Ok(items),
                Some(next) => {
                    if !seen_cursors.insert(next.clone()) {
                        return Err(GongError::Malformed {
                            endpoint,
                            detail: "records.cursor repeats".to_string(),
                        });
                    }
                    cursor = Some(next);
                }
            }
        }
        Err(GongError::Malformed {
            endpoint,
            detail: format!("more than {MAX_PAGES} pages"),
        })
    }

    async fn page(
        &self,
        endpoint: Endpoint,
        filter: Filter<'_>,
        cursor: Option<&str>,
        priority: Priority,
    ) -> Result<Page, GongError> {
        let (mut body, ids) = match filter {
            Filter::Ids(ids) => (serde_json::json!({"filter": {"callIds": ids}}), ids.len()),
            Filter::Window(from, to) => (
                serde_json::json!({"filter": {
                    "fromDateTime": from.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    "toDateTime": to.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                }}),
                0,
            ),
            Filter::Everything => (serde_json::json!({}), 0),
            Filter::ReviewDates(from, to) => (
                serde_json::json!({"filter": {
                    "reviewFromDate": from.format("%Y-%m-%d").to_string(),
                    "reviewToDate": to.format("%Y-%m-%d").to_string(),
                }}),
                0,
            ),
        };
        if let Endpoint::Extensive | Endpoint::List = endpoint {
            body["contentSelector"] = self.config.content_selector.clone();
        }
        // `GET /v2/users` takes its cursor in the query string; the POST endpoints in the body.
        let get = matches!(endpoint, Endpoint::Users);
        if let (Some(cursor), false) = (cursor, get) {
            body["cursor"] = Value::String(cursor.to_string());
        }
        self.limiter.acquire(priority).await?;
        if ids > 0 {
            metrics::calls_per_request(ids);
        }
        let url = format!("{}{}", self.config.base_url, endpoint.path());
        let started = Instant::now();
        let request = if get {
            match cursor {
                Some(cursor) => self
                    .http
                    .get(format!("{url}?cursor={}", percent_encode(cursor))),
                None => self.http.get(&url),
            }
        } else {
            self.http.post(&url).json(&body)
        };
        let sent = request
            .basic_auth(
                &self.config.access_key,
                Some(&self.config.access_key_secret),
            )
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(source) => {
                let label = if source.is_timeout() {
                    "timeout"
                } else {
                    "error"
                };
                metrics::api_request(endpoint.label(), label, started.elapsed());
                return Err(GongError::Transport { endpoint, source });
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|text| text.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let bytes = match response.bytes().await {
            Ok(bytes) => bytes,
            Err(source) => {
                metrics::api_request(endpoint.label(), "error", started.elapsed());
                return Err(GongError::Transport { endpoint, source });
            }
        };
        metrics::api_request(endpoint.label(), status.as_str(), started.elapsed());
        tracing::debug!(
            endpoint = endpoint.label(),
            status = status.as_u16(),
            call_ids = ids,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "gong answered"
        );
        match status.as_u16() {
            200..=299 => parse_page(endpoint, &bytes),
            404 => Ok(Page {
                items: Vec::new(),
                cursor: None,
                total: Some(0),
            }),
            401 | 403 => Err(GongError::Auth {
                endpoint,
                status: status.as_u16(),
            }),
            429 => {
                metrics::rate_limited();
                let retry_after = retry_after.unwrap_or(Duration::from_secs(1));
                if let Err(err) = self.limiter.pause_for(retry_after).await {
                    tracing::warn!(error = %err, "cannot record gong's pause in the quota bucket");
                }
                Err(GongError::RateLimited {
                    endpoint,
                    retry_after,
                })
            }
            500..=599 => Err(GongError::Server {
                endpoint,
                status: status.as_u16(),
            }),
            other => {
                let detail = serde_json::from_slice::<ErrorBody>(&bytes)
                    .ok()
                    .and_then(|body| body.errors.into_iter().next())
                    .map(|error| match error {
                        Value::String(text) => text,
                        other => other.to_string(),
                    })
                    .unwrap_or_else(|| "no error message".to_string());
                Err(GongError::Rejected {
                    endpoint,
                    status: other,
                    detail: detail.chars().take(300).collect(),
                })
            }
        }
    }
}

fn parse_page(endpoint: Endpoint, bytes: &[u8]) -> Result<Page, GongError> {
    let envelope: Envelope = serde_json::from_slice(bytes).map_err(|err| GongError::Malformed {
        endpoint,
        detail: format!("not the documented JSON envelope: {err}"),
    })?;
    let items = match endpoint {
        Endpoint::Extensive | Endpoint::List => envelope.calls,
        Endpoint::Transcript => envelope.call_transcripts,
        Endpoint::Users => envelope.users,
        Endpoint::Scorecards => envelope.answered_scorecards,
    };
    let Some(items) = items else {
        return Err(GongError::Malformed {
            endpoint,
            detail: "the answer has no items array".to_string(),
        });
    };
    let total = envelope
        .records
        .as_ref()
        .and_then(|records| u64::try_from(records.total_records).ok());
    let cursor = envelope
        .records
        .and_then(|records| records.cursor)
        .filter(|cursor| !cursor.is_empty());
    Ok(Page {
        items,
        cursor,
        total,
    })
}

/// `text` as a query-string value: every byte but RFC 3986's unreserved ones percent-encoded.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn item_id(item: &Value, pointer: &str) -> Option<String> {
    match item.pointer(pointer)? {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

/// Capped exponential backoff with jitter: `base * 2^failures`, capped, then between half and
/// all of it.
pub fn backoff(failures: u32, base: Duration, max: Duration) -> Duration {
    let exponential = base.saturating_mul(2u32.saturating_pow(failures.min(20)));
    jittered(exponential.min(max))
}

fn jittered(delay: Duration) -> Duration {
    let half = delay / 2;
    let spread = half.as_millis() as u64;
    half + Duration::from_millis(rand::rng().random_range(0..=spread))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        for failures in 0..10 {
            let delay = backoff(failures, base, max);
            let ceiling = base.saturating_mul(1 << failures).min(max);
            assert!(
                delay <= ceiling && delay >= ceiling / 2,
                "{failures}: {delay:?}"
            );
        }
    }

    #[test]
    fn query_cursors_are_percent_encoded() {
        assert_eq!(percent_encode("aB3-_.~"), "aB3-_.~");
        assert_eq!(percent_encode("a+b/c=="), "a%2Bb%2Fc%3D%3D");
    }

    #[test]
    fn entity_pages_read_their_own_items() {
        let users = parse_page(
            Endpoint::Users,
            br#"{"records":{"totalRecords":3,"cursor":"n"},"users":[{"id":1},{"id":"2"}]}"#,
        )
        .unwrap();
        assert_eq!((users.items.len(), users.cursor.as_deref()), (2, Some("n")));
        let cards = parse_page(
            Endpoint::Scorecards,
            br#"{"records":{"totalRecords":1},"answeredScorecards":[{"answeredScorecardId":5}]}"#,
        )
        .unwrap();
        assert_eq!((cards.items.len(), cards.cursor), (1, None));
        assert!(matches!(
            parse_page(Endpoint::Users, br#"{"records":{},"calls":[]}"#),
            Err(GongError::Malformed { .. })
        ));
    }

    #[test]
    fn pages_need_their_items_and_keep_the_cursor() {
        let page = parse_page(
            Endpoint::Extensive,
            br#"{"requestId":"r","records":{"totalRecords":2,"currentPageSize":1,"currentPageNumber":0,"cursor":"c1"},"calls":[{"metaData":{"id":"1"}}]}"#,
        )
        .unwrap();
        assert_eq!(page.cursor.as_deref(), Some("c1"));
        assert_eq!(page.items.len(), 1);
        assert!(matches!(
            parse_page(Endpoint::Transcript, br#"{"requestId":"r","records":{}}"#),
            Err(GongError::Malformed { .. })
        ));
        assert!(matches!(
            parse_page(Endpoint::Extensive, br#"{"requestId":"r","recor"#),
            Err(GongError::Malformed { .. })
        ));
    }
}
