//! A highly available control plane on one machine: three etcd members, three `berth
//! server`s on them, an agent given all three servers, and kubectl through one address in
//! front of them. The leading server is killed -9 during a rollout: the API answers again
//! within 5 s, the rollout finishes under a new leader (a `LeaderElection` event names it),
//! the agent's node stays Ready, and the `kubernetes` endpoints drop the dead server. Then
//! the leading etcd member is killed: writes go on, and no pod is restarted.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{eventually, kubectl_with, NetworkShare, Server};

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Kubectl {
    config: std::path::PathBuf,
    cache: std::path::PathBuf,
}

impl Kubectl {
    fn run(&self, args: &[&str]) -> Output {
        kubectl_with(&self.config, &self.cache, args, None)
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn apply(&self, yaml: &str) {
        let out = kubectl_with(&self.config, &self.cache, &["apply", "-f", "-"], Some(yaml));
        assert!(
            out.status.success(),
            "kubectl apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

const DEPLOYMENT: &str = "
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 6
  selector: {matchLabels: {app: web}}
  strategy: {rollingUpdate: {maxSurge: 1, maxUnavailable: 0}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: c, image: 'busybox:1'}]
";

/// Who holds the control plane's Lease (empty while nobody does).
fn holder(kubectl: &Kubectl) -> String {
    let out = kubectl.run(&[
        "get",
        "lease",
        "-n",
        "kube-system",
        "berth-control-plane",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn node_token(data_dir: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["token", "--node", "--data-dir"])
        .arg(data_dir)
        .output()
        .expect("berth token runs");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test]
async fn the_control_plane_survives_its_leader_and_an_etcd_member() {
    let mut members = berth_store::local_etcd::cluster(3);
    let store = format!(
        "etcd://{}",
        members
            .iter()
            .map(|m| m.client_url.trim_start_matches("http://"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let share = NetworkShare::take();
    let (cidr, dns, api_ip) = (
        share.cluster_cidr(),
        share.cluster_dns(),
        share.kubernetes_ip(),
    );
    let args = [
        "--store",
        &store,
        "--leader-lease-seconds",
        "3",
        "--cluster-cidr",
        &cidr,
        "--cluster-dns",
        &dns,
        "--kubernetes-service-ip",
        &api_ip,
    ];
    let root = tempfile::tempdir().unwrap();
    let mut servers = vec![Server::start(&root.path().join("s0"), &args)];
    for i in 1..3 {
        let dir = root.path().join(format!("s{i}"));
        servers[0].share_secrets(&dir);
        servers.push(Server::start(&dir, &args));
    }
    // The leading server goes first in every list, so the agent and kubectl are on it when
    // it is killed and must move.
    let direct = Kubectl {
        config: root.path().join("direct.kubeconfig"),
        cache: root.path().join("kube-cache-direct"),
    };
    common::kubeconfig_for(&servers[0].dir, &servers[0].url, &direct.config);
    let leader = eventually(30, "a server to lead the control plane", || async {
        let holder = holder(&direct);
        (0..3).find(|i| holder.ends_with(&format!("/s{i}")))
    })
    .await;
    let mut urls: Vec<String> = servers.iter().map(|s| s.url.clone()).collect();
    urls.swap(0, leader);

    // kubectl reaches the servers through one address in front of them (`berth front`).
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.args([
        "front",
        "--listen",
        "127.0.0.1:0",
        "--server",
        &urls.join(","),
    ]);
    let (front, line) = common::spawn_until_url(cmd, "berth front on ");
    let front_url = line
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    let _front = Killed(front);
    let kubectl = Kubectl {
        config: root.path().join("kubeconfig"),
        cache: root.path().join("kube-cache"),
    };
    common::kubeconfig_for(&servers[0].dir, &front_url, &kubectl.config);

    let node = common::unique("ha");
    let _agent = Killed(
        Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["agent", "--server", &urls.join(",")])
            .args(["--token", &node_token(&servers[0].dir), "--ca-file"])
            .arg(servers[0].dir.join("pki/ca.pem"))
            .args([
                "--name",
                &node,
                "--runtime",
                "mock",
                "--listen",
                "127.0.0.1:0",
            ])
            .args(["--cluster-cidr", &cidr, "--data-dir"])
            .arg(root.path().join("agent"))
            .stdout(Stdio::null())
            .spawn()
            .expect("berth agent runs"),
    );
    let ready = format!("jsonpath={{.status.conditions[?(@.type==\"Ready\")].status}}");
    eventually(30, "the node to be Ready", || async {
        let out = kubectl.run(&["get", "node", &node, "-o", &ready]);
        (out.stdout == b"True").then_some(())
    })
    .await;
    kubectl.apply(DEPLOYMENT);
    kubectl.ok(&["rollout", "status", "deploy/web", "--timeout=60s"]);

    // Every server is in the kubernetes Service's endpoints.
    let ports = |kubectl: &Kubectl| -> BTreeSet<String> {
        let out = kubectl.run(&[
            "get",
            "endpoints",
            "kubernetes",
            "-o",
            "jsonpath={.subsets[*].ports[*].port}",
        ]);
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    let all: BTreeSet<String> = servers
        .iter()
        .map(|s| s.addr().rsplit(':').next().unwrap().to_string())
        .collect();
    eventually(20, "every server in the kubernetes endpoints", || async {
        (ports(&kubectl) == all).then_some(())
    })
    .await;

    // A rollout starts; the server leading the control plane is killed.
    let old = holder(&kubectl);
    assert!(
        old.ends_with(&format!("/s{leader}")),
        "the control plane moved from s{leader} to {old} before the test killed it"
    );
    kubectl.ok(&["set", "image", "deploy/web", "c=busybox:2"]);
    servers[leader].kill9();
    let killed = Instant::now();
    let mut n = 0;
    let back = loop {
        n += 1;
        let out = kubectl.run(&["create", "configmap", &format!("after-kill-{n}")]);
        if out.status.success() {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "no write through the front within 5 s of killing the leading server: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("the API took a write {back:?} after the leading server was killed");

    kubectl.ok(&["rollout", "status", "deploy/web", "--timeout=90s"]);
    let images = kubectl.ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[*].spec.containers[0].image}",
    ]);
    let images: Vec<&str> = images.split_whitespace().collect();
    assert_eq!(images, ["busybox:2"; 6], "after the rollout: {images:?}");
    let new = holder(&kubectl);
    assert_ne!(new, old, "the Lease still names the killed server");
    let events = kubectl.ok(&[
        "get",
        "events",
        "-n",
        "kube-system",
        "--field-selector",
        "reason=LeaderElection",
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    assert!(
        events.contains(&format!("{new} became leader")),
        "no LeaderElection event for {new}: {events}"
    );
    let out = kubectl.run(&["get", "node", &node, "-o", &ready]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "True",
        "the agent lost its node while its server was replaced"
    );
    let live: BTreeSet<String> = servers
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leader)
        .map(|(_, s)| s.addr().rsplit(':').next().unwrap().to_string())
        .collect();
    eventually(
        30,
        "the killed server out of the kubernetes endpoints",
        || async { (ports(&kubectl) == live).then_some(()) },
    )
    .await;

    // The leading etcd member killed: the first write after it goes through (the store
    // sends it again until the two members left choose a leader), and the pause does not
    // make the agent fence itself: no container is stopped, no pod replaced.
    let pods = |kubectl: &Kubectl| {
        kubectl.ok(&[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}={.status.containerStatuses[0].restartCount} {end}",
        ])
    };
    let before = pods(&kubectl);
    let etcd_leader = berth_store::local_etcd::leader(&members).await;
    drop(members.remove(etcd_leader));
    kubectl.ok(&["create", "configmap", "after-etcd-leader"]);
    // Past the agent's fencing time (half its 8 s Lease).
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        pods(&kubectl),
        before,
        "pods were restarted or replaced while etcd chose a new leader"
    );
    assert!(before.contains("=0 "), "{before}");
    kubectl.ok(&["scale", "deploy/web", "--replicas=3"]);
    eventually(
        60,
        "the Deployment scaled to 3 on two etcd members",
        || async {
            let out = kubectl.run(&[
                "get",
                "pods",
                "-l",
                "app=web",
                "-o",
                "jsonpath={.items[*].metadata.name}",
            ]);
            (String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .count()
                == 3)
                .then_some(())
        },
    )
    .await;
}
