//! Authorization: what a request asks ([`Attributes`], parsed from its method and path as
//! Kubernetes does), who asks ([`User`]), and the answer: the admin may do anything, a node
//! what the node rules allow, and everyone else what RBAC grants them, from Roles,
//! ClusterRoles and bindings kept in memory by a watch (a binding deleted stops granting as
//! soon as the watch delivers it).

pub mod policy;
pub mod rbac;
pub mod review;

use std::sync::{Arc, RwLock};

use axum::http::Method;
use berth_core::resources::{self, Kind};
use serde_json::Value;

use crate::auth::{Identity, NodeScope};
use crate::registry::Registry;
use crate::status::ApiError;

/// A user as authorization sees one: a name and groups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
    /// For a ServiceAccount's token: the objects it stays valid with.
    pub bound: Option<crate::auth::Bound>,
}

/// The group every authenticated caller is in; the admin's group.
pub const AUTHENTICATED: &str = "system:authenticated";
pub const MASTERS: &str = "system:masters";

impl User {
    /// In `system:masters`, which every authorizer lets do anything.
    pub fn is_master(&self) -> bool {
        self.groups.iter().any(|g| g == MASTERS)
    }
}

impl Identity {
    /// The user this caller is, in Kubernetes' terms.
    pub fn user(&self) -> User {
        let (name, groups): (String, &[&str]) = match self {
            Identity::Admin => ("berth-admin".into(), &[MASTERS, AUTHENTICATED]),
            Identity::Node(n) => (format!("system:node:{n}"), &["system:nodes", AUTHENTICATED]),
            Identity::Bootstrap => (
                "system:bootstrap:berth".into(),
                &["system:bootstrappers", AUTHENTICATED],
            ),
            Identity::Anonymous => ("system:anonymous".into(), &["system:unauthenticated"]),
            Identity::User(u) => return u.clone(),
        };
        User {
            name,
            groups: groups.iter().map(|g| g.to_string()).collect(),
            bound: None,
        }
    }
}

/// What a request asks to do, as RBAC rules name it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`; for
    /// a non-resource path the lowercase method.
    pub verb: String,
    pub path: String,
    pub group: String,
    pub version: String,
    /// None for a non-resource request (discovery, `/healthz`, `/metrics`).
    pub resource: Option<String>,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    /// The object's name, or empty for collections.
    pub name: String,
}

impl Attributes {
    pub fn non_resource(verb: &str, path: &str) -> Self {
        Attributes {
            verb: verb.into(),
            path: path.into(),
            ..Attributes::default()
        }
    }

    /// Parse a request the way Kubernetes' request-info does: `/api/v1/...` and
    /// `/apis/<group>/<version>/...` name resources, `[watch/][namespaces/<ns>/]<resource>
    /// [/<name>[/<subresource>]]`; everything else is a non-resource path.
    pub fn from_request(method: &Method, path: &str, query: Option<&str>) -> Self {
        let method_verb = method.as_str().to_ascii_lowercase();
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let (group, version, mut rest) = match segs.as_slice() {
            ["api", v, rest @ ..] if !rest.is_empty() => ("", *v, rest),
            ["apis", g, v, rest @ ..] if !rest.is_empty() => (*g, *v, rest),
            _ => return Attributes::non_resource(&method_verb, path),
        };
        let mut watch = false;
        if rest.first() == Some(&"watch") {
            watch = true;
            rest = &rest[1..];
        }
        let mut a = Attributes {
            path: path.into(),
            group: group.into(),
            version: version.into(),
            ..Attributes::default()
        };
        if let ["namespaces", ns, more @ ..] = rest {
            a.namespace = Some(ns.to_string());
            if !more.is_empty() && !matches!(more[0], "status" | "finalize") {
                rest = more;
            } else {
                // The namespace object itself.
                a.resource = Some("namespaces".into());
                a.name = ns.to_string();
                a.subresource = more.first().map(|s| s.to_string());
                rest = &[];
            }
        }
        if let [resource, more @ ..] = rest {
            a.resource = Some(resource.to_string());
            a.name = more.first().map(|s| s.to_string()).unwrap_or_default();
            a.subresource = more.get(1).map(|s| s.to_string());
        }
        // The query read as the router reads it (decoded, the last of a repeated key).
        let q: std::collections::HashMap<String, String> =
            query.and_then(|q| query_pairs(q)).unwrap_or_default();
        let query_watch = q.get("watch").is_some_and(|w| berth_core::query::flag(w));
        a.verb = match *method {
            Method::GET | Method::HEAD if watch || query_watch => "watch",
            Method::GET | Method::HEAD if a.name.is_empty() => "list",
            Method::GET | Method::HEAD => "get",
            Method::POST => "create",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE if a.name.is_empty() => "deletecollection",
            Method::DELETE => "delete",
            _ => method.as_str(),
        }
        .to_ascii_lowercase();
        // Opening a stream into a container is a create, whatever the upgrade's method.
        if matches!(
            a.subresource.as_deref(),
            Some("exec" | "attach" | "portforward")
        ) {
            a.verb = "create".into();
        }
        // `kubectl get x -w` lists with a name selector: that is a request about one name.
        if a.name.is_empty() && matches!(a.verb.as_str(), "list" | "watch") {
            if let Some(name) = q.get("fieldSelector").and_then(|f| {
                f.strip_prefix("metadata.name=")
                    .filter(|n| !n.contains(','))
                    .map(String::from)
            }) {
                a.name = name;
            }
        }
        a
    }

    /// `pods`, `deployments.apps`, `pods/log`: how a 403 names what was asked for.
    fn resource_text(&self) -> String {
        let r = self.resource.clone().unwrap_or_default();
        match &self.subresource {
            Some(s) => format!("{r}/{s}"),
            None => r,
        }
    }
}

/// A query string's pairs, decoded as axum's `Query` decodes them; None if it does not parse
/// (the router then refuses the request itself).
fn query_pairs(query: &str) -> Option<std::collections::HashMap<String, String>> {
    let uri: axum::http::Uri = format!("/?{query}").parse().ok()?;
    axum::extract::Query::try_from_uri(&uri).ok().map(|q| q.0)
}

/// The 403 Kubernetes gives: who may not do what, where.
pub fn forbidden(user: &User, a: &Attributes) -> ApiError {
    let who = format!("User {:?}", user.name);
    let Some(resource) = &a.resource else {
        return ApiError::forbidden(format!(
            "forbidden: {who} cannot {} path {:?}",
            a.verb, a.path
        ));
    };
    let qualified = if a.group.is_empty() {
        resource.clone()
    } else {
        format!("{resource}.{}", a.group)
    };
    let subject = if a.name.is_empty() {
        qualified
    } else {
        format!("{qualified} {:?}", a.name)
    };
    let scope = match a.namespace.as_deref().filter(|n| !n.is_empty()) {
        Some(ns) => format!("in the namespace {ns:?}"),
        None => "at the cluster scope".into(),
    };
    let mut e = ApiError::forbidden(format!(
        "{subject} is forbidden: {who} cannot {} resource {:?} in API group {:?} {scope}",
        a.verb,
        a.resource_text(),
        a.group
    ));
    e.details = Some(serde_json::json!({
        "name": a.name, "group": a.group, "kind": resource,
    }));
    e
}

/// Decides every request, from the RBAC objects mirrored in memory.
#[derive(Clone, Default)]
pub struct Authorizer {
    index: Arc<RwLock<Arc<rbac::Index>>>,
}

impl Authorizer {
    /// Keep the RBAC index in step with the store. Returns once it holds what is stored.
    pub async fn start(registry: &Registry) -> Result<Authorizer, ApiError> {
        let authz = Authorizer::default();
        let index = authz.index.clone();
        let kinds: Vec<(String, &'static str)> = [
            Kind::Role,
            Kind::ClusterRole,
            Kind::RoleBinding,
            Kind::ClusterRoleBinding,
        ]
        .iter()
        .map(|k| {
            let r = resources::of_kind(*k);
            (r.key_prefix(), r.kind_name)
        })
        .collect();
        let prefixes = kinds.iter().map(|(p, _)| p.clone()).collect();
        crate::registry::mirror::spawn(registry.clone(), prefixes, move |objects| {
            let mut built = rbac::Index::default();
            for (key, obj) in objects {
                if let Some((_, kind)) = kinds.iter().find(|(p, _)| key.starts_with(p.as_str())) {
                    built.add(kind, obj);
                }
            }
            *index.write().expect("rbac index") = Arc::new(built);
        })
        .await?;
        Ok(authz)
    }

    pub fn index(&self) -> Arc<rbac::Index> {
        self.index.read().expect("rbac index").clone()
    }

    /// May `who` make this request? For a node the answer may depend on the object, which
    /// the caller checks against the returned scope.
    pub fn authorize(&self, who: &Identity, a: &Attributes) -> Result<Option<NodeScope>, ApiError> {
        match who {
            Identity::Admin => Ok(None),
            Identity::Anonymous => Err(ApiError::unauthorized()),
            Identity::Bootstrap => Err(ApiError::forbidden(
                "the node-join token may only obtain a node token (POST /berth/v1/nodetoken)",
            )),
            Identity::Node(n) => node_rules(n, a),
            Identity::User(u) => {
                if self.allows(u, a) {
                    Ok(None)
                } else {
                    Err(forbidden(u, a))
                }
            }
        }
    }

    /// Does RBAC (or membership of `system:masters`) let `user` make the request?
    pub fn allows(&self, user: &User, a: &Attributes) -> bool {
        user.is_master() || self.index().allowed_by(user, a).is_some()
    }
}

/// What a node may do: read what it runs, write its own Node and Lease, the status of pods
/// bound to it and their final deletion, and Events.
fn node_rules(node: &str, a: &Attributes) -> Result<Option<NodeScope>, ApiError> {
    let resource = a.resource.as_deref().unwrap_or("");
    let sub = a.subresource.as_deref();
    if a.resource.is_none() {
        // Discovery and health.
        let open = [
            "/api", "/apis", "/openapi", "/version", "/healthz", "/livez", "/readyz",
        ]
        .iter()
        .any(|p| a.path == *p || a.path.starts_with(&format!("{p}/")));
        return if a.verb == "get" && open {
            Ok(None)
        } else {
            Err(forbidden(&Identity::Node(node.into()).user(), a))
        };
    }
    // Who may do what is none of a node's business.
    if a.group == resources::RBAC {
        return Err(ApiError::forbidden(format!(
            "node {node:?} may not {} {}: nodes do not read RBAC objects",
            a.verb,
            a.resource_text()
        )));
    }
    // Secrets, ConfigMaps and ServiceAccounts: only those its pods use, one at a time.
    if a.group.is_empty()
        && sub.is_none()
        && matches!(resource, "secrets" | "configmaps" | "serviceaccounts")
    {
        return if a.verb == "get" && !a.name.is_empty() {
            Ok(Some(NodeScope::UsedByPodOnNode))
        } else {
            Err(ApiError::forbidden(format!(
                "node {node:?} may not {} {resource}: a node reads only the {resource} its pods use, by name",
                a.verb
            )))
        };
    }
    if matches!(a.verb.as_str(), "get" | "list" | "watch") && matches!(sub, None | Some("status")) {
        return Ok(None);
    }
    let scope = match (a.group.as_str(), resource, sub) {
        ("" | "events.k8s.io", "events", None)
            if matches!(a.verb.as_str(), "create" | "update" | "patch") =>
        {
            Some(NodeScope::Any)
        }
        ("", "nodes", None | Some("status")) => Some(NodeScope::OwnName),
        ("coordination.k8s.io", "leases", None)
            if a.namespace.as_deref() == Some("kube-node-lease") =>
        {
            Some(NodeScope::OwnName)
        }
        ("", "pods", Some("status")) => Some(NodeScope::PodOnNode),
        // Tokens for its pods' accounts: the TokenRequest checks the pod is on this node.
        ("", "serviceaccounts", Some("token")) if a.verb == "create" => Some(NodeScope::Any),
        // The agent finishes a graceful delete once the pod's containers are gone.
        ("", "pods", None) if a.verb == "delete" => Some(NodeScope::PodOnNode),
        _ => None,
    };
    scope.map(Some).ok_or_else(|| {
        ApiError::forbidden(format!(
            "node {node:?} may not {} {}{}",
            a.verb,
            a.resource_text(),
            a.namespace
                .as_deref()
                .map(|n| format!(" in namespace {n}"))
                .unwrap_or_default(),
        ))
    })
}

/// Does `pod` use the `resource` (`secrets`, `configmaps`, `serviceaccounts`) named `name`:
/// as its account; in a volume (projected ones included), an env or envFrom reference, or as
/// an image pull secret?
pub fn pod_uses(pod: &Value, resource: &str, name: &str) -> bool {
    let spec = pod.get("spec").unwrap_or(&Value::Null);
    let is = |v: Option<&Value>| v.and_then(Value::as_str) == Some(name);
    if resource == "serviceaccounts" {
        return is(spec.get("serviceAccountName"));
    }
    let secret = resource == "secrets";
    let (vol_key, vol_name, ref_key, key_ref) = if secret {
        ("secret", "secretName", "secretRef", "secretKeyRef")
    } else {
        ("configMap", "name", "configMapRef", "configMapKeyRef")
    };
    let list = |v: &Value, k: &str| {
        v.get(k)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    for v in list(spec, "volumes") {
        if v.get(vol_key).is_some_and(|s| is(s.get(vol_name))) {
            return true;
        }
        let projected = v.pointer("/projected/sources").and_then(Value::as_array);
        if projected
            .into_iter()
            .flatten()
            .any(|src| src.get(vol_key).is_some_and(|s| is(s.get("name"))))
        {
            return true;
        }
    }
    if secret
        && list(spec, "imagePullSecrets")
            .iter()
            .any(|r| is(r.get("name")))
    {
        return true;
    }
    ["containers", "initContainers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| list(spec, k))
        .any(|c| {
            list(&c, "envFrom")
                .iter()
                .any(|f| f.get(ref_key).is_some_and(|r| is(r.get("name"))))
                || list(&c, "env").iter().any(|e| {
                    e.pointer(&format!("/valueFrom/{key_ref}"))
                        .is_some_and(|r| is(r.get("name")))
                })
        })
}

impl Authorizer {
    /// Escalation prevention, as Kubernetes does it: a user may write a Role or ClusterRole
    /// only with rules it already holds there (or the `escalate` verb on it), and bind a role
    /// only if it holds every rule of that role there (or the `bind` verb on it). `obj` is the
    /// object as it would be stored.
    pub fn check_grant(
        &self,
        who: &Identity,
        kind: Kind,
        ns: Option<&str>,
        obj: &Value,
    ) -> Result<(), ApiError> {
        let Identity::User(user) = who else {
            return Ok(());
        };
        if user.is_master() {
            return Ok(());
        }
        let index = self.index();
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let verb_on = |verb: &str, resource: &str, name: &str| Attributes {
            verb: verb.into(),
            group: resources::RBAC.into(),
            resource: Some(resource.into()),
            namespace: ns.map(String::from),
            name: name.into(),
            ..Attributes::default()
        };
        let (wanted, what, plural) = match kind {
            Kind::Role | Kind::ClusterRole => {
                let plural = resources::of_kind(kind).plural;
                if index
                    .allowed_by(user, &verb_on("escalate", plural, name))
                    .is_some()
                {
                    return Ok(());
                }
                // An aggregation rule can pull in any role's rules, now or later: only one
                // who holds everything may write one (Kubernetes asks the same).
                if obj.get("aggregationRule").is_some_and(|a| !a.is_null()) {
                    if rbac::covers(&index.rules_for(user, None), &rbac::Rule::everything())
                        .is_some()
                    {
                        return Err(ApiError::forbidden(format!(
                            "clusterroles.{} {name:?} is forbidden: user {:?} must have cluster-admin privileges to use an aggregationRule",
                            resources::RBAC,
                            user.name
                        )));
                    }
                }
                (
                    rbac::parse_rules(obj).map_err(|e| {
                        ApiError::bad_request(format!(
                            "the rules of {plural} {name:?} cannot be read: {e}"
                        ))
                    })?,
                    "grant",
                    plural,
                )
            }
            Kind::RoleBinding | Kind::ClusterRoleBinding => {
                let role_kind = obj
                    .pointer("/roleRef/kind")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let role = obj
                    .pointer("/roleRef/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let role_plural = if role_kind == "Role" {
                    "roles"
                } else {
                    "clusterroles"
                };
                if index
                    .allowed_by(user, &verb_on("bind", role_plural, role))
                    .is_some()
                {
                    return Ok(());
                }
                let rules = index
                    .role(role_kind, ns.unwrap_or_default(), role)
                    .ok_or_else(|| {
                        ApiError::not_found(
                            resources::of_kind(if role_kind == "Role" {
                                Kind::Role
                            } else {
                                Kind::ClusterRole
                            }),
                            role,
                        )
                    })?;
                (rules.to_vec(), "bind", resources::of_kind(kind).plural)
            }
            _ => return Ok(()),
        };
        let held = index.rules_for(user, ns);
        match rbac::covers(&held, &wanted) {
            None => Ok(()),
            Some(missing) => Err(ApiError::forbidden(format!(
                "{plural}.{} {name:?} is forbidden: user {:?} (groups={:?}) is attempting to {what} RBAC permissions not currently held: {}",
                resources::RBAC,
                user.name,
                user.groups,
                serde_json::to_string(&missing).unwrap_or_default()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(method: Method, path: &str, query: Option<&str>) -> Attributes {
        Attributes::from_request(&method, path, query)
    }

    #[test]
    fn requests_parse_as_kubernetes_names_them() {
        let a = parse(Method::GET, "/api/v1/namespaces/dev/pods", None);
        assert_eq!(
            (
                a.verb.as_str(),
                a.resource.as_deref(),
                a.namespace.as_deref()
            ),
            ("list", Some("pods"), Some("dev"))
        );
        let a = parse(
            Method::GET,
            "/api/v1/namespaces/dev/pods",
            Some("watch=true"),
        );
        assert_eq!(a.verb, "watch");
        let a = parse(Method::GET, "/api/v1/watch/namespaces/dev/pods/p1", None);
        assert_eq!((a.verb.as_str(), a.name.as_str()), ("watch", "p1"));
        let a = parse(Method::POST, "/api/v1/namespaces/dev/pods/p1/exec", None);
        assert_eq!(
            (a.verb.as_str(), a.subresource.as_deref()),
            ("create", Some("exec"))
        );
        let a = parse(
            Method::GET,
            "/api/v1/namespaces/dev/pods/p1/exec",
            Some("command=ls"),
        );
        assert_eq!(a.verb, "create", "a websocket exec is a create");
        let a = parse(
            Method::DELETE,
            "/apis/apps/v1/namespaces/dev/deployments",
            None,
        );
        assert_eq!(
            (a.verb.as_str(), a.group.as_str()),
            ("deletecollection", "apps")
        );
        let a = parse(Method::GET, "/api/v1/namespaces/dev", None);
        assert_eq!(
            (
                a.resource.as_deref(),
                a.name.as_str(),
                a.namespace.as_deref()
            ),
            (Some("namespaces"), "dev", Some("dev"))
        );
        let a = parse(Method::PUT, "/api/v1/namespaces/dev/finalize", None);
        assert_eq!(
            (a.verb.as_str(), a.subresource.as_deref()),
            ("update", Some("finalize"))
        );
        let a = parse(Method::GET, "/api/v1/nodes", None);
        assert_eq!((a.resource.as_deref(), a.namespace), (Some("nodes"), None));
        let a = parse(Method::GET, "/apis/apps/v1", None);
        assert_eq!((a.resource, a.verb.as_str()), (None, "get"));
        let a = parse(Method::GET, "/metrics", None);
        assert_eq!((a.resource, a.path.as_str()), (None, "/metrics"));
        let a = parse(
            Method::GET,
            "/api/v1/namespaces/dev/pods",
            Some("fieldSelector=metadata.name%3Dp1&watch=1"),
        );
        assert_eq!((a.verb.as_str(), a.name.as_str()), ("watch", "p1"));
    }

    #[test]
    fn a_refusal_says_who_may_not_do_what_where() {
        let u = User {
            name: "alice".into(),
            ..User::default()
        };
        let e = forbidden(
            &u,
            &parse(Method::GET, "/api/v1/namespaces/dev/secrets/s1", None),
        );
        assert_eq!(
            e.message,
            "secrets \"s1\" is forbidden: User \"alice\" cannot get resource \"secrets\" in API group \"\" in the namespace \"dev\""
        );
        let e = forbidden(
            &u,
            &parse(Method::POST, "/apis/apps/v1/namespaces/x/deployments", None),
        );
        assert!(
            e.message.starts_with("deployments.apps is forbidden"),
            "{}",
            e.message
        );
        let e = forbidden(&u, &parse(Method::GET, "/api/v1/nodes", None));
        assert!(e.message.ends_with("at the cluster scope"), "{}", e.message);
    }

    #[test]
    fn grants_are_limited_to_what_the_granter_holds() {
        let authz = Authorizer::default();
        let mut i = rbac::Index::default();
        i.add(
            "ClusterRole",
            &serde_json::json!({"metadata": {"name": "role-writer"}, "rules": [
                {"verbs": ["create", "update", "patch"], "apiGroups": [resources::RBAC],
                 "resources": ["clusterroles", "clusterrolebindings"]},
                {"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}]}),
        );
        i.add(
            "ClusterRoleBinding",
            &serde_json::json!({"metadata": {"name": "b"},
                "roleRef": {"kind": "ClusterRole", "name": "role-writer"},
                "subjects": [{"kind": "User", "name": "eve"}]}),
        );
        *authz.index.write().unwrap() = Arc::new(i);
        let eve = Identity::User(User {
            name: "eve".into(),
            ..User::default()
        });
        let role = |rules: Value| serde_json::json!({"metadata": {"name": "r"}, "rules": rules});
        let held =
            role(serde_json::json!([{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}]));
        assert!(authz
            .check_grant(&eve, Kind::ClusterRole, None, &held)
            .is_ok());
        let more = role(
            serde_json::json!([{"verbs": ["delete"], "apiGroups": [""], "resources": ["pods"]}]),
        );
        let e = authz
            .check_grant(&eve, Kind::ClusterRole, None, &more)
            .unwrap_err();
        assert!(e.message.contains("not currently held"), "{}", e.message);
        // An aggregation rule could collect anything: refused without everything.
        let mut aggregated = role(serde_json::json!([]));
        aggregated["aggregationRule"] = serde_json::json!({"clusterRoleSelectors": [
            {"matchLabels": {"anything": "true"}}]});
        let e = authz
            .check_grant(&eve, Kind::ClusterRole, None, &aggregated)
            .unwrap_err();
        assert!(e.message.contains("aggregationRule"), "{}", e.message);
        // Binding a role one holds is fine; binding one that does not exist is a 404.
        let bind = |name: &str| {
            serde_json::json!({"metadata": {"name": "x"},
            "roleRef": {"kind": "ClusterRole", "name": name},
            "subjects": [{"kind": "User", "name": "mallory"}]})
        };
        assert!(authz
            .check_grant(&eve, Kind::ClusterRoleBinding, None, &bind("role-writer"))
            .is_ok());
        assert_eq!(
            authz
                .check_grant(&eve, Kind::ClusterRoleBinding, None, &bind("nope"))
                .unwrap_err()
                .code,
            axum::http::StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn a_pod_uses_what_its_volumes_env_and_pull_secrets_name() {
        let pod = serde_json::json!({"spec": {
            "volumes": [{"name": "a", "secret": {"secretName": "vol-secret"}},
                {"name": "b", "projected": {"sources": [{"configMap": {"name": "kube-root-ca.crt"}}]}}],
            "imagePullSecrets": [{"name": "pull"}],
            "containers": [{"name": "c",
                "envFrom": [{"configMapRef": {"name": "env-cm"}}],
                "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "key-secret", "key": "k"}}}]}]}});
        for s in ["vol-secret", "pull", "key-secret"] {
            assert!(pod_uses(&pod, "secrets", s), "{s}");
        }
        for c in ["kube-root-ca.crt", "env-cm"] {
            assert!(pod_uses(&pod, "configmaps", c), "{c}");
        }
        assert!(
            !pod_uses(&pod, "secrets", "env-cm"),
            "a ConfigMap's name is not a Secret's"
        );
        assert!(!pod_uses(&pod, "configmaps", "other"));
        assert!(!pod_uses(&pod, "serviceaccounts", "other"));
    }

    #[test]
    fn nodes_write_only_their_own_objects() {
        let n = |m: Method, p: &str| node_rules("n1", &parse(m, p, None));
        assert_eq!(
            n(Method::PATCH, "/api/v1/nodes/n1/status").unwrap(),
            Some(NodeScope::OwnName)
        );
        assert_eq!(
            n(Method::PATCH, "/api/v1/namespaces/x/pods/p/status").unwrap(),
            Some(NodeScope::PodOnNode)
        );
        assert!(n(Method::PATCH, "/apis/apps/v1/namespaces/x/deployments/d").is_err());
        assert!(n(
            Method::PUT,
            "/apis/coordination.k8s.io/v1/namespaces/default/leases/n1"
        )
        .is_err());
        assert_eq!(
            n(
                Method::PUT,
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n1"
            )
            .unwrap(),
            Some(NodeScope::OwnName)
        );
        assert!(n(Method::POST, "/api/v1/namespaces/x/pods").is_err());
        assert!(n(Method::GET, "/api/v1/namespaces/x/pods/p/log").is_err());
        assert!(n(Method::POST, "/api/v1/namespaces/x/pods/p/exec").is_err());
        assert_eq!(
            n(Method::POST, "/api/v1/namespaces/x/events").unwrap(),
            Some(NodeScope::Any)
        );
        assert!(n(Method::DELETE, "/api/v1/namespaces/x/events").is_err());
        assert_eq!(n(Method::GET, "/api/v1/namespaces/x/pods").unwrap(), None);
        assert_eq!(
            n(Method::GET, "/api/v1/namespaces/x/secrets/s1").unwrap(),
            Some(NodeScope::UsedByPodOnNode)
        );
        assert!(n(Method::GET, "/api/v1/namespaces/x/secrets").is_err());
        assert!(n(Method::GET, "/api/v1/secrets").is_err());
        assert!(n(Method::GET, "/api/v1/watch/namespaces/x/configmaps").is_err());
    }
}
