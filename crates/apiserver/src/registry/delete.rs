//! Deletion as Kubernetes does it: preconditions, graceful deletion of pods on a node,
//! finalizers and `deletionTimestamp`, propagation policies, namespaces.

use berth_core::resources::{Kind, Resource};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{from_kv, meta_mut, name_of, namespace, now, Part, Registry, WriteOptions};
use crate::status::ApiError;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Preconditions {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

/// The `DeleteOptions` body (or query parameters) of a DELETE.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteOptions {
    pub grace_period_seconds: Option<i64>,
    pub propagation_policy: Option<String>,
    pub orphan_dependents: Option<bool>,
    pub preconditions: Option<Preconditions>,
    #[serde(default)]
    pub dry_run: Vec<String>,
}

impl DeleteOptions {
    /// The finalizer a propagation policy asks for, if any.
    fn policy_finalizer(&self) -> Result<Option<&'static str>, ApiError> {
        let policy = match (&self.propagation_policy, self.orphan_dependents) {
            (Some(p), _) => p.as_str(),
            (None, Some(true)) => "Orphan",
            (None, _) => "Background",
        };
        match policy {
            "Background" => Ok(None),
            "Foreground" => Ok(Some("foregroundDeletion")),
            "Orphan" => Ok(Some("orphan")),
            other => Err(ApiError::bad_request(format!(
                "propagationPolicy {other:?} is not supported: use Background, Foreground or Orphan"
            ))),
        }
    }
}

/// Has everything that holds up deletion let go? (Namespaces also wait on `spec.finalizers`.)
pub(crate) fn finalizers_done(res: &Resource, obj: &Value) -> bool {
    res.kind != Kind::Namespace
        || obj
            .pointer("/spec/finalizers")
            .and_then(Value::as_array)
            .is_none_or(|f| f.is_empty())
}

impl Registry {
    /// `DELETE`: returns the object as it stands after the call (deleted, or marked for
    /// deletion), and whether it is gone.
    pub async fn delete(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<(Value, bool), ApiError> {
        let policy_finalizer = opts.policy_finalizer()?;
        for _ in 0..8 {
            let Some(current) = self.get_kv(res, ns, name).await? else {
                return Err(ApiError::not_found(res, name));
            };
            let mut obj = from_kv(&current)?;
            if let Some(pre) = &opts.preconditions {
                let uid = obj
                    .pointer("/metadata/uid")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if pre.uid.as_deref().is_some_and(|u| u != uid) {
                    return Err(ApiError::conflict(
                        res,
                        name,
                        &format!(
                        "Precondition failed: UID in precondition: {}, UID in object meta: {uid}",
                        pre.uid.as_deref().unwrap_or("")
                    ),
                    ));
                }
                if pre
                    .resource_version
                    .as_deref()
                    .is_some_and(|rv| rv != current.mod_revision.to_string())
                {
                    return Err(ApiError::conflict(res, name, &format!(
                        "Precondition failed: ResourceVersion in precondition: {}, ResourceVersion in object meta: {}",
                        pre.resource_version.as_deref().unwrap_or(""),
                        current.mod_revision
                    )));
                }
            }
            let dry_run = !opts.dry_run.is_empty();
            if dry_run {
                return Ok((obj, false));
            }
            let mut marked = obj.clone();
            let m = meta_mut(&mut marked);
            let already = m.contains_key("deletionTimestamp");
            if !already {
                m.insert("deletionTimestamp".into(), json!(now()));
            }
            // Graceful: a pod on a node is stopped by its agent, which then deletes it.
            let grace = graceful_period(res, &obj, opts);
            if let Some(g) = grace {
                let prev = m.get("deletionGracePeriodSeconds").and_then(Value::as_i64);
                if prev.is_none_or(|p| g < p) {
                    m.insert("deletionGracePeriodSeconds".into(), json!(g));
                }
            }
            let mut finalizers: Vec<Value> = m
                .get("finalizers")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if let Some(f) = policy_finalizer {
                if !already && !finalizers.contains(&json!(f)) {
                    finalizers.push(json!(f));
                    m.insert("finalizers".into(), json!(finalizers));
                }
            }
            let hold = grace.is_some() || !finalizers.is_empty() || !finalizers_done(res, &marked);
            if res.kind == Kind::Namespace && !finalizers_done(res, &marked) {
                marked["status"]["phase"] = json!("Terminating");
            }
            if hold {
                if already && marked == obj {
                    return Ok((obj, false));
                }
                // The stored deletionTimestamp is the registry's to set: write it directly.
                let out = self
                    .store
                    .update(&current.key, super::to_bytes(&marked), current.mod_revision)
                    .await;
                match out {
                    Ok(kv) => {
                        meta_mut(&mut marked)
                            .insert("resourceVersion".into(), json!(kv.mod_revision.to_string()));
                        if res.kind == Kind::Namespace {
                            namespace::spawn_finalizer(self.clone(), name.to_string());
                        }
                        return Ok((marked, false));
                    }
                    Err(berth_store::StoreError::Conflict { .. }) => continue,
                    Err(e) => return Err(ApiError::from_store(res, name, e)),
                }
            }
            match self
                .store
                .delete(&current.key, Some(current.mod_revision))
                .await
            {
                Ok(kv) => {
                    if res.kind == Kind::Service {
                        super::service::release(self, &obj, None).await;
                    }
                    meta_mut(&mut obj)
                        .insert("resourceVersion".into(), json!(kv.mod_revision.to_string()));
                    return Ok((obj, true));
                }
                Err(berth_store::StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(ApiError::from_store(res, name, e)),
            }
        }
        Err(ApiError::modified(res, name))
    }

    /// `DELETE` on a collection: every object the list parameters select.
    pub async fn delete_collection(
        &self,
        res: &Resource,
        ns: Option<&str>,
        params: &super::ListParams,
        opts: &DeleteOptions,
    ) -> Result<Vec<Value>, ApiError> {
        let listed = self.list(res, ns, params).await?;
        let mut out = Vec::new();
        for item in listed.items {
            let item_ns = item.pointer("/metadata/namespace").and_then(Value::as_str);
            match self.delete(res, item_ns, name_of(&item), opts).await {
                Ok((obj, _)) => out.push(obj),
                Err(e) if e.reason == "NotFound" => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Remove a finalizer from an object (used by Berth's own finalizers).
    pub(crate) async fn remove_finalizer(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        finalizer: &str,
        spec_finalizer: bool,
    ) -> Result<(), ApiError> {
        for _ in 0..8 {
            let Some(current) = self.get_kv(res, ns, name).await? else {
                return Ok(());
            };
            let mut obj = from_kv(&current)?;
            let pointer = if spec_finalizer {
                "/spec/finalizers"
            } else {
                "/metadata/finalizers"
            };
            if let Some(list) = obj.pointer_mut(pointer).and_then(Value::as_array_mut) {
                list.retain(|f| f != finalizer);
            }
            match self
                .write_update(
                    res,
                    &current,
                    obj,
                    Part::Main,
                    &WriteOptions::default(),
                    false,
                )
                .await
            {
                Err(e) if e.reason == "Conflict" => continue,
                other => return other.map(|_| ()),
            }
        }
        Err(ApiError::modified(res, name))
    }
}

/// The grace period a delete waits for, where the object is a pod bound to a node.
fn graceful_period(res: &Resource, obj: &Value, opts: &DeleteOptions) -> Option<i64> {
    if res.kind != Kind::Pod {
        return None;
    }
    let on_node = obj
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    let phase = obj
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !on_node || matches!(phase, "Succeeded" | "Failed") {
        return None;
    }
    let g = opts.grace_period_seconds.unwrap_or_else(|| {
        obj.pointer("/spec/terminationGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(30)
    });
    (g > 0).then_some(g)
}
