//! `berth-bench failover`: node loss -> replacement Ready, over `trials` trials. A control
//! plane (`berth up`, mock runtime, node `stays`) and, per trial, a second node as its own
//! `berth agent` process (mock runtime, Lease renewed every second). The trial's two pods run
//! on the second node; the agent is killed with SIGKILL, and the clock runs until both
//! replacements are Running and Ready on `stays`. Reported beside the part of it that is pure
//! detection (kill -> the node marked not Ready), measured in the same trials.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

/// The `berth` binary built beside this one.
pub(crate) fn berth_bin() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let bin = me.with_file_name("berth");
    anyhow::ensure!(
        bin.exists(),
        "{} is missing: `cargo build --release -p berth` first",
        bin.display()
    );
    Ok(bin)
}

pub(crate) struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `berth up` on `dir` with `extra` flags; returns the process and its URL.
pub(crate) fn control_plane(
    bin: &Path,
    dir: &Path,
    extra: &[&str],
) -> anyhow::Result<(Killed, String)> {
    let mut cmd = Command::new(bin);
    cmd.args(["up", "--data-dir"])
        .arg(dir)
        .args(["--listen", "127.0.0.1:0"])
        .args(extra)
        .args(["--instances-listen", "127.0.0.1:0"])
        // No warm sandboxes unless the caller asks for them.
        .args(if extra.contains(&"--warm-pool") {
            &[][..]
        } else {
            &["--warm-pool", "0"][..]
        })
        .args(["--dns-listen", "127.0.0.1:0"]);
    spawn_until(cmd, "Berth is up: Kubernetes API at ")
}

/// Spawn a `berth` command (logging errors only, unless `BERTH_LOG` says otherwise: its logs
/// go to the bench's stderr) and wait for the stdout line starting with
/// `prefix`; returns the process and the rest of that line. Its stdout keeps being drained.
pub(crate) fn spawn_until(mut cmd: Command, prefix: &str) -> anyhow::Result<(Killed, String)> {
    let mut child = cmd
        .env(
            "BERTH_LOG",
            std::env::var("BERTH_LOG").unwrap_or_else(|_| "error".into()),
        )
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let rest = loop {
        let line = lines
            .next()
            .with_context(|| format!("berth exited before printing {prefix:?}"))??;
        if let Some(u) = line.strip_prefix(prefix) {
            break u.trim().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Ok((Killed(child), rest))
}

/// A client with the admin kubeconfig `berth up` wrote into `dir`.
pub(crate) async fn client_for(dir: &Path) -> anyhow::Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(dir.join("kubeconfig"))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

fn ready(n: &Node) -> Option<&str> {
    n.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.as_str())
}

fn pod_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn poll<T, F, Fut>(what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn cordon(nodes: &Api<Node>, name: &str, on: bool) -> anyhow::Result<()> {
    let patch = json!({"spec": {"unschedulable": on}});
    nodes
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Pods of `app` Ready on `node`.
async fn ready_on(pods: &Api<Pod>, app: &str, node: &str) -> anyhow::Result<usize> {
    let list = pods
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await?;
    Ok(list
        .items
        .iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
        .filter(|p| pod_ready(p))
        .count())
}

pub async fn run(trials: usize) -> anyhow::Result<()> {
    let bin = berth_bin()?;
    let dir = tempfile::tempdir()?;
    let (_server, url) = control_plane(
        &bin,
        dir.path(),
        &["--runtime", "mock", "--node-name", "stays"],
    )?;
    let token = Command::new(&bin)
        .args(["token", "--node", "--data-dir"])
        .arg(dir.path())
        .output()?;
    let token = String::from_utf8(token.stdout)?.trim().to_string();
    let client = client_for(dir.path()).await?;
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");

    let (mut detect, mut replace) = (Vec::new(), Vec::new());
    for t in 0..trials {
        let name = format!("dies-{t}");
        let agent_dir = tempfile::tempdir()?;
        let agent = Command::new(&bin)
            .args(["agent", "--server", &url, "--token", &token, "--ca-file"])
            .arg(dir.path().join("pki/ca.pem"))
            .args(["--name", &name, "--runtime", "mock", "--lease-seconds", "1"])
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(agent_dir.path())
            .env(
                "BERTH_LOG",
                std::env::var("BERTH_LOG").unwrap_or_else(|_| "error".into()),
            )
            .stdout(Stdio::null())
            .spawn()?;
        let mut agent = Killed(agent);
        poll("the agent's node Ready", || async {
            Ok(nodes
                .get_opt(&name)
                .await?
                .filter(|n| ready(n) == Some("True"))
                .map(|_| ()))
        })
        .await?;
        // The trial's pods start on the node that will die.
        let app = format!("t{t}");
        cordon(&nodes, "stays", true).await?;
        let d: Deployment = serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": app},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": app}},
                     "template": {"metadata": {"labels": {"app": app}},
                                  "spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
        }))?;
        deployments.create(&PostParams::default(), &d).await?;
        poll("both pods Ready on the node that will die", || async {
            Ok((ready_on(&pods, &app, &name).await? == 2).then_some(()))
        })
        .await?;
        cordon(&nodes, "stays", false).await?;

        let killed = Instant::now();
        let _ = agent.0.kill();
        let _ = agent.0.wait();
        let mut noticed = None;
        loop {
            if noticed.is_none() && ready(&nodes.get(&name).await?) != Some("True") {
                noticed = Some(killed.elapsed());
            }
            if ready_on(&pods, &app, "stays").await? == 2 {
                break;
            }
            anyhow::ensure!(
                killed.elapsed() < Duration::from_secs(120),
                "no replacements within 120 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let took = killed.elapsed();
        let saw = noticed.unwrap_or(took);
        println!(
            "  trial {:>2}: node marked not Ready {:>6.2} s, replacements Ready {:>6.2} s",
            t + 1,
            saw.as_secs_f64(),
            took.as_secs_f64()
        );
        detect.push(saw);
        replace.push(took);
        deployments
            .delete(&app, &DeleteParams::background())
            .await?;
        nodes.delete(&name, &DeleteParams::default()).await?;
    }
    detect.sort();
    replace.sort();
    let p50 = |v: &[Duration]| v[(v.len() - 1) / 2].as_secs_f64();
    let max = |v: &[Duration]| v[v.len() - 1].as_secs_f64();
    println!("node loss -> replacement Ready over {trials} trials (agent SIGKILLed, Lease 1 s):");
    println!(
        "  detection (node not Ready)   p50 {:>5.2} s  max {:>5.2} s",
        p50(&detect),
        max(&detect)
    );
    println!(
        "  replacements Running, Ready  p50 {:>5.2} s  max {:>5.2} s   (goal <= 5 s; Kubernetes' defaults ~350 s)",
        p50(&replace),
        max(&replace)
    );
    Ok(())
}
