//! The scheduler's loop: an API client that watches nodes, namespaces and pods, keeps the
//! [`Snapshot`] and the [`Queue`] current, decides with [`schedule`], and binds through
//! `pods/<name>/binding`.
//!
//! A pod is *assumed* onto its node in the snapshot as soon as it is decided, so the next
//! decision already sees it; the bind goes out concurrently. A refused bind takes the pod back
//! out: if someone else bound it (409) or it is gone (404) it is dropped, otherwise it is
//! decided again on the snapshot as it is then. A pod that fits nowhere gets
//! `PodScheduled=False` (reason `Unschedulable`) and a `FailedScheduling` Event, and is parked
//! in the queue until the cluster changes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::model::{volume_terms, NodeInfo, NodeTerm, PodInfo};
use crate::queue::{Key, Queue};
use crate::schedule::{schedule, spec_error, Placement, Profile};
use crate::snapshot::Snapshot;

/// How to run the scheduler.
#[derive(Debug, Clone)]
pub struct Config {
    pub profile: Profile,
    /// Pods whose `spec.schedulerName` is this are ours.
    pub scheduler_name: String,
    /// Binds in flight at once.
    pub concurrency: usize,
    /// How fast the scheduler may write Events. Events are best effort, as in Kubernetes:
    /// they must not take the API server's time from binds, so past this budget, and once
    /// [`EVENT_QUEUE`] wait to be written, further Events are dropped.
    pub events: EventBudget,
    /// Attempts and their latency, for `/metrics`.
    pub metrics: Metrics,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// The scheduler's metrics, under kube-scheduler's names.
#[derive(Clone, Debug)]
pub struct Metrics {
    attempts: prometheus_client::metrics::family::Family<
        ResultLabel,
        prometheus_client::metrics::counter::Counter,
    >,
    latency: prometheus_client::metrics::histogram::Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
        Metrics {
            attempts: Default::default(),
            // 1 µs to about 1 s: a placement is a computation over the snapshot.
            latency: Histogram::new(exponential_buckets(0.000_001, 4.0, 11)),
        }
    }
}

impl Metrics {
    /// Put these metrics in `registry`.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "scheduler_schedule_attempts",
            "Placement attempts, by result (scheduled, unschedulable)",
            self.attempts.clone(),
        );
        registry.register(
            "scheduler_scheduling_algorithm_duration_seconds",
            "Time to decide where one pod goes",
            self.latency.clone(),
        );
    }

    fn attempt(&self, result: &'static str, took: std::time::Duration) {
        self.attempts.get_or_create(&ResultLabel { result }).inc();
        self.latency.observe(took.as_secs_f64());
    }
}

/// A token bucket for writing Events: `burst` at once, then `per_second`.
#[derive(Debug, Clone, Copy)]
pub struct EventBudget {
    pub per_second: f64,
    pub burst: f64,
}

impl Default for EventBudget {
    fn default() -> Self {
        // kube-scheduler's client allows 50/s after a burst of 100, for binds and Events
        // together; Berth's Events have a budget of their own, and binds have none.
        EventBudget {
            per_second: 100.0,
            burst: 200.0,
        }
    }
}

/// Events waiting to be written at most (Kubernetes' event broadcaster queues 1,000).
pub const EVENT_QUEUE: usize = 1000;

impl Default for Config {
    fn default() -> Self {
        Config {
            profile: Profile::default(),
            scheduler_name: "default-scheduler".into(),
            concurrency: 64,
            events: EventBudget::default(),
            metrics: Metrics::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("watching {what} stopped for good")]
    WatchEnded { what: &'static str },
}

/// A pod waiting for a node.
#[derive(Debug)]
struct Waiting {
    info: Arc<PodInfo>,
    /// Why it fits nowhere, as last reported (so the same news is not written twice).
    reported: Option<String>,
}

enum Change {
    Claim(Box<Event<PersistentVolumeClaim>>),
    Volume(Box<Event<PersistentVolume>>),
    Pod(Box<Event<Pod>>),
    Node(Box<Event<Node>>),
    Namespace(Box<Event<Namespace>>),
}

struct Bound {
    key: Key,
    uid: String,
    node: String,
    result: Result<(), kube::Error>,
}

fn key_of(pod: &Pod) -> Key {
    key_of_meta(&pod.metadata)
}

fn key_of_meta(m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Key {
    (
        m.namespace.clone().unwrap_or_default(),
        m.name.clone().unwrap_or_default(),
    )
}

fn changes<K>(
    api: Api<K>,
    wrap: fn(Event<K>) -> Change,
) -> impl Stream<Item = Result<Change, watcher::Error>> + Send
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .map(move |e| e.map(wrap))
}

/// The pod as placement sees it now: restricted to the nodes its claims' volumes reach, as
/// bound at this moment (a claim bound while the pod waited counts).
fn with_volumes(
    claims: &HashMap<Key, String>,
    volumes: &HashMap<String, Vec<NodeTerm>>,
    info: &Arc<PodInfo>,
) -> Arc<PodInfo> {
    let terms: Vec<&Vec<NodeTerm>> = info
        .claims
        .iter()
        .filter_map(|c| claims.get(&(info.namespace.clone(), c.clone())))
        .filter_map(|pv| volumes.get(pv))
        .collect();
    if terms.is_empty() {
        return info.clone();
    }
    let mut narrowed = (**info).clone();
    for t in terms {
        narrowed.restrict_to(t);
    }
    Arc::new(narrowed)
}

/// The binder's state: its client, the snapshot it decides on, the queue of pods waiting,
/// and the binds under way.
struct Binder {
    client: kube::Client,
    cfg: Config,
    snapshot: Snapshot,
    queue: Queue<Waiting>,
    /// Decided and being bound: uid by key.
    in_flight: HashMap<Key, String>,
    /// Bound by us, the watch not yet caught up: uid by key.
    bound: HashMap<Key, String>,
    /// Keys seen during a relist (a watch restart), to drop what vanished meanwhile.
    relist: Option<Vec<Key>>,
    /// The volume each bound PersistentVolumeClaim names, by namespace and name.
    claims: HashMap<Key, String>,
    /// The nodes each PersistentVolume with a node affinity can be reached from.
    volumes: HashMap<String, Vec<NodeTerm>>,
    results_tx: mpsc::Sender<Bound>,
    events: mpsc::Sender<Value>,
}

/// Run the scheduler until its watches end for good.
pub async fn run(client: kube::Client, cfg: Config) -> Result<(), SchedulerError> {
    let mut changes = futures::stream::select_all([
        changes(Api::<Node>::all(client.clone()), |e| {
            Change::Node(Box::new(e))
        })
        .boxed(),
        changes(Api::<Namespace>::all(client.clone()), |e| {
            Change::Namespace(Box::new(e))
        })
        .boxed(),
        changes(Api::<Pod>::all(client.clone()), |e| {
            Change::Pod(Box::new(e))
        })
        .boxed(),
        changes(Api::<PersistentVolumeClaim>::all(client.clone()), |e| {
            Change::Claim(Box::new(e))
        })
        .boxed(),
        changes(Api::<PersistentVolume>::all(client.clone()), |e| {
            Change::Volume(Box::new(e))
        })
        .boxed(),
    ]);
    let (results_tx, mut results) = mpsc::channel(cfg.concurrency.max(1) * 2);
    let (events, events_rx) = mpsc::channel(EVENT_QUEUE);
    tokio::spawn(record_events(client.clone(), events_rx, cfg.events));
    let mut l = Binder {
        client,
        cfg,
        snapshot: Snapshot::new(),
        queue: Queue::new(),
        in_flight: HashMap::new(),
        bound: HashMap::new(),
        relist: None,
        claims: HashMap::new(),
        volumes: HashMap::new(),
        results_tx,
        events,
    };
    let mut next_tick: Option<Instant> = None;
    loop {
        l.decide();
        let wake = next_tick.unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        tokio::select! {
            change = changes.next() => match change {
                Some(Ok(c)) => l.apply(c),
                Some(Err(e)) => tracing::warn!(error = %e, "scheduler watch failed; retrying"),
                None => return Err(SchedulerError::WatchEnded { what: "the cluster" }),
            },
            Some(done) = results.recv() => l.bind_done(done),
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
        next_tick = l.queue.tick(Instant::now());
    }
}

impl Binder {
    /// Decide on waiting pods while there is room for more binds in flight.
    fn decide(&mut self) {
        while self.in_flight.len() < self.cfg.concurrency {
            let Some((key, waiting)) = self.queue.pop() else {
                return;
            };
            let info = with_volumes(&self.claims, &self.volumes, &waiting.info);
            self.snapshot.track(&info);
            let started = std::time::Instant::now();
            let placement = schedule(&self.snapshot, &info, &self.cfg.profile);
            let result = match placement {
                Placement::Node(_) => "scheduled",
                Placement::Unschedulable(_) => "unschedulable",
            };
            self.cfg.metrics.attempt(result, started.elapsed());
            match placement {
                Placement::Node(node) => {
                    self.snapshot.place(info.clone(), &node);
                    self.in_flight.insert(key.clone(), info.uid.clone());
                    let api: Api<Pod> = Api::namespaced(self.client.clone(), &key.0);
                    let tx = self.results_tx.clone();
                    tokio::spawn(async move {
                        let binding = json!({
                            "apiVersion": "v1", "kind": "Binding",
                            "metadata": {"name": key.1, "uid": info.uid},
                            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
                        });
                        let result = api
                            .create_subresource::<_, Value>(
                                "binding",
                                &key.1,
                                &PostParams::default(),
                                &binding,
                            )
                            .await
                            .map(|_| ());
                        let uid = info.uid.clone();
                        let _ = tx
                            .send(Bound {
                                key,
                                uid,
                                node,
                                result,
                            })
                            .await;
                    });
                }
                Placement::Unschedulable(d) => {
                    let message = d.to_string();
                    self.unschedulable(key, message);
                }
            }
        }
    }

    fn unschedulable(&mut self, key: Key, message: String) {
        let Some(w) = self.queue.get_mut(&key) else {
            return;
        };
        let news = w.reported.as_deref() != Some(message.as_str());
        w.reported = Some(message.clone());
        let uid = w.info.uid.clone();
        self.queue.park(key.clone(), Instant::now());
        if !news {
            return;
        }
        tracing::info!(pod = %format!("{}/{}", key.0, key.1), %message, "unschedulable");
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &key.0);
        let now = jiff::Timestamp::now().to_string();
        let status = json!({"status": {"conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": message, "lastProbeTime": null, "lastTransitionTime": now,
        }]}});
        let name = key.1.clone();
        tokio::spawn(async move {
            if let Err(e) = api
                .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&status))
                .await
            {
                tracing::debug!(error = %e, pod = %name, "could not mark pod unschedulable");
            }
        });
        let _ = self
            .events
            .try_send(event(&key, &uid, "Warning", "FailedScheduling", &message));
    }

    fn bind_done(&mut self, done: Bound) {
        let Bound {
            key,
            uid,
            node,
            result,
        } = done;
        self.in_flight.remove(&key);
        match result {
            Ok(()) => {
                self.queue.remove(&key);
                self.bound.insert(key.clone(), uid.clone());
                let msg = format!("Successfully assigned {}/{} to {node}", key.0, key.1);
                let _ = self
                    .events
                    .try_send(event(&key, &uid, "Normal", "Scheduled", &msg));
            }
            Err(e) => {
                self.snapshot.remove_pod(&key.0, &key.1);
                let code = match &e {
                    kube::Error::Api(s) => s.code,
                    _ => 0,
                };
                if code == 404 || code == 409 {
                    // Bound by someone else, or gone: the watch tells the rest.
                    tracing::debug!(pod = %key.1, error = %e, "bind refused; dropping");
                    self.queue.remove(&key);
                } else {
                    tracing::warn!(pod = %key.1, error = %e, "bind failed; will retry");
                    self.queue.retry(key, Instant::now());
                }
            }
        }
    }

    fn apply(&mut self, change: Change) {
        match change {
            Change::Pod(e) => self.pod_event(*e),
            Change::Claim(e) => match *e {
                Event::Apply(c) | Event::InitApply(c) => {
                    let key = key_of_meta(&c.metadata);
                    match c.spec.and_then(|s| s.volume_name).filter(|v| !v.is_empty()) {
                        Some(v) => self.claims.insert(key, v),
                        None => self.claims.remove(&key),
                    };
                }
                Event::Delete(c) => {
                    self.claims.remove(&key_of_meta(&c.metadata));
                }
                Event::Init | Event::InitDone => {}
            },
            Change::Volume(e) => match *e {
                Event::Apply(v) | Event::InitApply(v) => {
                    let name = v.metadata.name.clone().unwrap_or_default();
                    match volume_terms(&v) {
                        Ok(Some(terms)) => self.volumes.insert(name, terms),
                        _ => self.volumes.remove(&name),
                    };
                }
                Event::Delete(v) => {
                    self.volumes
                        .remove(v.metadata.name.as_deref().unwrap_or_default());
                }
                Event::Init | Event::InitDone => {}
            },
            Change::Node(e) => match *e {
                Event::Apply(n) | Event::InitApply(n) => {
                    let info = NodeInfo::from_node(&n);
                    if self.snapshot.node(&info.name).map(|s| &s.info) != Some(&info) {
                        self.snapshot.upsert_node(info);
                        self.queue.cluster_changed();
                    }
                }
                Event::Delete(n) => {
                    self.snapshot
                        .remove_node(n.metadata.name.as_deref().unwrap_or_default());
                }
                Event::Init | Event::InitDone => {}
            },
            Change::Namespace(e) => match *e {
                Event::Apply(n) | Event::InitApply(n) => {
                    let labels = n.metadata.labels.clone().unwrap_or_default();
                    self.snapshot
                        .set_namespace(n.metadata.name.as_deref().unwrap_or_default(), labels);
                    self.queue.cluster_changed();
                }
                Event::Delete(n) => self
                    .snapshot
                    .remove_namespace(n.metadata.name.as_deref().unwrap_or_default()),
                Event::Init | Event::InitDone => {}
            },
        }
    }

    fn pod_event(&mut self, e: Event<Pod>) {
        match e {
            Event::Init => self.relist = Some(Vec::new()),
            Event::InitApply(p) => {
                if let Some(seen) = self.relist.as_mut() {
                    seen.push(key_of(&p));
                }
                self.pod_applied(&p);
            }
            Event::InitDone => {
                // Pods that vanished while the watch was down.
                if let Some(seen) = self.relist.take() {
                    let seen: std::collections::HashSet<Key> = seen.into_iter().collect();
                    let mut gone: Vec<Key> = Vec::new();
                    self.snapshot.for_each_matching(
                        &berth_core::selector::Selector::default(),
                        |p| {
                            let k = (p.pod.namespace.clone(), p.pod.name.clone());
                            if !seen.contains(&k) {
                                gone.push(k);
                            }
                        },
                    );
                    for k in gone {
                        if !self.in_flight.contains_key(&k) {
                            self.snapshot.remove_pod(&k.0, &k.1);
                        }
                    }
                    self.queue.cluster_changed();
                }
            }
            Event::Apply(p) => self.pod_applied(&p),
            Event::Delete(p) => {
                let key = key_of(&p);
                self.queue.remove(&key);
                self.bound.remove(&key);
                if self.snapshot.remove_pod(&key.0, &key.1).is_some() {
                    self.queue.cluster_changed();
                }
            }
        }
    }

    fn pod_applied(&mut self, pod: &Pod) {
        let key = key_of(pod);
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let spec = pod.spec.as_ref();
        let node = spec
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty());
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        let finished = matches!(phase, Some("Succeeded") | Some("Failed"));
        match node {
            Some(node) => {
                self.bound.remove(&key);
                self.queue.remove(&key);
                if finished {
                    if self.snapshot.remove_pod(&key.0, &key.1).is_some() {
                        self.queue.cluster_changed();
                    }
                    return;
                }
                let known = self
                    .snapshot
                    .placement_of(&key.0, &key.1)
                    .is_some_and(|p| p.node_name == node && p.pod.uid == uid);
                if !known {
                    if let Ok(info) = PodInfo::from_pod(pod) {
                        self.snapshot.place(Arc::new(info), &node);
                    }
                }
            }
            None => {
                let ours = spec
                    .and_then(|s| s.scheduler_name.as_deref())
                    .unwrap_or("default-scheduler")
                    == self.cfg.scheduler_name;
                let deleting = pod.metadata.deletion_timestamp.is_some();
                if !ours || deleting || finished {
                    self.queue.remove(&key);
                    return;
                }
                if self.in_flight.get(&key) == Some(&uid) || self.bound.get(&key) == Some(&uid) {
                    return;
                }
                match PodInfo::from_pod(pod) {
                    Ok(info) => {
                        let reported = self.queue.get_mut(&key).and_then(|w| w.reported.take());
                        self.queue.add(
                            key,
                            Waiting {
                                info: Arc::new(info),
                                reported,
                            },
                        );
                    }
                    Err(e) => {
                        let placement = spec_error(
                            self.snapshot.nodes().len(),
                            berth_core::error::Chain(&e).to_string(),
                        );
                        if let Placement::Unschedulable(d) = placement {
                            self.queue.add(
                                key.clone(),
                                Waiting {
                                    info: Arc::new(PodInfo {
                                        namespace: key.0.clone(),
                                        name: key.1.clone(),
                                        uid,
                                        ..Default::default()
                                    }),
                                    reported: None,
                                },
                            );
                            self.unschedulable(key, d.to_string());
                        }
                    }
                }
            }
        }
    }
}

/// A core/v1 Event about a pod, from the scheduler.
fn event(key: &Key, uid: &str, type_: &str, reason: &str, message: &str) -> Value {
    let about = berth_core::events::Involved {
        api_version: "v1",
        kind: "Pod",
        namespace: &key.0,
        name: &key.1,
        uid,
    };
    berth_core::events::event(
        about,
        type_,
        reason,
        message,
        "default-scheduler",
        jiff::Timestamp::now(),
    )
}

/// Write Events a few at a time within `budget`; what the queue cannot hold is dropped
/// (the senders use `try_send`), as Kubernetes' event broadcaster drops it.
async fn record_events(client: kube::Client, mut rx: mpsc::Receiver<Value>, budget: EventBudget) {
    let writers = Arc::new(tokio::sync::Semaphore::new(8));
    let mut bucket = Bucket::full(budget, Instant::now());
    while let Some(ev) = rx.recv().await {
        if let Some(wait) = bucket.take(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        let Ok(permit) = writers.clone().acquire_owned().await else {
            return;
        };
        let ns = ev["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        let api: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), &ns);
        tokio::spawn(async move {
            let _permit = permit;
            let Ok(ev) = serde_json::from_value(ev) else {
                return;
            };
            if let Err(e) = api.create(&PostParams::default(), &ev).await {
                tracing::debug!(error = %e, "could not record an event");
            }
        });
    }
}

/// The state of an [`EventBudget`]: tokens left as of `at`.
struct Bucket {
    budget: EventBudget,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(budget: EventBudget, now: Instant) -> Self {
        Bucket {
            budget,
            tokens: budget.burst.max(1.0),
            at: now,
        }
    }

    /// Take a token: `None` when one is there now, else how long until it will be (the
    /// token is spent in advance, so callers in turn wait in turn).
    fn take(&mut self, now: Instant) -> Option<Duration> {
        let EventBudget { per_second, burst } = self.budget;
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * per_second;
        self.tokens = (self.tokens + refill).min(burst.max(1.0));
        self.at = now;
        self.tokens -= 1.0;
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / per_second.max(1e-3)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_budget_allows_a_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::full(
            EventBudget {
                per_second: 10.0,
                burst: 3.0,
            },
            t0,
        );
        // The burst goes at once.
        assert_eq!((0..3).filter_map(|_| b.take(t0)).count(), 0);
        // Then one per 100 ms, each waiting behind the last.
        let waits: Vec<u128> = (0..2)
            .filter_map(|_| b.take(t0))
            .map(|d| d.as_millis())
            .collect();
        assert_eq!(waits, vec![100, 200]);
        // Idle time refills, but never past the burst.
        let later = t0 + Duration::from_secs(10);
        assert_eq!((0..3).filter_map(|_| b.take(later)).count(), 0);
        assert!(b.take(later).is_some());
    }
}
