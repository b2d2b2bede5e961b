//! `berth instances`: the container instances service on its own (`berth up` runs it too).

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::agent::RuntimeKind;

/// The instances service's settings, shared by `berth instances` and `berth up`.
#[derive(clap::Args, Debug, Clone)]
pub struct InstanceArgs {
    /// Address to serve the container groups API on.
    #[arg(long, default_value = "127.0.0.1:7443")]
    pub instances_listen: std::net::SocketAddr,
    /// The address groups with a Public IP address are reachable on (on this host's
    /// engine; a `--host` over TCP has its own).
    #[arg(long, default_value = "127.0.0.1")]
    pub public_ip: String,
    /// A host of the pool groups are placed on: `NAME=tcp://ADDR:PORT` (a Docker engine on
    /// another host; its groups' Public IP is ADDR) or `NAME=unix:///path/docker.sock`, with
    /// `,public-ip=ADDR` to say where its groups are reached. Repeat for each host. None:
    /// this host alone, on the runtime `--runtime` names.
    #[arg(long = "host", value_name = "NAME=ENGINE[,public-ip=ADDR]")]
    pub hosts: Vec<String>,
    /// Seconds a pool host may go without answering before its running groups are moved to
    /// other hosts and started there.
    #[arg(long, default_value_t = 30)]
    pub host_grace: u64,
    /// DNS zone for `dnsNameLabel` fqdns (`<label>.<location>.<zone>`).
    #[arg(long, default_value = "instances.berth.local")]
    pub dns_zone: String,
    /// Where to answer DNS (UDP) for `<dnsNameLabel>.<location>.<zone>`.
    #[arg(long, default_value = "127.0.0.1:8053")]
    pub dns_listen: std::net::SocketAddr,
    /// A YAML price table: `currency`, `vcpuSecond`, `gbSecond` (default: ACI's Linux rates).
    #[arg(long)]
    pub prices: Option<PathBuf>,
    /// Sandboxes kept started ahead of need on Docker, so a group starts without making one
    /// (0 turns the pool off). In `berth up` the local agent keeps as many for its pods.
    #[arg(long, default_value_t = 4)]
    pub warm_pool: usize,
    /// Groups per page of a list answer.
    #[arg(long, default_value_t = 100)]
    pub page_size: usize,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where state, TLS material and tokens live.
    #[arg(long, default_value_os_t = super::default_data_dir())]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub instances: InstanceArgs,
    /// The runtime groups run on: docker, process or mock.
    #[arg(long, value_enum, default_value_t = RuntimeKind::Docker)]
    pub runtime: RuntimeKind,
    /// On a host of a Berth cluster: give the groups on this host (those without public
    /// ports) addresses of CIDR on a bridge of their own, so cluster pods reach them. CIDR is
    /// the pod CIDR of the virtual node that drives this service (`berth vnode --pod-cidr`),
    /// which this host's agent carries over the overlay (`berth vnode --pod-network-via`).
    #[arg(long, value_name = "CIDR")]
    pub pod_network: Option<berth_core::net::Cidr>,
    /// The cluster CIDR (with --pod-network): what Docker's firewall lets through.
    #[arg(long, value_name = "CIDR", requires = "pod_network")]
    pub cluster_cidr: Option<berth_core::net::Cidr>,
}

/// What `berth container` reads to reach the service.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientConfig {
    pub server: String,
    pub token: String,
    pub ca_file: PathBuf,
    /// Where the service answers DNS for its zone.
    #[serde(default)]
    pub dns: Option<String>,
}

/// The name the service's containers carry in the runtime (`berth.node` label): one per
/// data dir, so two services on one Docker engine never take each other's containers.
fn node_name(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("node-name");
    if let Ok(name) = std::fs::read_to_string(&path) {
        return Ok(name.trim().to_string());
    }
    let name = format!(
        "berth-instances-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    std::fs::write(&path, &name).with_context(|| format!("writing {}", path.display()))?;
    Ok(name)
}

/// One `--host`: its name, engine address and public address.
fn parse_host(spec: &str, default_ip: &str) -> anyhow::Result<(String, String, String)> {
    let bad = || {
        anyhow::anyhow!(
            "--host {spec:?}: expected NAME=tcp://ADDR:PORT or NAME=unix:///path, optionally followed by ,public-ip=ADDR"
        )
    };
    let (name, rest) = spec.split_once('=').ok_or_else(bad)?;
    let mut parts = rest.split(',');
    let engine = parts.next().filter(|e| !e.is_empty()).ok_or_else(bad)?;
    let mut public_ip = None;
    for p in parts {
        match p.split_once('=') {
            Some(("public-ip", ip)) if !ip.is_empty() => public_ip = Some(ip.to_string()),
            _ => return Err(bad()),
        }
    }
    let public_ip = match (public_ip, engine.strip_prefix("tcp://")) {
        (Some(ip), _) => ip,
        (None, Some(addr)) => addr
            .rsplit_once(':')
            .map_or(addr, |(host, _)| host)
            .trim_matches(['[', ']'])
            .to_string(),
        (None, None) if engine.starts_with("unix://") => default_ip.to_string(),
        (None, None) => return Err(bad()),
    };
    Ok((name.to_string(), engine.to_string(), public_ip))
}

/// The hosts groups run on: each `--host`, or this host on `kind`.
async fn pool(
    args: &InstanceArgs,
    kind: RuntimeKind,
    node: &str,
    dir: &Path,
) -> anyhow::Result<std::sync::Arc<berth_instances::Pool>> {
    let mut hosts = Vec::new();
    if args.hosts.is_empty() {
        let here = berth_agent::node::Capacity::of_host(dir);
        hosts.push(berth_instances::Host {
            name: "local".into(),
            address: args.public_ip.clone(),
            cpu: here.cpus as f64,
            memory_gb: here.memory_kib as f64 / (1024.0 * 1024.0),
            runtime: super::agent::runtime(kind, node, dir, args.warm_pool).await?,
        });
    }
    for spec in &args.hosts {
        let (name, engine, address) = parse_host(spec, &args.public_ip)?;
        let docker = berth_agent::runtime::docker::DockerRuntime::connect_to(node, Some(&engine))
            .await
            .with_context(|| {
                format!("connecting to the Docker engine of host {name} at {engine}")
            })?;
        let (cpu, memory) = docker
            .capacity()
            .await
            .with_context(|| format!("reading the capacity of host {name}"))?;
        let docker = docker
            .with_warm_pool(args.warm_pool)
            .await
            .with_context(|| format!("adopting the warm pool of host {name}"))?;
        hosts.push(berth_instances::Host {
            name,
            address,
            cpu,
            memory_gb: memory as f64 / (1024.0 * 1024.0 * 1024.0),
            runtime: std::sync::Arc::new(docker),
        });
    }
    Ok(std::sync::Arc::new(berth_instances::Pool::new(hosts)?))
}

/// Start the service in `data_dir` on `kind`, and write the client config beside it.
pub async fn start(
    data_dir: &Path,
    args: &InstanceArgs,
    kind: RuntimeKind,
    token: String,
) -> anyhow::Result<berth_instances::Instances> {
    let dir = data_dir.join("instances");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let prices = match &args.prices {
        None => berth_instances::Prices::default(),
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            serde_saphyr::from_str(&text).with_context(|| {
                format!(
                    "{} is not a price table (currency, vcpuSecond, gbSecond)",
                    p.display()
                )
            })?
        }
    };
    let node = node_name(&dir)?;
    let pool = pool(args, kind, &node, &dir).await?;
    let mut sans = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    if !args.instances_listen.ip().is_unspecified() {
        sans.push(args.instances_listen.ip().to_string());
    }
    let cfg = berth_instances::Config {
        service: berth_instances::ServiceConfig {
            data_dir: dir,
            dns_zone: args.dns_zone.clone(),
            prices,
            resync: std::time::Duration::from_secs(1),
            host_grace: std::time::Duration::from_secs(args.host_grace),
        },
        listen: args.instances_listen,
        pki_dir: data_dir.to_path_buf(),
        sans,
        token: token.clone(),
        page_size: args.page_size,
        dns_listen: Some(args.dns_listen),
    };
    let inst = berth_instances::start(cfg, pool)
        .await
        .context("starting the instances service")?;
    let client = ClientConfig {
        server: inst.url(),
        token,
        ca_file: berth_tls::TlsFiles::in_dir(data_dir).ca_cert,
        dns: inst.dns_addr.map(|a| a.to_string()),
    };
    let path = data_dir.join("instances.json");
    berth_apiserver::write_file(&path, &serde_json::to_vec_pretty(&client)?, true)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(inst)
}

/// Put the service's groups on this host on a cluster's pod network: a bridge for `cidr`
/// named after the service's node, addresses recorded in its data dir, Docker's firewall
/// letting `wide` through. Groups started from now on join it (spare sandboxes are made
/// anew); those already running keep the engine's network.
pub async fn join_pod_network(
    service: &berth_instances::Service,
    data_dir: &Path,
    cidr: berth_core::net::Cidr,
    wide: &str,
) -> anyhow::Result<String> {
    let dir = data_dir.join("instances");
    let node = node_name(&dir)?;
    let (net, _) = berth_agent::net::make_pod_network(&node, cidr, &dir, None, wide)
        .await
        .map_err(anyhow::Error::msg)?;
    let bridge = net.bridge.clone();
    berth_agent::Runtime::use_pod_network(service.runtime().as_ref(), net)
        .await
        .map_err(|e| anyhow::anyhow!("no host of this service can join the pod network: {e}"))?;
    tracing::info!(%cidr, %bridge, "container groups join the pod network");
    Ok(bridge)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let tokens = berth_apiserver::auth::Tokens::load_or_create(&args.data_dir.join("tokens.json"))
        .context("loading the tokens")?;
    let inst = start(&args.data_dir, &args.instances, args.runtime, tokens.admin).await?;
    if let Some(cidr) = args.pod_network {
        let wide = args.cluster_cidr.unwrap_or(cidr).to_string();
        let bridge = join_pod_network(&inst.service, &args.data_dir, cidr, &wide).await?;
        println!("Groups on this host get addresses of {cidr} on bridge {bridge}");
    }
    if let Some(dns) = inst.dns_addr {
        println!("DNS for {} at {dns} (udp)", args.instances.dns_zone);
    }
    println!("Berth instances: container groups API at {}", inst.url());
    println!("Try: berth container create --resource-group demo --name hello --image berth/pause:1 --command-line \"/busybox httpd -f -p 8080\" --ports 8080");
    super::shutdown_signal().await;
    inst.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_host;

    #[test]
    fn host_specs_name_an_engine_and_where_groups_are_reached() {
        let h = |s| parse_host(s, "192.0.2.1").map_err(|e| e.to_string());
        assert_eq!(
            h("edge-1=tcp://10.231.0.2:2375").unwrap(),
            (
                "edge-1".into(),
                "tcp://10.231.0.2:2375".into(),
                "10.231.0.2".into()
            )
        );
        assert_eq!(
            h("local=unix:///var/run/docker.sock").unwrap().2,
            "192.0.2.1"
        );
        assert_eq!(
            h("e=tcp://10.0.0.5:2375,public-ip=203.0.113.9").unwrap().2,
            "203.0.113.9"
        );
        for bad in ["edge", "e=ssh://x", "e=tcp://a:1,color=red", "e="] {
            assert!(h(bad).unwrap_err().contains("expected NAME="), "{bad}");
        }
    }
}
