//! `berth agent`: join a cluster and run the pods bound to this host.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use berth_agent::runtime::{docker::DockerRuntime, mock::MockRuntime, process::ProcessRuntime};
use berth_agent::Runtime;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuntimeKind {
    /// The Docker Engine on this host.
    Docker,
    /// Host processes, one process group per container: for machines without Docker.
    /// `image` is `host` or a directory of programs; see docs/architecture.md.
    Process,
    /// No containers at all: behaviour from each container's MOCK_* environment (tests).
    Mock,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceProxy {
    Nftables,
    None,
}

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The API server, `https://host:port`, or several comma-separated (servers on one
    /// store): the agent moves to the next when its server stops answering.
    #[arg(long, required_unless_present = "uninstall")]
    pub server: Option<String>,
    /// The node-join token (`berth token --node` on the server).
    #[arg(
        long,
        env = "BERTH_TOKEN",
        hide_env_values = true,
        required_unless_present = "uninstall"
    )]
    pub token: Option<String>,
    /// The cluster CA to verify the server with (the server's `<data-dir>/pki/ca.pem`).
    #[arg(long, required_unless_present = "uninstall")]
    pub ca_file: Option<std::path::PathBuf>,
    /// The node's name (default: this host's name).
    #[arg(long)]
    pub name: Option<String>,
    /// The address other hosts reach this node on.
    #[arg(long, default_value = "127.0.0.1")]
    pub address: String,
    #[arg(long, value_enum, default_value_t = RuntimeKind::Docker)]
    pub runtime: RuntimeKind,
    /// Where to serve logs to the API server (HTTPS, cluster-CA certificate; port 0: any).
    #[arg(long, default_value = "0.0.0.0:10250")]
    pub listen: std::net::SocketAddr,
    /// Seconds between Lease renewals. The Lease lasts four of them; the agent fences itself
    /// (stops its pods) after two without a renewal; the server evicts after four. The
    /// default, 2, rides out a store that pauses for a few seconds (an etcd member's loss
    /// and a new etcd leader's election) without fencing; 1 replaces a dead node's pods
    /// sooner where the store never pauses.
    #[arg(long, default_value_t = 2)]
    pub lease_seconds: u64,
    /// How Services reach their endpoints from this node: `nftables` (a table of the
    /// agent's own, `berth-<node>`) or `none`. The mock runtime's pods have no network, so
    /// it gets none.
    #[arg(long, value_enum, default_value_t = ServiceProxy::Nftables)]
    pub service_proxy: ServiceProxy,
    /// The pod network of the whole cluster (the server's `--cluster-cidr`): traffic from
    /// outside it to a Service is masqueraded (so replies return through this node), and
    /// pod traffic leaving it too.
    #[arg(long, default_value = "10.42.0.0/16")]
    pub cluster_cidr: String,
    /// The cluster DNS Service's address, written into pods' resolv.conf (the server's
    /// `--cluster-dns`).
    #[arg(long, default_value = "10.96.0.10")]
    pub cluster_dns: std::net::Ipv4Addr,
    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Where this node's DNS server listens (UDP and TCP); the Service proxy sends the
    /// cluster DNS address here.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub cluster_dns_listen: std::net::SocketAddr,
    /// Remove what this agent made on the host for its node (its nftables table, bridge,
    /// VXLAN device, its rules in Docker's DOCKER-USER chain, its address records), then
    /// exit. For a node taken out of the cluster for good; stop the agent first.
    #[arg(long)]
    pub uninstall: bool,
    /// Where the agent keeps its files.
    #[arg(long, default_value_os_t = super::default_data_dir().join("agent"))]
    pub data_dir: std::path::PathBuf,
}

pub fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_lowercase())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "berth-node".into())
}

/// The runtime driver for `kind`, connected.
pub async fn runtime(
    kind: RuntimeKind,
    node: &str,
    data_dir: &std::path::Path,
    warm_pool: usize,
) -> anyhow::Result<Arc<dyn Runtime>> {
    Ok(match kind {
        RuntimeKind::Docker => Arc::new(
            DockerRuntime::connect(node)
                .await
                .context("connecting to the Docker engine (is dockerd running and /var/run/docker.sock readable?)")?
                .with_warm_pool(warm_pool)
                .await
                .context("adopting the warm pool")?,
        ),
        RuntimeKind::Process => Arc::new(
            ProcessRuntime::new(data_dir)
                .with_context(|| format!("preparing the process runtime in {}", data_dir.display()))?,
        ),
        RuntimeKind::Mock => Arc::new(MockRuntime::new()),
    })
}

pub fn config(args: &Args, ca_pem: String) -> berth_agent::Config {
    let lease_every = Duration::from_secs(args.lease_seconds.max(1));
    let node_name = args.name.clone().unwrap_or_else(hostname);
    let proxy = (args.service_proxy == ServiceProxy::Nftables && args.runtime != RuntimeKind::Mock)
        .then(|| berth_agent::net::proxy::Settings {
            table: berth_agent::net::nft::table_for(&node_name),
            node: node_name.clone(),
            cluster_cidr: Some(args.cluster_cidr.clone()),
            local_dns: None,
        });
    let networked = args.runtime != RuntimeKind::Mock;
    berth_agent::Config {
        proxy,
        dns: networked.then(|| berth_agent::DnsConfig {
            listen: args.cluster_dns_listen,
            domain: args.cluster_domain.clone(),
        }),
        pod_network: networked,
        pod_dns: networked.then(|| berth_agent::PodDns {
            nameserver: args.cluster_dns,
            domain: args.cluster_domain.clone(),
        }),
        server: args.server.clone().unwrap_or_default(),
        token: args.token.clone().unwrap_or_default(),
        ca_pem,
        node_name,
        address: args.address.clone(),
        listen: args.listen,
        data_dir: args.data_dir.clone(),
        lease_every,
        lease_duration: lease_every * 4,
        sync_every: Duration::from_secs(1),
        backoff: berth_agent::Backoff::default(),
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if args.uninstall {
        let node = args.name.clone().unwrap_or_else(hostname);
        berth_agent::net::uninstall(&node, &args.cluster_cidr, &args.data_dir)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("removing node {node}'s network from this host"))?;
        println!("removed node {node}'s nftables table, bridge, VXLAN device and firewall rules");
        return Ok(());
    }
    let ca_file = args.ca_file.clone().unwrap_or_default();
    let ca = std::fs::read_to_string(&ca_file)
        .with_context(|| format!("reading the cluster CA {}", ca_file.display()))?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let mut cfg = config(&args, ca);
    let (url, _front) = super::api_url(&cfg.server).await?;
    cfg.server = url;
    // No warm pool: a pod's sandbox carries the pod's hostname, so it is made for the pod.
    let rt = runtime(args.runtime, &cfg.node_name, &args.data_dir, 0).await?;
    let ran = tokio::select! {
        r = berth_agent::run(cfg, rt.clone()) => r.context("running the agent"),
        _ = super::shutdown_signal() => Ok(()),
    };
    super::clean_up(rt.release()).await;
    ran
}
