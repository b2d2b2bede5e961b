//! The virtual node (Virtual Kubelet's job): a Node of the instances service's capacity,
//! tainted so only pods that tolerate it land there, whose pods run as container groups
//! through the ACI-shaped API. It is a client of two APIs and nothing more: the Kubernetes
//! API with a node's credentials (as an agent joins), and the instances API with its typed
//! client.
//!
//! ```text
//!  pods (nodeName = me) ──watch──▶ pass ──▶ PUT group, a task per pod (pod -> group,
//!                                   │         refusals named; the next pass records it)
//!                                   │  ◀── GET groups (tags name their pod)
//!                                   ├──▶ pod status from the group's instance view
//!                                   ├──▶ deleting pod: DELETE group, then the pod goes
//!                                   └──▶ group without a pod: DELETE
//!  every lease interval: instances answer? ──yes──▶ renew the node's Lease
//! ```
//!
//! One group per pod, named from the pod ([`group::group_name`]) and tagged with its uid,
//! so a restarted virtual node adopts the groups it made.

pub mod group;
pub mod runtime;
pub mod status;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use berth_aci_client::{Client as Aci, ClientError, GroupRef};
use berth_agent::owner::{ApiOwner, PodOwner, SourceKind};
use berth_agent::runtime::PodRef;
use berth_core::aci::ContainerGroup;
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{json, Value};

/// The label and taint that mark a virtual node (Virtual Kubelet's).
pub const TAINT_KEY: &str = "virtual-kubelet.io/provider";
pub const TAINT_VALUE: &str = "berth";

/// Where the container groups go.
#[derive(Debug, Clone)]
pub struct Instances {
    /// `https://host:port` of the instances API.
    pub url: String,
    pub token: String,
    /// The CA (PEM) the instances API's certificate is checked against.
    pub ca_pem: String,
    pub subscription: String,
    pub resource_group: String,
    pub location: String,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub join: berth_agent::Join,
    pub instances: Instances,
    /// The node's address (its InternalIP and the pods' hostIP), where the API server reaches
    /// its HTTPS endpoint (logs and exec).
    pub address: String,
    /// Where that endpoint listens (port 0: any free one).
    pub listen: std::net::SocketAddr,
    pub lease_every: Duration,
    /// The longest between two passes (a pod change starts one at once).
    pub sync_every: Duration,
    /// Taint the node (`virtual-kubelet.io/provider=berth:NoSchedule`) so only pods that
    /// tolerate it land here; off where it is the only node.
    pub taint: bool,
    /// Groups on a host of the cluster, on its pod network.
    pub pod_network: Option<PodNetwork>,
}

/// Where the node's groups sit on the cluster's pod network: on the host of agent `via`, on
/// a bridge of the instances service's for the node's pod CIDR (`berth instances
/// --pod-network`), which that agent's VTEP carries for the other nodes.
#[derive(Debug, Clone)]
pub struct PodNetwork {
    pub via: String,
    /// The pod CIDR to register with; `None`: the one the node IPAM assigns.
    pub cidr: Option<berth_core::net::Cidr>,
    /// The cluster DNS for pods that ask for it (`dnsPolicy: ClusterFirst`).
    pub dns: Option<berth_agent::PodDns>,
}

#[derive(Debug, thiserror::Error)]
pub enum VnodeError {
    #[error(transparent)]
    Join(#[from] berth_agent::AgentError),
    #[error("registering node {node} failed")]
    Register {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("serving logs and exec failed")]
    Serve(#[source] berth_agent::server::ServeError),
    #[error("the instances API at {url} does not answer")]
    Instances {
        url: String,
        #[source]
        source: ClientError,
    },
}

/// The node's capacity: the instances service's quota (groups and cores), with 4 GB of
/// memory per core.
async fn capacity(aci: &Aci, i: &Instances) -> Result<(i64, i64), ClientError> {
    let path = format!(
        "/subscriptions/{}/providers/Microsoft.ContainerInstance/locations/{}/usages",
        i.subscription, i.location
    );
    let a = aci.call("GET", &path, None).await?;
    let limit = |name: &str| {
        a.body["value"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|u| u["name"]["value"] == name)
            .and_then(|u| u["limit"].as_i64())
            .unwrap_or(1000)
    };
    Ok((limit("ContainerGroups"), limit("StandardCores")))
}

fn node_object(cfg: &Config, groups: i64, cores: i64, port: u16) -> Value {
    let name = &cfg.join.node_name;
    let t = berth_core::kube_time(Timestamp::now());
    let amount = json!({
        "cpu": cores.to_string(), "memory": format!("{}Gi", cores * 4),
        "pods": groups.to_string(), "ephemeral-storage": "1Ti",
    });
    let net = cfg.pod_network.as_ref();
    let mut spec = json!({"taints": if cfg.taint {
        json!([{"key": TAINT_KEY, "value": TAINT_VALUE, "effect": "NoSchedule"}])
    } else {
        json!([])
    }});
    if let Some(cidr) = net.and_then(|n| n.cidr) {
        spec["podCIDR"] = json!(cidr.to_string());
        spec["podCIDRs"] = json!([cidr.to_string()]);
    }
    let annotations = match net {
        Some(n) => json!({berth_agent::net::overlay::VIA_ANNOTATION: n.via}),
        None => json!({}),
    };
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "annotations": annotations, "labels": {
            "type": "virtual-kubelet",
            "kubernetes.io/role": "agent",
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "berth.dev/runtime": "instances",
        }},
        "spec": spec,
        "status": {
            "capacity": amount, "allocatable": amount,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": format!("the instances API at {} answers", cfg.instances.url),
                "lastHeartbeatTime": t, "lastTransitionTime": t}],
            "addresses": [{"type": "InternalIP", "address": cfg.address},
                          {"type": "Hostname", "address": name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
            "nodeInfo": {"kubeletVersion": "v1.32.0-berth-vnode", "kubeProxyVersion": "",
                "containerRuntimeVersion": "instances://2023-05-01", "operatingSystem": "linux",
                "architecture": berth_agent::node::arch(), "osImage": "Berth container instances",
                "kernelVersion": "", "machineID": "", "systemUUID": "", "bootID": ""},
        },
    })
}

async fn register(client: &kube::Client, cfg: &Config, node: Value) -> Result<(), kube::Error> {
    let api: Api<Node> = Api::all(client.clone());
    let name = &cfg.join.node_name;
    let typed: Node = serde_json::from_value(node.clone()).expect("a valid Node");
    match api.create(&PostParams::default(), &typed).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let p = PatchParams::default();
            api.patch(
                name,
                &p,
                &Patch::Merge(json!({"metadata": node["metadata"], "spec": node["spec"]})),
            )
            .await?;
            api.patch_status(name, &p, &Patch::Merge(json!({"status": node["status"]})))
                .await
                .map(|_| ())
        }
        Err(e) => Err(e),
    }
}

/// Run the virtual node until this future is dropped.
pub async fn run(cfg: Config) -> Result<(), VnodeError> {
    let client = cfg.join.node_client().await?;
    let i = &cfg.instances;
    let aci = Arc::new(Aci::new(&i.url, &i.token, &i.ca_pem));
    let (groups, cores) = capacity(&aci, i)
        .await
        .map_err(|source| VnodeError::Instances {
            url: i.url.clone(),
            source,
        })?;
    // Logs and exec, as an agent serves them, through the instances API.
    let serving = cfg.join.serving(&client, &cfg.address).await?;
    let (reader, changed, watch) = berth_agent::watch_node_pods(&client, &cfg.join.node_name);
    let groups_runtime = Arc::new(runtime::Groups {
        aci: aci.clone(),
        subscription: i.subscription.clone(),
        resource_group: i.resource_group.clone(),
        node: cfg.join.node_name.clone(),
    });
    let metrics = berth_agent::telemetry::Metrics::default(); // the group runtime's gauges
    let (port, endpoint) = berth_agent::server::serve(
        cfg.listen,
        &cfg.join.node_name,
        &serving,
        groups_runtime,
        reader.clone(),
        metrics,
    )
    .map_err(VnodeError::Serve)?;
    register(&client, &cfg, node_object(&cfg, groups, cores, port))
        .await
        .map_err(|source| VnodeError::Register {
            node: cfg.join.node_name.clone(),
            source,
        })?;
    tracing::info!(node = %cfg.join.node_name, instances = %i.url, groups, cores, "virtual node registered");
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(endpoint);

    // The Lease is renewed while the instances API answers: when it stops, the node goes
    // NotReady and node lifecycle moves its pods, as for any node.
    {
        let client = client.clone();
        let aci = aci.clone();
        let cfg = cfg.clone();
        tasks.spawn(async move {
            let name = cfg.join.node_name.clone();
            let duration = (cfg.lease_every.as_secs().max(1) * 4) as i32;
            let mut tick = tokio::time::interval(cfg.lease_every);
            let mut answering = true;
            loop {
                tick.tick().await;
                let probe = capacity(&aci, &cfg.instances);
                let up = matches!(
                    tokio::time::timeout(cfg.lease_every.max(Duration::from_secs(1)), probe).await,
                    Ok(Ok(_))
                );
                if up != answering {
                    answering = up;
                    if up {
                        tracing::warn!(node = %name, "the instances API answers again: renewing the Lease");
                    } else {
                        tracing::warn!(node = %name, "the instances API does not answer: the Lease is left to run out");
                    }
                }
                if up {
                    if let Err(e) = berth_agent::node::renew_lease(&client, &name, duration).await {
                        tracing::warn!(node = %name, error = %e, "lease renewal failed");
                    }
                }
            }
        });
    }

    tasks.spawn(watch);
    let (services, keep_services) =
        berth_agent::net::cache::<Service>(&client, Arc::new(tokio::sync::Notify::new()));
    tasks.spawn(keep_services);
    // Never act on an empty view: it would look like every pod had gone.
    let _ = reader.wait_until_ready().await;
    let _ = tokio::time::timeout(Duration::from_secs(10), services.wait_until_ready()).await;
    let (done, finished) = tokio::sync::mpsc::unbounded_channel();
    let wake = Arc::new(tokio::sync::Notify::new());
    let mut node = Vnode {
        c: Arc::new(Clients {
            owner: ApiOwner {
                client: client.clone(),
                node: cfg.join.node_name.clone(),
            },
            services,
            aci,
            cfg: cfg.clone(),
        }),
        refused: HashSet::new(),
        deleting: Arc::default(),
        waiting: HashMap::new(),
        meter: HashMap::new(),
        metered_at: None,
        puts: Puts {
            turns: Arc::new(tokio::sync::Semaphore::new(PUTS_AT_ONCE)),
            under_way: HashSet::new(),
            tasks: tokio::task::JoinSet::new(),
            done,
            finished,
            wake: wake.clone(),
        },
    };
    loop {
        let pods = reader.state();
        if let Err(e) = node.pass(&pods).await {
            tracing::warn!(node = %cfg.join.node_name, error = %berth_core::error::Chain(&e), "virtual node pass");
        }
        tokio::select! {
            _ = changed.notified() => {}
            _ = wake.notified() => {}
            _ = tokio::time::sleep(cfg.sync_every) => {}
        }
    }
}

/// The two APIs the node is a client of, and its settings: what a pass and its PUTs share.
struct Clients {
    owner: ApiOwner,
    /// Every Service, for the variables containers are given.
    services: kube::runtime::reflector::Store<Service>,
    aci: Arc<Aci>,
    cfg: Config,
}

/// New pods' groups, each PUT in a task of its own: a pass waits for none of them, so a PUT
/// that waits its turn in the instances service holds up no other pod's status, and a pass
/// does not wait for the slowest PUT of a batch.
struct Puts {
    /// At most [`PUTS_AT_ONCE`] under way.
    turns: Arc<tokio::sync::Semaphore>,
    /// Pods (by uid) whose PUT is under way or whose result a pass has not yet recorded:
    /// a pass PUTs none of them again.
    under_way: HashSet<String>,
    tasks: tokio::task::JoinSet<()>,
    done: tokio::sync::mpsc::UnboundedSender<(PodRef, String, Put)>,
    finished: tokio::sync::mpsc::UnboundedReceiver<(PodRef, String, Put)>,
    /// Wakes the loop for a result worth a pass at once (a group made, a pod refused).
    wake: Arc<tokio::sync::Notify>,
}

struct Vnode {
    c: Arc<Clients>,
    /// Pods refused (by uid): their Failed status is written once.
    refused: HashSet<String>,
    /// Groups being deleted (by name), so a pass does not delete them twice.
    deleting: Arc<std::sync::Mutex<HashSet<String>>>,
    /// Pods whose group the service would not make yet (by uid), and why.
    waiting: HashMap<String, String>,
    /// Each group's `meteredUsage` row (by group name), and when it was read.
    meter: HashMap<String, Value>,
    metered_at: Option<std::time::Instant>,
    puts: Puts,
}

/// What came of a pod's PUT.
enum Put {
    Made,
    /// The node will not run the pod: why, with the field.
    Refused(String),
    Failed(ClientError),
    /// Its ConfigMaps or Secrets could not be read: next pass.
    Again,
}

/// Group PUTs, and pod status writes, in flight at once.
const PUTS_AT_ONCE: usize = 16;

/// How often the groups' meters are read into their pods' conditions.
const METER_EVERY: Duration = Duration::from_secs(10);

fn pod_ref(pod: &Pod) -> PodRef {
    PodRef {
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        name: pod.metadata.name.clone().unwrap_or_default(),
        host_ports: vec![],
        host_network: false,
        hostname: None,
    }
}

impl Clients {
    fn target(&self, name: &str) -> GroupRef {
        GroupRef {
            sub: self.cfg.instances.subscription.clone(),
            rg: self.cfg.instances.resource_group.clone(),
            name: name.to_string(),
        }
    }

    /// This node's groups, by name.
    async fn groups(&self) -> Result<BTreeMap<String, ContainerGroup>, ClientError> {
        let i = &self.cfg.instances;
        let all = match self
            .aci
            .list(&i.subscription, Some(&i.resource_group))
            .await
        {
            Ok(all) => all,
            // No resource group yet: no groups.
            Err(ClientError::Arm(e)) if e.status == 404 => vec![],
            Err(e) => return Err(e),
        };
        Ok(all
            .into_iter()
            .filter(|g| g.tags.get(group::TAG_NODE) == Some(&self.cfg.join.node_name))
            .filter_map(|g| Some((g.name.clone()?, g)))
            .collect())
    }

    /// PUT the group of a new pod, or refuse the pod saying which field (what happened; the
    /// pass records it).
    async fn put(&self, pod: &Pod, r: &PodRef, name: &str) -> Put {
        let (cms, secrets) = group::wanted(pod);
        let mut refs = group::Refs::default();
        let services = self.services.state();
        refs.service_env =
            berth_agent::net::service_env::for_pod(pod, services.iter().map(|s| s.as_ref()));
        for (volume, source, audience, seconds) in group::tokens_wanted(pod) {
            match self
                .owner
                .service_account_token(pod, audience.as_deref(), seconds)
                .await
            {
                Ok(Ok(token)) => {
                    refs.tokens.insert((volume, source), token);
                }
                // The account may not be made yet (a new namespace's `default`): next pass.
                Ok(Err(why)) => {
                    tracing::debug!(pod = %r.name, %why, "no ServiceAccount token yet");
                    return Put::Again;
                }
                Err(_) => return Put::Again,
            }
        }
        for (kind, names, into) in [
            (SourceKind::ConfigMap, cms, &mut refs.config_maps),
            (SourceKind::Secret, secrets, &mut refs.secrets),
        ] {
            for n in names {
                match self.owner.source(&r.namespace, kind, &n).await {
                    Ok(Some(data)) => {
                        into.insert(n, data);
                    }
                    Ok(None) => {}
                    // Try again next pass.
                    Err(_) => return Put::Again,
                }
            }
        }
        let group = group::group_for(
            pod,
            &refs,
            &self.cfg.join.node_name,
            &self.cfg.instances.location,
            self.cfg.pod_network.as_ref().and_then(|n| n.dns.as_ref()),
        );
        match group {
            Ok(g) => match self.aci.put(&self.target(name), &g).await {
                Ok(_) => Put::Made,
                Err(e) => Put::Failed(e),
            },
            Err(refusal) => Put::Refused(refusal.to_string()),
        }
    }
}

impl Vnode {
    /// Read every group's meter, at most every [`METER_EVERY`].
    async fn read_meters(&mut self) {
        if self.metered_at.is_some_and(|t| t.elapsed() < METER_EVERY) {
            return;
        }
        let i = &self.c.cfg.instances;
        if let Ok(usage) = self
            .c
            .aci
            .usage(&i.subscription, Some(&i.resource_group), None, "")
            .await
        {
            self.meter = usage["value"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|row| Some((row["containerGroup"].as_str()?.to_string(), row.clone())))
                .collect();
            self.metered_at = Some(std::time::Instant::now());
        }
    }

    async fn pass(&mut self, pods: &[Arc<Pod>]) -> Result<(), ClientError> {
        let now = berth_core::kube_time(Timestamp::now());
        // What the PUTs of earlier passes came to, before the listing: a group made is in
        // it, a pod whose PUT failed is PUT again.
        while let Ok((r, name, put)) = self.puts.finished.try_recv() {
            self.record(&r, &name, put, &now).await;
            self.puts.under_way.remove(&r.uid);
        }
        while self.puts.tasks.try_join_next().is_some() {}
        let groups = self.c.groups().await?;
        self.read_meters().await;
        let mut wanted: HashMap<String, &Pod> = HashMap::new();
        let mut new: Vec<(Arc<Pod>, PodRef, String)> = Vec::new();
        let mut statuses: Vec<(PodRef, Value)> = Vec::new();
        for pod in pods {
            let name = group::group_name(pod);
            wanted.insert(name.clone(), pod);
            let found = groups.get(&name);
            if pod.metadata.deletion_timestamp.is_some() {
                // A PUT under way: the group it makes goes with the pod once it is recorded.
                let putting =
                    (pod.metadata.uid.as_ref()).is_some_and(|u| self.puts.under_way.contains(u));
                if !putting {
                    self.finish(pod, &name, found.is_some());
                }
                continue;
            }
            let r = pod_ref(pod);
            match found {
                Some(g) => {
                    let mut status = status::pod_status(pod, g, &self.c.cfg.address, &now);
                    if let (Some(row), Some(conds)) =
                        (self.meter.get(&name), status["conditions"].as_array_mut())
                    {
                        conds.push(status::metered(row, &now));
                    }
                    if changed(pod, &status) {
                        statuses.push((r, status));
                    }
                }
                None if self.refused.contains(&r.uid) || terminal(pod) => {}
                None if self.puts.under_way.contains(&r.uid) => {}
                None if was_running(pod) => {
                    let lost = status::lost(pod, &now);
                    self.c.owner.event(
                        &r,
                        "Warning",
                        "ProviderFailed",
                        format!("container group {name} is gone from the instances service"),
                    );
                    let _ = self.c.owner.write_status(&r, &lost).await;
                }
                None => new.push((pod.clone(), r, name)),
            }
        }
        // Statuses, several writes at once (in a burst, most pods change in each pass).
        let owner = &self.c.owner;
        futures::stream::iter(statuses)
            .for_each_concurrent(PUTS_AT_ONCE, |(r, status)| async move {
                if let Err(e) = owner.write_status(&r, &status).await {
                    tracing::debug!(error = %e, pod = %r.name, "status not written");
                }
            })
            .await;
        // New pods' groups, each PUT in a task of its own (it may wait its turn in the
        // service); a later pass records what came of it.
        for (pod, r, name) in new {
            self.puts.under_way.insert(r.uid.clone());
            let c = self.c.clone();
            let turns = self.puts.turns.clone();
            let (done, wake) = (self.puts.done.clone(), self.puts.wake.clone());
            self.puts.tasks.spawn(async move {
                let _turn = turns.acquire_owned().await.expect("never closed");
                let put = c.put(&pod, &r, &name).await;
                // A group made has a status to show now; anything else is recorded by the
                // next pass, whenever it comes (not at once: a full service, or an API
                // server that takes no Failed status, would be asked again and again).
                let wake_now = matches!(put, Put::Made);
                let _ = done.send((r, name, put));
                if wake_now {
                    wake.notify_one();
                }
            });
        }
        // Groups of pods that are gone (deleted while this node was away).
        for name in groups.keys() {
            if !wanted.contains_key(name) && !self.deleting.lock().expect("deleting").contains(name)
            {
                tracing::info!(group = %name, "removing a group whose pod is gone");
                let _ = self.c.aci.delete(&self.c.target(name)).await;
            }
        }
        let live = |uid: &String| pods.iter().any(|p| p.metadata.uid.as_deref() == Some(uid));
        self.refused.retain(live);
        self.waiting.retain(|uid, _| live(uid));
        Ok(())
    }

    /// Record what came of a pod's PUT.
    async fn record(&mut self, r: &PodRef, name: &str, put: Put, now: &str) {
        match put {
            Put::Again => {}
            Put::Refused(message) => self.refuse(r, "ProviderFailed", &message, now).await,
            Put::Made => {
                self.waiting.remove(&r.uid);
                tracing::info!(pod = %format!("{}/{}", r.namespace, r.name), group = %name, "container group created");
                self.c.owner.event(
                    r,
                    "Normal",
                    "ProviderCreated",
                    format!("container group {name} created in the instances service"),
                );
            }
            // The service refuses the group (ACI's validation): the pod cannot run here.
            Put::Failed(ClientError::Arm(e))
                if e.status < 500 && e.status != 409 && e.status != 429 =>
            {
                let at = e
                    .target
                    .as_deref()
                    .map(|t| format!(" ({t})"))
                    .unwrap_or_default();
                let message = format!("the instances service refused the group{at}: {}", e.message);
                self.refuse(r, "ProviderFailed", &message, now).await;
            }
            // No room, or the service is away: the pod waits, saying why (once per reason).
            Put::Failed(e) => {
                let why = berth_core::error::Chain(&e).to_string();
                if self.waiting.get(&r.uid) != Some(&why) {
                    tracing::info!(pod = %r.name, error = %why, "container group not created yet; retrying");
                    self.c
                        .owner
                        .event(r, "Warning", "ProviderCreateFailed", why.clone());
                    let status = json!({"phase": "Pending", "conditions": [
                        {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                        {"type": "Ready", "status": "False", "reason": "ProviderCreateFailed",
                         "message": why, "lastTransitionTime": now}]});
                    let _ = self.c.owner.write_status(r, &status).await;
                    self.waiting.insert(r.uid.clone(), why);
                }
            }
        }
    }

    async fn refuse(&mut self, r: &PodRef, reason: &str, message: &str, now: &str) {
        tracing::info!(pod = %format!("{}/{}", r.namespace, r.name), %message, "pod refused");
        self.c
            .owner
            .event(r, "Warning", reason, message.to_string());
        let status = status::refused(reason, message, now);
        if self.c.owner.write_status(r, &status).await.is_ok() {
            self.refused.insert(r.uid.clone());
        }
    }

    /// A pod being deleted: its group goes, then the pod.
    fn finish(&mut self, pod: &Pod, name: &str, has_group: bool) {
        if !self
            .deleting
            .lock()
            .expect("deleting")
            .insert(name.to_string())
        {
            return;
        }
        let c = self.c.clone();
        let target = c.target(name);
        let r = pod_ref(pod);
        let deleting = self.deleting.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            // The service stops the group's containers (with its own short grace) before it
            // answers; the pod goes once its group has. A failure is tried again next pass.
            let gone = !has_group || c.aci.delete(&target).await.is_ok();
            if gone {
                if let Err(e) = c.owner.deleted(&r).await {
                    tracing::debug!(error = %e, pod = %r.name, "pod not finalized");
                }
            } else {
                tracing::warn!(group = %target.name, "group delete failed; trying again");
            }
            deleting.lock().expect("deleting").remove(&name);
        });
    }
}

/// A pod whose group ran (it has container statuses from us) but is gone now.
fn was_running(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .is_some_and(|c| !c.is_empty())
}

fn terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Would `status` change what the pod says (ignoring condition times)?
fn changed(pod: &Pod, status: &Value) -> bool {
    let old = serde_json::to_value(pod.status.clone().unwrap_or_default()).unwrap_or_default();
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(cs) = v["conditions"].as_array_mut() {
            for c in cs {
                if let Some(o) = c.as_object_mut() {
                    o.remove("lastTransitionTime");
                    o.remove("lastProbeTime");
                }
            }
        }
        for k in ["startTime", "qosClass"] {
            if let Some(o) = v.as_object_mut() {
                o.remove(k);
            }
        }
        v
    };
    let (old, new) = (strip(&old), strip(status));
    [
        "phase",
        "conditions",
        "containerStatuses",
        "initContainerStatuses",
        "podIP",
        "reason",
    ]
    .iter()
    .any(|k| old[*k] != new[*k])
}
