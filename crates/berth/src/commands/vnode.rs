//! `berth vnode`: join a cluster as a virtual node whose pods run as container groups in an
//! instances service (this one's, or any with the same API).

use std::time::Duration;

use anyhow::Context;

/// The name `berth up` gives its virtual node.
pub const UP_NAME: &str = "berth-instances";

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The API server, `https://host:port`, or several comma-separated (servers on one
    /// store): the virtual node moves to the next when its server stops answering.
    #[arg(long)]
    pub server: String,
    /// The node-join token (`berth token --node` on the server).
    #[arg(long, env = "BERTH_TOKEN", hide_env_values = true)]
    pub token: String,
    /// The cluster CA to verify the server with (the server's `<data-dir>/pki/ca.pem`).
    #[arg(long)]
    pub ca_file: std::path::PathBuf,
    /// The virtual node's name.
    #[arg(long, default_value = UP_NAME)]
    pub name: String,
    /// The address the node reports (its pods' hostIP), where the API server reaches it for
    /// logs and exec.
    #[arg(long, default_value = "127.0.0.1")]
    pub address: String,
    /// Where to serve logs and exec to the API server (HTTPS; port 0: any).
    #[arg(long, default_value = "0.0.0.0:10251")]
    pub listen: std::net::SocketAddr,
    /// The instances API, `https://host:port`.
    #[arg(long)]
    pub instances: String,
    /// The instances API's bearer token.
    #[arg(long, env = "BERTH_INSTANCES_TOKEN", hide_env_values = true)]
    pub instances_token: String,
    /// The CA to verify the instances API with.
    #[arg(long)]
    pub instances_ca_file: std::path::PathBuf,
    /// The subscription the node's groups go in.
    #[arg(long, default_value = "default")]
    pub subscription: String,
    /// The resource group the node's groups go in (default: the node's name).
    #[arg(long)]
    pub resource_group: Option<String>,
    /// The location of the groups.
    #[arg(long, default_value = "eastus")]
    pub location: String,
    /// Seconds between Lease renewals (the Lease lasts four).
    #[arg(long, default_value_t = 1)]
    pub lease_seconds: u64,
    /// The instances service runs its groups on the host of this cluster node, on the pod
    /// network (`berth instances --pod-network`): the node's agent carries the virtual
    /// node's pod CIDR over the overlay, and pods reach the groups by pod IP and Services.
    #[arg(long, value_name = "NODE")]
    pub pod_network_via: Option<String>,
    /// The virtual node's pod CIDR (the one given to `berth instances --pod-network`);
    /// without it, the node IPAM's.
    #[arg(long, value_name = "CIDR", requires = "pod_network_via")]
    pub pod_cidr: Option<berth_core::net::Cidr>,
    /// The cluster DNS address groups on the pod network resolve with (the agents'
    /// --cluster-dns).
    #[arg(long, value_name = "IP", requires = "pod_network_via")]
    pub cluster_dns: Option<std::net::Ipv4Addr>,
    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
}

pub fn config(args: &Args, ca_pem: String, instances_ca_pem: String) -> berth_vnode::Config {
    berth_vnode::Config {
        join: berth_agent::Join {
            server: args.server.clone(),
            token: args.token.clone(),
            ca_pem,
            node_name: args.name.clone(),
        },
        instances: berth_vnode::Instances {
            url: args.instances.clone(),
            token: args.instances_token.clone(),
            ca_pem: instances_ca_pem,
            subscription: args.subscription.clone(),
            resource_group: args
                .resource_group
                .clone()
                .unwrap_or_else(|| args.name.clone()),
            location: args.location.clone(),
        },
        address: args.address.clone(),
        listen: args.listen,
        lease_every: Duration::from_secs(args.lease_seconds.max(1)),
        sync_every: Duration::from_secs(1),
        taint: true,
        pod_network: args
            .pod_network_via
            .clone()
            .map(|via| berth_vnode::PodNetwork {
                via,
                cidr: args.pod_cidr,
                dns: args.cluster_dns.map(|nameserver| berth_agent::PodDns {
                    nameserver,
                    domain: args.cluster_domain.clone(),
                }),
            }),
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).with_context(|| format!("reading the CA {}", p.display()))
    };
    let mut cfg = config(&args, read(&args.ca_file)?, read(&args.instances_ca_file)?);
    let (url, _front) = super::api_url(&cfg.join.server).await?;
    cfg.join.server = url;
    tokio::select! {
        r = berth_vnode::run(cfg) => r.map_err(|e| anyhow::anyhow!("{}", berth_core::error::Chain(&e))),
        _ = super::shutdown_signal() => Ok(()),
    }
}
