//! gitRepo volumes: cloned with `git` into the service's data dir, once per group, and
//! mounted as host paths.

use std::path::PathBuf;

use berth_core::aci::{self, ArmError, ContainerGroup};

use super::Service;

pub(super) struct GitDirs<'a> {
    pub root: &'a std::path::Path,
}

impl aci::VolumeRoot for GitDirs<'_> {
    fn git_repo_dir(&self, volume: &str) -> String {
        self.root.join(volume).to_string_lossy().into_owned()
    }
}

impl Service {
    pub(super) fn git_root(&self, uid: &str) -> PathBuf {
        self.cfg.data_dir.join("git").join(uid)
    }

    /// Clone each gitRepo volume, once per group.
    pub(super) async fn clone_repos(&self, g: &ContainerGroup, uid: &str) -> Result<(), ArmError> {
        let root = self.git_root(uid);
        for (i, v) in g.properties.volumes.iter().enumerate() {
            let Some(git) = &v.git_repo else { continue };
            let dir = root.join(&v.name);
            if dir.exists() {
                continue;
            }
            let target = match git.directory.as_deref() {
                None | Some(".") => dir.clone(),
                Some(sub) if !sub.contains("..") => dir.join(sub),
                Some(sub) => {
                    return Err(ArmError::bad(
                        "InvalidGitRepoVolume",
                        format!("properties.volumes[{i}].gitRepo.directory"),
                        format!("The directory '{sub}' may not hold '..'."),
                    ))
                }
            };
            let _ = std::fs::create_dir_all(&dir);
            let mut cmd = tokio::process::Command::new("git");
            cmd.arg("clone")
                .arg("--quiet")
                .arg(&git.repository)
                .arg(&target);
            let out = cmd.output().await;
            let mut ok = matches!(&out, Ok(o) if o.status.success());
            if ok {
                if let Some(rev) = &git.revision {
                    let co = tokio::process::Command::new("git")
                        .arg("-C")
                        .arg(&target)
                        .args(["checkout", "--quiet", rev])
                        .output()
                        .await;
                    ok = matches!(co, Ok(o) if o.status.success());
                }
            }
            if !ok {
                let _ = std::fs::remove_dir_all(&dir);
                let why = match out {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                    Err(e) => format!("git could not run: {e}"),
                };
                return Err(ArmError::bad(
                    "GitRepoVolumeCloneFailed",
                    format!("properties.volumes[{i}].gitRepo"),
                    format!(
                        "Cloning '{}' (revision {:?}) for volume '{}' failed: {why}",
                        git.repository, git.revision, v.name
                    ),
                ));
            }
        }
        Ok(())
    }
}
