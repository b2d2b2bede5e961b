//! Properties of placement over thousands of generated clusters: a node is never
//! over-committed, required anti-affinity and `DoNotSchedule` spread are never violated, and
//! the same snapshot and pod give the same answer. Each placement is checked by a naive oracle
//! written here, independent of the scheduler's indexes.

use std::collections::HashMap;
use std::sync::Arc;

use berth_scheduler::model::{PodInfo, Resources};
use berth_scheduler::{schedule, NodeInfo, Placement, Profile, Scoring, Snapshot};
use proptest::prelude::*;
use serde_json::json;

#[derive(Debug, Clone)]
struct GenNode {
    cpu: u32,
    mem_gi: u32,
    pods: u32,
    zone: u8,
    tainted: bool,
}

#[derive(Debug, Clone)]
struct GenPod {
    cpu_m: u32,
    mem_mi: u32,
    app: u8,
    anti: Option<bool>,         // Some(true): per hostname, Some(false): per zone
    spread: Option<(u8, bool)>, // (maxSkew, per zone?)
    tolerates: bool,
}

fn gen_node() -> impl Strategy<Value = GenNode> {
    (
        1u32..8,
        1u32..16,
        1u32..12,
        0u8..3,
        prop::bool::weighted(0.2),
    )
        .prop_map(|(cpu, mem_gi, pods, zone, tainted)| GenNode {
            cpu,
            mem_gi,
            pods,
            zone,
            tainted,
        })
}

fn gen_pod() -> impl Strategy<Value = GenPod> {
    (
        0u32..3000,
        0u32..4096,
        0u8..3,
        prop::option::weighted(0.3, any::<bool>()),
        prop::option::weighted(0.3, (1u8..3, any::<bool>())),
        any::<bool>(),
    )
        .prop_map(|(cpu_m, mem_mi, app, anti, spread, tolerates)| GenPod {
            cpu_m,
            mem_mi,
            app,
            anti,
            spread,
            tolerates,
        })
}

fn node_info(i: usize, g: &GenNode) -> NodeInfo {
    let name = format!("n{i}");
    let taints = if g.tainted {
        json!([{"key": "dedicated", "value": "x", "effect": "NoSchedule"}])
    } else {
        json!([])
    };
    let n = json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "zone": format!("z{}", g.zone)}},
        "spec": {"taints": taints},
        "status": {"allocatable": {"cpu": g.cpu.to_string(), "memory": format!("{}Gi", g.mem_gi), "pods": g.pods.to_string()},
                   "conditions": [{"type": "Ready", "status": "True"}]},
    });
    NodeInfo::from_node(&serde_json::from_value(n).unwrap())
}

fn host_key(per_host: bool) -> &'static str {
    if per_host {
        "kubernetes.io/hostname"
    } else {
        "zone"
    }
}

fn pod_info(i: usize, g: &GenPod) -> PodInfo {
    let app = format!("a{}", g.app);
    let mut spec = json!({"containers": [{"name": "c", "image": "x", "resources": {"requests": {
        "cpu": format!("{}m", g.cpu_m), "memory": format!("{}Mi", g.mem_mi)}}}]});
    if let Some(per_host) = g.anti {
        spec["affinity"] = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": host_key(per_host)}]}});
    }
    if let Some((skew, per_zone)) = g.spread {
        spec["topologySpreadConstraints"] = json!([{"maxSkew": skew, "topologyKey": host_key(!per_zone),
            "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": app}}}]);
    }
    if g.tolerates {
        spec["tolerations"] = json!([{"key": "dedicated", "operator": "Exists"}]);
    }
    let p = json!({"metadata": {"name": format!("p{i}"), "namespace": "default", "uid": format!("u{i}"),
        "labels": {"app": app}}, "spec": spec});
    PodInfo::from_pod(&serde_json::from_value(p).unwrap()).unwrap()
}

/// The oracle: would placing `pod` on `node` break a hard rule, judged from scratch?
fn violates(snap: &Snapshot, pod: &PodInfo, node: &str) -> Option<String> {
    let target = snap.node(node).unwrap();
    let mut used = Resources::default();
    let mut placed: Vec<(Arc<PodInfo>, String)> = Vec::new();
    for n in snap.nodes() {
        for id in &n.pods {
            let p = snap.pod(*id).unwrap();
            placed.push((p.pod.clone(), n.info.name.clone()));
            if n.info.name == node {
                used.add(&p.pod.requests);
            }
        }
    }
    used.add(&pod.requests);
    let a = &target.info.allocatable;
    if used.cpu > a.cpu || used.memory > a.memory || used.pods > a.pods {
        return Some(format!("over-commits {node}: {used:?} > {a:?}"));
    }
    let label = |n: &str, k: &str| snap.node(n).unwrap().info.labels.get(k).cloned();
    for (other, on) in &placed {
        for t in &pod.anti_affinity {
            if t.selector.matches(&other.labels)
                && label(on, &t.topology_key) == label(node, &t.topology_key)
            {
                return Some(format!(
                    "anti-affinity: {} shares {} with {}",
                    pod.name, t.topology_key, other.name
                ));
            }
        }
        for t in &other.anti_affinity {
            if t.selector.matches(&pod.labels)
                && label(on, &t.topology_key) == label(node, &t.topology_key)
            {
                return Some(format!(
                    "{}'s anti-affinity: {} shares {}",
                    other.name, pod.name, t.topology_key
                ));
            }
        }
    }
    for c in pod.spread.iter().filter(|c| c.hard) {
        let mut counts: HashMap<String, u32> = HashMap::new();
        for n in snap.nodes() {
            counts
                .entry(n.info.labels[&c.topology_key].clone())
                .or_insert(0);
        }
        for (other, on) in &placed {
            if c.selector.matches(&other.labels) {
                *counts
                    .get_mut(&label(on, &c.topology_key).unwrap())
                    .unwrap() += 1;
            }
        }
        let min = counts.values().copied().min().unwrap();
        let here = counts[&label(node, &c.topology_key).unwrap()] + 1;
        if here - min > c.max_skew {
            return Some(format!(
                "spread: {here} in {node}'s domain, min {min}, maxSkew {}",
                c.max_skew
            ));
        }
    }
    None
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn placements_never_break_hard_rules(
        nodes in prop::collection::vec(gen_node(), 1..12),
        pods in prop::collection::vec(gen_pod(), 1..30),
        pack in any::<bool>(),
        track in any::<bool>(),
    ) {
        let profile = Profile {
            scoring: if pack { Scoring::MostAllocated } else { Scoring::LeastAllocated },
            ..Default::default()
        };
        let mut snap = Snapshot::new();
        for (i, g) in nodes.iter().enumerate() {
            snap.upsert_node(node_info(i, g));
        }
        for (i, g) in pods.iter().enumerate() {
            let pod = pod_info(i, g);
            if track {
                // Tracked counts must agree with counting afresh.
                let fresh = schedule(&snap, &pod, &profile);
                snap.track(&pod);
                prop_assert_eq!(&fresh, &schedule(&snap, &pod, &profile));
            }
            let placement = schedule(&snap, &pod, &profile);
            // Deterministic: the same snapshot (or a copy of it) gives the same answer.
            prop_assert_eq!(&placement, &schedule(&snap.clone(), &pod, &profile));
            if let Placement::Node(node) = placement {
                if let Some(why) = violates(&snap, &pod, &node) {
                    return Err(TestCaseError::fail(why));
                }
                if g.tolerates {
                    // fine anywhere
                } else {
                    prop_assert!(!snap.node(&node).unwrap().info.taints.iter().any(|t| t.key == "dedicated"));
                }
                snap.place(Arc::new(pod), &node);
            }
        }
    }
}
