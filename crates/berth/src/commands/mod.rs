pub mod agent;
pub mod container;
pub mod front;
pub mod instances;
pub mod kubeconfig;
pub mod server;
pub mod token;
pub mod up;

use std::path::PathBuf;

/// The data dir when none is given: `$BERTH_DATA_DIR`, else `~/.berth`.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("BERTH_DATA_DIR") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".berth")
}

/// Arguments every server-side command shares.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Where state, TLS material and tokens live.
    #[arg(long, default_value_os_t = default_data_dir())]
    pub data_dir: PathBuf,
    /// Address to serve the Kubernetes API on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub listen: std::net::SocketAddr,
    /// Extra DNS names or IPs for the server certificate.
    #[arg(long = "tls-san")]
    pub tls_sans: Vec<String>,
    /// Watch events kept for clients to resume from; older resourceVersions answer 410.
    #[arg(long, default_value_t = 100_000)]
    pub watch_history: usize,
    /// Seconds between BOOKMARK events on idle watches.
    #[arg(long, default_value_t = 10)]
    pub bookmark_seconds: u64,
    /// The address of the cluster DNS Service (`kube-system/kube-dns`), in 10.96.0.0/24;
    /// agents are given the same with their own `--cluster-dns`.
    #[arg(long, default_value = "10.96.0.10")]
    pub cluster_dns: std::net::Ipv4Addr,
    /// The address of the `default/kubernetes` Service (the API server as pods reach it), in
    /// 10.96.0.0/24; clusters sharing a host each take their own.
    #[arg(long, default_value = "10.96.0.1")]
    pub kubernetes_service_ip: std::net::Ipv4Addr,
    /// The address pods and the other servers reach this server at (the `kubernetes`
    /// Service's endpoints); by default the `--listen` address, or 127.0.0.1 for 0.0.0.0.
    #[arg(long)]
    pub advertise_address: Option<std::net::IpAddr>,
    /// Where state lives: `sqlite` (one file in the data dir, one server) or
    /// `etcd://host:2379[,host:2379...]` (an etcd cluster every server on it shares; give
    /// each the same CA and tokens: copy one data dir's `pki/` and `tokens.json`).
    #[arg(long, default_value = "sqlite")]
    pub store: String,
    /// PEM of the CA of etcd's members (TLS to etcd).
    #[arg(long)]
    pub etcd_ca: Option<PathBuf>,
    /// PEM of a client certificate for etcd, with `--etcd-key`.
    #[arg(long, requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    #[arg(long, requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
}

impl ServeArgs {
    pub fn config(&self) -> anyhow::Result<berth_apiserver::Config> {
        let mut cfg = berth_apiserver::Config::new(self.data_dir.clone());
        cfg.listen = self.listen;
        cfg.tls_sans = self.tls_sans.clone();
        cfg.watch_history = self.watch_history;
        cfg.bookmark_every = std::time::Duration::from_secs(self.bookmark_seconds.max(1));
        cfg.cluster_dns = self.cluster_dns;
        anyhow::ensure!(
            berth_apiserver::registry::is_system_address(self.kubernetes_service_ip),
            "--kubernetes-service-ip {}: give an address in 10.96.0.0/24 (kept for the system Services)",
            self.kubernetes_service_ip
        );
        cfg.kubernetes_ip = self.kubernetes_service_ip;
        cfg.advertise_address = self.advertise_address;
        cfg.etcd = self.etcd()?;
        Ok(cfg)
    }

    /// The etcd cluster `--store` names, if it names one.
    fn etcd(&self) -> anyhow::Result<Option<berth_store::EtcdOptions>> {
        use anyhow::Context;
        if self.store == "sqlite" {
            anyhow::ensure!(
                self.etcd_ca.is_none() && self.etcd_cert.is_none(),
                "--etcd-ca and --etcd-cert go with --store etcd://..."
            );
            return Ok(None);
        }
        let Some(list) = self.store.strip_prefix("etcd://") else {
            anyhow::bail!(
                "--store {:?}: give `sqlite` or `etcd://host:port[,host:port...]`",
                self.store
            );
        };
        let endpoints: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(String::from)
            .collect();
        anyhow::ensure!(
            !endpoints.is_empty(),
            "--store etcd:// names no member: give etcd://host:port[,host:port...]"
        );
        let read =
            |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        Ok(Some(berth_store::EtcdOptions {
            endpoints,
            ca: self.etcd_ca.as_ref().map(read).transpose()?,
            identity: match (&self.etcd_cert, &self.etcd_key) {
                (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
                _ => None,
            },
        }))
    }
}

/// Where a node reaches the API, from its `--server`: the one URL given, or for several
/// (comma-separated) the URL of a local front (`berth_agent::front`) that passes each
/// connection on to the first of them that answers; the front runs while the returned
/// guard lives.
pub async fn api_url(list: &str) -> anyhow::Result<(String, Option<berth_agent::front::Front>)> {
    use anyhow::Context;
    let servers =
        berth_agent::front::servers(list).map_err(|e| anyhow::anyhow!("--server: {e}"))?;
    if servers.len() == 1 {
        return Ok((list.trim().trim_matches(',').trim().to_string(), None));
    }
    let front = berth_agent::front::start(([127, 0, 0, 1], 0).into(), servers.clone())
        .await
        .context("opening a local front for the API servers")?;
    tracing::info!(front = %front.addr, ?servers, "reaching the API servers through a local front");
    Ok((front.url(), Some(front)))
}

/// Wait for Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Run the clean-up of an orderly stop (warm sandboxes, the instances service), for at most
/// 30 s; a second Ctrl-C or SIGTERM stops waiting for it.
pub async fn clean_up(work: impl std::future::Future<Output = ()>) {
    tokio::select! {
        _ = work => {}
        _ = shutdown_signal() => tracing::warn!("a second signal: stopping without finishing the clean-up"),
        _ = tokio::time::sleep(std::time::Duration::from_secs(30)) => {
            tracing::warn!("the clean-up took more than 30 s: stopping without it")
        }
    }
}

/// How the in-process scheduler scores nodes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchedulerScoring {
    /// Spread pods over the emptiest nodes (Kubernetes' default).
    Spread,
    /// Pack pods onto the fullest nodes that fit.
    Binpack,
}

/// Control-plane loops that run beside the API server, as API clients of it.
#[derive(clap::Args, Debug, Clone)]
pub struct ControlArgs {
    /// Scheduler profile: `spread` (least allocated) or `binpack` (most allocated).
    #[arg(long, value_enum, default_value_t = SchedulerScoring::Spread)]
    pub scheduler_scoring: SchedulerScoring,
    /// How long the control plane's leader Lease lasts unrenewed; the scheduler and the
    /// controllers run only on the server that holds it (renewed every lease/7 s).
    #[arg(long, default_value_t = 15)]
    pub leader_lease_seconds: u64,
    /// The pod network of the whole cluster; each node gets a block of it.
    #[arg(long, default_value = "10.42.0.0/16")]
    pub cluster_cidr: berth_controllers::nodeipam::Cidr,
    /// The prefix length of each node's block of the cluster CIDR.
    #[arg(long, default_value_t = 24)]
    pub node_cidr_mask_size: u8,
}

impl ControlArgs {
    /// What the controllers are told, checked: called before anything starts, so a bad flag
    /// changes nothing.
    pub fn settings(&self) -> anyhow::Result<berth_controllers::Settings> {
        use anyhow::Context;
        Ok(berth_controllers::Settings {
            pod_cidrs: berth_controllers::nodeipam::Settings::new(
                self.cluster_cidr,
                self.node_cidr_mask_size,
            )
            .context("checking --cluster-cidr and --node-cidr-mask-size")?,
            root_ca: String::new(),
        })
    }
}

/// A client configuration for `server` with its admin token.
pub async fn admin_config(server: &berth_apiserver::Server) -> anyhow::Result<kube::Config> {
    use anyhow::Context;
    let yaml = berth_apiserver::kubeconfig(&server.url(), &server.ca_pem, &server.tokens.admin);
    let kubeconfig =
        kube::config::Kubeconfig::from_yaml(&yaml).context("reading our kubeconfig")?;
    kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .context("building an API client with the admin token")
}

/// Start the scheduler and the other control loops against `server` with the admin token;
/// they run until the returned task is aborted.
pub async fn start_control_plane(
    server: &berth_apiserver::Server,
    data_dir: &std::path::Path,
    args: &ControlArgs,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use anyhow::Context;
    let settings = berth_controllers::Settings {
        root_ca: server.ca_pem.clone(),
        ..args.settings()?
    };
    let config = admin_config(server).await?;
    let client = kube::Client::try_from(config.clone())
        .context("building the control plane's API client")?;
    let cfg = berth_scheduler::binder::Config {
        profile: berth_scheduler::Profile {
            scoring: match args.scheduler_scoring {
                SchedulerScoring::Spread => berth_scheduler::Scoring::LeastAllocated,
                SchedulerScoring::Binpack => berth_scheduler::Scoring::MostAllocated,
            },
            ..Default::default()
        },
        ..Default::default()
    };
    cfg.metrics.register(
        &mut server
            .telemetry
            .registry
            .write()
            .expect("the metrics registry"),
    );
    // Who this server is in the leader election: stable across its restarts (so a restarted
    // server resumes its own Lease at once), distinct between servers.
    let identity = berth_apiserver::identity(data_dir);
    let lease = std::time::Duration::from_secs(args.leader_lease_seconds.max(1));
    let election = berth_controllers::leader::Config::with_lease(identity, lease);
    // Each term gets a client of its own, so nothing of a term that was stopped (watches,
    // connections) carries into the next.
    // Each loop names itself in its User-Agent, which is the field manager of what it writes
    // (as kube-scheduler's and kube-controller-manager's are).
    let named = move |name: &'static str| {
        let mut c = config.clone();
        c.headers.push((
            http::header::USER_AGENT,
            http::HeaderValue::from_static(name),
        ));
        c.headers.push((
            http::HeaderName::from_static(berth_core::fields::OMIT_MANAGED_FIELDS),
            http::HeaderValue::from_static("true"),
        ));
        kube::Client::try_from(c)
    };
    let work = move || {
        let clients = named(concat!(
            "berth-controller-manager/",
            env!("CARGO_PKG_VERSION")
        ))
        .and_then(|c| {
            Ok((
                c,
                named(concat!("berth-scheduler/", env!("CARGO_PKG_VERSION")))?,
            ))
        });
        let cfg = cfg.clone();
        let settings = settings.clone();
        async move {
            let (client, scheduler_client) = match clients {
                Ok(c) => c,
                Err(e) => {
                    return tracing::error!(error = %e, "building the control plane's API client")
                }
            };
            let controllers = async {
                if let Err(e) = berth_controllers::run(client.clone(), settings).await {
                    tracing::error!(error = %format!("{e:#}"), "the controllers stopped");
                }
            };
            let scheduler = async {
                if let Err(e) = berth_scheduler::binder::run(scheduler_client, cfg).await {
                    tracing::error!(error = %format!("{e:#}"), "the scheduler stopped");
                }
            };
            futures::join!(controllers, scheduler);
        }
    };
    Ok(tokio::spawn(berth_controllers::leader::run(
        client, election, work,
    )))
}
pub mod vnode;
