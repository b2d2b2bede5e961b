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

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use serde_json::{json, Value};

use crate::api_err;
use crate::events::{involved, record};
use crate::ownership::{claim, controlled_by, controller_ref};
use crate::status::{status_changed, write_status};
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
pub(crate) fn scaled(v: Option<&IntOrString>, total: i32, default_pct: i32, round_up: bool) -> i32 {
    let pct = match v {
        Some(IntOrString::Int(n)) => return (*n).max(0),
        Some(IntOrString::String(s)) => s.trim_end_matches('%').parse().unwrap_or(default_pct),
        None => default_pct,
    };
    let x = total as i64 * pct as i64;
    (if round_up { (x + 99) / 100 } else { x / 100 }) as i32
}

/// What one pass over a Deployment decided: writes in the order the executor makes them,
/// and when to look again (`None`: on the next change).
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub writes: Vec<Write>,
    pub requeue: Option<Duration>,
}

/// One write of a [`Plan`]. The executor records the Event that goes with a write only once
/// the write succeeded.
#[derive(Debug, Clone)]
pub enum Write {
    /// An older set whose template is the Deployment's again becomes the newest revision
    /// (a rollback by template).
    Promote { set: String, revision: i64 },
    /// The set for a template no set has yet, with the replicas it starts with.
    Create(Box<ReplicaSet>),
    /// The Deployment's revision annotation, written through status (as Kubernetes does) so
    /// that `generation` does not move.
    Revision(String),
    /// A set's replicas, with the Deployment's desired and largest total in its annotations.
    Scale {
        set: String,
        from: i32,
        to: i32,
        desired: i32,
        max: i32,
    },
    /// An old, empty set beyond the revision history limit.
    Delete(String),
    /// The Deployment's status, merged into its status subresource.
    Status(Value),
    /// The set's rollout completed at `at`: a target for rolling back, never rolled back from.
    MarkAvailable { set: String, at: Timestamp },
    /// The set an automatic rollback leaves, with the reason and message of its RolledBack
    /// condition.
    MarkRolledBack {
        set: String,
        reason: String,
        message: String,
    },
    /// The Deployment with an earlier template put back whole (a merge would keep what the
    /// failed template added), guarded by the resourceVersion the plan was made on;
    /// `message` goes in the AutoRollback Event.
    Replace {
        deployment: Box<Deployment>,
        message: String,
    },
}

impl Plan {
    fn then(writes: Vec<Write>, requeue: Duration) -> Plan {
        Plan {
            writes,
            requeue: Some(requeue),
        }
    }
}

/// How far a rollout may go beyond and below `replicas`, as the strategy says: `surge`
/// more pods at most, `unavailable` fewer available at most. Recreate is no surge and
/// everything unavailable; a RollingUpdate that allows neither allows one unavailable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub rolling: bool,
    pub surge: i32,
    pub unavailable: i32,
}

impl Limits {
    pub fn of(spec: &DeploymentSpec, replicas: i32) -> Limits {
        let rolling = spec
            .strategy
            .as_ref()
            .and_then(|s| s.type_.as_deref())
            .unwrap_or("RollingUpdate")
            == "RollingUpdate";
        if !rolling {
            return Limits {
                rolling,
                surge: 0,
                unavailable: replicas,
            };
        }
        let ru = spec
            .strategy
            .as_ref()
            .and_then(|s| s.rolling_update.as_ref());
        let surge = scaled(ru.and_then(|r| r.max_surge.as_ref()), replicas, 25, true);
        let unavailable = scaled(
            ru.and_then(|r| r.max_unavailable.as_ref()),
            replicas,
            25,
            false,
        );
        Limits {
            rolling,
            surge,
            unavailable: if surge == 0 && unavailable == 0 {
                1
            } else {
                unavailable
            },
        }
    }
}

/// Decide one pass over a Deployment from what the caches show: `sets` are the ReplicaSets
/// it controls, `pods` (only read with automatic rollback on) any pods of theirs. Pure.
/// What a Deployment that opted into rebalancing (`berth.dev/rebalance: "true"`) has on
/// virtual nodes, and whether a real node has room for one more of its pods.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Burst {
    /// Its pods on virtual nodes.
    pub on_virtual: i32,
    /// A real node has room for one more of its pods.
    pub room: bool,
}

/// The annotation that opts a Deployment into moving burst pods back to real nodes.
pub const REBALANCE: &str = "berth.dev/rebalance";

pub fn plan(
    d: &Deployment,
    sets: &[Arc<ReplicaSet>],
    pods: &[Arc<Pod>],
    burst: Burst,
    now: Timestamp,
) -> Result<Plan, Error> {
    let meta = &d.metadata;
    let (ns, name) = (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    );
    if meta.deletion_timestamp.is_some() {
        return Ok(Plan::default());
    }
    let spec = d.spec.as_ref().ok_or_else(|| Error::Invalid {
        what: "deployment",
        name: name.clone(),
        why: "has no spec".into(),
    })?;
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let mut sets: Vec<Arc<ReplicaSet>> = sets
        .iter()
        .filter(|r| r.metadata.deletion_timestamp.is_none())
        .cloned()
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
    let Limits {
        rolling,
        surge,
        unavailable,
    } = Limits::of(spec, replicas);

    // The set for the current template: create it, or make it the newest revision again
    // (a rollback to an old template).
    let new_rs: Option<Arc<ReplicaSet>> = match current {
        Some(i) => {
            let rs = sets[i].clone();
            if revision(&rs) < max_revision && !paused {
                let promote = Write::Promote {
                    set: rs.metadata.name.clone().unwrap_or_default(),
                    revision: max_revision + 1,
                };
                return Ok(Plan::then(vec![promote], Duration::from_secs(1)));
            }
            Some(rs)
        }
        None if paused => None,
        None => {
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
            let rs = new_set(d, spec, &hash, max_revision + 1, start, replicas + surge)?;
            // Continue once the cache holds it.
            return Ok(Plan::then(
                vec![Write::Create(Box::new(rs))],
                Duration::from_millis(200),
            ));
        }
    };
    let mut writes = Vec::new();

    // The deployment carries its current revision, as kubectl rollout expects.
    if let Some(rev) = new_rs.as_ref().map(|r| revision(r).to_string()) {
        if meta.annotations.as_ref().and_then(|a| a.get(REVISION)) != Some(&rev) {
            writes.push(Write::Revision(rev));
        }
    }

    let new_uid = new_rs.as_ref().and_then(|r| r.metadata.uid.clone());
    let is_new = |r: &ReplicaSet| r.metadata.uid == new_uid && new_uid.is_some();
    let mut targets: Vec<(Arc<ReplicaSet>, i32)> =
        sets.iter().map(|r| (r.clone(), spec_replicas(r))).collect();
    if let (false, Some(new_rs)) = (paused, &new_rs) {
        let old_pods: i32 = sets
            .iter()
            .filter(|r| !is_new(r))
            .map(|r| status_of(r).0)
            .sum();
        let total: i32 = targets.iter().map(|t| t.1).sum();
        // Rebalancing, once rolled out: one pod more (it lands on the real node with room),
        // and once it is available, one fewer, which the ReplicaSet takes from a virtual node
        // first: never fewer available than `replicas`, one pod at a time.
        let settled = old_pods == 0 && targets.iter().all(|t| is_new(&t.0) || t.1 == 0);
        let available = status_of(new_rs).2;
        // The set's counts are of its current spec only once it has observed it: a count
        // from before its last scale would let a move end (or start) twice.
        let fresh = match (
            new_rs.status.as_ref().and_then(|s| s.observed_generation),
            new_rs.metadata.generation,
        ) {
            (Some(seen), Some(generation)) => seen >= generation,
            (None, Some(_)) => false,
            (_, None) => true,
        };
        let rebalance = rolling && settled && burst.on_virtual > 0;
        let new_target = if rolling {
            let cur = spec_replicas(new_rs);
            // Start one move (room, all available), or wait for the one under way.
            let start = fresh && cur == replicas && burst.room && available >= replicas;
            let under_way = cur == replicas + 1 && (!fresh || available < replicas + 1);
            if rebalance && (start || under_way) {
                replicas + 1
            } else if cur > replicas {
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
        if rolling {
            scale_down_old(&mut targets, &is_new, replicas - unavailable);
        } else {
            for t in targets.iter_mut().filter(|t| !is_new(&t.0)) {
                t.1 = 0;
            }
        }
    }
    let mut changed = false;
    for (rs, target) in &targets {
        let from = spec_replicas(rs);
        if from != *target {
            changed = true;
            writes.push(Write::Scale {
                set: rs.metadata.name.clone().unwrap_or_default(),
                from,
                to: *target,
                desired: replicas,
                max: replicas + surge,
            });
        }
    }

    // Old, empty sets beyond the history limit go.
    let limit = spec.revision_history_limit.unwrap_or(10).max(0) as usize;
    let empty_old: Vec<&Arc<ReplicaSet>> = sets
        .iter()
        .filter(|r| !is_new(r) && spec_replicas(r) == 0 && status_of(r).0 == 0)
        .collect();
    if empty_old.len() > limit {
        for rs in &empty_old[..empty_old.len() - limit] {
            writes.push(Write::Delete(rs.metadata.name.clone().unwrap_or_default()));
        }
    }

    let progress = status(d, &sets, new_rs.as_deref(), replicas, unavailable, now);
    if let Some(status) = progress.write {
        writes.push(Write::Status(status));
    }

    let Some(new_rs) = new_rs else {
        return Ok(Plan::then(writes, Duration::from_secs(300)));
    };
    if progress.complete {
        if was_available(&new_rs).is_none() {
            writes.push(Write::MarkAvailable {
                set: new_rs.metadata.name.clone().unwrap_or_default(),
                at: now,
            });
        }
    } else if auto_rollback_on(d) && !paused && was_available(&new_rs).is_none() {
        let why = if progress.timed_out {
            Some((
                DEADLINE_EXCEEDED.to_string(),
                format!(
                    "its new pods did not become available within {}s",
                    progress.deadline
                ),
            ))
        } else {
            crash_looping(pods, &new_rs)
        };
        if let Some((reason, why)) = why {
            return Ok(match roll_back(d, &sets, &new_rs, &reason, &why) {
                Some(rollback) => {
                    writes.extend(rollback);
                    Plan::then(writes, Duration::from_secs(1))
                }
                None => {
                    tracing::debug!(deployment = %format!("{ns}/{name}"), "no available revision to roll back to");
                    Plan::then(writes, Duration::from_secs(5))
                }
            });
        }
    }
    let requeue = if changed {
        Duration::from_secs(1)
    } else if !progress.complete || burst.on_virtual > 0 {
        // Soon enough to see a crash loop, and a deadline, within a couple of seconds; and
        // room that returns on a real node, for pods to move back to.
        Duration::from_secs(2)
    } else {
        Duration::from_secs(300)
    };
    Ok(Plan::then(writes, requeue))
}

/// Scale the old sets of a rolling update down, oldest first, as Kubernetes does: first
/// what of them is not available (that costs no availability), then available pods while
/// more than `min_available` stay available. Never more in all than the replicas asked for
/// beyond `min_available` and the new set's unavailable pods. `targets` holds each set's
/// replicas, the new set's already raised.
///
/// Counts are of replicas asked for, and a set's pods past its replicas count as gone: a
/// ReplicaSet controller that has not yet caught up with an earlier scale-down must not
/// make it look as if there were pods to spare (the property test with a late controller
/// found exactly that).
fn scale_down_old(
    targets: &mut [(Arc<ReplicaSet>, i32)],
    is_new: &dyn Fn(&ReplicaSet) -> bool,
    min_available: i32,
) {
    let available = |rs: &ReplicaSet| status_of(rs).2;
    let asked: i32 = targets.iter().map(|t| t.1).sum();
    let new_unavailable: i32 = targets
        .iter()
        .filter(|t| is_new(&t.0))
        .map(|t| (t.1 - available(&t.0)).max(0))
        .sum();
    let mut room = asked - min_available - new_unavailable;
    for t in targets.iter_mut().filter(|t| !is_new(&t.0)) {
        let unhealthy = (t.1 - available(&t.0)).clamp(0, room.max(0));
        t.1 -= unhealthy;
        room -= unhealthy;
    }
    let mut spare = targets
        .iter()
        .map(|(rs, n)| (*n).min(available(rs)))
        .sum::<i32>()
        - min_available;
    for t in targets.iter_mut().filter(|t| !is_new(&t.0)) {
        let down = t.1.min(room).min(spare).max(0);
        t.1 -= down;
        room -= down;
        spare -= down;
    }
}

/// The ReplicaSet for a template no set has yet: named and labelled with its hash, owned
/// by the Deployment, at revision `revision` with `start` replicas.
fn new_set(
    d: &Deployment,
    spec: &DeploymentSpec,
    hash: &str,
    revision: i64,
    start: i32,
    max: i32,
) -> Result<ReplicaSet, Error> {
    let meta = &d.metadata;
    let name = meta.name.clone().unwrap_or_default();
    let mut template = spec.template.clone();
    let labels = template
        .metadata
        .get_or_insert_with(Default::default)
        .labels
        .get_or_insert_with(BTreeMap::new);
    labels.insert(HASH_LABEL.into(), hash.to_string());
    let labels = labels.clone();
    let mut selector = spec.selector.clone();
    selector
        .match_labels
        .get_or_insert_with(BTreeMap::new)
        .insert(HASH_LABEL.into(), hash.to_string());
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let rs = json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {
            "name": format!("{name}-{hash}"), "namespace": meta.namespace, "labels": labels,
            "annotations": {REVISION: revision.to_string(),
                "deployment.kubernetes.io/desired-replicas": replicas.to_string(),
                "deployment.kubernetes.io/max-replicas": max.to_string()},
            "ownerReferences": [controller_ref("apps/v1", "Deployment", meta)],
        },
        "spec": {"replicas": start, "minReadySeconds": spec.min_ready_seconds.unwrap_or(0),
                 "selector": selector, "template": template},
    });
    serde_json::from_value(rs).map_err(|e| Error::Invalid {
        what: "deployment",
        name,
        why: format!("its template does not make a ReplicaSet: {e}"),
    })
}

/// The Deployment's status as the sets show it, and how its rollout stands.
struct Progress {
    /// The status to write, if it differs from the stored one in more than timestamps.
    write: Option<Value>,
    complete: bool,
    timed_out: bool,
    /// `progressDeadlineSeconds`.
    deadline: i64,
}

fn status(
    d: &Deployment,
    sets: &[Arc<ReplicaSet>],
    new_rs: Option<&ReplicaSet>,
    replicas: i32,
    unavailable: i32,
    now_ts: Timestamp,
) -> Progress {
    let spec = d.spec.as_ref();
    let paused = spec.and_then(|s| s.paused).unwrap_or(false);
    let (mut have, mut ready, mut available) = (0, 0, 0);
    for r in sets {
        let (h, rd, a) = status_of(r);
        have += h;
        ready += rd;
        available += a;
    }
    let updated = new_rs.map(|r| status_of(r).0).unwrap_or(0);
    let new_name = new_rs
        .and_then(|r| r.metadata.name.clone())
        .unwrap_or_default();
    let complete = updated == replicas && have == replicas && available >= replicas;
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
    let deadline = i64::from(
        spec.and_then(|s| s.progress_deadline_seconds)
            .unwrap_or(600)
            .max(0),
    );
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
    let (available_ok, available_reason, available_message) = if available >= min_available {
        (
            true,
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.",
        )
    } else {
        (
            false,
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
        )
    };
    let mut conditions = vec![
        condition(
            "Available",
            available_ok,
            available_reason,
            available_message.into(),
            false,
        ),
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
        .filter(|r| new_rs.is_some_and(|n| revision(n) > revision(r)))
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
        "observedGeneration": d.metadata.generation,
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
    Progress {
        write: status_changed(&old, &status, &fields).then_some(status),
        complete,
        timed_out,
        deadline,
    }
}

pub async fn reconcile(d: Arc<Deployment>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.synced().await?;
    if d.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = d.metadata.namespace.clone().unwrap_or_default();
    let sets = claim(
        &Api::<ReplicaSet>::namespaced(ctx.client.clone(), &ns),
        ("apps/v1", "Deployment", &d.metadata),
        &Api::<Deployment>::namespaced(ctx.client.clone(), &ns),
        d.spec.as_ref().map(|s| &s.selector),
        &ctx.replicasets,
    )
    .await?;
    // Pods are read only to see a new set's crash loop, with automatic rollback on.
    let pods: Vec<Arc<Pod>> = if auto_rollback_on(&d) {
        let uids: Vec<&str> = sets
            .iter()
            .filter_map(|r| r.metadata.uid.as_deref())
            .collect();
        ctx.pods
            .state()
            .into_iter()
            .filter(|p| uids.iter().any(|u| controlled_by(&p.metadata, u)))
            .collect()
    } else {
        Vec::new()
    };
    let burst = burst(&d, &sets, &ctx);
    let plan = plan(&d, &sets, &pods, burst, Timestamp::now())?;
    execute(&ctx, &d, plan).await
}

/// CPU (millicores) and memory (bytes) a pod requests.
fn requests(spec: Option<&k8s_openapi::api::core::v1::PodSpec>) -> (u64, u64) {
    let mut out = (0, 0);
    for c in spec.into_iter().flat_map(|s| s.containers.iter()) {
        let r = c.resources.as_ref().and_then(|r| r.requests.as_ref());
        let get = |k: &str| r.and_then(|r| r.get(k)).map(|q| q.0.as_str());
        out.0 += get("cpu")
            .and_then(berth_core::quantity::cpu_millis)
            .unwrap_or(0);
        out.1 += get("memory")
            .and_then(berth_core::quantity::bytes)
            .unwrap_or(0);
    }
    out
}

/// For a Deployment that opted into rebalancing: its pods on virtual nodes, and whether a
/// schedulable, Ready real node has the CPU, memory and pod room for one more of its pods
/// (the scheduler still decides; a pod that lands on a virtual node anyway is taken back).
fn burst(d: &Deployment, sets: &[Arc<ReplicaSet>], ctx: &Context) -> Burst {
    let on = d
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REBALANCE))
        .is_some_and(|v| v == "true");
    if !on {
        return Burst::default();
    }
    let nodes = ctx.nodes.state();
    let virtual_node = |name: &str| {
        nodes
            .iter()
            .any(|n| n.metadata.name.as_deref() == Some(name) && crate::replicaset::is_virtual(n))
    };
    let uids: Vec<&str> = sets
        .iter()
        .filter_map(|r| r.metadata.uid.as_deref())
        .collect();
    let pods = ctx.pods.state();
    let on_virtual = pods
        .iter()
        .filter(|p| uids.iter().any(|u| controlled_by(&p.metadata, u)))
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .is_some_and(virtual_node)
        })
        .count() as i32;
    let want = requests(d.spec.as_ref().and_then(|s| s.template.spec.as_ref()));
    let room = on_virtual > 0
        && nodes.iter().any(|n| {
            let name = n.metadata.name.as_deref().unwrap_or_default();
            let spec = n.spec.as_ref();
            let status = n.status.as_ref();
            let ready = status
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            if crate::replicaset::is_virtual(n)
                || !ready
                || spec.and_then(|s| s.unschedulable) == Some(true)
            {
                return false;
            }
            let alloc = status.and_then(|s| s.allocatable.as_ref());
            let amount = |k: &str, parse: fn(&str) -> Option<u64>| {
                alloc
                    .and_then(|a| a.get(k))
                    .and_then(|q| parse(&q.0))
                    .unwrap_or(0)
            };
            let mut used = (0u64, 0u64, 0u64);
            for p in pods.iter().filter(|p| {
                p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name)
                    && !matches!(
                        p.status.as_ref().and_then(|s| s.phase.as_deref()),
                        Some("Succeeded" | "Failed")
                    )
            }) {
                let (c, m) = requests(p.spec.as_ref());
                used = (used.0 + c, used.1 + m, used.2 + 1);
            }
            let (cpu, mem) = (
                amount("cpu", berth_core::quantity::cpu_millis),
                amount("memory", berth_core::quantity::bytes),
            );
            let pods_max = amount("pods", |q| q.parse().ok());
            used.0 + want.0 <= cpu && used.1 + want.1 <= mem && used.2 < pods_max
        });
    Burst { on_virtual, room }
}

/// Make a plan's writes in order, each Event after its write; a create or replace that lost
/// a race looks again shortly.
async fn execute(ctx: &Context, d: &Deployment, plan: Plan) -> Result<Action, Error> {
    let ns = d.metadata.namespace.clone().unwrap_or_default();
    let name = d.metadata.name.clone().unwrap_or_default();
    let sets: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let event = |type_: &str, reason: &str, message: &str| {
        record(
            &ctx.client,
            involved("Deployment", &d.metadata),
            type_,
            reason,
            message,
            COMPONENT,
        )
    };
    let lost_race = Action::requeue(Duration::from_millis(200));
    let merge = |patch: Value| Patch::Merge(patch);
    // Berth's and Kubernetes' annotations on a set: what the set is (`as ...`).
    let annotate = |set: &str, notes: Value, what: &'static str| {
        let (sets, set) = (&sets, set.to_string());
        let patch = merge(json!({"metadata": {"annotations": notes}}));
        let doing = format!("marking replicaset {ns}/{set} {what}");
        async move {
            sets.patch(&set, &PatchParams::default(), &patch)
                .await
                .map(drop)
                .map_err(api_err(doing))
        }
    };
    for write in plan.writes {
        match write {
            Write::Promote { set, revision } => {
                let notes = json!({REVISION: revision.to_string()});
                annotate(&set, notes, "as the newest revision").await?;
                event(
                    "Normal",
                    "DeploymentRollback",
                    &format!("Rolled back deployment {name} to replica set {set}"),
                );
            }
            Write::Create(rs) => {
                let set = rs.metadata.name.clone().unwrap_or_default();
                let start = spec_replicas(&rs);
                match sets.create(&PostParams::default(), &rs).await {
                    Ok(_) => event(
                        "Normal",
                        "ScalingReplicaSet",
                        &format!("Scaled up replica set {set} from 0 to {start}"),
                    ),
                    Err(kube::Error::Api(s)) if s.code == 409 => return Ok(lost_race),
                    Err(e) => return Err(api_err(format!("creating replicaset {ns}/{set}"))(e)),
                }
            }
            Write::Revision(rev) => {
                let patch = json!({"metadata": {"annotations": {REVISION: rev}}});
                deployments
                    .patch_status(&name, &PatchParams::default(), &merge(patch))
                    .await
                    .map_err(api_err(format!(
                        "annotating deployment {ns}/{name} with its revision"
                    )))?;
            }
            Write::Scale {
                set,
                from,
                to,
                desired,
                max,
            } => {
                let patch = json!({
                    "metadata": {"annotations": {
                        "deployment.kubernetes.io/desired-replicas": desired.to_string(),
                        "deployment.kubernetes.io/max-replicas": max.to_string()}},
                    "spec": {"replicas": to},
                });
                sets.patch(&set, &PatchParams::default(), &merge(patch))
                    .await
                    .map_err(api_err(format!("scaling replicaset {ns}/{set}")))?;
                let verb = if to > from { "up" } else { "down" };
                event(
                    "Normal",
                    "ScalingReplicaSet",
                    &format!("Scaled {verb} replica set {set} from {from} to {to}"),
                );
            }
            Write::Delete(set) => {
                if let Err(e) = sets.delete(&set, &DeleteParams::background()).await {
                    tracing::debug!(replicaset = %format!("{ns}/{set}"), error = %e, "old replicaset not deleted; the next pass tries again");
                }
            }
            Write::Status(status) => {
                write_status(
                    &deployments,
                    &name,
                    status,
                    &format!("deployment {ns}/{name}"),
                )
                .await?
            }
            Write::MarkAvailable { set, at } => {
                annotate(&set, json!({AVAILABLE: at.to_string()}), "as available").await?;
            }
            Write::MarkRolledBack {
                set,
                reason,
                message,
            } => {
                let notes = json!({ROLLBACK_REASON: reason, ROLLBACK_MESSAGE: message});
                annotate(&set, notes, "as rolled back").await?;
            }
            Write::Replace {
                deployment,
                message,
            } => {
                match deployments
                    .replace(&name, &PostParams::default(), &deployment)
                    .await
                {
                    Ok(_) => event("Warning", "AutoRollback", &message),
                    Err(kube::Error::Api(s)) if s.code == 409 => return Ok(lost_race),
                    Err(e) => {
                        return Err(api_err(format!("rolling back deployment {ns}/{name}"))(e))
                    }
                }
            }
        }
    }
    Ok(plan
        .requeue
        .map_or_else(Action::await_change, Action::requeue))
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

/// A pod of `rs` whose container waits for a reason that will not clear by itself.
fn crash_looping(pods: &[Arc<Pod>], rs: &ReplicaSet) -> Option<(String, String)> {
    let uid = rs.metadata.uid.as_deref()?;
    pods.iter().find_map(|p| {
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
/// would, and mark the failed set with why; `None` when no set was ever available.
fn roll_back(
    d: &Deployment,
    sets: &[Arc<ReplicaSet>],
    failed: &ReplicaSet,
    reason: &str,
    why: &str,
) -> Option<Vec<Write>> {
    let target = sets
        .iter()
        .filter(|r| r.metadata.uid != failed.metadata.uid && was_available(r).is_some())
        .max_by_key(|r| revision(r))?;
    let template = target.spec.as_ref()?.template.as_ref()?;
    let message = format!(
        "Rolled back from revision {} to revision {}: {why}",
        revision(failed),
        revision(target)
    );
    let mut next = d.clone();
    next.metadata.managed_fields = None;
    if let Some(spec) = next.spec.as_mut() {
        spec.template = without_hash(template);
    }
    Some(vec![
        Write::MarkRolledBack {
            set: failed.metadata.name.clone().unwrap_or_default(),
            reason: reason.to_string(),
            message: message.clone(),
        },
        Write::Replace {
            deployment: Box::new(next),
            message,
        },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn deployment(replicas: i32, surge: i32, unavailable: i32, image: &str) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "d-uid", "generation": 1},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"type": "RollingUpdate",
                             "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}},
                "template": {"metadata": {"labels": {"app": "web"}},
                             "spec": {"containers": [{"name": "c", "image": image}]}},
            },
        }))
        .unwrap()
    }

    /// One ReplicaSet of a simulated cluster and its pods (`true`: available).
    struct SimSet {
        rs: ReplicaSet,
        pods: Vec<bool>,
    }

    /// A cluster the plans are carried out in: the ReplicaSet controller and the kubelets
    /// are simulated, a little late at times, and pods become available at random.
    struct World {
        d: Deployment,
        sets: Vec<SimSet>,
        now: Timestamp,
        uids: u32,
        rng: u64,
    }

    impl World {
        fn coin(&mut self, percent: u64) -> bool {
            // xorshift64: deterministic per proptest case.
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            self.rng % 100 < percent
        }

        /// The sets as the Deployment controller's cache shows them.
        fn observed(&self) -> Vec<Arc<ReplicaSet>> {
            self.sets
                .iter()
                .map(|s| {
                    let mut rs = s.rs.clone();
                    let available = s.pods.iter().filter(|a| **a).count() as i32;
                    rs.status = Some(
                        serde_json::from_value(json!({
                        "replicas": s.pods.len(), "readyReplicas": available,
                        "availableReplicas": available}))
                        .unwrap(),
                    );
                    Arc::new(rs)
                })
                .collect()
        }

        fn set(&mut self, name: &str) -> &mut SimSet {
            self.sets
                .iter_mut()
                .find(|s| s.rs.metadata.name.as_deref() == Some(name))
                .expect("a planned write names a set that exists")
        }

        fn apply(&mut self, plan: Plan) {
            for w in plan.writes {
                match w {
                    Write::Create(mut rs) => {
                        self.uids += 1;
                        rs.metadata.uid = Some(format!("rs-{}", self.uids));
                        self.sets.push(SimSet {
                            rs: *rs,
                            pods: vec![],
                        });
                    }
                    Write::Promote { set, revision } => {
                        self.set(&set)
                            .rs
                            .metadata
                            .annotations
                            .get_or_insert_with(Default::default)
                            .insert(REVISION.into(), revision.to_string());
                    }
                    Write::Revision(rev) => {
                        self.d
                            .metadata
                            .annotations
                            .get_or_insert_with(Default::default)
                            .insert(REVISION.into(), rev);
                    }
                    Write::Scale { set, to, .. } => {
                        self.set(&set).rs.spec.as_mut().unwrap().replicas = Some(to)
                    }
                    Write::Delete(set) => self
                        .sets
                        .retain(|s| s.rs.metadata.name.as_deref() != Some(&set)),
                    Write::Status(v) => self.d.status = Some(serde_json::from_value(v).unwrap()),
                    Write::MarkAvailable { set, at } => {
                        self.set(&set)
                            .rs
                            .metadata
                            .annotations
                            .get_or_insert_with(Default::default)
                            .insert(AVAILABLE.into(), at.to_string());
                    }
                    w @ (Write::MarkRolledBack { .. } | Write::Replace { .. }) => {
                        panic!("no automatic rollback was asked for, yet the plan has {w:?}")
                    }
                }
            }
        }

        /// The ReplicaSet controller (which gives up unavailable pods first), skipping a set
        /// now and then, as a late cache would.
        fn replicasets(&mut self, late_percent: u64) {
            for i in 0..self.sets.len() {
                if self.coin(late_percent) {
                    continue;
                }
                let s = &mut self.sets[i];
                let want = s.rs.spec.as_ref().unwrap().replicas.unwrap_or(0).max(0) as usize;
                s.pods.sort();
                while s.pods.len() > want {
                    s.pods.remove(0);
                }
                s.pods.resize(want, false);
            }
        }

        fn kubelets(&mut self, ready_percent: u64) {
            for i in 0..self.sets.len() {
                for j in 0..self.sets[i].pods.len() {
                    if !self.sets[i].pods[j] && self.coin(ready_percent) {
                        self.sets[i].pods[j] = true;
                    }
                }
            }
        }

        fn pods(&self) -> (i32, i32) {
            let all = self.sets.iter().map(|s| s.pods.len() as i32).sum();
            let available = self
                .sets
                .iter()
                .flat_map(|s| &s.pods)
                .filter(|a| **a)
                .count() as i32;
            (all, available)
        }

        fn spec_total(&self) -> i32 {
            self.sets
                .iter()
                .map(|s| s.rs.spec.as_ref().unwrap().replicas.unwrap_or(0))
                .sum()
        }

        fn step(&mut self) {
            let plan = plan(&self.d, &self.observed(), &[], Burst::default(), self.now).unwrap();
            self.apply(plan);
            self.now += jiff::SignedDuration::from_secs(1);
        }

        /// A Deployment rolled out whole on `image`, then changed to another template.
        fn rolled_out(replicas: i32, surge: i32, unavailable: i32, seed: u64) -> World {
            let mut w = World {
                d: deployment(replicas, surge, unavailable, "v1"),
                sets: vec![],
                now: Timestamp::from_second(1_800_000_000).unwrap(),
                uids: 0,
                rng: seed | 1,
            };
            for _ in 0..100 {
                w.step();
                w.replicasets(0);
                w.kubelets(100);
            }
            assert_eq!(
                w.pods(),
                (replicas, replicas),
                "the first rollout completes"
            );
            w.d.spec.as_mut().unwrap().template = deployment(1, 0, 1, "v2").spec.unwrap().template;
            w
        }
    }

    /// The strategy's limits, worked out here apart from `Limits::of`.
    fn bounds(replicas: i32, surge: i32, unavailable: i32) -> (i32, i32) {
        let unavailable = if surge == 0 && unavailable == 0 {
            1
        } else {
            unavailable
        };
        (replicas + surge, replicas - unavailable.min(replicas))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(600))]

        /// A rolling update never asks for more than `replicas + maxSurge` replicas nor has
        /// fewer than `replicas - maxUnavailable` available, whether the ReplicaSet
        /// controller is prompt (`late_percent` 0: then the pods never pass the surge either,
        /// and the rollout completes once they come up) or late now and then (the
        /// Deployment controller sees replicas asked for before the pods follow).
        #[test]
        fn a_rollout_keeps_within_surge_and_unavailable(
            replicas in 1i32..12,
            surge in 0i32..4,
            unavailable in 0i32..4,
            ready_percent in 10u64..100,
            late_percent in prop_oneof![Just(0u64), 10u64..60],
            seed in any::<u64>(),
        ) {
            let mut w = World::rolled_out(replicas, surge, unavailable, seed);
            let (most, least_available) = bounds(replicas, surge, unavailable);
            let prompt = late_percent == 0;
            for _ in 0..200 {
                w.step();
                prop_assert!(w.spec_total() <= most, "{} replicas asked for, at most {most}", w.spec_total());
                w.replicasets(late_percent);
                let (all, available) = w.pods();
                prop_assert!(!prompt || all <= most, "{all} pods, at most {most}");
                prop_assert!(available >= least_available, "{available} available, at least {least_available}");
                w.kubelets(ready_percent);
            }
            if prompt {
                let newest = w.sets.iter().max_by_key(|s| revision(&s.rs)).unwrap();
                prop_assert_eq!(newest.pods.len() as i32, replicas);
                prop_assert_eq!(w.pods(), (replicas, replicas));
            }
        }
    }

    /// What the late-controller property found: an old set asked down to 8 that still has 9
    /// pods, beside a new pod not yet available. Counting the ninth pod as spare would take
    /// availability to 7 of 9 with maxUnavailable 1.
    #[test]
    fn pods_past_an_old_sets_replicas_are_not_spare() {
        let mut w = World::rolled_out(9, 0, 1, 1);
        w.step(); // the new set, at 0
        w.step(); // old 9 -> 8 (one may be unavailable)
        let old = w.sets[0].rs.metadata.name.clone().unwrap();
        assert_eq!(w.set(&old).rs.spec.as_ref().unwrap().replicas, Some(8));
        w.step(); // new 0 -> 1; its pod is created, the old set's controller is late
        let new = w.sets[1].rs.metadata.name.clone().unwrap();
        w.set(&new).pods = vec![false];
        assert_eq!(w.set(&old).pods.len(), 9);
        let p = plan(&w.d, &w.observed(), &[], Burst::default(), w.now).unwrap();
        assert!(
            !p.writes
                .iter()
                .any(|w| matches!(w, Write::Scale { set, .. } if *set == old)),
            "{:?}",
            p.writes
        );
    }

    #[test]
    fn a_new_template_gets_a_new_set_at_the_next_revision_with_the_surge() {
        let mut w = World::rolled_out(4, 1, 0, 7);
        let p = plan(&w.d, &w.observed(), &[], Burst::default(), w.now).unwrap();
        let [Write::Create(rs)] = p.writes.as_slice() else {
            panic!("one create, got {:?}", p.writes);
        };
        assert_eq!(revision(rs), 2);
        assert_eq!(spec_replicas(rs), 1, "replicas + maxSurge - 4 running");
        let hash = template_hash(&w.d.spec.as_ref().unwrap().template);
        assert_eq!(
            rs.metadata.name.as_deref(),
            Some(format!("web-{hash}").as_str())
        );
        assert!(controlled_by(&rs.metadata, "d-uid"));
        w.apply(p);
        assert_eq!(w.sets.len(), 2);
    }

    #[test]
    fn going_back_to_an_old_template_promotes_its_set_instead_of_creating_one() {
        let mut w = World::rolled_out(2, 1, 0, 3);
        for _ in 0..60 {
            w.step();
            w.replicasets(0);
            w.kubelets(100);
        }
        w.d.spec.as_mut().unwrap().template = deployment(1, 0, 1, "v1").spec.unwrap().template;
        let p = plan(&w.d, &w.observed(), &[], Burst::default(), w.now).unwrap();
        assert!(
            matches!(p.writes.as_slice(), [Write::Promote { revision: 3, .. }]),
            "{:?}",
            p.writes
        );
    }

    #[test]
    fn a_crash_looping_new_pod_rolls_back_to_the_last_available_template() {
        let mut w = World::rolled_out(2, 1, 0, 5);
        w.d.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(AUTO_ROLLBACK.into(), "true".into());
        w.step();
        w.replicasets(0);
        let new = w
            .observed()
            .into_iter()
            .max_by_key(|r| revision(r))
            .unwrap();
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web-x", "namespace": "default", "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "n",
                 "uid": new.metadata.uid, "controller": true}]},
            "status": {"containerStatuses": [{"name": "c", "image": "v2", "imageID": "",
                "ready": false, "restartCount": 2,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]},
        }))
        .unwrap();
        let p = plan(
            &w.d,
            &w.observed(),
            &[Arc::new(pod)],
            Burst::default(),
            w.now,
        )
        .unwrap();
        let back = p.writes.iter().find_map(|w| match w {
            Write::Replace {
                deployment,
                message,
            } => Some((deployment, message)),
            _ => None,
        });
        let (to, message) = back.expect("a rollback");
        let image = to
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
            .image
            .clone();
        assert_eq!(image.as_deref(), Some("v1"));
        assert!(
            message.contains("from revision 2 to revision 1"),
            "{message}"
        );
        assert!(message.contains("CrashLoopBackOff"), "{message}");
        assert!(p.writes.iter().any(
            |w| matches!(w, Write::MarkRolledBack { reason, .. } if reason == "CrashLoopBackOff")
        ));
    }

    #[test]
    fn a_paused_deployment_creates_and_scales_nothing() {
        let mut w = World::rolled_out(3, 1, 0, 11);
        w.d.spec.as_mut().unwrap().paused = Some(true);
        let p = plan(&w.d, &w.observed(), &[], Burst::default(), w.now).unwrap();
        assert!(
            p.writes
                .iter()
                .all(|w| matches!(w, Write::Status(_) | Write::Revision(_))),
            "{:?}",
            p.writes
        );
    }

    #[test]
    fn limits_round_surge_up_and_unavailable_down() {
        let mut d = deployment(10, 0, 0, "x");
        let ru = d.spec.as_mut().unwrap().strategy.as_mut().unwrap();
        ru.rolling_update.as_mut().unwrap().max_surge = Some(IntOrString::String("15%".into()));
        ru.rolling_update.as_mut().unwrap().max_unavailable =
            Some(IntOrString::String("15%".into()));
        let l = Limits::of(d.spec.as_ref().unwrap(), 10);
        assert_eq!((l.surge, l.unavailable), (2, 1));
        let none = deployment(10, 0, 0, "x");
        let l = Limits::of(none.spec.as_ref().unwrap(), 10);
        assert_eq!(
            (l.surge, l.unavailable),
            (0, 1),
            "neither allowed: one unavailable"
        );
    }

    #[test]
    fn rebalancing_moves_one_pod_at_a_time_and_never_drops_below_replicas() {
        // Rolled out whole on the second template first.
        let mut w = World::rolled_out(4, 1, 0, 7);
        for _ in 0..100 {
            w.step();
            w.replicasets(0);
            w.kubelets(100);
        }
        assert_eq!(
            (
                w.sets.iter().filter(|s| !s.pods.is_empty()).count(),
                w.pods()
            ),
            (1, (4, 4))
        );
        let burst = Burst {
            on_virtual: 2,
            room: true,
        };
        let target = |w: &World| w.spec_total();
        let step = |w: &mut World, burst: Burst| {
            let p = plan(&w.d, &w.observed(), &[], burst, w.now).unwrap();
            w.apply(p);
        };
        assert_eq!(target(&w), 4);
        // One more, which the scheduler puts on the real node with room.
        step(&mut w, burst);
        assert_eq!(target(&w), 5);
        w.replicasets(0);
        // It is not available yet: the set stays at one more.
        step(&mut w, burst);
        assert_eq!(target(&w), 5);
        assert!(w.pods().1 >= 4);
        w.kubelets(100);
        // Available: back to 4 (the ReplicaSet gives up a virtual-node pod first).
        step(&mut w, burst);
        assert_eq!(target(&w), 4);
        w.replicasets(0);
        assert_eq!(w.pods(), (4, 4));
        // No room on a real node, or nothing on a virtual one: nothing moves.
        step(
            &mut w,
            Burst {
                on_virtual: 1,
                room: false,
            },
        );
        assert_eq!(target(&w), 4);
        step(&mut w, Burst::default());
        assert_eq!(target(&w), 4);
    }
}
