//! apps/v1 Deployments, ReplicaSets and DaemonSets, and core/v1 ReplicationControllers (a
//! ReplicaSet with an equality-only selector): defaults, validation, table.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::{json, Value};

use super::{arr_at, child, default_field, int_at, str_at};
use crate::resources::Kind;
use crate::selector::Selector;
use crate::table::{col, int_col, wide, Column, AGE, NAME};
use crate::validation::FieldError;

fn default_template(obj: &mut Value) {
    let spec = child(obj, "spec");
    default_field(spec, "replicas", json!(1));
    let template = child(spec, "template");
    let pod_spec = child(template, "spec");
    super::default_pod_spec(pod_spec);
}

pub(super) fn default_deployment(obj: &mut Value) {
    default_template(obj);
    let spec = child(obj, "spec");
    default_field(spec, "revisionHistoryLimit", json!(10));
    default_field(spec, "progressDeadlineSeconds", json!(600));
    let strategy = child(spec, "strategy");
    default_field(strategy, "type", json!("RollingUpdate"));
    if strategy.get("type") == Some(&json!("RollingUpdate")) {
        let ru = child(strategy, "rollingUpdate");
        default_field(ru, "maxUnavailable", json!("25%"));
        default_field(ru, "maxSurge", json!("25%"));
    }
}

pub(super) fn default_replicaset(obj: &mut Value) {
    default_template(obj);
}

/// A ReplicationController's selector and labels default to its template's labels.
pub(super) fn default_replication_controller(obj: &mut Value) {
    default_template(obj);
    let labels = obj
        .pointer("/spec/template/metadata/labels")
        .filter(|l| l.as_object().is_some_and(|m| !m.is_empty()))
        .cloned();
    if let Some(labels) = labels {
        let spec = child(obj, "spec");
        if spec
            .get("selector")
            .is_none_or(|s| s.as_object().is_none_or(|m| m.is_empty()))
        {
            spec["selector"] = labels.clone();
        }
        let meta = child(obj, "metadata");
        if meta
            .get("labels")
            .is_none_or(|s| s.as_object().is_none_or(|m| m.is_empty()))
        {
            meta["labels"] = labels;
        }
    }
}

pub(super) fn default_statefulset(obj: &mut Value) {
    default_template(obj);
    let spec = child(obj, "spec");
    default_field(spec, "podManagementPolicy", json!("OrderedReady"));
    default_field(spec, "revisionHistoryLimit", json!(10));
    let strategy = child(spec, "updateStrategy");
    default_field(strategy, "type", json!("RollingUpdate"));
    if strategy.get("type") == Some(&json!("RollingUpdate")) {
        default_field(child(strategy, "rollingUpdate"), "partition", json!(0));
    }
    let retention = child(spec, "persistentVolumeClaimRetentionPolicy");
    default_field(retention, "whenDeleted", json!("Retain"));
    default_field(retention, "whenScaled", json!("Retain"));
    if let Some(claims) = spec
        .get_mut("volumeClaimTemplates")
        .and_then(Value::as_array_mut)
    {
        for c in claims {
            default_field(child(c, "spec"), "volumeMode", json!("Filesystem"));
        }
    }
}

pub(super) fn validate_statefulset(obj: &Value, errs: &mut Vec<FieldError>) {
    if let Some(r) = obj
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .filter(|r| *r < 0)
    {
        errs.push(FieldError::invalid(
            "spec.replicas",
            r,
            "must be greater than or equal to 0",
        ));
    }
    validate_selector(obj, Some("empty selector is invalid for statefulset"), errs);
    validate_long_running_template(obj, errs);
    if let Some(s) = obj
        .pointer("/spec/ordinals/start")
        .and_then(Value::as_i64)
        .filter(|s| *s < 0)
    {
        errs.push(FieldError::invalid(
            "spec.ordinals.start",
            s,
            "must be greater than or equal to 0",
        ));
    }
    let policy = str_at(obj, "/spec/podManagementPolicy");
    if !["OrderedReady", "Parallel"].contains(&policy) {
        errs.push(FieldError::not_supported(
            "spec.podManagementPolicy",
            policy,
            &["OrderedReady", "Parallel"],
        ));
    }
    let strategy = str_at(obj, "/spec/updateStrategy/type");
    if !["RollingUpdate", "OnDelete"].contains(&strategy) {
        errs.push(FieldError::not_supported(
            "spec.updateStrategy.type",
            strategy,
            &["OnDelete", "RollingUpdate"],
        ));
    }
    if let Some(p) = obj
        .pointer("/spec/updateStrategy/rollingUpdate/partition")
        .and_then(Value::as_i64)
        .filter(|p| *p < 0)
    {
        errs.push(FieldError::invalid(
            "spec.updateStrategy.rollingUpdate.partition",
            p,
            "must be greater than or equal to 0",
        ));
    }
    let max = obj.pointer("/spec/updateStrategy/rollingUpdate/maxUnavailable");
    validate_int_or_percent(
        "spec.updateStrategy.rollingUpdate.maxUnavailable",
        max,
        errs,
    );
    if matches!(max, Some(v) if v == &json!(0) || v == &json!("0%")) {
        errs.push(FieldError::invalid(
            "spec.updateStrategy.rollingUpdate.maxUnavailable",
            max.cloned().unwrap_or_default(),
            "must be greater than 0",
        ));
    }
    for f in ["whenDeleted", "whenScaled"] {
        let v = str_at(
            obj,
            &format!("/spec/persistentVolumeClaimRetentionPolicy/{f}"),
        );
        if !["Retain", "Delete"].contains(&v) {
            errs.push(FieldError::not_supported(
                format!("spec.persistentVolumeClaimRetentionPolicy.{f}"),
                v,
                &["Delete", "Retain"],
            ));
        }
    }
    for (i, c) in arr_at(obj, "/spec/volumeClaimTemplates").iter().enumerate() {
        let path = format!("spec.volumeClaimTemplates[{i}]");
        let name = str_at(c, "/metadata/name");
        if let Some(why) = crate::validation::dns1123_subdomain(name) {
            errs.push(FieldError::invalid(
                format!("{path}.metadata.name"),
                name,
                why,
            ));
        }
        super::storage::validate_claim_spec(
            &format!("{path}.spec"),
            c.get("spec").unwrap_or(&Value::Null),
            errs,
        );
    }
}

/// What a StatefulSet update may change, as Kubernetes allows it.
pub(super) fn validate_statefulset_update(old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
    let fixed = |o: &Value| {
        let mut s = o.get("spec").cloned().unwrap_or(json!({}));
        if let Some(m) = s.as_object_mut() {
            for k in [
                "replicas",
                "ordinals",
                "template",
                "updateStrategy",
                "persistentVolumeClaimRetentionPolicy",
                "minReadySeconds",
                "revisionHistoryLimit",
            ] {
                m.remove(k);
            }
        }
        s
    };
    if fixed(old) != fixed(new) {
        errs.push(FieldError::forbidden(
            "spec",
            "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
        ));
    }
}

pub(super) fn statefulset_columns() -> Vec<Column> {
    vec![
        NAME,
        col("Ready", "Number of the pod with ready state"),
        AGE,
        wide("Containers", "Names of each container in the template."),
        wide(
            "Images",
            "Images referenced by each container in the template.",
        ),
    ]
}

pub(super) fn statefulset_cells(obj: &Value, age: String) -> Vec<Value> {
    let containers = arr_at(obj, "/spec/template/spec/containers");
    let names: Vec<&str> = containers.iter().map(|c| str_at(c, "/name")).collect();
    let images: Vec<&str> = containers.iter().map(|c| str_at(c, "/image")).collect();
    vec![
        json!(str_at(obj, "/metadata/name")),
        json!(format!(
            "{}/{}",
            int_at(obj, "/status/readyReplicas"),
            int_at(obj, "/spec/replicas")
        )),
        json!(age),
        json!(names.join(",")),
        json!(images.join(",")),
    ]
}

pub(super) fn default_daemonset(obj: &mut Value) {
    let spec = child(obj, "spec");
    super::default_pod_spec(child(child(spec, "template"), "spec"));
    default_field(spec, "revisionHistoryLimit", json!(10));
    let strategy = child(spec, "updateStrategy");
    default_field(strategy, "type", json!("RollingUpdate"));
    if strategy.get("type") == Some(&json!("RollingUpdate")) {
        let ru = child(strategy, "rollingUpdate");
        default_field(ru, "maxUnavailable", json!(1));
        default_field(ru, "maxSurge", json!(0));
    }
}

pub(super) fn validate_daemonset(obj: &Value, errs: &mut Vec<FieldError>) {
    validate_selector(obj, Some("empty selector is invalid for daemonset"), errs);
    validate_long_running_template(obj, errs);
    if let Some(m) = obj.pointer("/spec/minReadySeconds").and_then(Value::as_i64) {
        if m < 0 {
            errs.push(FieldError::invalid(
                "spec.minReadySeconds",
                m,
                "must be greater than or equal to 0",
            ));
        }
    }
    let strategy = str_at(obj, "/spec/updateStrategy/type");
    if !["RollingUpdate", "OnDelete"].contains(&strategy) {
        errs.push(FieldError::not_supported(
            "spec.updateStrategy.type",
            strategy,
            &["OnDelete", "RollingUpdate"],
        ));
    }
    if strategy == "RollingUpdate" {
        validate_rolling_update(
            obj.pointer("/spec/updateStrategy/rollingUpdate"),
            "spec.updateStrategy.rollingUpdate",
            errs,
        );
    }
}

/// `maxSurge` and `maxUnavailable`: each a count or a percentage, not both zero.
fn validate_rolling_update(ru: Option<&Value>, path: &str, errs: &mut Vec<FieldError>) {
    let surge = ru.and_then(|r| r.get("maxSurge"));
    let unavail = ru.and_then(|r| r.get("maxUnavailable"));
    validate_int_or_percent(&format!("{path}.maxSurge"), surge, errs);
    validate_int_or_percent(&format!("{path}.maxUnavailable"), unavail, errs);
    let zero = |v: Option<&Value>| matches!(v, Some(v) if v == &json!(0) || v == &json!("0%"));
    if zero(surge) && zero(unavail) {
        errs.push(FieldError::invalid(
            format!("{path}.maxUnavailable"),
            unavail.cloned().unwrap_or_default(),
            "may not be 0 when `maxSurge` is 0",
        ));
    }
}

pub(super) fn daemonset_columns() -> Vec<Column> {
    vec![
        NAME,
        int_col("Desired", "The desired number of nodes that should be running the daemon pod."),
        int_col("Current", "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod."),
        int_col("Ready", "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and ready."),
        int_col("Up-to-date", "The total number of nodes that are running updated daemon pod"),
        int_col("Available", "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available (ready for at least spec.minReadySeconds)"),
        col("Node Selector", "NodeSelector is a selector which must be true for the pod to fit on a node. Selector which must match a node's labels for the pod to be scheduled on that node."),
        AGE,
        wide("Containers", "Names of each container in the template."),
        wide("Images", "Images referenced by each container in the template."),
        wide("Selector", "A label query over pods that are managed by the daemon set."),
    ]
}

pub(super) fn daemonset_cells(obj: &Value, age: String) -> Vec<Value> {
    let containers = arr_at(obj, "/spec/template/spec/containers");
    let names: Vec<&str> = containers.iter().map(|c| str_at(c, "/name")).collect();
    let images: Vec<&str> = containers.iter().map(|c| str_at(c, "/image")).collect();
    let node_selector = obj
        .pointer("/spec/template/spec/nodeSelector")
        .and_then(Value::as_object)
        .map(|m| {
            let mut kv: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect();
            kv.sort();
            kv.join(",")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "<none>".into());
    let n = |f: &str| json!(int_at(obj, &format!("/status/{f}")));
    vec![
        json!(str_at(obj, "/metadata/name")),
        n("desiredNumberScheduled"),
        n("currentNumberScheduled"),
        n("numberReady"),
        n("updatedNumberScheduled"),
        n("numberAvailable"),
        json!(node_selector),
        json!(age),
        json!(names.join(",")),
        json!(images.join(",")),
        json!(selector_cell(obj.pointer("/spec/selector"))),
    ]
}

pub(super) fn validate_replication_controller(obj: &Value, errs: &mut Vec<FieldError>) {
    let replicas = obj.pointer("/spec/replicas").and_then(Value::as_i64);
    if let Some(r) = replicas.filter(|r| *r < 0) {
        errs.push(FieldError::invalid(
            "spec.replicas",
            r,
            "must be greater than or equal to 0",
        ));
    }
    let selector = obj
        .pointer("/spec/selector")
        .and_then(Value::as_object)
        .filter(|m| !m.is_empty());
    let Some(selector) = selector else {
        errs.push(FieldError::required("spec.selector"));
        return;
    };
    let labels = obj.pointer("/spec/template/metadata/labels");
    let matches = selector
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v));
    if !matches {
        errs.push(FieldError::invalid(
            "spec.template.metadata.labels",
            labels.cloned().unwrap_or(json!({})),
            "`selector` does not match template `labels`",
        ));
    }
    validate_long_running_template(obj, errs);
}

/// `spec.template.spec`: a valid pod spec whose pods run until stopped (`Always`).
fn validate_long_running_template(obj: &Value, errs: &mut Vec<FieldError>) {
    let pod_spec = obj.pointer("/spec/template/spec").unwrap_or(&Value::Null);
    super::validate_pod_spec("spec.template.spec", pod_spec, errs);
    let restart = str_at(pod_spec, "/restartPolicy");
    if !restart.is_empty() && restart != "Always" {
        errs.push(FieldError::not_supported(
            "spec.template.spec.restartPolicy",
            restart,
            &["Always"],
        ));
    }
}

/// `spec.selector`: present, a label selector, and matching the template's labels;
/// `refuse_empty` is the message for an empty one, where empty is refused.
pub(super) fn validate_selector(
    obj: &Value,
    refuse_empty: Option<&str>,
    errs: &mut Vec<FieldError>,
) {
    let Some(sel) = obj.pointer("/spec/selector").filter(|s| !s.is_null()) else {
        errs.push(FieldError::required("spec.selector"));
        return;
    };
    let parsed = serde_json::from_value::<LabelSelector>(sel.clone())
        .ok()
        .and_then(|s| Selector::from_label_selector(&s).ok());
    let Some(s) = parsed else {
        errs.push(FieldError::invalid(
            "spec.selector",
            sel,
            "invalid label selector",
        ));
        return;
    };
    if let (true, Some(why)) = (s.is_empty(), refuse_empty) {
        errs.push(FieldError::invalid("spec.selector", sel, why));
        return;
    }
    let template = obj.pointer("/spec/template").unwrap_or(&Value::Null);
    if !s.matches_object(template) {
        let labels = template
            .pointer("/metadata/labels")
            .cloned()
            .unwrap_or(json!({}));
        errs.push(FieldError::invalid(
            "spec.template.metadata.labels",
            labels,
            "`selector` does not match template `labels`",
        ));
    }
}

pub(super) fn validate_int_or_percent(path: &str, v: Option<&Value>, errs: &mut Vec<FieldError>) {
    match v {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) if n.as_i64().is_some_and(|n| n >= 0) => {}
        Some(Value::String(s))
            if s.strip_suffix('%')
                .and_then(|p| p.parse::<u32>().ok())
                .is_some_and(|p| p <= 100) => {}
        Some(other) => errs.push(FieldError::invalid(
            path,
            other,
            "must be a non-negative integer or a percentage between 0% and 100%",
        )),
    }
}

pub(super) fn validate_workload(kind: Kind, obj: &Value, errs: &mut Vec<FieldError>) {
    let replicas = obj.pointer("/spec/replicas").and_then(Value::as_i64);
    if replicas.is_some_and(|r| r < 0) {
        errs.push(FieldError::invalid(
            "spec.replicas",
            replicas.unwrap_or_default(),
            "must be greater than or equal to 0",
        ));
    }
    validate_selector(obj, Some("empty selector is invalid for deployment"), errs);
    validate_long_running_template(obj, errs);
    if kind == Kind::Deployment {
        let strategy = str_at(obj, "/spec/strategy/type");
        if !["RollingUpdate", "Recreate"].contains(&strategy) {
            errs.push(FieldError::not_supported(
                "spec.strategy.type",
                strategy,
                &["Recreate", "RollingUpdate"],
            ));
        }
        if strategy == "Recreate" && obj.pointer("/spec/strategy/rollingUpdate").is_some() {
            errs.push(FieldError::forbidden(
                "spec.strategy.rollingUpdate",
                "may not be specified when strategy `type` is 'Recreate'",
            ));
        }
        if strategy == "RollingUpdate" {
            validate_rolling_update(
                obj.pointer("/spec/strategy/rollingUpdate"),
                "spec.strategy.rollingUpdate",
                errs,
            );
        }
    }
}

pub(super) fn columns(kind: Kind) -> Vec<Column> {
    let mut cols = vec![NAME];
    if kind == Kind::Deployment {
        cols.extend([
            col("Ready", "Number of the pod with ready state"),
            int_col("Up-to-date", "Total number of non-terminated pods targeted by this deployment that have the desired template spec."),
            int_col("Available", "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment."),
        ]);
    } else {
        cols.extend([
            int_col("Desired", "Number of desired pods."),
            int_col("Current", "Number of actual replicas."),
            int_col(
                "Ready",
                "The number of ready replicas for this replica set.",
            ),
        ]);
    }
    cols.extend([
        AGE,
        wide("Containers", "Names of each container in the template."),
        wide("Images", "Images referenced by each container in the template."),
        wide("Selector", "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment."),
    ]);
    cols
}

/// The SELECTOR cell: `app=web,tier in (a,b)`, or `<none>`; a ReplicationController's
/// selector is a plain map.
fn selector_cell(sel: Option<&Value>) -> String {
    let plain = sel
        .filter(|s| s.get("matchLabels").is_none() && s.get("matchExpressions").is_none())
        .map(|s| json!({ "matchLabels": s }));
    let s = crate::selector::label_selector_string(plain.as_ref().or(sel));
    if s.is_empty() {
        "<none>".into()
    } else {
        s
    }
}

pub(super) fn cells(kind: Kind, obj: &Value, age: String) -> Vec<Value> {
    let containers = arr_at(obj, "/spec/template/spec/containers");
    let names: Vec<&str> = containers.iter().map(|c| str_at(c, "/name")).collect();
    let images: Vec<&str> = containers.iter().map(|c| str_at(c, "/image")).collect();
    let replicas = int_at(obj, "/spec/replicas");
    let ready = int_at(obj, "/status/readyReplicas");
    let mut cells = vec![json!(str_at(obj, "/metadata/name"))];
    if kind == Kind::Deployment {
        cells.extend([
            json!(format!("{ready}/{replicas}")),
            json!(int_at(obj, "/status/updatedReplicas")),
            json!(int_at(obj, "/status/availableReplicas")),
        ]);
    } else {
        cells.extend([
            json!(replicas),
            json!(int_at(obj, "/status/replicas")),
            json!(ready),
        ]);
    }
    cells.extend([
        json!(age),
        json!(names.join(",")),
        json!(images.join(",")),
        json!(selector_cell(obj.pointer("/spec/selector"))),
    ]);
    cells
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment() -> Value {
        json!({"metadata": {"name": "web", "namespace": "default"}, "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "nginx:1"}]}}}})
    }

    #[test]
    fn defaults_and_valid_deployment() {
        let mut d = deployment();
        default_deployment(&mut d);
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        let mut errs = Vec::new();
        validate_workload(Kind::Deployment, &d, &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
    }

    #[test]
    fn selector_must_match_template() {
        let mut d = deployment();
        d["spec"]["template"]["metadata"]["labels"] = json!({"app": "other"});
        default_deployment(&mut d);
        let mut errs = Vec::new();
        validate_workload(Kind::Deployment, &d, &mut errs);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].path, "spec.template.metadata.labels");
    }
}
