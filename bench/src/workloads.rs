//! `berth-bench workloads`: the batch and per-node controllers at scale, each next to a
//! baseline measured in the same run on the same control plane.
//!
//! - Jobs: `berth up --runtime process` (pods are host processes), 1,000 Jobs of one pod
//!   each created at once; the time until all are Complete, and the `berth up` process's CPU
//!   time per Job. Baseline: 1,000 bare pods of the same command, until all Succeeded. The
//!   difference in CPU per unit is what the Job controller (and the Job objects' own writes)
//!   cost.
//! - DaemonSet: `berth up --runtime none` with 500 fake Ready nodes (Leases renewed for an
//!   hour, nobody runs their pods); the time from creating the DaemonSet until its 500 pods
//!   are bound. Baseline: a ReplicaSet of 500 replicas on the same nodes.

use std::path::Path;
use std::time::{Duration, Instant};

use kube::api::{Api, DynamicObject, ListParams};
use kube::discovery::ApiResource;
use serde_json::{json, Value};

use crate::failover::{berth_bin, client_for, control_plane};
use crate::scheduler::{cpu_of, create_all};

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: if group.is_empty() {
            version.into()
        } else {
            format!("{group}/{version}")
        },
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// Poll `count` (every 200 ms) until it reaches `want`; the time it took.
async fn until<F, Fut>(
    what: &str,
    want: usize,
    limit: Duration,
    mut count: F,
) -> anyhow::Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<usize>>,
{
    let start = Instant::now();
    loop {
        let n = count().await?;
        if n >= want {
            return Ok(start.elapsed());
        }
        anyhow::ensure!(
            start.elapsed() < limit,
            "{what}: {n} of {want} after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn pod_spec() -> Value {
    json!({"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "c", "image": "host", "command": ["true"]}]})
}

async fn count_pods(api: &Api<DynamicObject>, labels: &str, phase: &str) -> anyhow::Result<usize> {
    let lp = ListParams::default()
        .labels(labels)
        .fields(&format!("status.phase={phase}"));
    Ok(api.list_metadata(&lp).await?.items.len())
}

async fn jobs(n: usize) -> anyhow::Result<()> {
    let bin = berth_bin()?;
    let dir = tempfile::tempdir()?;
    let node = format!("bench-jobs-{}", std::process::id());
    let (server, _) = control_plane(
        &bin,
        dir.path(),
        &["--runtime", "process", "--node-name", &node],
    )?;
    let pid = server.0.id();
    let client = client_for(dir.path()).await?;
    let pods = Api::namespaced_with(
        client.clone(),
        "default",
        &resource("", "v1", "Pod", "pods"),
    );
    let jobs = Api::namespaced_with(
        client.clone(),
        "default",
        &resource("batch", "v1", "Job", "jobs"),
    );
    let limit = Duration::from_secs(900);

    let cpu = cpu_of(&pid.to_string());
    let bare: Vec<Value> = (0..n)
        .map(|i| json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("bare-{i}"), "labels": {"bench": "bare"}}, "spec": pod_spec()}))
        .collect();
    let started = Instant::now();
    create_all(&pods, bare).await?;
    until("bare pods Succeeded", n, limit, || {
        count_pods(&pods, "bench=bare", "Succeeded")
    })
    .await?;
    let bare_time = started.elapsed();
    let bare_cpu = cpu_of(&pid.to_string()) - cpu;
    println!(
        "{n} bare pods to Succeeded (baseline): {:>6.1} s, {:.1} ms of berth up's CPU per pod",
        bare_time.as_secs_f64(),
        bare_cpu * 1e3 / n as f64
    );

    let cpu = cpu_of(&pid.to_string());
    let made: Vec<Value> = (0..n)
        .map(|i| {
            json!({"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": format!("job-{i}"), "labels": {"bench": "job"}},
            "spec": {"template": {"metadata": {"labels": {"bench": "job"}}, "spec": pod_spec()}}})
        })
        .collect();
    let started = Instant::now();
    create_all(&jobs, made).await?;
    until("Jobs Complete", n, limit, || async {
        let list = jobs
            .list(&ListParams::default().labels("bench=job"))
            .await?;
        Ok(list
            .items
            .iter()
            .filter(|j| {
                j.data["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Complete" && c["status"] == "True")
                })
            })
            .count())
    })
    .await?;
    let job_time = started.elapsed();
    let job_cpu = cpu_of(&pid.to_string()) - cpu;
    println!(
        "{n} Jobs of one pod to Complete:          {:>6.1} s ({:.2}x the bare pods), {:.1} ms of berth up's CPU per Job ({:.1} ms more than a bare pod: the Job controller and the Jobs' writes)",
        job_time.as_secs_f64(),
        job_time.as_secs_f64() / bare_time.as_secs_f64(),
        job_cpu * 1e3 / n as f64,
        (job_cpu - bare_cpu) * 1e3 / n as f64,
    );
    drop(server);
    Ok(())
}

fn fake_node(i: usize) -> Value {
    let name = format!("fake-{i:04}");
    json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {"capacity": {"cpu": "4", "memory": "32Gi", "pods": "110"},
            "allocatable": {"cpu": "4", "memory": "32Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}]}})
}

fn lease(i: usize) -> Value {
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": format!("fake-{i:04}"), "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": format!("fake-{i:04}"), "leaseDurationSeconds": 3600,
            "renewTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()}})
}

async fn bound(api: &Api<DynamicObject>, labels: &str) -> anyhow::Result<usize> {
    let lp = ListParams::default()
        .labels(labels)
        .fields("spec.nodeName!=");
    Ok(api.list_metadata(&lp).await?.items.len())
}

async fn daemonset(nodes: usize, dir: &Path) -> anyhow::Result<()> {
    let bin = berth_bin()?;
    let (server, _) = control_plane(&bin, dir, &["--runtime", "none"])?;
    let client = client_for(dir).await?;
    let node_api = Api::all_with(client.clone(), &resource("", "v1", "Node", "nodes"));
    let lease_api = Api::namespaced_with(
        client.clone(),
        "kube-node-lease",
        &resource("coordination.k8s.io", "v1", "Lease", "leases"),
    );
    create_all(&lease_api, (0..nodes).map(lease).collect()).await?;
    create_all(&node_api, (0..nodes).map(fake_node).collect()).await?;
    let pods = Api::namespaced_with(
        client.clone(),
        "default",
        &resource("", "v1", "Pod", "pods"),
    );
    let template = |app: &str| {
        json!({"metadata": {"labels": {"app": app}}, "spec": {"containers": [
            {"name": "c", "image": "busybox", "resources": {"requests": {"cpu": "10m", "memory": "10Mi"}}}]}})
    };
    let limit = Duration::from_secs(300);

    let rs_api = Api::namespaced_with(
        client.clone(),
        "default",
        &resource("apps", "v1", "ReplicaSet", "replicasets"),
    );
    let rs = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "base"},
        "spec": {"replicas": nodes, "selector": {"matchLabels": {"app": "base"}}, "template": template("base")}});
    let started = Instant::now();
    create_all(&rs_api, vec![rs]).await?;
    let rs_time = until("ReplicaSet pods bound", nodes, limit, || {
        bound(&pods, "app=base")
    })
    .await?;
    println!(
        "a ReplicaSet of {nodes} on {nodes} fake nodes, all bound (baseline): {:>6.2} s",
        rs_time.as_secs_f64()
    );
    let _ = started;

    let ds_api = Api::namespaced_with(
        client.clone(),
        "default",
        &resource("apps", "v1", "DaemonSet", "daemonsets"),
    );
    let ds = json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "daemon"},
        "spec": {"selector": {"matchLabels": {"app": "daemon"}}, "template": template("daemon")}});
    create_all(&ds_api, vec![ds]).await?;
    let ds_time = until("DaemonSet pods bound", nodes, limit, || {
        bound(&pods, "app=daemon")
    })
    .await?;
    let on: std::collections::HashSet<String> = pods
        .list(&ListParams::default().labels("app=daemon"))
        .await?
        .items
        .into_iter()
        .filter_map(|p| p.data["spec"]["nodeName"].as_str().map(String::from))
        .collect();
    anyhow::ensure!(
        on.len() == nodes,
        "the DaemonSet's pods cover {} nodes of {nodes}",
        on.len()
    );
    println!(
        "a DaemonSet on {nodes} fake nodes, one pod on each, all bound:  {:>6.2} s ({:.2}x the ReplicaSet)",
        ds_time.as_secs_f64(),
        ds_time.as_secs_f64() / rs_time.as_secs_f64()
    );
    // A node joins: how soon its daemon pod is bound.
    let mut joins = Vec::new();
    for k in 0..5 {
        let i = nodes + k;
        create_all(&lease_api, vec![lease(i)]).await?;
        let started = Instant::now();
        create_all(&node_api, vec![fake_node(i)]).await?;
        let name = format!("fake-{i:04}");
        let lp = ListParams::default()
            .labels("app=daemon")
            .fields(&format!("spec.nodeName={name}"));
        while pods.list_metadata(&lp).await?.items.is_empty() {
            anyhow::ensure!(started.elapsed() < limit, "no daemon pod on {name}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        joins.push(started.elapsed());
    }
    joins.sort();
    println!(
        "a Ready node joins -> its daemon pod bound (5 nodes):  p50 {:.0} ms, max {:.0} ms (polled every 10 ms)",
        joins[joins.len() / 2].as_secs_f64() * 1e3,
        joins[joins.len() - 1].as_secs_f64() * 1e3
    );
    drop(server);
    Ok(())
}

pub async fn run(jobs_n: usize, nodes: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    daemonset(nodes, dir.path()).await?;
    jobs(jobs_n).await
}
