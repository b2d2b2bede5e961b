//! The cluster as placement sees it: nodes, the pods placed on them, and the indexes that keep
//! a decision cheap at thousands of nodes (pods by label, node counts per topology domain).
//!
//! The snapshot is plain data, updated in place as pods are placed and removed; it never does
//! IO and never reads the clock.
//!
//! Node label values are interned per key ([`Topology`]): a domain is a small integer, each
//! node knows its domain per key by index, and counts per domain are vectors. The filters
//! that look at every node (spread, pod affinity) then compare integers, never strings.

use std::collections::BTreeMap;

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

/// Tracked terms kept at most; past it the cache starts over (terms come from templates, so
/// a cluster has few).
const MAX_TRACKED: usize = 4096;
use std::sync::Arc;

use berth_core::selector::{Op, Selector};

use crate::model::{HostPort, Namespaces, NodeInfo, PodInfo, PodTerm, Resources};

/// A node with what is placed on it.
#[derive(Debug, Clone)]
pub struct NodeState {
    pub info: NodeInfo,
    /// Sum of placed pods' requests (pods: how many).
    pub requested: Resources,
    /// Sum of placed pods' requests with non-zero defaults, for scoring.
    pub score_requested: Resources,
    pub host_ports: Vec<HostPort>,
    /// Ids of the pods placed here.
    pub pods: Vec<usize>,
}

/// A node's domain is unknown: it lacks the key.
const NO_VALUE: u32 = u32::MAX;

/// The values one node label key takes across the nodes, interned.
#[derive(Debug, Clone, Default)]
pub struct Topology {
    ids: HashMap<String, u32>,
    values: Vec<String>,
    /// How many nodes carry each value.
    nodes: Vec<u32>,
    /// Values at least one node carries.
    live: usize,
    /// Each node's value (by node index); `NO_VALUE` where the node lacks the key.
    at_node: Vec<u32>,
}

impl Topology {
    fn new(nodes: usize) -> Topology {
        Topology {
            at_node: vec![NO_VALUE; nodes],
            ..Default::default()
        }
    }

    /// The domain of node `i`, if it carries the key.
    pub fn value_at(&self, i: usize) -> Option<u32> {
        let v = self.at_node[i];
        (v != NO_VALUE).then_some(v)
    }

    pub fn id(&self, value: &str) -> Option<u32> {
        self.ids.get(value).copied()
    }

    pub fn value(&self, id: u32) -> &str {
        &self.values[id as usize]
    }

    /// How many nodes carry the value.
    pub fn nodes_with(&self, id: u32) -> u32 {
        self.nodes.get(id as usize).copied().unwrap_or(0)
    }

    /// How many values some node carries.
    pub fn domains(&self) -> usize {
        self.live
    }

    /// The values some node carries.
    pub fn live_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(id, _)| id as u32)
    }

    fn set(&mut self, i: usize, value: &str) {
        let id = match self.ids.get(value) {
            Some(id) => *id,
            None => {
                let id = self.values.len() as u32;
                self.ids.insert(value.to_string(), id);
                self.values.push(value.to_string());
                self.nodes.push(0);
                id
            }
        };
        self.at_node[i] = id;
        if self.nodes[id as usize] == 0 {
            self.live += 1;
        }
        self.nodes[id as usize] += 1;
    }

    fn unset(&mut self, i: usize) {
        let id = std::mem::replace(&mut self.at_node[i], NO_VALUE);
        if id != NO_VALUE {
            self.nodes[id as usize] -= 1;
            if self.nodes[id as usize] == 0 {
                self.live -= 1;
            }
        }
    }
}

/// Matching pods per domain of one key (by the key's [`Topology`] ids).
#[derive(Debug, Clone, Default)]
pub struct DomainCounts {
    by_value: Vec<u32>,
    total: u32,
}

/// Equal when every domain holds the same count (however far each vector has grown).
impl PartialEq for DomainCounts {
    fn eq(&self, other: &Self) -> bool {
        let len = self.by_value.len().max(other.by_value.len());
        self.total == other.total && (0..len as u32).all(|v| self.get(v) == other.get(v))
    }
}

impl DomainCounts {
    pub fn get(&self, id: u32) -> u32 {
        self.by_value.get(id as usize).copied().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    pub fn bump(&mut self, id: u32, delta: i32) {
        let at = id as usize;
        if at >= self.by_value.len() {
            self.by_value.resize(at + 1, 0);
        }
        let n = &mut self.by_value[at];
        let was = *n;
        *n = n.saturating_add_signed(delta);
        self.total = self.total - was + *n;
    }
}

/// A pod in the snapshot, and where it is.
#[derive(Debug, Clone)]
pub struct Placed {
    pub pod: Arc<PodInfo>,
    pub node_name: String,
    /// Index into the snapshot's nodes, `None` while that node is not known.
    pub node: Option<usize>,
}

#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    nodes: Vec<NodeState>,
    node_index: HashMap<String, usize>,
    pods: Vec<Option<Placed>>,
    free: Vec<usize>,
    pod_index: HashMap<(String, String), usize>,
    /// `key=value` -> pods carrying that label.
    by_label: HashMap<String, HashSet<usize>>,
    /// Required anti-affinity terms of placed pods -> the domains their carriers are in
    /// (checked against every incoming pod).
    anti_groups: HashMap<PodTerm, DomainCounts>,
    /// Terms registered by [`Snapshot::track`] -> matching placed pods per domain, kept
    /// current as pods come and go.
    tracked: HashMap<PodTerm, DomainCounts>,
    /// Node label key -> its values, interned, and each node's.
    topology: HashMap<String, Topology>,
    namespaces: HashMap<String, BTreeMap<String, String>>,
}

fn label_key(k: &str, v: &str) -> String {
    let mut s = String::with_capacity(k.len() + v.len() + 1);
    s.push_str(k);
    s.push('=');
    s.push_str(v);
    s
}

impl Snapshot {
    pub fn new() -> Snapshot {
        Snapshot::default()
    }

    pub fn nodes(&self) -> &[NodeState] {
        &self.nodes
    }

    pub fn node(&self, name: &str) -> Option<&NodeState> {
        self.node_index.get(name).map(|i| &self.nodes[*i])
    }

    pub fn node_at(&self, i: usize) -> &NodeState {
        &self.nodes[i]
    }

    pub fn pod(&self, id: usize) -> Option<&Placed> {
        self.pods.get(id).and_then(Option::as_ref)
    }

    /// Where a pod is placed, if it is in the snapshot.
    pub fn placement_of(&self, namespace: &str, name: &str) -> Option<&Placed> {
        let id = self
            .pod_index
            .get(&(namespace.to_string(), name.to_string()))?;
        self.pod(*id)
    }

    pub fn pod_count(&self) -> usize {
        self.pod_index.len()
    }

    pub fn namespace_labels(&self, ns: &str) -> Option<&BTreeMap<String, String>> {
        self.namespaces.get(ns)
    }

    pub fn set_namespace(&mut self, name: &str, labels: BTreeMap<String, String>) {
        if self.namespaces.get(name) != Some(&labels) {
            // Terms with namespace selectors may now match other pods.
            self.tracked.clear();
        }
        self.namespaces.insert(name.to_string(), labels);
    }

    pub fn remove_namespace(&mut self, name: &str) {
        self.namespaces.remove(name);
    }

    /// Required anti-affinity terms of placed pods, with the domains their carriers are in.
    pub fn anti_affinity_groups(&self) -> impl Iterator<Item = (&PodTerm, &DomainCounts)> {
        self.anti_groups.iter()
    }

    /// Matching placed pods per domain for a term registered with [`Snapshot::track`].
    pub fn term_counts(&self, term: &PodTerm) -> Option<&DomainCounts> {
        self.tracked.get(term)
    }

    /// Keep counts for every term of `pod` (affinity, anti-affinity, spread), so that
    /// deciding on it and on pods like it costs a lookup instead of a scan.
    pub fn track(&mut self, pod: &PodInfo) {
        let terms = pod
            .affinity
            .iter()
            .chain(&pod.anti_affinity)
            .chain(pod.preferred_affinity.iter().map(|(_, t)| t))
            .chain(pod.preferred_anti_affinity.iter().map(|(_, t)| t))
            .cloned()
            .chain(pod.spread.iter().map(|c| spread_term(pod, c)));
        for term in terms {
            if self.tracked.contains_key(&term) {
                continue;
            }
            if self.tracked.len() >= MAX_TRACKED {
                self.tracked.clear();
            }
            let counts = self.count_matching(&term);
            self.tracked.insert(term, counts);
        }
    }

    /// Placed pods matching `term` per value of its topology key, by scanning.
    pub fn count_matching(&self, term: &PodTerm) -> DomainCounts {
        let mut counts = DomainCounts::default();
        let Some(topo) = self.topology.get(&term.topology_key) else {
            return counts;
        };
        self.for_each_matching(&term.selector, |p| {
            let ns = self.namespace_labels(&p.pod.namespace);
            if !term.namespaces.covers(&p.pod.namespace, ns) {
                return;
            }
            if let Some(v) = p.node.and_then(|i| topo.value_at(i)) {
                counts.bump(v, 1);
            }
        });
        counts
    }

    /// The values of node label `key`, interned, and which node carries which.
    pub fn topology(&self, key: &str) -> Option<&Topology> {
        self.topology.get(key)
    }

    /// Add a node, or replace what is known about it (its pods stay placed on it).
    pub fn upsert_node(&mut self, info: NodeInfo) {
        if let Some(&i) = self.node_index.get(&info.name) {
            let relabelled = self.nodes[i].info.labels != info.labels;
            if relabelled {
                self.adjust_node(i, -1);
                self.unindex_node(i);
            }
            self.nodes[i].info = info;
            if relabelled {
                self.index_node(i);
                self.adjust_node(i, 1);
            }
            return;
        }
        let i = self.nodes.len();
        self.node_index.insert(info.name.clone(), i);
        self.nodes.push(NodeState {
            info,
            requested: Resources::default(),
            score_requested: Resources::default(),
            host_ports: Vec::new(),
            pods: Vec::new(),
        });
        for topo in self.topology.values_mut() {
            topo.at_node.push(NO_VALUE);
        }
        self.index_node(i);
        // Pods that named this node before it was known now count against it.
        let waiting: Vec<usize> = self
            .pods
            .iter()
            .enumerate()
            .filter_map(|(id, p)| {
                let p = p.as_ref()?;
                (p.node.is_none() && p.node_name == self.nodes[i].info.name).then_some(id)
            })
            .collect();
        for id in waiting {
            self.attach(id, i);
        }
    }

    /// Forget a node; its pods stay in the snapshot, waiting for a node of that name.
    pub fn remove_node(&mut self, name: &str) {
        let Some(i) = self.node_index.remove(name) else {
            return;
        };
        self.adjust_node(i, -1);
        self.unindex_node(i);
        for topo in self.topology.values_mut() {
            topo.at_node.swap_remove(i);
        }
        let gone = self.nodes.swap_remove(i);
        for id in &gone.pods {
            if let Some(p) = self.pods[*id].as_mut() {
                p.node = None;
            }
        }
        if i < self.nodes.len() {
            self.node_index.insert(self.nodes[i].info.name.clone(), i);
            for id in self.nodes[i].pods.clone() {
                if let Some(p) = self.pods[id].as_mut() {
                    p.node = Some(i);
                }
            }
        }
    }

    /// Record node `i`'s label values in the topology.
    fn index_node(&mut self, i: usize) {
        let nodes = self.nodes.len();
        for (k, v) in &self.nodes[i].info.labels {
            if !self.topology.contains_key(k) {
                self.topology.insert(k.clone(), Topology::new(nodes));
            }
            let topo = self.topology.get_mut(k).expect("inserted above");
            topo.set(i, v);
        }
    }

    fn unindex_node(&mut self, i: usize) {
        for k in self.nodes[i].info.labels.keys() {
            if let Some(topo) = self.topology.get_mut(k) {
                topo.unset(i);
            }
        }
    }

    /// Place a pod on a node (by name), replacing any earlier placement of the same pod.
    pub fn place(&mut self, pod: Arc<PodInfo>, node_name: &str) -> usize {
        self.remove_pod(&pod.namespace, &pod.name);
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                self.pods.push(None);
                self.pods.len() - 1
            }
        };
        for (k, v) in &pod.labels {
            self.by_label.entry(label_key(k, v)).or_default().insert(id);
        }
        self.pod_index
            .insert((pod.namespace.clone(), pod.name.clone()), id);
        self.pods[id] = Some(Placed {
            pod,
            node_name: node_name.to_string(),
            node: None,
        });
        if let Some(&i) = self.node_index.get(node_name) {
            self.attach(id, i);
        }
        id
    }

    fn attach(&mut self, id: usize, i: usize) {
        let p = self.pods[id].as_mut().expect("attached pod exists");
        p.node = Some(i);
        let pod = p.pod.clone();
        let n = &mut self.nodes[i];
        n.requested.add(&pod.requests);
        n.score_requested.add(&pod.score_requests);
        n.score_requested.pods += 1;
        n.host_ports.extend(pod.host_ports.iter().cloned());
        n.pods.push(id);
        self.adjust(&pod, i, 1);
    }

    /// Count (or uncount) a pod on node `i` in the tracked terms and anti-affinity groups.
    fn adjust(&mut self, pod: &PodInfo, i: usize, delta: i32) {
        let ns = self.namespaces.get(&pod.namespace);
        let topology = &self.topology;
        let value = |key: &str| topology.get(key).and_then(|t| t.value_at(i));
        for (term, counts) in self.tracked.iter_mut() {
            if let Some(v) = value(&term.topology_key) {
                if term.matches(pod, ns) {
                    counts.bump(v, delta);
                }
            }
        }
        for term in &pod.anti_affinity {
            if let Some(v) = value(&term.topology_key) {
                let counts = self.anti_groups.entry(term.clone()).or_default();
                counts.bump(v, delta);
                if counts.is_empty() {
                    self.anti_groups.remove(term);
                }
            }
        }
    }

    /// Count (or uncount) every pod on node `i`.
    fn adjust_node(&mut self, i: usize, delta: i32) {
        for id in self.nodes[i].pods.clone() {
            if let Some(pod) = self.pods[id].as_ref().map(|p| p.pod.clone()) {
                self.adjust(&pod, i, delta);
            }
        }
    }

    /// Take a pod out of the snapshot (deleted, finished, or a bind that failed).
    pub fn remove_pod(&mut self, namespace: &str, name: &str) -> Option<Placed> {
        let id = self
            .pod_index
            .remove(&(namespace.to_string(), name.to_string()))?;
        let placed = self.pods[id].take()?;
        self.free.push(id);
        for (k, v) in &placed.pod.labels {
            let key = label_key(k, v);
            if let Some(set) = self.by_label.get_mut(&key) {
                set.remove(&id);
                if set.is_empty() {
                    self.by_label.remove(&key);
                }
            }
        }
        if let Some(i) = placed.node {
            self.adjust(&placed.pod, i, -1);
            let n = &mut self.nodes[i];
            n.requested.sub(&placed.pod.requests);
            n.score_requested.sub(&placed.pod.score_requests);
            n.score_requested.pods = n.score_requested.pods.saturating_sub(1);
            for hp in &placed.pod.host_ports {
                if let Some(at) = n.host_ports.iter().position(|h| h == hp) {
                    n.host_ports.swap_remove(at);
                }
            }
            n.pods.retain(|p| *p != id);
        }
        Some(placed)
    }

    /// Every placed pod that `selector` matches, found through the label index when the
    /// selector pins a value (`app=web`, `app in (a,b)`), by a full scan otherwise.
    pub fn for_each_matching(&self, selector: &Selector, mut f: impl FnMut(&Placed)) {
        let pinned = selector.requirements.iter().find_map(|r| match &r.op {
            Op::Eq(v) => Some((r.key.as_str(), std::slice::from_ref(v))),
            Op::In(vs) => Some((r.key.as_str(), vs.as_slice())),
            _ => None,
        });
        match pinned {
            Some((key, values)) => {
                for v in values {
                    let Some(ids) = self.by_label.get(&label_key(key, v)) else {
                        continue;
                    };
                    for id in ids {
                        if let Some(p) = self.pod(*id) {
                            if selector.matches(&p.pod.labels) {
                                f(p)
                            }
                        }
                    }
                }
            }
            None => {
                for p in self.pods.iter().flatten() {
                    if selector.matches(&p.pod.labels) {
                        f(p)
                    }
                }
            }
        }
    }
}

/// The term a spread constraint counts by: its selector, in the pod's own namespace.
pub fn spread_term(pod: &PodInfo, c: &crate::model::Spread) -> PodTerm {
    PodTerm {
        selector: c.selector.clone(),
        namespaces: Namespaces {
            listed: vec![pod.namespace.clone()],
            selector: None,
        },
        topology_key: c.topology_key.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, zone: &str) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            labels: [("zone".to_string(), zone.to_string())].into(),
            allocatable: Resources {
                cpu: 1000,
                memory: 1 << 30,
                ephemeral: 0,
                pods: 10,
            },
            ..Default::default()
        }
    }

    fn pod(name: &str, app: &str) -> Arc<PodInfo> {
        Arc::new(PodInfo {
            namespace: "default".into(),
            name: name.into(),
            labels: [("app".to_string(), app.to_string())].into(),
            requests: Resources {
                cpu: 100,
                pods: 1,
                ..Default::default()
            },
            ..Default::default()
        })
    }

    #[test]
    fn placing_and_removing_keeps_node_sums_and_indexes() {
        let mut s = Snapshot::new();
        s.upsert_node(node("a", "z1"));
        s.upsert_node(node("b", "z1"));
        s.place(pod("p1", "web"), "a");
        s.place(pod("p2", "web"), "a");
        s.place(pod("p3", "db"), "c");
        assert_eq!(s.node("a").unwrap().requested.cpu, 200);
        let zone = s.topology("zone").unwrap();
        assert_eq!(zone.nodes_with(zone.id("z1").unwrap()), 2);
        let mut seen = 0;
        s.for_each_matching(&Selector::parse("app=web").unwrap(), |_| seen += 1);
        assert_eq!(seen, 2);
        // p3's node arrives late; p3 then counts against it.
        s.upsert_node(node("c", "z2"));
        assert_eq!(s.node("c").unwrap().requested.cpu, 100);
        s.remove_node("a");
        assert_eq!(s.node("c").unwrap().pods.len(), 1);
        assert!(s.placement_of("default", "p1").unwrap().node.is_none());
        s.remove_pod("default", "p3");
        assert_eq!(s.node("c").unwrap().requested.cpu, 0);
        let mut seen = 0;
        s.for_each_matching(&Selector::parse("app").unwrap(), |_| seen += 1);
        assert_eq!(seen, 2);
    }

    /// Tracked counts and the interned topology follow relabels and removals exactly as a
    /// fresh count over the snapshot sees them.
    #[test]
    fn interned_domains_follow_relabels_and_removals() {
        let mut s = Snapshot::new();
        for (n, z) in [("a", "z1"), ("b", "z1"), ("c", "z2"), ("d", "z3")] {
            s.upsert_node(node(n, z));
        }
        let term = PodTerm {
            selector: Selector::parse("app=web").unwrap(),
            namespaces: Namespaces {
                listed: vec!["default".into()],
                selector: None,
            },
            topology_key: "zone".into(),
        };
        s.track(&PodInfo {
            namespace: "default".into(),
            affinity: vec![term.clone()],
            ..Default::default()
        });
        for (p, n) in [("p1", "a"), ("p2", "b"), ("p3", "c"), ("p4", "d")] {
            s.place(pod(p, "web"), n);
        }
        let check = |s: &Snapshot| {
            assert_eq!(s.term_counts(&term).unwrap(), &s.count_matching(&term));
            let zone = s.topology("zone").unwrap();
            let mut by_hand: HashMap<&str, u32> = HashMap::default();
            for (i, n) in s.nodes().iter().enumerate() {
                let v = zone.value_at(i).expect("every node has a zone");
                assert_eq!(zone.value(v), n.info.labels["zone"]);
                *by_hand.entry(zone.value(v)).or_default() += 1;
            }
            assert_eq!(zone.domains(), by_hand.len());
            for (v, n) in by_hand {
                assert_eq!(zone.nodes_with(zone.id(v).unwrap()), n);
            }
        };
        check(&s);
        let z1 = s.topology("zone").unwrap().id("z1").unwrap();
        assert_eq!(s.term_counts(&term).unwrap().get(z1), 2);
        // Move b to z2, drop a (d moves into its slot), add e in z3.
        s.upsert_node(node("b", "z2"));
        check(&s);
        s.remove_node("a");
        check(&s);
        assert_eq!(s.term_counts(&term).unwrap().get(z1), 0);
        assert_eq!(s.topology("zone").unwrap().domains(), 2);
        s.upsert_node(node("e", "z3"));
        s.place(pod("p5", "web"), "e");
        check(&s);
        let z3 = s.topology("zone").unwrap().id("z3").unwrap();
        assert_eq!(s.term_counts(&term).unwrap().get(z3), 2);
    }
}
