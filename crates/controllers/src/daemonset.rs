//! The DaemonSet controller: one pod from the template on every node the template fits
//! (node selector, required node affinity, taints), none elsewhere, and a rolling update that
//! replaces pods node by node without more than `maxUnavailable` nodes short of an available
//! pod (or, with `maxSurge`, starts the new pod beside the old one first).
//!
//! Which nodes fit is decided with the scheduler's own model of pods and nodes; each pod is
//! then pinned to its node by a required node affinity on `metadata.name`, as Kubernetes does,
//! and the scheduler binds it (so it still waits for room on the node). Daemon pods tolerate
//! what Kubernetes makes them tolerate: a node going not-ready or unreachable, pressure, and
//! being cordoned. A node fits once it is Ready; a pod stays on a node until a `NoExecute`
//! taint it does not tolerate, or a label change, turns it away.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use berth_scheduler::model::{Effect, NodeInfo, PodInfo};
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    Toleration,
};
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::controller::Action;
use serde_json::{json, Value};

use crate::api_err;
use crate::deployment::{scaled, template_hash};
use crate::events::{delete_each, involved, record};
use crate::ownership::{claim, controller_ref};
use crate::status::{ready_since, status_changed, write_status};
use crate::{Context, Error};

const COMPONENT: &str = "daemonset-controller";
/// How long a failed daemon pod stays before it is replaced.
const FAILED_BACKOFF: i64 = 10;
/// The label naming the template revision a daemon pod was made from.
pub const REVISION_LABEL: &str = "controller-revision-hash";

/// What one pass over a DaemonSet decided.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Nodes to start a pod on.
    pub create: Vec<String>,
    /// Pods to delete, by name.
    pub delete: Vec<String>,
    /// The status, if it changed.
    pub status: Option<Value>,
    /// When to look again (a pod turning available), if nothing else wakes the controller.
    pub requeue: Option<Duration>,
}

/// A node that should run a pod, with its pods of older revisions and of the current one.
type NodePods<'a> = (&'a str, Vec<&'a Arc<Pod>>, Vec<&'a Arc<Pod>>);

/// The node a daemon pod belongs to: its `nodeName`, else the one its affinity pins it to.
pub fn target_node(p: &Pod) -> Option<String> {
    let spec = p.spec.as_ref()?;
    if let Some(n) = spec.node_name.clone().filter(|n| !n.is_empty()) {
        return Some(n);
    }
    let terms = &spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|r| r.key == "metadata.name" && r.operator == "In")
        .and_then(|r| r.values.as_ref()?.first().cloned())
}

/// The tolerations every daemon pod gets (Kubernetes' list): it stays through a node going
/// not-ready or unreachable, and starts despite pressure or a cordon.
fn daemon_tolerations(host_network: bool) -> Vec<Toleration> {
    let mut out: Vec<Toleration> = [
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ]
    .into_iter()
    .map(|(key, effect)| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Toleration::default()
    })
    .collect();
    if host_network {
        out.push(Toleration {
            key: Some("node.kubernetes.io/network-unavailable".into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Toleration::default()
        });
    }
    out
}

/// A daemon pod from the template, of revision `hash`, owned by the DaemonSet; pinned to
/// `node` when one is given.
pub fn daemon_pod(ds: &DaemonSet, hash: &str, node: Option<&str>) -> Result<Pod, Error> {
    let name = ds.metadata.name.clone().unwrap_or_default();
    let template = ds
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let mut meta = template.metadata.unwrap_or_default();
    let mut spec = template.spec.ok_or_else(|| Error::Invalid {
        what: "daemonset",
        name: name.clone(),
        why: "spec.template.spec is missing".into(),
    })?;
    meta.name = None;
    meta.generate_name = Some(format!("{name}-"));
    meta.namespace = ds.metadata.namespace.clone();
    meta.owner_references = Some(vec![controller_ref("apps/v1", "DaemonSet", &ds.metadata)]);
    meta.labels
        .get_or_insert_with(Default::default)
        .insert(REVISION_LABEL.into(), hash.into());
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    for t in daemon_tolerations(spec.host_network == Some(true)) {
        if !tolerations
            .iter()
            .any(|have| have.key == t.key && have.effect == t.effect)
        {
            tolerations.push(t);
        }
    }
    if let Some(node) = node {
        // The controller has already judged the template's own node terms.
        let pin = NodeSelector {
            node_selector_terms: vec![NodeSelectorTerm {
                match_fields: Some(vec![NodeSelectorRequirement {
                    key: "metadata.name".into(),
                    operator: "In".into(),
                    values: Some(vec![node.into()]),
                }]),
                match_expressions: None,
            }],
        };
        let affinity = spec.affinity.get_or_insert_with(Affinity::default);
        affinity
            .node_affinity
            .get_or_insert_with(NodeAffinity::default)
            .required_during_scheduling_ignored_during_execution = Some(pin);
    }
    Ok(Pod {
        metadata: meta,
        spec: Some(spec),
        status: None,
    })
}

/// Should the DaemonSet start a pod on this node, and may a pod already there stay?
fn fits(pod: &PodInfo, node: &NodeInfo) -> (bool, bool) {
    if !pod.admits_node(&node.name, &node.labels) {
        return (false, false);
    }
    let no_execute: Vec<_> = node
        .taints
        .iter()
        .filter(|t| t.effect == Effect::NoExecute)
        .cloned()
        .collect();
    let stay = pod.untolerated(&no_execute).is_none();
    (stay && pod.untolerated(&node.taints).is_none(), stay)
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// Decide one pass over a DaemonSet given every node, the pods it controls, whether earlier
/// creations and deletions have shown up (`settled`), and the time.
pub fn plan(
    ds: &DaemonSet,
    nodes: &[Arc<Node>],
    pods: &[Arc<Pod>],
    settled: bool,
    now: Timestamp,
) -> Result<Plan, Error> {
    let mut out = Plan::default();
    let name = ds.metadata.name.clone().unwrap_or_default();
    let Some(spec) = ds.spec.as_ref() else {
        return Ok(out);
    };
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(out);
    }
    let hash = template_hash(&spec.template);
    let info = PodInfo::from_pod(&daemon_pod(ds, &hash, None)?).map_err(|e| Error::Invalid {
        what: "daemonset",
        name: name.clone(),
        why: e.to_string(),
    })?;
    let min_ready = i64::from(spec.min_ready_seconds.unwrap_or(0).max(0));
    let mut wake: Option<Duration> = None;
    let mut available = |p: &Pod| -> bool {
        let Some(since) = ready_since(p) else {
            return false;
        };
        let left = since.as_second() + min_ready - now.as_second();
        if left > 0 {
            let d = Duration::from_secs(left as u64);
            wake = Some(wake.map_or(d, |w| w.min(d)));
        }
        left <= 0
    };

    // The live pods on each node. A failed one goes once it has been down for the back-off,
    // and the next pass replaces it: a pod the node keeps refusing is not made in a loop.
    let mut by_node: BTreeMap<String, Vec<&Arc<Pod>>> = BTreeMap::new();
    let mut backing_off: HashSet<String> = HashSet::new();
    let mut retry: Option<Duration> = None;
    for p in pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        let pod_name = p.metadata.name.clone().unwrap_or_default();
        match (target_node(p), phase(p)) {
            (None, _) => out.delete.push(pod_name),
            (Some(node), "Failed" | "Succeeded") => {
                let left = crate::job::finished_at(p)
                    .map_or(0, |t| t.as_second() + FAILED_BACKOFF - now.as_second());
                if left > 0 {
                    let d = Duration::from_secs(left as u64);
                    retry = Some(retry.map_or(d, |w: Duration| w.min(d)));
                    backing_off.insert(node);
                } else {
                    out.delete.push(pod_name);
                }
            }
            (Some(node), _) => by_node.entry(node).or_default().push(p),
        }
    }
    let known: HashSet<&str> = nodes
        .iter()
        .filter_map(|n| n.metadata.name.as_deref())
        .collect();
    for (node, ps) in &by_node {
        if !known.contains(node.as_str()) {
            out.delete
                .extend(ps.iter().filter_map(|p| p.metadata.name.clone()));
        }
    }

    // Each node: start a pod where one belongs, remove pods where none may stay.
    let (mut desired, mut current, mut misscheduled) = (0, 0, 0);
    let (mut ready, mut avail, mut updated) = (0, 0, 0);
    // Nodes that should run a pod, with their old and new pods.
    let mut running: Vec<NodePods> = Vec::new();
    for node in nodes {
        let n = NodeInfo::from_node(node);
        let (run, stay) = fits(&info, &n);
        let here = by_node.get(&n.name).cloned().unwrap_or_default();
        if !run {
            if !here.is_empty() {
                misscheduled += 1;
                if !stay {
                    out.delete
                        .extend(here.iter().filter_map(|p| p.metadata.name.clone()));
                }
            }
            continue;
        }
        desired += 1;
        if here.is_empty() {
            if !backing_off.contains(&n.name) {
                out.create.push(n.name.clone());
            }
            continue;
        }
        current += 1;
        ready += usize::from(here.iter().any(|p| ready_since(p).is_some()));
        avail += usize::from(here.iter().any(|p| available(p)));
        let (mut new, mut old): (Vec<_>, Vec<_>) = here.into_iter().partition(|p| {
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(REVISION_LABEL))
                == Some(&hash)
        });
        updated += usize::from(!new.is_empty());
        // Never two pods of one revision on a node: the oldest stays.
        for extra in [&mut new, &mut old] {
            extra.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
            if extra.len() > 1 {
                out.delete
                    .extend(extra.drain(1..).filter_map(|p| p.metadata.name.clone()));
            }
        }
        running.push((node.metadata.name.as_deref().unwrap_or_default(), old, new));
    }

    let rolling = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("RollingUpdate")
        == "RollingUpdate";
    if rolling {
        let ru = spec
            .update_strategy
            .as_ref()
            .and_then(|s| s.rolling_update.as_ref());
        let total = desired as i32;
        let max_surge = scaled(ru.and_then(|r| r.max_surge.as_ref()), total, 0, true);
        let mut max_unavailable =
            scaled(ru.and_then(|r| r.max_unavailable.as_ref()), total, 0, true);
        if max_surge == 0 && max_unavailable == 0 {
            max_unavailable = 1;
        }
        let mut unavailable = (desired - avail) as i32;
        let mut surging = running
            .iter()
            .filter(|(_, old, new)| !old.is_empty() && !new.is_empty())
            .count() as i32;
        for (node, old, new) in &running {
            let Some(old_pod) = old.first() else {
                continue;
            };
            let old_name = old_pod.metadata.name.clone().unwrap_or_default();
            let old_up = available(old_pod);
            match new.first() {
                // The new pod is up: the old one is no longer needed.
                Some(new_pod) if available(new_pod) => out.delete.push(old_name),
                Some(_) => {}
                // An old pod that is not up costs nothing to replace.
                None if !old_up => out.delete.push(old_name),
                None if max_surge > 0 => {
                    if surging < max_surge {
                        surging += 1;
                        out.create.push(node.to_string());
                    }
                }
                None => {
                    if unavailable < max_unavailable {
                        unavailable += 1;
                        out.delete.push(old_name);
                    }
                }
            }
        }
    }
    if !settled {
        out.create.clear();
        out.delete.clear();
    }
    out.delete.sort();
    out.delete.dedup();

    let status = json!({
        "desiredNumberScheduled": desired,
        "currentNumberScheduled": current,
        "numberMisscheduled": misscheduled,
        "numberReady": ready,
        "updatedNumberScheduled": updated,
        "numberAvailable": avail,
        "numberUnavailable": desired.saturating_sub(avail),
        "observedGeneration": ds.metadata.generation.unwrap_or(0),
    });
    let old = serde_json::to_value(ds.status.clone().unwrap_or_default()).unwrap_or_default();
    let fields = [
        "desiredNumberScheduled",
        "currentNumberScheduled",
        "numberMisscheduled",
        "numberReady",
        "updatedNumberScheduled",
        "numberAvailable",
        "numberUnavailable",
        "observedGeneration",
    ];
    if status_changed(&old, &status, &fields) {
        out.status = Some(status);
    }
    out.requeue = [wake, retry].into_iter().flatten().min();
    Ok(out)
}

pub async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.synced().await?;
    let meta = &ds.metadata;
    let ns = meta.namespace.clone().unwrap_or_default();
    let uid = meta.uid.clone().unwrap_or_default();
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pods = claim(
        &pods_api,
        ("apps/v1", "DaemonSet", meta),
        &Api::<DaemonSet>::namespaced(ctx.client.clone(), &ns),
        ds.spec.as_ref().map(|s| &s.selector),
        &ctx.pods,
    )
    .await?;
    let present: HashSet<String> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    let settled = ctx.expectations.satisfied(&uid, &present);
    if let Some(spec) = ds
        .spec
        .as_ref()
        .filter(|_| meta.deletion_timestamp.is_none())
    {
        let name = meta.name.clone().unwrap_or_default();
        let revision = |hash: &str| format!("{name}-{hash}");
        crate::revisions::record(
            &ctx,
            crate::revisions::Owner {
                kind: "DaemonSet",
                meta,
                template: &spec.template,
                revision: revision(&template_hash(&spec.template)),
                history_limit: spec.revision_history_limit.unwrap_or(10),
                in_use: pods
                    .iter()
                    .filter_map(|p| p.metadata.labels.as_ref()?.get(REVISION_LABEL))
                    .map(|h| revision(h))
                    .collect(),
            },
        )
        .await?;
    }
    let plan = plan(&ds, &ctx.nodes.state(), &pods, settled, Timestamp::now())?;
    execute(&ctx, &ds, &pods_api, plan).await
}

/// Make a plan's writes: deletions, creations, the status.
async fn execute(
    ctx: &Context,
    ds: &DaemonSet,
    pods: &Api<Pod>,
    plan: Plan,
) -> Result<Action, Error> {
    let ns = ds.metadata.namespace.clone().unwrap_or_default();
    let name = ds.metadata.name.clone().unwrap_or_default();
    let uid = ds.metadata.uid.clone().unwrap_or_default();
    let about = || involved("DaemonSet", &ds.metadata);
    if !plan.delete.is_empty() {
        ctx.expectations.expect(&uid, vec![], plan.delete.clone());
    }
    delete_each(
        &ctx.client,
        pods,
        &plan.delete,
        &DeleteParams::default(),
        about(),
        COMPONENT,
        |v| format!("Deleted pod: {v}"),
    )
    .await?;
    if !plan.create.is_empty() {
        let hash = ds
            .spec
            .as_ref()
            .map(|s| template_hash(&s.template))
            .unwrap_or_default();
        let made = plan
            .create
            .iter()
            .map(|node| daemon_pod(ds, &hash, Some(node)))
            .collect::<Result<Vec<_>, _>>()?;
        let pp = PostParams::default();
        let results = futures::future::join_all(made.iter().map(|p| pods.create(&pp, p))).await;
        let mut names = Vec::new();
        let mut failure = None;
        for r in results {
            match r {
                Ok(p) => {
                    let pod = p.metadata.name.unwrap_or_default();
                    let msg = format!("Created pod: {pod}");
                    record(
                        &ctx.client,
                        about(),
                        "Normal",
                        "SuccessfulCreate",
                        &msg,
                        COMPONENT,
                    );
                    names.push(pod);
                }
                Err(e) => failure = Some(e),
            }
        }
        ctx.expectations.expect(&uid, names, vec![]);
        if let Some(e) = failure {
            let msg = format!("Error creating: {e}");
            record(
                &ctx.client,
                about(),
                "Warning",
                "FailedCreate",
                &msg,
                COMPONENT,
            );
            return Err(api_err(format!("creating pods for daemonset {ns}/{name}"))(
                e,
            ));
        }
    }
    if let Some(status) = plan.status {
        let api: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &ns);
        write_status(&api, &name, status, &format!("daemonset {ns}/{name}")).await?;
    }
    Ok(plan
        .requeue
        .map_or_else(Action::await_change, Action::requeue))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn daemonset(extra: Value) -> DaemonSet {
        let mut v = json!({
            "metadata": {"name": "agent", "namespace": "kube-system", "uid": "ds-1", "generation": 1},
            "spec": {
                "selector": {"matchLabels": {"app": "agent"}},
                "updateStrategy": {"type": "RollingUpdate",
                    "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}},
                "template": {"metadata": {"labels": {"app": "agent"}},
                    "spec": {"containers": [{"name": "c", "image": "agent:1"}]}},
            },
        });
        json_patch::merge(&mut v, &extra);
        serde_json::from_value(v).unwrap()
    }

    fn node(name: &str, ready: bool, extra: Value) -> Arc<Node> {
        let mut v = json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
                "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"}},
        });
        json_patch::merge(&mut v, &extra);
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn pod(ds: &DaemonSet, name: &str, node: &str, ready: bool) -> Arc<Pod> {
        let hash = template_hash(&ds.spec.as_ref().unwrap().template);
        let mut p = daemon_pod(ds, &hash, Some(node)).unwrap();
        p.metadata.name = Some(name.into());
        p.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            Timestamp::UNIX_EPOCH,
        ));
        p.status = Some(
            serde_json::from_value(json!({"phase": "Running", "conditions": [{"type": "Ready",
                "status": if ready { "True" } else { "False" },
                "lastTransitionTime": "2026-12-06T10:00:00Z"}]}))
            .unwrap(),
        );
        Arc::new(p)
    }

    fn now() -> Timestamp {
        "2026-12-06T11:00:00Z".parse().unwrap()
    }

    #[test]
    fn one_pod_on_each_node_the_template_fits() {
        let ds =
            daemonset(json!({"spec": {"template": {"spec": {"nodeSelector": {"disk": "ssd"}}}}}));
        let ssd = json!({"metadata": {"labels": {"disk": "ssd"}}});
        let nodes = [
            node("a", true, ssd.clone()),
            node("b", true, json!({})),
            node("c", false, ssd.clone()),
            node(
                "d",
                true,
                json!({"metadata": {"labels": {"disk": "ssd"}},
                "spec": {"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]}}),
            ),
            node(
                "e",
                true,
                json!({"metadata": {"labels": {"disk": "ssd", "type": "virtual-kubelet"}},
                "spec": {"taints": [{"key": "virtual-kubelet.io/provider", "value": "berth", "effect": "NoSchedule"}]}}),
            ),
            node(
                "f",
                true,
                json!({"metadata": {"labels": {"disk": "ssd"}}, "spec": {"unschedulable": true}}),
            ),
        ];
        let p = plan(&ds, &nodes, &[], true, now()).unwrap();
        // Not b (labels), c (not Ready), d (taint), e (the virtual node); f is only cordoned.
        assert_eq!(p.create, ["a", "f"]);
        assert_eq!(p.status.unwrap()["desiredNumberScheduled"], 2);
        let made = daemon_pod(&ds, "h", Some("a")).unwrap();
        assert_eq!(target_node(&made).as_deref(), Some("a"));
        assert!(made.spec.unwrap().tolerations.unwrap().len() >= 6);
    }

    #[test]
    fn a_pod_stays_through_no_schedule_and_leaves_on_no_execute() {
        let ds = daemonset(json!({}));
        let pods = [
            pod(&ds, "agent-a", "a", true),
            pod(&ds, "agent-b", "b", true),
        ];
        let nodes = [
            node(
                "a",
                true,
                json!({"spec": {"taints": [{"key": "k", "effect": "NoSchedule"}]}}),
            ),
            node(
                "b",
                true,
                json!({"spec": {"taints": [{"key": "k", "effect": "NoExecute"}]}}),
            ),
        ];
        let p = plan(&ds, &nodes, &pods, true, now()).unwrap();
        assert_eq!(p.delete, ["agent-b"]);
        assert!(p.create.is_empty());
        let status = p.status.unwrap();
        assert_eq!(status["numberMisscheduled"], 2);
        // A failed pod is replaced; a pod on a node that is gone is removed.
        let mut failed = (*pod(&ds, "agent-x", "a", false)).clone();
        failed.status.as_mut().unwrap().phase = Some("Failed".into());
        let pods = [Arc::new(failed), pod(&ds, "agent-gone", "gone", true)];
        let p = plan(&ds, &[node("a", true, json!({}))], &pods, true, now()).unwrap();
        assert_eq!(p.delete, ["agent-gone", "agent-x"]);
    }

    /// A rolling update carried out on a simulated cluster: pods are deleted and made at
    /// once, and turn Ready at random.
    fn roll(
        nodes: usize,
        max_unavailable: i32,
        max_surge: i32,
        seed: u64,
    ) -> Result<(), TestCaseError> {
        let old = daemonset(json!({}));
        let new = daemonset(
            json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "agent:2"}]}},
            "updateStrategy": {"rollingUpdate": {"maxUnavailable": max_unavailable, "maxSurge": max_surge}}}}),
        );
        let nodes: Vec<Arc<Node>> = (0..nodes)
            .map(|i| node(&format!("n{i}"), true, json!({})))
            .collect();
        let mut pods: Vec<Arc<Pod>> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                pod(
                    &old,
                    &format!("old-{i}"),
                    n.metadata.name.as_deref().unwrap(),
                    true,
                )
            })
            .collect();
        let mut rng = seed | 1;
        let allowed = if max_surge > 0 {
            max_unavailable
        } else {
            max_unavailable.max(1)
        } as usize;
        for step in 0..200 {
            let p = plan(&new, &nodes, &pods, true, now()).unwrap();
            pods.retain(|x| !p.delete.contains(x.metadata.name.as_ref().unwrap()));
            for n in &p.create {
                pods.push(pod(&new, &format!("new-{step}-{n}"), n, false));
            }
            let down = nodes
                .iter()
                .filter(|n| {
                    !pods
                        .iter()
                        .any(|x| target_node(x) == n.metadata.name && ready_since(x).is_some())
                })
                .count();
            prop_assert!(
                down <= allowed,
                "step {step}: {down} nodes down, {allowed} allowed"
            );
            let status = p.status.unwrap_or_default();
            if status["updatedNumberScheduled"] == json!(nodes.len())
                && status["numberAvailable"] == json!(nodes.len())
                && pods.len() == nodes.len()
            {
                return Ok(());
            }
            // Some new pods turn Ready.
            pods = pods
                .into_iter()
                .map(|x| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    if ready_since(&x).is_none() && rng.is_multiple_of(3) {
                        pod(
                            &new,
                            x.metadata.name.as_deref().unwrap(),
                            &target_node(&x).unwrap(),
                            true,
                        )
                    } else {
                        x
                    }
                })
                .collect();
        }
        prop_assert!(false, "the update never finished: {pods:?}");
        Ok(())
    }

    proptest! {
        #[test]
        fn an_update_never_has_more_than_max_unavailable_nodes_down(
            nodes in 1usize..8, max_unavailable in 0i32..3, max_surge in 0i32..2, seed in any::<u64>(),
        ) {
            prop_assume!(max_unavailable > 0 || max_surge > 0);
            roll(nodes, max_unavailable, max_surge, seed)?;
        }
    }
}
