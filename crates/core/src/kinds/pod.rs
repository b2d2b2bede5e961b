//! Pods: defaulting and validation of the pod spec (shared with workload templates), the pod
//! table and the STATUS column's reason.

use std::collections::HashSet;

use serde_json::{json, Value};

use super::{arr_at, child, default_field, int_at, str_at};
use crate::table::{col, wide, Column, AGE, NAME};
use crate::validation::{self, FieldError};

/// Drop `false` from fields Kubernetes declares as plain `bool` with `omitempty`: there,
/// false and absent are one value, and JSON never shows it. Keeping both spellings would make
/// one template look like two (a Deployment's revision would change for nothing).
fn drop_false(obj: &mut Value, fields: &[&str]) {
    if let Some(o) = obj.as_object_mut() {
        for f in fields {
            if o.get(*f) == Some(&Value::Bool(false)) {
                o.remove(*f);
            }
        }
    }
}

fn default_container(c: &mut Value) {
    drop_false(c, &["stdin", "stdinOnce", "tty"]);
    default_field(c, "terminationMessagePath", json!("/dev/termination-log"));
    default_field(c, "terminationMessagePolicy", json!("File"));
    let image = str_at(c, "/image").to_string();
    // `:latest` or no tag means "always pull", as Kubernetes defaults it.
    let last = image.rsplit('/').next().unwrap_or("");
    let tagged = last.contains(':') && !last.ends_with(":latest");
    let digest = image.contains('@');
    let policy = if tagged || digest {
        "IfNotPresent"
    } else {
        "Always"
    };
    default_field(c, "imagePullPolicy", json!(policy));
    default_field(c, "resources", json!({}));
    if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports {
            default_field(p, "protocol", json!("TCP"));
        }
    }
}

/// Defaults of a pod spec, as on a Pod or inside a workload's template.
pub fn default_pod_spec(spec: &mut Value) {
    drop_false(spec, &["hostNetwork", "hostPID", "hostIPC"]);
    default_field(spec, "restartPolicy", json!("Always"));
    default_field(spec, "terminationGracePeriodSeconds", json!(30));
    default_field(spec, "dnsPolicy", json!("ClusterFirst"));
    default_field(spec, "securityContext", json!({}));
    default_field(spec, "schedulerName", json!("default-scheduler"));
    for list in ["containers", "initContainers"] {
        if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
            for c in cs {
                default_container(c);
            }
        }
    }
    if let Some(vols) = spec.get_mut("volumes").and_then(Value::as_array_mut) {
        for v in vols {
            if v.get("emptyDir").is_none()
                && [
                    "configMap",
                    "secret",
                    "hostPath",
                    "persistentVolumeClaim",
                    "projected",
                ]
                .iter()
                .all(|k| v.get(*k).is_none())
            {
                default_field(v, "emptyDir", json!({}));
            }
        }
    }
}

pub(super) fn default_pod(obj: &mut Value) {
    let spec = child(obj, "spec");
    default_pod_spec(spec);
    default_field(spec, "enableServiceLinks", json!(true));
    default_field(spec, "serviceAccountName", json!("default"));
    default_field(spec, "priority", json!(0));
    let qos = qos_class(obj);
    let status = child(obj, "status");
    default_field(status, "phase", json!("Pending"));
    default_field(status, "qosClass", json!(qos));
}

/// Guaranteed when every container's limits equal its requests for cpu and memory,
/// BestEffort when nothing is set, Burstable otherwise.
fn qos_class(pod: &Value) -> &'static str {
    let containers = arr_at(pod, "/spec/containers");
    let mut any = false;
    let mut guaranteed = !containers.is_empty();
    for c in containers {
        let req = c.pointer("/resources/requests");
        let lim = c.pointer("/resources/limits");
        for r in ["cpu", "memory"] {
            let rq = req.and_then(|m| m.get(r));
            let lm = lim.and_then(|m| m.get(r));
            any |= rq.is_some() || lm.is_some();
            if lm.is_none() || (rq.is_some() && rq != lm) {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

fn validate_containers(
    path: &str,
    list: &[Value],
    names: &mut HashSet<String>,
    errs: &mut Vec<FieldError>,
) {
    for (i, c) in list.iter().enumerate() {
        let at = format!("{path}[{i}]");
        let name = str_at(c, "/name");
        if name.is_empty() {
            errs.push(FieldError::required(format!("{at}.name")));
        } else if let Some(why) = validation::dns1123_label(name) {
            errs.push(FieldError::invalid(format!("{at}.name"), name, why));
        } else if !names.insert(name.to_string()) {
            errs.push(FieldError::duplicate(format!("{at}.name"), name));
        }
        if str_at(c, "/image").trim().is_empty() {
            errs.push(FieldError::required(format!("{at}.image")));
        }
        let policy = str_at(c, "/imagePullPolicy");
        if !policy.is_empty() && !["Always", "IfNotPresent", "Never"].contains(&policy) {
            errs.push(FieldError::not_supported(
                format!("{at}.imagePullPolicy"),
                policy,
                &["Always", "IfNotPresent", "Never"],
            ));
        }
        for (j, p) in arr_at(c, "/ports").iter().enumerate() {
            let port = int_at(p, "/containerPort");
            if !(1..=65535).contains(&port) {
                errs.push(FieldError::invalid(
                    format!("{at}.ports[{j}].containerPort"),
                    port,
                    "must be between 1 and 65535, inclusive",
                ));
            }
            let proto = str_at(p, "/protocol");
            if !proto.is_empty() && !["TCP", "UDP", "SCTP"].contains(&proto) {
                errs.push(FieldError::not_supported(
                    format!("{at}.ports[{j}].protocol"),
                    proto,
                    &["SCTP", "TCP", "UDP"],
                ));
            }
        }
        // Kubernetes allows duplicate env names (the last wins); only empty ones are errors.
        for (j, e) in arr_at(c, "/env").iter().enumerate() {
            if str_at(e, "/name").is_empty() {
                errs.push(FieldError::required(format!("{at}.env[{j}].name")));
            }
        }
    }
}

/// Validate a pod spec found at `path` (`spec` or `spec.template.spec`).
pub fn validate_pod_spec(path: &str, spec: &Value, errs: &mut Vec<FieldError>) {
    let containers = arr_at(spec, "/containers");
    if containers.is_empty() {
        errs.push(FieldError::required(format!("{path}.containers")));
    }
    let mut names = HashSet::new();
    validate_containers(&format!("{path}.containers"), containers, &mut names, errs);
    validate_containers(
        &format!("{path}.initContainers"),
        arr_at(spec, "/initContainers"),
        &mut names,
        errs,
    );
    let restart = str_at(spec, "/restartPolicy");
    if !restart.is_empty() && !["Always", "OnFailure", "Never"].contains(&restart) {
        errs.push(FieldError::not_supported(
            format!("{path}.restartPolicy"),
            restart,
            &["Always", "OnFailure", "Never"],
        ));
    }
    let dns = str_at(spec, "/dnsPolicy");
    let dns_ok = ["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"];
    if !dns.is_empty() && !dns_ok.contains(&dns) {
        errs.push(FieldError::not_supported(
            format!("{path}.dnsPolicy"),
            dns,
            &dns_ok,
        ));
    }
    let mut vol_names = HashSet::new();
    for (i, v) in arr_at(spec, "/volumes").iter().enumerate() {
        let n = str_at(v, "/name");
        if let Some(why) = validation::dns1123_label(n) {
            errs.push(FieldError::invalid(
                format!("{path}.volumes[{i}].name"),
                n,
                why,
            ));
        } else if !vol_names.insert(n) {
            errs.push(FieldError::duplicate(
                format!("{path}.volumes[{i}].name"),
                n,
            ));
        }
    }
    if let Some(sel) = spec.get("nodeSelector").and_then(Value::as_object) {
        validation::labels(&format!("{path}.nodeSelector"), sel, errs);
    }
    let grace = spec
        .get("terminationGracePeriodSeconds")
        .and_then(Value::as_i64);
    if grace.is_some_and(|g| g < 0) {
        errs.push(FieldError::invalid(
            format!("{path}.terminationGracePeriodSeconds"),
            grace.unwrap_or_default(),
            "must be greater than or equal to 0",
        ));
    }
}

pub(super) fn validate_pod(obj: &Value, errs: &mut Vec<FieldError>) {
    validate_pod_spec("spec", obj.get("spec").unwrap_or(&Value::Null), errs);
}

/// A pod's spec may change only in container images, `activeDeadlineSeconds` and added
/// tolerations; `nodeName` is set once, by binding.
pub(super) fn validate_pod_update(old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
    let strip = |spec: Option<&Value>| -> Value {
        let mut s = spec.cloned().unwrap_or(Value::Null);
        for list in ["containers", "initContainers"] {
            if let Some(cs) = s.get_mut(list).and_then(Value::as_array_mut) {
                for c in cs {
                    if let Some(m) = c.as_object_mut() {
                        m.remove("image");
                    }
                }
            }
        }
        if let Some(m) = s.as_object_mut() {
            m.remove("activeDeadlineSeconds");
            m.remove("tolerations");
            if old.pointer("/spec/nodeName").is_none() {
                m.remove("nodeName");
            }
        }
        s
    };
    if strip(old.get("spec")) != strip(new.get("spec")) {
        errs.push(FieldError::forbidden(
            "spec",
            "pod updates may not change fields other than `spec.containers[*].image`, \
             `spec.initContainers[*].image`, `spec.activeDeadlineSeconds` or \
             `spec.tolerations` (only additions to existing tolerations)",
        ));
    }
}

pub(super) fn columns() -> Vec<Column> {
    vec![
        NAME,
        col("Ready", "The aggregate readiness state of this pod for accepting traffic."),
        col("Status", "The aggregate status of the containers in this pod."),
        col("Restarts", "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted."),
        AGE,
        wide("IP", "The IP address assigned to the pod"),
        wide("Node", "The name of the node this pod is assigned to"),
        wide("Nominated Node", "The name of the node where this pod is nominated to run"),
        wide("Readiness Gates", "The readiness gates of the pod"),
    ]
}

/// The STATUS column: the most telling reason among phase, init progress, container states
/// and deletion, computed as kubectl's printer does.
pub fn pod_status_reason(pod: &Value) -> String {
    let mut reason = str_at(pod, "/status/phase").to_string();
    if reason.is_empty() {
        reason = "Pending".into();
    }
    let r = str_at(pod, "/status/reason");
    if !r.is_empty() {
        reason = r.to_string();
    }
    let inits = arr_at(pod, "/status/initContainerStatuses");
    let init_total = arr_at(pod, "/spec/initContainers").len();
    let mut initializing = false;
    for (i, c) in inits.iter().enumerate() {
        let term = c.pointer("/state/terminated");
        if term.is_some_and(|t| int_at(t, "/exitCode") == 0) {
            continue;
        }
        initializing = true;
        reason = if let Some(t) = term {
            let r = str_at(t, "/reason");
            if r.is_empty() {
                format!("Init:ExitCode:{}", int_at(t, "/exitCode"))
            } else {
                format!("Init:{r}")
            }
        } else {
            let w = str_at(c, "/state/waiting/reason");
            if !w.is_empty() && w != "PodInitializing" {
                format!("Init:{w}")
            } else {
                format!("Init:{i}/{init_total}")
            }
        };
        break;
    }
    if !initializing {
        let mut has_running = false;
        for c in arr_at(pod, "/status/containerStatuses").iter().rev() {
            let w = str_at(c, "/state/waiting/reason");
            let t = c.pointer("/state/terminated");
            if !w.is_empty() {
                reason = w.to_string();
            } else if let Some(t) = t {
                let tr = str_at(t, "/reason");
                reason = if !tr.is_empty() {
                    tr.to_string()
                } else if int_at(t, "/signal") != 0 {
                    format!("Signal:{}", int_at(t, "/signal"))
                } else {
                    format!("ExitCode:{}", int_at(t, "/exitCode"))
                };
            } else if c.pointer("/state/running").is_some() && c.get("ready") == Some(&json!(true))
            {
                has_running = true;
            }
        }
        if reason == "Completed" && has_running {
            reason = "Running".into();
        }
    }
    if pod.pointer("/metadata/deletionTimestamp").is_some() {
        reason = if str_at(pod, "/status/reason") == "NodeLost" {
            "Unknown".into()
        } else {
            "Terminating".into()
        };
    }
    reason
}

pub(super) fn cells(pod: &Value, age: String) -> Vec<Value> {
    let statuses = arr_at(pod, "/status/containerStatuses");
    let total = arr_at(pod, "/spec/containers").len();
    let ready = statuses
        .iter()
        .filter(|c| c.get("ready") == Some(&json!(true)))
        .count();
    let restarts: i64 = statuses.iter().map(|c| int_at(c, "/restartCount")).sum();
    let ip = str_at(pod, "/status/podIP");
    let node = str_at(pod, "/spec/nodeName");
    let nominated = str_at(pod, "/status/nominatedNodeName");
    let gates = arr_at(pod, "/spec/readinessGates");
    let gates = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let conds = arr_at(pod, "/status/conditions");
        let met = gates
            .iter()
            .filter(|g| {
                let t = str_at(g, "/conditionType");
                conds
                    .iter()
                    .any(|c| str_at(c, "/type") == t && str_at(c, "/status") == "True")
            })
            .count();
        format!("{met}/{}", gates.len())
    };
    let or_none = |s: &str| {
        if s.is_empty() {
            "<none>".to_string()
        } else {
            s.to_string()
        }
    };
    vec![
        json!(str_at(pod, "/metadata/name")),
        json!(format!("{ready}/{total}")),
        json!(pod_status_reason(pod)),
        json!(restarts.to_string()),
        json!(age),
        json!(or_none(ip)),
        json!(or_none(node)),
        json!(or_none(nominated)),
        json!(gates),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_kubernetes() {
        let mut pod = json!({"spec": {"containers": [
            {"name": "a", "image": "busybox"},
            {"name": "b", "image": "reg:5000/x:1.2", "ports": [{"containerPort": 80}]}
        ]}});
        default_pod(&mut pod);
        assert_eq!(pod["spec"]["restartPolicy"], "Always");
        assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(
            pod["spec"]["containers"][1]["imagePullPolicy"],
            "IfNotPresent"
        );
        assert_eq!(pod["spec"]["containers"][1]["ports"][0]["protocol"], "TCP");
        assert_eq!(pod["status"]["phase"], "Pending");
        assert_eq!(pod["status"]["qosClass"], "BestEffort");
    }

    #[test]
    fn status_reason_prefers_waiting_reason_and_terminating() {
        let pod = json!({"status": {"phase": "Running", "containerStatuses": [
            {"state": {"waiting": {"reason": "CrashLoopBackOff"}}}
        ]}});
        assert_eq!(pod_status_reason(&pod), "CrashLoopBackOff");
        let pod = json!({"metadata": {"deletionTimestamp": "2024-01-01T00:00:00Z"},
            "status": {"phase": "Running"}});
        assert_eq!(pod_status_reason(&pod), "Terminating");
    }

    #[test]
    fn missing_image_and_duplicate_names_are_errors() {
        let spec = json!({"containers": [{"name": "a"}, {"name": "a", "image": "x"}]});
        let mut errs = Vec::new();
        validate_pod_spec("spec", &spec, &mut errs);
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["spec.containers[0].image", "spec.containers[1].name"]
        );
    }
}
