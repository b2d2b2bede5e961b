//! Jobs on `berth up` with the Docker runtime, driven by kubectl.

mod common;

use common::{Berth, BusyboxImage, Node};

fn start() -> (BusyboxImage, Node, Berth) {
    let image = BusyboxImage::build();
    let node = Node::new("job");
    let b = Berth::up(&["--runtime", "docker", "--node-name", &node.name]);
    (image, node, b)
}

fn job(name: &str, image: &str, spec: &str, script: &str) -> String {
    format!(
        r#"{{"apiVersion":"batch/v1","kind":"Job","metadata":{{"name":"{name}"}},"spec":{{{spec}
          "template":{{"spec":{{"restartPolicy":"Never","terminationGracePeriodSeconds":1,
            "containers":[{{"name":"work","image":"{image}","command":["sh","-c","{script}"]}}]}}}}}}}}"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_run_to_completion_in_parallel_and_by_index() {
    let (image, _node, b) = start();
    let tag = image.tag.as_str();

    // kubectl create job: one pod, once; its logs through the Job.
    b.kubectl_ok(&[
        "create",
        "job",
        "hello",
        &format!("--image={tag}"),
        "--",
        "echo",
        "hi-from-job",
    ]);
    b.kubectl_ok(&[
        "wait",
        "--for=condition=complete",
        "job/hello",
        "--timeout=90s",
    ]);
    let logs = b.kubectl_ok(&["logs", "job/hello"]);
    assert_eq!(logs.trim(), "hi-from-job");

    // Five completions, two at a time.
    b.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &job(
            "five",
            tag,
            r#""completions":5,"parallelism":2,"#,
            "sleep 1; echo done",
        ),
    );
    b.kubectl_ok(&[
        "wait",
        "--for=condition=complete",
        "job/five",
        "--timeout=120s",
    ]);
    let counts = b.kubectl_ok(&[
        "get",
        "job",
        "five",
        "-o",
        "jsonpath={.status.succeeded}/{.status.failed}/{.status.completionTime}",
    ]);
    assert!(counts.starts_with("5//"), "{counts}");
    let pods = b.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        "batch.kubernetes.io/job-name=five",
        "-o",
        "jsonpath={.items[*].status.phase}",
    ]);
    assert_eq!(
        pods.split_whitespace().collect::<Vec<_>>(),
        ["Succeeded"; 5]
    );
    let table = b.kubectl_ok(&["get", "job", "five"]);
    assert!(
        table.contains("Complete") && table.contains("5/5"),
        "{table}"
    );

    // Indexed: each pod sees its own index.
    b.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &job(
            "indexed",
            tag,
            r#""completions":3,"parallelism":3,"completionMode":"Indexed","#,
            "echo index=$JOB_COMPLETION_INDEX",
        ),
    );
    b.kubectl_ok(&[
        "wait",
        "--for=condition=complete",
        "job/indexed",
        "--timeout=90s",
    ]);
    let done = b.kubectl_ok(&[
        "get",
        "job",
        "indexed",
        "-o",
        "jsonpath={.status.completedIndexes}",
    ]);
    assert_eq!(done, "0-2");
    let names = b.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        "batch.kubernetes.io/job-name=indexed",
        "-o",
        "name",
    ]);
    let mut seen: Vec<String> = names
        .lines()
        .map(|pod| b.kubectl_ok(&["logs", pod]).trim().to_string())
        .collect();
    seen.sort();
    assert_eq!(seen, ["index=0", "index=1", "index=2"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_job_stops_at_its_backoff_limit_and_bad_specs_name_their_field() {
    let (image, _node, b) = start();
    b.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &job("fails", &image.tag, r#""backoffLimit":1,"#, "exit 3"),
    );
    b.kubectl_ok(&[
        "wait",
        "--for=condition=failed",
        "job/fails",
        "--timeout=90s",
    ]);
    let why = b.kubectl_ok(&[
        "get",
        "job",
        "fails",
        "-o",
        r#"jsonpath={.status.conditions[?(@.type=="Failed")].reason} {.status.failed}"#,
    ]);
    assert_eq!(why, "BackoffLimitExceeded 2");
    let events = b.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=fails",
    ]);
    assert!(events.contains("BackoffLimitExceeded"), "{events}");

    let out = b.kubectl_stdin(
        &["apply", "-f", "-"],
        &job("bad", &image.tag, r#""completions":-1,"#, "true"),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("spec.completions: Invalid value")
            && err.contains("must be greater than or equal to 0"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cronjob_makes_a_job_each_minute_and_keeps_its_history() {
    let (image, _node, b) = start();
    let tag = image.tag.as_str();
    // kubectl create cronjob (a protobuf body).
    b.kubectl_ok(&[
        "create",
        "cronjob",
        "tick",
        &format!("--image={tag}"),
        "--schedule=*/1 * * * *",
        "--",
        "echo",
        "tick",
    ]);
    let table = b.kubectl_ok(&["get", "cronjob", "tick"]);
    assert!(
        table.contains("*/1 * * * *") && table.contains("False"),
        "{table}"
    );

    // A Job by hand from the template, owned by the CronJob.
    b.kubectl_ok(&["create", "job", "by-hand", "--from=cronjob/tick"]);
    b.kubectl_ok(&[
        "wait",
        "--for=condition=complete",
        "job/by-hand",
        "--timeout=90s",
    ]);
    let made = b.kubectl_ok(&[
        "get",
        "job",
        "by-hand",
        "-o",
        r#"jsonpath={.metadata.ownerReferences[0].kind}/{.metadata.annotations.cronjob\.kubernetes\.io/instantiate}"#,
    ]);
    assert_eq!(made, "CronJob/manual");
    assert_eq!(b.kubectl_ok(&["logs", "job/by-hand"]).trim(), "tick");
    // Only now a history of one successful Job: before, a scheduled Job finishing first could
    // take the one by hand away while it was being read.
    b.kubectl_ok(&[
        "patch",
        "cronjob",
        "tick",
        "-p",
        r#"{"spec":{"successfulJobsHistoryLimit":1}}"#,
    ]);

    // Two scheduled runs, each made on its minute and named by it.
    let scheduled = |b: &common::Berth| -> Vec<(String, String)> {
        let out = b.kubectl_ok(&[
            "get",
            "jobs",
            "-o",
            r#"jsonpath={range .items[*]}{.metadata.name} {.metadata.creationTimestamp} {.metadata.annotations.batch\.kubernetes\.io/cronjob-scheduled-timestamp}{"\n"}{end}"#,
        ]);
        out.lines()
            .filter(|l| l.starts_with("tick-"))
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f[1].to_string(), f[2].to_string())
            })
            .collect()
    };
    let mut seen = std::collections::BTreeMap::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(200);
    while seen.len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "two scheduled Jobs within 200 s; saw {seen:?}"
        );
        seen.extend(scheduled(&b).into_iter().map(|(c, at)| (at, c)));
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    for (at, created) in &seen {
        let at: jiff::Timestamp = at.parse().unwrap();
        let created: jiff::Timestamp = created.parse().unwrap();
        let late = created.duration_since(at).as_secs();
        assert!(
            (0..=5).contains(&late),
            "a Job scheduled for {at} was made at {created}"
        );
        assert_eq!(at.as_second() % 60, 0, "{at}");
    }

    // History: of the Jobs that succeeded (the one by hand counts), only the newest stays.
    common::eventually(120, "the history trimmed to one successful Job", || async {
        let out = b.kubectl_ok(&[
            "get",
            "jobs",
            "-o",
            r#"jsonpath={range .items[?(@.status.succeeded==1)]}{.metadata.name}{"\n"}{end}"#,
        ]);
        let done: Vec<&str> = out.lines().collect();
        let last = b.kubectl_ok(&[
            "get",
            "cronjob",
            "tick",
            "-o",
            "jsonpath={.status.lastSuccessfulTime}",
        ]);
        (done.len() == 1 && done[0].starts_with("tick-") && !last.is_empty()).then_some(())
    })
    .await;

    // A schedule that does not parse names the field.
    let out = b.kubectl(&[
        "create",
        "cronjob",
        "bad",
        &format!("--image={tag}"),
        "--schedule=61 * * * *",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("spec.schedule: Invalid value") && err.contains("outside the minute field"),
        "{err}"
    );
}
