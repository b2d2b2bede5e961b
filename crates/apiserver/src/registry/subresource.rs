//! The `scale` subresource (autoscaling/v1 Scale over `spec.replicas`) and pod `binding`.

use berth_core::custom::{json_path, ScalePaths};
use berth_core::resources::{self, Kind, Resource};
use berth_core::selector::label_selector_string;
use berth_core::FieldError;
use serde_json::{json, Value};

use super::{apply_patch, from_kv, now, Part, PatchType, Registry, WriteOptions};
use crate::status::ApiError;

/// Where a kind's Scale reads and writes: `spec.replicas`, `status.replicas` and
/// `spec.selector` for the built-in kinds, the definition's paths for a custom one.
fn scale_paths(registry: &Registry, res: &Resource) -> ScalePaths {
    registry
        .custom
        .of(res)
        .and_then(|c| c.scale.clone())
        .unwrap_or_else(|| ScalePaths {
            spec_replicas: ".spec.replicas".into(),
            status_replicas: ".status.replicas".into(),
            label_selector: Some(".spec.selector".into()),
        })
}

/// Set the field at a dotted path (`.spec.replicas`), making the objects on the way.
fn set_path(obj: &mut Value, path: &str, value: Value) {
    let mut cur = obj;
    let mut keys = path.trim_start_matches('.').split('.').peekable();
    while let Some(key) = keys.next() {
        if !cur.is_object() {
            *cur = json!({});
        }
        let map = cur.as_object_mut().expect("an object");
        if keys.peek().is_none() {
            map.insert(key.to_string(), value);
            return;
        }
        cur = map.entry(key.to_string()).or_insert_with(|| json!({}));
    }
}

fn scale_of(obj: &Value, paths: &ScalePaths) -> Value {
    let at = |p: &str| json_path(obj, p).filter(|v| !v.is_null()).cloned();
    let selector = match paths
        .label_selector
        .as_deref()
        .and_then(|p| json_path(obj, p))
    {
        // A custom kind keeps its selector as a string already.
        Some(Value::String(s)) => s.clone(),
        other => scale_selector(other),
    };
    let m = &obj["metadata"];
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": m["name"], "namespace": m["namespace"], "uid": m["uid"],
            "resourceVersion": m["resourceVersion"], "creationTimestamp": m["creationTimestamp"],
        },
        "spec": {"replicas": at(&paths.spec_replicas).unwrap_or(json!(0))},
        "status": {
            "replicas": at(&paths.status_replicas).unwrap_or(json!(0)),
            "selector": selector,
        },
    })
}

/// A selector as a string; a ReplicationController's is a plain map of labels.
fn scale_selector(sel: Option<&Value>) -> String {
    match sel {
        Some(s) if s.get("matchLabels").is_none() && s.get("matchExpressions").is_none() => {
            label_selector_string(Some(&json!({ "matchLabels": s })))
        }
        other => label_selector_string(other),
    }
}

impl Registry {
    pub async fn get_scale(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let paths = scale_paths(self, res);
        Ok(scale_of(&self.get(res, ns, name).await?, &paths))
    }

    /// Write `spec.replicas` from a Scale (PUT, or the result of a PATCH on the Scale).
    pub async fn update_scale(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        scale: Option<&Value>,
        patch: Option<(PatchType, &Value)>,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        let paths = scale_paths(self, res);
        for _ in 0..8 {
            let Some(current) = self.get_kv(res, ns, name).await? else {
                return Err(ApiError::not_found(res, name));
            };
            let mut obj = from_kv(&current)?;
            let mut wanted = match (scale, patch) {
                (Some(s), _) => s.clone(),
                (None, Some((kind, body))) => {
                    let mut s = scale_of(&obj, &paths);
                    apply_patch(&mut s, kind, body)?;
                    s
                }
                (None, None) => scale_of(&obj, &paths),
            };
            let pinned = wanted
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(String::from);
            if scale.is_some()
                && pinned
                    .as_deref()
                    .is_some_and(|rv| rv != current.mod_revision.to_string())
            {
                return Err(ApiError::modified(res, name));
            }
            let replicas = wanted.pointer_mut("/spec/replicas").map(Value::take);
            let replicas = match replicas {
                Some(Value::Number(n)) if n.as_i64().is_some_and(|r| r >= 0) => n,
                other => {
                    let shown = other.unwrap_or(Value::Null);
                    let scale_res = super::Resource {
                        kind_name: "Scale",
                        group: "autoscaling",
                        ..*res
                    };
                    return Err(ApiError::invalid(
                        &scale_res,
                        name,
                        &[FieldError::invalid(
                            "spec.replicas",
                            shown,
                            "must be greater than or equal to 0",
                        )],
                    ));
                }
            };
            set_path(&mut obj, &paths.spec_replicas, Value::Number(replicas));
            match self
                .write_update(res, &current, obj, Part::Main, opts, false)
                .await
            {
                // A PATCH, or a PUT that pinned no resourceVersion, retries on a fresh read.
                Err(e) if e.reason == "Conflict" && (pinned.is_none() || scale.is_none()) => {
                    continue
                }
                Err(e) => return Err(e),
                Ok(out) => return Ok(scale_of(&out.object, &paths)),
            }
        }
        Err(ApiError::modified(res, name))
    }

    /// `POST pods/<name>/binding`: set `spec.nodeName` once and mark the pod scheduled.
    pub async fn bind(
        &self,
        ns: Option<&str>,
        name: &str,
        binding: &Value,
    ) -> Result<Value, ApiError> {
        let res = resources::of_kind(Kind::Pod);
        let target_kind = binding
            .pointer("/target/kind")
            .and_then(Value::as_str)
            .unwrap_or("Node");
        let node = binding
            .pointer("/target/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        if target_kind != "Node" || node.is_empty() {
            return Err(ApiError::invalid(
                res,
                name,
                &[FieldError::required("target.name")],
            ));
        }
        for _ in 0..8 {
            let Some(current) = self.get_kv(res, ns, name).await? else {
                return Err(ApiError::not_found(res, name));
            };
            // Binding leaves ownership as it is: the managedFields go through as stored.
            let (mut pod, managed) = berth_core::stored::parse_keeping_managed_raw(&current.value)
                .map_err(|e| {
                    ApiError::internal(format!("stored object {} is not JSON: {e}", current.key))
                })?;
            if let Some(uid) = binding.pointer("/metadata/uid").and_then(Value::as_str) {
                if pod.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid) {
                    return Err(ApiError::conflict(
                        res,
                        name,
                        "the pod's UID does not match the binding's",
                    ));
                }
            }
            if pod.pointer("/metadata/deletionTimestamp").is_some() {
                return Err(ApiError::conflict(
                    res,
                    name,
                    "pod is being deleted, cannot be assigned to a host",
                ));
            }
            let existing = pod
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .unwrap_or("");
            if !existing.is_empty() {
                return Err(ApiError::conflict(
                    res,
                    name,
                    &format!("pod {name} is already assigned to node {existing:?}"),
                ));
            }
            pod["spec"]["nodeName"] = json!(node);
            let conds = pod["status"]["conditions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let mut conds: Vec<Value> = conds
                .into_iter()
                .filter(|c| c["type"] != "PodScheduled")
                .collect();
            conds.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now()}));
            pod["status"]["conditions"] = json!(conds);
            // Binding writes spec and status together: write the stored object directly.
            let bytes = berth_core::stored::to_vec_with_managed(&pod, managed.as_deref());
            match self
                .store
                .update(&current.key, bytes, current.mod_revision)
                .await
            {
                Ok(_) => return Ok(crate::status::success(201, None)),
                Err(berth_store::StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(ApiError::from_store(res, name, e)),
            }
        }
        Err(ApiError::modified(res, name))
    }
}
