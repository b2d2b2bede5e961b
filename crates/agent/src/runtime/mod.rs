//! The `Runtime` trait every driver implements, and the types it speaks.
//!
//! A pod is a *sandbox* (the thing that owns the pod's network namespace) plus containers that
//! join it. Drivers label everything they create with the pod's uid, the container name and
//! the attempt number, so `list` can rebuild the agent's view after a restart (adoption).

pub mod cgroup;
pub mod conformance;
pub mod docker;
pub mod mock;
pub mod mounts;
pub mod podns;
pub mod process;

use std::time::Duration;

use jiff::Timestamp;

/// FNV-1a of `s`: a stable short name for something of the host's (a mount source, a
/// link's name).
pub(crate) fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Which pod a sandbox or container belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// Ports of the pod's containers published on the host (`hostPort`); the sandbox, which
    /// holds the network namespace, carries them.
    pub host_ports: Vec<HostPort>,
    /// The pod runs in the host's network namespace (`hostNetwork: true`).
    pub host_network: bool,
    /// The hostname the sandbox must have (a Kubernetes pod's `spec.hostname` or name);
    /// `None`: any (a container group, which may take a warm sandbox).
    pub hostname: Option<String>,
}

/// A container port published on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub container_port: u16,
    pub host_port: u16,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    /// Empty: every host address.
    pub host_ip: String,
}

/// `imagePullPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn parse(s: Option<&str>) -> PullPolicy {
        match s {
            Some("Never") => PullPolicy::Never,
            Some("Always") => PullPolicy::Always,
            _ => PullPolicy::IfNotPresent,
        }
    }
}

/// A host path mounted into a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub host_path: String,
    pub container_path: String,
    pub read_only: bool,
}

/// What to run in one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerConfig {
    pub name: String,
    pub image: String,
    /// Overrides the image's entrypoint when set (Kubernetes `command`).
    pub command: Option<Vec<String>>,
    /// Overrides the image's cmd when set (Kubernetes `args`).
    pub args: Option<Vec<String>>,
    pub env: Vec<(String, String)>,
    pub mounts: Vec<Mount>,
    pub working_dir: Option<String>,
    /// CPU limit in millicores.
    pub cpu_millis: Option<u64>,
    /// Memory limit in bytes.
    pub memory_bytes: Option<u64>,
    pub pull_policy: PullPolicy,
    /// 0 for the first run, +1 for each restart.
    pub attempt: u32,
    /// Whether the container keeps stdin open and has a terminal (for `kubectl attach`).
    pub stdio: Stdio,
}

/// A container's `stdin`, `stdinOnce` and `tty`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stdio {
    pub stdin: bool,
    pub stdin_once: bool,
    pub tty: bool,
}

/// A container's state as the runtime sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Created,
    Running {
        started_at: Timestamp,
    },
    Exited {
        exit_code: i64,
        started_at: Option<Timestamp>,
        finished_at: Timestamp,
        oom_killed: bool,
    },
}

/// A container found in the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedContainer {
    pub id: String,
    pub pod_uid: String,
    pub name: String,
    pub attempt: u32,
    pub image: String,
    pub image_id: String,
    pub state: State,
}

/// A sandbox found in the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedSandbox {
    pub id: String,
    pub pod_uid: String,
    pub ip: Option<String>,
    pub running: bool,
}

/// Everything this node's runtime holds for Berth.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub sandboxes: Vec<ObservedSandbox>,
    pub containers: Vec<ObservedContainer>,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The image is not on this node and the policy forbids pulling.
    #[error("container image {image:?} is not present with pull policy of Never")]
    ImageNeverPull { image: String },
    /// The image could not be pulled (Berth has no registry here).
    #[error("failed to pull image {image:?}: {message}")]
    ImagePull { image: String, message: String },
    /// What the container needs from outside its spec is missing (a ConfigMap, a Secret, a
    /// key, a volume).
    #[error("{message}")]
    Config { container: String, message: String },
    /// The container could not be created or started (bad command, ...).
    #[error("failed to start container {container:?}: {message}")]
    Start { container: String, message: String },
    #[error("{driver} driver: {operation} failed")]
    Driver {
        driver: &'static str,
        operation: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the {driver} driver does not support {what}")]
    NotSupported {
        driver: &'static str,
        what: &'static str,
    },
}

impl RuntimeError {
    /// The `waiting.reason` Kubernetes shows for this failure.
    pub fn reason(&self) -> &'static str {
        match self {
            RuntimeError::ImageNeverPull { .. } => "ErrImageNeverPull",
            RuntimeError::ImagePull { .. } => "ErrImagePull",
            RuntimeError::Start { .. } => "CreateContainerError",
            RuntimeError::Config { .. } => "CreateContainerConfigError",
            RuntimeError::Driver { .. } | RuntimeError::NotSupported { .. } => "RunContainerError",
        }
    }
}

/// What `kubectl logs` asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Keep streaming as the container writes.
    pub follow: bool,
    /// Only the last N lines.
    pub tail: Option<u64>,
    /// Only lines written at or after this Unix time (seconds).
    pub since: Option<i64>,
    /// Prefix each line with its RFC 3339 time.
    pub timestamps: bool,
}

/// The bytes of a reader as a stream of chunks, as they come; an error ends it.
pub fn chunks(
    r: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
) -> impl futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send {
    use tokio::io::AsyncReadExt;
    futures::stream::unfold(Some(r), |r| async move {
        let mut r = r?;
        let mut buf = vec![0u8; 8192];
        match r.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), Some(r)))
            }
            Err(e) => Some((Err(e), None)),
        }
    })
}

/// A container's output, stdout and stderr interleaved as written.
pub type LogStream = futures::stream::BoxStream<'static, Result<bytes::Bytes, RuntimeError>>;

/// A container's resource use, cumulative where the kernel counts that way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ContainerStats {
    /// CPU time used since the container started, in nanoseconds.
    pub cpu_nanos: u64,
    /// Memory in use that the kernel cannot drop: usage less inactive file cache.
    pub working_set_bytes: u64,
    /// CPU use now, in nanocores, where the driver reads a rate rather than a total (a
    /// container group's metrics); otherwise the caller divides two totals.
    pub nano_cores: Option<u64>,
}

/// A CPU sample: when, the cumulative CPU time, and the rate it gave.
type Sample = (jiff::Timestamp, u64, Option<u64>);

/// CPU rates from cumulative CPU times, sampled per key (a container id).
#[derive(Default)]
pub struct CpuRates {
    samples: std::sync::Mutex<std::collections::HashMap<String, Sample>>,
}

impl CpuRates {
    /// Start `key` at `cpu_nanos` now, so its first rate covers the time from here.
    pub fn seed(&self, key: &str, now: jiff::Timestamp, cpu_nanos: u64) {
        self.samples
            .lock()
            .expect("samples")
            .insert(key.to_string(), (now, cpu_nanos, None));
    }

    /// CPU use in nanocores since the previous sample of `key` (or since `since`, the first
    /// time), remembering this one. Samples less than a second apart are too noisy to divide:
    /// those get the rate last computed, and `None` when there is none yet (a container that
    /// has just started would otherwise report its own start-up as load).
    pub fn rate(
        &self,
        key: &str,
        now: jiff::Timestamp,
        cpu_nanos: u64,
        since: jiff::Timestamp,
    ) -> Option<u64> {
        let mut samples = self.samples.lock().expect("samples");
        let (t0, c0, last) = samples.get(key).copied().unwrap_or((since, 0, None));
        let dt = (now.as_nanosecond() - t0.as_nanosecond()).max(1) as u128;
        if dt < 1_000_000_000 {
            if last.is_none() && !samples.contains_key(key) {
                samples.insert(key.to_string(), (now, cpu_nanos, None));
            }
            return last;
        }
        let rate = (cpu_nanos.saturating_sub(c0) as u128 * 1_000_000_000 / dt) as u64;
        samples.insert(key.to_string(), (now, cpu_nanos, Some(rate)));
        Some(rate)
    }

    /// Forget the keys `keep` refuses.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.samples.lock().expect("samples").retain(|k, _| keep(k));
    }
}

/// Which stream a piece of exec output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Stdout,
    Stderr,
}

/// A command running in a container, attached: its output, its input (if asked for), a way
/// to resize its terminal, and its exit code once the output has ended.
pub struct ExecSession {
    pub output: futures::stream::BoxStream<'static, Result<(Channel, bytes::Bytes), RuntimeError>>,
    pub input: Option<std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>>,
    pub resize: Box<dyn Fn(u16, u16) -> futures::future::BoxFuture<'static, ()> + Send + Sync>,
    pub exit: futures::future::BoxFuture<'static, Result<i64, RuntimeError>>,
}

/// A container runtime driver.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// `docker`, `mock`, ...
    fn name(&self) -> &'static str;

    /// What the node reports as `containerRuntimeVersion`.
    fn version(&self) -> String;

    /// Why CPU and memory limits are not enforced on this node, if they are not.
    fn unenforced_limits(&self) -> Option<String> {
        None
    }

    /// Make sure `image` is on this node, as `policy` allows.
    async fn ensure_image(&self, image: &str, policy: PullPolicy) -> Result<(), RuntimeError>;

    /// Make sure `image` is where `pod` runs (a runtime over several hosts answers for the
    /// pod's host; a single node is the node).
    async fn ensure_image_for(
        &self,
        pod: &PodRef,
        image: &str,
        policy: PullPolicy,
    ) -> Result<(), RuntimeError> {
        let _ = pod;
        self.ensure_image(image, policy).await
    }

    /// Create and start the pod's sandbox.
    async fn create_sandbox(&self, pod: &PodRef) -> Result<ObservedSandbox, RuntimeError>;

    /// Create and start a container inside a sandbox; returns its id.
    async fn start_container(
        &self,
        pod: &PodRef,
        sandbox_id: &str,
        config: &ContainerConfig,
    ) -> Result<String, RuntimeError>;

    /// Everything Berth created on this node.
    async fn list(&self) -> Result<Observed, RuntimeError>;

    /// Stop a container or sandbox: SIGTERM, then SIGKILL after `grace`.
    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError>;

    /// Remove a stopped container or sandbox.
    async fn remove(&self, id: &str) -> Result<(), RuntimeError>;

    /// A finished pod's network (its namespace and address) goes back to the node, while its
    /// containers stay for their logs. Runtimes without a pod network have nothing to do.
    async fn release_network(&self, pod_uid: &str) -> Result<(), RuntimeError> {
        let _ = pod_uid;
        Ok(())
    }

    /// A container's output (a capability: drivers without it say `NotSupported`).
    async fn logs(&self, id: &str, opts: &LogOptions) -> Result<LogStream, RuntimeError> {
        let _ = (id, opts);
        Err(RuntimeError::NotSupported {
            driver: self.name(),
            what: "logs",
        })
    }

    /// The images this runtime holds, by name and tag (a capability: drivers without images
    /// say `NotSupported`).
    async fn images(&self) -> Result<Vec<String>, RuntimeError> {
        Err(RuntimeError::NotSupported {
            driver: self.name(),
            what: "listing images",
        })
    }

    /// A running container's CPU and memory use.
    async fn stats(&self, id: &str) -> Result<ContainerStats, RuntimeError> {
        let _ = id;
        Err(RuntimeError::NotSupported {
            driver: self.name(),
            what: "stats",
        })
    }

    /// Run `command` in a running container, attached (`kubectl exec`).
    async fn exec(
        &self,
        id: &str,
        command: &[String],
        tty: bool,
        stdin: bool,
    ) -> Result<ExecSession, RuntimeError> {
        let _ = (id, command, tty, stdin);
        Err(RuntimeError::NotSupported {
            driver: self.name(),
            what: "exec",
        })
    }

    /// Attach to a running container's own stdio (`kubectl attach`, `kubectl run -i`): its
    /// output from now on, its stdin where it keeps one open. The session's exit is 0: an
    /// attach reports no exit code.
    async fn attach(&self, id: &str, tty: bool, stdin: bool) -> Result<ExecSession, RuntimeError> {
        let _ = (id, tty, stdin);
        Err(RuntimeError::NotSupported {
            driver: self.name(),
            what: "attach",
        })
    }

    /// The network namespace file of a sandbox, for port-forwarding into it; `None` where
    /// the pod shares the agent's (a process pod without a network of its own).
    async fn net_namespace(
        &self,
        sandbox: &str,
    ) -> Result<Option<std::path::PathBuf>, RuntimeError> {
        let _ = sandbox;
        Err(RuntimeError::NotSupported {
            driver: self.name(),
            what: "port-forward",
        })
    }

    /// Background upkeep between sync passes (the Docker driver refills its warm pool).
    async fn maintain(&self) {}

    /// Put pods on the node's pod network from now on; where the driver cannot, why not
    /// (its pods keep a network of their own).
    async fn use_pod_network(
        &self,
        net: std::sync::Arc<crate::net::podnet::PodNet>,
    ) -> Result<(), String> {
        let _ = net;
        Err(format!("the {} runtime has no pod network", self.name()))
    }

    /// Whether files the agent writes for a pod (its resolv.conf and /etc/hosts) can be
    /// mounted into its containers.
    fn mounts_pod_files(&self) -> bool {
        false
    }

    /// Give back what `maintain` holds (the warm pool), on a clean shutdown.
    async fn release(&self) {}

    /// Run `command` in a running container and return its exit code (exec probes).
    async fn exec_status(&self, id: &str, command: &[String]) -> Result<i64, RuntimeError> {
        let _ = (id, command);
        Err(RuntimeError::NotSupported {
            driver: self.name(),
            what: "exec",
        })
    }
}
