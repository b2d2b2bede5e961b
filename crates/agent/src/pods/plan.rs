//! The pod sync's decisions, pure: from a pod, what the runtime shows of it, the probes'
//! verdicts, what the agent remembers of it and the time, to what to start, what to kill,
//! which Events to say and the status to report. [`super::PodSync`] carries a [`PodPlan`] out.
//!
//! ```text
//!  pod ─┐                                   lifecycle: Finish (being deleted) | Done | Run
//!  runtime.list() ─┼─▶ plan(now) ─▶ PodPlan { starts, kills, events, backoffs, status }
//!  verdicts, Memory┘      init containers in order, each to success, then the containers:
//!                         none yet -> start attempt 0 (failed starts retried, 10 s doubling)
//!                         exited   -> per restartPolicy: at once the first time, then 10 s,
//!                                     20 s, ... 5 min (CrashLoopBackOff meanwhile)
//! ```

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{json, Value};

use berth_core::kube_time;

use crate::probes::Verdict;
use crate::runtime::{Observed, ObservedContainer, ObservedSandbox, State};

/// Crash-loop back-off, the kubelet's: a container that exits is restarted at once the first
/// time, then after `base`, doubling with each restart up to `max`; a run of `reset_after`
/// or longer starts the count afresh.
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
        if restarts == 0 || ran_for >= self.reset_after {
            return Duration::ZERO;
        }
        self.doubled(restarts - 1)
    }

    /// The wait before trying again to start a container that failed to start `failures`
    /// times in a row (a missing ConfigMap, an image that is not there).
    pub fn retry(&self, failures: u32) -> Duration {
        self.doubled(failures.saturating_sub(1))
    }

    fn doubled(&self, times: u32) -> Duration {
        (self.base * 2u32.saturating_pow(times.min(16))).min(self.max)
    }
}

/// A container that could not be started: why, when, and how many times in a row.
#[derive(Debug, Clone, PartialEq)]
pub struct StartFailure {
    pub reason: String,
    pub message: String,
    pub at: Timestamp,
    pub count: u32,
}

/// What the agent remembers of one pod between passes. The plan reads it; the executor
/// keeps it.
#[derive(Debug, Clone, Default)]
pub struct Memory {
    /// The last start failure per container, shown as its waiting reason.
    pub start_errors: HashMap<String, StartFailure>,
    /// Back-offs already said in an Event: (container, attempt).
    pub announced: HashSet<(String, u32)>,
    /// Sandbox failures already said in an Event, by message.
    pub sandbox_failures: HashSet<String>,
    /// The status last written, to skip writes that change nothing.
    pub written: Option<Value>,
    /// Its start latency was recorded (once per pod, for `/metrics`).
    pub start_recorded: bool,
    /// It finished and its network went back to the node.
    pub network_released: bool,
}

/// Where a pod is in its life, as far as the agent is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Being deleted: stop everything (grace), remove it, let the API delete the pod.
    Finish,
    /// Succeeded, Failed, or without a spec: nothing more to run.
    Done,
    /// Run it toward its spec.
    Run,
}

impl Lifecycle {
    pub fn of(pod: &Pod) -> Lifecycle {
        if pod.metadata.deletion_timestamp.is_some() {
            return Lifecycle::Finish;
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if pod.spec.is_none() || matches!(phase, Some("Succeeded" | "Failed")) {
            return Lifecycle::Done;
        }
        Lifecycle::Run
    }
}

/// A container start the plan asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    pub container: String,
    pub init: bool,
    pub attempt: u32,
}

/// A running container to stop (a failed liveness or startup probe), with the pod's grace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kill {
    pub id: String,
    pub grace: Duration,
}

/// An Event the plan says about the pod: (type, reason, message).
pub type Said = (&'static str, &'static str, String);

/// One pass over a running pod, decided.
#[derive(Debug, Clone, Default)]
pub struct PodPlan {
    pub starts: Vec<Start>,
    pub kills: Vec<Kill>,
    pub events: Vec<Said>,
    /// Back-offs this plan said in an Event, for [`Memory::announced`].
    pub announced: Vec<(String, u32)>,
    pub status: Value,
}

/// One container's decision this pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Start attempt `n`.
    Start(u32),
    /// Nothing to do now.
    Wait,
}

/// Decide one pass over a pod that [`Lifecycle::of`] says to run, in `sandbox`. Pure.
pub fn plan(
    pod: &Pod,
    sandbox: &ObservedSandbox,
    obs: &Observed,
    verdicts: &HashMap<String, Verdict>,
    memory: &Memory,
    backoff: &Backoff,
    now: Timestamp,
) -> PodPlan {
    let mut out = PodPlan::default();
    if Lifecycle::of(pod) != Lifecycle::Run {
        return out;
    }
    let spec = pod.spec.as_ref().expect("a pod that runs has a spec");
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let pod_name = (
        pod.metadata.name.as_deref().unwrap_or_default(),
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        uid,
    );
    let policy = spec.restart_policy.as_deref().unwrap_or("Always");
    let mut decide = |c: &Container, policy: &str, verdicts: &HashMap<String, Verdict>| {
        let (step, status, backoff_said) =
            container_step(pod_name, policy, c, obs, verdicts, memory, backoff, now);
        if let Some(attempt) = backoff_said {
            if !memory.announced.contains(&(c.name.clone(), attempt)) {
                out.events.push((
                    "Warning",
                    "BackOff",
                    format!("Back-off restarting failed container {}", c.name),
                ));
                out.announced.push((c.name.clone(), attempt));
            }
        }
        (step, status)
    };

    // Init containers run one at a time, in order, each to success.
    let mut init_statuses = Vec::new();
    let mut initialized = true;
    let mut starts = Vec::new();
    for c in spec.init_containers.iter().flatten() {
        let (step, status) = decide(c, "OnFailure", &HashMap::new());
        init_statuses.push(status);
        let done = attempts(obs, uid, &c.name)
            .last()
            .is_some_and(|l| matches!(l.state, State::Exited { exit_code: 0, .. }));
        if done {
            continue;
        }
        initialized = false;
        if let Step::Start(attempt) = step {
            starts.push(Start {
                container: c.name.clone(),
                init: true,
                attempt,
            });
        }
        break;
    }

    let mut statuses = Vec::new();
    for c in &spec.containers {
        let (step, mut status) = decide(c, policy, verdicts);
        if !initialized {
            status["state"] = json!({"waiting": {"reason": "PodInitializing"}});
        } else if let Step::Start(attempt) = step {
            starts.push(Start {
                container: c.name.clone(),
                init: false,
                attempt,
            });
        }
        statuses.push(status);
    }
    out.starts = starts;

    // A failed liveness (or startup) probe stops the container; the restart policy takes it
    // from there.
    let grace =
        Duration::from_secs(spec.termination_grace_period_seconds.unwrap_or(30).max(0) as u64);
    for c in &spec.containers {
        let Some(latest) = attempts(obs, uid, &c.name).last().copied() else {
            continue;
        };
        let Some(why) = verdicts.get(&latest.id).and_then(|v| v.kill.clone()) else {
            continue;
        };
        out.events.push(("Warning", "Unhealthy", why));
        out.events.push((
            "Normal",
            "Killing",
            format!("Container {} failed a probe, will be restarted", c.name),
        ));
        out.kills.push(Kill {
            id: latest.id.clone(),
            grace,
        });
    }
    out.status = pod_status(pod, sandbox, &init_statuses, &statuses, initialized, now);
    out
}

/// Decide what one container needs, and the status to show for it; the attempt whose
/// back-off it is waiting out, if it is.
#[allow(clippy::too_many_arguments)]
fn container_step(
    (pod_name, pod_namespace, pod_uid): (&str, &str, &str),
    policy: &str,
    spec: &Container,
    obs: &Observed,
    verdicts: &HashMap<String, Verdict>,
    memory: &Memory,
    backoff: &Backoff,
    now: Timestamp,
) -> (Step, Value, Option<u32>) {
    let tries = attempts(obs, pod_uid, &spec.name);
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
    let Some(latest) = tries.last() else {
        let Some(failure) = memory.start_errors.get(&spec.name) else {
            status["state"] = waiting("ContainerCreating", None);
            return (Step::Start(0), status, None);
        };
        status["state"] = waiting(&failure.reason, Some(failure.message.clone()));
        // Failed starts are retried with a back-off of their own.
        let due = after(failure.at, backoff.retry(failure.count));
        let step = if now >= due {
            Step::Start(0)
        } else {
            Step::Wait
        };
        return (step, status, None);
    };
    status["containerID"] = json!(format!("docker://{}", latest.id));
    status["imageID"] = json!(latest.image_id);
    match &latest.state {
        State::Created => {
            status["state"] = waiting("ContainerCreating", None);
            (Step::Wait, status, None)
        }
        State::Running { started_at } => {
            let verdict = verdicts.get(&latest.id);
            status["state"] = json!({"running": {"startedAt": kube_time(*started_at)}});
            status["ready"] = json!(verdict.is_none_or(|v| v.ready));
            status["started"] = json!(verdict.is_none_or(|v| v.started));
            (Step::Wait, status, None)
        }
        State::Exited {
            exit_code,
            started_at,
            finished_at,
            ..
        } => {
            if !restarts(policy, *exit_code) {
                status["state"] = terminated(latest).unwrap_or_default();
                return (Step::Wait, status, None);
            }
            let ran = started_at
                .map(|s| finished_at.duration_since(s).unsigned_abs())
                .unwrap_or_default();
            let delay = backoff.delay(latest.attempt, ran);
            status["lastState"] = terminated(latest).unwrap_or_default();
            if now >= after(*finished_at, delay) {
                status["state"] = waiting("ContainerCreating", None);
                return (Step::Start(latest.attempt + 1), status, None);
            }
            let msg = format!(
                "back-off {}s restarting failed container={} pod={pod_name}_{pod_namespace}({pod_uid})",
                delay.as_secs(),
                spec.name,
            );
            status["state"] = waiting("CrashLoopBackOff", Some(msg));
            (Step::Wait, status, Some(latest.attempt))
        }
    }
}

fn after(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_add(SignedDuration::try_from(d).unwrap_or_default())
        .unwrap_or(t)
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
        "startedAt": started_at.map(kube_time),
        "finishedAt": kube_time(*finished_at),
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
            .unwrap_or(json!(kube_time(now)));
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
        .unwrap_or(json!(kube_time(now)));
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
    use proptest::prelude::*;

    #[test]
    fn backoff_follows_the_kubelet_restart_at_once_then_10s_doubling_to_five_minutes() {
        let b = Backoff::default();
        let short = Duration::from_secs(1);
        let secs = |restarts| b.delay(restarts, short).as_secs();
        let schedule: Vec<u64> = (0..8).map(secs).collect();
        assert_eq!(schedule, [0, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(secs(1000), 300);
        assert_eq!(
            b.delay(10, Duration::from_secs(600)),
            Duration::ZERO,
            "ten minutes of running start the count afresh"
        );
    }

    #[test]
    fn failed_starts_are_retried_after_10s_doubling() {
        let b = Backoff::default();
        let schedule: Vec<u64> = (1..5).map(|n| b.retry(n).as_secs()).collect();
        assert_eq!(schedule, [10, 20, 40, 80]);
    }

    #[test]
    fn restart_policy_decides_restarts() {
        assert!(restarts("Always", 0));
        assert!(restarts("OnFailure", 1));
        assert!(!restarts("OnFailure", 0));
        assert!(!restarts("Never", 1));
    }

    fn pod(policy: &str, deleting: bool, phase: Option<&str>) -> Pod {
        let mut p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u1"},
            "spec": {"restartPolicy": policy,
                     "initContainers": [{"name": "init", "image": "x"}],
                     "containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "x"}]},
        }))
        .unwrap();
        if deleting {
            p.metadata.deletion_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    Timestamp::from_second(1_800_000_000).unwrap(),
                ));
        }
        if let Some(phase) = phase {
            p.status = Some(serde_json::from_value(json!({"phase": phase})).unwrap());
        }
        p
    }

    fn sandbox() -> ObservedSandbox {
        ObservedSandbox {
            id: "sb".into(),
            pod_uid: "u1".into(),
            running: true,
            ip: Some("10.0.0.2".into()),
        }
    }

    fn container(name: &str, attempt: u32, state: State) -> ObservedContainer {
        ObservedContainer {
            id: format!("{name}-{attempt}"),
            pod_uid: "u1".into(),
            name: name.into(),
            attempt,
            image: "x".into(),
            image_id: String::new(),
            state,
        }
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    /// A container as the runtime shows it: none yet, or its attempt and either running
    /// (`None`) or exited with (code, seconds run).
    type Seen = Option<(u32, Option<(i64, i64)>)>;

    fn gen_state() -> impl Strategy<Value = Seen> {
        prop::option::of((0u32..8, prop::option::of((0i64..3, 0i64..700))))
    }

    fn observed(states: &[(&str, Seen)]) -> Observed {
        let mut obs = Observed {
            sandboxes: vec![sandbox()],
            ..Default::default()
        };
        for (name, s) in states {
            let Some((attempt, exit)) = s else { continue };
            let state = match exit {
                None => State::Running { started_at: at(0) },
                Some((code, ran)) => State::Exited {
                    exit_code: *code,
                    started_at: Some(at(0)),
                    finished_at: at(*ran),
                    oom_killed: false,
                },
            };
            obs.containers.push(container(name, *attempt, state));
        }
        obs
    }

    proptest! {
        /// Whatever the runtime shows, a pod being deleted, or one that has finished, gets
        /// no container started.
        #[test]
        fn a_deleted_or_finished_pod_is_never_restarted(
            init in gen_state(), a in gen_state(), b in gen_state(),
            policy in prop::sample::select(vec!["Always", "OnFailure", "Never"]),
            deleting in any::<bool>(),
            phase in prop::sample::select(vec![None, Some("Succeeded"), Some("Failed"), Some("Running")]),
            now in 0i64..2000,
        ) {
            prop_assume!(deleting || matches!(phase, Some("Succeeded" | "Failed")));
            let p = pod(policy, deleting, phase);
            let obs = observed(&[("init", init), ("a", a), ("b", b)]);
            let decided = plan(&p, &sandbox(), &obs, &HashMap::new(), &Memory::default(), &Backoff::default(), at(now));
            prop_assert!(decided.starts.is_empty(), "{:?}", decided.starts);
            prop_assert!(decided.kills.is_empty());
        }

        /// An exited container is started again exactly when its policy allows it and its
        /// back-off (the kubelet's schedule) is over, never before.
        #[test]
        fn an_exited_container_restarts_when_its_back_off_is_over(
            attempt in 0u32..8, code in 0i64..3, ran in 0i64..700, waited in 0i64..400,
            policy in prop::sample::select(vec!["Always", "OnFailure", "Never"]),
        ) {
            let p = pod(policy, false, Some("Running"));
            let exited = Some((attempt, Some((code, ran))));
            let obs = observed(&[("init", Some((0, Some((0, 1))))), ("a", exited), ("b", Some((0, None)))]);
            let now = at(ran + waited);
            let b = Backoff::default();
            let decided = plan(&p, &sandbox(), &obs, &HashMap::new(), &Memory::default(), &b, now);
            let due = Duration::from_secs(waited as u64) >= b.delay(attempt, Duration::from_secs(ran as u64));
            let allowed = restarts(policy, code);
            let want: Vec<Start> = (allowed && due)
                .then(|| Start { container: "a".into(), init: false, attempt: attempt + 1 })
                .into_iter()
                .collect();
            prop_assert_eq!(&decided.starts, &want);
            let state = &decided.status["containerStatuses"][0]["state"];
            if allowed && !due {
                prop_assert_eq!(&state["waiting"]["reason"], "CrashLoopBackOff");
                prop_assert_eq!(decided.announced, vec![("a".to_string(), attempt)]);
            }
        }
    }

    #[test]
    fn init_containers_run_one_at_a_time_before_the_others() {
        let p = pod("Always", false, None);
        let obs = observed(&[]);
        let first = plan(
            &p,
            &sandbox(),
            &obs,
            &HashMap::new(),
            &Memory::default(),
            &Backoff::default(),
            at(0),
        );
        assert_eq!(
            first.starts,
            vec![Start {
                container: "init".into(),
                init: true,
                attempt: 0
            }]
        );
        assert_eq!(first.status["phase"], "Pending");
        assert_eq!(
            first.status["containerStatuses"][0]["state"]["waiting"]["reason"],
            "PodInitializing"
        );
        let done = observed(&[("init", Some((0, Some((0, 1)))))]);
        let next = plan(
            &p,
            &sandbox(),
            &done,
            &HashMap::new(),
            &Memory::default(),
            &Backoff::default(),
            at(2),
        );
        let started: Vec<&str> = next.starts.iter().map(|s| s.container.as_str()).collect();
        assert_eq!(started, ["a", "b"]);
    }

    #[test]
    fn a_back_off_is_said_once_per_attempt() {
        let p = pod("Always", false, Some("Running"));
        let obs = observed(&[
            ("init", Some((0, Some((0, 1))))),
            ("a", Some((1, Some((1, 5))))),
            ("b", Some((0, None))),
        ]);
        let mut memory = Memory::default();
        let first = plan(
            &p,
            &sandbox(),
            &obs,
            &HashMap::new(),
            &memory,
            &Backoff::default(),
            at(6),
        );
        assert_eq!(first.events.len(), 1);
        assert!(matches!(first.events[0], ("Warning", "BackOff", _)));
        memory.announced.extend(first.announced);
        let again = plan(
            &p,
            &sandbox(),
            &obs,
            &HashMap::new(),
            &memory,
            &Backoff::default(),
            at(7),
        );
        assert!(again.events.is_empty(), "{:?}", again.events);
    }

    #[test]
    fn a_failed_start_shows_its_reason_and_is_retried_after_its_back_off() {
        let p = pod("Always", false, Some("Pending"));
        let obs = observed(&[("init", Some((0, Some((0, 1))))), ("b", Some((0, None)))]);
        let mut memory = Memory::default();
        memory.start_errors.insert(
            "a".into(),
            StartFailure {
                reason: "CreateContainerConfigError".into(),
                message: "configmap \"cfg\" not found".into(),
                at: at(10),
                count: 1,
            },
        );
        let b = Backoff::default();
        let waiting = plan(&p, &sandbox(), &obs, &HashMap::new(), &memory, &b, at(15));
        assert!(waiting.starts.is_empty());
        assert_eq!(
            waiting.status["containerStatuses"][0]["state"]["waiting"]["reason"],
            "CreateContainerConfigError"
        );
        let retried = plan(&p, &sandbox(), &obs, &HashMap::new(), &memory, &b, at(20));
        assert_eq!(retried.starts.len(), 1);
    }

    #[test]
    fn a_failed_liveness_probe_kills_with_the_pods_grace() {
        let mut p = pod("Always", false, Some("Running"));
        p.spec.as_mut().unwrap().termination_grace_period_seconds = Some(7);
        let obs = observed(&[
            ("init", Some((0, Some((0, 1))))),
            ("a", Some((0, None))),
            ("b", Some((0, None))),
        ]);
        let verdicts = HashMap::from([(
            "a-0".to_string(),
            Verdict {
                ready: false,
                started: true,
                kill: Some("Liveness probe failed".into()),
            },
        )]);
        let decided = plan(
            &p,
            &sandbox(),
            &obs,
            &verdicts,
            &Memory::default(),
            &Backoff::default(),
            at(3),
        );
        assert_eq!(
            decided.kills,
            vec![Kill {
                id: "a-0".into(),
                grace: Duration::from_secs(7)
            }]
        );
        let reasons: Vec<&str> = decided.events.iter().map(|e| e.1).collect();
        assert_eq!(reasons, ["Unhealthy", "Killing"]);
        assert_eq!(decided.status["containerStatuses"][0]["ready"], false);
    }
}
