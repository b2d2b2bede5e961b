//! batch/v1 Jobs: defaults (the generated selector and the labels it picks), validation,
//! the immutable fields, and `kubectl get`'s columns.

use jiff::Timestamp;
use serde_json::{json, Value};

use super::{arr_at, child, default_field, int_at, str_at};
use crate::table::{col, human_duration, wide, Column, AGE, NAME};
use crate::validation::FieldError;

/// The label that ties a Job's pods to it by UID, and the one that names the Job.
pub const CONTROLLER_UID: &str = "batch.kubernetes.io/controller-uid";
pub const JOB_NAME: &str = "batch.kubernetes.io/job-name";
/// The annotation (and label) that carries an Indexed Job pod's index.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";

pub(super) fn default_job(obj: &mut Value) {
    let uid = str_at(obj, "/metadata/uid").to_string();
    let name = str_at(obj, "/metadata/name").to_string();
    let spec = child(obj, "spec");
    // Neither set: one pod, once. Only parallelism: a work queue, done when one succeeds.
    if spec.get("completions").is_none_or(Value::is_null)
        && spec.get("parallelism").is_none_or(Value::is_null)
    {
        spec["completions"] = json!(1);
    }
    default_field(spec, "parallelism", json!(1));
    default_field(spec, "backoffLimit", json!(6));
    default_field(spec, "completionMode", json!("NonIndexed"));
    default_field(spec, "suspend", json!(false));
    let replacement = if spec.get("podFailurePolicy").is_some_and(|p| !p.is_null()) {
        "Failed"
    } else {
        "TerminatingOrFailed"
    };
    default_field(spec, "podReplacementPolicy", json!(replacement));
    let manual = spec.get("manualSelector") == Some(&json!(true));
    let template = child(spec, "template");
    if !manual && !uid.is_empty() {
        let labels = child(child(template, "metadata"), "labels");
        for (k, v) in [
            (CONTROLLER_UID, &uid),
            (JOB_NAME, &name),
            ("controller-uid", &uid),
            ("job-name", &name),
        ] {
            default_field(labels, k, json!(v));
        }
    }
    super::default_pod_spec(child(template, "spec"));
    if !manual && !uid.is_empty() {
        default_field(
            spec,
            "selector",
            json!({"matchLabels": {CONTROLLER_UID: uid}}),
        );
    }
}

fn non_negative(obj: &Value, field: &str, errs: &mut Vec<FieldError>) {
    if let Some(n) = obj
        .pointer(&format!("/spec/{field}"))
        .and_then(Value::as_i64)
    {
        if n < 0 {
            errs.push(FieldError::invalid(
                format!("spec.{field}"),
                n,
                "must be greater than or equal to 0",
            ));
        }
    }
}

pub(super) fn validate_job(obj: &Value, errs: &mut Vec<FieldError>) {
    validate_job_spec(obj, errs);
    super::apps::validate_selector(obj, None, errs);
}

/// Check the `spec` of `obj` as a Job's, all but the selector.
fn validate_job_spec(obj: &Value, errs: &mut Vec<FieldError>) {
    for f in [
        "parallelism",
        "completions",
        "backoffLimit",
        "ttlSecondsAfterFinished",
    ] {
        non_negative(obj, f, errs);
    }
    if let Some(d) = obj
        .pointer("/spec/activeDeadlineSeconds")
        .and_then(Value::as_i64)
    {
        if d <= 0 {
            errs.push(FieldError::invalid(
                "spec.activeDeadlineSeconds",
                d,
                "must be greater than 0",
            ));
        }
    }
    let mode = str_at(obj, "/spec/completionMode");
    if !["NonIndexed", "Indexed"].contains(&mode) {
        errs.push(FieldError::not_supported(
            "spec.completionMode",
            mode,
            &["NonIndexed", "Indexed"],
        ));
    }
    let completions = obj.pointer("/spec/completions").and_then(Value::as_i64);
    if mode == "Indexed" {
        match completions {
            None => errs.push(FieldError::required_because(
                "spec.completions",
                "when completion mode is Indexed",
            )),
            Some(c) if c > 100_000 => errs.push(FieldError::invalid(
                "spec.completions",
                c,
                "must be less than or equal to 100000 when completion mode is Indexed",
            )),
            Some(_) => {}
        }
    }
    let pod_spec = obj.pointer("/spec/template/spec").unwrap_or(&Value::Null);
    super::validate_pod_spec("spec.template.spec", pod_spec, errs);
    let restart = str_at(pod_spec, "/restartPolicy");
    if !["OnFailure", "Never"].contains(&restart) {
        errs.push(FieldError::not_supported(
            "spec.template.spec.restartPolicy",
            restart,
            &["OnFailure", "Never"],
        ));
    }
    if let Some(policy) = obj
        .pointer("/spec/podFailurePolicy")
        .filter(|p| !p.is_null())
    {
        if restart != "Never" {
            errs.push(FieldError::invalid(
                "spec.template.spec.restartPolicy",
                restart,
                "only \"Never\" is supported when podFailurePolicy is specified",
            ));
        }
        validate_failure_policy(policy, errs);
    }
}

fn validate_failure_policy(policy: &Value, errs: &mut Vec<FieldError>) {
    for (i, rule) in arr_at(policy, "/rules").iter().enumerate() {
        let path = format!("spec.podFailurePolicy.rules[{i}]");
        let action = str_at(rule, "/action");
        if !["FailJob", "FailIndex", "Ignore", "Count"].contains(&action) {
            errs.push(FieldError::not_supported(
                format!("{path}.action"),
                action,
                &["Count", "FailIndex", "FailJob", "Ignore"],
            ));
        }
        let codes = rule.get("onExitCodes").filter(|c| !c.is_null());
        let conditions = rule.get("onPodConditions").filter(|c| !c.is_null());
        match (codes, conditions) {
            (Some(_), Some(_)) => errs.push(FieldError::invalid(
                path.clone(),
                "",
                "specifying both OnExitCodes and OnPodConditions is not supported",
            )),
            (None, None) => errs.push(FieldError::invalid(
                path.clone(),
                "",
                "specifying one of OnExitCodes and OnPodConditions is required",
            )),
            _ => {}
        }
        if let Some(codes) = codes {
            let op = str_at(codes, "/operator");
            if !["In", "NotIn"].contains(&op) {
                errs.push(FieldError::not_supported(
                    format!("{path}.onExitCodes.operator"),
                    op,
                    &["In", "NotIn"],
                ));
            }
            let values = arr_at(codes, "/values");
            if values.is_empty() {
                errs.push(FieldError::required(format!("{path}.onExitCodes.values")));
            }
            if op == "In" && values.iter().any(|v| v.as_i64() == Some(0)) {
                errs.push(FieldError::invalid(
                    format!("{path}.onExitCodes.values"),
                    0,
                    "must not be 0 for the In operator",
                ));
            }
        }
        for (j, c) in conditions
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            if str_at(c, "/type").is_empty() {
                errs.push(FieldError::required(format!(
                    "{path}.onPodConditions[{j}].type"
                )));
            }
        }
    }
}

/// What a Job update may not change: the selector, the completion mode, completions (but for
/// Indexed Jobs scaled with parallelism), and the template unless the Job is suspended.
pub(super) fn validate_job_update(old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
    for (field, pointer) in [
        ("spec.selector", "/spec/selector"),
        ("spec.completionMode", "/spec/completionMode"),
        ("spec.podFailurePolicy", "/spec/podFailurePolicy"),
    ] {
        if old.pointer(pointer) != new.pointer(pointer) {
            errs.push(FieldError::invalid(
                field,
                new.pointer(pointer).unwrap_or(&Value::Null),
                "field is immutable",
            ));
        }
    }
    let elastic = str_at(new, "/spec/completionMode") == "Indexed"
        && new.pointer("/spec/completions") == new.pointer("/spec/parallelism");
    if old.pointer("/spec/completions") != new.pointer("/spec/completions") && !elastic {
        errs.push(FieldError::invalid(
            "spec.completions",
            new.pointer("/spec/completions").unwrap_or(&Value::Null),
            "field is immutable",
        ));
    }
    let suspended = new.pointer("/spec/suspend") == Some(&json!(true));
    if old.pointer("/spec/template") != new.pointer("/spec/template") && !suspended {
        errs.push(FieldError::invalid(
            "spec.template",
            new.pointer("/spec/template").unwrap_or(&Value::Null),
            "field is immutable",
        ));
    }
}

/// How CronJobs may run beside their unfinished Jobs.
const CONCURRENCY: [&str; 3] = ["Allow", "Forbid", "Replace"];

pub(super) fn default_cronjob(obj: &mut Value) {
    let spec = child(obj, "spec");
    default_field(spec, "concurrencyPolicy", json!("Allow"));
    default_field(spec, "suspend", json!(false));
    default_field(spec, "successfulJobsHistoryLimit", json!(3));
    default_field(spec, "failedJobsHistoryLimit", json!(1));
    let template = child(child(child(spec, "jobTemplate"), "spec"), "template");
    super::default_pod_spec(child(template, "spec"));
}

/// The zone a CronJob's schedule is read in: its `spec.timeZone`, else the server's.
pub fn cronjob_zone(name: Option<&str>) -> Result<jiff::tz::TimeZone, String> {
    match name {
        None => Ok(jiff::tz::TimeZone::system()),
        Some("") => Err("timeZone must be nil or non-empty string".into()),
        Some(n) if n.eq_ignore_ascii_case("local") => Err(
            "timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones"
                .into(),
        ),
        Some(n) => jiff::tz::TimeZone::get(n).map_err(|_| format!("unknown time zone {n}")),
    }
}

pub(super) fn validate_cronjob(obj: &Value, errs: &mut Vec<FieldError>) {
    let name = str_at(obj, "/metadata/name");
    if name.len() > 52 {
        // Its Jobs are named `<name>-<minutes since the epoch>`, and must stay labels.
        errs.push(FieldError::invalid(
            "metadata.name",
            name,
            "must be no more than 52 characters",
        ));
    }
    let schedule = str_at(obj, "/spec/schedule");
    if schedule.is_empty() {
        errs.push(FieldError::required("spec.schedule"));
    } else if schedule.contains("TZ") {
        errs.push(FieldError::invalid(
            "spec.schedule",
            schedule,
            "cannot use TZ or CRON_TZ in schedule, use timeZone field instead",
        ));
    } else if let Err(why) = schedule.parse::<crate::cron::Schedule>() {
        errs.push(FieldError::invalid("spec.schedule", schedule, why));
    }
    if let Some(tz) = obj.pointer("/spec/timeZone").filter(|v| !v.is_null()) {
        let zone = tz.as_str().unwrap_or_default();
        if let Err(why) = cronjob_zone(Some(zone)) {
            errs.push(FieldError::invalid("spec.timeZone", zone, why));
        }
    }
    let policy = str_at(obj, "/spec/concurrencyPolicy");
    if !CONCURRENCY.contains(&policy) {
        errs.push(FieldError::not_supported(
            "spec.concurrencyPolicy",
            policy,
            &CONCURRENCY,
        ));
    }
    for f in [
        "startingDeadlineSeconds",
        "successfulJobsHistoryLimit",
        "failedJobsHistoryLimit",
    ] {
        non_negative(obj, f, errs);
    }
    // The Job template is checked as a Job's spec would be, its paths under the template.
    let mut job = json!({"spec": obj.pointer("/spec/jobTemplate/spec").unwrap_or(&json!({}))});
    default_field(
        child(&mut job, "spec"),
        "completionMode",
        json!("NonIndexed"),
    );
    let mut job_errs = Vec::new();
    validate_job_spec(&job, &mut job_errs);
    if job.pointer("/spec/selector").is_some_and(|s| !s.is_null()) {
        super::apps::validate_selector(&job, None, &mut job_errs);
    }
    errs.extend(job_errs.into_iter().map(|mut e| {
        e.path = e.path.replacen("spec.", "spec.jobTemplate.spec.", 1);
        e
    }));
}

pub(super) fn cronjob_columns() -> Vec<Column> {
    vec![
        NAME,
        col("Schedule", "The schedule defining the interval a job is run"),
        col(
            "Timezone",
            "The timezone name for the given schedule, see https://en.wikipedia.org/wiki/List_of_tz_database_time_zones",
        ),
        col(
            "Suspend",
            "Whether the job is suspended, or not, for future executions.",
        ),
        col("Active", "The number of active jobs."),
        col(
            "Last Schedule",
            "Information when was the last time the job was successfully scheduled.",
        ),
        AGE,
        wide("Containers", "Names of each container in the template."),
        wide(
            "Images",
            "Images referenced by each container in the template.",
        ),
        wide(
            "Selector",
            "Query over pods that should match the pod count.",
        ),
    ]
}

pub(super) fn cronjob_cells(obj: &Value, age: String, now: Timestamp) -> Vec<Value> {
    let or_none = |s: String| {
        if s.is_empty() {
            "<none>".to_string()
        } else {
            s
        }
    };
    let last = obj
        .pointer("/status/lastScheduleTime")
        .and_then(Value::as_str)
        .and_then(|t| t.parse::<Timestamp>().ok())
        .map(|t| human_duration(now.as_second() - t.as_second()))
        .unwrap_or_default();
    let containers = arr_at(obj, "/spec/jobTemplate/spec/template/spec/containers");
    let names: Vec<&str> = containers.iter().map(|c| str_at(c, "/name")).collect();
    let images: Vec<&str> = containers.iter().map(|c| str_at(c, "/image")).collect();
    let selector =
        crate::selector::label_selector_string(obj.pointer("/spec/jobTemplate/spec/selector"));
    let suspend = obj.pointer("/spec/suspend") == Some(&json!(true));
    vec![
        json!(str_at(obj, "/metadata/name")),
        json!(str_at(obj, "/spec/schedule")),
        json!(or_none(str_at(obj, "/spec/timeZone").to_string())),
        json!(if suspend { "True" } else { "False" }),
        json!(arr_at(obj, "/status/active").len()),
        json!(or_none(last)),
        json!(age),
        json!(names.join(",")),
        json!(images.join(",")),
        json!(or_none(selector)),
    ]
}

/// Is the condition `kind` of this object's status `True`?
pub fn condition_true(obj: &Value, kind: &str) -> bool {
    arr_at(obj, "/status/conditions")
        .iter()
        .any(|c| str_at(c, "/type") == kind && str_at(c, "/status") == "True")
}

pub(super) fn job_columns() -> Vec<Column> {
    vec![
        NAME,
        col("Status", "Status of the job."),
        col(
            "Completions",
            "The number of pods which reached phase Succeeded out of the desired completions.",
        ),
        col("Duration", "Time required to complete the job."),
        AGE,
        wide("Containers", "Names of each container in the template."),
        wide(
            "Images",
            "Images referenced by each container in the template.",
        ),
        wide(
            "Selector",
            "Query over pods that should match the pod count.",
        ),
    ]
}

/// The STATUS cell, as kubectl 1.32 words it.
fn job_status(obj: &Value) -> &'static str {
    let terminating = int_at(obj, "/status/terminating") > 0;
    for (cond, word) in [
        ("Failed", "Failed"),
        ("Complete", "Complete"),
        ("FailureTarget", "FailureTarget"),
        ("SuccessCriteriaMet", "SuccessCriteriaMet"),
        ("Suspended", "Suspended"),
    ] {
        if condition_true(obj, cond) {
            return if terminating && word != "Suspended" {
                "Terminating"
            } else {
                word
            };
        }
    }
    if obj.pointer("/metadata/deletionTimestamp").is_some() {
        "Terminating"
    } else {
        "Running"
    }
}

pub(super) fn job_cells(obj: &Value, age: String, now: Timestamp) -> Vec<Value> {
    let succeeded = int_at(obj, "/status/succeeded");
    let completions = match obj.pointer("/spec/completions").and_then(Value::as_i64) {
        Some(c) => format!("{succeeded}/{c}"),
        None => match int_at(obj, "/spec/parallelism") {
            p if p > 1 => format!("{succeeded}/1 of {p}"),
            _ => format!("{succeeded}/1"),
        },
    };
    let time = |p: &str| {
        obj.pointer(p)
            .and_then(Value::as_str)
            .and_then(|t| t.parse::<Timestamp>().ok())
    };
    let duration = match (time("/status/startTime"), time("/status/completionTime")) {
        (Some(s), Some(c)) => human_duration(c.as_second() - s.as_second()),
        (Some(s), None) => human_duration(now.as_second() - s.as_second()),
        _ => String::new(),
    };
    let containers = arr_at(obj, "/spec/template/spec/containers");
    let names: Vec<&str> = containers.iter().map(|c| str_at(c, "/name")).collect();
    let images: Vec<&str> = containers.iter().map(|c| str_at(c, "/image")).collect();
    let selector = crate::selector::label_selector_string(obj.pointer("/spec/selector"));
    vec![
        json!(str_at(obj, "/metadata/name")),
        json!(job_status(obj)),
        json!(completions),
        json!(duration),
        json!(age),
        json!(names.join(",")),
        json!(images.join(",")),
        json!(if selector.is_empty() {
            "<none>".to_string()
        } else {
            selector
        }),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Value {
        json!({"metadata": {"name": "pi", "namespace": "default", "uid": "u-1"}, "spec": {
            "template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "c", "image": "busybox"}]}}}})
    }

    fn errors(obj: &Value) -> Vec<String> {
        let mut errs = Vec::new();
        validate_job(obj, &mut errs);
        errs.iter().map(|e| e.path.clone()).collect()
    }

    #[test]
    fn defaults_pick_the_pods_by_the_jobs_uid() {
        let mut j = job();
        default_job(&mut j);
        assert_eq!(j["spec"]["completions"], 1);
        assert_eq!(j["spec"]["parallelism"], 1);
        assert_eq!(j["spec"]["backoffLimit"], 6);
        assert_eq!(
            j["spec"]["selector"],
            json!({"matchLabels": {CONTROLLER_UID: "u-1"}})
        );
        assert_eq!(j["spec"]["template"]["metadata"]["labels"][JOB_NAME], "pi");
        assert!(errors(&j).is_empty(), "{:?}", errors(&j));
        // A work queue: parallelism alone leaves completions unset.
        let mut q = job();
        q["spec"]["parallelism"] = json!(3);
        default_job(&mut q);
        assert!(q["spec"].get("completions").is_none());
    }

    #[test]
    fn bad_specs_name_their_fields() {
        let mut j = job();
        j["spec"]["completions"] = json!(-1);
        j["spec"]["completionMode"] = json!("Indexed");
        default_job(&mut j);
        assert_eq!(errors(&j), ["spec.completions"]);
        let mut j = job();
        j["spec"]["template"]["spec"]
            .as_object_mut()
            .unwrap()
            .remove("restartPolicy");
        default_job(&mut j);
        assert_eq!(errors(&j), ["spec.template.spec.restartPolicy"]);
        let mut j = job();
        j["spec"]["manualSelector"] = json!(true);
        j["spec"]["selector"] = json!({"matchLabels": {"a": "b"}});
        default_job(&mut j);
        assert_eq!(errors(&j), ["spec.template.metadata.labels"]);
        let mut j = job();
        j["spec"]["podFailurePolicy"] = json!({"rules": [{"action": "FailJob", "onExitCodes": {"operator": "In", "values": [0]}}]});
        default_job(&mut j);
        assert_eq!(
            errors(&j),
            ["spec.podFailurePolicy.rules[0].onExitCodes.values"]
        );
    }

    fn cronjob() -> Value {
        json!({"metadata": {"name": "tick", "namespace": "default"}, "spec": {
            "schedule": "*/1 * * * *",
            "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "OnFailure",
                "containers": [{"name": "c", "image": "busybox"}]}}}}}})
    }

    fn cronjob_errors(mut obj: Value) -> Vec<String> {
        default_cronjob(&mut obj);
        let mut errs = Vec::new();
        validate_cronjob(&obj, &mut errs);
        errs.iter()
            .map(|e| format!("{}: {}", e.path, e.detail))
            .collect()
    }

    #[test]
    fn cronjobs_default_and_name_their_bad_fields() {
        let mut c = cronjob();
        default_cronjob(&mut c);
        assert_eq!(c["spec"]["concurrencyPolicy"], "Allow");
        assert_eq!(c["spec"]["successfulJobsHistoryLimit"], 3);
        assert_eq!(c["spec"]["failedJobsHistoryLimit"], 1);
        assert_eq!(cronjob_errors(cronjob()), Vec::<String>::new());
        let mut c = cronjob();
        c["spec"]["schedule"] = json!("61 * * * *");
        assert_eq!(
            cronjob_errors(c),
            ["spec.schedule: \"61 * * * *\": 61 is outside the minute field's 0-59"]
        );
        let mut c = cronjob();
        c["spec"]["timeZone"] = json!("Mars/Olympus");
        c["spec"]["concurrencyPolicy"] = json!("Sometimes");
        c["spec"]["jobTemplate"]["spec"]["completions"] = json!(-1);
        let errs = cronjob_errors(c);
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(
            errs[0].ends_with("unknown time zone Mars/Olympus"),
            "{errs:?}"
        );
        assert!(errs[1].starts_with("spec.concurrencyPolicy"));
        assert!(errs[2].starts_with("spec.jobTemplate.spec.completions"));
        let mut c = cronjob();
        c["spec"]["timeZone"] = json!("Europe/Paris");
        assert!(cronjob_errors(c).is_empty());
        let mut c = cronjob();
        c["spec"]["jobTemplate"]["spec"]["template"]["spec"]["restartPolicy"] = json!("Always");
        assert_eq!(
            cronjob_errors(c)[0].split(':').next(),
            Some("spec.jobTemplate.spec.template.spec.restartPolicy")
        );
    }

    #[test]
    fn the_template_changes_only_while_suspended() {
        let mut old = job();
        default_job(&mut old);
        let mut new = old.clone();
        new["spec"]["template"]["spec"]["containers"][0]["image"] = json!("other");
        let mut errs = Vec::new();
        validate_job_update(&old, &new, &mut errs);
        assert_eq!(errs[0].path, "spec.template");
        new["spec"]["suspend"] = json!(true);
        errs.clear();
        validate_job_update(&old, &new, &mut errs);
        assert!(errs.is_empty());
    }

    #[test]
    fn cells_show_status_completions_and_duration() {
        let mut j = job();
        default_job(&mut j);
        j["status"] = json!({"succeeded": 1, "startTime": "2026-12-06T10:00:00Z",
            "completionTime": "2026-12-06T10:00:07Z",
            "conditions": [{"type": "Complete", "status": "True"}]});
        let now: Timestamp = "2026-12-06T10:05:00Z".parse().unwrap();
        let cells = job_cells(&j, "5m".into(), now);
        assert_eq!(cells[1], "Complete");
        assert_eq!(cells[2], "1/1");
        assert_eq!(cells[3], "7s");
    }
}
