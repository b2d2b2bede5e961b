//! The node agent on a real Docker engine, driven by kubectl through `berth up`.

mod common;

use std::time::{Duration, Instant};

use common::{node_containers, Berth, BusyboxImage, Node};

/// A test image, a fresh node name, and `berth up` with a Docker agent registered as that
/// node. Bound as `let (image, node, b) = start();`, the server goes first on drop, then the
/// node's containers, then the image.
fn start() -> (BusyboxImage, Node, Berth) {
    let image = BusyboxImage::build();
    let node = Node::new("n");
    let b = Berth::up(&["--runtime", "docker", "--node-name", &node.name]);
    wait_for(&b, 20, "the node", &["get", "nodes", "-o", "name"], |s| {
        s.contains(&node.name)
    });
    (image, node, b)
}

fn wait_for(
    b: &Berth,
    secs: u64,
    what: &str,
    args: &[&str],
    want: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let out = b.kubectl(args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && want(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn two_container_pod_shares_localhost_and_is_deleted_with_its_containers() {
    let (image, node, b) = start();
    let pod = format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"web"}},"spec":{{
          "nodeName":"{node}","terminationGracePeriodSeconds":3,"containers":[
          {{"name":"httpd","image":"{img}","command":["/bin/httpd","-f","-p","8080","-h","/www"]}},
          {{"name":"client","image":"{img}","command":["/bin/sh","-c","while true; do wget -qO- http://localhost:8080/ && sleep 1; done"]}}]}}}}"#,
        node = node.name,
        img = image.tag
    );
    b.kubectl_stdin(&["create", "-f", "-"], &pod);
    wait_for(
        &b,
        30,
        "the pod to run",
        &[
            "get",
            "pod",
            "web",
            "-o",
            "jsonpath={.status.phase} {.status.podIP}",
        ],
        |s| s.starts_with("Running ") && s.len() > 8,
    );
    let table = b.kubectl_ok(&["get", "pod", "web"]);
    assert!(
        table.contains("2/2") && table.contains("Running"),
        "{table}"
    );
    // The client reaches httpd over localhost: its output says so.
    let client = node_containers(&node.name)
        .into_iter()
        .find(|c| c.1.contains("_client_"))
        .expect("client container");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let logs = std::process::Command::new("docker")
            .args(["logs", &client.0])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&logs.stdout).contains("hello-berth") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the second container never reached the first on localhost"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(
        node_containers(&node.name).len(),
        3,
        "pause + two containers"
    );

    // httpd ignores SIGTERM as PID 1: the delete takes the 3 s grace period, then SIGKILL.
    let start = Instant::now();
    b.kubectl_ok(&["delete", "pod", "web", "--timeout=30s"]);
    let took = start.elapsed();
    assert!(took < Duration::from_secs(15), "delete took {took:?}");
    assert!(
        node_containers(&node.name).is_empty(),
        "containers left: {:?}",
        node_containers(&node.name)
    );
}

#[test]
fn crash_loop_backs_off_and_missing_image_says_so() {
    let (image, node, b) = start();
    // Three documents, not a v1 List: kubectl validates a List against OpenAPI v2 in
    // protobuf, which Berth does not serve.
    let pods = format!(
        r#"---
{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"crash"}},"spec":{{"nodeName":"{node}",
            "containers":[{{"name":"c","image":"{img}","command":["/bin/sh","-c","echo about to fail; exit 1"]}}]}}}}
---
{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"noimg"}},"spec":{{"nodeName":"{node}",
            "containers":[{{"name":"c","image":"berth-test/absent:1","imagePullPolicy":"Never"}}]}}}}
---
{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"once"}},"spec":{{"nodeName":"{node}","restartPolicy":"Never",
            "containers":[{{"name":"c","image":"{img}","command":["/bin/sh","-c","exit 3"]}}]}}}}"#,
        node = node.name,
        img = image.tag
    );
    b.kubectl_stdin_ok(&["create", "-f", "-"], &pods);
    let status = wait_for(&b, 30, "CrashLoopBackOff", &["get", "pod", "crash"], |s| {
        s.contains("CrashLoopBackOff")
    });
    assert!(status.contains("0/1"), "{status}");
    let msg = b.kubectl_ok(&[
        "get",
        "pod",
        "crash",
        "-o",
        "jsonpath={.status.containerStatuses[0].state.waiting.message}",
    ]);
    assert!(
        msg.starts_with("back-off 10s restarting failed container=c"),
        "{msg}"
    );
    let last = b.kubectl_ok(&[
        "get",
        "pod",
        "crash",
        "-o",
        "jsonpath={.status.containerStatuses[0].lastState.terminated.exitCode}",
    ]);
    assert_eq!(last, "1");
    // The kubelet's schedule: the first crash restarts at once, the second waits 10 s, and
    // after that restart the next wait doubles.
    wait_for(
        &b,
        40,
        "the second back-off",
        &[
            "get",
            "pod",
            "crash",
            "-o",
            "jsonpath={.status.containerStatuses[0].state.waiting.message}",
        ],
        |s| s.starts_with("back-off 20s"),
    );
    let restarts = b.kubectl_ok(&[
        "get",
        "pod",
        "crash",
        "-o",
        "jsonpath={.status.containerStatuses[0].restartCount}",
    ]);
    assert_eq!(restarts, "2");
    // The agent's Events tell the story in `kubectl describe`.
    let described = b.kubectl_ok(&["describe", "pod", "crash"]);
    for want in [
        "Started",
        "BackOff",
        "Back-off restarting failed container c",
    ] {
        assert!(
            described.contains(want),
            "{want} missing from:\n{described}"
        );
    }
    // Both the last attempt and the one before it left their output.
    assert_eq!(b.kubectl_ok(&["logs", "crash"]).trim(), "about to fail");
    assert_eq!(
        b.kubectl_ok(&["logs", "crash", "--previous"]).trim(),
        "about to fail"
    );

    let noimg = b.kubectl_ok(&["get", "pod", "noimg", "-o", "jsonpath={.status.containerStatuses[0].state.waiting.reason}: {.status.containerStatuses[0].state.waiting.message}"]);
    assert!(
        noimg.starts_with("ErrImageNeverPull: ") && noimg.contains("berth-test/absent:1"),
        "{noimg}"
    );
    let table = b.kubectl_ok(&["get", "pod", "noimg"]);
    assert!(table.contains("ErrImageNeverPull"), "{table}");

    let once = wait_for(
        &b,
        30,
        "the Never pod to fail",
        &["get", "pod", "once", "-o", "jsonpath={.status.phase}"],
        |s| s == "Failed",
    );
    assert_eq!(once, "Failed");
    let table = b.kubectl_ok(&["get", "pod", "once"]);
    assert!(table.contains("Error"), "{table}");
}

#[test]
fn a_restarted_agent_adopts_running_pods() {
    let (image, node, mut b) = start();
    let pod = format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"steady"}},"spec":{{"nodeName":"{node}",
          "containers":[{{"name":"c","image":"{img}","command":["/bin/sleep","3600"]}}]}}}}"#,
        node = node.name,
        img = image.tag
    );
    b.kubectl_stdin(&["create", "-f", "-"], &pod);
    wait_for(
        &b,
        30,
        "the pod to run",
        &["get", "pod", "steady", "-o", "jsonpath={.status.phase}"],
        |s| s == "Running",
    );
    let id_before = b.kubectl_ok(&[
        "get",
        "pod",
        "steady",
        "-o",
        "jsonpath={.status.containerStatuses[0].containerID}",
    ]);
    let containers_before = node_containers(&node.name);

    b.restart();
    std::thread::sleep(Duration::from_secs(3));
    let id_after = b.kubectl_ok(&["get", "pod", "steady", "-o", "jsonpath={.status.containerStatuses[0].containerID} {.status.containerStatuses[0].restartCount} {.status.phase}"]);
    assert_eq!(id_after, format!("{id_before} 0 Running"));
    assert_eq!(
        node_containers(&node.name),
        containers_before,
        "no container was replaced"
    );
}

#[test]
fn readiness_probe_gates_ready_and_failing_liveness_restarts() {
    let (image, node, b) = start();
    let pod = format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"probed"}},"spec":{{"nodeName":"{node}",
          "terminationGracePeriodSeconds":1,"containers":[
          {{"name":"web","image":"{img}","command":["/bin/sh","-c","sleep 2; exec /bin/httpd -f -p 8080 -h /www"],
            "ports":[{{"name":"http","containerPort":8080}}],
            "readinessProbe":{{"httpGet":{{"path":"/","port":"http"}},"periodSeconds":1}}}},
          {{"name":"flaky","image":"{img}","command":["/bin/sh","-c","echo ok > /tmp/healthy; sleep 3; rm /tmp/healthy; sleep 3600"],
            "livenessProbe":{{"exec":{{"command":["/bin/cat","/tmp/healthy"]}},"periodSeconds":1,"failureThreshold":2}}}}]}}}}"#,
        node = node.name,
        img = image.tag
    );
    b.kubectl_stdin_ok(&["create", "-f", "-"], &pod);
    // Running but not ready until httpd answers the probe.
    wait_for(
        &b,
        30,
        "web to be ready",
        &[
            "get",
            "pod",
            "probed",
            "-o",
            r#"jsonpath={.status.containerStatuses[?(@.name=="web")].ready}"#,
        ],
        |s| s == "true",
    );
    // The liveness probe fails once /tmp/healthy is gone: the container restarts.
    wait_for(
        &b,
        40,
        "flaky to restart",
        &[
            "get",
            "pod",
            "probed",
            "-o",
            r#"jsonpath={.status.containerStatuses[?(@.name=="flaky")].restartCount}"#,
        ],
        |s| s.parse::<u32>().is_ok_and(|n| n >= 1),
    );
    let table = b.kubectl_ok(&["get", "pod", "probed"]);
    assert!(table.contains("probed"), "{table}");
}

#[test]
fn kubectl_cp_both_ways_run_i_and_attach() {
    let (image, node, b) = start();
    let pod = |name: &str, script: &str| {
        format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}"}},"spec":{{
              "nodeName":"{node}","terminationGracePeriodSeconds":1,"containers":[
              {{"name":"c","image":"{img}","command":["/bin/sh","-c","{script}"]}}]}}}}"#,
            node = node.name,
            img = image.tag
        )
    };
    b.kubectl_stdin_ok(
        &["create", "-f", "-"],
        &pod("box", "mkdir -p /tmp; sleep 3600"),
    );
    b.kubectl_stdin_ok(
        &["create", "-f", "-"],
        &pod("ticker", "while true; do echo tick; sleep 0.2; done"),
    );
    for p in ["box", "ticker"] {
        b.kubectl_ok(&[
            "wait",
            &format!("pod/{p}"),
            "--for=condition=Ready",
            "--timeout=60s",
        ]);
    }

    // kubectl cp: a directory with a binary file into the pod (tar over exec stdin, ended
    // by the v5 close signal) and back out (tar over exec stdout).
    let src = tempfile::tempdir().unwrap();
    let blob: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(src.path().join("blob.bin"), &blob).unwrap();
    std::fs::write(src.path().join("note.txt"), "copied\n").unwrap();
    let src_arg = src.path().display().to_string();
    b.kubectl_ok(&["cp", &src_arg, "box:/tmp/in"]);
    assert_eq!(
        b.kubectl_ok(&["exec", "box", "--", "cat", "/tmp/in/note.txt"]),
        "copied\n"
    );
    let back = tempfile::tempdir().unwrap();
    let dst = back.path().join("out");
    b.kubectl_ok(&["cp", "box:/tmp/in", &dst.display().to_string()]);
    assert_eq!(
        std::fs::read(dst.join("blob.bin")).unwrap(),
        blob,
        "the blob came back whole"
    );

    // kubectl run -i: attach to the container's own stdin and output.
    let out = b.kubectl_stdin(
        &[
            "run",
            "asker",
            &format!("--image={}", image.tag),
            "--restart=Never",
            "-i",
            "--rm",
            &format!(
                "--overrides={{\"spec\":{{\"nodeName\":\"{}\"}}}}",
                node.name
            ),
            "--",
            "/bin/sh",
            "-c",
            "read x; echo got:$x",
        ],
        "hello\n",
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("got:hello"),
        "kubectl run -i: {said} / {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // kubectl attach: the running container's output from now on.
    let mut attach = std::process::Command::new("kubectl")
        .env("KUBECONFIG", b.kubeconfig())
        .args(["attach", "ticker"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(attach.stdout.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = lines.read_line(&mut first);
            let _ = tx.send(first);
        });
        first = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
    }
    let _ = attach.kill();
    let _ = attach.wait();
    assert_eq!(first.trim(), "tick", "kubectl attach");
}

#[test]
fn kubectl_logs_and_exec_reach_the_containers() {
    let (image, node, b) = start();
    // One container counts lines; the other says one thing and sleeps.
    let pod = format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"talker"}},"spec":{{
          "nodeName":"{node}","terminationGracePeriodSeconds":1,"containers":[
          {{"name":"main","image":"{img}","command":["/bin/sh","-c",
            "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.2; done"]}},
          {{"name":"side","image":"{img}","command":["/bin/sh","-c","echo side says hi; sleep 3600"]}},
          {{"name":"burn","image":"{img}","command":["/bin/sh","-c","while :; do :; done"]}}]}}}}"#,
        node = node.name,
        img = image.tag
    );
    b.kubectl_stdin(&["create", "-f", "-"], &pod);
    wait_for(
        &b,
        30,
        "a few lines",
        &["logs", "talker", "-c", "main"],
        |s| s.contains("line 3"),
    );
    // Two containers and none named: kubectl picks the first and says so.
    let out = b.kubectl(&["logs", "talker"]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Defaulted container \"main\""), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("line 0"));
    assert_eq!(
        b.kubectl_ok(&["logs", "talker", "-c", "side"]).trim(),
        "side says hi"
    );
    let tail = b.kubectl_ok(&["logs", "talker", "-c", "main", "--tail=2"]);
    assert_eq!(tail.lines().count(), 2, "{tail}");
    let stamped = b.kubectl_ok(&["logs", "talker", "-c", "side", "--timestamps"]);
    assert!(
        stamped.starts_with("20") && stamped.contains("Z side says hi"),
        "{stamped}"
    );

    // -f keeps streaming new lines.
    let mut follow = std::process::Command::new("kubectl")
        .env("KUBECONFIG", b.kubeconfig())
        .args(["logs", "-f", "talker", "-c", "main", "--tail=1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    let stdout = follow.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .take(6)
            .map(|l| l.unwrap())
            .collect::<Vec<_>>()
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !reader.is_finished() {
        assert!(
            Instant::now() < deadline,
            "kubectl logs -f did not stream 6 lines"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = follow.kill();
    let _ = follow.wait();
    let lines = reader.join().unwrap();
    let numbers: Vec<u64> = lines
        .iter()
        .map(|l| l.trim_start_matches("line ").parse().unwrap())
        .collect();
    assert!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "consecutive lines while following: {lines:?}"
    );

    // No previous container yet.
    let out = b.kubectl(&["logs", "talker", "-c", "main", "--previous"]);
    assert!(!out.status.success());

    // exec: stdout, stderr and the exit code come back apart.
    let out = b.kubectl(&[
        "exec",
        "talker",
        "-c",
        "side",
        "--",
        "/bin/sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("err\n"));
    // exec -i: stdin reaches the command, and its end ends `cat`.
    let piped = b.kubectl_stdin_ok(
        &["exec", "-i", "talker", "-c", "side", "--", "cat"],
        "piped through\n",
    );
    assert_eq!(piped, "piped through\n");
    let hostname = b.kubectl_ok(&["exec", "talker", "-c", "main", "--", "cat", "/etc/hostname"]);
    assert!(!hostname.trim().is_empty());

    // Stats, through the node proxy in the kubelet's Summary API shape: the busy loop uses
    // a good share of a core, and every container some memory.
    let summary_path = format!("/api/v1/nodes/{}/proxy/stats/summary", node.name);
    let summary = || -> serde_json::Value {
        serde_json::from_str(&b.kubectl_ok(&["get", "--raw", &summary_path])).unwrap()
    };
    wait_for(
        &b,
        30,
        "all three containers",
        &["get", "pod", "talker"],
        |s| s.contains("3/3"),
    );
    summary();
    std::thread::sleep(Duration::from_secs(2));
    let s = summary();
    assert!(
        s["node"]["cpu"]["usageNanoCores"].as_u64().unwrap() > 0,
        "{s}"
    );
    let pod = s["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["podRef"]["name"] == "talker")
        .unwrap_or_else(|| panic!("talker is not in {s}"));
    let container = |name: &str| {
        pod["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("{name} is not in {pod}"))
            .clone()
    };
    let burn = container("burn");
    let cores = burn["cpu"]["usageNanoCores"].as_u64().unwrap();
    assert!(
        cores > 100_000_000,
        "a busy loop used only {cores} nanocores: {burn}"
    );
    assert!(
        container("side")["memory"]["workingSetBytes"]
            .as_u64()
            .unwrap()
            > 0
    );
    // The same figures through metrics.k8s.io, as `kubectl top` reads them.
    let top = b.kubectl_ok(&["top", "pod", "talker", "--containers"]);
    let burn_line = top
        .lines()
        .find(|l| l.contains(" burn "))
        .unwrap_or_else(|| panic!("{top}"));
    let millicores: u64 = burn_line
        .split_whitespace()
        .nth(2)
        .and_then(|c| c.strip_suffix('m'))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("{burn_line}"));
    assert!((100..=2100).contains(&millicores), "{top}");
    let nodes = b.kubectl_ok(&["top", "node", &node.name]);
    assert!(nodes.contains(&node.name), "{nodes}");
    drop(image);
}

#[test]
fn env_and_volumes_come_from_configmaps_secrets_and_the_pod() {
    let (image, node, b) = start();
    let objects = format!(
        r#"---
{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"settings"}},"data":{{"MODE":"fast","app.conf":"port=80\n"}}}}
---
{{"apiVersion":"v1","kind":"Secret","metadata":{{"name":"creds"}},"stringData":{{"PASSWORD":"hunter2"}}}}
---
{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"configured"}},"spec":{{"nodeName":"{node}",
  "terminationGracePeriodSeconds":1,
  "volumes":[{{"name":"conf","configMap":{{"name":"settings"}}}},
             {{"name":"secret","secret":{{"secretName":"creds"}}}},
             {{"name":"scratch","emptyDir":{{}}}}],
  "containers":[
    {{"name":"main","image":"{img}","command":["/bin/sh","-c","echo shared > /scratch/note; sleep 3600"],
      "env":[{{"name":"MODE","valueFrom":{{"configMapKeyRef":{{"name":"settings","key":"MODE"}}}}}},
             {{"name":"PASSWORD","valueFrom":{{"secretKeyRef":{{"name":"creds","key":"PASSWORD"}}}}}},
             {{"name":"POD","valueFrom":{{"fieldRef":{{"fieldPath":"metadata.name"}}}}}}],
      "envFrom":[{{"configMapRef":{{"name":"settings"}},"prefix":"CM_"}}],
      "volumeMounts":[{{"name":"conf","mountPath":"/etc/app"}},{{"name":"secret","mountPath":"/etc/creds"}},
                      {{"name":"scratch","mountPath":"/scratch"}}]}},
    {{"name":"reader","image":"{img}","command":["/bin/sh","-c","sleep 3600"],
      "volumeMounts":[{{"name":"scratch","mountPath":"/data"}}]}}]}}}}
---
{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"needs-missing"}},"spec":{{"nodeName":"{node}",
  "terminationGracePeriodSeconds":1,
  "containers":[{{"name":"c","image":"{img}","command":["/bin/sh","-c","sleep 3600"],
    "env":[{{"name":"X","valueFrom":{{"configMapKeyRef":{{"name":"absent","key":"X"}}}}}}]}}]}}}}"#,
        node = node.name,
        img = image.tag
    );
    b.kubectl_stdin_ok(&["create", "-f", "-"], &objects);
    wait_for(
        &b,
        30,
        "the configured pod to run",
        &["get", "pod", "configured", "-o", "jsonpath={.status.phase}"],
        |s| s == "Running",
    );
    let exec = |container: &str, script: &str| {
        b.kubectl_ok(&[
            "exec",
            "configured",
            "-c",
            container,
            "--",
            "/bin/sh",
            "-c",
            script,
        ])
    };
    assert_eq!(
        exec("main", "echo $MODE $PASSWORD $POD $CM_MODE"),
        "fast hunter2 configured fast\n"
    );
    assert_eq!(
        exec("main", "cat /etc/app/app.conf /etc/creds/PASSWORD"),
        "port=80\nhunter2"
    );
    assert_eq!(exec("reader", "cat /data/note"), "shared\n");
    // configMap and secret volumes are read-only.
    let out = b.kubectl(&[
        "exec",
        "configured",
        "-c",
        "main",
        "--",
        "/bin/sh",
        "-c",
        "echo x > /etc/app/new",
    ]);
    assert!(!out.status.success());

    // A missing ConfigMap says so, and the pod starts once it exists.
    let waiting = wait_for(
        &b,
        30,
        "CreateContainerConfigError",
        &["get", "pod", "needs-missing", "-o",
          "jsonpath={.status.containerStatuses[0].state.waiting.reason}: {.status.containerStatuses[0].state.waiting.message}"],
        |s| s.starts_with("CreateContainerConfigError"),
    );
    assert!(
        waiting.contains("configmap \"absent\" not found"),
        "{waiting}"
    );
    b.kubectl_ok(&["create", "configmap", "absent", "--from-literal=X=1"]);
    wait_for(
        &b,
        40,
        "the pod to start once its ConfigMap exists",
        &[
            "get",
            "pod",
            "needs-missing",
            "-o",
            "jsonpath={.status.phase}",
        ],
        |s| s == "Running",
    );
    drop(image);
}

#[test]
fn a_prestop_hook_runs_before_the_container_is_stopped() {
    let (image, node, b) = start();
    let out_dir = tempfile::tempdir().unwrap();
    let pod = format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"stopper"}},"spec":{{"nodeName":"{node}",
          "terminationGracePeriodSeconds":5,
          "volumes":[{{"name":"out","hostPath":{{"path":"{dir}","type":"DirectoryOrCreate"}}}}],
          "containers":[{{"name":"c","image":"{img}","command":["/bin/sh","-c","sleep 3600"],
            "volumeMounts":[{{"name":"out","mountPath":"/out"}}],
            "lifecycle":{{"preStop":{{"exec":{{"command":["/bin/sh","-c","echo stopping > /out/prestop"]}}}}}}}}]}}}}"#,
        node = node.name,
        img = image.tag,
        dir = out_dir.path().display()
    );
    b.kubectl_stdin(&["create", "-f", "-"], &pod);
    wait_for(
        &b,
        30,
        "the pod to run",
        &["get", "pod", "stopper", "-o", "jsonpath={.status.phase}"],
        |s| s == "Running",
    );
    let t = Instant::now();
    b.kubectl_ok(&["delete", "pod", "stopper", "--timeout=30s"]);
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "deletion took {:?}",
        t.elapsed()
    );
    let written = std::fs::read_to_string(out_dir.path().join("prestop")).unwrap_or_default();
    assert_eq!(written, "stopping\n");
    drop(image);
}

#[test]
fn a_host_port_reaches_the_pod_from_the_host() {
    let (image, node, b) = start();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let pod = format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"published"}},"spec":{{"nodeName":"{node}",
          "terminationGracePeriodSeconds":1,
          "containers":[{{"name":"httpd","image":"{img}","command":["/bin/httpd","-f","-p","8080","-h","/www"],
            "ports":[{{"containerPort":8080,"hostPort":{port}}}]}}]}}}}"#,
        node = node.name,
        img = image.tag
    );
    b.kubectl_stdin(&["create", "-f", "-"], &pod);
    wait_for(
        &b,
        30,
        "the pod to run",
        &["get", "pod", "published", "-o", "jsonpath={.status.phase}"],
        |s| s == "Running",
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let body = loop {
        use std::io::{Read, Write};
        let got = std::net::TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        });
        match got {
            Ok(text) if text.starts_with("HTTP/1.") => break text,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "no answer on host port {port}: {other:?}"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    assert!(body.contains("200 OK"), "{body}");
    drop(image);
}

/// A Deployment that burns CPU while a file on the host exists, and an autoscaler on it: the
/// load step brings replicas up to the maximum, Ready; the end of the load brings them back
/// down once the scale-down window has passed.
#[test]
fn an_autoscaler_follows_cpu_load_up_and_back_down() {
    let (image, node, b) = start();
    let ctl = tempfile::tempdir().expect("temp dir");
    let deploy = format!(
        r#"{{"apiVersion":"apps/v1","kind":"Deployment","metadata":{{"name":"burner"}},"spec":{{
          "replicas":1,"selector":{{"matchLabels":{{"app":"burner"}}}},
          "template":{{"metadata":{{"labels":{{"app":"burner"}}}},"spec":{{
            "nodeName":"{node}","terminationGracePeriodSeconds":1,
            "volumes":[{{"name":"ctl","hostPath":{{"path":"{dir}"}}}}],
            "containers":[{{"name":"burn","image":"{img}","imagePullPolicy":"Never",
              "command":["sh","-c","while :; do if [ -e /ctl/burn ]; then :; else sleep 1; fi; done"],
              "volumeMounts":[{{"name":"ctl","mountPath":"/ctl"}}],
              "resources":{{"requests":{{"cpu":"100m"}},"limits":{{"cpu":"200m"}}}}}}]}}}}}}}}"#,
        node = node.name,
        dir = ctl.path().display(),
        img = image.tag
    );
    b.kubectl_stdin_ok(&["apply", "-f", "-"], &deploy);
    let hpa = r#"
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: burner}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: burner}
  minReplicas: 1
  maxReplicas: 3
  metrics:
  - type: Resource
    resource: {name: cpu, target: {type: Utilization, averageUtilization: 50}}
  behavior:
    scaleDown: {stabilizationWindowSeconds: 5}
"#;
    b.kubectl_stdin_ok(&["apply", "-f", "-"], hpa);
    b.kubectl_ok(&["rollout", "status", "deploy/burner", "--timeout=60s"]);
    // Idle, it has a figure and stays at one replica.
    wait_for(
        &b,
        30,
        "a measured utilization",
        &["get", "hpa", "burner"],
        |s| s.contains("cpu: ") && !s.contains("<unknown>"),
    );
    assert_eq!(
        b.kubectl_ok(&["get", "deploy", "burner", "-o", "jsonpath={.spec.replicas}"]),
        "1"
    );

    // The load step.
    let step = Instant::now();
    std::fs::write(ctl.path().join("burn"), "").unwrap();
    wait_for(
        &b,
        60,
        "3 ready replicas",
        &[
            "get",
            "deploy",
            "burner",
            "-o",
            "jsonpath={.status.readyReplicas}",
        ],
        |s| s == "3",
    );
    eprintln!(
        "load step -> 3 replicas Ready in {:.1} s",
        step.elapsed().as_secs_f64()
    );
    let described = b.kubectl_ok(&["describe", "hpa", "burner"]);
    assert!(
        described.contains("SuccessfulRescale") && described.contains("above target"),
        "{described}"
    );

    // The load ends: back to one replica, and no sooner than the 5 s window allows.
    let quiet = Instant::now();
    std::fs::remove_file(ctl.path().join("burn")).unwrap();
    wait_for(
        &b,
        60,
        "one replica again",
        &["get", "deploy", "burner", "-o", "jsonpath={.spec.replicas}"],
        |s| s == "1",
    );
    assert!(
        quiet.elapsed() >= Duration::from_secs(5),
        "scaled down {:?} after the load ended, inside the 5 s window",
        quiet.elapsed()
    );
    let events = b.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        "reason=SuccessfulRescale",
    ]);
    assert!(events.contains("below target"), "{events}");
}

/// Ctrl-C on `berth up` stops it in order: the process ends by itself, the local agent's warm
/// sandboxes are gone, nothing is logged at ERROR (an agent still renewing its Lease against
/// a closed store did that), and a log that is not a terminal carries no colour codes.
#[test]
fn ctrl_c_stops_berth_up_in_order_and_leaves_no_warm_sandboxes() {
    use std::io::{BufRead, BufReader, Read};
    use std::process::{Command, Stdio};
    common::require_docker();
    let node = Node::new("n");
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("up")
        .arg("--data-dir")
        .arg(dir.path())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--instances-listen",
            "127.0.0.1:0",
        ])
        .args(["--dns-listen", "127.0.0.1:0", "--runtime", "docker"])
        .args(["--warm-pool", "2", "--node-name", &node.name])
        .env("BERTH_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the berth binary");
    let mut stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(
        lines.any(|l| l.is_ok_and(|l| l.starts_with("Berth is up"))),
        "berth up did not come up"
    );
    std::thread::spawn(move || for _ in lines {});
    // The instances service keeps the pool (a pod's sandbox is made for it, with its name).
    let service = std::fs::read_to_string(dir.path().join("instances/node-name")).unwrap();
    // Its containers and its bridge for the virtual node's pods go when the test ends.
    let _service = Node {
        name: service.trim().to_string(),
    };
    let warm = || {
        node_containers(service.trim())
            .into_iter()
            .filter(|(_, name, _)| name.contains("_warm_"))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while warm() < 2 {
        assert!(
            Instant::now() < deadline,
            "the instances service never filled its warm pool"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let pid = child.id().to_string();
    let sent = Command::new("kill").args(["-INT", &pid]).status().unwrap();
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("berth up did not stop within 30 s of Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = log.join().unwrap();
    assert!(status.success(), "berth up exited with {status}:\n{log}");
    assert_eq!(warm(), 0, "warm sandboxes left behind");
    assert!(!log.contains("ERROR"), "an ERROR on the way down:\n{log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log that is no terminal:\n{log}"
    );
    assert!(log.contains("stopping"), "{log}");
}
