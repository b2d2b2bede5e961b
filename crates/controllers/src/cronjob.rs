//! The CronJob controller: a Job from the template at each time the schedule names, read in
//! the CronJob's `timeZone`; its unfinished Jobs listed in `status.active`, and its finished
//! ones kept up to the history limits.
//!
//! Each pass looks at the times the schedule fired since the last one it ran (or since the
//! CronJob was made), so runs missed while the controller was down are caught up as
//! Kubernetes does it: only the latest missed time runs, and only if it is no older than
//! `startingDeadlineSeconds`; more than 100 missed times is reported. A Job's name is the
//! CronJob's and its scheduled minute, so two passes over the same time make one Job.

use std::sync::Arc;
use std::time::Duration;

use berth_core::cron::Schedule;
use berth_core::kinds::batch::cronjob_zone;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use kube::api::{Api, DeleteParams, PostParams, PropagationPolicy};
use kube::runtime::controller::Action;
use serde_json::{json, Value};

use crate::api_err;
use crate::events::{delete_each, involved_in, record};
use crate::ownership::{controlled_by, controller_ref};
use crate::status::write_status;
use crate::{Context, Error};

const COMPONENT: &str = "cronjob-controller";
/// The annotation a Job carries with the time it was scheduled for.
pub const SCHEDULED_AT: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// More missed times than this since the last run is worth a warning.
const TOO_MANY_MISSED: usize = 100;

/// What one pass over a CronJob decided.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Jobs to delete, by name: finished ones past the history limits, or the unfinished
    /// ones a `Replace` run supersedes.
    pub delete: Vec<String>,
    /// The scheduled time to make a Job for.
    pub create: Option<Timestamp>,
    /// The status to write (`active`, `lastScheduleTime`, `lastSuccessfulTime`), if it
    /// changed; a created Job is added to `active` when it exists.
    pub status: Option<Value>,
    /// Events: type, reason, message.
    pub events: Vec<(&'static str, &'static str, String)>,
    /// When the schedule next fires.
    pub requeue: Option<Duration>,
}

/// How a Job ended, and when, if it has.
fn finished(job: &Job) -> Option<(&'static str, Timestamp)> {
    let status = job.status.as_ref()?;
    let cond = status
        .conditions
        .iter()
        .flatten()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")?;
    let kind = if cond.type_ == "Complete" {
        "Complete"
    } else {
        "Failed"
    };
    let at = status
        .completion_time
        .as_ref()
        .or(cond.last_transition_time.as_ref())
        .map_or(Timestamp::UNIX_EPOCH, |t| t.0);
    Some((kind, at))
}

/// When a Job started, for ordering history: its start time, else its creation.
fn started(job: &Job) -> Timestamp {
    job.status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .or(job.metadata.creation_timestamp.as_ref())
        .map_or(Timestamp::UNIX_EPOCH, |t| t.0)
}

/// The name of the Job for the time `at`: the CronJob's and the minute since the epoch.
pub fn job_name(cronjob: &str, at: Timestamp) -> String {
    format!("{cronjob}-{}", at.as_second().div_euclid(60))
}

/// A reference to a Job, as `status.active` lists it.
fn reference(job: &Job) -> Value {
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": job.metadata.name,
        "namespace": job.metadata.namespace,
        "uid": job.metadata.uid,
        "resourceVersion": job.metadata.resource_version,
    })
}

fn uids(refs: &[Value]) -> Vec<&str> {
    let mut v: Vec<&str> = refs.iter().filter_map(|r| r["uid"].as_str()).collect();
    v.sort_unstable();
    v
}

/// Decide one pass over a CronJob, given the Jobs it controls and the time.
pub fn plan(cj: &CronJob, jobs: &[Arc<Job>], now: Timestamp) -> Plan {
    let mut out = Plan::default();
    let meta = &cj.metadata;
    let name = meta.name.clone().unwrap_or_default();
    let Some(spec) = cj.spec.as_ref() else {
        return out;
    };
    if meta.deletion_timestamp.is_some() {
        return out;
    }
    let old = cj.status.clone().unwrap_or_default();
    let mut active: Vec<&Arc<Job>> = jobs.iter().filter(|j| finished(j).is_none()).collect();
    active.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let last_success = jobs
        .iter()
        .filter_map(|j| {
            finished(j)
                .filter(|(k, _)| *k == "Complete")
                .map(|(_, t)| t)
        })
        .chain(old.last_successful_time.as_ref().map(|t| t.0))
        .max();

    // History: the oldest finished Jobs past each limit go.
    for (kind, limit) in [
        ("Complete", spec.successful_jobs_history_limit.unwrap_or(3)),
        ("Failed", spec.failed_jobs_history_limit.unwrap_or(1)),
    ] {
        let mut done: Vec<&Arc<Job>> = jobs
            .iter()
            .filter(|j| finished(j).is_some_and(|(k, _)| k == kind))
            .filter(|j| j.metadata.deletion_timestamp.is_none())
            .collect();
        done.sort_by_key(|j| (started(j), j.metadata.name.clone()));
        let excess = done.len().saturating_sub(limit.max(0) as usize);
        out.delete.extend(
            done.iter()
                .take(excess)
                .filter_map(|j| j.metadata.name.clone()),
        );
    }

    let mut last_schedule = old.last_schedule_time.as_ref().map(|t| t.0);
    if !spec.suspend.unwrap_or(false) {
        match (
            cronjob_zone(spec.time_zone.as_deref()),
            spec.schedule.parse::<Schedule>(),
        ) {
            (Err(why), _) => out.events.push(("Warning", "UnknownTimeZone", why)),
            (_, Err(why)) => out.events.push((
                "Warning",
                "UnparseableSchedule",
                format!("unparseable schedule {:?}: {why}", spec.schedule),
            )),
            (Ok(tz), Ok(schedule)) => {
                let due = due(cj, &schedule, &tz, now, &mut out);
                if let Some(at) = due {
                    let already = jobs
                        .iter()
                        .any(|j| j.metadata.name.as_deref() == Some(&job_name(&name, at)));
                    let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
                    if already {
                        last_schedule = last_schedule.max(Some(at));
                    } else if policy == "Forbid" && !active.is_empty() {
                        out.events.push((
                            "Normal",
                            "JobAlreadyActive",
                            "Not starting job because prior execution is running and concurrency policy is Forbid".into(),
                        ));
                    } else {
                        if policy == "Replace" {
                            out.delete
                                .extend(active.iter().filter_map(|j| j.metadata.name.clone()));
                            active.clear();
                        }
                        out.create = Some(at);
                        last_schedule = Some(at);
                    }
                }
                out.requeue = schedule.next_after(now, &tz).map(|next| {
                    let wait = next.duration_since(now).as_millis().max(0) as u64;
                    Duration::from_millis(wait + 100)
                });
            }
        }
    }

    let active: Vec<Value> = active.iter().map(|j| reference(j)).collect();
    let time = |t: Option<Timestamp>| t.map(|t| json!(t.to_string()));
    let old_active: Vec<Value> = old
        .active
        .iter()
        .flatten()
        .map(|r| json!({"uid": r.uid}))
        .collect();
    let changed = uids(&old_active) != uids(&active)
        || old.last_schedule_time.as_ref().map(|t| t.0) != last_schedule
        || old.last_successful_time.as_ref().map(|t| t.0) != last_success;
    if changed || out.create.is_some() {
        out.status = Some(json!({
            "active": if active.is_empty() { Value::Null } else { json!(active) },
            "lastScheduleTime": time(last_schedule),
            "lastSuccessfulTime": time(last_success),
        }));
    }
    out
}

/// The scheduled time a Job is due for now, if any: the latest the schedule fired since the
/// last run (or the CronJob's creation), no older than `startingDeadlineSeconds`.
fn due(
    cj: &CronJob,
    schedule: &Schedule,
    tz: &TimeZone,
    now: Timestamp,
    out: &mut Plan,
) -> Option<Timestamp> {
    let spec = cj.spec.as_ref()?;
    let mut since = cj
        .status
        .as_ref()
        .and_then(|s| s.last_schedule_time.as_ref())
        .or(cj.metadata.creation_timestamp.as_ref())
        .map_or(now, |t| t.0);
    if let Some(deadline) = spec.starting_deadline_seconds {
        let earliest = now - jiff::SignedDuration::from_secs(deadline);
        since = since.max(earliest);
    }
    let (last, missed) = schedule.last_between(since, now, tz, TOO_MANY_MISSED + 1);
    if missed > TOO_MANY_MISSED {
        out.events.push((
            "Warning",
            "TooManyMissedTimes",
            format!("too many missed start times: {missed}. Set or decrease .spec.startingDeadlineSeconds or check clock skew"),
        ));
    }
    last
}

/// The Job for the time `at`, from the CronJob's template and owned by it.
pub fn job_for(cj: &CronJob, at: Timestamp) -> Job {
    let spec = cj.spec.clone().unwrap_or_default();
    let template = spec.job_template;
    let mut meta = template.metadata.unwrap_or_default();
    let name = cj.metadata.name.clone().unwrap_or_default();
    meta.name = Some(job_name(&name, at));
    meta.generate_name = None;
    meta.namespace = cj.metadata.namespace.clone();
    meta.owner_references = Some(vec![controller_ref("batch/v1", "CronJob", &cj.metadata)]);
    let tz = cronjob_zone(spec.time_zone.as_deref()).unwrap_or(TimeZone::UTC);
    let stamp = at.to_zoned(tz).strftime("%Y-%m-%dT%H:%M:%S%:z").to_string();
    meta.annotations
        .get_or_insert_with(Default::default)
        .insert(SCHEDULED_AT.into(), stamp);
    Job {
        metadata: meta,
        spec: template.spec,
        status: None,
    }
}

pub async fn reconcile(cj: Arc<CronJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.synced().await?;
    let uid = cj.metadata.uid.clone().unwrap_or_default();
    let ns = cj.metadata.namespace.clone().unwrap_or_default();
    let jobs: Vec<Arc<Job>> = ctx
        .jobs
        .state()
        .into_iter()
        .filter(|j| j.metadata.namespace.as_deref() == Some(&ns))
        .filter(|j| controlled_by(&j.metadata, &uid))
        .collect();
    let plan = plan(&cj, &jobs, Timestamp::now());
    execute(&ctx, &cj, plan).await
}

/// Make a plan's writes: deletions, the new Job, the status, the events.
async fn execute(ctx: &Context, cj: &CronJob, plan: Plan) -> Result<Action, Error> {
    let ns = cj.metadata.namespace.clone().unwrap_or_default();
    let name = cj.metadata.name.clone().unwrap_or_default();
    let about = || involved_in("batch/v1", "CronJob", &cj.metadata);
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let background = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    delete_each(
        &ctx.client,
        &jobs,
        &plan.delete,
        &background,
        about(),
        COMPONENT,
        |v| format!("Deleted job {v}"),
    )
    .await?;
    let mut status = plan.status;
    if let Some(at) = plan.create {
        let job = job_for(cj, at);
        let job_name = job.metadata.name.clone().unwrap_or_default();
        let made = match jobs.create(&PostParams::default(), &job).await {
            Ok(made) => {
                let msg = format!("Created job {job_name}");
                record(
                    &ctx.client,
                    about(),
                    "Normal",
                    "SuccessfulCreate",
                    &msg,
                    COMPONENT,
                );
                Some(made)
            }
            // Made by an earlier pass whose Job the cache had not shown yet.
            Err(kube::Error::Api(s)) if s.code == 409 => None,
            Err(e) => {
                let msg = format!("Error creating job: {e}");
                record(
                    &ctx.client,
                    about(),
                    "Warning",
                    "FailedCreate",
                    &msg,
                    COMPONENT,
                );
                return Err(api_err(format!("creating job {ns}/{job_name}"))(e));
            }
        };
        if let (Some(made), Some(status)) = (made, status.as_mut()) {
            let mut active = status["active"].as_array().cloned().unwrap_or_default();
            active.push(reference(&made));
            status["active"] = json!(active);
        }
    }
    if let Some(status) = status {
        let api: Api<CronJob> = Api::namespaced(ctx.client.clone(), &ns);
        write_status(&api, &name, status, &format!("cronjob {ns}/{name}")).await?;
    }
    // A warning that holds until the schedule moves on is written once, not on every pass.
    let uid = cj.metadata.uid.clone().unwrap_or_default();
    let since = cj
        .status
        .as_ref()
        .and_then(|s| s.last_schedule_time.as_ref())
        .map(|t| t.0.to_string())
        .unwrap_or_default();
    for (type_, reason, message) in plan.events {
        if ctx.noted(format!("cronjob/{uid}/{reason}"), &since) {
            record(&ctx.client, about(), type_, reason, &message, COMPONENT);
        }
    }
    Ok(plan
        .requeue
        .map_or_else(Action::await_change, Action::requeue))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn cronjob(extra: Value) -> CronJob {
        let mut v = json!({
            "metadata": {"name": "tick", "namespace": "default", "uid": "cj-1",
                "creationTimestamp": "2026-12-06T10:00:30Z"},
            "spec": {"schedule": "*/1 * * * *", "timeZone": "UTC",
                "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never",
                    "containers": [{"name": "c", "image": "busybox"}]}}}}},
        });
        json_patch::merge(&mut v, &extra);
        serde_json::from_value(v).unwrap()
    }

    fn job(cj: &CronJob, scheduled: &str, ended: Option<(&str, &str)>) -> Arc<Job> {
        let mut j = job_for(cj, at(scheduled));
        j.metadata.uid = j.metadata.name.clone();
        j.metadata.creation_timestamp = Some(Time(at(scheduled)));
        if let Some((kind, when)) = ended {
            j.status = Some(
                serde_json::from_value(json!({"startTime": scheduled,
                    "completionTime": if kind == "Complete" { json!(when) } else { Value::Null },
                    "conditions": [{"type": kind, "status": "True", "lastTransitionTime": when}]}))
                .unwrap(),
            );
        }
        Arc::new(j)
    }

    #[test]
    fn a_job_at_each_scheduled_minute_and_a_wake_for_the_next() {
        let cj = cronjob(json!({}));
        // Before the first minute: nothing yet, back at 10:01.
        let p = plan(&cj, &[], at("2026-12-06T10:00:40Z"));
        assert_eq!(p.create, None);
        assert_eq!(p.requeue, Some(Duration::from_millis(20_100)));
        let p = plan(&cj, &[], at("2026-12-06T10:01:00.5Z"));
        assert_eq!(p.create, Some(at("2026-12-06T10:01:00Z")));
        assert_eq!(
            p.status.unwrap()["lastScheduleTime"],
            "2026-12-06T10:01:00Z"
        );
        let made = job_for(&cj, at("2026-12-06T10:01:00Z"));
        assert_eq!(made.metadata.name.as_deref(), Some("tick-29942521"));
        assert_eq!(
            made.metadata.annotations.unwrap()[SCHEDULED_AT],
            "2026-12-06T10:01:00+00:00"
        );
    }

    #[test]
    fn a_job_already_made_for_a_time_is_not_made_again() {
        let cj = cronjob(json!({}));
        let jobs = [job(&cj, "2026-12-06T10:01:00Z", None)];
        let p = plan(&cj, &jobs, at("2026-12-06T10:01:02Z"));
        assert_eq!(p.create, None);
        let status = p.status.unwrap();
        assert_eq!(status["active"][0]["name"], "tick-29942521");
        assert_eq!(status["lastScheduleTime"], "2026-12-06T10:01:00Z");
    }

    #[test]
    fn concurrency_policies() {
        let now = at("2026-12-06T10:02:01Z");
        let last = json!({"status": {"lastScheduleTime": "2026-12-06T10:01:00Z"}});
        for (policy, create, delete) in [
            ("Allow", true, vec![]),
            ("Forbid", false, vec![]),
            ("Replace", true, vec!["tick-29942521".to_string()]),
        ] {
            let mut extra = last.clone();
            extra["spec"] = json!({"concurrencyPolicy": policy});
            let cj = cronjob(extra);
            let running = [job(&cj, "2026-12-06T10:01:00Z", None)];
            let p = plan(&cj, &running, now);
            assert_eq!(p.create.is_some(), create, "{policy}");
            assert_eq!(p.delete, delete, "{policy}");
        }
    }

    #[test]
    fn history_keeps_the_newest_finished_jobs_within_the_limits() {
        let cj = cronjob(
            json!({"spec": {"successfulJobsHistoryLimit": 2, "failedJobsHistoryLimit": 0},
            "status": {"lastScheduleTime": "2026-12-06T10:05:00Z"}}),
        );
        let jobs = [
            job(
                &cj,
                "2026-12-06T10:01:00Z",
                Some(("Complete", "2026-12-06T10:01:05Z")),
            ),
            job(
                &cj,
                "2026-12-06T10:02:00Z",
                Some(("Complete", "2026-12-06T10:02:05Z")),
            ),
            job(
                &cj,
                "2026-12-06T10:03:00Z",
                Some(("Failed", "2026-12-06T10:03:05Z")),
            ),
            job(
                &cj,
                "2026-12-06T10:04:00Z",
                Some(("Complete", "2026-12-06T10:04:05Z")),
            ),
        ];
        let p = plan(&cj, &jobs, at("2026-12-06T10:05:30Z"));
        assert_eq!(p.delete, ["tick-29942521", "tick-29942523"]);
        assert_eq!(
            p.status.unwrap()["lastSuccessfulTime"],
            "2026-12-06T10:04:05Z"
        );
    }

    #[test]
    fn missed_runs_after_a_restart_run_once_within_the_deadline() {
        // Down from 10:01 to 12:00: 119 missed minutes, only 12:00 runs.
        let cj = cronjob(json!({"status": {"lastScheduleTime": "2026-12-06T10:01:00Z"}}));
        let p = plan(&cj, &[], at("2026-12-06T12:00:10Z"));
        assert_eq!(p.create, Some(at("2026-12-06T12:00:00Z")));
        assert!(p.events.iter().any(|e| e.1 == "TooManyMissedTimes"));
        // With a 5 s starting deadline, 12:00 is too late at 12:00:10: nothing runs.
        let cj = cronjob(json!({"spec": {"startingDeadlineSeconds": 5},
            "status": {"lastScheduleTime": "2026-12-06T10:01:00Z"}}));
        let p = plan(&cj, &[], at("2026-12-06T12:00:10Z"));
        assert_eq!(p.create, None);
        assert!(p.events.is_empty());
        // An hourly schedule in Paris: 09:00 there is 08:00Z in December.
        let cj = cronjob(
            json!({"spec": {"schedule": "0 9 * * *", "timeZone": "Europe/Paris"},
            "status": {"lastScheduleTime": "2026-12-05T08:00:00Z"}}),
        );
        let p = plan(&cj, &[], at("2026-12-06T08:00:03Z"));
        assert_eq!(p.create, Some(at("2026-12-06T08:00:00Z")));
        assert_eq!(
            job_for(&cj, at("2026-12-06T08:00:00Z"))
                .metadata
                .annotations
                .unwrap()[SCHEDULED_AT],
            "2026-12-06T09:00:00+01:00"
        );
    }

    #[test]
    fn a_suspended_cronjob_runs_nothing_but_keeps_its_history() {
        let cj = cronjob(json!({"spec": {"suspend": true, "failedJobsHistoryLimit": 0}}));
        let jobs = [job(
            &cj,
            "2026-12-06T10:01:00Z",
            Some(("Failed", "2026-12-06T10:01:05Z")),
        )];
        let p = plan(&cj, &jobs, at("2026-12-06T10:05:00Z"));
        assert_eq!(p.create, None);
        assert_eq!(p.requeue, None);
        assert_eq!(p.delete, ["tick-29942521"]);
    }
}
