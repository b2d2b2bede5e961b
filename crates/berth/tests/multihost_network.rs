//! The pod network across hosts: two `berth agent`s, each in a network namespace of its own
//! standing for a host (its own address on a private link, its own bridge, VXLAN device,
//! nftables table and DNS server), running Docker pods of the one engine on this machine;
//! the control plane (`berth up --runtime none`) on the link's host side. Pods on one host
//! reach pods and Services on the other by IP, name and NodePort; readiness and a host's
//! death move the answers.

mod common;

use std::process::{Child, Command, Stdio};

use common::{eventually, Berth, NetworkShare};

fn sh(cmd: &str) -> std::process::Output {
    Command::new("sh")
        .args(["-c", cmd])
        .output()
        .expect("sh runs")
}

fn must(cmd: &str) {
    let out = sh(cmd);
    assert!(
        out.status.success(),
        "{cmd}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces on a bridge of this machine's: `192.168.<n>.254` here, `.1` and `.2`
/// there. Removed on drop.
struct Hosts {
    share: NetworkShare,
    names: [String; 2],
    bridge: String,
}

impl Hosts {
    fn make() -> Hosts {
        let out = sh("ip netns list && nft --version");
        assert!(
            out.status.success(),
            "this test needs root, iproute2 and nftables: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let share = NetworkShare::take();
        let s = share.slot;
        // Names of this run's own: the kernel frees a namespace's links some time after the
        // namespace, so a name from the run before may still be taken.
        let run = std::process::id() % 100_000;
        let names = [format!("bh{run}{s}a"), format!("bh{run}{s}b")];
        let bridge = format!("bb{run}{s}");
        let hosts = Hosts {
            share,
            names,
            bridge,
        };
        hosts.remove();
        let net = hosts.subnet();
        must(&format!(
            "ip link add {b} type bridge && ip addr add {net}.254/24 dev {b} && ip link set {b} up",
            b = hosts.bridge
        ));
        // Docker's FORWARD policy drops what crosses a bridge it does not know (bridged
        // traffic passes netfilter here): this link between hosts is let through.
        let _ = sh(&format!(
            "iptables -w -I DOCKER-USER -i {b} -o {b} -j ACCEPT 2>/dev/null",
            b = hosts.bridge
        ));
        for (i, ns) in hosts.names.iter().enumerate() {
            let n = i + 1;
            must(&format!(
                "ip netns add {ns} && ip link add {ns}h type veth peer name eth0 netns {ns} \
                 && ip link set {ns}h master {b} up \
                 && ip netns exec {ns} ip addr add {net}.{n}/24 dev eth0 \
                 && ip netns exec {ns} ip link set eth0 up && ip netns exec {ns} ip link set lo up",
                b = hosts.bridge
            ));
        }
        hosts
    }

    fn subnet(&self) -> String {
        format!("192.168.{}", 100 + self.share.slot)
    }

    fn address(&self, i: usize) -> String {
        format!("{}.{}", self.subnet(), i + 1)
    }

    fn remove(&self) {
        for ns in &self.names {
            let _ = sh(&format!("ip netns del {ns} 2>/dev/null"));
        }
        let _ = sh(&format!("ip link del {} 2>/dev/null", self.bridge));
        let _ = sh(&format!(
            "while iptables -w -D DOCKER-USER -i {b} -o {b} -j ACCEPT 2>/dev/null; do :; done",
            b = self.bridge
        ));
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        self.remove();
    }
}

/// `berth agent` as host `i`, inside its namespace.
fn agent(b: &Berth, hosts: &Hosts, i: usize, name: &str, dir: &std::path::Path) -> Child {
    let token = b.node_token();
    let flag = |f: &str| b.flag(f).expect("the flag was given").to_string();
    let address = hosts.address(i);
    let ca = b.dir.path().join("pki/ca.pem");
    let args = [
        "agent",
        "--server",
        &b.url,
        "--token",
        &token,
        "--ca-file",
        ca.to_str().unwrap(),
        "--name",
        name,
        "--address",
        &address,
        "--runtime",
        "docker",
        "--listen",
        &format!("{address}:0"),
        "--cluster-cidr",
        &flag("--cluster-cidr"),
        "--cluster-dns",
        &flag("--cluster-dns"),
        "--data-dir",
        dir.to_str().unwrap(),
    ];
    in_host(
        hosts,
        i,
        &args,
        &dir.join("agent.log"),
        "info,berth_agent=debug",
    )
}

/// A process inside host `i`'s namespace, its output in `log`.
fn in_host(hosts: &Hosts, i: usize, args: &[&str], log: &std::path::Path, filter: &str) -> Child {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            &hosts.names[i],
            env!("CARGO_BIN_EXE_berth"),
        ])
        .args(args)
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(log)
                .map(Stdio::from)
                .unwrap_or(Stdio::null()),
        )
        .env("RUST_LOG", filter)
        .spawn()
        .expect("berth runs")
}

/// Processes killed however the test ends (a namespace lives while a process is in it).
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for a in &mut self.0 {
            let _ = a.kill();
            let _ = a.wait();
        }
    }
}

/// The containers of these nodes, removed however the test ends.
struct Containers(Vec<String>);

impl Drop for Containers {
    fn drop(&mut self) {
        for n in &self.0 {
            common::remove_node_containers(n);
        }
    }
}

/// Wait until node `n` is Ready.
async fn ready(b: &Berth, n: &str, what: &str) {
    eventually(30, what, || async {
        let out = b.kubectl(&[
            "get",
            "node",
            n,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ]);
        (out.stdout == b"True").then_some(())
    })
    .await;
}

fn words(s: String) -> Vec<String> {
    let mut v: Vec<String> = s.split_whitespace().map(String::from).collect();
    v.sort();
    v
}

#[tokio::test]
async fn pods_and_services_reach_across_hosts_over_the_overlay() {
    let img = common::BusyboxImage::build();
    let hosts = Hosts::make();
    let b = Berth::up_at(&format!("{}.254:0", hosts.subnet()), &["--runtime", "none"]);
    let names = [common::unique("ha"), common::unique("hb")];
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut agents = Procs(
        (0..2)
            .map(|i| agent(&b, &hosts, i, &names[i], dirs[i].path()))
            .collect(),
    );
    let _containers = Containers(names.to_vec());
    for n in &names {
        ready(&b, n, "both hosts Ready").await;
    }
    // Web pods on host B only: host A is cordoned while they are placed.
    b.kubectl_ok(&["cordon", &names[0]]);
    b.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &format!(
            r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: {img}
        command: ["/bin/sh", "-c", "mkdir -p /w && echo $POD_NAME > /w/index.html && exec httpd -f -p 8080 -h /w"]
        env: [{{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}]
        readinessProbe: {{httpGet: {{path: /index.html, port: 8080}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  type: NodePort
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web-all}}
spec:
  clusterIP: None
  selector: {{app: web}}
  ports: [{{name: http, port: 8080}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  nodeName: {a}
  containers: [{{name: c, image: {img}, command: ["/bin/sleep", "3600"]}}]
"#,
            img = img.tag,
            a = names[0]
        ),
    );
    b.kubectl_ok(&["rollout", "status", "deploy/web", "--timeout=90s"]);
    b.kubectl_ok(&["uncordon", &names[0]]);
    b.kubectl_ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/client",
        "--timeout=60s",
    ]);
    let on = |what: &str| {
        words(b.kubectl_ok(&[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            &format!("jsonpath={{.items[*].{what}}}"),
        ]))
    };
    assert_eq!(on("spec.nodeName"), [names[1].clone(), names[1].clone()]);
    let web_pods = on("metadata.name");
    let web_ips = on("status.podIP");
    let cidrs: Vec<String> = names
        .iter()
        .map(|n| b.kubectl_ok(&["get", "node", n, "-o", "jsonpath={.spec.podCIDR}"]))
        .collect();
    assert_ne!(cidrs[0], cidrs[1]);
    let get = |url: String| {
        let out = b.kubectl(&["exec", "client", "--", "wget", "-q", "-O", "-", &url]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let cluster_ip = b.kubectl_ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    let node_port = b.kubectl_ok(&[
        "get",
        "svc",
        "web",
        "-o",
        "jsonpath={.spec.ports[0].nodePort}",
    ]);
    let urls = [
        format!("http://{}:8080/", web_ips[0]),
        format!("http://{cluster_ip}/"),
        "http://web/".to_string(),
        "http://web.default.svc.cluster.local/".to_string(),
        format!("http://{}:{node_port}/", hosts.address(1)),
    ];
    for url in &urls {
        // The overlay is programmed within a second of the nodes knowing each other.
        let body = eventually(10, url, || {
            let body = get(url.clone());
            let ok = web_pods.contains(&body);
            async move { ok.then_some(body) }
        })
        .await;
        assert!(web_pods.contains(&body), "{url}: {body}");
    }
    let headless = b.kubectl_ok(&["exec", "client", "--", "sh", "-c", "nslookup web-all; true"]);
    for ip in &web_ips {
        assert!(headless.contains(&format!("Address: {ip}")), "{headless}");
    }

    // A pod that fails readiness leaves the endpoints and the answers.
    b.kubectl_ok(&["exec", &web_pods[0], "--", "rm", "/w/index.html"]);
    eventually(15, "the unready pod to leave the answers", || async {
        let eps = words(b.kubectl_ok(&[
            "get",
            "endpoints",
            "web",
            "-o",
            "jsonpath={.subsets[*].addresses[*].ip}",
        ]));
        let dns = b.kubectl_ok(&["exec", "client", "--", "sh", "-c", "nslookup web-all; true"]);
        let served = (0..10)
            .map(|_| get(format!("http://{cluster_ip}/")))
            .collect::<Vec<_>>();
        (eps.len() == 1
            && !dns.contains(&format!("Address: {}", web_ips_of(&b, &web_pods[0])))
            && served.iter().all(|s| s == &web_pods[1]))
        .then_some(())
    })
    .await;

    // Host B dies: its endpoints leave, the replacements on host A answer on the same name.
    agents.0[1].kill().unwrap();
    let _ = agents.0[1].wait();
    common::remove_node_containers(&names[1]);
    let replaced = eventually(60, "replacements on host A to answer", || async {
        let body = get("http://web/".into());
        let eps = b.kubectl_ok(&[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
            "-o",
            "jsonpath={.items[*].endpoints[?(@.conditions.ready==true)].nodeName}",
        ]);
        (!body.is_empty()
            && !web_pods.contains(&body)
            && eps.split_whitespace().all(|n| n == names[0]))
        .then_some(body)
    })
    .await;
    assert!(replaced.starts_with("web-"), "{replaced}");
}

fn web_ips_of(b: &Berth, pod: &str) -> String {
    b.kubectl_ok(&["get", "pod", pod, "-o", "jsonpath={.status.podIP}"])
}

#[tokio::test]
async fn burst_pods_on_a_virtual_node_share_the_pod_network_both_ways() {
    let img = common::BusyboxImage::build();
    let hosts = Hosts::make();
    let b = Berth::up_at(&format!("{}.254:0", hosts.subnet()), &["--runtime", "none"]);
    let flag = |f: &str| b.flag(f).expect("the flag was given").to_string();
    let names = [common::unique("va"), common::unique("vb")];
    let vnode = common::unique("vn");
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let idir = tempfile::tempdir().unwrap();
    // Dropped after the processes are killed (declared before them), so nothing is
    // restarted behind the cleanup.
    let _containers = Containers(names.to_vec());
    struct Service(std::path::PathBuf);
    impl Drop for Service {
        fn drop(&mut self) {
            if let Ok(n) = std::fs::read_to_string(self.0.join("instances/node-name")) {
                common::remove_node_containers(n.trim());
                // The bridge is in host A's namespace, which goes with the test.
            }
        }
    }
    let _service = Service(idir.path().to_path_buf());
    let mut procs = Procs(
        (0..2)
            .map(|i| agent(&b, &hosts, i, &names[i], dirs[i].path()))
            .collect(),
    );
    // The instances service on host A, its groups on the virtual node's block of the
    // cluster network (the top one, which the node IPAM hands out last).
    let cluster = flag("--cluster-cidr");
    let block = cluster.replace(".0.0/16", ".250.0/24");
    let idata = idir.path().to_str().unwrap();
    procs.0.push(in_host(
        &hosts,
        0,
        &[
            "instances",
            "--data-dir",
            idata,
            "--runtime",
            "docker",
            "--instances-listen",
            "127.0.0.1:0",
            "--dns-listen",
            "127.0.0.1:0",
            "--pod-network",
            &block,
            "--cluster-cidr",
            &cluster,
        ],
        &idir.path().join("instances.log"),
        "info",
    ));
    let client_cfg: serde_json::Value = eventually(30, "the instances service to start", || {
        let read = std::fs::read(idir.path().join("instances.json"));
        async move { read.ok().and_then(|b| serde_json::from_slice(&b).ok()) }
    })
    .await;
    let token = b.node_token();
    let ca = b.dir.path().join("pki/ca.pem");
    let address = hosts.address(0);
    procs.0.push(in_host(
        &hosts,
        0,
        &[
            "vnode",
            "--server",
            &b.url,
            "--token",
            &token,
            "--ca-file",
            ca.to_str().unwrap(),
            "--name",
            &vnode,
            "--address",
            &address,
            "--listen",
            &format!("{address}:0"),
            "--instances",
            client_cfg["server"].as_str().unwrap(),
            "--instances-token",
            client_cfg["token"].as_str().unwrap(),
            "--instances-ca-file",
            client_cfg["caFile"].as_str().unwrap(),
            "--pod-network-via",
            &names[0],
            "--pod-cidr",
            &block,
            "--cluster-dns",
            &flag("--cluster-dns"),
        ],
        &idir.path().join("vnode.log"),
        "info",
    ));
    for n in names.iter().chain([&vnode]) {
        ready(&b, n, "every node Ready").await;
    }
    assert_eq!(
        b.kubectl_ok(&["get", "node", &vnode, "-o", "jsonpath={.spec.podCIDR}"]),
        block
    );
    let serve = |what: &str| {
        format!(
            r#"["/bin/sh", "-c", "mkdir -p /w && echo {what} > /w/index.html && exec httpd -f -p 8080 -h /w"]"#
        )
    };
    b.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: real, labels: {{app: real}}}}
spec:
  nodeName: {hb}
  terminationGracePeriodSeconds: 1
  containers: [{{name: web, image: {img}, command: {real}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: burst, labels: {{app: burst}}}}
spec:
  nodeName: {vnode}
  tolerations: [{{key: virtual-kubelet.io/provider, operator: Exists}}]
  terminationGracePeriodSeconds: 1
  containers: [{{name: web, image: {img}, command: {burst}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  nodeName: {hb}
  terminationGracePeriodSeconds: 1
  containers: [{{name: c, image: {img}, command: ["/bin/sleep", "3600"]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: real}}
spec:
  selector: {{app: real}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: burst}}
spec:
  selector: {{app: burst}}
  ports: [{{port: 80, targetPort: 8080}}]
"#,
            img = img.tag,
            hb = names[1],
            real = serve("real"),
            burst = serve("burst"),
        ),
    );
    for p in ["real", "burst", "client"] {
        b.kubectl_ok(&[
            "wait",
            "--for=condition=Ready",
            &format!("pod/{p}"),
            "--timeout=90s",
        ]);
    }
    let ip = |p: &str| b.kubectl_ok(&["get", "pod", p, "-o", "jsonpath={.status.podIP}"]);
    let burst_ip = ip("burst");
    let prefix = block.trim_end_matches("0/24");
    assert!(burst_ip.starts_with(prefix), "{burst_ip} is not in {block}");
    let fetch = |from: &str, url: &str| {
        let out = b.kubectl(&["exec", from, "--", "wget", "-q", "-O", "-", url]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // A cluster pod on the other host reaches the burst pod by its IP, its Service's
    // ClusterIP and its name; the burst pod reaches the cluster pod the same ways.
    let ways = [
        ("client", format!("http://{burst_ip}:8080/"), "burst"),
        ("client", "http://burst/".to_string(), "burst"),
        ("burst", format!("http://{}:8080/", ip("real")), "real"),
        ("burst", "http://real/".to_string(), "real"),
        (
            "burst",
            "http://real.default.svc.cluster.local/".to_string(),
            "real",
        ),
    ];
    for (from, url, want) in &ways {
        eventually(20, &format!("{from} -> {url}"), || {
            let got = fetch(from, url);
            async move { (got == *want).then_some(()) }
        })
        .await;
    }
    let resolv = b.kubectl_ok(&["exec", "burst", "--", "cat", "/etc/resolv.conf"]);
    assert!(
        resolv.contains(&format!("nameserver {}", flag("--cluster-dns")))
            && resolv.contains("search default.svc.cluster.local"),
        "{resolv}"
    );
    drop(procs);
}

/// Nodes with a Ready daemon pod that is not being deleted, and the pods' names.
async fn daemon_pods(pods: &kube::Api<k8s_openapi::api::core::v1::Pod>) -> (usize, Vec<String>) {
    let list = pods
        .list(&kube::api::ListParams::default().labels("app=daemon"))
        .await
        .expect("pods listed");
    let mut up = std::collections::BTreeSet::new();
    let mut names = Vec::new();
    for p in list.items {
        if p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        names.push(p.metadata.name.clone().unwrap_or_default());
        let status = p.status.unwrap_or_default();
        let ready = status
            .conditions
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        if ready {
            up.insert(p.spec.and_then(|s| s.node_name).unwrap_or_default());
        }
    }
    names.sort();
    (up.len(), names)
}

#[tokio::test]
async fn a_daemonset_runs_one_pod_per_host_and_updates_within_max_unavailable() {
    let img = common::BusyboxImage::build();
    let hosts = Hosts::make();
    let b = Berth::up_at(&format!("{}.254:0", hosts.subnet()), &["--runtime", "none"]);
    let names = [common::unique("da"), common::unique("db")];
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let _containers = Containers(names.to_vec());
    let agents = Procs(
        (0..2)
            .map(|i| agent(&b, &hosts, i, &names[i], dirs[i].path()))
            .collect(),
    );
    for n in &names {
        ready(&b, n, "both hosts Ready").await;
    }
    let daemonset = |version: &str| {
        format!(
            r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: daemon}}
spec:
  selector: {{matchLabels: {{app: daemon}}}}
  updateStrategy: {{type: RollingUpdate, rollingUpdate: {{maxUnavailable: 1}}}}
  template:
    metadata: {{labels: {{app: daemon}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: d
        image: {img}
        command: ["/bin/sh", "-c", "mkdir -p /r; sleep 2; touch /r/up; exec sleep 3600"]
        env: [{{name: VERSION, value: "{version}"}}]
        readinessProbe: {{exec: {{command: ["cat", "/r/up"]}}, periodSeconds: 1}}
"#,
            img = img.tag
        )
    };
    b.kubectl_stdin_ok(&["apply", "-f", "-"], &daemonset("1"));
    b.kubectl_ok(&["rollout", "status", "ds/daemon", "--timeout=90s"]);
    let on = b.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        "app=daemon",
        "-o",
        "jsonpath={.items[*].spec.nodeName}",
    ]);
    assert_eq!(words(on), words(names.join(" ")));
    let table = b.kubectl_ok(&["get", "ds", "daemon"]);
    assert!(
        table.lines().nth(1).is_some_and(|l| l
            .split_whitespace()
            .take(6)
            .eq(["daemon", "2", "2", "2", "2", "2"])),
        "{table}"
    );

    // The update: one node at a time, never both without a Ready pod.
    let pods = kube::Api::namespaced(b.client().await, "default");
    let (_, before) = daemon_pods(&pods).await;
    b.kubectl_stdin_ok(&["apply", "-f", "-"], &daemonset("2"));
    let started = std::time::Instant::now();
    let mut fewest = 2;
    loop {
        let (up, now) = daemon_pods(&pods).await;
        fewest = fewest.min(up);
        assert!(up >= 1, "both hosts lost their daemon pod at once: {now:?}");
        if up == 2 && now.iter().all(|n| !before.contains(n)) {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(120),
            "the update did not finish: {now:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(fewest, 1, "the update replaced no Ready pod");
    b.kubectl_ok(&["rollout", "status", "ds/daemon", "--timeout=30s"]);
    eventually(30, "only version 2 pods", || async {
        let versions = b.kubectl_ok(&[
            "get",
            "pods",
            "-l",
            "app=daemon",
            "-o",
            "jsonpath={.items[*].spec.containers[0].env[0].value}",
        ]);
        (words(versions) == ["2", "2"]).then_some(())
    })
    .await;

    // The history has both templates, and undo goes back to the first.
    let history = b.kubectl_ok(&["rollout", "history", "ds/daemon"]);
    let revisions: Vec<&str> = history
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.parse::<u32>().is_ok())
        .collect();
    assert_eq!(revisions, ["1", "2"], "{history}");
    b.kubectl_ok(&["rollout", "undo", "ds/daemon"]);
    eventually(90, "version 1 again on both hosts", || async {
        let versions = b.kubectl_ok(&[
            "get",
            "pods",
            "-l",
            "app=daemon",
            "-o",
            "jsonpath={.items[*].spec.containers[0].env[0].value}",
        ]);
        (words(versions) == ["1", "1"]).then_some(())
    })
    .await;
    b.kubectl_ok(&["rollout", "status", "ds/daemon", "--timeout=60s"]);
    drop(agents);
}

#[tokio::test]
async fn drain_evicts_within_the_disruption_budget() {
    let img = common::BusyboxImage::build();
    let hosts = Hosts::make();
    let b = Berth::up_at(&format!("{}.254:0", hosts.subnet()), &["--runtime", "none"]);
    let names = [common::unique("pa"), common::unique("pb")];
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let _containers = Containers(names.to_vec());
    let agents = Procs(
        (0..2)
            .map(|i| agent(&b, &hosts, i, &names[i], dirs[i].path()))
            .collect(),
    );
    for n in &names {
        ready(&b, n, "both hosts Ready").await;
    }
    // Three replicas, all on host B; at least two must stay Ready.
    b.kubectl_ok(&["cordon", &names[0]]);
    b.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &format!(
            r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 3
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: {img}
        command: ["/bin/sh", "-c", "mkdir -p /r; sleep 2; touch /r/up; exec sleep 3600"]
        readinessProbe: {{exec: {{command: ["cat", "/r/up"]}}, periodSeconds: 1}}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {{name: web}}
spec:
  minAvailable: 2
  selector: {{matchLabels: {{app: web}}}}
"#,
            img = img.tag
        ),
    );
    b.kubectl_ok(&["rollout", "status", "deploy/web", "--timeout=90s"]);
    b.kubectl_ok(&["uncordon", &names[0]]);
    eventually(30, "the budget to allow one disruption", || async {
        let allowed = b.kubectl_ok(&[
            "get",
            "pdb",
            "web",
            "-o",
            "jsonpath={.status.disruptionsAllowed}",
        ]);
        (allowed == "1").then_some(())
    })
    .await;

    let kubeconfig = b.kubeconfig();
    let node = names[1].clone();
    let drain = std::thread::spawn(move || {
        Command::new("kubectl")
            .env("KUBECONFIG", &kubeconfig)
            .args(["drain", &node, "--timeout=120s"])
            .output()
            .expect("kubectl runs")
    });
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(b.client().await, "default");
    let mut fewest = usize::MAX;
    while !drain.is_finished() {
        let list = pods
            .list(&kube::api::ListParams::default().labels("app=web"))
            .await
            .expect("pods listed");
        let ready = list
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .count();
        fewest = fewest.min(ready);
        assert!(ready >= 2, "the drain left {ready} web pods Ready");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let out = drain.join().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "kubectl drain failed: {said}");
    // Two pods on the node and a budget of one: the second eviction had to wait its turn.
    assert!(
        said.contains("disruption budget") && said.contains("drained"),
        "{said}"
    );
    assert_eq!(fewest, 2, "{said}");
    let left = b.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "--field-selector",
        &format!("spec.nodeName={}", names[1]),
        "-o",
        "name",
    ]);
    assert_eq!(left, "", "pods left on the drained node");
    b.kubectl_ok(&["rollout", "status", "deploy/web", "--timeout=60s"]);
    drop(agents);
}
