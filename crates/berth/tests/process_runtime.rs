//! `berth up --runtime process`: pods as host processes, driven by kubectl, no Docker needed.

mod common;

use common::{eventually, Berth};

#[tokio::test]
async fn pods_run_as_host_processes_with_logs_exec_and_graceful_delete() {
    let node = common::unique("proc");
    let b = Berth::up(&["--runtime", "process", "--node-name", &node]);
    let pod = r#"
apiVersion: v1
kind: Pod
metadata: {name: counter}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: c
    image: host
    command: ["sh", "-c", "echo started as $GREETING; i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done"]
    env: [{name: GREETING, value: hello}]
"#;
    b.kubectl_stdin_ok(&["apply", "-f", "-"], pod);
    eventually(30, "the pod to run", || async {
        let phase = b.kubectl_ok(&["get", "pod", "counter", "-o", "jsonpath={.status.phase}"]);
        (phase == "Running").then_some(())
    })
    .await;
    let logs = eventually(20, "a few ticks", || async {
        let l = b.kubectl_ok(&["logs", "counter"]);
        l.contains("tick 3").then_some(l)
    })
    .await;
    assert!(logs.starts_with("started as hello\n"), "{logs}");
    assert_eq!(
        b.kubectl_ok(&["logs", "counter", "--tail=1"])
            .lines()
            .count(),
        1
    );
    let out = b.kubectl(&[
        "exec",
        "counter",
        "--",
        "sh",
        "-c",
        "echo $GREETING from exec; exit 4",
    ]);
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from exec\n");

    // An image the process runtime does not have says what to do.
    let bad = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"nginx"},"spec":{"containers":[{"name":"c","image":"nginx","command":["nginx"]}]}}"#;
    b.kubectl_stdin(&["create", "-f", "-"], bad);
    let msg = eventually(30, "the image error", || async {
        let m = b.kubectl_ok(&["get", "pod", "nginx", "-o",
            "jsonpath={.status.containerStatuses[0].state.waiting.reason}: {.status.containerStatuses[0].state.waiting.message}"]);
        m.starts_with("ErrImagePull").then_some(m)
    })
    .await;
    assert!(msg.contains("use image \"host\""), "{msg}");

    b.kubectl_ok(&["delete", "pod", "counter", "nginx", "--timeout=30s"]);
    let left = b.kubectl_ok(&["get", "pods", "-o", "name"]);
    assert!(left.trim().is_empty(), "{left}");
}

#[tokio::test]
async fn process_pods_get_their_volumes_and_limits() {
    let node = common::unique("procvol");
    let b = Berth::up(&["--runtime", "process", "--node-name", &node]);
    // Mount points missing on the host are created there (empty): keep them under /tmp.
    let at = std::env::temp_dir().join(common::unique("berth-mnt"));
    let pod = format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: settings}}
data: {{greeting: "hello from a config map"}}
---
apiVersion: v1
kind: Pod
metadata: {{name: mounted}}
spec:
  terminationGracePeriodSeconds: 1
  volumes:
  - {{name: settings, configMap: {{name: settings}}}}
  - {{name: scratch, emptyDir: {{}}}}
  containers:
  - name: writer
    image: host
    command: ["sh", "-c", "echo shared > {at}/scratch/note; sleep 300"]
    volumeMounts: [{{name: scratch, mountPath: {at}/scratch}}]
  - name: reader
    image: host
    command: ["sleep", "300"]
    resources: {{limits: {{memory: 64Mi, cpu: 200m}}}}
    volumeMounts:
    - {{name: settings, mountPath: {at}/settings}}
    - {{name: scratch, mountPath: {at}/scratch}}
"#,
        at = at.display()
    );
    b.kubectl_stdin_ok(&["apply", "-f", "-"], &pod);
    b.kubectl_ok(&[
        "wait",
        "pod/mounted",
        "--for=condition=Ready",
        "--timeout=60s",
    ]);
    let read =
        |path: String| b.kubectl_ok(&["exec", "mounted", "-c", "reader", "--", "cat", &path]);
    assert_eq!(
        read(format!("{}/settings/greeting", at.display())),
        "hello from a config map"
    );
    // The two containers share the emptyDir.
    let note = eventually(20, "the writer's note", || async {
        let out = b.kubectl(&[
            "exec",
            "mounted",
            "-c",
            "reader",
            "--",
            "cat",
            &format!("{}/scratch/note", at.display()),
        ]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).to_string())
    })
    .await;
    assert_eq!(note, "shared\n");
    // The host sees empty mount points only.
    assert!(!at.join("settings/greeting").exists());
    // Limits are enforced here, so the node does not say otherwise.
    let unenforced = b.kubectl_ok(&[
        "get",
        "node",
        &node,
        "-o",
        r#"jsonpath={.status.conditions[?(@.type=="ResourceLimitsEnforced")].message}"#,
    ]);
    assert_eq!(
        unenforced, "",
        "this test needs a writable cgroup hierarchy (run as root)"
    );
    b.kubectl_ok(&["delete", "pod", "mounted", "--timeout=30s"]);
    let _ = std::fs::remove_dir_all(&at);
}
