//! Control groups for the process driver: one cgroup per container, with the container's CPU
//! and memory limits, joined by its first process before it runs the container's program (so
//! everything it starts is inside), read for stats and OOM kills, and emptied on stop.
//!
//! Both hierarchies are served: the unified one (cgroup v2: `memory.max`, `cpu.max`) and the
//! legacy one (v1: `memory.limit_in_bytes`, `cpu.cfs_quota_us`, `cpuacct.usage`). Where
//! neither can be written (an unprivileged agent, a container with a read-only
//! `/sys/fs/cgroup`), [`Cgroups::detect`] says why and the node reports that limits are not
//! enforced.
//!
//! Every file the driver reads or writes goes through [`CgroupFs`]: [`Kernel`] is the real
//! `/sys/fs/cgroup`, [`Recording`] a fake that records writes, so the layout and the limits
//! are unit-tested. Only joining a group goes around it ([`join`] runs between fork and
//! exec, where nothing but raw system calls is safe).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const ROOT: &str = "/sys/fs/cgroup";
/// The CFS period Kubernetes uses; a quota of `millis * 100` µs per period is `millis` mCPU.
const PERIOD_US: u64 = 100_000;
/// The smallest quota the kernel accepts (1 ms).
const MIN_QUOTA_US: u64 = 1_000;

/// The cgroup filesystem, as far as the driver uses it.
pub trait CgroupFs: Send + Sync + std::fmt::Debug {
    fn exists(&self, path: &Path) -> bool;
    fn is_dir(&self, path: &Path) -> bool;
    fn read(&self, path: &Path) -> std::io::Result<String>;
    fn write(&self, path: &Path, value: &str) -> std::io::Result<()>;
    fn create_dir_all(&self, path: &Path) -> std::io::Result<()>;
    fn remove_dir(&self, path: &Path) -> std::io::Result<()>;
    /// Are these one directory (a hierarchy mounted twice, as cpu and cpuacct often are)?
    fn same_dir(&self, a: &Path, b: &Path) -> bool;
}

/// The kernel's cgroup filesystem.
#[derive(Debug, Default)]
pub struct Kernel;

impl CgroupFs for Kernel {
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }
    fn read(&self, path: &Path) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }
    fn write(&self, path: &Path, value: &str) -> std::io::Result<()> {
        std::fs::write(path, value)
    }
    fn create_dir_all(&self, path: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(path)
    }
    fn remove_dir(&self, path: &Path) -> std::io::Result<()> {
        std::fs::remove_dir(path)
    }
    fn same_dir(&self, a: &Path, b: &Path) -> bool {
        a.canonicalize().ok() == b.canonicalize().ok()
    }
}

/// A cgroup filesystem in memory: the files a test seeds, the directories made, and every
/// write in order.
#[derive(Debug, Default)]
pub struct Recording {
    files: Mutex<BTreeMap<PathBuf, String>>,
    dirs: Mutex<std::collections::BTreeSet<PathBuf>>,
    pub writes: Mutex<Vec<(PathBuf, String)>>,
}

impl Recording {
    /// A file the kernel would show (a directory holding it exists too).
    pub fn seed(&self, path: impl Into<PathBuf>, contents: &str) {
        let path = path.into();
        if let Some(dir) = path.parent() {
            self.dirs.lock().unwrap().insert(dir.to_path_buf());
        }
        self.files.lock().unwrap().insert(path, contents.into());
    }

    /// The writes so far, paths relative to `under`.
    pub fn written(&self, under: &Path) -> Vec<(String, String)> {
        self.writes
            .lock()
            .unwrap()
            .iter()
            .map(|(p, v)| {
                let rel = p.strip_prefix(under).unwrap_or(p);
                (rel.display().to_string(), v.clone())
            })
            .collect()
    }
}

impl CgroupFs for Recording {
    fn exists(&self, path: &Path) -> bool {
        self.files.lock().unwrap().contains_key(path) || self.is_dir(path)
    }
    fn is_dir(&self, path: &Path) -> bool {
        self.dirs.lock().unwrap().contains(path)
    }
    fn read(&self, path: &Path) -> std::io::Result<String> {
        self.files
            .lock()
            .unwrap()
            .get(path)
            .cloned()
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
    }
    fn write(&self, path: &Path, value: &str) -> std::io::Result<()> {
        self.writes
            .lock()
            .unwrap()
            .push((path.to_path_buf(), value.into()));
        self.files
            .lock()
            .unwrap()
            .insert(path.to_path_buf(), value.into());
        Ok(())
    }
    fn create_dir_all(&self, path: &Path) -> std::io::Result<()> {
        let mut dirs = self.dirs.lock().unwrap();
        for a in path.ancestors() {
            dirs.insert(a.to_path_buf());
        }
        Ok(())
    }
    fn remove_dir(&self, path: &Path) -> std::io::Result<()> {
        self.dirs.lock().unwrap().remove(path);
        Ok(())
    }
    fn same_dir(&self, a: &Path, b: &Path) -> bool {
        a == b
    }
}

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
    fs: Arc<dyn CgroupFs>,
    layout: Layout,
}

/// The cgroup directories of one container.
#[derive(Debug, Clone)]
pub struct Group {
    fs: Arc<dyn CgroupFs>,
    dirs: Vec<PathBuf>,
    v2: bool,
}

/// Why containers get no cgroups here; said in the node's `ResourceLimitsEnforced`
/// condition.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("reading {ROOT}/cgroup.controllers failed")]
    Controllers(#[source] std::io::Error),
    #[error("the {0} controller is not available in {ROOT}")]
    MissingController(&'static str),
    #[error("no {0} hierarchy under {ROOT}")]
    MissingHierarchy(&'static str),
    #[error("{doing} {} failed", .path.display())]
    Write {
        doing: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Cgroups {
    /// Find a hierarchy this process may write and make `name`'s parent group in it.
    pub fn detect(name: &str) -> Result<Cgroups, CgroupError> {
        Cgroups::detect_in(Arc::new(Kernel), name)
    }

    /// [`Cgroups::detect`] on the filesystem `fs`.
    pub fn detect_in(fs: Arc<dyn CgroupFs>, name: &str) -> Result<Cgroups, CgroupError> {
        let failed = |doing, path: &Path| {
            let path = path.to_path_buf();
            move |source| CgroupError::Write {
                doing,
                path,
                source,
            }
        };
        let root = Path::new(ROOT);
        if fs.exists(&root.join("cgroup.controllers")) {
            let controllers = fs
                .read(&root.join("cgroup.controllers"))
                .map_err(CgroupError::Controllers)?;
            for c in ["cpu", "memory"] {
                if !controllers.split_whitespace().any(|x| x == c) {
                    return Err(CgroupError::MissingController(c));
                }
            }
            let parent = root.join(name);
            fs.create_dir_all(&parent)
                .map_err(failed("creating", &parent))?;
            // Delegate cpu and memory down to the containers' groups.
            for dir in [root, parent.as_path()] {
                let control = dir.join("cgroup.subtree_control");
                fs.write(&control, "+cpu +memory")
                    .map_err(failed("enabling cpu and memory in", &control))?;
            }
            return Ok(Cgroups {
                fs,
                layout: Layout::V2(parent),
            });
        }
        let mut dirs = Vec::new();
        for controller in ["memory", "cpu", "cpuacct"] {
            let dir = root.join(controller);
            if !fs.is_dir(&dir) {
                return Err(CgroupError::MissingHierarchy(controller));
            }
            let parent = dir.join(name);
            fs.create_dir_all(&parent)
                .map_err(failed("creating", &parent))?;
            dirs.push(parent);
        }
        let cpuacct = dirs.pop().expect("three dirs");
        let cpu = dirs.pop().expect("three dirs");
        let memory = dirs.pop().expect("three dirs");
        Ok(Cgroups {
            fs,
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
                fs: self.fs.clone(),
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
                if !self.fs.same_dir(cpuacct, cpu) {
                    dirs.push(cpuacct.join(id));
                }
                Group {
                    fs: self.fs.clone(),
                    dirs,
                    v2: false,
                }
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
        let fs = &self.fs;
        for d in &self.dirs {
            fs.create_dir_all(d)?;
        }
        let quota = cpu_millis.map(|m| (m * PERIOD_US / 1000).max(MIN_QUOTA_US));
        if self.v2 {
            let d = &self.dirs[0];
            if let Some(bytes) = memory_bytes {
                fs.write(&d.join("memory.max"), &bytes.to_string())?;
                // As Kubernetes runs pods: no swap, so the limit is the limit.
                if fs.exists(&d.join("memory.swap.max")) {
                    fs.write(&d.join("memory.swap.max"), "0")?;
                }
            }
            if let Some(q) = quota {
                fs.write(&d.join("cpu.max"), &format!("{q} {PERIOD_US}"))?;
            }
        } else {
            if let Some(bytes) = memory_bytes {
                fs.write(
                    &self.dirs[0].join("memory.limit_in_bytes"),
                    &bytes.to_string(),
                )?;
            }
            if let Some(q) = quota {
                fs.write(
                    &self.dirs[1].join("cpu.cfs_period_us"),
                    &PERIOD_US.to_string(),
                )?;
                fs.write(&self.dirs[1].join("cpu.cfs_quota_us"), &q.to_string())?;
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
        self.fs
            .read(&self.dirs[0].join("cgroup.procs"))
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
        self.fs
            .read(&self.dirs[0].join(file))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// CPU time used, in nanoseconds, and the working set (usage less inactive file pages),
    /// in bytes; None when the group cannot be read.
    pub fn usage(&self) -> Option<(u64, u64)> {
        let read = |d: &Path, f: &str| self.fs.read(&d.join(f)).ok();
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
            let _ = self.fs.remove_dir(d);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn v2() -> Arc<Recording> {
        let fs = Arc::new(Recording::default());
        fs.seed(
            format!("{ROOT}/cgroup.controllers"),
            "cpuset cpu io memory pids",
        );
        fs
    }

    #[test]
    fn on_the_unified_hierarchy_cpu_and_memory_are_delegated_and_limits_written() {
        let fs = v2();
        let cg = Cgroups::detect_in(fs.clone(), "berth-x").unwrap();
        let g = cg.group("c1");
        fs.seed(format!("{ROOT}/berth-x/c1/memory.swap.max"), "max");
        g.create(Some(250), Some(64 << 20)).unwrap();
        assert_eq!(
            fs.written(Path::new(ROOT)),
            [
                ("cgroup.subtree_control".into(), "+cpu +memory".into()),
                (
                    "berth-x/cgroup.subtree_control".into(),
                    "+cpu +memory".into()
                ),
                ("berth-x/c1/memory.max".into(), "67108864".into()),
                ("berth-x/c1/memory.swap.max".into(), "0".into()),
                ("berth-x/c1/cpu.max".into(), "25000 100000".into()),
            ]
        );
    }

    #[test]
    fn a_tiny_cpu_limit_gets_the_smallest_quota_the_kernel_takes() {
        let fs = v2();
        let g = Cgroups::detect_in(fs.clone(), "b").unwrap().group("c");
        g.create(Some(1), None).unwrap();
        let last = fs.written(Path::new(ROOT)).pop().unwrap();
        assert_eq!(last, ("b/c/cpu.max".to_string(), "1000 100000".to_string()));
    }

    #[test]
    fn a_missing_controller_says_which() {
        let fs = Arc::new(Recording::default());
        fs.seed(format!("{ROOT}/cgroup.controllers"), "cpu io");
        let err = Cgroups::detect_in(fs, "b").unwrap_err();
        assert!(
            matches!(err, CgroupError::MissingController("memory")),
            "{err}"
        );
    }

    #[test]
    fn on_the_legacy_hierarchies_limits_go_to_memory_and_cpu() {
        let fs = Arc::new(Recording::default());
        for c in ["memory", "cpu", "cpuacct"] {
            fs.create_dir_all(&Path::new(ROOT).join(c)).unwrap();
        }
        let g = Cgroups::detect_in(fs.clone(), "b").unwrap().group("c");
        g.create(Some(1500), Some(1 << 30)).unwrap();
        assert_eq!(
            fs.written(Path::new(ROOT)),
            [
                (
                    "memory/b/c/memory.limit_in_bytes".into(),
                    "1073741824".into()
                ),
                ("cpu/b/c/cpu.cfs_period_us".into(), "100000".into()),
                ("cpu/b/c/cpu.cfs_quota_us".into(), "150000".into()),
            ]
        );
        assert!(matches!(
            Cgroups::detect_in(Arc::new(Recording::default()), "b"),
            Err(CgroupError::MissingHierarchy("memory"))
        ));
    }

    #[test]
    fn usage_is_cpu_time_and_the_working_set() {
        let fs = v2();
        let g = Cgroups::detect_in(fs.clone(), "b").unwrap().group("c");
        let dir = format!("{ROOT}/b/c");
        fs.seed(
            format!("{dir}/cpu.stat"),
            "usage_usec 1500\nuser_usec 1000\n",
        );
        fs.seed(format!("{dir}/memory.current"), "1000000\n");
        fs.seed(
            format!("{dir}/memory.stat"),
            "anon 10\ninactive_file 400000\n",
        );
        fs.seed(format!("{dir}/memory.events"), "low 0\noom 1\noom_kill 2\n");
        assert_eq!(g.usage(), Some((1_500_000, 600_000)));
        assert_eq!(g.oom_kills(), 2);
    }
}
