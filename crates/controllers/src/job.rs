//! The Job controller: pods from the template until `completions` of them have succeeded
//! (or, for a work queue, one has and the rest have finished), at most `parallelism` at a
//! time; the Job fails past its `backoffLimit`, its `activeDeadlineSeconds` or a
//! `podFailurePolicy` rule, and is deleted `ttlSecondsAfterFinished` after it finishes.
//!
//! Counts come from the pods the Job controls, and never go down: `succeeded` and `failed`
//! keep the most the status has shown, and an Indexed Job's `completedIndexes` keep every
//! index that ever succeeded, so a finished pod deleted while the Job runs is not run again
//! once counted (Kubernetes keeps such pods with a finalizer until it has counted them).
//! Replacements for failed pods wait Kubernetes' back-off: 10 s, doubled per failure, at
//! most 6 minutes.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use berth_core::kinds::batch::{COMPLETION_INDEX, JOB_NAME};
use jiff::Timestamp;
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{EnvVar, Pod};
use kube::api::{Api, DeleteParams, PostParams, PropagationPolicy};
use kube::runtime::controller::Action;
use serde_json::{json, Value};

use crate::api_err;
use crate::events::{involved_in, record};
use crate::ownership::{claim, controller_ref};
use crate::status::{ready_since, write_status};
use crate::{Context, Error};

const COMPONENT: &str = "job-controller";
/// The first back-off after a failure, and the longest.
const BACKOFF: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(360);
/// The most pods created in one pass.
const MAX_BATCH: usize = 500;

/// What one pass over a Job decided.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub writes: Vec<Write>,
    /// When to look again (`None`: on the next change).
    pub requeue: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// One pod per entry: its completion index (Indexed Jobs) or none.
    Create(Vec<Option<i64>>),
    /// These pods, named.
    Delete(Vec<String>),
    /// The Job's whole status (absent fields written as null).
    Status(Value),
    /// An Event about the Job: type, reason, message.
    Event(&'static str, &'static str, String),
    /// The Job itself, its time after finishing being up.
    DeleteJob,
}

/// A pod's part in the Job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Active,
    Succeeded,
    Failed,
    /// Being deleted before it finished.
    Terminating,
}

fn state(p: &Pod) -> State {
    match p.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Succeeded") => State::Succeeded,
        Some("Failed") => State::Failed,
        _ if p.metadata.deletion_timestamp.is_some() => State::Terminating,
        _ => State::Active,
    }
}

/// An Indexed Job pod's completion index.
pub fn index_of(p: &Pod) -> Option<i64> {
    p.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(COMPLETION_INDEX))
        .and_then(|i| i.parse().ok())
}

/// `0-2,4`: Kubernetes' compressed form of a set of indexes.
pub fn format_indexes(set: &BTreeSet<i64>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut iter = set.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end = iter.next().unwrap_or(end);
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    out.join(",")
}

/// The indexes in `0-2,4`; what does not parse is left out.
pub fn parse_indexes(s: &str) -> BTreeSet<i64> {
    let mut set = BTreeSet::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i64>(), b.parse::<i64>()) {
                    set.extend(a..=b);
                }
            }
            None => set.extend(part.parse::<i64>().ok()),
        }
    }
    set
}

fn condition_true(job: &Job, kind: &str) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == kind && c.status == "True")
}

/// When the condition `kind` last turned True.
fn condition_since(job: &Job, kind: &str) -> Option<Timestamp> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind && c.status == "True")
        .and_then(|c| c.last_transition_time.as_ref().map(|t| t.0))
}

/// When a finished pod finished: its last container's end, or when it stopped being ready.
pub(crate) fn finished_at(p: &Pod) -> Option<Timestamp> {
    let status = p.status.as_ref()?;
    let ended = status
        .container_statuses
        .iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0)
        .max();
    ended.or_else(|| {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Ready")
            .and_then(|c| c.last_transition_time.as_ref().map(|t| t.0))
    })
}

/// What a `podFailurePolicy` makes of a failed pod.
#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    Count,
    Ignore,
    FailJob(String),
}

fn judge(spec: &JobSpec, p: &Pod) -> Verdict {
    let Some(policy) = spec.pod_failure_policy.as_ref() else {
        return Verdict::Count;
    };
    let status = p.status.clone().unwrap_or_default();
    let pod_name = format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or_default(),
        p.metadata.name.as_deref().unwrap_or_default()
    );
    for (i, rule) in policy.rules.iter().enumerate() {
        let mut matched: Option<String> = None;
        if let Some(codes) = &rule.on_exit_codes {
            let statuses = status
                .init_container_statuses
                .iter()
                .flatten()
                .chain(status.container_statuses.iter().flatten());
            for c in statuses {
                if codes.container_name.as_ref().is_some_and(|n| *n != c.name) {
                    continue;
                }
                let Some(code) = c
                    .state
                    .as_ref()
                    .and_then(|s| s.terminated.as_ref())
                    .map(|t| t.exit_code)
                else {
                    continue;
                };
                if code == 0 {
                    continue;
                }
                let listed = codes.values.contains(&code);
                if listed == (codes.operator == "In") {
                    matched = Some(format!(
                        "Container {} for pod {pod_name} failed with exit code {code} matching {} rule at index {i}",
                        c.name, rule.action
                    ));
                    break;
                }
            }
        }
        for want in rule.on_pod_conditions.iter().flatten() {
            let has = status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == want.type_ && want.status == c.status);
            if has {
                matched = Some(format!(
                    "Pod {pod_name} has condition {} matching {} rule at index {i}",
                    want.type_, rule.action
                ));
            }
        }
        if let Some(why) = matched {
            return match rule.action.as_str() {
                "Ignore" => Verdict::Ignore,
                "FailJob" => Verdict::FailJob(why),
                _ => Verdict::Count,
            };
        }
    }
    Verdict::Count
}

fn condition(kind: &str, status: &str, reason: &str, message: &str, now: Timestamp) -> Value {
    json!({"type": kind, "status": status, "reason": reason, "message": message,
        "lastProbeTime": now.to_string(), "lastTransitionTime": now.to_string()})
}

/// Decide one pass over a Job from the pods it controls. `settled`: every create and delete
/// asked for earlier shows in the cache (until then nothing is created or deleted). Pure.
pub fn plan(job: &Job, pods: &[Arc<Pod>], settled: bool, now: Timestamp) -> Result<Plan, Error> {
    let meta = &job.metadata;
    let name = meta.name.clone().unwrap_or_default();
    if meta.deletion_timestamp.is_some() {
        return Ok(Plan::default());
    }
    let spec = job.spec.as_ref().ok_or_else(|| Error::Invalid {
        what: "job",
        name: name.clone(),
        why: "has no spec".into(),
    })?;
    let old = job.status.clone().unwrap_or_default();
    let mut writes = Vec::new();
    let mut requeue: Option<Duration> = None;
    let mut wake = |after: Duration| {
        requeue = Some(requeue.map_or(after, |r: Duration| r.min(after)));
    };
    let by_state = |s: State| pods.iter().filter(move |p| state(p) == s);
    let active: Vec<&Arc<Pod>> = by_state(State::Active).collect();
    let terminating = by_state(State::Terminating).count();
    let delete_active = |writes: &mut Vec<Write>| {
        let names: Vec<String> = active
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        if settled && !names.is_empty() {
            writes.push(Write::Delete(names));
        }
    };

    // Finished: nothing runs any more, and the Job goes when its time is up.
    let finished = ["Complete", "Failed"]
        .into_iter()
        .find(|c| condition_true(job, c));
    if let Some(cond) = finished {
        delete_active(&mut writes);
        if let Some(ttl) = spec.ttl_seconds_after_finished {
            let since = condition_since(job, cond)
                .or_else(|| old.completion_time.as_ref().map(|t| t.0))
                .unwrap_or(now);
            let left = since.as_second() + i64::from(ttl) - now.as_second();
            if left <= 0 {
                writes.push(Write::DeleteJob);
            } else {
                wake(Duration::from_secs(left as u64));
            }
        }
        return Ok(Plan { writes, requeue });
    }

    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let completions = spec.completions.map(i64::from);
    let parallelism = i64::from(spec.parallelism.unwrap_or(1).max(0));
    let backoff_limit = i64::from(spec.backoff_limit.unwrap_or(6).max(0));

    // Counts: what the pods show, never less than the status showed.
    let mut done: BTreeSet<i64> = parse_indexes(old.completed_indexes.as_deref().unwrap_or(""));
    let mut fail_job: Option<(&'static str, String)> = None;
    let mut failed_now = 0i64;
    let mut last_failure: Option<Timestamp> = None;
    for p in by_state(State::Failed) {
        match judge(spec, p) {
            Verdict::Ignore => continue,
            Verdict::FailJob(why) => {
                fail_job.get_or_insert(("PodFailurePolicy", why));
            }
            Verdict::Count => {}
        }
        failed_now += 1;
        last_failure = last_failure.max(finished_at(p));
    }
    let succeeded_pods: Vec<&Arc<Pod>> = by_state(State::Succeeded).collect();
    let succeeded = if indexed {
        done.extend(
            succeeded_pods
                .iter()
                .filter_map(|p| index_of(p))
                .filter(|i| completions.is_none_or(|c| *i < c)),
        );
        done.len() as i64
    } else {
        (succeeded_pods.len() as i64).max(i64::from(old.succeeded.unwrap_or(0)))
    };
    let failed = failed_now.max(i64::from(old.failed.unwrap_or(0)));
    let restarts: i64 = if spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        == Some("OnFailure")
    {
        active
            .iter()
            .filter_map(|p| p.status.as_ref())
            .flat_map(|s| {
                s.container_statuses
                    .iter()
                    .flatten()
                    .chain(s.init_container_statuses.iter().flatten())
            })
            .map(|c| i64::from(c.restart_count))
            .sum()
    } else {
        0
    };

    let suspended = spec.suspend == Some(true);
    let mut conditions: Vec<Value> = old
        .conditions
        .iter()
        .flatten()
        .filter_map(|c| serde_json::to_value(c).ok())
        .collect();
    let was_suspended = condition_true(job, "Suspended");
    let mut set_condition = |c: Value| {
        conditions.retain(|o| o["type"] != c["type"]);
        conditions.push(c);
    };
    let mut start_time = old.start_time.as_ref().map(|t| t.0);
    let mut completion_time = None;

    let complete = match completions {
        Some(c) => succeeded >= c,
        None => succeeded > 0 && active.is_empty(),
    };
    if fail_job.is_none() && !complete {
        if failed > backoff_limit
            || (restarts > 0 && (backoff_limit == 0 || restarts >= backoff_limit))
        {
            fail_job = Some((
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit".into(),
            ));
        } else if let (Some(deadline), Some(start), false) =
            (spec.active_deadline_seconds, start_time, suspended)
        {
            let left = start.as_second() + deadline - now.as_second();
            if left <= 0 {
                fail_job = Some((
                    "DeadlineExceeded",
                    "Job was active longer than specified deadline".into(),
                ));
            } else {
                wake(Duration::from_secs(left as u64));
            }
        }
    }

    if let Some((reason, message)) = fail_job {
        delete_active(&mut writes);
        set_condition(condition("Failed", "True", reason, &message, now));
        writes.push(Write::Event("Warning", reason, message));
    } else if complete {
        delete_active(&mut writes);
        completion_time = Some(now);
        set_condition(condition(
            "Complete",
            "True",
            "CompletionsReached",
            "Reached expected number of succeeded pods",
            now,
        ));
        writes.push(Write::Event("Normal", "Completed", "Job completed".into()));
    } else if suspended {
        delete_active(&mut writes);
        start_time = None;
        if !was_suspended {
            set_condition(condition(
                "Suspended",
                "True",
                "JobSuspended",
                "Job suspended",
                now,
            ));
            writes.push(Write::Event("Normal", "Suspended", "Job suspended".into()));
        }
    } else {
        if was_suspended {
            set_condition(condition(
                "Suspended",
                "False",
                "JobResumed",
                "Job resumed",
                now,
            ));
            writes.push(Write::Event("Normal", "Resumed", "Job resumed".into()));
        }
        start_time.get_or_insert(now);
        // How many should run now, and which indexes.
        let want = if indexed {
            parallelism
        } else {
            match completions {
                Some(c) => parallelism.min(c - succeeded),
                None if succeeded > 0 => 0,
                None => parallelism,
            }
        }
        .max(0);
        let mut excess: Vec<String> = Vec::new();
        let mut running: HashSet<i64> = HashSet::new();
        let mut kept = 0i64;
        for p in &active {
            let keep = if indexed {
                index_of(p).is_some_and(|i| {
                    !done.contains(&i) && completions.is_some_and(|c| i < c) && running.insert(i)
                })
            } else {
                kept < want
            };
            if keep {
                kept += 1;
            } else {
                excess.extend(p.metadata.name.clone());
            }
        }
        if indexed && kept > want {
            // Parallelism went down: the highest indexes stop first.
            let mut highest: Vec<(i64, String)> = active
                .iter()
                .filter_map(|p| Some((index_of(p)?, p.metadata.name.clone()?)))
                .filter(|(i, n)| running.contains(i) && !excess.contains(n))
                .collect();
            highest.sort();
            for (_, n) in highest.into_iter().rev().take((kept - want) as usize) {
                excess.push(n);
            }
            kept = want;
        }
        if settled && !excess.is_empty() {
            writes.push(Write::Delete(excess));
        }
        let room = (want - kept).max(0) as usize;
        // Replacements for failures wait out the back-off.
        let wait = match (failed_now > 0, last_failure) {
            (true, Some(at)) => {
                let doublings = (failed - 1).clamp(0, 10) as u32;
                let delay = BACKOFF.saturating_mul(1 << doublings).min(MAX_BACKOFF);
                let left = at.as_second() + delay.as_secs() as i64 - now.as_second();
                (left > 0).then(|| Duration::from_secs(left as u64))
            }
            _ => None,
        };
        if settled && room > 0 {
            match wait {
                Some(left) => wake(left),
                None => {
                    let new: Vec<Option<i64>> = if indexed {
                        let total = completions.unwrap_or(0);
                        (0..total)
                            .filter(|i| !done.contains(i) && !running.contains(i))
                            .take(room)
                            .map(Some)
                            .collect()
                    } else {
                        vec![None; room]
                    };
                    if !new.is_empty() {
                        writes.push(Write::Create(new));
                    }
                }
            }
        }
    }

    let ready = active.iter().filter(|p| ready_since(p).is_some()).count();
    let status = json!({
        "active": (!active.is_empty()).then_some(active.len()),
        "ready": ready,
        "terminating": terminating,
        "succeeded": (succeeded > 0).then_some(succeeded),
        "failed": (failed > 0).then_some(failed),
        "completedIndexes": (indexed && !done.is_empty()).then(|| format_indexes(&done)),
        "startTime": start_time.map(|t| t.to_string()),
        "completionTime": completion_time.map(|t| t.to_string()),
        "conditions": (!conditions.is_empty()).then_some(&conditions),
        "uncountedTerminatedPods": {},
    });
    if status_differs(&old, &status) {
        writes.push(Write::Status(status));
    }
    Ok(Plan { writes, requeue })
}

/// Does the planned status change anything the stored one shows?
fn status_differs(old: &k8s_openapi::api::batch::v1::JobStatus, new: &Value) -> bool {
    let old = serde_json::to_value(old).unwrap_or_default();
    let zero = |v: Option<&Value>| match v {
        None | Some(Value::Null) => json!(0),
        Some(v) => v.clone(),
    };
    let counts = ["active", "ready", "terminating", "succeeded", "failed"];
    if counts
        .iter()
        .any(|k| zero(old.get(*k)) != zero(new.get(*k)))
    {
        return true;
    }
    let same = |k: &str| old.get(k).filter(|v| !v.is_null()) == new.get(k).filter(|v| !v.is_null());
    let conditions = |v: &Value| -> Vec<(Value, Value)> {
        v["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| (c["type"].clone(), c["status"].clone()))
            .collect()
    };
    !same("completedIndexes")
        || old.get("startTime").is_some() != new["startTime"].is_string()
        || old.get("completionTime").is_some() != new["completionTime"].is_string()
        || conditions(&old) != conditions(new)
}

pub async fn reconcile(job: Arc<Job>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.synced().await?;
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let meta = &job.metadata;
    let ns = meta.namespace.clone().unwrap_or_default();
    let uid = meta.uid.clone().unwrap_or_default();
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pods = claim(
        &pods_api,
        ("batch/v1", "Job", meta),
        &Api::<Job>::namespaced(ctx.client.clone(), &ns),
        job.spec.as_ref().and_then(|s| s.selector.as_ref()),
        &ctx.pods,
    )
    .await?;
    let present: HashSet<String> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    let settled = ctx.expectations.satisfied(&uid, &present);
    let plan = plan(&job, &pods, settled, Timestamp::now())?;
    execute(&ctx, &job, &pods_api, plan).await
}

/// Make a plan's writes in order.
async fn execute(ctx: &Context, job: &Job, pods: &Api<Pod>, plan: Plan) -> Result<Action, Error> {
    let ns = job.metadata.namespace.clone().unwrap_or_default();
    let name = job.metadata.name.clone().unwrap_or_default();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let about = || involved_in("batch/v1", "Job", &job.metadata);
    let jobs = Api::<Job>::namespaced(ctx.client.clone(), &ns);
    for write in plan.writes {
        match write {
            Write::Create(indexes) => create_pods(ctx, job, pods, indexes).await?,
            Write::Delete(victims) => {
                ctx.expectations.expect(&uid, vec![], victims.clone());
                for v in &victims {
                    match pods.delete(v, &DeleteParams::default()).await {
                        Ok(_) => {}
                        Err(kube::Error::Api(s)) if s.code == 404 => {}
                        Err(e) => return Err(api_err(format!("deleting pod {ns}/{v}"))(e)),
                    }
                    let msg = format!("Deleted pod: {v}");
                    record(
                        &ctx.client,
                        about(),
                        "Normal",
                        "SuccessfulDelete",
                        &msg,
                        COMPONENT,
                    );
                }
            }
            Write::Status(status) => {
                write_status(&jobs, &name, status, &format!("job {ns}/{name}")).await?;
            }
            Write::Event(type_, reason, message) => {
                record(&ctx.client, about(), type_, reason, &message, COMPONENT);
            }
            Write::DeleteJob => {
                let dp = DeleteParams {
                    propagation_policy: Some(PropagationPolicy::Background),
                    preconditions: Some(kube::api::Preconditions {
                        uid: Some(uid.clone()),
                        resource_version: None,
                    }),
                    ..DeleteParams::default()
                };
                match jobs.delete(&name, &dp).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                    Err(e) => return Err(api_err(format!("deleting job {ns}/{name}"))(e)),
                }
            }
        }
    }
    Ok(plan
        .requeue
        .map_or_else(Action::await_change, Action::requeue))
}

/// A pod from the Job's template, owned by it; an Indexed Job's pod carries its index (the
/// annotation and label, `JOB_COMPLETION_INDEX` in every container, and the hostname
/// `<job>-<index>`).
pub fn pod_for(job: &Job, index: Option<i64>) -> Result<Pod, Error> {
    let name = job.metadata.name.clone().unwrap_or_default();
    let template = job
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let mut meta = template.metadata.unwrap_or_default();
    let mut spec = template.spec.ok_or_else(|| Error::Invalid {
        what: "job",
        name: name.clone(),
        why: "spec.template.spec is missing".into(),
    })?;
    meta.name = None;
    meta.namespace = job.metadata.namespace.clone();
    meta.owner_references = Some(vec![controller_ref("batch/v1", "Job", &job.metadata)]);
    meta.labels
        .get_or_insert_with(Default::default)
        .entry(JOB_NAME.to_string())
        .or_insert_with(|| name.clone());
    match index {
        Some(i) => {
            meta.generate_name = Some(format!("{name}-{i}-"));
            meta.annotations
                .get_or_insert_with(Default::default)
                .insert(COMPLETION_INDEX.into(), i.to_string());
            meta.labels
                .get_or_insert_with(Default::default)
                .insert(COMPLETION_INDEX.into(), i.to_string());
            if spec.hostname.is_none() {
                spec.hostname = Some(format!("{name}-{i}"));
            }
            let containers = spec
                .containers
                .iter_mut()
                .chain(spec.init_containers.iter_mut().flatten());
            for c in containers {
                let env = c.env.get_or_insert_with(Vec::new);
                if !env.iter().any(|e| e.name == "JOB_COMPLETION_INDEX") {
                    env.push(EnvVar {
                        name: "JOB_COMPLETION_INDEX".into(),
                        value: Some(i.to_string()),
                        value_from: None,
                    });
                }
            }
        }
        None => meta.generate_name = Some(format!("{name}-")),
    }
    Ok(Pod {
        metadata: meta,
        spec: Some(spec),
        status: None,
    })
}

async fn create_pods(
    ctx: &Context,
    job: &Job,
    api: &Api<Pod>,
    indexes: Vec<Option<i64>>,
) -> Result<(), Error> {
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let pp = PostParams::default();
    let pods = indexes
        .into_iter()
        .take(MAX_BATCH)
        .map(|i| pod_for(job, i))
        .collect::<Result<Vec<_>, _>>()?;
    let results = futures::future::join_all(pods.iter().map(|p| api.create(&pp, p))).await;
    let mut names = Vec::new();
    let mut failure = None;
    for r in results {
        match r {
            Ok(p) => names.push(p.metadata.name.unwrap_or_default()),
            Err(e) => failure = Some(e),
        }
    }
    ctx.expectations.expect(&uid, names.clone(), vec![]);
    let about = || involved_in("batch/v1", "Job", &job.metadata);
    for n in &names {
        let msg = format!("Created pod: {n}");
        record(
            &ctx.client,
            about(),
            "Normal",
            "SuccessfulCreate",
            &msg,
            COMPONENT,
        );
    }
    if let Some(e) = failure {
        let msg = format!("Error creating: {e}");
        record(
            &ctx.client,
            about(),
            "Warning",
            "FailedCreate",
            &msg,
            COMPONENT,
        );
        let ns = job.metadata.namespace.clone().unwrap_or_default();
        let name = job.metadata.name.clone().unwrap_or_default();
        return Err(api_err(format!("creating pods for job {ns}/{name}"))(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn job(completions: Option<i32>, parallelism: i32, indexed: bool, backoff: i32) -> Job {
        let mut j: Job = serde_json::from_value(json!({
            "metadata": {"name": "work", "namespace": "default", "uid": "u-1"},
            "spec": {"parallelism": parallelism, "backoffLimit": backoff,
                "completionMode": if indexed { "Indexed" } else { "NonIndexed" },
                "template": {"spec": {"restartPolicy": "Never",
                    "containers": [{"name": "c", "image": "busybox"}]}}},
        }))
        .unwrap();
        j.spec.as_mut().unwrap().completions = completions;
        j
    }

    /// A Job, its pods, and a clock: the controller's writes applied at once, and kubelets
    /// that finish running pods, some failing.
    struct World {
        job: Job,
        pods: Vec<Arc<Pod>>,
        now: Timestamp,
        made: usize,
        rng: u64,
    }

    impl World {
        fn new(job: Job, seed: u64) -> World {
            World {
                job,
                pods: Vec::new(),
                now: "2026-12-06T10:00:00Z".parse().unwrap(),
                made: 0,
                rng: seed | 1,
            }
        }

        fn roll(&mut self, percent: u64) -> bool {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            self.rng % 100 < percent
        }

        fn controller(&mut self) -> Plan {
            let p = plan(&self.job, &self.pods, true, self.now).unwrap();
            for w in &p.writes {
                match w {
                    Write::Create(indexes) => {
                        for i in indexes {
                            let mut pod = pod_for(&self.job, *i).unwrap();
                            pod.metadata.name = Some(format!("p{}", self.made));
                            self.made += 1;
                            pod.status =
                                Some(serde_json::from_value(json!({"phase": "Running"})).unwrap());
                            self.pods.push(Arc::new(pod));
                        }
                    }
                    Write::Delete(names) => self
                        .pods
                        .retain(|p| !names.contains(p.metadata.name.as_ref().unwrap())),
                    Write::Status(s) => {
                        let mut s = s.clone();
                        s.as_object_mut().unwrap().retain(|_, v| !v.is_null());
                        self.job.status = Some(serde_json::from_value(s).unwrap());
                    }
                    Write::Event(..) | Write::DeleteJob => {}
                }
            }
            p
        }

        fn kubelets(&mut self, finish_percent: u64, fail_percent: u64) {
            let now = self.now;
            for i in 0..self.pods.len() {
                if state(&self.pods[i]) != State::Active || !self.roll(finish_percent) {
                    continue;
                }
                let failed = self.roll(fail_percent);
                let mut p = (*self.pods[i]).clone();
                p.status = Some(
                    serde_json::from_value(json!({
                        "phase": if failed { "Failed" } else { "Succeeded" },
                        "containerStatuses": [{"name": "c", "image": "busybox", "imageID": "",
                            "ready": false, "restartCount": 0,
                            "state": {"terminated": {"exitCode": i32::from(failed),
                                "finishedAt": now.to_string()}}}],
                    }))
                    .unwrap(),
                );
                self.pods[i] = Arc::new(p);
            }
            self.now += jiff::SignedDuration::from_secs(15);
        }

        fn active(&self) -> Vec<&Arc<Pod>> {
            self.pods
                .iter()
                .filter(|p| state(p) == State::Active)
                .collect()
        }

        fn finished(&self) -> Option<&'static str> {
            ["Complete", "Failed"]
                .into_iter()
                .find(|c| condition_true(&self.job, c))
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// A Job never runs more than `parallelism` pods, never two of one index, never
        /// succeeds more pods than `completions`, and finishes: Complete when nothing
        /// fails past the back-off limit.
        #[test]
        fn a_job_keeps_to_parallelism_and_completes(
            completions in 1i32..12,
            parallelism in 1i32..5,
            indexed in any::<bool>(),
            fail_percent in prop_oneof![Just(0u64), 5u64..40],
            seed in any::<u64>(),
        ) {
            let mut w = World::new(job(Some(completions), parallelism, indexed, 6), seed);
            for _ in 0..400 {
                w.controller();
                let active = w.active();
                prop_assert!(active.len() <= parallelism as usize, "{} active, parallelism {parallelism}", active.len());
                if indexed {
                    let idx: HashSet<i64> = active.iter().filter_map(|p| index_of(p)).collect();
                    prop_assert_eq!(idx.len(), active.len(), "two pods of one index");
                } else {
                    let succeeded = w.pods.iter().filter(|p| state(p) == State::Succeeded).count();
                    prop_assert!(succeeded <= completions as usize);
                }
                if w.finished().is_some() {
                    break;
                }
                w.kubelets(50, fail_percent);
            }
            let status = w.job.status.clone().unwrap();
            match w.finished() {
                Some("Complete") => {
                    prop_assert_eq!(status.succeeded, Some(completions));
                    if indexed {
                        let all = if completions == 1 { "0".to_string() } else { format!("0-{}", completions - 1) };
                        prop_assert_eq!(status.completed_indexes, Some(all));
                    }
                }
                Some(_) => prop_assert!(status.failed.unwrap_or(0) > 6),
                None => prop_assert!(false, "the job never finished: {status:?}"),
            }
            if fail_percent == 0 {
                prop_assert_eq!(w.finished(), Some("Complete"));
            }
        }
    }

    #[test]
    fn a_failing_job_waits_out_the_back_off_then_stops_at_its_limit() {
        let mut w = World::new(job(Some(1), 1, false, 1), 7);
        w.controller();
        w.kubelets(100, 100);
        // A failure: the replacement waits 10 s.
        let p = w.controller();
        assert_eq!(w.active().len(), 1, "15 s passed: replaced");
        assert_eq!(p.requeue, None);
        assert!(w.finished().is_none());
        assert_eq!(w.pods.len(), 2, "replaced after the back-off");
        w.kubelets(100, 100);
        w.controller();
        assert_eq!(w.finished(), Some("Failed"));
        let reason = w.job.status.as_ref().unwrap().conditions.as_ref().unwrap()[0]
            .reason
            .clone();
        assert_eq!(reason.as_deref(), Some("BackoffLimitExceeded"));
    }

    #[test]
    fn the_back_off_delays_a_replacement() {
        let mut w = World::new(job(Some(1), 1, false, 3), 7);
        w.controller();
        w.kubelets(100, 100);
        w.now -= jiff::SignedDuration::from_secs(12);
        let p = w.controller();
        assert!(
            w.active().is_empty(),
            "no replacement within 10 s of the failure"
        );
        assert_eq!(p.requeue, Some(Duration::from_secs(7)));
    }

    #[test]
    fn a_pod_failure_policy_fails_the_job_or_ignores_the_pod() {
        let mut j = job(Some(1), 1, false, 6);
        j.spec.as_mut().unwrap().pod_failure_policy = Some(
            serde_json::from_value(json!({"rules": [
                {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [1]}}]}))
            .unwrap(),
        );
        let mut w = World::new(j, 3);
        w.controller();
        w.kubelets(100, 100);
        w.controller();
        assert_eq!(w.finished(), Some("Failed"));
        let c = &w.job.status.as_ref().unwrap().conditions.as_ref().unwrap()[0];
        assert_eq!(c.reason.as_deref(), Some("PodFailurePolicy"));
        assert!(c
            .message
            .as_deref()
            .unwrap()
            .contains("exit code 1 matching FailJob rule at index 0"));
    }

    #[test]
    fn suspending_stops_the_pods_and_resuming_starts_them() {
        let mut w = World::new(job(Some(4), 2, false, 6), 5);
        w.controller();
        assert_eq!(w.active().len(), 2);
        w.job.spec.as_mut().unwrap().suspend = Some(true);
        w.controller();
        assert!(w.active().is_empty());
        assert!(condition_true(&w.job, "Suspended"));
        assert!(w.job.status.as_ref().unwrap().start_time.is_none());
        w.job.spec.as_mut().unwrap().suspend = Some(false);
        w.controller();
        assert_eq!(w.active().len(), 2);
        assert!(!condition_true(&w.job, "Suspended"));
    }

    #[test]
    fn a_finished_job_goes_after_its_ttl_and_a_deadline_fails_it() {
        let mut j = job(Some(1), 1, false, 6);
        j.spec.as_mut().unwrap().ttl_seconds_after_finished = Some(30);
        let mut w = World::new(j, 9);
        w.controller();
        w.kubelets(100, 0);
        w.controller();
        assert_eq!(w.finished(), Some("Complete"));
        let p = w.controller();
        assert_eq!(p.requeue, Some(Duration::from_secs(30)));
        w.now += jiff::SignedDuration::from_secs(30);
        assert_eq!(w.controller().writes, vec![Write::DeleteJob]);

        let mut j = job(Some(1), 1, false, 6);
        j.spec.as_mut().unwrap().active_deadline_seconds = Some(20);
        let mut w = World::new(j, 9);
        w.controller();
        w.kubelets(0, 0);
        w.kubelets(0, 0);
        w.controller();
        assert_eq!(w.finished(), Some("Failed"));
        assert!(w.active().is_empty());
    }

    #[test]
    fn indexes_compress_to_ranges_and_back() {
        let set: BTreeSet<i64> = [0, 1, 2, 4, 6, 7].into_iter().collect();
        assert_eq!(format_indexes(&set), "0-2,4,6-7");
        assert_eq!(parse_indexes("0-2,4,6-7"), set);
        assert_eq!(format_indexes(&BTreeSet::new()), "");
    }

    #[test]
    fn an_indexed_pod_knows_its_index() {
        let pod = pod_for(&job(Some(3), 3, true, 6), Some(2)).unwrap();
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("work-2-"));
        assert_eq!(pod.metadata.annotations.unwrap()[COMPLETION_INDEX], "2");
        let spec = pod.spec.unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("work-2"));
        let env = spec.containers[0].env.as_ref().unwrap();
        assert!(env
            .iter()
            .any(|e| e.name == "JOB_COMPLETION_INDEX" && e.value.as_deref() == Some("2")));
    }
}
