//! CustomResourceDefinitions inside the server: the catalog of custom kinds, kept from a
//! watch on the definitions, and the definitions' own controller. A stored definition is
//! Established at once (its names accepted unless another definition of its group has its
//! kind, its storage version recorded in `status.storedVersions`); a deleted one keeps its
//! cleanup finalizer until every object of its kind is gone.

use std::time::Duration;

use berth_core::custom::{self, CLEANUP_FINALIZER};
use berth_core::kinds::str_at;
use berth_core::resources::{self, Kind};
use serde_json::{json, Value};

use super::{ListParams, Part, Registry, WriteOptions};
use crate::registry::DeleteOptions;
use crate::status::ApiError;

/// How often definitions are looked at again with nothing changed (a cleanup waiting on
/// objects that have finalizers of their own).
const RECHECK: Duration = Duration::from_secs(2);

/// Serve the Established definitions' kinds and run their controller, from now on.
pub(crate) async fn spawn(registry: Registry) -> Result<(), ApiError> {
    let (tx, mut rx) = tokio::sync::watch::channel(Vec::<Value>::new());
    let catalog = registry.custom.clone();
    let prefix = resources::of_kind(Kind::CustomResourceDefinition).key_prefix();
    super::mirror::spawn(registry.clone(), vec![prefix], move |objects| {
        let crds: Vec<Value> = objects.values().cloned().collect();
        catalog.set(crds.iter());
        let _ = tx.send(crds);
    })
    .await?;
    tokio::spawn(async move {
        loop {
            let crds = rx.borrow_and_update().clone();
            for crd in &crds {
                if let Err(e) = reconcile(&registry, crd, &crds).await {
                    let name = str_at(crd, "/metadata/name");
                    tracing::warn!(crd = %name, error = %e.message, "CustomResourceDefinition; retrying");
                }
            }
            match tokio::time::timeout(RECHECK, rx.changed()).await {
                Ok(Err(_)) => return,
                Ok(Ok(())) | Err(_) => {}
            }
        }
    });
    Ok(())
}

fn condition(type_: &str, ok: bool, reason: &str, message: &str, old: &Value) -> Value {
    let status = if ok { "True" } else { "False" };
    // The transition time moves only when the status does.
    let since = old
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|c| str_at(c, "/type") == type_ && str_at(c, "/status") == status)
        .and_then(|c| c.get("lastTransitionTime").cloned())
        .unwrap_or_else(|| json!(super::now()));
    json!({"type": type_, "status": status, "reason": reason, "message": message,
           "lastTransitionTime": since})
}

/// The status a live definition should have, given every definition.
fn wanted_status(crd: &Value, all: &[Value]) -> Value {
    let group = str_at(crd, "/spec/group");
    let kind = str_at(crd, "/spec/names/kind");
    let name = str_at(crd, "/metadata/name");
    let conflict = all.iter().find(|o| {
        str_at(o, "/metadata/name") != name
            && str_at(o, "/spec/group") == group
            && str_at(o, "/status/acceptedNames/kind") == kind
    });
    let was_established = custom::established(crd);
    let mut status = crd.get("status").cloned().unwrap_or_else(|| json!({}));
    let (names_ok, established) = match conflict {
        Some(other) => {
            let message = format!(
                "{kind:?} is already in use by {}",
                str_at(other, "/metadata/name")
            );
            status["conditions"] = json!([
                condition("NamesAccepted", false, "KindConflict", &message, crd),
                condition(
                    "Established",
                    was_established,
                    "NotAccepted",
                    "not all names are accepted",
                    crd
                ),
            ]);
            (false, was_established)
        }
        None => {
            status["conditions"] = json!([
                condition(
                    "NamesAccepted",
                    true,
                    "NoConflicts",
                    "no conflicts found",
                    crd
                ),
                condition(
                    "Established",
                    true,
                    "InitialNamesAccepted",
                    "the initial names have been accepted",
                    crd
                ),
            ]);
            (true, true)
        }
    };
    if names_ok {
        status["acceptedNames"] = crd
            .pointer("/spec/names")
            .cloned()
            .unwrap_or_else(|| json!({}));
    }
    if established {
        let mut stored: Vec<Value> = status
            .get("storedVersions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for v in crd
            .pointer("/spec/versions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|v| v.get("storage") == Some(&Value::Bool(true)))
        {
            if !stored.contains(&v["name"]) {
                stored.push(v["name"].clone());
            }
        }
        status["storedVersions"] = Value::Array(stored);
    }
    status
}

async fn reconcile(registry: &Registry, crd: &Value, all: &[Value]) -> Result<(), ApiError> {
    let res = resources::of_kind(Kind::CustomResourceDefinition);
    let name = str_at(crd, "/metadata/name");
    if crd.pointer("/metadata/deletionTimestamp").is_some() {
        return clean_up(registry, crd).await;
    }
    let status = wanted_status(crd, all);
    if crd.get("status") == Some(&status) {
        return Ok(());
    }
    let mut body = crd.clone();
    body["status"] = status;
    // Only the status is written: a change to the definition meanwhile is kept.
    if let Some(m) = body.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    registry
        .update(
            res,
            None,
            name,
            body,
            Part::Status,
            &WriteOptions::default(),
        )
        .await?;
    Ok(())
}

/// Delete every object of a deleted definition's kind; once none is left, let the
/// definition go.
async fn clean_up(registry: &Registry, crd: &Value) -> Result<(), ApiError> {
    let finalizers = crd
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if !finalizers.contains(&json!(CLEANUP_FINALIZER)) {
        return Ok(());
    }
    // Every version is stored as the storage one: one resource holds them all.
    let mut left = 0;
    if let Some(storage) = custom::versions_of(crd).first().map(|v| v.storage) {
        let deleted = registry
            .delete_collection(
                storage,
                None,
                &ListParams::default(),
                &DeleteOptions::default(),
            )
            .await?;
        left = deleted.len();
        if left > 0 {
            left = registry
                .list(storage, None, &ListParams::default())
                .await?
                .items
                .len();
        }
    }
    if left > 0 {
        return Ok(());
    }
    let res = resources::of_kind(Kind::CustomResourceDefinition);
    registry
        .remove_finalizer(
            res,
            None,
            str_at(crd, "/metadata/name"),
            CLEANUP_FINALIZER,
            false,
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd(name: &str, kind: &str) -> Value {
        json!({"metadata": {"name": name},
               "spec": {"group": "x.io", "names": {"plural": name.split('.').next().unwrap(), "kind": kind},
                        "versions": [{"name": "v1", "served": true, "storage": true}]}})
    }

    #[test]
    fn a_definition_is_established_unless_its_kind_is_taken() {
        let a = crd("apples.x.io", "Apple");
        let mut all = vec![a.clone()];
        let status = wanted_status(&a, &all);
        assert_eq!(status["conditions"][1]["type"], "Established");
        assert_eq!(status["conditions"][1]["status"], "True");
        assert_eq!(status["acceptedNames"]["kind"], "Apple");
        assert_eq!(status["storedVersions"], json!(["v1"]));

        let mut a = a;
        a["status"] = status;
        let b = crd("pommes.x.io", "Apple");
        all = vec![a.clone(), b.clone()];
        let status = wanted_status(&b, &all);
        assert_eq!(status["conditions"][0]["status"], "False");
        assert_eq!(status["conditions"][0]["reason"], "KindConflict");
        assert_eq!(status["conditions"][1]["status"], "False");
        // Settled: the same status again, so nothing is written twice.
        assert_eq!(wanted_status(&a, &all), a["status"]);
    }
}
