//! HorizontalPodAutoscaler: its defaults (a CPU target of 80 %), its validation, and the
//! TARGETS cell `kubectl get hpa` shows.

use serde_json::{json, Value};

use super::{arr_at, child, default_field, int_at, str_at};
use crate::validation::FieldError;

pub(super) fn default_hpa(obj: &mut Value) {
    let spec = child(obj, "spec");
    default_field(spec, "minReplicas", json!(1));
    if arr_at(spec, "/metrics").is_empty() {
        spec["metrics"] = json!([{"type": "Resource", "resource": {
            "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]);
    }
}

pub(super) fn validate_hpa(obj: &Value, errs: &mut Vec<FieldError>) {
    for f in ["kind", "name"] {
        if str_at(obj, &format!("/spec/scaleTargetRef/{f}")).is_empty() {
            errs.push(FieldError::required(format!("spec.scaleTargetRef.{f}")));
        }
    }
    let max = int_at(obj, "/spec/maxReplicas");
    let min = obj
        .pointer("/spec/minReplicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    if max < 1 {
        errs.push(FieldError::invalid(
            "spec.maxReplicas",
            max,
            "must be greater than or equal to 1",
        ));
    }
    if min < 1 {
        errs.push(FieldError::invalid(
            "spec.minReplicas",
            min,
            "must be greater than or equal to 1",
        ));
    }
    if min > max && max >= 1 {
        errs.push(FieldError::invalid(
            "spec.maxReplicas",
            max,
            "must be greater than or equal to `minReplicas`",
        ));
    }
}

/// The TARGETS cell: each metric's current value against its target.
pub(super) fn targets(obj: &Value) -> String {
    let current = arr_at(obj, "/status/currentMetrics");
    let parts: Vec<String> = arr_at(obj, "/spec/metrics")
        .iter()
        .map(|m| {
            let name = str_at(m, "/resource/name");
            let target = m
                .pointer("/resource/target/averageUtilization")
                .and_then(Value::as_i64);
            let cur = current
                .iter()
                .find(|c| str_at(c, "/resource/name") == name)
                .and_then(|c| c.pointer("/resource/current/averageUtilization"))
                .and_then(Value::as_i64);
            let cur = cur.map_or("<unknown>".to_string(), |c| format!("{c}%"));
            match target {
                Some(t) => format!("{name}: {cur}/{t}%"),
                None => {
                    let v = str_at(m, "/resource/target/averageValue");
                    format!("{name}: {cur}/{v}")
                }
            }
        })
        .collect();
    if parts.is_empty() {
        "<none>".into()
    } else {
        parts.join(", ")
    }
}
