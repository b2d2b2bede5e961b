//! A process pod's own network and UTS namespaces: made by a short-lived thread that
//! unshares both, names the UTS one after the pod, and bind-mounts each onto a file in the
//! pod's directory (as `ip netns add` keeps a namespace), so they outlive the thread and
//! the agent. Each container's first process and each exec join them (setns) before exec;
//! the pod network's veth goes into the network one.
//!
//! Between fork and exec only [`join`] runs: raw system calls on descriptors opened before.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

/// The namespaces a pod has, each as (file name, `setns` type).
const KINDS: [(&str, libc::c_int); 2] = [("net", libc::CLONE_NEWNET), ("uts", libc::CLONE_NEWUTS)];

fn check(ok: bool) -> std::io::Result<()> {
    if ok {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Can this agent make namespaces (root, or CAP_SYS_ADMIN)? Tried on a thread that ends.
pub fn probe() -> std::io::Result<()> {
    std::thread::spawn(|| {
        // SAFETY: unshare affects this thread only, which ends right after.
        check(unsafe { libc::unshare(libc::CLONE_NEWNET | libc::CLONE_NEWUTS) } == 0)
    })
    .join()
    .unwrap_or_else(|_| Err(std::io::Error::other("the probe thread panicked")))
}

/// The network namespace file of the pod whose namespaces live in `dir`.
pub fn net_path(dir: &Path) -> PathBuf {
    dir.join(KINDS[0].0)
}

/// Make the pod's namespaces in `dir` (kept there), its hostname `hostname`. A pod that has
/// them already keeps them.
pub fn make(dir: &Path, hostname: &str) -> std::io::Result<()> {
    if net_path(dir).exists() && opened(dir).is_ok() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    let mut targets = Vec::new();
    for (kind, _) in KINDS {
        let path = dir.join(kind);
        File::create(&path)?;
        targets.push(cstring(&path)?);
    }
    let name = CString::new(hostname).map_err(std::io::Error::other)?;
    let made = std::thread::spawn(move || {
        // SAFETY: unshare, sethostname and mount affect this thread (which ends right after)
        // and the two files made for them.
        unsafe {
            check(libc::unshare(libc::CLONE_NEWNET | libc::CLONE_NEWUTS) == 0)?;
            check(libc::sethostname(name.as_ptr(), name.as_bytes().len()) == 0)?;
            let tid = libc::gettid();
            for ((kind, _), target) in KINDS.iter().zip(&targets) {
                let source = CString::new(format!("/proc/self/task/{tid}/ns/{kind}"))
                    .expect("no NUL in a /proc path");
                check(
                    libc::mount(
                        source.as_ptr(),
                        target.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    ) == 0,
                )?;
            }
        }
        Ok(())
    })
    .join()
    .unwrap_or_else(|_| Err(std::io::Error::other("the namespace thread panicked")));
    if made.is_err() {
        remove(dir);
    }
    made
}

/// The pod's namespaces, open, for [`join`]; an error where it has none.
pub fn opened(dir: &Path) -> std::io::Result<Opened> {
    let mut files = Vec::new();
    for (kind, nstype) in KINDS {
        files.push((File::open(dir.join(kind))?, nstype));
    }
    // Opened files that are not namespaces (never mounted) fail at setns, in the child:
    // tell them here.
    for (file, _) in &files {
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: fstatfs on an open descriptor into a zeroed struct.
        check(unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } == 0)?;
        if st.f_type != libc::NSFS_MAGIC {
            return Err(std::io::Error::other(format!(
                "{} holds no namespace",
                dir.display()
            )));
        }
    }
    Ok(Opened { files })
}

/// A pod's namespaces, held open across a fork.
pub struct Opened {
    files: Vec<(File, libc::c_int)>,
}

impl Opened {
    /// What the child joins: (descriptor, namespace type) pairs, valid while `self` lives.
    pub fn fds(&self) -> Vec<(RawFd, libc::c_int)> {
        self.files
            .iter()
            .map(|(f, t)| (f.as_raw_fd(), *t))
            .collect()
    }
}

/// In the child, between fork and exec: join each namespace.
pub fn join(fds: &[(RawFd, libc::c_int)]) -> std::io::Result<()> {
    for &(fd, nstype) in fds {
        // SAFETY: setns on a descriptor the parent opened and keeps open.
        check(unsafe { libc::setns(fd, nstype) } == 0)?;
    }
    Ok(())
}

/// Connect to `port` on the loopback of the network namespace at `netns` (the agent's own
/// where `None`), as the kubelet's port-forward does: 127.0.0.1 first, then ::1. The socket
/// is made on a thread that joins the namespace and ends, so no thread of the agent is left
/// in a pod's namespace; a connected socket stays in the namespace it was made in.
pub async fn connect_loopback(
    netns: Option<PathBuf>,
    port: u16,
) -> std::io::Result<tokio::net::TcpStream> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let connected = (|| -> std::io::Result<std::net::TcpStream> {
            if let Some(path) = &netns {
                let ns = File::open(path)?;
                // SAFETY: setns on an open namespace descriptor; this thread ends right after.
                check(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } == 0)?;
            }
            let timeout = std::time::Duration::from_secs(10);
            let v4 = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
            let stream = std::net::TcpStream::connect_timeout(&v4, timeout).or_else(|first| {
                std::net::TcpStream::connect_timeout(&v6, timeout).map_err(|_| first)
            })?;
            stream.set_nonblocking(true)?;
            Ok(stream)
        })();
        let _ = tx.send(connected);
    });
    let stream = rx
        .await
        .map_err(|_| std::io::Error::other("the connecting thread panicked"))??;
    tokio::net::TcpStream::from_std(stream)
}

/// Take the pod's namespaces away (its veth goes with the network one once no process
/// holds it).
pub fn remove(dir: &Path) {
    for (kind, _) in KINDS {
        let path = dir.join(kind);
        if let Ok(c) = cstring(&path) {
            // SAFETY: umount2 on a NUL-terminated path; not mounted is fine.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_file(&path);
    }
    let _ = std::fs::remove_dir(dir);
}

fn cstring(path: &Path) -> std::io::Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[test]
    fn a_pod_has_its_own_hostname_and_network_until_removed() {
        probe().expect("making namespaces needs root (CAP_SYS_ADMIN): run the tests as root");
        let dir = tempfile::tempdir().unwrap();
        let ns = dir.path().join("ns");
        make(&ns, "web-0").unwrap();
        // Made again (a restarted agent): the same namespaces.
        make(&ns, "web-0").unwrap();
        let open = opened(&ns).unwrap();
        let fds = open.fds();
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", "hostname; grep -c : /proc/net/dev"]);
        // SAFETY: the hook makes raw system calls only.
        unsafe { cmd.pre_exec(move || join(&fds)) };
        let out = cmd.output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "web-0\n1\n",
            "its name, and lo alone"
        );
        remove(&ns);
        assert!(!ns.exists());
        assert!(opened(&ns).is_err());
    }
}
