//! A pod as a container group: what the virtual node PUTs for a pod bound to it. Pure: the
//! ConfigMaps and Secrets the pod refers to are read beforehand ([`wanted`]) and passed in.
//!
//! What ACI cannot do is refused with the field that asks for it ([`Refusal`]), never
//! dropped: host paths, claims and other volume kinds, host network, privileged containers,
//! host ports, `subPath`, TCP probes, and `args` without a `command` (a group runs its
//! containers' `command` only, so an image's entrypoint cannot take arguments).

use std::collections::{BTreeMap, BTreeSet};

use berth_agent::PodDns;
use berth_core::aci::{
    ContainerDef, ContainerGroup, ContainerProperties, DnsConfig, EnvVar, ExecAction,
    GroupProperties, HttpGet, IpAddress, Port, Probe, ResourceAmounts, Resources, VolumeDef,
    VolumeMount,
};
use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Tags a group carries to name its pod (adoption after a restart reads them).
pub const TAG_NODE: &str = "berth.dev/node";
pub const TAG_POD_UID: &str = "berth.dev/pod-uid";
pub const TAG_NAMESPACE: &str = "berth.dev/namespace";
pub const TAG_POD: &str = "berth.dev/pod";
/// The workload the pod belongs to, `<Kind>/<name>` (a Deployment's pods name their
/// Deployment, not their ReplicaSet), for cost by workload.
pub const TAG_WORKLOAD: &str = "berth.dev/workload";

/// The pod's workload: its controller, or the Deployment of its ReplicaSet (whose name is
/// the Deployment's and the pod's `pod-template-hash`); a pod of its own is its own.
pub fn workload(pod: &Pod) -> String {
    let meta = &pod.metadata;
    let owner = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    let Some(o) = owner else {
        return format!("Pod/{}", meta.name.as_deref().unwrap_or_default());
    };
    let hash = meta
        .labels
        .as_ref()
        .and_then(|l| l.get("pod-template-hash"));
    match (o.kind.as_str(), hash) {
        ("ReplicaSet", Some(h)) => match o.name.strip_suffix(&format!("-{h}")) {
            Some(deployment) => format!("Deployment/{deployment}"),
            None => format!("ReplicaSet/{}", o.name),
        },
        (kind, _) => format!("{kind}/{}", o.name),
    }
}

/// What a container asks for when it asks for nothing (Virtual Kubelet's ACI defaults).
const DEFAULT_CPU: f64 = 1.0;
const DEFAULT_MEMORY_GB: f64 = 1.5;

/// A pod the virtual node will not run: the field, and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Refusal {
    pub field: String,
    pub message: String,
}

fn refuse(field: impl Into<String>, message: impl Into<String>) -> Refusal {
    Refusal {
        field: field.into(),
        message: message.into(),
    }
}

/// The ConfigMaps and Secrets (by name, in the pod's namespace) the pod refers to: key ->
/// bytes. One that is missing is absent.
#[derive(Debug, Clone, Default)]
pub struct Refs {
    pub config_maps: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    pub secrets: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    /// The ServiceAccount token of each `serviceAccountToken` projection, by (volume,
    /// source index): see [`tokens_wanted`].
    pub tokens: BTreeMap<(String, usize), String>,
    /// The Service variables every container gets under its own (`KUBERNETES_SERVICE_HOST`
    /// and the rest, as on any node).
    pub service_env: Vec<(String, String)>,
}

/// A `serviceAccountToken` projection of the pod: (volume, source index, audience, seconds).
pub type TokenWanted = (String, usize, Option<String>, i64);

/// The ServiceAccount tokens the pod's projected volumes ask for.
pub fn tokens_wanted(pod: &Pod) -> Vec<TokenWanted> {
    let volumes = pod.spec.iter().flat_map(|s| s.volumes.iter().flatten());
    let mut out = Vec::new();
    for v in volumes {
        let sources = v.projected.iter().flat_map(|p| p.sources.iter().flatten());
        for (k, src) in sources.enumerate() {
            if let Some(t) = &src.service_account_token {
                let seconds = t.expiration_seconds.unwrap_or(3600);
                out.push((v.name.clone(), k, t.audience.clone(), seconds));
            }
        }
    }
    out
}

/// The names of the ConfigMaps and Secrets the pod refers to: (config maps, secrets).
pub fn wanted(pod: &Pod) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut cms, mut secrets) = (BTreeSet::new(), BTreeSet::new());
    let Some(spec) = &pod.spec else {
        return (cms, secrets);
    };
    for c in all_containers(pod) {
        for e in c.env.iter().flatten() {
            if let Some(from) = &e.value_from {
                if let Some(r) = &from.config_map_key_ref {
                    cms.insert(r.name.clone());
                }
                if let Some(r) = &from.secret_key_ref {
                    secrets.insert(r.name.clone());
                }
            }
        }
        for f in c.env_from.iter().flatten() {
            if let Some(r) = &f.config_map_ref {
                cms.insert(r.name.clone());
            }
            if let Some(r) = &f.secret_ref {
                secrets.insert(r.name.clone());
            }
        }
    }
    for v in spec.volumes.iter().flatten() {
        if let Some(c) = &v.config_map {
            cms.insert(c.name.clone());
        }
        if let Some(s) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            secrets.insert(s);
        }
        for src in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(c) = &src.config_map {
                cms.insert(c.name.clone());
            }
            if let Some(s) = &src.secret {
                secrets.insert(s.name.clone());
            }
        }
    }
    (cms, secrets)
}

fn all_containers(pod: &Pod) -> impl Iterator<Item = &Container> {
    let spec = pod.spec.as_ref();
    spec.into_iter().flat_map(|s| {
        s.init_containers
            .iter()
            .flatten()
            .chain(s.containers.iter())
    })
}

/// The group's name for a pod: `<namespace>-<name>` made an ACI name (lowercase letters,
/// digits and '-', at most 63), ending in the first 8 characters of its uid, so a restarted
/// virtual node finds the group it made.
pub fn group_name(pod: &Pod) -> String {
    let meta = &pod.metadata;
    let base: String = format!(
        "{}-{}",
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or_default()
    )
    .chars()
    .map(|c| {
        if c.is_ascii_alphanumeric() {
            c.to_ascii_lowercase()
        } else {
            '-'
        }
    })
    .take(54)
    .collect();
    let uid: String = meta
        .uid
        .as_deref()
        .unwrap_or_default()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect::<String>()
        .to_ascii_lowercase();
    format!("{}-{uid}", base.trim_matches('-'))
}

/// Round `value` up to a multiple of `step` (ACI takes memory in 0.1 GB and CPU in 0.01).
fn round_up(value: f64, step: f64) -> f64 {
    let n = (value / step - 1e-9).ceil().max(1.0);
    (n * step * 1000.0).round() / 1000.0
}

fn amounts(
    list: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
) -> (Option<f64>, Option<f64>) {
    let Some(list) = list else {
        return (None, None);
    };
    let cpu = list
        .get("cpu")
        .and_then(|q| berth_core::quantity::cpu_millis(&q.0))
        .map(|m| round_up(m as f64 / 1000.0, 0.01));
    let mem = list
        .get("memory")
        .and_then(|q| berth_core::quantity::bytes(&q.0))
        .map(|b| round_up(b as f64 / 1e9, 0.1));
    (cpu, mem)
}

fn port_number(c: &Container, port: &IntOrString, field: &str) -> Result<i64, Refusal> {
    match port {
        IntOrString::Int(p) => Ok(i64::from(*p)),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| i64::from(p.container_port))
            .ok_or_else(|| {
                refuse(
                    field,
                    format!("no port of container '{}' is named '{name}'", c.name),
                )
            }),
    }
}

fn probe(c: &Container, p: &k8s_openapi::api::core::v1::Probe, at: &str) -> Result<Probe, Refusal> {
    if p.tcp_socket.is_some() {
        return Err(refuse(
            format!("{at}.tcpSocket"),
            "container groups probe by exec or httpGet only; use one of those",
        ));
    }
    if p.grpc.is_some() {
        return Err(refuse(
            format!("{at}.grpc"),
            "container groups probe by exec or httpGet only; use one of those",
        ));
    }
    let http_get = match &p.http_get {
        Some(h) => Some(HttpGet {
            path: h.path.clone(),
            port: port_number(c, &h.port, &format!("{at}.httpGet.port"))?,
            scheme: h.scheme.clone().map(|s| s.to_lowercase()),
        }),
        None => None,
    };
    Ok(Probe {
        exec: p.exec.as_ref().map(|e| ExecAction {
            command: e.command.clone().unwrap_or_default(),
        }),
        http_get,
        initial_delay_seconds: p.initial_delay_seconds,
        period_seconds: p.period_seconds,
        failure_threshold: p.failure_threshold,
        success_threshold: p.success_threshold,
        timeout_seconds: p.timeout_seconds,
    })
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A container's environment, with references resolved.
fn environment(pod: &Pod, c: &Container, refs: &Refs, at: &str) -> Result<Vec<EnvVar>, Refusal> {
    let mut out: Vec<EnvVar> = Vec::new();
    let mut put = |name: String, value: String, secure: bool| {
        out.retain(|e| e.name != name);
        out.push(if secure {
            EnvVar {
                name,
                value: None,
                secure_value: Some(value),
            }
        } else {
            EnvVar {
                name,
                value: Some(value),
                secure_value: None,
            }
        });
    };
    for (k, v) in &refs.service_env {
        put(k.clone(), v.clone(), false);
    }
    for (i, f) in c.env_from.iter().flatten().enumerate() {
        let prefix = f.prefix.clone().unwrap_or_default();
        let (data, secure, name, optional, kind) = match (&f.config_map_ref, &f.secret_ref) {
            (Some(r), _) => (
                refs.config_maps.get(&r.name),
                false,
                &r.name,
                r.optional,
                "ConfigMap",
            ),
            (_, Some(r)) => (
                refs.secrets.get(&r.name),
                true,
                &r.name,
                r.optional,
                "Secret",
            ),
            _ => continue,
        };
        match data {
            Some(d) => {
                for (k, v) in d {
                    put(format!("{prefix}{k}"), text(v), secure);
                }
            }
            None if optional == Some(true) => {}
            None => {
                return Err(refuse(
                    format!("{at}.envFrom[{i}]"),
                    format!("{kind} {name:?} does not exist"),
                ))
            }
        }
    }
    for (i, e) in c.env.iter().flatten().enumerate() {
        let field = format!("{at}.env[{i}].valueFrom");
        let Some(from) = &e.value_from else {
            put(e.name.clone(), e.value.clone().unwrap_or_default(), false);
            continue;
        };
        let key_ref = match (&from.config_map_key_ref, &from.secret_key_ref) {
            (Some(r), _) => Some((
                &refs.config_maps,
                false,
                r.name.as_str(),
                r.key.as_str(),
                r.optional,
                "ConfigMap",
                "configMapKeyRef",
            )),
            (_, Some(r)) => Some((
                &refs.secrets,
                true,
                r.name.as_str(),
                r.key.as_str(),
                r.optional,
                "Secret",
                "secretKeyRef",
            )),
            _ => None,
        };
        let (value, secure) = if let Some((maps, secure, name, key, optional, kind, at_ref)) =
            key_ref
        {
            match maps.get(name).and_then(|d| d.get(key)) {
                Some(v) => (text(v), secure),
                None if optional == Some(true) => continue,
                None => {
                    return Err(refuse(
                        format!("{field}.{at_ref}"),
                        format!("{kind} {name:?} has no key {key:?}"),
                    ))
                }
            }
        } else if let Some(r) = &from.field_ref {
            // The agent's resolver, less what is only known once the group runs.
            let path = r.field_path.as_str();
            let known = if path.starts_with("status.") {
                None
            } else {
                berth_agent::config::field(pod, path, None)
            };
            match known {
                Some(v) => (v.unwrap_or_default(), false),
                None => {
                    return Err(refuse(
                        format!("{field}.fieldRef.fieldPath"),
                        format!("{path:?} is not known before the group starts; container groups take metadata.name, metadata.namespace, metadata.uid, labels, annotations, spec.nodeName and spec.serviceAccountName"),
                    ))
                }
            }
        } else {
            return Err(refuse(
                field,
                "container groups resolve configMapKeyRef, secretKeyRef and fieldRef only",
            ));
        };
        put(e.name.clone(), value, secure);
    }
    Ok(out)
}

fn container(
    pod: &Pod,
    c: &Container,
    refs: &Refs,
    at: &str,
    init: bool,
) -> Result<ContainerDef, Refusal> {
    if c.security_context.as_ref().and_then(|s| s.privileged) == Some(true) {
        return Err(refuse(
            format!("{at}.securityContext.privileged"),
            "container groups cannot run privileged containers",
        ));
    }
    if c.args.is_some() && c.command.is_none() {
        return Err(refuse(
            format!("{at}.args"),
            "a container group runs its containers' command only, so an image's entrypoint cannot take arguments: give the command with them",
        ));
    }
    let mut command = c.command.clone().unwrap_or_default();
    command.extend(c.args.clone().unwrap_or_default());
    let mut ports = Vec::new();
    for (j, p) in c.ports.iter().flatten().enumerate() {
        if p.host_port.is_some_and(|h| h != 0) {
            return Err(refuse(
                format!("{at}.ports[{j}].hostPort"),
                "a virtual node has no host ports; reach the pod at its own address",
            ));
        }
        ports.push(Port {
            protocol: Some(
                p.protocol
                    .clone()
                    .unwrap_or_else(|| "TCP".into())
                    .to_uppercase(),
            ),
            port: i64::from(p.container_port),
        });
    }
    let mut mounts = Vec::new();
    for (j, m) in c.volume_mounts.iter().flatten().enumerate() {
        if m.sub_path.as_deref().is_some_and(|s| !s.is_empty())
            || m.sub_path_expr.as_deref().is_some_and(|s| !s.is_empty())
        {
            return Err(refuse(
                format!("{at}.volumeMounts[{j}].subPath"),
                "container groups mount whole volumes only",
            ));
        }
        mounts.push(VolumeMount {
            name: m.name.clone(),
            mount_path: m.mount_path.clone(),
            read_only: m.read_only,
        });
    }
    let res = c.resources.as_ref();
    let (req_cpu, req_mem) = amounts(res.and_then(|r| r.requests.as_ref()));
    let (lim_cpu, lim_mem) = amounts(res.and_then(|r| r.limits.as_ref()));
    // Kubernetes takes a missing request from the limit.
    let requests = ResourceAmounts {
        cpu: req_cpu.or(lim_cpu).unwrap_or(DEFAULT_CPU),
        memory_in_gb: req_mem.or(lim_mem).unwrap_or(DEFAULT_MEMORY_GB),
    };
    let limits = (lim_cpu.is_some() || lim_mem.is_some()).then(|| ResourceAmounts {
        cpu: lim_cpu.unwrap_or(0.0),
        memory_in_gb: lim_mem.unwrap_or(0.0),
    });
    let liveness = match &c.liveness_probe {
        Some(p) => Some(probe(c, p, &format!("{at}.livenessProbe"))?),
        None => None,
    };
    let readiness = match &c.readiness_probe {
        Some(p) => Some(probe(c, p, &format!("{at}.readinessProbe"))?),
        None => None,
    };
    if c.startup_probe.is_some() {
        return Err(refuse(
            format!("{at}.startupProbe"),
            "container groups have liveness and readiness probes only",
        ));
    }
    Ok(ContainerDef {
        name: c.name.clone(),
        properties: ContainerProperties {
            image: c.image.clone().unwrap_or_default(),
            command,
            ports: if init { vec![] } else { ports },
            environment_variables: environment(pod, c, refs, at)?,
            resources: Resources { requests, limits },
            volume_mounts: mounts,
            liveness_probe: liveness,
            readiness_probe: readiness,
            instance_view: None,
        },
    })
}

/// The ACI secret volume of some data: file name -> base64; `items` pick and rename keys.
fn secret_volume(
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<k8s_openapi::api::core::v1::KeyToPath>>,
    at: &str,
) -> Result<BTreeMap<String, String>, Refusal> {
    let Some(items) = items else {
        return Ok(data.iter().map(|(k, v)| (k.clone(), encode(v))).collect());
    };
    let mut out = BTreeMap::new();
    for (k, item) in items.iter().enumerate() {
        flat(&item.path, format!("{at}.items[{k}].path"))?;
        if let Some(v) = data.get(&item.key) {
            out.insert(item.path.clone(), encode(v));
        }
    }
    Ok(out)
}

fn encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A file of a secret volume must sit at its top.
fn flat(path: &str, at: String) -> Result<(), Refusal> {
    if path.contains('/') {
        return Err(refuse(
            at,
            "a container group's secret volume holds files at its top only",
        ));
    }
    Ok(())
}

/// The files of downwardAPI items: the pod's fields that are known before the group starts.
fn downward_files<'a>(
    pod: &Pod,
    items: impl Iterator<Item = &'a k8s_openapi::api::core::v1::DownwardAPIVolumeFile>,
    at: &str,
) -> Result<BTreeMap<String, String>, Refusal> {
    let mut out = BTreeMap::new();
    for (k, item) in items.enumerate() {
        let item_at = format!("{at}.items[{k}]");
        flat(&item.path, format!("{item_at}.path"))?;
        let Some(f) = &item.field_ref else {
            return Err(refuse(
                format!("{item_at}.resourceFieldRef"),
                "container groups project the pod's fields only, not its resources",
            ));
        };
        let path = f.field_path.as_str();
        let known = if path.starts_with("status.") {
            None
        } else {
            berth_agent::config::field(pod, path, None)
        };
        let Some(value) = known else {
            return Err(refuse(
                format!("{item_at}.fieldRef.fieldPath"),
                format!("{path:?} is not known before the group starts"),
            ));
        };
        out.insert(
            item.path.clone(),
            encode(value.unwrap_or_default().as_bytes()),
        );
    }
    Ok(out)
}

/// A projected volume as one secret volume: its token, ConfigMap, Secret and downwardAPI
/// sources' files together.
fn projected_files(
    pod: &Pod,
    v: &k8s_openapi::api::core::v1::Volume,
    p: &k8s_openapi::api::core::v1::ProjectedVolumeSource,
    refs: &Refs,
    at: &str,
) -> Result<BTreeMap<String, String>, Refusal> {
    let mut files = BTreeMap::new();
    for (k, src) in p.sources.iter().flatten().enumerate() {
        let src_at = format!("{at}.projected.sources[{k}]");
        if let Some(t) = &src.service_account_token {
            flat(&t.path, format!("{src_at}.serviceAccountToken.path"))?;
            let Some(token) = refs.tokens.get(&(v.name.clone(), k)) else {
                return Err(refuse(
                    format!("{src_at}.serviceAccountToken"),
                    "no token was had for the pod's ServiceAccount",
                ));
            };
            files.insert(t.path.clone(), encode(token.as_bytes()));
        } else if let Some(c) = &src.config_map {
            let data = match refs.config_maps.get(&c.name) {
                Some(d) => d.clone(),
                None if c.optional == Some(true) => BTreeMap::new(),
                None => {
                    return Err(refuse(
                        format!("{src_at}.configMap.name"),
                        format!("ConfigMap {:?} does not exist", c.name),
                    ))
                }
            };
            files.extend(secret_volume(
                &data,
                c.items.as_ref(),
                &format!("{src_at}.configMap"),
            )?);
        } else if let Some(s) = &src.secret {
            let data = match refs.secrets.get(&s.name) {
                Some(d) => d.clone(),
                None if s.optional == Some(true) => BTreeMap::new(),
                None => {
                    return Err(refuse(
                        format!("{src_at}.secret.name"),
                        format!("Secret {:?} does not exist", s.name),
                    ))
                }
            };
            files.extend(secret_volume(
                &data,
                s.items.as_ref(),
                &format!("{src_at}.secret"),
            )?);
        } else if let Some(d) = &src.downward_api {
            files.extend(downward_files(
                pod,
                d.items.iter().flatten(),
                &format!("{src_at}.downwardAPI"),
            )?);
        } else {
            return Err(refuse(
                src_at,
                "container groups project serviceAccountToken, configMap, secret and downwardAPI sources only",
            ));
        }
    }
    Ok(files)
}

/// The group for `pod` on virtual node `node` in `location`; with `dns` (groups on the
/// cluster's pod network) its resolver is the cluster DNS, as a pod's on any node.
pub fn group_for(
    pod: &Pod,
    refs: &Refs,
    node: &str,
    location: &str,
    dns: Option<&PodDns>,
) -> Result<ContainerGroup, Refusal> {
    let Some(spec) = &pod.spec else {
        return Err(refuse("spec", "the pod has no spec"));
    };
    if spec.host_network == Some(true) {
        return Err(refuse(
            "spec.hostNetwork",
            "a container group has no host to share a network with",
        ));
    }
    for (field, set) in [
        ("spec.hostPID", spec.host_pid),
        ("spec.hostIPC", spec.host_ipc),
    ] {
        if set == Some(true) {
            return Err(refuse(field, "a container group has no host to share with"));
        }
    }
    let mut volumes = Vec::new();
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        let at = format!("spec.volumes[{i}]");
        let mut def = VolumeDef {
            name: v.name.clone(),
            ..Default::default()
        };
        if v.empty_dir.is_some() {
            def.empty_dir = Some(serde_json::json!({}));
        } else if let Some(c) = &v.config_map {
            let data = match refs.config_maps.get(&c.name) {
                Some(d) => d.clone(),
                None if c.optional == Some(true) => BTreeMap::new(),
                None => {
                    return Err(refuse(
                        format!("{at}.configMap.name"),
                        format!("ConfigMap {:?} does not exist", c.name),
                    ))
                }
            };
            def.secret = Some(secret_volume(
                &data,
                c.items.as_ref(),
                &format!("{at}.configMap"),
            )?);
        } else if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            let data = match refs.secrets.get(&name) {
                Some(d) => d.clone(),
                None if s.optional == Some(true) => BTreeMap::new(),
                None => {
                    return Err(refuse(
                        format!("{at}.secret.secretName"),
                        format!("Secret {name:?} does not exist"),
                    ))
                }
            };
            def.secret = Some(secret_volume(
                &data,
                s.items.as_ref(),
                &format!("{at}.secret"),
            )?);
        } else if let Some(d) = &v.downward_api {
            def.secret = Some(downward_files(
                pod,
                d.items.iter().flatten(),
                &format!("{at}.downwardAPI"),
            )?);
        } else if let Some(p) = &v.projected {
            def.secret = Some(projected_files(pod, v, p, refs, &at)?);
        } else {
            let kind = serde_json::to_value(v)
                .ok()
                .and_then(|j| {
                    j.as_object()
                        .and_then(|o| o.keys().find(|k| *k != "name").cloned())
                })
                .unwrap_or_else(|| "volume source".into());
            return Err(refuse(
                format!("{at}.{kind}"),
                format!("container groups take emptyDir, configMap, secret, downwardAPI and projected volumes, not {kind}"),
            ));
        }
        volumes.push(def);
    }
    let mut containers = Vec::new();
    for (i, c) in spec.containers.iter().enumerate() {
        containers.push(container(
            pod,
            c,
            refs,
            &format!("spec.containers[{i}]"),
            false,
        )?);
    }
    let mut init_containers = Vec::new();
    for (i, c) in spec.init_containers.iter().flatten().enumerate() {
        init_containers.push(container(
            pod,
            c,
            refs,
            &format!("spec.initContainers[{i}]"),
            true,
        )?);
    }
    let meta = &pod.metadata;
    let tags = BTreeMap::from([
        (TAG_NODE.to_string(), node.to_string()),
        (
            TAG_POD_UID.to_string(),
            meta.uid.clone().unwrap_or_default(),
        ),
        (
            TAG_NAMESPACE.to_string(),
            meta.namespace.clone().unwrap_or_default(),
        ),
        (TAG_POD.to_string(), meta.name.clone().unwrap_or_default()),
        (TAG_WORKLOAD.to_string(), workload(pod)),
    ]);
    Ok(ContainerGroup {
        location: location.to_string(),
        tags,
        properties: GroupProperties {
            containers,
            init_containers,
            restart_policy: spec.restart_policy.clone(),
            // A private address: the pod's IP, reported back as podIP.
            ip_address: Some(IpAddress {
                type_: "Private".into(),
                ..Default::default()
            }),
            os_type: "Linux".into(),
            volumes,
            dns_config: berth_agent::pods::files::resolver(pod, dns, &[]).map(|r| DnsConfig {
                name_servers: r.servers,
                search_domains: (!r.search.is_empty()).then(|| r.search.join(" ")),
                options: (!r.options.is_empty()).then(|| r.options.join(" ")),
            }),
            ..Default::default()
        },
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web.v1", "namespace": "shop", "uid": "0A1b2c3d-4e5f-6789",
                         "labels": {"app": "web"}},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn a_pod_becomes_a_group_with_resolved_env_rounded_resources_and_volumes() {
        let p = pod(json!({
            "restartPolicy": "OnFailure",
            "volumes": [
                {"name": "scratch", "emptyDir": {}},
                {"name": "conf", "configMap": {"name": "settings", "items": [{"key": "a", "path": "a.txt"}]}},
                {"name": "creds", "secret": {"secretName": "token"}},
                {"name": "kube-api-access-x", "projected": {"sources": [
                    {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
                ]}},
            ],
            "initContainers": [{"name": "setup", "image": "busybox", "command": ["true"]}],
            "containers": [{
                "name": "c", "image": "nginx", "command": ["nginx"], "args": ["-g", "daemon off;"],
                "ports": [{"containerPort": 80, "name": "http"}],
                "env": [
                    {"name": "PLAIN", "value": "1"},
                    {"name": "FROM_CM", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "a"}}},
                    {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "token", "key": "pw"}}},
                    {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                ],
                "resources": {"requests": {"cpu": "250m", "memory": "100Mi"}, "limits": {"memory": "1Gi"}},
                "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 2},
                "volumeMounts": [{"name": "conf", "mountPath": "/etc/app", "readOnly": true}],
            }],
        }));
        let refs = Refs {
            config_maps: BTreeMap::from([
                (
                    "settings".to_string(),
                    BTreeMap::from([("a".to_string(), b"alpha".to_vec())]),
                ),
                (
                    "kube-root-ca.crt".to_string(),
                    BTreeMap::from([("ca.crt".to_string(), b"PEM".to_vec())]),
                ),
            ]),
            secrets: BTreeMap::from([(
                "token".to_string(),
                BTreeMap::from([("pw".to_string(), b"hunter2".to_vec())]),
            )]),
            tokens: BTreeMap::from([(("kube-api-access-x".to_string(), 0), "jwt".to_string())]),
            service_env: vec![
                ("KUBERNETES_SERVICE_HOST".into(), "10.96.0.1".into()),
                ("PLAIN".into(), "overridden".into()),
            ],
        };
        assert_eq!(
            tokens_wanted(&p),
            [("kube-api-access-x".to_string(), 0, None, 3607)]
        );
        assert_eq!(
            wanted(&p),
            (
                BTreeSet::from(["kube-root-ca.crt".to_string(), "settings".to_string()]),
                BTreeSet::from(["token".to_string()])
            )
        );
        let g = group_for(&p, &refs, "vk", "eastus", None).unwrap();
        let c = &g.properties.containers[0].properties;
        assert_eq!(c.command, ["nginx", "-g", "daemon off;"]);
        assert_eq!(c.ports[0].port, 80);
        assert_eq!(c.resources.requests.cpu, 0.25);
        // 100 MiB = 0.105 GB, rounded up to ACI's 0.1 GB steps; 1 GiB = 1.074 GB.
        assert_eq!(c.resources.requests.memory_in_gb, 0.2);
        assert_eq!(c.resources.limits.as_ref().unwrap().memory_in_gb, 1.1);
        let env: Vec<(String, Option<String>, Option<String>)> = c
            .environment_variables
            .iter()
            .map(|e| (e.name.clone(), e.value.clone(), e.secure_value.clone()))
            .collect();
        assert!(env.contains(&("FROM_CM".into(), Some("alpha".into()), None)));
        assert!(env.contains(&("PASSWORD".into(), None, Some("hunter2".into()))));
        assert!(env.contains(&("POD".into(), Some("web.v1".into()), None)));
        assert!(env.contains(&("APP".into(), Some("web".into()), None)));
        assert!(env.contains(&(
            "KUBERNETES_SERVICE_HOST".into(),
            Some("10.96.0.1".into()),
            None
        )));
        // The container's own variable wins over a Service's.
        assert!(env.contains(&("PLAIN".into(), Some("1".into()), None)));
        assert!(!env.contains(&("PLAIN".into(), Some("overridden".into()), None)));
        assert_eq!(
            c.readiness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .port,
            80
        );
        let vols = &g.properties.volumes;
        assert!(vols[0].empty_dir.is_some());
        assert_eq!(vols[1].secret.as_ref().unwrap()["a.txt"], "YWxwaGE=");
        assert_eq!(vols[2].secret.as_ref().unwrap()["pw"], "aHVudGVyMg==");
        // The projection: token, CA and namespace in one secret volume.
        let projected = vols[3].secret.as_ref().unwrap();
        assert_eq!(projected["token"], "and0");
        assert_eq!(projected["ca.crt"], "UEVN");
        assert_eq!(projected["namespace"], "c2hvcA==");
        assert_eq!(g.properties.init_containers[0].name, "setup");
        assert_eq!(g.properties.restart_policy.as_deref(), Some("OnFailure"));
        assert_eq!(g.tags[TAG_POD_UID], "0A1b2c3d-4e5f-6789");
        // Defaults where nothing is asked.
        let init = &g.properties.init_containers[0]
            .properties
            .resources
            .requests;
        assert_eq!((init.cpu, init.memory_in_gb), (1.0, 1.5));
        assert_eq!(group_name(&p), "shop-web-v1-0a1b2c3d");
        assert_eq!(g.tags[TAG_WORKLOAD], "Pod/web.v1");
        let of_deployment: Pod = serde_json::from_value(json!({"metadata": {
            "name": "web-7d9f-x2", "labels": {"pod-template-hash": "7d9f"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f",
                                 "uid": "u", "controller": true}]}}))
        .unwrap();
        assert_eq!(workload(&of_deployment), "Deployment/web");
        // ACI's own validation takes it.
        berth_core::aci::validate(&g).unwrap();
    }

    #[test]
    fn what_a_group_cannot_do_is_refused_with_its_field() {
        let cases = [
            (
                json!({"volumes": [{"name": "h", "hostPath": {"path": "/etc"}}],
                       "containers": [{"name": "c", "image": "x", "command": ["x"]}]}),
                "spec.volumes[0].hostPath",
            ),
            (
                json!({"volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}],
                       "containers": [{"name": "c", "image": "x", "command": ["x"]}]}),
                "spec.volumes[0].persistentVolumeClaim",
            ),
            (
                json!({"hostNetwork": true, "containers": [{"name": "c", "image": "x"}]}),
                "spec.hostNetwork",
            ),
            (
                json!({"containers": [{"name": "c", "image": "x", "securityContext": {"privileged": true}}]}),
                "spec.containers[0].securityContext.privileged",
            ),
            (
                json!({"containers": [{"name": "c", "image": "x", "args": ["-v"]}]}),
                "spec.containers[0].args",
            ),
            (
                json!({"containers": [{"name": "c", "image": "x",
                       "livenessProbe": {"tcpSocket": {"port": 80}}}]}),
                "spec.containers[0].livenessProbe.tcpSocket",
            ),
            (
                json!({"containers": [{"name": "c", "image": "x",
                       "env": [{"name": "S", "valueFrom": {"secretKeyRef": {"name": "none", "key": "k"}}}]}]}),
                "spec.containers[0].env[0].valueFrom.secretKeyRef",
            ),
            (
                json!({"containers": [{"name": "c", "image": "x",
                       "env": [{"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]}]}),
                "spec.containers[0].env[0].valueFrom.fieldRef.fieldPath",
            ),
        ];
        for (spec, field) in cases {
            let err = group_for(&pod(spec), &Refs::default(), "vk", "eastus", None).unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
    }
}
