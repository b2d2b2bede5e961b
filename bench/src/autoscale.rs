//! `berth-bench autoscale`: a load step -> the autoscaler's new replicas Ready, over `trials`
//! trials, on the Docker engine through `berth up`. The workload burns CPU (capped at 200m
//! against a 100m request) while a file on the host exists; an autoscaler (1..4 replicas,
//! 50 % CPU, 5 s scale-down window) watches it. Each trial creates the file and times until
//! 4 replicas are Ready, then removes it and waits for one replica again. The baseline, in the
//! same run: the same 1 -> 4 done by hand (a scale patch), which is everything but the
//! autoscaler's own measuring and deciding.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::failover::{berth_bin, client_for, control_plane};

const MAX: i32 = 4;

fn replicas(d: &Deployment) -> (i32, i32) {
    (
        d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0),
        d.status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0),
    )
}

async fn until(
    deployments: &Api<Deployment>,
    what: &str,
    want: impl Fn((i32, i32)) -> bool,
) -> anyhow::Result<Duration> {
    let began = Instant::now();
    loop {
        if want(replicas(&deployments.get("burner").await?)) {
            return Ok(began.elapsed());
        }
        anyhow::ensure!(
            began.elapsed() < Duration::from_secs(120),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn stats(v: &mut [Duration]) -> (f64, f64) {
    v.sort();
    (
        v[(v.len() - 1) / 2].as_secs_f64(),
        v[v.len() - 1].as_secs_f64(),
    )
}

pub async fn run(trials: usize) -> anyhow::Result<()> {
    crate::instances::ensure_pause_image().await?;
    let bin = berth_bin()?;
    let dir = tempfile::tempdir()?;
    let ctl = tempfile::tempdir()?;
    let node = format!("bench-autoscale-{}", std::process::id());
    let (server, _url) = control_plane(
        &bin,
        dir.path(),
        &["--runtime", "docker", "--node-name", &node],
    )?;
    let client = client_for(dir.path()).await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), "default");
    let d: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "burner"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "burner"}},
          "template": {"metadata": {"labels": {"app": "burner"}}, "spec": {
            "terminationGracePeriodSeconds": 1,
            "volumes": [{"name": "ctl", "hostPath": {"path": ctl.path()}}],
            "containers": [{"name": "burn", "image": "berth/pause:1", "imagePullPolicy": "Never",
              "command": ["/busybox", "sh", "-c",
                "while :; do if [ -e /ctl/burn ]; then :; else /busybox sleep 1; fi; done"],
              "volumeMounts": [{"name": "ctl", "mountPath": "/ctl"}],
              "resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "200m"}}}]}}},
    }))?;
    deployments.create(&PostParams::default(), &d).await?;
    until(&deployments, "the first replica", |(s, r)| s == 1 && r == 1).await?;

    // The baseline: the same step by hand.
    let mut by_hand = Vec::new();
    for _ in 0..trials {
        let scale = |n: i32| json!({"spec": {"replicas": n}});
        let began = Instant::now();
        deployments
            .patch_scale("burner", &PatchParams::default(), &Patch::Merge(scale(MAX)))
            .await?;
        until(&deployments, "4 ready by hand", |(_, r)| r == MAX).await?;
        by_hand.push(began.elapsed());
        deployments
            .patch_scale("burner", &PatchParams::default(), &Patch::Merge(scale(1)))
            .await?;
        until(&deployments, "one again", |(s, r)| s == 1 && r == 1).await?;
    }

    let hpa: HorizontalPodAutoscaler = serde_json::from_value(json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "burner"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "burner"},
                 "minReplicas": 1, "maxReplicas": MAX,
                 "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                     "target": {"type": "Utilization", "averageUtilization": 50}}}],
                 "behavior": {"scaleDown": {"stabilizationWindowSeconds": 5}}},
    }))?;
    hpas.create(&PostParams::default(), &hpa).await?;
    let mut step = Vec::new();
    let mut down = Vec::new();
    for t in 0..trials {
        // Idle and measured before each step.
        tokio::time::sleep(Duration::from_secs(3)).await;
        until(&deployments, "one replica", |(s, r)| s == 1 && r == 1).await?;
        let began = Instant::now();
        std::fs::write(ctl.path().join("burn"), "")?;
        until(&deployments, "4 ready", |(_, r)| r == MAX).await?;
        let up = began.elapsed();
        std::fs::remove_file(ctl.path().join("burn"))?;
        let back = until(&deployments, "one again", |(s, _)| s == 1).await?;
        println!(
            "  trial {}: load step -> {MAX} Ready {:.2} s; load off -> scaled to 1 after {:.2} s",
            t + 1,
            up.as_secs_f64(),
            back.as_secs_f64()
        );
        step.push(up);
        down.push(back);
    }
    drop(server);
    crate::agent::remove_node_containers(&node);
    let (h50, hmax) = stats(&mut by_hand);
    let (s50, smax) = stats(&mut step);
    let (d50, dmax) = stats(&mut down);
    println!("autoscaler, 1 -> {MAX} replicas on Docker, {trials} trials:");
    println!("  by hand (scale patch -> {MAX} Ready, baseline)  p50 {h50:5.2} s  max {hmax:5.2} s");
    println!(
        "  load step -> {MAX} Ready (autoscaler)           p50 {s50:5.2} s  max {smax:5.2} s  (+{:.2} s to measure and decide; goal <= 5 s)",
        s50 - h50
    );
    println!("  load off -> scaled to 1 (5 s window)          p50 {d50:5.2} s  max {dmax:5.2} s");
    Ok(())
}
