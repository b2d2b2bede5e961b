//! The second half of `berth-bench apiserver`: the same figures on etcd (three members on
//! this machine, Debian's `etcd-server`) next to SQLite's from the same run, and the
//! failover of servers on it: three `berth server` processes (release build) on the etcd,
//! a client writing through a front over them (`berth_agent::front`, what agents use); per
//! trial the server leading the control plane is killed -9, and the clock runs until the
//! client's first acknowledged create, and until another server holds the control plane's
//! Lease (bounded by `--leader-lease-seconds`, 15 s by default, as Kubernetes').

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};

use crate::failover::{berth_bin, spawn_until, Killed};
use crate::{api_creates, fanout, percentile, report, Run};

const TRIALS: usize = 10;

pub async fn run(
    cli: &crate::Cli,
    sqlite: [&Run; 2],
    sqlite_fanout: (Duration, Duration),
) -> anyhow::Result<()> {
    let members = berth_store::local_etcd::cluster(3);
    let endpoints: Vec<String> = members
        .iter()
        .map(|m| m.client_url.trim_start_matches("http://").to_string())
        .collect();
    let dir = tempfile::tempdir()?;
    let mut cfg = berth_apiserver::Config::new(dir.path().join("inproc"));
    cfg.listen = "127.0.0.1:0".parse()?;
    cfg.etcd = Some(berth_store::EtcdOptions {
        endpoints: endpoints.clone(),
        ..Default::default()
    });
    std::fs::create_dir_all(&cfg.data_dir)?;
    let server = start_when_etcd_answers(cfg).await?;
    let api: Api<ConfigMap> = Api::namespaced(
        crate::client(&server, &dir.path().join("inproc")).await?,
        "default",
    );
    println!();
    println!("on etcd: three members on this machine (one disk), the same API server in-process");
    let single_n = (cli.creates / 10).max(500);
    let api1 = api_creates(api.clone(), "etcd-one", 1, single_n).await?;
    report("etcd: HTTPS API, 1 client", &api1);
    let api50 = api_creates(api.clone(), "etcd-fifty", 50, cli.creates).await?;
    report("etcd: HTTPS API, 50 clients", &api50);
    println!(
        "etcd / SQLite: {:.2} with 1 client, {:.2} with 50 (etcd's published figures, three \
         dedicated machines: 583/s for 1 client, 44-50k/s for 1,000)",
        api1.per_sec / sqlite[0].per_sec,
        api50.per_sec / sqlite[1].per_sec
    );
    let (p50, max) = fanout(&api, cli.watchers).await?;
    println!(
        "etcd: watch fan-out, {} watchers: p50 {:.2} ms, max {:.2} ms (SQLite: p50 {:.2} ms, max {:.2} ms)",
        cli.watchers,
        p50.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
        sqlite_fanout.0.as_secs_f64() * 1e3,
        sqlite_fanout.1.as_secs_f64() * 1e3,
    );
    server.shutdown().await;

    failover(dir.path(), &endpoints).await
}

/// The in-process server, once the new etcd cluster has chosen a leader.
async fn start_when_etcd_answers(
    cfg: berth_apiserver::Config,
) -> anyhow::Result<berth_apiserver::Server> {
    let mut last = None;
    for _ in 0..50 {
        match berth_apiserver::start(cfg.clone()).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(last.expect("tried")).context("starting the API server on etcd")
}

/// `berth server` on `dir` at `listen`, its URL once it serves.
fn server(bin: &Path, dir: &Path, listen: &str, store: &str) -> anyhow::Result<(Killed, String)> {
    let mut cmd = Command::new(bin);
    cmd.args(["server", "--data-dir"])
        .arg(dir)
        .args(["--listen", listen, "--store", store])
        .args(["--cluster-cidr", "10.236.0.0/16"]);
    spawn_until(cmd, "berth server listening on ")
}

async fn failover(root: &Path, endpoints: &[String]) -> anyhow::Result<()> {
    let bin = berth_bin()?;
    let store = format!("etcd://{}", endpoints.join(","));
    let dirs: Vec<_> = (0..3).map(|i| root.join(format!("s{i}"))).collect();
    let mut servers = Vec::new();
    let mut addrs = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        std::fs::create_dir_all(d)?;
        if i > 0 {
            copy_secrets(&dirs[0], d)?;
        }
        let (child, url) = server(&bin, d, "127.0.0.1:0", &store)?;
        addrs.push(url.trim_start_matches("https://").to_string());
        servers.push(Some(child));
    }
    let front = berth_agent::front::start(([127, 0, 0, 1], 0).into(), addrs.clone()).await?;
    let kubeconfig = root.join("front.kubeconfig");
    let ca = std::fs::read_to_string(dirs[0].join("pki/ca.pem"))?;
    let tokens = berth_apiserver::Tokens::load_or_create(&dirs[0].join("tokens.json"))?;
    std::fs::write(
        &kubeconfig,
        berth_apiserver::kubeconfig(&front.url(), &ca, &tokens.admin),
    )?;
    let kc = kube::config::Kubeconfig::read_from(&kubeconfig)?;
    let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    config.read_timeout = Some(Duration::from_secs(5));
    let client = kube::Client::try_from(config)?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let leases: Api<Lease> = Api::namespaced(client, "kube-system");
    let holder = |l: Lease| l.spec.and_then(|s| s.holder_identity).unwrap_or_default();

    let mut api_back = Vec::new();
    let mut takeover = Vec::new();
    for trial in 0..TRIALS {
        // Whoever leads now.
        let leader = loop {
            if let Ok(l) = leases.get("berth-control-plane").await {
                let h = holder(l);
                if let Some(i) = dirs
                    .iter()
                    .position(|d| h.ends_with(&format!("{}", d.display())))
                {
                    break (i, h);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        servers[leader.0] = None; // kill -9
        let killed = Instant::now();
        let mut n = 0;
        loop {
            n += 1;
            let cm = ConfigMap {
                metadata: kube::api::ObjectMeta {
                    name: Some(format!("failover-{trial}-{n}")),
                    ..Default::default()
                },
                data: Some(BTreeMap::from([("k".into(), "v".into())])),
                ..Default::default()
            };
            if cms.create(&PostParams::default(), &cm).await.is_ok() {
                api_back.push(killed.elapsed());
                break;
            }
            anyhow::ensure!(
                killed.elapsed() < Duration::from_secs(60),
                "no write within 60 s of killing the leading server"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        loop {
            if let Ok(l) = leases.get("berth-control-plane").await {
                if holder(l) != leader.1 {
                    takeover.push(killed.elapsed());
                    break;
                }
            }
            anyhow::ensure!(
                killed.elapsed() < Duration::from_secs(120),
                "no new leader within 120 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Back on its own address for the next trial.
        let (child, _) = server(&bin, &dirs[leader.0], &addrs[leader.0], &store)?;
        servers[leader.0] = Some(child);
    }
    api_back.sort();
    takeover.sort();
    println!();
    println!(
        "failover, {TRIALS} trials, three servers on etcd, the leading one killed -9; a client through a front:"
    );
    println!(
        "  kill -> first acknowledged create: p50 {:.0} ms, max {:.0} ms (goal <= 5 s)",
        percentile(&api_back, 0.5).as_secs_f64() * 1e3,
        api_back.last().unwrap().as_secs_f64() * 1e3
    );
    println!(
        "  kill -> another server leads the control plane: p50 {:.1} s, max {:.1} s (--leader-lease-seconds 15)",
        percentile(&takeover, 0.5).as_secs_f64(),
        takeover.last().unwrap().as_secs_f64()
    );
    Ok(())
}

fn copy_secrets(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to.join("pki"))?;
    for entry in std::fs::read_dir(from.join("pki"))? {
        let entry = entry?;
        std::fs::copy(entry.path(), to.join("pki").join(entry.file_name()))?;
    }
    std::fs::copy(from.join("tokens.json"), to.join("tokens.json"))?;
    Ok(())
}
