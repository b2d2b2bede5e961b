//! Running pods: one level-triggered `sync` per pod per tick, from the pod's spec and what
//! the runtime holds, to runtime actions and the pod's status.
//!
//! ```text
//!  pod (from the API) ──┐
//!                       ├─▶ sync: deleting? stop (grace) ▸ remove ▸ delete pod (grace 0)
//!  runtime.list() ──────┘         sandbox missing? create
//!                                 init containers in order, then each container:
//!                                   none yet -> start attempt 0
//!                                   exited   -> restart per restartPolicy after back-off
//!                                 status (phase, conditions, containerStatuses) -> patch
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_core::quantity;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{json, Value};

use crate::host::{HostError, PodHost};
use crate::probes::Verdict;
use crate::runtime::{
    ContainerConfig, Observed, ObservedContainer, ObservedSandbox, PodRef, PullPolicy, Runtime,
    RuntimeError, State,
};

/// Crash-loop back-off: `base` doubling per restart, at most five minutes, reset after ten
/// minutes of running.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(10),
            max: Duration::from_secs(300),
            reset_after: Duration::from_secs(600),
        }
    }
}

impl Backoff {
    /// The wait before restart number `restarts + 1`, given how long the last run lasted.
    pub fn delay(&self, restarts: u32, ran_for: Duration) -> Duration {
        if ran_for >= self.reset_after {
            return self.base;
        }
        let factor = 2u32.saturating_pow(restarts.min(16));
        (self.base * factor).min(self.max)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("runtime operation for pod {pod} failed")]
    Runtime {
        pod: String,
        #[source]
        source: RuntimeError,
    },
    #[error("reporting on pod {pod} failed")]
    Host {
        pod: String,
        #[source]
        source: HostError,
    },
}

/// A container that could not be started: why, when, and how many times in a row.
#[derive(Debug, Clone)]
struct StartFailure {
    reason: String,
    message: String,
    at: Timestamp,
    count: u32,
}

/// Runs the pods bound to one node.
pub struct PodSync {
    pub runtime: Arc<dyn Runtime>,
    /// Where status and Events go, and configuration comes from.
    pub host: Arc<dyn PodHost>,
    pub backoff: Backoff,
    /// Where pod volumes live (`<data dir>/pods/<uid>`).
    pub data_dir: std::path::PathBuf,
    /// The last start failure per (pod uid, container), shown as the waiting reason.
    start_errors: Mutex<HashMap<(String, String), StartFailure>>,
    /// The status last written per pod uid, to skip writes that change nothing.
    written: Mutex<HashMap<String, Value>>,
    /// Pods whose graceful stop is under way (it runs beside the ticks, not inside one).
    deleting: Mutex<std::collections::HashSet<String>>,
    prober: crate::probes::Prober,
    /// Back-offs already announced with an Event: (pod uid, container, attempt); sandbox
    /// failures as (pod uid, message, 0).
    announced: Mutex<std::collections::HashSet<(String, String, u32)>>,
}

fn pod_ref(pod: &Pod) -> PodRef {
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
    }
}

/// The runtime's view of one container spec: its attempts, newest last.
fn attempts<'a>(obs: &'a Observed, uid: &str, name: &str) -> Vec<&'a ObservedContainer> {
    let mut v: Vec<_> = obs
        .containers
        .iter()
        .filter(|c| c.pod_uid == uid && c.name == name)
        .collect();
    v.sort_by_key(|c| c.attempt);
    v
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
    }
}

/// A timestamp as Kubernetes writes one: RFC 3339, whole seconds.
pub(crate) fn ts(t: Timestamp) -> String {
    Timestamp::from_second(t.as_second())
        .unwrap_or(t)
        .to_string()
}

fn terminated(c: &ObservedContainer) -> Option<Value> {
    let State::Exited {
        exit_code,
        started_at,
        finished_at,
        oom_killed,
    } = &c.state
    else {
        return None;
    };
    let reason = if *oom_killed {
        "OOMKilled"
    } else if *exit_code == 0 {
        "Completed"
    } else {
        "Error"
    };
    Some(json!({"terminated": {
        "exitCode": exit_code,
        "reason": reason,
        "startedAt": started_at.map(ts),
        "finishedAt": ts(*finished_at),
        "containerID": format!("docker://{}", c.id),
    }}))
}

/// Should an exited container run again under `policy`?
fn restarts(policy: &str, exit_code: i64) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => exit_code != 0,
        _ => true,
    }
}

/// One container's decision this tick.
enum Step {
    /// Start attempt `n`.
    Start(u32),
    /// Nothing to do now.
    Wait,
}

impl PodSync {
    pub fn new(
        runtime: Arc<dyn Runtime>,
        host: Arc<dyn PodHost>,
        backoff: Backoff,
        data_dir: std::path::PathBuf,
    ) -> Self {
        PodSync {
            runtime,
            host,
            backoff,
            data_dir,
            start_errors: Mutex::default(),
            written: Mutex::default(),
            deleting: Mutex::default(),
            prober: Default::default(),
            announced: Mutex::default(),
        }
    }

    fn event(&self, pod: &PodRef, type_: &str, reason: &str, message: String) {
        self.host.event(pod, type_, reason, message);
    }

    fn rt(&self, pod: &PodRef) -> impl FnOnce(RuntimeError) -> SyncError + '_ {
        let name = format!("{}/{}", pod.namespace, pod.name);
        move |source| SyncError::Runtime { pod: name, source }
    }

    /// Decide what one container needs, and the status to show for it.
    fn step(
        &self,
        pod: &PodRef,
        policy: &str,
        spec: &Container,
        obs: &Observed,
        verdicts: &HashMap<String, Verdict>,
        now: Timestamp,
    ) -> (Step, Value) {
        let tries = attempts(obs, &pod.uid, &spec.name);
        let restart_count = tries.last().map(|c| c.attempt).unwrap_or(0);
        let last_state = tries
            .len()
            .checked_sub(2)
            .and_then(|i| terminated(tries[i]));
        let image = spec.image.clone().unwrap_or_default();
        let mut status = json!({
            "name": spec.name, "image": image, "imageID": "", "restartCount": restart_count,
            "ready": false, "started": false, "lastState": last_state.unwrap_or(json!({})),
        });
        let waiting = |reason: &str, message: Option<String>| {
            let mut w = json!({"reason": reason});
            if let Some(m) = message {
                w["message"] = json!(m);
            }
            json!({"waiting": w})
        };
        let key = (pod.uid.clone(), spec.name.clone());
        let start_error = self.start_errors.lock().expect("errors").get(&key).cloned();
        let Some(latest) = tries.last() else {
            let Some(failure) = start_error else {
                status["state"] = waiting("ContainerCreating", None);
                return (Step::Start(0), status);
            };
            status["state"] = waiting(&failure.reason, Some(failure.message.clone()));
            // Failed starts are retried with the same back-off as crashes.
            let delay = self
                .backoff
                .delay(failure.count.saturating_sub(1), Duration::ZERO);
            let due = failure
                .at
                .checked_add(SignedDuration::try_from(delay).unwrap_or_default())
                .unwrap_or(failure.at);
            let step = if now >= due {
                Step::Start(0)
            } else {
                Step::Wait
            };
            return (step, status);
        };
        status["containerID"] = json!(format!("docker://{}", latest.id));
        status["imageID"] = json!(latest.image_id);
        match &latest.state {
            State::Created => {
                status["state"] = waiting("ContainerCreating", None);
                (Step::Wait, status)
            }
            State::Running { started_at } => {
                let verdict = verdicts.get(&latest.id);
                status["state"] = json!({"running": {"startedAt": ts(*started_at)}});
                status["ready"] = json!(verdict.is_none_or(|v| v.ready));
                status["started"] = json!(verdict.is_none_or(|v| v.started));
                (Step::Wait, status)
            }
            State::Exited {
                exit_code,
                started_at,
                finished_at,
                ..
            } => {
                if !restarts(policy, *exit_code) {
                    status["state"] = terminated(latest).unwrap_or_default();
                    return (Step::Wait, status);
                }
                let ran = started_at
                    .map(|s| finished_at.duration_since(s).unsigned_abs())
                    .unwrap_or_default();
                let delay = self.backoff.delay(latest.attempt, ran);
                let due = finished_at
                    .checked_add(SignedDuration::try_from(delay).unwrap_or_default())
                    .unwrap_or(*finished_at);
                status["lastState"] = terminated(latest).unwrap_or_default();
                if now >= due {
                    status["state"] = waiting("ContainerCreating", None);
                    (Step::Start(latest.attempt + 1), status)
                } else {
                    let msg = format!(
                        "back-off {}s restarting failed container={} pod={}_{}({})",
                        delay.as_secs(),
                        spec.name,
                        pod.name,
                        pod.namespace,
                        pod.uid
                    );
                    let first = self.announced.lock().expect("announced").insert((
                        pod.uid.clone(),
                        spec.name.clone(),
                        latest.attempt,
                    ));
                    if first {
                        self.event(
                            pod,
                            "Warning",
                            "BackOff",
                            format!("Back-off restarting failed container {}", spec.name),
                        );
                    }
                    status["state"] = waiting("CrashLoopBackOff", Some(msg));
                    (Step::Wait, status)
                }
            }
        }
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
        config.env = crate::config::environment(&*self.host, full, spec, sandbox.ip.as_deref())
            .await
            .map_err(failed)?;
        config.mounts = crate::config::mounts(&*self.host, full, spec, &self.data_dir)
            .await
            .map_err(failed)?;
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
        let key = (pod.uid.clone(), spec.name.clone());
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
        let mut errors = self.start_errors.lock().expect("errors");
        match result {
            Ok(()) => {
                errors.remove(&key);
                self.event(
                    pod,
                    "Normal",
                    "Started",
                    format!("Started container {}", spec.name),
                );
            }
            Err(e) => {
                let count = errors.get(&key).map_or(0, |f| f.count) + 1;
                if count == 1 {
                    tracing::warn!(pod = %pod.name, container = %spec.name, error = %e, "container did not start");
                    self.event(pod, "Warning", "Failed", format!("Error: {e}"));
                }
                let failure = StartFailure {
                    reason: e.reason().to_string(),
                    message: e.to_string(),
                    at: Timestamp::now(),
                    count,
                };
                errors.insert(key, failure);
            }
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
        // preStop hooks first, inside the grace period; then SIGTERM with what is left.
        let began = std::time::Instant::now();
        let limit = Duration::from_secs(grace);
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
                        tracing::warn!(container = %c.name, error = %e, "preStop hook failed")
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
            res.map_err(self.rt(r))?;
        }
        for c in &ids {
            self.runtime.remove(&c.id).await.map_err(self.rt(r))?;
        }
        for s in obs.sandboxes.iter().filter(|s| s.pod_uid == r.uid) {
            self.runtime
                .stop(&s.id, Duration::from_secs(1))
                .await
                .map_err(self.rt(r))?;
            self.runtime.remove(&s.id).await.map_err(self.rt(r))?;
        }
        self.remove_volumes(&r.uid);
        self.host
            .deleted(r)
            .await
            .map_err(|source| SyncError::Host {
                pod: r.name.clone(),
                source,
            })?;
        self.forget(&r.uid);
        Ok(())
    }

    /// Drop what the agent remembers about a pod that is gone.
    pub fn forget(&self, uid: &str) {
        self.written.lock().expect("written").remove(uid);
        self.start_errors
            .lock()
            .expect("errors")
            .retain(|(u, _), _| u != uid);
        self.announced
            .lock()
            .expect("announced")
            .retain(|(u, _, _)| u != uid);
    }

    /// Bring one pod one step closer to its spec, and report its status.
    pub async fn sync(self: &Arc<Self>, pod: &Pod, obs: &Observed) -> Result<(), SyncError> {
        let r = pod_ref(pod);
        if pod.metadata.deletion_timestamp.is_some() {
            if self
                .deleting
                .lock()
                .expect("deleting")
                .insert(r.uid.clone())
            {
                let this = self.clone();
                let (pod, obs) = (pod.clone(), obs.clone());
                tokio::spawn(async move {
                    if let Err(e) = this.finish_deletion(&pod, &r, &obs).await {
                        tracing::warn!(pod = %r.name, error = %e, "finishing the deletion failed; will retry");
                    }
                    this.deleting.lock().expect("deleting").remove(&r.uid);
                });
            }
            return Ok(());
        }
        let Some(spec) = pod.spec.as_ref() else {
            return Ok(());
        };
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .unwrap_or("Pending");
        if matches!(phase, "Succeeded" | "Failed") {
            return Ok(());
        }
        let policy = spec.restart_policy.as_deref().unwrap_or("Always");
        let now = Timestamp::now();
        let sandbox = match obs
            .sandboxes
            .iter()
            .find(|s| s.pod_uid == r.uid && s.running)
        {
            Some(s) => s.clone(),
            None => {
                // A sandbox that died takes its containers' namespace with it: start over.
                for old in obs.sandboxes.iter().filter(|s| s.pod_uid == r.uid) {
                    self.runtime.remove(&old.id).await.map_err(self.rt(&r))?;
                }
                match self.runtime.create_sandbox(&r).await {
                    Ok(s) => s,
                    Err(e) => {
                        // Said once per distinct failure, as the kubelet's event does.
                        let message = format!("Failed to create pod sandbox: {e}");
                        let key = (r.uid.clone(), message.clone(), 0);
                        if self.announced.lock().expect("announced").insert(key) {
                            self.event(&r, "Warning", "FailedCreatePodSandBox", message);
                        }
                        return Err(self.rt(&r)(e));
                    }
                }
            }
        };

        // Init containers run one at a time, in order, each to success.
        let mut init_statuses = Vec::new();
        let mut initialized = true;
        for c in spec.init_containers.iter().flatten() {
            let (step, status) = self.step(&r, "OnFailure", c, obs, &HashMap::new(), now);
            let done = attempts(obs, &r.uid, &c.name)
                .last()
                .is_some_and(|l| matches!(l.state, State::Exited { exit_code: 0, .. }));
            init_statuses.push(status);
            if done {
                continue;
            }
            initialized = false;
            if let Step::Start(n) = step {
                self.start(pod, &r, &sandbox, c, n).await;
            }
            break;
        }

        // Probes of running containers; a failed liveness (or startup) probe stops the
        // container, and the restart policy takes it from there.
        let mut verdicts = HashMap::new();
        for c in &spec.containers {
            let Some(latest) = attempts(obs, &r.uid, &c.name).last().copied() else {
                continue;
            };
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
            if let Some(why) = &v.kill {
                tracing::info!(pod = %r.name, container = %c.name, reason = %why, "restarting container");
                self.event(&r, "Warning", "Unhealthy", why.clone());
                self.event(
                    &r,
                    "Normal",
                    "Killing",
                    format!("Container {} failed a probe, will be restarted", c.name),
                );
                let grace = spec.termination_grace_period_seconds.unwrap_or(30).max(0) as u64;
                let rt = self.runtime.clone();
                let id = latest.id.clone();
                tokio::spawn(async move {
                    let _ = rt.stop(&id, Duration::from_secs(grace)).await;
                });
            }
            verdicts.insert(latest.id.clone(), v);
        }

        let mut statuses = Vec::new();
        for c in &spec.containers {
            let (step, mut status) = self.step(&r, policy, c, obs, &verdicts, now);
            if !initialized {
                status["state"] = json!({"waiting": {"reason": "PodInitializing"}});
            } else if let Step::Start(n) = step {
                self.start(pod, &r, &sandbox, c, n).await;
            }
            statuses.push(status);
        }
        let status = pod_status(pod, &sandbox, &init_statuses, &statuses, initialized, now);
        self.write_status(&r, status).await
    }

    async fn write_status(&self, r: &PodRef, status: Value) -> Result<(), SyncError> {
        if self.written.lock().expect("written").get(&r.uid) == Some(&status) {
            return Ok(());
        }
        self.host
            .write_status(r, &status)
            .await
            .map_err(|source| SyncError::Host {
                pod: r.name.clone(),
                source,
            })?;
        self.written
            .lock()
            .expect("written")
            .insert(r.uid.clone(), status);
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

/// The pod's status from its containers' statuses, as Kubernetes computes phase and
/// conditions.
fn pod_status(
    pod: &Pod,
    sandbox: &ObservedSandbox,
    init: &[Value],
    containers: &[Value],
    initialized: bool,
    now: Timestamp,
) -> Value {
    let state = |s: &Value, k: &str| s.get("state").and_then(|st| st.get(k)).is_some();
    let all_terminated = containers.iter().all(|s| state(s, "terminated"));
    let any_running = containers.iter().any(|s| state(s, "running"));
    let all_ready = !containers.is_empty() && containers.iter().all(|s| s["ready"] == json!(true));
    let phase = if all_terminated && !containers.is_empty() {
        let ok = containers.iter().all(|s| {
            s.pointer("/state/terminated/exitCode")
                .and_then(Value::as_i64)
                == Some(0)
        });
        if ok {
            "Succeeded"
        } else {
            "Failed"
        }
    } else if initialized
        && (any_running
            || containers.iter().any(|s| {
                s.get("lastState")
                    .is_some_and(|l| l.get("terminated").is_some())
            }))
    {
        "Running"
    } else {
        "Pending"
    };
    let old = pod.status.as_ref();
    let old_conditions: Vec<Value> = old
        .and_then(|s| s.conditions.as_ref())
        .map(|c| {
            c.iter()
                .filter_map(|c| serde_json::to_value(c).ok())
                .collect()
        })
        .unwrap_or_default();
    let cond = |ty: &str, ok: bool| {
        let status = if ok { "True" } else { "False" };
        // Keep the transition time while the status holds.
        let since = old_conditions
            .iter()
            .find(|c| c["type"] == ty && c["status"] == status)
            .and_then(|c| c.get("lastTransitionTime").cloned())
            .unwrap_or(json!(ts(now)));
        json!({"type": ty, "status": status, "lastProbeTime": null, "lastTransitionTime": since})
    };
    let ready = all_ready && phase == "Running";
    let conditions = vec![
        cond("PodReadyToStartContainers", true),
        cond("Initialized", initialized),
        cond("Ready", ready),
        cond("ContainersReady", ready),
        cond("PodScheduled", true),
    ];
    let start = old
        .and_then(|s| s.start_time.as_ref())
        .and_then(|t| serde_json::to_value(t).ok())
        .unwrap_or(json!(ts(now)));
    let mut status = json!({
        "phase": phase,
        "conditions": conditions,
        "containerStatuses": containers,
        "startTime": start,
        "qosClass": old.and_then(|s| s.qos_class.clone()),
    });
    if !init.is_empty() {
        status["initContainerStatuses"] = json!(init);
    }
    if let Some(ip) = &sandbox.ip {
        status["podIP"] = json!(ip);
        status["podIPs"] = json!([{"ip": ip}]);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::SourceKind;
    use std::collections::BTreeMap;

    #[test]
    fn backoff_doubles_to_five_minutes_and_resets() {
        let b = Backoff::default();
        let short = Duration::from_secs(1);
        assert_eq!(b.delay(0, short), Duration::from_secs(10));
        assert_eq!(b.delay(1, short), Duration::from_secs(20));
        assert_eq!(b.delay(3, short), Duration::from_secs(80));
        assert_eq!(b.delay(10, short), Duration::from_secs(300));
        assert_eq!(
            b.delay(10, Duration::from_secs(601)),
            Duration::from_secs(10)
        );
    }

    /// A runtime whose sandboxes cannot be created (a missing pause image, say).
    struct NoSandbox;

    #[async_trait::async_trait]
    impl Runtime for NoSandbox {
        fn name(&self) -> &'static str {
            "nosandbox"
        }
        fn version(&self) -> String {
            "0".into()
        }
        async fn ensure_image(&self, _: &str, _: PullPolicy) -> Result<(), RuntimeError> {
            Ok(())
        }
        async fn create_sandbox(&self, _: &PodRef) -> Result<ObservedSandbox, RuntimeError> {
            Err(RuntimeError::ImagePull {
                image: "berth/pause:1".into(),
                message: "no busybox".into(),
            })
        }
        async fn start_container(
            &self,
            _: &PodRef,
            _: &str,
            _: &ContainerConfig,
        ) -> Result<String, RuntimeError> {
            unreachable!("no sandbox, no containers")
        }
        async fn list(&self) -> Result<Observed, RuntimeError> {
            Ok(Observed::default())
        }
        async fn stop(&self, _: &str, _: Duration) -> Result<(), RuntimeError> {
            Ok(())
        }
        async fn remove(&self, _: &str) -> Result<(), RuntimeError> {
            Ok(())
        }
    }

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(String, String)>>);

    #[async_trait::async_trait]
    impl PodHost for Recorder {
        async fn write_status(&self, _: &PodRef, _: &Value) -> Result<(), HostError> {
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
        ) -> Result<Option<BTreeMap<String, Vec<u8>>>, HostError> {
            Ok(None)
        }
        async fn deleted(&self, _: &PodRef) -> Result<(), HostError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_sandbox_that_cannot_be_created_is_said_once_in_an_event() {
        let host = Arc::new(Recorder::default());
        let dir = std::env::temp_dir().join(format!("berth-nosandbox-{}", std::process::id()));
        let sync = Arc::new(PodSync::new(
            Arc::new(NoSandbox),
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

    #[test]
    fn restart_policy_decides_restarts() {
        assert!(restarts("Always", 0));
        assert!(restarts("OnFailure", 1));
        assert!(!restarts("OnFailure", 0));
        assert!(!restarts("Never", 1));
    }
}
