//! Conversion between a kind's storage version and the older versions served beside it
//! ([`crate::resources::ALSO_SERVED`]).
//!
//! autoscaling/v1 HorizontalPodAutoscalers carry only a CPU utilization target. What v2 holds
//! beyond that (other metrics, `behavior`, conditions, other current metrics) travels in v1
//! objects as JSON in the annotations Kubernetes uses for the purpose, so a v1 client that
//! reads, changes and writes back an object loses nothing.

use serde_json::{json, Map, Value};

use crate::kinds::str_at;
use crate::resources::{Kind, Resource};

const METRICS: &str = "autoscaling.alpha.kubernetes.io/metrics";
const BEHAVIOR: &str = "autoscaling.alpha.kubernetes.io/behavior";
const CONDITIONS: &str = "autoscaling.alpha.kubernetes.io/conditions";
const CURRENT_METRICS: &str = "autoscaling.alpha.kubernetes.io/current-metrics";

/// A conversion failure: the field path and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertError {
    pub field: String,
    pub message: String,
}

/// `obj`, stored in the storage version, as `served` shows it.
/// A custom kind's versions convert with the `None` strategy: only `apiVersion` changes.
pub fn from_storage(served: &Resource, mut obj: Value) -> Value {
    if served.kind == Kind::HorizontalPodAutoscaler && served.version == "v1" {
        obj = hpa_to_v1(obj);
    }
    if served.kind == Kind::Custom {
        if let Some(o) = obj.as_object_mut() {
            o.insert("apiVersion".into(), served.api_version().into());
        }
    }
    obj
}

/// `obj`, written in `served`'s version, in the version of `storage`.
pub fn to_storage(
    served: &Resource,
    storage: &Resource,
    mut obj: Value,
) -> Result<Value, ConvertError> {
    if served.kind == Kind::HorizontalPodAutoscaler && served.version == "v1" {
        return hpa_from_v1(obj);
    }
    if served.kind == Kind::Custom && served.api_version() == str_at(&obj, "/apiVersion") {
        if let Some(o) = obj.as_object_mut() {
            o.insert("apiVersion".into(), storage.api_version().into());
        }
    }
    Ok(obj)
}

/// Is `m` the metric v1 can say: CPU, as a utilization of requests?
fn is_cpu_utilization(m: &Value) -> bool {
    m["type"] == "Resource"
        && m["resource"]["name"] == "cpu"
        && m["resource"]["target"]["type"] == "Utilization"
}

fn annotations(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj["metadata"]["annotations"].is_object() {
        obj["metadata"]["annotations"] = json!({});
    }
    obj["metadata"]["annotations"]
        .as_object_mut()
        .expect("just made an object")
}

/// An HPA in `api_version` with `from`'s metadata, before spec and status.
fn hpa_envelope(api_version: &str, from: &Value) -> Value {
    json!({
        "apiVersion": api_version,
        "kind": "HorizontalPodAutoscaler",
        "metadata": from.get("metadata").cloned().unwrap_or(json!({})),
    })
}

/// The spec fields v1 and v2 share, copied.
fn shared_spec(spec: &Value) -> Value {
    let mut out = json!({
        "scaleTargetRef": spec["scaleTargetRef"],
        "maxReplicas": spec["maxReplicas"],
    });
    if !spec["minReplicas"].is_null() {
        out["minReplicas"] = spec["minReplicas"].clone();
    }
    out
}

/// The status fields v1 and v2 share, copied.
fn shared_status(status: &Value) -> Value {
    let mut out = json!({
        "currentReplicas": status["currentReplicas"].as_i64().unwrap_or(0),
        "desiredReplicas": status["desiredReplicas"].as_i64().unwrap_or(0),
    });
    for f in ["observedGeneration", "lastScaleTime"] {
        if !status[f].is_null() {
            out[f] = status[f].clone();
        }
    }
    out
}

fn hpa_to_v1(v2: Value) -> Value {
    let mut out = hpa_envelope("autoscaling/v1", &v2);
    let spec = &v2["spec"];
    let mut v1_spec = shared_spec(spec);
    let mut rest = Vec::new();
    for m in spec["metrics"].as_array().into_iter().flatten() {
        if is_cpu_utilization(m) && v1_spec.get("targetCPUUtilizationPercentage").is_none() {
            v1_spec["targetCPUUtilizationPercentage"] =
                m["resource"]["target"]["averageUtilization"].clone();
        } else {
            rest.push(m.clone());
        }
    }
    out["spec"] = v1_spec;
    let mut carried = Vec::new();
    if !rest.is_empty() {
        carried.push((METRICS, Value::Array(rest)));
    }
    if !spec["behavior"].is_null() {
        carried.push((BEHAVIOR, spec["behavior"].clone()));
    }
    if let Some(status) = v2.get("status").filter(|s| s.is_object()) {
        let mut v1_status = shared_status(status);
        let mut rest = Vec::new();
        for m in status["currentMetrics"].as_array().into_iter().flatten() {
            let cpu = m["type"] == "Resource" && m["resource"]["name"] == "cpu";
            let util = &m["resource"]["current"]["averageUtilization"];
            if cpu && !util.is_null() && v1_status.get("currentCPUUtilizationPercentage").is_none()
            {
                v1_status["currentCPUUtilizationPercentage"] = util.clone();
            } else {
                rest.push(m.clone());
            }
        }
        if !rest.is_empty() {
            carried.push((CURRENT_METRICS, Value::Array(rest)));
        }
        if status["conditions"]
            .as_array()
            .is_some_and(|c| !c.is_empty())
        {
            carried.push((CONDITIONS, status["conditions"].clone()));
        }
        out["status"] = v1_status;
    }
    if !carried.is_empty() {
        let a = annotations(&mut out);
        for (k, v) in carried {
            a.insert(k.into(), Value::String(v.to_string()));
        }
    }
    out
}

fn hpa_from_v1(v1: Value) -> Result<Value, ConvertError> {
    let mut out = hpa_envelope("autoscaling/v2", &v1);
    // Take each carried annotation off the object, parsed.
    let mut take = |key: &str| -> Result<Option<Value>, ConvertError> {
        let Some(raw) = out
            .pointer_mut("/metadata/annotations")
            .and_then(Value::as_object_mut)
            .and_then(|a| a.remove(key))
        else {
            return Ok(None);
        };
        let parsed = raw
            .as_str()
            .and_then(|s| serde_json::from_str(s).ok())
            .ok_or_else(|| ConvertError {
                field: format!("metadata.annotations[{key}]"),
                message: "must hold the autoscaling/v2 value as JSON".into(),
            })?;
        Ok(Some(parsed))
    };
    let extra_metrics = take(METRICS)?;
    let behavior = take(BEHAVIOR)?;
    let current_metrics = take(CURRENT_METRICS)?;
    let conditions = take(CONDITIONS)?;
    if let Some(meta) = out["metadata"].as_object_mut() {
        if meta
            .get("annotations")
            .and_then(Value::as_object)
            .is_some_and(Map::is_empty)
        {
            meta.remove("annotations");
        }
    }
    let spec = &v1["spec"];
    let mut metrics = Vec::new();
    if let Some(pct) = spec
        .get("targetCPUUtilizationPercentage")
        .filter(|v| !v.is_null())
    {
        metrics.push(json!({"type": "Resource", "resource": {"name": "cpu",
            "target": {"type": "Utilization", "averageUtilization": pct}}}));
    }
    metrics.extend(
        extra_metrics
            .and_then(|m| m.as_array().cloned())
            .unwrap_or_default(),
    );
    let mut v2_spec = shared_spec(spec);
    if !metrics.is_empty() {
        v2_spec["metrics"] = Value::Array(metrics);
    }
    if let Some(b) = behavior {
        v2_spec["behavior"] = b;
    }
    out["spec"] = v2_spec;
    if let Some(status) = v1.get("status").filter(|s| s.is_object()) {
        let mut v2_status = shared_status(status);
        let mut current = Vec::new();
        if let Some(pct) = status
            .get("currentCPUUtilizationPercentage")
            .filter(|v| !v.is_null())
        {
            current.push(json!({"type": "Resource", "resource": {"name": "cpu",
                "current": {"averageUtilization": pct}}}));
        }
        current.extend(
            current_metrics
                .and_then(|m| m.as_array().cloned())
                .unwrap_or_default(),
        );
        if !current.is_empty() {
            v2_status["currentMetrics"] = Value::Array(current);
        }
        if let Some(c) = conditions {
            v2_status["conditions"] = c;
        }
        out["status"] = v2_status;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{of_kind, ALSO_SERVED};

    fn v2() -> Value {
        json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "namespace": "default", "resourceVersion": "7"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "minReplicas": 1, "maxReplicas": 5,
                "metrics": [
                    {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}},
                    {"type": "Resource", "resource": {"name": "memory", "target": {"type": "Utilization", "averageUtilization": 70}}},
                ],
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 30}},
            },
            "status": {
                "currentReplicas": 2, "desiredReplicas": 3, "observedGeneration": 1,
                "currentMetrics": [
                    {"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 80, "averageValue": "400m"}}},
                    {"type": "Resource", "resource": {"name": "memory", "current": {"averageUtilization": 20}}},
                ],
                "conditions": [{"type": "AbleToScale", "status": "True", "reason": "ReadyForNewScale"}],
            },
        })
    }

    #[test]
    fn v1_shows_the_cpu_target_and_carries_the_rest_in_annotations() {
        let v1 = from_storage(&ALSO_SERVED[0], v2());
        assert_eq!(v1["apiVersion"], "autoscaling/v1");
        assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 50);
        assert_eq!(v1["status"]["currentCPUUtilizationPercentage"], 80);
        assert!(v1["spec"].get("metrics").is_none());
        let a = &v1["metadata"]["annotations"];
        assert!(a[METRICS].as_str().unwrap().contains("memory"));
        assert!(a[BEHAVIOR]
            .as_str()
            .unwrap()
            .contains("stabilizationWindowSeconds"));
        assert!(a[CONDITIONS].as_str().unwrap().contains("AbleToScale"));
    }

    #[test]
    fn v2_to_v1_and_back_loses_nothing_but_the_cpu_average_value() {
        let back = to_storage(
            &ALSO_SERVED[0],
            &ALSO_SERVED[0],
            from_storage(&ALSO_SERVED[0], v2()),
        )
        .unwrap();
        let mut want = v2();
        // v1 can say a CPU utilization only; the raw average of that metric is not kept.
        want["status"]["currentMetrics"][0]["resource"]["current"] =
            json!({"averageUtilization": 80});
        assert_eq!(back, want);
        assert_eq!(
            from_storage(of_kind(Kind::HorizontalPodAutoscaler), v2()),
            v2()
        );
    }

    #[test]
    fn a_plain_v1_object_becomes_a_cpu_metric() {
        let v1 = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web", "apiVersion": "apps/v1"},
                     "maxReplicas": 3, "targetCPUUtilizationPercentage": 60}});
        let v2 = to_storage(&ALSO_SERVED[0], &ALSO_SERVED[0], v1).unwrap();
        assert_eq!(v2["apiVersion"], "autoscaling/v2");
        assert_eq!(
            v2["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
            60
        );
        assert!(v2["metadata"].get("annotations").is_none());
        let bad = json!({"metadata": {"name": "x", "annotations": {METRICS: "not json"}},
            "spec": {"maxReplicas": 1}});
        let err = to_storage(&ALSO_SERVED[0], &ALSO_SERVED[0], bad).unwrap_err();
        assert_eq!(err.field, format!("metadata.annotations[{METRICS}]"));
    }
}
