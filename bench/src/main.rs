//! `berth-bench apiserver`: durable creates/s through the HTTPS API with 1 and 50 clients
//! (p50/p99 latency), against the store alone as the baseline measured in the same run; and
//! watch fan-out: the time until 100 watchers have all seen one write; and what RBAC costs
//! (see [`authz`]); then the same on etcd, and the failover of servers on it (see [`ha`]).
//! `berth-bench scheduler`: see [`scheduler`]. `berth-bench agent`: see [`agent`].
//! `berth-bench instances`: see [`instances`]. `berth-bench failover`: see [`failover`].
//! `berth-bench autoscale`: see [`autoscale`]. `berth-bench network`: see [`network`].
//! `berth-bench workloads`: see [`workloads`].

mod agent;
mod authz;
mod autoscale;
mod failover;
mod ha;
mod instances;
mod network;
mod scheduler;
mod vnode;
mod workloads;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

/// glibc's malloc spends a tenth of the API server's CPU under load on arena contention.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
use berth_store::{SqliteOptions, SqliteStore, Store};
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams, WatchEvent, WatchParams};

#[derive(Parser)]
struct Cli {
    /// Which benchmark: `apiserver`, `scheduler`, `agent` (`agent-memory` for its memory part alone), `instances`, `failover`, `autoscale`, `network`, `vnode` (`vnode-warm` for its warm burst alone) or `workloads`.
    which: String,
    /// Creates per run.
    #[arg(long, default_value_t = 20_000)]
    creates: usize,
    /// Watchers for the fan-out figure.
    #[arg(long, default_value_t = 100)]
    watchers: usize,
    /// Nodes for the scheduler benchmark.
    #[arg(long, default_value_t = 5_000)]
    nodes: usize,
    /// Scheduler benchmark: the pure decision only, no API.
    #[arg(long)]
    decide_only: bool,
    /// Scheduler benchmark: end-to-end runs per case; the median is reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Scheduler benchmark: which cases (a, b, c, d) and whether the scaling figures (s).
    #[arg(long, default_value = "abcds")]
    cases: String,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

struct Run {
    per_sec: f64,
    p50: Duration,
    p99: Duration,
}

fn report(label: &str, r: &Run) {
    println!(
        "{label:<44} {:>9.0} creates/s   p50 {:>7.2} ms   p99 {:>7.2} ms",
        r.per_sec,
        r.p50.as_secs_f64() * 1e3,
        r.p99.as_secs_f64() * 1e3
    );
}

/// `total` creates split over `clients` concurrent loops, each timed.
async fn run_concurrent<F, Fut>(clients: usize, total: usize, make: F) -> anyhow::Result<Run>
where
    F: Fn(usize, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let per = total / clients;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let make = make.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            for i in 0..per {
                let t = Instant::now();
                make(c, i).await?;
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::with_capacity(total);
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = start.elapsed();
    all.sort();
    Ok(Run {
        per_sec: all.len() as f64 / elapsed.as_secs_f64(),
        p50: percentile(&all, 0.50),
        p99: percentile(&all, 0.99),
    })
}

async fn store_baseline(clients: usize, total: usize) -> anyhow::Result<Run> {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(SqliteStore::open(
        dir.path().join("b.db"),
        SqliteOptions::default(),
    )?);
    let value = br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x","namespace":"default","uid":"00000000-0000-0000-0000-000000000000","creationTimestamp":"2026-01-01T00:00:00Z"},"data":{"k":"v"}}"#;
    run_concurrent(clients, total, move |c, i| {
        let store = store.clone();
        async move {
            store
                .create(
                    &format!("/registry/configmaps/default/c{c}-{i}"),
                    value.to_vec(),
                )
                .await?;
            Ok(())
        }
    })
    .await
}

async fn api_creates(
    api: Api<ConfigMap>,
    tag: &str,
    clients: usize,
    total: usize,
) -> anyhow::Result<Run> {
    let tag = tag.to_string();
    run_concurrent(clients, total, move |c, i| {
        let api = api.clone();
        let tag = tag.clone();
        async move {
            let cm = ConfigMap {
                metadata: kube::api::ObjectMeta {
                    name: Some(format!("{tag}-{c}-{i}")),
                    ..Default::default()
                },
                data: Some(BTreeMap::from([("k".to_string(), "v".to_string())])),
                ..Default::default()
            };
            api.create(&PostParams::default(), &cm).await?;
            Ok(())
        }
    })
    .await
}

async fn client(
    server: &berth_apiserver::Server,
    dir: &std::path::Path,
) -> anyhow::Result<kube::Client> {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        berth_apiserver::kubeconfig(&server.url(), &server.ca_pem, &server.tokens.admin),
    )?;
    let kc = kube::config::Kubeconfig::read_from(&path)?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    Ok(kube::Client::try_from(cfg)?)
}

/// A client as `berth server`'s scheduler has one: it asks for objects without
/// managedFields, which it never reads.
async fn scheduler_client(
    server: &berth_apiserver::Server,
    dir: &std::path::Path,
) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(dir.join("kubeconfig"))?;
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    let _ = server;
    cfg.headers.push((
        http::HeaderName::from_static(berth_core::fields::OMIT_MANAGED_FIELDS),
        http::HeaderValue::from_static("true"),
    ));
    cfg.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static("berth-scheduler"),
    ));
    Ok(kube::Client::try_from(cfg)?)
}

async fn apiserver(cli: &Cli) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cfg = berth_apiserver::Config::new(dir.path().to_path_buf());
    cfg.listen = "127.0.0.1:0".parse()?;
    let server = berth_apiserver::start(cfg)
        .await
        .context("starting the API server")?;
    let api: Api<ConfigMap> = Api::namespaced(client(&server, dir.path()).await?, "default");
    println!(
        "berth-bench apiserver: {} creates per run, SQLite WAL synchronous=FULL, {} CPUs",
        cli.creates,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!();
    let single_n = (cli.creates / 10).max(500);
    let base1 = store_baseline(1, single_n).await?;
    report("store alone, 1 writer (baseline)", &base1);
    let api1 = api_creates(api.clone(), "one", 1, single_n).await?;
    report("HTTPS API, 1 client", &api1);
    let base50 = store_baseline(50, cli.creates).await?;
    report("store alone, 50 writers (baseline)", &base50);
    let api50 = api_creates(api.clone(), "fifty", 50, cli.creates).await?;
    report("HTTPS API, 50 clients", &api50);
    println!();
    println!(
        "API / store: {:.2} with 1 client, {:.2} with 50",
        api1.per_sec / base1.per_sec,
        api50.per_sec / base50.per_sec
    );
    println!(
        "50 clients / 1 client through the API: {:.1}x (group commit shares fsyncs)",
        api50.per_sec / api1.per_sec
    );
    println!(
        "etcd's published figure for comparison (not measured here): 583 creates/s with one client"
    );
    authz::run(&server, dir.path(), api.clone(), cli.creates).await?;

    let (p50, max) = fanout(&api, cli.watchers).await?;
    println!();
    println!(
        "watch fan-out, {} watchers, write -> all have seen it: p50 {:.2} ms, max {:.2} ms (5 rounds)",
        cli.watchers,
        p50.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
    server.shutdown().await;
    ha::run(cli, [&api1, &api50], (p50, max)).await
}

/// Watch fan-out: over 5 rounds, the time from one create until `watchers` watchers have
/// all seen it; p50 and max.
async fn fanout(api: &Api<ConfigMap>, watchers: usize) -> anyhow::Result<(Duration, Duration)> {
    let mut fanout = Vec::new();
    for round in 0..5 {
        let rv = api
            .list(&kube::api::ListParams::default().limit(1))
            .await?
            .metadata
            .resource_version
            .unwrap_or_default();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
        let mut handles = Vec::new();
        let target = format!("fan-{round}");
        for _ in 0..watchers {
            let api = api.clone();
            let tx = tx.clone();
            let rv = rv.clone();
            let target = target.clone();
            let stream = api.watch(&WatchParams::default().timeout(60), &rv).await?;
            handles.push(tokio::spawn(async move {
                let mut stream = stream.boxed();
                while let Some(ev) = stream.next().await {
                    if let Ok(WatchEvent::Added(cm)) = ev {
                        if cm.metadata.name.as_deref() == Some(target.as_str()) {
                            let _ = tx.send(Instant::now());
                            return;
                        }
                    }
                }
            }));
        }
        drop(tx);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let start = Instant::now();
        api.create(
            &PostParams::default(),
            &ConfigMap {
                metadata: kube::api::ObjectMeta {
                    name: Some(target),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await?;
        let mut last = start;
        let mut seen = 0;
        while let Some(t) = rx.recv().await {
            seen += 1;
            last = last.max(t);
        }
        anyhow::ensure!(
            seen == watchers,
            "only {seen} of {watchers} watchers saw the write"
        );
        fanout.push(last - start);
        for h in handles {
            h.abort();
        }
    }
    fanout.sort();
    Ok((
        percentile(&fanout, 0.5),
        fanout.last().copied().unwrap_or_default(),
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.which.as_str() {
        "apiserver" => apiserver(&cli).await,
        "scheduler" => {
            scheduler::run(
                cli.nodes,
                if cli.decide_only { 0 } else { cli.runs },
                &cli.cases,
            )
            .await
        }
        "agent" => agent::run(100, 20).await,
        "agent-memory" => agent::memory(20).await,
        "instances" => instances::run(100).await,
        "failover" => failover::run(10).await,
        "autoscale" => autoscale::run(5).await,
        "network" => network::run().await,
        "vnode" => vnode::run(100).await,
        "vnode-warm" => vnode::warm(100).await,
        "workloads" => workloads::run(1_000, 500).await,
        other => {
            anyhow::bail!(
                "unknown benchmark {other:?}: try `apiserver`, `scheduler`, `agent` (`agent-memory` for its memory part alone), `instances`, `failover`, `autoscale`, `network`, `vnode` (`vnode-warm` for its warm burst alone) or `workloads`"
            )
        }
    }
}
