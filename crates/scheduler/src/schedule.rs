//! `schedule(snapshot, pod, profile) -> Placement`: filters, then scores, as kube-scheduler
//! runs its default plugins. Pure: the same snapshot and pod always give the same answer.
//!
//! ```text
//!  prepare (once per pod: anti-affinity domains, affinity and spread counts)
//!    -> filter real nodes from a start point derived from the pod, until enough fit
//!       (none fit? the same over virtual nodes: the burst rule)
//!    -> score the feasible ones (each plugin 0..100, weighted) -> highest wins
//! ```

use std::collections::BTreeMap;

use rustc_hash::FxHashSet as HashSet;

use crate::model::{Effect, NodeInfo, PodInfo, PodTerm, Spread, Taint};
use crate::snapshot::{spread_term, DomainCounts, NodeState, Snapshot, Topology};

/// How a scheduler profile scores resource use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scoring {
    /// Prefer the emptiest node (spread): Kubernetes' default.
    #[default]
    LeastAllocated,
    /// Prefer the fullest node that fits (bin-pack).
    MostAllocated,
}

/// A scheduler profile.
#[derive(Debug, Clone, Default)]
pub struct Profile {
    pub scoring: Scoring,
    /// Stop filtering once this share of the nodes fit (`None`: Kubernetes' adaptive share,
    /// 50% less 1% per 125 nodes, at least 5%, and never fewer than 100 nodes).
    pub percentage_of_nodes_to_score: Option<u32>,
}

/// Why a node cannot take the pod.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    Unschedulable,
    NodeName,
    Taint { key: String, value: String },
    NodeAffinity,
    Ports,
    Insufficient(&'static str),
    TooManyPods,
    SpreadMissingLabel,
    Spread,
    PodAffinity,
    PodAntiAffinity,
    ExistingAntiAffinity,
    Spec(String),
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Unschedulable => f.write_str("node(s) were unschedulable"),
            Reason::NodeName => f.write_str("node(s) didn't match the requested node name"),
            Reason::Taint { key, value } => {
                write!(f, "node(s) had untolerated taint {{{key}: {value}}}")
            }
            Reason::NodeAffinity => {
                f.write_str("node(s) didn't match Pod's node affinity/selector")
            }
            Reason::Ports => {
                f.write_str("node(s) didn't have free ports for the requested pod ports")
            }
            Reason::Insufficient(r) => write!(f, "Insufficient {r}"),
            Reason::TooManyPods => f.write_str("Too many pods"),
            Reason::SpreadMissingLabel => f.write_str(
                "node(s) didn't match pod topology spread constraints (missing required label)",
            ),
            Reason::Spread => f.write_str("node(s) didn't match pod topology spread constraints"),
            Reason::PodAffinity => f.write_str("node(s) didn't match pod affinity rules"),
            Reason::PodAntiAffinity => f.write_str("node(s) didn't match pod anti-affinity rules"),
            Reason::ExistingAntiAffinity => {
                f.write_str("node(s) didn't satisfy existing pods anti-affinity rules")
            }
            Reason::Spec(why) => write!(f, "invalid pod spec: {why}"),
        }
    }
}

/// Why no node was chosen: how many nodes were looked at and how many failed for each reason.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Diagnosis {
    pub nodes: usize,
    pub reasons: BTreeMap<Reason, usize>,
}

impl std::fmt::Display for Diagnosis {
    /// kube-scheduler's wording: `0/3 nodes are available: 1 node(s) had untolerated taint
    /// {k: v}, 2 Insufficient cpu.`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(Reason::Spec(why)) = self.reasons.keys().next() {
            return write!(f, "invalid pod spec: {why}");
        }
        if self.nodes == 0 {
            return f.write_str("no nodes available to schedule pods");
        }
        let mut parts: Vec<String> = self
            .reasons
            .iter()
            .map(|(r, n)| format!("{n} {r}"))
            .collect();
        parts.sort();
        write!(
            f,
            "0/{} nodes are available: {}.",
            self.nodes,
            parts.join(", ")
        )
    }
}

/// The outcome of one scheduling decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    Node(String),
    Unschedulable(Diagnosis),
}

const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";

/// Matching pods per domain of a term's topology key: borrowed from the snapshot's tracked
/// terms, or counted for this decision alone.
enum Counts<'a> {
    Tracked(&'a DomainCounts),
    Counted(DomainCounts),
}

impl Counts<'_> {
    fn get(&self, id: u32) -> u32 {
        match self {
            Counts::Tracked(c) => c.get(id),
            Counts::Counted(c) => c.get(id),
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Counts::Tracked(c) => c.is_empty(),
            Counts::Counted(c) => c.is_empty(),
        }
    }
}

/// A term's counts with its key's topology: what a node's domain holds, by node index.
struct Domains<'a> {
    topo: Option<&'a Topology>,
    counts: Counts<'a>,
}

impl<'a> Domains<'a> {
    fn of(snap: &'a Snapshot, term: &PodTerm) -> Domains<'a> {
        let counts = match snap.term_counts(term) {
            Some(c) => Counts::Tracked(c),
            None => Counts::Counted(snap.count_matching(term)),
        };
        Domains {
            topo: snap.topology(&term.topology_key),
            counts,
        }
    }

    /// Node `i`'s domain, if it carries the key.
    fn value_at(&self, i: usize) -> Option<u32> {
        self.topo.and_then(|t| t.value_at(i))
    }

    /// Matching pods in node `i`'s domain (0 if it lacks the key).
    fn at(&self, i: usize) -> u32 {
        self.value_at(i).map_or(0, |v| self.counts.get(v))
    }
}

/// Per-constraint state of a topology spread.
struct SpreadState<'a> {
    c: &'a Spread,
    domains: Domains<'a>,
    min: u32,
    self_match: u32,
}

/// What is computed once per pod before any node is looked at.
struct Prepared<'a> {
    pod: &'a PodInfo,
    snap: &'a Snapshot,
    /// Existing pods' required anti-affinity terms that this pod matches: (topology key,
    /// the domains those pods are in).
    existing_anti: Vec<(Option<&'a Topology>, &'a DomainCounts)>,
    /// Per own anti-affinity term: matching pods per value.
    own_anti: Vec<Domains<'a>>,
    /// Per own affinity term: matching pods per value.
    own_affinity: Vec<Domains<'a>>,
    /// No pod matches any affinity term, but the pod matches all of its own: the first of a
    /// group may go anywhere.
    affinity_self_ok: bool,
    spread: Vec<SpreadState<'a>>,
    preferred_affinity: Vec<Domains<'a>>,
    preferred_anti: Vec<Domains<'a>>,
}

impl<'a> Prepared<'a> {
    fn new(snap: &'a Snapshot, pod: &'a PodInfo) -> Prepared<'a> {
        let own_ns = snap.namespace_labels(&pod.namespace);
        let existing_anti = snap
            .anti_affinity_groups()
            .filter(|(t, _)| t.matches(pod, own_ns))
            .map(|(t, counts)| (snap.topology(&t.topology_key), counts))
            .collect();
        let counts = |terms: &mut dyn Iterator<Item = &'a PodTerm>| -> Vec<Domains<'a>> {
            terms.map(|t| Domains::of(snap, t)).collect()
        };
        let own_anti = counts(&mut pod.anti_affinity.iter());
        let own_affinity = counts(&mut pod.affinity.iter());
        let affinity_self_ok = own_affinity.iter().all(|d| d.counts.is_empty())
            && pod.affinity.iter().all(|t| t.matches(pod, own_ns));
        let spread = pod
            .spread
            .iter()
            .map(|c| Self::spread_state(snap, pod, c))
            .collect();
        let preferred_affinity = counts(&mut pod.preferred_affinity.iter().map(|(_, t)| t));
        let preferred_anti = counts(&mut pod.preferred_anti_affinity.iter().map(|(_, t)| t));
        Prepared {
            pod,
            snap,
            existing_anti,
            own_anti,
            own_affinity,
            affinity_self_ok,
            spread,
            preferred_affinity,
            preferred_anti,
        }
    }

    fn spread_state(snap: &'a Snapshot, pod: &'a PodInfo, c: &'a Spread) -> SpreadState<'a> {
        let restricts = (c.honor_affinity
            && (!pod.node_selector.is_empty() || pod.node_affinity.is_some()))
            || c.honor_taints;
        let self_match = u32::from(c.selector.matches(&pod.labels));
        let topo = snap.topology(&c.topology_key);
        if !restricts {
            // Every node with the key counts: the snapshot knows the domains, and the
            // tracked term the counts.
            let domains = Domains::of(snap, &spread_term(pod, c));
            let live = topo.map_or(0, Topology::domains);
            let min = match topo {
                Some(t) if live as u32 >= c.min_domains => t
                    .live_ids()
                    .map(|v| domains.counts.get(v))
                    .min()
                    .unwrap_or(0),
                _ => 0,
            };
            return SpreadState {
                c,
                domains,
                min,
                self_match,
            };
        }
        let eligible = |n: &NodeInfo| {
            (!c.honor_affinity || pod.admits_node(&n.name, &n.labels))
                && (!c.honor_taints || pod.untolerated(&n.taints).is_none())
        };
        // Domains with an eligible node, and matching pods on eligible nodes per domain.
        let mut in_play: HashSet<u32> = HashSet::default();
        let mut counts = DomainCounts::default();
        if let Some(t) = topo {
            for (i, n) in snap.nodes().iter().enumerate() {
                if let Some(v) = t.value_at(i).filter(|_| eligible(&n.info)) {
                    in_play.insert(v);
                }
            }
            snap.for_each_matching(&c.selector, |p| {
                let Some(i) = p.node.filter(|_| p.pod.namespace == pod.namespace) else {
                    return;
                };
                if let Some(v) = t.value_at(i).filter(|_| eligible(&snap.node_at(i).info)) {
                    counts.bump(v, 1);
                }
            });
        }
        let min = if (in_play.len() as u32) < c.min_domains {
            0
        } else {
            in_play.iter().map(|v| counts.get(*v)).min().unwrap_or(0)
        };
        SpreadState {
            c,
            domains: Domains {
                topo,
                counts: Counts::Counted(counts),
            },
            min,
            self_match,
        }
    }

    /// Run the filters in kube-scheduler's order; the first that fails names the reason
    /// (resource fit names every resource that is short).
    fn filter(&self, i: usize, n: &NodeState, reasons: &mut Vec<Reason>) -> bool {
        let pod = self.pod;
        let info = &n.info;
        if info.unschedulable
            && !pod.tolerations.iter().any(|t| {
                t.tolerates(&Taint {
                    key: UNSCHEDULABLE_TAINT.into(),
                    value: String::new(),
                    effect: Effect::NoSchedule,
                })
            })
        {
            reasons.push(Reason::Unschedulable);
            return false;
        }
        if pod
            .node_name
            .as_ref()
            .is_some_and(|want| *want != info.name)
        {
            reasons.push(Reason::NodeName);
            return false;
        }
        if let Some(t) = pod.untolerated(&info.taints) {
            reasons.push(Reason::Taint {
                key: t.key.clone(),
                value: t.value.clone(),
            });
            return false;
        }
        if !pod.admits_node(&info.name, &info.labels) {
            reasons.push(Reason::NodeAffinity);
            return false;
        }
        if pod
            .host_ports
            .iter()
            .any(|p| n.host_ports.iter().any(|h| h.conflicts(p)))
        {
            reasons.push(Reason::Ports);
            return false;
        }
        let before = reasons.len();
        let (want, have, used) = (&pod.requests, &info.allocatable, &n.requested);
        if used.pods + 1 > have.pods {
            reasons.push(Reason::TooManyPods);
        }
        if want.cpu > 0 && used.cpu + want.cpu > have.cpu {
            reasons.push(Reason::Insufficient("cpu"));
        }
        if want.memory > 0 && used.memory + want.memory > have.memory {
            reasons.push(Reason::Insufficient("memory"));
        }
        if want.ephemeral > 0 && used.ephemeral + want.ephemeral > have.ephemeral {
            reasons.push(Reason::Insufficient("ephemeral-storage"));
        }
        if reasons.len() > before {
            return false;
        }
        for s in self.spread.iter().filter(|s| s.c.hard) {
            let Some(v) = s.domains.value_at(i) else {
                reasons.push(Reason::SpreadMissingLabel);
                return false;
            };
            let here = s.domains.counts.get(v);
            if here + s.self_match > s.min + s.c.max_skew {
                reasons.push(Reason::Spread);
                return false;
            }
        }
        if !pod.affinity.is_empty() {
            let mut all_exist = true;
            for d in &self.own_affinity {
                match d.value_at(i) {
                    None => {
                        reasons.push(Reason::PodAffinity);
                        return false;
                    }
                    Some(v) => all_exist &= d.counts.get(v) > 0,
                }
            }
            if !all_exist && !self.affinity_self_ok {
                reasons.push(Reason::PodAffinity);
                return false;
            }
        }
        if self.own_anti.iter().any(|d| d.at(i) > 0) {
            reasons.push(Reason::PodAntiAffinity);
            return false;
        }
        for (topo, counts) in &self.existing_anti {
            if topo
                .and_then(|t| t.value_at(i))
                .is_some_and(|v| counts.get(v) > 0)
            {
                reasons.push(Reason::ExistingAntiAffinity);
                return false;
            }
        }
        true
    }

    /// Each plugin's score for each feasible node, normalised to 0..100 and weighted as
    /// kube-scheduler weighs its defaults.
    fn score(&self, feasible: &[usize], scoring: Scoring) -> Vec<i64> {
        let pod = self.pod;
        let nodes = self.snap.nodes();
        let mut fit = Vec::with_capacity(feasible.len());
        let mut balanced = Vec::with_capacity(feasible.len());
        let mut node_pref = Vec::with_capacity(feasible.len());
        let mut taints = Vec::with_capacity(feasible.len());
        let mut inter = Vec::with_capacity(feasible.len());
        let mut spread = Vec::with_capacity(feasible.len());
        for &i in feasible {
            let n = &nodes[i];
            let (alloc, used, want) =
                (&n.info.allocatable, &n.score_requested, &pod.score_requests);
            let frac = |a: u64, u: u64, w: u64| {
                if a == 0 {
                    1.0
                } else {
                    ((u + w) as f64 / a as f64).min(1.0)
                }
            };
            let (fc, fm) = (
                frac(alloc.cpu, used.cpu, want.cpu),
                frac(alloc.memory, used.memory, want.memory),
            );
            fit.push(match scoring {
                Scoring::LeastAllocated => ((2.0 - fc - fm) * 50.0) as i64,
                Scoring::MostAllocated => ((fc + fm) * 50.0) as i64,
            });
            balanced.push(((1.0 - (fc - fm).abs() / 2.0) * 100.0) as i64);
            let labels = &n.info.labels;
            node_pref.push(
                pod.preferred_nodes
                    .iter()
                    .filter(|(_, t)| t.matches(&n.info.name, labels))
                    .map(|(w, _)| *w)
                    .sum::<i64>(),
            );
            taints.push(
                n.info
                    .taints
                    .iter()
                    .filter(|t| {
                        t.effect == Effect::PreferNoSchedule
                            && !pod.tolerations.iter().any(|tol| tol.tolerates(t))
                    })
                    .count() as i64,
            );
            let mut ip = 0;
            for ((w, _), d) in pod.preferred_affinity.iter().zip(&self.preferred_affinity) {
                ip += w * d.at(i) as i64;
            }
            for ((w, _), d) in pod.preferred_anti_affinity.iter().zip(&self.preferred_anti) {
                ip -= w * d.at(i) as i64;
            }
            inter.push(ip);
            // A node without a soft constraint's key scores 0 for spreading.
            let mut sp = Some(0);
            for s in self.spread.iter().filter(|s| !s.c.hard) {
                sp = match (sp, s.domains.value_at(i)) {
                    (Some(sum), Some(v)) => Some(sum + s.domains.counts.get(v) as i64),
                    _ => None,
                };
            }
            spread.push(sp);
        }
        normalize_max(&mut node_pref, false);
        normalize_max(&mut taints, true);
        normalize_range(&mut inter, false);
        let mut spread_known: Vec<i64> = spread.iter().flatten().copied().collect();
        normalize_range(&mut spread_known, true);
        let mut known = spread_known.into_iter();
        let spread: Vec<i64> = spread
            .iter()
            .map(|s| s.and_then(|_| known.next()).unwrap_or(0))
            .collect();
        (0..feasible.len())
            .map(|k| {
                fit[k]
                    + balanced[k]
                    + 2 * node_pref[k]
                    + 3 * taints[k]
                    + 2 * inter[k]
                    + 2 * spread[k]
            })
            .collect()
    }
}

/// Scale to 0..100 by the largest value (`reverse`: the largest gets 0).
fn normalize_max(v: &mut [i64], reverse: bool) {
    let max = v.iter().copied().max().unwrap_or(0);
    for x in v.iter_mut() {
        *x = match (max, reverse) {
            (0, true) => 100,
            (0, false) => 0,
            (m, false) => *x * 100 / m,
            (m, true) => 100 - *x * 100 / m,
        };
    }
}

/// Scale to 0..100 between the smallest and largest value (`reverse`: the smallest gets 100).
fn normalize_range(v: &mut [i64], reverse: bool) {
    let (min, max) = (
        v.iter().copied().min().unwrap_or(0),
        v.iter().copied().max().unwrap_or(0),
    );
    for x in v.iter_mut() {
        *x = if max == min {
            if reverse {
                100
            } else {
                0
            }
        } else if reverse {
            (max - *x) * 100 / (max - min)
        } else {
            (*x - min) * 100 / (max - min)
        };
    }
}

/// How many feasible nodes to find before scoring, as kube-scheduler decides.
pub fn nodes_to_find(total: usize, profile: &Profile) -> usize {
    const MIN: usize = 100;
    if total < MIN {
        return total;
    }
    let pct = profile
        .percentage_of_nodes_to_score
        .map(|p| p.clamp(1, 100) as usize)
        .unwrap_or_else(|| 50usize.saturating_sub(total / 125).max(5));
    (total * pct / 100).max(MIN).min(total)
}

/// Where to start looking: spread over the nodes by the pod's identity, so that the limited
/// search does not pile every pod onto the first nodes, yet the same pod gets the same answer.
fn start_point(pod: &PodInfo, n: usize) -> usize {
    // FNV-1a over the uid (or name): stable across runs and platforms.
    let mut h: u64 = 0xcbf29ce484222325;
    let id = if pod.uid.is_empty() {
        &pod.name
    } else {
        &pod.uid
    };
    for b in pod.namespace.bytes().chain(id.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    (h % n.max(1) as u64) as usize
}

/// Choose a node for `pod`, or say why none fits.
pub fn schedule(snap: &Snapshot, pod: &PodInfo, profile: &Profile) -> Placement {
    let nodes = snap.nodes();
    let prepared = Prepared::new(snap, pod);
    let mut reasons = Vec::new();
    let mut diagnosis = Diagnosis {
        nodes: nodes.len(),
        ..Default::default()
    };
    let want = nodes_to_find(nodes.len(), profile);
    let start = start_point(pod, nodes.len());
    let mut feasible = Vec::new();
    // Real nodes first; virtual ones only when no real node fits.
    for virtual_pass in [false, true] {
        for k in 0..nodes.len() {
            let i = (start + k) % nodes.len();
            if nodes[i].info.is_virtual != virtual_pass {
                continue;
            }
            if prepared.filter(i, &nodes[i], &mut reasons) {
                feasible.push(i);
                if feasible.len() >= want {
                    break;
                }
            }
        }
        if !feasible.is_empty() {
            break;
        }
    }
    if feasible.is_empty() {
        for r in reasons {
            *diagnosis.reasons.entry(r).or_insert(0) += 1;
        }
        return Placement::Unschedulable(diagnosis);
    }
    if feasible.len() == 1 {
        return Placement::Node(nodes[feasible[0]].info.name.clone());
    }
    let scores = prepared.score(&feasible, profile.scoring);
    let mut best = 0;
    for k in 1..feasible.len() {
        if scores[k] > scores[best] {
            best = k;
        }
    }
    Placement::Node(nodes[feasible[best]].info.name.clone())
}

/// A pod the scheduler could not read gets a diagnosis that says what is wrong with it.
pub fn spec_error(nodes: usize, why: String) -> Placement {
    Placement::Unschedulable(Diagnosis {
        nodes,
        reasons: [(Reason::Spec(why), 1)].into(),
    })
}
