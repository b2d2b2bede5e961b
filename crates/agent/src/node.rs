//! The node's own objects: its Node (capacity read from the host, conditions, addresses) and
//! its Lease in `kube-node-lease`, renewed on an interval.

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{json, Value};

/// What the host offers.
#[derive(Debug, Clone)]
pub struct Capacity {
    pub cpus: usize,
    pub memory_kib: u64,
    pub ephemeral_kib: u64,
    pub pods: u32,
}

impl Capacity {
    /// Read from this host: CPUs, `/proc/meminfo`, and the filesystem of `dir`.
    pub fn of_host(dir: &std::path::Path) -> Capacity {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let memory_kib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0);
        let ephemeral_kib = disk_kib(dir).unwrap_or(0);
        Capacity {
            cpus,
            memory_kib,
            ephemeral_kib,
            pods: 110,
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "cpu": self.cpus.to_string(),
            "memory": format!("{}Ki", self.memory_kib),
            "ephemeral-storage": format!("{}Ki", self.ephemeral_kib),
            "pods": self.pods.to_string(),
        })
    }
}

/// Size and available space of the filesystem holding `dir`, in KiB.
fn df_kib(dir: &std::path::Path) -> Option<(u64, u64)> {
    // `df -k` keeps this free of unsafe statvfs calls.
    let out = std::process::Command::new("df")
        .arg("-Pk")
        .arg(dir)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<u64> = text
        .lines()
        .nth(1)?
        .split_whitespace()
        .skip(1)
        .take(3)
        .filter_map(|f| f.parse().ok())
        .collect();
    Some((*fields.first()?, *fields.get(2)?))
}

fn disk_kib(dir: &std::path::Path) -> Option<u64> {
    df_kib(dir).map(|(size, _)| size)
}

/// The host under pressure, judged by the kubelet's default hard eviction thresholds:
/// less than 100Mi of memory available, less than 10% of the data dir's filesystem free,
/// fewer than 5% of process ids left.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pressure {
    pub memory: Option<String>,
    pub disk: Option<String>,
    pub pids: Option<String>,
}

impl Pressure {
    pub fn of_host(dir: &std::path::Path) -> Pressure {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let available_kib = meminfo
            .lines()
            .find(|l| l.starts_with("MemAvailable:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok());
        let memory = available_kib
            .filter(|kib| *kib < 100 * 1024)
            .map(|kib| format!("only {kib}Ki of memory available (threshold 100Mi)"));
        let disk = df_kib(dir)
            .filter(|(size, avail)| *size > 0 && avail * 10 < *size)
            .map(|(size, avail)| {
                format!("only {avail}Ki of {size}Ki free on the node filesystem (threshold 10%)")
            });
        let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(u64::MAX);
        let processes = std::fs::read_dir("/proc")
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .bytes()
                            .all(|b| b.is_ascii_digit())
                    })
                    .count() as u64
            })
            .unwrap_or(0);
        let pids = (processes * 20 > pid_max.saturating_mul(19))
            .then(|| format!("{processes} of {pid_max} process ids in use (threshold 95%)"));
        Pressure { memory, disk, pids }
    }
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "Linux".into())
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// What a node reports of itself: fixed at start but for its pressure (read at each report)
/// and its pod network (known once made, or known not to be).
#[derive(Clone)]
pub struct Report {
    pub cap: Capacity,
    pub data_dir: std::path::PathBuf,
    pub address: String,
    /// The agent's HTTPS port.
    pub port: u16,
    pub name: String,
    pub runtime_version: String,
    /// Why the runtime cannot enforce limits here, if it cannot.
    pub unenforced_limits: Option<String>,
    /// What pods get of the pod network, or why they keep the runtime's own.
    pub pod_network: std::sync::Arc<std::sync::Mutex<Option<Result<String, String>>>>,
}

impl Report {
    /// The Node's status now.
    pub fn status(&self) -> Value {
        let pod_network = self.pod_network.lock().expect("pod network").clone();
        node_status(
            self,
            &Pressure::of_host(&self.data_dir),
            pod_network.as_ref(),
        )
    }
}

/// The Node's status: conditions, capacity, addresses, node info.
fn node_status(
    r: &Report,
    pressure: &Pressure,
    pod_network: Option<&Result<String, String>>,
) -> Value {
    let (cap, address, port, name) = (&r.cap, &r.address, r.port, &r.name);
    let (runtime_version, unenforced_limits) = (&r.runtime_version, r.unenforced_limits.as_deref());
    let t = berth_core::kube_time(Timestamp::now());
    let cond = |ty: &str, status: &str, reason: &str, message: &str| {
        json!({"type": ty, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": t, "lastTransitionTime": t})
    };
    let mut status = json!({
        "capacity": cap.to_json(),
        "allocatable": cap.to_json(),
        "conditions": [
            match &pressure.memory {
                Some(why) => cond("MemoryPressure", "True", "KubeletHasInsufficientMemory", why),
                None => cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "berth agent has sufficient memory available"),
            },
            match &pressure.disk {
                Some(why) => cond("DiskPressure", "True", "KubeletHasDiskPressure", why),
                None => cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "berth agent has no disk pressure"),
            },
            match &pressure.pids {
                Some(why) => cond("PIDPressure", "True", "KubeletHasInsufficientPID", why),
                None => cond("PIDPressure", "False", "KubeletHasSufficientPID", "berth agent has sufficient PID available"),
            },
            cond("Ready", "True", "KubeletReady", "berth agent is posting ready status"),
        ],
        "addresses": [
            {"type": "InternalIP", "address": address},
            {"type": "Hostname", "address": name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
        "nodeInfo": {
            "kubeletVersion": "v1.32.0-berth",
            "kubeProxyVersion": "",
            "containerRuntimeVersion": runtime_version,
            "osImage": os_image(),
            "kernelVersion": kernel(),
            "operatingSystem": "linux",
            "architecture": arch(),
            "machineID": "", "systemUUID": "", "bootID": "",
        },
    });
    // A runtime that cannot enforce limits here (the process runtime without a writable
    // cgroup hierarchy) says so where users look.
    if let Some(why) = unenforced_limits {
        if let Some(conds) = status["conditions"].as_array_mut() {
            conds.push(cond(
                "ResourceLimitsEnforced",
                "False",
                "NoWritableCgroups",
                &format!("CPU and memory limits are not enforced on this node: {why}"),
            ));
        }
    }
    // Whether pods get the pod network here (with what), or why they keep the runtime's own
    // (the process runtime's: the host's).
    if let (Some(net), Some(conds)) = (pod_network, status["conditions"].as_array_mut()) {
        conds.push(match net {
            Ok(what) => cond("PodNetwork", "True", "PodNetworkReady", what),
            Err(why) => cond(
                "PodNetwork",
                "False",
                "RuntimeNetworkOnly",
                &format!("pods keep the runtime's own network (the process runtime's: the host's): {why}"),
            ),
        });
    }
    status
}

/// Create the Node, or take over an existing one of the same name.
pub async fn register(
    client: &kube::Client,
    name: &str,
    runtime: &str,
    status: Value,
) -> Result<(), kube::Error> {
    let api: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": arch(),
            "berth.dev/runtime": runtime,
        }},
        "spec": {},
        "status": status.clone(),
    }))
    .expect("a valid Node");
    match api.create(&PostParams::default(), &node).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => api
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await
            .map(|_| ()),
        Err(e) => Err(e),
    }
}

/// Refresh the Node's conditions and heartbeat.
pub async fn heartbeat(
    client: &kube::Client,
    name: &str,
    status: Value,
) -> Result<(), kube::Error> {
    let api: Api<Node> = Api::all(client.clone());
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": status})),
    )
    .await
    .map(|_| ())
}

/// Create or renew the node's Lease.
pub async fn renew_lease(
    client: &kube::Client,
    name: &str,
    duration_secs: i32,
) -> Result<(), kube::Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let micro = berth_core::micro_time(Timestamp::now());
    let body = json!({"spec": {"holderIdentity": name, "leaseDurationSeconds": duration_secs, "renewTime": micro}});
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(body.clone()))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => {
            let mut lease = body;
            lease["metadata"] = json!({"name": name, "namespace": "kube-node-lease"});
            let lease: Lease = serde_json::from_value(lease).expect("a valid Lease");
            api.create(&PostParams::default(), &lease).await.map(|_| ())
        }
        Err(e) => Err(e),
    }
}
