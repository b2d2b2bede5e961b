//! The cluster's TLS material: a CA and a server certificate, generated into the data dir on
//! first start and reused after. The server certificate is re-signed by the same CA when the
//! names it must cover change.

use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    #[error("the PEM file {path} holds no usable {what}")]
    Pem { path: PathBuf, what: &'static str },
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
    crate::write_file(path, contents.as_bytes(), private).map_err(|source| TlsError::Io {
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

/// A rustls server configuration from the files, offering HTTP/2 and HTTP/1.1.
pub fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let cert_pem = read(&files.cert)?;
    let key_pem = read(&files.key)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::Io {
            path: files.cert.clone(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: files.cert.clone(),
            what: "certificate",
        });
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(|source| TlsError::Io {
            path: files.key.clone(),
            source,
        })?
        .ok_or_else(|| TlsError::Pem {
            path: files.key.clone(),
            what: "private key",
        })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(TlsError::Config)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        server_config(&files).unwrap();
    }
}
