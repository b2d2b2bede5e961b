//! A scheduler without IO, for tests and benchmarks: the same snapshot, queue and
//! `schedule` the binder loop uses, with binds that always succeed unless a test forces a
//! rejection. Every decision is recorded as a [`Plan`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use crate::model::{NodeInfo, PodInfo};
use crate::queue::{Key, Queue};
use crate::schedule::{schedule, Placement, Profile};
use crate::snapshot::Snapshot;

/// One decision and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub pod: Key,
    pub placement: Placement,
    /// The bind was refused (the snapshot it was planned on was stale).
    pub rejected: bool,
}

type Change = Box<dyn FnOnce(&mut Snapshot)>;

#[derive(Default)]
pub struct Harness {
    pub snapshot: Snapshot,
    pub profile: Profile,
    pub queue: Queue<Arc<PodInfo>>,
    pub plans: Vec<Plan>,
    /// Binds to refuse, each with the change to the cluster that made the plan stale.
    rejections: VecDeque<Change>,
}

impl Harness {
    pub fn new(profile: Profile) -> Harness {
        Harness {
            profile,
            ..Default::default()
        }
    }

    pub fn add_node(&mut self, node: NodeInfo) {
        self.snapshot.upsert_node(node);
        self.queue.cluster_changed();
    }

    pub fn remove_pod(&mut self, namespace: &str, name: &str) {
        self.snapshot.remove_pod(namespace, name);
        self.queue.cluster_changed();
    }

    /// A pod already running on `node`.
    pub fn place(&mut self, pod: PodInfo, node: &str) {
        self.snapshot.place(Arc::new(pod), node);
    }

    /// A pod for the scheduler to place.
    pub fn submit(&mut self, pod: PodInfo) {
        let key = (pod.namespace.clone(), pod.name.clone());
        self.queue.add(key, Arc::new(pod));
    }

    /// Refuse the next bind, after applying `change` to the cluster (what another writer did
    /// meanwhile); the pod is planned again on the changed snapshot.
    pub fn reject_next_bind(&mut self, change: impl FnOnce(&mut Snapshot) + 'static) {
        self.rejections.push_back(Box::new(change));
    }

    /// Decide on every active pod; returns how many were bound.
    pub fn run(&mut self, now: Instant) -> usize {
        self.queue.tick(now);
        let mut bound = 0;
        while let Some((key, pod)) = self.queue.pop() {
            let pod = pod.clone();
            self.snapshot.track(&pod);
            let placement = schedule(&self.snapshot, &pod, &self.profile);
            match &placement {
                Placement::Node(node) => {
                    if let Some(change) = self.rejections.pop_front() {
                        change(&mut self.snapshot);
                        self.plans.push(Plan {
                            pod: key.clone(),
                            placement,
                            rejected: true,
                        });
                        // Plan again at once, on the snapshot as it is now.
                        self.queue.remove(&key);
                        self.queue.add(key, pod);
                        continue;
                    }
                    self.snapshot.place(pod, node);
                    self.queue.remove(&key);
                    bound += 1;
                }
                Placement::Unschedulable(_) => self.queue.park(key.clone(), now),
            }
            self.plans.push(Plan {
                pod: key,
                placement,
                rejected: false,
            });
        }
        bound
    }

    /// Where the last accepted plan put a pod.
    pub fn node_of(&self, name: &str) -> Option<&str> {
        self.plans
            .iter()
            .rev()
            .find(|p| p.pod.1 == name && !p.rejected)
            .and_then(|p| match &p.placement {
                Placement::Node(n) => Some(n.as_str()),
                Placement::Unschedulable(_) => None,
            })
    }

    /// Why the last plan for a pod placed it nowhere.
    pub fn why(&self, name: &str) -> Option<String> {
        self.plans
            .iter()
            .rev()
            .find(|p| p.pod.1 == name)
            .and_then(|p| match &p.placement {
                Placement::Unschedulable(d) => Some(d.to_string()),
                Placement::Node(_) => None,
            })
    }
}
