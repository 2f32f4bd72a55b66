//! The stage fails mid-load: the S3 endpoint (moto) disappears, or the local stage stops
//! accepting writes. gong-load must not acknowledge anything that is not durable on the stage
//! (guarantee 1), retry by itself, recover when the stage comes back, and leave no partial file
//! visible; every 2xx'd event ends up staged exactly once.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gong_common::names;
use gong_testkit::s3::MotoServer;
use gong_testkit::NatsServer;
use object_store::ObjectStore;

use crate::support::pipeline::{
    both, poll, progress, wait_drained, Options, Pipeline, StageTarget,
};
use crate::support::sender::{call_ids, Sender, Traffic};
use crate::support::stage::{assert_clean, read_local, read_store, Staged, Verdict};
use crate::support::{first_call_id, report, scaled};
use gong_testkit::proxy::Proxy;

/// Where the test reads the stage from (never through the fault).
enum Reader {
    Local(PathBuf),
    S3 {
        store: Arc<dyn ObjectStore>,
        prefix: String,
    },
}

impl Reader {
    async fn read(&self) -> Staged {
        match self {
            Reader::Local(root) => read_local(root),
            Reader::S3 { store, prefix } => read_store(store, prefix)
                .await
                .unwrap_or_else(|reason| panic!("read moto directly: {reason}")),
        }
    }
}

/// How the stage is broken and repaired.
enum Fault {
    /// The proxy in front of moto goes down (refused connections, open ones cut).
    S3Endpoint(Proxy),
    /// The `calls` table directory is reached through a symlink, atomically swapped to point
    /// at a regular file: every write under `calls/` fails with ENOTDIR, for root too (chmod
    /// does not stop root), and nothing already staged moves.
    LocalTableDir {
        link: PathBuf,
        real: PathBuf,
        blocker: PathBuf,
    },
}

/// Atomically points the symlink `link` at `target` (a new link renamed over the old one).
fn retarget(link: &Path, target: &Path) {
    // Made outside the stage, so a reader never sees it.
    let outside = link
        .parent()
        .and_then(Path::parent)
        .expect("stage has a parent");
    let fresh = outside.join("calls.swap");
    let _ = std::fs::remove_file(&fresh);
    std::os::unix::fs::symlink(target, &fresh).expect("create symlink");
    std::fs::rename(&fresh, link).expect("swap symlink");
}

impl Fault {
    async fn inject(&self) {
        match self {
            Fault::S3Endpoint(proxy) => proxy.down(),
            Fault::LocalTableDir { link, blocker, .. } => retarget(link, blocker),
        }
    }

    async fn repair(&self) {
        match self {
            Fault::S3Endpoint(proxy) => proxy.up().await,
            Fault::LocalTableDir { link, real, .. } => retarget(link, real),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Fault::S3Endpoint(_) => "s3_endpoint_down",
            Fault::LocalTableDir { .. } => "local_table_dir_unwritable",
        }
    }
}

/// Sum of every series of `name` in a Prometheus text.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |total, value| total + value)
}

async fn stage_outage_mid_load(options: Options, nats: &NatsServer, reader: Reader, fault: Fault) {
    let webhooks = scaled(300usize, 1000);
    let outage = scaled(Duration::from_secs(6), Duration::from_secs(20));
    let pipeline = Pipeline::start(options).await;
    let jetstream = nats.jetstream().await;
    let sender = Arc::new(Sender::new(pipeline.ingest.webhook_url()));
    let traffic = Traffic::start(
        sender,
        call_ids(first_call_id(), webhooks),
        4,
        scaled(Duration::from_millis(80), Duration::from_millis(100)),
    );
    traffic.wait_accepted(webhooks / 4, webhooks).await;

    // Strike right after a flush was acknowledged: the next one is about LOAD_FLUSH_MAX_AGE
    // away, so no write is caught half-way by the switch itself.
    let before = progress(&jetstream, names::STREAM_ENRICHED, names::CONSUMER_LOAD)
        .await
        .map(|load| load.ack_floor)
        .unwrap_or(0);
    poll(Duration::from_secs(60), "a flush acknowledged", || async {
        let load = progress(&jetstream, names::STREAM_ENRICHED, names::CONSUMER_LOAD).await?;
        (load.ack_floor > before).then_some(())
    })
    .await
    .unwrap_or_else(|reason| panic!("{reason}\n{}", pipeline.explain()));
    fault.inject().await;
    let down_at = Instant::now();

    // Half-way through the outage the floor is frozen: every flush since the fault failed.
    tokio::time::sleep(outage / 2).await;
    let frozen = progress(&jetstream, names::STREAM_ENRICHED, names::CONSUMER_LOAD)
        .await
        .expect("load consumer");
    tokio::time::sleep(outage.saturating_sub(down_at.elapsed())).await;
    let at_end = progress(&jetstream, names::STREAM_ENRICHED, names::CONSUMER_LOAD)
        .await
        .expect("load consumer");
    let stage_errors = metric_sum(
        &pipeline.load().metrics().await.unwrap_or_default(),
        "gong_load_stage_errors_total",
    );
    fault.repair().await;
    let up_at = Instant::now();
    // Read after the repair (files never disappear, so this is a superset of what was staged
    // when the floor was read): everything acked by then is on the stage.
    let uncovered = reader.read().await.uncovered_up_to(at_end.ack_floor);

    assert!(
        uncovered.is_empty(),
        "{}: gong-load acked sequences {uncovered:?} that are not on the stage\n{}",
        fault.name(),
        pipeline.explain()
    );
    assert_eq!(
        at_end.ack_floor,
        frozen.ack_floor,
        "{}: gong-load acknowledged while the stage was failing\n{}",
        fault.name(),
        pipeline.explain()
    );
    assert!(
        at_end.pending + at_end.ack_pending as u64 > 0,
        "{}: no work was waiting during the outage ({at_end:?}): the fault tested nothing",
        fault.name()
    );

    let recovered = poll(
        Duration::from_secs(120),
        "a new ack after the repair",
        || async {
            let load = progress(&jetstream, names::STREAM_ENRICHED, names::CONSUMER_LOAD).await?;
            (load.ack_floor > at_end.ack_floor).then_some(up_at.elapsed())
        },
    )
    .await
    .unwrap_or_else(|reason| panic!("{}: {reason}\n{}", fault.name(), pipeline.explain()));

    let deliveries = traffic.finish().await;
    let drained = wait_drained(&jetstream, &deliveries, || reader.read()).await;
    let staged = reader.read().await;
    let verdict = Verdict::of(&deliveries, &staged);
    if let Err(reason) = drained {
        panic!(
            "{}: {reason}: {}; consumers {:?}\n{}",
            fault.name(),
            verdict.line(),
            both(&jetstream).await,
            pipeline.explain()
        );
    }
    report(
        "stage_faults",
        serde_json::json!({
            "fault": fault.name(),
            "webhooks": webhooks,
            "outage_s": outage.as_secs_f64(),
            "accepted": verdict.accepted,
            "missing": verdict.missing.len(),
            "duplicate_events": verdict.duplicate_events.len(),
            "duplicate_calls": verdict.duplicate_calls.len(),
            "stage_errors_during_outage": stage_errors,
            "waiting_at_end_of_outage": at_end.pending + at_end.ack_pending as u64,
            "first_ack_after_repair_s": recovered.as_secs_f64(),
            "strays": staged.strays.len() + staged.unreadable.len(),
        }),
    );
    assert_eq!(verdict.accepted, webhooks, "{}", verdict.line());
    assert_clean(&verdict, &staged, fault.name(), &pipeline.explain());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_endpoint_down_mid_load_is_retried_without_acks() {
    let moto = MotoServer::start();
    moto.create_bucket("gong-stage");
    let upstream = moto
        .endpoint()
        .trim_start_matches("http://")
        .parse()
        .expect("moto address");
    let proxy = Proxy::start(upstream).await;
    let mut aws = moto.env();
    for (var, value) in &mut aws {
        if var == "AWS_ENDPOINT_URL" {
            *value = proxy.endpoint();
        }
    }
    let store: Arc<dyn ObjectStore> = Arc::new(moto.store("gong-stage"));
    let nats = NatsServer::start_new();
    let options = Options::new(
        nats.url(),
        StageTarget::S3 {
            url: "s3://gong-stage/e2e".into(),
            env: aws,
        },
    );
    let reader = Reader::S3 {
        store,
        prefix: "e2e".into(),
    };
    stage_outage_mid_load(options, &nats, reader, Fault::S3Endpoint(proxy)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwritable_local_stage_mid_load_is_retried_without_acks() {
    let root = tempfile::tempdir().expect("tempdir");
    let stage = root.path().join("stage");
    let real = root.path().join("calls-table");
    let blocker = root.path().join("not-a-directory");
    std::fs::create_dir_all(&stage).expect("stage dir");
    std::fs::create_dir_all(&real).expect("calls dir");
    std::fs::write(
        &blocker,
        b"writes under calls/ fail while the link points here",
    )
    .unwrap();
    let link = stage.join("calls");
    std::os::unix::fs::symlink(&real, &link).expect("calls symlink");
    let nats = NatsServer::start_new();
    let options = Options::new(nats.url(), StageTarget::Local(stage.clone()));
    let fault = Fault::LocalTableDir {
        link,
        real,
        blocker,
    };
    stage_outage_mid_load(options, &nats, Reader::Local(stage), fault).await;
}
