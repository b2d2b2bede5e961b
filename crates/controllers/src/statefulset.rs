//! The StatefulSet controller: pods with stable names (`<set>-<ordinal>`), each with its own
//! claims from `volumeClaimTemplates` (`<template>-<set>-<ordinal>`, kept when the pod goes so
//! the next pod of that ordinal finds its data), the hostname of its name under the governing
//! Service (`spec.serviceName`), made in order and removed in reverse order.
//!
//! With `OrderedReady` a pod is made only when every lower ordinal is Running and Ready, and
//! removed (on scale down) only when every other is; with `Parallel` all at once. A rolling
//! update replaces pods from the highest ordinal down to `partition`, as many at once as
//! `maxUnavailable` allows (one by default; ordered sets also wait until every pod is Ready
//! again); `OnDelete` replaces only what is deleted. The set never runs two
//! pods of one ordinal: a pod is made again only after the one before it is gone.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, Volume,
};
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::controller::Action;
use serde_json::{json, Value};

use crate::api_err;
use crate::deployment::scaled;
use crate::deployment::template_hash;
use crate::events::{delete_each, involved, record};
use crate::ownership::{claim, controller_ref};
use crate::status::{ready_since, status_changed, write_status};
use crate::{Context, Error};

const COMPONENT: &str = "statefulset-controller";
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";
pub const REVISION_LABEL: &str = "controller-revision-hash";

/// What one pass over a StatefulSet decided.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Claims to make before the pods that use them: name, template index, ordinal.
    pub claims: Vec<(String, usize, i32)>,
    /// Ordinals to make a pod for.
    pub create: Vec<i32>,
    /// Pods to delete, by name.
    pub delete: Vec<String>,
    /// Claims to delete, by name: those of ordinals scaled away, under `whenScaled: Delete`.
    pub delete_claims: Vec<String>,
    pub status: Option<Value>,
    /// When a pod turns available (`minReadySeconds`).
    pub requeue: Option<Duration>,
}

/// The ordinal of one of the set's pods, from its name.
pub fn ordinal_of(set: &str, pod: &str) -> Option<i32> {
    pod.strip_prefix(set)?.strip_prefix('-')?.parse().ok()
}

/// The revision a template makes: the set's name and the template's hash.
pub fn revision(sts: &StatefulSet) -> String {
    let name = sts.metadata.name.as_deref().unwrap_or_default();
    let template = sts
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    format!("{name}-{}", template_hash(&template))
}

fn revision_of(p: &Pod) -> Option<&str> {
    p.metadata
        .labels
        .as_ref()?
        .get(REVISION_LABEL)
        .map(String::as_str)
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// The claim name of template `template` for ordinal `i`.
pub fn claim_name(template: &str, set: &str, i: i32) -> String {
    format!("{template}-{set}-{i}")
}

/// Decide one pass over a StatefulSet given its pods, the names of the claims in its
/// namespace, and the time.
pub fn plan(
    sts: &StatefulSet,
    pods: &[Arc<Pod>],
    claims: &HashSet<String>,
    now: Timestamp,
) -> Plan {
    let mut out = Plan::default();
    let Some(spec) = sts.spec.as_ref() else {
        return out;
    };
    if sts.metadata.deletion_timestamp.is_some() {
        return out;
    }
    let name = sts.metadata.name.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let start = spec
        .ordinals
        .as_ref()
        .and_then(|o| o.start)
        .unwrap_or(0)
        .max(0);
    let wanted = start..start.saturating_add(replicas);
    let parallel = spec.pod_management_policy.as_deref() == Some("Parallel");
    let update = revision(sts);
    let min_ready = i64::from(spec.min_ready_seconds.unwrap_or(0).max(0));

    let mut by_ordinal: BTreeMap<i32, &Arc<Pod>> = BTreeMap::new();
    for p in pods {
        if let Some(i) = p
            .metadata
            .name
            .as_deref()
            .and_then(|n| ordinal_of(&name, n))
        {
            by_ordinal.insert(i, p);
        }
    }
    let terminating = |p: &Pod| p.metadata.deletion_timestamp.is_some();
    let healthy = |p: &Pod| !terminating(p) && phase(p) == "Running" && ready_since(p).is_some();
    let mut available = 0;
    let mut available_ordinals = HashSet::new();
    for (i, p) in &by_ordinal {
        if let Some(since) = ready_since(p).filter(|_| !terminating(p) && phase(p) == "Running") {
            let left = since.as_second() + min_ready - now.as_second();
            if left <= 0 {
                available += 1;
                available_ordinals.insert(*i);
            } else {
                let d = Duration::from_secs(left as u64);
                out.requeue = Some(out.requeue.map_or(d, |r| r.min(d)));
            }
        }
    }

    // Failed pods go; the next pass makes them again.
    for p in by_ordinal.values() {
        if !terminating(p) && matches!(phase(p), "Failed" | "Succeeded") {
            out.delete.push(p.metadata.name.clone().unwrap_or_default());
        }
    }
    let any_terminating = by_ordinal.values().any(|p| terminating(p));
    // Every ordinal's claims, its pod's first: a claim removed under a pod comes back.
    let missing_claims = |i: i32| -> Vec<(String, usize, i32)> {
        spec.volume_claim_templates
            .iter()
            .flatten()
            .enumerate()
            .map(|(t, tpl)| {
                let template = tpl.metadata.name.as_deref().unwrap_or_default();
                (claim_name(template, &name, i), t, i)
            })
            .filter(|(c, _, _)| !claims.contains(c))
            .collect()
    };
    for i in wanted.clone().filter(|i| by_ordinal.contains_key(i)) {
        out.claims.extend(missing_claims(i));
    }
    // Make the missing pods, in order unless Parallel.
    for i in wanted.clone() {
        match by_ordinal.get(&i) {
            None => {
                out.claims.extend(missing_claims(i));
                out.create.push(i);
                if !parallel {
                    break;
                }
            }
            Some(p) if !parallel && !healthy(p) => break,
            Some(_) => {}
        }
    }
    if !parallel && any_terminating {
        out.create.clear();
    }
    let all_healthy = wanted
        .clone()
        .all(|i| by_ordinal.get(&i).is_some_and(|p| healthy(p)));
    // Scale down: the highest ordinal first, one at a time once the rest are healthy.
    let condemned: Vec<&Arc<Pod>> = by_ordinal
        .iter()
        .rev()
        .filter(|(i, p)| !wanted.contains(i) && !terminating(p))
        .map(|(_, p)| *p)
        .collect();
    if parallel {
        out.delete
            .extend(condemned.iter().filter_map(|p| p.metadata.name.clone()));
    } else if let Some(p) = condemned.first() {
        if all_healthy && !any_terminating {
            out.delete.push(p.metadata.name.clone().unwrap_or_default());
        }
    }

    // Rolling update: the highest ordinals of the old revision, at or above the partition,
    // as many at once as `maxUnavailable` leaves room for (one by default) counting every
    // wanted ordinal that is not available, once nothing is being scaled away (and, ordered,
    // once every pod is healthy).
    let strategy = spec.update_strategy.as_ref();
    let rolling = strategy
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("RollingUpdate")
        == "RollingUpdate";
    let rolling_update = strategy.and_then(|s| s.rolling_update.as_ref());
    let partition = rolling_update.and_then(|r| r.partition).unwrap_or(0);
    let max_unavailable = rolling_update
        .and_then(|r| r.max_unavailable.as_ref())
        .map_or(1, |v| scaled(Some(v), replicas, 0, false).max(1));
    let unavailable = wanted
        .clone()
        .filter(|i| !available_ordinals.contains(i))
        .count() as i32;
    if rolling && condemned.is_empty() && (parallel || (all_healthy && !any_terminating)) {
        let room = (max_unavailable - unavailable).max(0) as usize;
        let stale = wanted
            .clone()
            .rev()
            .filter(|i| *i >= start + partition)
            .filter_map(|i| by_ordinal.get(&i))
            .filter(|p| !terminating(p) && revision_of(p) != Some(update.as_str()))
            .take(room);
        out.delete
            .extend(stale.filter_map(|p| p.metadata.name.clone()));
    }
    // `whenScaled: Delete`: an ordinal scaled away loses its claims once its pod is gone.
    let scaled_delete = spec
        .persistent_volume_claim_retention_policy
        .as_ref()
        .and_then(|p| p.when_scaled.as_deref())
        == Some("Delete");
    if scaled_delete {
        for tpl in spec.volume_claim_templates.iter().flatten() {
            let prefix = format!(
                "{}-{name}-",
                tpl.metadata.name.as_deref().unwrap_or_default()
            );
            let mut gone: Vec<String> = claims
                .iter()
                .filter(|c| {
                    c.strip_prefix(&prefix)
                        .and_then(|i| i.parse::<i32>().ok())
                        .is_some_and(|i| !wanted.contains(&i) && !by_ordinal.contains_key(&i))
                })
                .cloned()
                .collect();
            gone.sort();
            out.delete_claims.extend(gone);
        }
    }
    out.delete.sort();
    out.delete.dedup();

    let current_pods: Vec<&&Arc<Pod>> = by_ordinal.values().filter(|p| !terminating(p)).collect();
    let updated = current_pods
        .iter()
        .filter(|p| revision_of(p) == Some(update.as_str()))
        .count() as i32;
    let old_revision = current_pods
        .iter()
        .filter_map(|p| revision_of(p))
        .find(|r| *r != update)
        .map(String::from);
    let current_revision = match old_revision {
        Some(r) if updated < replicas => r,
        _ => update.clone(),
    };
    let ready = current_pods
        .iter()
        .filter(|p| ready_since(p).is_some())
        .count();
    let status = json!({
        "observedGeneration": sts.metadata.generation.unwrap_or(0),
        "replicas": current_pods.len(),
        "readyReplicas": ready,
        "availableReplicas": available,
        "currentReplicas": current_pods.iter().filter(|p| revision_of(p) == Some(current_revision.as_str())).count(),
        "updatedReplicas": updated,
        "currentRevision": current_revision,
        "updateRevision": update,
        "collisionCount": 0,
    });
    let old = serde_json::to_value(sts.status.clone().unwrap_or_default()).unwrap_or_default();
    let fields = [
        "observedGeneration",
        "replicas",
        "readyReplicas",
        "availableReplicas",
        "currentReplicas",
        "updatedReplicas",
        "currentRevision",
        "updateRevision",
    ];
    if status_changed(&old, &status, &fields) {
        out.status = Some(status);
    }
    out
}

/// The pod of ordinal `i`: its stable name and hostname, its claims, the revision labels.
pub fn pod_for(sts: &StatefulSet, i: i32) -> Pod {
    let name = sts.metadata.name.clone().unwrap_or_default();
    let spec = sts.spec.clone().unwrap_or_default();
    let template = spec.template;
    let pod_name = format!("{name}-{i}");
    let mut meta = template.metadata.unwrap_or_default();
    meta.name = Some(pod_name.clone());
    meta.generate_name = None;
    meta.namespace = sts.metadata.namespace.clone();
    meta.owner_references = Some(vec![controller_ref(
        "apps/v1",
        "StatefulSet",
        &sts.metadata,
    )]);
    let labels = meta.labels.get_or_insert_with(Default::default);
    labels.insert(POD_NAME_LABEL.into(), pod_name.clone());
    labels.insert(POD_INDEX_LABEL.into(), i.to_string());
    labels.insert(REVISION_LABEL.into(), revision(sts));
    let mut pod_spec = template.spec.unwrap_or_default();
    pod_spec.hostname = Some(pod_name);
    if let Some(svc) = spec.service_name.filter(|s| !s.is_empty()) {
        pod_spec.subdomain = Some(svc);
    }
    let volumes = pod_spec.volumes.get_or_insert_with(Vec::new);
    for t in spec.volume_claim_templates.iter().flatten() {
        let template_name = t.metadata.name.clone().unwrap_or_default();
        volumes.retain(|v| v.name != template_name);
        volumes.push(Volume {
            name: template_name.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(&template_name, &name, i),
                read_only: None,
            }),
            ..Volume::default()
        });
    }
    Pod {
        metadata: meta,
        spec: Some(pod_spec),
        status: None,
    }
}

/// The claim of one template for ordinal `i`; owned by the set when its claims go with it
/// (`whenDeleted: Delete`).
pub fn claim_for(
    sts: &StatefulSet,
    template: &PersistentVolumeClaim,
    i: i32,
) -> PersistentVolumeClaim {
    let name = sts.metadata.name.clone().unwrap_or_default();
    let spec = sts.spec.clone().unwrap_or_default();
    let mut meta = template.metadata.clone();
    let template_name = meta.name.clone().unwrap_or_default();
    meta.name = Some(claim_name(&template_name, &name, i));
    meta.namespace = sts.metadata.namespace.clone();
    let labels = meta.labels.get_or_insert_with(Default::default);
    labels.extend(spec.selector.match_labels.clone().unwrap_or_default());
    let delete_with_set = spec
        .persistent_volume_claim_retention_policy
        .as_ref()
        .and_then(|p| p.when_deleted.as_deref())
        == Some("Delete");
    if delete_with_set {
        meta.owner_references = Some(vec![controller_ref(
            "apps/v1",
            "StatefulSet",
            &sts.metadata,
        )]);
    }
    PersistentVolumeClaim {
        metadata: meta,
        spec: template.spec.clone(),
        status: None,
    }
}

pub async fn reconcile(sts: Arc<StatefulSet>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.synced().await?;
    let meta = &sts.metadata;
    let ns = meta.namespace.clone().unwrap_or_default();
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pods = claim(
        &pods_api,
        ("apps/v1", "StatefulSet", meta),
        &Api::<StatefulSet>::namespaced(ctx.client.clone(), &ns),
        sts.spec.as_ref().map(|s| &s.selector),
        &ctx.pods,
    )
    .await?;
    let claims_api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let claims: HashSet<String> = if sts.spec.as_ref().is_some_and(|s| {
        s.volume_claim_templates
            .as_ref()
            .is_some_and(|t| !t.is_empty())
    }) {
        claims_api
            .list_metadata(&Default::default())
            .await
            .map_err(api_err(format!("listing claims in {ns}")))?
            .items
            .into_iter()
            .filter_map(|c| c.metadata.name)
            .collect()
    } else {
        HashSet::new()
    };
    if let Some(spec) = sts
        .spec
        .as_ref()
        .filter(|_| meta.deletion_timestamp.is_none())
    {
        crate::revisions::record(
            &ctx,
            crate::revisions::Owner {
                kind: "StatefulSet",
                meta,
                template: &spec.template,
                revision: revision(&sts),
                history_limit: spec.revision_history_limit.unwrap_or(10),
                in_use: pods
                    .iter()
                    .filter_map(|p| revision_of(p).map(String::from))
                    .collect(),
            },
        )
        .await?;
    }
    let plan = plan(&sts, &pods, &claims, Timestamp::now());
    execute(&ctx, &sts, &pods_api, &claims_api, plan).await
}

async fn execute(
    ctx: &Context,
    sts: &StatefulSet,
    pods: &Api<Pod>,
    claims: &Api<PersistentVolumeClaim>,
    plan: Plan,
) -> Result<Action, Error> {
    let ns = sts.metadata.namespace.clone().unwrap_or_default();
    let name = sts.metadata.name.clone().unwrap_or_default();
    let about = || involved("StatefulSet", &sts.metadata);
    let pp = PostParams::default();
    delete_each(
        &ctx.client,
        claims,
        &plan.delete_claims,
        &DeleteParams::default(),
        about(),
        COMPONENT,
        |c| format!("delete Claim {c} in StatefulSet {name} success"),
    )
    .await?;
    delete_each(
        &ctx.client,
        pods,
        &plan.delete,
        &DeleteParams::default(),
        about(),
        COMPONENT,
        |v| format!("delete Pod {v} in StatefulSet {name} successful"),
    )
    .await?;
    let templates = sts
        .spec
        .as_ref()
        .and_then(|s| s.volume_claim_templates.clone())
        .unwrap_or_default();
    for (claim_name, t, i) in &plan.claims {
        let Some(t) = templates.get(*t) else {
            continue;
        };
        match claims.create(&pp, &claim_for(sts, t, *i)).await {
            Ok(_) => {
                let msg = format!(
                    "create Claim {claim_name} for Pod {name}-{i} in StatefulSet {name} success"
                );
                record(
                    &ctx.client,
                    about(),
                    "Normal",
                    "SuccessfulCreate",
                    &msg,
                    COMPONENT,
                );
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(api_err(format!("creating claim {ns}/{claim_name}"))(e)),
        }
    }
    for i in &plan.create {
        let pod = pod_for(sts, *i);
        match pods.create(&pp, &pod).await {
            Ok(_) => {
                let msg = format!("create Pod {name}-{i} in StatefulSet {name} successful");
                record(
                    &ctx.client,
                    about(),
                    "Normal",
                    "SuccessfulCreate",
                    &msg,
                    COMPONENT,
                );
            }
            // The pod of this ordinal is still there (being deleted, or not yet in the cache).
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => {
                let msg = format!("create Pod {name}-{i} in StatefulSet {name} failed error: {e}");
                record(
                    &ctx.client,
                    about(),
                    "Warning",
                    "FailedCreate",
                    &msg,
                    COMPONENT,
                );
                return Err(api_err(format!("creating pod {ns}/{name}-{i}"))(e));
            }
        }
    }
    if let Some(status) = plan.status {
        let api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
        write_status(&api, &name, status, &format!("statefulset {ns}/{name}")).await?;
    }
    Ok(plan
        .requeue
        .map_or_else(Action::await_change, Action::requeue))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sts(replicas: i32, extra: Value) -> StatefulSet {
        let mut v = json!({
            "metadata": {"name": "db", "namespace": "default", "uid": "s-1", "generation": 1},
            "spec": {"replicas": replicas, "serviceName": "db",
                "selector": {"matchLabels": {"app": "db"}},
                "template": {"metadata": {"labels": {"app": "db"}},
                    "spec": {"containers": [{"name": "c", "image": "db:1"}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "data"},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]},
        });
        json_patch::merge(&mut v, &extra);
        serde_json::from_value(v).unwrap()
    }

    fn running(s: &StatefulSet, i: i32, ready: bool) -> Arc<Pod> {
        let mut p = pod_for(s, i);
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
    fn pods_come_in_order_with_their_own_claims() {
        let s = sts(3, json!({}));
        let p = plan(&s, &[], &HashSet::new(), now());
        assert_eq!(p.create, [0]);
        assert_eq!(p.claims, [("data-db-0".to_string(), 0, 0)]);
        let made = pod_for(&s, 0);
        let spec = made.spec.unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("db-0"));
        assert_eq!(spec.subdomain.as_deref(), Some("db"));
        assert_eq!(
            spec.volumes.unwrap()[0]
                .persistent_volume_claim
                .as_ref()
                .unwrap()
                .claim_name,
            "data-db-0"
        );
        // db-1 waits for db-0 to be Ready.
        let p = plan(&s, &[running(&s, 0, false)], &HashSet::new(), now());
        assert!(p.create.is_empty());
        let claims: HashSet<String> = ["data-db-0".to_string(), "data-db-1".to_string()].into();
        let p = plan(&s, &[running(&s, 0, true)], &claims, now());
        assert_eq!(p.create, [1]);
        assert!(p.claims.is_empty(), "db-1's claim is already there");
        // Parallel: everything at once.
        let s = sts(3, json!({"spec": {"podManagementPolicy": "Parallel"}}));
        assert_eq!(plan(&s, &[], &HashSet::new(), now()).create, [0, 1, 2]);
    }

    #[test]
    fn scale_down_removes_the_highest_ordinal_first() {
        let big = sts(3, json!({}));
        let pods: Vec<Arc<Pod>> = (0..3).map(|i| running(&big, i, true)).collect();
        let s = sts(1, json!({}));
        let claims: HashSet<String> = (0..3).map(|i| format!("data-db-{i}")).collect();
        let p = plan(&s, &pods, &claims, now());
        assert_eq!(p.delete, ["db-2"]);
        assert!(p.delete_claims.is_empty(), "claims are retained by default");
        // whenScaled: Delete: a scaled-away ordinal's claim goes once its pod has.
        let s = sts(
            1,
            json!({"spec": {"persistentVolumeClaimRetentionPolicy": {"whenScaled": "Delete"}}}),
        );
        let p = plan(&s, &pods, &claims, now());
        assert!(p.delete_claims.is_empty(), "db-1 and db-2 still run");
        let p = plan(&s, &pods[..2], &claims, now());
        assert_eq!(p.delete_claims, ["data-db-2"]);
    }

    #[test]
    fn a_rolling_update_goes_from_the_top_down_to_the_partition() {
        let old = sts(3, json!({}));
        let new = sts(
            3,
            json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "db:2"}]}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 1}}}}),
        );
        let mut pods: Vec<Arc<Pod>> = (0..3).map(|i| running(&old, i, true)).collect();
        assert_eq!(plan(&new, &pods, &HashSet::new(), now()).delete, ["db-2"]);
        pods[2] = running(&new, 2, true);
        assert_eq!(plan(&new, &pods, &HashSet::new(), now()).delete, ["db-1"]);
        pods[1] = running(&new, 1, true);
        // db-0 is below the partition: it stays.
        let p = plan(&new, &pods, &HashSet::new(), now());
        assert!(p.delete.is_empty());
        assert_eq!(p.status.unwrap()["updatedReplicas"], 2);
    }

    #[test]
    fn max_unavailable_replaces_several_at_once_and_counts_what_is_down() {
        let old = sts(5, json!({"spec": {"podManagementPolicy": "Parallel"}}));
        let new = sts(
            5,
            json!({"spec": {"podManagementPolicy": "Parallel",
                "template": {"spec": {"containers": [{"name": "c", "image": "db:2"}]}},
                "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "40%"}}}}),
        );
        let mut pods: Vec<Arc<Pod>> = (0..5).map(|i| running(&old, i, true)).collect();
        // 40% of 5 is 2: the two highest ordinals go together.
        assert_eq!(
            plan(&new, &pods, &HashSet::new(), now()).delete,
            ["db-3", "db-4"]
        );
        // db-4 is back but not Ready, db-3 is not back: nothing more goes.
        pods[4] = running(&new, 4, false);
        pods.remove(3);
        let p = plan(&new, &pods, &HashSet::new(), now());
        assert!(p.delete.is_empty(), "{:?}", p.delete);
        assert_eq!(p.create, [3]);
        // db-4 Ready: room for one more, db-2 (db-3 is still missing).
        pods[3] = running(&new, 4, true);
        assert_eq!(plan(&new, &pods, &HashSet::new(), now()).delete, ["db-2"]);
        // An old pod that is down already counts: with one to spare, none goes.
        let one = sts(
            3,
            json!({"spec": {"podManagementPolicy": "Parallel",
                "template": {"spec": {"containers": [{"name": "c", "image": "db:2"}]}}}}),
        );
        let pods = vec![
            running(&old, 0, true),
            running(&old, 1, false),
            running(&old, 2, true),
        ];
        assert!(plan(&one, &pods, &HashSet::new(), now()).delete.is_empty());
    }

    proptest! {
        /// A rolling update never has more wanted ordinals unavailable than `maxUnavailable`
        /// (when they all were available to begin with), and ends with every pod updated.
        #[test]
        fn an_update_stays_within_max_unavailable(
            replicas in 1i32..8, max in 1i32..5, parallel in any::<bool>(), seed in any::<u64>(),
        ) {
            let policy = if parallel { "Parallel" } else { "OrderedReady" };
            let old = sts(replicas, json!({"spec": {"podManagementPolicy": policy}}));
            let new = sts(replicas, json!({"spec": {"podManagementPolicy": policy,
                "template": {"spec": {"containers": [{"name": "c", "image": "db:2"}]}},
                "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": max}}}}));
            let claims: HashSet<String> = (0..replicas).map(|i| format!("data-db-{i}")).collect();
            let mut pods: Vec<Arc<Pod>> = (0..replicas).map(|i| running(&old, i, true)).collect();
            let mut rng = seed | 1;
            for step in 0..400 {
                let p = plan(&new, &pods, &claims, now());
                pods.retain(|x| !p.delete.contains(x.metadata.name.as_ref().unwrap()));
                for i in &p.create {
                    pods.push(running(&new, *i, false));
                }
                let down = replicas as usize - pods.iter().filter(|x| ready_since(x).is_some()).count();
                prop_assert!(down as i32 <= max, "step {}: {} down, max {}", step, down, max);
                pods = pods.into_iter().map(|x| {
                    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
                    if ready_since(&x).is_none() && rng.is_multiple_of(3) {
                        let i = ordinal_of("db", x.metadata.name.as_deref().unwrap()).unwrap();
                        running(&new, i, true)
                    } else { x }
                }).collect();
            }
            let update = revision(&new);
            prop_assert!(pods.iter().all(|x| revision_of(x) == Some(update.as_str())));
            prop_assert_eq!(pods.len() as i32, replicas);
        }

        /// Whatever the kubelets do, a set never has two pods of one ordinal, and reaches its
        /// replicas.
        #[test]
        fn never_two_pods_of_one_ordinal(
            replicas in 0i32..6, parallel in any::<bool>(), seed in any::<u64>(), resize in 0i32..6,
        ) {
            let policy = if parallel { "Parallel" } else { "OrderedReady" };
            let mut s = sts(replicas, json!({"spec": {"podManagementPolicy": policy}}));
            let mut pods: Vec<Arc<Pod>> = Vec::new();
            let mut claims = HashSet::new();
            let mut rng = seed | 1;
            for step in 0..300 {
                if step == 100 {
                    s = sts(resize, json!({"spec": {"podManagementPolicy": policy}}));
                }
                let p = plan(&s, &pods, &claims, now());
                for (c, _, _) in &p.claims { claims.insert(c.clone()); }
                pods.retain(|x| !p.delete.contains(x.metadata.name.as_ref().unwrap()));
                for i in &p.create {
                    let name = format!("db-{i}");
                    prop_assert!(!pods.iter().any(|x| x.metadata.name.as_deref() == Some(&name)),
                        "step {step}: a second pod {name}");
                    let claim = format!("data-db-{i}");
                    prop_assert!(claims.contains(&claim), "no claim {}", claim);
                    pods.push(running(&s, *i, false));
                }
                pods = pods.into_iter().map(|x| {
                    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
                    if ready_since(&x).is_none() && rng.is_multiple_of(2) {
                        let i = ordinal_of("db", x.metadata.name.as_deref().unwrap()).unwrap();
                        running(&s, i, true)
                    } else { x }
                }).collect();
            }
            let target = s.spec.as_ref().unwrap().replicas.unwrap();
            prop_assert_eq!(pods.len() as i32, target);
            let mut names: Vec<String> = pods.iter().map(|p| p.metadata.name.clone().unwrap()).collect();
            names.sort();
            let mut expected: Vec<String> = (0..target).map(|i| format!("db-{i}")).collect();
            expected.sort();
            prop_assert_eq!(names, expected);
        }
    }
}
