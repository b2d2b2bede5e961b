//! TLS for every part of Berth, in one place: the cluster's material (a CA and a server
//! certificate, generated into a data dir on first start and reused after; the server
//! certificate is re-signed by the same CA when the names it must cover change, and
//! [`sign_leaf`] issues the agents' serving certificates), the rustls configurations built
//! from PEM ([`server_config`], [`client_config`], [`https_connector`]), and [`serve`], which
//! serves an axum router over TLS with HTTP/1.1 and HTTP/2.
//!
//! Start at [`ensure`] for the material, [`serve`] for a server, [`client_config`] for a
//! client that trusts the cluster CA.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading or writing {path} failed")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("generating a certificate failed")]
    Generate(#[source] rcgen::Error),
    #[error("{origin} holds no usable {what}")]
    Pem { origin: String, what: &'static str },
    #[error("building the TLS configuration failed")]
    Config(#[source] rustls::Error),
}

/// Paths of the TLS files inside the data dir.
pub struct TlsFiles {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    sans: PathBuf,
}

impl TlsFiles {
    pub fn in_dir(dir: &Path) -> Self {
        let pki = dir.join("pki");
        TlsFiles {
            ca_cert: pki.join("ca.pem"),
            ca_key: pki.join("ca-key.pem"),
            cert: pki.join("server.pem"),
            key: pki.join("server-key.pem"),
            sans: pki.join("server.sans"),
        }
    }
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn write(path: &Path, contents: &str, private: bool) -> Result<(), TlsError> {
    write_file(path, contents.as_bytes(), private).map_err(|source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn ca_params() -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(TlsError::Generate)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "berth-ca");
    dn.push(DnType::OrganizationName, "berth");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    Ok(params)
}

/// Make sure the CA and a server certificate covering `sans` exist; return the CA PEM.
pub fn ensure(files: &TlsFiles, sans: &[String]) -> Result<String, TlsError> {
    if !files.ca_cert.exists() || !files.ca_key.exists() {
        let key = KeyPair::generate().map_err(TlsError::Generate)?;
        let cert = ca_params()?.self_signed(&key).map_err(TlsError::Generate)?;
        write(&files.ca_key, &key.serialize_pem(), true)?;
        write(&files.ca_cert, &cert.pem(), false)?;
        // A new CA invalidates any old server certificate.
        let _ = std::fs::remove_file(&files.cert);
    }
    let mut wanted: Vec<String> = sans.to_vec();
    wanted.sort();
    wanted.dedup();
    let have = read(&files.sans).unwrap_or_default();
    let have: Vec<&str> = have.lines().collect();
    let covered = wanted.iter().all(|s| have.contains(&s.as_str()));
    if !files.cert.exists() || !files.key.exists() || !covered {
        let (cert, key) = sign_leaf(files, "berth-apiserver", &wanted)?;
        write(&files.key, &key, true)?;
        write(&files.cert, &cert, false)?;
        write(&files.sans, &wanted.join("\n"), false)?;
    }
    read(&files.ca_cert)
}

/// A serving certificate for `common_name` covering `sans` (names or IPs), signed by the
/// cluster CA: (certificate PEM, key PEM).
pub fn sign_leaf(
    files: &TlsFiles,
    common_name: &str,
    sans: &[String],
) -> Result<(String, String), TlsError> {
    let ca_key = KeyPair::from_pem(&read(&files.ca_key)?).map_err(TlsError::Generate)?;
    let issuer = Issuer::new(ca_params()?, ca_key);
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(TlsError::Generate)?;
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.subject_alt_names = sans
        .iter()
        .map(|s| match s.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => s
                .clone()
                .try_into()
                .map(SanType::DnsName)
                .map_err(TlsError::Generate),
        })
        .collect::<Result<_, _>>()?;
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().map_err(TlsError::Generate)?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(TlsError::Generate)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The certificates of a PEM bundle, in order; what is not a certificate is skipped.
pub fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .filter_map(Result::ok)
        .collect()
}

fn private_key(pem: &str, origin: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .ok()
        .flatten()
        .ok_or_else(|| TlsError::Pem {
            origin: origin.to_string(),
            what: "private key",
        })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls server configuration for a certificate chain and its key (PEM; `origin` names
/// where they came from, for errors), offering HTTP/2 and HTTP/1.1.
pub fn server_config(
    cert_pem: &str,
    key_pem: &str,
    origin: &str,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = certs(cert_pem);
    if chain.is_empty() {
        return Err(TlsError::Pem {
            origin: origin.to_string(),
            what: "certificate",
        });
    }
    let key = private_key(key_pem, origin)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(TlsError::Config)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The server configuration for the certificate and key in `files`.
pub fn server_config_from(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    server_config(
        &read(&files.cert)?,
        &read(&files.key)?,
        &format!("{} and {}", files.cert.display(), files.key.display()),
    )
}

/// A rustls client configuration that trusts the CAs of `ca_pem` and nothing else.
pub fn client_config(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(certs(ca_pem));
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// An HTTPS-only HTTP/1.1 connector for hyper's client over `config`.
pub fn https_connector(
    config: &rustls::ClientConfig,
) -> hyper_rustls::HttpsConnector<HttpConnector> {
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config.clone())
        .https_only()
        .enable_http1()
        .build()
}

/// Serve `app` over TLS on `listener` (HTTP/1.1 and HTTP/2, upgrades allowed) until the
/// returned task is aborted.
pub fn serve(
    listener: tokio::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
    app: axum::Router,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(accept(listener, config, app))
}

/// What [`serve`] runs: accept connections on `listener` and serve each in a task of its
/// own, until dropped (connections under way finish by themselves).
pub async fn accept(
    listener: tokio::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
    app: axum::Router,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                let tls = match acceptor.accept(tcp).await {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                };
                let service = TowerToHyperService::new(app);
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                if let Err(e) = builder
                    .serve_connection_with_upgrades(TokioIo::new(tls), service)
                    .await
                {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            });
        }
    }
}

/// Write a file, creating its directory; `private` files are mode 0600.
pub fn write_file(path: &Path, contents: &[u8], private: bool) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, contents)?;
    if private {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pem_without_a_key_says_which_file_and_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles::in_dir(dir.path());
        ensure(&files, &["localhost".to_string()]).unwrap();
        let cert = std::fs::read_to_string(&files.cert).unwrap();
        let err = server_config(&cert, "not a key", "the test's PEM").unwrap_err();
        assert!(matches!(
            err,
            TlsError::Pem {
                what: "private key",
                ..
            }
        ));
        assert_eq!(
            err.to_string(),
            "the test's PEM holds no usable private key"
        );
    }

    #[test]
    fn material_is_generated_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles::in_dir(dir.path());
        let sans = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let ca1 = ensure(&files, &sans).unwrap();
        let cert1 = std::fs::read_to_string(&files.cert).unwrap();
        let ca2 = ensure(&files, &sans).unwrap();
        assert_eq!(ca1, ca2);
        assert_eq!(cert1, std::fs::read_to_string(&files.cert).unwrap());
        // A new name re-signs the server certificate under the same CA.
        let more = vec!["localhost".to_string(), "10.1.2.3".to_string()];
        assert_eq!(ensure(&files, &more).unwrap(), ca1);
        assert_ne!(cert1, std::fs::read_to_string(&files.cert).unwrap());
        server_config_from(&files).unwrap();
        let ca = std::fs::read_to_string(&files.ca_cert).unwrap();
        assert_eq!(certs(&ca).len(), 1);
        client_config(&ca);
    }
}
