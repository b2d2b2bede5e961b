//! Container groups in the shape of Azure Container Instances' `containerGroups` resource:
//! the wire types, ACI's validation (errors name the field, as ARM's `target`), the pod a
//! group runs as, and the instance view read back from that pod's status.
//!
//! A group runs as one pod on the instances service's own runtime: the group's containers
//! share the pod's network namespace and volumes, exactly what ACI promises. Nothing here does
//! IO or reads the clock.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The resource type ARM reports for a group.
pub const TYPE: &str = "Microsoft.ContainerInstance/containerGroups";
/// API versions served; the first is what the Python SDK 10.x sends.
pub const API_VERSIONS: &[&str] = &["2023-05-01", "2025-09-01"];
/// Most containers in one group.
pub const MAX_CONTAINERS: usize = 60;
/// Most vCPUs and GB of memory a Linux group may request on the standard SKU.
pub const MAX_CPU: f64 = 4.0;
pub const MAX_MEMORY_GB: f64 = 16.0;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ContainerGroup {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    pub location: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    pub properties: GroupProperties,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct GroupProperties {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provisioning_state: Option<String>,
    pub containers: Vec<ContainerDef>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub init_containers: Vec<ContainerDef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<IpAddress>,
    pub os_type: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeDef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sku: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_config: Option<DnsConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_view: Option<Value>,
}

/// The group's resolver: its containers' resolv.conf, in place of the host's.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct DnsConfig {
    pub name_servers: Vec<String>,
    /// Space-separated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search_domains: Option<String>,
    /// Space-separated resolv.conf options (`ndots:5`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub options: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ContainerDef {
    pub name: String,
    pub properties: ContainerProperties,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ContainerProperties {
    pub image: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub environment_variables: Vec<EnvVar>,
    pub resources: Resources,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Probe>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Probe>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_view: Option<Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Port {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    pub port: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct EnvVar {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secure_value: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Resources {
    pub requests: ResourceAmounts,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<ResourceAmounts>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ResourceAmounts {
    #[serde(rename = "memoryInGB")]
    pub memory_in_gb: f64,
    pub cpu: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct VolumeMount {
    pub name: String,
    pub mount_path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Probe {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecAction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGet>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_delay_seconds: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period_seconds: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub success_threshold: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i32>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ExecAction {
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpGet {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub port: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct IpAddress {
    pub ports: Vec<Port>,
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_name_label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fqdn: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct VolumeDef {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub empty_dir: Option<Value>,
    /// File name -> base64 content.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub git_repo: Option<GitRepo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub azure_file: Option<Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct GitRepo {
    pub repository: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub directory: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
}

/// An ARM error: `{"error":{"code","message","target"}}` with the HTTP status to send.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ArmError {
    pub status: u16,
    pub code: Cow<'static, str>,
    pub message: String,
    pub target: Option<String>,
}

impl ArmError {
    pub fn bad(code: &'static str, target: impl Into<String>, message: impl Into<String>) -> Self {
        ArmError {
            status: 400,
            code: Cow::Borrowed(code),
            message: message.into(),
            target: Some(target.into()),
        }
    }

    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ArmError {
            status,
            code: Cow::Borrowed(code),
            message: message.into(),
            target: None,
        }
    }

    pub fn body(&self) -> Value {
        let mut e = json!({"code": self.code, "message": self.message});
        if let Some(t) = &self.target {
            e["target"] = json!(t);
        }
        json!({ "error": e })
    }
}

/// The group as returned to clients: secure values removed, read-only fields filled in.
pub fn public_view(g: &ContainerGroup) -> ContainerGroup {
    let mut out = g.clone();
    for c in out
        .properties
        .containers
        .iter_mut()
        .chain(out.properties.init_containers.iter_mut())
    {
        for e in &mut c.properties.environment_variables {
            e.secure_value = None;
        }
    }
    for v in &mut out.properties.volumes {
        if let Some(s) = &mut v.secret {
            for val in s.values_mut() {
                val.clear();
            }
        }
    }
    out
}

mod pod;
mod validate;

pub use pod::*;
pub use validate::*;

#[cfg(test)]
mod tests {
    use super::*;

    fn group() -> ContainerGroup {
        serde_json::from_value(json!({
            "location": "eastus",
            "properties": {
                "osType": "Linux",
                "containers": [
                    {"name": "web", "properties": {"image": "busybox", "ports": [{"port": 80}],
                     "resources": {"requests": {"cpu": 1.0, "memoryInGB": 1.5}}}},
                    {"name": "side", "properties": {"image": "busybox",
                     "environmentVariables": [{"name": "A", "value": "1"}, {"name": "S", "secureValue": "x"}],
                     "resources": {"requests": {"cpu": 0.5, "memoryInGB": 0.5}}}}
                ],
                "ipAddress": {"type": "Public", "ports": [{"port": 80}]}
            }
        }))
        .unwrap()
    }

    fn target(g: &ContainerGroup) -> Option<String> {
        validate(g).err().and_then(|e| e.target)
    }

    #[test]
    fn a_valid_group_passes() {
        assert_eq!(validate(&group()), Ok(()));
    }

    #[test]
    fn bad_input_names_the_field() {
        let mut g = group();
        g.properties.containers[0].properties.resources.requests.cpu = 0.0;
        assert_eq!(
            target(&g).as_deref(),
            Some("properties.containers[0].properties.resources.requests.cpu")
        );
        g.properties.containers[0].properties.resources.requests.cpu = 100.0;
        assert_eq!(
            target(&g).as_deref(),
            Some("properties.containers[0].properties.resources.requests.cpu")
        );

        let mut g = group();
        g.properties.ip_address.as_mut().unwrap().ports.push(Port {
            protocol: None,
            port: 80,
        });
        let e = validate(&g).unwrap_err();
        assert_eq!(
            (e.code.as_ref(), e.target.as_deref()),
            ("DuplicatePorts", Some("properties.ipAddress.ports[1].port"))
        );

        let mut g = group();
        g.properties.containers[1].properties.ports.push(Port {
            protocol: None,
            port: 80,
        });
        assert_eq!(validate(&g).unwrap_err().code, "DuplicateContainerPorts");

        let mut g = group();
        g.properties.containers[1].name = "Side".into();
        assert_eq!(target(&g).as_deref(), Some("properties.containers[1].name"));

        let mut g = group();
        let extra = g.properties.containers[1].clone();
        for i in 0..59 {
            let mut c = extra.clone();
            c.name = format!("c{i}");
            c.properties.resources.requests.cpu = 0.01;
            c.properties.resources.requests.memory_in_gb = 0.1;
            g.properties.containers.push(c);
        }
        assert_eq!(
            validate(&g).unwrap_err().code,
            "TooManyContainersInContainerGroup"
        );
    }

    #[test]
    fn names_follow_aci() {
        assert!(validate_name("my-group-1").is_ok());
        for bad in ["", "-a", "a-", "a--b", "UPPER", "a_b", &"x".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn in_place_updates_refuse_what_aci_refuses() {
        let old = group();
        let mut new = group();
        new.properties.containers[0].properties.image = "busybox:2".into();
        assert_eq!(update_refusal(&old, &new), None);
        new.properties.containers[0]
            .properties
            .resources
            .requests
            .cpu = 2.0;
        assert!(update_refusal(&old, &new).is_some());
        let mut new = group();
        new.properties.restart_policy = Some("Never".into());
        assert_eq!(
            update_refusal(&old, &new).and_then(|e| e.target).as_deref(),
            Some("properties.restartPolicy")
        );
    }

    #[test]
    fn secure_values_never_leave() {
        let v = public_view(&group());
        let env = &v.properties.containers[1].properties.environment_variables;
        assert_eq!(env[1].secure_value, None);
        assert_eq!(env[0].value.as_deref(), Some("1"));
    }

    struct NoGit;
    impl VolumeRoot for NoGit {
        fn git_repo_dir(&self, volume: &str) -> String {
            format!("/git/{volume}")
        }
    }

    #[test]
    fn the_pod_enforces_requests_as_limits_and_publishes_public_ports() {
        let pod = to_pod(&group(), "rg", "g", "u1", &NoGit);
        let web = &pod["spec"]["containers"][0];
        assert_eq!(web["resources"]["limits"]["cpu"], "1000m");
        assert_eq!(web["resources"]["limits"]["memory"], "1536Mi");
        assert_eq!(web["ports"][0]["hostPort"], 80);
        assert_eq!(pod["spec"]["containers"][1]["env"][1]["value"], "x");
        let typed: k8s_openapi::api::core::v1::Pod = serde_json::from_value(pod).unwrap();
        assert_eq!(typed.spec.unwrap().containers.len(), 2);
    }

    #[test]
    fn a_groups_dns_config_is_its_pods_resolver_and_is_checked() {
        let mut g = group();
        g.properties.dns_config = Some(DnsConfig {
            name_servers: vec!["10.96.0.10".into()],
            search_domains: Some("ns.svc.cluster.local svc.cluster.local".into()),
            options: Some("ndots:5 rotate".into()),
        });
        assert_eq!(validate(&g), Ok(()));
        let pod = to_pod(&g, "rg", "g", "u1", &NoGit);
        assert_eq!(pod["spec"]["dnsPolicy"], "None");
        assert_eq!(
            pod["spec"]["dnsConfig"],
            json!({"nameservers": ["10.96.0.10"],
                   "searches": ["ns.svc.cluster.local", "svc.cluster.local"],
                   "options": [{"name": "ndots", "value": "5"}, {"name": "rotate"}]})
        );
        g.properties.dns_config.as_mut().unwrap().name_servers = vec!["dns.example".into()];
        assert_eq!(
            validate(&g).unwrap_err().target.as_deref(),
            Some("properties.dnsConfig.nameServers[0]")
        );
    }

    #[test]
    fn instance_views_come_from_the_pod_status() {
        let status = json!({"phase": "Running", "containerStatuses": [
            {"name": "web", "restartCount": 1, "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}},
             "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "startedAt": "a", "finishedAt": "b"}}},
            {"name": "side", "restartCount": 0, "state": {"waiting": {"reason": "ErrImageNeverPull", "message": "no image x"}}}
        ]});
        let o = observe(Some(&status), &BTreeMap::new());
        assert_eq!(o.state, "Running");
        assert!(!o.all_started);
        assert_eq!(o.containers["web"]["currentState"]["state"], "Running");
        assert_eq!(o.containers["web"]["previousState"]["exitCode"], 1);
        assert!(o.failure.unwrap().contains("no image x"));
    }
}
