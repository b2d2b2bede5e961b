//! `berth up`: everything on this machine, embedded store, and a kubeconfig to use it.

use anyhow::Context;

use super::agent::{hostname, RuntimeKind};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpRuntime {
    /// Docker when an engine answers, else host processes.
    Auto,
    Docker,
    Process,
    Mock,
    /// Run no agent on this machine.
    None,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub serve: super::ServeArgs,
    #[command(flatten)]
    pub control: super::ControlArgs,
    /// The runtime of the in-process agent.
    #[arg(long, value_enum, default_value_t = UpRuntime::Auto)]
    pub runtime: UpRuntime,
    #[command(flatten)]
    pub instances: super::instances::InstanceArgs,
    /// The local node's name (default: this host's name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// How Services reach their endpoints (see `berth agent --help`).
    #[arg(long, value_enum, default_value_t = super::agent::ServiceProxy::Nftables)]
    pub service_proxy: super::agent::ServiceProxy,
    /// Run a virtual node (`berth-instances`) whose pods become container groups in this
    /// instances service: pods that tolerate its taint burst there when the real nodes are
    /// full.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub virtual_node: bool,
    /// Run no local agent: every pod lands on the virtual node (untainted here) and runs as a
    /// container group on `--runtime`.
    #[arg(long, conflicts_with = "virtual_node")]
    pub instances_only: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    args.control.settings()?;
    let server = berth_apiserver::start(args.serve.config()?)
        .await
        .with_context(|| format!("starting Berth in {}", args.serve.data_dir.display()))?;
    let control_plane =
        super::start_control_plane(&server, &args.serve.data_dir, &args.control).await?;
    let path = args.serve.data_dir.join("kubeconfig");
    let config = berth_apiserver::kubeconfig(&server.url(), &server.ca_pem, &server.tokens.admin);
    std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;

    let node = args.node_name.clone().unwrap_or_else(hostname);
    let agent_dir = args.serve.data_dir.join("agent");
    let kind = match args.runtime {
        UpRuntime::Docker => Some(RuntimeKind::Docker),
        UpRuntime::Process => Some(RuntimeKind::Process),
        UpRuntime::Mock => Some(RuntimeKind::Mock),
        UpRuntime::None => None,
        UpRuntime::Auto => {
            match super::agent::runtime(RuntimeKind::Docker, &node, &agent_dir, 0).await {
                Ok(_) => Some(RuntimeKind::Docker),
                Err(e) => {
                    eprintln!(
                        "no Docker engine ({e:#}): the local node runs pods as host processes"
                    );
                    Some(RuntimeKind::Process)
                }
            }
        }
    };
    let mut agent = None;
    if let (Some(kind), false) = (kind, args.instances_only) {
        let agent_args = super::agent::Args {
            server: Some(server.url()),
            token: Some(server.tokens.node_join.clone()),
            ca_file: None,
            name: Some(node.clone()),
            address: "127.0.0.1".into(),
            listen: "127.0.0.1:0".parse().expect("an address"),
            runtime: kind,
            lease_seconds: 1,
            service_proxy: args.service_proxy,
            uninstall: false,
            cluster_cidr: args.control.cluster_cidr.to_string(),
            cluster_dns: args.serve.cluster_dns,
            cluster_domain: "cluster.local".into(),
            cluster_dns_listen: "127.0.0.1:0".parse().expect("an address"),
            data_dir: agent_dir.clone(),
        };
        std::fs::create_dir_all(&agent_args.data_dir)?;
        let cfg = super::agent::config(&agent_args, server.ca_pem.clone());
        let rt = super::agent::runtime(kind, &node, &agent_dir, 0).await?;
        let run = berth_agent::run(cfg, rt.clone());
        agent = Some((
            tokio::spawn(async move {
                if let Err(e) = run.await {
                    tracing::error!(error = %format!("{e:#}"), "the local agent stopped");
                }
            }),
            rt,
        ));
    }
    let instances = match kind {
        Some(kind @ (RuntimeKind::Docker | RuntimeKind::Process)) => Some(
            super::instances::start(
                &args.serve.data_dir,
                &args.instances,
                kind,
                server.tokens.admin.clone(),
            )
            .await?,
        ),
        _ => None,
    };
    let admin = super::admin_config(&server).await?;
    let vnode = match (&instances, args.virtual_node || args.instances_only) {
        (Some(i), true) => {
            let vargs = super::vnode::Args {
                server: server.url(),
                token: server.tokens.node_join.clone(),
                ca_file: Default::default(),
                name: super::vnode::UP_NAME.into(),
                address: "127.0.0.1".into(),
                listen: "127.0.0.1:0".parse().expect("an address"),
                instances: i.url(),
                instances_token: server.tokens.admin.clone(),
                instances_ca_file: Default::default(),
                subscription: "default".into(),
                resource_group: None,
                location: "eastus".into(),
                lease_seconds: 1,
                // The groups join the local agent's pod network (given the CIDR the node
                // IPAM assigns the virtual node, below).
                pod_network_via: agent.is_some().then(|| node.clone()),
                pod_cidr: None,
                cluster_dns: agent.is_some().then_some(args.serve.cluster_dns),
                cluster_domain: "cluster.local".into(),
            };
            // One CA signs both APIs here.
            let mut cfg =
                super::vnode::config(&vargs, server.ca_pem.clone(), server.ca_pem.clone());
            // With no other node, every pod is for the virtual one.
            cfg.taint = !args.instances_only;
            let joined = cfg.pod_network.is_some().then(|| {
                join_when_assigned(
                    admin.clone(),
                    i.service.clone(),
                    args.serve.data_dir.clone(),
                    args.control.cluster_cidr.to_string(),
                )
            });
            Some(tokio::spawn(async move {
                let run = async {
                    if let Err(e) = berth_vnode::run(cfg).await {
                        tracing::error!(error = %berth_core::error::Chain(&e), "the virtual node stopped");
                    }
                };
                match joined {
                    Some(j) => {
                        futures::join!(run, j);
                    }
                    None => run.await,
                }
            }))
        }
        _ => None,
    };
    println!("Berth is up: Kubernetes API at {}", server.url());
    if let Some(i) = &instances {
        println!(
            "Container instances API at {} (berth container --help)",
            i.url()
        );
    }
    println!("export KUBECONFIG={}", path.display());
    // A demo that works with what this machine has: no registry is needed.
    let demo = match kind {
        Some(RuntimeKind::Docker) => Some("--image=berth/pause:1 -- /busybox sh -c"),
        Some(RuntimeKind::Process) => Some("--image=host -- sh -c"),
        _ => None,
    };
    match demo {
        Some(image) => println!(
            "Then try: kubectl create deployment hello {image} 'while true; do echo hello from $(hostname); sleep 5; done' \\\n  && kubectl rollout status deploy/hello && kubectl get pods -o wide && kubectl logs deploy/hello"
        ),
        None => println!("Then try: kubectl get nodes,pods"),
    }
    super::shutdown_signal().await;
    // An orderly stop, each part before what it stands on: the local agent, the control
    // loops, the instances service, then the API and the store. The agent and the loops
    // stop at once, before anything slow, so that the node lifecycle never sees the agent's
    // Lease run out and evicts its pods; the warm sandboxes (the instances service's, and any
    // an older agent left) go after them.
    tracing::info!("stopping");
    let agent_runtime = match agent {
        Some((task, rt)) => {
            task.abort();
            let _ = task.await;
            Some(rt)
        }
        None => None,
    };
    if let Some(v) = vnode {
        v.abort();
        let _ = v.await;
    }
    control_plane.abort();
    let _ = control_plane.await;
    super::clean_up(async {
        if let Some(rt) = agent_runtime {
            rt.release().await;
        }
        if let Some(i) = instances {
            i.shutdown().await;
        }
    })
    .await;
    server.shutdown().await;
    Ok(())
}

/// Once the node IPAM gives the virtual node its pod CIDR, put the instances service's
/// groups on the pod network with it (the local agent carries it for the other nodes).
async fn join_when_assigned(
    config: kube::Config,
    instances: std::sync::Arc<berth_instances::Service>,
    data_dir: std::path::PathBuf,
    wide: String,
) {
    let joined = async {
        let client = kube::Client::try_from(config)?;
        let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client);
        let cidr = loop {
            let assigned = nodes
                .get_opt(super::vnode::UP_NAME)
                .await
                .ok()
                .flatten()
                .and_then(|n| n.spec?.pod_cidr);
            if let Some(c) = assigned {
                break c;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        };
        let cidr: berth_core::net::Cidr = cidr.parse()?;
        super::instances::join_pod_network(&instances, &data_dir, cidr, &wide).await
    };
    if let Err(e) = joined.await {
        tracing::warn!(error = %format!("{e:#}"), "container groups keep the engine's network");
    }
}
