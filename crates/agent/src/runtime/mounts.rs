//! Volumes for the process driver: a container with volume mounts runs in a mount namespace
//! of its own, in which the pod's volume directories (prepared by the agent, as for every
//! driver) are bind-mounted at their `mountPath`s. The host's own view of its file system is
//! untouched; a mount point that does not exist on the host is created there, empty.
//!
//! Everything that runs between fork and exec ([`Binds::apply`], [`enter`]) makes raw system
//! calls only, on strings prepared beforehand, and allocates nothing (an error there reaches
//! the parent as its OS error code alone).
//!
//! The system calls go through [`MountSys`]: [`Kernel`] makes them, [`Recording`] records
//! them, so which mount points are made and which binds are applied is unit-tested.

use std::ffi::{CStr, CString};
use std::path::Path;
use std::sync::Mutex;

use super::Mount;

/// The mount system calls a container's volumes need. Between fork and exec an
/// implementation may make raw system calls only (the kernel's does).
pub trait MountSys: Sync {
    /// On the host, before the fork: an empty mount point, a directory or a file.
    fn create_mount_point(&self, target: &Path, dir: bool) -> std::io::Result<()>;
    /// A mount namespace of the calling process's own, whose mounts do not propagate back.
    fn private_namespace(&self) -> std::io::Result<()>;
    /// Bind `source` at `target`, read-only if asked.
    fn bind(&self, source: &CStr, target: &CStr, read_only: bool) -> std::io::Result<()>;
}

/// The kernel's mount system calls.
#[derive(Debug, Default)]
pub struct Kernel;

fn last_os_error_unless(ok: bool) -> std::io::Result<()> {
    if ok {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl MountSys for Kernel {
    fn create_mount_point(&self, target: &Path, dir: bool) -> std::io::Result<()> {
        if dir {
            return std::fs::create_dir_all(target);
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::File::create(target).map(drop)
    }

    fn private_namespace(&self) -> std::io::Result<()> {
        // SAFETY: unshare and mount with static NUL-terminated strings are raw system calls.
        unsafe {
            last_os_error_unless(libc::unshare(libc::CLONE_NEWNS) == 0)?;
            last_os_error_unless(
                libc::mount(
                    c"none".as_ptr(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) == 0,
            )
        }
    }

    fn bind(&self, source: &CStr, target: &CStr, read_only: bool) -> std::io::Result<()> {
        let bind = libc::MS_BIND | libc::MS_REC;
        // SAFETY: mount on NUL-terminated strings prepared before the fork.
        unsafe {
            last_os_error_unless(
                libc::mount(
                    source.as_ptr(),
                    target.as_ptr(),
                    std::ptr::null(),
                    bind,
                    std::ptr::null(),
                ) == 0,
            )?;
            if read_only {
                last_os_error_unless(
                    libc::mount(
                        std::ptr::null(),
                        target.as_ptr(),
                        std::ptr::null(),
                        bind | libc::MS_REMOUNT | libc::MS_RDONLY,
                        std::ptr::null(),
                    ) == 0,
                )?;
            }
        }
        Ok(())
    }
}

/// Mount system calls recorded, not made (never between a real fork and exec: it
/// allocates).
#[derive(Debug, Default)]
pub struct Recording {
    pub calls: Mutex<Vec<String>>,
}

impl MountSys for Recording {
    fn create_mount_point(&self, target: &Path, dir: bool) -> std::io::Result<()> {
        let what = if dir { "dir" } else { "file" };
        self.calls
            .lock()
            .unwrap()
            .push(format!("mkpoint {what} {}", target.display()));
        Ok(())
    }

    fn private_namespace(&self) -> std::io::Result<()> {
        self.calls.lock().unwrap().push("private namespace".into());
        Ok(())
    }

    fn bind(&self, source: &CStr, target: &CStr, read_only: bool) -> std::io::Result<()> {
        let mode = if read_only { "ro" } else { "rw" };
        self.calls.lock().unwrap().push(format!(
            "bind {} {} {mode}",
            source.to_string_lossy(),
            target.to_string_lossy()
        ));
        Ok(())
    }
}

/// The bind mounts of one container, ready to apply in its first process.
#[derive(Debug, Clone, Default)]
pub struct Binds {
    list: Vec<(CString, CString, bool)>,
}

fn cstring(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes()).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "a path with a NUL byte")
    })
}

/// Why containers cannot get mount namespaces here.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("fork failed")]
    Fork(#[source] std::io::Error),
    #[error(
        "the agent may not make mount namespaces (it needs CAP_SYS_ADMIN: run it as root, or use the docker runtime)"
    )]
    NotPermitted,
}

/// Can this process make mount namespaces (CAP_SYS_ADMIN)? Tried in a forked child, so the
/// agent itself never changes namespace.
pub fn probe() -> Result<(), MountError> {
    // SAFETY: the child makes only async-signal-safe calls (unshare, mount, _exit); the
    // parent waits for it.
    unsafe {
        match libc::fork() {
            -1 => Err(MountError::Fork(std::io::Error::last_os_error())),
            0 => {
                let ok = libc::unshare(libc::CLONE_NEWNS) == 0
                    && libc::mount(
                        c"none".as_ptr(),
                        c"/".as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    ) == 0;
                libc::_exit(if ok { 0 } else { 1 })
            }
            pid => {
                let mut status = 0;
                if libc::waitpid(pid, &mut status, 0) == pid
                    && libc::WIFEXITED(status)
                    && libc::WEXITSTATUS(status) == 0
                {
                    Ok(())
                } else {
                    Err(MountError::NotPermitted)
                }
            }
        }
    }
}

impl Binds {
    /// Prepare `mounts`: create mount points missing on the host (a directory, or an empty
    /// file for a file volume) and the strings the child needs.
    pub fn prepare(mounts: &[Mount]) -> std::io::Result<Binds> {
        Binds::prepare_with(&Kernel, mounts)
    }

    /// [`Binds::prepare`] through `sys`.
    pub fn prepare_with(sys: &dyn MountSys, mounts: &[Mount]) -> std::io::Result<Binds> {
        let mut list = Vec::new();
        for m in mounts {
            let (source, target) = (Path::new(&m.host_path), Path::new(&m.container_path));
            if !target.exists() {
                sys.create_mount_point(target, source.is_dir())?;
            }
            list.push((cstring(source)?, cstring(target)?, m.read_only));
        }
        Ok(Binds { list })
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// In the child: a private mount namespace with every bind in place.
    pub fn apply(&self) -> std::io::Result<()> {
        self.apply_with(&Kernel)
    }

    /// [`Binds::apply`] through `sys`.
    pub fn apply_with(&self, sys: &dyn MountSys) -> std::io::Result<()> {
        if self.list.is_empty() {
            return Ok(());
        }
        sys.private_namespace()?;
        for (source, target, read_only) in &self.list {
            sys.bind(source, target, *read_only)?;
        }
        Ok(())
    }
}

/// The path of the mount namespace of process `pid`, for [`enter`].
pub fn namespace_of(pid: u32) -> CString {
    CString::new(format!("/proc/{pid}/ns/mnt")).expect("no NUL in a /proc path")
}

/// In the child: join the mount namespace at `ns` (an exec into a container with volumes).
pub fn enter(ns: &CString) -> std::io::Result<()> {
    // SAFETY: open/setns/close on a prepared path.
    unsafe {
        let fd = libc::open(ns.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let r = libc::setns(fd, libc::CLONE_NEWNS);
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if r != 0 {
            return Err(err);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_mount_points_are_made_and_binds_applied_in_a_private_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let volume = dir.path().join("data");
        std::fs::create_dir(&volume).unwrap();
        let secret = dir.path().join("token");
        std::fs::write(&secret, "s").unwrap();
        let mounts = [
            Mount {
                host_path: volume.display().to_string(),
                container_path: "/berth-test-absent/data".into(),
                read_only: false,
            },
            Mount {
                host_path: secret.display().to_string(),
                container_path: "/berth-test-absent/token".into(),
                read_only: true,
            },
            Mount {
                host_path: volume.display().to_string(),
                container_path: dir.path().display().to_string(),
                read_only: false,
            },
        ];
        let sys = Recording::default();
        let binds = Binds::prepare_with(&sys, &mounts).unwrap();
        binds.apply_with(&sys).unwrap();
        let (v, s, d) = (volume.display(), secret.display(), dir.path().display());
        assert_eq!(
            *sys.calls.lock().unwrap(),
            [
                "mkpoint dir /berth-test-absent/data".to_string(),
                "mkpoint file /berth-test-absent/token".to_string(),
                "private namespace".to_string(),
                format!("bind {v} /berth-test-absent/data rw"),
                format!("bind {s} /berth-test-absent/token ro"),
                format!("bind {v} {d} rw"),
            ]
        );
    }

    #[test]
    fn a_container_without_volumes_keeps_the_hosts_namespace() {
        let sys = Recording::default();
        Binds::prepare_with(&sys, &[])
            .unwrap()
            .apply_with(&sys)
            .unwrap();
        assert!(sys.calls.lock().unwrap().is_empty());
    }
}
