//! The users and answered scorecards jobs: every entity published once per fetch with its
//! content id, the lookback honoured, one fetch per interval for the whole deployment (server
//! times in a register), Gong's failures retried under the shared quota.

use std::collections::{BTreeSet, HashMap};

use async_nats::jetstream::message::StreamMessage;
use chrono::Utc;
use gong_common::event::{EnrichedScorecard, EnrichedUser};
use gong_common::gong::{AnsweredScorecard, User};
use gong_common::names;
use gong_common::streams::StreamSettings;
use gong_enrich::entities::{self, Job};
use gong_enrich::sweep::{Checkpoint, SweepState};
use gong_testkit::gong_double::{
    answered_scorecard_json, user_json, Fault, GongDoubleConfig, SCORECARDS_PATH, USERS_PATH,
};
use gong_testkit::wait_until;
use serde_json::Value;

use crate::support::{header, Harness, TIMEOUT};

/// A harness whose double pages by `page_size`.
async fn harness(page_size: usize) -> Harness {
    Harness::start_with(GongDoubleConfig {
        rate_per_second: 20,
        page_size,
        ..GongDoubleConfig::default()
    })
    .await
}

/// Settings with only `job` on, every `refresh`.
fn env_with(harness: &Harness, job: Job, refresh: &str) -> gong_common::Env {
    let mut env = harness.env(20);
    env.set("ENRICH_SWEEP_LEASE_TTL", "2s");
    match job {
        Job::Users => env.set("ENRICH_USERS_REFRESH", refresh),
        Job::Scorecards => env.set("ENRICH_SCORECARDS_REFRESH", refresh),
    }
    env
}

async fn checkpoint(harness: &Harness, job: Job) -> Checkpoint {
    entities::checkpoint(&harness.jetstream, &StreamSettings::default(), job)
        .await
        .expect("job checkpoint")
}

/// Waits until `job`'s checkpoint satisfies `done`; returns it.
async fn wait_state(
    checkpoint: &Checkpoint,
    what: &str,
    done: impl Fn(&SweepState) -> bool,
) -> SweepState {
    wait_until(TIMEOUT, what, || async {
        let state = checkpoint.read().await.ok()?.state;
        done(&state).then_some(state)
    })
    .await
}

async fn on_subject(harness: &Harness, subject: &str) -> Vec<StreamMessage> {
    harness
        .messages(names::STREAM_ENRICHED)
        .await
        .into_iter()
        .filter(|message| message.subject.as_str() == subject)
        .collect()
}

fn seeded_users(count: u64) -> Vec<Value> {
    (0..count)
        .map(|offset| {
            let id = (234_599_484_848_000 + offset).to_string();
            user_json(&id, (offset > 0).then_some("234599484848000"))
        })
        .collect()
}

#[tokio::test]
async fn users_over_several_pages_are_published_once_with_their_content_ids() {
    let harness = harness(2).await;
    let users = seeded_users(5);
    harness.gong.add_users(users.clone());
    let env = env_with(&harness, Job::Users, "1h");
    let enricher = harness.enricher(harness.config(&env)).await;
    let checkpoint = checkpoint(&harness, Job::Users).await;
    let state = wait_state(&checkpoint, "a completed users fetch", |state| {
        state.last_success_ms > 0
    })
    .await;
    assert_eq!(
        (state.last_counts.listed, state.last_counts.injected),
        (5, 5)
    );
    assert_eq!(state.last_counts.pages, 3);
    assert_eq!(
        harness.gong.stats().requests_to(USERS_PATH),
        3,
        "3 pages of 2"
    );

    // Acknowledged before the fetch completed: all there, once, with the content id.
    let messages = on_subject(&harness, names::SUBJECT_ENRICHED_USER).await;
    assert_eq!(messages.len(), 5);
    let expected: HashMap<String, String> = users
        .iter()
        .map(|json| {
            let user: User = serde_json::from_value(json.clone()).unwrap();
            let id = user.id.clone().unwrap();
            (id, EnrichedUser::new(user, Utc::now()).event_id)
        })
        .collect();
    let mut published = BTreeSet::new();
    for message in &messages {
        let event = EnrichedUser::from_json(&message.payload).expect("an enriched user");
        let user_id = event.user_id().expect("user id").to_string();
        assert_eq!(event.event_id, expected[&user_id], "user {user_id}");
        assert_eq!(
            header(message, "Nats-Msg-Id"),
            Some(event.event_id.as_str())
        );
        assert_eq!(
            header(message, names::headers::EVENT_ID),
            Some(event.event_id.as_str())
        );
        assert!(published.insert(user_id));
    }
    assert_eq!(published.len(), 5);
    assert_eq!(harness.gong.stats().violations(), 0);

    // The gauges: the deployment's last success (server time) and what it published. The
    // recorder is global to this test binary and other tests' enrichers set the same series, so
    // only what holds for all of them is asserted.
    let url = format!("http://{}/metrics", enricher.running.admin_addr);
    wait_until(TIMEOUT, "entity gauges", || {
        let url = url.clone();
        async move {
            let body = reqwest::get(&url).await.ok()?.text().await.ok()?;
            let value = |series: &str| -> Option<f64> {
                body.lines()
                    .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            };
            let last = value("gong_enrich_entities_last_success_timestamp_seconds{job=\"users\"}")?;
            let near = (last - Utc::now().timestamp() as f64).abs() < 3600.0;
            (near
                && value("gong_enrich_entities_last_published{job=\"users\"}")? >= 1.0
                && value("gong_enrich_entities_interval_seconds{job=\"users\"}")? > 0.0
                && value("gong_enrich_entities_total{job=\"users\",result=\"published\"}")? >= 5.0)
                .then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn scorecards_reviewed_in_the_lookback_are_published_and_older_ones_not() {
    let harness = harness(2).await;
    // The company is at UTC+14: review dates there run a day ahead of UTC's.
    harness.gong.set_company_utc_offset(14 * 60);
    let now = Utc::now();
    let inside = [
        answered_scorecard_json(5_001, 7_001, 1, 2, now - chrono::Duration::hours(1)),
        answered_scorecard_json(5_002, 7_002, 1, 2, now - chrono::Duration::days(3)),
        answered_scorecard_json(5_003, 7_003, 3, 2, now - chrono::Duration::days(6)),
    ];
    let outside = answered_scorecard_json(5_004, 7_004, 1, 2, now - chrono::Duration::days(12));
    assert_eq!(
        harness
            .gong
            .add_answered_scorecards(inside.iter().cloned().chain([outside])),
        4
    );
    let env = env_with(&harness, Job::Scorecards, "1h");
    let _enricher = harness.enricher(harness.config(&env)).await;
    let checkpoint = checkpoint(&harness, Job::Scorecards).await;
    let state = wait_state(&checkpoint, "a completed scorecards fetch", |state| {
        state.last_success_ms > 0
    })
    .await;
    assert_eq!(state.last_counts.injected, 3, "{state:?}");
    assert_eq!(harness.gong.stats().requests_to(SCORECARDS_PATH), 2);

    let messages = on_subject(&harness, names::SUBJECT_ENRICHED_SCORECARD).await;
    let mut ids = BTreeSet::new();
    for message in &messages {
        let event = EnrichedScorecard::from_json(&message.payload).expect("an enriched scorecard");
        let card = &event.scorecard;
        // Ids came as JSON numbers and are kept as strings.
        let id = event.answered_scorecard_id().expect("id").to_string();
        let sent = inside
            .iter()
            .find(|json| {
                json["answeredScorecardId"]
                    .as_u64()
                    .map(|sent| sent.to_string())
                    .as_deref()
                    == Some(id.as_str())
            })
            .expect("a scorecard of the lookback");
        let parsed: AnsweredScorecard = serde_json::from_value(sent.clone()).unwrap();
        assert_eq!(event.event_id, EnrichedScorecard::new(parsed, now).event_id);
        assert_eq!(
            header(message, "Nats-Msg-Id"),
            Some(event.event_id.as_str())
        );
        assert_eq!(
            card.call_id.as_deref(),
            Some(sent["callId"].to_string().as_str())
        );
        assert_eq!(card.answers.as_ref().map(Vec::len), Some(4));
        ids.insert(id);
    }
    assert_eq!(
        ids,
        BTreeSet::from(["5001".to_string(), "5002".into(), "5003".into()])
    );
    assert_eq!(messages.len(), 3);
}

#[tokio::test]
async fn a_job_refreshes_after_its_interval_and_unchanged_entities_are_stored_once() {
    let harness = harness(2).await;
    harness.gong.add_users(seeded_users(3));
    let env = env_with(&harness, Job::Users, "2s");
    let _enricher = harness.enricher(harness.config(&env)).await;
    let checkpoint = checkpoint(&harness, Job::Users).await;
    let first = wait_state(&checkpoint, "a first users fetch", |state| {
        state.last_success_ms > 0
    })
    .await;
    // A user edited in Gong: the next fetch publishes it again, the others are duplicates.
    let mut edited = user_json("234599484848001", Some("234599484848000"));
    edited["title"] = Value::String("VP Sales".into());
    harness.gong.replace_user(edited);
    wait_state(&checkpoint, "a second users fetch", |state| {
        state.last_success_ms > first.last_success_ms
    })
    .await;
    assert!(harness.gong.stats().requests_to(USERS_PATH) >= 4);
    let messages = on_subject(&harness, names::SUBJECT_ENRICHED_USER).await;
    assert_eq!(messages.len(), 4, "three users once, the edited one again");
    let titles: Vec<String> = messages
        .iter()
        .filter_map(|message| {
            let event = EnrichedUser::from_json(&message.payload).ok()?;
            (event.user_id() == Some("234599484848001")).then(|| event.user.title.unwrap())
        })
        .collect();
    assert_eq!(titles.len(), 2);
    assert_eq!(titles[1], "VP Sales");
}

#[tokio::test]
async fn a_second_look_within_the_interval_fetches_nothing() {
    let harness = harness(2).await;
    harness.gong.add_users(seeded_users(3));
    // 60 s: the job looks every 5 s, each look writes a tick to learn the server's time.
    let env = env_with(&harness, Job::Users, "60s");
    let _enricher = harness.enricher(harness.config(&env)).await;
    let checkpoint = checkpoint(&harness, Job::Users).await;
    let fetched = wait_state(&checkpoint, "a users fetch", |state| {
        state.last_success_ms > 0
    })
    .await;
    let requests = harness.gong.stats().requests_to(USERS_PATH);
    assert_eq!(requests, 2);
    wait_state(&checkpoint, "a later look", |state| {
        state.ticks > fetched.ticks
    })
    .await;
    assert_eq!(harness.gong.stats().requests_to(USERS_PATH), requests);
}

#[tokio::test]
async fn two_replicas_fetch_once_and_a_restart_does_not_fetch_again() {
    let harness = harness(2).await;
    harness.gong.add_users(seeded_users(5));
    let now = Utc::now();
    harness
        .gong
        .add_answered_scorecards([answered_scorecard_json(
            6_001,
            8_001,
            1,
            2,
            now - chrono::Duration::hours(2),
        )]);
    let mut env = env_with(&harness, Job::Users, "1h");
    env.set("ENRICH_SCORECARDS_REFRESH", "1h");
    let (first, second) = tokio::join!(
        harness.enricher(harness.config(&env)),
        harness.enricher(harness.config(&env))
    );
    let users = checkpoint(&harness, Job::Users).await;
    let scorecards = checkpoint(&harness, Job::Scorecards).await;
    // Both replicas looked (one fetched, the other found it done), for each job.
    for (checkpoint, job) in [(&users, "users"), (&scorecards, "scorecards")] {
        wait_state(
            checkpoint,
            &format!("{job}: fetched, both replicas looked"),
            |state| state.last_success_ms > 0 && state.ticks >= 2,
        )
        .await;
    }
    let stats = harness.gong.stats();
    assert_eq!(stats.requests_to(USERS_PATH), 3, "one fetch of 3 pages");
    assert_eq!(stats.requests_to(SCORECARDS_PATH), 1, "one fetch of 1 page");

    // Every replica restarted right after: the register remembers the fetch.
    drop(first);
    drop(second);
    let ticks = users.read().await.unwrap().state.ticks;
    let _restarted = harness.enricher(harness.config(&env)).await;
    wait_state(&users, "the restarted replica looked", |state| {
        state.ticks > ticks
    })
    .await;
    let stats = harness.gong.stats();
    assert_eq!(stats.requests_to(USERS_PATH), 3, "no new users fetch");
    assert_eq!(
        on_subject(&harness, names::SUBJECT_ENRICHED_USER)
            .await
            .len(),
        5
    );
    assert_eq!(
        on_subject(&harness, names::SUBJECT_ENRICHED_SCORECARD)
            .await
            .len(),
        1
    );
}

#[tokio::test]
async fn gong_failures_are_retried_with_backoff_and_never_exceed_the_quota() {
    let harness = Harness::start_with(GongDoubleConfig {
        rate_per_second: 3,
        page_size: 2,
        ..GongDoubleConfig::default()
    })
    .await;
    // 6 pages: more than the 3 requests a second Gong allows, if they were not paced.
    harness.gong.add_users(seeded_users(12));
    // One in-process retry: the first two fetches fail (500, 500 / 500, 429) and the job tries
    // again at its next ticks.
    harness.gong.set_fault(Fault::ServerError, 3);
    harness.gong.set_fault(
        Fault::RateLimited {
            retry_after_secs: 1,
        },
        1,
    );
    let mut env = env_with(&harness, Job::Users, "12s");
    env.set("GONG_RATE_LIMIT_PER_SECOND", "3");
    env.set("ENRICH_REQUEST_RETRIES", "1");
    let enricher = harness.enricher(harness.config(&env)).await;
    let checkpoint = checkpoint(&harness, Job::Users).await;
    let state = wait_state(
        &checkpoint,
        "a users fetch despite gong's failures",
        |state| state.last_success_ms > 0,
    )
    .await;
    assert_eq!(state.last_counts.injected, 12);
    let stats = harness.gong.stats();
    assert_eq!(stats.faults_served, 4);
    assert_eq!(stats.violations(), 0, "{stats:?}");
    assert_eq!(
        on_subject(&harness, names::SUBJECT_ENRICHED_USER)
            .await
            .len(),
        12
    );
    // The service kept running.
    assert!(!enricher.running.task.is_finished());
}
