//! Reading and writing status: when a pod counts and is ready, and status writes that skip
//! what changes nothing.

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;

use crate::api_err;

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
