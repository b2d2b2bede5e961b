//! The data plane in a live `berth up`, driven by kubectl: Endpoints and EndpointSlices
//! follow the pods a Service selects.

mod common;

use common::{eventually, Berth};

fn words(s: String) -> Vec<String> {
    let mut v: Vec<String> = s.split_whitespace().map(String::from).collect();
    v.sort();
    v
}

#[tokio::test]
async fn endpoints_and_slices_follow_the_pods_a_service_selects() {
    let node = common::unique("ep");
    let b = Berth::up(&["--runtime", "mock", "--node-name", &node]);
    b.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: busybox
        ports: [{name: http, containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
"#,
    );
    b.kubectl_ok(&["rollout", "status", "deploy/web", "--timeout=60s"]);
    let pod_ips = words(b.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[*].status.podIP}",
    ]));
    assert_eq!(pod_ips.len(), 3);
    eventually(10, "the Endpoints to list the three pods", || async {
        let ips = words(b.kubectl_ok(&[
            "get",
            "endpoints",
            "web",
            "-o",
            "jsonpath={.subsets[*].addresses[*].ip}",
        ]));
        (ips == pod_ips).then_some(())
    })
    .await;
    let port = b.kubectl_ok(&[
        "get",
        "endpoints",
        "web",
        "-o",
        "jsonpath={.subsets[0].ports[0].port}",
    ]);
    assert_eq!(
        port, "8080",
        "the named targetPort resolves to the container's port"
    );
    let slice = b.kubectl_ok(&[
        "get", "endpointslices", "-l", "kubernetes.io/service-name=web",
        "-o", "jsonpath={.items[*].endpoints[*].addresses[0]} {.items[0].ports[0].port} {.items[0].metadata.ownerReferences[0].kind}",
    ]);
    let mut got = words(slice);
    got.sort();
    let mut want = pod_ips.clone();
    want.extend(["8080".to_string(), "Service".to_string()]);
    want.sort();
    assert_eq!(got, want);

    // Scaled down, the Endpoints shrink; the remaining pod is still listed ready.
    b.kubectl_ok(&["scale", "deploy/web", "--replicas=1"]);
    eventually(30, "one address left", || async {
        let ips = words(b.kubectl_ok(&[
            "get",
            "endpoints",
            "web",
            "-o",
            "jsonpath={.subsets[*].addresses[*].ip}",
        ]));
        let slice = words(b.kubectl_ok(&[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
            "-o",
            "jsonpath={.items[*].endpoints[*].addresses[0]}",
        ]));
        (ips.len() == 1 && slice == ips).then_some(())
    })
    .await;

    // A Service without a selector keeps the Endpoints its owner writes.
    b.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        r#"
apiVersion: v1
kind: Service
metadata: {name: outside}
spec:
  ports: [{port: 5432}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: outside}
subsets: [{addresses: [{ip: 192.0.2.7}], ports: [{port: 5432}]}]
"#,
    );
    // Deleting the Service takes its slices and Endpoints.
    b.kubectl_ok(&["delete", "service", "web"]);
    eventually(
        10,
        "the slices and Endpoints of a deleted Service to go",
        || async {
            let left = b.kubectl_ok(&[
                "get",
                "endpointslices,endpoints",
                "-l",
                "kubernetes.io/service-name=web",
                "-o",
                "name",
            ]);
            let ep = b.kubectl(&["get", "endpoints", "web"]);
            (left.trim().is_empty() && !ep.status.success()).then_some(())
        },
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let kept = b.kubectl_ok(&[
        "get",
        "endpoints",
        "outside",
        "-o",
        "jsonpath={.subsets[0].addresses[0].ip}",
    ]);
    assert_eq!(kept, "192.0.2.7");
}

/// One HTTP/1.0 GET to `addr`; the body, or the connection's error.
fn http_get(addr: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let addr: std::net::SocketAddr = addr.parse().expect("an address");
    let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .trim()
        .to_string())
}

fn web_yaml(img: &str, replicas: u32, ty: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
      - name: web
        image: {img}
        command: ["/bin/sh", "-c", "mkdir -p /w && echo $POD_NAME > /w/index.html && exec httpd -f -p 8080 -h /w"]
        env: [{{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}]
        ports: [{{name: http, containerPort: 8080}}]
        readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
      terminationGracePeriodSeconds: 2
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  type: {ty}
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: http}}]
"#
    )
}

#[tokio::test]
async fn a_service_routes_by_cluster_ip_and_node_port_on_one_host() {
    let img = common::BusyboxImage::build();
    let node = common::unique("svc");
    let b = Berth::up(&["--runtime", "docker", "--node-name", &node]);
    b.kubectl_stdin_ok(&["apply", "-f", "-"], &web_yaml(&img.tag, 2, "NodePort"));
    b.kubectl_ok(&["rollout", "status", "deploy/web", "--timeout=90s"]);
    let ip = b.kubectl_ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    let node_port = b.kubectl_ok(&[
        "get",
        "svc",
        "web",
        "-o",
        "jsonpath={.spec.ports[0].nodePort}",
    ]);
    let pods = words(b.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]));

    // The pods are on the node's pod network: addresses of its pod CIDR, reachable from
    // each other and from the host.
    let cidr = b.kubectl_ok(&["get", "node", &node, "-o", "jsonpath={.spec.podCIDR}"]);
    let prefix = cidr.trim_end_matches("0/24");
    let pod_ips = words(b.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[*].status.podIP}",
    ]));
    assert!(
        pod_ips.iter().all(|ip| ip.starts_with(prefix)),
        "{pod_ips:?} not in {cidr}"
    );
    let other = b.kubectl_ok(&[
        "exec",
        &pods[0],
        "--",
        "wget",
        "-q",
        "-O",
        "-",
        &format!("http://{}:8080/", pod_ips[1]),
    ]);
    assert!(pods.contains(&other.trim().to_string()), "{other}");
    assert!(
        pods.contains(&http_get(&format!("{}:8080", pod_ips[0])).expect("the host reaches a pod"))
    );

    // Through the ClusterIP, both pods answer (spread at random).
    let seen = eventually(20, "both pods to answer on the ClusterIP", || {
        let ip = ip.clone();
        let pods = pods.clone();
        async move {
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..40 {
                if let Ok(body) = http_get(&format!("{ip}:80")) {
                    seen.insert(body);
                }
            }
            (seen.iter().cloned().collect::<Vec<_>>() == pods).then_some(seen)
        }
    })
    .await;
    assert_eq!(seen.len(), 2);
    // The NodePort answers on the node's address, 127.0.0.1 here.
    let body = http_get(&format!("127.0.0.1:{node_port}")).expect("the NodePort answers");
    assert!(pods.contains(&body), "{body}");

    // From a pod: the names resolve (through the search path and the node's DNS) to the
    // ClusterIP, which answers.
    for name in ["web", "web.default.svc.cluster.local"] {
        // busybox's nslookup asks every search domain and fails if any says NXDOMAIN.
        let out = b.kubectl_ok(&[
            "exec",
            &pods[0],
            "--",
            "sh",
            "-c",
            &format!("nslookup {name}; true"),
        ]);
        assert!(
            out.contains("web.default.svc.cluster.local"),
            "{name}: {out}"
        );
        assert!(out.contains(&format!("Address: {ip}")), "{name}: {out}");
    }
    for url in [
        format!("http://{ip}/"),
        "http://web/".into(),
        "http://web.default.svc.cluster.local/".into(),
    ] {
        let out = b.kubectl_ok(&["exec", &pods[0], "--", "wget", "-q", "-O", "-", &url]);
        assert!(pods.contains(&out.trim().to_string()), "{url}: {out}");
    }
    let resolv = b.kubectl_ok(&["exec", &pods[0], "--", "cat", "/etc/resolv.conf"]);
    assert!(
        resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local"),
        "{resolv}"
    );
    assert!(resolv.contains("options ndots:5"), "{resolv}");
    let hosts = b.kubectl_ok(&["exec", &pods[0], "--", "cat", "/etc/hosts"]);
    assert!(hosts.contains(&pods[0]), "{hosts}");

    // Scaled to nothing: refused at once rather than left to time out.
    b.kubectl_ok(&["scale", "deploy/web", "--replicas=0"]);
    eventually(30, "the ClusterIP to refuse", || {
        let ip = ip.clone();
        async move {
            match http_get(&format!("{ip}:80")) {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Some(()),
                _ => None,
            }
        }
    })
    .await;

    // Stopped and uninstalled, the node leaves nothing of its network on the host.
    let mut b = b;
    b.kill9();
    let bridge = berth_agent::net::podnet::bridge_name(&node);
    let table = berth_agent::net::nft::table_for(&node);
    let present = |cmd: &[&str]| {
        std::process::Command::new(cmd[0])
            .args(&cmd[1..])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(
        present(&["ip", "link", "show", &bridge]),
        "the bridge outlives a stopped agent"
    );
    let flag = |f: &str| b.flag(f).expect("the flag was given").to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args([
            "agent",
            "--uninstall",
            "--name",
            &node,
            "--cluster-cidr",
            &flag("--cluster-cidr"),
            "--data-dir",
        ])
        .arg(b.dir.path().join("agent"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !present(&["ip", "link", "show", &bridge]),
        "the bridge is gone"
    );
    assert!(
        !present(&["nft", "list", "table", "ip", &table]),
        "the table is gone"
    );
    let rules = String::from_utf8_lossy(
        &std::process::Command::new("iptables")
            .args(["-S", "DOCKER-USER"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(!rules.contains(&flag("--cluster-cidr")), "{rules}");
}

#[tokio::test]
async fn nodes_get_pod_cidrs_from_the_cluster_cidr_and_give_them_back() {
    let node = common::unique("ipam");
    let b = Berth::up(&[
        "--runtime",
        "mock",
        "--node-name",
        &node,
        "--cluster-cidr",
        "10.77.0.0/23",
    ]);
    let cidr = |n: &str| {
        let n = n.to_string();
        let b = &b;
        async move {
            let c = b.kubectl_ok(&[
                "get",
                "node",
                &n,
                "-o",
                "jsonpath={.spec.podCIDR} {.spec.podCIDRs[0]}",
            ]);
            (!c.trim().is_empty()).then_some(c)
        }
    };
    assert_eq!(
        eventually(10, "the local node's CIDR", || cidr(&node)).await,
        "10.77.0.0/24 10.77.0.0/24"
    );
    let fake = |name: &str| format!("apiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}\n");
    b.kubectl_stdin_ok(&["apply", "-f", "-"], &fake("second"));
    assert_eq!(
        eventually(10, "the second node's CIDR", || cidr("second")).await,
        "10.77.1.0/24 10.77.1.0/24"
    );
    // The /23 holds two: a third node waits, told why, until a block is given back.
    b.kubectl_stdin_ok(&["apply", "-f", "-"], &fake("third"));
    eventually(10, "a CIDRNotAvailable event", || async {
        let ev = b.kubectl_ok(&[
            "get",
            "events",
            "-A",
            "--field-selector",
            "reason=CIDRNotAvailable",
            "-o",
            "name",
        ]);
        (!ev.trim().is_empty()).then_some(())
    })
    .await;
    b.kubectl_ok(&["delete", "node", "second"]);
    assert_eq!(
        eventually(10, "the freed block", || cidr("third")).await,
        "10.77.1.0/24 10.77.1.0/24"
    );
}

#[test]
fn a_cluster_cidr_too_small_is_refused_with_what_to_change() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args([
            "up",
            "--runtime",
            "none",
            "--listen",
            "127.0.0.1:0",
            "--instances-listen",
            "127.0.0.1:0",
            "--dns-listen",
            "127.0.0.1:0",
            "--cluster-cidr",
            "10.42.0.0/25",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("cannot hold one node's /24") && err.contains("--cluster-cidr"),
        "{err}"
    );
    assert!(!dir.path().join("state.db").exists(), "nothing was started");
}

#[tokio::test]
async fn a_rolling_upgrade_drops_no_request_through_the_cluster_ip() {
    let img = common::BusyboxImage::build();
    let node = common::unique("roll");
    let b = Berth::up(&["--runtime", "docker", "--node-name", &node]);
    // The server stops at once on SIGTERM, so a connection sent to a pod after its SIGTERM
    // would be refused: only the pod leaving every Service first keeps requests whole.
    let yaml = web_yaml(&img.tag, 3, "ClusterIP").replace(
        "exec httpd -f -p 8080 -h /w",
        "httpd -f -p 8080 -h /w & pid=$!; trap 'kill $pid; exit 0' TERM; wait",
    );
    let yaml = yaml.replace(
        "  replicas: 3\n",
        "  replicas: 3\n  strategy: {rollingUpdate: {maxUnavailable: 0, maxSurge: 1}}\n",
    );
    b.kubectl_stdin_ok(&["apply", "-f", "-"], &yaml);
    b.kubectl_ok(&["rollout", "status", "deploy/web", "--timeout=90s"]);
    let ip = b.kubectl_ok(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    eventually(20, "the ClusterIP to answer", || {
        let ip = ip.clone();
        async move { http_get(&format!("{ip}:80")).ok() }
    })
    .await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = {
        let (ip, stop) = (ip.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match http_get(&format!("{ip}:80")) {
                    Ok(body) if body.starts_with("web-") => ok += 1,
                    other => failed.push(format!("{other:?}")),
                }
            }
            (ok, failed)
        })
    };
    for round in 1..=2 {
        b.kubectl_ok(&["set", "env", "deploy/web", &format!("ROUND={round}")]);
        b.kubectl_ok(&["rollout", "status", "deploy/web", "--timeout=120s"]);
    }
    // Until the last old pod is gone.
    eventually(30, "three pods left", || async {
        let n = b
            .kubectl_ok(&["get", "pods", "-l", "app=web", "-o", "name"])
            .lines()
            .count();
        (n == 3).then_some(())
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = client.join().unwrap();
    assert!(ok > 100, "only {ok} requests were made");
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(5)]
    );
}

#[tokio::test]
async fn a_host_network_pod_listens_on_the_host() {
    let img = common::BusyboxImage::build();
    let node = common::unique("hostnet");
    let b = Berth::up(&["--runtime", "docker", "--node-name", &node]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    b.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: onhost}}
spec:
  hostNetwork: true
  containers:
  - name: web
    image: {img}
    command: ["/bin/sh", "-c", "mkdir -p /w && echo on-the-host > /w/index.html && exec httpd -f -p 127.0.0.1:{port} -h /w"]
"#,
            img = img.tag
        ),
    );
    b.kubectl_ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/onhost",
        "--timeout=60s",
    ]);
    let body = eventually(10, "the pod to answer on the host", || async {
        http_get(&format!("127.0.0.1:{port}")).ok()
    })
    .await;
    assert_eq!(body, "on-the-host");
    let ip = b.kubectl_ok(&["get", "pod", "onhost", "-o", "jsonpath={.status.podIP}"]);
    assert_eq!(ip, "127.0.0.1", "a host-network pod has the node's address");
}

#[tokio::test]
async fn a_pod_takes_the_hostname_it_asks_for_and_its_fqdn_under_a_subdomain() {
    let img = common::BusyboxImage::build();
    let node = common::unique("hostname");
    let b = Berth::up(&["--runtime", "docker", "--node-name", &node]);
    b.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: db-pod}}
spec:
  hostname: db-0
  subdomain: db
  containers: [{{name: c, image: {img}, command: ["/bin/sleep", "3600"]}}]
"#,
            img = img.tag
        ),
    );
    b.kubectl_ok(&[
        "wait",
        "--for=condition=Ready",
        "pod/db-pod",
        "--timeout=60s",
    ]);
    assert_eq!(
        b.kubectl_ok(&["exec", "db-pod", "--", "hostname"]).trim(),
        "db-0"
    );
    let hosts = b.kubectl_ok(&["exec", "db-pod", "--", "cat", "/etc/hosts"]);
    let ip = b.kubectl_ok(&["get", "pod", "db-pod", "-o", "jsonpath={.status.podIP}"]);
    assert!(
        hosts.contains(&format!("{ip}\tdb-0.db.default.svc.cluster.local\tdb-0")),
        "{hosts}"
    );
}
