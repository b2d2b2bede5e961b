//! The ReplicaSet controller: as many active pods as `spec.replicas`, made from the template
//! and owned by the set; status counts them.
//!
//! Pods are created in batches that double (1, 2, 4, ...) so a template that cannot be created
//! fails fast; scale-down deletes the pods Kubernetes would pick first (unscheduled, pending,
//! not ready, ready for less time, more restarts, newer) but, before all of those, pods on
//! virtual nodes: they are billed by the second.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use serde_json::json;

use crate::util::{api_err, claim, controller_ref, involved, is_active, ready_since};
use crate::{Context, Error};

const COMPONENT: &str = "replicaset-controller";
/// The most pods created in one batch.
const MAX_BATCH: usize = 500;

pub async fn controller(
    ctx: Arc<Context>,
    changes: impl futures::Stream<Item = Result<Pod, watcher::Error>> + Send + 'static,
) {
    let client = ctx.client.clone();
    Controller::new(
        Api::<ReplicaSet>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns_stream(changes)
    .run(reconcile, error_policy, ctx)
    .for_each(|r| async move {
        if let Err(e) = r {
            tracing::debug!(error = %e, "replicaset reconcile");
        }
    })
    .await;
}

fn error_policy(_rs: Arc<ReplicaSet>, e: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %e, "replicaset");
    Action::requeue(Duration::from_secs(5))
}

pub async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.synced().await?;
    let meta = &rs.metadata;
    let (ns, name, uid) = (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
        meta.uid.clone().unwrap_or_default(),
    );
    if meta.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let spec = rs.spec.as_ref().ok_or_else(|| Error::Invalid {
        what: "replicaset",
        name: name.clone(),
        why: "has no spec".into(),
    })?;
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pods = claim(
        &pods_api,
        ("apps/v1", "ReplicaSet", meta),
        &Api::<ReplicaSet>::namespaced(ctx.client.clone(), &ns),
        Some(&spec.selector),
        &ctx.pods,
    )
    .await?;
    let present: HashSet<String> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    let active: Vec<&Arc<Pod>> = pods.iter().filter(|p| is_active(p)).collect();
    let want = spec.replicas.unwrap_or(1).max(0) as usize;
    if ctx.expectations.satisfied(&uid, &present) {
        if active.len() < want {
            create_pods(&ctx, &rs, &pods_api, want - active.len()).await?;
        } else if active.len() > want {
            let mut victims = active.clone();
            let nodes = &ctx.nodes;
            victims.sort_by_key(|p| deletion_rank(p, nodes));
            let victims: Vec<String> = victims
                .iter()
                .take(active.len() - want)
                .filter_map(|p| p.metadata.name.clone())
                .collect();
            ctx.expectations.expect(&uid, vec![], victims.clone());
            for v in &victims {
                match pods_api.delete(v, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => return Err(api_err(format!("deleting pod {ns}/{v}"))(e)),
                }
            }
            crate::util::record(
                &ctx.client,
                involved("ReplicaSet", &rs.metadata),
                "Normal",
                "SuccessfulDelete",
                &format!("Deleted {} pod(s): {}", victims.len(), victims.join(", ")),
                COMPONENT,
            );
        }
    }
    // Status, from what the cache shows now.
    let min_ready = spec.min_ready_seconds.unwrap_or(0).max(0) as i64;
    let now = jiff::Timestamp::now();
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
    if crate::util::status_changed(&current, &status, &fields) {
        let sets = Api::<ReplicaSet>::namespaced(ctx.client.clone(), &ns);
        crate::util::write_status(&sets, &name, status, &format!("replicaset {ns}/{name}")).await?;
    }
    Ok(match soonest {
        Some(s) => Action::requeue(Duration::from_secs(s.max(1) as u64)),
        None => Action::requeue(Duration::from_secs(300)),
    })
}

/// A pod from the set's template, owned by the set.
fn pod_from_template(rs: &ReplicaSet) -> Result<Pod, Error> {
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
    meta.owner_references = Some(vec![controller_ref("apps/v1", "ReplicaSet", &rs.metadata)]);
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
    rs: &ReplicaSet,
    api: &Api<Pod>,
    count: usize,
) -> Result<(), Error> {
    let uid = rs.metadata.uid.clone().unwrap_or_default();
    let pod = pod_from_template(rs)?;
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
        crate::util::record(
            &ctx.client,
            involved("ReplicaSet", &rs.metadata),
            "Normal",
            "SuccessfulCreate",
            &format!("Created {} pod(s): {}", created.len(), created.join(", ")),
            COMPONENT,
        );
    }
    if let Some(e) = failure {
        let ns = rs.metadata.namespace.clone().unwrap_or_default();
        crate::util::record(
            &ctx.client,
            involved("ReplicaSet", &rs.metadata),
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
    nodes: &kube::runtime::reflector::Store<k8s_openapi::api::core::v1::Node>,
) -> (u8, u8, u8, u8, i64, i64, i64) {
    let node = p
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    let on_virtual = !node.is_empty()
        && nodes
            .state()
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(node.as_str()))
            .and_then(|n| n.metadata.labels.as_ref())
            .and_then(|l| l.get("type"))
            .is_some_and(|t| t == "virtual-kubelet");
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
    (
        u8::from(!on_virtual),
        u8::from(!node.is_empty()),
        phase,
        u8::from(ready.is_some()),
        // Ready for less time first, more restarts first, newer first.
        -ready.map(|t| t.as_second()).unwrap_or(0),
        -restarts,
        -created,
    )
}
