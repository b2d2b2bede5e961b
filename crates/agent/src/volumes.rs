//! Local volumes whose PersistentVolume is gone. The built-in local-path provisioner's volumes
//! are directories this agent makes when a pod first mounts them
//! (`<class path>/pvc-<uid>_<namespace>_<claim>`); once the volume object has been deleted
//! (its claim released under the `Delete` policy), the agent of the node removes the
//! directory, unless a pod here still mounts the claim. Only directories this agent made
//! (noted under its data directory) are considered.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, Pod};
use kube::api::Api;
use kube::runtime::reflector::Store;

/// Where the agent notes the local volumes it made: one file per directory, holding its path.
fn notes(data_dir: &Path) -> PathBuf {
    data_dir.join("local-volumes")
}

/// Note that this agent made (or mounted) the local volume at `path`: only volumes it made
/// are ever removed by it (several clusters may share a host's directories in tests).
pub fn made_here(data_dir: &Path, path: &Path) {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return;
    };
    if parse(name).is_none() {
        return;
    }
    let dir = notes(data_dir);
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join(name), path.to_string_lossy().as_bytes());
}

/// What a local-path directory's name says: the volume's name, and the claim's namespace
/// and name.
fn parse(dir: &str) -> Option<(String, &str, &str)> {
    let rest = dir.strip_prefix("pvc-")?;
    let (uid, rest) = rest.split_once('_')?;
    let (ns, claim) = rest.split_once('_')?;
    Some((format!("pvc-{uid}"), ns, claim))
}

fn mounted_here(pods: &Store<Pod>, ns: &str, claim: &str) -> bool {
    pods.state().iter().any(|p| {
        p.metadata.namespace.as_deref() == Some(ns)
            && p.spec
                .iter()
                .flat_map(|s| s.volumes.iter().flatten())
                .any(|v| {
                    v.persistent_volume_claim
                        .as_ref()
                        .is_some_and(|c| c.claim_name == claim)
                })
    })
}

/// One sweep over the volumes this agent made: the directories removed.
async fn sweep(
    client: &kube::Client,
    pods: &Store<Pod>,
    data_dir: &Path,
) -> Result<Vec<PathBuf>, kube::Error> {
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(notes(data_dir)) else {
        return Ok(removed);
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some((volume, ns, claim)) = file_name.to_str().and_then(parse) else {
            continue;
        };
        if volumes.get_opt(&volume).await?.is_some() || mounted_here(pods, ns, claim) {
            continue;
        }
        let Ok(path) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let path = PathBuf::from(path);
        match std::fs::remove_dir_all(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(path = %path.display(), error = %e,
                    "could not remove the directory of a deleted volume");
                continue;
            }
            _ => {}
        }
        let _ = std::fs::remove_file(entry.path());
        removed.push(path);
    }
    Ok(removed)
}

/// Sweep every `every` until the agent stops.
pub async fn run(client: kube::Client, pods: Store<Pod>, data_dir: PathBuf, every: Duration) {
    loop {
        match sweep(&client, &pods, &data_dir).await {
            Ok(removed) => {
                for path in removed {
                    tracing::info!(path = %path.display(), "removed the directory of a deleted volume");
                }
            }
            Err(e) => tracing::debug!(error = %e, "local volume sweep"),
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_names_say_volume_and_claim() {
        assert_eq!(
            parse("pvc-1a2b_default_data-db-0"),
            Some(("pvc-1a2b".to_string(), "default", "data-db-0"))
        );
        assert_eq!(parse("lost+found"), None);
        assert_eq!(parse("pvc-1a2b"), None);
    }
}
