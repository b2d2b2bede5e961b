//! Volumes for the process driver: a container with volume mounts runs in a mount namespace
//! of its own, in which the pod's volume directories (prepared by the agent, as for every
//! driver) are bind-mounted at their `mountPath`s. The host's own view of its file system is
//! untouched; a mount point that does not exist on the host is created there, empty.
//!
//! Everything that runs between fork and exec ([`Binds::apply`], [`enter`]) makes raw system
//! calls only, on strings prepared beforehand, and allocates nothing (an error there reaches
//! the parent as its OS error code alone).

use std::ffi::CString;
use std::path::Path;

use super::Mount;

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

/// Can this process make mount namespaces (CAP_SYS_ADMIN)? Tried in a forked child, so the
/// agent itself never changes namespace.
pub fn probe() -> Result<(), String> {
    // SAFETY: the child makes only async-signal-safe calls (unshare, mount, _exit); the
    // parent waits for it.
    unsafe {
        match libc::fork() {
            -1 => Err(format!("fork: {}", std::io::Error::last_os_error())),
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
                    Err(
                        "the agent may not make mount namespaces (it needs CAP_SYS_ADMIN: run \
                         it as root, or use the docker runtime)"
                            .into(),
                    )
                }
            }
        }
    }
}

impl Binds {
    /// Prepare `mounts`: create mount points missing on the host (a directory, or an empty
    /// file for a file volume) and the strings the child needs.
    pub fn prepare(mounts: &[Mount]) -> std::io::Result<Binds> {
        let mut list = Vec::new();
        for m in mounts {
            let (source, target) = (Path::new(&m.host_path), Path::new(&m.container_path));
            if !target.exists() {
                if source.is_dir() {
                    std::fs::create_dir_all(target)?;
                } else {
                    if let Some(parent) = target.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    std::fs::File::create(target)?;
                }
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
        if self.list.is_empty() {
            return Ok(());
        }
        // SAFETY: raw system calls on NUL-terminated strings prepared before the fork.
        unsafe {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Keep these mounts from propagating back to the host.
            if libc::mount(
                c"none".as_ptr(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            for (source, target, read_only) in &self.list {
                let bind = libc::MS_BIND | libc::MS_REC;
                if libc::mount(
                    source.as_ptr(),
                    target.as_ptr(),
                    std::ptr::null(),
                    bind,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                if *read_only
                    && libc::mount(
                        std::ptr::null(),
                        target.as_ptr(),
                        std::ptr::null(),
                        bind | libc::MS_REMOUNT | libc::MS_RDONLY,
                        std::ptr::null(),
                    ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
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
