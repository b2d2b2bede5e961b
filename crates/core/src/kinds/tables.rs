//! The `kubectl get` columns of the kinds whose only other code (if any) is a defaulting or
//! validation function of its own file: Namespace, ConfigMap, Secret, Endpoints,
//! EndpointSlice, Event, Lease, HorizontalPodAutoscaler.

use jiff::Timestamp;
use serde_json::{json, Value};

use super::{arr_at, int_at, str_at};
use crate::resources::Kind;
use crate::table::{col, int_col, since, wide, Column, AGE, NAME};

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
        Kind::ControllerRevision => vec![
            NAME,
            col("Controller", "Controller of the object"),
            int_col("Revision", "Revision of the ControllerRevision"),
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
            json!(super::autoscaling::targets(obj)),
            json!(obj
                .pointer("/spec/minReplicas")
                .and_then(Value::as_i64)
                .unwrap_or(1)
                .to_string()),
            json!(int_at(obj, "/spec/maxReplicas")),
            json!(int_at(obj, "/status/currentReplicas")),
            json!(age),
        ],
        Kind::ControllerRevision => {
            let owner = crate::kinds::arr_at(obj, "/metadata/ownerReferences")
                .iter()
                .find(|r| r["controller"] == json!(true))
                .map(|r| {
                    let group = str_at(r, "/apiVersion")
                        .split('/')
                        .next()
                        .unwrap_or_default();
                    format!(
                        "{}.{group}/{}",
                        str_at(r, "/kind").to_lowercase(),
                        str_at(r, "/name")
                    )
                })
                .unwrap_or_else(|| "<none>".into());
            vec![
                name,
                json!(owner),
                json!(int_at(obj, "/revision")),
                json!(age),
            ]
        }
        _ => vec![name, json!(age)],
    }
}
