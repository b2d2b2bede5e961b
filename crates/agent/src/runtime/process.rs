//! The `process` driver: pods as host process groups, for machines without a container
//! engine.
//!
//! How a container spec maps onto a host process:
//! - `image` is `host` (the host's own programs) or the name of a directory under
//!   `<data dir>/process/images/<name>` whose `bin/` goes first on `PATH`; anything else is
//!   `ErrImageNeverPull`/`ErrImagePull` with a message saying so.
//! - `command` + `args` is the program and its arguments (required: there is no image
//!   entrypoint); `env` is the whole environment besides `PATH` and `HOME`.
//! - Each container runs in its own process group, in its own working directory
//!   (`.../containers/<id>/work`, or `workingDir`), with stdout and stderr in one log file.
//! - On the node's pod network (an agent with the rights to make namespaces and links), each
//!   pod gets network and UTS namespaces of its own ([`super::podns`]), named after the pod
//!   and linked to the node's bridge with an address of its pod CIDR; its containers and
//!   execs join them. Otherwise, and for `hostNetwork` pods, pods share the host's network
//!   (the pod IP is 127.0.0.1, or the node's address for `hostNetwork`).
//! - Volumes: a container with volume mounts runs in a mount namespace of its own with the
//!   volumes bind-mounted at their paths ([`super::mounts`]); an agent that may not make mount
//!   namespaces refuses such containers with a message saying so.
//! - Limits: each container gets a cgroup (v2 or v1) with its CPU quota and memory limit, and
//!   its first process joins it before exec, so all it starts is counted, limited, stopped and
//!   reported (stats, OOMKilled) as one ([`super::cgroup`]). Where no cgroup hierarchy can be
//!   written, containers run unlimited, stats cover each container's leading process, and the
//!   node's `ResourceLimitsEnforced` condition says why.
//!
//! State lives on disk (`state.json` and an `exit` file per container), so a restarted agent
//! adopts running processes; a process that ended while no agent watched reports exit code
//! 255.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use jiff::Timestamp;
use nix::sys::signal::Signal;
use serde_json::{json, Value};

use berth_core::error::Chain;

use super::cgroup::{self, Cgroups, Group};
use super::mounts::{self, Binds};
use super::podns;
use super::{
    Channel, ContainerConfig, ContainerStats, ExecSession, LogOptions, LogStream, Observed,
    ObservedContainer, ObservedSandbox, PodRef, PullPolicy, Runtime, RuntimeError, State,
};
use crate::net::podnet::PodNet;

const DRIVER: &str = "process";

pub struct ProcessRuntime {
    root: PathBuf,
    /// Where containers' cgroups go, or why there are none.
    cgroups: Result<Cgroups, super::cgroup::CgroupError>,
    /// Whether containers can have volumes, or why not.
    mounts: Result<(), mounts::MountError>,
    /// Containers this driver started and whose exit it has yet to record: between the
    /// process ending and its `exit` file being written, such a container still reads as
    /// running (not as ended unwatched, which is exit code 255).
    waiting: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// The node's pod network, once the agent has one and this driver can join pods to it.
    podnet: std::sync::OnceLock<Arc<PodNet>>,
}

fn io(operation: &'static str) -> impl FnOnce(std::io::Error) -> RuntimeError {
    move |e| RuntimeError::Driver {
        driver: DRIVER,
        operation,
        source: Box::new(e),
    }
}

/// `/proc/<pid>/stat` field 22: when the process started, in ticks since boot (tells a live
/// process from a later one that reuses its pid).
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Is the process that started at `ticks` still running? A zombie (dead, not yet reaped by
/// whoever inherited it) is not.
fn alive(pid: u32, ticks: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let mut fields = stat
        .rsplit_once(')')
        .map(|(_, a)| a)
        .unwrap_or("")
        .split_whitespace();
    let state = fields.next();
    let started = fields.nth(18).and_then(|t| t.parse::<u64>().ok());
    !matches!(state, Some("Z" | "X")) && started == Some(ticks)
}

/// Send `sig` to the whole process group `pgid` with kill(2) (not a `kill` program: the
/// host's may not take the same arguments, busybox's refuses `--`).
fn signal(pgid: u32, sig: Signal) {
    if let Ok(pgid) = i32::try_from(pgid) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), sig);
    }
}

fn safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl ProcessRuntime {
    pub fn new(data_dir: &Path) -> Result<Self, RuntimeError> {
        let root = data_dir.join("process");
        std::fs::create_dir_all(root.join("pods")).map_err(io("create the state dir"))?;
        std::fs::create_dir_all(root.join("images")).map_err(io("create the images dir"))?;
        // One parent group per driver (per data dir), so agents sharing a host stay apart.
        let name = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            root.hash(&mut h);
            format!("berth-{:012x}", h.finish() & 0xffff_ffff_ffff)
        };
        let cgroups = Cgroups::detect(&name);
        if let Err(why) = &cgroups {
            tracing::warn!(why = %Chain(why), "process runtime: CPU and memory limits will not be enforced");
        }
        let mounts = mounts::probe();
        if let Err(why) = &mounts {
            tracing::warn!(why = %Chain(why), "process runtime: containers with volumes cannot start");
        }
        Ok(ProcessRuntime {
            root,
            cgroups,
            mounts,
            waiting: Arc::default(),
            podnet: Default::default(),
        })
    }

    /// The cgroup of container `id`, if containers get cgroups here.
    fn group(&self, id: &str) -> Option<Group> {
        self.cgroups.as_ref().ok().map(|c| c.group(&safe(id)))
    }

    fn pod_dir(&self, uid: &str) -> PathBuf {
        self.root.join("pods").join(safe(uid))
    }

    /// Where pod `uid`'s namespaces are kept (when it has its own).
    fn ns_dir(&self, uid: &str) -> PathBuf {
        self.pod_dir(uid).join("ns")
    }

    /// Pod `uid`'s namespaces, open for a child to join; `None` for a pod on the host's.
    fn namespaces(&self, uid: &str) -> Result<Option<podns::Opened>, std::io::Error> {
        let dir = self.ns_dir(uid);
        if !podns::net_path(&dir).exists() {
            return Ok(None);
        }
        podns::opened(&dir).map(Some)
    }

    /// The sandbox of the pod described by `sandbox.json`.
    fn sandbox_of(st: &Value) -> Option<ObservedSandbox> {
        let uid = st["podUid"].as_str()?;
        Some(ObservedSandbox {
            id: format!("{uid}~sandbox"),
            pod_uid: uid.to_string(),
            // Recorded at creation; none for a host-network pod (the agent fills in the
            // node's); records from before pod networks: the host's.
            ip: match &st["ip"] {
                Value::String(ip) => Some(ip.clone()),
                Value::Null if st["hostNetwork"] == true => None,
                _ => Some("127.0.0.1".into()),
            },
            running: true,
        })
    }

    /// The directory of a container id (`<pod uid>~<name>~<attempt>`).
    fn container_dir(&self, id: &str) -> Option<PathBuf> {
        let (uid, rest) = id.split_once('~')?;
        Some(self.pod_dir(uid).join("containers").join(safe(rest)))
    }

    fn image_bin(&self, image: &str) -> Option<Option<PathBuf>> {
        if image == "host" {
            return Some(None);
        }
        let dir = self.root.join("images").join(safe(image)).join("bin");
        dir.is_dir().then_some(Some(dir))
    }

    fn read_state(dir: &Path) -> Option<Value> {
        serde_json::from_slice(&std::fs::read(dir.join("state.json")).ok()?).ok()
    }

    fn observe(&self, dir: &Path) -> Option<ObservedContainer> {
        let st = Self::read_state(dir)?;
        let id = st["id"].as_str()?;
        let started_at: Timestamp = st["startedAt"].as_str()?.parse().ok()?;
        let pid = st["pid"].as_u64()? as u32;
        let ticks = st["ticks"].as_u64()?;
        let exit: Option<Value> = std::fs::read(dir.join("exit"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let state = match exit {
            Some(e) => State::Exited {
                exit_code: e["code"].as_i64().unwrap_or(255),
                started_at: Some(started_at),
                finished_at: e["at"]
                    .as_str()
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(started_at),
                oom_killed: e["oom"].as_bool().unwrap_or(false),
            },
            None if alive(pid, ticks) || self.waiting.lock().unwrap().contains(id) => {
                State::Running { started_at }
            }
            None => State::Exited {
                exit_code: 255,
                started_at: Some(started_at),
                finished_at: started_at,
                oom_killed: false,
            },
        };
        Some(ObservedContainer {
            id: id.to_string(),
            pod_uid: st["podUid"].as_str()?.to_string(),
            name: st["name"].as_str()?.to_string(),
            attempt: st["attempt"].as_u64()? as u32,
            image: st["image"].as_str().unwrap_or_default().to_string(),
            image_id: st["image"].as_str().unwrap_or_default().to_string(),
            state,
        })
    }

    /// The environment and working directory a container (and an exec in it) runs with.
    fn environment(&self, st: &Value) -> (Vec<(String, String)>, PathBuf) {
        let mut path = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into());
        if let Some(Some(bin)) = st["image"].as_str().and_then(|i| self.image_bin(i)) {
            path = format!("{}:{path}", bin.display());
        }
        let mut env = vec![("PATH".to_string(), path)];
        for pair in st["env"].as_array().into_iter().flatten() {
            if let (Some(k), Some(v)) = (pair[0].as_str(), pair[1].as_str()) {
                env.push((k.into(), v.into()));
            }
        }
        let work = PathBuf::from(st["workDir"].as_str().unwrap_or("/"));
        env.push(("HOME".into(), work.display().to_string()));
        (env, work)
    }
}

#[async_trait::async_trait]
impl Runtime for ProcessRuntime {
    fn name(&self) -> &'static str {
        DRIVER
    }

    fn version(&self) -> String {
        "process://berth".into()
    }

    fn unenforced_limits(&self) -> Option<String> {
        self.cgroups.as_ref().err().map(|e| Chain(e).to_string())
    }

    async fn ensure_image(&self, image: &str, policy: PullPolicy) -> Result<(), RuntimeError> {
        if self.image_bin(image).is_some() {
            return Ok(());
        }
        let message = format!(
            "the process runtime runs programs from the host: use image \"host\", or put the \
             programs in {}/bin",
            self.root.join("images").join(safe(image)).display()
        );
        Err(match policy {
            PullPolicy::Never => RuntimeError::ImageNeverPull {
                image: image.into(),
            },
            _ => RuntimeError::ImagePull {
                image: image.into(),
                message,
            },
        })
    }

    async fn create_sandbox(&self, pod: &PodRef) -> Result<ObservedSandbox, RuntimeError> {
        let dir = self.pod_dir(&pod.uid);
        std::fs::create_dir_all(dir.join("containers")).map_err(io("create the pod dir"))?;
        let ip = match (self.podnet.get(), pod.host_network) {
            (_, true) => None,
            (None, false) => Some("127.0.0.1".to_string()),
            (Some(net), false) => {
                let ns = self.ns_dir(&pod.uid);
                let hostname = pod.hostname.as_deref().unwrap_or(&pod.name);
                podns::make(&ns, hostname).map_err(io("make the pod's namespaces"))?;
                let ip = net
                    .attach(&pod.uid, &podns::net_path(&ns))
                    .await
                    .map_err(|e| RuntimeError::Driver {
                        driver: DRIVER,
                        operation: "join the pod network",
                        source: Box::new(e),
                    })?;
                Some(ip.to_string())
            }
        };
        let st = json!({"podUid": pod.uid, "namespace": pod.namespace, "name": pod.name,
                        "ip": ip, "hostNetwork": pod.host_network});
        std::fs::write(dir.join("sandbox.json"), st.to_string())
            .map_err(io("write the pod state"))?;
        Ok(Self::sandbox_of(&st).expect("a pod uid"))
    }

    async fn start_container(
        &self,
        pod: &PodRef,
        _sandbox_id: &str,
        c: &ContainerConfig,
    ) -> Result<String, RuntimeError> {
        let start_err = |message: String| RuntimeError::Start {
            container: c.name.clone(),
            message,
        };
        let mut argv: Vec<String> = c.command.clone().unwrap_or_default();
        argv.extend(c.args.clone().unwrap_or_default());
        if argv.is_empty() {
            return Err(start_err(
                "the process runtime needs a command: there is no image entrypoint".into(),
            ));
        }
        if self.image_bin(&c.image).is_none() {
            return Err(start_err(format!(
                "image {:?} is not present for the process runtime",
                c.image
            )));
        }
        if let (false, Err(why)) = (c.mounts.is_empty(), &self.mounts) {
            return Err(start_err(format!(
                "cannot mount the container's volumes: {}",
                Chain(why)
            )));
        }
        let binds = Binds::prepare(&c.mounts)
            .map_err(|e| start_err(format!("preparing the volume mount points: {e}")))?;
        let namespaces = self
            .namespaces(&pod.uid)
            .map_err(|e| start_err(format!("opening the pod's namespaces: {e}")))?;
        let ns_fds = namespaces
            .as_ref()
            .map(podns::Opened::fds)
            .unwrap_or_default();
        let id = format!("{}~{}~{}", pod.uid, c.name, c.attempt);
        let dir = self.container_dir(&id).expect("a container id");
        let group = self.group(&id);
        if let Some(g) = &group {
            g.create(c.cpu_millis, c.memory_bytes)
                .map_err(|e| start_err(format!("creating the container's cgroup: {e}")))?;
        }
        let procs = group.as_ref().map(Group::procs_files).unwrap_or_default();
        let work = match &c.working_dir {
            Some(w) => PathBuf::from(w),
            None => dir.join("work"),
        };
        std::fs::create_dir_all(&work).map_err(io("create the working dir"))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("log"))
            .map_err(io("open the log"))?;
        let mut st = json!({
            "id": id, "podUid": pod.uid, "name": c.name, "attempt": c.attempt, "image": c.image,
            "env": c.env, "workDir": work, "volumes": !binds.is_empty(),
        });
        let (env, work) = self.environment(&st);
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .env_clear()
            .envs(env)
            .current_dir(&work)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().map_err(io("open the log"))?)
            .stderr(log)
            .process_group(0)
            .kill_on_drop(false);
        // SAFETY: the hook joins the cgroup and the pod's namespaces and mounts the volumes
        // with raw system calls only.
        unsafe {
            cmd.pre_exec(move || {
                cgroup::join(&procs)?;
                podns::join(&ns_fds)?;
                binds.apply()
            });
        }
        let mut child = cmd.spawn().map_err(|e| {
            if let Some(g) = &group {
                g.remove();
            }
            start_err(format!("exec {:?}: {e}", argv[0]))
        })?;
        drop(namespaces);
        let pid = child.id().unwrap_or(0);
        st["pid"] = json!(pid);
        st["ticks"] = json!(start_ticks(pid).unwrap_or(0));
        st["startedAt"] = json!(Timestamp::now().to_string());
        std::fs::write(dir.join("state.json"), st.to_string())
            .map_err(io("write the container state"))?;
        // Whoever started it records how it ended.
        self.waiting.lock().unwrap().insert(id.clone());
        let waiting = self.waiting.clone();
        let waited = id.clone();
        tokio::spawn(async move {
            if let Ok(status) = child.wait().await {
                use std::os::unix::process::ExitStatusExt;
                let code = status
                    .code()
                    .map(i64::from)
                    .or_else(|| status.signal().map(|s| 128 + s as i64))
                    .unwrap_or(255);
                let oom = code == 137 && group.is_some_and(|g| g.oom_kills() > 0);
                let exit = json!({"code": code, "oom": oom, "at": Timestamp::now().to_string()});
                let _ = std::fs::write(dir.join("exit"), exit.to_string());
            }
            waiting.lock().unwrap().remove(&waited);
        });
        Ok(id)
    }

    async fn list(&self) -> Result<Observed, RuntimeError> {
        let mut out = Observed::default();
        let Ok(pods) = std::fs::read_dir(self.root.join("pods")) else {
            return Ok(out);
        };
        for pod in pods.flatten() {
            let sandbox: Option<Value> = std::fs::read(pod.path().join("sandbox.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            if let Some(sb) = sandbox.as_ref().and_then(Self::sandbox_of) {
                out.sandboxes.push(sb);
            }
            let Ok(containers) = std::fs::read_dir(pod.path().join("containers")) else {
                continue;
            };
            for c in containers.flatten() {
                if let Some(o) = self.observe(&c.path()) {
                    out.containers.push(o);
                }
            }
        }
        Ok(out)
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        if id.ends_with("~sandbox") {
            return Ok(());
        }
        let Some(dir) = self.container_dir(id) else {
            return Ok(());
        };
        let Some(st) = Self::read_state(&dir) else {
            return Ok(());
        };
        let pid = st["pid"].as_u64().unwrap_or(0) as u32;
        let ticks = st["ticks"].as_u64().unwrap_or(0);
        if pid == 0 || !alive(pid, ticks) {
            return Ok(());
        }
        signal(pid, Signal::SIGTERM);
        let deadline = std::time::Instant::now() + grace;
        while alive(pid, ticks) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let group = self.group(id);
        if alive(pid, ticks) {
            signal(pid, Signal::SIGKILL);
            for _ in 0..100 {
                if !alive(pid, ticks) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        // What left the process group (a daemon that called setsid) is still in the cgroup.
        for stray in group.iter().flat_map(Group::pids) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(stray), Signal::SIGKILL);
        }
        // A killed process stays in the group until it has exited: wait for that (a loaded
        // host may take a moment), so a stopped container's group is empty.
        for _ in 0..100 {
            if group.iter().all(|g| g.pids().is_empty()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Give the waiting task a moment to record the exit.
        for _ in 0..50 {
            if dir.join("exit").exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if !dir.join("exit").exists() {
            let exit = json!({"code": 137, "at": Timestamp::now().to_string()});
            let _ = std::fs::write(dir.join("exit"), exit.to_string());
        }
        Ok(())
    }

    async fn release_network(&self, uid: &str) -> Result<(), RuntimeError> {
        podns::remove(&self.ns_dir(uid));
        if let Some(net) = self.podnet.get() {
            net.release(uid);
        }
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        if let Some(uid) = id.strip_suffix("~sandbox") {
            podns::remove(&self.ns_dir(uid));
            if let Some(net) = self.podnet.get() {
                net.release(uid);
            }
            let dir = self.pod_dir(uid);
            return match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(io("remove the pod dir")(e))
                }
                _ => Ok(()),
            };
        }
        if let Some(g) = self.group(id) {
            g.remove();
        }
        if let Some(dir) = self.container_dir(id) {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    return Err(io("remove the container dir")(e));
                }
            }
        }
        Ok(())
    }

    async fn logs(&self, id: &str, opts: &LogOptions) -> Result<LogStream, RuntimeError> {
        let dir = self
            .container_dir(id)
            .filter(|d| d.join("log").exists())
            .ok_or_else(|| RuntimeError::Start {
                container: id.into(),
                message: "no such container".into(),
            })?;
        let text = std::fs::read(dir.join("log")).map_err(io("read the log"))?;
        let mut start = 0;
        if let Some(n) = opts.tail {
            let ends: Vec<usize> = text
                .iter()
                .enumerate()
                .filter(|(_, b)| **b == b'\n')
                .map(|(i, _)| i + 1)
                .collect();
            let lines = ends.len();
            start = if n as usize >= lines {
                0
            } else {
                ends[lines - n as usize - 1]
            };
        }
        let first = bytes::Bytes::copy_from_slice(&text[start..]);
        if !opts.follow {
            return Ok(futures::stream::iter([Ok(first)]).boxed());
        }
        // Follow: poll the file for what was appended until the container has exited.
        let rest = futures::stream::unfold((false, text.len()), move |(done, offset)| {
            let dir = dir.clone();
            async move {
                if done {
                    return None;
                }
                loop {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let exited = dir.join("exit").exists();
                    let data = std::fs::read(dir.join("log")).unwrap_or_default();
                    if data.len() > offset {
                        let chunk = bytes::Bytes::copy_from_slice(&data[offset..]);
                        return Some((Ok(chunk), (exited, data.len())));
                    }
                    if exited || !dir.exists() {
                        return None;
                    }
                }
            }
        });
        Ok(futures::stream::iter([Ok(first)]).chain(rest).boxed())
    }

    async fn stats(&self, id: &str) -> Result<ContainerStats, RuntimeError> {
        let st = self
            .container_dir(id)
            .and_then(|d| Self::read_state(&d))
            .ok_or_else(|| RuntimeError::Start {
                container: id.into(),
                message: "no such container".into(),
            })?;
        if let Some((cpu_nanos, working_set_bytes)) = self.group(id).and_then(|g| g.usage()) {
            return Ok(ContainerStats {
                cpu_nanos,
                working_set_bytes,
                nano_cores: None,
            });
        }
        let pid = st["pid"].as_u64().unwrap_or(0);
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let fields: Vec<u64> = stat
            .rsplit_once(')')
            .map(|(_, a)| {
                a.split_whitespace()
                    .filter_map(|f| f.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        // utime and stime (fields 14 and 15 of the line, in 10 ms ticks).
        let ticks = fields.get(10).copied().unwrap_or(0) + fields.get(11).copied().unwrap_or(0);
        let rss_kib = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        Ok(ContainerStats {
            cpu_nanos: ticks * 10_000_000,
            working_set_bytes: rss_kib * 1024,
            nano_cores: None,
        })
    }

    async fn exec(
        &self,
        id: &str,
        command: &[String],
        _tty: bool,
        stdin: bool,
    ) -> Result<ExecSession, RuntimeError> {
        let st = self
            .container_dir(id)
            .and_then(|d| Self::read_state(&d))
            .ok_or_else(|| RuntimeError::Start {
                container: id.into(),
                message: "no such container".into(),
            })?;
        let (env, work) = self.environment(&st);
        let Some((program, args)) = command.split_first() else {
            return Err(RuntimeError::Start {
                container: id.into(),
                message: "an empty command".into(),
            });
        };
        // An exec runs where the container does: its cgroup, its pod's namespaces and its
        // mount namespace.
        let procs = self.group(id).map(|g| g.procs_files()).unwrap_or_default();
        let ns = (st["volumes"].as_bool() == Some(true))
            .then(|| mounts::namespace_of(st["pid"].as_u64().unwrap_or(0) as u32));
        let namespaces = st["podUid"]
            .as_str()
            .map(|uid| self.namespaces(uid))
            .transpose()
            .map_err(|e| RuntimeError::Start {
                container: id.into(),
                message: format!("opening the pod's namespaces: {e}"),
            })?
            .flatten();
        let ns_fds = namespaces
            .as_ref()
            .map(podns::Opened::fds)
            .unwrap_or_default();
        let mut cmd = tokio::process::Command::new(program);
        // SAFETY: the hook makes raw system calls only.
        unsafe {
            cmd.pre_exec(move || {
                cgroup::join(&procs)?;
                podns::join(&ns_fds)?;
                ns.as_ref().map_or(Ok(()), mounts::enter)
            });
        }
        let mut child = cmd
            .args(args)
            .env_clear()
            .envs(env)
            .current_dir(work)
            .stdin(if stdin {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| RuntimeError::Start {
                container: id.into(),
                message: format!("exec {program:?}: {e}"),
            })?;
        let lines = |r: Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>, ch: Channel| {
            let reader = r.expect("piped");
            super::chunks(reader).map(move |b| b.map(|b| (ch, b)).map_err(io("read exec output")))
        };
        let out = lines(
            child.stdout.take().map(|s| Box::new(s) as _),
            Channel::Stdout,
        );
        let err = lines(
            child.stderr.take().map(|s| Box::new(s) as _),
            Channel::Stderr,
        );
        let input = child
            .stdin
            .take()
            .map(|i| Box::pin(i) as std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>);
        let child = Arc::new(tokio::sync::Mutex::new(child));
        let exit = async move {
            let status = child
                .lock()
                .await
                .wait()
                .await
                .map_err(io("wait for exec"))?;
            Ok(status.code().map(i64::from).unwrap_or(255))
        }
        .boxed();
        Ok(ExecSession {
            output: futures::stream::select(out, err).boxed(),
            input,
            resize: Box::new(|_, _| futures::future::ready(()).boxed()),
            exit,
        })
    }

    async fn use_pod_network(&self, net: Arc<PodNet>) -> Result<(), String> {
        if let Err(why) = &self.mounts {
            return Err(format!("pod namespaces cannot be kept: {}", Chain(why)));
        }
        podns::probe().map_err(|e| format!("pod namespaces cannot be made: {e}"))?;
        let _ = self.podnet.set(net);
        Ok(())
    }

    fn mounts_pod_files(&self) -> bool {
        self.mounts.is_ok()
    }

    async fn net_namespace(&self, sandbox: &str) -> Result<Option<PathBuf>, RuntimeError> {
        let uid = sandbox.strip_suffix("~sandbox").unwrap_or(sandbox);
        let path = podns::net_path(&self.ns_dir(uid));
        Ok(path.exists().then_some(path))
    }

    async fn exec_status(&self, id: &str, command: &[String]) -> Result<i64, RuntimeError> {
        let session = self.exec(id, command, false, false).await?;
        session.output.for_each(|_| async {}).await;
        session.exit.await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str, command: &[&str]) -> ContainerConfig {
        ContainerConfig {
            name: name.into(),
            image: "host".into(),
            command: Some(command.iter().map(|s| s.to_string()).collect()),
            args: None,
            env: vec![("GREETING".into(), "hi".into())],
            mounts: vec![],
            working_dir: None,
            cpu_millis: None,
            memory_bytes: None,
            pull_policy: PullPolicy::IfNotPresent,
            attempt: 0,
            stdio: Default::default(),
        }
    }

    fn pod(uid: &str) -> PodRef {
        PodRef {
            uid: uid.into(),
            namespace: "default".into(),
            name: uid.into(),
            host_ports: vec![],
            host_network: false,
            hostname: None,
        }
    }

    /// A driver that must enforce limits: the limit tests are meaningless without cgroups.
    fn limited_runtime(dir: &Path) -> ProcessRuntime {
        let rt = ProcessRuntime::new(dir).unwrap();
        if let Some(why) = rt.unenforced_limits() {
            panic!("this test needs a writable cgroup hierarchy (run the tests as root): {why}");
        }
        rt
    }

    #[tokio::test]
    async fn a_container_over_its_memory_limit_is_oom_killed() {
        let dir = tempfile::tempdir().unwrap();
        let rt = limited_runtime(dir.path());
        let sb = rt.create_sandbox(&pod("uid-oom")).await.unwrap();
        // tail keeps everything it reads until a newline: /dev/zero never gives one.
        let mut c = config("hog", &["tail", "/dev/zero"]);
        c.memory_bytes = Some(32 << 20);
        let id = rt
            .start_container(&pod("uid-oom"), &sb.id, &c)
            .await
            .unwrap();
        let state = crate::runtime::conformance::wait_exit(&rt, &id).await;
        assert!(
            matches!(
                state,
                State::Exited {
                    exit_code: 137,
                    oom_killed: true,
                    ..
                }
            ),
            "{state:?}"
        );
        rt.remove(&id).await.unwrap();
        assert!(rt.group(&id).unwrap().pids().is_empty());
    }

    #[tokio::test]
    async fn a_cpu_limit_caps_the_container_and_stats_count_all_its_processes() {
        let dir = tempfile::tempdir().unwrap();
        let rt = limited_runtime(dir.path());
        let sb = rt.create_sandbox(&pod("uid-cpu")).await.unwrap();
        // Two busy children: unlimited they would take up to 2 CPUs.
        let mut c = config(
            "burn",
            &[
                "sh",
                "-c",
                "(while :; do :; done) & (while :; do :; done) & wait",
            ],
        );
        c.cpu_millis = Some(100);
        let id = rt
            .start_container(&pod("uid-cpu"), &sb.id, &c)
            .await
            .unwrap();
        let before = rt.stats(&id).await.unwrap().cpu_nanos;
        let t = std::time::Instant::now();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let used = rt.stats(&id).await.unwrap().cpu_nanos - before;
        let share = used as f64 / t.elapsed().as_nanos() as f64;
        // 0.1 CPU allowed; stats from the leading shell alone would read 0.
        assert!(share > 0.03 && share < 0.25, "used {share:.3} CPUs");
        rt.stop(&id, Duration::from_millis(100)).await.unwrap();
        assert!(
            rt.group(&id).unwrap().pids().is_empty(),
            "stop empties the cgroup"
        );
        rt.remove(&id).await.unwrap();
    }

    #[tokio::test]
    async fn stop_kills_what_left_the_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let rt = limited_runtime(dir.path());
        let sb = rt.create_sandbox(&pod("uid-stray")).await.unwrap();
        let pidfile = dir.path().join("stray.pid");
        let script = format!(
            "setsid sleep 300 & echo $! > {}; sleep 300",
            pidfile.display()
        );
        let id = rt
            .start_container(
                &pod("uid-stray"),
                &sb.id,
                &config("daemon", &["sh", "-c", &script]),
            )
            .await
            .unwrap();
        let mut stray = None;
        for _ in 0..100 {
            stray = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|p| p.trim().parse::<u32>().ok());
            if stray.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let stray = stray.expect("the stray's pid");
        let ticks = start_ticks(stray).expect("the stray runs");
        rt.stop(&id, Duration::from_millis(200)).await.unwrap();
        for _ in 0..50 {
            if !alive(stray, ticks) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            !alive(stray, ticks),
            "a process that left the group survived stop"
        );
        rt.remove(&id).await.unwrap();
    }

    #[tokio::test]
    async fn volumes_are_mounted_in_the_container_only() {
        let dir = tempfile::tempdir().unwrap();
        let rt = ProcessRuntime::new(dir.path()).unwrap();
        if let Err(why) = &rt.mounts {
            panic!(
                "this test needs mount namespaces (run the tests as root): {}",
                Chain(why)
            );
        }
        let volume = dir.path().join("volume");
        std::fs::create_dir_all(&volume).unwrap();
        std::fs::write(volume.join("hello"), "from the volume\n").unwrap();
        let (rw, ro) = (dir.path().join("mnt/rw"), dir.path().join("mnt/ro"));
        let script = format!(
            "cat {rw}/hello; echo written > {rw}/new; echo nope > {ro}/new || echo read-only; sleep 300",
            rw = rw.display(),
            ro = ro.display()
        );
        let mut c = config("vol", &["sh", "-c", &script]);
        let mount = |target: &Path, read_only| crate::runtime::Mount {
            host_path: volume.display().to_string(),
            container_path: target.display().to_string(),
            read_only,
        };
        c.mounts = vec![mount(&rw, false), mount(&ro, true)];
        let sb = rt.create_sandbox(&pod("uid-vol")).await.unwrap();
        let id = rt
            .start_container(&pod("uid-vol"), &sb.id, &c)
            .await
            .unwrap();
        let log_path = rt.container_dir(&id).unwrap().join("log");
        let mut log = String::new();
        for _ in 0..100 {
            log = std::fs::read_to_string(&log_path).unwrap_or_default();
            if log.contains("read-only") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(log.starts_with("from the volume\n"), "{log}");
        assert!(log.contains("read-only"), "{log}");
        assert_eq!(
            std::fs::read_to_string(volume.join("new")).unwrap(),
            "written\n"
        );
        // The host sees empty mount points, not the volume.
        assert!(!rw.join("hello").exists());
        // An exec sees what the container sees.
        let seen = format!("{}/hello", ro.display());
        assert_eq!(
            rt.exec_status(&id, &["test".into(), "-f".into(), seen])
                .await
                .unwrap(),
            0
        );
        rt.stop(&id, Duration::from_millis(100)).await.unwrap();
        rt.remove(&id).await.unwrap();
    }

    #[tokio::test]
    async fn process_passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let rt = ProcessRuntime::new(dir.path()).unwrap();
        let runs = config("runs", &["sleep", "300"]);
        let exits = config("exits", &["sh", "-c", "echo bye; exit 3"]);
        crate::runtime::conformance::check(&rt, "uid-process", runs, exits).await;
    }
}
