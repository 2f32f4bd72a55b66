#!/usr/bin/env python3
"""Offline check of gong-pipeline's Snowflake SQL, with fakesnow (Snowflake SQL on DuckDB).

Run by tests/snowflake/check.sh, which stages tests/snowflake/fixtures.py's events with the real
gong-load first. Checks, in order:

1. every statement of deploy/snowflake/setup.sql and upgrade-1-to-2.sql, and every query of
   docs/analytics.md, parses with sqlglot's Snowflake dialect (a pipe's COPY body included);
2. every staged Parquet file's schema is the DDL's: names, order, types, nullability (fakesnow
   is lenient about types, so this is checked here), and its metadata names its table and the
   schema version of setup.sql;
3. setup.sql runs in fakesnow (an internal stage in place of S3, each pipe's COPY body in place
   of the pipe), in a session whose time zone is America/Los_Angeles (Snowpipe's usual one);
4. the stage loads: every file LOADED, rows loaded = rows staged for every table, every NOT NULL
   column non-null on every row (a COPY whose columns match nothing loads all-NULL rows);
5. what the views promise: two enrichments of one call are never mixed, UTC days are UTC days
   in a Los Angeles session, missing values are NULL, latest fetches win;
6. every query of docs/analytics.md gives its expected answer;
7. every file loaded a second time under another name changes no view;
8. a version-1 schema with data, upgraded by upgrade-1-to-2.sql and setup.sql, has the columns
   of a fresh one (names, order, types, nullability, comments) and views that work.

Exit code 0 when everything holds, 1 otherwise (every failure is listed).
"""

import argparse
import datetime
import decimal
import os
import re
import shutil
import sys
import tempfile
import warnings

import json  # noqa: E402
import logging  # noqa: E402

warnings.filterwarnings("ignore")
# sqlglot logs the fallback of CREATE PIPE to an opaque command; the check parses the pipe's COPY
# body itself. fakesnow logs the column comments it drops.
logging.disable(logging.WARNING)

import fakesnow  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import snowflake.connector  # noqa: E402
import sqlglot  # noqa: E402
from sqlglot import exp  # noqa: E402
from sqlglot.tokens import TokenType  # noqa: E402

FAILURES = []
PASSED = [0]

ALICE, AARON, BELLA = "100000000000000001", "100000000000000002", "100000000000000003"
MARK = "900000000000000002"
C = {n: f"700000000000000000{n}" for n in range(1, 6)}
D = datetime.date


def check(what, ok, detail=""):
    if ok:
        PASSED[0] += 1
    else:
        FAILURES.append(f"{what}: {detail}" if detail else what)
        print(f"FAIL {what}" + (f": {detail}" if detail else ""), flush=True)


# --- SQL text ----------------------------------------------------------------------------------


def split_statements(sql):
    """The statements of `sql`, as written (comments kept), split at `;` tokens."""
    tokens = sqlglot.Dialect.get_or_raise("snowflake").tokenize(sql)
    statements, start = [], 0
    for token in tokens:
        if token.token_type == TokenType.SEMICOLON:
            text = sql[start : token.start].strip()
            start = token.end + 1
            if strip_comments(text):
                statements.append(text)
    if strip_comments(sql[start:]):
        statements.append(sql[start:].strip())
    return statements


def strip_comments(text):
    return "\n".join(line for line in text.splitlines() if not line.strip().startswith("--")).strip()


PIPE = re.compile(r"^CREATE PIPE IF NOT EXISTS (\w+) AS\s+(COPY INTO (\w+).*)$", re.S)


def parse_strictly(text, what):
    """Parses one statement; sqlglot's silent fallback to an opaque Command counts as failure,
    except for CREATE PIPE, whose COPY body must parse."""
    body = strip_comments(text)
    try:
        parsed = sqlglot.parse_one(body, read="snowflake")
    except sqlglot.errors.ParseError as err:
        check(f"{what} parses", False, str(err).splitlines()[0])
        return None
    if isinstance(parsed, exp.Command):
        pipe = PIPE.match(body)
        if not pipe:
            check(f"{what} parses", False, f"not understood by sqlglot: {body[:80]}")
            return None
        copy = sqlglot.parse_one(pipe.group(2), read="snowflake")
        check(f"{what}: the pipe's COPY parses", isinstance(copy, exp.Copy), type(copy).__name__)
        return parsed
    check(f"{what} parses", True)
    return parsed


def ddl_tables(statements):
    """{TABLE: [(COLUMN, type expression, not_null, comment)]} of the CREATE TABLE statements."""
    tables = {}
    for text in statements:
        parsed = sqlglot.parse_one(strip_comments(text), read="snowflake")
        if isinstance(parsed, exp.Create) and parsed.args.get("kind") == "TABLE":
            columns = []
            for column in parsed.this.expressions:
                kinds = [constraint.kind for constraint in column.constraints]
                not_null = any(isinstance(kind, exp.NotNullColumnConstraint) for kind in kinds)
                comments = [kind.this.this for kind in kinds if isinstance(kind, exp.CommentColumnConstraint)]
                columns.append((column.name.upper(), column.kind, not_null, comments[0] if comments else None))
            tables[parsed.this.this.name.upper()] = columns
    return tables


def arrow_type(kind):
    """The Arrow type gong-load writes for a Snowflake column type."""
    t = exp.DataType.Type
    if kind.this in (t.VARCHAR, t.TEXT):
        return pa.string()
    if kind.this == t.TIMESTAMPTZ:
        return pa.timestamp("us", tz="UTC")
    if kind.this == t.DATE:
        return pa.date32()
    if kind.this == t.DECIMAL and [e.sql() for e in kind.expressions] == ["38", "0"]:
        return pa.int64()
    if kind.this in (t.DOUBLE, t.FLOAT):
        return pa.float64()
    if kind.this == t.BOOLEAN:
        return pa.bool_()
    return None


# --- results -----------------------------------------------------------------------------------


def norm(value):
    """Comparable Python values: numbers as floats rounded to 6 places, midnight timestamps
    without a zone (DuckDB's DATE_TRUNC of a DATE) as dates."""
    if isinstance(value, decimal.Decimal):
        value = float(value)
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, datetime.datetime) and value.tzinfo is None and value.time() == datetime.time(0):
        return value.date()
    return value


def rows(cur, sql):
    return [tuple(norm(value) for value in row) for row in cur.execute(sql).fetchall()]


def snapshot(cur, view):
    result = cur.execute(f"SELECT * FROM {view}")
    names = [column[0] for column in result.description]
    return names, sorted((tuple(map(repr, row)) for row in result.fetchall()))


# --- the expected answers of docs/analytics.md, from tests/snowflake/fixtures.py ---------------

EXPECTED = {
    # Week, rep, calls, host's share of the talk time. Call 4's first enrichment (Walter, 500/500)
    # must not count: mixed in, Bella's first week would be 0.48.
    "talk_ratio_per_rep_per_week": [
        (D(2024, 2, 26), "Bella Rep", 1, 0.45),
        (D(2024, 3, 4), "Alice Rep", 2, 0.5),
        (D(2024, 3, 11), "Aaron Rep", 1, 0.3),
        (D(2024, 3, 11), "Bella Rep", 1, 0.5),
    ],
    "gong_talk_ratio_per_rep": [("Aaron Rep", 0.3), ("Alice Rep", 0.5), ("Bella Rep", 0.5)],
    # Aaron moved to Mark's team in the latest fetch of the users.
    "calls_per_team": [("Maria Manager", 2), ("Mark Manager", 3)],
    # Call 4 is on 1 March in UTC (29 February in Los Angeles); call 2 on 6 March (5 March there).
    "calls_per_utc_day": [
        (D(2024, 3, 1), 1),
        (D(2024, 3, 4), 1),
        (D(2024, 3, 6), 1),
        (D(2024, 3, 11), 1),
        (D(2024, 3, 12), 1),
    ],
    "topic_trends": [
        (D(2024, 2, 26), "Pricing", 1, 1.7),
        (D(2024, 3, 4), "Intro", 1, 1.0),
        (D(2024, 3, 4), "Pricing", 2, 7.0),
        (D(2024, 3, 11), "Next steps", 1, 3.3),
    ],
    "tracker_trends": [
        (D(2024, 2, 26), "Competitors", 1),
        (D(2024, 3, 4), "Competitors", 3),
        (D(2024, 3, 4), "Pricing objection", 3),
        (D(2024, 3, 11), "Competitors", 4),
    ],
    # Scorecard 7001 was edited (overall 4 -> 5): mixed versions would give Alice 4.5.
    "scorecard_average_per_rep": [("Aaron Rep", 1, 2.0), ("Alice Rep", 1, 5.0), ("Bella Rep", 1, 5.0)],
    "transcript_search": [
        (C[4], "Globex pricing", "Bella Rep", 0, "Happy to offer a discount."),
        (C[1], "Acme discovery", "Alice Rep", 1500, "We can talk about a discount later."),
    ],
    # Call 4 had no transcript in its first enrichment only; call 5 is private.
    "calls_without_transcript": [(C[3], "Initech next steps", D(2024, 3, 11))],
    "crm_opportunity_per_call": [(C[1], 50000.0, "Discovery", 1)],
}


# fakesnow's known departures from Snowflake, by query and column: VARIANT::VARCHAR of a JSON
# string is the string in Snowflake, its JSON text (with quotes) in fakesnow.
FAKESNOW_RENDERING = {"crm_opportunity_per_call": {2: lambda text: json.loads(text) if text else text}}


def analytics_queries(path):
    text = open(path).read()
    blocks = re.findall(r"```sql\n(.*?)```", text, re.S)
    checked = re.findall(r"<!-- check: (\w+) -->\s*```sql\n(.*?)```", text, re.S)
    check(
        "every SQL block of docs/analytics.md is checked",
        len(blocks) == len(checked),
        f"{len(blocks)} blocks, {len(checked)} with a check marker",
    )
    names = [name for name, _ in checked]
    check("analytics queries have distinct names", len(set(names)) == len(names), str(names))
    check(
        "every analytics query has an expected answer and every answer a query",
        set(names) == set(EXPECTED),
        f"queries {sorted(set(names) - set(EXPECTED))}, answers {sorted(set(EXPECTED) - set(names))}",
    )
    check("docs/analytics.md has 8 to 10 worked queries", 8 <= len(names) <= 10, str(len(names)))
    return checked


# --- the check ---------------------------------------------------------------------------------


def staged_files(stage):
    out = {}
    for dirpath, _, filenames in os.walk(stage):
        for name in sorted(filenames):
            if name.endswith(".parquet"):
                path = os.path.join(dirpath, name)
                table = os.path.relpath(path, stage).split(os.sep)[0].upper()
                out.setdefault(table, []).append(path)
    return out


def execute_setup(cur, statements):
    """Runs setup.sql: an internal stage for the S3 one, pipes' COPY bodies kept for later."""
    copies = {}
    for text in statements:
        body = strip_comments(text)
        pipe = PIPE.match(body)
        if pipe:
            copies[pipe.group(3).upper()] = pipe.group(2)
            continue
        if body.startswith("CREATE STAGE"):
            body = "CREATE STAGE IF NOT EXISTS GONG_STAGE"
        cur.execute(body)
    return copies


def put(cur, path, table):
    # fakesnow lists a file:// stage one folder deep: one flat folder per table.
    result = cur.execute(f"PUT 'file://{path}' @GONG_STAGE/{table.lower()} AUTO_COMPRESS = FALSE").fetchall()
    check(f"PUT {os.path.basename(path)}", result and result[0][6] == "UPLOADED", str(result))


def check_parquet_schemas(files, ddl, version):
    for table, paths in files.items():
        columns = ddl.get(table)
        check(f"staged folder {table.lower()} is a table of setup.sql", columns is not None)
        if columns is None:
            continue
        expected = [(name.lower(), arrow_type(kind), not not_null) for name, kind, not_null, _ in columns]
        check(f"{table}: every column type maps to Parquet", all(t is not None for _, t, _ in expected))
        for path in paths:
            parquet = pq.read_schema(path)
            actual = [(field.name, field.type, field.nullable) for field in parquet]
            check(
                f"{os.path.basename(path)} of {table} has the DDL's columns, types and nullability",
                actual == expected,
                "\n  parquet " + str(actual) + "\n  ddl     " + str(expected),
            )
            metadata = {k.decode(): v.decode() for k, v in (parquet.metadata or {}).items()}
            check(
                f"{os.path.basename(path)} of {table}: metadata names table and schema version {version}",
                metadata.get("gong.table") == table.lower() and metadata.get("gong.schema_version") == version,
                str({k: v for k, v in metadata.items() if k.startswith("gong.")}),
            )


def load_stage(cur, copies, files, ddl):
    staged = {}
    for table, paths in files.items():
        for path in paths:
            put(cur, path, table)
        staged[table] = sum(pq.read_metadata(path).num_rows for path in paths)
    check("every table of setup.sql has staged rows (the fixture covers them all)", set(staged) == set(ddl),
          f"staged {sorted(staged)}, tables {sorted(ddl)}")
    for table in ddl:
        try:
            result = cur.execute(copies[table]).fetchall()
        except Exception as err:  # noqa: BLE001 - reported as a failure
            check(f"COPY INTO {table} runs", False, str(err).splitlines()[0])
            continue
        statuses = {row[1] for row in result}
        check(f"COPY INTO {table}: every file LOADED", statuses == {"LOADED"}, str(result))
        loaded = sum(row[3] for row in result)
        check(f"COPY INTO {table}: rows loaded = rows staged", loaded == staged.get(table, 0),
              f"{loaded} loaded, {staged.get(table, 0)} staged")
        count = cur.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
        check(f"{table} holds the staged rows", count == staged.get(table, 0), f"{count}")
        for name, _, not_null, _ in ddl[table]:
            if not_null:
                nulls = cur.execute(f"SELECT COUNT(*) FROM {table} WHERE {name} IS NULL").fetchone()[0]
                check(f"{table}.{name} is set on every loaded row", nulls == 0, f"{nulls} NULL")
    return staged


def check_promises(cur):
    # Two enrichments of call 4 (same EVENT_ID): the tables hold both, the views the latest.
    both = rows(cur, f"SELECT NAME FROM CALL_PARTICIPANTS WHERE CALL_ID = '{C[4]}' ORDER BY 1")
    check("CALL_PARTICIPANTS holds both enrichments of call 4",
          both == [("Bella Rep",), ("Bella Rep",), ("Walter Old",), ("Wanda New",)], str(both))
    events = rows(cur, f"SELECT COUNT(DISTINCT EVENT_ID), COUNT(*) FROM CALLS WHERE CALL_ID = '{C[4]}'")
    check("both enrichments of call 4 share one EVENT_ID", events == [(1, 2)], str(events))
    latest = rows(cur, f"SELECT NAME, TALK_TIME_SECONDS FROM CALL_PARTICIPANTS_LATEST WHERE CALL_ID = '{C[4]}' ORDER BY 1")
    check("CALL_PARTICIPANTS_LATEST shows only the latest enrichment's parties",
          latest == [("Bella Rep", 450.0), ("Wanda New", 550.0)], str(latest))
    stats = rows(cur, f"SELECT NAME, VALUE FROM CALL_INTERACTION_STATS_LATEST WHERE CALL_ID = '{C[4]}'")
    check("CALL_INTERACTION_STATS_LATEST shows only the latest enrichment's stats",
          stats == [("Talk Ratio", 0.45)], str(stats))
    topics = rows(cur, f"SELECT NAME, DURATION_SECONDS FROM CALL_TOPICS_LATEST WHERE CALL_ID = '{C[4]}'")
    check("identical rows of two enrichments show once", topics == [("Pricing", 100.0)], str(topics))

    # UTC days in a Los Angeles session.
    days = rows(cur, f"""SELECT STARTED::DATE, STARTED_DATE_UTC, CONVERT_TIMEZONE('UTC', STARTED)::DATE
                         FROM CALLS_LATEST WHERE CALL_ID = '{C[4]}'""")
    check("the session is in Los Angeles (STARTED::DATE is its day: the trap is real here)",
          days and days[0][0] == D(2024, 2, 29), str(days))
    check("STARTED_DATE_UTC is the UTC day in a Los Angeles session",
          days and days[0][1:] == (D(2024, 3, 1), D(2024, 3, 1)), str(days))
    reviewed = rows(cur, "SELECT REVIEWED_DATE_UTC FROM ANSWERED_SCORECARDS_LATEST WHERE ANSWERED_SCORECARD_ID = '7001'")
    check("REVIEWED_DATE_UTC is the UTC day (18:00 -08:00 on 5 March is 6 March)",
          reviewed == [(D(2024, 3, 6),)], str(reviewed))

    # No invented values.
    missing = rows(cur, f"""SELECT START_MS, END_MS, TEXT FROM CALL_TRANSCRIPT_SENTENCES_LATEST
                            WHERE CALL_ID = '{C[2]}' AND TEXT = 'Send it over.'""")
    check("a sentence without times has NULL times, not 0", missing == [(None, None, "Send it over.")], str(missing))
    crm = rows(cur, f"SELECT VALUE_JSON, FIELD_VALUE FROM CALL_CONTEXT_FIELDS_LATEST WHERE FIELD_NAME = 'CloseDate'")
    check("a missing CRM value is NULL, not the text null", crm == [(None, None)], str(crm))
    null_text = rows(cur, "SELECT COUNT(*) FROM CALL_CONTEXT_FIELDS WHERE VALUE_JSON = 'null'")
    check("no CRM value is the text null", null_text == [(0,)], str(null_text))

    # Latest fetches; ids are strings that join.
    aaron = rows(cur, f"SELECT MANAGER_ID, TITLE FROM USERS_LATEST WHERE USER_ID = '{AARON}'")
    check("USERS_LATEST has the latest fetch", aaron == [(MARK, "Senior Account Executive")], str(aaron))
    users = rows(cur, "SELECT COUNT(*), COUNT(DISTINCT USER_ID) FROM USERS_LATEST")
    check("USERS_LATEST has one row per user", users == [(5, 5)], str(users))
    joined = rows(cur, """SELECT COUNT(*) FROM ANSWERED_SCORECARDS_LATEST s
                          JOIN CALLS_LATEST c ON c.CALL_ID = s.CALL_ID
                          JOIN USERS_LATEST u ON u.USER_ID = s.REVIEWED_USER_ID""")
    check("scorecard ids (JSON numbers at Gong) join calls and users as strings", joined == [(3,)], str(joined))
    answers = rows(cur, "SELECT COUNT(*) FROM ANSWERED_SCORECARD_ANSWERS_LATEST WHERE ANSWERED_SCORECARD_ID = '7001'")
    check("ANSWERED_SCORECARD_ANSWERS_LATEST keeps one version of an edited scorecard", answers == [(5,)], str(answers))
    options = rows(cur, "SELECT SELECTED_OPTIONS_JSON FROM ANSWERED_SCORECARD_ANSWERS_LATEST WHERE QUESTION_ID = '5' AND ANSWERED_SCORECARD_ID = '7001'")
    check("selected options are JSON", options == [('["1","3"]',)], str(options))
    calls = rows(cur, "SELECT COUNT(*), COUNT(DISTINCT CALL_ID) FROM CALLS_LATEST")
    check("CALLS_LATEST has one row per call", calls == [(5, 5)], str(calls))


def check_analytics(cur, queries):
    for name, sql in queries:
        parse_strictly(sql.strip().rstrip(";"), f"docs/analytics.md query {name}")
        try:
            answer = rows(cur, sql.strip().rstrip(";"))
            fixes = FAKESNOW_RENDERING.get(name, {})
            answer = [tuple(fixes.get(i, lambda v: v)(v) for i, v in enumerate(row)) for row in answer]
        except Exception as err:  # noqa: BLE001 - reported as a failure
            check(f"analytics query {name} runs", False, str(err).splitlines()[0])
            continue
        check(f"analytics query {name} answers as documented", answer == EXPECTED.get(name),
              f"\n  got      {answer}\n  expected {EXPECTED.get(name)}")


def check_reload(cur, copies, files, staged, ddl, scratch):
    views = [f"{table}_LATEST" for table in ddl]
    before = {view: snapshot(cur, view) for view in views}
    again = os.path.join(scratch, "again")
    for table, paths in files.items():
        os.makedirs(os.path.join(again, table), exist_ok=True)
        for path in paths:
            copy = os.path.join(again, table, "again_" + os.path.basename(path))
            shutil.copyfile(path, copy)
            put(cur, copy, table)
    for table in ddl:
        result = cur.execute(copies[table]).fetchall()
        loaded = sum(row[3] for row in result if row[1] == "LOADED")
        check(f"{table}: every file loaded a second time under another name",
              loaded == staged[table], f"{loaded} rows loaded again, {staged[table]} staged")
        count = cur.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
        check(f"{table} holds every row twice", count == 2 * staged[table], str(count))
    for view in views:
        after = snapshot(cur, view)
        check(f"{view} is unchanged by the second load", after == before[view],
              f"{len(before[view][1])} rows before, {len(after[1])} after")


V1_DATA = [
    # Call 1 enriched twice from one raw event (EVENT_ID e1) before the upgrade, and call 2.
    """INSERT INTO CALLS (EVENT_ID, RAW_EVENT_ID, CALL_ID, STARTED, RECEIVED_AT, FETCHED_AT,
         RAW_STREAM_SEQ, ENRICHED_STREAM_SEQ)
       VALUES ('e1', 'e1', '1', '2024-03-01 02:00:00Z', '2024-03-01 05:00:00Z',
               '2024-03-01 05:01:00Z', 1, 10),
              ('e1', 'e1', '1', '2024-03-01 02:00:00Z', '2024-03-01 05:00:00Z',
               '2024-03-02 05:01:00Z', 1, 12),
              ('e2', 'e2', '2', NULL, '2024-03-01 05:00:00Z', '2024-03-01 05:01:00Z', 2, 11)""",
    """INSERT INTO CALL_PARTICIPANTS (EVENT_ID, CALL_ID, PARTICIPANT_ID, NAME)
       VALUES ('e1', '1', '11', 'Ann'), ('e2', '2', '21', 'Bob'), ('e-orphan', '9', '91', 'Nobody')""",
    """INSERT INTO CALL_TRANSCRIPT_SENTENCES (EVENT_ID, CALL_ID, MONOLOGUE_INDEX, SENTENCE_INDEX, START_MS, END_MS, TEXT)
       VALUES ('e1', '1', 0, 0, 0, 10, 'hi')""",
    """INSERT INTO CALL_CONTEXT_FIELDS (EVENT_ID, CALL_ID, FIELD_NAME, VALUE_JSON)
       VALUES ('e1', '1', 'CloseDate', 'null'), ('e1', '1', 'Amount', '100')""",
]


def duck_columns(conn, database):
    result = conn._duck_conn.execute(
        """SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns
           WHERE table_catalog = ? AND table_schema = 'ANALYTICS'
           ORDER BY table_name, ordinal_position""",
        [database],
    ).fetchall()
    tables = {row[0] for row in conn._duck_conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_catalog = ? AND table_schema = 'ANALYTICS' AND table_type = 'BASE TABLE'",
        [database]).fetchall()}
    out = {}
    for table, column, data_type, nullable in result:
        if table in tables:
            out.setdefault(table, []).append((column, data_type, nullable))
    return out


def check_upgrade(fresh_conn, root, setup_statements, ddl_v2):
    v1_statements = split_statements(open(os.path.join(root, "tests/snowflake/fixtures/setup_v1.sql")).read())
    upgrade = split_statements(open(os.path.join(root, "deploy/snowflake/upgrade-1-to-2.sql")).read())
    for index, text in enumerate(upgrade):
        parse_strictly(text, f"upgrade-1-to-2.sql statement {index + 1}")
    ddl_v1 = ddl_tables([text for text in v1_statements if strip_comments(text).startswith("CREATE TABLE")])

    # Comments: each column's comment after the upgrade (the upgrade's, else version 1's) is
    # version 2's.
    comments = {}
    for text in upgrade:
        parsed = sqlglot.parse_one(strip_comments(text), read="snowflake")
        if isinstance(parsed, exp.Comment):
            comments[(parsed.this.table.upper(), parsed.this.name.upper())] = parsed.expression.this
        elif isinstance(parsed, exp.Alter):
            for action in parsed.args.get("actions") or []:
                if isinstance(action, exp.ColumnDef):
                    for constraint in action.constraints:
                        if isinstance(constraint.kind, exp.CommentColumnConstraint):
                            comments[(parsed.this.name.upper(), action.name.upper())] = constraint.kind.this.this
    for table, columns in ddl_v1.items():
        old = {name: comment for name, _, _, comment in columns}
        for name, _, _, comment in ddl_v2[table]:
            upgraded = comments.get((table, name), old.get(name))
            check(f"upgraded comment of {table}.{name} is version 2's", upgraded == comment,
                  f"\n  upgraded {upgraded!r}\n  v2       {comment!r}")

    conn = snowflake.connector.connect(database="UPGRADE", schema="ANALYTICS")
    conn._duck_conn.execute("SET TimeZone = 'America/Los_Angeles'")
    cur = conn.cursor()
    for text in v1_statements:
        if strip_comments(text).startswith("CREATE TABLE"):
            cur.execute(strip_comments(text))
    for text in V1_DATA:
        cur.execute(text)
    for index, text in enumerate(upgrade):
        try:
            cur.execute(strip_comments(text))
        except Exception as err:  # noqa: BLE001 - reported as a failure
            check(f"upgrade-1-to-2.sql statement {index + 1} runs", False, str(err).splitlines()[0])
    execute_setup(cur, setup_statements)

    fresh = duck_columns(fresh_conn, "GONG")
    upgraded = duck_columns(conn, "UPGRADE")
    check("the upgraded schema has every table of a fresh one", sorted(upgraded) == sorted(fresh),
          f"{sorted(upgraded)} vs {sorted(fresh)}")
    for table, columns in fresh.items():
        check(f"upgraded {table} has a fresh one's columns, order, types and nullability",
              upgraded.get(table) == columns, f"\n  upgraded {upgraded.get(table)}\n  fresh    {columns}")

    day = rows(cur, "SELECT CALL_ID, STARTED_DATE_UTC FROM CALLS_LATEST ORDER BY 1")
    check("the upgrade fills STARTED_DATE_UTC with the UTC day, whatever the session's zone",
          day == [("1", D(2024, 3, 1)), ("2", None)], str(day))
    parties = rows(cur, "SELECT CALL_ID, NAME, ENRICHED_STREAM_SEQ FROM CALL_PARTICIPANTS_LATEST ORDER BY 1")
    check("version-1 child rows join the latest enrichment of their event",
          parties == [("1", "Ann", 12), ("2", "Bob", 11)], str(parties))
    orphans = rows(cur, "SELECT COUNT(*) FROM CALL_PARTICIPANTS WHERE EVENT_ID = 'e-orphan'")
    check("child rows without a calls row (never visible) are removed", orphans == [(0,)], str(orphans))
    crm = rows(cur, "SELECT FIELD_NAME, VALUE_JSON FROM CALL_CONTEXT_FIELDS_LATEST ORDER BY 1")
    check("the upgrade turns the text null into NULL", crm == [("Amount", "100"), ("CloseDate", None)], str(crm))
    sentences = rows(cur, "SELECT TEXT FROM CALL_TRANSCRIPT_SENTENCES_LATEST")
    check("version-1 sentences stay visible", sentences == [("hi",)], str(sentences))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="the repository")
    parser.add_argument("--stage", required=True, help="a stage written by the snowflake_stage example")
    args = parser.parse_args()
    root = args.root

    setup_sql = open(os.path.join(root, "deploy/snowflake/setup.sql")).read()
    version = re.search(r"\(schema version (\d+)\)", setup_sql).group(1)
    statements = split_statements(setup_sql)
    for index, text in enumerate(statements):
        parse_strictly(text, f"setup.sql statement {index + 1}")
    ddl = ddl_tables(statements)
    queries = analytics_queries(os.path.join(root, "docs/analytics.md"))
    files = staged_files(args.stage)
    check_parquet_schemas(files, ddl, version)

    scratch = tempfile.mkdtemp(prefix="gong-snowflake-check-")
    try:
        with fakesnow.patch():
            conn = snowflake.connector.connect(database="GONG", schema="ANALYTICS")
            # Snowpipe loads in the account's default zone, often Los Angeles; fakesnow cannot
            # ALTER SESSION SET TIMEZONE, so the DuckDB session underneath is set.
            conn._duck_conn.execute("SET TimeZone = 'America/Los_Angeles'")
            cur = conn.cursor()
            copies = execute_setup(cur, statements)
            check("one pipe per table", sorted(copies) == sorted(ddl), f"{sorted(copies)}")
            staged = load_stage(cur, copies, files, ddl)
            check_promises(cur)
            check_analytics(cur, queries)
            check_reload(cur, copies, files, staged, ddl, scratch)
            check_upgrade(conn, root, statements, ddl)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    if FAILURES:
        print(f"\nsnowflake check: {len(FAILURES)} failed, {PASSED[0]} passed", flush=True)
        return 1
    print(f"snowflake check: all {PASSED[0]} checks passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
