//! Snowflake: the setup SQL generated from [`crate::schema`], and the optional Snowpipe REST
//! client (`insertFiles`, `insertReport`, `loadHistoryScan`) with key-pair JWT authentication.
//! What is notified when, and how each file's load is followed, is `verify.rs`.
//!
//! JSON columns (`*_json`) are `VARCHAR` in the tables, exactly as staged; the views parse them
//! with `TRY_PARSE_JSON`. The views hide duplicates: one row per call, user and answered
//! scorecard (the latest enrichment or fetch: the greatest `ENRICHED_STREAM_SEQ`), and of each
//! child table only the rows of that enrichment, each once. Load history alone does not protect
//! analysts (Snowflake forgets loaded names after 64 days for COPY, 14 for Snowpipe; an event
//! enriched twice is two sets of rows under different names): the views do.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine;
use gong_common::{ConfigError, Env};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::schema::{Kind, Latest, Table, ENRICHED_SEQ_COLUMN, SCHEMA_VERSION};

/// Name of the file format in the setup SQL.
pub const FILE_FORMAT: &str = "GONG_PARQUET";
/// Name of the example external stage in the setup SQL.
pub const STAGE: &str = "GONG_STAGE";

/// The Snowflake name of `table`.
pub fn table_ident(table: Table) -> String {
    table.name().to_ascii_uppercase()
}

/// The pipe that loads `table` in the setup SQL.
pub fn pipe_ident(table: Table) -> String {
    format!("GONG_{}_PIPE", table.name().to_ascii_uppercase())
}

/// The view that hides duplicates of `table`.
pub fn view_ident(table: Table) -> String {
    format!("{}_LATEST", table.name().to_ascii_uppercase())
}

fn sql_string(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Name of the storage integration the example stage uses.
pub const STORAGE_INTEGRATION: &str = "GONG_STAGE_INTEGRATION";

/// The alias under which a view exposes the parsed JSON of `column` (`EXTRA_JSON` → `EXTRA`).
pub fn parsed_json_alias(column: &str) -> String {
    let upper = column.to_ascii_uppercase();
    match upper.trim_end_matches("_JSON") {
        // VALUE is a keyword-like name in Snowflake; keep the alias unambiguous.
        "VALUE" => "FIELD_VALUE".to_string(),
        other => other.to_string(),
    }
}

/// The `SELECT` list of a view over `alias`'s rows: every column, then each JSON column parsed.
fn view_select(table: Table, alias: &str) -> String {
    let mut select = format!("{alias}.*");
    for column in table.columns().iter().filter(|c| c.kind == Kind::Json) {
        let _ = write!(
            select,
            ", TRY_PARSE_JSON({alias}.{}) AS {}",
            column.name.to_ascii_uppercase(),
            parsed_json_alias(column.name)
        );
    }
    select
}

/// The `CREATE OR REPLACE VIEW` of `table`'s `*_LATEST` view.
pub fn view_sql(table: Table) -> String {
    let seq = ENRICHED_SEQ_COLUMN.to_ascii_uppercase();
    match table.latest() {
        Latest::Entity { key } => format!(
            "-- One row per {key_upper}: its latest enrichment or fetch (the greatest {seq}).\n\
             CREATE OR REPLACE VIEW {view} AS\n\
             SELECT {select}\n\
             FROM {table} t\n\
             QUALIFY ROW_NUMBER() OVER (PARTITION BY t.{key_upper} ORDER BY t.{seq} DESC) = 1;\n",
            key_upper = key.to_ascii_uppercase(),
            view = view_ident(table),
            select = view_select(table, "t"),
            table = table_ident(table),
        ),
        Latest::Child { parent, key } => format!(
            "-- Rows of the latest enrichment or fetch of each {parent_name} (same {key_upper} and\n\
             -- {seq} as {parent_view}), each distinct row once.\n\
             CREATE OR REPLACE VIEW {view} AS\n\
             SELECT {select}\n\
             FROM (\n  SELECT DISTINCT t.*\n  FROM {table} t\n  \
             JOIN {parent_view} p ON t.{key_upper} = p.{key_upper} AND t.{seq} = p.{seq}\n) d;\n",
            parent_name = match parent {
                Table::AnsweredScorecards => "answered scorecard",
                _ => "call",
            },
            key_upper = key.to_ascii_uppercase(),
            parent_view = view_ident(parent),
            view = view_ident(table),
            select = view_select(table, "d"),
            table = table_ident(table),
        ),
    }
}

/// The `CREATE TABLE IF NOT EXISTS` of `table`.
pub fn table_sql(table: Table) -> String {
    let mut sql = format!("CREATE TABLE IF NOT EXISTS {} (\n", table_ident(table));
    let columns = table.columns();
    for (index, column) in columns.iter().enumerate() {
        let not_null = if column.nullable { "" } else { " NOT NULL" };
        let comma = if index + 1 < columns.len() { "," } else { "" };
        let _ = writeln!(
            sql,
            "  {} {}{} COMMENT {}{}",
            column.name.to_ascii_uppercase(),
            column.kind.snowflake_type(),
            not_null,
            sql_string(column.doc),
            comma
        );
    }
    sql.push_str(");\n");
    sql
}

/// The COPY statement of `table`'s pipe (what a scheduled COPY runs without Snowpipe).
pub fn copy_sql(table: Table) -> String {
    format!(
        "COPY INTO {table}\n  FROM @{STAGE}/{folder}/\n  FILE_FORMAT = (FORMAT_NAME = '{FILE_FORMAT}')\n  MATCH_BY_COLUMN_NAME = CASE_INSENSITIVE",
        table = table_ident(table),
        folder = table.name(),
    )
}

/// The setup SQL: file format, example stage, tables, pipes and de-duplicating views.
/// `deploy/snowflake/setup.sql` is this text, kept equal by a test.
pub fn setup_sql() -> String {
    let mut sql = String::new();
    let _ = writeln!(
        sql,
        "-- gong-pipeline: Snowflake objects for the staged Parquet tables (schema version {SCHEMA_VERSION}).\n\
         -- Generated by `gong-load snowflake-sql`; do not edit by hand (a test keeps this file equal\n\
         -- to the generated text). Run it in the database and schema of your choice:\n\
         --   USE SCHEMA <database>.<schema>;\n\
         -- Upgrading from an earlier schema version: docs/operations.md, \"Snowflake schema upgrades\".\n\
         --\n\
         -- Query the *_LATEST views, not the tables. gong-load names each file after its range of\n\
         -- GONG_ENRICHED sequences and never reuses a name for other content, and Snowflake skips a\n\
         -- file it has loaded, but only while it remembers it (64 days of load metadata for COPY, 14\n\
         -- for Snowpipe): a file loaded again after that (a replay, COPY ... FORCE, a refreshed pipe)\n\
         -- repeats its rows, and an event enriched twice (a repeated webhook, a transcript recheck,\n\
         -- a replay) is two sets of rows. The views keep one row per call, user and answered\n\
         -- scorecard, its latest enrichment or fetch (the greatest ENRICHED_STREAM_SEQ), and of\n\
         -- each child table only that enrichment's rows, each once. The tables keep history.\n\
         --\n\
         -- Times: TIMESTAMP_TZ columns are instants shown in the session's TIMEZONE (Snowpipe loads\n\
         -- with the account default, often America/Los_Angeles), so <column>::DATE is that zone's\n\
         -- day. The *_DATE_UTC columns are UTC days in every session; CONVERT_TIMEZONE('UTC', <column>)\n\
         -- gives any instant in UTC. JSON columns (*_JSON) are VARCHAR, as staged; the views parse\n\
         -- them (EXTRA_JSON as EXTRA, VALUE_JSON as FIELD_VALUE, SELECTED_OPTIONS_JSON as\n\
         -- SELECTED_OPTIONS). Load through the pipes (Snowpipe) or run their COPY statements.\n"
    );
    let _ = writeln!(
        sql,
        "CREATE FILE FORMAT IF NOT EXISTS {FILE_FORMAT}\n  TYPE = PARQUET\n  USE_VECTORIZED_SCANNER = TRUE;\n"
    );
    let _ = writeln!(
        sql,
        "-- The stage points at gong-load's STAGE_URL. Example for S3 with a storage integration\n\
         -- (CREATE STORAGE INTEGRATION {STORAGE_INTEGRATION} ..., or name yours); see CREATE STAGE\n\
         -- for GCS (gcs://) and Azure (azure://).\n\
         CREATE STAGE IF NOT EXISTS {STAGE}\n  URL = 's3://<bucket>/<prefix>/'\n  STORAGE_INTEGRATION = {STORAGE_INTEGRATION}\n  FILE_FORMAT = {FILE_FORMAT};\n"
    );
    for table in Table::ALL {
        let _ = writeln!(sql, "{}", table_sql(table));
    }
    for table in Table::ALL {
        let _ = writeln!(
            sql,
            "CREATE PIPE IF NOT EXISTS {pipe} AS\n  {copy};\n",
            pipe = pipe_ident(table),
            copy = copy_sql(table),
        );
    }
    for table in Table::ALL {
        let _ = writeln!(sql, "{}", view_sql(table));
    }
    sql.truncate(sql.trim_end().len());
    sql.push('\n');
    sql
}

/// Snowpipe settings (`SNOWFLAKE_*`).
#[derive(Clone)]
pub struct SnowpipeConfig {
    /// `SNOWFLAKE_ACCOUNT` (account identifier; upper-cased, region suffix dropped, in JWTs).
    pub account: String,
    /// `SNOWFLAKE_USER`.
    pub user: String,
    /// The key from `SNOWFLAKE_PRIVATE_KEY_PATH` (unencrypted PKCS#8 PEM), parsed once.
    pub key: Arc<SnowflakeKey>,
    /// `SNOWFLAKE_PIPE`: fully qualified pipe name with `{table}` or `{TABLE}`, e.g.
    /// `DB.SCHEMA.GONG_{TABLE}_PIPE`.
    pub pipe: String,
    /// `SNOWFLAKE_PIPE_URL` (default `https://<account>.snowflakecomputing.com`).
    pub base_url: String,
    /// `SNOWFLAKE_NOTIFY_ATTEMPTS` (default 5): `insertFiles` attempts per notification round.
    pub attempts: u32,
    /// `SNOWFLAKE_VERIFY_TIMEOUT` (default `1h`): a notified file Snowpipe has reported no
    /// outcome for after this long is notified once more, and after as long again reported as
    /// `unknown`.
    pub verify_timeout: Duration,
    /// `SNOWFLAKE_VERIFY_POLL` (default `30s`, at most `5m`): how often the notifier sends
    /// pending notifications and reads `insertReport` while files wait for their outcome.
    pub verify_poll: Duration,
}

impl std::fmt::Debug for SnowpipeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnowpipeConfig")
            .field("account", &self.account)
            .field("user", &self.user)
            .field("pipe", &self.pipe)
            .field("base_url", &self.base_url)
            .field("key_fingerprint", &self.key.fingerprint)
            .field("attempts", &self.attempts)
            .field("verify_timeout", &self.verify_timeout)
            .field("verify_poll", &self.verify_poll)
            .finish()
    }
}

impl SnowpipeConfig {
    /// `None` unless `SNOWFLAKE_ACCOUNT`, `SNOWFLAKE_USER`, `SNOWFLAKE_PRIVATE_KEY_PATH` and
    /// `SNOWFLAKE_PIPE` are all set; an error when only some are.
    pub fn from_env(env: &Env) -> Result<Option<SnowpipeConfig>, ConfigError> {
        let vars = [
            "SNOWFLAKE_ACCOUNT",
            "SNOWFLAKE_USER",
            "SNOWFLAKE_PRIVATE_KEY_PATH",
            "SNOWFLAKE_PIPE",
        ];
        let set: Vec<&str> = vars
            .iter()
            .copied()
            .filter(|var| env.get(var).is_some())
            .collect();
        if set.is_empty() {
            return Ok(None);
        }
        if let Some(missing) = vars.iter().find(|var| env.get(var).is_none()) {
            return Err(ConfigError::new(
                *missing,
                "is required when any SNOWFLAKE_* Snowpipe variable is set",
            ));
        }
        let account = env.required("SNOWFLAKE_ACCOUNT")?;
        let user = env.required("SNOWFLAKE_USER")?;
        let pipe = env.required("SNOWFLAKE_PIPE")?;
        if !(pipe.contains("{table}") || pipe.contains("{TABLE}")) {
            return Err(ConfigError::new(
                "SNOWFLAKE_PIPE",
                "must name one pipe per table with {TABLE}, e.g. DB.SCHEMA.GONG_{TABLE}_PIPE",
            ));
        }
        let path = env.required("SNOWFLAKE_PRIVATE_KEY_PATH")?;
        let pem = std::fs::read_to_string(&path).map_err(|err| {
            ConfigError::new(
                "SNOWFLAKE_PRIVATE_KEY_PATH",
                format!("cannot be read: {err}"),
            )
        })?;
        let key = SnowflakeKey::from_pem(&pem)
            .map_err(|reason| ConfigError::new("SNOWFLAKE_PRIVATE_KEY_PATH", reason))?;
        let base_url = env
            .get("SNOWFLAKE_PIPE_URL")
            .map(|url| url.trim_end_matches('/').to_string())
            .unwrap_or_else(|| {
                format!(
                    "https://{}.snowflakecomputing.com",
                    account.to_ascii_lowercase()
                )
            });
        let verify_timeout =
            env.duration_or("SNOWFLAKE_VERIFY_TIMEOUT", Duration::from_secs(3600))?;
        if verify_timeout < Duration::from_secs(1) {
            return Err(ConfigError::new(
                "SNOWFLAKE_VERIFY_TIMEOUT",
                "must be at least 1s",
            ));
        }
        let verify_poll = env.duration_or("SNOWFLAKE_VERIFY_POLL", Duration::from_secs(30))?;
        if verify_poll.is_zero() || verify_poll > Duration::from_secs(300) {
            return Err(ConfigError::new(
                "SNOWFLAKE_VERIFY_POLL",
                "must be between 1ms and 5m (insertReport keeps 10 minutes of events)",
            ));
        }
        Ok(Some(SnowpipeConfig {
            account,
            user,
            key: Arc::new(key),
            pipe,
            base_url,
            attempts: env.positive_or("SNOWFLAKE_NOTIFY_ATTEMPTS", 5)?,
            verify_timeout,
            verify_poll,
        }))
    }

    /// The pipe loading `table`.
    pub fn pipe_for(&self, table: Table) -> String {
        self.pipe
            .replace("{table}", table.name())
            .replace("{TABLE}", &table.name().to_ascii_uppercase())
    }
}

/// A Snowflake user's RSA key: signs key-pair JWTs.
pub struct SnowflakeKey {
    encoding: EncodingKey,
    /// `SHA256:<base64 of the SHA-256 of the public key's SPKI DER>`.
    pub fingerprint: String,
}

impl SnowflakeKey {
    /// Parses an unencrypted PKCS#8 (`BEGIN PRIVATE KEY`) or PKCS#1 (`BEGIN RSA PRIVATE KEY`)
    /// PEM and derives the public key fingerprint Snowflake expects in `iss`.
    pub fn from_pem(pem: &str) -> Result<SnowflakeKey, String> {
        if pem.contains("ENCRYPTED") {
            return Err(
                "encrypted private keys are not supported; decrypt it with openssl pkcs8".into(),
            );
        }
        let body: String = pem
            .lines()
            .filter(|line| !line.starts_with("-----"))
            .map(str::trim)
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|_| "is not a PEM private key".to_string())?;
        let pair = if pem.contains("BEGIN RSA PRIVATE KEY") {
            aws_lc_rs::rsa::KeyPair::from_der(&der)
        } else {
            aws_lc_rs::rsa::KeyPair::from_pkcs8(&der)
        }
        .map_err(|err| format!("is not an RSA private key: {err}"))?;
        let spki = pair
            .public_key()
            .as_der()
            .map_err(|_| "cannot encode the public key".to_string())?;
        let digest = sha2::Sha256::digest(spki.as_ref());
        let fingerprint = format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD.encode(digest)
        );
        let encoding = EncodingKey::from_rsa_pem(pem.as_bytes())
            .map_err(|err| format!("cannot be used for RS256: {err}"))?;
        Ok(SnowflakeKey {
            encoding,
            fingerprint,
        })
    }
}

/// The claims of a Snowflake key-pair JWT.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JwtClaims {
    /// `ACCOUNT.USER.SHA256:<fingerprint>`.
    pub iss: String,
    /// `ACCOUNT.USER`.
    pub sub: String,
    /// Issued at (seconds since the epoch).
    pub iat: i64,
    /// Expiry, under one hour after `iat`.
    pub exp: i64,
}

/// The account part of a JWT subject: upper case, without a region or cloud suffix.
pub fn jwt_account(account: &str) -> String {
    account
        .split('.')
        .next()
        .unwrap_or(account)
        .to_ascii_uppercase()
}

/// Signs a key-pair JWT valid for 59 minutes from `now` (seconds since the epoch).
pub fn key_pair_jwt(
    account: &str,
    user: &str,
    key: &SnowflakeKey,
    now: i64,
) -> Result<String, jsonwebtoken::errors::Error> {
    let subject = format!("{}.{}", jwt_account(account), user.to_ascii_uppercase());
    let claims = JwtClaims {
        iss: format!("{subject}.{}", key.fingerprint),
        sub: subject,
        iat: now,
        exp: now + 59 * 60,
    };
    jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &key.encoding)
}

/// A Snowpipe REST endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/data/pipes/<pipe>/insertFiles`: queue files for loading.
    InsertFiles,
    /// `GET /v1/data/pipes/<pipe>/insertReport`: load events of the last 10 minutes.
    InsertReport,
    /// `GET /v1/data/pipes/<pipe>/loadHistoryScan`: loads between two times (14 days back).
    LoadHistoryScan,
}

impl Endpoint {
    /// The path segment (and log field).
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::InsertFiles => "insertFiles",
            Endpoint::InsertReport => "insertReport",
            Endpoint::LoadHistoryScan => "loadHistoryScan",
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Snowpipe REST call failed. Never carries the JWT or the key.
#[derive(Debug, thiserror::Error)]
pub enum SnowpipeError {
    /// The key-pair JWT could not be signed (the key is unusable: no retry helps).
    #[error("cannot sign the key-pair jwt: {0}")]
    Sign(#[source] jsonwebtoken::errors::Error),
    /// No answer: connection refused, TLS, timeout.
    #[error("snowpipe {endpoint} for {pipe}: {source}")]
    Request {
        /// Endpoint.
        endpoint: Endpoint,
        /// Pipe.
        pipe: String,
        /// Cause.
        #[source]
        source: reqwest::Error,
    },
    /// An HTTP error status, with Snowflake's code and message when the body had them.
    #[error("snowpipe {endpoint} for {pipe} answered http {status}: {reason}")]
    Status {
        /// Endpoint.
        endpoint: Endpoint,
        /// Pipe.
        pipe: String,
        /// HTTP status.
        status: u16,
        /// Snowflake's `code` and `message` (truncated), or empty.
        reason: String,
    },
    /// A 200 whose body is not what the endpoint answers (or `responseCode` is not `SUCCESS`).
    #[error("snowpipe {endpoint} for {pipe} answered an unexpected body: {detail}")]
    Answer {
        /// Endpoint.
        endpoint: Endpoint,
        /// Pipe.
        pipe: String,
        /// What was wrong.
        detail: String,
    },
}

impl SnowpipeError {
    /// True when the same call may succeed later: no answer, 5xx, 408, 429, an odd body.
    /// False for the key, and for 4xx (bad JWT, unknown pipe, missing grants) that only an
    /// operator fixes; those are still tried again by the notifier, only less often.
    pub fn is_retryable(&self) -> bool {
        match self {
            SnowpipeError::Sign(_) => false,
            SnowpipeError::Request { .. } | SnowpipeError::Answer { .. } => true,
            SnowpipeError::Status { status, .. } => {
                *status >= 500 || *status == 408 || *status == 429
            }
        }
    }
}

/// One file in an `insertReport` or `loadHistoryScan` answer (Snowflake's field names). Every
/// field but `path` may be missing; unknown fields are ignored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ReportedFile {
    /// Path relative to the pipe's stage, as given to `insertFiles`.
    pub path: String,
    /// The stage (or bucket) the pipe reads.
    pub stage_location: Option<String>,
    /// Bytes.
    pub file_size: Option<u64>,
    /// When Snowpipe queued the file (ISO 8601 UTC).
    pub time_received: Option<String>,
    /// When rows of the file were last inserted (ISO 8601 UTC).
    pub last_insert_time: Option<String>,
    /// Rows inserted into the table.
    pub rows_inserted: Option<u64>,
    /// Rows parsed from the file.
    pub rows_parsed: Option<u64>,
    /// Errors seen.
    pub errors_seen: Option<u64>,
    /// Errors allowed before the file fails (the pipe's ON_ERROR).
    pub error_limit: Option<u64>,
    /// Whether processing of the file finished.
    pub complete: Option<bool>,
    /// `LOAD_IN_PROGRESS`, `LOADED`, `LOAD_FAILED` or `PARTIALLY_LOADED`.
    pub status: String,
    /// The first error's message.
    pub first_error: Option<String>,
    /// Its line.
    pub first_error_line_num: Option<u64>,
    /// Its character position.
    pub first_error_character_pos: Option<u64>,
    /// Its column.
    pub first_error_column_name: Option<String>,
    /// Why the file was not processed at all.
    pub system_error: Option<String>,
}

/// The answer of `insertReport`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct InsertReport {
    /// The pipe.
    pub pipe: Option<String>,
    /// False when events were missed between the given `beginMark` and the first event here
    /// (older than 10 minutes, or beyond the 10,000 kept).
    pub complete_result: bool,
    /// The `beginMark` of the next call.
    pub next_begin_mark: Option<String>,
    /// Load events.
    pub files: Vec<ReportedFile>,
}

/// The answer of `loadHistoryScan`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LoadHistory {
    /// The pipe.
    pub pipe: Option<String>,
    /// False when there is more in the window: ask again from `range_end_time`.
    pub complete_result: bool,
    /// The window asked for.
    pub start_time_inclusive: Option<String>,
    /// The window asked for.
    pub end_time_exclusive: Option<String>,
    /// Time of the first entry returned.
    pub range_start_time: Option<String>,
    /// Time of the last entry returned.
    pub range_end_time: Option<String>,
    /// Loads in the window.
    pub files: Vec<ReportedFile>,
}

/// The answer of `insertFiles`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct InsertFilesAnswer {
    response_code: Option<String>,
}

/// Snowflake's error body (`{"code": "390144", "message": "JWT token is invalid.", ...}`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ErrorBody {
    code: Option<serde_json::Value>,
    message: Option<String>,
}

/// Snowpipe REST client.
#[derive(Clone)]
pub struct Snowpipe {
    config: SnowpipeConfig,
    http: reqwest::Client,
}

#[derive(Serialize)]
struct InsertFiles<'a> {
    files: Vec<InsertFile<'a>>,
}

#[derive(Serialize)]
struct InsertFile<'a> {
    path: &'a str,
}

/// Time as Snowflake's REST API writes it: ISO 8601 UTC with milliseconds.
pub fn snowflake_time(time: chrono::DateTime<chrono::Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Snowpipe {
    /// A client for `config`.
    pub fn new(config: SnowpipeConfig) -> Snowpipe {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        Snowpipe { config, http }
    }

    /// The configuration.
    pub fn config(&self) -> &SnowpipeConfig {
        &self.config
    }

    /// Tells `table`'s pipe about `paths` (relative to the Snowflake stage; at most 5,000),
    /// with up to `SNOWFLAKE_NOTIFY_ATTEMPTS` attempts and backoff for retryable failures.
    /// `Ok` means Snowpipe queued them, not that they are loaded.
    pub async fn insert_files(&self, table: Table, paths: &[String]) -> Result<(), SnowpipeError> {
        let pipe = self.config.pipe_for(table);
        let body = InsertFiles {
            files: paths.iter().map(|path| InsertFile { path }).collect(),
        };
        let body = serde_json::to_vec(&body).unwrap_or_default();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = self
                .call::<InsertFilesAnswer>(Endpoint::InsertFiles, &pipe, &[], Some(&body))
                .await
                .and_then(|answer| match answer.response_code.as_deref() {
                    Some("SUCCESS") => Ok(()),
                    other => Err(SnowpipeError::Answer {
                        endpoint: Endpoint::InsertFiles,
                        pipe: pipe.clone(),
                        detail: format!("responseCode {}", other.unwrap_or("missing")),
                    }),
                });
            match outcome {
                Ok(()) => {
                    tracing::info!(pipe = %pipe, files = paths.len(), "snowpipe notified");
                    return Ok(());
                }
                Err(err) if err.is_retryable() && attempt < self.config.attempts => {
                    let backoff = Duration::from_millis(200 * 2u64.pow(attempt.min(6)));
                    tracing::warn!(pipe = %pipe, attempt, error = %err, "snowpipe notification failed, retrying");
                    tokio::time::sleep(backoff).await;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// `insertReport` of `table`'s pipe from `begin_mark` (none: every event Snowflake still
    /// keeps, the last 10 minutes).
    pub async fn insert_report(
        &self,
        table: Table,
        begin_mark: Option<&str>,
    ) -> Result<InsertReport, SnowpipeError> {
        let pipe = self.config.pipe_for(table);
        let mut query = Vec::new();
        if let Some(mark) = begin_mark {
            query.push(("beginMark", mark.to_string()));
        }
        self.call(Endpoint::InsertReport, &pipe, &query, None).await
    }

    /// One page of `loadHistoryScan` of `table`'s pipe for `start..end` (Snowflake's clock).
    pub async fn load_history_scan(
        &self,
        table: Table,
        start: chrono::DateTime<chrono::Utc>,
        end: chrono::DateTime<chrono::Utc>,
    ) -> Result<LoadHistory, SnowpipeError> {
        self.load_history_page(table, &snowflake_time(start), &snowflake_time(end))
            .await
    }

    /// One page of `loadHistoryScan` with the times as Snowflake wrote them (paging goes on
    /// from an answer's `rangeEndTime`).
    pub async fn load_history_page(
        &self,
        table: Table,
        start: &str,
        end: &str,
    ) -> Result<LoadHistory, SnowpipeError> {
        let pipe = self.config.pipe_for(table);
        let query = [
            ("startTimeInclusive", start.to_string()),
            ("endTimeExclusive", end.to_string()),
        ];
        self.call(Endpoint::LoadHistoryScan, &pipe, &query, None)
            .await
    }

    /// One authenticated call: POST with `body`, else GET; the answer parsed as `T`.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        endpoint: Endpoint,
        pipe: &str,
        query: &[(&str, String)],
        body: Option<&[u8]>,
    ) -> Result<T, SnowpipeError> {
        let url = format!(
            "{}/v1/data/pipes/{}/{}",
            self.config.base_url,
            pipe,
            endpoint.as_str()
        );
        let mut url = url::Url::parse(&url).map_err(|err| SnowpipeError::Answer {
            endpoint,
            pipe: pipe.to_string(),
            detail: format!("bad url: {err}"),
        })?;
        {
            let mut pairs = url.query_pairs_mut();
            pairs.append_pair("requestId", &uuid::Uuid::now_v7().to_string());
            for (name, value) in query {
                pairs.append_pair(name, value);
            }
        }
        let token = key_pair_jwt(
            &self.config.account,
            &self.config.user,
            &self.config.key,
            chrono::Utc::now().timestamp(),
        )
        .map_err(SnowpipeError::Sign)?;
        let request = match body {
            Some(body) => self
                .http
                .post(url)
                .header("Content-Type", "application/json")
                .body(body.to_vec()),
            None => self.http.get(url),
        };
        let request_error = |source| SnowpipeError::Request {
            endpoint,
            pipe: pipe.to_string(),
            source,
        };
        let response = request
            .bearer_auth(token)
            .header("X-Snowflake-Authorization-Token-Type", "KEYPAIR_JWT")
            .header("Accept", "application/json")
            .send()
            .await
            .map_err(request_error)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(request_error)?;
        if !status.is_success() {
            let reason = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|body| {
                    let code = body.code.map(|code| match code {
                        serde_json::Value::String(code) => code,
                        other => other.to_string(),
                    });
                    match (code, body.message) {
                        (Some(code), Some(message)) => format!("{code} {message}"),
                        (None, Some(message)) => message,
                        (Some(code), None) => code,
                        (None, None) => String::new(),
                    }
                })
                .unwrap_or_default();
            return Err(SnowpipeError::Status {
                endpoint,
                pipe: pipe.to_string(),
                status: status.as_u16(),
                reason: truncate(&reason, 200),
            });
        }
        serde_json::from_slice(&bytes).map_err(|err| SnowpipeError::Answer {
            endpoint,
            pipe: pipe.to_string(),
            detail: err.to_string(),
        })
    }
}

/// `text` cut to at most `max` characters.
pub fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((index, _)) => format!("{}...", &text[..index]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_is_upper_case_without_region() {
        assert_eq!(jwt_account("xy12345.us-east-1"), "XY12345");
        assert_eq!(jwt_account("myorg-acct"), "MYORG-ACCT");
    }

    #[test]
    fn sql_mentions_every_table_pipe_and_view() {
        let sql = setup_sql();
        for table in Table::ALL {
            assert!(sql.contains(&format!(
                "CREATE TABLE IF NOT EXISTS {} (",
                table_ident(table)
            )));
            assert!(sql.contains(&pipe_ident(table)));
            assert!(sql.contains(&view_ident(table)));
            assert!(sql.contains(&format!("FROM @{STAGE}/{}/", table.name())));
        }
        assert!(sql.contains("STARTED TIMESTAMP_TZ"));
        assert!(sql.contains("STARTED_DATE_UTC DATE"));
        assert!(
            sql.contains("START_MS NUMBER(38,0) COMMENT"),
            "start_ms is nullable"
        );
        assert!(sql.contains(
            "JOIN CALLS_LATEST p ON t.CALL_ID = p.CALL_ID AND t.ENRICHED_STREAM_SEQ = p.ENRICHED_STREAM_SEQ"
        ));
        assert!(sql.contains(
            "JOIN ANSWERED_SCORECARDS_LATEST p ON t.ANSWERED_SCORECARD_ID = p.ANSWERED_SCORECARD_ID"
        ));
        assert!(sql.contains("PARTITION BY t.USER_ID ORDER BY t.ENRICHED_STREAM_SEQ DESC"));
        assert!(sql.contains("TRY_PARSE_JSON(d.SELECTED_OPTIONS_JSON) AS SELECTED_OPTIONS"));
        assert!(sql.contains("IS_PRIVATE BOOLEAN"));
        assert!(sql.contains("USE_VECTORIZED_SCANNER = TRUE"));
        assert!(sql.contains("MATCH_BY_COLUMN_NAME = CASE_INSENSITIVE"));
    }
}
