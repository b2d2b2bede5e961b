//! A container group's instance view as the status of the pod it runs: phase, conditions,
//! container statuses and the pod's address. Pure.
//!
//! ACI reports no readiness, so (as Virtual Kubelet's ACI provider does) a running container
//! counts as ready.

use berth_core::aci::ContainerGroup;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};

/// A container state in Kubernetes' words from an ACI one.
fn state(aci: &Value) -> Option<Value> {
    let detail = aci["detailStatus"].as_str().unwrap_or_default();
    match aci["state"].as_str()? {
        "Running" => Some(json!({"running": {"startedAt": aci["startTime"]}})),
        "Terminated" => {
            let code = aci["exitCode"].as_i64().unwrap_or(0);
            let reason = if !detail.is_empty() {
                detail
            } else if code == 0 {
                "Completed"
            } else {
                "Error"
            };
            Some(json!({"terminated": {
                "exitCode": code, "reason": reason,
                "startedAt": aci["startTime"], "finishedAt": aci["finishTime"],
            }}))
        }
        _ => {
            let (reason, message) = match detail.split_once(": ") {
                Some((r, m)) => (r, m),
                None if detail.is_empty() => ("ContainerCreating", ""),
                None => (detail, ""),
            };
            let mut w = json!({"reason": reason});
            if !message.is_empty() {
                w["message"] = json!(message);
            }
            Some(json!({"waiting": w}))
        }
    }
}

fn condition(type_: &str, ok: bool, now: &str) -> Value {
    json!({"type": type_, "status": if ok { "True" } else { "False" }, "lastTransitionTime": now})
}

/// The status of `pod` read from its `group` at `now` (`host_ip`: the virtual node's
/// address).
pub fn pod_status(pod: &Pod, group: &ContainerGroup, host_ip: &str, now: &str) -> Value {
    let p = &group.properties;
    let view = |c: &berth_core::aci::ContainerDef| c.properties.instance_view.clone();
    let statuses = |list: &[berth_core::aci::ContainerDef]| -> Vec<Value> {
        list.iter()
            .map(|c| {
                let v = view(c).unwrap_or(Value::Null);
                let current = state(&v["currentState"])
                    .unwrap_or_else(|| json!({"waiting": {"reason": "ContainerCreating"}}));
                let running = current.get("running").is_some();
                let mut s = json!({
                    "name": c.name, "image": c.properties.image, "imageID": "",
                    "restartCount": v["restartCount"].as_u64().unwrap_or(0),
                    "ready": running, "started": running, "state": current,
                });
                if let Some(last) = state(&v["previousState"]) {
                    s["lastState"] = last;
                }
                s
            })
            .collect()
    };
    let containers = statuses(&p.containers);
    let inits = statuses(&p.init_containers);
    let group_state = p
        .instance_view
        .as_ref()
        .and_then(|v| v["state"].as_str())
        .unwrap_or("Pending");
    let phase = match group_state {
        "Running" => "Running",
        "Succeeded" => "Succeeded",
        "Failed" | "Stopped" => "Failed",
        _ => "Pending",
    };
    let initialized = inits
        .iter()
        .all(|s| s["state"]["terminated"]["exitCode"].as_i64() == Some(0));
    let ready = !containers.is_empty() && containers.iter().all(|s| s["ready"] == true);
    let start = pod
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .map(|t| json!(t.0))
        .unwrap_or_else(|| json!(now));
    let mut status = json!({
        "phase": phase,
        "conditions": [
            condition("PodScheduled", true, now),
            condition("Initialized", initialized, now),
            condition("ContainersReady", ready, now),
            condition("Ready", ready, now),
        ],
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "startTime": start,
        "containerStatuses": containers,
        "qosClass": pod.status.as_ref().and_then(|s| s.qos_class.clone()).unwrap_or_else(|| "Burstable".into()),
    });
    if !inits.is_empty() {
        status["initContainerStatuses"] = json!(inits);
    }
    if let Some(ip) = p.ip_address.as_ref().and_then(|i| i.ip.clone()) {
        status["podIP"] = json!(ip);
        status["podIPs"] = json!([{"ip": ip}]);
    }
    if group_state == "Stopped" {
        status["reason"] = json!("Stopped");
        status["message"] = json!("the container group was stopped");
    }
    status
}

/// The pod condition that shows its group's meter (`berth.dev/Metered`): vCPU-seconds,
/// GB-seconds and cost so far, from one row of the instances API's `meteredUsage`.
pub fn metered(row: &Value, now: &str) -> Value {
    let num = |k: &str| row[k].as_f64().unwrap_or(0.0);
    json!({
        "type": METERED, "status": "True", "reason": "Metered", "lastTransitionTime": now,
        "message": format!(
            "{:.1} vCPU-seconds, {:.1} GB-seconds, {:.6} {} so far",
            num("vcpuSeconds"), num("memoryGbSeconds"), num("cost"),
            row["currency"].as_str().unwrap_or("USD"),
        ),
    })
}

/// The condition type of [`metered`].
pub const METERED: &str = "berth.dev/Metered";

/// The status of a pod whose group is gone (removed behind the node's back).
pub fn lost(pod: &Pod, now: &str) -> Value {
    let mut status =
        serde_json::to_value(pod.status.clone().unwrap_or_default()).unwrap_or_default();
    status["phase"] = json!("Failed");
    status["reason"] = json!("ProviderFailed");
    status["message"] = json!("the pod's container group is gone from the instances service");
    status["conditions"] = json!([
        condition("PodScheduled", true, now),
        condition("ContainersReady", false, now),
        condition("Ready", false, now),
    ]);
    status
}

/// The status of a pod the node refuses: Failed, saying which field.
pub fn refused(reason: &str, message: &str, now: &str) -> Value {
    json!({
        "phase": "Failed", "reason": reason, "message": message,
        "conditions": [condition("PodScheduled", true, now), condition("Ready", false, now)],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_views_become_phase_conditions_and_container_statuses() {
        let pod: Pod =
            serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"containers": []}}))
                .unwrap();
        let group: ContainerGroup = serde_json::from_value(json!({
            "location": "eastus",
            "properties": {
                "osType": "Linux",
                "ipAddress": {"type": "Private", "ports": [], "ip": "172.17.0.5"},
                "instanceView": {"state": "Running"},
                "initContainers": [{"name": "setup", "properties": {"image": "busybox", "resources": {"requests": {"cpu": 1, "memoryInGB": 1}},
                    "instanceView": {"restartCount": 0, "currentState": {"state": "Terminated", "exitCode": 0, "detailStatus": "Completed"}}}}],
                "containers": [
                    {"name": "web", "properties": {"image": "nginx", "resources": {"requests": {"cpu": 1, "memoryInGB": 1}},
                        "instanceView": {"restartCount": 2,
                            "currentState": {"state": "Running", "startTime": "2026-11-28T10:00:00Z"},
                            "previousState": {"state": "Terminated", "exitCode": 137, "detailStatus": "OOMKilled"}}}},
                    {"name": "side", "properties": {"image": "nope", "resources": {"requests": {"cpu": 1, "memoryInGB": 1}},
                        "instanceView": {"restartCount": 0,
                            "currentState": {"state": "Waiting", "detailStatus": "ErrImagePull: image nope not found"}}}},
                ],
            }
        }))
        .unwrap();
        let s = pod_status(&pod, &group, "10.0.0.9", "2026-11-28T10:00:05Z");
        assert_eq!(s["phase"], "Running");
        assert_eq!(s["podIP"], "172.17.0.5");
        let web = &s["containerStatuses"][0];
        assert_eq!(web["restartCount"], 2);
        assert_eq!(web["ready"], true);
        assert_eq!(web["lastState"]["terminated"]["reason"], "OOMKilled");
        assert_eq!(web["lastState"]["terminated"]["exitCode"], 137);
        let side = &s["containerStatuses"][1];
        assert_eq!(side["state"]["waiting"]["reason"], "ErrImagePull");
        assert_eq!(side["state"]["waiting"]["message"], "image nope not found");
        let cond = |t: &str| {
            s["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == t)
                .unwrap()["status"]
                .clone()
        };
        assert_eq!(cond("Initialized"), "True");
        assert_eq!(cond("Ready"), "False", "one container waits");
        assert_eq!(
            s["initContainerStatuses"][0]["state"]["terminated"]["reason"],
            "Completed"
        );
    }
}
