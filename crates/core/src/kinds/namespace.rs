//! Namespace: its defaults (the `kubernetes` finalizer, `Active`, the name label).

use serde_json::{json, Value};

use super::{child, default_field, str_at};

pub(super) fn default_namespace(obj: &mut Value) {
    let name = str_at(obj, "/metadata/name").to_string();
    let spec = child(obj, "spec");
    default_field(spec, "finalizers", json!(["kubernetes"]));
    let status = child(obj, "status");
    default_field(status, "phase", json!("Active"));
    // Kubernetes labels every namespace with its own name, for namespace selectors.
    let meta = child(obj, "metadata");
    let labels = child(meta, "labels");
    if let Some(m) = labels.as_object_mut() {
        m.insert("kubernetes.io/metadata.name".into(), json!(name));
    }
}
