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
    #[error("{why}")]
    Token { why: String },
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
    pod: &Pod,
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
    let files = if v.empty_dir.is_some() {
        return Ok(path);
    } else if let Some(cm) = &v.config_map {
        project(
            owner,
            ns,
            "configmap",
            &cm.name,
            cm.items.clone(),
            cm.optional,
        )
        .await?
    } else if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        project(owner, ns, "secret", &name, s.items.clone(), s.optional).await?
    } else if let Some(d) = &v.downward_api {
        downward(pod, d.items.iter().flatten())?
    } else if let Some(p) = &v.projected {
        let mut files = Vec::new();
        for src in p.sources.iter().flatten() {
            if let Some(cm) = &src.config_map {
                let items = cm.items.clone();
                files.extend(project(owner, ns, "configmap", &cm.name, items, cm.optional).await?);
            }
            if let Some(s) = &src.secret {
                let items = s.items.clone();
                files.extend(project(owner, ns, "secret", &s.name, items, s.optional).await?);
            }
            if let Some(d) = &src.downward_api {
                files.extend(downward(pod, d.items.iter().flatten())?);
            }
            if let Some(t) = &src.service_account_token {
                let token = token(owner, pod, t).await?;
                files.push((t.path.clone(), token.into_bytes()));
            }
        }
        files
    } else {
        return Err(ConfigError::Unsupported {
            what: format!(
                "volume {:?} (only emptyDir, configMap, secret, downwardAPI, projected, hostPath, persistentVolumeClaim)",
                v.name
            ),
        });
    };
    for (rel, bytes) in files {
        write_file(&v.name, &path, &rel, &bytes)?;
    }
    Ok(path)
}

/// Write one file of a volume, by a new name and a rename, so that a reader in the
/// container sees the old content or the new, never half of one. A path in `items` may not
/// climb out of the volume.
fn write_file(volume: &str, dir: &Path, rel: &str, bytes: &[u8]) -> Result<(), ConfigError> {
    if rel.split('/').any(|p| p == "..") {
        return Ok(());
    }
    let file = dir.join(rel);
    if let Some(parent) = file.parent() {
        std::fs::create_dir_all(parent).map_err(io(volume, parent))?;
    }
    let tmp = file.with_extension("berth-new");
    std::fs::write(&tmp, bytes).map_err(io(volume, &tmp))?;
    std::fs::rename(&tmp, &file).map_err(io(volume, &file))
}

/// The files a ConfigMap or Secret gives a volume: every key, or the `items` named.
async fn project(
    owner: &dyn PodOwner,
    ns: &str,
    kind: &'static str,
    name: &str,
    items: Option<Vec<k8s_openapi::api::core::v1::KeyToPath>>,
    optional: Option<bool>,
) -> Result<Vec<(String, Vec<u8>)>, ConfigError> {
    let optional = optional.unwrap_or(false);
    let data = match source(owner, ns, kind, name).await? {
        Some(d) => d,
        None if optional => BTreeMap::new(),
        None => {
            return Err(ConfigError::Missing {
                kind,
                name: name.to_string(),
            })
        }
    };
    let Some(items) = items else {
        return Ok(data.into_iter().collect());
    };
    let mut out = Vec::new();
    for it in items {
        match data.get(&it.key) {
            Some(v) => out.push((it.path.clone(), v.clone())),
            None if optional => {}
            None => {
                return Err(ConfigError::MissingKey {
                    kind,
                    namespace: ns.to_string(),
                    name: name.to_string(),
                    key: it.key.clone(),
                })
            }
        }
    }
    Ok(out)
}

/// The files of `downwardAPI` items: pod fields by `fieldRef`.
fn downward<'a>(
    pod: &Pod,
    items: impl Iterator<Item = &'a k8s_openapi::api::core::v1::DownwardAPIVolumeFile>,
) -> Result<Vec<(String, Vec<u8>)>, ConfigError> {
    let mut out = Vec::new();
    for it in items {
        let path = it
            .field_ref
            .as_ref()
            .map(|f| f.field_path.as_str())
            .ok_or_else(|| ConfigError::Unsupported {
                what: format!("downwardAPI item {:?} without a fieldRef", it.path),
            })?;
        let value = field(pod, path, None).ok_or_else(|| ConfigError::Unsupported {
            what: format!("downwardAPI fieldRef {path:?}"),
        })?;
        out.push((it.path.clone(), value.unwrap_or_default().into_bytes()));
    }
    Ok(out)
}

/// A token of the pod's ServiceAccount for a `serviceAccountToken` projection.
async fn token(
    owner: &dyn PodOwner,
    pod: &Pod,
    t: &k8s_openapi::api::core::v1::ServiceAccountTokenProjection,
) -> Result<String, ConfigError> {
    let seconds = t.expiration_seconds.unwrap_or(3600);
    owner
        .service_account_token(pod, t.audience.as_deref(), seconds)
        .await
        .map_err(|source| ConfigError::Api {
            kind: "serviceaccount token",
            name: t.path.clone(),
            source,
        })?
        .map_err(|why| ConfigError::Token { why })
}

/// Renew the ServiceAccount tokens of a running pod's projected volumes once 80% of their
/// lifetime has passed (the file's age tells), as the kubelet does. Errors are the caller's
/// to log; the old token stays until a renewal succeeds.
pub async fn renew_tokens(
    owner: &dyn PodOwner,
    pod: &Pod,
    data_dir: &Path,
) -> Result<usize, ConfigError> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let dir = pod_dir(data_dir, &uid).join("volumes");
    let mut renewed = 0;
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        for t in v
            .projected
            .iter()
            .flat_map(|p| p.sources.iter().flatten())
            .filter_map(|s| s.service_account_token.as_ref())
        {
            let file = dir.join(&v.name).join(&t.path);
            let Ok(age) = std::fs::metadata(&file)
                .and_then(|m| m.modified())
                .map(|m| m.elapsed().unwrap_or_default())
            else {
                // Not made yet (the container has not started): its start makes it.
                continue;
            };
            let lifetime = t.expiration_seconds.unwrap_or(3600).max(1) as u64;
            if age.as_secs() * 10 < lifetime * 8 {
                continue;
            }
            let token = token(owner, pod, t).await?;
            write_file(&v.name, &dir.join(&v.name), &t.path, token.as_bytes())?;
            renewed += 1;
        }
    }
    Ok(renewed)
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
        let mut host = prepare(owner, pod, &ns, &dir, v).await?;
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
            read_only: m.read_only.unwrap_or(false)
                || v.config_map.is_some()
                || v.secret.is_some()
                || v.projected.is_some()
                || v.downward_api.is_some(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::owner::OwnerError;
    use crate::runtime::PodRef;
    use serde_json::{json, Value};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An owner that hands out numbered tokens and has one ConfigMap.
    #[derive(Default)]
    struct Tokens(AtomicUsize);

    #[async_trait::async_trait]
    impl PodOwner for Tokens {
        async fn write_status(&self, _: &PodRef, _: &Value) -> Result<(), OwnerError> {
            Ok(())
        }
        fn event(&self, _: &PodRef, _: &str, _: &str, _: String) {}
        async fn source(
            &self,
            _: &str,
            _: SourceKind,
            name: &str,
        ) -> Result<Option<BTreeMap<String, Vec<u8>>>, OwnerError> {
            Ok((name == "kube-root-ca.crt")
                .then(|| BTreeMap::from([("ca.crt".to_string(), b"CA".to_vec())])))
        }
        async fn deleted(&self, _: &PodRef) -> Result<(), OwnerError> {
            Ok(())
        }
        async fn service_account_token(
            &self,
            _: &Pod,
            _: Option<&str>,
            _: i64,
        ) -> Result<Result<String, String>, OwnerError> {
            Ok(Ok(format!(
                "token-{}",
                self.0.fetch_add(1, Ordering::SeqCst)
            )))
        }
    }

    #[tokio::test]
    async fn a_projected_token_is_written_and_renewed_once_it_ages() {
        let dir = tempfile::tempdir().unwrap();
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns1", "uid": "u1"},
            "spec": {"containers": [{"name": "c", "image": "i",
                    "volumeMounts": [{"name": "sa", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]}],
                "volumes": [{"name": "sa", "projected": {"sources": [
                    {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}}]}}]}
        }))
        .unwrap();
        let owner = Tokens::default();
        let c = pod.spec.as_ref().unwrap().containers[0].clone();
        let mounts = mounts(&owner, &pod, &c, dir.path()).await.unwrap();
        assert!(mounts[0].read_only);
        let vol = PathBuf::from(&mounts[0].host_path);
        let read = |f: &str| std::fs::read_to_string(vol.join(f)).unwrap();
        assert_eq!(
            (read("token"), read("ca.crt"), read("namespace")),
            ("token-0".into(), "CA".into(), "ns1".into())
        );
        // Young: left alone.
        assert_eq!(renew_tokens(&owner, &pod, dir.path()).await.unwrap(), 0);
        // Past 80% of an hour: renewed in place.
        let aged = std::time::SystemTime::now() - std::time::Duration::from_secs(2900);
        std::fs::File::options()
            .write(true)
            .open(vol.join("token"))
            .unwrap()
            .set_modified(aged)
            .unwrap();
        assert_eq!(renew_tokens(&owner, &pod, dir.path()).await.unwrap(), 1);
        assert_eq!(read("token"), "token-1");
    }
}
