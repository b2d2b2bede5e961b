//! The smaller kinds: Namespace, ConfigMap, Secret, Endpoints, EndpointSlice, Event, Lease,
//! HorizontalPodAutoscaler.

use jiff::Timestamp;
use serde_json::{json, Value};

use super::{arr_at, child, default_field, int_at, str_at};
use crate::resources::Kind;
use crate::table::{col, int_col, since, wide, Column, AGE, NAME};
use crate::validation::FieldError;

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

/// ConfigMap and Secret keys: `[-._a-zA-Z0-9]+`, unique across `data` and `binaryData`.
pub(super) fn validate_data_keys(obj: &Value, errs: &mut Vec<FieldError>) {
    let mut seen = std::collections::HashSet::new();
    for field in ["data", "binaryData", "stringData"] {
        let Some(map) = obj.get(field).and_then(Value::as_object) else {
            continue;
        };
        for k in map.keys() {
            let ok = !k.is_empty()
                && k.len() <= 253
                && k.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"-._".contains(&c))
                && k != "."
                && k != "..";
            if !ok {
                errs.push(FieldError::invalid(
                    format!("{field}[{k}]"),
                    k,
                    "a valid config key must consist of alphanumeric characters, '-', '_' or '.' \
                     (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation \
                     is '[-._a-zA-Z0-9]+')",
                ));
            } else if field != "stringData" && !seen.insert(k.clone()) {
                errs.push(FieldError::duplicate(format!("{field}[{k}]"), k));
            }
        }
    }
}

pub(super) fn columns(kind: Kind) -> Vec<Column> {
    match kind {
        Kind::Namespace => vec![NAME, col("Status", "The status of the namespace"), AGE],
        Kind::ConfigMap => vec![NAME, int_col("Data", "Number of data entries."), AGE],
        Kind::Secret => vec![
            NAME,
            col("Type", "The type of the secret"),
            int_col("Data", "The number of entries in the secret"),
            AGE,
        ],
        Kind::Endpoints => vec![NAME, col("Endpoints", "Endpoints of the service"), AGE],
        Kind::EndpointSlice => vec![
            NAME,
            col("AddressType", "The IP protocol for this slice"),
            col("Ports", "Any ports exposed by this slice"),
            col("Endpoints", "A list of endpoints in this slice"),
            AGE,
        ],
        Kind::Event => vec![
            col("Last Seen", "Time when last this event was observed"),
            col(
                "Type",
                "Type of this event (Normal, Warning), new types could be added in the future.",
            ),
            col(
                "Reason",
                "Reason is why the action was taken. It is human-readable.",
            ),
            col("Object", "The object this Event is about."),
            wide(
                "Subobject",
                "The subobject (for example a container) this Event is about.",
            ),
            wide("Source", "The component reporting this event."),
            col(
                "Message",
                "A human-readable description of the status of this operation.",
            ),
            wide("First Seen", "The first time the event was observed"),
            wide("Count", "The number of times this event has occurred."),
            wide("Name", "Name of the event"),
        ],
        Kind::Lease => vec![NAME, col("Holder", "The holder of the lease"), AGE],
        Kind::HorizontalPodAutoscaler => vec![
            NAME,
            col("Reference", "The reference to the autoscaled resource"),
            col("Targets", "The current and target metric values"),
            col("MinPods", "The lower limit for the number of pods"),
            int_col("MaxPods", "The upper limit for the number of pods"),
            int_col("Replicas", "The current number of replicas"),
            AGE,
        ],
        // The other kinds have their own modules.
        _ => vec![NAME, AGE],
    }
}

fn endpoints_cell(addrs: Vec<String>) -> String {
    if addrs.is_empty() {
        return "<none>".into();
    }
    let shown = addrs.iter().take(3).cloned().collect::<Vec<_>>().join(",");
    if addrs.len() > 3 {
        format!("{shown} + {} more...", addrs.len() - 3)
    } else {
        shown
    }
}

fn hpa_targets(obj: &Value) -> String {
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

pub(super) fn cells(kind: Kind, obj: &Value, age: String, now: Timestamp) -> Vec<Value> {
    let name = json!(str_at(obj, "/metadata/name"));
    let count = |f: &str| obj.get(f).and_then(Value::as_object).map_or(0, |m| m.len());
    match kind {
        Kind::Namespace => vec![name, json!(str_at(obj, "/status/phase")), json!(age)],
        Kind::ConfigMap => vec![name, json!(count("data") + count("binaryData")), json!(age)],
        Kind::Secret => vec![
            name,
            json!(str_at(obj, "/type")),
            json!(count("data")),
            json!(age),
        ],
        Kind::Endpoints => {
            let mut addrs = Vec::new();
            for subset in arr_at(obj, "/subsets") {
                let ports = arr_at(subset, "/ports");
                for a in arr_at(subset, "/addresses") {
                    let ip = str_at(a, "/ip");
                    if ports.is_empty() {
                        addrs.push(ip.to_string());
                    }
                    for p in ports {
                        addrs.push(format!("{ip}:{}", int_at(p, "/port")));
                    }
                }
            }
            vec![name, json!(endpoints_cell(addrs)), json!(age)]
        }
        Kind::EndpointSlice => {
            let ports: Vec<String> = arr_at(obj, "/ports")
                .iter()
                .map(|p| int_at(p, "/port").to_string())
                .collect();
            let addrs = arr_at(obj, "/endpoints")
                .iter()
                .flat_map(|e| arr_at(e, "/addresses").iter())
                .filter_map(Value::as_str)
                .map(String::from)
                .collect();
            vec![
                name,
                json!(str_at(obj, "/addressType")),
                json!(if ports.is_empty() {
                    "<unset>".to_string()
                } else {
                    ports.join(",")
                }),
                json!(endpoints_cell(addrs)),
                json!(age),
            ]
        }
        Kind::Event => {
            let last = [
                "/lastTimestamp",
                "/eventTime",
                "/series/lastObservedTime",
                "/metadata/creationTimestamp",
            ]
            .iter()
            .map(|p| str_at(obj, p))
            .find(|s| !s.is_empty());
            let first = [
                "/firstTimestamp",
                "/eventTime",
                "/metadata/creationTimestamp",
            ]
            .iter()
            .map(|p| str_at(obj, p))
            .find(|s| !s.is_empty());
            let object = format!(
                "{}/{}",
                str_at(obj, "/involvedObject/kind").to_lowercase(),
                str_at(obj, "/involvedObject/name")
            );
            let source = {
                let c = str_at(obj, "/source/component");
                let c = if c.is_empty() {
                    str_at(obj, "/reportingComponent")
                } else {
                    c
                };
                let h = str_at(obj, "/source/host");
                if h.is_empty() {
                    c.to_string()
                } else {
                    format!("{c}, {h}")
                }
            };
            let count = obj.get("count").and_then(Value::as_i64).unwrap_or(1);
            vec![
                json!(since(last, now)),
                json!(str_at(obj, "/type")),
                json!(str_at(obj, "/reason")),
                json!(object),
                json!(str_at(obj, "/involvedObject/fieldPath")),
                json!(source),
                json!(str_at(obj, "/message").trim()),
                json!(since(first, now)),
                json!(count),
                name,
            ]
        }
        Kind::Lease => vec![name, json!(str_at(obj, "/spec/holderIdentity")), json!(age)],
        Kind::HorizontalPodAutoscaler => vec![
            name,
            json!(format!(
                "{}/{}",
                str_at(obj, "/spec/scaleTargetRef/kind"),
                str_at(obj, "/spec/scaleTargetRef/name")
            )),
            json!(hpa_targets(obj)),
            json!(obj
                .pointer("/spec/minReplicas")
                .and_then(Value::as_i64)
                .unwrap_or(1)
                .to_string()),
            json!(int_at(obj, "/spec/maxReplicas")),
            json!(int_at(obj, "/status/currentReplicas")),
            json!(age),
        ],
        _ => vec![name, json!(age)],
    }
}
