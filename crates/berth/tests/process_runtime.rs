//! `berth up --runtime process`: pods as host processes, driven by kubectl, no Docker needed.

mod common;

use common::{eventually, Berth};
use serde_json::json;

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

/// Process pods join the pod network: an address of the node's pod CIDR in a network
/// namespace of their own, their own hostname, the cluster DNS; `hostNetwork` keeps the
/// host's.
#[tokio::test]
async fn process_pods_get_their_own_address_name_and_cluster_dns() {
    let node = common::unique("procnet");
    let b = Berth::up(&["--runtime", "process", "--node-name", &node]);
    let www = std::env::temp_dir().join(common::unique("berth-www"));
    let pods = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: web, labels: {{app: web}}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: host
    command: ["sh", "-c", "mkdir -p {www} && hostname > {www}/index.html && exec busybox httpd -f -p 8080 -h {www}"]
    ports: [{{containerPort: 8080}}]
    readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  terminationGracePeriodSeconds: 1
  containers: [{{name: c, image: host, command: ["sleep", "300"]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: onhost}}
spec:
  terminationGracePeriodSeconds: 1
  hostNetwork: true
  containers: [{{name: c, image: host, command: ["sleep", "300"]}}]
"#,
        www = www.display()
    );
    b.kubectl_stdin_ok(&["apply", "-f", "-"], &pods);
    for pod in ["web", "client", "onhost"] {
        b.kubectl_ok(&[
            "wait",
            &format!("pod/{pod}"),
            "--for=condition=Ready",
            "--timeout=60s",
        ]);
    }
    let cidr = b.kubectl_ok(&["get", "node", &node, "-o", "jsonpath={.spec.podCIDR}"]);
    let prefix = cidr.trim_end_matches("0/24");
    let ip = |pod: &str| b.kubectl_ok(&["get", "pod", pod, "-o", "jsonpath={.status.podIP}"]);
    let (web, client) = (ip("web"), ip("client"));
    assert!(
        web.starts_with(prefix) && client.starts_with(prefix) && web != client,
        "pods {web} and {client} not in {cidr}"
    );
    assert_eq!(
        ip("onhost"),
        "127.0.0.1",
        "a host-network pod has the node's address"
    );
    let network = b.kubectl_ok(&[
        "get",
        "node",
        &node,
        "-o",
        r#"jsonpath={.status.conditions[?(@.type=="PodNetwork")].status}"#,
    ]);
    assert_eq!(
        network, "True",
        "the node says its pods have the pod network"
    );

    let exec = |pod: &str, script: &str| {
        b.kubectl_ok(&["exec", pod, "--", "sh", "-c", script])
            .trim_end()
            .to_string()
    };
    assert_eq!(exec("client", "hostname"), "client");
    assert_eq!(
        exec("client", "ip -4 -o addr show eth0 | awk '{print $4}'"),
        format!("{client}/24")
    );
    assert!(
        exec("client", "cat /etc/hosts").contains(&format!("{client}\tclient")),
        "the pod's /etc/hosts names it"
    );
    let resolv = exec("client", "cat /etc/resolv.conf");
    assert!(
        resolv.contains(&format!("nameserver {}", b.flag("--cluster-dns").unwrap())),
        "{resolv}"
    );
    // By pod IP, by Service name (cluster DNS, search path) and by its FQDN.
    for url in [
        format!("http://{web}:8080/"),
        "http://web/".to_string(),
        "http://web.default.svc.cluster.local/".to_string(),
    ] {
        let got = exec("client", &format!("busybox wget -q -O- {url}"));
        assert_eq!(got, "web", "{url}");
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(
        exec("onhost", "hostname"),
        host.trim(),
        "a host-network pod has the host's name"
    );

    b.kubectl_ok(&["delete", "pod", "web", "client", "onhost", "--timeout=30s"]);
    // Their namespaces and addresses went with them.
    let pods_dir = b.dir.path().join("agent/process/pods");
    let left = std::fs::read_dir(&pods_dir).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "pod state left in {}", pods_dir.display());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&b.dir.path().display().to_string()),
        "namespaces left mounted"
    );
    let _ = std::fs::remove_dir_all(&www);
}

/// A node deleted from the cluster is removed for good: its agent stops its pods and takes
/// its bridge and nftables table off the host, and its pods are collected from the API.
#[tokio::test]
async fn a_deleted_node_leaves_no_network_and_its_pods_are_collected() {
    let node = common::unique("procgone");
    let marker = common::unique("gone-marker");
    let b = Berth::up(&["--runtime", "process", "--node-name", &node]);
    let pod = format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"left"}},"spec":{{"containers":[
        {{"name":"c","image":"host","command":["sh","-c","while true; do sleep 0.2; done # {marker}"]}}]}}}}"#
    );
    b.kubectl_stdin_ok(&["create", "-f", "-"], &pod);
    b.kubectl_ok(&["wait", "pod/left", "--for=condition=Ready", "--timeout=60s"]);
    let bridge = berth_agent::net::podnet::bridge_name(&node);
    let table = berth_agent::net::nft::table_for(&node);
    let has = |cmd: &[&str]| {
        std::process::Command::new(cmd[0])
            .args(&cmd[1..])
            .stderr(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    assert!(has(&["ip", "link", "show", &bridge]), "the node's bridge");
    assert!(
        has(&["nft", "list", "table", "ip", &table]),
        "the node's table"
    );
    let running = || has(&["pgrep", "-f", &marker]);
    assert!(running());

    b.kubectl_ok(&["delete", "node", &node]);
    eventually(10, "the agent to leave", || async {
        (!has(&["ip", "link", "show", &bridge])
            && !has(&["nft", "list", "table", "ip", &table])
            && !running())
        .then_some(())
    })
    .await;
    eventually(
        30,
        "the pod of the deleted node to be collected",
        || async {
            b.kubectl_ok(&["get", "pods", "-o", "name"])
                .is_empty()
                .then_some(())
        },
    )
    .await;
}

/// A projected volume brings a pod its ServiceAccount's token (bound to the pod), the cluster
/// CA and its namespace, as Kubernetes mounts them for in-cluster clients; the token is the
/// pod's account's, and dies with the pod.
#[tokio::test]
async fn a_projected_volume_holds_the_pods_service_account_token() {
    let node = common::unique("procsa");
    let b = Berth::up(&["--runtime", "process", "--node-name", &node]);
    eventually(10, "the default ServiceAccount", || async {
        b.kubectl(&["get", "serviceaccount", "default"])
            .status
            .success()
            .then_some(())
    })
    .await;
    let at = std::env::temp_dir().join(common::unique("berth-sa"));
    let pod = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: in-cluster}}
spec:
  terminationGracePeriodSeconds: 1
  volumes:
  - name: kube-api-access
    projected:
      sources:
      - serviceAccountToken: {{path: token, expirationSeconds: 3607}}
      - configMap: {{name: kube-root-ca.crt, items: [{{key: ca.crt, path: ca.crt}}]}}
      - downwardAPI: {{items: [{{path: namespace, fieldRef: {{fieldPath: metadata.namespace}}}}]}}
  containers:
  - name: app
    image: host
    command: ["sleep", "300"]
    volumeMounts: [{{name: kube-api-access, mountPath: {at}, readOnly: true}}]
"#,
        at = at.display()
    );
    b.kubectl_stdin_ok(&["apply", "-f", "-"], &pod);
    b.kubectl_ok(&[
        "wait",
        "pod/in-cluster",
        "--for=condition=Ready",
        "--timeout=60s",
    ]);
    let read = |f: &str| {
        b.kubectl_ok(&[
            "exec",
            "in-cluster",
            "--",
            "cat",
            &format!("{}/{f}", at.display()),
        ])
    };
    assert_eq!(read("namespace"), "default");
    assert!(read("ca.crt").contains("BEGIN CERTIFICATE"));
    let token = read("token");
    let out = b.kubectl(&["--token", token.trim(), "auth", "whoami"]);
    let whoami = String::from_utf8_lossy(&out.stdout);
    assert!(
        whoami.contains("system:serviceaccount:default:default"),
        "{whoami}"
    );

    b.kubectl_ok(&["delete", "pod", "in-cluster", "--timeout=30s"]);
    eventually(15, "the pod's token to stop working", || async {
        let out = b.kubectl(&["--token", token.trim(), "auth", "whoami"]);
        (!out.status.success()).then_some(())
    })
    .await;
    let _ = std::fs::remove_dir_all(&at);
}

/// What an in-cluster program finds, as the official Python client reads it: its
/// ServiceAccount's token, the CA and its namespace where admission mounted them, the API
/// through `KUBERNETES_SERVICE_HOST` (the `kubernetes` Service). Bound to `view` in its
/// namespace, it lists pods there and is refused Secrets and other namespaces; a pod that
/// opts out gets no token at all.
#[tokio::test]
async fn the_python_client_in_a_pod_uses_its_service_account() {
    let python = common::python_with("kubernetes", "kubernetes");
    let node = common::unique("procincl");
    let b = Berth::up(&["--runtime", "process", "--node-name", &node]);
    b.kubectl_ok(&["create", "namespace", "apps"]);
    b.wait_for_aggregated_roles().await;
    b.kubectl_ok(&["create", "serviceaccount", "reader", "-n", "apps"]);
    b.kubectl_ok(&[
        "create",
        "rolebinding",
        "reader-view",
        "--clusterrole=view",
        "--serviceaccount=apps:reader",
        "-n",
        "apps",
    ]);
    let script = r#"
import os
from kubernetes import client, config
from kubernetes.client.rest import ApiException
print("host", os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"])
config.load_incluster_config()
v1 = client.CoreV1Api()
ns = open("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read()
print("pods", ",".join(sorted(p.metadata.name for p in v1.list_namespaced_pod(ns).items)))
for what, call in [("secrets", lambda: v1.list_namespaced_secret(ns)),
                   ("default", lambda: v1.list_namespaced_pod("default"))]:
    try:
        call()
        print(what, "allowed")
    except ApiException as e:
        print(what, e.status)
"#;
    let pods = json!({
        "apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Pod",
             "metadata": {"name": "in-cluster", "namespace": "apps"},
             "spec": {"serviceAccountName": "reader", "restartPolicy": "Never",
                      "containers": [{"name": "app", "image": "host",
                                      "command": [python.to_str().unwrap(), "-c", script]}]}},
            {"apiVersion": "v1", "kind": "Pod",
             "metadata": {"name": "no-token", "namespace": "apps"},
             "spec": {"automountServiceAccountToken": false, "terminationGracePeriodSeconds": 1,
                      "containers": [{"name": "app", "image": "host", "command": ["sleep", "300"]}]}},
        ]
    });
    b.kubectl_stdin_ok(&["apply", "-f", "-"], &pods.to_string());
    // A pod naming an account that does not exist is refused at once, saying which.
    let out = b.kubectl_stdin(
        &["apply", "-f", "-"],
        &json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "ghost", "namespace": "apps"},
                "spec": {"serviceAccountName": "ghost",
                         "containers": [{"name": "c", "image": "host"}]}})
        .to_string(),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(r#"serviceaccount "ghost" not found"#),
        "{err}"
    );

    b.kubectl_ok(&[
        "wait",
        "-n",
        "apps",
        "pod/in-cluster",
        "--for=jsonpath={.status.phase}=Succeeded",
        "--timeout=90s",
    ]);
    let logs = b.kubectl_ok(&["logs", "-n", "apps", "in-cluster"]);
    let lines: Vec<&str> = logs.lines().collect();
    assert_eq!(
        lines,
        [
            format!("host {} 443", b.flag("--kubernetes-service-ip").unwrap()).as_str(),
            "pods in-cluster,no-token",
            "secrets 403",
            "default 403"
        ],
        "{logs}"
    );
    let volumes = b.kubectl_ok(&[
        "get",
        "pod",
        "-n",
        "apps",
        "no-token",
        "-o",
        "jsonpath={.spec.volumes}{.spec.containers[0].volumeMounts}",
    ]);
    assert_eq!(volumes, "", "a pod that opts out gets no token volume");
    b.kubectl_ok(&["delete", "namespace", "apps", "--timeout=60s"]);
}
