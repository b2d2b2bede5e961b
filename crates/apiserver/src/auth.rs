//! Bearer-token authentication and the authorization rule for each identity.
//!
//! Two tokens live in `<data-dir>/tokens.json`, generated on first start: the admin token
//! (full access; written into the kubeconfig) and the node-join token that agents present.

use std::path::Path;

use axum::http::{HeaderMap, Method};
use berth_core::Kind;
use rand::distr::{Alphanumeric, SampleString};
use serde::{Deserialize, Serialize};

use crate::status::ApiError;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Tokens {
    pub admin: String,
    pub node_join: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("reading or writing the token file {path} failed")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the token file {path} is not valid JSON: fix or delete it")]
    Parse {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

fn new_token() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), 40)
}

impl Tokens {
    /// Load the tokens from `path`, generating and writing them on first start.
    pub fn load_or_create(path: &Path) -> Result<Tokens, TokenError> {
        let io = |source| TokenError::Io {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| TokenError::Parse {
                path: path.display().to_string(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let tokens = Tokens {
                    admin: new_token(),
                    node_join: new_token(),
                };
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(io)?;
                }
                let body = serde_json::to_vec_pretty(&tokens).expect("tokens serialize");
                std::fs::write(path, body).map_err(io)?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .map_err(io)?;
                Ok(tokens)
            }
            Err(e) => Err(io(e)),
        }
    }
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    Admin,
    /// A holder of the node-join token: an agent.
    Node,
    /// No credentials: allowed only on the public paths.
    Anonymous,
}

/// Compare in constant time, so a wrong token learns nothing from timing.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Identify the caller from its `Authorization` header. A present but wrong token is a 401.
pub fn authenticate(tokens: &Tokens, headers: &HeaderMap) -> Result<Identity, ApiError> {
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Ok(Identity::Anonymous);
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(ApiError::unauthorized)?;
    if same(token, &tokens.admin) {
        Ok(Identity::Admin)
    } else if same(token, &tokens.node_join) {
        Ok(Identity::Node)
    } else {
        Err(ApiError::unauthorized())
    }
}

/// Paths anyone may read, as Kubernetes' `system:public-info-viewer` allows.
pub fn is_public(path: &str) -> bool {
    matches!(path, "/version" | "/healthz" | "/livez" | "/readyz")
}

/// May `who` perform `method` on `kind` (and `subresource`)? Agents read everything and
/// write what a node writes: Nodes, Leases, Events, pod status, pod deletion. (Per-node scoping of those
/// writes comes with the agent.)
pub fn authorize(
    who: &Identity,
    method: &Method,
    kind: Kind,
    subresource: Option<&str>,
) -> Result<(), ApiError> {
    match who {
        Identity::Admin => Ok(()),
        Identity::Anonymous => Err(ApiError::unauthorized()),
        Identity::Node => {
            let read = matches!(*method, Method::GET | Method::HEAD);
            let node_write = matches!(kind, Kind::Node | Kind::Lease | Kind::Event)
                || (kind == Kind::Pod && subresource == Some("status"))
                // The agent finishes a graceful delete once the pod's containers are gone.
                || (kind == Kind::Pod && subresource.is_none() && *method == Method::DELETE);
            if read || node_write {
                Ok(())
            } else {
                Err(ApiError::forbidden(format!(
                    "the node-join token may not {method} {kind:?}{}",
                    subresource.map(|s| format!("/{s}")).unwrap_or_default()
                )))
            }
        }
    }
}
