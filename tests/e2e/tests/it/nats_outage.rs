//! NATS outage under load: nats-server is killed for a few seconds while webhooks flow, then
//! started again on the same port and store. gong-ingest answers 503 meanwhile and never 2xx for
//! an event it did not store (guarantee 1); every stage reconnects by itself (no restart); every
//! 2xx'd event is staged exactly once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gong_testkit::NatsServer;

use crate::support::pipeline::{both, poll, wait_drained, Options, Pipeline, StageTarget};
use crate::support::process::Kind;
use crate::support::sender::{answer_counts, call_ids, Sender, Traffic};
use crate::support::stage::{assert_clean, read_local, Verdict};
use crate::support::{first_call_id, report, scaled};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_answers_503_during_a_nats_outage_and_every_stage_recovers_alone() {
    let webhooks = scaled(400usize, 1500);
    let outage = scaled(Duration::from_secs(5), Duration::from_secs(20));

    let mut nats = NatsServer::start_new();
    let root = tempfile::tempdir().expect("tempdir");
    let stage = root.path().join("stage");
    let options = Options::new(nats.url(), StageTarget::Local(stage.clone())).with(
        Kind::Ingest,
        "INGEST_PUBLISH_TIMEOUT",
        "1s",
    );
    let mut pipeline = Pipeline::start(options).await;
    let pids = [
        pipeline.ingest.pid(),
        pipeline.enrich().pid(),
        pipeline.load().pid(),
    ];
    let sender = Arc::new(Sender::new(pipeline.ingest.webhook_url()));
    let traffic = Traffic::start(
        sender,
        call_ids(first_call_id(), webhooks),
        4,
        scaled(Duration::from_millis(100), Duration::from_millis(120)),
    );
    traffic.wait_accepted(webhooks / 3, webhooks).await;

    nats.stop();
    let down_at = Instant::now();
    // Readiness follows JetStream: gong-ingest reports unready during the outage.
    let ingest_readyz = format!("{}/readyz", pipeline.ingest.admin_url());
    let unready_seen = poll(outage, "gong-ingest /readyz to fail", || {
        let url = ingest_readyz.clone();
        async move {
            let status = reqwest::get(url).await.ok()?.status();
            (!status.is_success()).then_some(())
        }
    })
    .await
    .is_ok();
    // The outage lasts `outage`, whatever happened meanwhile (this is the fault, not a wait
    // for state).
    tokio::time::sleep(outage.saturating_sub(down_at.elapsed())).await;
    nats.start();
    let up_at = Instant::now();

    let deliveries = traffic.finish().await;
    let jetstream = nats.jetstream().await;
    let drained = wait_drained(&jetstream, &deliveries, || async { read_local(&stage) }).await;
    let settled_after_restart = up_at.elapsed();
    let staged = read_local(&stage);
    let verdict = Verdict::of(&deliveries, &staged);
    if let Err(reason) = drained {
        panic!(
            "{reason}: {}; consumers {:?}\n{}",
            verdict.line(),
            both(&jetstream).await,
            pipeline.explain()
        );
    }

    // Attempts made and answered entirely inside the outage.
    let inside: Vec<_> = deliveries
        .iter()
        .flat_map(|delivery| &delivery.attempts)
        .filter(|attempt| attempt.started > down_at && attempt.ended < up_at)
        .collect();
    let inside_2xx = inside
        .iter()
        .filter(|attempt| matches!(attempt.status, Some(200..=299)))
        .count();
    let inside_503 = inside
        .iter()
        .filter(|attempt| attempt.status == Some(503))
        .count();
    let first_2xx_after = deliveries
        .iter()
        .flat_map(|delivery| &delivery.attempts)
        .filter(|attempt| attempt.started >= up_at && matches!(attempt.status, Some(200..=299)))
        .map(|attempt| attempt.ended.duration_since(up_at))
        .min();
    let (ok, unavailable, transport, other) = answer_counts(&deliveries);
    report(
        "nats_outage",
        serde_json::json!({
            "webhooks": webhooks,
            "outage_s": outage.as_secs_f64(),
            "accepted": verdict.accepted,
            "missing": verdict.missing.len(),
            "duplicate_events": verdict.duplicate_events.len(),
            "duplicate_calls": verdict.duplicate_calls.len(),
            "staged_without_2xx": verdict.staged_without_2xx,
            "strays": staged.strays.len() + staged.unreadable.len(),
            "answers_2xx": ok,
            "answers_503": unavailable,
            "transport_errors": transport,
            "other_answers": other,
            "attempts_inside_outage": inside.len(),
            "answers_503_inside_outage": inside_503,
            "ingest_first_2xx_after_restart_s": first_2xx_after.map(|d| d.as_secs_f64()),
            "all_staged_after_restart_s": settled_after_restart.as_secs_f64(),
        }),
    );

    assert_eq!(
        inside_2xx, 0,
        "gong-ingest answered 2xx while NATS was down"
    );
    assert!(
        inside_503 > 0,
        "no 503 was answered during the outage ({} attempts inside it)",
        inside.len()
    );
    assert!(
        unready_seen,
        "gong-ingest /readyz stayed 200 with NATS down"
    );
    assert_eq!(other, 0, "answers other than 2xx/503");
    assert_eq!(
        verdict.accepted,
        webhooks,
        "a 503'd webhook retried after the outage is accepted ({})",
        verdict.line()
    );
    assert_clean(&verdict, &staged, "nats_outage", &pipeline.explain());
    let Pipeline {
        ingest,
        enrichers,
        loaders,
        ..
    } = &mut pipeline;
    for service in std::iter::once(ingest).chain(enrichers).chain(loaders) {
        assert!(
            service.is_running() && service.starts == 1,
            "{:?} did not survive the outage by itself\n{}",
            service.kind,
            service.log_tail(30)
        );
    }
    assert_eq!(
        [
            pipeline.ingest.pid(),
            pipeline.enrich().pid(),
            pipeline.load().pid()
        ],
        pids
    );
}
