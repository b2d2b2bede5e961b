//! The Docker Engine driver (bollard). Each pod gets a pause container that holds its network
//! namespace; the pod's containers join it (`--network container:<pause>`), so they reach
//! each other on `localhost`. The pause image is made on first use by importing the host's
//! static busybox (Debian's `busybox-static`): no registry is needed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures::{FutureExt, StreamExt};
use jiff::Timestamp;

use super::{
    ContainerConfig, Observed, ObservedContainer, ObservedSandbox, PodRef, PullPolicy, Runtime,
    RuntimeError, State,
};

const DRIVER: &str = "docker";
/// The image every sandbox runs.
pub const PAUSE_IMAGE: &str = "berth/pause:1";

const L_NODE: &str = "berth.node";
const L_POD_UID: &str = "berth.pod.uid";
const L_POD_NAME: &str = "berth.pod.name";
const L_POD_NS: &str = "berth.pod.namespace";
const L_CONTAINER: &str = "berth.container.name";
const L_ATTEMPT: &str = "berth.container.attempt";
const L_SANDBOX: &str = "berth.sandbox";
/// A sandbox made ahead of any pod (the warm pool). Labels cannot change after creation, so
/// a claimed one is renamed `claimed_<pod uid>_<node>` and `list` reads its pod from the name.
const L_WARM: &str = "berth.warm";
const CLAIMED: &str = "claimed_";

fn err(operation: &'static str) -> impl FnOnce(bollard::errors::Error) -> RuntimeError {
    move |e| RuntimeError::Driver {
        driver: DRIVER,
        operation,
        source: Box::new(e),
    }
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// What a warm sandbox's address is recorded under on the pod network until a pod claims it.
fn warm_key(id: &str) -> String {
    format!("warm-{id}")
}

/// A short random tag for warm sandbox names.
fn uuid_like() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    format!("{:012x}", h.finish() & 0xffff_ffff_ffff)
}

use super::fnv;

/// The output of an exec or attach, as channel chunks.
fn session_output(
    output: std::pin::Pin<
        Box<
            dyn futures::Stream<
                    Item = Result<bollard::container::LogOutput, bollard::errors::Error>,
                > + Send,
        >,
    >,
) -> futures::stream::BoxStream<'static, Result<(super::Channel, bytes::Bytes), RuntimeError>> {
    use bollard::container::LogOutput;
    output
        .filter_map(|chunk| async move {
            match chunk {
                Ok(LogOutput::StdErr { message }) => Some(Ok((super::Channel::Stderr, message))),
                Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                    Some(Ok((super::Channel::Stdout, message)))
                }
                Ok(LogOutput::StdIn { .. }) => None,
                Err(e) => Some(Err(err("read the container's output")(e))),
            }
        })
        .boxed()
}

/// A sandbox's address on its (first) network, from an inspect's or a listing's networks.
fn sandbox_ip(
    networks: Option<HashMap<String, bollard::models::EndpointSettings>>,
) -> Option<String> {
    networks?
        .into_values()
        .filter_map(|n| n.ip_address)
        .find(|ip| !ip.is_empty())
}

/// Containers inspected at once by a listing.
const INSPECTS_AT_ONCE: usize = 8;

/// A pod's container, from its labels and what the engine says of it.
fn container_of(
    id: String,
    pod_uid: String,
    labels: &HashMap<String, String>,
    image: Option<String>,
    image_id: Option<String>,
    state: State,
) -> ObservedContainer {
    ObservedContainer {
        id,
        pod_uid,
        name: labels.get(L_CONTAINER).cloned().unwrap_or_default(),
        attempt: labels
            .get(L_ATTEMPT)
            .and_then(|a| a.parse().ok())
            .unwrap_or(0),
        image: image.unwrap_or_default(),
        image_id: image_id.unwrap_or_default(),
        state,
    }
}

pub struct DockerRuntime {
    docker: Docker,
    node: String,
    version: String,
    /// Where to find a static busybox for the pause image.
    busybox: std::path::PathBuf,
    /// What `inspect` last said of each container, keyed by id, with the list state it was
    /// read in: `list` inspects again only containers whose state changed.
    inspected: std::sync::Mutex<HashMap<String, (String, Inspected)>>,
    /// Ready sandboxes no pod owns yet, and how many to keep (0: no pool).
    warm: std::sync::Mutex<Vec<ObservedSandbox>>,
    warm_target: usize,
    /// One refill at a time.
    filling: tokio::sync::Mutex<()>,
    /// Sandboxes and containers being started for pods now: a refill waits until there are
    /// none, so a burst's starts never share the engine with the pool's.
    starting: std::sync::atomic::AtomicUsize,
    /// The engine is on another host (reached over TCP): it cannot see this host's files, so
    /// mounts become Docker volumes filled from them (see [`DockerRuntime::connect_to`]).
    remote: bool,
    /// The node's pod network, once the agent has it: sandboxes are made without a network
    /// of Docker's and joined to it (see `crate::net::podnet`).
    podnet: std::sync::OnceLock<std::sync::Arc<crate::net::podnet::PodNet>>,
}

/// Counts one start for pods while it lasts.
struct Starting<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Starting<'a> {
    fn new(count: &'a std::sync::atomic::AtomicUsize) -> Self {
        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Starting(count)
    }
}

impl Drop for Starting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[derive(Debug, Clone)]
enum Inspected {
    Sandbox(ObservedSandbox),
    Container(ObservedContainer),
}

impl DockerRuntime {
    /// Connect to the local engine (negotiating the API version) for node `node`.
    pub async fn connect(node: &str) -> Result<Self, RuntimeError> {
        Self::connect_to(node, None).await
    }

    /// Connect to the engine at `url` (`unix:///path` or `tcp://host:port`; `None`: the
    /// local engine, as `DOCKER_HOST` or the default socket says). An engine reached over
    /// TCP is taken to be on another host: a container's mounts are copied into Docker
    /// volumes on that engine (one per pod and source, shared by the pod's containers, as an
    /// emptyDir is) instead of bound from this host's paths, which it cannot see.
    pub async fn connect_to(node: &str, url: Option<&str>) -> Result<Self, RuntimeError> {
        let (docker, remote) = match url {
            None => (Docker::connect_with_local_defaults(), false),
            Some(u) if u.starts_with("unix://") => (
                Docker::connect_with_unix(u, 120, bollard::API_DEFAULT_VERSION),
                false,
            ),
            Some(u) if u.starts_with("tcp://") || u.starts_with("http://") => (
                Docker::connect_with_http(u, 120, bollard::API_DEFAULT_VERSION),
                true,
            ),
            Some(u) => {
                return Err(RuntimeError::Driver {
                    driver: DRIVER,
                    operation: "connect",
                    source: format!(
                        "engine address {u:?} is neither unix:///path nor tcp://host:port"
                    )
                    .into(),
                })
            }
        };
        let docker = docker.map_err(err("connect"))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(err("negotiate API version"))?;
        let v = docker.version().await.map_err(err("read version"))?;
        let busybox = std::env::var_os("BERTH_BUSYBOX")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| "/bin/busybox".into());
        Ok(DockerRuntime {
            docker,
            node: node.to_string(),
            version: format!("docker://{}", v.version.unwrap_or_default()),
            busybox,
            inspected: Default::default(),
            warm: Default::default(),
            warm_target: 0,
            filling: Default::default(),
            starting: Default::default(),
            remote,
            podnet: Default::default(),
        })
    }

    /// The engine host's CPUs and memory in bytes.
    pub async fn capacity(&self) -> Result<(f64, u64), RuntimeError> {
        let info = self.docker.info().await.map_err(err("read engine info"))?;
        Ok((
            info.ncpu.unwrap_or(1) as f64,
            info.mem_total.unwrap_or(0).max(0) as u64,
        ))
    }

    /// Mounts on a remote engine: a labelled volume per pod and source directory, filled from
    /// the source (a file source is copied into the container instead). Returns the binds
    /// and the uploads still to make once the container exists (source, directory in it).
    async fn remote_mounts(
        &self,
        pod: &PodRef,
        c: &ContainerConfig,
    ) -> Result<(Vec<String>, Vec<(std::path::PathBuf, String)>), RuntimeError> {
        let mut binds = Vec::new();
        let mut uploads = Vec::new();
        for m in &c.mounts {
            let source = std::path::PathBuf::from(&m.host_path);
            if source.is_file() {
                let dir = std::path::Path::new(&m.container_path)
                    .parent()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "/".into());
                uploads.push((source, dir));
                continue;
            }
            let name = format!("berth_{}_{}_{:016x}", self.node, pod.uid, fnv(&m.host_path));
            let labels = HashMap::from([
                (L_NODE.to_string(), self.node.clone()),
                (L_POD_UID.to_string(), pod.uid.clone()),
            ]);
            self.docker
                .create_volume(bollard::models::VolumeCreateRequest {
                    name: Some(name.clone()),
                    labels: Some(labels),
                    ..Default::default()
                })
                .await
                .map_err(err("create volume"))?;
            self.fill_volume(&name, &source).await?;
            let mode = if m.read_only { ":ro" } else { "" };
            binds.push(format!("{name}:{}{mode}", m.container_path));
        }
        Ok((binds, uploads))
    }

    /// Copy `source` into volume `name` through a container that is created, never started,
    /// and removed (the engine refuses copies into a read-only mount of the app container).
    async fn fill_volume(&self, name: &str, source: &std::path::Path) -> Result<(), RuntimeError> {
        self.ensure_pause_image().await?;
        let body = ContainerCreateBody {
            image: Some(PAUSE_IMAGE.into()),
            cmd: Some(vec!["/busybox".into(), "true".into()]),
            labels: Some(HashMap::from([(L_NODE.to_string(), self.node.clone())])),
            host_config: Some(HostConfig {
                binds: Some(vec![format!("{name}:/volume")]),
                network_mode: Some("none".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let filler = self
            .docker
            .create_container(
                None::<bollard::query_parameters::CreateContainerOptions>,
                body,
            )
            .await
            .map_err(err("create volume filler"))?
            .id;
        let filled = self.upload(&filler, source, "/volume").await;
        let opts = RemoveContainerOptionsBuilder::new().force(true).build();
        let _ = self.docker.remove_container(&filler, Some(opts)).await;
        filled
    }

    /// Copy `source` (a directory's contents, or one file) into directory `dir` of a created
    /// container.
    async fn upload(
        &self,
        id: &str,
        source: &std::path::Path,
        dir: &str,
    ) -> Result<(), RuntimeError> {
        let packed = {
            let source = source.to_path_buf();
            tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
                let mut tar = tar::Builder::new(Vec::new());
                tar.follow_symlinks(true);
                if source.is_file() {
                    let name = source.file_name().unwrap_or_default().to_os_string();
                    tar.append_path_with_name(&source, name)?;
                } else if source.is_dir() {
                    tar.append_dir_all(".", &source)?;
                }
                tar.into_inner()
            })
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|r| r)
            .map_err(|e| RuntimeError::Driver {
                driver: DRIVER,
                operation: "pack volume contents",
                source: Box::new(e),
            })?
        };
        let opts = bollard::query_parameters::UploadToContainerOptionsBuilder::new()
            .path(dir)
            .build();
        self.docker
            .upload_to_container(id, Some(opts), bollard::body_full(packed.into()))
            .await
            .map_err(err("copy volume contents"))
    }

    /// Remove a pod's volumes on a remote engine once no container uses them (those still
    /// in use stay for the last container's removal).
    async fn remove_volumes(&self, uid: &str) {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{L_NODE}={}", self.node),
                format!("{L_POD_UID}={uid}"),
            ],
        )]);
        let opts = bollard::query_parameters::ListVolumesOptionsBuilder::new()
            .filters(&filters)
            .build();
        let Ok(found) = self.docker.list_volumes(Some(opts)).await else {
            return;
        };
        for v in found.volumes.unwrap_or_default() {
            let _ = self
                .docker
                .remove_volume(
                    &v.name,
                    None::<bollard::query_parameters::RemoveVolumeOptions>,
                )
                .await;
        }
    }

    /// Keep `n` sandboxes started ahead of need, so a pod without host ports skips making
    /// one (its network namespace is ready). Sandboxes left warm by an earlier run are
    /// adopted.
    pub async fn with_warm_pool(mut self, n: usize) -> Result<Self, RuntimeError> {
        self.warm_target = n;
        for c in self.spare_sandboxes().await? {
            let Some(id) = c.id else {
                continue;
            };
            if c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING) {
                let info = self
                    .docker
                    .inspect_container(
                        &id,
                        None::<bollard::query_parameters::InspectContainerOptions>,
                    )
                    .await
                    .map_err(err("inspect warm sandbox"))?;
                self.warm.lock().expect("warm").push(ObservedSandbox {
                    id,
                    pod_uid: String::new(),
                    ip: sandbox_ip(info.network_settings.and_then(|n| n.networks)),
                    running: true,
                });
            } else {
                let _ = Runtime::remove(&self, &id).await;
            }
        }
        Ok(self)
    }

    /// The warm sandboxes of this node in the engine, started or not, that no pod claimed.
    async fn spare_sandboxes(
        &self,
    ) -> Result<Vec<bollard::models::ContainerSummary>, RuntimeError> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{L_NODE}={}", self.node), format!("{L_WARM}=true")],
        )]);
        let opts = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let found = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(err("list warm sandboxes"))?;
        Ok(found
            .into_iter()
            .filter(|c| {
                !c.names
                    .iter()
                    .flatten()
                    .any(|n| n.trim_start_matches('/').starts_with(CLAIMED))
            })
            .collect())
    }

    /// Start a sandbox for `pod`, or (with `pod` None) a warm one for the pool.
    async fn new_sandbox(&self, pod: Option<&PodRef>) -> Result<ObservedSandbox, RuntimeError> {
        self.ensure_pause_image().await?;
        let host_network = pod.is_some_and(|p| p.host_network);
        let (labels, name, hostname, host_ports) = match pod {
            Some(pod) => {
                let mut labels = self.labels(pod);
                labels.insert(L_SANDBOX.into(), "true".into());
                let name = self.container_name(pod, "pause");
                (
                    labels,
                    name,
                    pod.hostname
                        .as_deref()
                        .unwrap_or(&pod.name)
                        .chars()
                        .take(63)
                        .collect(),
                    pod.host_ports.clone(),
                )
            }
            None => {
                let labels = HashMap::from([
                    (L_NODE.to_string(), self.node.clone()),
                    (L_SANDBOX.to_string(), "true".to_string()),
                    (L_WARM.to_string(), "true".to_string()),
                ]);
                let tag = uuid_like();
                let name = format!("berth_{}_warm_{tag}", self.node);
                (labels, name, format!("sandbox-{tag}"), vec![])
            }
        };
        let body = ContainerCreateBody {
            image: Some(PAUSE_IMAGE.into()),
            cmd: Some(vec!["/busybox".into(), "sleep".into(), "2147483647".into()]),
            // A host-network pod has the host's name.
            hostname: (!host_network).then_some(hostname),
            labels: Some(labels),
            exposed_ports: (!host_ports.is_empty()).then(|| {
                host_ports
                    .iter()
                    .map(|p| format!("{}/{}", p.container_port, p.protocol))
                    .collect()
            }),
            host_config: Some(HostConfig {
                ipc_mode: Some("shareable".into()),
                // On the pod network the agent links the sandbox itself; a pod with host
                // ports keeps Docker's bridge, which publishes them.
                network_mode: if host_network {
                    Some("host".to_string())
                } else {
                    (self.podnet.get().is_some() && host_ports.is_empty())
                        .then(|| "none".to_string())
                },
                port_bindings: (!host_ports.is_empty()).then(|| {
                    let mut map: HashMap<String, Option<Vec<bollard::models::PortBinding>>> =
                        HashMap::new();
                    for p in &host_ports {
                        map.entry(format!("{}/{}", p.container_port, p.protocol))
                            .or_default()
                            .get_or_insert_with(Vec::new)
                            .push(bollard::models::PortBinding {
                                host_ip: (!p.host_ip.is_empty()).then(|| p.host_ip.clone()),
                                host_port: Some(p.host_port.to_string()),
                            });
                    }
                    map
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let opts = CreateContainerOptionsBuilder::new().name(&name).build();
        let created = match self.docker.create_container(Some(opts), body).await {
            Ok(c) => c.id,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => {
                // Left over from a crash between create and start: start it.
                name.clone()
            }
            Err(e) => return Err(err("create sandbox")(e)),
        };
        self.docker
            .start_container(
                &created,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
            .map_err(err("start sandbox"))?;
        let info = self
            .docker
            .inspect_container(
                &created,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .map_err(err("inspect sandbox"))?;
        let mut ip = sandbox_ip(info.network_settings.and_then(|n| n.networks));
        let id = info.id.unwrap_or(created);
        if let (None, false) = (&ip, host_network) {
            if let Some(net) = self.podnet.get() {
                // A warm sandbox is linked now, under a key of its own, so that a pod that
                // claims it finds its network ready: in a burst, making a hundred links
                // takes seconds of the kernel's time.
                let key = pod.map(|p| p.uid.clone()).unwrap_or_else(|| warm_key(&id));
                let pid = info.state.as_ref().and_then(|s| s.pid).unwrap_or(0);
                match self.join_pod_network(net, &key, pid).await {
                    Ok(addr) => ip = Some(addr),
                    Err(e) => {
                        let _ = Runtime::remove(self, &id).await;
                        return Err(e);
                    }
                }
            }
        }
        Ok(ObservedSandbox {
            id,
            pod_uid: pod.map(|p| p.uid.clone()).unwrap_or_default(),
            ip,
            running: true,
        })
    }

    /// The init process of a running container, whose namespaces are the pod's.
    async fn init_pid(&self, id: &str) -> Result<i64, RuntimeError> {
        let info = self
            .docker
            .inspect_container(
                id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .map_err(err("inspect sandbox"))?;
        match info.state.and_then(|s| s.pid) {
            Some(pid) if pid > 0 => Ok(pid),
            _ => Err(RuntimeError::Driver {
                driver: DRIVER,
                operation: "inspect sandbox",
                source: format!("sandbox {id} is not running").into(),
            }),
        }
    }

    /// Link a started sandbox (its init at `pid`) into the pod network.
    async fn join_pod_network(
        &self,
        net: &crate::net::podnet::PodNet,
        uid: &str,
        pid: i64,
    ) -> Result<String, RuntimeError> {
        let netns = PathBuf::from(format!("/proc/{pid}/ns/net"));
        net.attach(uid, &netns)
            .await
            .map(|ip| ip.to_string())
            .map_err(|e| RuntimeError::Driver {
                driver: DRIVER,
                operation: "join the pod network",
                source: Box::new(e),
            })
    }

    /// Take a warm sandbox for `pod`: rename it after the pod, so `list` finds its owner.
    async fn claim(&self, pod: &PodRef) -> Option<ObservedSandbox> {
        // A warm sandbox carries a name of its own, which the containers that join it take
        // (Docker copies it at their start and cannot change it): a pod that needs a
        // hostname gets a sandbox made for it.
        if !pod.host_ports.is_empty() || pod.host_network || pod.hostname.is_some() {
            return None;
        }
        loop {
            // Taken from the pool and its address given to the pod under the pool's lock, so
            // a listing's clean-up of addresses finds the address under one of the two.
            let (mut sb, linked) = {
                let mut warm = self.warm.lock().expect("warm");
                let sb = warm.pop()?;
                let linked = self
                    .podnet
                    .get()
                    .and_then(|net| net.rekey(&warm_key(&sb.id), &pod.uid));
                (sb, linked)
            };
            let name = format!("{CLAIMED}{}_{}", pod.uid, self.node);
            let opts = bollard::query_parameters::RenameContainerOptionsBuilder::new()
                .name(&name)
                .build();
            if self.docker.rename_container(&sb.id, opts).await.is_err() {
                // Gone from under us, or the engine would not: the sandbox leaves the pool,
                // removed so that its address is free for another pod, and the next is tried.
                let gone = Runtime::remove(self, &sb.id).await.is_ok();
                if let (Some(net), Some(_), true) = (self.podnet.get(), linked, gone) {
                    net.release(&pod.uid);
                }
                continue;
            }
            sb.pod_uid = pod.uid.clone();
            let Some(net) = self.podnet.get() else {
                return Some(sb);
            };
            // A sandbox that died in the pool (no init) is of no use.
            let joined = match (linked, self.init_pid(&sb.id).await.ok()) {
                (Some(ip), Some(_)) => Ok(ip.to_string()),
                // Made before the node had its pod network: linked now.
                (None, Some(pid)) => self
                    .join_pod_network(net, &pod.uid, pid)
                    .await
                    .map_err(|e| berth_core::error::Chain(&e).to_string()),
                (_, None) => Err("it is not running".to_string()),
            };
            match joined {
                Ok(ip) => {
                    sb.ip = Some(ip);
                    return Some(sb);
                }
                Err(why) => {
                    tracing::warn!(sandbox = %sb.id, %why, "a warm sandbox could not be given to a pod; trying the next");
                    let _ = Runtime::remove(self, &sb.id).await;
                    net.release(&pod.uid);
                }
            }
        }
    }

    fn labels(&self, pod: &PodRef) -> HashMap<String, String> {
        HashMap::from([
            (L_NODE.to_string(), self.node.clone()),
            (L_POD_UID.to_string(), pod.uid.clone()),
            (L_POD_NAME.to_string(), pod.name.clone()),
            (L_POD_NS.to_string(), pod.namespace.clone()),
        ])
    }

    fn container_name(&self, pod: &PodRef, suffix: &str) -> String {
        let uid: String = pod.uid.chars().take(8).collect();
        format!(
            "berth_{}_{}_{}_{uid}_{suffix}",
            self.node, pod.namespace, pod.name
        )
    }

    /// Import the pause image from a static busybox if it is missing.
    async fn ensure_pause_image(&self) -> Result<(), RuntimeError> {
        if self.docker.inspect_image(PAUSE_IMAGE).await.is_ok() {
            return Ok(());
        }
        let binary = std::fs::read(&self.busybox).map_err(|e| RuntimeError::ImagePull {
            image: PAUSE_IMAGE.into(),
            message: format!(
                "the pause image is made from a static busybox at {} ({e}); install Debian's \
                 busybox-static or set BERTH_BUSYBOX",
                self.busybox.display()
            ),
        })?;
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(binary.len() as u64);
        header.set_mode(0o755);
        header.set_cksum();
        tar.append_data(&mut header, "busybox", &binary[..])
            .map_err(|e| RuntimeError::Driver {
                driver: DRIVER,
                operation: "build pause image",
                source: Box::new(e),
            })?;
        let body = tar.into_inner().map_err(|e| RuntimeError::Driver {
            driver: DRIVER,
            operation: "build pause image",
            source: Box::new(e),
        })?;
        let opts = CreateImageOptionsBuilder::new()
            .from_src("-")
            .repo("berth/pause")
            .tag("1")
            .build();
        let mut stream =
            self.docker
                .create_image(Some(opts), Some(bollard::body_full(body.into())), None);
        while let Some(item) = stream.next().await {
            item.map_err(err("import pause image"))?;
        }
        Ok(())
    }

    fn state_of(s: Option<&bollard::models::ContainerState>) -> State {
        let parse = |t: Option<&String>| t.and_then(|t| t.parse::<Timestamp>().ok());
        let Some(s) = s else { return State::Created };
        let started = parse(s.started_at.as_ref()).filter(|t| t.as_second() > 0);
        if s.running == Some(true) {
            return State::Running {
                started_at: started.unwrap_or_else(Timestamp::now),
            };
        }
        match parse(s.finished_at.as_ref()).filter(|t| t.as_second() > 0) {
            Some(finished_at) => State::Exited {
                exit_code: s.exit_code.unwrap_or(0),
                started_at: started,
                finished_at,
                oom_killed: s.oom_killed == Some(true),
            },
            None => State::Created,
        }
    }
}

#[async_trait::async_trait]
impl Runtime for DockerRuntime {
    fn name(&self) -> &'static str {
        DRIVER
    }

    fn version(&self) -> String {
        self.version.clone()
    }

    async fn ensure_image(&self, image: &str, policy: PullPolicy) -> Result<(), RuntimeError> {
        // The driver's own image is made here, not pulled, whatever the policy.
        if image == PAUSE_IMAGE {
            return self.ensure_pause_image().await;
        }
        let present = self.docker.inspect_image(image).await.is_ok();
        match (present, policy) {
            (true, PullPolicy::IfNotPresent | PullPolicy::Never) => Ok(()),
            (false, PullPolicy::Never) => Err(RuntimeError::ImageNeverPull {
                image: image.into(),
            }),
            (present, _) => {
                let opts = CreateImageOptionsBuilder::new().from_image(image).build();
                let mut stream = self.docker.create_image(Some(opts), None, None);
                let mut failure = None;
                while let Some(item) = stream.next().await {
                    if let Err(e) = item {
                        failure = Some(e.to_string());
                        break;
                    }
                }
                match failure {
                    None => Ok(()),
                    // `Always` with no registry reachable: a local copy serves. Berth runs
                    // without a registry, so this is the common case, not an error.
                    Some(_) if present => Ok(()),
                    Some(message) => Err(RuntimeError::ImagePull {
                        image: image.into(),
                        message,
                    }),
                }
            }
        }
    }

    async fn create_sandbox(&self, pod: &PodRef) -> Result<ObservedSandbox, RuntimeError> {
        let _busy = Starting::new(&self.starting);
        if let Some(sb) = self.claim(pod).await {
            return Ok(sb);
        }
        self.new_sandbox(Some(pod)).await
    }

    async fn release(&self) {
        let _one = self.filling.lock().await;
        let spare: Vec<ObservedSandbox> = std::mem::take(&mut *self.warm.lock().expect("warm"));
        let mut ids: std::collections::BTreeSet<String> =
            spare.into_iter().map(|sb| sb.id).collect();
        // And any a fill cut short (its task aborted) made but never counted.
        ids.extend(
            self.spare_sandboxes()
                .await
                .unwrap_or_default()
                .into_iter()
                .filter_map(|c| c.id),
        );
        for id in ids {
            let _ = Runtime::remove(self, &id).await;
            if let Some(net) = self.podnet.get() {
                net.release(&warm_key(&id));
            }
        }
    }

    async fn maintain(&self) {
        let Ok(_one) = self.filling.try_lock() else {
            return;
        };
        while self.warm.lock().expect("warm").len() < self.warm_target
            && self.starting.load(std::sync::atomic::Ordering::Relaxed) == 0
        {
            match self.new_sandbox(None).await {
                Ok(sb) => self.warm.lock().expect("warm").push(sb),
                Err(e) => {
                    tracing::warn!(error = %berth_core::error::Chain(&e), "could not start a warm sandbox");
                    return;
                }
            }
        }
    }

    async fn start_container(
        &self,
        pod: &PodRef,
        sandbox_id: &str,
        c: &ContainerConfig,
    ) -> Result<String, RuntimeError> {
        let _busy = Starting::new(&self.starting);
        let mut labels = self.labels(pod);
        labels.insert(L_CONTAINER.into(), c.name.clone());
        labels.insert(L_ATTEMPT.into(), c.attempt.to_string());
        let name = self.container_name(pod, &format!("{}_{}", c.name, c.attempt));
        let env: Vec<String> = c.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let ns = format!("container:{sandbox_id}");
        let (binds, uploads) = if self.remote {
            self.remote_mounts(pod, c).await?
        } else {
            let binds = c
                .mounts
                .iter()
                .map(|m| {
                    let mode = if m.read_only { ":ro" } else { "" };
                    format!("{}:{}{mode}", m.host_path, m.container_path)
                })
                .collect();
            (binds, Vec::new())
        };
        let body = ContainerCreateBody {
            image: Some(c.image.clone()),
            entrypoint: c.command.clone(),
            // With a command and no args, the image's cmd must not be appended.
            cmd: c
                .args
                .clone()
                .or_else(|| c.command.as_ref().map(|_| Vec::new())),
            env: Some(env),
            working_dir: c.working_dir.clone(),
            labels: Some(labels),
            // `stdin`/`tty` in the spec: kept open for `kubectl attach`.
            open_stdin: Some(c.stdio.stdin),
            stdin_once: Some(c.stdio.stdin_once),
            attach_stdin: Some(c.stdio.stdin),
            tty: Some(c.stdio.tty),
            host_config: Some(HostConfig {
                network_mode: Some(ns.clone()),
                ipc_mode: Some(ns),
                binds: Some(binds),
                memory: c.memory_bytes.map(|m| m as i64),
                nano_cpus: c.cpu_millis.map(|m| (m * 1_000_000) as i64),
                ..Default::default()
            }),
            ..Default::default()
        };
        let opts = CreateContainerOptionsBuilder::new().name(&name).build();
        let id = self
            .docker
            .create_container(Some(opts), body)
            .await
            .map_err(|e| RuntimeError::Start {
                container: c.name.clone(),
                message: e.to_string(),
            })?
            .id;
        for (source, dir) in &uploads {
            if let Err(e) = self.upload(&id, source, dir).await {
                let _ = self.remove(&id).await;
                return Err(e);
            }
        }
        if let Err(e) = self
            .docker
            .start_container(
                &id,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
        {
            // A container that never ran is no attempt: remove it so the next try starts clean.
            let _ = self.remove(&id).await;
            return Err(RuntimeError::Start {
                container: c.name.clone(),
                message: e.to_string(),
            });
        }
        Ok(id)
    }

    async fn list(&self) -> Result<Observed, RuntimeError> {
        let filters =
            HashMap::from([("label".to_string(), vec![format!("{L_NODE}={}", self.node)])]);
        let opts = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let summaries = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(err("list containers"))?;
        let mut observed = Observed::default();
        let mut seen = std::collections::HashSet::new();
        // What the listing alone cannot tell (a container's start and end times, its exit
        // code): inspected, several at a time, once per state a container is listed in.
        let mut to_inspect = Vec::new();
        for s in summaries {
            let Some(id) = s.id else { continue };
            let labels = s.labels.unwrap_or_default();
            let claimed = || {
                s.names.iter().flatten().find_map(|n| {
                    let rest = n.trim_start_matches('/').strip_prefix(CLAIMED)?;
                    rest.split('_').next().map(String::from)
                })
            };
            let uid = match labels.get(L_POD_UID) {
                Some(uid) => uid.clone(),
                // A warm sandbox belongs to no pod until claimed.
                None if labels.contains_key(L_WARM) => match claimed() {
                    Some(uid) => uid,
                    None => continue,
                },
                None => continue,
            };
            seen.insert(id.clone());
            let state_key = format!("{:?}", s.state);
            let cached = self
                .inspected
                .lock()
                .expect("inspect cache")
                .get(&id)
                .filter(|(k, _)| *k == state_key)
                .map(|(_, i)| i.clone());
            use bollard::models::ContainerSummaryStateEnum as Listed;
            let found = match cached {
                Some(found) => found,
                // A sandbox's state and address are in the listing.
                None if labels.contains_key(L_SANDBOX) => Inspected::Sandbox(ObservedSandbox {
                    id: id.clone(),
                    pod_uid: uid,
                    ip: sandbox_ip(s.network_settings.and_then(|n| n.networks)),
                    running: s.state == Some(Listed::RUNNING),
                }),
                // So is all of a container not yet started. Not inspected: the engine
                // answers an inspect only once a start under way has ended, and in a burst
                // many are.
                None if s.state == Some(Listed::CREATED) => Inspected::Container(container_of(
                    id.clone(),
                    uid,
                    &labels,
                    s.image,
                    s.image_id,
                    State::Created,
                )),
                None => {
                    to_inspect.push((id, uid, labels, s.image, state_key));
                    continue;
                }
            };
            match &found {
                Inspected::Sandbox(sb) => observed.sandboxes.push(sb.clone()),
                Inspected::Container(c) => observed.containers.push(c.clone()),
            }
            self.inspected
                .lock()
                .expect("inspect cache")
                .insert(id, (state_key, found));
        }
        let inspected: Vec<_> = futures::stream::iter(to_inspect)
            .map(|(id, uid, labels, image, state_key)| async move {
                let info = self
                    .docker
                    .inspect_container(
                        &id,
                        None::<bollard::query_parameters::InspectContainerOptions>,
                    )
                    .await;
                (id, uid, labels, image, state_key, info)
            })
            .buffered(INSPECTS_AT_ONCE)
            .collect()
            .await;
        for (id, uid, labels, image, state_key, info) in inspected {
            let info = match info {
                Ok(i) => i,
                Err(e) if is_not_found(&e) => continue,
                Err(e) => return Err(err("inspect container")(e)),
            };
            let state = Self::state_of(info.state.as_ref());
            let c = container_of(id.clone(), uid, &labels, image, info.image, state);
            observed.containers.push(c.clone());
            self.inspected
                .lock()
                .expect("inspect cache")
                .insert(id, (state_key, Inspected::Container(c)));
        }
        self.inspected
            .lock()
            .expect("inspect cache")
            .retain(|id, _| seen.contains(id));
        if let Some(net) = self.podnet.get() {
            for sb in observed.sandboxes.iter_mut().filter(|s| s.ip.is_none()) {
                sb.ip = net.ip_of(&sb.pod_uid).map(|ip| ip.to_string());
            }
            // The warm sandboxes' addresses are kept too.
            let warm: Vec<String> = self
                .warm
                .lock()
                .expect("warm")
                .iter()
                .map(|sb| warm_key(&sb.id))
                .collect();
            let live: std::collections::HashSet<&str> = observed
                .sandboxes
                .iter()
                .map(|s| s.pod_uid.as_str())
                .chain(warm.iter().map(String::as_str))
                .collect();
            net.retain(&live);
        }
        Ok(observed)
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let opts = StopContainerOptionsBuilder::new()
            .t(grace.as_secs() as i32)
            .build();
        match self.docker.stop_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(err("stop container")(e)),
        }
    }

    async fn logs(
        &self,
        id: &str,
        opts: &super::LogOptions,
    ) -> Result<super::LogStream, RuntimeError> {
        let options = bollard::query_parameters::LogsOptions {
            follow: opts.follow,
            stdout: true,
            stderr: true,
            since: opts.since.unwrap_or(0).clamp(0, i32::MAX as i64) as i32,
            until: 0,
            timestamps: opts.timestamps,
            tail: opts
                .tail
                .map(|n| n.to_string())
                .unwrap_or_else(|| "all".into()),
        };
        let stream = self
            .docker
            .logs(id, Some(options))
            .map(|chunk| chunk.map(|out| out.into_bytes()).map_err(err("read logs")))
            .boxed();
        Ok(stream)
    }

    async fn stats(&self, id: &str) -> Result<super::ContainerStats, RuntimeError> {
        let opts = bollard::query_parameters::StatsOptions {
            stream: false,
            one_shot: true,
        };
        let mut stream = self.docker.stats(id, Some(opts));
        let s = match stream.next().await {
            Some(r) => r.map_err(err("read stats"))?,
            None => {
                return Err(RuntimeError::Start {
                    container: id.into(),
                    message: "no stats for the container".into(),
                })
            }
        };
        let cpu_nanos = s
            .cpu_stats
            .as_ref()
            .and_then(|c| c.cpu_usage.as_ref())
            .and_then(|u| u.total_usage)
            .unwrap_or(0);
        let mem = s.memory_stats.as_ref();
        let usage = mem.and_then(|m| m.usage).unwrap_or(0);
        // cgroup v2 calls the reclaimable cache inactive_file; v1 total_inactive_file.
        let inactive = mem
            .and_then(|m| m.stats.as_ref())
            .and_then(|st| {
                st.get("inactive_file")
                    .or_else(|| st.get("total_inactive_file"))
            })
            .copied()
            .unwrap_or(0);
        Ok(super::ContainerStats {
            cpu_nanos,
            working_set_bytes: usage.saturating_sub(inactive),
            nano_cores: None,
        })
    }

    async fn exec(
        &self,
        id: &str,
        command: &[String],
        tty: bool,
        stdin: bool,
    ) -> Result<super::ExecSession, RuntimeError> {
        let exec = self
            .docker
            .create_exec(
                id,
                bollard::exec::CreateExecOptions {
                    cmd: Some(command.to_vec()),
                    attach_stdin: Some(stdin),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    tty: Some(tty),
                    ..Default::default()
                },
            )
            .await
            .map_err(err("create exec"))?;
        let started = self
            .docker
            .start_exec(
                &exec.id,
                Some(bollard::exec::StartExecOptions {
                    detach: false,
                    tty,
                    output_capacity: None,
                }),
            )
            .await
            .map_err(err("start exec"))?;
        let bollard::exec::StartExecResults::Attached { output, input } = started else {
            return Err(RuntimeError::Start {
                container: id.into(),
                message: "the exec started detached".into(),
            });
        };
        let output = session_output(output);
        let (docker, exec_id) = (self.docker.clone(), exec.id.clone());
        let resize = Box::new(move |width: u16, height: u16| {
            let (docker, exec_id) = (docker.clone(), exec_id.clone());
            async move {
                let _ = docker
                    .resize_exec(
                        &exec_id,
                        bollard::query_parameters::ResizeExecOptions {
                            h: height as i32,
                            w: width as i32,
                        },
                    )
                    .await;
            }
            .boxed()
        });
        let (docker, exec_id) = (self.docker.clone(), exec.id.clone());
        let exit = async move {
            // The output has ended; the exit code may take a moment to be recorded.
            for _ in 0..50 {
                let info = docker
                    .inspect_exec(&exec_id)
                    .await
                    .map_err(err("inspect exec"))?;
                if info.running != Some(true) {
                    return Ok(info.exit_code.unwrap_or(0));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(0)
        }
        .boxed();
        Ok(super::ExecSession {
            output,
            input: stdin.then_some(input),
            resize,
            exit,
        })
    }

    async fn attach(
        &self,
        id: &str,
        tty: bool,
        stdin: bool,
    ) -> Result<super::ExecSession, RuntimeError> {
        let attached = self
            .docker
            .attach_container(
                id,
                Some(bollard::query_parameters::AttachContainerOptions {
                    stdin,
                    stdout: true,
                    stderr: true,
                    stream: true,
                    logs: false,
                    detach_keys: None,
                }),
            )
            .await
            .map_err(err("attach"))?;
        let (docker, container) = (self.docker.clone(), id.to_string());
        let resize = Box::new(move |width: u16, height: u16| {
            let (docker, container) = (docker.clone(), container.clone());
            async move {
                if tty {
                    let _ = docker
                        .resize_container_tty(
                            &container,
                            bollard::query_parameters::ResizeContainerTTYOptions {
                                h: height as i32,
                                w: width as i32,
                            },
                        )
                        .await;
                }
            }
            .boxed()
        });
        Ok(super::ExecSession {
            output: session_output(attached.output),
            input: stdin.then_some(attached.input),
            resize,
            exit: async { Ok(0) }.boxed(),
        })
    }

    async fn net_namespace(&self, sandbox: &str) -> Result<Option<PathBuf>, RuntimeError> {
        let pid = self.init_pid(sandbox).await?;
        Ok(Some(PathBuf::from(format!("/proc/{pid}/ns/net"))))
    }

    async fn exec_status(&self, id: &str, command: &[String]) -> Result<i64, RuntimeError> {
        let exec = self
            .docker
            .create_exec(
                id,
                bollard::exec::CreateExecOptions {
                    cmd: Some(command.to_vec()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(err("create exec"))?;
        match self
            .docker
            .start_exec(&exec.id, None)
            .await
            .map_err(err("start exec"))?
        {
            bollard::exec::StartExecResults::Attached { mut output, .. } => {
                while let Some(chunk) = output.next().await {
                    if chunk.is_err() {
                        break;
                    }
                }
            }
            bollard::exec::StartExecResults::Detached => {}
        }
        let info = self
            .docker
            .inspect_exec(&exec.id)
            .await
            .map_err(err("inspect exec"))?;
        Ok(info.exit_code.unwrap_or(-1))
    }

    /// The sandbox (its pause container, which holds the namespace) was stopped by the
    /// caller; its address goes back to the pool.
    async fn release_network(&self, uid: &str) -> Result<(), RuntimeError> {
        if let Some(net) = self.podnet.get() {
            net.release(uid);
        }
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let opts = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        let sandbox_of = {
            let cache = self.inspected.lock().expect("inspect cache");
            cache.get(id).and_then(|(_, i)| match i {
                Inspected::Sandbox(s) => Some(s.pod_uid.clone()),
                Inspected::Container(_) => None,
            })
        };
        // On a remote engine the pod's volumes go with its last container.
        let owner = self
            .remote
            .then(|| {
                let cache = self.inspected.lock().expect("inspect cache");
                cache.get(id).map(|(_, i)| match i {
                    Inspected::Sandbox(s) => s.pod_uid.clone(),
                    Inspected::Container(c) => c.pod_uid.clone(),
                })
            })
            .flatten();
        match self.docker.remove_container(id, Some(opts)).await {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(err("remove container")(e)),
        }
        if let Some(uid) = owner.filter(|u| !u.is_empty()) {
            self.remove_volumes(&uid).await;
        }
        if let (Some(net), Some(uid)) = (self.podnet.get(), sandbox_of) {
            net.release(&uid);
        }
        Ok(())
    }

    async fn images(&self) -> Result<Vec<String>, RuntimeError> {
        let list = self
            .docker
            .list_images(None::<bollard::query_parameters::ListImagesOptions>)
            .await
            .map_err(err("list images"))?;
        let mut names: Vec<String> = list
            .into_iter()
            .flat_map(|i| i.repo_tags)
            .filter(|t| t != "<none>:<none>")
            .collect();
        names.sort();
        Ok(names)
    }

    async fn use_pod_network(
        &self,
        net: std::sync::Arc<crate::net::podnet::PodNet>,
    ) -> Result<(), String> {
        if self.remote {
            return Err(
                "its Docker engine is on another machine, where this host's bridge is not".into(),
            );
        }
        if self.podnet.set(net).is_err() {
            return Ok(());
        }
        // Warm sandboxes made before have Docker's network: make new ones.
        self.release().await;
        Ok(())
    }

    fn mounts_pod_files(&self) -> bool {
        true
    }
}
