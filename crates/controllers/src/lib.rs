//! Berth's workload controllers: API clients that keep the cluster at its declared state.
//!
//! Start at [`run`]: it fills shared caches (reflectors over pods, replica sets and nodes),
//! then runs every controller. Each is one file of one shape: it reads what it needs, a pure
//! `plan(observed, memory, now) -> Plan` decides (level-triggered, idempotent, told nothing
//! about why it runs), and `execute` makes the plan's writes. ReplicaSet and Deployment run
//! on kube-runtime's `Controller` (one object per reconcile); the others sweep their whole
//! graph on a period.
//!
//! ```text
//!  Deployment ──reconcile──▶ ReplicaSets (one per template, pod-template-hash)
//!                               │  rolling update: surge the new, drain the old
//!  ReplicaSet ──reconcile──▶ Pods (create in growing batches, delete ranked victims)
//!  Job ──reconcile──▶ Pods (up to parallelism, until completions succeed), status, TTL
//!  CronJob ──reconcile──▶ Jobs (one per scheduled time, woken for the next), history
//!  ReplicationController ──reconcile──▶ as the ReplicaSet its selector makes
//!  StatefulSet ──reconcile──▶ Pods <set>-<i> in order, their claims, rolling update
//!  DaemonSet ──reconcile──▶ a Pod pinned to each node the template fits; rolling update
//!  PodDisruptionBudget ──reconcile (on any pod change)──▶ its status, read by pods/eviction
//!  PersistentVolumeClaim ──reconcile──▶ default class, bind, local-path volumes
//!  PersistentVolume ──reconcile──▶ Available / Released / deleted
//!  gc (sweep every second, every served kind) ──▶ deletes what lost its owners;
//!                                                foreground / orphan finalizers
//!  nodelifecycle (sweep every 250 ms) ──▶ Lease ran out: NotReady, unreachable taint, evict
//!  hpa (every second) ──▶ metrics.k8s.io usage / requests ──▶ the target's scale
//!  endpoints (on every pod, Service, Endpoints or slice change) ──▶ Endpoints, EndpointSlices
//!  nodeipam (on every node change) ──▶ spec.podCIDR for nodes without one
//!  Namespace ──reconcile──▶ its `default` ServiceAccount and `kube-root-ca.crt`
//!  ClusterRole aggregation (a pass on any ClusterRole change) ──▶ aggregated roles' rules
//! ```

pub mod aggregation;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
mod events;
pub mod gc;
pub mod hpa;
pub mod job;
pub mod leader;
pub mod nodeipam;
pub mod nodelifecycle;
mod ownership;
pub mod replicaset;
mod revisions;
mod serviceaccount;
pub mod statefulset;
mod status;
pub mod volume;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{
    Node, PersistentVolume, PersistentVolumeClaim, Pod, ReplicationController,
};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} {name}: {why}")]
    Invalid {
        what: &'static str,
        name: String,
        why: String,
    },
    #[error("{action} failed")]
    Api {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error("the {what} cache never filled")]
    Cache { what: &'static str },
}

/// An API failure, named by what was being done.
pub fn api_err(action: String) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Api { action, source }
}

/// Creations and deletions a controller has asked for but not yet seen in its cache; until
/// they show up (or a minute passes) it does not count pods again, so a lagging cache never
/// makes it create twice.
#[derive(Debug, Default)]
pub struct Expectations {
    pending: Mutex<HashMap<String, Pending>>,
}

#[derive(Debug)]
struct Pending {
    creates: HashSet<String>,
    deletes: HashSet<String>,
    since: Instant,
}

const EXPECTATION_TTL: Duration = Duration::from_secs(60);

impl Expectations {
    pub fn expect(&self, owner: &str, creates: Vec<String>, deletes: Vec<String>) {
        let mut map = self.pending.lock().expect("expectations lock");
        let p = map.entry(owner.to_string()).or_insert_with(|| Pending {
            creates: HashSet::new(),
            deletes: HashSet::new(),
            since: Instant::now(),
        });
        p.creates.extend(creates);
        p.deletes.extend(deletes);
        p.since = Instant::now();
    }

    /// Have all expected changes for `owner` shown up in `present` (names in the cache)?
    pub fn satisfied(&self, owner: &str, present: &HashSet<String>) -> bool {
        let mut map = self.pending.lock().expect("expectations lock");
        let Some(p) = map.get_mut(owner) else {
            return true;
        };
        p.creates.retain(|n| !present.contains(n));
        p.deletes.retain(|n| present.contains(n));
        if (p.creates.is_empty() && p.deletes.is_empty()) || p.since.elapsed() > EXPECTATION_TTL {
            map.remove(owner);
            return true;
        }
        false
    }
}

/// What every reconcile can reach.
pub struct Context {
    pub client: kube::Client,
    pub pods: Store<Pod>,
    pub replicasets: Store<ReplicaSet>,
    pub deployments: Store<Deployment>,
    pub nodes: Store<Node>,
    pub jobs: Store<Job>,
    pub cluster_roles: Store<k8s_openapi::api::rbac::v1::ClusterRole>,
    /// The cluster CA (PEM), for every namespace's `kube-root-ca.crt`.
    pub root_ca: String,
    pub expectations: Expectations,
    /// The revision last recorded for each DaemonSet and StatefulSet, by uid.
    revisions: Memo,
    /// What was last said about an object, by key: see [`Context::noted`].
    notes: Memo,
    synced: Synced,
}

type Synced =
    futures::future::Shared<futures::future::BoxFuture<'static, Result<(), &'static str>>>;

/// What a shared cache can hold: a Kubernetes kind, read whole.
trait Cached:
    kube::Resource<DynamicType = ()>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
}

impl<K> Cached for K where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static
{
}

/// A cache of every `K` and the stream of changes that fills it; whoever polls the stream
/// keeps the cache current and hears of each change after the cache has it.
fn cache<K>(
    api: Api<K>,
) -> (
    Store<K>,
    impl futures::Stream<Item = Result<K, watcher::Error>> + Send,
)
where
    K: Cached,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .inspect_err(|e| tracing::warn!(kind = %K::kind(&()), error = %e, "cache watch"))
        .touched_objects();
    (reader, stream)
}

/// What the controllers are told of the cluster.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How nodes' pod CIDRs are cut from the cluster's.
    pub pod_cidrs: nodeipam::Settings,
    /// The cluster CA (PEM) published in every namespace as `kube-root-ca.crt`.
    pub root_ca: String,
}

/// Run the controllers until the process ends.
pub async fn run(client: kube::Client, settings: Settings) -> Result<(), Error> {
    let (pods, pod_changes) = cache(Api::<Pod>::all(client.clone()));
    let (replicasets, rs_changes) = cache(Api::<ReplicaSet>::all(client.clone()));
    let (nodes, node_changes) = cache(Api::<Node>::all(client.clone()));
    let (deployments, deployment_changes) = cache(Api::<Deployment>::all(client.clone()));
    let (jobs, job_changes) = cache(Api::<Job>::all(client.clone()));
    let (leases, lease_changes) = cache(
        Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(
            client.clone(),
            "kube-node-lease",
        ),
    );
    let (hpas, hpa_changes) = cache(Api::<
        k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler,
    >::all(client.clone()));
    let nodes_changed = Arc::new(tokio::sync::Notify::new());
    // The endpoints sweep runs on any change to what it reads.
    let changed = Arc::new(tokio::sync::Notify::new());
    // A pod's change wakes its Job or ReplicationController, if one controls it (the
    // ReplicaSet controller reads the same stream for its own).
    let (job_tx, job_rx) = futures::channel::mpsc::unbounded();
    let (rc_tx, rc_rx) = futures::channel::mpsc::unbounded();
    let (ds_tx, ds_rx) = futures::channel::mpsc::unbounded();
    let (sts_tx, sts_rx) = futures::channel::mpsc::unbounded();
    // Every node change wakes every DaemonSet.
    let (ds_nodes_tx, ds_nodes_rx) = futures::channel::mpsc::unbounded();
    // Every pod change wakes every PodDisruptionBudget (there are few).
    let (pdb_tx, pdb_rx) = futures::channel::mpsc::unbounded();
    // A scheduled pod wakes the claims it uses (a local-path claim waits for one).
    let (claim_tx, claim_rx) = futures::channel::mpsc::unbounded();
    let (_, claim_changes) = cache(Api::<PersistentVolumeClaim>::all(client.clone()));
    // A claim's change (its deletion above all) wakes its volume.
    let volume_wakes = claim_changes.filter_map(|c| {
        futures::future::ready(c.ok().and_then(|c| {
            let v = c.spec?.volume_name?;
            Some(ObjectRef::<PersistentVolume>::new(&v))
        }))
    });
    let pod_changes = {
        let changed = changed.clone();
        pod_changes.inspect(move |p| {
            changed.notify_one();
            let _ = pdb_tx.unbounded_send(());
            if let Ok(p) = p {
                for claim in claims_of(p) {
                    let _ = claim_tx.unbounded_send(claim);
                }
                if let Some(job) = controller_of::<Job>(p) {
                    let _ = job_tx.unbounded_send(job);
                } else if let Some(rc) = controller_of::<ReplicationController>(p) {
                    let _ = rc_tx.unbounded_send(rc);
                } else if let Some(ds) = controller_of::<DaemonSet>(p) {
                    let _ = ds_tx.unbounded_send(ds);
                } else if let Some(sts) = controller_of::<StatefulSet>(p) {
                    let _ = sts_tx.unbounded_send(sts);
                }
            }
        })
    };
    let (services, service_changes) = cache(Api::<k8s_openapi::api::core::v1::Service>::all(
        client.clone(),
    ));
    let (endpoints, endpoints_changes) = cache(Api::<k8s_openapi::api::core::v1::Endpoints>::all(
        client.clone(),
    ));
    let (slices, slice_changes) = cache(
        Api::<k8s_openapi::api::discovery::v1::EndpointSlice>::all(client.clone()),
    );
    let (cluster_roles, cluster_role_changes) = cache(
        Api::<k8s_openapi::api::rbac::v1::ClusterRole>::all(client.clone()),
    );
    // Every ClusterRole change wakes the aggregation pass.
    let (cluster_role_tx, cluster_role_rx) = futures::channel::mpsc::unbounded();
    let ctx = Arc::new(Context {
        client,
        cluster_roles,
        root_ca: settings.root_ca.clone(),
        synced: all_synced(
            pods.clone(),
            replicasets.clone(),
            deployments.clone(),
            nodes.clone(),
            jobs.clone(),
        ),
        pods,
        replicasets,
        deployments,
        nodes,
        jobs,
        expectations: Expectations::default(),
        revisions: Memo::default(),
        notes: Memo::default(),
    });
    futures::join!(
        controller(
            "replicaset",
            ctx.clone(),
            pod_changes,
            replicaset::reconcile
        ),
        controller("deployment", ctx.clone(), rs_changes, deployment::reconcile),
        woken_by_pods("job", ctx.clone(), job_rx, job::reconcile),
        controller::<CronJob, _, _, _>("cronjob", ctx.clone(), job_changes, cronjob::reconcile),
        drive(
            "daemonset",
            watched::<DaemonSet>(&ctx)
                .reconcile_on(ds_rx)
                .reconcile_all_on(ds_nodes_rx),
            ctx.clone(),
            daemonset::reconcile
        ),
        woken_by_pods("statefulset", ctx.clone(), sts_rx, statefulset::reconcile),
        drive(
            "persistentvolumeclaim",
            watched::<PersistentVolumeClaim>(&ctx).reconcile_on(claim_rx),
            ctx.clone(),
            volume::reconcile_claim
        ),
        drive(
            "persistentvolume",
            watched::<PersistentVolume>(&ctx).reconcile_on(volume_wakes),
            ctx.clone(),
            volume::reconcile_volume
        ),
        drive(
            "disruption",
            watched::<k8s_openapi::api::policy::v1::PodDisruptionBudget>(&ctx)
                .reconcile_all_on(pdb_rx),
            ctx.clone(),
            disruption::reconcile
        ),
        drive(
            "serviceaccount",
            watched::<k8s_openapi::api::core::v1::Namespace>(&ctx)
                .watches(
                    Api::<k8s_openapi::api::core::v1::ServiceAccount>::all(ctx.client.clone()),
                    watcher::Config::default().fields("metadata.name=default"),
                    |sa| sa.metadata.namespace.map(|ns| ObjectRef::new(&ns))
                )
                .watches(
                    Api::<k8s_openapi::api::core::v1::ConfigMap>::all(ctx.client.clone()),
                    watcher::Config::default()
                        .fields(&format!("metadata.name={}", serviceaccount::ROOT_CA)),
                    |cm| cm.metadata.namespace.map(|ns| ObjectRef::new(&ns))
                ),
            ctx.clone(),
            serviceaccount::reconcile
        ),
        aggregation::run(ctx.clone(), cluster_role_rx),
        cluster_role_changes.for_each(|_| {
            let _ = cluster_role_tx.unbounded_send(());
            futures::future::ready(())
        }),
        woken_by_pods(
            "replicationcontroller",
            ctx.clone(),
            rc_rx,
            replicaset::reconcile_rc
        ),
        gc::run(ctx.client.clone()),
        hpa::run(ctx.clone(), hpas),
        endpoints::run(
            ctx.clone(),
            endpoints::Caches {
                services,
                endpoints,
                slices,
            },
            changed.clone(),
        ),
        service_changes.for_each(|_| {
            changed.notify_one();
            futures::future::ready(())
        }),
        endpoints_changes.for_each(|_| {
            changed.notify_one();
            futures::future::ready(())
        }),
        slice_changes.for_each(|_| {
            changed.notify_one();
            futures::future::ready(())
        }),
        // The caches without a controller of their own are kept by draining their streams
        // here, so that dropping this future (a leader stepping down) stops every watch.
        hpa_changes.for_each(|_| async {}),
        lease_changes.for_each(|_| async {}),
        node_changes.for_each(|_| {
            nodes_changed.notify_one();
            let _ = ds_nodes_tx.unbounded_send(());
            futures::future::ready(())
        }),
        nodeipam::run(ctx.clone(), settings.pod_cidrs, nodes_changed.clone()),
        deployment_changes.for_each(|_| async {}),
        nodelifecycle::run(ctx.clone(), leases)
    );
    Ok(())
}

/// Run one controller until its watches end: kube-runtime's `Controller` over every `K`,
/// woken by changes to `K` and to what `K` owns (`changes`, from a shared cache), calling
/// `reconcile` one object at a time.
async fn controller<K, Owned, R, F>(
    kind: &'static str,
    ctx: Arc<Context>,
    changes: impl futures::Stream<Item = Result<Owned, watcher::Error>> + Send + 'static,
    reconcile: R,
) where
    K: Cached,
    Owned: kube::Resource<DynamicType = ()> + Send + 'static,
    R: FnMut(Arc<K>, Arc<Context>) -> F,
    F: std::future::Future<Output = Result<kube::runtime::controller::Action, Error>>
        + Send
        + 'static,
{
    let watched = watched::<K>(&ctx).owns_stream(changes);
    drive(kind, watched, ctx, reconcile).await;
}

/// The claims a scheduled pod uses.
fn claims_of(p: &Pod) -> Vec<ObjectRef<PersistentVolumeClaim>> {
    let Some(spec) = p.spec.as_ref().filter(|s| s.node_name.is_some()) else {
        return Vec::new();
    };
    let ns = p.metadata.namespace.as_deref().unwrap_or_default();
    spec.volumes
        .iter()
        .flatten()
        .filter_map(|v| v.persistent_volume_claim.as_ref())
        .map(|c| ObjectRef::new(&c.claim_name).within(ns))
        .collect()
}

/// The object of kind `K` that controls a pod, if one does.
fn controller_of<K: kube::Resource<DynamicType = ()>>(p: &Pod) -> Option<ObjectRef<K>> {
    let owner = p
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))?;
    (owner.kind == K::kind(&()) && owner.api_version == K::api_version(&())).then(|| {
        ObjectRef::new(&owner.name).within(p.metadata.namespace.as_deref().unwrap_or_default())
    })
}

/// Run one controller over every `K`, woken by its own changes and by its pods' (`pod_owners`,
/// routed from the shared pod cache).
async fn woken_by_pods<K, R, F>(
    kind: &'static str,
    ctx: Arc<Context>,
    pod_owners: impl futures::Stream<Item = ObjectRef<K>> + Send + 'static,
    reconcile: R,
) where
    K: Cached,
    R: FnMut(Arc<K>, Arc<Context>) -> F,
    F: std::future::Future<Output = Result<kube::runtime::controller::Action, Error>>
        + Send
        + 'static,
{
    let watched = watched::<K>(&ctx).reconcile_on(pod_owners);
    drive(kind, watched, ctx, reconcile).await;
}

/// kube-runtime's `Controller` over every `K`.
fn watched<K: Cached>(ctx: &Context) -> kube::runtime::Controller<K> {
    kube::runtime::Controller::new(
        Api::<K>::all(ctx.client.clone()),
        watcher::Config::default(),
    )
}

/// Run `controller`, calling `reconcile` one object at a time; a failed reconcile is logged
/// and tried again in 5 s.
async fn drive<K, R, F>(
    kind: &'static str,
    controller: kube::runtime::Controller<K>,
    ctx: Arc<Context>,
    reconcile: R,
) where
    K: Cached,
    R: FnMut(Arc<K>, Arc<Context>) -> F,
    F: std::future::Future<Output = Result<kube::runtime::controller::Action, Error>>
        + Send
        + 'static,
{
    controller
        .run(
            reconcile,
            move |_, e: &Error, _| {
                tracing::warn!(controller = kind, error = %e, "reconcile failed; retrying in 5 s");
                kube::runtime::controller::Action::requeue(Duration::from_secs(5))
            },
            ctx,
        )
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(controller = kind, error = %e, "reconcile");
            }
        })
        .await;
}

/// A bounded memo of the last value seen per key. Objects are deleted without a reconcile, so
/// nothing removes their entries one by one: past [`Memo::CAP`] entries the memo starts over,
/// which costs at most one more Event or revision lookup per object.
#[derive(Default)]
pub(crate) struct Memo(Mutex<HashMap<String, String>>);

impl Memo {
    const CAP: usize = 16_384;

    pub(crate) fn get(&self, key: &str) -> Option<String> {
        self.0.lock().expect("memo lock").get(key).cloned()
    }

    /// Remember `value` for `key`; whether it differs from what was remembered.
    pub(crate) fn set(&self, key: String, value: &str) -> bool {
        let mut m = self.0.lock().expect("memo lock");
        if m.get(&key).map(String::as_str) == Some(value) {
            return false;
        }
        if m.len() >= Self::CAP {
            m.clear();
        }
        m.insert(key, value.to_string());
        true
    }
}

impl Context {
    /// Is `value` new for `key`? Remembers it. Events that would otherwise be written on every
    /// pass (a claim waiting, a CronJob held back) are written when what they say changes.
    pub fn noted(&self, key: String, value: &str) -> bool {
        self.notes.set(key, value)
    }

    /// Wait until every cache has been filled once (reconciles must not act on an empty view).
    pub async fn synced(&self) -> Result<(), Error> {
        self.synced
            .clone()
            .await
            .map_err(|what| Error::Cache { what })
    }
}

/// One future that waits for every cache, shared by all who wait. Each cache's readiness
/// is awaited by this future alone: kube-runtime's `Store::wait_until_ready` wakes only the
/// last of several concurrent waiters, so a reconcile that waited beside the autoscaler could
/// sleep forever.
fn all_synced(
    pods: Store<Pod>,
    replicasets: Store<ReplicaSet>,
    deployments: Store<Deployment>,
    nodes: Store<Node>,
    jobs: Store<Job>,
) -> Synced {
    async move {
        pods.wait_until_ready().await.map_err(|_| "pod")?;
        replicasets
            .wait_until_ready()
            .await
            .map_err(|_| "replicaset")?;
        deployments
            .wait_until_ready()
            .await
            .map_err(|_| "deployment")?;
        nodes.wait_until_ready().await.map_err(|_| "node")?;
        jobs.wait_until_ready().await.map_err(|_| "job")
    }
    .boxed()
    .shared()
}
