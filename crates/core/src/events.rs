//! core/v1 Events as controllers and the scheduler write them. The time comes in as an
//! argument.

use serde_json::{json, Value};

/// What an Event is about.
#[derive(Debug, Clone, Copy)]
pub struct Involved<'a> {
    pub api_version: &'a str,
    pub kind: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: &'a str,
}

/// An Event (`type_` is `Normal` or `Warning`) from `component`, named after its object and
/// the time so that names do not collide.
pub fn event(
    about: Involved,
    type_: &str,
    reason: &str,
    message: &str,
    component: &str,
    now: jiff::Timestamp,
) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {
            "name": format!("{}.{:x}", about.name, now.as_nanosecond()),
            "namespace": about.namespace,
        },
        "involvedObject": {
            "apiVersion": about.api_version, "kind": about.kind,
            "namespace": about.namespace, "name": about.name, "uid": about.uid,
        },
        "type": type_, "reason": reason, "message": message,
        "source": {"component": component},
        "reportingComponent": component,
        "firstTimestamp": now.to_string(), "lastTimestamp": now.to_string(), "count": 1,
    })
}
