//! The Deployment controller: one ReplicaSet per pod template (named and labelled with the
//! template's `pod-template-hash`), the newest scaled up and the older ones scaled down as the
//! strategy allows; revisions in `deployment.kubernetes.io/revision`, so `kubectl rollout
//! history|undo|status` work.
//!
//! RollingUpdate: the new set grows while all sets together stay within
//! `replicas + maxSurge`; old sets shrink while available pods stay at or above
//! `replicas - maxUnavailable`. Recreate: old sets go to zero, and the new set grows once
//! their pods are gone.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use serde_json::json;

use crate::util::{api_err, controlled_by, controller_ref, involved};
use crate::{Context, Error};

const COMPONENT: &str = "deployment-controller";
pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const HASH_LABEL: &str = "pod-template-hash";

pub async fn controller(
    ctx: Arc<Context>,
    changes: impl futures::Stream<Item = Result<ReplicaSet, watcher::Error>> + Send + 'static,
) {
    let client = ctx.client.clone();
    Controller::new(
        Api::<Deployment>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns_stream(changes)
    .run(reconcile, error_policy, ctx)
    .for_each(|r| async move {
        if let Err(e) = r {
            tracing::debug!(error = %e, "deployment reconcile");
        }
    })
    .await;
}

fn error_policy(_d: Arc<Deployment>, e: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %e, "deployment");
    Action::requeue(Duration::from_secs(5))
}

/// A stable, short name for a pod template: FNV-1a over its JSON, spelled in the consonants
/// and digits Kubernetes uses for generated names (no vowels, so no words).
pub fn template_hash(t: &PodTemplateSpec) -> String {
    let bytes = serde_json::to_vec(t).unwrap_or_default();
    let mut h: u32 = 0x811c9dc5;
    for b in bytes {
        h ^= b as u32;
        h = h.wrapping_mul(0x01000193);
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut out = Vec::new();
    loop {
        out.push(ALPHABET[(h % 27) as usize]);
        h /= 27;
        if h == 0 {
            break;
        }
    }
    String::from_utf8(out).expect("ascii")
}

/// The template with the hash label taken out, to compare a set's template to a deployment's.
fn without_hash(t: &PodTemplateSpec) -> PodTemplateSpec {
    let mut t = t.clone();
    if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(HASH_LABEL);
    }
    t
}

fn revision(rs: &ReplicaSet) -> i64 {
    rs.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn status_of(rs: &ReplicaSet) -> (i32, i32, i32) {
    let s = rs.status.as_ref();
    (
        s.map(|s| s.replicas).unwrap_or(0),
        s.and_then(|s| s.ready_replicas).unwrap_or(0),
        s.and_then(|s| s.available_replicas).unwrap_or(0),
    )
}

/// An int-or-percent of `total`, rounded up (surge) or down (unavailable).
fn scaled(v: Option<&IntOrString>, total: i32, default_pct: i32, round_up: bool) -> i32 {
    let pct = match v {
        Some(IntOrString::Int(n)) => return (*n).max(0),
        Some(IntOrString::String(s)) => s.trim_end_matches('%').parse().unwrap_or(default_pct),
        None => default_pct,
    };
    let x = total as i64 * pct as i64;
    (if round_up { (x + 99) / 100 } else { x / 100 }) as i32
}

pub async fn reconcile(d: Arc<Deployment>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.synced().await?;
    let meta = &d.metadata;
    let (ns, name, uid) = (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
        meta.uid.clone().unwrap_or_default(),
    );
    if meta.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let spec = d.spec.as_ref().ok_or_else(|| Error::Invalid {
        what: "deployment",
        name: name.clone(),
        why: "has no spec".into(),
    })?;
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let rs_api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    let mut sets: Vec<Arc<ReplicaSet>> = ctx
        .replicasets
        .state()
        .into_iter()
        .filter(|r| {
            r.metadata.namespace.as_deref() == Some(ns.as_str())
                && controlled_by(&r.metadata, &uid)
                && r.metadata.deletion_timestamp.is_none()
        })
        .collect();
    sets.sort_by_key(|r| revision(r));
    let hash = template_hash(&spec.template);
    let wanted = without_hash(&spec.template);
    let max_revision = sets.iter().map(|r| revision(r)).max().unwrap_or(0);
    let current = sets.iter().position(|r| {
        r.metadata.labels.as_ref().and_then(|l| l.get(HASH_LABEL)) == Some(&hash)
            || r.spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .map(without_hash)
                .as_ref()
                == Some(&wanted)
    });
    let paused = spec.paused.unwrap_or(false);
    let rolling = spec
        .strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("RollingUpdate")
        == "RollingUpdate";
    let ru = spec
        .strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref());
    let mut surge = scaled(ru.and_then(|r| r.max_surge.as_ref()), replicas, 25, true);
    let mut unavailable = scaled(
        ru.and_then(|r| r.max_unavailable.as_ref()),
        replicas,
        25,
        false,
    );
    if !rolling {
        surge = 0;
        unavailable = replicas;
    } else if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }

    // The set for the current template: create it, or make it the newest revision again
    // (a rollback to an old template).
    let new_rs: Option<Arc<ReplicaSet>> = match current {
        Some(i) => {
            let rs = sets[i].clone();
            if revision(&rs) < max_revision && !paused {
                let patch = json!({"metadata": {"annotations": {REVISION: (max_revision + 1).to_string()}}});
                let rs_name = rs.metadata.name.clone().unwrap_or_default();
                rs_api
                    .patch(&rs_name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(api_err(format!(
                        "marking replicaset {ns}/{rs_name} as the newest revision"
                    )))?;
                crate::util::record(
                    &ctx.client,
                    involved("Deployment", &d.metadata),
                    "Normal",
                    "DeploymentRollback",
                    &format!("Rolled back deployment {name} to replica set {rs_name}"),
                    COMPONENT,
                );
                return Ok(Action::requeue(Duration::from_secs(1)));
            }
            Some(rs)
        }
        None if paused => None,
        None => {
            let mut template = spec.template.clone();
            let labels = template
                .metadata
                .get_or_insert_with(Default::default)
                .labels
                .get_or_insert_with(BTreeMap::new);
            labels.insert(HASH_LABEL.into(), hash.clone());
            let labels = labels.clone();
            let mut selector = spec.selector.clone();
            selector
                .match_labels
                .get_or_insert_with(BTreeMap::new)
                .insert(HASH_LABEL.into(), hash.clone());
            let others_running = sets
                .iter()
                .any(|r| status_of(r).0 > 0 || spec_replicas(r) > 0);
            let start = if !rolling && others_running {
                0
            } else if rolling {
                let total: i32 = sets.iter().map(|r| spec_replicas(r)).sum();
                (replicas + surge - total).clamp(0, replicas)
            } else {
                replicas
            };
            let rs_name = format!("{name}-{hash}");
            let rs = json!({
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {
                    "name": rs_name, "namespace": ns, "labels": labels,
                    "annotations": {REVISION: (max_revision + 1).to_string(),
                        "deployment.kubernetes.io/desired-replicas": replicas.to_string(),
                        "deployment.kubernetes.io/max-replicas": (replicas + surge).to_string()},
                    "ownerReferences": [controller_ref("apps/v1", "Deployment", meta)],
                },
                "spec": {"replicas": start, "minReadySeconds": spec.min_ready_seconds.unwrap_or(0),
                         "selector": selector, "template": template},
            });
            let rs: ReplicaSet = serde_json::from_value(rs).map_err(|e| Error::Invalid {
                what: "deployment",
                name: name.clone(),
                why: format!("its template does not make a ReplicaSet: {e}"),
            })?;
            match rs_api.create(&PostParams::default(), &rs).await {
                Ok(created) => {
                    crate::util::record(
                        &ctx.client,
                        involved("Deployment", &d.metadata),
                        "Normal",
                        "ScalingReplicaSet",
                        &format!("Scaled up replica set {rs_name} from 0 to {start}"),
                        COMPONENT,
                    );
                    // Continue once the cache holds it.
                    let _ = created;
                    return Ok(Action::requeue(Duration::from_millis(200)));
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    return Ok(Action::requeue(Duration::from_millis(200)))
                }
                Err(e) => return Err(api_err(format!("creating replicaset {ns}/{rs_name}"))(e)),
            }
        }
    };

    // The deployment carries its current revision, as kubectl rollout expects.
    if let Some(rev) = new_rs.as_ref().map(|r| revision(r).to_string()) {
        let mine = meta.annotations.as_ref().and_then(|a| a.get(REVISION));
        if mine != Some(&rev) {
            let patch = json!({"metadata": {"annotations": {REVISION: rev}}});
            // Through status, as Kubernetes does it, so `generation` does not move.
            Api::<Deployment>::namespaced(ctx.client.clone(), &ns)
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(api_err(format!(
                    "annotating deployment {ns}/{name} with its revision"
                )))?;
        }
    }

    let mut targets: Vec<(Arc<ReplicaSet>, i32)> =
        sets.iter().map(|r| (r.clone(), spec_replicas(r))).collect();
    let new_uid = new_rs.as_ref().and_then(|r| r.metadata.uid.clone());
    let is_new = |r: &ReplicaSet| r.metadata.uid == new_uid && new_uid.is_some();
    if !paused {
        if let Some(new_rs) = &new_rs {
            let old_pods: i32 = sets
                .iter()
                .filter(|r| !is_new(r))
                .map(|r| status_of(r).0)
                .sum();
            let total: i32 = targets.iter().map(|t| t.1).sum();
            let new_target = if rolling {
                let cur = spec_replicas(new_rs);
                if cur > replicas {
                    replicas
                } else {
                    (cur + (replicas + surge - total).max(0)).min(replicas)
                }
            } else if old_pods == 0 && targets.iter().all(|t| is_new(&t.0) || t.1 == 0) {
                replicas
            } else {
                // Recreate: the new set waits at zero until the old pods are gone.
                0
            };
            for t in targets.iter_mut().filter(|t| is_new(&t.0)) {
                t.1 = new_target;
            }
            // Scale the old sets down, oldest first, keeping replicas - maxUnavailable.
            let all_pods: i32 = sets.iter().map(|r| status_of(r).0).sum();
            let (_, _, new_avail) = status_of(new_rs);
            let new_unavailable = (new_target - new_avail).max(0);
            let mut room = if rolling {
                all_pods - (replicas - unavailable) - new_unavailable
            } else {
                i32::MAX
            };
            for t in targets.iter_mut().filter(|t| !is_new(&t.0)) {
                if room <= 0 {
                    break;
                }
                let down = t.1.min(room);
                t.1 -= down;
                room -= down;
            }
        }
    }
    let mut changed = false;
    for (rs, target) in &targets {
        let from = spec_replicas(rs);
        if from == *target {
            continue;
        }
        changed = true;
        let rs_name = rs.metadata.name.clone().unwrap_or_default();
        let patch = json!({
            "metadata": {"annotations": {"deployment.kubernetes.io/desired-replicas": replicas.to_string(),
                "deployment.kubernetes.io/max-replicas": (replicas + surge).to_string()}},
            "spec": {"replicas": target},
        });
        rs_api
            .patch(&rs_name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(api_err(format!("scaling replicaset {ns}/{rs_name}")))?;
        let verb = if *target > from { "up" } else { "down" };
        crate::util::record(
            &ctx.client,
            involved("Deployment", &d.metadata),
            "Normal",
            "ScalingReplicaSet",
            &format!("Scaled {verb} replica set {rs_name} from {from} to {target}"),
            COMPONENT,
        );
    }

    // Old, empty sets beyond the history limit go.
    let limit = spec.revision_history_limit.unwrap_or(10).max(0) as usize;
    let empty_old: Vec<&Arc<ReplicaSet>> = sets
        .iter()
        .filter(|r| !is_new(r) && spec_replicas(r) == 0 && status_of(r).0 == 0)
        .collect();
    if empty_old.len() > limit {
        for rs in &empty_old[..empty_old.len() - limit] {
            let rs_name = rs.metadata.name.clone().unwrap_or_default();
            let _ = rs_api.delete(&rs_name, &DeleteParams::background()).await;
        }
    }

    // Status.
    let (mut have, mut ready, mut available) = (0, 0, 0);
    for r in &sets {
        let (h, rd, a) = status_of(r);
        have += h;
        ready += rd;
        available += a;
    }
    let updated = new_rs.as_ref().map(|r| status_of(r).0).unwrap_or(0);
    let new_name = new_rs
        .as_ref()
        .and_then(|r| r.metadata.name.clone())
        .unwrap_or_default();
    let complete = updated == replicas && have == replicas && available >= replicas;
    let now = jiff::Timestamp::now().to_string();
    let old_conditions = d
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let condition = |type_: &str, status: bool, reason: &str, message: String| {
        let status = if status { "True" } else { "False" };
        let old = old_conditions.iter().find(|c| c.type_ == type_);
        let since = match old {
            Some(c) if c.status == status => c
                .last_transition_time
                .as_ref()
                .map(|t| t.0.to_string())
                .unwrap_or_else(|| now.clone()),
            _ => now.clone(),
        };
        let updated_at = match old {
            Some(c) if c.status == status && c.reason.as_deref() == Some(reason) => c
                .last_update_time
                .as_ref()
                .map(|t| t.0.to_string())
                .unwrap_or_else(|| now.clone()),
            _ => now.clone(),
        };
        json!({"type": type_, "status": status, "reason": reason, "message": message,
               "lastTransitionTime": since, "lastUpdateTime": updated_at})
    };
    let min_available = replicas - unavailable.min(replicas);
    let status = json!({
        "observedGeneration": meta.generation,
        "replicas": have,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": available,
        "unavailableReplicas": (replicas - available).max(0),
        "conditions": [
            if available >= min_available {
                condition("Available", true, "MinimumReplicasAvailable", "Deployment has minimum availability.".into())
            } else {
                condition("Available", false, "MinimumReplicasUnavailable", "Deployment does not have minimum availability.".into())
            },
            if paused {
                condition("Progressing", false, "DeploymentPaused", "Deployment is paused".into())
            } else if complete {
                condition("Progressing", true, "NewReplicaSetAvailable", format!("ReplicaSet \"{new_name}\" has successfully progressed."))
            } else {
                condition("Progressing", true, "ReplicaSetUpdated", format!("ReplicaSet \"{new_name}\" is progressing."))
            },
        ],
    });
    let old = d
        .status
        .as_ref()
        .map(|s| serde_json::to_value(s).unwrap_or_default())
        .unwrap_or_default();
    let same = [
        "observedGeneration",
        "replicas",
        "updatedReplicas",
        "readyReplicas",
        "availableReplicas",
        "unavailableReplicas",
    ]
    .iter()
    .all(|k| old.get(*k).unwrap_or(&json!(0)) == status.get(*k).unwrap_or(&json!(0)))
        && old.get("conditions").map(|c| {
            c.as_array()
                .into_iter()
                .flatten()
                .map(|c| (c["type"].clone(), c["status"].clone(), c["reason"].clone()))
                .collect::<Vec<_>>()
        }) == status.get("conditions").map(|c| {
            c.as_array()
                .into_iter()
                .flatten()
                .map(|c| (c["type"].clone(), c["status"].clone(), c["reason"].clone()))
                .collect::<Vec<_>>()
        });
    if !same {
        Api::<Deployment>::namespaced(ctx.client.clone(), &ns)
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await
            .map_err(api_err(format!(
                "updating the status of deployment {ns}/{name}"
            )))?;
    }
    Ok(if changed || !complete {
        Action::requeue(Duration::from_secs(if changed { 1 } else { 5 }))
    } else {
        Action::requeue(Duration::from_secs(300))
    })
}
