//! Several hosts: three `berth agent`s, each in its own container with its own address on a
//! private Docker network, joined to a `berth up` control plane that listens on the
//! network's gateway address. The agents use the process runtime (no engine inside), so a
//! pod is a process inside its host's container: killing the container kills the host, and
//! disconnecting it from the network partitions it.
//!
//! The workload appends `<pod> <n>` to a log file shared by every host; the order of lines in
//! that one file is the order in which they were written, so "the replacement never ran
//! beside the pod it replaced" reads straight off it.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{docker, eventually, unique, Berth, BusyboxImage};

/// A private network and the hosts on it; all removed on drop.
struct Cluster {
    net: String,
    hosts: Vec<String>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for h in &self.hosts {
            let _ = docker(&["rm", "-f", h]);
        }
        let _ = docker(&["network", "rm", &self.net]);
    }
}

fn ok(out: std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `-v` flags that make the host's `berth` binary and the libraries it links run inside a
/// container built from the busybox image.
fn binary_mounts() -> Vec<String> {
    let bin = env!("CARGO_BIN_EXE_berth");
    let ldd = Command::new("ldd").arg(bin).output().expect("ldd runs");
    let mut mounts = vec![format!("{bin}:/bin/berth:ro")];
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let path = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(str::to_string);
        if let Some(p) = path {
            mounts.push(format!("{p}:{p}:ro"));
        }
    }
    mounts
}

fn node_ready(b: &Berth, node: &str) -> String {
    b.kubectl_ok(&[
        "get",
        "node",
        node,
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
    ])
}

/// The node, name and phase of each live pod of app `one`.
fn where_is(b: &Berth) -> Vec<(String, String, String)> {
    let out = b.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        "app=one",
        "-o",
        "jsonpath={range .items[*]}{.spec.nodeName} {.metadata.name} {.status.phase} {.metadata.deletionTimestamp}{\"\\n\"}{end}",
    ]);
    out.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|w| w.len() == 3)
        .map(|w| (w[0].to_string(), w[1].to_string(), w[2].to_string()))
        .collect()
}

/// The one Running pod of app `one` that is not `not_on`'s, once it is Ready.
async fn running_elsewhere(b: &Berth, not_on: &str, secs: u64) -> (String, String) {
    eventually(secs, "the pod Ready on another host", || async {
        where_is(b)
            .into_iter()
            .find(|(node, _, phase)| node != not_on && phase == "Running")
            .map(|(node, pod, _)| (node, pod))
    })
    .await
}

/// Lines of the shared log, as (pod, n).
fn log_lines(path: &Path) -> Vec<(String, u64)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (pod, n) = l.split_once(' ')?;
            Some((pod.to_string(), n.trim().parse().ok()?))
        })
        .collect()
}

#[tokio::test]
async fn hosts_on_a_private_network_fail_over_and_are_fenced_when_cut_off() {
    let image = BusyboxImage::build();
    let id = unique("mh");
    let mut cluster = Cluster {
        net: format!("berth-test-{id}"),
        hosts: Vec::new(),
    };
    ok(
        docker(&["network", "create", &cluster.net]),
        "docker network create",
    );
    let gateway = ok(
        docker(&[
            "network",
            "inspect",
            "-f",
            "{{(index .IPAM.Config 0).Gateway}}",
            &cluster.net,
        ]),
        "docker network inspect",
    );
    let b = Berth::up_at(
        &format!("{gateway}:0"),
        &["--runtime", "none", "--tls-san", &gateway],
    );
    let token = ok(
        Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["token", "--node", "--data-dir"])
            .arg(b.dir.path())
            .output()
            .unwrap(),
        "berth token",
    );
    let shared = tempfile::tempdir().unwrap();
    let ca = b.dir.path().join("pki/ca.pem");
    let mounts = binary_mounts();
    let names: Vec<String> = (1..=3).map(|i| format!("{id}-h{i}")).collect();
    for name in &names {
        let mut args: Vec<String> = vec![
            "run".into(),
            "-d".into(),
            // A host's agent is root with its capabilities: pods' volumes (every pod has its
            // ServiceAccount's) are mounted in a mount namespace of their own.
            "--cap-add".into(),
            "SYS_ADMIN".into(),
            "--name".into(),
            name.clone(),
            "--hostname".into(),
            name.clone(),
            "--network".into(),
            cluster.net.clone(),
            "-v".into(),
            format!("{}:/shared", shared.path().display()),
            "-v".into(),
            format!("{}:/ca.pem:ro", ca.display()),
        ];
        for m in &mounts {
            args.push("-v".into());
            args.push(m.clone());
        }
        args.push(image.tag.clone());
        args.extend([
            "sh".into(),
            "-c".into(),
            format!(
                "exec berth agent --server {url} --token {token} --ca-file /ca.pem --name {name} \
             --runtime process --address $(hostname -i) --listen 0.0.0.0:10250 \
             --lease-seconds 1 --data-dir /data",
                url = b.url
            ),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ok(docker(&args), "docker run of an agent host");
        cluster.hosts.push(name.clone());
    }
    for name in &names {
        eventually(60, "every host Ready", || async {
            (node_ready(&b, name) == "True").then_some(())
        })
        .await;
    }
    // Each host registered its own address on the private network.
    let addresses = b.kubectl_ok(&[
        "get",
        "nodes",
        "-o",
        "jsonpath={.items[*].status.addresses[?(@.type==\"InternalIP\")].address}",
    ]);
    let mut addresses: Vec<&str> = addresses.split_whitespace().collect();
    addresses.sort();
    addresses.dedup();
    assert_eq!(
        addresses.len(),
        3,
        "three distinct host addresses: {addresses:?}"
    );

    // One replica that must never run twice: maxSurge 0.
    let deploy = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: one}
spec:
  replicas: 1
  strategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 0, maxUnavailable: 1}}
  selector: {matchLabels: {app: one}}
  template:
    metadata: {labels: {app: one}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: writer
        image: host
        command: [sh, -c, 'n=0; while :; do echo "$POD $n" >> /shared/log; n=$((n+1)); sleep 0.1; done']
        env:
        - name: POD
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
"#;
    b.kubectl_stdin_ok(&["apply", "-f", "-"], deploy);
    let (first_node, first_pod) = running_elsewhere(&b, "", 60).await;
    let log = shared.path().join("log");
    eventually(30, "the workload to write", || async {
        log_lines(&log)
            .iter()
            .any(|(p, _)| *p == first_pod)
            .then_some(())
    })
    .await;

    // Kill the host that runs it.
    let killed = Instant::now();
    ok(docker(&["kill", &first_node]), "docker kill");
    let (second_node, second_pod) = running_elsewhere(&b, &first_node, 60).await;
    eprintln!(
        "host killed -> replacement Running on {second_node} in {:.1} s",
        killed.elapsed().as_secs_f64()
    );
    eventually(30, "the replacement to write", || async {
        log_lines(&log)
            .iter()
            .any(|(p, _)| *p == second_pod)
            .then_some(())
    })
    .await;

    // Cut the host that runs the replacement off for 30 s, then heal it.
    let cut = Instant::now();
    ok(
        docker(&["network", "disconnect", &cluster.net, &second_node]),
        "docker network disconnect",
    );
    let (third_node, third_pod) = running_elsewhere(&b, &second_node, 60).await;
    eprintln!(
        "host cut off -> replacement Running on {third_node} in {:.1} s",
        cut.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(cut.elapsed())).await;
    ok(
        docker(&["network", "connect", &cluster.net, &second_node]),
        "docker network connect",
    );
    eventually(60, "the healed host Ready again", || async {
        (node_ready(&b, &second_node) == "True").then_some(())
    })
    .await;
    eventually(30, "the healed host untainted", || async {
        let taints = b.kubectl_ok(&["get", "node", &second_node, "-o", "jsonpath={.spec.taints}"]);
        (!taints.contains("unreachable")).then_some(())
    })
    .await;
    eventually(30, "the fenced pod gone from the API", || async {
        (!where_is(&b).iter().any(|(_, p, _)| *p == second_pod)).then_some(())
    })
    .await;
    // Let the workload run on a while after the heal, then read the log.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let lines = log_lines(&log);
    let order: Vec<&str> = {
        let mut seen: Vec<&str> = Vec::new();
        for (p, _) in &lines {
            if seen.last() != Some(&p.as_str()) {
                seen.push(p);
            }
        }
        seen
    };
    if order.len() != 3 {
        let logs = docker(&["logs", &second_node]);
        let said: String = String::from_utf8_lossy(&logs.stdout)
            .lines()
            .chain(String::from_utf8_lossy(&logs.stderr).lines())
            .filter(|l| !l.contains("kube_client") && !l.contains("renewal failed"))
            .map(|l| format!("{l}\n"))
            .collect();
        eprintln!("the cut-off host's agent said:\n{said}");
        let seq: Vec<String> = lines
            .iter()
            .map(|(p, n)| format!("{}:{n}", &p[p.len() - 5..]))
            .collect();
        eprintln!("the log: {}", seq.join(" "));
    }
    assert_eq!(
        order,
        [first_pod.as_str(), second_pod.as_str(), third_pod.as_str()],
        "each copy stopped writing before the next began (runs in log order)"
    );
    assert!(
        lines.iter().rev().take(5).all(|(p, _)| *p == third_pod),
        "the replacement is still the only writer after the heal"
    );
    let ready = where_is(&b);
    assert_eq!(ready.len(), 1, "exactly one copy: {ready:?}");
    drop(cluster);
}
