//! Control groups for the process driver: one cgroup per container, with the container's CPU
//! and memory limits, joined by its first process before it runs the container's program (so
//! everything it starts is inside), read for stats and OOM kills, and emptied on stop.
//!
//! Both hierarchies are served: the unified one (cgroup v2: `memory.max`, `cpu.max`) and the
//! legacy one (v1: `memory.limit_in_bytes`, `cpu.cfs_quota_us`, `cpuacct.usage`). Where
//! neither can be written (an unprivileged agent, a container with a read-only
//! `/sys/fs/cgroup`), [`Cgroups::detect`] says why and the node reports that limits are not
//! enforced.

use std::ffi::CString;
use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";
/// The CFS period Kubernetes uses; a quota of `millis * 100` µs per period is `millis` mCPU.
const PERIOD_US: u64 = 100_000;
/// The smallest quota the kernel accepts (1 ms).
const MIN_QUOTA_US: u64 = 1_000;

#[derive(Debug, Clone)]
enum Layout {
    /// One parent directory in the unified hierarchy.
    V2(PathBuf),
    /// A parent directory in each of the memory, cpu and cpuacct hierarchies.
    V1 {
        memory: PathBuf,
        cpu: PathBuf,
        cpuacct: PathBuf,
    },
}

/// Where this driver's containers' cgroups live.
#[derive(Debug, Clone)]
pub struct Cgroups {
    layout: Layout,
}

/// The cgroup directories of one container.
#[derive(Debug, Clone)]
pub struct Group {
    dirs: Vec<PathBuf>,
    v2: bool,
}

fn write(path: &Path, value: &str) -> std::io::Result<()> {
    std::fs::write(path, value)
}

impl Cgroups {
    /// Find a hierarchy this process may write and make `name`'s parent group in it.
    pub fn detect(name: &str) -> Result<Cgroups, String> {
        let root = Path::new(ROOT);
        if root.join("cgroup.controllers").exists() {
            let controllers = std::fs::read_to_string(root.join("cgroup.controllers"))
                .map_err(|e| format!("reading {ROOT}/cgroup.controllers: {e}"))?;
            for c in ["cpu", "memory"] {
                if !controllers.split_whitespace().any(|x| x == c) {
                    return Err(format!("the {c} controller is not available in {ROOT}"));
                }
            }
            let parent = root.join(name);
            std::fs::create_dir_all(&parent)
                .map_err(|e| format!("creating {}: {e}", parent.display()))?;
            // Delegate cpu and memory down to the containers' groups.
            for dir in [root, parent.as_path()] {
                write(&dir.join("cgroup.subtree_control"), "+cpu +memory")
                    .map_err(|e| format!("enabling cpu and memory in {}: {e}", dir.display()))?;
            }
            return Ok(Cgroups {
                layout: Layout::V2(parent),
            });
        }
        let mut dirs = Vec::new();
        for controller in ["memory", "cpu", "cpuacct"] {
            let dir = root.join(controller);
            if !dir.is_dir() {
                return Err(format!("no {controller} hierarchy under {ROOT}"));
            }
            let parent = dir.join(name);
            std::fs::create_dir_all(&parent)
                .map_err(|e| format!("creating {}: {e}", parent.display()))?;
            dirs.push(parent);
        }
        let cpuacct = dirs.pop().expect("three dirs");
        let cpu = dirs.pop().expect("three dirs");
        let memory = dirs.pop().expect("three dirs");
        Ok(Cgroups {
            layout: Layout::V1 {
                memory,
                cpu,
                cpuacct,
            },
        })
    }

    /// The (not yet created) group of container `id`.
    pub fn group(&self, id: &str) -> Group {
        match &self.layout {
            Layout::V2(parent) => Group {
                dirs: vec![parent.join(id)],
                v2: true,
            },
            Layout::V1 {
                memory,
                cpu,
                cpuacct,
            } => {
                let mut dirs = vec![memory.join(id), cpu.join(id)];
                // cpu and cpuacct are often one hierarchy mounted twice.
                if cpuacct.canonicalize().ok() != cpu.canonicalize().ok() {
                    dirs.push(cpuacct.join(id));
                }
                Group { dirs, v2: false }
            }
        }
    }
}

impl Group {
    /// Create the group with these limits.
    pub fn create(
        &self,
        cpu_millis: Option<u64>,
        memory_bytes: Option<u64>,
    ) -> std::io::Result<()> {
        for d in &self.dirs {
            std::fs::create_dir_all(d)?;
        }
        let quota = cpu_millis.map(|m| (m * PERIOD_US / 1000).max(MIN_QUOTA_US));
        if self.v2 {
            let d = &self.dirs[0];
            if let Some(bytes) = memory_bytes {
                write(&d.join("memory.max"), &bytes.to_string())?;
                // As Kubernetes runs pods: no swap, so the limit is the limit.
                if d.join("memory.swap.max").exists() {
                    write(&d.join("memory.swap.max"), "0")?;
                }
            }
            if let Some(q) = quota {
                write(&d.join("cpu.max"), &format!("{q} {PERIOD_US}"))?;
            }
        } else {
            if let Some(bytes) = memory_bytes {
                write(
                    &self.dirs[0].join("memory.limit_in_bytes"),
                    &bytes.to_string(),
                )?;
            }
            if let Some(q) = quota {
                write(
                    &self.dirs[1].join("cpu.cfs_period_us"),
                    &PERIOD_US.to_string(),
                )?;
                write(&self.dirs[1].join("cpu.cfs_quota_us"), &q.to_string())?;
            }
        }
        Ok(())
    }

    /// The `cgroup.procs` files a starting process writes `0` into to join the group.
    pub fn procs_files(&self) -> Vec<CString> {
        self.dirs
            .iter()
            .filter_map(|d| {
                CString::new(d.join("cgroup.procs").into_os_string().into_encoded_bytes()).ok()
            })
            .collect()
    }

    /// Every process in the group.
    pub fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.dirs[0].join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// How many times the kernel's OOM killer has killed a process of the group.
    pub fn oom_kills(&self) -> u64 {
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        std::fs::read_to_string(self.dirs[0].join(file))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// CPU time used, in nanoseconds, and the working set (usage less inactive file pages),
    /// in bytes; None when the group cannot be read.
    pub fn usage(&self) -> Option<(u64, u64)> {
        let read = |d: &Path, f: &str| std::fs::read_to_string(d.join(f)).ok();
        let stat_field = |text: &str, key: &str| {
            text.lines().find_map(|l| {
                l.strip_prefix(key)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
        };
        if self.v2 {
            let d = &self.dirs[0];
            let cpu = stat_field(&read(d, "cpu.stat")?, "usage_usec")? * 1000;
            let used: u64 = read(d, "memory.current")?.trim().parse().ok()?;
            let inactive = stat_field(&read(d, "memory.stat")?, "inactive_file").unwrap_or(0);
            Some((cpu, used.saturating_sub(inactive)))
        } else {
            let acct = self.dirs.last()?;
            let cpu: u64 = read(acct, "cpuacct.usage")?.trim().parse().ok()?;
            let used: u64 = read(&self.dirs[0], "memory.usage_in_bytes")?
                .trim()
                .parse()
                .ok()?;
            let inactive = stat_field(&read(&self.dirs[0], "memory.stat")?, "total_inactive_file")
                .unwrap_or(0);
            Some((cpu, used.saturating_sub(inactive)))
        }
    }

    /// Remove the group (it must be empty of processes); a group already gone is fine.
    pub fn remove(&self) {
        for d in &self.dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// Join the groups whose `cgroup.procs` files are given: called in the child between fork
/// and exec, so only raw system calls (open, write, close) are made.
pub fn join(procs_files: &[CString]) -> std::io::Result<()> {
    for f in procs_files {
        // SAFETY: open/write/close on a NUL-terminated path and a static buffer are
        // async-signal-safe, as a pre-exec hook requires.
        unsafe {
            let fd = libc::open(f.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let n = libc::write(fd, b"0".as_ptr().cast(), 1);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if n != 1 {
                return Err(err);
            }
        }
    }
    Ok(())
}
