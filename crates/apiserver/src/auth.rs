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
    /// The key node tokens are derived with. Never leaves the server.
    #[serde(default)]
    pub node_secret: String,
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

fn write_tokens(path: &Path, tokens: &Tokens) -> Result<(), TokenError> {
    let body = serde_json::to_vec_pretty(tokens).expect("tokens serialize");
    crate::write_file(path, &body, true).map_err(|source| TokenError::Io {
        path: path.display().to_string(),
        source,
    })
}

impl Tokens {
    /// Load the tokens from `path`, generating and writing what is missing.
    pub fn load_or_create(path: &Path) -> Result<Tokens, TokenError> {
        let mut tokens = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| TokenError::Parse {
                path: path.display().to_string(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Tokens {
                admin: new_token(),
                node_join: new_token(),
                node_secret: String::new(),
            },
            Err(source) => {
                return Err(TokenError::Io {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        if tokens.node_secret.is_empty() || !path.exists() {
            if tokens.node_secret.is_empty() {
                tokens.node_secret = new_token();
            }
            write_tokens(path, &tokens)?;
        }
        Ok(tokens)
    }

    /// The token of node `name`: `node:<name>:<HMAC-SHA256 of the name>`. The join token
    /// buys one (see the `nodetoken` endpoint); it lets its holder write only that node's
    /// objects.
    pub fn node_token(&self, name: &str) -> String {
        format!("node:{name}:{}", self.mac(name))
    }

    /// The token the API server shows an agent when it proxies to it (logs): the agent
    /// learns it with its serving certificate and accepts nothing else.
    pub fn proxy_token(&self, node: &str) -> String {
        format!("proxy:{node}:{}", self.mac(&format!("proxy/{node}")))
    }

    fn mac(&self, what: &str) -> String {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, self.node_secret.as_bytes());
        let tag = ring::hmac::sign(&key, what.as_bytes());
        tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    Admin,
    /// A holder of the node-join token: it may only obtain a node token.
    Bootstrap,
    /// An agent, with the token of its node.
    Node(String),
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
        return Ok(Identity::Admin);
    }
    if same(token, &tokens.node_join) {
        return Ok(Identity::Bootstrap);
    }
    if let Some(name) = token
        .strip_prefix("node:")
        .and_then(|r| r.rsplit_once(':'))
        .map(|(n, _)| n)
    {
        if same(token, &tokens.node_token(name)) {
            return Ok(Identity::Node(name.to_string()));
        }
    }
    Err(ApiError::unauthorized())
}

/// Paths anyone may read, as Kubernetes' `system:public-info-viewer` allows.
pub fn is_public(path: &str) -> bool {
    matches!(path, "/version" | "/healthz" | "/livez" | "/readyz")
}

/// What a node may write, beyond reading everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeScope {
    /// Allowed outright (events).
    Any,
    /// Only the object named after the node (its Node, its Lease in kube-node-lease).
    OwnName,
    /// Only pods bound to the node (their status, their final deletion).
    PodOnNode,
}

/// May `who` perform `method` on `kind` (and `subresource`) in namespace `ns`? For nodes the
/// answer may depend on the object, which the caller checks against the returned scope.
pub fn authorize(
    who: &Identity,
    method: &Method,
    kind: Kind,
    subresource: Option<&str>,
    ns: Option<&str>,
) -> Result<Option<NodeScope>, ApiError> {
    let node = match who {
        Identity::Admin => return Ok(None),
        Identity::Anonymous => return Err(ApiError::unauthorized()),
        Identity::Bootstrap => {
            return Err(ApiError::forbidden(
                "the node-join token may only obtain a node token (POST /berth/v1/nodetoken)",
            ))
        }
        Identity::Node(n) => n,
    };
    if matches!(*method, Method::GET | Method::HEAD) {
        return Ok(None);
    }
    let scope = match (kind, subresource) {
        (Kind::Event, _) => Some(NodeScope::Any),
        (Kind::Node, None | Some("status")) => Some(NodeScope::OwnName),
        (Kind::Lease, None) if ns == Some("kube-node-lease") => Some(NodeScope::OwnName),
        (Kind::Pod, Some("status")) => Some(NodeScope::PodOnNode),
        // The agent finishes a graceful delete once the pod's containers are gone.
        (Kind::Pod, None) if *method == Method::DELETE => Some(NodeScope::PodOnNode),
        _ => None,
    };
    scope.map(Some).ok_or_else(|| {
        ApiError::forbidden(format!(
            "node {node:?} may not {method} {kind:?}{}{}",
            subresource.map(|s| format!("/{s}")).unwrap_or_default(),
            ns.map(|n| format!(" in namespace {n}")).unwrap_or_default(),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens {
            admin: "a".repeat(40),
            node_join: "j".repeat(40),
            node_secret: "s".repeat(40),
        }
    }

    fn bearer(t: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::header::AUTHORIZATION,
            format!("Bearer {t}").parse().unwrap(),
        );
        h
    }

    #[test]
    fn node_tokens_identify_their_node_and_cannot_be_forged() {
        let t = tokens();
        let n1 = t.node_token("n1");
        assert_eq!(
            authenticate(&t, &bearer(&n1)).unwrap(),
            Identity::Node("n1".into())
        );
        let forged = n1.replace("node:n1:", "node:n2:");
        assert!(authenticate(&t, &bearer(&forged)).is_err());
        assert_eq!(
            authenticate(&t, &bearer(&"j".repeat(40))).unwrap(),
            Identity::Bootstrap
        );
        assert!(authenticate(&t, &bearer("nope")).is_err());
    }

    #[test]
    fn nodes_write_only_their_own_kinds() {
        let n = Identity::Node("n1".into());
        let patch = Method::PATCH;
        assert_eq!(
            authorize(&n, &patch, Kind::Node, Some("status"), None).unwrap(),
            Some(NodeScope::OwnName)
        );
        assert_eq!(
            authorize(&n, &patch, Kind::Pod, Some("status"), Some("x")).unwrap(),
            Some(NodeScope::PodOnNode)
        );
        assert!(authorize(&n, &patch, Kind::Deployment, None, Some("x")).is_err());
        assert!(authorize(&n, &patch, Kind::Lease, None, Some("default")).is_err());
        assert!(authorize(&n, &Method::POST, Kind::Pod, None, Some("x")).is_err());
        assert_eq!(
            authorize(&n, &Method::GET, Kind::Secret, None, Some("x")).unwrap(),
            None
        );
        assert!(authorize(&Identity::Bootstrap, &Method::GET, Kind::Pod, None, None).is_err());
    }
}
