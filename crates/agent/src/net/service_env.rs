//! The variables that tell a container where Services are, as the kubelet sets them: for
//! every Service with a cluster IP in the pod's namespace (unless the pod turns
//! `enableServiceLinks` off), and always for `default/kubernetes`, the API server, which
//! in-cluster clients find through `KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Service};

/// The variables of `services` for `pod`, sorted by name. The container's own variables are
/// set after these and win.
pub fn for_pod<'a>(
    pod: &Pod,
    services: impl IntoIterator<Item = &'a Service>,
) -> Vec<(String, String)> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let links = pod.spec.as_ref().and_then(|s| s.enable_service_links) != Some(false);
    // By name: a pod in `default` with links on sees `kubernetes` once.
    let mut chosen: BTreeMap<&str, &Service> = BTreeMap::new();
    for svc in services {
        let name = svc.metadata.name.as_deref().unwrap_or_default();
        let svc_ns = svc.metadata.namespace.as_deref().unwrap_or_default();
        let api = svc_ns == "default" && name == "kubernetes";
        if (links && svc_ns == ns) || api {
            if api || !chosen.contains_key(name) {
                chosen.insert(name, svc);
            }
        }
    }
    let mut out = BTreeMap::new();
    for (name, svc) in chosen {
        variables(name, svc, &mut out);
    }
    out.into_iter().collect()
}

/// `FOO-BAR` -> `FOO_BAR`, as variable names spell Service and port names.
fn upper(name: &str) -> String {
    name.to_ascii_uppercase().replace('-', "_")
}

fn variables(name: &str, svc: &Service, out: &mut BTreeMap<String, String>) {
    let Some(spec) = &svc.spec else { return };
    let Some(ip) = spec
        .cluster_ip
        .as_deref()
        .filter(|ip| !ip.is_empty() && *ip != "None")
    else {
        return;
    };
    let ports = spec.ports.as_deref().unwrap_or_default();
    let Some(first) = ports.first() else { return };
    let n = upper(name);
    out.insert(format!("{n}_SERVICE_HOST"), ip.to_string());
    out.insert(format!("{n}_SERVICE_PORT"), first.port.to_string());
    let url = |p: &k8s_openapi::api::core::v1::ServicePort| {
        let proto = p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
        format!("{proto}://{ip}:{}", p.port)
    };
    out.insert(format!("{n}_PORT"), url(first));
    for p in ports {
        if let Some(pn) = p.name.as_deref().filter(|pn| !pn.is_empty()) {
            out.insert(
                format!("{n}_SERVICE_PORT_{}", upper(pn)),
                p.port.to_string(),
            );
        }
        let proto = p.protocol.as_deref().unwrap_or("TCP").to_ascii_uppercase();
        let base = format!("{n}_PORT_{}_{proto}", p.port);
        out.insert(format!("{base}_PROTO"), proto.to_ascii_lowercase());
        out.insert(format!("{base}_PORT"), p.port.to_string());
        out.insert(format!("{base}_ADDR"), ip.to_string());
        out.insert(base, url(p));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(ns: &str, name: &str, ip: &str, ports: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": ip, "ports": ports},
        }))
        .unwrap()
    }

    fn pod(ns: &str, links: Option<bool>) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": ns},
            "spec": {"containers": [], "enableServiceLinks": links},
        }))
        .unwrap()
    }

    #[test]
    fn the_api_always_and_the_namespaces_services_unless_links_are_off() {
        let services = [
            svc(
                "default",
                "kubernetes",
                "10.96.0.1",
                json!([{"name": "https", "port": 443, "protocol": "TCP"}]),
            ),
            svc(
                "shop",
                "cart-db",
                "10.96.0.20",
                json!([{"name": "sql", "port": 5432}, {"port": 53, "protocol": "UDP"}]),
            ),
            svc("shop", "headless", "None", json!([{"port": 80}])),
            svc("other", "elsewhere", "10.96.0.30", json!([{"port": 80}])),
        ];
        let env: BTreeMap<_, _> = for_pod(&pod("shop", None), &services).into_iter().collect();
        assert_eq!(env["KUBERNETES_SERVICE_HOST"], "10.96.0.1");
        assert_eq!(env["KUBERNETES_SERVICE_PORT"], "443");
        assert_eq!(env["KUBERNETES_SERVICE_PORT_HTTPS"], "443");
        assert_eq!(env["KUBERNETES_PORT"], "tcp://10.96.0.1:443");
        assert_eq!(env["KUBERNETES_PORT_443_TCP_ADDR"], "10.96.0.1");
        assert_eq!(env["CART_DB_SERVICE_HOST"], "10.96.0.20");
        assert_eq!(env["CART_DB_SERVICE_PORT_SQL"], "5432");
        assert_eq!(env["CART_DB_PORT_53_UDP"], "udp://10.96.0.20:53");
        assert_eq!(env["CART_DB_PORT_53_UDP_PROTO"], "udp");
        assert!(!env
            .keys()
            .any(|k| k.starts_with("HEADLESS") || k.starts_with("ELSEWHERE")));

        let off: BTreeMap<_, _> = for_pod(&pod("shop", Some(false)), &services)
            .into_iter()
            .collect();
        assert!(off.keys().all(|k| k.starts_with("KUBERNETES_")), "{off:?}");
        assert_eq!(off["KUBERNETES_SERVICE_HOST"], "10.96.0.1");
    }
}
