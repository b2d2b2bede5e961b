//! The node's part of the data plane.
//!
//! - [`proxy`]: Services to nftables rules (pure), applied whole through [`nft`] whenever a
//!   Service or EndpointSlice changes ([`run`]).
//! - [`dns`]: the cluster's names, answered from the same caches.
//! - [`podnet`]: the node's bridge and each pod's veth and address, through [`links`].
//! - [`overlay`]: VXLAN to the other nodes' pod CIDRs, through [`links`].

pub mod dns;
pub mod links;
pub mod nft;
pub mod overlay;
pub mod podnet;
pub mod proxy;
pub mod service_env;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{reflector, watcher, WatchStreamExt};

/// A cache of every `K`, poking `changed` on each change, kept while the returned task runs.
pub fn cache<K>(
    client: &kube::Client,
    changed: Arc<tokio::sync::Notify>,
) -> (
    reflector::Store<K>,
    impl std::future::Future<Output = ()> + Send,
)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector(
        writer,
        watcher(
            kube::Api::<K>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff();
    let keep = async move {
        let mut stream = stream.boxed();
        while let Some(ev) = stream.next().await {
            if let Err(e) = ev {
                tracing::warn!(kind = %K::kind(&()), error = %e, "watch failed; retrying");
            }
            changed.notify_one();
        }
    };
    (reader, keep)
}

/// Make a pod network on this host: forwarding and netfilter on bridged traffic turned on,
/// the bridge for `cidr` named after `owner` (its addresses recorded under `data_dir`), the
/// MTU the underlay's (the interface holding `underlay`, else 1500) less VXLAN's, and
/// Docker's firewall told to let `wide` (the cluster CIDR) through. The agent makes its
/// node's this way, and the instances service the one its groups join on a cluster host.
pub async fn make_pod_network(
    owner: &str,
    cidr: berth_core::net::Cidr,
    data_dir: &std::path::Path,
    underlay: Option<std::net::Ipv4Addr>,
    wide: &str,
) -> Result<(Arc<podnet::PodNet>, Arc<dyn links::Links>), String> {
    // A host (or a namespace standing for one) forwards for its pods, and bridged pod
    // traffic passes netfilter so Service replies are translated back.
    for (knob, what) in [
        ("/proc/sys/net/ipv4/ip_forward", "forwarding"),
        (
            "/proc/sys/net/bridge/bridge-nf-call-iptables",
            "netfilter on bridged traffic",
        ),
    ] {
        if let Err(e) = std::fs::write(knob, "1") {
            tracing::warn!(error = %e, "{what} could not be turned on ({knob})");
        }
    }
    let made = |e: &dyn std::error::Error| {
        format!(
            "the pod network could not be made: {}",
            berth_core::error::Chain(e)
        )
    };
    let links: Arc<dyn links::Links> = Arc::new(links::Kernel::connect().map_err(|e| made(&e))?);
    let found = match underlay {
        Some(addr) => links.mtu_of(addr).await.ok().flatten(),
        None => None,
    };
    let mtu = found.unwrap_or(1500).saturating_sub(overlay::OVERHEAD);
    let net = podnet::PodNet::new(links.clone(), owner, cidr, data_dir, mtu)
        .await
        .map_err(|e| made(&e))?;
    if let Err(e) = accept_in_docker_forward(wide).await {
        tracing::warn!(error = %e, "pods may not reach each other: Docker's firewall drops forwarded traffic")
    }
    Ok((Arc::new(net), links))
}

/// The rule in Docker's `DOCKER-USER` chain that accepts traffic from (`-s`) or to (`-d`)
/// the pod network.
fn docker_user_rule<'a>(dir: &'a str, cidr: &'a str) -> [&'a str; 9] {
    [
        "DOCKER-USER",
        dir,
        cidr,
        "-j",
        "ACCEPT",
        "-m",
        "comment",
        "--comment",
        "berth pod network",
    ]
}

/// Let the pod network through Docker's firewall, where Docker runs: it sets the FORWARD
/// policy to DROP and accepts only its own bridges, so without this, traffic between pods
/// (bridged traffic passes the FORWARD hook under br_netfilter) and between pods and the
/// world is dropped. Its `DOCKER-USER` chain is the place Docker keeps for rules of others;
/// two rules there (from and to the cluster CIDR) are the only thing Berth writes outside
/// its own table. Returns whether Docker's chain was there.
pub async fn accept_in_docker_forward(cidr: &str) -> std::io::Result<bool> {
    let iptables = |args: Vec<&str>| {
        let mut c = tokio::process::Command::new("iptables");
        c.arg("-w")
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c
    };
    if !iptables(vec!["-n", "-L", "DOCKER-USER"])
        .status()
        .await?
        .success()
    {
        return Ok(false);
    }
    for dir in ["-s", "-d"] {
        let rule = docker_user_rule(dir, cidr);
        let mut check = vec!["-C"];
        check.extend(rule);
        if !iptables(check).status().await?.success() {
            let mut insert = vec!["-I"];
            insert.extend(rule);
            if !iptables(insert).status().await?.success() {
                return Err(std::io::Error::other(format!(
                    "iptables refused to accept {dir} {cidr} in DOCKER-USER"
                )));
            }
        }
    }
    Ok(true)
}

/// Remove what the agent made on this host for node `node` (for good: `berth agent
/// --uninstall`): its nftables table, bridge, VXLAN device, the rules in Docker's
/// `DOCKER-USER` chain for `cluster_cidr`, and its address records. Running pods lose their
/// network, so the agent must be stopped and its pods gone first.
pub async fn uninstall(
    node: &str,
    cluster_cidr: &str,
    data_dir: &std::path::Path,
) -> Result<(), String> {
    let mut failures = Vec::new();
    use nft::Nft;
    if let Err(e) = nft::Kernel
        .apply(&nft::delete_table(&nft::table_for(node)))
        .await
    {
        failures.push(format!("{}", berth_core::error::Chain(&e)));
    }
    match links::Kernel::connect() {
        Ok(k) => {
            use links::Links;
            for dev in [podnet::bridge_name(node), overlay::device_name()] {
                if let Err(e) = k.delete(&dev).await {
                    failures.push(format!("{}", berth_core::error::Chain(&e)));
                }
            }
        }
        Err(e) => failures.push(format!("{}", berth_core::error::Chain(&e))),
    }
    for dir in ["-s", "-d"] {
        let rule = docker_user_rule(dir, cluster_cidr);
        loop {
            let removed = tokio::process::Command::new("iptables")
                .args(["-w", "-D"])
                .args(rule)
                .stderr(std::process::Stdio::null())
                .status()
                .await;
            if !matches!(removed, Ok(s) if s.success()) {
                break;
            }
        }
    }
    let records = data_dir.join("net");
    if records.exists() {
        if let Err(e) = std::fs::remove_dir_all(&records) {
            failures.push(format!("removing {}: {e}", records.display()));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

/// Let NodePorts answer on 127.0.0.1, as on K3s: a packet from a loopback address may only
/// be routed out of another interface (to a pod, after DNAT) with `route_localnet`. The
/// table's input filter drops what else that would let in (packets for 127/8 from outside
/// that were not DNAT'ed to it).
pub fn allow_localhost_node_ports() -> std::io::Result<()> {
    std::fs::write("/proc/sys/net/ipv4/conf/all/route_localnet", "1")
}

/// The node's DNS server: where it listens (bound by the caller, so the proxy can point the
/// cluster DNS address at it), the cluster domain, and the host's resolvers for the rest.
pub struct Dns {
    pub udp: tokio::net::UdpSocket,
    pub tcp: tokio::net::TcpListener,
    pub domain: String,
    pub upstream: Vec<std::net::SocketAddr>,
}

/// The node's view of Services and their endpoints, shared by the proxy, the DNS server and
/// the pods' graceful stop.
#[derive(Clone)]
pub struct Caches {
    pub services: reflector::Store<Service>,
    pub slices: reflector::Store<EndpointSlice>,
    changed: Arc<tokio::sync::Notify>,
    /// The pods (by uid) this node's last written Service rules send new connections to;
    /// `None` until rules are written (or when this node writes none).
    routed_here: Arc<std::sync::RwLock<Option<std::collections::HashSet<String>>>>,
}

/// The pods (by uid) the slices offer as ready endpoints.
fn ready_pods(slices: &[Arc<EndpointSlice>]) -> std::collections::HashSet<String> {
    slices
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        .filter_map(|e| e.target_ref.as_ref().and_then(|t| t.uid.clone()))
        .collect()
}

impl Caches {
    /// The caches, and the future that keeps them (run it beside [`run`]).
    pub fn new(client: &kube::Client) -> (Caches, impl std::future::Future<Output = ()> + Send) {
        let changed = Arc::new(tokio::sync::Notify::new());
        let (services, keep_services) = cache::<Service>(client, changed.clone());
        let (slices, keep_slices) = cache::<EndpointSlice>(client, changed.clone());
        let keep = async move {
            futures::join!(keep_services, keep_slices);
        };
        (
            Caches {
                services,
                slices,
                changed,
                routed_here: Arc::default(),
            },
            keep,
        )
    }

    /// Is the pod `uid` an endpoint of some Service, and if so, is it still a ready one? A
    /// pod this node's rules still send connections to counts as ready until they are
    /// written without it.
    pub fn routed(&self, uid: &str) -> Routing {
        let here = self.routed_here.read().expect("routed pods");
        if here.as_ref().is_some_and(|h| h.contains(uid)) {
            return Routing::Ready;
        }
        drop(here);
        let mut found = Routing::Not;
        for s in self.slices.state() {
            for e in &s.endpoints {
                if e.target_ref.as_ref().and_then(|t| t.uid.as_deref()) != Some(uid) {
                    continue;
                }
                if e.conditions.as_ref().and_then(|c| c.ready) != Some(false) {
                    return Routing::Ready;
                }
                found = Routing::Withdrawn;
            }
        }
        found
    }
}

/// Where a pod stands with the Services that select it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// No Service has it as an endpoint.
    Not,
    /// Some Service sends it new connections.
    Ready,
    /// It is an endpoint, but no longer a ready one (terminating or failing readiness).
    Withdrawn,
}

/// Keep this node's Service rules and DNS answers equal to what the API says, until
/// dropped: every change to a Service or an EndpointSlice writes the whole table again (if it
/// changed) and rebuilds the DNS zone, at once.
pub async fn run(
    caches: Caches,
    proxy: Option<(proxy::Settings, Arc<dyn nft::Nft>)>,
    dns: Option<Dns>,
) {
    let Caches {
        services,
        slices,
        changed,
        routed_here,
    } = caches;
    let domain = dns.as_ref().map(|d| d.domain.clone()).unwrap_or_default();
    let (zone_tx, zone_rx) = tokio::sync::watch::channel(Arc::new(dns::Zone::default()));
    let program = async {
        if services.wait_until_ready().await.is_err() || slices.wait_until_ready().await.is_err() {
            return;
        }
        let mut applied: Option<String> = None;
        // Failed writes in a row: the retry waits longer each time (1 s doubling to 60 s),
        // and only the first is a warning (an agent without root would say it every second).
        let mut failures: u32 = 0;
        loop {
            let mut svcs = services.state();
            svcs.sort_by(|a, b| {
                (&a.metadata.namespace, &a.metadata.name)
                    .cmp(&(&b.metadata.namespace, &b.metadata.name))
            });
            let slices = slices.state();
            if !domain.is_empty() {
                zone_tx.send_replace(Arc::new(dns::Zone::build(&domain, &svcs, &slices)));
            }
            let mut retry = false;
            if let Some((settings, nft)) = &proxy {
                let script = proxy::ruleset(settings, &svcs, &slices);
                if applied.as_ref() != Some(&script) {
                    let started = Instant::now();
                    match nft.apply(&script).await {
                        Ok(()) => {
                            tracing::debug!(table = %settings.table, took = ?started.elapsed(), "service rules written");
                            if failures > 0 {
                                tracing::info!(table = %settings.table, "service rules written again");
                            }
                            applied = Some(script.clone());
                            failures = 0;
                        }
                        Err(e) => {
                            if failures == 0 {
                                tracing::warn!(table = %settings.table, error = %berth_core::error::Chain(&e), "writing the service rules failed: Services do not route on this node; retrying");
                            } else {
                                tracing::debug!(table = %settings.table, error = %berth_core::error::Chain(&e), "writing the service rules failed again");
                            }
                            failures += 1;
                            retry = true;
                        }
                    }
                }
                // The rules in force were built from these slices: the pods they route to.
                if applied.as_ref() == Some(&script) {
                    *routed_here.write().expect("routed pods") = Some(ready_pods(&slices));
                }
            }
            let wait = if retry {
                Duration::from_secs(1 << failures.saturating_sub(1).min(6))
                    .min(Duration::from_secs(60))
            } else {
                Duration::from_secs(60)
            };
            let _ = tokio::time::timeout(wait, changed.notified()).await;
        }
    };
    let serve = async {
        match dns {
            Some(d) => dns::serve(d.udp, d.tcp, zone_rx, d.upstream).await,
            None => futures::future::pending().await,
        }
    };
    futures::join!(program, serve);
}
