#!/usr/bin/env python3
"""The enriched events behind the offline Snowflake check (tests/snowflake/check.sh).

Run as a script, prints them as JSON lines, in publishing order, for the
`snowflake_stage` example of gong-load, which publishes them into a nats-server
and stages them with the real loader. Each line is one of:

  {"subject": "gong.enriched.call", "msg_id": "...", "event": <EnrichedEvent>}
  {"subject": "gong.enriched.user", "fetched_at": "...", "user": <Gong user>}
  {"subject": "gong.enriched.scorecard", "fetched_at": "...", "scorecard": <answered scorecard>}
  {"subject": "gong.enriched.deal", "msg_id": "...", "payload": <anything>}

User and scorecard events are built by the example with `EnrichedUser::new` /
`EnrichedScorecard::new` (event id = hash of the entity, `Nats-Msg-Id` = event id),
as gong-enrich builds them.

The story the data tells (check.py asserts the answers of docs/analytics.md on it):
- Two teams: Maria Manager (Alice Rep, Aaron Rep) and Mark Manager (Bella Rep).
  Aaron moves to Mark's team in a later fetch of the users: USERS_LATEST says so.
- Five calls. Call 4 starts at 18:00 on 29 February in Los Angeles, 02:00 UTC on
  1 March (the UTC-day trap), and is enriched twice from the same raw event: first
  without a transcript and with another participant (Walter) and other talk times,
  then, on the transcript recheck, with its transcript and Wanda instead of Walter.
  The views must show only the second enrichment.
- Call 3 has no transcript yet; call 5 is private (never transcribed).
- Answered scorecard 7001 is edited after review (overall 4 -> 5): only the latest
  version counts. Its ids arrive as JSON numbers, as Gong sends them.
- A message on a subject the loader has no tables for (gong.enriched.deal).
"""

import json
import sys

MARIA = "900000000000000001"
MARK = "900000000000000002"
ALICE = "100000000000000001"
AARON = "100000000000000002"
BELLA = "100000000000000003"

CALL = {n: f"700000000000000000{n}" for n in range(1, 6)}


def user(uid, first, last, title, manager, fetched_at):
    entity = {
        "id": uid,
        "emailAddress": f"{first.lower()}@example.com",
        "created": "2023-01-02T09:00:00-08:00",
        "active": True,
        "emailAliases": [],
        "firstName": first,
        "lastName": last,
        "title": title,
        "phoneNumber": "+1 555 0100",
        "settings": {"webConferencesRecorded": True, "emailsImported": False},
        "spokenLanguages": [{"language": "en-US", "primary": True}],
    }
    if manager:
        entity["managerId"] = manager
    return {"subject": "gong.enriched.user", "fetched_at": fetched_at, "user": entity}


def party(pid, speaker, name, affiliation, user_id=None):
    entity = {
        "id": pid,
        "speakerId": speaker,
        "name": name,
        "emailAddress": f"{name.split()[0].lower()}@example.com",
        "affiliation": affiliation,
        "methods": ["Invitee"],
    }
    if user_id:
        entity["userId"] = user_id
    return entity


def call(
    n,
    *,
    msg_id,
    event_id,
    raw_seq,
    received_at,
    fetched_at,
    host,
    title,
    started,
    parties,
    talk,
    talk_ratio,
    topics=(),
    trackers=(),
    context=None,
    transcript=None,
    private=False,
):
    call_data = {
        "metaData": {
            "id": CALL[n],
            "url": f"https://app.gong.io/call?id={CALL[n]}",
            "title": title,
            "scheduled": started,
            "started": started,
            "duration": 1800,
            "primaryUserId": host,
            "direction": "Outbound",
            "system": "Zoom",
            "scope": "External",
            "media": "Video",
            "language": "eng",
            "workspaceId": "623457276584334",
            "isPrivate": private,
            "meetingUrl": "https://zoom.us/j/1",
        },
        "parties": parties,
        "content": {
            "topics": [{"name": name, "duration": seconds} for name, seconds in topics],
            "trackers": [
                {"id": tid, "name": name, "count": count, "type": "KEYWORD"}
                for tid, name, count in trackers
            ],
            "brief": f"{title}: brief",
        },
        "interaction": {
            "speakers": [
                {"id": pid, "talkTime": seconds} for pid, seconds in talk
            ],
            "interactionStats": [{"name": "Talk Ratio", "value": talk_ratio}],
        },
    }
    if context:
        call_data["context"] = context
    event = {
        "schema_version": 1,
        "event_id": event_id,
        "raw_event_id": event_id,
        "raw_stream_seq": raw_seq,
        "received_at": received_at,
        "fetched_at": fetched_at,
        "call": call_data,
    }
    if transcript is not None:
        event["transcript"] = transcript
    return {"subject": "gong.enriched.call", "msg_id": msg_id, "event": event}


def monologue(speaker, topic, sentences):
    return {"speakerId": speaker, "topic": topic, "sentences": sentences}


def scorecard(sid, call_n, started, reviewed, reviewer, review_time, answers, fetched_at):
    return {
        "subject": "gong.enriched.scorecard",
        "fetched_at": fetched_at,
        "scorecard": {
            # Gong sends these ids as JSON numbers.
            "answeredScorecardId": sid,
            "scorecardId": 600,
            "scorecardName": "Discovery call",
            "callId": int(CALL[call_n]),
            "callStartTime": started,
            "reviewedUserId": int(reviewed),
            "reviewerUserId": int(reviewer),
            "reviewTime": review_time,
            "visibilityType": "PUBLIC",
            "answers": answers,
        },
    }


def answer(question, overall=False, score=None, text=None, not_applicable=False, options=None):
    entity = {
        "questionId": question,
        "questionRevisionId": question * 10 + 1,
        "isOverall": overall,
        "score": score,
        "answerText": text,
        "notApplicable": not_applicable,
        "selectedOptions": options,
    }
    return entity


C4_STARTED = "2024-02-29T18:00:00-08:00"  # 2024-03-01T02:00:00Z
C4_COMMON = dict(
    event_id="e4",
    raw_seq=4,
    received_at="2024-03-01T05:00:00Z",
    host=BELLA,
    title="Globex pricing",
    started=C4_STARTED,
    topics=[("Pricing", 100)],
    trackers=[("t1", "Competitors", 1)],
)

S1_ANSWERS = [
    answer(2, score=3),
    answer(3, text="Clear agenda"),
    answer(4, not_applicable=True),
    answer(5, options=["1", "3"]),
]

EVENTS = [
    user(MARIA, "Maria", "Manager", "Sales Manager", None, "2024-03-01T00:00:00Z"),
    user(MARK, "Mark", "Manager", "Sales Manager", None, "2024-03-01T00:00:00Z"),
    user(ALICE, "Alice", "Rep", "Account Executive", MARIA, "2024-03-01T00:00:00Z"),
    user(AARON, "Aaron", "Rep", "Account Executive", MARIA, "2024-03-01T00:00:00Z"),
    user(BELLA, "Bella", "Rep", "Account Executive", MARK, "2024-03-01T00:00:00Z"),
    # Call 4, first enrichment: no transcript yet, Walter on the call.
    call(
        4,
        msg_id="e4#1",
        fetched_at="2024-03-01T05:01:00Z",
        parties=[
            party("41", "5301", "Bella Rep", "Internal", BELLA),
            party("42", "5302", "Walter Old", "External"),
        ],
        talk=[("41", 500), ("42", 500)],
        talk_ratio=0.5,
        **C4_COMMON,
    ),
    call(
        1,
        msg_id="e1",
        event_id="e1",
        raw_seq=1,
        received_at="2024-03-04T18:00:00Z",
        fetched_at="2024-03-04T18:01:00Z",
        host=ALICE,
        title="Acme discovery",
        started="2024-03-04T08:00:00-08:00",
        parties=[
            party("11", "5001", "Alice Rep", "Internal", ALICE),
            party("12", "5002", "Xavier Buyer", "External"),
        ],
        talk=[("11", 600), ("12", 400)],
        talk_ratio=0.6,
        topics=[("Pricing", 300), ("Intro", 60)],
        trackers=[("t1", "Competitors", 2)],
        context=[
            {
                "system": "Salesforce",
                "objects": [
                    {
                        "objectType": "Opportunity",
                        "objectId": "006A",
                        "fields": [
                            {"name": "Amount", "value": 50000},
                            {"name": "StageName", "value": "Discovery"},
                            {"name": "CloseDate", "value": None},
                        ],
                    }
                ],
            }
        ],
        transcript=[
            monologue(
                "5001",
                "Intro",
                [
                    {"start": 0, "end": 1500, "text": "Thanks for joining."},
                    {"start": 1500, "end": 4000, "text": "We can talk about a discount later."},
                ],
            ),
            monologue("5002", "Pricing", [{"start": 4000, "end": 5200, "text": "What does it cost?"}]),
        ],
    ),
    call(
        2,
        msg_id="e2",
        event_id="e2",
        raw_seq=2,
        received_at="2024-03-06T03:00:00Z",
        fetched_at="2024-03-06T03:01:00Z",
        host=ALICE,
        title="Acme proposal",
        started="2024-03-05T17:30:00-08:00",  # 2024-03-06T01:30:00Z
        parties=[
            party("21", "5101", "Alice Rep", "Internal", ALICE),
            party("22", "5102", "Yolanda Buyer", "External"),
        ],
        talk=[("21", 400), ("22", 600)],
        talk_ratio=0.4,
        topics=[("Pricing", 120)],
        trackers=[("t1", "Competitors", 1), ("t2", "Pricing objection", 3)],
        transcript=[
            monologue("5101", "Proposal", [{"start": 0, "end": 2000, "text": "Here is the proposal."}]),
            # Gong left out the times: they stay NULL.
            monologue("5102", "Proposal", [{"text": "Send it over."}]),
        ],
    ),
    scorecard(
        7001,
        1,
        "2024-03-04T08:00:00-08:00",
        ALICE,
        MARIA,
        "2024-03-05T18:00:00-08:00",
        [answer(1, overall=True, score=4)] + S1_ANSWERS,
        "2024-03-06T04:00:00Z",
    ),
    {"subject": "gong.enriched.deal", "msg_id": "deal-1", "payload": {"deal": 1}},
    scorecard(
        7003,
        4,
        C4_STARTED,
        BELLA,
        MARK,
        "2024-03-01T12:00:00Z",
        [answer(1, overall=True, score=5)],
        "2024-03-06T04:00:00Z",
    ),
    # Call 4 again, from the same raw event (same event id), on the transcript recheck.
    call(
        4,
        msg_id="e4#2",
        fetched_at="2024-03-07T00:00:00Z",
        parties=[
            party("41", "5301", "Bella Rep", "Internal", BELLA),
            party("43", "5303", "Wanda New", "External"),
        ],
        talk=[("41", 450), ("43", 550)],
        talk_ratio=0.45,
        transcript=[
            monologue("5301", "Pricing", [{"start": 0, "end": 2500, "text": "Happy to offer a discount."}]),
            monologue("5303", "Pricing", [{"start": 2500, "end": 3000, "text": "Great."}]),
        ],
        **C4_COMMON,
    ),
    call(
        3,
        msg_id="e3",
        event_id="e3",
        raw_seq=3,
        received_at="2024-03-11T17:00:00Z",
        fetched_at="2024-03-11T17:01:00Z",
        host=AARON,
        title="Initech next steps",
        started="2024-03-11T15:00:00Z",
        parties=[
            party("31", "5201", "Aaron Rep", "Internal", AARON),
            party("32", "5202", "Zoe Buyer", "External"),
        ],
        talk=[("31", 300), ("32", 700)],
        talk_ratio=0.3,
        topics=[("Next steps", 200)],
        trackers=[("t1", "Competitors", 4)],
    ),
    call(
        5,
        msg_id="e5",
        event_id="e5",
        raw_seq=5,
        received_at="2024-03-12T18:00:00Z",
        fetched_at="2024-03-12T18:01:00Z",
        host=BELLA,
        title="Hooli internal review",
        started="2024-03-12T09:00:00-07:00",  # 16:00 UTC (daylight saving time)
        parties=[
            party("51", "5401", "Bella Rep", "Internal", BELLA),
            party("52", "5402", "Victor Buyer", "External"),
        ],
        talk=[("51", 200), ("52", 200)],
        talk_ratio=0.55,
        private=True,
    ),
    user(AARON, "Aaron", "Rep", "Senior Account Executive", MARK, "2024-03-10T00:00:00Z"),
    scorecard(
        7002,
        3,
        "2024-03-11T15:00:00Z",
        AARON,
        MARIA,
        "2024-03-12T10:00:00Z",
        [answer(1, overall=True, score=2), answer(2, score=5)],
        "2024-03-12T12:00:00Z",
    ),
    # Scorecard 7001 edited after review: overall 4 -> 5.
    scorecard(
        7001,
        1,
        "2024-03-04T08:00:00-08:00",
        ALICE,
        MARIA,
        "2024-03-05T18:00:00-08:00",
        [answer(1, overall=True, score=5)] + S1_ANSWERS,
        "2024-03-12T12:00:00Z",
    ),
]


if __name__ == "__main__":
    for event in EVENTS:
        sys.stdout.write(json.dumps(event, sort_keys=True) + "\n")
