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

use crate::util::{
    api_err, claim, controlled_by, controller_ref, involved, status_changed, write_status,
};
use crate::{Context, Error};

const COMPONENT: &str = "deployment-controller";
pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const HASH_LABEL: &str = "pod-template-hash";
/// A Deployment annotated with this set to "true" rolls itself back when a rollout fails.
pub const AUTO_ROLLBACK: &str = "berth.dev/auto-rollback";
/// On a ReplicaSet: when its rollout completed.
const AVAILABLE: &str = "berth.dev/available-since";
/// On a ReplicaSet that was rolled back from: the reason and the message of its RolledBack
/// condition.
const ROLLBACK_REASON: &str = "berth.dev/rollback-reason";
const ROLLBACK_MESSAGE: &str = "berth.dev/rollback-message";
const DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";

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
    let (ns, name) = (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
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
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let mut sets = claim(
        &rs_api,
        ("apps/v1", "Deployment", meta),
        &deployments,
        Some(&spec.selector),
        &ctx.replicasets,
    )
    .await?;
    sets.retain(|r| r.metadata.deletion_timestamp.is_none());
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
    let now_ts = jiff::Timestamp::now();
    let now = now_ts.to_string();
    let old_conditions = d
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    // Progress, as Kubernetes counts it: more pods updated, fewer old ones, more ready or
    // available. Progress moves the Progressing condition's lastUpdateTime; a rollout that
    // has not moved it for progressDeadlineSeconds has timed out.
    let old_status = d.status.as_ref();
    let old_progressing = old_conditions.iter().find(|c| c.type_ == "Progressing");
    // A new rollout (another new set) starts its clock afresh.
    let same_rollout = old_progressing
        .and_then(|c| c.message.as_deref())
        .is_some_and(|m| m.contains(&format!("\"{new_name}\"")));
    let progressed = !same_rollout
        || old_status.is_none_or(|s| {
            let old_updated = s.updated_replicas.unwrap_or(0);
            updated > old_updated
                || have - updated < s.replicas.unwrap_or(0) - old_updated
                || ready > s.ready_replicas.unwrap_or(0)
                || available > s.available_replicas.unwrap_or(0)
        });
    let deadline = i64::from(spec.progress_deadline_seconds.unwrap_or(600).max(0));
    let timed_out = !complete
        && !paused
        && !progressed
        && old_progressing.is_some_and(|c| {
            c.reason.as_deref() == Some(DEADLINE_EXCEEDED)
                || (c.status == "True"
                    && c.last_update_time
                        .as_ref()
                        .is_some_and(|t| now_ts.as_second() - t.0.as_second() > deadline))
        });
    let condition = |type_: &str, status: bool, reason: &str, message: String, touch: bool| {
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
            Some(c) if !touch && c.status == status && c.reason.as_deref() == Some(reason) => c
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
    let mut conditions = vec![
        if available >= min_available {
            condition(
                "Available",
                true,
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
                false,
            )
        } else {
            condition(
                "Available",
                false,
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
                false,
            )
        },
        if paused {
            condition(
                "Progressing",
                false,
                "DeploymentPaused",
                "Deployment is paused".into(),
                false,
            )
        } else if complete {
            condition(
                "Progressing",
                true,
                "NewReplicaSetAvailable",
                format!("ReplicaSet \"{new_name}\" has successfully progressed."),
                false,
            )
        } else if timed_out {
            condition(
                "Progressing",
                false,
                DEADLINE_EXCEEDED,
                format!("ReplicaSet \"{new_name}\" has timed out progressing."),
                false,
            )
        } else {
            condition(
                "Progressing",
                true,
                "ReplicaSetUpdated",
                format!("ReplicaSet \"{new_name}\" is progressing."),
                progressed,
            )
        },
    ];
    // The rollout before this one was rolled back automatically: say so until the next one.
    if let Some(rolled) = sets
        .iter()
        .rev()
        .nth(1)
        .filter(|r| new_rs.as_ref().is_some_and(|n| revision(n) > revision(r)))
    {
        let note = |k: &str| {
            rolled
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(k))
                .cloned()
        };
        if let (Some(reason), Some(message)) = (note(ROLLBACK_REASON), note(ROLLBACK_MESSAGE)) {
            conditions.push(condition("RolledBack", true, &reason, message, false));
        }
    }
    let status = json!({
        "observedGeneration": meta.generation,
        "replicas": have,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": available,
        "unavailableReplicas": (replicas - available).max(0),
        "conditions": conditions,
    });
    let old = d
        .status
        .as_ref()
        .map(|s| serde_json::to_value(s).unwrap_or_default())
        .unwrap_or_default();
    let fields = [
        "observedGeneration",
        "replicas",
        "updatedReplicas",
        "readyReplicas",
        "availableReplicas",
        "unavailableReplicas",
    ];
    if status_changed(&old, &status, &fields) {
        let deployments = Api::<Deployment>::namespaced(ctx.client.clone(), &ns);
        write_status(
            &deployments,
            &name,
            status,
            &format!("deployment {ns}/{name}"),
        )
        .await?;
    }

    let Some(new_rs) = new_rs else {
        return Ok(Action::requeue(Duration::from_secs(300)));
    };
    if complete {
        mark_available(&rs_api, &new_rs).await?;
    } else if auto_rollback_on(&d) && !paused && was_available(&new_rs).is_none() {
        let why = if timed_out {
            Some((
                DEADLINE_EXCEEDED.to_string(),
                format!("its new pods did not become available within {deadline}s"),
            ))
        } else {
            crash_looping(&ctx, &new_rs)
        };
        if let Some((reason, why)) = why {
            return roll_back(&ctx, &d, &sets, &new_rs, &reason, &why).await;
        }
    }
    Ok(if changed {
        Action::requeue(Duration::from_secs(1))
    } else if !complete {
        // Soon enough to see a crash loop, and a deadline, within a couple of seconds.
        Action::requeue(Duration::from_secs(2))
    } else {
        Action::requeue(Duration::from_secs(300))
    })
}

/// Waiting reasons that mean a new pod will not come up by itself soon.
const BROKEN: &[&str] = &[
    "CrashLoopBackOff",
    "ErrImagePull",
    "ImagePullBackOff",
    "ErrImageNeverPull",
    "InvalidImageName",
];

fn auto_rollback_on(d: &Deployment) -> bool {
    d.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(AUTO_ROLLBACK))
        .is_some_and(|v| v == "true")
}

/// When the set's rollout completed, if it ever did.
fn was_available(rs: &ReplicaSet) -> Option<&String> {
    rs.metadata.annotations.as_ref()?.get(AVAILABLE)
}

/// Remember that this set once ran the whole deployment: a target for rolling back, and never
/// itself rolled back from.
async fn mark_available(rs_api: &Api<ReplicaSet>, rs: &ReplicaSet) -> Result<(), Error> {
    if was_available(rs).is_some() {
        return Ok(());
    }
    let rs_name = rs.metadata.name.clone().unwrap_or_default();
    let patch =
        json!({"metadata": {"annotations": {AVAILABLE: jiff::Timestamp::now().to_string()}}});
    rs_api
        .patch(&rs_name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(api_err(format!(
            "marking replicaset {rs_name} as available"
        )))?;
    Ok(())
}

/// A pod of `rs` whose container waits for a reason that will not clear by itself.
fn crash_looping(ctx: &Context, rs: &ReplicaSet) -> Option<(String, String)> {
    let uid = rs.metadata.uid.as_deref()?;
    ctx.pods.state().iter().find_map(|p| {
        if !controlled_by(&p.metadata, uid) {
            return None;
        }
        let s = p.status.as_ref()?;
        let statuses = s
            .init_container_statuses
            .iter()
            .chain(s.container_statuses.iter());
        statuses.flatten().find_map(|c| {
            let w = c.state.as_ref()?.waiting.as_ref()?;
            let reason = w.reason.as_deref().filter(|r| BROKEN.contains(r))?;
            let pod = p.metadata.name.as_deref().unwrap_or_default();
            let detail = w
                .message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            Some((
                reason.to_string(),
                format!("container {} of pod {pod} is in {reason}{detail}", c.name),
            ))
        })
    })
}

/// Put back the template of the newest set that was once available, as `kubectl rollout undo`
/// would, and mark the failed set with why.
async fn roll_back(
    ctx: &Context,
    d: &Deployment,
    sets: &[Arc<ReplicaSet>],
    failed: &ReplicaSet,
    reason: &str,
    why: &str,
) -> Result<Action, Error> {
    let ns = d.metadata.namespace.clone().unwrap_or_default();
    let name = d.metadata.name.clone().unwrap_or_default();
    let failed_rev = revision(failed);
    let Some(target) = sets
        .iter()
        .filter(|r| r.metadata.uid != failed.metadata.uid && was_available(r).is_some())
        .max_by_key(|r| revision(r))
    else {
        tracing::debug!(deployment = %name, "no available revision to roll back to");
        return Ok(Action::requeue(Duration::from_secs(5)));
    };
    let Some(template) = target.spec.as_ref().and_then(|s| s.template.as_ref()) else {
        return Ok(Action::requeue(Duration::from_secs(5)));
    };
    let target_rev = revision(target);
    let message = format!("Rolled back from revision {failed_rev} to revision {target_rev}: {why}");
    let failed_name = failed.metadata.name.clone().unwrap_or_default();
    let rs_api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    let patch =
        json!({"metadata": {"annotations": {ROLLBACK_REASON: reason, ROLLBACK_MESSAGE: message}}});
    rs_api
        .patch(&failed_name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(api_err(format!(
            "marking replicaset {ns}/{failed_name} as rolled back"
        )))?;
    // Replace the template whole (a merge would keep what the failed one added), guarded by
    // the resourceVersion this decision was made on.
    let mut next = d.clone();
    next.metadata.managed_fields = None;
    if let Some(spec) = next.spec.as_mut() {
        spec.template = without_hash(template);
    }
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    match deployments
        .replace(&name, &PostParams::default(), &next)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {
            return Ok(Action::requeue(Duration::from_millis(200)))
        }
        Err(e) => return Err(api_err(format!("rolling back deployment {ns}/{name}"))(e)),
    }
    crate::util::record(
        &ctx.client,
        involved("Deployment", &d.metadata),
        "Warning",
        "AutoRollback",
        &message,
        COMPONENT,
    );
    Ok(Action::requeue(Duration::from_secs(1)))
}
