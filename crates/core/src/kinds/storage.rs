//! Volumes that outlive pods: core/v1 PersistentVolumeClaims and PersistentVolumes, and
//! storage.k8s.io/v1 StorageClasses: defaults, validation and `kubectl get`'s columns.

use serde_json::{json, Value};

use super::{arr_at, child, default_field, str_at};
use crate::table::{col, wide, Column, AGE, NAME};
use crate::validation::FieldError;

/// The annotation that makes a StorageClass the default for claims that name none.
pub const DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";
/// The provisioner of Berth's built-in class.
pub const LOCAL_PATH: &str = "berth.dev/local-path";
/// Where the built-in class keeps its volumes, unless its `path` parameter says otherwise.
pub const LOCAL_PATH_DIR: &str = "/var/lib/berth/local-path";

/// The built-in default StorageClass, `local-path`: a directory on the node of the claim's
/// first pod, made when that pod starts.
pub fn local_path_class() -> Value {
    json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": "local-path", "annotations": {DEFAULT_CLASS: "true"}},
        "provisioner": LOCAL_PATH,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "WaitForFirstConsumer",
        "parameters": {"path": LOCAL_PATH_DIR},
    })
}

const ACCESS_MODES: [&str; 4] = [
    "ReadWriteOnce",
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOncePod",
];

pub(super) fn default_pvc(obj: &mut Value) {
    default_field(child(obj, "spec"), "volumeMode", json!("Filesystem"));
    default_field(child(obj, "status"), "phase", json!("Pending"));
}

pub(super) fn default_pv(obj: &mut Value) {
    let spec = child(obj, "spec");
    default_field(spec, "persistentVolumeReclaimPolicy", json!("Retain"));
    default_field(spec, "volumeMode", json!("Filesystem"));
    default_field(child(obj, "status"), "phase", json!("Pending"));
}

pub(super) fn default_storage_class(obj: &mut Value) {
    default_field(obj, "reclaimPolicy", json!("Delete"));
    default_field(obj, "volumeBindingMode", json!("Immediate"));
}

fn validate_access_modes(path: &str, spec: &Value, errs: &mut Vec<FieldError>) {
    let modes = arr_at(spec, "/accessModes");
    if modes.is_empty() {
        errs.push(FieldError::required_because(
            format!("{path}.accessModes"),
            "at least 1 access mode is required",
        ));
    }
    for m in modes {
        let m = m.as_str().unwrap_or_default();
        if !ACCESS_MODES.contains(&m) {
            errs.push(FieldError::not_supported(
                format!("{path}.accessModes"),
                m,
                &ACCESS_MODES,
            ));
        }
    }
}

/// A claim's spec (of a PVC, or of a StatefulSet's `volumeClaimTemplates`) at `path`.
pub(super) fn validate_claim_spec(path: &str, spec: &Value, errs: &mut Vec<FieldError>) {
    validate_access_modes(path, spec, errs);
    match spec.pointer("/resources/requests/storage") {
        None | Some(Value::Null) => {
            errs.push(FieldError::required(format!("{path}.resources[storage]")))
        }
        Some(q) => {
            let ok = q
                .as_str()
                .and_then(crate::quantity::bytes)
                .is_some_and(|b| b > 0);
            if !ok {
                errs.push(FieldError::invalid(
                    format!("{path}.resources.requests[storage]"),
                    q,
                    "must be greater than zero",
                ));
            }
        }
    }
}

pub(super) fn validate_pvc(obj: &Value, errs: &mut Vec<FieldError>) {
    validate_claim_spec("spec", obj.get("spec").unwrap_or(&Value::Null), errs);
}

/// A claim's spec is fixed once made, but for its requests (expansion) and, until it is
/// bound, the volume and class the controller fills in.
pub(super) fn validate_pvc_update(old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
    let comparable = |o: &Value, filled: &Value| {
        let mut s = o.get("spec").cloned().unwrap_or(json!({}));
        if let Some(m) = s.as_object_mut() {
            m.remove("resources");
            for k in ["volumeName", "storageClassName"] {
                if filled
                    .pointer(&format!("/spec/{k}"))
                    .is_none_or(Value::is_null)
                {
                    m.remove(k);
                }
            }
        }
        s
    };
    if comparable(old, old) != comparable(new, old) {
        errs.push(FieldError::forbidden(
            "spec",
            "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims",
        ));
    }
}

pub(super) fn validate_pv(obj: &Value, errs: &mut Vec<FieldError>) {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    validate_access_modes("spec", spec, errs);
    if spec.pointer("/capacity/storage").is_none() {
        errs.push(FieldError::required("spec.capacity"));
    }
    let sources = ["hostPath", "local", "nfs", "csi"];
    let n = sources
        .iter()
        .filter(|s| spec.get(**s).is_some_and(|v| !v.is_null()))
        .count();
    if n != 1 {
        errs.push(FieldError::required_because(
            "spec",
            "must specify exactly one volume type (Berth mounts hostPath and local)",
        ));
    }
    let policy = str_at(obj, "/spec/persistentVolumeReclaimPolicy");
    if !["Retain", "Delete", "Recycle"].contains(&policy) {
        errs.push(FieldError::not_supported(
            "spec.persistentVolumeReclaimPolicy",
            policy,
            &["Delete", "Recycle", "Retain"],
        ));
    }
}

pub(super) fn validate_storage_class(obj: &Value, errs: &mut Vec<FieldError>) {
    if str_at(obj, "/provisioner").is_empty() {
        errs.push(FieldError::required("provisioner"));
    }
    let mode = str_at(obj, "/volumeBindingMode");
    if !["Immediate", "WaitForFirstConsumer"].contains(&mode) {
        errs.push(FieldError::not_supported(
            "volumeBindingMode",
            mode,
            &["Immediate", "WaitForFirstConsumer"],
        ));
    }
    let policy = str_at(obj, "/reclaimPolicy");
    if !["Retain", "Delete"].contains(&policy) {
        errs.push(FieldError::not_supported(
            "reclaimPolicy",
            policy,
            &["Delete", "Retain"],
        ));
    }
}

pub(super) fn validate_storage_class_update(old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
    for f in [
        "provisioner",
        "parameters",
        "reclaimPolicy",
        "volumeBindingMode",
    ] {
        if old.get(f) != new.get(f) {
            errs.push(FieldError::forbidden(
                f,
                "updates to parameters are forbidden.",
            ));
        }
    }
}

fn modes(obj: &Value, pointer: &str) -> String {
    arr_at(obj, pointer)
        .iter()
        .filter_map(Value::as_str)
        .map(|m| match m {
            "ReadWriteOnce" => "RWO",
            "ReadOnlyMany" => "ROX",
            "ReadWriteMany" => "RWX",
            "ReadWriteOncePod" => "RWOP",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn or_unset(s: &str) -> String {
    if s.is_empty() {
        "<unset>".into()
    } else {
        s.into()
    }
}

pub(super) fn pvc_columns() -> Vec<Column> {
    vec![
        NAME,
        col("Status", "The phase of the claim."),
        col(
            "Volume",
            "The binding reference to the PersistentVolume backing this claim.",
        ),
        col("Capacity", "The actual resources of the underlying volume."),
        col("Access Modes", "The access modes of the underlying volume."),
        col(
            "StorageClass",
            "The name of the StorageClass required by the claim.",
        ),
        col(
            "VolumeAttributesClass",
            "The VolumeAttributesClass of the claim.",
        ),
        AGE,
        wide(
            "VolumeMode",
            "Whether the volume is a filesystem or a raw block device.",
        ),
    ]
}

pub(super) fn pvc_cells(obj: &Value, age: String) -> Vec<Value> {
    vec![
        json!(str_at(obj, "/metadata/name")),
        json!(str_at(obj, "/status/phase")),
        json!(str_at(obj, "/spec/volumeName")),
        json!(str_at(obj, "/status/capacity/storage")),
        json!(modes(obj, "/status/accessModes")),
        json!(str_at(obj, "/spec/storageClassName")),
        json!(or_unset(str_at(obj, "/spec/volumeAttributesClassName"))),
        json!(age),
        json!(str_at(obj, "/spec/volumeMode")),
    ]
}

pub(super) fn pv_columns() -> Vec<Column> {
    vec![
        NAME,
        col("Capacity", "The capacity of the volume."),
        col("Access Modes", "The access modes of the volume."),
        col(
            "Reclaim Policy",
            "What happens to the volume when its claim is released.",
        ),
        col("Status", "The phase of the volume."),
        col("Claim", "The claim bound to the volume."),
        col("StorageClass", "The StorageClass of the volume."),
        col(
            "VolumeAttributesClass",
            "The VolumeAttributesClass of the volume.",
        ),
        col("Reason", "Why the volume is in its phase."),
        AGE,
        wide(
            "VolumeMode",
            "Whether the volume is a filesystem or a raw block device.",
        ),
    ]
}

pub(super) fn pv_cells(obj: &Value, age: String) -> Vec<Value> {
    let claim = match (
        str_at(obj, "/spec/claimRef/namespace"),
        str_at(obj, "/spec/claimRef/name"),
    ) {
        (_, "") => String::new(),
        (ns, name) => format!("{ns}/{name}"),
    };
    vec![
        json!(str_at(obj, "/metadata/name")),
        json!(str_at(obj, "/spec/capacity/storage")),
        json!(modes(obj, "/spec/accessModes")),
        json!(str_at(obj, "/spec/persistentVolumeReclaimPolicy")),
        json!(str_at(obj, "/status/phase")),
        json!(claim),
        json!(str_at(obj, "/spec/storageClassName")),
        json!(or_unset(str_at(obj, "/spec/volumeAttributesClassName"))),
        json!(str_at(obj, "/status/reason")),
        json!(age),
        json!(str_at(obj, "/spec/volumeMode")),
    ]
}

pub(super) fn storage_class_columns() -> Vec<Column> {
    vec![
        NAME,
        col("Provisioner", "What makes the volumes of this class."),
        col(
            "ReclaimPolicy",
            "What happens to a volume when its claim is released.",
        ),
        col("VolumeBindingMode", "When claims of this class are bound."),
        col("AllowVolumeExpansion", "Whether claims may grow."),
        AGE,
    ]
}

pub(super) fn storage_class_cells(obj: &Value, age: String) -> Vec<Value> {
    let name = str_at(obj, "/metadata/name");
    let default = obj.pointer(&format!(
        "/metadata/annotations/{}",
        DEFAULT_CLASS.replace('/', "~1")
    )) == Some(&json!("true"));
    vec![
        json!(if default {
            format!("{name} (default)")
        } else {
            name.to_string()
        }),
        json!(str_at(obj, "/provisioner")),
        json!(str_at(obj, "/reclaimPolicy")),
        json!(str_at(obj, "/volumeBindingMode")),
        json!(obj.get("allowVolumeExpansion") == Some(&json!(true))),
        json!(age),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pvc() -> Value {
        json!({"metadata": {"name": "data", "namespace": "default"}, "spec": {
            "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
    }

    #[test]
    fn a_claim_needs_modes_and_a_size_and_keeps_its_spec() {
        let mut errs = Vec::new();
        validate_pvc(&pvc(), &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        let mut bad = pvc();
        bad["spec"] = json!({"accessModes": ["Sometimes"]});
        validate_pvc(&bad, &mut errs);
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["spec.accessModes", "spec.resources[storage]"]);
        // Binding fills in the volume; a user may not change the modes.
        let mut bound = pvc();
        bound["spec"]["volumeName"] = json!("pv-1");
        bound["spec"]["storageClassName"] = json!("local-path");
        bound["spec"]["resources"]["requests"]["storage"] = json!("2Gi");
        let mut errs = Vec::new();
        validate_pvc_update(&pvc(), &bound, &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        let mut changed = bound.clone();
        changed["spec"]["accessModes"] = json!(["ReadWriteMany"]);
        validate_pvc_update(&bound, &changed, &mut errs);
        assert_eq!(errs[0].path, "spec");
    }
}
