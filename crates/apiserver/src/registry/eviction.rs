//! `POST pods/<name>/eviction`: a delete that first asks the pod's PodDisruptionBudget.
//!
//! The budget's status (kept by the disruption controller) says how many pods may go now. An
//! eviction takes one of those from the status in the same compare-and-swap that records the
//! pod in `disruptedPods`, then deletes the pod; when none are left it is refused with 429, as
//! Kubernetes does, and clients such as `kubectl drain` try again. Pods that are not running
//! (pending, finished, already being deleted) go without asking; an unready pod goes if the
//! budget is met without it, or if the budget says `AlwaysAllow`.

use axum::http::StatusCode;
use berth_core::resources::{self, Kind};
use berth_core::selector::Selector;
use serde_json::{json, Value};

use super::{from_kv, now, DeleteOptions, ListParams, Registry};
use crate::status::ApiError;

/// Why an eviction must wait: 429 with the budget's reason, as Kubernetes words it.
fn too_many(cause: String) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "TooManyRequests",
        "Cannot evict pod as it would violate the pod's disruption budget.",
    );
    e.details = Some(json!({"causes": [{"reason": "DisruptionBudget", "message": cause}]}));
    e
}

fn int(v: &Value, pointer: &str) -> i64 {
    v.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn is_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// Does a budget's selector pick these labels? In policy/v1 an empty selector picks every
/// pod in the namespace and a missing one picks none.
fn picks(pdb: &Value, labels: &Value) -> bool {
    let Some(sel) = pdb.pointer("/spec/selector").filter(|s| !s.is_null()) else {
        return false;
    };
    serde_json::from_value(sel.clone())
        .ok()
        .and_then(|s| Selector::from_label_selector(&s).ok())
        .is_some_and(|s| {
            let labels = serde_json::from_value(labels.clone()).unwrap_or_default();
            s.matches(&labels)
        })
}

impl Registry {
    pub async fn evict(
        &self,
        ns: Option<&str>,
        name: &str,
        eviction: &Value,
    ) -> Result<Value, ApiError> {
        let pods = resources::of_kind(Kind::Pod);
        let budgets = resources::of_kind(Kind::PodDisruptionBudget);
        let mut opts: DeleteOptions = match eviction.get("deleteOptions").filter(|o| !o.is_null()) {
            Some(o) => serde_json::from_value(o.clone()).map_err(|e| {
                ApiError::bad_request(format!("invalid deleteOptions in the Eviction: {e}"))
            })?,
            None => DeleteOptions::default(),
        };
        for _ in 0..8 {
            let Some(kv) = self.get_kv(pods, ns, name).await? else {
                return Err(ApiError::not_found(pods, name));
            };
            let pod = from_kv(&kv)?;
            // The pod judged is the pod deleted: not a namesake made meanwhile.
            if opts.preconditions.is_none() {
                opts.preconditions = Some(super::delete::Preconditions {
                    uid: pod
                        .pointer("/metadata/uid")
                        .and_then(Value::as_str)
                        .map(String::from),
                    resource_version: None,
                });
            }
            let phase = pod
                .pointer("/status/phase")
                .and_then(Value::as_str)
                .unwrap_or("Pending");
            let running = pod.pointer("/metadata/deletionTimestamp").is_none()
                && !matches!(phase, "Succeeded" | "Failed" | "Pending");
            if !running {
                return self.delete_evicted(ns, name, &opts).await;
            }
            let labels = pod
                .pointer("/metadata/labels")
                .cloned()
                .unwrap_or(json!({}));
            let listed = self.list(budgets, ns, &ListParams::default()).await?;
            let mut matching = listed.items.iter().filter(|b| picks(b, &labels));
            let Some(budget) = matching.next() else {
                return self.delete_evicted(ns, name, &opts).await;
            };
            if matching.next().is_some() {
                return Err(ApiError::internal(
                    "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
                ));
            }
            let budget_name = super::name_of(budget).to_string();
            let Some(bkv) = self.get_kv(budgets, ns, &budget_name).await? else {
                continue;
            };
            let mut pdb = from_kv(&bkv)?;
            if int(&pdb, "/status/observedGeneration") < int(&pdb, "/metadata/generation") {
                return Err(too_many(format!(
                    "The disruption budget {budget_name} is still being processed by the server."
                )));
            }
            let healthy = int(&pdb, "/status/currentHealthy");
            let desired = int(&pdb, "/status/desiredHealthy");
            if !is_ready(&pod) {
                let always =
                    pdb.pointer("/spec/unhealthyPodEvictionPolicy") == Some(&json!("AlwaysAllow"));
                if always || (healthy >= desired && desired > 0) {
                    return self.delete_evicted(ns, name, &opts).await;
                }
            }
            if int(&pdb, "/status/disruptionsAllowed") <= 0 {
                return Err(too_many(format!(
                    "The disruption budget {budget_name} needs {desired} healthy pods and has {healthy} currently"
                )));
            }
            // A dry run asks the budget but takes nothing from it.
            if !opts.dry_run.is_empty() {
                return self.delete_evicted(ns, name, &opts).await;
            }
            let status = pdb
                .as_object_mut()
                .map(|o| o.entry("status").or_insert(json!({})))
                .ok_or_else(|| ApiError::internal("a stored budget is not an object"))?;
            status["disruptionsAllowed"] = json!(int(status, "/disruptionsAllowed") - 1);
            if !status["disruptedPods"].is_object() {
                status["disruptedPods"] = json!({});
            }
            status["disruptedPods"][name] = json!(now());
            let bytes = serde_json::to_vec(&pdb)
                .map_err(|e| ApiError::internal(format!("encoding the budget: {e}")))?;
            match self.store.update(&bkv.key, bytes, bkv.mod_revision).await {
                Ok(_) => return self.delete_evicted(ns, name, &opts).await,
                // Another eviction took from the same budget: look again.
                Err(berth_store::StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(ApiError::from_store(budgets, &budget_name, e)),
            }
        }
        Err(ApiError::modified(pods, name))
    }

    async fn delete_evicted(
        &self,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        self.delete(resources::of_kind(Kind::Pod), ns, name, opts)
            .await?;
        Ok(crate::status::success(201, None))
    }
}
