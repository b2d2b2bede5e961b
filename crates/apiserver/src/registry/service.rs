//! Service cluster IPs (from 10.96.0.0/12) and node ports (30000-32767), allocated under the
//! registry's allocation lock by scanning the services already stored.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use berth_core::resources::{self, Kind};
use berth_core::FieldError;
use rand::Rng;
use serde_json::{json, Value};

use super::{ListParams, Registry};
use crate::status::ApiError;

/// The service network.
pub const SERVICE_CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 96, 0, 0), 12);
/// The node port range.
pub const NODE_PORTS: std::ops::RangeInclusive<i64> = 30000..=32767;

fn in_cidr(ip: Ipv4Addr) -> bool {
    let (base, bits) = SERVICE_CIDR;
    let mask = u32::MAX << (32 - bits);
    u32::from(ip) & mask == u32::from(base)
}

/// Fill in `spec.clusterIP(s)` and node ports for a service being created (`old` None) or
/// updated, refusing addresses and ports already taken.
pub(crate) async fn allocate(
    reg: &Registry,
    svc: &mut Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    let res = resources::of_kind(Kind::Service);
    let name = super::name_of(svc).to_string();
    let uid = svc.pointer("/metadata/uid").cloned();
    let all = reg.list(res, None, &ListParams::default()).await?;
    let mut used_ips = HashSet::new();
    let mut used_ports = HashSet::new();
    for other in all
        .items
        .iter()
        .filter(|o| o.pointer("/metadata/uid") != uid.as_ref())
    {
        if let Some(ip) = other.pointer("/spec/clusterIP").and_then(Value::as_str) {
            used_ips.insert(ip.to_string());
        }
        for p in other
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(np) = p.get("nodePort").and_then(Value::as_i64) {
                used_ports.insert(np);
            }
        }
    }
    let Some(spec) = svc.get_mut("spec") else {
        return Ok(());
    };
    let ty = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    if ty == "ExternalName" {
        return Ok(());
    }
    let old_ip = old
        .and_then(|o| o.pointer("/spec/clusterIP"))
        .and_then(Value::as_str)
        .map(String::from);
    let wanted = spec
        .get("clusterIP")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let ip = match (wanted.as_str(), old_ip) {
        ("", Some(old)) => old,
        ("None", _) => "None".to_string(),
        ("", None) => {
            let (base, bits) = SERVICE_CIDR;
            let size = 1u32 << (32 - bits);
            let mut rng = rand::rng();
            let mut pick = None;
            for _ in 0..size {
                // The first 256 addresses are kept for Services with a fixed address
                // (`kubernetes` at .1, `kube-dns` at .10), as Kubernetes keeps a low band.
                let candidate = Ipv4Addr::from(u32::from(base) + rng.random_range(256..size - 1));
                if !used_ips.contains(&candidate.to_string()) {
                    pick = Some(candidate.to_string());
                    break;
                }
            }
            pick.ok_or_else(|| ApiError::internal("the service IP range 10.96.0.0/12 is full"))?
        }
        (given, _) => {
            let parsed: Option<Ipv4Addr> = given.parse().ok();
            if !parsed.is_some_and(in_cidr) {
                return Err(ApiError::invalid(res, &name, &[FieldError::invalid(
                    "spec.clusterIPs",
                    given,
                    "failed to allocate IP: the provided IP is not in the valid range 10.96.0.0/12",
                )]));
            }
            if used_ips.contains(given) {
                return Err(ApiError::invalid(
                    res,
                    &name,
                    &[FieldError::invalid(
                        "spec.clusterIPs",
                        given,
                        "failed to allocate IP: provided IP is already allocated",
                    )],
                ));
            }
            given.to_string()
        }
    };
    spec["clusterIP"] = json!(ip);
    spec["clusterIPs"] = json!([ip]);
    if matches!(ty.as_str(), "NodePort" | "LoadBalancer") {
        let old_ports: Vec<Value> = old
            .and_then(|o| o.pointer("/spec/ports"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let ports = spec.get_mut("ports").and_then(Value::as_array_mut);
        for (i, p) in ports.into_iter().flatten().enumerate() {
            let given = p.get("nodePort").and_then(Value::as_i64).unwrap_or(0);
            let port =
                if given != 0 {
                    if !NODE_PORTS.contains(&given) || used_ports.contains(&given) {
                        return Err(ApiError::invalid(res, &name, &[FieldError::invalid(
                        format!("spec.ports[{i}].nodePort"),
                        given,
                        "provided port is already allocated or outside the range 30000-32767",
                    )]));
                    }
                    given
                } else if let Some(kept) = old_ports
                    .iter()
                    .find(|o| o.get("port") == p.get("port"))
                    .and_then(|o| o.get("nodePort"))
                    .and_then(Value::as_i64)
                {
                    kept
                } else {
                    let mut rng = rand::rng();
                    let mut pick = None;
                    for _ in 0..4096 {
                        let c = rng.random_range(NODE_PORTS);
                        if !used_ports.contains(&c) {
                            pick = Some(c);
                            break;
                        }
                    }
                    pick.ok_or_else(|| ApiError::internal("no free node port in 30000-32767"))?
                };
            used_ports.insert(port);
            p["nodePort"] = json!(port);
        }
    }
    Ok(())
}

/// The address of the `default/kubernetes` Service.
pub const KUBERNETES_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);

/// The Services every cluster has: `default/kubernetes` (the API server, at `api`) and
/// `kube-system/kube-dns` at `cluster_dns` (each node's agent answers it). The first is
/// pointed at this server on every start (its port may change); an address already taken
/// by a user's Service is left to it, with a warning.
pub(crate) async fn ensure_system(
    reg: &Registry,
    api: std::net::SocketAddr,
    cluster_dns: Ipv4Addr,
) -> Result<(), ApiError> {
    use super::{Part, WriteOptions};
    let svc = resources::of_kind(Kind::Service);
    let services = [
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kubernetes", "namespace": "default",
                         "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"clusterIP": KUBERNETES_IP.to_string(),
                     "ports": [{"name": "https", "port": 443, "protocol": "TCP",
                                "targetPort": api.port()}]}
        }),
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": "kube-system",
                         "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}},
            "spec": {"clusterIP": cluster_dns.to_string(),
                     "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                               {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]}
        }),
    ];
    for body in services {
        let ns = body
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .map(String::from);
        match reg
            .create(svc, ns.as_deref(), body, &WriteOptions::default())
            .await
        {
            Ok(_) => {}
            Err(e) if e.reason == "AlreadyExists" => {}
            Err(e) => tracing::warn!(error = %e.message, "a system Service could not be created"),
        }
    }
    // The API server's own port may change between starts: the Service's targetPort,
    // Endpoints and slice follow it.
    let api_ip = if api.ip().is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        api.ip()
    };
    let mut current = reg.get(svc, Some("default"), "kubernetes").await?;
    if current.pointer("/spec/ports/0/targetPort") != Some(&json!(api.port())) {
        current["spec"]["ports"][0]["targetPort"] = json!(api.port());
        reg.update(
            svc,
            Some("default"),
            "kubernetes",
            current,
            Part::Main,
            &WriteOptions::default(),
        )
        .await?;
    }
    let endpoints = json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{"addresses": [{"ip": api_ip.to_string()}],
                     "ports": [{"name": "https", "port": api.port(), "protocol": "TCP"}]}]
    });
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "kubernetes"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [api_ip.to_string()], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": api.port(), "protocol": "TCP"}]
    });
    for body in [endpoints, slice] {
        let kind = if body["kind"] == "Endpoints" {
            Kind::Endpoints
        } else {
            Kind::EndpointSlice
        };
        reg.update(
            resources::of_kind(kind),
            Some("default"),
            "kubernetes",
            body,
            Part::Main,
            &WriteOptions::default(),
        )
        .await?;
    }
    Ok(())
}
