//! Running pods: one level-triggered `sync` per pod per tick, from the pod's spec and what
//! the runtime holds, to runtime actions and the pod's status. The decisions are
//! [`plan::plan`]'s (pure); `PodSync` observes, asks the plan, and carries it out.
//!
//! ```text
//!  pod (from the API) ──┐
//!                       ├─▶ sync: Lifecycle::Finish? stop (grace) ▸ remove ▸ delete pod
//!  runtime.list() ──────┘         sandbox missing? create
//!                                 probes of running containers ─▶ verdicts
//!                                 plan(pod, observed, verdicts, memory, now) ─▶ PodPlan
//!                                 execute: kills, Events, starts, status -> patch
//! ```

pub mod files;
pub mod plan;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_core::quantity;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::Value;

use berth_core::error::Chain;

use crate::owner::{OwnerError, PodOwner};
use crate::runtime::{
    ContainerConfig, Observed, ObservedContainer, ObservedSandbox, PodRef, PullPolicy, Runtime,
    RuntimeError, State,
};
pub use plan::{Backoff, Lifecycle, Memory, PodPlan, StartFailure};

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("runtime operation for pod {pod} failed")]
    Runtime {
        pod: String,
        #[source]
        source: RuntimeError,
    },
    #[error("reporting on pod {pod} failed")]
    Owner {
        pod: String,
        #[source]
        source: OwnerError,
    },
}

/// Runs the pods bound to one node.
pub struct PodSync {
    pub runtime: Arc<dyn Runtime>,
    /// Whose pods these are: where status and Events go, and configuration comes from.
    pub owner: Arc<dyn PodOwner>,
    pub backoff: Backoff,
    /// Where pod volumes live (`<data dir>/pods/<uid>`).
    pub data_dir: std::path::PathBuf,
    /// What the plans need remembered, per pod uid.
    memory: Mutex<HashMap<String, Memory>>,
    /// Pods whose graceful stop is under way (it runs beside the ticks, not inside one).
    deleting: Mutex<std::collections::HashSet<String>>,
    prober: crate::probes::Prober,
    /// The cluster DNS pods are given, with the host's search domains (runtimes that mount
    /// files only).
    dns: Option<(files::PodDns, Vec<String>)>,
    /// Is a pod (by uid) still a ready endpoint of some Service? A pod being deleted is
    /// stopped only once it is not (or its grace runs out), so no Service sends it new
    /// connections after its SIGTERM.
    routed: Option<Routed>,
    /// The Service variables of a pod (`KUBERNETES_SERVICE_HOST` and the rest).
    service_env: Option<ServiceEnv>,
    /// The node's address: a host-network pod's address.
    host_ip: Option<String>,
    /// Pod start latency, for `/metrics`.
    metrics: crate::telemetry::Metrics,
    /// Pods take any sandbox's hostname (see [`PodSync::with_any_hostname`]).
    any_hostname: bool,
}

/// See [`PodSync::with_service_env`].
pub type ServiceEnv = Arc<dyn Fn(&Pod) -> Vec<(String, String)> + Send + Sync>;

/// See [`PodSync::with_routes`].
pub type Routed = Arc<dyn Fn(&str) -> crate::net::Routing + Send + Sync>;

/// After the endpoint is seen withdrawn here, the time every node is given to write its
/// rules without it (the proxy's goal is 100 ms at p99).
const WITHDRAWAL_SETTLE: Duration = Duration::from_millis(250);

fn pod_ref(pod: &Pod, own_hostname: bool) -> PodRef {
    PodRef {
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        namespace: pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        name: pod.metadata.name.clone().unwrap_or_default(),
        host_ports: pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                let host_port = u16::try_from(p.host_port?).ok().filter(|p| *p > 0)?;
                Some(crate::runtime::HostPort {
                    container_port: u16::try_from(p.container_port).ok()?,
                    host_port,
                    protocol: p.protocol.as_deref().unwrap_or("TCP").to_lowercase(),
                    host_ip: p.host_ip.clone().unwrap_or_default(),
                })
            })
            .collect(),
        host_network: pod.spec.as_ref().and_then(|s| s.host_network) == Some(true),
        // A pod's hostname is its own (`spec.hostname`, else its name), fixed when its
        // sandbox is made: it never takes a warm one. A container group's is its sandbox's.
        hostname: own_hostname.then(|| files::hostname(pod)),
    }
}

/// What to run for a container spec.
pub fn container_config(c: &Container, attempt: u32) -> ContainerConfig {
    let limits = c.resources.as_ref().and_then(|r| r.limits.as_ref());
    let env = c
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect();
    ContainerConfig {
        name: c.name.clone(),
        image: c.image.clone().unwrap_or_default(),
        command: c.command.clone(),
        args: c.args.clone(),
        env,
        mounts: vec![],
        working_dir: c.working_dir.clone(),
        cpu_millis: limits
            .and_then(|l| l.get("cpu"))
            .and_then(|q| quantity::cpu_millis(&q.0)),
        memory_bytes: limits
            .and_then(|l| l.get("memory"))
            .and_then(|q| quantity::bytes(&q.0)),
        pull_policy: PullPolicy::parse(c.image_pull_policy.as_deref()),
        attempt,
        stdio: super::runtime::Stdio {
            stdin: c.stdin == Some(true),
            stdin_once: c.stdin_once == Some(true),
            tty: c.tty == Some(true),
        },
    }
}

impl PodSync {
    pub fn new(
        runtime: Arc<dyn Runtime>,
        owner: Arc<dyn PodOwner>,
        backoff: Backoff,
        data_dir: std::path::PathBuf,
    ) -> Self {
        PodSync {
            runtime,
            owner,
            backoff,
            data_dir,
            memory: Mutex::default(),
            deleting: Mutex::default(),
            prober: Default::default(),
            dns: None,
            routed: None,
            service_env: None,
            host_ip: None,
            metrics: Default::default(),
            any_hostname: false,
        }
    }

    /// Pods that take whatever hostname their sandbox has (container groups, as in ACI), so
    /// they may start in a warm one; a Kubernetes pod's hostname is its own.
    pub fn with_any_hostname(mut self) -> Self {
        self.any_hostname = true;
        self
    }

    /// Where pod start latencies go.
    pub fn with_metrics(mut self, metrics: crate::telemetry::Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The node's address, which host-network pods report as theirs.
    pub fn with_host_ip(mut self, ip: Option<String>) -> Self {
        self.host_ip = ip;
        self
    }

    /// Give containers the variables naming the Services they may use, under their own.
    pub fn with_service_env(mut self, env: Option<ServiceEnv>) -> Self {
        self.service_env = env;
        self
    }

    /// Wait, before stopping a deleted pod, until no Service routes to it.
    pub fn with_routes(mut self, routed: Option<Routed>) -> Self {
        self.routed = routed;
        self
    }

    /// Wait (within `limit`) until the pod is no ready endpoint anywhere, then give the
    /// nodes a moment to write their rules (this node's cache may see the withdrawal before
    /// any proxy has written it); at once if no Service has it as an endpoint.
    async fn await_withdrawal(&self, uid: &str, limit: Duration) {
        use crate::net::Routing;
        let Some(routed) = &self.routed else {
            return;
        };
        let withdrawn = async {
            while routed(uid) == Routing::Ready {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if routed(uid) == Routing::Withdrawn {
                tokio::time::sleep(WITHDRAWAL_SETTLE).await;
            }
        };
        let _ = tokio::time::timeout(limit, withdrawn).await;
    }

    /// Give pods a resolv.conf naming the cluster DNS, and an /etc/hosts of their own, on
    /// runtimes that mount files into containers.
    pub fn with_dns(mut self, dns: Option<files::PodDns>) -> Self {
        let search =
            files::host_search(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default());
        self.dns = dns.map(|d| (d, search));
        self
    }

    /// Read or change what is remembered of pod `uid`.
    fn remember<T>(&self, uid: &str, f: impl FnOnce(&mut Memory) -> T) -> T {
        f(self
            .memory
            .lock()
            .expect("pod memory")
            .entry(uid.to_string())
            .or_default())
    }

    fn event(&self, pod: &PodRef, type_: &str, reason: &str, message: String) {
        self.owner.event(pod, type_, reason, message);
    }

    fn runtime_failed(&self, pod: &PodRef) -> impl FnOnce(RuntimeError) -> SyncError + '_ {
        let name = format!("{}/{}", pod.namespace, pod.name);
        move |source| SyncError::Runtime { pod: name, source }
    }

    /// Environment and mounts from outside the spec (ConfigMaps, Secrets, volumes).
    async fn resolve(
        &self,
        full: &Pod,
        sandbox: &ObservedSandbox,
        spec: &Container,
        config: &mut ContainerConfig,
    ) -> Result<(), RuntimeError> {
        let failed = |e: crate::config::ConfigError| RuntimeError::Config {
            container: spec.name.clone(),
            message: e.to_string(),
        };
        let own = crate::config::environment(&*self.owner, full, spec, sandbox.ip.as_deref())
            .await
            .map_err(failed)?;
        let mut env = self
            .service_env
            .as_ref()
            .map(|f| f(full))
            .unwrap_or_default();
        env.retain(|(k, _)| !own.iter().any(|(o, _)| o == k));
        env.extend(own);
        config.env = env;
        config.mounts = crate::config::mounts(&*self.owner, full, spec, &self.data_dir)
            .await
            .map_err(failed)?;
        // Files of the pod's own: with a cluster DNS, or a resolver the pod names itself.
        let own_resolver = full.spec.as_ref().and_then(|s| s.dns_policy.as_deref()) == Some("None");
        if (self.dns.is_some() || own_resolver) && self.runtime.mounts_pod_files() {
            let (dns, search) = match &self.dns {
                Some((dns, search)) => (Some(dns), search.as_slice()),
                None => (None, &[][..]),
            };
            let uid = full.metadata.uid.as_deref().unwrap_or_default();
            let dir = crate::config::pod_dir(&self.data_dir, uid).join("etc");
            let own =
                files::write(&dir, full, sandbox.ip.as_deref(), dns, search).map_err(|e| {
                    RuntimeError::Config {
                        container: spec.name.clone(),
                        message: format!(
                            "writing the pod's resolv.conf and hosts in {}: {e}",
                            dir.display()
                        ),
                    }
                })?;
            // A volume the pod mounts at the same path wins, as in Kubernetes.
            for m in own {
                if !config
                    .mounts
                    .iter()
                    .any(|x| x.container_path == m.container_path)
                {
                    config.mounts.push(m);
                }
            }
        }
        Ok(())
    }

    async fn start(
        &self,
        full: &Pod,
        pod: &PodRef,
        sandbox: &ObservedSandbox,
        spec: &Container,
        attempt: u32,
    ) {
        let mut config = container_config(spec, attempt);
        let resolved = self.resolve(full, sandbox, spec, &mut config).await;
        let result = match resolved {
            Err(e) => Err(e),
            Ok(()) => {
                self.runtime
                    .ensure_image_for(pod, &config.image, config.pull_policy)
                    .await
            }
        };
        let result = match result {
            Ok(()) => self
                .runtime
                .start_container(pod, &sandbox.id, &config)
                .await
                .map(|_| ()),
            Err(e) => Err(e),
        };
        let failed = self.remember(&pod.uid, |m| match result {
            Ok(()) => {
                m.start_errors.remove(&spec.name);
                None
            }
            Err(e) => {
                let count = m.start_errors.get(&spec.name).map_or(0, |f| f.count) + 1;
                let failure = StartFailure {
                    reason: e.reason().to_string(),
                    message: Chain(&e).to_string(),
                    at: Timestamp::now(),
                    count,
                };
                m.start_errors.insert(spec.name.clone(), failure);
                Some((count, e))
            }
        });
        match failed {
            None => {
                self.event(
                    pod,
                    "Normal",
                    "Started",
                    format!("Started container {}", spec.name),
                );
            }
            Some((1, e)) => {
                tracing::warn!(pod = %pod.name, container = %spec.name, error = %Chain(&e), "container did not start");
                self.event(pod, "Warning", "Failed", format!("Error: {}", Chain(&e)));
            }
            Some(_) => {}
        }
    }

    /// Stop and remove everything of a pod, then let the API delete it.
    async fn finish_deletion(
        &self,
        pod: &Pod,
        r: &PodRef,
        obs: &Observed,
    ) -> Result<(), SyncError> {
        let grace = pod
            .metadata
            .deletion_grace_period_seconds
            .or(pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds))
            .unwrap_or(30)
            .max(0) as u64;
        let ids: Vec<&ObservedContainer> = obs
            .containers
            .iter()
            .filter(|c| c.pod_uid == r.uid)
            .collect();
        // Out of every Service first, then preStop hooks, inside the grace period; then
        // SIGTERM with what is left.
        let began = std::time::Instant::now();
        self.await_withdrawal(&r.uid, Duration::from_secs(grace))
            .await;
        let limit = Duration::from_secs(grace).saturating_sub(began.elapsed());
        let pod_ip = obs
            .sandboxes
            .iter()
            .find(|s| s.pod_uid == r.uid)
            .and_then(|s| s.ip.clone());
        let specs: Vec<Container> = pod
            .spec
            .as_ref()
            .map(|s| s.containers.clone())
            .unwrap_or_default();
        let hooks = ids.iter().filter_map(|c| {
            let State::Running { started_at } = c.state else {
                return None;
            };
            let spec = specs.iter().find(|s| s.name == c.name)?;
            let hook = spec.lifecycle.as_ref()?.pre_stop.clone()?;
            let (pod_ip, rt) = (pod_ip.clone(), self.runtime.clone());
            Some(async move {
                let subject = crate::probes::Subject {
                    rt: rt.as_ref(),
                    container: spec,
                    id: &c.id,
                    started_at,
                    pod_ip: pod_ip.as_deref(),
                    now: Timestamp::now(),
                };
                let run = crate::probes::pre_stop(&subject, &hook, limit);
                match tokio::time::timeout(limit, run).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(container = %c.name, error = %Chain(&e), "preStop hook failed")
                    }
                    Err(_) => tracing::warn!(container = %c.name, "preStop hook ran out of time"),
                }
            })
        });
        futures::future::join_all(hooks).await;
        for c in ids
            .iter()
            .filter(|c| matches!(c.state, State::Running { .. }))
        {
            self.event(
                r,
                "Normal",
                "Killing",
                format!("Stopping container {}", c.name),
            );
        }
        // Kubernetes gives at least 2 s after a hook that used up the grace period.
        let left = limit
            .saturating_sub(began.elapsed())
            .max(Duration::from_secs(2).min(limit));
        let stops = ids
            .iter()
            .filter(|c| matches!(c.state, State::Running { .. }))
            .map(|c| self.runtime.stop(&c.id, left));
        for res in futures::future::join_all(stops).await {
            res.map_err(self.runtime_failed(r))?;
        }
        for c in &ids {
            self.runtime
                .remove(&c.id)
                .await
                .map_err(self.runtime_failed(r))?;
        }
        for s in obs.sandboxes.iter().filter(|s| s.pod_uid == r.uid) {
            self.runtime
                .stop(&s.id, Duration::from_secs(1))
                .await
                .map_err(self.runtime_failed(r))?;
            self.runtime
                .remove(&s.id)
                .await
                .map_err(self.runtime_failed(r))?;
        }
        self.remove_volumes(&r.uid);
        self.owner
            .deleted(r)
            .await
            .map_err(|source| SyncError::Owner {
                pod: r.name.clone(),
                source,
            })?;
        self.forget(&r.uid);
        Ok(())
    }

    /// Drop what the agent remembers about a pod that is gone.
    pub fn forget(&self, uid: &str) {
        self.memory.lock().expect("pod memory").remove(uid);
    }

    /// Bring one pod one step closer to its spec, and report its status.
    pub async fn sync(self: &Arc<Self>, pod: &Pod, obs: &Observed) -> Result<(), SyncError> {
        let r = pod_ref(pod, !self.any_hostname);
        match Lifecycle::of(pod) {
            Lifecycle::Finish => {
                self.finish_in_background(pod, &r, obs);
                return Ok(());
            }
            Lifecycle::Done => {
                self.release_finished(&r, obs).await;
                return Ok(());
            }
            Lifecycle::Run => {}
        }
        if let Err(e) = crate::config::renew_tokens(&*self.owner, pod, &self.data_dir).await {
            tracing::warn!(pod = %r.name, error = %Chain(&e), "renewing a ServiceAccount token failed; the old one stays");
        }
        let now = Timestamp::now();
        let mut sandbox = self.sandbox(&r, obs).await?;
        if r.host_network && sandbox.ip.is_none() {
            sandbox.ip = self.host_ip.clone();
        }
        let verdicts = self.probe(pod, &r, &sandbox, obs, now).await;
        // The plan reads the pod's memory in place (it is quick and awaits nothing), rather
        // than a copy of it (the last written status among it) per pod per pass.
        let plan = self.remember(&r.uid, |memory| {
            plan::plan(pod, &sandbox, obs, &verdicts, memory, &self.backoff, now)
        });
        self.execute(pod, &r, &sandbox, plan).await
    }

    /// A finished pod keeps its containers (and their logs) but not its network, as the
    /// kubelet does: its sandbox stops and its address goes back to the node's pool, so pods
    /// that ran to completion (Jobs) never use the pool up. Once per pod.
    async fn release_finished(&self, r: &PodRef, obs: &Observed) {
        if self.remember(&r.uid, |m| std::mem::replace(&mut m.network_released, true)) {
            return;
        }
        for s in obs
            .sandboxes
            .iter()
            .filter(|s| s.pod_uid == r.uid && s.running)
        {
            if let Err(e) = self.runtime.stop(&s.id, Duration::from_secs(1)).await {
                tracing::warn!(pod = %r.name, error = %Chain(&e), "stopping a finished pod's sandbox");
            }
        }
        if let Err(e) = self.runtime.release_network(&r.uid).await {
            tracing::warn!(pod = %r.name, error = %Chain(&e), "releasing a finished pod's network");
        }
    }

    /// A pod being deleted is stopped and removed by a task beside the passes (its grace
    /// period may be long); one at a time per pod.
    fn finish_in_background(self: &Arc<Self>, pod: &Pod, r: &PodRef, obs: &Observed) {
        if !self
            .deleting
            .lock()
            .expect("deleting")
            .insert(r.uid.clone())
        {
            return;
        }
        let this = self.clone();
        let (pod, r, obs) = (pod.clone(), r.clone(), obs.clone());
        tokio::spawn(async move {
            if let Err(e) = this.finish_deletion(&pod, &r, &obs).await {
                tracing::warn!(pod = %r.name, error = %Chain(&e), "finishing the deletion failed; will retry");
            }
            this.deleting.lock().expect("deleting").remove(&r.uid);
        });
    }

    /// The pod's running sandbox, or a new one (a sandbox that died takes its containers'
    /// network namespace with it: what is left of it goes first).
    async fn sandbox(&self, r: &PodRef, obs: &Observed) -> Result<ObservedSandbox, SyncError> {
        let mine = || obs.sandboxes.iter().filter(|s| s.pod_uid == r.uid);
        if let Some(s) = mine().find(|s| s.running) {
            return Ok(s.clone());
        }
        for old in mine() {
            self.runtime
                .remove(&old.id)
                .await
                .map_err(self.runtime_failed(r))?;
        }
        self.runtime.create_sandbox(r).await.map_err(|e| {
            // Said once per distinct failure, as the kubelet's event does.
            let message = format!("Failed to create pod sandbox: {}", Chain(&e));
            if self.remember(&r.uid, |m| m.sandbox_failures.insert(message.clone())) {
                self.event(r, "Warning", "FailedCreatePodSandBox", message);
            }
            self.runtime_failed(r)(e)
        })
    }

    /// The probes' verdicts on the pod's running containers, by container id.
    async fn probe(
        &self,
        pod: &Pod,
        r: &PodRef,
        sandbox: &ObservedSandbox,
        obs: &Observed,
        now: Timestamp,
    ) -> HashMap<String, crate::probes::Verdict> {
        let mut verdicts = HashMap::new();
        for c in pod.spec.iter().flat_map(|s| &s.containers) {
            let latest = obs
                .containers
                .iter()
                .filter(|o| o.pod_uid == r.uid && o.name == c.name)
                .max_by_key(|o| o.attempt);
            let Some(latest) = latest else { continue };
            let State::Running { started_at } = latest.state else {
                continue;
            };
            let v = self
                .prober
                .check(&crate::probes::Subject {
                    rt: &*self.runtime,
                    container: c,
                    id: &latest.id,
                    started_at,
                    pod_ip: sandbox.ip.as_deref(),
                    now,
                })
                .await;
            verdicts.insert(latest.id.clone(), v);
        }
        verdicts
    }

    /// Carry a plan out: kills (in the background, with the pod's grace), Events, starts in
    /// order, then the status if it changed.
    async fn execute(
        &self,
        pod: &Pod,
        r: &PodRef,
        sandbox: &ObservedSandbox,
        plan: PodPlan,
    ) -> Result<(), SyncError> {
        for kill in plan.kills {
            tracing::info!(pod = %r.name, container.id = %kill.id, "restarting a container that failed a probe");
            let rt = self.runtime.clone();
            tokio::spawn(async move {
                let _ = rt.stop(&kill.id, kill.grace).await;
            });
        }
        for (type_, reason, message) in plan.events {
            self.event(r, type_, reason, message);
        }
        self.remember(&r.uid, |m| m.announced.extend(plan.announced));
        let spec = pod.spec.as_ref();
        for start in plan.starts {
            let containers = if start.init {
                spec.and_then(|s| s.init_containers.as_ref())
            } else {
                spec.map(|s| &s.containers)
            };
            let Some(c) = containers
                .into_iter()
                .flatten()
                .find(|c| c.name == start.container)
            else {
                continue;
            };
            self.start(pod, r, sandbox, c, start.attempt).await;
        }
        // A pod turning Running now, not one that was Running before (an agent restarted).
        let was_running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        if plan.status["phase"] == "Running"
            && !was_running
            && !self.remember(&r.uid, |m| std::mem::replace(&mut m.start_recorded, true))
        {
            if let Some(created) = &pod.metadata.creation_timestamp {
                let took = jiff::Timestamp::now().duration_since(created.0);
                if let Ok(took) = std::time::Duration::try_from(took) {
                    self.metrics.pod_started(took);
                }
            }
        }
        self.write_status(r, plan.status).await
    }

    async fn write_status(&self, r: &PodRef, status: Value) -> Result<(), SyncError> {
        if self.remember(&r.uid, |m| m.written.as_ref() == Some(&status)) {
            return Ok(());
        }
        self.owner
            .write_status(r, &status)
            .await
            .map_err(|source| SyncError::Owner {
                pod: r.name.clone(),
                source,
            })?;
        self.remember(&r.uid, |m| m.written = Some(status));
        Ok(())
    }

    /// Stop and remove what belongs to no pod of this node any more.
    pub async fn remove_orphans(&self, live: &[String], obs: &Observed) {
        let running: Vec<&str> = obs
            .containers
            .iter()
            .filter(|c| matches!(c.state, State::Running { .. }))
            .map(|c| c.id.as_str())
            .collect();
        self.prober.retain(&running);
        let orphan = |uid: &String| !live.contains(uid);
        for c in obs.containers.iter().filter(|c| orphan(&c.pod_uid)) {
            let _ = self.runtime.stop(&c.id, Duration::from_secs(2)).await;
            let _ = self.runtime.remove(&c.id).await;
        }
        for s in obs.sandboxes.iter().filter(|s| orphan(&s.pod_uid)) {
            let _ = self.runtime.stop(&s.id, Duration::from_secs(1)).await;
            let _ = self.runtime.remove(&s.id).await;
            self.forget(&s.pod_uid);
            self.remove_volumes(&s.pod_uid);
        }
    }

    /// The pod's emptyDir, configMap and secret volumes go with it (hostPath ones stay).
    fn remove_volumes(&self, uid: &str) {
        let dir = crate::config::pod_dir(&self.data_dir, uid);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(pod.uid = uid, error = %e, "could not remove the pod's volumes");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::owner::SourceKind;
    use std::collections::BTreeMap;

    /// The Events said and the deletions finished.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<(String, String)>>, std::sync::atomic::AtomicUsize);

    impl Recorder {
        fn said(&self, reason: &str) -> usize {
            self.0
                .lock()
                .unwrap()
                .iter()
                .filter(|e| e.0 == reason)
                .count()
        }
    }

    #[async_trait::async_trait]
    impl PodOwner for Recorder {
        async fn write_status(&self, _: &PodRef, _: &Value) -> Result<(), OwnerError> {
            Ok(())
        }
        fn event(&self, _: &PodRef, _: &str, reason: &str, message: String) {
            self.0.lock().unwrap().push((reason.into(), message));
        }
        async fn source(
            &self,
            _: &str,
            _: SourceKind,
            _: &str,
        ) -> Result<Option<BTreeMap<String, Vec<u8>>>, OwnerError> {
            Ok(None)
        }
        async fn deleted(&self, _: &PodRef) -> Result<(), OwnerError> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_sandbox_that_cannot_be_created_is_said_once_in_an_event() {
        let host = Arc::new(Recorder::default());
        let dir = std::env::temp_dir().join(format!("berth-nosandbox-{}", std::process::id()));
        let sync = Arc::new(PodSync::new(
            Arc::new(crate::runtime::mock::MockRuntime::without_sandboxes(
                "no busybox",
            )),
            host.clone(),
            Backoff::default(),
            dir,
        ));
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u1"},
            "spec": {"containers": [{"name": "c", "image": "x"}]}
        }))
        .unwrap();
        for _ in 0..3 {
            let err = sync.sync(&pod, &Observed::default()).await.unwrap_err();
            assert!(matches!(err, SyncError::Runtime { .. }), "{err}");
        }
        let events = host.0.lock().unwrap().clone();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].0, "FailedCreatePodSandBox");
        assert!(events[0].1.contains("no busybox"), "{}", events[0].1);
    }

    /// Through the whole sync, not only the plan: a crash-looping pod is restarted until it
    /// is deleted, and from then on nothing of it starts again; its containers are removed
    /// and the deletion is finished.
    #[tokio::test]
    async fn a_deleted_pod_is_never_restarted_and_its_deletion_finishes() {
        let owner = Arc::new(Recorder::default());
        let rt = Arc::new(crate::runtime::mock::MockRuntime::new());
        let dir = tempfile::tempdir().unwrap();
        let sync = Arc::new(PodSync::new(
            rt.clone(),
            owner.clone(),
            Backoff::default(),
            dir.path().to_path_buf(),
        ));
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u1"},
            "spec": {"restartPolicy": "Always", "terminationGracePeriodSeconds": 0,
                "containers": [{"name": "c", "image": "x",
                    "env": [{"name": "MOCK_RUN_FOR", "value": "0"},
                            {"name": "MOCK_EXIT_CODE", "value": "1"}]}]},
        }))
        .unwrap();
        let pass = |pod: Pod| {
            let (sync, rt) = (sync.clone(), rt.clone());
            async move {
                let obs = rt.list().await.unwrap();
                let _ = sync.sync(&pod, &obs).await;
            }
        };
        // Start, exit, restart at once (the kubelet's first restart): two starts.
        for _ in 0..3 {
            pass(pod.clone()).await;
        }
        assert_eq!(owner.said("Started"), 2);
        pod.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now()),
        );
        pod.metadata.deletion_grace_period_seconds = Some(0);
        // Passes until the deletion is finished (the API then drops the pod, as here).
        let deleted = || owner.1.load(std::sync::atomic::Ordering::SeqCst);
        for _ in 0..100 {
            if deleted() > 0 {
                break;
            }
            pass(pod.clone()).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(owner.said("Started"), 2, "nothing started once deleted");
        assert_eq!(deleted(), 1);
        let left = rt.list().await.unwrap();
        assert!(
            left.containers.is_empty() && left.sandboxes.is_empty(),
            "{left:?}"
        );
    }
}
