//! policy/v1 PodDisruptionBudgets: validation and `kubectl get`'s columns.

use serde_json::{json, Value};

use super::{int_at, str_at};
use crate::table::{col, int_col, Column, AGE, NAME};
use crate::validation::FieldError;

pub(super) fn validate_pdb(obj: &Value, errs: &mut Vec<FieldError>) {
    let set = |f: &str| obj.pointer(&format!("/spec/{f}")).filter(|v| !v.is_null());
    let (min, max) = (set("minAvailable"), set("maxUnavailable"));
    if min.is_some() && max.is_some() {
        errs.push(FieldError::invalid(
            "spec",
            obj.pointer("/spec").cloned().unwrap_or_default(),
            "minAvailable and maxUnavailable cannot be both set",
        ));
    }
    for (f, v) in [("minAvailable", min), ("maxUnavailable", max)] {
        if let Some(v) = v {
            super::apps::validate_int_or_percent(&format!("spec.{f}"), Some(v), errs);
        }
    }
    if let Some(sel) = obj.pointer("/spec/selector").filter(|s| !s.is_null()) {
        let ok = serde_json::from_value::<
            k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
        >(sel.clone())
        .ok()
        .and_then(|s| crate::selector::Selector::from_label_selector(&s).ok())
        .is_some();
        if !ok {
            errs.push(FieldError::invalid(
                "spec.selector",
                sel,
                "invalid label selector",
            ));
        }
    }
    let policy = str_at(obj, "/spec/unhealthyPodEvictionPolicy");
    if !["", "IfHealthyBudget", "AlwaysAllow"].contains(&policy) {
        errs.push(FieldError::not_supported(
            "spec.unhealthyPodEvictionPolicy",
            policy,
            &["AlwaysAllow", "IfHealthyBudget"],
        ));
    }
}

pub(super) fn pdb_columns() -> Vec<Column> {
    vec![
        NAME,
        col(
            "Min Available",
            "The minimum number of pods that must be available.",
        ),
        col(
            "Max Unavailable",
            "The maximum number of pods that may be unavailable.",
        ),
        int_col(
            "Allowed Disruptions",
            "Calculated number of pods that may be disrupted at this time.",
        ),
        AGE,
    ]
}

pub(super) fn pdb_cells(obj: &Value, age: String) -> Vec<Value> {
    let cell = |f: &str| match obj.pointer(&format!("/spec/{f}")) {
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) => s.clone(),
        _ => "N/A".into(),
    };
    vec![
        json!(str_at(obj, "/metadata/name")),
        json!(cell("minAvailable")),
        json!(cell("maxUnavailable")),
        json!(int_at(obj, "/status/disruptionsAllowed")),
        json!(age),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(spec: Value) -> Vec<String> {
        let mut errs = Vec::new();
        validate_pdb(&json!({"metadata": {"name": "p"}, "spec": spec}), &mut errs);
        errs.iter().map(|e| e.path.clone()).collect()
    }

    #[test]
    fn one_of_min_available_and_max_unavailable() {
        assert!(
            errors(json!({"minAvailable": 2, "selector": {"matchLabels": {"a": "b"}}})).is_empty()
        );
        assert!(errors(json!({"maxUnavailable": "25%"})).is_empty());
        assert_eq!(
            errors(json!({"minAvailable": 1, "maxUnavailable": 1})),
            ["spec"]
        );
        assert_eq!(
            errors(json!({"minAvailable": "150%"})),
            ["spec.minAvailable"]
        );
        assert_eq!(
            errors(json!({"maxUnavailable": 1, "unhealthyPodEvictionPolicy": "Never"})),
            ["spec.unhealthyPodEvictionPolicy"]
        );
    }
}
