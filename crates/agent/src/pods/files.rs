//! The files a pod's containers see at `/etc/resolv.conf` and `/etc/hosts`, written by the
//! agent as the kubelet writes them and mounted into every container (Docker runtime).
//!
//! resolv.conf follows the pod's `dnsPolicy`: `ClusterFirst` (the default, and
//! `ClusterFirstWithHostNet` for host-network pods) names the cluster DNS with the search
//! path `<ns>.svc.<domain> svc.<domain> <domain>` and `ndots:5`; `Default` keeps the host's
//! (the runtime's own file); `None` is the pod's `dnsConfig` alone, which the others
//! extend.

use std::path::Path;

use k8s_openapi::api::core::v1::Pod;

use crate::runtime::Mount;

/// The cluster DNS a pod is pointed at.
#[derive(Debug, Clone)]
pub struct PodDns {
    pub nameserver: std::net::Ipv4Addr,
    /// `cluster.local`.
    pub domain: String,
}

/// A pod's resolver: what its resolv.conf says.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Resolver {
    pub servers: Vec<String>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

/// The pod's resolver, or `None` where the runtime's own (the host's) stands; with no
/// cluster DNS (`dns` None) only a pod's `dnsPolicy: None` has one.
pub fn resolver(pod: &Pod, dns: Option<&PodDns>, host_search: &[String]) -> Option<Resolver> {
    let spec = pod.spec.as_ref()?;
    let host_network = spec.host_network == Some(true);
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut r = match (policy, dns) {
        ("ClusterFirst", _) if host_network => return None,
        ("ClusterFirst" | "ClusterFirstWithHostNet", Some(dns)) => Resolver {
            servers: vec![dns.nameserver.to_string()],
            search: [
                format!("{ns}.svc.{}", dns.domain),
                format!("svc.{}", dns.domain),
                dns.domain.clone(),
            ]
            .into_iter()
            .chain(host_search.iter().cloned())
            .collect(),
            options: vec!["ndots:5".into()],
        },
        ("None", _) => Resolver::default(),
        _ => return None,
    };
    if let Some(cfg) = &spec.dns_config {
        r.servers.extend(cfg.nameservers.iter().flatten().cloned());
        r.search.extend(cfg.searches.iter().flatten().cloned());
        for o in cfg.options.iter().flatten() {
            let Some(name) = o.name.as_deref() else {
                continue;
            };
            // A pod's option replaces one of the same name.
            r.options.retain(|x| x.split(':').next() != Some(name));
            r.options.push(match &o.value {
                Some(v) => format!("{name}:{v}"),
                None => name.to_string(),
            });
        }
    }
    r.search.dedup();
    // resolv.conf reads three name servers.
    r.servers.truncate(3);
    Some(r)
}

/// The pod's resolv.conf, or `None` where the runtime's own (the host's) stands.
pub fn resolv_conf(pod: &Pod, dns: Option<&PodDns>, host_search: &[String]) -> Option<String> {
    let r = resolver(pod, dns, host_search)?;
    let mut out = String::new();
    if !r.search.is_empty() {
        out.push_str(&format!("search {}\n", r.search.join(" ")));
    }
    for s in &r.servers {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !r.options.is_empty() {
        out.push_str(&format!("options {}\n", r.options.join(" ")));
    }
    Some(out)
}

/// The pod's hostname: `spec.hostname`, else its name (at most 63 characters).
pub fn hostname(pod: &Pod) -> String {
    let spec = pod.spec.as_ref();
    spec.and_then(|s| s.hostname.clone())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| pod.metadata.name.clone().unwrap_or_default())
        .chars()
        .take(63)
        .collect::<String>()
        .trim_end_matches(['-', '.'])
        .to_string()
}

/// The pod's /etc/hosts, as the kubelet writes it: localhost, the pod's own address with its
/// names (the FQDN first when a `subdomain` puts it under a headless Service), and its
/// `hostAliases`.
pub fn hosts(pod: &Pod, pod_ip: Option<&str>, domain: &str) -> String {
    let mut out = String::from(concat!(
        "# Kubernetes-managed hosts file.\n",
        "127.0.0.1\tlocalhost\n",
        "::1\tlocalhost ip6-localhost ip6-loopback\n",
        "fe00::0\tip6-localnet\n",
        "fe00::0\tip6-mcastprefix\n",
        "fe00::1\tip6-allnodes\n",
        "fe00::2\tip6-allrouters\n",
    ));
    let host = hostname(pod);
    if let Some(ip) = pod_ip.filter(|ip| !ip.is_empty()) {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        match pod
            .spec
            .as_ref()
            .and_then(|s| s.subdomain.as_deref())
            .filter(|s| !s.is_empty())
        {
            Some(sub) => out.push_str(&format!("{ip}\t{host}.{sub}.{ns}.svc.{domain}\t{host}\n")),
            None => out.push_str(&format!("{ip}\t{host}\n")),
        }
    }
    let aliases = pod.spec.as_ref().and_then(|s| s.host_aliases.as_ref());
    if let Some(aliases) = aliases.filter(|a| !a.is_empty()) {
        out.push_str("\n# Entries added by HostAliases.\n");
        for a in aliases {
            let names = a.hostnames.clone().unwrap_or_default().join("\t");
            out.push_str(&format!("{}\t{names}\n", a.ip));
        }
    }
    out
}

/// Write the pod's files under `dir` (`<pod dir>/etc`) and return their mounts.
pub fn write(
    dir: &Path,
    pod: &Pod,
    pod_ip: Option<&str>,
    dns: Option<&PodDns>,
    host_search: &[String],
) -> std::io::Result<Vec<Mount>> {
    std::fs::create_dir_all(dir)?;
    let mut mounts = Vec::new();
    let hosts_file = dir.join("hosts");
    let host_network = pod.spec.as_ref().and_then(|s| s.host_network) == Some(true);
    if let (Some(dns), false) = (dns, host_network) {
        std::fs::write(&hosts_file, hosts(pod, pod_ip, &dns.domain))?;
        mounts.push(Mount {
            host_path: hosts_file.to_string_lossy().into_owned(),
            container_path: "/etc/hosts".into(),
            read_only: false,
        });
    }
    if let Some(conf) = resolv_conf(pod, dns, host_search) {
        let file = dir.join("resolv.conf");
        std::fs::write(&file, conf)?;
        mounts.push(Mount {
            host_path: file.to_string_lossy().into_owned(),
            container_path: "/etc/resolv.conf".into(),
            read_only: false,
        });
    }
    Ok(mounts)
}

/// The search domains of the host's resolv.conf.
pub fn host_search(resolv_conf: &str) -> Vec<String> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("search"))
        .flat_map(|s| s.split_whitespace().map(String::from))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{HostAlias, PodDNSConfig, PodDNSConfigOption, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pod(spec: PodSpec) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web-0".into()),
                namespace: Some("shop".into()),
                ..Default::default()
            },
            spec: Some(spec),
            ..Default::default()
        }
    }

    fn dns() -> PodDns {
        PodDns {
            nameserver: std::net::Ipv4Addr::new(10, 96, 0, 10),
            domain: "cluster.local".into(),
        }
    }

    #[test]
    fn cluster_first_names_the_cluster_dns_and_search_path() {
        let conf = resolv_conf(
            &pod(PodSpec::default()),
            Some(&dns()),
            &["corp.example".into()],
        )
        .unwrap();
        assert_eq!(
            conf,
            "search shop.svc.cluster.local svc.cluster.local cluster.local corp.example\n\
             nameserver 10.96.0.10\noptions ndots:5\n"
        );
        // Host-network pods keep the host's, unless they ask for the cluster's.
        let host = PodSpec {
            host_network: Some(true),
            ..Default::default()
        };
        assert!(resolv_conf(&pod(host.clone()), Some(&dns()), &[]).is_none());
        let with = PodSpec {
            dns_policy: Some("ClusterFirstWithHostNet".into()),
            ..host
        };
        assert!(resolv_conf(&pod(with), Some(&dns()), &[])
            .unwrap()
            .contains("nameserver 10.96.0.10"));
    }

    #[test]
    fn dns_config_extends_or_replaces() {
        let cfg = PodDNSConfig {
            nameservers: Some(vec!["192.0.2.53".into()]),
            searches: Some(vec!["extra.local".into()]),
            options: Some(vec![PodDNSConfigOption {
                name: Some("ndots".into()),
                value: Some("2".into()),
            }]),
        };
        let none = PodSpec {
            dns_policy: Some("None".into()),
            dns_config: Some(cfg.clone()),
            ..Default::default()
        };
        assert_eq!(
            resolv_conf(&pod(none.clone()), Some(&dns()), &[]).unwrap(),
            "search extra.local\nnameserver 192.0.2.53\noptions ndots:2\n"
        );
        // With no cluster DNS (container groups) only a pod's own resolver is written.
        assert_eq!(
            resolv_conf(&pod(none), None, &[]).unwrap(),
            "search extra.local\nnameserver 192.0.2.53\noptions ndots:2\n"
        );
        assert!(resolv_conf(&pod(PodSpec::default()), None, &[]).is_none());
        let first = PodSpec {
            dns_config: Some(cfg),
            ..Default::default()
        };
        let conf = resolv_conf(&pod(first), Some(&dns()), &[]).unwrap();
        assert!(
            conf.contains("nameserver 10.96.0.10\nnameserver 192.0.2.53\n"),
            "{conf}"
        );
        assert!(conf.ends_with("options ndots:2\n"), "{conf}");
    }

    #[test]
    fn hosts_name_the_pod_and_its_aliases() {
        let spec = PodSpec {
            hostname: Some("db-0".into()),
            subdomain: Some("db".into()),
            host_aliases: Some(vec![HostAlias {
                ip: "192.0.2.1".into(),
                hostnames: Some(vec!["a".into(), "b".into()]),
            }]),
            ..Default::default()
        };
        let h = hosts(&pod(spec), Some("10.42.0.7"), "cluster.local");
        assert!(
            h.contains("10.42.0.7\tdb-0.db.shop.svc.cluster.local\tdb-0\n"),
            "{h}"
        );
        assert!(h.contains("192.0.2.1\ta\tb\n"), "{h}");
        let plain = hosts(&pod(PodSpec::default()), Some("10.42.0.8"), "cluster.local");
        assert!(plain.ends_with("10.42.0.8\tweb-0\n"), "{plain}");
    }
}
