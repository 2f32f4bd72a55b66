//! Stream, subject, consumer, bucket and header names.
//!
//! This module is the only place that spells them: every stage, tool and test refers to these
//! constants. They are part of the interface contract (shared/design.md §5).

/// Source of truth: webhook bodies exactly as Gong sent them.
pub const STREAM_RAW: &str = "GONG_RAW";
/// Subjects captured by [`STREAM_RAW`].
pub const SUBJECTS_RAW: &str = "gong.raw.>";
/// Real call webhooks (`isTest` false). The enricher consumes only this subject.
pub const SUBJECT_RAW_CALL: &str = "gong.raw.call";
/// Deliveries from the rule editor's "test now" (`isTest` true), kept for inspection only.
pub const SUBJECT_RAW_TEST: &str = "gong.raw.test";

/// Derived, rebuildable: one enriched event per raw call event, plus the Gong entities fetched
/// on a schedule (users, answered scorecards), one subject per entity.
pub const STREAM_ENRICHED: &str = "GONG_ENRICHED";
/// Subjects captured by [`STREAM_ENRICHED`]; the loader consumes all of them.
pub const SUBJECTS_ENRICHED: &str = "gong.enriched.>";
/// Enriched call events (`event::EnrichedEvent`).
pub const SUBJECT_ENRICHED_CALL: &str = "gong.enriched.call";
/// Gong users, one event per user per fetch (`event::EnrichedUser`).
pub const SUBJECT_ENRICHED_USER: &str = "gong.enriched.user";
/// Answered scorecards, one event per answered scorecard per fetch
/// (`event::EnrichedScorecard`).
pub const SUBJECT_ENRICHED_SCORECARD: &str = "gong.enriched.scorecard";

/// Events that need a human: payload untouched, reason in headers.
pub const STREAM_DLQ: &str = "GONG_DLQ";
/// Subjects captured by [`STREAM_DLQ`].
pub const SUBJECTS_DLQ: &str = "gong.dlq.>";

/// The stage an event failed in; the dead-letter subject is `gong.dlq.<stage>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Authenticated webhook whose body could not be understood.
    Ingest,
    /// Raw event that could not be enriched (call deleted, malformed answer).
    Enrich,
    /// Enriched event that could not be turned into rows.
    Load,
}

impl Stage {
    /// Lower-case stage name as used in subjects, headers and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Ingest => "ingest",
            Stage::Enrich => "enrich",
            Stage::Load => "load",
        }
    }

    /// Parses the name produced by [`Stage::as_str`].
    pub fn parse(name: &str) -> Option<Stage> {
        match name {
            "ingest" => Some(Stage::Ingest),
            "enrich" => Some(Stage::Enrich),
            "load" => Some(Stage::Load),
            _ => None,
        }
    }

    /// The dead-letter subject of this stage.
    pub fn dlq_subject(self) -> &'static str {
        match self {
            Stage::Ingest => "gong.dlq.ingest",
            Stage::Enrich => "gong.dlq.enrich",
            Stage::Load => "gong.dlq.load",
        }
    }
}

/// Durable consumer of the enricher on [`STREAM_RAW`], shared by all replicas.
pub const CONSUMER_ENRICH: &str = "enrich";
/// Durable consumer of the loader on [`STREAM_ENRICHED`], shared by all replicas.
pub const CONSUMER_LOAD: &str = "load";

/// KV bucket holding the deployment-wide Gong quota (per second and per UTC day).
pub const BUCKET_GONG_QUOTA: &str = "gong_quota";
/// Prefix of the lease buckets: `gong_lease_<job>`, one per job that only one replica may run
/// at a time. See `lease.rs`.
pub const BUCKET_LEASE_PREFIX: &str = "gong_lease_";
/// The live loader's lease (`gong_lease_load`).
pub const LEASE_LOAD: &str = "load";
/// KV bucket where the loader records the sequence range of a batch before writing it.
pub const BUCKET_LOAD_RANGES: &str = "gong_load_ranges";
/// KV bucket of the staged files Snowpipe is told about (Snowpipe REST mode only), keyed by
/// file path: written before the file's messages are acknowledged, then updated by the notifier
/// (notified, loaded, failed...). See gong-load's `ledger.rs`.
pub const BUCKET_LOAD_FILES: &str = "gong_load_files";
/// KV bucket of the calls that have reached `GONG_RAW`, keyed by call id: written by gong-enrich
/// when it takes a raw event of the call and by the sweep when it injects one. The sweep skips
/// the calls it finds here.
pub const BUCKET_CALLS_SEEN: &str = "gong_calls_seen";
/// Single-key bucket (a `Register`) holding the checkpoint of the `gong-enrich sweep` command:
/// its windows, the page cursor, its counts.
pub const BUCKET_SWEEP_COMMAND: &str = "gong_sweep_command";
/// Single-key bucket (a `Register`) holding the continuous sweep's checkpoint and the time of
/// its last success.
pub const BUCKET_SWEEP_CONTINUOUS: &str = "gong_sweep_continuous";
/// KV bucket of the calls whose transcript Gong did not have yet, keyed by call id: what to
/// recheck and when.
pub const BUCKET_TRANSCRIPT_RECHECKS: &str = "gong_transcript_rechecks";
/// The sweep's lease (`gong_lease_sweep`): one sweep at a time, from the command or the
/// continuous mode of any replica.
pub const LEASE_SWEEP: &str = "sweep";
/// The transcript rechecks' lease (`gong_lease_transcripts`): one replica rechecks at a time.
pub const LEASE_TRANSCRIPTS: &str = "transcripts";
/// Single-key bucket (a `Register`) of gong-enrich's users job: the time (NATS server time) and
/// counts of its last completed fetch of `GET /v2/users`, which decide when the next is due.
pub const BUCKET_JOB_USERS: &str = "gong_job_users";
/// Single-key bucket (a `Register`) of gong-enrich's answered scorecards job: the time and counts
/// of its last completed fetch of `POST /v2/stats/activity/scorecards`.
pub const BUCKET_JOB_SCORECARDS: &str = "gong_job_scorecards";
/// The users job's lease (`gong_lease_users`): one replica fetches users at a time.
pub const LEASE_USERS: &str = "users";
/// The answered scorecards job's lease (`gong_lease_scorecards`): one replica at a time.
pub const LEASE_SCORECARDS: &str = "scorecards";

/// Message headers set by the stages. `Nats-Msg-Id` (JetStream's dedupe key) is set too.
pub mod headers {
    /// Content-derived id of the raw event (lowercase hex SHA-256 of the body).
    pub const EVENT_ID: &str = "Gong-Event-Id";
    /// RFC 3339 UTC time at which gong-ingest received the webhook.
    pub const RECEIVED_AT: &str = "Gong-Received-At";
    /// `jwt` or `url_token`.
    pub const AUTH_MODE: &str = "Gong-Auth-Mode";
    /// Gong call id, where known.
    pub const CALL_ID: &str = "Gong-Call-Id";
    /// Stream sequence of the raw event an enriched event derives from.
    pub const RAW_SEQ: &str = "Gong-Raw-Seq";
    /// Id of the raw event an enriched event derives from.
    pub const RAW_EVENT_ID: &str = "Gong-Raw-Event-Id";
    /// Set on events produced by a replay run: the run's id.
    pub const REPLAY_RUN: &str = "Gong-Replay-Run";
    /// Why an event was dead-lettered (a short machine-readable code).
    pub const DLQ_REASON: &str = "Gong-Dlq-Reason";
    /// Human-readable detail of the dead-letter reason (never a secret).
    pub const DLQ_DETAIL: &str = "Gong-Dlq-Detail";
    /// The stage that dead-lettered the event (`ingest`, `enrich`, `load`).
    pub const DLQ_STAGE: &str = "Gong-Dlq-Stage";
    /// Subject the event was on before it was dead-lettered.
    pub const DLQ_ORIGINAL_SUBJECT: &str = "Gong-Dlq-Original-Subject";
    /// Stream sequence the event had before it was dead-lettered.
    pub const DLQ_ORIGINAL_SEQ: &str = "Gong-Dlq-Original-Seq";
    /// RFC 3339 UTC time of dead-lettering.
    pub const DLQ_AT: &str = "Gong-Dlq-At";
    /// Set on redriven messages: the `GONG_DLQ` sequence they came from.
    pub const REDRIVEN_FROM: &str = "Gong-Redriven-From";
    /// Where an event came from when it was not a webhook: [`SOURCE_SWEEP`] on a raw event the
    /// sweep listed and injected, [`SOURCE_TRANSCRIPT_RECHECK`] on an enriched event that
    /// carries a transcript Gong did not have at first. Absent on webhooks and their
    /// enrichments.
    pub const SOURCE: &str = "Gong-Source";
    /// [`SOURCE`] of a raw event injected by the sweep (its body is the listing's call).
    pub const SOURCE_SWEEP: &str = "sweep";
    /// [`SOURCE`] of an enriched event published by a transcript recheck.
    pub const SOURCE_TRANSCRIPT_RECHECK: &str = "transcript_recheck";
}
