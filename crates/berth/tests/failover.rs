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
    let token = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["token", "--node", "--data-dir"])
        .arg(b.dir.path())
        .output()
        .unwrap();
    let token = String::from_utf8(token.stdout).unwrap().trim().to_string();
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
    eventually(30, "the second node to be Ready", || async {
        let ready = b.kubectl_ok(&[
            "get",
            "node",
            &dies,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ]);
        (ready == "True").then_some(())
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
