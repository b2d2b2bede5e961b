//! Berth's Kubernetes-compatible API server.
//!
//! Start at [`start`]: it opens the store, makes the TLS material and tokens, and serves
//! HTTPS. A request goes [`http::handle`] (parse and route, authenticate) →
//! [`registry::Registry`] (Kubernetes semantics: defaults, validation, resourceVersion,
//! deletion, list and watch) → `berth_store::Store`. [`discovery`] answers `/api`, `/apis`
//! and OpenAPI; [`format`] shapes responses (lists, Tables).

pub mod auth;
pub mod authz;
pub mod discovery;
pub mod format;
pub mod http;
pub mod metrics;
pub mod portforward;
mod protobuf;
pub mod proxy;
pub mod registry;
pub mod spdy;
pub mod status;
pub mod telemetry;
mod tokenrequest;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use berth_store::{EtcdOptions, EtcdStore, SqliteOptions, SqliteStore, Store, StoreError};
use tokio::net::TcpListener;

pub use auth::Tokens;
pub use registry::Registry;

/// How to run the API server.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Extra names and addresses the server certificate must cover.
    pub tls_sans: Vec<String>,
    /// Events kept for watches to resume from.
    pub watch_history: usize,
    /// How often an idle watch gets a BOOKMARK.
    pub bookmark_every: Duration,
    /// The address of the `kube-system/kube-dns` Service (the agents' `--cluster-dns`).
    pub cluster_dns: std::net::Ipv4Addr,
    /// The address of the `default/kubernetes` Service, in 10.96.0.0/24.
    pub kubernetes_ip: std::net::Ipv4Addr,
    /// The address pods and the other servers reach this one at (`default/kubernetes`'s
    /// endpoints): by default the listening address, or 127.0.0.1 when that is 0.0.0.0.
    pub advertise_address: Option<std::net::IpAddr>,
    /// How long this server's Lease among the servers holds unrenewed (renewed every
    /// third of it): a server killed outright leaves the `kubernetes` endpoints after this.
    pub peer_lease: Duration,
    /// Keep state in this etcd cluster (shared by every server on it) instead of SQLite in
    /// the data dir.
    pub etcd: Option<EtcdOptions>,
}

impl Config {
    pub fn new(data_dir: PathBuf) -> Self {
        Config {
            data_dir,
            listen: "127.0.0.1:6443".parse().expect("valid address"),
            tls_sans: Vec::new(),
            watch_history: SqliteOptions::default().history,
            bookmark_every: Duration::from_secs(10),
            cluster_dns: std::net::Ipv4Addr::new(10, 96, 0, 10),
            kubernetes_ip: registry::KUBERNETES_IP,
            advertise_address: None,
            peer_lease: Duration::from_secs(10),
            etcd: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("opening the store failed")]
    Store(#[source] StoreError),
    #[error("preparing TLS failed")]
    Tls(#[source] berth_tls::TlsError),
    #[error("loading the tokens failed")]
    Tokens(#[source] auth::TokenError),
    #[error(
        "listening on {addr} failed (is another server using the port? pick another with --listen)"
    )]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("creating the initial namespaces and Services failed: {0}")]
    Bootstrap(status::ApiError),
}

/// A running API server.
pub struct Server {
    /// The address it listens on (the real port when asked for port 0).
    pub addr: SocketAddr,
    /// The cluster CA, PEM.
    pub ca_pem: String,
    pub tokens: Tokens,
    pub registry: Registry,
    accept: tokio::task::JoinHandle<()>,
    /// The SQLite store to close at shutdown; none on etcd.
    sqlite: Option<Arc<SqliteStore>>,
    /// Compacts etcd's history (on etcd).
    history: Option<tokio::task::JoinHandle<()>>,
    /// This server among the servers on the store, and the task renewing its Lease.
    pub peer: registry::peers::Peer,
    peering: tokio::task::JoinHandle<()>,
    /// What `/metrics` serves; other parts of the process register theirs here.
    pub telemetry: telemetry::Telemetry,
}

impl Server {
    /// The `https://host:port` clients should use.
    pub fn url(&self) -> String {
        let host = match self.addr.ip() {
            ip if ip.is_unspecified() => "127.0.0.1".to_string(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        format!("https://{host}:{}", self.addr.port())
    }

    /// Leave the `kubernetes` endpoints (for at most 2 s), stop accepting, and close the
    /// store after its last commit.
    pub async fn shutdown(self) {
        self.peering.abort();
        let leave = registry::peers::leave(&self.registry, &self.peer);
        match tokio::time::timeout(Duration::from_secs(2), leave).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e.message, "taking this server out of the kubernetes endpoints")
            }
            Err(_) => {
                tracing::warn!("taking this server out of the kubernetes endpoints took over 2 s")
            }
        }
        self.accept.abort();
        if let Some(h) = self.history {
            h.abort();
        }
        if let Some(s) = self.sqlite {
            s.close();
        }
    }
}

fn sans(cfg: &Config) -> Vec<String> {
    let mut sans = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if let Ok(h) = std::fs::read_to_string("/etc/hostname") {
        let h = h.trim();
        if !h.is_empty() {
            sans.push(h.to_string());
        }
    }
    if !cfg.listen.ip().is_unspecified() {
        sans.push(cfg.listen.ip().to_string());
    }
    // In-cluster clients reach the API through the `kubernetes` Service, by its address or
    // its DNS names.
    sans.push(cfg.kubernetes_ip.to_string());
    for name in [
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ] {
        sans.push(name.to_string());
    }
    sans.extend(cfg.tls_sans.iter().cloned());
    sans
}

/// Open the store and serve the API over HTTPS.
pub async fn start(cfg: Config) -> Result<Server, StartError> {
    let (store, sqlite, history): (Arc<dyn Store>, _, _) = match &cfg.etcd {
        Some(opts) => {
            let etcd = Arc::new(EtcdStore::connect(opts).await.map_err(StartError::Store)?);
            // As Kubernetes' API server: about five minutes of history for watches to
            // resume from.
            let history = etcd.keep_history(Duration::from_secs(300));
            (etcd, None, Some(history))
        }
        None => {
            let sqlite = Arc::new(
                SqliteStore::open(
                    cfg.data_dir.join("state.db"),
                    SqliteOptions {
                        history: cfg.watch_history,
                    },
                )
                .map_err(StartError::Store)?,
            );
            (sqlite.clone() as Arc<dyn Store>, Some(sqlite), None)
        }
    };
    let files = berth_tls::TlsFiles::in_dir(&cfg.data_dir);
    let ca_pem = berth_tls::ensure(&files, &sans(&cfg)).map_err(StartError::Tls)?;
    let tls_config = berth_tls::server_config_from(&files).map_err(StartError::Tls)?;
    let tokens =
        Tokens::load_or_create(&cfg.data_dir.join("tokens.json")).map_err(StartError::Tokens)?;
    let telemetry = telemetry::Telemetry::default();
    let registry = Registry::new(telemetry.timed_store(store));
    // Only SQLite stores were ever written under Berth's earlier key layout (and a SQLite
    // store has one server, so nothing moves keys under another's feet).
    if sqlite.is_some() {
        registry
            .adopt_kubernetes_layout()
            .await
            .map_err(StartError::Bootstrap)?;
    }
    registry.bootstrap().await.map_err(StartError::Bootstrap)?;
    authz::policy::bootstrap(&registry)
        .await
        .map_err(StartError::Bootstrap)?;
    let authorizer = authz::Authorizer::start(&registry)
        .await
        .map_err(StartError::Bootstrap)?;

    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: cfg.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: cfg.listen,
        source,
    })?;
    registry
        .ensure_system_services(addr, cfg.kubernetes_ip, cfg.cluster_dns)
        .await
        .map_err(StartError::Bootstrap)?;
    let peer = registry::peers::Peer {
        identity: identity(&cfg.data_dir),
        address: SocketAddr::new(
            cfg.advertise_address.unwrap_or(match addr.ip() {
                ip if ip.is_unspecified() => std::net::IpAddr::from([127, 0, 0, 1]),
                ip => ip,
            }),
            addr.port(),
        ),
        lease: cfg.peer_lease,
    };
    if cfg.etcd.is_some() && cfg.advertise_address.is_none() && addr.ip().is_unspecified() {
        tracing::warn!(
            %addr,
            "listening on every address of a shared store without --advertise-address: the kubernetes Service will name this server 127.0.0.1, which pods on other hosts cannot reach"
        );
    }
    registry::peers::beat(&registry, &peer, &mut Default::default())
        .await
        .map_err(StartError::Bootstrap)?;
    let peering = registry::peers::start(registry.clone(), peer.clone());
    let state = Arc::new(http::AppState {
        registry: registry.clone(),
        tokens: tokens.clone(),
        bookmark_every: cfg.bookmark_every,
        pki: berth_tls::TlsFiles::in_dir(&cfg.data_dir),
        proxy: proxy::NodeProxy::new(&ca_pem),
        telemetry: telemetry.clone(),
        authz: authorizer,
        validated: Default::default(),
    });
    let app = http::router(state);
    let accept = serve_tls(listener, tls_config, app);
    tracing::info!(%addr, "API server listening");
    Ok(Server {
        addr,
        ca_pem,
        tokens,
        registry,
        accept,
        sqlite,
        history,
        peer,
        peering,
        telemetry,
    })
}

/// Who this server is among the servers on one store: its host and data dir, stable
/// across its restarts and distinct between servers (each has its own data dir).
pub fn identity(data_dir: &std::path::Path) -> String {
    let dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_lowercase())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "berth".into());
    format!("{host}:{}", dir.display())
}

pub use berth_tls::{serve as serve_tls, write_file};

/// A kubeconfig for `server` with the cluster CA and `token`, current context `berth`.
pub fn kubeconfig(server: &str, ca_pem: &str, token: &str) -> String {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: berth
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: berth-admin
  user:
    token: {token}
contexts:
- name: berth
  context:
    cluster: berth
    user: berth-admin
    namespace: default
current-context: berth
"
    )
}
