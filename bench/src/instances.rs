//! `berth-bench instances`: how long a container group takes from `PUT` to Running (the
//! long-running operation reporting Succeeded: every container started) over the instances
//! API, p50 and p99 over `n` groups, with the warm pool on and off, next to `docker run -d`
//! of the same image measured in the same run. Groups arrive one every `gap`, so the pool is
//! measured at a rate its refill keeps up with; the figure printed says which rate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use berth_aci_client::{Client, GroupRef};
use berth_agent::runtime::docker::DockerRuntime;
use berth_core::aci::ContainerGroup;
use serde_json::json;

const IMAGE: &str = "berth/pause:1";

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn group() -> ContainerGroup {
    serde_json::from_value(json!({
        "location": "eastus",
        "properties": {"osType": "Linux", "restartPolicy": "Always", "containers": [
            {"name": "main", "properties": {"image": IMAGE,
             "command": ["/busybox", "sleep", "3600"],
             "resources": {"requests": {"cpu": 0.1, "memoryInGB": 0.1}}}}]}
    }))
    .expect("a group")
}

/// Start the service on Docker with `warm` spare sandboxes; PUT `n` groups one every `gap`.
async fn run_groups(n: usize, warm: usize, gap: Duration) -> anyhow::Result<Vec<Duration>> {
    let dir = tempfile::tempdir()?;
    let node = format!("bench-instances-{}-{warm}", std::process::id());
    let runtime = DockerRuntime::connect(&node)
        .await
        .context("connecting to Docker")?
        .with_warm_pool(warm)
        .await?;
    let cfg = berth_instances::Config {
        service: berth_instances::ServiceConfig {
            data_dir: dir.path().join("instances"),
            dns_zone: "bench.local".into(),
            prices: Default::default(),
            resync: Duration::from_secs(1),
            host_grace: Duration::from_secs(30),
        },
        listen: "127.0.0.1:0".parse()?,
        pki_dir: dir.path().to_path_buf(),
        sans: vec!["localhost".into(), "127.0.0.1".into()],
        token: "bench-token".into(),
        page_size: 100,
        dns_listen: None,
    };
    // Room for every group of the run: this measures start latency, not placement.
    let pool = berth_instances::Pool::new(vec![berth_instances::Host {
        name: "local".into(),
        address: "127.0.0.1".into(),
        cpu: 1000.0,
        memory_gb: 1000.0,
        runtime: Arc::new(runtime),
    }])?;
    let inst = berth_instances::start(cfg, Arc::new(pool)).await?;
    let client = Client::new(&inst.url(), "bench-token", &inst.ca_pem);
    // Let the pool fill before the first arrival.
    tokio::time::sleep(Duration::from_millis(300 * warm as u64 + 200)).await;
    let body = group();
    let mut took = Vec::with_capacity(n);
    let mut refs = Vec::new();
    for i in 0..n {
        let g = GroupRef {
            sub: "bench".into(),
            rg: "rg".into(),
            name: format!("g{i}"),
        };
        let began = Instant::now();
        let (_, op) = client.put(&g, &body).await?;
        client.wait(&op.context("no operation URL")?, || {}).await?;
        took.push(began.elapsed());
        refs.push(g);
        tokio::time::sleep(gap.saturating_sub(began.elapsed())).await;
    }
    // Deletes run side by side: each waits out its containers' stop grace.
    for chunk in refs.chunks(20) {
        for r in futures::future::join_all(chunk.iter().map(|g| client.delete(g))).await {
            r?;
        }
    }
    inst.shutdown().await;
    crate::agent::remove_node_containers(&node);
    Ok(took)
}

/// `docker run -d` of the same image and command, `n` times, then removed.
fn docker_run(n: usize, gap: Duration) -> anyhow::Result<Vec<Duration>> {
    let mut took = Vec::with_capacity(n);
    let mut ids = Vec::new();
    for _ in 0..n {
        let began = Instant::now();
        let out = std::process::Command::new("docker")
            .args([
                "run",
                "-d",
                "--label",
                "berth.bench=1",
                IMAGE,
                "/busybox",
                "sleep",
                "3600",
            ])
            .output()
            .context("running the docker CLI")?;
        anyhow::ensure!(
            out.status.success(),
            "docker run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        took.push(began.elapsed());
        ids.push(String::from_utf8_lossy(&out.stdout).trim().to_string());
        std::thread::sleep(gap.saturating_sub(began.elapsed()));
    }
    let _ = std::process::Command::new("docker")
        .args(["rm", "-f"])
        .args(&ids)
        .output();
    Ok(took)
}

/// Make sure the pause image (a static busybox at `/busybox`) exists: the driver builds it.
pub(crate) async fn ensure_pause_image() -> anyhow::Result<()> {
    let probe = DockerRuntime::connect("bench-probe").await?;
    berth_agent::runtime::Runtime::ensure_image(
        &probe,
        IMAGE,
        berth_agent::runtime::PullPolicy::IfNotPresent,
    )
    .await
    .ok();
    let _ = berth_agent::runtime::Runtime::create_sandbox(
        &probe,
        &berth_agent::runtime::PodRef {
            uid: "probe-0000".into(),
            namespace: "bench".into(),
            name: "probe".into(),
            host_ports: vec![],
            host_network: false,
            hostname: None,
        },
    )
    .await?;
    crate::agent::remove_node_containers("bench-probe");
    Ok(())
}

pub async fn run(n: usize) -> anyhow::Result<()> {
    ensure_pause_image().await?;
    let gap = Duration::from_millis(400);
    let mut cli = docker_run(n, gap)?;
    let mut cold = run_groups(n, 0, gap).await?;
    let mut warm = run_groups(n, 4, gap).await?;
    println!("container group PUT -> Running over the instances API, {n} groups, one every {} ms (Docker {}):", gap.as_millis(), IMAGE);
    let line = |what: &str, v: &mut Vec<Duration>, base: Duration| {
        let p50 = percentile(v, 0.5);
        let p99 = percentile(v, 0.99);
        println!(
            "  {what:<44} p50 {:7.1} ms  p99 {:7.1} ms  ({:.2}x docker run p50)",
            ms(p50),
            ms(p99),
            p50.as_secs_f64() / base.as_secs_f64()
        );
    };
    let base = percentile(&mut cli, 0.5);
    line("`docker run -d` (CLI, baseline)", &mut cli, base);
    line("instances, warm pool off", &mut cold, base);
    line(
        "instances, warm pool on (4 spare sandboxes)",
        &mut warm,
        base,
    );
    println!("  goal: p50 <= 500 ms with the pool on");
    Ok(())
}
