//! What a container needs from outside its spec before it can start: environment values
//! from ConfigMaps, Secrets and the pod's own fields, and volumes on the host (emptyDir,
//! configMap, secret, hostPath) mounted where the spec says.
//!
//! Volumes live in `<data dir>/pods/<pod uid>/volumes/<name>`; configMap and secret volumes
//! are written afresh before each container start. A missing ConfigMap, Secret, key or
//! volume that is not optional is `CreateContainerConfigError`, as in Kubernetes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod, Volume};

use crate::owner::{OwnerError, PodOwner, SourceKind};

use crate::runtime::Mount;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{kind} \"{name}\" not found")]
    Missing { kind: &'static str, name: String },
    #[error("couldn't find key {key} in {kind} {namespace}/{name}")]
    MissingKey {
        kind: &'static str,
        namespace: String,
        name: String,
        key: String,
    },
    #[error("volume mount {mount:?} names no volume of the pod")]
    NoVolume { mount: String },
    #[error("reading {kind} {name} failed")]
    Api {
        kind: &'static str,
        name: String,
        #[source]
        source: OwnerError,
    },
    #[error("preparing volume {volume} at {path} failed")]
    Io {
        volume: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} is not supported by Berth yet")]
    Unsupported { what: String },
    #[error("volume {volume}: {why}")]
    Claim { volume: String, why: String },
}

/// The data of a ConfigMap or Secret, as bytes keyed by name; `None` if it does not exist.
async fn source(
    owner: &dyn PodOwner,
    ns: &str,
    kind: &'static str,
    name: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, ConfigError> {
    let which = if kind == "configmap" {
        SourceKind::ConfigMap
    } else {
        SourceKind::Secret
    };
    owner
        .source(ns, which, name)
        .await
        .map_err(|source| ConfigError::Api {
            kind,
            name: name.to_string(),
            source,
        })
}

/// A pod field for `valueFrom.fieldRef`.
/// The value of a `fieldRef` path (`Some(None)`: served, unset); `None` for a path that is
/// not served.
pub fn field(pod: &Pod, path: &str, pod_ip: Option<&str>) -> Option<Option<String>> {
    let m = &pod.metadata;
    let label = |map: &Option<BTreeMap<String, String>>, key: &str| {
        map.as_ref().and_then(|l| l.get(key)).cloned()
    };
    Some(match path {
        "metadata.name" => m.name.clone(),
        "metadata.namespace" => m.namespace.clone(),
        "metadata.uid" => m.uid.clone(),
        "spec.nodeName" => pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        "spec.serviceAccountName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone()),
        "status.podIP" => pod_ip.map(String::from),
        "status.hostIP" => pod.status.as_ref().and_then(|s| s.host_ip.clone()),
        p => {
            if let Some(k) = p
                .strip_prefix("metadata.labels['")
                .and_then(|k| k.strip_suffix("']"))
            {
                label(&m.labels, k)
            } else if let Some(k) = p
                .strip_prefix("metadata.annotations['")
                .and_then(|k| k.strip_suffix("']"))
            {
                label(&m.annotations, k)
            } else {
                return None;
            }
        }
    })
}

/// The container's environment, in order: `envFrom` sources first, then `env`.
pub async fn environment(
    owner: &dyn PodOwner,
    pod: &Pod,
    c: &Container,
    pod_ip: Option<&str>,
) -> Result<Vec<(String, String)>, ConfigError> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let mut env: Vec<(String, String)> = Vec::new();
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (kind, name, optional) = match (&from.config_map_ref, &from.secret_ref) {
            (Some(r), _) => ("configmap", r.name.clone(), r.optional.unwrap_or(false)),
            (None, Some(r)) => ("secret", r.name.clone(), r.optional.unwrap_or(false)),
            (None, None) => continue,
        };
        match source(owner, &ns, kind, &name).await? {
            Some(data) => {
                for (k, v) in data {
                    env.push((format!("{prefix}{k}"), String::from_utf8_lossy(&v).into()));
                }
            }
            None if optional => {}
            None => return Err(ConfigError::Missing { kind, name }),
        }
    }
    for e in c.env.iter().flatten() {
        let value = match &e.value_from {
            None => e.value.clone().unwrap_or_default(),
            Some(from) => {
                let key_ref = match (&from.config_map_key_ref, &from.secret_key_ref) {
                    (Some(r), _) => Some((
                        "configmap",
                        r.name.clone(),
                        r.key.clone(),
                        r.optional.unwrap_or(false),
                    )),
                    (None, Some(r)) => Some((
                        "secret",
                        r.name.clone(),
                        r.key.clone(),
                        r.optional.unwrap_or(false),
                    )),
                    _ => None,
                };
                if let Some((kind, name, key, optional)) = key_ref {
                    match source(owner, &ns, kind, &name).await? {
                        Some(data) => match data.get(&key) {
                            Some(v) => String::from_utf8_lossy(v).into_owned(),
                            None if optional => continue,
                            None => {
                                return Err(ConfigError::MissingKey {
                                    kind,
                                    namespace: ns,
                                    name,
                                    key,
                                })
                            }
                        },
                        None if optional => continue,
                        None => return Err(ConfigError::Missing { kind, name }),
                    }
                } else if let Some(f) = &from.field_ref {
                    field(pod, &f.field_path, pod_ip)
                        .flatten()
                        .unwrap_or_default()
                } else {
                    return Err(ConfigError::Unsupported {
                        what: format!("env {}: resourceFieldRef", e.name),
                    });
                }
            }
        };
        env.retain(|(k, _)| k != &e.name);
        env.push((e.name.clone(), value));
    }
    Ok(env)
}

/// Where a pod's volumes live on this host.
pub fn pod_dir(data_dir: &Path, uid: &str) -> PathBuf {
    data_dir.join("pods").join(uid)
}

fn io(volume: &str, path: &Path) -> impl FnOnce(std::io::Error) -> ConfigError {
    let (volume, path) = (volume.to_string(), path.to_path_buf());
    move |source| ConfigError::Io {
        volume,
        path,
        source,
    }
}

/// Make one volume ready on the host; returns its host path.
async fn prepare(
    owner: &dyn PodOwner,
    ns: &str,
    dir: &Path,
    v: &Volume,
) -> Result<PathBuf, ConfigError> {
    if let Some(pvc) = &v.persistent_volume_claim {
        let path = owner
            .claim_path(ns, &pvc.claim_name)
            .await
            .map_err(|source| ConfigError::Api {
                kind: "persistentvolumeclaim",
                name: pvc.claim_name.clone(),
                source,
            })?
            .map_err(|why| ConfigError::Claim {
                volume: v.name.clone(),
                why,
            })?;
        // A provisioned local volume is made on first use.
        std::fs::create_dir_all(&path).map_err(io(&v.name, &path))?;
        return Ok(path);
    }
    if let Some(hp) = &v.host_path {
        let path = PathBuf::from(&hp.path);
        if matches!(hp.type_.as_deref(), Some("DirectoryOrCreate")) {
            std::fs::create_dir_all(&path).map_err(io(&v.name, &path))?;
        }
        return Ok(path);
    }
    let path = dir.join("volumes").join(&v.name);
    std::fs::create_dir_all(&path).map_err(io(&v.name, &path))?;
    let (kind, name, items, optional) = if v.empty_dir.is_some() {
        return Ok(path);
    } else if let Some(cm) = &v.config_map {
        ("configmap", cm.name.clone(), cm.items.clone(), cm.optional)
    } else if let Some(s) = &v.secret {
        (
            "secret",
            s.secret_name.clone().unwrap_or_default(),
            s.items.clone(),
            s.optional,
        )
    } else {
        return Err(ConfigError::Unsupported {
            what: format!(
                "volume {:?} (only emptyDir, configMap, secret, hostPath, persistentVolumeClaim)",
                v.name
            ),
        });
    };
    let data = match source(owner, ns, kind, &name).await? {
        Some(d) => d,
        None if optional.unwrap_or(false) => BTreeMap::new(),
        None => return Err(ConfigError::Missing { kind, name }),
    };
    let files: Vec<(String, Vec<u8>)> = match items {
        Some(items) => {
            let mut out = Vec::new();
            for it in items {
                match data.get(&it.key) {
                    Some(v) => out.push((it.path.clone(), v.clone())),
                    None if optional.unwrap_or(false) => {}
                    None => {
                        return Err(ConfigError::MissingKey {
                            kind,
                            namespace: ns.to_string(),
                            name: name.clone(),
                            key: it.key.clone(),
                        })
                    }
                }
            }
            out
        }
        None => data.into_iter().collect(),
    };
    for (rel, bytes) in files {
        // Keys are file names; a path in `items` may not climb out of the volume.
        if rel.split('/').any(|p| p == "..") {
            continue;
        }
        let file = path.join(&rel);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).map_err(io(&v.name, parent))?;
        }
        std::fs::write(&file, bytes).map_err(io(&v.name, &file))?;
    }
    Ok(path)
}

/// The container's mounts, preparing the volumes they name.
pub async fn mounts(
    owner: &dyn PodOwner,
    pod: &Pod,
    c: &Container,
    data_dir: &Path,
) -> Result<Vec<Mount>, ConfigError> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let dir = pod_dir(data_dir, &uid);
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    let mut out = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let v = volumes
            .iter()
            .find(|v| v.name == m.name)
            .ok_or_else(|| ConfigError::NoVolume {
                mount: m.name.clone(),
            })?;
        let mut host = prepare(owner, &ns, &dir, v).await?;
        if v.persistent_volume_claim.is_some() {
            crate::volumes::made_here(data_dir, &host);
        }
        if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            if sub.split('/').any(|p| p == "..") {
                return Err(ConfigError::Unsupported {
                    what: format!("subPath {sub:?} with '..'"),
                });
            }
            host = host.join(sub);
        }
        out.push(Mount {
            host_path: host.to_string_lossy().into_owned(),
            container_path: m.mount_path.clone(),
            read_only: m.read_only.unwrap_or(false) || v.config_map.is_some() || v.secret.is_some(),
        });
    }
    Ok(out)
}
