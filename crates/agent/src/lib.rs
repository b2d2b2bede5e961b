//! Berth's node agent: it makes a host part of the cluster.
//!
//! Start at [`run`]: it registers the Node ([`node`]), renews its Lease, watches the pods
//! bound to it and drives each toward its spec every tick ([`pods::PodSync`]) through a
//! [`runtime::Runtime`] driver (`docker`, or `mock` for tests). The agent is an API client
//! like any other: it holds the node-join token and talks HTTPS to the server.
//!
//! ```text
//!  reflector(pods, spec.nodeName=me) ──▶ every tick / on change:
//!        runtime.list() ──▶ PodSync::sync(pod) for each pod ──▶ PATCH pods/<name>/status
//!                      └─▶ remove_orphans (containers of pods that are gone)
//!  every lease_every: PATCH lease;  every 10 s: PATCH nodes/<name>/status
//! ```

pub mod config;
pub mod fence;
pub mod front;
pub mod net;
pub mod node;
pub mod owner;
pub mod pods;
pub mod probes;
pub mod runner;
pub mod runtime;
pub mod server;
pub mod telemetry;
mod volumes;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{reflector, watcher, WatchStreamExt};

/// How often the node's status goes to the server (the kubelet's nodeStatusUpdateFrequency).
const HEARTBEAT_EVERY: Duration = Duration::from_secs(10);

pub use pods::Backoff;
pub use runtime::Runtime;

/// How to run an agent.
#[derive(Debug, Clone)]
pub struct Config {
    /// `https://host:port` of the API server.
    pub server: String,
    /// The node-join token.
    pub token: String,
    /// The cluster CA (PEM) the server's certificate is checked against.
    pub ca_pem: String,
    pub node_name: String,
    /// The address other hosts reach this node on.
    pub address: String,
    /// Where the agent serves logs to the API server (port 0: any free port).
    pub listen: std::net::SocketAddr,
    /// Where the agent keeps its files (for ephemeral-storage capacity).
    pub data_dir: std::path::PathBuf,
    pub lease_every: Duration,
    pub lease_duration: Duration,
    pub sync_every: Duration,
    pub backoff: Backoff,
    /// The Service proxy's settings; `None`: no Service rules on this node.
    pub proxy: Option<net::proxy::Settings>,
    /// The node's DNS server; `None`: none.
    pub dns: Option<DnsConfig>,
    /// What pods' resolv.conf names; `None`: pods keep the runtime's own.
    pub pod_dns: Option<PodDns>,
    /// Put pods on a network of the node's pod CIDR (bridge and veth pairs), where the
    /// runtime can; `false`: pods keep the runtime's own network.
    pub pod_network: bool,
}

pub use pods::files::PodDns;

/// Where the node's DNS server listens and what it answers for.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// UDP and TCP, same port (port 0: any free one). The proxy points the cluster DNS
    /// Service here.
    pub listen: std::net::SocketAddr,
    /// The cluster domain (`cluster.local`).
    pub domain: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the server URL {url:?} is not valid")]
    Url { url: String },
    #[error("building the API client failed")]
    Client(#[source] kube::Error),
    #[error("starting the agent's HTTPS endpoint failed")]
    Serve(#[source] server::ServeError),
    #[error("listening for DNS on {addr} failed")]
    Dns {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("registering node {node} failed (is the token a node-join token for this server?)")]
    Register {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("node {node} was deleted from the cluster: its pods were stopped and its network removed from this host; start the agent again to join anew")]
    Removed { node: String },
}

/// How a node joins the cluster: the server, its CA, the node-join token and the node's
/// name. (The agent's, and the virtual node's.)
#[derive(Debug, Clone)]
pub struct Join {
    /// `https://host:port` of the API server.
    pub server: String,
    /// The node-join token.
    pub token: String,
    /// The cluster CA (PEM) the server's certificate is checked against.
    pub ca_pem: String,
    pub node_name: String,
}

impl Join {
    /// An API client for the server with `token`, verifying the server against the CA.
    fn client(&self, token: &str) -> Result<kube::Client, AgentError> {
        let url: http::Uri = self.server.parse().map_err(|_| AgentError::Url {
            url: self.server.clone(),
        })?;
        let mut kc = kube::Config::new(url);
        kc.root_cert = Some(
            berth_tls::certs(&self.ca_pem)
                .into_iter()
                .map(|c| c.to_vec())
                .collect(),
        );
        kc.auth_info.token = Some(token.to_string().into());
        kc.default_namespace = "default".into();
        // The field manager of what the node writes (as the kubelet's is `kubelet`).
        kc.headers.push((
            http::header::USER_AGENT,
            http::HeaderValue::from_static(concat!("berth-agent/", env!("CARGO_PKG_VERSION"))),
        ));
        kc.headers.push((
            http::HeaderName::from_static(berth_core::fields::OMIT_MANAGED_FIELDS),
            http::HeaderValue::from_static("true"),
        ));
        kube::Client::try_from(kc).map_err(AgentError::Client)
    }

    /// `POST` a JSON body to one of Berth's own endpoints (`/berth/v1/...`) while joining.
    async fn post(
        &self,
        client: &kube::Client,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, AgentError> {
        let req = http::Request::post(path)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(body).expect("json"))
            .expect("a valid request");
        client
            .request::<serde_json::Value>(req)
            .await
            .map_err(|source| AgentError::Register {
                node: self.node_name.clone(),
                source,
            })
    }

    /// Trade the node-join token for this node's own token, and return a client that uses it.
    pub async fn node_client(&self) -> Result<kube::Client, AgentError> {
        let join = self.client(&self.token)?;
        let body = serde_json::json!({"nodeName": self.node_name});
        let answer = self.post(&join, "/berth/v1/nodetoken", &body).await?;
        let token = answer
            .get("token")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default();
        self.client(token)
    }

    /// Ask the API server for this node's serving certificate (for `address`) and proxy
    /// token.
    pub async fn serving(
        &self,
        client: &kube::Client,
        address: &str,
    ) -> Result<server::Serving, AgentError> {
        let body = serde_json::json!({"address": address});
        let answer = self.post(client, "/berth/v1/nodecert", &body).await?;
        let field = |k: &str| {
            answer
                .get(k)
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        Ok(server::Serving {
            cert_pem: field("cert"),
            key_pem: field("key"),
            proxy_token: field("proxyToken"),
        })
    }
}

impl Config {
    pub fn join(&self) -> Join {
        Join {
            server: self.server.clone(),
            token: self.token.clone(),
            ca_pem: self.ca_pem.clone(),
            node_name: self.node_name.clone(),
        }
    }
}

/// Run the agent until the process ends, or until this future is dropped: the pod watch,
/// Lease renewal, fencing, heartbeats and its HTTPS listener stop with it. A graceful
/// deletion or a probe's kill under way, a warm-pool refill and an open logs or exec
/// connection finish by themselves; the runtime's warm sandboxes are the caller's to
/// release.
pub async fn run(cfg: Config, runtime: Arc<dyn Runtime>) -> Result<(), AgentError> {
    let join = cfg.join();
    let client = join.node_client().await?;
    let serving = join.serving(&client, &cfg.address).await?;
    let mut tasks = tokio::task::JoinSet::new();

    let (reader, changed, watch) = watch_node_pods(&client, &cfg.node_name);
    tasks.spawn(watch);
    let metrics = telemetry::Metrics::default();
    let (port, endpoint) = server::serve(
        cfg.listen,
        &cfg.node_name,
        &serving,
        runtime.clone(),
        reader.clone(),
        metrics.clone(),
    )
    .map_err(AgentError::Serve)?;
    tasks.spawn(endpoint);

    let report = node::Report {
        cap: node::Capacity::of_host(&cfg.data_dir),
        data_dir: cfg.data_dir.clone(),
        address: cfg.address.clone(),
        port,
        name: cfg.node_name.clone(),
        runtime_version: runtime.version(),
        unenforced_limits: runtime.unenforced_limits(),
        pod_network: Arc::default(),
    };
    node::register(&client, &cfg.node_name, runtime.name(), report.status())
        .await
        .map_err(|source| AgentError::Register {
            node: cfg.node_name.clone(),
            source,
        })?;
    tracing::info!(node = %cfg.node_name, runtime = runtime.name(), port, "node registered");
    if cfg.pod_network {
        let made = pod_network(&client, &cfg, runtime.as_ref()).await;
        let note = match made {
            Ok((overlay, what)) => {
                tasks.spawn(overlay);
                Ok(what)
            }
            Err(why) => {
                tracing::warn!(node = %cfg.node_name, "{why}: pods keep the runtime's own network");
                Err(why)
            }
        };
        *report.pod_network.lock().expect("pod network") = Some(note);
        if let Err(e) = node::heartbeat(&client, &cfg.node_name, report.status()).await {
            tracing::warn!(node = %cfg.node_name, error = %e, "node status update failed");
        }
    }

    // Lease renewal, and fencing: past half the Lease's duration without a renewal the
    // server may soon evict this node's pods and start replacements, so the agent stops
    // them first and starts nothing until a renewal succeeds again.
    let fencing = Arc::new(fence::Fencing::new(std::time::Instant::now()));
    // Set when the Lease is renewed again after a fence: the node's status goes out at once,
    // so it is Ready again as soon as the server can hear it.
    let beat_now = Arc::new(tokio::sync::Notify::new());
    {
        let client = client.clone();
        let name = cfg.node_name.clone();
        let every = cfg.lease_every;
        let duration = cfg.lease_duration.as_secs().max(1) as i32;
        // A renewal that is slow but goes through (the store choosing a new leader) counts
        // from when it was sent; one still unanswered when fencing is due no longer matters.
        // One at a time, so a late one never writes an older renewTime over a newer one; a
        // failed one (its server died) is sent again at once, through the front to another.
        let patience = (cfg.lease_duration / 2).max(Duration::from_secs(1));
        let again = Duration::from_millis(200).min(every);
        let fencing = fencing.clone();
        let beat_now = beat_now.clone();
        tasks.spawn(async move {
            let mut next = tokio::time::Instant::now();
            loop {
                tokio::time::sleep_until(next).await;
                let (sent, sent_at) = (std::time::Instant::now(), tokio::time::Instant::now());
                let renewal = node::renew_lease(&client, &name, duration);
                next = match tokio::time::timeout(patience, renewal).await {
                    Ok(Ok(())) => {
                        if fencing.renewed(sent) {
                            tracing::warn!(node = %name, "lease renewed: no longer fenced");
                            beat_now.notify_one();
                        }
                        sent_at + every
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(node = %name, error = %e, "lease renewal failed");
                        tokio::time::Instant::now() + again
                    }
                    Err(_) => {
                        tracing::warn!(node = %name, "lease renewal timed out");
                        tokio::time::Instant::now()
                    }
                };
            }
        });
    }
    {
        let runtime = runtime.clone();
        let name = cfg.node_name.clone();
        let fence_after = cfg.lease_duration / 2;
        let fencing = fencing.clone();
        tasks.spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let Some(since) = fencing.due(std::time::Instant::now(), fence_after) else {
                    continue;
                };
                tracing::warn!(node = %name, ?since, "no lease renewal: fencing, stopping every container");
                fence(runtime.as_ref()).await;
            }
        });
    }
    {
        let client = client.clone();
        let name = cfg.node_name.clone();
        let report = report.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = beat_now.notified() => tick.reset(),
                }
                // Bounded: a request sent on a connection that died under it (a host cut off
                // from the network keeps its sockets) would otherwise wait for the kernel's
                // retransmissions to give up, many minutes, with the node NotReady all along.
                // Dropped at the deadline, its connection goes and the next beat opens a new one.
                let beat = node::heartbeat(&client, &name, report.status());
                match tokio::time::timeout(HEARTBEAT_EVERY / 2, beat).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(node = %name, error = %e, "node status update failed")
                    }
                    Err(_) => tracing::warn!(node = %name, "node status update timed out"),
                }
            }
        });
    }

    let dns = match &cfg.dns {
        Some(d) => Some(listen_dns(d).await?),
        None => None,
    };
    let mut proxy = cfg.proxy.clone();
    if let Some(p) = proxy.as_mut() {
        p.local_dns = dns
            .as_ref()
            .and_then(|d| d.udp.local_addr().ok())
            .map(|a| a.port());
        if let Err(e) = net::allow_localhost_node_ports() {
            tracing::warn!(error = %e, "NodePorts will not answer on 127.0.0.1: route_localnet cannot be set");
        }
    }
    let mut routes: Option<net::Caches> = None;
    if proxy.is_some() || dns.is_some() {
        let (caches, keep) = net::Caches::new(&client);
        tasks.spawn(keep);
        routes = Some(caches.clone());
        // Containers started before the Services are known would miss their variables.
        let services = caches.services.clone();
        let _ = tokio::time::timeout(Duration::from_secs(10), services.wait_until_ready()).await;
        let nft: Arc<dyn net::nft::Nft> = Arc::new(net::nft::Kernel);
        tasks.spawn(net::run(caches, proxy.map(|p| (p, nft)), dns));
    }

    // Never act on an empty view: it would look like every pod had gone.
    let _ = reader.wait_until_ready().await;
    tasks.spawn(volumes::run(
        client.clone(),
        reader.clone(),
        cfg.data_dir.clone(),
        Duration::from_secs(10),
    ));
    let sync = Arc::new(
        pods::PodSync::new(
            runtime.clone(),
            Arc::new(owner::ApiOwner {
                client: client.clone(),
                node: cfg.node_name.clone(),
            }),
            cfg.backoff,
            cfg.data_dir.clone(),
        )
        .with_dns(cfg.pod_dns.clone())
        .with_metrics(metrics)
        .with_host_ip(Some(cfg.address.clone()))
        .with_service_env(routes.clone().map(|c| {
            Arc::new(move |pod: &Pod| {
                let services = c.services.state();
                net::service_env::for_pod(pod, services.iter().map(|s| s.as_ref()))
            }) as pods::ServiceEnv
        }))
        .with_routes(routes.map(|c| Arc::new(move |uid: &str| c.routed(uid)) as pods::Routed)),
    );
    let client_for_removal = client.clone();
    let passes = NodePasses {
        sync,
        reader,
        client,
        node: cfg.node_name.clone(),
        fencing,
        every: cfg.sync_every,
        evicted: HashSet::new(),
        was_fenced: false,
    };
    let removed = removed(client_for_removal, cfg.node_name.clone());
    tokio::select! {
        _ = runner::run(runtime.clone(), changed, passes) => Ok(()),
        _ = removed => {
            tracing::warn!(node = %cfg.node_name, "this node was deleted from the cluster: stopping its pods and removing its network");
            // Nothing may write the network again meanwhile.
            tasks.shutdown().await;
            leave(runtime.as_ref(), &cfg).await;
            Err(AgentError::Removed { node: cfg.node_name.clone() })
        }
    }
}

/// The pods bound to `node`: their cache, a notice on every change, and the watch to run
/// (it retries with back-off). The agent's and the virtual node's.
pub fn watch_node_pods(
    client: &kube::Client,
    node: &str,
) -> (
    reflector::Store<Pod>,
    Arc<tokio::sync::Notify>,
    impl std::future::Future<Output = ()> + Send + 'static,
) {
    let api: kube::Api<Pod> = kube::Api::all(client.clone());
    let wc = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let (reader, writer) = reflector::store();
    let changed = Arc::new(tokio::sync::Notify::new());
    let notify = changed.clone();
    let stream = reflector(writer, watcher(api, wc)).default_backoff();
    let watch = async move {
        let mut stream = stream.boxed();
        while let Some(ev) = stream.next().await {
            if let Err(e) = ev {
                tracing::warn!(error = %e, "pod watch failed; retrying");
            }
            notify.notify_one();
        }
    };
    (reader, changed, watch)
}

/// Resolves once this node's Node is deleted (and a read confirms it is gone).
async fn removed(client: kube::Client, node: String) {
    use k8s_openapi::api::core::v1::Node;
    let api: kube::Api<Node> = kube::Api::all(client);
    let wc = watcher::Config::default().fields(&format!("metadata.name={node}"));
    let mut stream = watcher(api.clone(), wc).default_backoff().boxed();
    // A relist after a broken watch reports no deletion: a relist without the node counts.
    let mut listed = false;
    while let Some(event) = stream.next().await {
        let check = match event {
            Ok(watcher::Event::Delete(_)) => true,
            Ok(watcher::Event::Init) => {
                listed = false;
                false
            }
            Ok(watcher::Event::InitApply(_)) => {
                listed = true;
                false
            }
            Ok(watcher::Event::InitDone) => !listed,
            _ => false,
        };
        if check && matches!(api.get_opt(&node).await, Ok(None)) {
            return;
        }
    }
    futures::future::pending().await
}

/// Leave for good (this node was deleted): stop and remove every container and sandbox,
/// then take the node's network off the host.
async fn leave(runtime: &dyn Runtime, cfg: &Config) {
    if let Ok(observed) = runtime.list().await {
        let containers = observed.containers.iter().map(|c| async {
            let _ = runtime.stop(&c.id, Duration::from_secs(2)).await;
            let _ = runtime.remove(&c.id).await;
        });
        futures::future::join_all(containers).await;
        for sb in &observed.sandboxes {
            let _ = runtime.stop(&sb.id, Duration::from_secs(1)).await;
            let _ = runtime.remove(&sb.id).await;
        }
    }
    if cfg.pod_network || cfg.proxy.is_some() {
        let wide = cfg
            .proxy
            .as_ref()
            .and_then(|p| p.cluster_cidr.clone())
            .unwrap_or_default();
        if let Err(e) = net::uninstall(&cfg.node_name, &wide, &cfg.data_dir).await {
            tracing::warn!(node = %cfg.node_name, error = %e, "the node's network could not all be removed");
        }
    }
}

/// Join the pod network: wait (up to 10 s) for the control plane to give this node its pod
/// CIDR, make the bridge, hand it to the runtime; returns the overlay's loop to run and what
/// pods get. Anything missing (no CIDR, no right to make links, a runtime that cannot) is
/// the error: pods keep the runtime's own network.
async fn pod_network(
    client: &kube::Client,
    cfg: &Config,
    runtime: &dyn Runtime,
) -> Result<
    (
        impl std::future::Future<Output = ()> + Send + 'static,
        String,
    ),
    String,
> {
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());
    let mut cidr = None;
    for _ in 0..100 {
        if let Ok(n) = nodes.get(&cfg.node_name).await {
            cidr = n.spec.and_then(|s| s.pod_cidr).filter(|c| !c.is_empty());
            if cidr.is_some() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cidr = cidr.ok_or("no pod CIDR was assigned to this node within 10 s")?;
    let cidr: berth_core::net::Cidr = cidr
        .parse()
        .map_err(|e| format!("this node's pod CIDR {cidr:?} is not usable: {e}"))?;
    let local = cfg.address.parse::<std::net::Ipv4Addr>().map_err(|_| {
        format!(
            "the node's address {:?} is no IPv4 address for the overlay",
            cfg.address
        )
    })?;
    let wide = cfg
        .proxy
        .as_ref()
        .and_then(|p| p.cluster_cidr.clone())
        .unwrap_or_else(|| cidr.to_string());
    let (net, links) =
        net::make_pod_network(&cfg.node_name, cidr, &cfg.data_dir, Some(local), &wide).await?;
    let mtu = net.mtu;
    let bridge = net.bridge.clone();
    runtime.use_pod_network(net).await?;
    tracing::info!(node = %cfg.node_name, %cidr, %bridge, "pod network");
    let overlay = net::overlay::run(
        client.clone(),
        links,
        cfg.node_name.clone(),
        cidr,
        local,
        mtu,
    );
    Ok((
        overlay,
        format!("pods get addresses of {cidr} on bridge {bridge}, MTU {mtu}"),
    ))
}

/// Bind the node's DNS server: UDP where asked, TCP on the same port. Asked for port 0, the
/// kernel picks a free UDP port whose TCP twin may be taken (by any connection's local end),
/// so a few picks are tried before giving up.
async fn listen_dns(d: &DnsConfig) -> Result<net::Dns, AgentError> {
    let failed = |addr| move |source| AgentError::Dns { addr, source };
    let tries = if d.listen.port() == 0 { 20 } else { 1 };
    let mut attempt = 0;
    let (udp, tcp, bound) = loop {
        attempt += 1;
        let udp = tokio::net::UdpSocket::bind(d.listen)
            .await
            .map_err(failed(d.listen))?;
        let bound = udp.local_addr().map_err(failed(d.listen))?;
        match tokio::net::TcpListener::bind(bound).await {
            Ok(tcp) => break (udp, tcp, bound),
            Err(e) if attempt < tries => tracing::debug!(%bound, error = %e, "TCP twin taken"),
            Err(e) => return Err(failed(bound)(e)),
        }
    };
    let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    tracing::info!(listen = %bound, domain = %d.domain, "cluster DNS");
    Ok(net::Dns {
        udp,
        tcp,
        domain: d.domain.clone(),
        upstream: net::dns::host_resolvers(&resolv),
    })
}

/// The agent's passes over its pods, with fencing: while fenced, what is stopped stays
/// stopped; back from a fence, the pods are read afresh from the API before anything starts.
struct NodePasses {
    sync: Arc<pods::PodSync>,
    reader: reflector::Store<Pod>,
    client: kube::Client,
    node: String,
    fencing: Arc<fence::Fencing>,
    every: Duration,
    /// Pods fenced while cut off that a fresh read no longer shows as live: the server
    /// evicted them meanwhile, and the cache may not know yet. Their containers stay
    /// stopped.
    evicted: HashSet<String>,
    was_fenced: bool,
}

impl runner::Pass for NodePasses {
    async fn pass(&mut self) -> runner::Next {
        let every = runner::Next {
            wait: self.every,
            upkeep: true,
        };
        if self.fencing.is_fenced() {
            // Keep what is stopped stopped (a running container may have raced the fence).
            fence(self.sync.runtime.as_ref()).await;
            self.was_fenced = true;
            return runner::Next {
                upkeep: false,
                ..every
            };
        }
        if self.was_fenced {
            match live_pods(&self.client, &self.node).await {
                Ok(live) => {
                    self.evicted = self
                        .reader
                        .state()
                        .iter()
                        .filter_map(|p| p.metadata.uid.clone())
                        .filter(|uid| !live.contains(uid))
                        .collect();
                    self.was_fenced = false;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "back from a fence, but the pods cannot be read yet");
                    return runner::Next {
                        wait: Duration::from_millis(200),
                        upkeep: false,
                    };
                }
            }
        }
        // Once the cache shows the eviction (or the pod gone), the pod syncs as usual: a
        // terminating pod is finished and removed.
        if !self.evicted.is_empty() {
            let cached = self.reader.state();
            self.evicted.retain(|uid| {
                cached.iter().any(|p| {
                    p.metadata.uid.as_deref() == Some(uid.as_str())
                        && p.metadata.deletion_timestamp.is_none()
                })
            });
        }
        tick(&self.sync, &self.reader, &self.evicted).await;
        every
    }
}

/// Stop every running container at once, with a short grace.
async fn fence(runtime: &dyn Runtime) {
    let Ok(observed) = runtime.list().await else {
        return;
    };
    let stops = observed
        .containers
        .iter()
        .filter(|c| matches!(c.state, runtime::State::Running { .. }))
        .map(|c| runtime.stop(&c.id, Duration::from_millis(500)));
    futures::future::join_all(stops).await;
}

/// The uids of this node's pods that are live (not being deleted), read from the API itself.
async fn live_pods(client: &kube::Client, node: &str) -> Result<HashSet<String>, kube::Error> {
    let api: kube::Api<Pod> = kube::Api::all(client.clone());
    let lp = kube::api::ListParams::default().fields(&format!("spec.nodeName={node}"));
    Ok(api
        .list(&lp)
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.metadata.uid)
        .collect())
}

/// One pass over every pod of the node but those in `held` (their containers are stopped
/// and removed as orphans).
async fn tick(sync: &Arc<pods::PodSync>, reader: &reflector::Store<Pod>, held: &HashSet<String>) {
    let observed = match sync.runtime.list().await {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(error = %berth_core::error::Chain(&e), "listing the runtime failed");
            return;
        }
    };
    let pods: Vec<Arc<Pod>> = reader
        .state()
        .into_iter()
        .filter(|p| !p.metadata.uid.as_ref().is_some_and(|u| held.contains(u)))
        .collect();
    let live: Vec<String> = pods.iter().filter_map(|p| p.metadata.uid.clone()).collect();
    let work = pods.iter().map(|pod| {
        let sync = sync.clone();
        let observed = &observed;
        async move {
            if let Err(e) = sync.sync(pod, observed).await {
                tracing::warn!(pod = ?pod.metadata.name, error = %berth_core::error::Chain(&e), "pod sync failed");
            }
        }
    });
    futures::future::join_all(work).await;
    sync.remove_orphans(&live, &observed).await;
}
