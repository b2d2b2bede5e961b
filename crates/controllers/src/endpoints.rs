//! Endpoints and EndpointSlices: for every Service with a selector, the addresses of the
//! pods it selects, kept as Kubernetes' endpoints and endpointslice controllers keep them.
//!
//! - `Endpoints/<svc>`: ready pods in `addresses`, the others in `notReadyAddresses`
//!   (everything in `addresses` with `publishNotReadyAddresses`); terminating pods are left
//!   out. Pods are grouped into subsets by the ports they resolve (a named `targetPort` is
//!   looked up in each pod's containers, so two pods may serve one Service on two numbers).
//! - `EndpointSlice/<svc>-<hash>`: one slice per such port set (and per 100 endpoints), with
//!   each endpoint's `ready`, `serving` and `terminating` conditions, so a proxy can keep
//!   sending to a pod that is shutting down but still serving while nothing else is left.
//!   Slices are named from the port set, so a lagging cache can never make two of them.
//!
//! A sweep runs whenever a pod, Service, Endpoints or EndpointSlice changes (and every 30 s):
//! a pure [`plan`] over the caches compares what should be with what is, and `execute`
//! writes only what differs. Services without a selector are left to their owner.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointPort as SlicePort, EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::reflector::Store;

use crate::{api_err, Context, Error};

/// The label Kubernetes puts on slices to name their Service.
pub const SERVICE_NAME: &str = "kubernetes.io/service-name";
/// The label that says which controller keeps a slice.
pub const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGER: &str = "endpointslice-controller.k8s.io";
/// Endpoints per slice, Kubernetes' default `--max-endpoints-per-slice`.
const PER_SLICE: usize = 100;
/// A sweep even when nothing changed, to repair what a failed write left behind.
const RESYNC: Duration = Duration::from_secs(30);

/// One write the sweep decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Create (no `resourceVersion`) or replace the Service's Endpoints.
    Endpoints(Endpoints),
    /// Create or replace one slice.
    Slice(EndpointSlice),
    /// A slice no port set or Service needs any more.
    DeleteSlice { namespace: String, name: String },
    /// Endpoints this controller wrote for a Service that is gone (Endpoints of Services
    /// without a selector belong to whoever wrote them).
    DeleteEndpoints { namespace: String, name: String },
}

/// The caches one sweep reads.
pub struct Observed<'a> {
    pub services: &'a [Arc<Service>],
    pub pods: &'a [Arc<Pod>],
    pub endpoints: &'a [Arc<Endpoints>],
    pub slices: &'a [Arc<EndpointSlice>],
    /// The `topology.kubernetes.io/zone` of each node that has one.
    pub zones: &'a HashMap<String, String>,
}

/// What the sweeps remember: for each object written, a fingerprint of what was written and
/// the resourceVersion the write returned, so a cache that has not caught up with a write
/// does not make the sweep write the same thing again.
#[derive(Debug, Default)]
pub struct Memory {
    written: HashMap<(&'static str, String, String), (u64, i64)>,
}

impl Memory {
    fn already(
        &self,
        kind: &'static str,
        meta: &ObjectMeta,
        want: u64,
        cached: &ObjectMeta,
    ) -> bool {
        let key = (kind, ns(meta).to_string(), name(meta).to_string());
        let Some(&(print, rv)) = self.written.get(&key) else {
            return false;
        };
        let cached_rv = cached
            .resource_version
            .as_deref()
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0);
        print == want && cached_rv < rv
    }

    fn wrote(&mut self, kind: &'static str, meta: &ObjectMeta, want: u64) {
        let rv = meta
            .resource_version
            .as_deref()
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0);
        let key = (kind, ns(meta).to_string(), name(meta).to_string());
        self.written.insert(key, (want, rv));
    }
}

fn ns(meta: &ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or_default()
}

fn name(meta: &ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or_default()
}

/// Is the pod's `Ready` condition true?
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// Should the pod be an endpoint at all (Kubernetes' `ShouldPodBeInEndpoints`)? It needs an
/// address, and a pod that has finished for good (its restart policy will not run it again)
/// serves nothing. Terminating pods count only where `terminating` is wanted.
fn eligible(pod: &Pod, terminating: bool) -> bool {
    let status = pod.status.as_ref();
    if status
        .and_then(|s| s.pod_ip.as_deref())
        .unwrap_or("")
        .is_empty()
    {
        return false;
    }
    if !terminating && pod.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("");
    match pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) {
        Some("Never") => !matches!(phase, "Failed" | "Succeeded"),
        Some("OnFailure") => phase != "Succeeded",
        _ => true,
    }
}

/// The pod's port for one Service port: a number as given, a name looked up among the
/// pod's container ports of the same protocol; `None` when the pod has no such port.
pub fn resolve_port(
    pod: &Pod,
    target: Option<&IntOrString>,
    port: i32,
    protocol: &str,
) -> Option<i32> {
    match target {
        None => Some(port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(s)) => {
            if let Ok(n) = s.parse::<i32>() {
                return Some(n);
            }
            pod.spec
                .as_ref()?
                .containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| {
                    p.name.as_deref() == Some(s.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP") == protocol
                })
                .map(|p| p.container_port)
        }
    }
}

/// One resolved port of a pod: the Service port's name, the pod's number, the protocol and
/// the Service port's appProtocol.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Port {
    name: String,
    port: i32,
    protocol: String,
    app_protocol: Option<String>,
}

/// The ports the pod serves of the Service's, in the Service's order.
fn pod_ports(svc: &Service, pod: &Pod) -> Vec<Port> {
    svc.spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".into());
            let port = resolve_port(pod, p.target_port.as_ref(), p.port, &protocol)?;
            Some(Port {
                name: p.name.clone().unwrap_or_default(),
                port,
                protocol,
                app_protocol: p.app_protocol.clone(),
            })
        })
        .collect()
}

fn selects(selector: &BTreeMap<String, String>, pod: &Pod) -> bool {
    let labels = pod.metadata.labels.as_ref();
    selector
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

fn target_ref(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        namespace: pod.metadata.namespace.clone(),
        name: pod.metadata.name.clone(),
        uid: pod.metadata.uid.clone(),
        ..Default::default()
    }
}

/// The pod's hostname under this Service: only a pod whose `subdomain` names it.
fn hostname(svc: &Service, pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let host = spec.hostname.as_deref().filter(|h| !h.is_empty())?;
    (spec.subdomain.as_deref() == svc.metadata.name.as_deref()).then(|| host.to_string())
}

/// The labels a Service's Endpoints carry: its own, and the headless marker.
fn endpoint_labels(svc: &Service) -> BTreeMap<String, String> {
    let mut labels = svc.metadata.labels.clone().unwrap_or_default();
    if headless(svc) {
        labels.insert("service.kubernetes.io/headless".into(), String::new());
    }
    labels
}

pub fn headless(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None")
}

fn fingerprint<T: serde::Serialize>(value: &T) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_vec(value).unwrap_or_default().hash(&mut h);
    h.finish()
}

/// The pods a Service selects in its namespace, ordered by name.
fn selected<'a>(
    svc: &Service,
    selector: &BTreeMap<String, String>,
    pods: &[&'a Pod],
) -> Vec<&'a Pod> {
    let mut out: Vec<&Pod> = pods
        .iter()
        .copied()
        .filter(|p| p.metadata.namespace == svc.metadata.namespace && selects(selector, p))
        .collect();
    out.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    out
}

/// The Endpoints the Service should have.
pub fn desired_endpoints(svc: &Service, pods: &[&Pod]) -> Endpoints {
    let spec = svc.spec.as_ref();
    let publish = spec.and_then(|s| s.publish_not_ready_addresses) == Some(true);
    let no_ports = spec
        .and_then(|s| s.ports.as_ref())
        .is_none_or(|p| p.is_empty());
    let selector = spec.and_then(|s| s.selector.clone()).unwrap_or_default();
    // Subsets keyed by port set: (ready, not ready) addresses.
    let mut subsets: BTreeMap<Vec<Port>, (Vec<EndpointAddress>, Vec<EndpointAddress>)> =
        BTreeMap::new();
    for pod in selected(svc, &selector, pods) {
        if !eligible(pod, false) {
            continue;
        }
        let ports = pod_ports(svc, pod);
        if ports.is_empty() && !no_ports {
            continue;
        }
        let status = pod.status.as_ref();
        let address = EndpointAddress {
            ip: status.and_then(|s| s.pod_ip.clone()).unwrap_or_default(),
            hostname: hostname(svc, pod),
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            target_ref: Some(target_ref(pod)),
        };
        let entry = subsets.entry(ports).or_default();
        if publish || pod_ready(pod) {
            entry.0.push(address);
        } else {
            entry.1.push(address);
        }
    }
    let subsets: Vec<EndpointSubset> = subsets
        .into_iter()
        .map(|(ports, (mut ready, mut not_ready))| {
            ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            not_ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            EndpointSubset {
                addresses: (!ready.is_empty()).then_some(ready),
                not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
                ports: (!ports.is_empty()).then(|| {
                    ports
                        .into_iter()
                        .map(|p| EndpointPort {
                            name: (!p.name.is_empty()).then_some(p.name),
                            port: p.port,
                            protocol: Some(p.protocol),
                            app_protocol: p.app_protocol,
                        })
                        .collect()
                }),
            }
        })
        .collect();
    Endpoints {
        metadata: ObjectMeta {
            name: svc.metadata.name.clone(),
            namespace: svc.metadata.namespace.clone(),
            labels: Some(endpoint_labels(svc)),
            ..Default::default()
        },
        subsets: (!subsets.is_empty()).then_some(subsets),
    }
}

/// The slices the Service should have, named `<svc>-<port set hash>[-<n>]`.
pub fn desired_slices(
    svc: &Service,
    pods: &[&Pod],
    zones: &HashMap<String, String>,
) -> Vec<EndpointSlice> {
    let spec = svc.spec.as_ref();
    let publish = spec.and_then(|s| s.publish_not_ready_addresses) == Some(true);
    let no_ports = spec
        .and_then(|s| s.ports.as_ref())
        .is_none_or(|p| p.is_empty());
    let selector = spec.and_then(|s| s.selector.clone()).unwrap_or_default();
    let svc_name = name(&svc.metadata).to_string();
    let mut groups: BTreeMap<Vec<Port>, Vec<Endpoint>> = BTreeMap::new();
    for pod in selected(svc, &selector, pods) {
        if !eligible(pod, true) {
            continue;
        }
        let ports = pod_ports(svc, pod);
        if ports.is_empty() && !no_ports {
            continue;
        }
        let serving = pod_ready(pod);
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        groups.entry(ports).or_default().push(Endpoint {
            addresses: vec![pod
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.clone())
                .unwrap_or_default()],
            conditions: Some(EndpointConditions {
                ready: Some(publish || (serving && !terminating)),
                serving: Some(serving),
                terminating: Some(terminating),
            }),
            hostname: hostname(svc, pod),
            zone: node.as_ref().and_then(|n| zones.get(n).cloned()),
            node_name: node,
            target_ref: Some(target_ref(pod)),
            ..Default::default()
        });
    }
    // A Service that selects nothing still gets one empty slice with its ports, as in
    // Kubernetes, so watchers can tell "no endpoints" from "not yet computed".
    if groups.is_empty() {
        let ports = spec
            .and_then(|s| s.ports.as_ref())
            .into_iter()
            .flatten()
            .map(|p| Port {
                name: p.name.clone().unwrap_or_default(),
                port: 0,
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                app_protocol: p.app_protocol.clone(),
            })
            .collect::<Vec<_>>();
        groups.insert(ports, Vec::new());
    }
    let mut labels = endpoint_labels(svc);
    labels.insert(SERVICE_NAME.into(), svc_name.clone());
    labels.insert(MANAGED_BY.into(), MANAGER.into());
    let owner = OwnerReference {
        api_version: "v1".into(),
        kind: "Service".into(),
        name: svc_name.clone(),
        uid: svc.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let mut out = Vec::new();
    for (ports, mut endpoints) in groups {
        endpoints.sort_by(|a, b| a.addresses.cmp(&b.addresses));
        let mut h = std::collections::hash_map::DefaultHasher::new();
        ports.hash(&mut h);
        let base = format!("{}-{:08x}", truncate(&svc_name, 52), h.finish() as u32);
        let chunks: Vec<Vec<Endpoint>> = if endpoints.is_empty() {
            vec![Vec::new()]
        } else {
            endpoints
                .chunks(PER_SLICE)
                .map(<[Endpoint]>::to_vec)
                .collect()
        };
        for (i, chunk) in chunks.into_iter().enumerate() {
            let slice_name = if i == 0 {
                base.clone()
            } else {
                format!("{base}-{i}")
            };
            out.push(EndpointSlice {
                metadata: ObjectMeta {
                    name: Some(slice_name),
                    namespace: svc.metadata.namespace.clone(),
                    labels: Some(labels.clone()),
                    owner_references: Some(vec![owner.clone()]),
                    ..Default::default()
                },
                address_type: "IPv4".into(),
                endpoints: chunk,
                ports: Some(
                    ports
                        .iter()
                        .map(|p| SlicePort {
                            name: Some(p.name.clone()),
                            // The placeholder of an empty slice has no port number.
                            port: (p.port != 0).then_some(p.port),
                            protocol: Some(p.protocol.clone()),
                            app_protocol: p.app_protocol.clone(),
                        })
                        .collect(),
                ),
            });
        }
    }
    out
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Compare what should be with what is: the writes that make them equal. Pure.
pub fn plan(observed: &Observed, memory: &Memory) -> Vec<Write> {
    let mut pods_by_ns: HashMap<&str, Vec<&Pod>> = HashMap::new();
    for p in observed.pods {
        pods_by_ns.entry(ns(&p.metadata)).or_default().push(p);
    }
    let endpoints: HashMap<(&str, &str), &Endpoints> = observed
        .endpoints
        .iter()
        .map(|e| ((ns(&e.metadata), name(&e.metadata)), e.as_ref()))
        .collect();
    // Our slices by Service.
    let mut slices: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for s in observed.slices.iter() {
        let labels = s.metadata.labels.as_ref();
        if labels.and_then(|l| l.get(MANAGED_BY)).map(String::as_str) != Some(MANAGER) {
            continue;
        }
        let Some(svc) = labels.and_then(|l| l.get(SERVICE_NAME)) else {
            continue;
        };
        slices
            .entry((ns(&s.metadata), svc.as_str()))
            .or_default()
            .push(s);
    }
    let mut writes = Vec::new();
    let mut kept: BTreeSet<(&str, &str)> = BTreeSet::new();
    for svc in observed.services {
        let spec = svc.spec.as_ref();
        if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
            continue;
        }
        let Some(_) = spec
            .and_then(|s| s.selector.as_ref())
            .filter(|s| !s.is_empty())
        else {
            continue;
        };
        let key = (ns(&svc.metadata), name(&svc.metadata));
        kept.insert(key);
        let pods = pods_by_ns.get(key.0).map(Vec::as_slice).unwrap_or_default();

        let mut want = desired_endpoints(svc, pods);
        match endpoints.get(&key) {
            Some(have) => {
                let same = have.subsets.as_ref().filter(|s| !s.is_empty()) == want.subsets.as_ref()
                    && have.metadata.labels == want.metadata.labels;
                let print = fingerprint(&want);
                if !same && !memory.already("Endpoints", &want.metadata, print, &have.metadata) {
                    want.metadata.resource_version = have.metadata.resource_version.clone();
                    writes.push(Write::Endpoints(want));
                }
            }
            // A create is never skipped: an object missing from the cache may have been
            // deleted since this controller wrote it, and a create the cache has not seen
            // yet costs one AlreadyExists.
            None => writes.push(Write::Endpoints(want)),
        }

        let have: HashMap<&str, &EndpointSlice> = slices
            .get(&key)
            .into_iter()
            .flatten()
            .map(|s| (name(&s.metadata), *s))
            .collect();
        let want = desired_slices(svc, pods, observed.zones);
        let wanted: BTreeSet<String> = want.iter().map(|s| name(&s.metadata).to_string()).collect();
        for mut slice in want {
            let print = fingerprint(&slice);
            match have.get(name(&slice.metadata)) {
                Some(old) => {
                    let same = old.endpoints == slice.endpoints
                        && old.ports == slice.ports
                        && old.metadata.labels == slice.metadata.labels
                        && old.metadata.owner_references == slice.metadata.owner_references;
                    if !same
                        && !memory.already("EndpointSlice", &slice.metadata, print, &old.metadata)
                    {
                        slice.metadata.resource_version = old.metadata.resource_version.clone();
                        writes.push(Write::Slice(slice));
                    }
                }
                None => writes.push(Write::Slice(slice)),
            }
        }
        for old in have.keys().filter(|n| !wanted.contains(**n)) {
            writes.push(Write::DeleteSlice {
                namespace: key.0.to_string(),
                name: old.to_string(),
            });
        }
    }
    // Slices of Services that are gone (the garbage collector would get there too, through
    // the owner reference; this is quicker) and Endpoints we would have written for them.
    let services: BTreeSet<(&str, &str)> = observed
        .services
        .iter()
        .map(|s| (ns(&s.metadata), name(&s.metadata)))
        .collect();
    for (key, list) in &slices {
        if kept.contains(key) {
            continue;
        }
        for s in list {
            writes.push(Write::DeleteSlice {
                namespace: key.0.to_string(),
                name: name(&s.metadata).to_string(),
            });
        }
    }
    for key in endpoints.keys() {
        let ours =
            memory
                .written
                .contains_key(&("Endpoints", key.0.to_string(), key.1.to_string()));
        if ours && !services.contains(key) {
            writes.push(Write::DeleteEndpoints {
                namespace: key.0.to_string(),
                name: key.1.to_string(),
            });
        }
    }
    writes
}

/// The caches the endpoints sweep reads besides the context's pods and nodes.
pub struct Caches {
    pub services: Store<Service>,
    pub endpoints: Store<Endpoints>,
    pub slices: Store<EndpointSlice>,
}

/// Sweep whenever `changed` is notified (or every 30 s) until dropped.
pub async fn run(ctx: Arc<Context>, caches: Caches, changed: Arc<tokio::sync::Notify>) {
    if let Err(e) = ctx.synced().await {
        tracing::error!(error = %e, "endpoints");
        return;
    }
    for ready in [
        caches.services.wait_until_ready().await.is_ok(),
        caches.endpoints.wait_until_ready().await.is_ok(),
        caches.slices.wait_until_ready().await.is_ok(),
    ] {
        if !ready {
            tracing::error!("the endpoints controller's caches never filled");
            return;
        }
    }
    let mut memory = Memory::default();
    loop {
        let zones: HashMap<String, String> = ctx
            .nodes
            .state()
            .iter()
            .filter_map(|n| {
                let zone = n
                    .metadata
                    .labels
                    .as_ref()?
                    .get("topology.kubernetes.io/zone")?;
                Some((n.metadata.name.clone()?, zone.clone()))
            })
            .collect();
        let (services, pods, endpoints, slices) = (
            caches.services.state(),
            ctx.pods.state(),
            caches.endpoints.state(),
            caches.slices.state(),
        );
        let writes = plan(
            &Observed {
                services: &services,
                pods: &pods,
                endpoints: &endpoints,
                slices: &slices,
                zones: &zones,
            },
            &memory,
        );
        execute(&ctx.client, writes, &mut memory).await;
        let _ = tokio::time::timeout(RESYNC, changed.notified()).await;
    }
}

/// Make the writes, several at once; a failure is logged and the next sweep tries again.
async fn execute(client: &kube::Client, writes: Vec<Write>, memory: &mut Memory) {
    let done: Vec<Result<Done, Error>> =
        futures::stream::iter(writes.into_iter().map(|w| write(client, w)))
            .buffer_unordered(16)
            .collect()
            .await;
    for r in done {
        match r {
            Ok(Done::Wrote(kind, meta, print)) => memory.wrote(kind, &meta, print),
            Ok(Done::Deleted(kind, namespace, name)) => {
                memory.written.remove(&(kind, namespace, name));
            }
            // A conflict is a cache behind the store: the next sweep sees the newer object.
            Err(e) => tracing::debug!(error = %berth_core::error::Chain(&e), "endpoints write"),
        }
    }
}

/// What a write did, for the memory.
enum Done {
    /// Kind, the object's metadata as stored, the fingerprint of what was asked.
    Wrote(&'static str, Box<ObjectMeta>, u64),
    /// Kind, namespace, name.
    Deleted(&'static str, String, String),
}

/// One write.
async fn write(client: &kube::Client, w: Write) -> Result<Done, Error> {
    match w {
        Write::Endpoints(e) => put(client, "Endpoints", e).await,
        Write::Slice(s) => put(client, "EndpointSlice", s).await,
        Write::DeleteSlice { namespace, name } => {
            remove::<EndpointSlice>(client, "EndpointSlice", namespace, name).await
        }
        Write::DeleteEndpoints { namespace, name } => {
            remove::<Endpoints>(client, "Endpoints", namespace, name).await
        }
    }
}

/// Create `obj`, or replace it at the version it carries; the fingerprint is of the object
/// without its version, as `plan` takes it.
async fn put<K>(client: &kube::Client, kind: &'static str, mut obj: K) -> Result<Done, Error>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let pp = PostParams {
        field_manager: Some("endpoint-controller".into()),
        ..Default::default()
    };
    let api: Api<K> = Api::namespaced(client.clone(), ns(obj.meta()));
    let rv = obj.meta_mut().resource_version.take();
    let print = fingerprint(&obj);
    let n = name(obj.meta()).to_string();
    let stored = match rv {
        Some(rv) => {
            obj.meta_mut().resource_version = Some(rv);
            api.replace(&n, &pp, &obj).await
        }
        None => api.create(&pp, &obj).await,
    }
    .map_err(api_err(format!("writing {kind} {n}")))?;
    Ok(Done::Wrote(kind, Box::new(stored.meta().clone()), print))
}

async fn remove<K>(
    client: &kube::Client,
    kind: &'static str,
    namespace: String,
    name: String,
) -> Result<Done, Error>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), &namespace);
    ignore_gone(api.delete(&name, &DeleteParams::default()).await)
        .map_err(api_err(format!("deleting {kind} {name}")))?;
    Ok(Done::Deleted(kind, namespace, name))
}

fn ignore_gone<T>(r: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, ContainerPort, PodCondition, PodSpec, PodStatus, ServicePort, ServiceSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn svc(name: &str, ports: Vec<ServicePort>) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                uid: Some(format!("uid-{name}")),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                selector: Some(BTreeMap::from([("app".into(), "web".into())])),
                ports: Some(ports),
                cluster_ip: Some("10.96.0.10".into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn port(name: &str, port: i32, target: IntOrString) -> ServicePort {
        ServicePort {
            name: Some(name.into()),
            port,
            target_port: Some(target),
            protocol: Some("TCP".into()),
            ..Default::default()
        }
    }

    fn pod(name: &str, ip: &str, ready: bool, http_port: i32) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                uid: Some(format!("uid-{name}")),
                labels: Some(BTreeMap::from([("app".into(), "web".into())])),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("n1".into()),
                containers: vec![Container {
                    name: "c".into(),
                    ports: Some(vec![ContainerPort {
                        name: Some("http".into()),
                        container_port: http_port,
                        ..Default::default()
                    }]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                pod_ip: Some(ip.into()),
                phase: Some("Running".into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    fn terminating(mut p: Pod) -> Pod {
        p.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        p
    }

    fn ips(a: &Option<Vec<EndpointAddress>>) -> Vec<&str> {
        a.iter().flatten().map(|a| a.ip.as_str()).collect()
    }

    #[test]
    fn ready_not_ready_and_terminating() {
        let s = svc(
            "web",
            vec![port("http", 80, IntOrString::String("http".into()))],
        );
        let pods = [
            pod("a", "10.42.0.2", true, 8080),
            pod("b", "10.42.0.3", false, 8080),
            terminating(pod("c", "10.42.0.4", true, 8080)),
        ];
        let refs: Vec<&Pod> = pods.iter().collect();
        let ep = desired_endpoints(&s, &refs);
        let subsets = ep.subsets.unwrap();
        assert_eq!(subsets.len(), 1);
        assert_eq!(ips(&subsets[0].addresses), ["10.42.0.2"]);
        assert_eq!(ips(&subsets[0].not_ready_addresses), ["10.42.0.3"]);
        assert_eq!(subsets[0].ports.as_ref().unwrap()[0].port, 8080);

        let slices = desired_slices(&s, &refs, &HashMap::new());
        assert_eq!(slices.len(), 1);
        let conds: Vec<(bool, bool, bool)> = slices[0]
            .endpoints
            .iter()
            .map(|e| {
                let c = e.conditions.as_ref().unwrap();
                (c.ready.unwrap(), c.serving.unwrap(), c.terminating.unwrap())
            })
            .collect();
        // a: ready; b: not ready; c: terminating but still serving.
        assert_eq!(
            conds,
            [
                (true, true, false),
                (false, false, false),
                (false, true, true)
            ]
        );
        assert_eq!(
            slices[0].metadata.labels.as_ref().unwrap()[SERVICE_NAME],
            "web"
        );
    }

    #[test]
    fn named_ports_resolve_per_pod() {
        let s = svc(
            "web",
            vec![port("http", 80, IntOrString::String("http".into()))],
        );
        let pods = [
            pod("a", "10.42.0.2", true, 8080),
            pod("b", "10.42.0.3", true, 9090),
        ];
        let refs: Vec<&Pod> = pods.iter().collect();
        let subsets = desired_endpoints(&s, &refs).subsets.unwrap();
        let mut by_port: Vec<(i32, Vec<&str>)> = subsets
            .iter()
            .map(|s| (s.ports.as_ref().unwrap()[0].port, ips(&s.addresses)))
            .collect();
        by_port.sort();
        assert_eq!(
            by_port,
            [(8080, vec!["10.42.0.2"]), (9090, vec!["10.42.0.3"])]
        );
        assert_eq!(desired_slices(&s, &refs, &HashMap::new()).len(), 2);
        // A name no container has: the pod serves nothing of this Service.
        let s = svc(
            "web",
            vec![port("x", 80, IntOrString::String("metrics".into()))],
        );
        assert!(desired_endpoints(&s, &refs).subsets.is_none());
    }

    #[test]
    fn publish_not_ready_and_headless() {
        let mut s = svc("db", vec![]);
        s.spec.as_mut().unwrap().cluster_ip = Some("None".into());
        s.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
        let mut p = pod("db-0", "10.42.0.9", false, 5432);
        p.spec.as_mut().unwrap().hostname = Some("db-0".into());
        p.spec.as_mut().unwrap().subdomain = Some("db".into());
        let refs = [&p];
        let ep = desired_endpoints(&s, &refs);
        let subset = &ep.subsets.unwrap()[0];
        assert_eq!(ips(&subset.addresses), ["10.42.0.9"]);
        assert_eq!(
            subset.addresses.as_ref().unwrap()[0].hostname.as_deref(),
            Some("db-0")
        );
        assert!(subset.ports.is_none());
        assert!(ep
            .metadata
            .labels
            .unwrap()
            .contains_key("service.kubernetes.io/headless"));
        let slice = &desired_slices(&s, &refs, &HashMap::new())[0];
        assert_eq!(
            slice.endpoints[0].conditions.as_ref().unwrap().ready,
            Some(true)
        );
    }

    #[test]
    fn finished_pods_and_pods_without_ip_are_left_out() {
        let s = svc("web", vec![port("http", 80, IntOrString::Int(8080))]);
        let mut done = pod("a", "10.42.0.2", false, 8080);
        done.spec.as_mut().unwrap().restart_policy = Some("Never".into());
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        let mut no_ip = pod("b", "", false, 8080);
        no_ip.status.as_mut().unwrap().pod_ip = None;
        let refs = [&done, &no_ip];
        assert!(desired_endpoints(&s, &refs).subsets.is_none());
        // The one slice left is the empty placeholder with the Service's ports.
        let slices = desired_slices(&s, &refs, &HashMap::new());
        assert_eq!(slices.len(), 1);
        assert!(slices[0].endpoints.is_empty());
    }

    fn stored<T: Clone>(mut obj: T, meta: impl Fn(&mut T) -> &mut ObjectMeta, rv: &str) -> Arc<T> {
        meta(&mut obj).resource_version = Some(rv.into());
        Arc::new(obj)
    }

    #[test]
    fn plan_writes_only_what_differs_and_removes_leftovers() {
        let s = Arc::new(svc("web", vec![port("http", 80, IntOrString::Int(8080))]));
        let pods = vec![Arc::new(pod("a", "10.42.0.2", true, 8080))];
        let refs: Vec<&Pod> = pods.iter().map(|p| p.as_ref()).collect();
        let zones = HashMap::new();
        let ep = stored(desired_endpoints(&s, &refs), |e| &mut e.metadata, "5");
        let slices: Vec<Arc<EndpointSlice>> = desired_slices(&s, &refs, &zones)
            .into_iter()
            .map(|sl| stored(sl, |s| &mut s.metadata, "6"))
            .collect();
        let mut other = (*slices[0]).clone();
        other.metadata.name = Some("web-old".into());
        let mut all_slices = slices.clone();
        all_slices.push(Arc::new(other));
        let mut selectorless = svc("manual", vec![]);
        selectorless.spec.as_mut().unwrap().selector = None;
        let services = vec![s.clone(), Arc::new(selectorless)];
        let observed = Observed {
            services: &services,
            pods: &pods,
            endpoints: std::slice::from_ref(&ep),
            slices: &all_slices,
            zones: &zones,
        };
        let writes = plan(&observed, &Memory::default());
        assert_eq!(writes.len(), 1, "{writes:?}");
        assert!(matches!(&writes[0], Write::DeleteSlice { name, .. } if name == "web-old"));

        // The pod turns unready: both objects are replaced, at the cached versions.
        let unready = vec![Arc::new(pod("a", "10.42.0.2", false, 8080))];
        let observed = Observed {
            pods: &unready,
            slices: &slices,
            ..observed
        };
        let writes = plan(&observed, &Memory::default());
        assert!(matches!(&writes[..], [Write::Endpoints(e), Write::Slice(s)]
            if e.metadata.resource_version.as_deref() == Some("5")
                && s.metadata.resource_version.as_deref() == Some("6")));

        // Once written, a cache still behind the write does not cause the same write again.
        let mut memory = Memory::default();
        for w in &writes {
            match w {
                Write::Endpoints(e) => {
                    let mut e = e.clone();
                    e.metadata.resource_version = None;
                    let print = fingerprint(&e);
                    e.metadata.resource_version = Some("7".into());
                    memory.wrote("Endpoints", &e.metadata, print);
                }
                Write::Slice(s) => {
                    let mut s = s.clone();
                    s.metadata.resource_version = None;
                    let print = fingerprint(&s);
                    s.metadata.resource_version = Some("8".into());
                    memory.wrote("EndpointSlice", &s.metadata, print);
                }
                _ => unreachable!(),
            }
        }
        assert!(plan(&observed, &memory).is_empty());

        // The Service goes: its slices go, and the Endpoints this controller wrote.
        let observed = Observed {
            services: &[],
            ..observed
        };
        let writes = plan(&observed, &memory);
        assert!(writes
            .iter()
            .any(|w| matches!(w, Write::DeleteEndpoints { name, .. } if name == "web")));
        assert!(writes
            .iter()
            .any(|w| matches!(w, Write::DeleteSlice { .. })));
    }
}
