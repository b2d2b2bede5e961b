//! Failover: a second node joins as its own `berth agent` process; when that process dies,
//! its Lease runs out, the node goes NotReady with the unreachable taint, and its pods are
//! replaced on the node that is left.

mod common;

use std::process::{Command, Stdio};
use std::time::Instant;

use common::{eventually, Berth};

#[tokio::test]
async fn pods_of_a_dead_node_are_replaced_elsewhere() {
    let stays = common::unique("stays");
    let dies = common::unique("dies");
    let b = Berth::up(&["--runtime", "mock", "--node-name", &stays]);
    let token = b.node_token();
    let agent_dir = tempfile::tempdir().unwrap();
    let mut agent = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["agent", "--server", &b.url, "--token", &token, "--ca-file"])
        .arg(b.dir.path().join("pki/ca.pem"))
        .args(["--name", &dies, "--runtime", "mock", "--lease-seconds", "1"])
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(agent_dir.path())
        .stdout(Stdio::null())
        .spawn()
        .expect("berth agent runs");
    // The agent may not have registered its node yet: NotFound is "not yet".
    eventually(30, "the second node to be Ready", || async {
        let out = b.kubectl(&[
            "get",
            "node",
            &dies,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ]);
        (out.status.success() && out.stdout == b"True").then_some(())
    })
    .await;

    // Everything starts on the node that will die.
    b.kubectl_ok(&["cordon", &stays]);
    b.kubectl_ok(&[
        "create",
        "deployment",
        "web",
        "--image=busybox",
        "--replicas=2",
    ]);
    b.kubectl_ok(&["rollout", "status", "deploy/web", "--timeout=60s"]);
    let on = b.kubectl_ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[*].spec.nodeName}",
    ]);
    assert_eq!(
        on.split_whitespace().collect::<Vec<_>>(),
        [dies.as_str(); 2]
    );
    b.kubectl_ok(&["uncordon", &stays]);

    let killed = Instant::now();
    agent.kill().unwrap();
    let _ = agent.wait();
    eventually(60, "replacements Ready on the surviving node", || async {
        let out = b.kubectl_ok(&["get", "pods", "-l", "app=web", "-o",
            "jsonpath={range .items[*]}{.spec.nodeName} {.status.phase} {.metadata.deletionTimestamp}{\"\\n\"}{end}"]);
        let running_here = out
            .lines()
            .filter(|l| l.starts_with(&format!("{stays} Running")) && l.split_whitespace().count() == 2)
            .count();
        (running_here == 2).then_some(())
    })
    .await;
    eprintln!(
        "node loss -> 2 replacements Running: {:?}",
        killed.elapsed()
    );
    let node = b.kubectl_ok(&[
        "get",
        "node",
        &dies,
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status} {.spec.taints[*].key}",
    ]);
    assert_eq!(node, "Unknown node.kubernetes.io/unreachable");
    let events = b.kubectl_ok(&["get", "events", "-A"]);
    assert!(events.contains("TaintManagerEviction"), "{events}");
}

/// A TCP proxy to the API server that the test can cut and heal: a network partition
/// between one agent and the control plane.
struct Partition {
    port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Partition {
    async fn start(to: String) -> Partition {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = cut.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if flag.load(Ordering::SeqCst) {
                    continue; // dropped: refused while cut
                }
                let to = to.clone();
                let flag = flag.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&to).await else {
                        return;
                    };
                    let copy = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
                    let watch = async {
                        while !flag.load(Ordering::SeqCst) {
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        }
                    };
                    tokio::select! { _ = copy => {}, _ = watch => {} }
                });
            }
        });
        Partition { port, cut }
    }

    fn set(&self, cut: bool) {
        self.cut.store(cut, std::sync::atomic::Ordering::SeqCst);
    }
}

fn running(marker: &str) -> bool {
    Command::new("pgrep")
        .args(["-f", marker])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

// Several threads: kubectl calls block, and the partition's proxy must keep running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_node_fences_its_pods_before_they_are_replaced_and_rejoins() {
    let stays = common::unique("stays");
    let cut = common::unique("cut");
    let marker = common::unique("fence-marker");
    let b = Berth::up(&["--runtime", "mock", "--node-name", &stays]);
    let token = b.node_token();
    let partition = Partition::start(b.listen.clone()).await;
    let agent_dir = tempfile::tempdir().unwrap();
    let _network = common::NodeNetwork {
        node: cut.clone(),
        dir: agent_dir.path().to_path_buf(),
    };
    let mut agent = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["agent", "--token", &token, "--ca-file"])
        .arg(b.dir.path().join("pki/ca.pem"))
        .args(["--server", &format!("https://127.0.0.1:{}", partition.port)])
        .args([
            "--name",
            &cut,
            "--runtime",
            "process",
            "--lease-seconds",
            "1",
            "--service-proxy",
            "none",
            "--cluster-cidr",
            b.flag("--cluster-cidr").unwrap(),
        ])
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(agent_dir.path())
        .stdout(Stdio::null())
        .spawn()
        .expect("berth agent runs");
    eventually(30, "the partitioned-to-be node to be Ready", || async {
        let out = b.kubectl(&[
            "get",
            "node",
            &cut,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ]);
        (String::from_utf8_lossy(&out.stdout) == "True").then_some(())
    })
    .await;
    b.kubectl_ok(&["cordon", &stays]);
    let deploy = format!(
        r#"{{"apiVersion":"apps/v1","kind":"Deployment","metadata":{{"name":"solo"}},"spec":{{"replicas":1,
        "strategy":{{"type":"RollingUpdate","rollingUpdate":{{"maxSurge":0,"maxUnavailable":1}}}},
        "selector":{{"matchLabels":{{"app":"solo"}}}},"template":{{"metadata":{{"labels":{{"app":"solo"}}}},
        "spec":{{"terminationGracePeriodSeconds":1,"containers":[{{"name":"c","image":"host",
        "command":["sh","-c","while true; do sleep 0.2; done # {marker}"]}}]}}}}}}}}"#
    );
    b.kubectl_stdin_ok(&["create", "-f", "-"], &deploy);
    b.kubectl_ok(&["rollout", "status", "deploy/solo", "--timeout=60s"]);
    assert!(
        running(&marker),
        "the pod runs as a host process on the node"
    );
    b.kubectl_ok(&["uncordon", &stays]);

    // Cut the node off. It must stop its pod before the server replaces it.
    partition.set(true);
    let t0 = Instant::now();
    let mut fenced_at = None;
    let mut replaced_at = None;
    while fenced_at.is_none() || replaced_at.is_none() {
        assert!(
            t0.elapsed().as_secs() < 30,
            "fenced at {fenced_at:?}, replaced at {replaced_at:?}"
        );
        if fenced_at.is_none() && !running(&marker) {
            fenced_at = Some(t0.elapsed());
        }
        if replaced_at.is_none() {
            let out = b.kubectl_ok(&[
                "get",
                "pods",
                "-l",
                "app=solo",
                "-o",
                "jsonpath={range .items[*]}{.spec.nodeName} {.status.phase}{\"\\n\"}{end}",
            ]);
            if out.lines().any(|l| l == format!("{stays} Running")) {
                replaced_at = Some(t0.elapsed());
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (fenced_at, replaced_at) = (fenced_at.unwrap(), replaced_at.unwrap());
    eprintln!("partition: fenced after {fenced_at:?}, replacement Running after {replaced_at:?}");
    assert!(
        fenced_at < replaced_at,
        "the old copy ran until {fenced_at:?}, the new one from {replaced_at:?}"
    );

    // Heal: the node comes back Ready, untainted, and does not restart the evicted pod.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    partition.set(false);
    eventually(40, "the healed node to rejoin", || async {
        let node = b.kubectl_ok(&[
            "get",
            "node",
            &cut,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}/{.spec.taints[*].key}",
        ]);
        (node == "True/").then_some(())
    })
    .await;
    // The healed agent finishes the evicted pod's deletion once its watch is back (the
    // watch's back-off grew during the partition): until then the API lists it,
    // terminating. It never runs again meanwhile, and in the end one copy is left.
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    loop {
        assert!(
            !running(&marker),
            "the evicted pod must not come back on the healed node"
        );
        let pods = b.kubectl_ok(&[
            "get",
            "pods",
            "-l",
            "app=solo",
            "-o",
            "jsonpath={range .items[*]}{.spec.nodeName} {.metadata.deletionTimestamp}{\"\\n\"}{end}",
        ]);
        let live: Vec<&str> = pods
            .lines()
            .filter(|l| l.split_whitespace().count() == 1)
            .map(str::trim)
            .collect();
        assert_eq!(
            live,
            [stays.as_str()],
            "one live copy, on the node that stayed"
        );
        if pods.lines().count() == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the evicted pod's deletion never finished: {pods}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let _ = agent.kill();
    let _ = agent.wait();
}
