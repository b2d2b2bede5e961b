//! `berth-bench scheduler`: kube-scheduler's scheduler_perf cases at 5,000 nodes, as pods/s
//! for the pure decision and end to end (decide + bind through the HTTPS API and the store).
//! The baseline, measured in the same run, is the same scheduler made to filter and score
//! every node (`percentageOfNodesToScore: 100`), which is what a naive scheduler does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use berth_scheduler::{schedule, NodeInfo, Placement, PodInfo, Profile, Snapshot};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ApiResource, DynamicObject, ListParams, PostParams, WatchEvent, WatchParams};
use serde_json::{json, Value};

const ZONES: usize = 10;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Case {
    Basic,
    AntiAffinity,
    Spread,
    PreferredNodeAffinity,
}

impl Case {
    fn label(self) -> &'static str {
        match self {
            Case::Basic => "(a) basic pods",
            Case::AntiAffinity => "(b) required pod anti-affinity (hostname)",
            Case::Spread => "(c) topology spread, zone + hostname, DoNotSchedule",
            Case::PreferredNodeAffinity => "(d) preferred node affinity",
        }
    }

    fn letter(self) -> char {
        self.label().chars().nth(1).unwrap_or('?')
    }

    /// Pods measured, pods placed before measuring.
    fn sizes(self) -> (usize, usize) {
        match self {
            Case::Basic => (10_000, 1_000),
            Case::AntiAffinity => (2_000, 1_000),
            Case::Spread => (5_000, 1_000),
            Case::PreferredNodeAffinity => (10_000, 1_000),
        }
    }

    fn goal(self) -> Option<(f64, &'static str)> {
        match self {
            Case::Basic => Some((10_000.0, "680-810")),
            Case::AntiAffinity => Some((2_000.0, "60")),
            Case::Spread => Some((5_000.0, "460")),
            Case::PreferredNodeAffinity => None,
        }
    }
}

/// A scheduler_perf-style node: 4 cpu, 32Gi, 110 pods, a hostname and one of ten zones.
pub fn node(i: usize) -> Value {
    let name = format!("node-{i:05}");
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name,
            "topology.kubernetes.io/zone": format!("zone-{}", i % ZONES),
        }},
        "status": {
            "capacity": {"cpu": "4", "memory": "32Gi", "pods": "110"},
            "allocatable": {"cpu": "4", "memory": "32Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    })
}

pub fn pod(case: Case, name: &str) -> Value {
    let mut spec = json!({"containers": [{"name": "pause", "image": "registry.k8s.io/pause:3.10",
        "resources": {"requests": {"cpu": "100m", "memory": "500Mi"}}}]});
    let labels = json!({"app": "bench", "color": "green"});
    match case {
        Case::Basic => {}
        Case::AntiAffinity => {
            spec["affinity"] = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"color": "green"}}, "topologyKey": "kubernetes.io/hostname"}]}});
        }
        Case::Spread => {
            spec["topologySpreadConstraints"] = json!([
                {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
                 "labelSelector": {"matchLabels": {"color": "green"}}},
                {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule",
                 "labelSelector": {"matchLabels": {"color": "green"}}},
            ]);
        }
        Case::PreferredNodeAffinity => {
            spec["affinity"] = json!({"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 1, "preference": {"matchExpressions": [
                    {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["zone-1", "zone-2"]}]}}]}});
        }
    }
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "labels": labels},
           "spec": spec})
}

fn node_info(i: usize) -> NodeInfo {
    NodeInfo::from_node(&serde_json::from_value::<Node>(node(i)).expect("node"))
}

fn pod_info(case: Case, name: &str) -> PodInfo {
    PodInfo::from_pod(&serde_json::from_value::<Pod>(pod(case, name)).expect("pod"))
        .expect("compiles")
}

/// Decide and place `measured` pods on `nodes` nodes after `init` pods; pods/s.
fn decide(case: Case, nodes: usize, init: usize, measured: usize, profile: &Profile) -> f64 {
    let mut snap = Snapshot::new();
    for i in 0..nodes {
        snap.upsert_node(node_info(i));
    }
    let place =
        |snap: &mut Snapshot, name: String| match schedule(snap, &pod_info(case, &name), profile) {
            Placement::Node(n) => {
                snap.place(Arc::new(pod_info(case, &name)), &n);
            }
            Placement::Unschedulable(d) => panic!("{name}: {d}"),
        };
    for i in 0..init {
        place(&mut snap, format!("init-{i}"));
    }
    let pods: Vec<PodInfo> = (0..measured)
        .map(|i| pod_info(case, &format!("p-{i}")))
        .collect();
    let start = Instant::now();
    for p in pods {
        snap.track(&p);
        match schedule(&snap, &p, profile) {
            Placement::Node(n) => {
                snap.place(Arc::new(p), &n);
            }
            Placement::Unschedulable(d) => panic!("{}: {d}", p.name),
        }
    }
    measured as f64 / start.elapsed().as_secs_f64()
}

pub(crate) async fn create_all(api: &Api<DynamicObject>, objs: Vec<Value>) -> anyhow::Result<()> {
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(objs)
        .map(|o| {
            let api = api.clone();
            async move {
                let o: DynamicObject = serde_json::from_value(o)?;
                api.create(&PostParams::default(), &o)
                    .await
                    .map(|_| ())
                    .context("create")
            }
        })
        .buffer_unordered(50)
        .collect()
        .await;
    results.into_iter().collect()
}

fn core(kind: &str) -> ApiResource {
    ApiResource {
        group: String::new(),
        version: "v1".into(),
        api_version: "v1".into(),
        kind: kind.into(),
        plural: format!("{}s", kind.to_lowercase()),
    }
}

/// Decide + bind through the API: create the nodes and (unscheduled) pods, then start the
/// scheduler and time it until every pod is bound. Returns pods/s.
async fn end_to_end(
    case: Case,
    nodes: usize,
    pods: usize,
    sched_cfg: berth_scheduler::binder::Config,
) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let mut cfg = berth_apiserver::Config::new(dir.path().to_path_buf());
    cfg.listen = "127.0.0.1:0".parse()?;
    let server = berth_apiserver::start(cfg)
        .await
        .context("starting the API server")?;
    let client = crate::client(&server, dir.path()).await?;
    let nodes_api: Api<DynamicObject> = Api::all_with(client.clone(), &core("Node"));
    create_all(&nodes_api, (0..nodes).map(node).collect()).await?;
    let pods_api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), "default", &core("Pod"));
    let unscheduled = (0..pods).map(|i| {
        let mut p = pod(case, &format!("p-{i}"));
        p["metadata"]
            .as_object_mut()
            .expect("metadata")
            .remove("uid");
        p
    });
    create_all(&pods_api, unscheduled.collect()).await?;
    // Count binds from a watch the server filters (bound pods only), metadata only, and
    // without managedFields (the observer reads names only; its decoding shares the cores).
    let observer = crate::scheduler_client(&server, dir.path()).await?;
    let typed: Api<Pod> = Api::namespaced(observer, "default");
    let rv = typed
        .list_metadata(&ListParams::default().limit(1))
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let mut bound_watch = typed
        .watch_metadata(&WatchParams::default().fields("spec.nodeName!="), &rv)
        .await?
        .boxed();
    let sched_client = crate::scheduler_client(&server, dir.path()).await?;
    eprintln!(
        "  {}: {nodes} nodes and {pods} pods stored; starting the scheduler",
        case.label()
    );
    let start = Instant::now();
    let cpu_start = cpu_seconds();
    let sched = tokio::spawn(berth_scheduler::binder::run(sched_client, sched_cfg));
    let mut bound = std::collections::HashSet::new();
    let mut first: Option<Duration> = None;
    while bound.len() < pods {
        let ev = tokio::time::timeout(Duration::from_secs(60), bound_watch.next())
            .await
            .context("no bind for 60 s")?
            .context("the watch ended")??;
        if let WatchEvent::Added(m) | WatchEvent::Modified(m) = ev {
            bound.insert(m.metadata.name.unwrap_or_default());
            first.get_or_insert_with(|| start.elapsed());
        }
    }
    let first = first.unwrap_or_default();
    let wall = start.elapsed();
    let cpus = (cpu_seconds() - cpu_start) / wall.as_secs_f64();
    let events_api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), "default", &core("Event"));
    let events = events_api
        .list_metadata(&ListParams::default())
        .await?
        .items
        .len();
    eprintln!(
        "  {}: first bind after {:.0} ms (the scheduler's initial list of {nodes} nodes and {pods} pods), then {:.0} pods/s; {cpus:.2} CPUs busy (server, scheduler and this watch in one process); {events} Events written by then",
        case.label(),
        first.as_secs_f64() * 1e3,
        pods as f64 / (wall - first).as_secs_f64(),
    );
    let rate = pods as f64 / start.elapsed().as_secs_f64();
    sched.abort();
    server.shutdown().await;
    Ok(rate)
}

/// CPU time this process has used, user and system, from `/proc/self/stat`.
fn cpu_seconds() -> f64 {
    cpu_of("self")
}

/// CPU time process `pid` (`self` for this one) has used, user and system, from
/// `/proc/<pid>/stat`.
pub(crate) fn cpu_of(pid: &str) -> f64 {
    stat_seconds(pid, 2)
}

/// [`cpu_of`] with the CPU time of the children it has reaped.
pub(crate) fn cpu_with_children_of(pid: &str) -> f64 {
    stat_seconds(pid, 4)
}

/// The sum of `fields` CPU times from utime on (utime, stime, cutime, cstime) in
/// `/proc/<pid>/stat`, in seconds.
fn stat_seconds(pid: &str, fields: usize) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let ticks: u64 = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().skip(11).take(fields))
        .into_iter()
        .flatten()
        .filter_map(|t| t.parse::<u64>().ok())
        .sum();
    ticks as f64 / USER_HZ
}

/// Clock ticks per second of /proc's CPU times: 100 on every Linux this runs on.
pub(crate) const USER_HZ: f64 = 100.0;

/// Rates from `runs` runs: their median, and their range (this machine's runs differ by a
/// quarter from one to the next, so one run is not a figure).
struct Rates(Vec<f64>);

impl std::fmt::Display for Rates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = &self.0;
        write!(f, "{:>7.0} pods/s", r[r.len() / 2])?;
        if r.len() > 1 {
            write!(
                f,
                " (median of {}, {:.0}-{:.0})",
                r.len(),
                r[0],
                r[r.len() - 1]
            )?;
        }
        Ok(())
    }
}

async fn median<F, Fut>(runs: usize, mut run: F) -> anyhow::Result<Rates>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<f64>>,
{
    let mut rates = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        rates.push(run().await?);
    }
    rates.sort_by(f64::total_cmp);
    Ok(Rates(rates))
}

/// `runs`: end-to-end runs per case (0: the pure decision only).
pub async fn run(nodes: usize, runs: usize, only: &str) -> anyhow::Result<()> {
    println!(
        "berth-bench scheduler: {nodes} nodes (4 cpu, 32Gi, 110 pods, {ZONES} zones), {} CPUs",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!("baseline: the same scheduler filtering and scoring every node (percentageOfNodesToScore 100)");
    println!();
    let full = Profile {
        percentage_of_nodes_to_score: Some(100),
        ..Default::default()
    };
    let cases = [
        Case::Basic,
        Case::AntiAffinity,
        Case::Spread,
        Case::PreferredNodeAffinity,
    ];
    for case in cases {
        if !only.contains(case.letter()) {
            continue;
        }
        let (measured, init) = case.sizes();
        let ours = decide(case, nodes, init, measured, &Profile::default());
        let base = decide(case, nodes, init, measured.min(2_000), &full);
        let mut line = format!(
            "{:<52} decide {:>9.0} pods/s   full-scan baseline {:>8.0} pods/s ({:.1}x)",
            case.label(),
            ours,
            base,
            ours / base
        );
        if runs > 0 {
            let e2e = median(runs, || {
                end_to_end(case, nodes, measured, Default::default())
            })
            .await?;
            line.push_str(&format!("   end to end {e2e}"));
            if case == Case::Basic {
                // The same with an Event budget no burst exhausts: what the Events cost.
                let unlimited = berth_scheduler::binder::Config {
                    events: berth_scheduler::binder::EventBudget {
                        per_second: f64::INFINITY,
                        burst: f64::INFINITY,
                    },
                    ..Default::default()
                };
                let all = median(runs, || {
                    end_to_end(case, nodes, measured, unlimited.clone())
                })
                .await?;
                line.push_str(&format!(" ({all} with no Event budget)"));
            }
            if let Some((goal, kube)) = case.goal() {
                line.push_str(&format!(
                    " (goal {goal:.0}; kube-scheduler's published floor {kube})"
                ));
            }
        }
        println!("{line}");
    }
    if !only.contains('s') {
        return Ok(());
    }
    println!();
    println!("cost per pod as the cluster grows, (a) basic pods, pure decision:");
    for n in [500, 5_000, 20_000] {
        let rate = decide(Case::Basic, n, 1_000, 10_000, &Profile::default());
        let base = decide(Case::Basic, n, 1_000, 2_000, &full);
        println!(
            "  {n:>6} nodes: {:>7.1} us/pod (full scan {:>8.1} us/pod)",
            1e6 / rate,
            1e6 / base
        );
    }
    Ok(())
}
