//! The ServiceAccount admission of a new pod: its account must exist, and unless the pod or
//! its account opts out (`automountServiceAccountToken: false`), the pod gets a projected
//! `kube-api-access-<suffix>` volume (a token bound to the pod, the cluster CA, its
//! namespace) mounted read-only in every container at the path in-cluster clients read.

use berth_core::kinds::str_at;
use berth_core::resources::{self, Kind};
use serde_json::{json, Value};

use super::Registry;
use crate::status::ApiError;

/// Where in-cluster clients (kube-rs, client-go, the Python client) look for their token,
/// `ca.crt` and `namespace`.
pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const VOLUME_PREFIX: &str = "kube-api-access-";
/// The token's requested life: Kubernetes' 1h + 7s, which the token request recognises as
/// the admission's own and may extend (see `tokenrequest`).
pub const TOKEN_SECONDS: i64 = 3607;

/// The pod's volume and mounts for its ServiceAccount, added in place.
pub(super) async fn admit_pod(reg: &Registry, pod: &mut Value) -> Result<(), ApiError> {
    let ns = str_at(pod, "/metadata/namespace").to_string();
    let spec = berth_core::kinds::child(pod, "spec");
    // The deprecated `serviceAccount` names the account when the new field does not.
    let legacy = str_at(spec, "/serviceAccount").to_string();
    let named = str_at(spec, "/serviceAccountName");
    if (named.is_empty() || named == "default") && !legacy.is_empty() {
        spec["serviceAccountName"] = json!(legacy);
    }
    let account_name = match str_at(spec, "/serviceAccountName") {
        "" => "default".to_string(),
        n => n.to_string(),
    };
    spec["serviceAccountName"] = json!(account_name);
    let accounts = resources::of_kind(Kind::ServiceAccount);
    let account = match reg.get(accounts, Some(&ns), &account_name).await {
        Ok(a) => Some(a),
        // A new namespace's `default` account is made by a controller a moment after the
        // namespace: a pod may come first (its token is asked for when it starts).
        Err(e) if e.reason == "NotFound" && account_name == "default" => None,
        Err(e) if e.reason == "NotFound" => {
            let pod_name = str_at(pod, "/metadata/name");
            return Err(ApiError::forbidden(format!(
                "pods {pod_name:?} is forbidden: error looking up service account {ns}/{account_name}: serviceaccount {account_name:?} not found (create it, or set spec.serviceAccountName to an account that exists)"
            )));
        }
        Err(e) => return Err(e),
    };
    let spec = berth_core::kinds::child(pod, "spec");
    let wanted = spec
        .get("automountServiceAccountToken")
        .and_then(Value::as_bool)
        .or_else(|| {
            account
                .as_ref()
                .and_then(|a| a.get("automountServiceAccountToken"))
                .and_then(Value::as_bool)
        })
        .unwrap_or(true);
    if wanted {
        mount(spec);
    }
    Ok(())
}

/// Add the volume (unless one is there already) and mount it in every container that mounts
/// nothing at [`MOUNT_PATH`].
fn mount(spec: &mut Value) {
    let existing = spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|v| str_at(v, "/name"))
        .find(|n| n.starts_with(VOLUME_PREFIX))
        .map(String::from);
    let name = match existing {
        Some(n) => n,
        None => {
            let name = format!("{VOLUME_PREFIX}{}", super::generate_suffix());
            let volume = json!({
                "name": name,
                "projected": {
                    "defaultMode": 0o644,
                    "sources": [
                        {"serviceAccountToken": {"expirationSeconds": TOKEN_SECONDS, "path": "token"}},
                        {"configMap": {"name": "kube-root-ca.crt",
                                       "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef":
                            {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
                    ],
                },
            });
            match spec.get_mut("volumes").and_then(Value::as_array_mut) {
                Some(vs) => vs.push(volume),
                None => spec["volumes"] = json!([volume]),
            }
            name
        }
    };
    for list in ["initContainers", "containers"] {
        for c in spec
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let mounts = c
                .get("volumeMounts")
                .and_then(Value::as_array)
                .into_iter()
                .flatten();
            if mounts
                .map(|m| str_at(m, "/mountPath").trim_end_matches('/'))
                .any(|p| p == MOUNT_PATH)
            {
                continue;
            }
            let m = json!({"name": name, "mountPath": MOUNT_PATH, "readOnly": true});
            match c.get_mut("volumeMounts").and_then(Value::as_array_mut) {
                Some(ms) => ms.push(m),
                None => c["volumeMounts"] = json!([m]),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_container_gets_the_mount_and_an_own_mount_wins() {
        let mut spec = json!({
            "initContainers": [{"name": "i", "image": "x"}],
            "containers": [
                {"name": "a", "image": "x"},
                {"name": "b", "image": "x", "volumeMounts": [{"name": "mine", "mountPath": format!("{MOUNT_PATH}/")}]},
            ],
            "volumes": [{"name": "mine", "emptyDir": {}}],
        });
        mount(&mut spec);
        let vols = spec["volumes"].as_array().unwrap();
        assert_eq!(vols.len(), 2);
        let name = str_at(&vols[1], "/name").to_string();
        assert!(name.starts_with(VOLUME_PREFIX) && name.len() == VOLUME_PREFIX.len() + 5);
        assert_eq!(
            vols[1].pointer("/projected/sources/0/serviceAccountToken/expirationSeconds"),
            Some(&json!(3607))
        );
        for at in ["/initContainers/0", "/containers/0"] {
            let m = spec.pointer(&format!("{at}/volumeMounts/0")).unwrap();
            assert_eq!(m["name"], json!(name));
            assert_eq!(m["mountPath"], json!(MOUNT_PATH));
            assert_eq!(m["readOnly"], json!(true));
        }
        assert_eq!(
            spec["containers"][1]["volumeMounts"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        // Admitted twice (a re-applied spec that kept the volume): nothing doubles.
        mount(&mut spec);
        assert_eq!(spec["volumes"].as_array().unwrap().len(), 2);
        assert_eq!(
            spec["containers"][0]["volumeMounts"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }
}
