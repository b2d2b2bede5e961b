//! Container groups in the shape of Azure Container Instances' `containerGroups` resource:
//! the wire types, ACI's validation (errors name the field, as ARM's `target`), the pod a
//! group runs as, and the instance view read back from that pod's status.
//!
//! A group runs as one pod on the instances service's own runtime: the group's containers
//! share the pod's network namespace and volumes, exactly what ACI promises. Nothing here does
//! IO or reads the clock.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

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
    pub instance_view: Option<Value>,
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

/// ACI's rule for group and container names: lowercase letters, digits and single hyphens
/// inside, at most 63 characters.
fn name_problem(name: &str) -> Option<&'static str> {
    let b = name.as_bytes();
    if b.is_empty() || b.len() > 63 {
        return Some("must be 1 to 63 characters long");
    }
    if !b
        .iter()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
    {
        return Some("may hold only lowercase letters, digits and '-'");
    }
    if b[0] == b'-' || b[b.len() - 1] == b'-' || name.contains("--") {
        return Some("may not start or end with '-' or hold '--'");
    }
    None
}

/// Check a group name from the URL.
pub fn validate_name(name: &str) -> Result<(), ArmError> {
    match name_problem(name) {
        None => Ok(()),
        Some(why) => Err(ArmError::bad(
            "InvalidContainerGroupName",
            "containerGroupName",
            format!(
                "The container group name '{name}' is invalid: it {why} (for example 'my-group')."
            ),
        )),
    }
}

/// Check a resource group name from the URL: ARM allows letters, digits, `-_.()`, up to 90.
pub fn validate_resource_group(rg: &str) -> Result<(), ArmError> {
    let ok = !rg.is_empty()
        && rg.len() <= 90
        && !rg.ends_with('.')
        && rg
            .chars()
            .all(|c| c.is_alphanumeric() || "-_.()".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ArmError::bad(
            "InvalidResourceGroupName",
            "resourceGroupName",
            format!("The resource group name '{rg}' is invalid: use 1 to 90 letters, digits, '-', '_', '.', '(' or ')', not ending in '.'."),
        ))
    }
}

fn in_steps(value: f64, step: f64) -> bool {
    let n = value / step;
    (n - n.round()).abs() < 1e-6
}

/// Validate a group as ACI does on PUT. The first problem found is returned, with its
/// field path as `target`.
pub fn validate(g: &ContainerGroup) -> Result<(), ArmError> {
    let p = &g.properties;
    if g.location.trim().is_empty() {
        return Err(ArmError::bad(
            "LocationRequired",
            "location",
            "The location property is required for this definition; set it (for example 'eastus').",
        ));
    }
    match p.os_type.as_str() {
        "Linux" => {}
        "" => {
            return Err(ArmError::bad(
                "OsTypeRequired",
                "properties.osType",
                "The osType of the container group is required; set it to 'Linux'.",
            ))
        }
        other => {
            return Err(ArmError::bad(
                "UnsupportedOsType",
                "properties.osType",
                format!("The osType '{other}' is not supported here; only 'Linux' is."),
            ))
        }
    }
    if let Some(rp) = &p.restart_policy {
        if !matches!(rp.as_str(), "Always" | "OnFailure" | "Never") {
            return Err(ArmError::bad(
                "InvalidRestartPolicy",
                "properties.restartPolicy",
                format!(
                    "The restart policy '{rp}' is invalid; use 'Always', 'OnFailure' or 'Never'."
                ),
            ));
        }
    }
    if p.containers.is_empty() {
        return Err(ArmError::bad(
            "NoContainersInContainerGroup",
            "properties.containers",
            "The container group must hold at least one container.",
        ));
    }
    let total = p.containers.len() + p.init_containers.len();
    if total > MAX_CONTAINERS {
        return Err(ArmError::bad(
            "TooManyContainersInContainerGroup",
            "properties.containers",
            format!("The container group holds {total} containers; at most {MAX_CONTAINERS} are allowed."),
        ));
    }
    let volumes: BTreeSet<&str> = p.volumes.iter().map(|v| v.name.as_str()).collect();
    for (i, v) in p.volumes.iter().enumerate() {
        let at = format!("properties.volumes[{i}]");
        if let Some(why) = name_problem(&v.name) {
            return Err(ArmError::bad(
                "InvalidVolumeName",
                format!("{at}.name"),
                format!("The volume name '{}' is invalid: it {why}.", v.name),
            ));
        }
        if p.volumes[..i].iter().any(|o| o.name == v.name) {
            return Err(ArmError::bad(
                "DuplicateVolumeName",
                format!("{at}.name"),
                format!(
                    "The volume name '{}' is used twice; volume names must be unique.",
                    v.name
                ),
            ));
        }
        if v.azure_file.is_some() {
            return Err(ArmError::bad(
                "UnsupportedVolumeType",
                format!("{at}.azureFile"),
                "azureFile volumes are not supported here; use emptyDir, secret or gitRepo.",
            ));
        }
        let kinds = [
            v.empty_dir.is_some(),
            v.secret.is_some(),
            v.git_repo.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() != 1 {
            return Err(ArmError::bad(
                "InvalidVolume",
                at,
                format!(
                    "The volume '{}' must set exactly one of emptyDir, secret and gitRepo.",
                    v.name
                ),
            ));
        }
        if let Some(secret) = &v.secret {
            for (k, val) in secret {
                use base64::Engine as _;
                if base64::engine::general_purpose::STANDARD
                    .decode(val)
                    .is_err()
                {
                    return Err(ArmError::bad(
                        "InvalidSecretVolume",
                        format!("{at}.secret.{k}"),
                        format!(
                            "The secret value for '{k}' in volume '{}' must be base64.",
                            v.name
                        ),
                    ));
                }
            }
        }
        if let Some(git) = &v.git_repo {
            if git.repository.trim().is_empty() {
                return Err(ArmError::bad(
                    "InvalidGitRepoVolume",
                    format!("{at}.gitRepo.repository"),
                    "The gitRepo volume needs a repository (a path or URL to clone).",
                ));
            }
        }
    }
    let (mut cpu, mut mem) = (0.0, 0.0);
    let mut names = BTreeSet::new();
    let mut exposed: BTreeMap<i64, String> = BTreeMap::new();
    let all = p
        .containers
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("properties.containers[{i}]"), c, false))
        .chain(
            p.init_containers
                .iter()
                .enumerate()
                .map(|(i, c)| (format!("properties.initContainers[{i}]"), c, true)),
        );
    for (at, c, init) in all {
        if let Some(why) = name_problem(&c.name) {
            return Err(ArmError::bad(
                "InvalidContainerName",
                format!("{at}.name"),
                format!(
                    "The container name '{}' is invalid: it {why} (for example 'web').",
                    c.name
                ),
            ));
        }
        if !names.insert(c.name.as_str()) {
            return Err(ArmError::bad(
                "DuplicateContainerName",
                format!("{at}.name"),
                format!(
                    "The container name '{}' is used twice in the group; names must be unique.",
                    c.name
                ),
            ));
        }
        let cp = &c.properties;
        if cp.image.trim().is_empty() {
            return Err(ArmError::bad(
                "ContainerImageRequired",
                format!("{at}.properties.image"),
                format!("The container '{}' needs an image.", c.name),
            ));
        }
        let mut env = BTreeSet::new();
        for (j, e) in cp.environment_variables.iter().enumerate() {
            let ea = format!("{at}.properties.environmentVariables[{j}]");
            if e.name.is_empty() || e.name.contains('=') {
                return Err(ArmError::bad(
                    "InvalidEnvironmentVariable",
                    format!("{ea}.name"),
                    format!(
                        "The environment variable name '{}' must be non-empty and hold no '='.",
                        e.name
                    ),
                ));
            }
            if !env.insert(e.name.as_str()) {
                return Err(ArmError::bad(
                    "DuplicateEnvironmentVariable",
                    format!("{ea}.name"),
                    format!(
                        "The environment variable '{}' is set twice in container '{}'.",
                        e.name, c.name
                    ),
                ));
            }
        }
        for (j, m) in cp.volume_mounts.iter().enumerate() {
            if !volumes.contains(m.name.as_str()) {
                return Err(ArmError::bad(
                    "VolumeMountVolumeNotFound",
                    format!("{at}.properties.volumeMounts[{j}].name"),
                    format!(
                        "The volume mount '{}' names no volume of the group.",
                        m.name
                    ),
                ));
            }
            if !m.mount_path.starts_with('/') {
                return Err(ArmError::bad(
                    "InvalidVolumeMountPath",
                    format!("{at}.properties.volumeMounts[{j}].mountPath"),
                    format!("The mount path '{}' must be absolute.", m.mount_path),
                ));
            }
        }
        if init {
            continue;
        }
        let r = &cp.resources.requests;
        let ra = format!("{at}.properties.resources.requests");
        if !(r.cpu > 0.0 && r.cpu <= MAX_CPU && in_steps(r.cpu, 0.01)) {
            return Err(ArmError::bad(
                "InvalidContainerResourceRequests",
                format!("{ra}.cpu"),
                format!("The cpu request {} of container '{}' is invalid: request more than 0 and at most {MAX_CPU} vCPU, in steps of 0.01.", r.cpu, c.name),
            ));
        }
        if !(r.memory_in_gb > 0.0
            && r.memory_in_gb <= MAX_MEMORY_GB
            && in_steps(r.memory_in_gb, 0.1))
        {
            return Err(ArmError::bad(
                "InvalidContainerResourceRequests",
                format!("{ra}.memoryInGB"),
                format!("The memory request {} GB of container '{}' is invalid: request more than 0 and at most {MAX_MEMORY_GB} GB, in steps of 0.1.", r.memory_in_gb, c.name),
            ));
        }
        if let Some(l) = &cp.resources.limits {
            let la = format!("{at}.properties.resources.limits");
            if l.cpu < r.cpu && l.cpu != 0.0 {
                return Err(ArmError::bad(
                    "InvalidContainerResourceLimits",
                    format!("{la}.cpu"),
                    format!(
                        "The cpu limit of container '{}' is below its request.",
                        c.name
                    ),
                ));
            }
            if l.memory_in_gb < r.memory_in_gb && l.memory_in_gb != 0.0 {
                return Err(ArmError::bad(
                    "InvalidContainerResourceLimits",
                    format!("{la}.memoryInGB"),
                    format!(
                        "The memory limit of container '{}' is below its request.",
                        c.name
                    ),
                ));
            }
        }
        cpu += r.cpu;
        mem += r.memory_in_gb;
        for (j, port) in cp.ports.iter().enumerate() {
            let pa = format!("{at}.properties.ports[{j}].port");
            check_port(port, &pa)?;
            if let Some(other) = exposed.insert(port.port, c.name.clone()) {
                return Err(ArmError::bad(
                    "DuplicateContainerPorts",
                    pa,
                    format!("Port {} is exposed by containers '{other}' and '{}'; containers of a group share one network namespace, so each port may be used once.", port.port, c.name),
                ));
            }
        }
        for (k, probe) in [
            ("livenessProbe", &cp.liveness_probe),
            ("readinessProbe", &cp.readiness_probe),
        ] {
            let Some(probe) = probe else { continue };
            if probe.exec.is_some() == probe.http_get.is_some() {
                return Err(ArmError::bad(
                    "InvalidProbe",
                    format!("{at}.properties.{k}"),
                    format!(
                        "The {k} of container '{}' must set exactly one of exec and httpGet.",
                        c.name
                    ),
                ));
            }
        }
    }
    if cpu > MAX_CPU + 1e-9 || mem > MAX_MEMORY_GB + 1e-9 {
        return Err(ArmError::bad(
            "ResourceRequestsExceedLimit",
            "properties.containers",
            format!("The group requests {cpu} vCPU and {mem} GB; a Linux group may request at most {MAX_CPU} vCPU and {MAX_MEMORY_GB} GB."),
        ));
    }
    if let Some(ip) = &p.ip_address {
        if !matches!(ip.type_.as_str(), "Public" | "Private") {
            return Err(ArmError::bad(
                "InvalidIpAddressType",
                "properties.ipAddress.type",
                format!(
                    "The IP address type '{}' is invalid; use 'Public' or 'Private'.",
                    ip.type_
                ),
            ));
        }
        let mut seen = BTreeSet::new();
        for (j, port) in ip.ports.iter().enumerate() {
            let pa = format!("properties.ipAddress.ports[{j}].port");
            check_port(port, &pa)?;
            if !seen.insert(port.port) {
                return Err(ArmError::bad(
                    "DuplicatePorts",
                    pa,
                    format!(
                        "Port {} is listed twice in the group's IP address.",
                        port.port
                    ),
                ));
            }
            if !exposed.contains_key(&port.port) {
                return Err(ArmError::bad(
                    "InvalidIpAddressPorts",
                    pa,
                    format!("Port {} of the IP address is exposed by no container; add it to a container's ports.", port.port),
                ));
            }
        }
        if let Some(label) = &ip.dns_name_label {
            if crate::validation::dns1123_label(label).is_some() || label.len() < 3 {
                return Err(ArmError::bad(
                    "InvalidDnsNameLabel",
                    "properties.ipAddress.dnsNameLabel",
                    format!("The DNS name label '{label}' is invalid: use 3 to 63 lowercase letters, digits and '-'."),
                ));
            }
        }
    }
    Ok(())
}

fn check_port(port: &Port, at: &str) -> Result<(), ArmError> {
    if !(1..=65535).contains(&port.port) {
        return Err(ArmError::bad(
            "InvalidContainerPort",
            at,
            format!("The port {} is out of range; use 1 to 65535.", port.port),
        ));
    }
    match port.protocol.as_deref() {
        None | Some("TCP") | Some("UDP") => Ok(()),
        Some(other) => Err(ArmError::bad(
            "InvalidContainerPort",
            at.replace(".port", ".protocol"),
            format!("The protocol '{other}' is invalid; use 'TCP' or 'UDP'."),
        )),
    }
}

/// What a redeploy may not change in place: ACI asks for delete and create instead.
pub fn update_refusal(old: &ContainerGroup, new: &ContainerGroup) -> Option<ArmError> {
    let (o, n) = (&old.properties, &new.properties);
    let resources = |p: &GroupProperties| -> Vec<(String, u64, u64)> {
        p.containers
            .iter()
            .map(|c| {
                let r = &c.properties.resources.requests;
                (
                    c.name.clone(),
                    (r.cpu * 100.0).round() as u64,
                    (r.memory_in_gb * 10.0).round() as u64,
                )
            })
            .collect()
    };
    let ports = |p: &GroupProperties| {
        p.ip_address.as_ref().map(|i| {
            (
                i.type_.clone(),
                i.ports.iter().map(|p| p.port).collect::<Vec<_>>(),
            )
        })
    };
    let policy = |p: &GroupProperties| p.restart_policy.clone().unwrap_or_else(|| "Always".into());
    let changed = if o.os_type != n.os_type {
        Some("properties.osType")
    } else if policy(o) != policy(n) {
        Some("properties.restartPolicy")
    } else if resources(o) != resources(n) {
        Some("properties.containers")
    } else if ports(o) != ports(n) {
        Some("properties.ipAddress")
    } else {
        None
    };
    changed.map(|target| {
        ArmError::bad(
            "InvalidContainerGroupUpdate",
            target,
            format!(
                "The update of container group '{}' changes {target}, which cannot change in place: the OS type, restart policy, IP address and ports, and each container's cpu and memory stay as created. Delete the group and create it again.",
                new.name.as_deref().unwrap_or_default()
            ),
        )
    })
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
    json!({
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
    })
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
