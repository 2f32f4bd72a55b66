//! Snowflake: the setup SQL generated from [`crate::schema`], and the optional Snowpipe
//! `insertFiles` notification with key-pair JWT authentication.
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
    /// `SNOWFLAKE_NOTIFY_ATTEMPTS` (default 5).
    pub attempts: u32,
}

impl std::fmt::Debug for SnowpipeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnowpipeConfig")
            .field("account", &self.account)
            .field("user", &self.user)
            .field("pipe", &self.pipe)
            .field("base_url", &self.base_url)
            .field("key_fingerprint", &self.key.fingerprint)
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
        Ok(Some(SnowpipeConfig {
            account,
            user,
            key: Arc::new(key),
            pipe,
            base_url,
            attempts: env.positive_or("SNOWFLAKE_NOTIFY_ATTEMPTS", 5)?,
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

/// Snowpipe notification failed after every attempt (the files are on the stage regardless;
/// `ALTER PIPE ... REFRESH` or the next COPY picks them up).
#[derive(Debug, thiserror::Error)]
#[error("snowpipe insertFiles to {pipe} failed after {attempts} attempts: {reason}")]
pub struct NotifyError {
    /// Pipe.
    pub pipe: String,
    /// Attempts made.
    pub attempts: u32,
    /// Last failure.
    pub reason: String,
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

impl Snowpipe {
    /// A client for `config`.
    pub fn new(config: SnowpipeConfig) -> Snowpipe {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        Snowpipe { config, http }
    }

    /// Tells `table`'s pipe about `paths` (relative to the Snowflake stage), retrying
    /// transient failures with backoff.
    pub async fn insert_files(&self, table: Table, paths: &[String]) -> Result<(), NotifyError> {
        let pipe = self.config.pipe_for(table);
        let body = InsertFiles {
            files: paths.iter().map(|path| InsertFile { path }).collect(),
        };
        let mut last_reason = String::new();
        for attempt in 1..=self.config.attempts {
            let request_id = uuid::Uuid::now_v7();
            let url = format!(
                "{}/v1/data/pipes/{}/insertFiles?requestId={request_id}",
                self.config.base_url, pipe
            );
            let token = match key_pair_jwt(
                &self.config.account,
                &self.config.user,
                &self.config.key,
                chrono::Utc::now().timestamp(),
            ) {
                Ok(token) => token,
                Err(err) => {
                    return Err(NotifyError {
                        pipe,
                        attempts: attempt,
                        reason: format!("cannot sign jwt: {err}"),
                    })
                }
            };
            let response = self
                .http
                .post(&url)
                .bearer_auth(token)
                .header("X-Snowflake-Authorization-Token-Type", "KEYPAIR_JWT")
                .header("Accept", "application/json")
                .json(&body)
                .send()
                .await;
            match response {
                Ok(response) if response.status().is_success() => {
                    tracing::info!(pipe = %pipe, files = paths.len(), "snowpipe notified");
                    return Ok(());
                }
                Ok(response) => {
                    let status = response.status();
                    last_reason = format!("http {status}");
                    if status.is_client_error() && status.as_u16() != 429 && status.as_u16() != 408
                    {
                        break;
                    }
                }
                Err(err) => last_reason = err.to_string(),
            }
            let backoff = Duration::from_millis(200 * 2u64.pow(attempt.min(6)));
            tracing::warn!(pipe = %pipe, attempt, reason = %last_reason, "snowpipe notification failed, retrying");
            tokio::time::sleep(backoff).await;
        }
        Err(NotifyError {
            pipe,
            attempts: self.config.attempts,
            reason: last_reason,
        })
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
