//! The review resources: questions put to the authorizer and the authenticator, answered and
//! never stored. `kubectl auth can-i` asks a SelfSubjectAccessReview, `kubectl auth can-i
//! --list` a SelfSubjectRulesReview, `kubectl auth whoami` a SelfSubjectReview; an admin asks
//! about someone else with a SubjectAccessReview (or, within a namespace, a
//! LocalSubjectAccessReview).

use berth_core::kinds::str_at;
use serde_json::{json, Value};

use super::{rbac, Attributes, Authorizer, User};
use crate::auth::Identity;
use crate::status::ApiError;

pub const AUTHORIZATION: &str = "authorization.k8s.io";
pub const AUTHENTICATION: &str = "authentication.k8s.io";

/// The review resources: group, plural, kind, namespaced.
const REVIEWS: &[(&str, &str, &str, bool)] = &[
    (
        AUTHORIZATION,
        "selfsubjectaccessreviews",
        "SelfSubjectAccessReview",
        false,
    ),
    (
        AUTHORIZATION,
        "selfsubjectrulesreviews",
        "SelfSubjectRulesReview",
        false,
    ),
    (
        AUTHORIZATION,
        "subjectaccessreviews",
        "SubjectAccessReview",
        false,
    ),
    (
        AUTHORIZATION,
        "localsubjectaccessreviews",
        "LocalSubjectAccessReview",
        true,
    ),
    (
        AUTHENTICATION,
        "selfsubjectreviews",
        "SelfSubjectReview",
        false,
    ),
];

/// `/apis/<group>/v1` for the two review groups.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let served = of_group_version(group, version);
    if served.is_empty() {
        return None;
    }
    let resources: Vec<Value> = served
        .into_iter()
        .map(|(plural, kind, namespaced)| {
            json!({"name": plural, "singularName": "", "namespaced": namespaced, "kind": kind,
                "verbs": ["create"]})
        })
        .collect();
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1",
        "groupVersion": format!("{group}/v1"), "resources": resources}))
}

/// The review resources of one group-version: plural, kind, namespaced.
pub fn of_group_version(group: &str, version: &str) -> Vec<(&'static str, &'static str, bool)> {
    REVIEWS
        .iter()
        .filter(|(g, ..)| *g == group && version == "v1")
        .map(|(_, plural, kind, namespaced)| (*plural, *kind, *namespaced))
        .collect()
}

/// The review groups, for `/apis`.
pub fn groups() -> [(&'static str, Vec<&'static str>); 2] {
    [(AUTHORIZATION, vec!["v1"]), (AUTHENTICATION, vec!["v1"])]
}

/// The request a review's spec describes.
fn asked(spec: &Value) -> Result<Attributes, ApiError> {
    if let Some(r) = spec.get("resourceAttributes").filter(|r| r.is_object()) {
        let sub = str_at(r, "/subresource");
        let ns = str_at(r, "/namespace");
        return Ok(Attributes {
            verb: str_at(r, "/verb").to_string(),
            group: str_at(r, "/group").to_string(),
            version: str_at(r, "/version").to_string(),
            resource: Some(str_at(r, "/resource").to_string()),
            subresource: (!sub.is_empty()).then(|| sub.to_string()),
            namespace: (!ns.is_empty()).then(|| ns.to_string()),
            name: str_at(r, "/name").to_string(),
            path: String::new(),
        });
    }
    if let Some(n) = spec.get("nonResourceAttributes").filter(|n| n.is_object()) {
        return Ok(Attributes::non_resource(
            str_at(n, "/verb"),
            str_at(n, "/path"),
        ));
    }
    Err(ApiError::invalid_field(
        "spec.resourceAttributes",
        "exactly one of nonResourceAttributes or resourceAttributes must be specified",
    ))
}

/// Answer an access review for `user` (`identity` when it is the caller itself: nodes are
/// answered by the node rules).
fn decide(authz: &Authorizer, identity: Option<&Identity>, user: &User, a: &Attributes) -> Value {
    let (allowed, reason) = match identity {
        Some(who @ (Identity::Admin | Identity::Node(_) | Identity::Bootstrap)) => {
            match authz.authorize(who, a) {
                Ok(_) => (true, String::new()),
                Err(e) => (false, e.message),
            }
        }
        _ if user.is_master() => (true, "allowed by membership of system:masters".into()),
        _ => match authz.index().allowed_by(user, a) {
            Some(binding) => (true, format!("RBAC: allowed by binding {binding:?}")),
            None => (false, String::new()),
        },
    };
    let mut status = json!({"allowed": allowed});
    if !reason.is_empty() {
        status["reason"] = json!(reason);
    }
    status
}

fn answer(mut body: Value, kind: &str, group: &str, status: Value) -> Value {
    body["apiVersion"] = json!(format!("{group}/v1"));
    body["kind"] = json!(kind);
    if !body.get("metadata").is_some_and(Value::is_object) {
        body["metadata"] = json!({});
    }
    body["metadata"]["creationTimestamp"] = Value::Null;
    body["status"] = status;
    body
}

/// A rule as a rules review shows it.
fn shown(r: &rbac::Rule) -> (bool, Value) {
    if r.non_resource_urls.is_empty() {
        let mut v = json!({"verbs": r.verbs, "apiGroups": r.api_groups, "resources": r.resources});
        if !r.resource_names.is_empty() {
            v["resourceNames"] = json!(r.resource_names);
        }
        (true, v)
    } else {
        (
            false,
            json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls}),
        )
    }
}

/// Answer a POST to one of the review resources (`plural`, in `ns` for the local one).
pub fn review(
    authz: &Authorizer,
    who: &Identity,
    group: &str,
    plural: &str,
    ns: Option<&str>,
    body: Value,
) -> Result<Value, ApiError> {
    let me = who.user();
    let spec = body.get("spec").cloned().unwrap_or_else(|| json!({}));
    match plural {
        "selfsubjectaccessreviews" => {
            let a = asked(&spec)?;
            let status = decide(authz, Some(who), &me, &a);
            Ok(answer(body, "SelfSubjectAccessReview", group, status))
        }
        "subjectaccessreviews" | "localsubjectaccessreviews" => {
            let mut a = asked(&spec)?;
            if let Some(ns) = ns {
                if a.namespace.as_deref().is_some_and(|n| n != ns) {
                    return Err(ApiError::invalid_field(
                        "spec.resourceAttributes.namespace",
                        format!("must be {ns:?} (the namespace the review is made in)"),
                    ));
                }
                a.namespace = Some(ns.to_string());
            }
            let user = User {
                bound: None,
                name: str_at(&spec, "/user").to_string(),
                groups: spec
                    .get("groups")
                    .and_then(Value::as_array)
                    .map(|g| {
                        g.iter()
                            .filter_map(Value::as_str)
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default(),
            };
            if user.name.is_empty() && user.groups.is_empty() {
                return Err(ApiError::invalid_field(
                    "spec.user",
                    "at least one of user or group must be specified",
                ));
            }
            let status = decide(authz, None, &user, &a);
            let kind = if ns.is_some() {
                "LocalSubjectAccessReview"
            } else {
                "SubjectAccessReview"
            };
            Ok(answer(body, kind, group, status))
        }
        "selfsubjectrulesreviews" => {
            let ns = str_at(&spec, "/namespace");
            let rules = if matches!(who, Identity::Admin) {
                rbac::Rule::everything().to_vec()
            } else {
                authz.index().rules_for(&me, (!ns.is_empty()).then_some(ns))
            };
            let (resource, other): (Vec<_>, Vec<_>) =
                rules.iter().map(shown).partition(|(r, _)| *r);
            let status = json!({
                "resourceRules": resource.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
                "nonResourceRules": other.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
                "incomplete": false,
            });
            Ok(answer(body, "SelfSubjectRulesReview", group, status))
        }
        "selfsubjectreviews" => {
            let status = json!({"userInfo": {"username": me.name, "groups": me.groups}});
            Ok(answer(body, "SelfSubjectReview", group, status))
        }
        _ => Err(ApiError::path_not_found(&format!(
            "/apis/{group}/v1/{plural}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_access_review_asks_the_index() {
        let authz = Authorizer::default();
        {
            let mut i = rbac::Index::default();
            i.add(
                "ClusterRole",
                &json!({"metadata": {"name": "view"}, "rules": [
                    {"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]}]}),
            );
            i.add(
                "RoleBinding",
                &json!({"metadata": {"name": "b", "namespace": "dev"},
                    "roleRef": {"kind": "ClusterRole", "name": "view"},
                    "subjects": [{"kind": "User", "name": "alice"}]}),
            );
            *authz.index.write().unwrap() = std::sync::Arc::new(i);
        }
        let alice = Identity::User(User {
            name: "alice".into(),
            ..User::default()
        });
        let ask = |verb: &str, ns: &str| {
            let body = json!({"spec": {"resourceAttributes":
                {"verb": verb, "resource": "pods", "namespace": ns}}});
            review(
                &authz,
                &alice,
                AUTHORIZATION,
                "selfsubjectaccessreviews",
                None,
                body,
            )
            .unwrap()["status"]["allowed"]
                .clone()
        };
        assert_eq!(ask("list", "dev"), json!(true));
        assert_eq!(ask("delete", "dev"), json!(false));
        assert_eq!(ask("list", "prod"), json!(false));
        let rules = review(
            &authz,
            &alice,
            AUTHORIZATION,
            "selfsubjectrulesreviews",
            None,
            json!({"spec": {"namespace": "dev"}}),
        )
        .unwrap();
        assert_eq!(
            rules["status"]["resourceRules"][0]["resources"],
            json!(["pods"])
        );
        let me = review(
            &authz,
            &alice,
            AUTHENTICATION,
            "selfsubjectreviews",
            None,
            json!({}),
        )
        .unwrap();
        assert_eq!(me["status"]["userInfo"]["username"], "alice");
        assert!(review(
            &authz,
            &alice,
            AUTHORIZATION,
            "selfsubjectaccessreviews",
            None,
            json!({"spec": {}})
        )
        .is_err());
    }
}
