//! Small pieces every controller uses: owner references, pod readiness, Events.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, PostParams};

/// The controller reference an owner puts on what it creates.
pub fn controller_ref(api_version: &str, kind: &str, meta: &ObjectMeta) -> OwnerReference {
    OwnerReference {
        api_version: api_version.into(),
        kind: kind.into(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Is `meta` controlled by the object with `uid`?
pub fn controlled_by(meta: &ObjectMeta, uid: &str) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && r.uid == uid)
}

/// When the pod last became Ready, if it is Ready.
pub fn ready_since(pod: &Pod) -> Option<jiff::Timestamp> {
    let c = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")?;
    Some(
        c.last_transition_time
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH),
    )
}

/// Not being deleted and not finished: a pod that counts towards a replica count.
pub fn is_active(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && !matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded") | Some("Failed")
        )
}

/// Write an Event about an object, in the background; a failure is only logged.
pub fn record(
    client: &kube::Client,
    about: berth_core::events::Involved,
    type_: &str,
    reason: &str,
    message: &str,
    component: &str,
) {
    let ev = berth_core::events::event(
        about,
        type_,
        reason,
        message,
        component,
        jiff::Timestamp::now(),
    );
    let api: Api<k8s_openapi::api::core::v1::Event> =
        Api::namespaced(client.clone(), about.namespace);
    tokio::spawn(async move {
        let Ok(ev) = serde_json::from_value(ev) else {
            return;
        };
        if let Err(e) = api.create(&PostParams::default(), &ev).await {
            tracing::debug!(error = %e, "could not record an event");
        }
    });
}

/// Does `new` differ from `old` (both serialized statuses) in any of `fields` (absent reads
/// as 0) or in its conditions' type, status and reason? Timestamps and messages alone never
/// call for a write.
pub fn status_changed(old: &serde_json::Value, new: &serde_json::Value, fields: &[&str]) -> bool {
    let zero = serde_json::json!(0);
    let conditions =
        |v: &serde_json::Value| -> Vec<(serde_json::Value, serde_json::Value, serde_json::Value)> {
            v["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| (c["type"].clone(), c["status"].clone(), c["reason"].clone()))
                .collect()
        };
    fields
        .iter()
        .any(|k| old.get(*k).unwrap_or(&zero) != new.get(*k).unwrap_or(&zero))
        || conditions(old) != conditions(new)
}

/// Merge `status` into the status subresource of `name`; `what` names it for the error.
pub async fn write_status<K>(
    api: &Api<K>,
    name: &str,
    status: serde_json::Value,
    what: &str,
) -> Result<(), crate::Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch_status(
        name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(serde_json::json!({ "status": status })),
    )
    .await
    .map_err(api_err(format!("updating the status of {what}")))?;
    Ok(())
}

/// An API failure, named by what was being done.
pub fn api_err(action: String) -> impl FnOnce(kube::Error) -> crate::Error {
    move |source| crate::Error::Api { action, source }
}

/// What an Event about an `apps/v1` object of `kind` refers to.
pub fn involved<'a>(kind: &'a str, meta: &'a ObjectMeta) -> berth_core::events::Involved<'a> {
    involved_in("apps/v1", kind, meta)
}

/// What an Event about an object of `api_version` and `kind` refers to.
pub fn involved_in<'a>(
    api_version: &'a str,
    kind: &'a str,
    meta: &'a ObjectMeta,
) -> berth_core::events::Involved<'a> {
    berth_core::events::Involved {
        api_version,
        kind,
        namespace: meta.namespace.as_deref().unwrap_or("default"),
        name: meta.name.as_deref().unwrap_or_default(),
        uid: meta.uid.as_deref().unwrap_or_default(),
    }
}
