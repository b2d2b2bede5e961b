//! The disruption controller: each PodDisruptionBudget's status, which the `pods/eviction`
//! subresource reads to allow or refuse an eviction.
//!
//! A budget counts the pods its selector picks in its namespace: those Ready and not going
//! away are healthy, and `disruptionsAllowed` is how many more than the budget needs. A budget
//! in percent, or one of `maxUnavailable`, is measured against the pods the workloads want
//! (the replicas of the pods' controllers), as Kubernetes does. Pods an eviction has just
//! taken from the budget (`disruptedPods`) do not count as healthy until they are gone, or
//! two minutes pass.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use serde_json::{json, Value};

use crate::deployment::scaled;
use crate::status::ready_since;
use crate::{Context, Error};

/// How long an evicted pod that is still there stays out of the healthy count.
const DISRUPTED_FOR: i64 = 120;

/// The status a budget should show, if it differs from the stored one, and when to look
/// again (an entry of `disruptedPods` running out).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub status: Option<Value>,
    pub requeue: Option<Duration>,
}

fn int_or_percent(v: &IntOrString, total: i32, round_up: bool) -> i32 {
    scaled(Some(v), total, 0, round_up)
}

/// Decide a budget's status from the pods its selector picks and what their controllers
/// want (`scale`: the sum of their replicas, or why it could not be read).
pub fn plan(
    pdb: &PodDisruptionBudget,
    pods: &[Arc<Pod>],
    scale: Result<i32, String>,
    now: Timestamp,
) -> Plan {
    let mut out = Plan::default();
    let spec = pdb.spec.clone().unwrap_or_default();
    let old = pdb.status.clone().unwrap_or_default();
    let live = |name: &str| {
        pods.iter().any(|p| {
            p.metadata.name.as_deref() == Some(name) && p.metadata.deletion_timestamp.is_none()
        })
    };
    let mut disrupted = BTreeMap::new();
    for (name, at) in old.disrupted_pods.iter().flatten() {
        let left = at.0.as_second() + DISRUPTED_FOR - now.as_second();
        if left > 0 && live(name) {
            disrupted.insert(name.clone(), at.0);
            let d = Duration::from_secs(left as u64);
            out.requeue = Some(out.requeue.map_or(d, |r| r.min(d)));
        }
    }
    let healthy = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| !disrupted.contains_key(p.metadata.name.as_deref().unwrap_or_default()))
        .filter(|p| ready_since(p).is_some())
        .count() as i32;
    let counted = pods.len() as i32;
    let sized = match (&spec.min_available, &spec.max_unavailable) {
        (Some(IntOrString::Int(n)), _) => Ok((counted, *n)),
        (Some(pct), _) => scale.map(|s| (s, int_or_percent(pct, s, true))),
        (None, Some(max)) => scale.map(|s| (s, (s - int_or_percent(max, s, true)).max(0))),
        (None, None) => Ok((counted, 0)),
    };
    let (expected, desired, allowed, condition) = match sized {
        Ok((expected, desired)) => {
            let allowed = (healthy - desired).max(0);
            let (status, reason) = if allowed > 0 {
                ("True", "SufficientPods")
            } else {
                ("False", "InsufficientPods")
            };
            (expected, desired, allowed, (status, reason, String::new()))
        }
        Err(why) => (0, 0, 0, ("False", "SyncFailed", why)),
    };
    let (cond_status, reason, message) = condition;
    let since = old
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "DisruptionAllowed" && c.status == cond_status)
        .map_or(now, |c| c.last_transition_time.0);
    let status = json!({
        "observedGeneration": pdb.metadata.generation.unwrap_or(0),
        "disruptedPods": if disrupted.is_empty() { Value::Null } else {
            json!(disrupted.iter().map(|(k, v)| (k.clone(), json!(v.to_string()))).collect::<serde_json::Map<_, _>>())
        },
        "disruptionsAllowed": allowed,
        "currentHealthy": healthy,
        "desiredHealthy": desired,
        "expectedPods": expected,
        "conditions": [{"type": "DisruptionAllowed", "status": cond_status, "reason": reason,
            "message": message, "observedGeneration": pdb.metadata.generation.unwrap_or(0),
            "lastTransitionTime": since.to_string()}],
    });
    let old_disrupted: BTreeMap<String, Timestamp> = old
        .disrupted_pods
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0))
        .collect();
    let old_cond = old
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "DisruptionAllowed")
        .map(|c| (c.status.clone(), c.reason.clone()));
    let changed = old.observed_generation != pdb.metadata.generation
        || old.disruptions_allowed != allowed
        || old.current_healthy != healthy
        || old.desired_healthy != desired
        || old.expected_pods != expected
        || old_disrupted != disrupted
        || old_cond != Some((cond_status.to_string(), reason.to_string()));
    if changed {
        out.status = Some(status);
    }
    out
}

/// The replicas the controllers of `pods` want, summed once per controller: a ReplicaSet's
/// Deployment's, else the controller's own `spec.replicas`.
async fn expected_scale(ctx: &Context, ns: &str, pods: &[Arc<Pod>]) -> Result<i32, String> {
    let mut seen = BTreeMap::new();
    for p in pods {
        let owner = p
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|r| r.controller == Some(true))
            .ok_or_else(|| {
                format!(
                    "found no controller for pod {:?}",
                    p.metadata.name.as_deref().unwrap_or_default()
                )
            })?;
        let mut key = (
            owner.api_version.clone(),
            owner.kind.clone(),
            owner.name.clone(),
        );
        if owner.kind == "ReplicaSet" {
            let rs = ctx.replicasets.get(&ObjectRef::new(&owner.name).within(ns));
            let deployment = rs.as_ref().and_then(|rs| {
                rs.metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .find(|r| r.controller == Some(true) && r.kind == "Deployment")
                    .cloned()
            });
            if let Some(d) = deployment {
                key = (d.api_version, d.kind, d.name);
            }
        }
        if seen.contains_key(&key) {
            continue;
        }
        let replicas = replicas_of(ctx, ns, &key).await?;
        seen.insert(key, replicas);
    }
    Ok(seen.values().sum())
}

/// `spec.replicas` of one controller, read through the API.
async fn replicas_of(
    ctx: &Context,
    ns: &str,
    (api_version, kind, name): &(String, String, String),
) -> Result<i32, String> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
    let resource = kube::api::ApiResource::from_gvk(&gvk);
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &resource);
    let obj = api
        .get(name)
        .await
        .map_err(|e| format!("reading {kind} {ns}/{name}: {e}"))?;
    obj.data
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .map(|r| r as i32)
        .ok_or_else(|| format!("{kind} {ns}/{name} has no spec.replicas"))
}

pub async fn reconcile(pdb: Arc<PodDisruptionBudget>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.synced().await?;
    let ns = pdb.metadata.namespace.clone().unwrap_or_default();
    let name = pdb.metadata.name.clone().unwrap_or_default();
    if pdb.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    // In policy/v1 a budget without a selector picks no pods (an empty one picks them all).
    let selector = match pdb.spec.as_ref().and_then(|s| s.selector.as_ref()) {
        Some(s) => Some(
            berth_core::selector::Selector::from_label_selector(s).map_err(|e| Error::Invalid {
                what: "poddisruptionbudget",
                name: name.clone(),
                why: e.to_string(),
            })?,
        ),
        None => None,
    };
    let pods: Vec<Arc<Pod>> = match selector {
        None => Vec::new(),
        Some(selector) => ctx
            .pods
            .state()
            .into_iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(&ns))
            .filter(|p| selector.matches(p.metadata.labels.as_ref().unwrap_or(&BTreeMap::new())))
            .collect(),
    };
    let needs_scale = pdb.spec.as_ref().is_some_and(|s| {
        s.max_unavailable.is_some() || matches!(s.min_available, Some(IntOrString::String(_)))
    });
    let scale = if needs_scale {
        expected_scale(&ctx, &ns, &pods).await
    } else {
        Ok(0)
    };
    let plan = plan(&pdb, &pods, scale, Timestamp::now());
    if let Some(status) = plan.status {
        // Pinned to the budget as read, so it never overwrites an eviction's decrement made
        // meanwhile (a 409 means a newer budget, and a newer pass).
        let api: Api<PodDisruptionBudget> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = json!({"metadata": {"resourceVersion": pdb.metadata.resource_version},
            "status": status});
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {}
            Err(e) => {
                return Err(crate::api_err(format!(
                    "updating the status of poddisruptionbudget {ns}/{name}"
                ))(e))
            }
        }
    }
    Ok(plan
        .requeue
        .map_or_else(Action::await_change, Action::requeue))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pdb(spec: Value, status: Value) -> PodDisruptionBudget {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "generation": 1},
            "spec": spec, "status": status,
        }))
        .unwrap()
    }

    fn pod(name: &str, ready: bool) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
                "status": {"phase": "Running", "conditions": [{"type": "Ready",
                    "status": if ready { "True" } else { "False" },
                    "lastTransitionTime": "2026-12-06T10:00:00Z"}]},
            }))
            .unwrap(),
        )
    }

    fn now() -> Timestamp {
        "2026-12-06T11:00:00Z".parse().unwrap()
    }

    #[test]
    fn min_available_counts_the_healthy_pods() {
        let pods = [
            pod("a", true),
            pod("b", true),
            pod("c", true),
            pod("d", false),
        ];
        let p = plan(
            &pdb(json!({"minAvailable": 2}), json!({})),
            &pods,
            Ok(0),
            now(),
        );
        let s = p.status.unwrap();
        assert_eq!(s["currentHealthy"], 3);
        assert_eq!(s["desiredHealthy"], 2);
        assert_eq!(s["expectedPods"], 4);
        assert_eq!(s["disruptionsAllowed"], 1);
        assert_eq!(s["conditions"][0]["reason"], "SufficientPods");
    }

    #[test]
    fn max_unavailable_and_percentages_use_the_workloads_scale() {
        let pods = [pod("a", true), pod("b", true), pod("c", true)];
        let p = plan(
            &pdb(json!({"maxUnavailable": 1}), json!({})),
            &pods,
            Ok(4),
            now(),
        );
        let s = p.status.unwrap();
        assert_eq!(
            (s["expectedPods"].clone(), s["desiredHealthy"].clone()),
            (json!(4), json!(3))
        );
        assert_eq!(s["disruptionsAllowed"], 0);
        let p = plan(
            &pdb(json!({"minAvailable": "50%"}), json!({})),
            &pods,
            Ok(3),
            now(),
        );
        assert_eq!(p.status.unwrap()["desiredHealthy"], 2);
        let p = plan(
            &pdb(json!({"maxUnavailable": 1}), json!({})),
            &pods,
            Err("found no controller for pod \"a\"".into()),
            now(),
        );
        let s = p.status.unwrap();
        assert_eq!(s["disruptionsAllowed"], 0);
        assert_eq!(s["conditions"][0]["reason"], "SyncFailed");
    }

    #[test]
    fn a_pod_just_evicted_is_not_healthy_until_it_is_gone_or_two_minutes_pass() {
        let pods = [pod("a", true), pod("b", true), pod("c", true)];
        let evicted = json!({"disruptedPods": {"a": "2026-12-06T10:59:30Z"}});
        let p = plan(
            &pdb(json!({"minAvailable": 2}), evicted),
            &pods,
            Ok(0),
            now(),
        );
        let s = p.status.unwrap();
        assert_eq!(s["currentHealthy"], 2);
        assert_eq!(s["disruptionsAllowed"], 0);
        assert_eq!(p.requeue, Some(Duration::from_secs(90)));
        let stale = json!({"disruptedPods": {"a": "2026-12-06T10:57:00Z"}});
        let p = plan(&pdb(json!({"minAvailable": 2}), stale), &pods, Ok(0), now());
        assert_eq!(p.status.unwrap()["disruptionsAllowed"], 1);
    }
}
