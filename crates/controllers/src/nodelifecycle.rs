//! Node lifecycle: a node whose Lease has run out is marked `Ready=Unknown` and tainted
//! `node.kubernetes.io/unreachable:NoExecute`, and the pods on it that do not tolerate that
//! are deleted, so their controllers replace them elsewhere. A node that renews its Lease
//! again loses the taint (its agent reports `Ready=True` itself).
//!
//! A Lease runs out `leaseDurationSeconds` after its last renewal (the agent picks the
//! duration: four renewal intervals). When more than half of the nodes are out at once,
//! which looks more like the control plane being cut off than like the nodes dying,
//! eviction slows to one node every 30 s instead of emptying the cluster.
//!
//! Pods bound to a node that no longer exists (deleted, or never registered) are deleted at
//! once (no grace: nothing is left to stop them) after the node has been missing for
//! [`ORPHAN_QUARANTINE`] and a read of the API confirms it, as Kubernetes' pod GC does.
//!
//! Sweeps the caches every 250 ms; each sweep is a pure [`plan`] over the caches and the
//! time, carried out by `execute`, and idempotent.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::Store;
use serde_json::json;

use crate::api_err;
use crate::{Context, Error};

pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// Often enough that a Lease is seen to run out within a quarter second of it.
const SWEEP_EVERY: Duration = Duration::from_millis(250);
/// In a suspected partition, evict one node's pods this often at most.
const PARTITION_EVICTION_EVERY: Duration = Duration::from_secs(30);
/// How long a node must be missing before its pods are collected (a cache may lag a node
/// that registers).
pub const ORPHAN_QUARANTINE: Duration = Duration::from_secs(10);

/// Has the node's Lease run out at `now`? A node without a Lease yet is given the benefit of
/// the doubt.
pub fn expired(lease: Option<&Lease>, now: Timestamp) -> bool {
    let Some(spec) = lease.and_then(|l| l.spec.as_ref()) else {
        return false;
    };
    let (Some(renewed), Some(secs)) = (spec.renew_time.as_ref(), spec.lease_duration_seconds)
    else {
        return false;
    };
    renewed.0.as_millisecond() + i64::from(secs) * 1000 < now.as_millisecond()
}

fn tainted(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == UNREACHABLE))
}

/// Does the pod tolerate the unreachable taint (for now: tolerations with seconds count
/// from when the taint was added)?
fn tolerates(pod: &Pod, tainted_for: Duration) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.tolerations.as_ref())
        .into_iter()
        .flatten()
        .any(|t| {
            let key_ok = match t.key.as_deref() {
                None | Some("") => t.operator.as_deref() == Some("Exists"),
                Some(k) => k == UNREACHABLE,
            };
            let effect_ok = matches!(t.effect.as_deref(), None | Some("") | Some("NoExecute"));
            let time_ok = t
                .toleration_seconds
                .is_none_or(|s| tainted_for < Duration::from_secs(s.max(0) as u64));
            key_ok && effect_ok && time_ok
        })
}

/// What one sweep decided, in order.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub writes: Vec<Write>,
    /// More than half the nodes are out: evictions are being rationed.
    pub partition: bool,
    /// Nodes that pods are bound to and that do not exist.
    pub missing: Vec<String>,
}

#[derive(Debug, Clone)]
pub enum Write {
    /// The node's Lease ran out: `Ready=Unknown` and the unreachable taint, added at `at`.
    MarkUnreachable { node: Arc<Node>, at: Timestamp },
    /// The node renewed its Lease again: its taints without the unreachable one.
    Untaint { node: String, taints: Vec<Taint> },
    /// A pod of an unreachable node that does not tolerate it goes; its controller
    /// replaces it elsewhere.
    Evict { node: String, pod: Arc<Pod> },
    /// A pod bound to a node that has been missing for the quarantine goes, at once.
    Collect { node: String, pod: Arc<Pod> },
}

/// What the sweeps remember: when the last eviction in a suspected partition was, and since
/// when each missing node has been missing.
#[derive(Debug, Clone, Default)]
pub struct Memory {
    pub last_partition_eviction: Option<Instant>,
    pub missing_since: HashMap<String, Instant>,
}

impl Memory {
    /// Remember what a sweep found missing (and forget what is back).
    pub fn saw_missing(&mut self, missing: &[String], clock: Instant) {
        self.missing_since.retain(|n, _| missing.contains(n));
        for n in missing {
            self.missing_since.entry(n.clone()).or_insert(clock);
        }
    }
}

/// Decide one sweep from the caches: `leases` by node name, `now` on the wall clock (Lease
/// times are wall-clock times) and `clock` on the monotonic one (for rationing). Pure.
pub fn plan(
    nodes: &[Arc<Node>],
    leases: &HashMap<String, Arc<Lease>>,
    pods: &[Arc<Pod>],
    memory: &Memory,
    now: Timestamp,
    clock: Instant,
) -> Plan {
    let mut writes = Vec::new();
    // Pods of nodes that do not exist.
    let known: std::collections::HashSet<&str> = nodes
        .iter()
        .filter_map(|n| n.metadata.name.as_deref())
        .collect();
    let mut missing: Vec<String> = Vec::new();
    for pod in pods {
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) else {
            continue;
        };
        if node.is_empty() || known.contains(node) {
            continue;
        }
        if !missing.iter().any(|m| m == node) {
            missing.push(node.to_string());
        }
        let quarantined = memory
            .missing_since
            .get(node)
            .is_some_and(|t| clock.saturating_duration_since(*t) >= ORPHAN_QUARANTINE);
        if quarantined {
            writes.push(Write::Collect {
                node: node.to_string(),
                pod: pod.clone(),
            });
        }
    }
    let mut down = Vec::new();
    for node in nodes {
        let name = node.metadata.name.clone().unwrap_or_default();
        // Virtual nodes keep no Lease of an agent's kind; they manage themselves.
        let lease = leases.get(&name);
        if expired(lease.map(|l| l.as_ref()), now) {
            down.push(node.clone());
            if !tainted(node) {
                writes.push(Write::MarkUnreachable {
                    node: node.clone(),
                    at: now,
                });
            }
        } else if tainted(node) && lease.is_some() {
            let taints = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default()
                .into_iter()
                .filter(|t| t.key != UNREACHABLE)
                .collect();
            writes.push(Write::Untaint { node: name, taints });
        }
    }
    // Eviction; slowed down when most of the cluster looks unreachable at once. A node whose
    // pods are all gone or going has nothing left to evict, and never holds up the others.
    let partition = !nodes.is_empty() && down.len() * 2 > nodes.len();
    let mut evict_from: Vec<(String, Vec<Arc<Pod>>)> = down
        .iter()
        .map(|node| {
            let name = node.metadata.name.clone().unwrap_or_default();
            let since = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .into_iter()
                .flatten()
                .find(|t| t.key == UNREACHABLE)
                .and_then(|t| t.time_added.as_ref())
                .map(|t| {
                    Duration::from_millis(
                        (now.as_millisecond() - t.0.as_millisecond()).max(0) as u64
                    )
                })
                .unwrap_or_default();
            let victims = pods
                .iter()
                .filter(|p| {
                    p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name.as_str())
                        && p.metadata.deletion_timestamp.is_none()
                        && !tolerates(p, since)
                })
                .cloned()
                .collect();
            (name, victims)
        })
        .filter(|(_, victims): &(String, Vec<Arc<Pod>>)| !victims.is_empty())
        .collect();
    if partition {
        let due = memory
            .last_partition_eviction
            .is_none_or(|t| clock.saturating_duration_since(t) >= PARTITION_EVICTION_EVERY);
        if !due {
            evict_from.clear();
        }
        evict_from.truncate(1);
    }
    for (node, victims) in evict_from {
        for pod in victims {
            writes.push(Write::Evict {
                node: node.clone(),
                pod,
            });
        }
    }
    Plan {
        writes,
        partition,
        missing,
    }
}

pub async fn run(ctx: Arc<Context>, leases: Store<Lease>) {
    if let Err(e) = ctx.synced().await {
        tracing::error!(error = %e, "node lifecycle");
        return;
    }
    let _ = leases.wait_until_ready().await;
    let mut memory = Memory::default();
    loop {
        let by_node: HashMap<String, Arc<Lease>> = leases
            .state()
            .into_iter()
            .filter(|l| l.metadata.namespace.as_deref() == Some("kube-node-lease"))
            .filter_map(|l| Some((l.metadata.name.clone()?, l)))
            .collect();
        let clock = Instant::now();
        let plan = plan(
            &ctx.nodes.state(),
            &by_node,
            &ctx.pods.state(),
            &memory,
            Timestamp::now(),
            clock,
        );
        memory.saw_missing(&plan.missing, clock);
        if let Err(e) = execute(&ctx, plan, &mut memory).await {
            tracing::warn!(error = %berth_core::error::Chain(&e), "node lifecycle sweep");
        }
        tokio::time::sleep(SWEEP_EVERY).await;
    }
}

/// Make a sweep's writes in order; an eviction in a suspected partition is remembered.
async fn execute(ctx: &Context, plan: Plan, memory: &mut Memory) -> Result<(), Error> {
    let nodes_api: Api<Node> = Api::all(ctx.client.clone());
    for write in plan.writes {
        match write {
            Write::MarkUnreachable { node, at } => {
                mark_unreachable(&nodes_api, &node, at).await?;
                let name = node.metadata.name.as_deref().unwrap_or_default();
                crate::events::record(
                    &ctx.client,
                    berth_core::events::Involved {
                        api_version: "v1",
                        kind: "Node",
                        namespace: "default",
                        name,
                        uid: node.metadata.uid.as_deref().unwrap_or_default(),
                    },
                    "Normal",
                    "NodeNotReady",
                    &format!("Node {name} status is now: NodeNotReady (its Lease ran out)"),
                    "node-controller",
                );
            }
            Write::Untaint { node, taints } => {
                nodes_api
                    .patch(
                        &node,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"spec": {"taints": taints}})),
                    )
                    .await
                    .map_err(api_err(format!("untainting node {node}")))?;
                tracing::info!(node = %node, "node is reachable again");
            }
            Write::Collect { node, pod } => {
                // The cache may be behind: only a node the API does not have either.
                match nodes_api.get_opt(&node).await {
                    Ok(None) => {}
                    _ => continue,
                }
                let ns = pod.metadata.namespace.clone().unwrap_or_default();
                let pod_name = pod.metadata.name.clone().unwrap_or_default();
                match Api::<Pod>::namespaced(ctx.client.clone(), &ns)
                    .delete(&pod_name, &DeleteParams::default().grace_period(0))
                    .await
                {
                    Ok(_) | Err(kube::Error::Api(_)) => {}
                    Err(e) => return Err(api_err(format!("collecting pod {ns}/{pod_name}"))(e)),
                }
                tracing::info!(node = %node, pod = %format!("{ns}/{pod_name}"), "collected: its node is gone");
            }
            Write::Evict { node, pod } => {
                let ns = pod.metadata.namespace.clone().unwrap_or_default();
                let pod_name = pod.metadata.name.clone().unwrap_or_default();
                match Api::<Pod>::namespaced(ctx.client.clone(), &ns)
                    .delete(&pod_name, &DeleteParams::default())
                    .await
                {
                    Ok(_) | Err(kube::Error::Api(_)) => {}
                    Err(e) => return Err(api_err(format!("evicting pod {ns}/{pod_name}"))(e)),
                }
                if plan.partition {
                    memory.last_partition_eviction = Some(Instant::now());
                }
                tracing::info!(node = %node, pod = %format!("{ns}/{pod_name}"), "evicted from an unreachable node");
                crate::events::record(
                    &ctx.client,
                    berth_core::events::Involved {
                        api_version: "v1",
                        kind: "Pod",
                        namespace: &ns,
                        name: &pod_name,
                        uid: pod.metadata.uid.as_deref().unwrap_or_default(),
                    },
                    "Normal",
                    "TaintManagerEviction",
                    &format!(
                        "Marking for deletion Pod {ns}/{pod_name}: node {node} is unreachable"
                    ),
                    "node-controller",
                );
            }
        }
    }
    Ok(())
}

/// `Ready=Unknown` and the unreachable taint.
async fn mark_unreachable(api: &Api<Node>, node: &Node, now: Timestamp) -> Result<(), Error> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let mut taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    taints.push(
        serde_json::from_value(
            json!({"key": UNREACHABLE, "effect": "NoExecute", "timeAdded": now.to_string()}),
        )
        .expect("a taint"),
    );
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"taints": taints}})),
    )
    .await
    .map_err(api_err(format!("tainting node {name}")))?;
    let conditions: Vec<serde_json::Value> = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|c| {
            let mut v = serde_json::to_value(&c).unwrap_or_default();
            if c.type_ == "Ready" {
                v["status"] = json!("Unknown");
                v["reason"] = json!("NodeStatusUnknown");
                v["message"] = json!("Kubelet stopped posting node status.");
                v["lastTransitionTime"] = json!(now.to_string());
            }
            v
        })
        .collect();
    api.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Strategic(json!({"status": {"conditions": conditions}})),
    )
    .await
    .map_err(api_err(format!("marking node {name} not ready")))?;
    tracing::warn!(node = %name, "node's Lease ran out: NotReady, tainted unreachable");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(renewed_ms_ago: i64, secs: i32) -> Lease {
        let t = jiff::Timestamp::now() - jiff::SignedDuration::from_millis(renewed_ms_ago);
        serde_json::from_value(json!({"metadata": {"name": "n"}, "spec": {
            "renewTime": berth_core::micro_time(t), "leaseDurationSeconds": secs}}))
        .unwrap()
    }

    #[test]
    fn a_lease_runs_out_after_its_duration() {
        let now = jiff::Timestamp::now();
        assert!(!expired(None, now));
        assert!(!expired(Some(&lease(1_000, 4)), now));
        assert!(expired(Some(&lease(5_000, 4)), now));
    }

    fn node(name: &str, tainted_at: Option<Timestamp>) -> Arc<Node> {
        let taints = tainted_at
            .map(|t| json!([{"key": UNREACHABLE, "effect": "NoExecute", "timeAdded": t.to_string()}]))
            .unwrap_or(json!([]));
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"taints": taints}}))
                .unwrap(),
        )
    }

    fn lease_at(node: &str, renewed: Timestamp) -> (String, Arc<Lease>) {
        let l = json!({"metadata": {"name": node}, "spec": {
            "renewTime": berth_core::micro_time(renewed), "leaseDurationSeconds": 4}});
        (
            node.to_string(),
            Arc::new(serde_json::from_value(l).unwrap()),
        )
    }

    fn pod_on(node: &str, name: &str) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default"},
                "spec": {"nodeName": node, "containers": []}}))
            .unwrap(),
        )
    }

    fn evicted(plan: &Plan) -> Vec<String> {
        plan.writes
            .iter()
            .filter_map(|w| match w {
                Write::Evict { pod, .. } => pod.metadata.name.clone(),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_node_whose_lease_ran_out_is_marked_and_its_pods_evicted() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let ago = |s| now - jiff::SignedDuration::from_secs(s);
        let nodes = [node("a", None), node("b", None), node("c", None)];
        let leases = HashMap::from([
            lease_at("a", ago(10)),
            lease_at("b", ago(1)),
            lease_at("c", ago(1)),
        ]);
        let pods = [pod_on("a", "pa"), pod_on("b", "pb")];
        let p = plan(
            &nodes,
            &leases,
            &pods,
            &Memory::default(),
            now,
            Instant::now(),
        );
        assert!(
            matches!(&p.writes[0], Write::MarkUnreachable { node, .. } if node.metadata.name.as_deref() == Some("a"))
        );
        assert_eq!(evicted(&p), ["pa"]);
        assert!(!p.partition);
        // Renewed again: the taint comes off, nothing is evicted.
        let nodes = [node("a", Some(ago(5))), node("b", None), node("c", None)];
        let leases = HashMap::from([
            lease_at("a", ago(0)),
            lease_at("b", ago(1)),
            lease_at("c", ago(1)),
        ]);
        let p = plan(
            &nodes,
            &leases,
            &pods,
            &Memory::default(),
            now,
            Instant::now(),
        );
        assert!(
            matches!(&p.writes[..], [Write::Untaint { node, taints }] if node == "a" && taints.is_empty())
        );
    }

    #[test]
    fn in_a_suspected_partition_one_node_is_evicted_every_30_seconds() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let ago = |s| now - jiff::SignedDuration::from_secs(s);
        let nodes = [
            node("a", Some(ago(9))),
            node("b", Some(ago(9))),
            node("c", None),
        ];
        let leases = HashMap::from([
            lease_at("a", ago(10)),
            lease_at("b", ago(10)),
            lease_at("c", ago(1)),
        ]);
        let pods = [pod_on("a", "pa"), pod_on("b", "pb")];
        let clock = Instant::now();
        let p = plan(&nodes, &leases, &pods, &Memory::default(), now, clock);
        assert!(p.partition);
        assert_eq!(evicted(&p), ["pa"], "one node at a time");
        let just = Memory {
            last_partition_eviction: Some(clock),
            ..Memory::default()
        };
        let p = plan(
            &nodes,
            &leases,
            &pods,
            &just,
            now,
            clock + Duration::from_secs(29),
        );
        assert!(evicted(&p).is_empty(), "rationed");
        let p = plan(
            &nodes,
            &leases,
            &pods,
            &just,
            now,
            clock + Duration::from_secs(30),
        );
        assert_eq!(evicted(&p).len(), 1);
    }

    #[test]
    fn tolerations_with_seconds_run_out() {
        let pod: Pod = serde_json::from_value(json!({"spec": {"containers": [], "tolerations": [
            {"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 10}]}}))
        .unwrap();
        assert!(tolerates(&pod, Duration::from_secs(5)));
        assert!(!tolerates(&pod, Duration::from_secs(11)));
        let plain: Pod = serde_json::from_value(json!({"spec": {"containers": []}})).unwrap();
        assert!(!tolerates(&plain, Duration::ZERO));
    }

    #[test]
    fn pods_of_a_missing_node_are_collected_after_the_quarantine() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let nodes = [node("a", None)];
        let leases = HashMap::from([lease_at("a", now)]);
        let pods = [
            pod_on("a", "pa"),
            pod_on("gone", "pg"),
            pod_on("", "unbound"),
        ];
        let collected = |p: &Plan| -> Vec<String> {
            p.writes
                .iter()
                .filter_map(|w| match w {
                    Write::Collect { pod, .. } => pod.metadata.name.clone(),
                    _ => None,
                })
                .collect()
        };
        let mut memory = Memory::default();
        let t0 = Instant::now();
        let p = plan(&nodes, &leases, &pods, &memory, now, t0);
        assert_eq!(p.missing, ["gone"]);
        assert!(collected(&p).is_empty(), "not before the quarantine");
        memory.saw_missing(&p.missing, t0);
        let later = t0 + ORPHAN_QUARANTINE;
        let p = plan(&nodes, &leases, &pods, &memory, now, later);
        assert_eq!(collected(&p), ["pg"]);
        // The node came back meanwhile: its pods stay, and the clock starts again.
        let back = [node("a", None), node("gone", None)];
        let p = plan(&back, &leases, &pods, &memory, now, later);
        assert!(collected(&p).is_empty() && p.missing.is_empty());
        memory.saw_missing(&p.missing, later);
        assert!(memory.missing_since.is_empty());
    }
}
