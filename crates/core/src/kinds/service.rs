//! core/v1 Services: defaults, validation, table. Cluster IPs and node ports are allocated by
//! the API layer (they need the store); here they are only checked.

use std::collections::HashSet;

use serde_json::{json, Value};

use super::{arr_at, default_field, int_at, str_at};
use crate::table::{col, wide, Column, AGE, NAME};
use crate::validation::{self, FieldError};

pub(super) fn default_service(obj: &mut Value) {
    // Kubernetes answers every Service with a status (clients read it as present).
    if let Some(o) = obj.as_object_mut() {
        o.entry("status")
            .or_insert_with(|| json!({"loadBalancer": {}}));
    }
    let Some(spec) = obj.get_mut("spec") else {
        return;
    };
    default_field(spec, "type", json!("ClusterIP"));
    default_field(spec, "sessionAffinity", json!("None"));
    if spec.get("type") != Some(&json!("ExternalName")) {
        default_field(spec, "ipFamilies", json!(["IPv4"]));
        default_field(spec, "ipFamilyPolicy", json!("SingleStack"));
        default_field(spec, "internalTrafficPolicy", json!("Cluster"));
    }
    if matches!(str_at(spec, "/type"), "NodePort" | "LoadBalancer") {
        default_field(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports {
            default_field(p, "protocol", json!("TCP"));
            let port = p.get("port").cloned().unwrap_or(Value::Null);
            default_field(p, "targetPort", port);
        }
    }
}

pub(super) fn validate_service(obj: &Value, errs: &mut Vec<FieldError>) {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let ty = str_at(spec, "/type");
    let types = ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];
    if !types.contains(&ty) {
        errs.push(FieldError::not_supported("spec.type", ty, &types));
    }
    let ports = arr_at(spec, "/ports");
    let headless = str_at(spec, "/clusterIP") == "None";
    if ports.is_empty() && ty != "ExternalName" && !headless {
        errs.push(FieldError::required("spec.ports"));
    }
    if ty == "ExternalName" && str_at(spec, "/externalName").is_empty() {
        errs.push(FieldError::required("spec.externalName"));
    }
    let mut names = HashSet::new();
    let mut seen = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let at = format!("spec.ports[{i}]");
        let name = str_at(p, "/name");
        if ports.len() > 1 && name.is_empty() {
            errs.push(FieldError::required(format!("{at}.name")));
        } else if !name.is_empty() {
            if let Some(why) = validation::dns1123_label(name) {
                errs.push(FieldError::invalid(format!("{at}.name"), name, why));
            } else if !names.insert(name) {
                errs.push(FieldError::duplicate(format!("{at}.name"), name));
            }
        }
        let port = int_at(p, "/port");
        if !(1..=65535).contains(&port) {
            errs.push(FieldError::invalid(
                format!("{at}.port"),
                port,
                "must be between 1 and 65535, inclusive",
            ));
        }
        let proto = str_at(p, "/protocol");
        if !["TCP", "UDP", "SCTP"].contains(&proto) {
            errs.push(FieldError::not_supported(
                format!("{at}.protocol"),
                proto,
                &["SCTP", "TCP", "UDP"],
            ));
        }
        if !seen.insert((port, proto)) {
            errs.push(FieldError::duplicate(
                at.to_string(),
                format!("{port}/{proto}"),
            ));
        }
        match p.get("targetPort") {
            Some(Value::Number(n)) if !(1..=65535).contains(&n.as_i64().unwrap_or(0)) => {
                errs.push(FieldError::invalid(
                    format!("{at}.targetPort"),
                    n,
                    "must be between 1 and 65535, inclusive",
                ))
            }
            Some(Value::String(s)) if validation::dns1123_label(s).is_some() || s.len() > 15 => {
                errs.push(FieldError::invalid(
                    format!("{at}.targetPort"),
                    s,
                    "must be a port number or an IANA_SVC_NAME (at most 15 characters)",
                ))
            }
            _ => {}
        }
        let node_port = int_at(p, "/nodePort");
        if node_port != 0 && ty == "ClusterIP" {
            errs.push(FieldError::forbidden(
                format!("{at}.nodePort"),
                "may not be used when `type` is 'ClusterIP'",
            ));
        }
    }
    if let Some(sel) = spec.get("selector").and_then(Value::as_object) {
        validation::labels("spec.selector", sel, errs);
    }
}

pub(super) fn validate_service_update(old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
    let old_ip = str_at(old, "/spec/clusterIP");
    let new_ip = str_at(new, "/spec/clusterIP");
    if !old_ip.is_empty() && !new_ip.is_empty() && old_ip != new_ip {
        errs.push(FieldError::invalid(
            "spec.clusterIP",
            new_ip,
            "field is immutable",
        ));
    }
}

pub(super) fn columns() -> Vec<Column> {
    vec![
        NAME,
        col("Type", "type determines how the Service is exposed."),
        col("Cluster-IP", "clusterIP is the IP address of the service."),
        col("External-IP", "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service."),
        col("Port(s)", "The ports that are exposed by this service."),
        AGE,
        wide("Selector", "Route service traffic to pods with label keys and values matching this selector."),
    ]
}

pub(super) fn cells(svc: &Value, age: String) -> Vec<Value> {
    let ty = str_at(svc, "/spec/type");
    let mut external: Vec<String> = arr_at(svc, "/spec/externalIPs")
        .iter()
        .filter_map(Value::as_str)
        .map(String::from)
        .collect();
    let external = match ty {
        "ExternalName" => str_at(svc, "/spec/externalName").to_string(),
        "LoadBalancer" => {
            for ing in arr_at(svc, "/status/loadBalancer/ingress") {
                let ip = str_at(ing, "/ip");
                let host = str_at(ing, "/hostname");
                external.push(if ip.is_empty() { host } else { ip }.to_string());
            }
            if external.is_empty() {
                "<pending>".into()
            } else {
                external.join(",")
            }
        }
        _ if external.is_empty() => "<none>".into(),
        _ => external.join(","),
    };
    let ports: Vec<String> = arr_at(svc, "/spec/ports")
        .iter()
        .map(|p| {
            let port = int_at(p, "/port");
            let proto = str_at(p, "/protocol");
            match int_at(p, "/nodePort") {
                0 => format!("{port}/{proto}"),
                np => format!("{port}:{np}/{proto}"),
            }
        })
        .collect();
    let selector = svc
        .pointer("/spec/selector")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "<none>".into());
    let cluster_ip = str_at(svc, "/spec/clusterIP");
    vec![
        json!(str_at(svc, "/metadata/name")),
        json!(ty),
        json!(if cluster_ip.is_empty() {
            "<none>"
        } else {
            cluster_ip
        }),
        json!(external),
        json!(if ports.is_empty() {
            "<none>".to_string()
        } else {
            ports.join(",")
        }),
        json!(age),
        json!(selector),
    ]
}
