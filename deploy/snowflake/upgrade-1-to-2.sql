-- gong-pipeline: upgrade the Snowflake objects from schema version 1 to 2.
-- Run once, in the schema where setup.sql (version 1) was run, with gong-load stopped and
-- every pipe drained (docs/operations.md, "Snowflake schema upgrades"); then run setup.sql
-- (version 2): it creates the new tables and pipes and replaces every view. Checked offline by
-- tests/snowflake/check.sh (a version-1 schema upgraded equals a fresh version-2 one).
--
-- What changes: every row carries ENRICHED_STREAM_SEQ (the views keep one enrichment of a call,
-- never rows of two); CALLS.STARTED_DATE_UTC; CALL_PARTICIPANTS.TALK_TIME_SECONDS; transcript
-- START_MS, END_MS and TEXT may be NULL (a value Gong did not send); a missing CRM value is
-- NULL, not the text 'null'; new tables CALL_INTERACTION_STATS, USERS, ANSWERED_SCORECARDS,
-- ANSWERED_SCORECARD_ANSWERS (created by setup.sql).

-- 1. New columns, at the end of each table as in setup.sql. ENRICHED_STREAM_SEQ is added
--    nullable, filled below, then made NOT NULL.
ALTER TABLE CALLS ADD COLUMN STARTED_DATE_UTC DATE COMMENT 'UTC day of STARTED, the same in every session time zone (STARTED::DATE is the day in the session''s zone)';
ALTER TABLE CALL_PARTICIPANTS ADD COLUMN TALK_TIME_SECONDS FLOAT COMMENT 'seconds this participant talked (interaction.speakers[] whose id is this participant id); null when Gong did not say';
ALTER TABLE CALL_PARTICIPANTS ADD COLUMN ENRICHED_STREAM_SEQ NUMBER(38,0) COMMENT 'sequence of the event in GONG_ENRICHED: rows of one enrichment or fetch share it; the *_LATEST views keep the greatest';
ALTER TABLE CALL_TRANSCRIPT_SENTENCES ADD COLUMN ENRICHED_STREAM_SEQ NUMBER(38,0) COMMENT 'sequence of the event in GONG_ENRICHED: rows of one enrichment or fetch share it; the *_LATEST views keep the greatest';
ALTER TABLE CALL_TRACKERS ADD COLUMN ENRICHED_STREAM_SEQ NUMBER(38,0) COMMENT 'sequence of the event in GONG_ENRICHED: rows of one enrichment or fetch share it; the *_LATEST views keep the greatest';
ALTER TABLE CALL_TOPICS ADD COLUMN ENRICHED_STREAM_SEQ NUMBER(38,0) COMMENT 'sequence of the event in GONG_ENRICHED: rows of one enrichment or fetch share it; the *_LATEST views keep the greatest';
ALTER TABLE CALL_CONTEXT_FIELDS ADD COLUMN ENRICHED_STREAM_SEQ NUMBER(38,0) COMMENT 'sequence of the event in GONG_ENRICHED: rows of one enrichment or fetch share it; the *_LATEST views keep the greatest';

-- 2. Values Gong did not send may be NULL.
ALTER TABLE CALL_TRANSCRIPT_SENTENCES ALTER COLUMN START_MS DROP NOT NULL;
ALTER TABLE CALL_TRANSCRIPT_SENTENCES ALTER COLUMN END_MS DROP NOT NULL;
ALTER TABLE CALL_TRANSCRIPT_SENTENCES ALTER COLUMN TEXT DROP NOT NULL;

-- 3. Fill the new columns of the rows loaded so far. The UTC day comes from the instant, not
--    from STARTED::DATE (that is the session's day). A version-1 child row knows only its
--    EVENT_ID: it gets the greatest ENRICHED_STREAM_SEQ of that event in CALLS, so two
--    enrichments of one event loaded before the upgrade stay mixed in the views (replay the
--    ranges to separate them: docs/operations.md). Version 1 staged a missing CRM value as the
--    JSON text 'null'; a missing sentence start or end was staged as 0 and cannot be told
--    from a real 0.
UPDATE CALLS SET STARTED_DATE_UTC = CONVERT_TIMEZONE('UTC', STARTED)::DATE WHERE STARTED_DATE_UTC IS NULL AND STARTED IS NOT NULL;
UPDATE CALL_CONTEXT_FIELDS SET VALUE_JSON = NULL WHERE VALUE_JSON = 'null';
UPDATE CALL_PARTICIPANTS SET ENRICHED_STREAM_SEQ = c.SEQ FROM (SELECT EVENT_ID, MAX(ENRICHED_STREAM_SEQ) AS SEQ FROM CALLS GROUP BY EVENT_ID) c WHERE CALL_PARTICIPANTS.EVENT_ID = c.EVENT_ID AND CALL_PARTICIPANTS.ENRICHED_STREAM_SEQ IS NULL;
UPDATE CALL_TRANSCRIPT_SENTENCES SET ENRICHED_STREAM_SEQ = c.SEQ FROM (SELECT EVENT_ID, MAX(ENRICHED_STREAM_SEQ) AS SEQ FROM CALLS GROUP BY EVENT_ID) c WHERE CALL_TRANSCRIPT_SENTENCES.EVENT_ID = c.EVENT_ID AND CALL_TRANSCRIPT_SENTENCES.ENRICHED_STREAM_SEQ IS NULL;
UPDATE CALL_TRACKERS SET ENRICHED_STREAM_SEQ = c.SEQ FROM (SELECT EVENT_ID, MAX(ENRICHED_STREAM_SEQ) AS SEQ FROM CALLS GROUP BY EVENT_ID) c WHERE CALL_TRACKERS.EVENT_ID = c.EVENT_ID AND CALL_TRACKERS.ENRICHED_STREAM_SEQ IS NULL;
UPDATE CALL_TOPICS SET ENRICHED_STREAM_SEQ = c.SEQ FROM (SELECT EVENT_ID, MAX(ENRICHED_STREAM_SEQ) AS SEQ FROM CALLS GROUP BY EVENT_ID) c WHERE CALL_TOPICS.EVENT_ID = c.EVENT_ID AND CALL_TOPICS.ENRICHED_STREAM_SEQ IS NULL;
UPDATE CALL_CONTEXT_FIELDS SET ENRICHED_STREAM_SEQ = c.SEQ FROM (SELECT EVENT_ID, MAX(ENRICHED_STREAM_SEQ) AS SEQ FROM CALLS GROUP BY EVENT_ID) c WHERE CALL_CONTEXT_FIELDS.EVENT_ID = c.EVENT_ID AND CALL_CONTEXT_FIELDS.ENRICHED_STREAM_SEQ IS NULL;

-- 4. Child rows whose CALLS row was never loaded were never in a view (the version-1 views
--    joined on CALLS_LATEST); they have no sequence to take. Delete them, then require it.
DELETE FROM CALL_PARTICIPANTS WHERE ENRICHED_STREAM_SEQ IS NULL;
DELETE FROM CALL_TRANSCRIPT_SENTENCES WHERE ENRICHED_STREAM_SEQ IS NULL;
DELETE FROM CALL_TRACKERS WHERE ENRICHED_STREAM_SEQ IS NULL;
DELETE FROM CALL_TOPICS WHERE ENRICHED_STREAM_SEQ IS NULL;
DELETE FROM CALL_CONTEXT_FIELDS WHERE ENRICHED_STREAM_SEQ IS NULL;
ALTER TABLE CALL_PARTICIPANTS ALTER COLUMN ENRICHED_STREAM_SEQ SET NOT NULL;
ALTER TABLE CALL_TRANSCRIPT_SENTENCES ALTER COLUMN ENRICHED_STREAM_SEQ SET NOT NULL;
ALTER TABLE CALL_TRACKERS ALTER COLUMN ENRICHED_STREAM_SEQ SET NOT NULL;
ALTER TABLE CALL_TOPICS ALTER COLUMN ENRICHED_STREAM_SEQ SET NOT NULL;
ALTER TABLE CALL_CONTEXT_FIELDS ALTER COLUMN ENRICHED_STREAM_SEQ SET NOT NULL;

-- 5. Column comments that changed.
COMMENT ON COLUMN CALLS.EVENT_ID IS 'id of the enriched event (the raw event id for live enrichment; a repeat of a raw event shares it)';
COMMENT ON COLUMN CALLS.STARTED IS 'actual start of the call (STARTED_DATE_UTC is its UTC day); an instant, staged in UTC and shown in the session''s TIMEZONE: CONVERT_TIMEZONE(''UTC'', <column>) gives its UTC time and day';
COMMENT ON COLUMN CALLS.SCHEDULED IS 'scheduled start of the call; an instant, staged in UTC and shown in the session''s TIMEZONE: CONVERT_TIMEZONE(''UTC'', <column>) gives its UTC time and day';
COMMENT ON COLUMN CALLS.RECEIVED_AT IS 'when gong-ingest received the webhook; an instant, staged in UTC and shown in the session''s TIMEZONE: CONVERT_TIMEZONE(''UTC'', <column>) gives its UTC time and day';
COMMENT ON COLUMN CALLS.FETCHED_AT IS 'when the Gong API answered; an instant, staged in UTC and shown in the session''s TIMEZONE: CONVERT_TIMEZONE(''UTC'', <column>) gives its UTC time and day';
COMMENT ON COLUMN CALLS.ENRICHED_STREAM_SEQ IS 'sequence of the event in GONG_ENRICHED: rows of one enrichment or fetch share it; the *_LATEST views keep the greatest';
COMMENT ON COLUMN CALL_PARTICIPANTS.USER_ID IS 'Gong user id, for internal participants (joins users.user_id)';
COMMENT ON COLUMN CALL_TRANSCRIPT_SENTENCES.START_MS IS 'milliseconds from the start of the call; null when Gong did not say';
COMMENT ON COLUMN CALL_TRANSCRIPT_SENTENCES.END_MS IS 'milliseconds from the start of the call; null when Gong did not say';
COMMENT ON COLUMN CALL_CONTEXT_FIELDS.VALUE_JSON IS 'CRM field value, as JSON; null when the CRM has no value';
