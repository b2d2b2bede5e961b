//! ServiceAccount tokens: the `serviceaccounts/token` subresource (TokenRequest, what
//! `kubectl create token` and the agents ask for), and the check that a token presented to
//! the API is still bound to live objects (its account, its pod), kept for ten seconds per
//! token as Kubernetes' validation cache does.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use berth_core::kinds::str_at;
use berth_core::resources::{self, Kind};
use serde_json::{json, Value};

use crate::auth::{Bound, Identity, ObjRef, Tokens, API_AUDIENCE};
use crate::registry::{service_account, Registry};
use crate::status::ApiError;

/// Kubernetes' default lifetime of a requested token, and its shortest.
const DEFAULT_SECONDS: i64 = 3600;
const MIN_SECONDS: i64 = 600;
/// The longest lifetime handed out (Kubernetes' `--service-account-max-token-expiration`).
const MAX_SECONDS: i64 = 48 * 3600;
/// The life of an admission-requested token bound to a pod (see [`create`]).
const EXTENDED_SECONDS: i64 = 365 * 24 * 3600;
/// How long a token's bound objects are trusted after they were seen.
const RECHECK: Duration = Duration::from_secs(10);

/// Answer `POST .../serviceaccounts/<name>/token`. A node may ask only for a token bound to
/// a pod that runs on it under that account.
pub async fn create(
    registry: &Registry,
    tokens: &Tokens,
    who: &Identity,
    ns: &str,
    name: &str,
    body: Value,
) -> Result<Value, ApiError> {
    let accounts = resources::of_kind(Kind::ServiceAccount);
    let account = registry.get(accounts, Some(ns), name).await?;
    let spec = body.get("spec").cloned().unwrap_or_else(|| json!({}));
    let seconds = spec
        .get("expirationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(DEFAULT_SECONDS);
    if seconds < MIN_SECONDS {
        return Err(ApiError::invalid_field(
            "spec.expirationSeconds",
            "may not specify a duration less than 10 minutes",
        ));
    }
    let seconds = seconds.min(MAX_SECONDS);
    let mut audiences: Vec<String> = spec
        .get("audiences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    if audiences.is_empty() {
        audiences.push(API_AUDIENCE.into());
    }
    let mut bound = Bound {
        namespace: ns.into(),
        serviceaccount: ObjRef {
            name: name.into(),
            uid: str_at(&account, "/metadata/uid").into(),
        },
        pod: None,
    };
    let bound_ref = spec.get("boundObjectRef").filter(|b| b.is_object());
    if let Some(r) = bound_ref {
        let kind = str_at(r, "/kind");
        if kind != "Pod" {
            return Err(ApiError::invalid_field(
                "spec.boundObjectRef.kind",
                format!(
                    "{kind:?}: only a Pod can be bound to (Secrets and Nodes are not supported)"
                ),
            ));
        }
        let pod_name = str_at(r, "/name");
        let pod = registry
            .get(resources::of_kind(Kind::Pod), Some(ns), pod_name)
            .await?;
        let uid = str_at(&pod, "/metadata/uid");
        let want = str_at(r, "/uid");
        if !want.is_empty() && want != uid {
            return Err(ApiError::conflict(resources::of_kind(Kind::Pod), pod_name, &format!(
                "the UID in the bound object reference ({want}) does not match the UID in record ({uid}); the object might have been deleted and then recreated"
            )));
        }
        let account_of_pod = str_at(&pod, "/spec/serviceAccountName");
        if account_of_pod != name {
            return Err(ApiError::bad_request(format!(
                "cannot bind a token of ServiceAccount {name:?} to pod {pod_name:?}, which runs as {account_of_pod:?}"
            )));
        }
        if let Identity::Node(node) = who {
            if str_at(&pod, "/spec/nodeName") != node {
                return Err(ApiError::forbidden(format!(
                    "node {node:?} may only request tokens for pods bound to it, and {pod_name:?} is not"
                )));
            }
        }
        bound.pod = Some(ObjRef {
            name: pod_name.into(),
            uid: uid.into(),
        });
    } else if let Identity::Node(node) = who {
        return Err(ApiError::forbidden(format!(
            "node {node:?} may only request tokens bound to a pod that runs on it (spec.boundObjectRef)"
        )));
    }
    let now = jiff::Timestamp::now().as_second();
    let expires = now + seconds;
    // The token admission mounts in every pod asks for 3607 s: as Kubernetes does (its
    // `--service-account-extend-token-expiration`), that token holds for a year, so a client
    // that reads its token once keeps working, while the status still says 3607 s and those
    // who refresh (the agents, at 80%) go on doing so. It dies with its pod all the same.
    let extended = seconds == service_account::TOKEN_SECONDS
        && bound.pod.is_some()
        && audiences == [API_AUDIENCE];
    let token_expires = if extended {
        now + EXTENDED_SECONDS
    } else {
        expires
    };
    let token = tokens.service_account_token(bound, audiences.clone(), token_expires);
    let at = jiff::Timestamp::from_second(expires).expect("in range");
    let mut spec = spec;
    spec["audiences"] = json!(audiences);
    spec["expirationSeconds"] = json!(seconds);
    Ok(json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": null},
        "spec": spec,
        "status": {"token": token, "expirationTimestamp": at.to_string()},
    }))
}

/// Is `r` there, with its uid, and not being deleted?
async fn alive(registry: &Registry, ns: &str, kind: Kind, r: &ObjRef) -> Result<bool, ApiError> {
    match registry
        .get(resources::of_kind(kind), Some(ns), &r.name)
        .await
    {
        Ok(obj) => Ok(str_at(&obj, "/metadata/uid") == r.uid
            && obj.pointer("/metadata/deletionTimestamp").is_none()),
        Err(e) if e.reason == "NotFound" => Ok(false),
        Err(e) => Err(e),
    }
}

/// Tokens whose bound objects were seen alive, and when.
#[derive(Default)]
pub struct Validated(Mutex<HashMap<String, Instant>>);

impl Validated {
    /// Is the account (and pod) a token is bound to still there, with the same uids? A 401
    /// if not, as Kubernetes answers for an invalidated token.
    pub async fn check(
        &self,
        registry: &Registry,
        token: &str,
        bound: &Bound,
    ) -> Result<(), ApiError> {
        let fresh = self
            .0
            .lock()
            .expect("validated tokens")
            .get(token)
            .is_some_and(|at| at.elapsed() < RECHECK);
        if fresh {
            return Ok(());
        }
        let mut ok = alive(
            registry,
            &bound.namespace,
            Kind::ServiceAccount,
            &bound.serviceaccount,
        )
        .await?;
        if let Some(pod) = &bound.pod {
            ok = ok && alive(registry, &bound.namespace, Kind::Pod, pod).await?;
        }
        if !ok {
            return Err(ApiError::unauthorized());
        }
        let mut seen = self.0.lock().expect("validated tokens");
        if seen.len() >= 16_384 {
            seen.retain(|_, at| at.elapsed() < RECHECK);
        }
        seen.insert(token.to_string(), Instant::now());
        Ok(())
    }
}
