//! `berth-bench network`: the data plane, on two hosts made of network namespaces (as in
//! `tests/multihost_network.rs`): `berth up --runtime none` on a bridge of this machine, and
//! one `berth agent` (Docker runtime) inside each namespace. Every client below runs inside
//! a pod's own network namespace (a thread that joins it), so it sees what a pod sees.
//!
//! - Rollout under load: a 10-replica Deployment behind a Service, rolled again and again
//!   while a pod on host A sends requests through the ClusterIP without pause, until at least
//!   100,000 were sent; every failed request is counted.
//! - Endpoint change -> rules: an EndpointSlice written through the API, and the time until
//!   each node's nftables table holds it, p50/p99 over 100 changes.
//! - DNS: answer time of the cluster DNS from a pod, p50/p99. (The host's resolver is
//!   measured beside it only when it is on this machine.)
//! - Throughput: one TCP stream from a pod on host A to a pod on host B over the overlay,
//!   next to the same two pods' namespaces joined by a veth pair of their own.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, PostParams};
use serde_json::json;

use crate::failover::{berth_bin, client_for, Killed};
use crate::percentile;

fn sh(cmd: &str) -> anyhow::Result<String> {
    let out = Command::new("sh").args(["-c", cmd]).output()?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Two namespaces on a bridge, torn down on drop.
struct Hosts {
    names: [String; 2],
    bridge: String,
}

const NET: &str = "192.168.250";

impl Hosts {
    fn make() -> anyhow::Result<Hosts> {
        let h = Hosts {
            names: ["bbench0".into(), "bbench1".into()],
            bridge: "bbenchbr".into(),
        };
        h.remove();
        std::thread::sleep(Duration::from_millis(500));
        sh(&format!(
            "ip link add {b} type bridge && ip addr add {NET}.254/24 dev {b} && ip link set {b} up \
             && (iptables -w -I DOCKER-USER -i {b} -o {b} -j ACCEPT 2>/dev/null || true)",
            b = h.bridge
        ))?;
        for (i, ns) in h.names.iter().enumerate() {
            sh(&format!(
                "ip netns add {ns} && ip link add {ns}h type veth peer name eth0 netns {ns} \
                 && ip link set {ns}h master {b} up && ip netns exec {ns} ip addr add {NET}.{n}/24 dev eth0 \
                 && ip netns exec {ns} ip link set eth0 up && ip netns exec {ns} ip link set lo up",
                b = h.bridge,
                n = i + 1
            ))?;
        }
        Ok(h)
    }

    fn remove(&self) {
        for ns in &self.names {
            let _ = sh(&format!("ip netns del {ns} 2>/dev/null"));
        }
        let _ = sh(&format!(
            "ip link del {b} 2>/dev/null; while iptables -w -D DOCKER-USER -i {b} -o {b} -j ACCEPT 2>/dev/null; do :; done",
            b = self.bridge
        ));
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Run `f` on a thread inside the network namespace at `ns`.
fn in_netns<T: Send + 'static>(
    ns: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<anyhow::Result<T>> {
    let ns = ns.to_path_buf();
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(&ns)?;
        // SAFETY: this thread alone joins the namespace, with a file it holds open.
        anyhow::ensure!(
            unsafe { libc_setns(file.as_raw_fd()) } == 0,
            "entering {}: {}",
            ns.display(),
            std::io::Error::last_os_error()
        );
        Ok(f())
    })
}

extern "C" {
    fn setns(fd: i32, nstype: i32) -> i32;
}

const CLONE_NEWNET: i32 = 0x4000_0000;

unsafe fn libc_setns(fd: i32) -> i32 {
    setns(fd, CLONE_NEWNET)
}

/// The network namespace of pod `name`'s sandbox.
fn pod_netns(node: &str, name: &str) -> anyhow::Result<PathBuf> {
    let pid = sh(&format!(
        "docker inspect -f '{{{{.State.Pid}}}}' $(docker ps -q --filter label=berth.node={node} \
         --filter label=berth.pod.name={name} --filter label=berth.sandbox=true)"
    ))?;
    Ok(PathBuf::from(format!("/proc/{}/ns/net", pid.trim())))
}

fn kubectl(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    kubectl_in(dir, args, None)
}

fn kubectl_in(dir: &Path, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    let mut c = Command::new("kubectl");
    c.arg("--kubeconfig")
        .arg(dir.join("kubeconfig"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().context("kubectl is needed for this benchmark")?;
    if let Some(s) = stdin {
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(s.as_bytes())?;
    }
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "kubectl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn http_get(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"GET / HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut out = Vec::new();
    s.read_to_end(&mut out).is_ok()
        && out.starts_with(b"HTTP/1.")
        && out.windows(4).any(|w| w == b"web-")
}

const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 10
  strategy: {rollingUpdate: {maxUnavailable: 0, maxSurge: 2}}
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
      - name: web
        image: berth/pause:1
        imagePullPolicy: Never
        command: ["/busybox", "sh", "-c", "/busybox mkdir -p /w && echo $POD_NAME > /w/index.html && /busybox httpd -f -p 8080 -h /w & pid=$!; trap 'kill $pid; exit 0' TERM; wait"]
        env: [{name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]
        readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"#;

fn pod(name: &str, node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {node}\n  \
         containers: [{{name: c, image: berth/pause:1, imagePullPolicy: Never, command: [/busybox, sleep, '3600']}}]\n"
    )
}

pub async fn run() -> anyhow::Result<()> {
    let bin = berth_bin()?;
    let hosts = Hosts::make().context("making two hosts of network namespaces (needs root)")?;
    let dir = tempfile::tempdir()?;
    let (_cp, url) = {
        let mut child = Command::new(&bin)
            .args(["up", "--data-dir"])
            .arg(dir.path())
            .args(["--listen", &format!("{NET}.254:0"), "--runtime", "none"])
            .args([
                "--cluster-cidr",
                "10.250.0.0/16",
                "--cluster-dns",
                "10.96.0.250",
            ])
            .args([
                "--instances-listen",
                "127.0.0.1:0",
                "--dns-listen",
                "127.0.0.1:0",
                "--warm-pool",
                "0",
            ])
            .env("BERTH_LOG", "error")
            .stdout(Stdio::piped())
            .spawn()?;
        let mut lines = std::io::BufReader::new(child.stdout.take().context("stdout")?);
        let url = loop {
            let mut line = String::new();
            anyhow::ensure!(
                std::io::BufRead::read_line(&mut lines, &mut line)? > 0,
                "berth up exited"
            );
            if let Some(u) = line.strip_prefix("Berth is up: Kubernetes API at ") {
                break u.trim().to_string();
            }
        };
        std::thread::spawn(move || {
            let mut sink = String::new();
            while std::io::BufRead::read_line(&mut lines, &mut sink).unwrap_or(0) > 0 {
                sink.clear();
            }
        });
        (Killed(child), url)
    };
    let token = Command::new(&bin)
        .args(["token", "--node", "--data-dir"])
        .arg(dir.path())
        .output()?;
    let token = String::from_utf8(token.stdout)?.trim().to_string();
    let nodes = ["bench-a", "bench-b"];
    let agent_dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
    let mut agents = Vec::new();
    for i in 0..2 {
        let address = format!("{NET}.{}", i + 1);
        let child = Command::new("ip")
            .args(["netns", "exec", &hosts.names[i]])
            .arg(&bin)
            .args(["agent", "--server", &url, "--token", &token, "--ca-file"])
            .arg(dir.path().join("pki/ca.pem"))
            .args([
                "--name",
                nodes[i],
                "--address",
                &address,
                "--runtime",
                "docker",
            ])
            .args(["--listen", &format!("{address}:0")])
            .args([
                "--cluster-cidr",
                "10.250.0.0/16",
                "--cluster-dns",
                "10.96.0.250",
                "--data-dir",
            ])
            .arg(agent_dirs[i].path())
            .env("BERTH_LOG", "error")
            .stdout(Stdio::null())
            .spawn()?;
        agents.push(Killed(child));
    }
    struct Containers;
    impl Drop for Containers {
        fn drop(&mut self) {
            for n in ["bench-a", "bench-b"] {
                let _ = sh(&format!(
                    "docker rm -f $(docker ps -aq --filter label=berth.node={n}) 2>/dev/null"
                ));
            }
        }
    }
    let _containers = Containers;
    let client = client_for(dir.path()).await?;
    let d = dir.path();
    for n in nodes {
        let began = Instant::now();
        loop {
            let ready = kubectl(
                d,
                &[
                    "get",
                    "node",
                    n,
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
                ],
            );
            if ready.map(|r| r == "True").unwrap_or(false) {
                break;
            }
            anyhow::ensure!(
                began.elapsed() < Duration::from_secs(60),
                "node {n} never turned Ready"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    kubectl_in(
        d,
        &["apply", "-f", "-"],
        Some(&(pod("client", nodes[0]) + "---\n" + &pod("server", nodes[1]))),
    )?;
    kubectl_in(d, &["apply", "-f", "-"], Some(WEB))?;
    kubectl(
        d,
        &[
            "wait",
            "--for=condition=Ready",
            "pod/client",
            "pod/server",
            "--timeout=120s",
        ],
    )?;
    kubectl(d, &["rollout", "status", "deploy/web", "--timeout=180s"])?;
    let cluster_ip: Ipv4Addr = kubectl(
        d,
        &["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"],
    )?
    .trim()
    .parse()?;
    let client_ns = pod_netns(nodes[0], "client")?;
    let server_ns = pod_netns(nodes[1], "server")?;
    let server_ip: Ipv4Addr = kubectl(
        d,
        &["get", "pod", "server", "-o", "jsonpath={.status.podIP}"],
    )?
    .trim()
    .parse()?;
    println!("two hosts (network namespaces), Docker pods, berth release build");

    // Rollout under load.
    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let target = SocketAddr::from((cluster_ip, 80));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (sent, failed, stop) = (sent.clone(), failed.clone(), stop.clone());
            in_netns(&client_ns, move || {
                while !stop.load(Ordering::Relaxed) {
                    if !http_get(target) {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let began = Instant::now();
    let mut rollouts = 0;
    while sent.load(Ordering::Relaxed) < 100_000 || rollouts == 0 {
        rollouts += 1;
        kubectl(
            d,
            &["set", "env", "deploy/web", &format!("ROUND={rollouts}")],
        )?;
        kubectl(d, &["rollout", "status", "deploy/web", "--timeout=300s"])?;
    }
    stop.store(true, Ordering::Relaxed);
    for l in load {
        let _ = l.join();
    }
    let took = began.elapsed();
    let (n, f) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!(
        "rolling upgrade under load: {n} requests in {:.1} s ({:.0}/s) through the ClusterIP over {rollouts} rollouts of 10 replicas: {f} failed",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );

    // Endpoint change -> rules on every node.
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    kubectl_in(d, &["apply", "-f", "-"], Some("apiVersion: v1\nkind: Service\nmetadata: {name: manual}\nspec:\n  ports: [{port: 9, name: p}]\n"))?;
    let mut lags = Vec::new();
    for i in 0..100u32 {
        let ip = format!("192.0.2.{}", i % 250 + 1);
        let body: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": format!("manual-{i}"), "labels": {"kubernetes.io/service-name": "manual"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}],
            "ports": [{"name": "p", "port": 9, "protocol": "TCP"}]
        }))?;
        let t0 = Instant::now();
        slices.create(&PostParams::default(), &body).await?;
        let mut seen = [None, None];
        while seen.iter().any(Option::is_none) {
            for (k, ns) in hosts.names.iter().enumerate() {
                if seen[k].is_none() {
                    let table = sh(&format!(
                        "ip netns exec {ns} nft list table ip berth-{}",
                        nodes[k]
                    ))?;
                    if table.contains(&format!("ep/default/manual/p/{ip} ")) {
                        seen[k] = Some(t0.elapsed());
                    }
                }
            }
            anyhow::ensure!(
                t0.elapsed() < Duration::from_secs(10),
                "endpoint {ip} never reached the rules"
            );
        }
        lags.push(seen.iter().flatten().copied().max().unwrap_or_default());
        slices
            .delete(&format!("manual-{i}"), &Default::default())
            .await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    lags.sort();
    println!(
        "EndpointSlice written -> in both nodes' rules: p50 {:.1} ms  p99 {:.1} ms  (100 changes; polled with nft, ~3 ms resolution)",
        percentile(&lags, 0.5).as_secs_f64() * 1e3,
        percentile(&lags, 0.99).as_secs_f64() * 1e3
    );

    // DNS from a pod.
    let dns = in_netns(&client_ns, || {
        dns_times(
            SocketAddr::from(([10, 96, 0, 250], 53)),
            "web.default.svc.cluster.local",
            2000,
        )
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the DNS thread panicked"))??;
    println!(
        "cluster DNS from a pod (A web.default.svc.cluster.local, {} of 2000 answered): p50 {:.3} ms  p99 {:.3} ms",
        dns.len(),
        percentile(&dns, 0.5).as_secs_f64() * 1e3,
        percentile(&dns, 0.99).as_secs_f64() * 1e3
    );
    let host_resolver = std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("nameserver")
                .and_then(|ip| ip.trim().parse::<std::net::IpAddr>().ok())
        });
    match host_resolver {
        Some(ip) if ip.is_loopback() => {
            let t = dns_times(SocketAddr::new(ip, 53), "localhost", 2000);
            println!(
                "host resolver {ip} (A localhost): p50 {:.3} ms  p99 {:.3} ms",
                percentile(&t, 0.5).as_secs_f64() * 1e3,
                percentile(&t, 0.99).as_secs_f64() * 1e3
            );
        }
        Some(ip) => println!(
            "host resolver {ip} is not on this machine: not measured (no traffic leaves it)"
        ),
        None => println!("no host resolver in /etc/resolv.conf"),
    }

    // Throughput: the same namespaces over the overlay and joined directly, alternately,
    // three times each; medians.
    sh(&format!(
        "ip link add bbdirect type veth peer name bbdirectp && ip link set bbdirect netns {} && ip link set bbdirectp netns {}",
        ns_pid(&client_ns)?,
        ns_pid(&server_ns)?
    ))?;
    let direct_ip = Ipv4Addr::new(172, 31, 250, 2);
    configure(&client_ns, "bbdirect", "172.31.250.1/24")?;
    configure(&server_ns, "bbdirectp", "172.31.250.2/24")?;
    let (mut overlay, mut direct) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        overlay.push(throughput(&client_ns, &server_ns, server_ip)?);
        direct.push(throughput(&client_ns, &server_ns, direct_ip)?);
    }
    overlay.sort_by(f64::total_cmp);
    direct.sort_by(f64::total_cmp);
    println!(
        "pod A -> pod B, one TCP stream of 1 GiB, median of 3: overlay {:.2} Gbit/s (MTU 1450), direct veth {:.2} Gbit/s (MTU 1500): {:.2}x   [overlay {:?}, direct {:?}]",
        overlay[1],
        direct[1],
        overlay[1] / direct[1],
        overlay.iter().map(|v| (v * 100.0).round() / 100.0).collect::<Vec<_>>(),
        direct.iter().map(|v| (v * 100.0).round() / 100.0).collect::<Vec<_>>()
    );
    drop(agents);
    Ok(())
}

fn ns_pid(ns: &Path) -> anyhow::Result<String> {
    Ok(ns
        .parent()
        .and_then(|p| p.parent())
        .and_then(|p| p.file_name())
        .context("a /proc/<pid>/ns/net path")?
        .to_string_lossy()
        .into_owned())
}

fn configure(ns: &Path, dev: &str, cidr: &str) -> anyhow::Result<()> {
    sh(&format!(
        "nsenter --net={} sh -c 'ip addr add {cidr} dev {dev} && ip link set {dev} up'",
        ns.display()
    ))
    .map(|_| ())
}

/// Gbit/s of one TCP stream of 1 GiB from a thread in `from` to a listener in `to`.
fn throughput(from: &Path, to: &Path, to_ip: Ipv4Addr) -> anyhow::Result<f64> {
    const TOTAL: u64 = 1 << 30;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = in_netns(to, move || -> anyhow::Result<u64> {
        let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 5201))?;
        let _ = ready_tx.send(());
        let (mut s, _) = l.accept()?;
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0u64;
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Ok(got);
            }
            got += n as u64;
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(5))?;
    let client = in_netns(from, move || -> anyhow::Result<Duration> {
        let mut s = TcpStream::connect((to_ip, 5201))?;
        let buf = vec![7u8; 1 << 20];
        let t = Instant::now();
        let mut sent = 0;
        while sent < TOTAL {
            s.write_all(&buf)?;
            sent += buf.len() as u64;
        }
        s.shutdown(std::net::Shutdown::Write)?;
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        Ok(t.elapsed())
    });
    let took = client
        .join()
        .map_err(|_| anyhow::anyhow!("client thread"))???;
    let got = server
        .join()
        .map_err(|_| anyhow::anyhow!("server thread"))???;
    anyhow::ensure!(got == TOTAL, "received {got} of {TOTAL} bytes");
    Ok(TOTAL as f64 * 8.0 / took.as_secs_f64() / 1e9)
}

/// Times of `n` A queries for `name` to `server`, one at a time.
fn dns_times(server: SocketAddr, name: &str, n: u16) -> Vec<Duration> {
    let Ok(sock) = UdpSocket::bind("0.0.0.0:0") else {
        return vec![];
    };
    let _ = sock.set_read_timeout(Some(Duration::from_secs(2)));
    let mut out = Vec::new();
    let mut buf = [0u8; 1500];
    for id in 0..n {
        let mut q = vec![(id >> 8) as u8, id as u8, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        let t = Instant::now();
        if sock.send_to(&q, server).is_err() {
            continue;
        }
        // Counted only when answered: same id, NOERROR, at least one answer.
        if let Ok((len, _)) = sock.recv_from(&mut buf) {
            let answers = u16::from_be_bytes([buf[6], buf[7]]);
            if len > 12 && buf[..2] == q[..2] && buf[3] & 0x0f == 0 && answers > 0 {
                out.push(t.elapsed());
            }
        }
    }
    out.sort();
    out
}
