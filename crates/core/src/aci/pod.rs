//! The pod a group runs as, and the instance views read back from that pod's status.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::{json, Value};

use super::*;

/// Where a group's volumes are prepared on the host, for [`to_pod`].
pub trait VolumeRoot {
    /// The host directory a gitRepo volume has been cloned into.
    fn git_repo_dir(&self, volume: &str) -> String;
}

fn probe(p: &Probe) -> Value {
    let mut out = json!({
        "initialDelaySeconds": p.initial_delay_seconds,
        "periodSeconds": p.period_seconds,
        "failureThreshold": p.failure_threshold,
        "successThreshold": p.success_threshold,
        "timeoutSeconds": p.timeout_seconds,
    });
    if let Some(e) = &p.exec {
        out["exec"] = json!({"command": e.command});
    }
    if let Some(h) = &p.http_get {
        out["httpGet"] = json!({
            "path": h.path.clone().unwrap_or_else(|| "/".into()),
            "port": h.port,
            "scheme": h.scheme.clone().unwrap_or_else(|| "HTTP".into()).to_uppercase(),
        });
    }
    out
}

/// The pod a group runs as (Kubernetes JSON). Requests become limits, as ACI enforces them;
/// ports of a Public IP address are published on the host.
pub fn to_pod(
    g: &ContainerGroup,
    namespace: &str,
    name: &str,
    uid: &str,
    vols: &dyn VolumeRoot,
) -> Value {
    let p = &g.properties;
    let public: BTreeSet<i64> = p
        .ip_address
        .iter()
        .filter(|ip| ip.type_ == "Public")
        .flat_map(|ip| ip.ports.iter().map(|p| p.port))
        .collect();
    let container = |c: &ContainerDef, init: bool| {
        let cp = &c.properties;
        let env: Vec<Value> = cp
            .environment_variables
            .iter()
            .map(|e| json!({"name": e.name, "value": e.secure_value.clone().or(e.value.clone()).unwrap_or_default()}))
            .collect();
        let mut out = json!({
            "name": c.name,
            "image": cp.image,
            "imagePullPolicy": "IfNotPresent",
            "env": env,
            "volumeMounts": cp.volume_mounts.iter().map(|m| json!({
                "name": m.name, "mountPath": m.mount_path, "readOnly": m.read_only.unwrap_or(false)
            })).collect::<Vec<_>>(),
        });
        if !cp.command.is_empty() {
            out["command"] = json!(cp.command);
        }
        if !init {
            let r = &cp.resources;
            let lim = r.limits.clone().unwrap_or_default();
            let cpu = if lim.cpu > 0.0 {
                lim.cpu
            } else {
                r.requests.cpu
            };
            let mem = if lim.memory_in_gb > 0.0 {
                lim.memory_in_gb
            } else {
                r.requests.memory_in_gb
            };
            let q = |cpu: f64, gb: f64| {
                json!({"cpu": format!("{}m", (cpu * 1000.0).round() as i64),
                       "memory": format!("{}Mi", (gb * 1024.0).round() as i64)})
            };
            out["resources"] = json!({"requests": q(r.requests.cpu, r.requests.memory_in_gb), "limits": q(cpu, mem)});
            out["ports"] = cp
                .ports
                .iter()
                .map(|port| {
                    let mut v = json!({"containerPort": port.port, "protocol": port.protocol.clone().unwrap_or_else(|| "TCP".into())});
                    if public.contains(&port.port) {
                        v["hostPort"] = json!(port.port);
                    }
                    v
                })
                .collect();
            if let Some(l) = &cp.liveness_probe {
                out["livenessProbe"] = probe(l);
            }
            if let Some(r) = &cp.readiness_probe {
                out["readinessProbe"] = probe(r);
            }
        }
        out
    };
    let volumes: Vec<Value> = p
        .volumes
        .iter()
        .map(|v| {
            if v.secret.is_some() {
                json!({"name": v.name, "secret": {"secretName": format!("{name}.{}", v.name)}})
            } else if v.git_repo.is_some() {
                json!({"name": v.name, "hostPath": {"path": vols.git_repo_dir(&v.name)}})
            } else {
                json!({"name": v.name, "emptyDir": {}})
            }
        })
        .collect();
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "uid": uid},
        "spec": {
            "containers": p.containers.iter().map(|c| container(c, false)).collect::<Vec<_>>(),
            "initContainers": p.init_containers.iter().map(|c| container(c, true)).collect::<Vec<_>>(),
            "restartPolicy": p.restart_policy.clone().unwrap_or_else(|| "Always".into()),
            "terminationGracePeriodSeconds": 5,
            "volumes": volumes,
        }
    });
    // A group's own resolver replaces the host's, as a pod's `dnsPolicy: None` does.
    if let Some(d) = &p.dns_config {
        let words = |s: &Option<String>| -> Vec<String> {
            s.iter()
                .flat_map(|s| s.split_whitespace())
                .map(String::from)
                .collect()
        };
        let options: Vec<Value> = words(&d.options)
            .iter()
            .map(|o| match o.split_once(':') {
                Some((name, value)) => json!({"name": name, "value": value}),
                None => json!({"name": o}),
            })
            .collect();
        pod["spec"]["dnsPolicy"] = json!("None");
        pod["spec"]["dnsConfig"] = json!({
            "nameservers": d.name_servers,
            "searches": words(&d.search_domains),
            "options": options,
        });
    }
    pod
}

/// The decoded secret volume `name` of a group: the pod reads it as Secret `<group>.<volume>`.
pub fn secret_data(g: &ContainerGroup, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
    use base64::Engine as _;
    let v = g.properties.volumes.iter().find(|v| v.name == name)?;
    let s = v.secret.as_ref()?;
    Some(
        s.iter()
            .map(|(k, v)| {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(v)
                    .unwrap_or_default();
                (k.clone(), bytes)
            })
            .collect(),
    )
}

/// One ACI event, as instance views list them.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub count: u32,
    pub first_timestamp: String,
    pub last_timestamp: String,
    pub name: String,
    pub message: String,
    #[serde(rename = "type")]
    pub type_: String,
}

/// A container state in ACI's words from a Kubernetes container state.
fn container_state(state: &Value) -> Option<Value> {
    if let Some(r) = state.get("running") {
        return Some(json!({"state": "Running", "startTime": r["startedAt"], "detailStatus": ""}));
    }
    if let Some(t) = state.get("terminated") {
        return Some(json!({
            "state": "Terminated", "startTime": t["startedAt"], "finishTime": t["finishedAt"],
            "exitCode": t["exitCode"], "detailStatus": t["reason"],
        }));
    }
    state.get("waiting").map(|w| {
        let mut detail = w["reason"].as_str().unwrap_or_default().to_string();
        if let Some(m) = w["message"].as_str() {
            detail = format!("{detail}: {m}");
        }
        json!({"state": "Waiting", "detailStatus": detail})
    })
}

/// Reasons a container waits that mean the deployment failed rather than is under way.
const FAILED_REASONS: &[&str] = &[
    "ErrImageNeverPull",
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// What the pod's status says about the group, in ACI's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// Per container (by name): its `instanceView`.
    pub containers: BTreeMap<String, Value>,
    /// The group's `instanceView.state`: Pending, Running, Succeeded, Failed.
    pub state: &'static str,
    /// Every container has started at least once (or finished).
    pub all_started: bool,
    /// A container cannot start: the deployment failed, with this message.
    pub failure: Option<String>,
}

/// Read a pod status (Kubernetes JSON) as ACI instance views; `events` are per container.
pub fn observe(status: Option<&Value>, events: &BTreeMap<String, Vec<Event>>) -> Observed {
    let mut out = Observed {
        containers: BTreeMap::new(),
        state: "Pending",
        all_started: false,
        failure: None,
    };
    let Some(status) = status else {
        return out;
    };
    out.state = match status["phase"].as_str() {
        Some("Running") => "Running",
        Some("Succeeded") => "Succeeded",
        Some("Failed") => "Failed",
        _ => "Pending",
    };
    let mut started = true;
    let lists = ["initContainerStatuses", "containerStatuses"];
    for cs in lists.iter().filter_map(|k| status[*k].as_array()).flatten() {
        let name = cs["name"].as_str().unwrap_or_default().to_string();
        let current = container_state(&cs["state"]);
        let previous = container_state(&cs["lastState"]);
        let is_init = status["initContainerStatuses"]
            .as_array()
            .is_some_and(|l| l.iter().any(|c| c["name"] == cs["name"]));
        let running_or_done = cs["state"].get("running").is_some()
            || cs["state"].get("terminated").is_some()
            || cs["restartCount"].as_u64().unwrap_or(0) > 0;
        if !running_or_done && !is_init {
            started = false;
        }
        if let Some(reason) = cs["state"]["waiting"]["reason"].as_str() {
            if FAILED_REASONS.contains(&reason) && out.failure.is_none() {
                let msg = cs["state"]["waiting"]["message"].as_str().unwrap_or(reason);
                out.failure = Some(format!("container '{name}': {msg}"));
            }
        }
        let mut view = json!({
            "restartCount": cs["restartCount"].as_u64().unwrap_or(0),
            "events": events.get(&name).cloned().unwrap_or_default(),
        });
        if let Some(c) = current {
            view["currentState"] = c;
        }
        if let Some(p) = previous {
            view["previousState"] = p;
        }
        out.containers.insert(name, view);
    }
    out.all_started = started
        && status["containerStatuses"]
            .as_array()
            .is_some_and(|l| !l.is_empty());
    out
}
