//! ACI's validation of a group, and what it refuses to change in place.

use std::collections::{BTreeMap, BTreeSet};

use super::*;

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
    if let Some(d) = &p.dns_config {
        if d.name_servers.is_empty() {
            return Err(ArmError::bad(
                "InvalidDnsConfig",
                "properties.dnsConfig.nameServers",
                "A DNS configuration needs at least one name server.".to_string(),
            ));
        }
        for (j, s) in d.name_servers.iter().enumerate() {
            if s.parse::<std::net::IpAddr>().is_err() {
                return Err(ArmError::bad(
                    "InvalidDnsConfig",
                    format!("properties.dnsConfig.nameServers[{j}]"),
                    format!("The name server '{s}' is not an IP address."),
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
