//! The Service proxy's rules: a pure function from Services and EndpointSlices to one
//! nftables table, which the agent replaces whole in one transaction ([`super::nft`]).
//!
//! ```text
//!  nat prerouting / output ──▶ services: daddr . proto . port ─vmap─▶ svc/<ns>/<name>/<port>
//!                              local address . proto . nodePort ─vmap─▶ ext/<ns>/<name>/<port>
//!  svc/...  (ClusterIP)   sticky clients first (sessionAffinity), then numgen random
//!                         over the ready endpoints ──▶ ep/<ns>/<name>/<port>/<ip>: dnat
//!  ext/...  (NodePort, externalIPs) masquerade-mark, then svc/...; with
//!           externalTrafficPolicy Local: this node's endpoints only, client address kept
//!  filter input / forward / output ──▶ a Service with no endpoint: reject at once
//!  nat postrouting ──▶ masquerade what was marked (from outside the pod network, hairpin,
//!                      external) and pod traffic leaving the cluster CIDR
//! ```
//!
//! Endpoints are those a slice calls ready; when a Service has none but some are still
//! serving while they terminate, those (as kube-proxy does), so a rollout's last old pod
//! keeps answering until its replacement is ready. `internalTrafficPolicy: Local` keeps
//! cluster traffic on this node's endpoints.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label slices carry to name their Service.
pub(crate) const SERVICE_NAME: &str = "kubernetes.io/service-name";
/// The packet mark that asks postrouting to masquerade (kube-proxy's bit).
const MASQ: &str = "0x4000";

/// What the rules depend on besides the API's objects.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The nftables table (family `ip`) the agent owns.
    pub table: String,
    /// This node's name, for `Local` traffic policies.
    pub node: String,
    /// The pod network: traffic from elsewhere to a ClusterIP is masqueraded so replies
    /// come back through this node; pod traffic leaving it is masqueraded. `None`: pods use
    /// the engine's own network, which masquerades its own egress.
    pub cluster_cidr: Option<String>,
    /// The port of this node's DNS server on 127.0.0.1: the `kube-system/kube-dns` Service
    /// goes there instead of to endpoints of its own.
    pub local_dns: Option<u16>,
}

/// The Service pods ask for names.
pub const CLUSTER_DNS: (&str, &str) = ("kube-system", "kube-dns");

/// One Service port as the proxy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Port {
    /// `<ns>/<name>/<port name or number>`: the chains' names.
    id: String,
    protocol: &'static str,
    port: i32,
    node_port: Option<i32>,
    cluster_ips: Vec<String>,
    external_ips: Vec<String>,
    affinity: Option<i32>,
    internal_local: bool,
    external_local: bool,
    /// (ip, port, on this node), sorted.
    endpoints: Vec<(String, i32, bool)>,
}

fn protocol(p: Option<&str>) -> Option<&'static str> {
    match p.unwrap_or("TCP") {
        "TCP" => Some("tcp"),
        "UDP" => Some("udp"),
        "SCTP" => Some("sctp"),
        _ => None,
    }
}

/// The Service ports to program, each with its endpoints.
fn ports(
    settings: &Settings,
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
) -> Vec<Port> {
    let (node, settings_dns) = (settings.node.as_str(), settings.local_dns);
    let mut by_service: BTreeMap<(&str, &str), Vec<&EndpointSlice>> = BTreeMap::new();
    for s in slices {
        let Some(svc) = s.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME)) else {
            continue;
        };
        if s.address_type != "IPv4" {
            continue;
        }
        let ns = s.metadata.namespace.as_deref().unwrap_or_default();
        by_service.entry((ns, svc.as_str())).or_default().push(s);
    }
    let mut out = Vec::new();
    for svc in services {
        let Some(spec) = svc.spec.as_ref() else {
            continue;
        };
        let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
        if ty == "ExternalName" {
            continue;
        }
        let ns = svc.metadata.namespace.as_deref().unwrap_or_default();
        let name = svc.metadata.name.as_deref().unwrap_or_default();
        let cluster_ips: Vec<String> = spec
            .cluster_ips
            .clone()
            .or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip]))
            .unwrap_or_default()
            .into_iter()
            .filter(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok())
            .collect();
        let external_ips: Vec<String> = spec
            .external_ips
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok())
            .collect();
        let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .unwrap_or(10800)
        });
        let slices = by_service
            .get(&(ns, name))
            .map(Vec::as_slice)
            .unwrap_or_default();
        for p in spec.ports.iter().flatten() {
            let Some(proto) = protocol(p.protocol.as_deref()) else {
                continue;
            };
            let pname = p.name.clone().unwrap_or_default();
            // Ready endpoints; failing those, the ones still serving while they terminate.
            let mut ready = BTreeSet::new();
            let mut serving = BTreeSet::new();
            for slice in slices {
                let Some(sp) = slice.ports.iter().flatten().find(|sp| {
                    sp.name.clone().unwrap_or_default() == pname
                        && protocol(sp.protocol.as_deref()) == Some(proto)
                }) else {
                    continue;
                };
                let Some(port) = sp.port else {
                    continue;
                };
                for e in &slice.endpoints {
                    let c = e.conditions.clone().unwrap_or_default();
                    let local = e.node_name.as_deref() == Some(node);
                    for ip in &e.addresses {
                        let ep = (ip.clone(), port, local);
                        if c.ready != Some(false) {
                            ready.insert(ep);
                        } else if c.serving == Some(true) && c.terminating == Some(true) {
                            serving.insert(ep);
                        }
                    }
                }
            }
            let mut endpoints = if ready.is_empty() { serving } else { ready };
            if let (Some(dns), true) = (settings_dns, (ns, name) == CLUSTER_DNS) {
                endpoints = BTreeSet::from([("127.0.0.1".to_string(), i32::from(dns), true)]);
            }
            let label = if pname.is_empty() {
                p.port.to_string()
            } else {
                pname
            };
            out.push(Port {
                id: format!("{ns}/{name}/{label}"),
                protocol: proto,
                port: p.port,
                node_port: p
                    .node_port
                    .filter(|n| *n > 0 && matches!(ty, "NodePort" | "LoadBalancer")),
                cluster_ips: cluster_ips.clone(),
                external_ips: external_ips.clone(),
                affinity,
                internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
                external_local: spec.external_traffic_policy.as_deref() == Some("Local"),
                endpoints: endpoints.into_iter().collect(),
            });
        }
    }
    out
}

/// The nft script that replaces the table with the rules for these objects: in one
/// transaction the table is made (if absent), deleted and written anew, so packets see the
/// old rules or the new ones, never a mix, and no other table is touched.
pub fn ruleset(
    settings: &Settings,
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
) -> String {
    let ports = ports(settings, services, slices);
    let t = &settings.table;
    let mut s = String::new();
    let _ = writeln!(s, "table ip {t} {{}}\ndelete table ip {t}\ntable ip {t} {{");

    let mut service_ips = Vec::new(); // daddr . proto . port : verdict
    let mut node_ports = Vec::new(); // proto . port : verdict
    let mut no_endpoints = Vec::new(); // daddr . proto . port
    let mut no_endpoint_node_ports = Vec::new(); // proto . port
    let mut chains = String::new();
    let mut sets = String::new();
    for p in &ports {
        let cluster: Vec<&(String, i32, bool)> = p
            .endpoints
            .iter()
            .filter(|e| !p.internal_local || e.2)
            .collect();
        let local: Vec<&(String, i32, bool)> = p.endpoints.iter().filter(|e| e.2).collect();
        let svc = format!("svc/{}", p.id);
        let ext = format!("ext/{}", p.id);
        let has_external = p.node_port.is_some() || !p.external_ips.is_empty();
        for ip in &p.cluster_ips {
            if cluster.is_empty() {
                no_endpoints.push(format!("{ip} . {} . {}", p.protocol, p.port));
            } else {
                service_ips.push(format!("{ip} . {} . {} : goto {svc}", p.protocol, p.port));
            }
        }
        let external_reachable = if p.external_local {
            !local.is_empty()
        } else {
            !p.endpoints.is_empty()
        };
        for ip in &p.external_ips {
            if external_reachable {
                service_ips.push(format!("{ip} . {} . {} : goto {ext}", p.protocol, p.port));
            } else {
                no_endpoints.push(format!("{ip} . {} . {}", p.protocol, p.port));
            }
        }
        if let Some(np) = p.node_port {
            if external_reachable {
                node_ports.push(format!("{} . {np} : goto {ext}", p.protocol));
            } else {
                no_endpoint_node_ports.push(format!("{} . {np}", p.protocol));
            }
        }
        // The cluster chain.
        let _ = writeln!(chains, "\tchain {svc} {{");
        if let Some(cidr) = &settings.cluster_cidr {
            let _ = writeln!(
                chains,
                "\t\tip saddr != {cidr} meta mark set meta mark | {MASQ}"
            );
        }
        endpoint_choice(&mut chains, &mut sets, p, &cluster);
        chains.push_str("\t}\n");
        if has_external {
            let _ = writeln!(chains, "\tchain {ext} {{");
            if p.external_local {
                // From a pod or from this node itself: as cluster traffic. From outside:
                // this node's endpoints only, with the client's address kept.
                if let Some(cidr) = &settings.cluster_cidr {
                    let _ = writeln!(chains, "\t\tip saddr {cidr} goto {svc}");
                }
                let _ = writeln!(
                    chains,
                    "\t\tfib saddr type local meta mark set meta mark | {MASQ} goto {svc}"
                );
                endpoint_choice(&mut chains, &mut sets, p, &local);
            } else {
                let _ = writeln!(chains, "\t\tmeta mark set meta mark | {MASQ} goto {svc}");
            }
            chains.push_str("\t}\n");
        }
        for (ip, port, _) in &p.endpoints {
            let _ = writeln!(chains, "\tchain ep/{}/{ip} {{", p.id);
            let _ = writeln!(chains, "\t\tip saddr {ip} meta mark set meta mark | {MASQ}");
            if p.affinity.is_some() {
                let _ = writeln!(chains, "\t\tupdate @aff/{}/{ip} {{ ip saddr }}", p.id);
            }
            let _ = writeln!(
                chains,
                "\t\tmeta l4proto {} dnat to {ip}:{port}",
                p.protocol
            );
            chains.push_str("\t}\n");
        }
    }

    s.push_str(&sets);
    map(
        &mut s,
        "service-ips",
        "ipv4_addr . inet_proto . inet_service : verdict",
        &service_ips,
    );
    map(
        &mut s,
        "service-nodeports",
        "inet_proto . inet_service : verdict",
        &node_ports,
    );
    map(
        &mut s,
        "no-endpoint-services",
        "ipv4_addr . inet_proto . inet_service",
        &no_endpoints,
    );
    map(
        &mut s,
        "no-endpoint-nodeports",
        "inet_proto . inet_service",
        &no_endpoint_node_ports,
    );

    // Hooks. Filter chains run before DNAT (priority -110 < dstnat) so a Service with no
    // endpoint is refused at once instead of timing out.
    s.push_str(concat!(
        "\tchain filter-input {\n\t\ttype filter hook input priority -110; policy accept;\n",
        "\t\tct state new fib daddr type local meta l4proto . th dport @no-endpoint-nodeports reject\n",
        "\t\tiif != lo ip daddr 127.0.0.0/8 ct status & dnat == 0 drop\n\t}\n",
        "\tchain filter-forward {\n\t\ttype filter hook forward priority -110; policy accept;\n",
        "\t\tct state new ip daddr . meta l4proto . th dport @no-endpoint-services reject\n\t}\n",
        "\tchain filter-output {\n\t\ttype filter hook output priority -110; policy accept;\n",
        "\t\tct state new ip daddr . meta l4proto . th dport @no-endpoint-services reject\n",
        "\t\tct state new fib daddr type local meta l4proto . th dport @no-endpoint-nodeports reject\n\t}\n",
        "\tchain nat-prerouting {\n\t\ttype nat hook prerouting priority -100; policy accept;\n\t\tjump services\n\t}\n",
        "\tchain nat-output {\n\t\ttype nat hook output priority -100; policy accept;\n\t\tjump services\n\t}\n",
        "\tchain services {\n",
        "\t\tip daddr . meta l4proto . th dport vmap @service-ips\n",
        "\t\tfib daddr type local meta l4proto . th dport vmap @service-nodeports\n\t}\n",
        "\tchain nat-postrouting {\n\t\ttype nat hook postrouting priority 100; policy accept;\n",
    ));
    let _ = writeln!(
        s,
        "\t\tmeta mark & {MASQ} == {MASQ} meta mark set meta mark xor {MASQ} masquerade"
    );
    if let Some(cidr) = &settings.cluster_cidr {
        let _ = writeln!(s, "\t\tip saddr {cidr} ip daddr != {cidr} masquerade");
    }
    s.push_str("\t}\n");
    s.push_str(&chains);
    s.push_str("}\n");
    s
}

/// The rules that pick one of `endpoints` (sticky first, then at random); with none, drop.
fn endpoint_choice(
    chains: &mut String,
    sets: &mut String,
    p: &Port,
    endpoints: &[&(String, i32, bool)],
) {
    if endpoints.is_empty() {
        chains.push_str("\t\tdrop\n");
        return;
    }
    if let Some(timeout) = p.affinity {
        for (ip, _, _) in endpoints {
            let set = format!("aff/{}/{ip}", p.id);
            let _ = writeln!(chains, "\t\tip saddr @{set} goto ep/{}/{ip}", p.id);
            // A set per endpoint may be written once per chain that uses it.
            if !sets.contains(&format!("set {set} ")) {
                let _ = writeln!(
                    sets,
                    "\tset {set} {{\n\t\ttype ipv4_addr; flags dynamic,timeout; timeout {timeout}s;\n\t}}"
                );
            }
        }
    }
    let arms: Vec<String> = endpoints
        .iter()
        .enumerate()
        .map(|(i, (ip, _, _))| format!("{i} : goto ep/{}/{ip}", p.id))
        .collect();
    let _ = writeln!(
        chains,
        "\t\tnumgen random mod {} vmap {{ {} }}",
        endpoints.len(),
        arms.join(", ")
    );
}

/// A named map or set, with its elements (an empty one has none listed).
fn map(s: &mut String, name: &str, ty: &str, elements: &[String]) {
    let (kind, ty) = match ty.split_once(" : ") {
        Some((k, v)) => ("map", format!("{k} : {v}")),
        None => ("set", ty.to_string()),
    };
    let _ = writeln!(s, "\t{kind} {name} {{\n\t\ttype {ty};");
    if !elements.is_empty() {
        let _ = writeln!(s, "\t\telements = {{ {} }}", elements.join(", "));
    }
    s.push_str("\t}\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ClientIPConfig, ServicePort, ServiceSpec, SessionAffinityConfig,
    };
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn settings() -> Settings {
        Settings {
            table: "berth-test".into(),
            node: "n1".into(),
            cluster_cidr: Some("10.42.0.0/16".into()),
            local_dns: None,
        }
    }

    fn service(name: &str, ty: &str) -> ServiceSpec {
        ServiceSpec {
            type_: Some(ty.into()),
            cluster_ip: Some("10.96.0.10".into()),
            cluster_ips: Some(vec!["10.96.0.10".into()]),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                node_port: (ty == "NodePort").then_some(30080),
                ..Default::default()
            }]),
            selector: Some([("app".to_string(), name.to_string())].into()),
            ..Default::default()
        }
    }

    fn svc(name: &str, spec: ServiceSpec) -> Arc<Service> {
        Arc::new(Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            spec: Some(spec),
            ..Default::default()
        })
    }

    /// (ip, node, ready, serving, terminating)
    fn slice(svc: &str, eps: &[(&str, &str, bool, bool, bool)]) -> Arc<EndpointSlice> {
        Arc::new(EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("{svc}-abc")),
                namespace: Some("default".into()),
                labels: Some([(SERVICE_NAME.to_string(), svc.to_string())].into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: eps
                .iter()
                .map(|(ip, node, ready, serving, terminating)| Endpoint {
                    addresses: vec![ip.to_string()],
                    node_name: Some(node.to_string()),
                    conditions: Some(EndpointConditions {
                        ready: Some(*ready),
                        serving: Some(*serving),
                        terminating: Some(*terminating),
                    }),
                    ..Default::default()
                })
                .collect(),
            ports: Some(vec![EndpointPort {
                name: Some("http".into()),
                port: Some(8080),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
        })
    }

    #[test]
    fn ready_endpoints_are_chosen_at_random() {
        let rules = ruleset(
            &settings(),
            &[svc("web", service("web", "NodePort"))],
            &[slice(
                "web",
                &[
                    ("10.42.0.2", "n1", true, true, false),
                    ("10.42.1.2", "n2", true, true, false),
                    ("10.42.1.3", "n2", false, false, false),
                ],
            )],
        );
        assert!(
            rules.contains("10.96.0.10 . tcp . 80 : goto svc/default/web/http"),
            "{rules}"
        );
        assert!(
            rules.contains("tcp . 30080 : goto ext/default/web/http"),
            "{rules}"
        );
        assert!(rules.contains(
            "numgen random mod 2 vmap { 0 : goto ep/default/web/http/10.42.0.2, 1 : goto ep/default/web/http/10.42.1.2 }"
        ), "{rules}");
        assert!(rules.contains("meta l4proto tcp dnat to 10.42.1.2:8080"));
        assert!(
            !rules.contains("10.42.1.3"),
            "an unready endpoint gets no traffic"
        );
        // The whole table is replaced in one go and nothing else is named.
        assert!(rules.starts_with("table ip berth-test {}\ndelete table ip berth-test\n"));
    }

    #[test]
    fn terminating_endpoints_serve_only_when_nothing_is_ready() {
        let eps = [
            ("10.42.0.2", "n1", false, true, true),
            ("10.42.0.3", "n1", false, false, false),
        ];
        let rules = ruleset(
            &settings(),
            &[svc("web", service("web", "ClusterIP"))],
            &[slice("web", &eps)],
        );
        assert!(
            rules.contains("numgen random mod 1 vmap { 0 : goto ep/default/web/http/10.42.0.2 }"),
            "{rules}"
        );
        let eps = [
            ("10.42.0.2", "n1", false, true, true),
            ("10.42.0.4", "n1", true, true, false),
        ];
        let rules = ruleset(
            &settings(),
            &[svc("web", service("web", "ClusterIP"))],
            &[slice("web", &eps)],
        );
        assert!(
            rules.contains("numgen random mod 1 vmap { 0 : goto ep/default/web/http/10.42.0.4 }"),
            "{rules}"
        );
    }

    #[test]
    fn a_service_without_endpoints_is_rejected() {
        let rules = ruleset(&settings(), &[svc("web", service("web", "NodePort"))], &[]);
        assert!(
            rules.contains("elements = { 10.96.0.10 . tcp . 80 }"),
            "{rules}"
        );
        assert!(rules.contains("elements = { tcp . 30080 }"), "{rules}");
        assert!(!rules.contains(": goto svc/"), "{rules}");
    }

    #[test]
    fn traffic_policies_and_affinity() {
        let mut spec = service("web", "NodePort");
        spec.internal_traffic_policy = Some("Local".into());
        spec.external_traffic_policy = Some("Local".into());
        spec.session_affinity = Some("ClientIP".into());
        spec.session_affinity_config = Some(SessionAffinityConfig {
            client_ip: Some(ClientIPConfig {
                timeout_seconds: Some(60),
            }),
        });
        spec.external_ips = Some(vec!["192.0.2.10".into()]);
        let eps = [
            ("10.42.0.2", "n1", true, true, false),
            ("10.42.1.2", "n2", true, true, false),
        ];
        let rules = ruleset(&settings(), &[svc("web", spec)], &[slice("web", &eps)]);
        // Only this node's endpoint, for cluster and external traffic alike.
        assert_eq!(
            rules
                .matches("numgen random mod 1 vmap { 0 : goto ep/default/web/http/10.42.0.2 }")
                .count(),
            2,
            "{rules}"
        );
        assert!(rules.contains("192.0.2.10 . tcp . 80 : goto ext/default/web/http"));
        assert!(rules.contains(
            "ip saddr @aff/default/web/http/10.42.0.2 goto ep/default/web/http/10.42.0.2"
        ));
        assert!(rules.contains("update @aff/default/web/http/10.42.0.2 { ip saddr }"));
        assert!(rules.contains("timeout 60s"));
        assert_eq!(
            rules.matches("set aff/default/web/http/10.42.0.2 ").count(),
            1
        );
    }

    /// The rules are what nft accepts (checked, not applied: `nft -c`). Needs nft and the
    /// right to open a netfilter socket (root), as the agent does.
    #[test]
    fn nft_accepts_the_rules() {
        let mut spec = service("web", "NodePort");
        spec.session_affinity = Some("ClientIP".into());
        spec.external_traffic_policy = Some("Local".into());
        spec.external_ips = Some(vec!["192.0.2.10".into()]);
        let eps = [
            ("10.42.0.2", "n1", true, true, false),
            ("10.42.1.2", "n2", true, true, false),
        ];
        let rules = ruleset(
            &settings(),
            &[svc("web", spec), svc("empty", service("empty", "NodePort"))],
            &[slice("web", &eps)],
        );
        let mut child = std::process::Command::new("nft")
            .args(["-c", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("this test needs nft: `apt-get install nftables`");
        {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(rules.as_bytes())
                .unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "nft refused:\n{}\n{rules}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
