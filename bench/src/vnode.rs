//! `berth-bench vnode`: a burst of pods over a full cluster onto the virtual node.
//!
//! `berth up` on Docker with its real node cordoned (full), a Deployment of `n` pods that
//! tolerate the virtual node's taint: the time until the last is Running, and each pod's
//! time from first listed to Running (p50/p99, lists polled every 50 ms); then the time to
//! give them all back (scale to 0 -> no pod and no group container left). Twice: with no
//! warm sandboxes (each group starts two containers, its sandbox and its own), and with `n`
//! sandboxes started ahead of the burst by the instances service's warm pool. Each round
//! also reports the CPU time the machine spent during the burst and `berth up`'s part of it,
//! which tells the engine's cost from Berth's. Beside them, in the same run, `n` `docker run
//! -d` of the same image, one after another and 8 at a time, and the engine's own CPU cost
//! of a container start, which bounds how fast any burst can go on this machine.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::failover::{berth_bin, client_for, control_plane};
use crate::percentile;
use crate::scheduler::{cpu_with_children_of, USER_HZ};

const IMAGE: &str = "berth/pause:1";

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One burst's figures.
struct Burst {
    /// Scale-up -> the last pod Running.
    all: Duration,
    /// Each pod's first listed -> Running, sorted.
    per: Vec<Duration>,
    /// Scale-up -> the first pod listed, and the last (the controllers' part).
    listed: (Duration, Duration),
    /// Scale to 0 -> no pod and no container left.
    back: Duration,
    /// CPU seconds the machine spent during the scale-up, and `berth up`'s part of it.
    cpu: (f64, f64),
}

/// The warm burst alone (for working on Berth's own pipeline; no engine baseline).
pub async fn warm(n: usize) -> anyhow::Result<()> {
    let b = burst(n, n).await?;
    println!(
        "burst of {n} pods onto the virtual node (real node full), Docker, {n} warm sandboxes:"
    );
    print_burst("warm sandboxes", n, &b);
    Ok(())
}

fn print_burst(what: &str, n: usize, b: &Burst) {
    println!(
        "  {what:>18}: all {n} Running after {:8.1} ms   per pod (listed -> Running): p50 {:7.1} ms  p99 {:7.1} ms   give back: {:8.1} ms",
        ms(b.all),
        ms(percentile(&b.per, 0.5)),
        ms(percentile(&b.per, 0.99)),
        ms(b.back)
    );
    println!(
        "  {:>18}  pods listed (made by the ReplicaSet, bound by the scheduler) from {:.1} ms to {:.1} ms after the scale-up",
        "",
        ms(b.listed.0),
        ms(b.listed.1)
    );
    println!(
        "  {:>18}  CPU during the burst: {:.1} s of the machine's {:.1} s ({} cores), `berth up` {:.1} s ({:.0}%), the engine and its processes the rest",
        "",
        b.cpu.0,
        b.all.as_secs_f64() * cores() as f64,
        cores(),
        b.cpu.1,
        100.0 * b.cpu.1 / b.cpu.0.max(1e-9)
    );
}

pub async fn run(n: usize) -> anyhow::Result<()> {
    let cold = burst(n, 0).await?;
    // The same burst with as many sandboxes started ahead of it as it has pods: what is left
    // is each group's own container.
    let warm = burst(n, n).await?;

    // The engine alone: one `docker run -d` after another, then PARALLEL at a time (the
    // engine's own floor for starting `n` containers on this machine).
    let (docker_all, mut runs) = docker_runs(n, 1).await?;
    runs.sort();
    let (docker_parallel, _) = docker_runs(n, PARALLEL).await?;
    let floor = engine_starts(n, PARALLEL).await?;

    println!("burst of {n} pods onto the virtual node (real node full), Docker, image present:");
    for (what, b) in [("no warm sandboxes", &cold), ("warm sandboxes", &warm)] {
        print_burst(what, n, b);
    }
    println!(
        "  {n} x `docker run -d`, one after another: {:8.1} ms   each: p50 {:7.1} ms  p99 {:7.1} ms",
        ms(docker_all),
        ms(percentile(&runs, 0.5)),
        ms(percentile(&runs, 0.99))
    );
    println!(
        "  {n} x `docker run -d`, {PARALLEL} at a time:     {:8.1} ms",
        ms(docker_parallel)
    );
    println!(
        "  burst / docker run ({PARALLEL} at a time): {:.2}x without warm sandboxes, {:.2}x with",
        cold.all.as_secs_f64() / docker_parallel.as_secs_f64(),
        warm.all.as_secs_f64() / docker_parallel.as_secs_f64(),
    );
    // A warm burst starts one container per pod, in its sandbox's namespaces: the engine's
    // CPU per such start, times n, over the machine's cores is the least it can take here,
    // whatever Berth does.
    let per_start = floor.cpu / n as f64;
    println!(
        "  the engine alone, {n} containers joining one sandbox, created then started through its API, {PARALLEL} at a time: starts {:8.1} ms, CPU {:.1} s ({:.0} ms per start)",
        ms(floor.starts),
        floor.cpu,
        per_start * 1e3,
    );
    println!(
        "  the engine's floor for {n} starts on {} cores: {:.1} s (one container per pod, all CPU to the engine)",
        cores(),
        per_start * n as f64 / cores() as f64
    );
    Ok(())
}

/// The engine starting `n` containers, with no CLI and no Berth.
struct EngineStarts {
    /// The first start -> the last one answered (the creates come before).
    starts: Duration,
    /// The machine's CPU seconds during the starts.
    cpu: f64,
}

/// Create `n` containers in one started sandbox's namespaces through the engine's API, then
/// start them `at_once` at a time, measuring the starts alone; then remove them all.
async fn engine_starts(n: usize, at_once: usize) -> anyhow::Result<EngineStarts> {
    use futures::{StreamExt, TryStreamExt};
    let docker = bollard::Docker::connect_with_local_defaults()?;
    let node = format!("bench-engine-{}", std::process::id());
    // `mode`: the network and IPC namespaces to run in (`None`: new ones).
    let create = |i: usize, mode: Option<String>| {
        let (docker, node) = (docker.clone(), node.clone());
        async move {
            let body = bollard::models::ContainerCreateBody {
                image: Some(IMAGE.into()),
                cmd: Some(vec!["/busybox".into(), "sleep".into(), "3600".into()]),
                labels: Some([("berth.node".to_string(), node.clone())].into()),
                host_config: Some(bollard::models::HostConfig {
                    network_mode: Some(mode.clone().unwrap_or_else(|| "none".into())),
                    ipc_mode: Some(mode.unwrap_or_else(|| "shareable".into())),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let opts = bollard::query_parameters::CreateContainerOptionsBuilder::new()
                .name(&format!("{node}-{i}"))
                .build();
            anyhow::Ok(docker.create_container(Some(opts), body).await?.id)
        }
    };
    let started = async {
        // As a group's container in a warm sandbox: the sandbox's namespaces, joined.
        let sandbox = create(n, None).await?;
        docker
            .start_container(
                &sandbox,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await?;
        let joined = Some(format!("container:{sandbox}"));
        let ids: Vec<String> = futures::stream::iter(0..n)
            .map(|i| create(i, joined.clone()))
            .buffer_unordered(at_once)
            .try_collect()
            .await?;
        let busy0 = machine_busy();
        let t = Instant::now();
        futures::stream::iter(ids)
            .map(|id| {
                let docker = docker.clone();
                async move {
                    docker
                        .start_container(
                            &id,
                            None::<bollard::query_parameters::StartContainerOptions>,
                        )
                        .await
                }
            })
            .buffer_unordered(at_once)
            .try_collect::<Vec<()>>()
            .await?;
        anyhow::Ok(EngineStarts {
            starts: t.elapsed(),
            cpu: (machine_busy() - busy0) as f64 / USER_HZ,
        })
    }
    .await;
    remove_containers(&format!("berth.node={node}"));
    started
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The machine's busy CPU time (every core), in ticks.
fn machine_busy() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|i| fields.get(*i))
        .sum()
}

async fn burst(n: usize, warm: usize) -> anyhow::Result<Burst> {
    let bin = berth_bin()?;
    let dir = tempfile::tempdir()?;
    let node = format!("bench-vk-{}-{warm}", std::process::id());
    // Dropped after the control plane (declared before it).
    let mut leftovers = Leftovers(vec![node.clone()]);
    let pool = warm.to_string();
    let (cp, _url) = control_plane(
        &bin,
        dir.path(),
        &[
            "--runtime",
            "docker",
            "--node-name",
            &node,
            "--cluster-cidr",
            "10.251.0.0/16",
            "--cluster-dns",
            "10.96.0.251",
            "--warm-pool",
            &pool,
        ],
    )?;
    let client = client_for(dir.path()).await?;
    let nodes: Api<Node> = Api::all(client.clone());
    let t = Instant::now();
    while nodes.get_opt("berth-instances").await?.is_none() || nodes.get_opt(&node).await?.is_none()
    {
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(30),
            "the nodes did not register"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The cluster is full: nothing more goes to the real node.
    nodes
        .patch(
            &node,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": true}})),
        )
        .await?;
    let service = std::fs::read_to_string(dir.path().join("instances/node-name"))
        .context("the instances service's node name")?
        .trim()
        .to_string();
    leftovers.0.push(service.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let deployment = |replicas: usize| {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "burst"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "burst"}},
            "template": {"metadata": {"labels": {"app": "burst"}}, "spec": {
                "terminationGracePeriodSeconds": 1,
                "tolerations": [{"key": "virtual-kubelet.io/provider", "operator": "Exists"}],
                "containers": [{"name": "c", "image": IMAGE, "imagePullPolicy": "Never",
                    "command": ["/busybox", "sleep", "3600"],
                    // A small request, so 100 fit a small machine's instances quota, and a
                    // limit of a core: the service enforces a request as the limit when
                    // there is none (as ACI does), and a start under a 10m quota waits
                    // about 2 s for the CPU its runtime's init needs inside the container.
                    "resources": {"requests": {"cpu": "10m", "memory": "32Mi"},
                                  "limits": {"cpu": "1", "memory": "64Mi"}}}]}}}})
    };
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), "default");
    // One pod first: the instances service has its images (and sandboxes) warm.
    deployments
        .create(
            &PostParams::default(),
            &serde_json::from_value(deployment(1))?,
        )
        .await?;
    wait_running(&pods, 1, Duration::from_secs(60)).await?;
    let t = Instant::now();
    while warm_sandboxes(&service) < warm {
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(300),
            "only {} of {warm} warm sandboxes after 300 s",
            warm_sandboxes(&service)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let lp = ListParams::default().labels("app=burst");
    let before: Vec<String> = pods
        .list(&lp)
        .await?
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    let berth = cp.0.id().to_string();
    let (busy0, berth0) = (machine_busy(), cpu_with_children_of(&berth));
    let t0 = Instant::now();
    deployments
        .patch(
            "burst",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": n + 1}})),
        )
        .await?;
    let mut seen: HashMap<String, Instant> = HashMap::new();
    let mut running: HashMap<String, Instant> = HashMap::new();
    while running.len() < n {
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(300),
            "only {} of {n} Running after 300 s",
            running.len()
        );
        let now = Instant::now();
        for p in pods.list(&lp).await?.items {
            let Some(name) = p.metadata.name.clone() else {
                continue;
            };
            if before.contains(&name) {
                continue;
            }
            seen.entry(name.clone()).or_insert(now);
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            if phase == Some("Running") {
                anyhow::ensure!(
                    p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some("berth-instances"),
                    "pod {name} ran off the virtual node"
                );
                running.entry(name).or_insert(now);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cpu = (
        (machine_busy() - busy0) as f64 / USER_HZ,
        cpu_with_children_of(&berth) - berth0,
    );
    let all = running.values().max().map(|t| *t - t0).unwrap_or_default();
    let listed = (
        seen.values().min().map(|t| *t - t0).unwrap_or_default(),
        seen.values().max().map(|t| *t - t0).unwrap_or_default(),
    );
    let mut per: Vec<Duration> = running
        .iter()
        .map(|(name, t)| t.saturating_duration_since(seen[name]))
        .collect();
    per.sort();

    // Give back: scale to 0 until no pod and no group container is left.
    let t1 = Instant::now();
    deployments
        .patch(
            "burst",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 0}})),
        )
        .await?;
    loop {
        anyhow::ensure!(
            t1.elapsed() < Duration::from_secs(300),
            "the give-back did not end"
        );
        if pods.list(&lp).await?.items.is_empty() && group_containers(&service) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let back = t1.elapsed();
    let _ = deployments.delete("burst", &Default::default()).await;
    drop(cp);
    // The warm sandboxes a stopped service leaves.
    remove_containers(&format!("berth.node={service}"));
    Ok(Burst {
        all,
        per,
        listed,
        back,
        cpu,
    })
}

fn docker_ids(filters: &[&str]) -> Vec<String> {
    let mut cmd = Command::new("docker");
    cmd.args(["ps", "-aq"]);
    for f in filters {
        cmd.args(["--filter", f]);
    }
    cmd.output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// The instances service's containers that belong to a group (warm sandboxes do not).
fn group_containers(node: &str) -> usize {
    let all = docker_ids(&[&format!("label=berth.node={node}")]).len();
    all - warm_sandboxes(node)
}

fn warm_sandboxes(node: &str) -> usize {
    docker_ids(&[
        &format!("label=berth.node={node}"),
        "label=berth.warm=true",
        "name=_warm_",
    ])
    .len()
}

fn remove_containers(label: &str) {
    let ids = docker_ids(&[&format!("label={label}")]);
    if !ids.is_empty() {
        let _ = Command::new("docker")
            .args(["rm", "-f"])
            .args(&ids)
            .output();
    }
}

/// The bridges and nftables tables the node and the instances service made, removed when
/// the bench ends (a stopped agent leaves its network to its pods).
struct Leftovers(Vec<String>);

impl Drop for Leftovers {
    fn drop(&mut self) {
        for n in &self.0 {
            let bridge = berth_agent::net::podnet::bridge_name(n);
            let table = berth_agent::net::nft::table_for(n);
            let _ = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "ip link del {bridge} 2>/dev/null; nft delete table ip {table} 2>/dev/null"
                ))
                .status();
        }
    }
}

/// `docker run -d` started `at_once` at a time.
const PARALLEL: usize = 8;

/// Start `n` containers with `docker run -d`, `at_once` at a time: the time for all, and
/// each one's; then remove them.
async fn docker_runs(n: usize, at_once: usize) -> anyhow::Result<(Duration, Vec<Duration>)> {
    use futures::StreamExt;
    let label = format!("berth.node=bench-run-{}-{at_once}", std::process::id());
    let t = Instant::now();
    let runs: Vec<anyhow::Result<Duration>> = futures::stream::iter(0..n)
        .map(|_| {
            let label = label.clone();
            async move {
                let t = Instant::now();
                let out = tokio::process::Command::new("docker")
                    .args([
                        "run", "-d", "--label", &label, IMAGE, "/busybox", "sleep", "3600",
                    ])
                    .output()
                    .await?;
                anyhow::ensure!(out.status.success(), "docker run failed");
                Ok(t.elapsed())
            }
        })
        .buffer_unordered(at_once)
        .collect()
        .await;
    let all = t.elapsed();
    remove_containers(&label);
    Ok((all, runs.into_iter().collect::<anyhow::Result<_>>()?))
}

async fn wait_running(pods: &Api<Pod>, n: usize, limit: Duration) -> anyhow::Result<()> {
    let t = Instant::now();
    loop {
        let list = pods
            .list(&ListParams::default().labels("app=burst"))
            .await?;
        let up = list
            .items
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .count();
        if up >= n {
            return Ok(());
        }
        anyhow::ensure!(t.elapsed() < limit, "{up} of {n} Running after {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
