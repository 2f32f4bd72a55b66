//! A JetStream cluster of real nats-server processes on loopback.

use std::time::Duration;

use crate::nats::{free_port, NatsServer};

/// The cluster name every node is started with.
pub const CLUSTER_NAME: &str = "gong";

/// `size` nats-server processes (`-js`, own store each) routed to each other as one JetStream
/// cluster (`--cluster`, `--routes`, `--cluster_name`, a unique `--server_name`).
///
/// Nodes can be stopped and started one by one ([`NatsCluster::stop_node`],
/// [`NatsCluster::start_node`]): a node keeps its client port, cluster port and store. Dropping
/// the cluster kills every node.
pub struct NatsCluster {
    nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `size` nodes (3 for a quorum that survives one loss). Returns once every node
    /// listens; call [`NatsCluster::wait_jetstream`] before creating replicated streams.
    pub fn start(size: usize) -> NatsCluster {
        assert!(size >= 1, "a cluster has at least one node");
        let cluster_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let routes = cluster_ports
            .iter()
            .map(|port| format!("nats://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",");
        let nodes = cluster_ports
            .iter()
            .enumerate()
            .map(|(index, port)| {
                NatsServer::start_with_args(vec![
                    "--server_name".into(),
                    format!("gong-node-{index}"),
                    "--cluster_name".into(),
                    CLUSTER_NAME.into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{port}"),
                    "--routes".into(),
                    routes.clone(),
                ])
            })
            .collect();
        NatsCluster { nodes }
    }

    /// Number of nodes.
    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    /// Node `index`.
    pub fn node(&self, index: usize) -> &NatsServer {
        &self.nodes[index]
    }

    /// Every node's client URL, comma-separated (what `NATS_URL` takes).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Kills node `index` (SIGKILL: a crash, not a clean shutdown); its store is kept.
    pub fn stop_node(&mut self, index: usize) {
        self.nodes[index].stop();
    }

    /// Starts node `index` again on the same ports and store.
    pub fn start_node(&mut self, index: usize) {
        self.nodes[index].start();
    }

    /// Every node's log file, for failing tests to point at.
    pub fn log_paths(&self) -> Vec<std::path::PathBuf> {
        self.nodes.iter().map(NatsServer::log_path).collect()
    }

    /// A client connected to every node (it fails over like the stages do).
    pub async fn client(&self) -> async_nats::Client {
        let urls: Vec<async_nats::ServerAddr> = self
            .nodes
            .iter()
            .map(|node| node.url().parse().expect("node url parses"))
            .collect();
        async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(urls)
            .await
            .unwrap_or_else(|err| panic!("connect to {}: {err}", self.urls()))
    }

    /// Waits until the cluster has a JetStream meta leader and can place a stream with one
    /// replica per node (creates and deletes a small memory stream), or panics after `timeout`
    /// naming the log files.
    pub async fn wait_jetstream(&self, timeout: Duration) {
        let jetstream = async_nats::jetstream::new(self.client().await);
        let name = format!("CLUSTER_READY_{}", free_port());
        let config = async_nats::jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("cluster.ready.{}", name.to_lowercase())],
            storage: async_nats::jetstream::stream::StorageType::Memory,
            num_replicas: self.nodes.len(),
            ..Default::default()
        };
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let last_error = match jetstream.create_stream(config.clone()).await {
                Ok(_) => {
                    let _ = jetstream.delete_stream(&name).await;
                    return;
                }
                Err(err) => err.to_string(),
            };
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "the JetStream cluster did not accept an R{} stream within {timeout:?} \
                     (last error: {last_error}); logs: {:?}",
                    self.nodes.len(),
                    self.log_paths()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
