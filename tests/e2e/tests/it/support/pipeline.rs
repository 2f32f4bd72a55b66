//! The whole pipeline as processes: gong-ingest → GONG_RAW → gong-enrich (Gong double) →
//! GONG_ENRICHED → gong-load → stage, plus what the tests observe of it.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream;
use gong_common::names;
use gong_testkit::gong_double::{GongDouble, GongDoubleConfig};
use gong_testkit::webhook::TestKey;

use super::process::{Kind, Service};

/// Where gong-load writes.
pub enum StageTarget {
    /// A local directory (`file://`).
    Local(PathBuf),
    /// An S3 bucket and prefix, with the `AWS_*` variables to reach it.
    S3 {
        /// `s3://bucket/prefix`.
        url: String,
        /// `AWS_ENDPOINT_URL` and friends.
        env: Vec<(String, String)>,
    },
}

/// How to start the pipeline.
pub struct Options {
    /// `NATS_URL` (comma-separated for a cluster).
    pub nats_url: String,
    /// `STREAM_REPLICAS`.
    pub replicas: usize,
    /// The stage.
    pub stage: StageTarget,
    /// Requests per second the Gong double admits (and gong-enrich is told).
    pub gong_rate: u32,
    /// Extra variables per stage.
    pub extra: Vec<(Kind, &'static str, String)>,
    /// gong-enrich processes (1 unless set).
    pub enrich_replicas: usize,
    /// gong-load processes (1 unless set).
    pub load_replicas: usize,
    /// Fills the Gong double before any stage starts (gong-enrich fetches users and answered
    /// scorecards at start).
    pub seed_gong: Option<fn(&GongDouble)>,
}

impl Options {
    /// Defaults for a single nats-server at `nats_url` and a local stage at `stage`.
    pub fn new(nats_url: String, stage: StageTarget) -> Options {
        Options {
            nats_url,
            replicas: 1,
            stage,
            gong_rate: 10,
            extra: Vec::new(),
            enrich_replicas: 1,
            load_replicas: 1,
            seed_gong: None,
        }
    }

    /// Adds `var=value` to one stage's environment (overrides the defaults).
    pub fn with(mut self, kind: Kind, var: &'static str, value: impl Into<String>) -> Options {
        self.extra.push((kind, var, value.into()));
        self
    }
}

/// The three stages and the Gong double.
pub struct Pipeline {
    /// Logs and spool files.
    pub dir: tempfile::TempDir,
    /// The Gong REST API double (in-process).
    pub gong: GongDouble,
    /// gong-ingest.
    pub ingest: Service,
    /// The gong-enrich replicas (`Options::enrich_replicas`, at least one).
    pub enrichers: Vec<Service>,
    /// The gong-load replicas (`Options::load_replicas`, at least one).
    pub loaders: Vec<Service>,
}

fn env(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(key, value)| (key.to_string(), value.clone()))
        .collect()
}

impl Pipeline {
    /// Starts the Gong double, then ingest, enrich and load (each ready before the next).
    pub async fn start(options: Options) -> Pipeline {
        Pipeline::launch(options, true).await
    }

    /// Starts the Gong double and every stage process at once, without waiting for any to be
    /// ready (as an operator applying the manifests would).
    pub async fn spawn(options: Options) -> Pipeline {
        Pipeline::launch(options, false).await
    }

    async fn launch(options: Options, wait_ready: bool) -> Pipeline {
        let dir = tempfile::Builder::new()
            .prefix("gong-e2e-")
            .tempdir()
            .expect("tempdir");
        let gong = GongDouble::start(GongDoubleConfig {
            rate_per_second: options.gong_rate,
            ..GongDoubleConfig::default()
        })
        .await
        .expect("gong double");
        if let Some(seed) = options.seed_gong {
            seed(&gong);
        }
        let common = [
            ("NATS_URL", options.nats_url.clone()),
            ("NATS_REQUEST_TIMEOUT", "2s".to_string()),
            ("STREAM_REPLICAS", options.replicas.to_string()),
        ];
        let mut ingest_env = env(&common);
        ingest_env.extend(env(&[
            (
                "GONG_WEBHOOK_SECRETS",
                TestKey::rule_a().public_base64_der(),
            ),
            ("INGEST_PUBLISH_TIMEOUT", "2s".to_string()),
            ("INGEST_RETRY_AFTER_SECS", "1".to_string()),
            ("INGEST_SHUTDOWN_GRACE", "5s".to_string()),
        ]));
        let mut enrich_env = env(&common);
        enrich_env.extend(env(&[
            ("GONG_API_BASE_URL", gong.base_url()),
            (
                "GONG_ACCESS_KEY",
                gong_testkit::gong_double::DEFAULT_ACCESS_KEY.to_string(),
            ),
            (
                "GONG_ACCESS_KEY_SECRET",
                gong_testkit::gong_double::DEFAULT_ACCESS_KEY_SECRET.to_string(),
            ),
            ("GONG_RATE_LIMIT_PER_SECOND", options.gong_rate.to_string()),
            ("ENRICH_BATCH_LINGER", "300ms".to_string()),
            // A SIGKILLed enricher's batch comes back to the next one after this.
            ("ENRICH_ACK_WAIT", "4s".to_string()),
            ("ENRICH_PENDING_REFRESH", "1s".to_string()),
            ("ENRICH_RETRY_BACKOFF_BASE", "100ms".to_string()),
            ("ENRICH_RETRY_BACKOFF_MAX", "1s".to_string()),
            ("ENRICH_HTTP_TIMEOUT", "5s".to_string()),
            ("ENRICH_SHUTDOWN_GRACE", "5s".to_string()),
        ]));
        let mut load_env = env(&common);
        let stage_url = match &options.stage {
            StageTarget::Local(path) => format!("file://{}", path.display()),
            StageTarget::S3 { url, env: aws } => {
                load_env.extend(aws.iter().cloned());
                url.clone()
            }
        };
        load_env.extend(env(&[
            ("STAGE_URL", stage_url),
            (
                "LOAD_SPOOL_DIR",
                dir.path().join("spool").display().to_string(),
            ),
            ("LOAD_FLUSH_MAX_AGE", "1s".to_string()),
            ("LOAD_FLUSH_MAX_ROWS", "200".to_string()),
            // A SIGKILLed loader's messages come back after this; a standby takes the load
            // lease once the dead holder has not renewed it for the lease ttl.
            ("LOAD_ACK_WAIT", "4s".to_string()),
            ("LOAD_LEASE_TTL", "2s".to_string()),
            ("LOAD_RETRY_MAX_BACKOFF", "1s".to_string()),
            ("LOAD_SHUTDOWN_GRACE", "5s".to_string()),
        ]));
        for (kind, var, value) in &options.extra {
            let target = match kind {
                Kind::Ingest => &mut ingest_env,
                Kind::Enrich => &mut enrich_env,
                Kind::Load => &mut load_env,
            };
            target.retain(|(key, _)| key != var);
            target.push((var.to_string(), value.clone()));
        }
        // One replica keeps the plain log name (`gong-load.log`); several are numbered.
        let replicas = |kind: Kind, count: usize, env: &Vec<(String, String)>| {
            let count = count.max(1);
            (0..count)
                .map(|index| match count {
                    1 => Service::new(kind, dir.path(), env.clone()),
                    _ => Service::replica(kind, index, dir.path(), env.clone()),
                })
                .collect::<Vec<_>>()
        };
        let mut ingest = Service::new(Kind::Ingest, dir.path(), ingest_env);
        let mut enrichers = replicas(Kind::Enrich, options.enrich_replicas, &enrich_env);
        let mut loaders = replicas(Kind::Load, options.load_replicas, &load_env);
        for service in std::iter::once(&mut ingest)
            .chain(enrichers.iter_mut())
            .chain(loaders.iter_mut())
        {
            if wait_ready {
                service.start().await;
            } else {
                service.spawn();
            }
        }
        Pipeline {
            dir,
            gong,
            ingest,
            enrichers,
            loaders,
        }
    }

    /// The (first) gong-enrich.
    pub fn enrich(&self) -> &Service {
        &self.enrichers[0]
    }

    /// The (first) gong-enrich, to kill or restart.
    pub fn enrich_mut(&mut self) -> &mut Service {
        &mut self.enrichers[0]
    }

    /// The (first) gong-load.
    pub fn load(&self) -> &Service {
        &self.loaders[0]
    }

    /// The (first) gong-load, to kill or restart.
    pub fn load_mut(&mut self) -> &mut Service {
        &mut self.loaders[0]
    }

    /// Every stage process: ingest, the enrichers, the loaders.
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        std::iter::once(&self.ingest)
            .chain(&self.enrichers)
            .chain(&self.loaders)
    }

    /// Log tails of every stage, for a failing test to explain itself.
    pub fn explain(&self) -> String {
        self.services()
            .map(|service| service.log_tail(30))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Pipeline {
    /// A failing test keeps the logs (`E2E_KEEP_LOGS=1` keeps them always).
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("E2E_KEEP_LOGS").is_some() {
            self.dir.disable_cleanup(true);
            eprintln!("stage logs kept in {}", self.dir.path().display());
        }
    }
}

/// A consumer's progress.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// Messages not yet delivered.
    pub pending: u64,
    /// Delivered, not acknowledged.
    pub ack_pending: usize,
    /// Highest stream sequence below which everything is acknowledged.
    pub ack_floor: u64,
    /// The stream's last sequence.
    pub last: u64,
}

impl Progress {
    /// Everything delivered and acknowledged.
    pub fn drained(&self) -> bool {
        self.pending == 0 && self.ack_pending == 0 && self.ack_floor >= self.last
    }
}

/// Reads consumer `consumer` of `stream`.
pub async fn progress(
    jetstream: &jetstream::Context,
    stream: &str,
    consumer: &str,
) -> Option<Progress> {
    let mut handle = jetstream.get_stream(stream).await.ok()?;
    let last = handle.info().await.ok()?.state.last_sequence;
    let info = handle.consumer_info(consumer).await.ok()?;
    Some(Progress {
        pending: info.num_pending,
        ack_pending: info.num_ack_pending,
        ack_floor: info.ack_floor.stream_sequence,
        last,
    })
}

/// Progress of `enrich` (on GONG_RAW; its `last` counts test deliveries too, so only pending
/// counts are meaningful) and `load` (on GONG_ENRICHED).
pub async fn both(jetstream: &jetstream::Context) -> Option<(Progress, Progress)> {
    let enrich = progress(jetstream, names::STREAM_RAW, names::CONSUMER_ENRICH).await?;
    let load = progress(jetstream, names::STREAM_ENRICHED, names::CONSUMER_LOAD).await?;
    Some((enrich, load))
}

/// The index of the cluster node leading `stream` (server names are `gong-node-<index>`).
pub async fn leader_of(jetstream: &jetstream::Context, stream: &str) -> Option<usize> {
    let mut handle = jetstream.get_stream(stream).await.ok()?;
    let info = handle.info().await.ok()?;
    info.cluster
        .as_ref()?
        .leader
        .as_deref()?
        .strip_prefix("gong-node-")?
        .parse()
        .ok()
}

/// Messages in a stream (0 when it cannot be read).
pub async fn stream_messages(jetstream: &jetstream::Context, stream: &str) -> u64 {
    match jetstream.get_stream(stream).await {
        Ok(mut handle) => handle
            .info()
            .await
            .map(|info| info.state.messages)
            .unwrap_or(0),
        Err(_) => 0,
    }
}

/// Polls `check` every 100 ms until it returns `Some`, or returns `Err(what)` after `timeout`
/// (the caller panics with its own diagnostics).
pub async fn poll<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until everything is enriched (`enrich` has nothing pending or unacknowledged) and
/// gong-load has acknowledged every message of GONG_ENRICHED: by the ack-after-durable promise,
/// the stage is then complete, so the checks that follow can say what is wrong with it rather
/// than time out waiting for it to become right.
pub async fn wait_consumers_drained(jetstream: &jetstream::Context) -> Result<(), String> {
    poll(
        Duration::from_secs(super::scaled(180, 400)),
        "both consumers drained",
        || async {
            let (enrich, load) = both(jetstream).await?;
            (enrich.pending == 0 && enrich.ack_pending == 0 && load.drained()).then_some(())
        },
    )
    .await
}

/// Waits until both consumers are drained and every 2xx'd delivery is in the stage as `read`
/// returns it; `Err` says what was still missing when the (scaled) timeout ran out.
pub async fn wait_drained<F, Fut>(
    jetstream: &jetstream::Context,
    deliveries: &[super::sender::Delivery],
    mut read: F,
) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = super::stage::Staged>,
{
    poll(
        Duration::from_secs(super::scaled(120, 300)),
        "every 2xx'd event staged and both consumers drained",
        || {
            let staged = read();
            async move {
                let (enrich, load) = both(jetstream).await?;
                if !(enrich.pending == 0 && enrich.ack_pending == 0 && load.drained()) {
                    return None;
                }
                super::stage::Verdict::of(deliveries, &staged.await)
                    .missing
                    .is_empty()
                    .then_some(())
            }
        },
    )
    .await
}
