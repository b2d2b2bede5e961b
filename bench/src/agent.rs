//! `berth-bench agent`: how long a pod takes from `POST` to `Running` (p50, p99 over 100
//! pods) on the Docker engine through the API server and the agent, against the engine alone
//! (create + start of the same container, and the `docker run -d` command) measured in the
//! same run; the same on the process runtime against spawning the process; and the resident
//! memory of a `berth agent` and of the control plane, idle and with 20 running pods.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use berth_agent::runtime::docker::DockerRuntime;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use serde_json::json;

const IMAGE: &str = "berth/pause:1";

fn pod(name: &str, node: &str) -> Pod {
    pod_of(name, node, IMAGE, &["/busybox", "sleep", "3600"])
}

fn pod_of(name: &str, node: &str, image: &str, command: &[&str]) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 0,
                 "containers": [{"name": "c", "image": image, "imagePullPolicy": "Never",
                                 "command": command}]},
    }))
    .expect("a pod")
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Remove every container the agent of `node` left (labels `berth.node=<node>`).
pub(crate) fn remove_node_containers(node: &str) {
    let out = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label=berth.node={node}")])
        .output();
    if let Ok(out) = out {
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(String::from)
            .collect();
        if !ids.is_empty() {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f"])
                .args(&ids)
                .output();
        }
    }
}

async fn create_to_running(api: &Api<Pod>, name: &str, node: &str) -> anyhow::Result<Duration> {
    create_pod_to_running(api, pod(name, node)).await
}

async fn create_pod_to_running(api: &Api<Pod>, pod: Pod) -> anyhow::Result<Duration> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let name = name.as_str();
    let t = Instant::now();
    api.create(&PostParams::default(), &pod).await?;
    tokio::time::timeout(
        Duration::from_secs(60),
        await_condition(api.clone(), name, conditions::is_pod_running()),
    )
    .await
    .context("a pod did not run within 60 s")??;
    Ok(t.elapsed())
}

/// `runs` pods one at a time through an agent on Docker: each pod's POST -> Running.
async fn berth_pods(
    server: &berth_apiserver::Server,
    client: kube::Client,
    dir: &std::path::Path,
    runs: usize,
) -> anyhow::Result<Vec<Duration>> {
    let node = format!("bench-{}-pods", std::process::id());
    let runtime = Arc::new(
        DockerRuntime::connect(&node)
            .await
            .context("connecting to the Docker engine (is dockerd running?)")?,
    );
    let agent_cfg = berth_agent::Config {
        server: server.url(),
        token: server.tokens.node_join.clone(),
        ca_pem: server.ca_pem.clone(),
        node_name: node.clone(),
        address: "127.0.0.1".into(),
        listen: "127.0.0.1:0".parse()?,
        data_dir: dir.join("agent"),
        lease_every: Duration::from_secs(2),
        lease_duration: Duration::from_secs(8),
        sync_every: Duration::from_secs(1),
        backoff: Default::default(),
        proxy: None,
        dns: None,
        pod_dns: None,
        pod_network: false,
    };
    std::fs::create_dir_all(&agent_cfg.data_dir)?;
    let agent = tokio::spawn(berth_agent::run(agent_cfg, runtime.clone()));
    let api: Api<Pod> = Api::namespaced(client, "default");
    // The first pod also imports the pause image.
    let first = "warm-up-pods".to_string();
    create_to_running(&api, &first, &node).await?;
    let mut took = Vec::new();
    for i in 0..runs {
        took.push(create_to_running(&api, &format!("p-{i}"), &node).await?);
    }
    for i in 0..runs {
        let _ = api
            .delete(&format!("p-{i}"), &DeleteParams::default().grace_period(0))
            .await;
    }
    let _ = api.delete(&first, &DeleteParams::default()).await;
    agent.abort();
    berth_agent::runtime::Runtime::release(runtime.as_ref()).await;
    remove_node_containers(&node);
    Ok(took)
}

/// Pods through Berth vs containers through the engine, one at a time.
async fn latency(runs: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cfg = berth_apiserver::Config::new(dir.path().to_path_buf());
    cfg.listen = "127.0.0.1:0".parse()?;
    let server = berth_apiserver::start(cfg).await?;
    let client = crate::client(&server, dir.path()).await?;
    let mut berth = berth_pods(&server, client.clone(), dir.path(), runs).await?;
    let node = format!("bench-{}", std::process::id());

    // The engine alone: create + start of the same container through its API.
    let docker = bollard::Docker::connect_with_local_defaults()?;
    let mut engine = Vec::new();
    let mut cli = Vec::new();
    for i in 0..runs {
        let name = format!("berth-bench-{}-{i}", std::process::id());
        let body = bollard::models::ContainerCreateBody {
            image: Some(IMAGE.into()),
            cmd: Some(vec!["/busybox".into(), "sleep".into(), "3600".into()]),
            labels: Some([("berth.node".to_string(), node.clone())].into()),
            ..Default::default()
        };
        let t = Instant::now();
        let opts = bollard::query_parameters::CreateContainerOptionsBuilder::new()
            .name(&name)
            .build();
        let id = docker.create_container(Some(opts), body).await?.id;
        docker
            .start_container(
                &id,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await?;
        engine.push(t.elapsed());

        let t = Instant::now();
        let out = std::process::Command::new("docker")
            .args(["run", "-d", "--label", &format!("berth.node={node}"), IMAGE])
            .args(["/busybox", "sleep", "3600"])
            .output()?;
        anyhow::ensure!(out.status.success(), "docker run failed");
        cli.push(t.elapsed());
    }

    server.shutdown().await;
    remove_node_containers(&node);

    let (b50, e50, c50) = (
        percentile(&mut berth, 0.5),
        percentile(&mut engine, 0.5),
        percentile(&mut cli, 0.5),
    );
    let (b99, e99, c99) = (
        percentile(&mut berth, 0.99),
        percentile(&mut engine, 0.99),
        percentile(&mut cli, 0.99),
    );
    println!("pod POST -> Running, {runs} pods one at a time (Docker engine, image present):");
    println!(
        "  berth (API server + agent, pause container + app container): p50 {:7.1} ms  p99 {:7.1} ms",
        ms(b50),
        ms(b99)
    );
    println!(
        "  engine API create + start (one container, baseline):         p50 {:7.1} ms  p99 {:7.1} ms",
        ms(e50),
        ms(e99)
    );
    println!(
        "  `docker run -d` (one container, CLI, baseline):              p50 {:7.1} ms  p99 {:7.1} ms",
        ms(c50),
        ms(c99)
    );
    println!(
        "  berth / engine API: {:.2}x   berth / docker run: {:.2}x  (a pod is two containers)",
        b50.as_secs_f64() / e50.as_secs_f64(),
        b50.as_secs_f64() / c50.as_secs_f64()
    );
    Ok(())
}

/// Pods as host processes (the process runtime), against spawning the same process.
async fn process_latency(runs: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cfg = berth_apiserver::Config::new(dir.path().to_path_buf());
    cfg.listen = "127.0.0.1:0".parse()?;
    let server = berth_apiserver::start(cfg).await?;
    let client = crate::client(&server, dir.path()).await?;
    let node = format!("bench-proc-{}", std::process::id());
    let agent_dir = dir.path().join("agent");
    let runtime = Arc::new(berth_agent::runtime::process::ProcessRuntime::new(
        &agent_dir,
    )?);
    let agent_cfg = berth_agent::Config {
        server: server.url(),
        token: server.tokens.node_join.clone(),
        ca_pem: server.ca_pem.clone(),
        node_name: node.clone(),
        address: "127.0.0.1".into(),
        listen: "127.0.0.1:0".parse()?,
        data_dir: agent_dir,
        lease_every: Duration::from_secs(1),
        lease_duration: Duration::from_secs(4),
        sync_every: Duration::from_secs(1),
        backoff: Default::default(),
        proxy: None,
        dns: None,
        pod_dns: None,
        pod_network: false,
    };
    let agent = tokio::spawn(berth_agent::run(agent_cfg, runtime));
    let api: Api<Pod> = Api::namespaced(client, "default");
    let command = ["sleep", "3600"];
    create_pod_to_running(&api, pod_of("warm-up", &node, "host", &command)).await?;
    let mut berth = Vec::new();
    for i in 0..runs {
        let p = pod_of(&format!("q-{i}"), &node, "host", &command);
        berth.push(create_pod_to_running(&api, p).await?);
    }
    let mut spawn = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let mut child = std::process::Command::new("sleep").arg("3600").spawn()?;
        spawn.push(t.elapsed());
        let _ = child.kill();
        let _ = child.wait();
    }
    for i in 0..runs {
        let _ = api
            .delete(&format!("q-{i}"), &DeleteParams::default())
            .await;
    }
    let _ = api.delete("warm-up", &DeleteParams::default()).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    agent.abort();
    server.shutdown().await;
    let (b50, s50) = (percentile(&mut berth, 0.5), percentile(&mut spawn, 0.5));
    let b99 = percentile(&mut berth, 0.99);
    println!("pod POST -> Running, {runs} pods one at a time (process runtime):");
    println!(
        "  berth (API server + agent, host process):                    p50 {:7.1} ms  p99 {:7.1} ms",
        ms(b50),
        ms(b99)
    );
    println!(
        "  spawning the same process (baseline):                        p50 {:7.3} ms",
        ms(s50)
    );
    Ok(())
}

fn rss_kib(pid: u32) -> u64 {
    status_field(pid, "VmRSS:")
}

/// A number from /proc/PID/status (kB for the memory lines).
fn status_field(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Resident memory of `berth up` (control plane, no local node) and of a `berth agent`
/// process on Docker, idle and with `pods` running pods.
pub async fn memory(pods: usize) -> anyhow::Result<()> {
    let bin = std::env::var("BERTH_BIN").unwrap_or_else(|_| "target/release/berth".into());
    anyhow::ensure!(
        std::path::Path::new(&bin).exists(),
        "{bin} is missing: run `cargo build --release -p berth` first (or set BERTH_BIN)"
    );
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let node = format!("bench-rss-{}", std::process::id());
    let mut server = std::process::Command::new(&bin)
        .args(["up", "--runtime", "none", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let kubeconfig = dir.path().join("kubeconfig");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !kubeconfig.exists() {
        anyhow::ensure!(Instant::now() < deadline, "berth up did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let token = std::process::Command::new(&bin)
        .args(["token", "--node", "--data-dir"])
        .arg(dir.path())
        .output()?;
    let token = String::from_utf8_lossy(&token.stdout).trim().to_string();
    let agent_dir = dir.path().join("agent-data");
    let mut agent = std::process::Command::new(&bin)
        .args([
            "agent",
            "--server",
            &format!("https://127.0.0.1:{port}"),
            "--token",
            &token,
        ])
        .arg("--ca-file")
        .arg(dir.path().join("pki/ca.pem"))
        .args([
            "--name",
            &node,
            "--runtime",
            "docker",
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(&agent_dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let kc = kube::config::Kubeconfig::read_from(&kubeconfig)?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    let client = kube::Client::try_from(cfg)?;
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    while nodes.get_opt(&node).await?.is_none() {
        anyhow::ensure!(Instant::now() < deadline, "the agent did not register");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (server_idle, agent_idle) = (rss_kib(server.id()), rss_kib(agent.id()));
    let api: Api<Pod> = Api::namespaced(client, "default");
    for i in 0..pods {
        api.create(&PostParams::default(), &pod(&format!("r-{i}"), &node))
            .await?;
    }
    for i in 0..pods {
        tokio::time::timeout(
            Duration::from_secs(120),
            await_condition(api.clone(), &format!("r-{i}"), conditions::is_pod_running()),
        )
        .await
        .context("pods did not all run within 120 s")??;
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (server_busy, agent_busy) = (rss_kib(server.id()), rss_kib(agent.id()));
    let split = ["RssAnon:", "RssFile:", "Threads:"].map(|f| status_field(agent.id(), f));
    for child in [&mut agent, &mut server] {
        let _ = child.kill();
        let _ = child.wait();
    }
    remove_node_containers(&node);
    let mib = |k: u64| k as f64 / 1024.0;
    println!("resident memory (VmRSS):");
    println!(
        "  `berth agent` (docker): idle {:6.1} MiB, with {pods} running pods {:6.1} MiB",
        mib(agent_idle),
        mib(agent_busy)
    );
    println!(
        "    of which anonymous {:.1} MiB, file-backed (code, read-only data) {:.1} MiB; {} threads",
        mib(split[0]),
        mib(split[1]),
        split[2]
    );
    println!(
        "  `berth up --runtime none` (API server, store, scheduler, controllers): idle {:6.1} MiB, with {pods} pods {:6.1} MiB",
        mib(server_idle),
        mib(server_busy)
    );
    Ok(())
}

pub async fn run(runs: usize, pods: usize) -> anyhow::Result<()> {
    println!(
        "berth-bench agent: {} CPUs",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    latency(runs).await?;
    println!();
    process_latency(runs).await?;
    println!();
    memory(pods).await
}
