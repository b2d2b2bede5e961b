//! The virtual node: `berth up` runs `berth-instances`, whose pods become container groups
//! in its instances service; a Deployment that tolerates its taint bursts onto it when the
//! real node is full and gives those pods back first.

mod common;

use common::{eventually, unique, Berth, BusyboxImage};

/// `berth container <args> -o json` on this cluster's instances service.
fn container_json(b: &Berth, args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("container")
        .args(args)
        .args(["-o", "json", "--data-dir"])
        .arg(b.dir.path())
        .output()
        .expect("berth container");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

fn groups(b: &Berth) -> Vec<String> {
    container_json(b, &["list"])
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| g["name"].as_str().map(String::from))
        .collect()
}

fn pods_by_node(b: &Berth) -> Vec<(String, String, String)> {
    b.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        "app=burst",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.status.phase}{\"\\n\"}{end}",
    ])
    .lines()
    .filter_map(|l| {
        let mut w = l.split_whitespace();
        Some((
            w.next()?.into(),
            w.next()?.into(),
            w.next().unwrap_or("").into(),
        ))
    })
    .collect()
}

/// A Deployment `burst` of `replicas` pods of `image` running `sh -c line`, with
/// `annotations` (YAML flow-map entries) and the requests given, that tolerates the virtual
/// node's taint.
fn burst_deployment(
    image: &str,
    replicas: u32,
    annotations: &str,
    line: &str,
    cpu: &str,
    memory: &str,
) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: burst, annotations: {{{annotations}}}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: burst}}}}
  template:
    metadata: {{labels: {{app: burst}}}}
    spec:
      terminationGracePeriodSeconds: 1
      tolerations: [{{key: virtual-kubelet.io/provider, operator: Exists, effect: NoSchedule}}]
      containers:
      - name: c
        image: {image}
        command: ["sh", "-c", {line:?}]
        resources: {{requests: {{cpu: {cpu}, memory: {memory}}}}}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_node_bursts_into_container_groups_and_gets_them_back_first() {
    common::require_docker();
    let image = BusyboxImage::build();
    let node = unique("vk");
    let mut b = Berth::up(&["--runtime", "docker", "--node-name", &node]);
    eventually(30, "the virtual node to be Ready", || async {
        let ready = b.kubectl(&["get", "node", "berth-instances", "-o",
            r#"jsonpath={.status.conditions[?(@.type=="Ready")].status} {.spec.taints[0].key} {.metadata.labels.type}"#]);
        (String::from_utf8_lossy(&ready.stdout) == "True virtual-kubelet.io/provider virtual-kubelet").then_some(())
    })
    .await;
    // Pods of an eighth of the real node's CPU each: 8 fit on it, the other 4 burst into the
    // instances service (on the same host, with room for them).
    let cpu = b.kubectl_ok(&[
        "get",
        "node",
        &node,
        "-o",
        "jsonpath={.status.allocatable.cpu}",
    ]);
    let millis: u64 = match cpu.strip_suffix('m') {
        Some(m) => m.parse().unwrap(),
        None => cpu.parse::<u64>().unwrap() * 1000,
    };
    let request = format!("{}m", millis / 8 / 10 * 10);
    let deploy = burst_deployment(
        &image.tag,
        12,
        "",
        "mkdir -p /w && hostname > /w/index.html && httpd -p 8080 -h /w; echo started on $(hostname); while true; do sleep 1; done",
        &request,
        "32Mi",
    );
    b.kubectl_stdin_ok(&["apply", "-f", "-"], &deploy);
    let placed = eventually(90, "all 12 Running", || async {
        let pods = pods_by_node(&b);
        (pods.len() == 12 && pods.iter().all(|(_, _, phase)| phase == "Running")).then_some(pods)
    })
    .await;
    let burst: Vec<&String> = placed
        .iter()
        .filter(|(_, n, _)| n == "berth-instances")
        .map(|(p, _, _)| p)
        .collect();
    let real = placed.iter().filter(|(_, n, _)| *n == node).count();
    assert_eq!((real, burst.len()), (8, 4), "{placed:?}");
    assert_eq!(real + burst.len(), 12, "{placed:?}");
    // Each burst pod is a group, with the pod's address.
    let names = groups(&b);
    assert_eq!(names.len(), burst.len(), "{names:?}");
    // on the virtual node's block of the pod network, reached from the real node's pods.
    let block = b.kubectl_ok(&[
        "get",
        "node",
        "berth-instances",
        "-o",
        "jsonpath={.spec.podCIDR}",
    ]);
    let ip = b.kubectl_ok(&["get", "pod", burst[0], "-o", "jsonpath={.status.podIP}"]);
    assert!(
        !block.is_empty() && ip.starts_with(block.trim_end_matches("0/24")),
        "the burst pod's address {ip} is on the virtual node's {block}"
    );
    let real_pod = placed.iter().find(|(_, n, _)| *n == node).unwrap();
    let url = format!("http://{ip}:8080/");
    let answer = b.kubectl_ok(&["exec", &real_pod.0, "--", "wget", "-q", "-O", "-", &url]);
    let its_name = b.kubectl_ok(&["exec", burst[0], "--", "hostname"]);
    assert_eq!(answer.trim(), its_name.trim(), "the burst pod answered");

    // logs and exec reach a burst pod through the API server, as on any node.
    let logs = eventually(20, "the burst pod's log", || async {
        let l = b.kubectl_ok(&["logs", burst[0]]);
        l.starts_with("started on").then_some(l)
    })
    .await;
    assert!(logs.contains("started on"), "{logs}");
    let out = b.kubectl_ok(&["exec", burst[0], "--", "sh", "-c", "echo 'in  side'"]);
    // An argument with spaces arrives whole; without -t, line ends are the program's.
    assert_eq!(out, "in  side\n");
    // kubectl top reads the group's metrics.
    let top = eventually(30, "kubectl top on a burst pod", || async {
        let out = b.kubectl(&["top", "pod", burst[0], "--no-headers"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        (out.status.success() && text.contains(burst[0].as_str())).then_some(text)
    })
    .await;
    let memory = top.split_whitespace().nth(2).unwrap_or_default();
    assert!(memory.ends_with("Mi") || memory.ends_with("Ki"), "{top}");
    // A burst pod that restarts keeps its previous run's log.
    b.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: crashy}}
spec:
  nodeName: berth-instances
  containers:
  - name: c
    image: {image}
    command: ["sh", "-c", "echo run of $(date +%s%N); sleep 1; exit 3"]
"#,
            image = image.tag
        ),
    );
    eventually(60, "the restarted pod's previous log", || async {
        let restarts = b.kubectl_ok(&[
            "get",
            "pod",
            "crashy",
            "-o",
            "jsonpath={.status.containerStatuses[0].restartCount}",
        ]);
        let before = b.kubectl(&["logs", "crashy", "--previous"]);
        let before = String::from_utf8_lossy(&before.stdout).to_string();
        (restarts.parse::<u32>().unwrap_or(0) >= 1 && before.starts_with("run of ")).then_some(())
    })
    .await;
    b.kubectl_ok(&["delete", "pod", "crashy", "--wait=true"]);

    // Each burst pod shows its group's meter.
    let metered = eventually(30, "a burst pod's meter", || async {
        let m = b.kubectl_ok(&[
            "get",
            "pod",
            burst[0],
            "-o",
            r#"jsonpath={.status.conditions[?(@.type=="berth.dev/Metered")].message}"#,
        ]);
        m.contains("vCPU-seconds").then_some(m)
    })
    .await;
    assert!(metered.contains("GB-seconds"), "{metered}");

    // A vnode restarted mid-way adopts its groups: none is made twice.
    b.restart();
    eventually(60, "the pods after a restart", || async {
        let pods = pods_by_node(&b);
        (pods.len() == 12 && pods.iter().all(|(_, _, phase)| phase == "Running")).then_some(())
    })
    .await;
    let mut again = groups(&b);
    let mut before = names.clone();
    again.sort();
    before.sort();
    assert_eq!(again, before, "the same groups, adopted");

    // A pod asking for what a group cannot do fails, naming the field.
    let hostpath = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"hostpath"},"spec":{
        "nodeName":"berth-instances","volumes":[{"name":"h","hostPath":{"path":"/etc"}}],
        "containers":[{"name":"c","image":"x","command":["x"],"volumeMounts":[{"name":"h","mountPath":"/h"}]}]}}"#;
    b.kubectl_stdin_ok(&["create", "-f", "-"], hostpath);
    let why = eventually(20, "the refusal", || async {
        let s = b.kubectl_ok(&[
            "get",
            "pod",
            "hostpath",
            "-o",
            "jsonpath={.status.phase}: {.status.message}",
        ]);
        s.starts_with("Failed").then_some(s)
    })
    .await;
    assert!(why.contains("spec.volumes[0].hostPath"), "{why}");

    // Scale down: the burst pods go first, and their groups with them.
    b.kubectl_ok(&["scale", "deploy/burst", "--replicas=3"]);
    eventually(60, "only real-node pods left, and no group", || async {
        let pods = pods_by_node(&b);
        (pods.len() == 3 && pods.iter().all(|(_, n, _)| *n == node) && groups(&b).is_empty())
            .then_some(())
    })
    .await;

    // And their containers with them.
    let service = std::fs::read_to_string(b.dir.path().join("instances/node-name")).unwrap();
    eventually(30, "no container of the instances service left", || async {
        common::node_containers(service.trim())
            .is_empty()
            .then_some(())
    })
    .await;

    // What the burst cost, per workload, after its groups are gone.
    let usage = container_json(&b, &["usage", "--by", "workload"]);
    let rows = usage["value"].as_array().unwrap();
    let burst_row = rows
        .iter()
        .find(|r| r["namespace"] == "default" && r["workload"] == "Deployment/burst")
        .unwrap_or_else(|| panic!("no row for the Deployment: {usage}"));
    assert!(burst_row["vcpuSeconds"].as_f64().unwrap() > 0.0, "{usage}");
    assert!(burst_row["cost"].as_f64().unwrap() > 0.0, "{usage}");
}

/// `berth.dev/rebalance: "true"`: burst pods move back to a real node once it has room, one
/// at a time, never fewer available than the Deployment's replicas, and their groups go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalanced_burst_pods_move_back_when_a_real_node_has_room() {
    common::require_docker();
    let image = BusyboxImage::build();
    let node = unique("rb");
    let b = Berth::up(&["--runtime", "docker", "--node-name", &node]);
    eventually(30, "both nodes Ready", || async {
        let ready = b.kubectl_ok(&[
            "get",
            "nodes",
            "-o",
            r#"jsonpath={range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{end}"#,
        ]);
        (ready == "TrueTrue").then_some(())
    })
    .await;
    // The real node is full (cordoned): all four land on the virtual node.
    b.kubectl_ok(&["cordon", &node]);
    let deploy = burst_deployment(
        &image.tag,
        4,
        r#"berth.dev/rebalance: "true""#,
        "while true; do sleep 1; done",
        "10m",
        "16Mi",
    );
    b.kubectl_stdin_ok(&["apply", "-f", "-"], &deploy);
    eventually(90, "all 4 Running on the virtual node", || async {
        let pods = pods_by_node(&b);
        (pods.len() == 4
            && pods
                .iter()
                .all(|(_, n, phase)| n == "berth-instances" && phase == "Running"))
        .then_some(())
    })
    .await;
    assert_eq!(groups(&b).len(), 4);
    eventually(30, "the Deployment to count 4 available", || async {
        let n = b.kubectl_ok(&[
            "get",
            "deploy",
            "burst",
            "-o",
            "jsonpath={.status.availableReplicas}",
        ]);
        (n == "4").then_some(())
    })
    .await;

    // Room returns: the pods come back, and the Deployment stays whole all the way.
    b.kubectl_ok(&["uncordon", &node]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let mut most = 0;
    loop {
        let state = b.kubectl_ok(&[
            "get",
            "deploy",
            "burst",
            "-o",
            "jsonpath={.status.availableReplicas} {.status.replicas}",
        ]);
        let mut w = state
            .split_whitespace()
            .map(|n| n.parse::<i32>().unwrap_or(0));
        let (available, replicas) = (w.next().unwrap_or(0), w.next().unwrap_or(0));
        assert!(
            available >= 4,
            "available fell to {available} during the move: {}",
            b.kubectl_ok(&["get", "rs,pods", "-o", "wide"])
        );
        most = most.max(replicas);
        let pods = pods_by_node(&b);
        if pods.len() == 4
            && pods
                .iter()
                .all(|(_, n, phase)| *n == node && phase == "Running")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the burst pods did not come back: {pods:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(
        most, 5,
        "one pod moves at a time (at most one more than replicas)"
    );
    eventually(30, "no group left", || async {
        groups(&b).is_empty().then_some(())
    })
    .await;
}

/// `berth up --instances-only`: no local agent; the README's demo Deployment runs on the
/// virtual node, logs and rolls out.
#[tokio::test]
async fn instances_only_runs_the_readme_demo_on_the_virtual_node() {
    common::require_docker();
    let node = unique("io");
    let b = Berth::up(&[
        "--instances-only",
        "--runtime",
        "docker",
        "--node-name",
        &node,
    ]);
    b.kubectl_ok(&[
        "create",
        "deployment",
        "hello",
        "--image=berth/pause:1",
        "--",
        "/busybox",
        "sh",
        "-c",
        "while true; do echo hello from $(hostname); sleep 5; done",
    ]);
    b.kubectl_ok(&["rollout", "status", "deploy/hello", "--timeout=90s"]);
    let nodes = b.kubectl_ok(&["get", "nodes", "-o", "name"]);
    assert_eq!(nodes.trim(), "node/berth-instances", "no local agent");
    let on = b.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        "app=hello",
        "-o",
        "jsonpath={.items[*].spec.nodeName}",
    ]);
    assert_eq!(on, "berth-instances");
    let logs = eventually(20, "the demo's log", || async {
        let l = b.kubectl_ok(&["logs", "deploy/hello"]);
        l.starts_with("hello from").then_some(l)
    })
    .await;
    assert!(logs.starts_with("hello from"), "{logs}");
    let before = groups(&b);
    b.kubectl_ok(&["set", "env", "deploy/hello", "GREETING=hi"]);
    b.kubectl_ok(&["rollout", "status", "deploy/hello", "--timeout=90s"]);
    eventually(30, "the old group to go", || async {
        let now = groups(&b);
        (now.len() == 1 && now != before).then_some(())
    })
    .await;
}
