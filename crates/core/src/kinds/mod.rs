//! Per-kind behaviour: defaulting, validation, table columns and field selectors, as
//! Kubernetes defines them for the kinds Berth serves. Each function dispatches on [`Kind`]
//! to the kind's own module.

mod apps;
mod autoscaling;
pub mod batch;
mod config;
pub mod convert;
mod namespace;
mod node;
mod pod;
mod policy;
mod rbac;
mod service;
pub mod storage;
mod tables;

use jiff::Timestamp;
use serde_json::{json, Value};

use crate::resources::{Kind, Resource};
use crate::table::Column;
use crate::validation::{self, FieldError};

pub use pod::{default_pod_spec, pod_status_reason, validate_pod_spec};

/// The string at a JSON pointer, or "".
pub fn str_at<'a>(obj: &'a Value, pointer: &str) -> &'a str {
    obj.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// The integer at a JSON pointer, or 0.
pub(crate) fn int_at(obj: &Value, pointer: &str) -> i64 {
    obj.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

/// The array at a JSON pointer, or an empty slice.
pub fn arr_at<'a>(obj: &'a Value, pointer: &str) -> &'a [Value] {
    obj.pointer(pointer)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// Set `obj[key] = value` if `obj` is an object and the key is absent or null.
pub(crate) fn default_field(obj: &mut Value, key: &str, value: Value) {
    if let Some(map) = obj.as_object_mut() {
        let slot = map.entry(key.to_string()).or_insert(Value::Null);
        if slot.is_null() {
            *slot = value;
        }
    }
}

/// The object at `obj[key]`, created empty if absent.
pub fn child<'a>(obj: &'a mut Value, key: &str) -> &'a mut Value {
    default_field(obj, key, json!({}));
    obj.get_mut(key).expect("just defaulted")
}

/// Fill in the defaults Kubernetes applies on create and update.
pub fn default(kind: Kind, obj: &mut Value) {
    match kind {
        Kind::Pod => pod::default_pod(obj),
        Kind::Deployment => apps::default_deployment(obj),
        Kind::ReplicaSet => apps::default_replicaset(obj),
        Kind::ReplicationController => apps::default_replication_controller(obj),
        Kind::Service => service::default_service(obj),
        Kind::Namespace => namespace::default_namespace(obj),
        Kind::Secret => {
            if str_at(obj, "/type").is_empty() {
                obj["type"] = json!("Opaque");
            }
        }
        Kind::HorizontalPodAutoscaler => autoscaling::default_hpa(obj),
        Kind::Job => batch::default_job(obj),
        Kind::CronJob => batch::default_cronjob(obj),
        Kind::DaemonSet => apps::default_daemonset(obj),
        Kind::StatefulSet => apps::default_statefulset(obj),
        Kind::PersistentVolumeClaim => storage::default_pvc(obj),
        Kind::PersistentVolume => storage::default_pv(obj),
        Kind::StorageClass => storage::default_storage_class(obj),
        Kind::RoleBinding | Kind::ClusterRoleBinding => rbac::default_binding(obj),
        Kind::CustomResourceDefinition => crate::custom::default_definition(obj),
        Kind::Custom
        | Kind::PodDisruptionBudget
        | Kind::ControllerRevision
        | Kind::ServiceAccount
        | Kind::Role
        | Kind::ClusterRole
        | Kind::Node
        | Kind::Endpoints
        | Kind::Event
        | Kind::ConfigMap
        | Kind::Lease
        | Kind::EndpointSlice => {}
    }
}

/// Check an object (after defaulting) before it is stored.
pub fn validate(res: &Resource, obj: &Value) -> Vec<FieldError> {
    let mut errs = validate_meta(res, obj);
    match res.kind {
        Kind::Pod => pod::validate_pod(obj, &mut errs),
        Kind::Deployment | Kind::ReplicaSet => apps::validate_workload(res.kind, obj, &mut errs),
        Kind::Service => service::validate_service(obj, &mut errs),
        Kind::ConfigMap | Kind::Secret => config::validate_data_keys(obj, &mut errs),
        Kind::HorizontalPodAutoscaler => autoscaling::validate_hpa(obj, &mut errs),
        Kind::Job => batch::validate_job(obj, &mut errs),
        Kind::CronJob => batch::validate_cronjob(obj, &mut errs),
        Kind::DaemonSet => apps::validate_daemonset(obj, &mut errs),
        Kind::PodDisruptionBudget => policy::validate_pdb(obj, &mut errs),
        Kind::StatefulSet => apps::validate_statefulset(obj, &mut errs),
        Kind::PersistentVolumeClaim => storage::validate_pvc(obj, &mut errs),
        Kind::PersistentVolume => storage::validate_pv(obj, &mut errs),
        Kind::StorageClass => storage::validate_storage_class(obj, &mut errs),
        Kind::ReplicationController => apps::validate_replication_controller(obj, &mut errs),
        Kind::Role | Kind::ClusterRole => rbac::validate_role(obj, res.namespaced, &mut errs),
        Kind::RoleBinding | Kind::ClusterRoleBinding => {
            rbac::validate_binding(obj, res.namespaced, &mut errs)
        }
        Kind::CustomResourceDefinition => crate::custom::validate_definition(obj, &mut errs),
        Kind::Custom
        | Kind::ControllerRevision
        | Kind::ServiceAccount
        | Kind::Namespace
        | Kind::Node
        | Kind::Endpoints
        | Kind::Event
        | Kind::Lease
        | Kind::EndpointSlice => {}
    }
    errs
}

/// Check an update against the stored object: fields Kubernetes makes immutable.
pub fn validate_update(res: &Resource, old: &Value, new: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    match res.kind {
        Kind::Deployment | Kind::ReplicaSet | Kind::DaemonSet
            if old.pointer("/spec/selector") != new.pointer("/spec/selector") =>
        {
            errs.push(FieldError::invalid(
                "spec.selector",
                new.pointer("/spec/selector").unwrap_or(&Value::Null),
                "field is immutable",
            ));
        }
        Kind::Service => service::validate_service_update(old, new, &mut errs),
        Kind::Pod => pod::validate_pod_update(old, new, &mut errs),
        Kind::Job => batch::validate_job_update(old, new, &mut errs),
        Kind::StatefulSet => {
            if old.pointer("/spec/selector") != new.pointer("/spec/selector") {
                errs.push(FieldError::invalid(
                    "spec.selector",
                    new.pointer("/spec/selector").unwrap_or(&Value::Null),
                    "field is immutable",
                ));
            }
            apps::validate_statefulset_update(old, new, &mut errs);
        }
        Kind::PersistentVolumeClaim => storage::validate_pvc_update(old, new, &mut errs),
        Kind::StorageClass => storage::validate_storage_class_update(old, new, &mut errs),
        Kind::RoleBinding | Kind::ClusterRoleBinding => {
            rbac::validate_binding_update(old, new, &mut errs)
        }
        Kind::ConfigMap | Kind::Secret
            if old.get("immutable") == Some(&Value::Bool(true))
                && (old.get("data") != new.get("data")
                    || old.get("binaryData") != new.get("binaryData")
                    || old
                        .get("stringData")
                        .is_some_and(|_| new.get("stringData").is_some())) =>
        {
            errs.push(FieldError::forbidden(
                "data",
                "field is immutable when `immutable` is set",
            ));
        }
        _ => {}
    }
    errs
}

fn validate_meta(res: &Resource, obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let name = str_at(obj, "/metadata/name");
    if name.is_empty() {
        errs.push(FieldError::required("metadata.name"));
    } else {
        let why = match res.kind {
            // Namespaces and services are DNS labels: they become DNS names.
            Kind::Namespace | Kind::Service => validation::dns1123_label(name),
            // RBAC names are path segments: `system:node`.
            Kind::Role | Kind::ClusterRole | Kind::RoleBinding | Kind::ClusterRoleBinding => {
                rbac::path_segment(name)
            }
            _ => validation::dns1123_subdomain(name),
        };
        if let Some(why) = why {
            errs.push(FieldError::invalid("metadata.name", name, why));
        }
    }
    if res.namespaced {
        let ns = str_at(obj, "/metadata/namespace");
        if let Some(why) = validation::dns1123_label(ns) {
            errs.push(FieldError::invalid("metadata.namespace", ns, why));
        }
    }
    if let Some(labels) = obj.pointer("/metadata/labels").and_then(Value::as_object) {
        validation::labels("metadata.labels", labels, &mut errs);
    }
    if let Some(ann) = obj
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
    {
        let mut total = 0;
        for (k, v) in ann {
            if let Some(why) = validation::qualified_name(k) {
                errs.push(FieldError::invalid("metadata.annotations", k, why));
            }
            total += k.len() + v.as_str().map_or(0, str::len);
        }
        if total > 256 * 1024 {
            errs.push(FieldError {
                path: "metadata.annotations".into(),
                reason: validation::Reason::TooLong,
                detail: format!("may not be more than 262144 bytes (found {total})"),
            });
        }
    }
    errs
}

/// The field selector labels a kind supports besides `metadata.name` and
/// `metadata.namespace`.
pub fn field_labels(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Pod => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        Kind::Event => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        Kind::Node => &["spec.unschedulable"],
        Kind::Secret => &["type"],
        Kind::Namespace => &["status.phase"],
        Kind::ReplicaSet | Kind::ReplicationController => &["status.replicas"],
        _ => &[],
    }
}

/// The table columns kubectl shows for a kind (`kubectl get`).
pub fn table_columns(kind: Kind) -> Vec<Column> {
    match kind {
        Kind::Pod => pod::columns(),
        Kind::Node => node::columns(),
        Kind::Service => service::columns(),
        Kind::Deployment | Kind::ReplicaSet | Kind::ReplicationController => apps::columns(kind),
        Kind::Job => batch::job_columns(),
        Kind::CronJob => batch::cronjob_columns(),
        Kind::DaemonSet => apps::daemonset_columns(),
        Kind::PodDisruptionBudget => policy::pdb_columns(),
        Kind::StatefulSet => apps::statefulset_columns(),
        Kind::PersistentVolumeClaim => storage::pvc_columns(),
        Kind::PersistentVolume => storage::pv_columns(),
        Kind::StorageClass => storage::storage_class_columns(),
        Kind::Role | Kind::ClusterRole => rbac::role_columns(),
        Kind::RoleBinding | Kind::ClusterRoleBinding => rbac::binding_columns(),
        Kind::ServiceAccount => rbac::service_account_columns(),
        _ => tables::columns(kind),
    }
}

/// One table row's cells for an object, with ages measured from `now`.
pub fn table_cells(kind: Kind, obj: &Value, now: Timestamp) -> Vec<Value> {
    let age = crate::table::age(obj, now);
    match kind {
        Kind::Pod => pod::cells(obj, age),
        Kind::Node => node::cells(obj, age),
        Kind::Service => service::cells(obj, age),
        Kind::Deployment | Kind::ReplicaSet | Kind::ReplicationController => {
            apps::cells(kind, obj, age)
        }
        Kind::Job => batch::job_cells(obj, age, now),
        Kind::CronJob => batch::cronjob_cells(obj, age, now),
        Kind::DaemonSet => apps::daemonset_cells(obj, age),
        Kind::PodDisruptionBudget => policy::pdb_cells(obj, age),
        Kind::StatefulSet => apps::statefulset_cells(obj, age),
        Kind::PersistentVolumeClaim => storage::pvc_cells(obj, age),
        Kind::PersistentVolume => storage::pv_cells(obj, age),
        Kind::StorageClass => storage::storage_class_cells(obj, age),
        Kind::Role | Kind::ClusterRole => rbac::role_cells(obj),
        Kind::RoleBinding | Kind::ClusterRoleBinding => rbac::binding_cells(obj, age),
        Kind::ServiceAccount => rbac::service_account_cells(obj, age),
        _ => tables::cells(kind, obj, age, now),
    }
}
