//! The ReplicaSet controller: as many active pods as `spec.replicas`, made from the template
//! and owned by the set; status counts them. ReplicationControllers (core/v1) are served by
//! the same machinery: each is read as the ReplicaSet its equality selector makes.
//!
//! Pods are created in batches that double (1, 2, 4, ...) so a template that cannot be created
//! fails fast; scale-down deletes the pods Kubernetes would pick first (unscheduled, pending,
//! not ready, ready for less time, more restarts, newer) but, before all of those, pods on
//! virtual nodes: they are billed by the second.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetSpec, ReplicaSetStatus};
use k8s_openapi::api::core::v1::{Node, Pod, ReplicationController};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use serde_json::{json, Value};

use crate::api_err;
use crate::events::{involved_in, record};
use crate::ownership::{claim, controller_ref};
use crate::status::{is_active, ready_since, status_changed, write_status};
use crate::{Context, Error};

const COMPONENT: &str = "replicaset-controller";
/// The most pods created in one batch.
const MAX_BATCH: usize = 500;

/// What one pass over a ReplicaSet decided: writes in order, and when to look again
/// (`None`: on the next change).
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub writes: Vec<Write>,
    pub requeue: Option<Duration>,
}

/// One write of a [`Plan`].
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// This many pods from the template, in batches that double.
    Create(usize),
    /// These pods, the ones the set gives up first.
    Delete(Vec<String>),
    /// The set's status, merged into its status subresource.
    Status(Value),
}

/// Decide one pass over a ReplicaSet from the pods it controls. `settled`: every create and
/// delete it asked for earlier shows in the cache (until then it does not count again);
/// `on_virtual`: is this node a virtual one. Pure.
pub fn plan(
    rs: &ReplicaSet,
    pods: &[Arc<Pod>],
    settled: bool,
    on_virtual: &dyn Fn(&str) -> bool,
    now: Timestamp,
) -> Result<Plan, Error> {
    let meta = &rs.metadata;
    if meta.deletion_timestamp.is_some() {
        return Ok(Plan::default());
    }
    let spec = rs.spec.as_ref().ok_or_else(|| Error::Invalid {
        what: "replicaset",
        name: meta.name.clone().unwrap_or_default(),
        why: "has no spec".into(),
    })?;
    let mut writes = Vec::new();
    let active: Vec<&Arc<Pod>> = pods.iter().filter(|p| is_active(p)).collect();
    let want = spec.replicas.unwrap_or(1).max(0) as usize;
    if settled && active.len() < want {
        writes.push(Write::Create(want - active.len()));
    } else if settled && active.len() > want {
        let mut victims = active.clone();
        victims.sort_by_key(|p| deletion_rank(p, on_virtual));
        writes.push(Write::Delete(
            victims
                .iter()
                .take(active.len() - want)
                .filter_map(|p| p.metadata.name.clone())
                .collect(),
        ));
    }
    // Status, from what the cache shows now.
    let min_ready = spec.min_ready_seconds.unwrap_or(0).max(0) as i64;
    let mut ready = 0;
    let mut available = 0;
    let mut soonest: Option<i64> = None;
    for p in &active {
        if let Some(since) = ready_since(p) {
            ready += 1;
            let ready_for = now.as_second() - since.as_second();
            if ready_for >= min_ready {
                available += 1;
            } else {
                let left = min_ready - ready_for;
                soonest = Some(soonest.map_or(left, |s: i64| s.min(left)));
            }
        }
    }
    let status = json!({
        "replicas": active.len(),
        "fullyLabeledReplicas": active.len(),
        "readyReplicas": ready,
        "availableReplicas": available,
        "observedGeneration": meta.generation,
    });
    let current = rs
        .status
        .as_ref()
        .map(|s| serde_json::to_value(s).unwrap_or_default())
        .unwrap_or_default();
    let fields = [
        "replicas",
        "readyReplicas",
        "availableReplicas",
        "observedGeneration",
    ];
    if status_changed(&current, &status, &fields) {
        writes.push(Write::Status(status));
    }
    let requeue = match soonest {
        Some(s) => Duration::from_secs(s.max(1) as u64),
        None => Duration::from_secs(300),
    };
    Ok(Plan {
        writes,
        requeue: Some(requeue),
    })
}

/// The kind of object whose pods a pass counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    ReplicaSet,
    ReplicationController,
}

impl Owner {
    fn api_version(self) -> &'static str {
        match self {
            Owner::ReplicaSet => "apps/v1",
            Owner::ReplicationController => "v1",
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Owner::ReplicaSet => "ReplicaSet",
            Owner::ReplicationController => "ReplicationController",
        }
    }
}

/// A ReplicationController as the ReplicaSet it stands for: its selector as `matchLabels`.
pub fn as_replicaset(rc: &ReplicationController) -> ReplicaSet {
    let spec = rc.spec.clone().unwrap_or_default();
    let status = rc.status.clone();
    ReplicaSet {
        metadata: rc.metadata.clone(),
        spec: Some(ReplicaSetSpec {
            replicas: spec.replicas,
            min_ready_seconds: spec.min_ready_seconds,
            selector: LabelSelector {
                match_labels: spec.selector,
                match_expressions: None,
            },
            template: spec.template,
        }),
        status: status.map(|s| ReplicaSetStatus {
            replicas: s.replicas,
            ready_replicas: s.ready_replicas,
            available_replicas: s.available_replicas,
            fully_labeled_replicas: s.fully_labeled_replicas,
            observed_generation: s.observed_generation,
            conditions: None,
            terminating_replicas: None,
        }),
    }
}

pub async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Context>) -> Result<Action, Error> {
    reconcile_as(Owner::ReplicaSet, rs, ctx).await
}

pub async fn reconcile_rc(
    rc: Arc<ReplicationController>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    reconcile_as(
        Owner::ReplicationController,
        Arc::new(as_replicaset(&rc)),
        ctx,
    )
    .await
}

async fn reconcile_as(
    owner: Owner,
    rs: Arc<ReplicaSet>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    ctx.synced().await?;
    if rs.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let meta = &rs.metadata;
    let ns = meta.namespace.clone().unwrap_or_default();
    let uid = meta.uid.clone().unwrap_or_default();
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let selector = rs.spec.as_ref().map(|s| &s.selector);
    let by = (owner.api_version(), owner.kind(), meta);
    let pods = match owner {
        Owner::ReplicaSet => {
            let owners = Api::<ReplicaSet>::namespaced(ctx.client.clone(), &ns);
            claim(&pods_api, by, &owners, selector, &ctx.pods).await?
        }
        Owner::ReplicationController => {
            let owners = Api::<ReplicationController>::namespaced(ctx.client.clone(), &ns);
            claim(&pods_api, by, &owners, selector, &ctx.pods).await?
        }
    };
    let present: HashSet<String> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    let settled = ctx.expectations.satisfied(&uid, &present);
    let on_virtual = |node: &str| {
        ctx.nodes
            .get(&ObjectRef::new(node))
            .is_some_and(|n| is_virtual(&n))
    };
    let plan = plan(&rs, &pods, settled, &on_virtual, Timestamp::now())?;
    execute(&ctx, owner, &rs, &pods_api, plan).await
}

/// Make a plan's writes in order; creations and deletions are expected before the next count.
async fn execute(
    ctx: &Context,
    owner: Owner,
    rs: &ReplicaSet,
    pods: &Api<Pod>,
    plan: Plan,
) -> Result<Action, Error> {
    let ns = rs.metadata.namespace.clone().unwrap_or_default();
    let name = rs.metadata.name.clone().unwrap_or_default();
    let uid = rs.metadata.uid.clone().unwrap_or_default();
    for write in plan.writes {
        match write {
            Write::Create(count) => create_pods(ctx, owner, rs, pods, count).await?,
            Write::Delete(victims) => {
                ctx.expectations.expect(&uid, vec![], victims.clone());
                for v in &victims {
                    match pods.delete(v, &DeleteParams::default()).await {
                        Ok(_) => {}
                        Err(kube::Error::Api(s)) if s.code == 404 => {}
                        Err(e) => return Err(api_err(format!("deleting pod {ns}/{v}"))(e)),
                    }
                }
                record(
                    &ctx.client,
                    involved_in(owner.api_version(), owner.kind(), &rs.metadata),
                    "Normal",
                    "SuccessfulDelete",
                    &format!("Deleted {} pod(s): {}", victims.len(), victims.join(", ")),
                    COMPONENT,
                );
            }
            Write::Status(status) => {
                let what = format!("{} {ns}/{name}", owner.kind().to_lowercase());
                match owner {
                    Owner::ReplicaSet => {
                        let sets = Api::<ReplicaSet>::namespaced(ctx.client.clone(), &ns);
                        write_status(&sets, &name, status, &what).await?;
                    }
                    Owner::ReplicationController => {
                        let rcs = Api::<ReplicationController>::namespaced(ctx.client.clone(), &ns);
                        write_status(&rcs, &name, status, &what).await?;
                    }
                }
            }
        }
    }
    Ok(plan
        .requeue
        .map_or_else(Action::await_change, Action::requeue))
}

/// Is the node a virtual one (a virtual kubelet's, billed by the second)?
pub(crate) fn is_virtual(n: &Node) -> bool {
    n.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("type"))
        .is_some_and(|t| t == "virtual-kubelet")
}

/// A pod from the set's template, owned by the set.
fn pod_from_template(owner: Owner, rs: &ReplicaSet) -> Result<Pod, Error> {
    let name = rs.metadata.name.clone().unwrap_or_default();
    let template = rs
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default()
        .unwrap_or_default();
    let mut meta = template.metadata.unwrap_or_default();
    meta.name = None;
    meta.generate_name = Some(format!("{name}-"));
    meta.namespace = rs.metadata.namespace.clone();
    meta.owner_references = Some(vec![controller_ref(
        owner.api_version(),
        owner.kind(),
        &rs.metadata,
    )]);
    let spec = template.spec.ok_or_else(|| Error::Invalid {
        what: "replicaset",
        name,
        why: "spec.template.spec is missing".into(),
    })?;
    Ok(Pod {
        metadata: meta,
        spec: Some(spec),
        status: None,
    })
}

async fn create_pods(
    ctx: &Context,
    owner: Owner,
    rs: &ReplicaSet,
    api: &Api<Pod>,
    count: usize,
) -> Result<(), Error> {
    let uid = rs.metadata.uid.clone().unwrap_or_default();
    let pod = pod_from_template(owner, rs)?;
    let pp = PostParams::default();
    let mut left = count;
    let mut batch = 1;
    let mut created = Vec::new();
    let mut failure = None;
    while left > 0 && failure.is_none() {
        let n = batch.min(left).min(MAX_BATCH);
        let results = futures::future::join_all((0..n).map(|_| api.create(&pp, &pod))).await;
        let mut names = Vec::new();
        for r in results {
            match r {
                Ok(p) => names.push(p.metadata.name.unwrap_or_default()),
                Err(e) => failure = Some(e),
            }
        }
        ctx.expectations.expect(&uid, names.clone(), vec![]);
        created.extend(names);
        left -= n;
        batch *= 2;
    }
    if !created.is_empty() {
        record(
            &ctx.client,
            involved_in(owner.api_version(), owner.kind(), &rs.metadata),
            "Normal",
            "SuccessfulCreate",
            &format!("Created {} pod(s): {}", created.len(), created.join(", ")),
            COMPONENT,
        );
    }
    if let Some(e) = failure {
        let ns = rs.metadata.namespace.clone().unwrap_or_default();
        record(
            &ctx.client,
            involved_in(owner.api_version(), owner.kind(), &rs.metadata),
            "Warning",
            "FailedCreate",
            &format!("Error creating: {e}"),
            COMPONENT,
        );
        return Err(api_err(format!(
            "creating pods for replicaset {ns}/{}",
            rs.metadata.name.as_deref().unwrap_or_default()
        ))(e));
    }
    Ok(())
}

/// Sort key: the pod to delete first sorts first.
fn deletion_rank(
    p: &Pod,
    on_virtual: &dyn Fn(&str) -> bool,
) -> (u8, u8, u8, u8, i64, i64, i64, i64) {
    let node = p
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    let on_virtual = !node.is_empty() && on_virtual(&node);
    let phase = match p.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") | None => 0,
        Some("Unknown") => 1,
        _ => 2,
    };
    let ready = ready_since(p);
    let restarts: i64 = p
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .map(|c| c.restart_count as i64)
        .sum();
    let created = p
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .unwrap_or(0);
    // `controller.kubernetes.io/pod-deletion-cost`: the lower, the sooner.
    let cost = p
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("controller.kubernetes.io/pod-deletion-cost"))
        .and_then(|c| c.parse::<i32>().ok())
        .unwrap_or(0);
    (
        u8::from(!on_virtual),
        u8::from(!node.is_empty()),
        phase,
        u8::from(ready.is_some()),
        i64::from(cost),
        // Ready for less time first, more restarts first, newer first.
        -ready.map(|t| t.as_second()).unwrap_or(0),
        -restarts,
        -created,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn running(name: &str, node: &str, cost: Option<&str>) -> Arc<Pod> {
        let mut annotations = json!({});
        if let Some(c) = cost {
            annotations["controller.kubernetes.io/pod-deletion-cost"] = json!(c);
        }
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "annotations": annotations,
                             "creationTimestamp": "2026-11-28T10:00:00Z"},
                "spec": {"nodeName": node, "containers": []},
                "status": {"phase": "Running", "conditions": [
                    {"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-28T10:00:01Z"}]},
            }))
            .unwrap(),
        )
    }

    #[test]
    fn scale_down_gives_back_virtual_node_pods_first_then_the_cheapest() {
        let rs: ReplicaSet = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"replicas": 2, "selector": {}, "template": {}},
        }))
        .unwrap();
        let pods = [
            running("real-a", "host-1", None),
            running("burst", "berth-instances", Some("100")),
            running("real-cheap", "host-1", Some("-5")),
            running("real-b", "host-1", None),
        ];
        let on_virtual = |n: &str| n == "berth-instances";
        let p = plan(&rs, &pods, true, &on_virtual, Timestamp::now()).unwrap();
        assert_eq!(
            p.writes[0],
            Write::Delete(vec!["burst".into(), "real-cheap".into()])
        );
    }
}
