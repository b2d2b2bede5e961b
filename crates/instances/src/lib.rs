//! Berth's container instances service: serverless container groups behind an API shaped
//! like Azure Container Instances' `containerGroups`, so that Azure's SDK drives it.
//!
//! Start at [`service`]: groups are stored in [`db`] (with the per-second meter) and run as
//! pods by the agent's pod sync on the hosts of a [`pool`]; [`http`] is the ARM-shaped REST API
//! over it. The wire types and validation are pure and live in `berth_core::aci`.

pub mod db;
pub mod dns;
pub mod http;
pub mod pool;
pub mod service;
pub mod telemetry;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;

pub use pool::{Host, Pool};
pub use service::{Config as ServiceConfig, Prices, Service};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("opening the instances service")]
    Open(#[from] service::OpenError),
    #[error("preparing TLS in {dir}")]
    Tls {
        dir: PathBuf,
        #[source]
        source: berth_tls::TlsError,
    },
    #[error("listening on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

pub struct Config {
    pub service: ServiceConfig,
    pub listen: SocketAddr,
    /// Where the CA and serving certificate live (shared with the API server in `berth up`).
    pub pki_dir: PathBuf,
    /// Names and addresses the serving certificate covers.
    pub sans: Vec<String>,
    /// The bearer token clients present.
    pub token: String,
    pub page_size: usize,
    /// Where to answer DNS for the zone's `dnsNameLabel`s (UDP); `None`: no DNS.
    pub dns_listen: Option<SocketAddr>,
}

pub struct Instances {
    pub addr: SocketAddr,
    /// Where DNS is answered, if it is.
    pub dns_addr: Option<SocketAddr>,
    pub ca_pem: String,
    pub service: Arc<Service>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Instances {
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Stop serving and give back the runtime's spare sandboxes; groups keep running.
    pub async fn shutdown(self) {
        for t in self.tasks {
            t.abort();
        }
        self.service.runtime().release().await;
    }
}

/// Open the service and serve its API over HTTPS.
pub async fn start(cfg: Config, pool: Arc<Pool>) -> Result<Instances, StartError> {
    let service = Service::open(cfg.service, pool)?;
    let files = berth_tls::TlsFiles::in_dir(&cfg.pki_dir);
    let tls_err = |source| StartError::Tls {
        dir: cfg.pki_dir.clone(),
        source,
    };
    let ca_pem = berth_tls::ensure(&files, &cfg.sans).map_err(tls_err)?;
    let tls = berth_tls::server_config_from(&files).map_err(tls_err)?;
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
    let api = Arc::new(http::Api {
        service: service.clone(),
        token: cfg.token,
        page_size: cfg.page_size.max(1),
        telemetry: Default::default(),
    });
    let mut tasks = vec![service.spawn_runner()];
    let mut dns_addr = None;
    if let Some(at) = cfg.dns_listen {
        let listen = |source| StartError::Listen { addr: at, source };
        let socket = tokio::net::UdpSocket::bind(at).await.map_err(listen)?;
        dns_addr = Some(socket.local_addr().map_err(listen)?);
        tasks.push(dns::serve(
            socket,
            service.clone(),
            service.dns_zone().to_string(),
        ));
    }
    let server = berth_tls::serve(listener, tls, http::router(api));
    tasks.push(server);
    tracing::info!(%addr, "instances API listening");
    Ok(Instances {
        addr,
        dns_addr,
        ca_pem,
        service,
        tasks,
    })
}
