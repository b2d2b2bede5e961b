//! Bearer-token authentication and the authorization rule for each identity.
//!
//! Two tokens live in `<data-dir>/tokens.json`, generated on first start: the admin token
//! (full access; written into the kubeconfig) and the node-join token that agents present.
//! Node tokens and user tokens are derived from the secret kept beside them: a node token
//! is the node's name and its HMAC, a user token a JWT (HS256) naming the user and groups.
//! What each identity may do is [`crate::authz`]'s to decide.

use std::path::Path;
use std::time::Duration;

use axum::http::HeaderMap;
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

    /// A signed token (a JWT, HS256) for user `name` in `groups`, valid for `ttl` or for good.
    /// `berth token --user` mints them; RBAC decides what they may do.
    pub fn user_token(&self, name: &str, groups: &[String], ttl: Option<Duration>) -> String {
        let now = jiff::Timestamp::now().as_second();
        self.sign(&Claims {
            iss: ISSUER.into(),
            sub: name.into(),
            aud: Vec::new(),
            groups: groups.to_vec(),
            iat: now,
            nbf: None,
            exp: ttl.map(|t| now + t.as_secs() as i64),
            kubernetes: None,
        })
    }

    /// A ServiceAccount's token (TokenRequest): for `audiences`, until `expires` (unix
    /// seconds), bound to the account and perhaps a pod.
    pub fn service_account_token(
        &self,
        bound: Bound,
        audiences: Vec<String>,
        expires: i64,
    ) -> String {
        let now = jiff::Timestamp::now().as_second();
        self.sign(&Claims {
            iss: ISSUER.into(),
            sub: bound.user_name(),
            aud: audiences,
            groups: Vec::new(),
            iat: now,
            nbf: Some(now),
            exp: Some(expires),
            kubernetes: Some(bound),
        })
    }

    fn sign(&self, claims: &Claims) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            claims,
            &jsonwebtoken::EncodingKey::from_secret(self.mac(SIGNING).as_bytes()),
        )
        .expect("HS256 signing cannot fail")
    }

    /// The user a signed token names, if its signature holds and it has not expired.
    fn verify_user(&self, token: &str) -> Option<crate::authz::User> {
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.required_spec_claims.clear();
        v.validate_aud = false;
        v.set_issuer(&[ISSUER]);
        v.leeway = 0;
        v.validate_nbf = true;
        let data = jsonwebtoken::decode::<Claims>(
            token,
            &jsonwebtoken::DecodingKey::from_secret(self.mac(SIGNING).as_bytes()),
            &v,
        )
        .ok()?;
        let c = data.claims;
        if let Some(bound) = c.kubernetes {
            // A ServiceAccount's token, if it was made for this API.
            if c.sub != bound.user_name() || !c.aud.iter().any(|a| a == API_AUDIENCE) {
                return None;
            }
            return Some(crate::authz::User {
                name: c.sub,
                groups: vec![
                    "system:serviceaccounts".into(),
                    format!("system:serviceaccounts:{}", bound.namespace),
                    crate::authz::AUTHENTICATED.into(),
                ],
                bound: Some(bound),
            });
        }
        if c.sub.is_empty() || c.sub.starts_with("system:") {
            return None;
        }
        let mut groups = c.groups;
        if !groups.iter().any(|g| g == crate::authz::AUTHENTICATED) {
            groups.push(crate::authz::AUTHENTICATED.into());
        }
        Some(crate::authz::User {
            name: c.sub,
            groups,
            bound: None,
        })
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
    /// A user or ServiceAccount with a signed token: what RBAC grants it.
    User(crate::authz::User),
}

/// What a signed user token says: Kubernetes' claim names where it has them.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    aud: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    groups: Vec<String>,
    iat: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exp: Option<i64>,
    #[serde(
        rename = "kubernetes.io",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    kubernetes: Option<Bound>,
}

const ISSUER: &str = "berth";

/// What the JWT signing key is the MAC of. It holds a `:`, which no node name (a DNS
/// subdomain, whose MAC is that node's token) and no proxy-token input (`proxy/<node>`)
/// can: a node's token never reveals the key.
const SIGNING: &str = "jwt:signing-key";

/// The audience the API server accepts ServiceAccount tokens for (Kubernetes' default).
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// One object a ServiceAccount token names: its name and uid.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjRef {
    pub name: String,
    pub uid: String,
}

/// What a ServiceAccount token is bound to (its `kubernetes.io` claim): the account and,
/// for a pod's token, the pod. It is valid only while they exist with those uids.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bound {
    pub namespace: String,
    pub serviceaccount: ObjRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<ObjRef>,
}

impl Bound {
    /// `system:serviceaccount:<ns>:<name>`.
    pub fn user_name(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            self.namespace, self.serviceaccount.name
        )
    }
}

/// Compare in constant time, so a wrong token learns nothing from timing.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The bearer token of a request, if it sent one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    berth_core::bearer(
        headers
            .get(axum::http::header::AUTHORIZATION)?
            .to_str()
            .ok()?,
    )
}

/// Identify the caller from its `Authorization` header. A present but wrong token is a 401.
pub fn authenticate(tokens: &Tokens, headers: &HeaderMap) -> Result<Identity, ApiError> {
    if headers.get(axum::http::header::AUTHORIZATION).is_none() {
        return Ok(Identity::Anonymous);
    }
    let token = bearer(headers).ok_or_else(ApiError::unauthorized)?;
    if same(token, &tokens.admin) {
        return Ok(Identity::Admin);
    }
    if same(token, &tokens.node_join) {
        return Ok(Identity::Bootstrap);
    }
    if token.matches('.').count() == 2 {
        return tokens
            .verify_user(token)
            .map(Identity::User)
            .ok_or_else(ApiError::unauthorized);
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
    /// Only a Secret or ConfigMap that a pod bound to the node uses (read by name).
    UsedByPodOnNode,
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
    fn the_schemes_case_does_not_matter() {
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::header::AUTHORIZATION,
            "bearer abc ".parse().unwrap(),
        );
        assert_eq!(super::bearer(&h), Some("abc"));
        h.insert(
            axum::http::header::AUTHORIZATION,
            "Basic abc".parse().unwrap(),
        );
        assert_eq!(super::bearer(&h), None);
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
    fn user_tokens_carry_their_groups_and_expire() {
        let t = tokens();
        let tok = t.user_token("alice", &["dev".into()], None);
        let Identity::User(u) = authenticate(&t, &bearer(&tok)).unwrap() else {
            panic!("not a user")
        };
        assert_eq!(u.name, "alice");
        assert_eq!(u.groups, ["dev", "system:authenticated"]);
        // Signed with another cluster's key: refused.
        let other = Tokens {
            node_secret: "x".repeat(40),
            ..tokens()
        };
        assert!(authenticate(&t, &bearer(&other.user_token("alice", &[], None))).is_err());
        // Expired: refused.
        let mut c: serde_json::Value = serde_json::json!({"iss": "berth", "sub": "alice",
            "iat": 1, "exp": 2});
        let old = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &c,
            &jsonwebtoken::EncodingKey::from_secret(t.mac(SIGNING).as_bytes()),
        )
        .unwrap();
        assert!(authenticate(&t, &bearer(&old)).is_err());
        // No one mints a system: name for themselves.
        c["sub"] = "system:node:n1".into();
        c["exp"] = serde_json::json!(i64::MAX / 2);
        let sys = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &c,
            &jsonwebtoken::EncodingKey::from_secret(t.mac(SIGNING).as_bytes()),
        )
        .unwrap();
        assert!(authenticate(&t, &bearer(&sys)).is_err());
    }
}
