//! RBAC, pure: rules, bindings, and the questions asked of them (may this user do this? what
//! may this user do here? does this user hold every permission of that role?). The index is
//! built from the stored Roles, ClusterRoles and bindings by [`super::Authorizer`].

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use berth_core::kinds::str_at;

use super::{Attributes, User};

/// One rule of a Role or ClusterRole, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    #[serde(default, deserialize_with = "null_as_empty")]
    pub verbs: Vec<String>,
    #[serde(
        default,
        deserialize_with = "null_as_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub api_groups: Vec<String>,
    #[serde(
        default,
        deserialize_with = "null_as_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub resources: Vec<String>,
    #[serde(
        default,
        deserialize_with = "null_as_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub resource_names: Vec<String>,
    #[serde(
        default,
        rename = "nonResourceURLs",
        deserialize_with = "null_as_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub non_resource_urls: Vec<String>,
}

/// A list written `null` is read as empty, as the stored (k8s-openapi) form has it: the
/// escalation check and the index must read the same rules.
fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

fn has(list: &[String], want: &str) -> bool {
    list.iter().any(|v| v == "*" || v == want)
}

impl Rule {
    /// Every permission there is: `cluster-admin`'s two rules.
    pub fn everything() -> [Rule; 2] {
        let all = || vec!["*".to_string()];
        [
            Rule {
                verbs: all(),
                api_groups: all(),
                resources: all(),
                ..Rule::default()
            },
            Rule {
                verbs: all(),
                non_resource_urls: all(),
                ..Rule::default()
            },
        ]
    }

    /// Does this rule allow the request? A requested `*` (in a coverage check) is matched only
    /// by a `*` in the rule.
    pub fn allows(&self, a: &Attributes) -> bool {
        if !has(&self.verbs, &a.verb) {
            return false;
        }
        match &a.resource {
            None => self.non_resource_urls.iter().any(|u| {
                u == "*"
                    || *u == a.path
                    || u.strip_suffix('*').is_some_and(|p| a.path.starts_with(p))
            }),
            Some(resource) => {
                let resource_ok = match &a.subresource {
                    None => has(&self.resources, resource),
                    Some(sub) => self.resources.iter().any(|r| {
                        r == "*"
                            || *r == format!("{resource}/{sub}")
                            || *r == format!("{resource}/*")
                            || *r == format!("*/{sub}")
                    }),
                };
                resource_ok
                    && has(&self.api_groups, &a.group)
                    && (self.resource_names.is_empty()
                        || (!a.name.is_empty() && self.resource_names.contains(&a.name)))
            }
        }
    }

    /// Every request this rule stands for, one verb, group, resource and name at a time (the
    /// units a coverage check asks about).
    fn atoms(&self) -> Vec<Attributes> {
        let mut out = Vec::new();
        for verb in &self.verbs {
            for url in &self.non_resource_urls {
                out.push(Attributes::non_resource(verb, url));
            }
            for group in &self.api_groups {
                for resource in &self.resources {
                    let (res, sub) = match resource.split_once('/') {
                        Some((r, s)) => (r.to_string(), Some(s.to_string())),
                        None => (resource.clone(), None),
                    };
                    let names: Vec<String> = if self.resource_names.is_empty() {
                        vec![String::new()]
                    } else {
                        self.resource_names.clone()
                    };
                    for name in names {
                        out.push(Attributes {
                            verb: verb.clone(),
                            group: group.clone(),
                            resource: Some(res.clone()),
                            subresource: sub.clone(),
                            name,
                            ..Attributes::default()
                        });
                    }
                }
            }
        }
        out
    }
}

/// Does `rules` hold every permission of `wanted`? A rule for all names needs a rule for all
/// names; a wildcard needs a wildcard.
pub fn covers(rules: &[Rule], wanted: &[Rule]) -> Option<Rule> {
    wanted
        .iter()
        .find(|w| {
            w.atoms()
                .iter()
                .any(|atom| !rules.iter().any(|r| allows_exactly(r, atom)))
        })
        .cloned()
}

/// [`Rule::allows`], except that a request for every name is covered only by a rule for
/// every name.
fn allows_exactly(r: &Rule, a: &Attributes) -> bool {
    if a.resource.is_some() && a.name.is_empty() && !r.resource_names.is_empty() {
        return false;
    }
    let mut a = a.clone();
    if a.resource.is_some() && a.name.is_empty() {
        // Any name stands for "all": a name-less rule matches it.
        a.name = "\0".into();
    }
    r.allows(&a)
}

/// Who a binding grants to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subject {
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub namespace: String,
}

impl Subject {
    /// Is `user` this subject? A ServiceAccount without a namespace is in the binding's.
    fn is(&self, user: &User, binding_ns: &str) -> bool {
        match self.kind.as_str() {
            "User" => self.name == user.name,
            "Group" => user.groups.iter().any(|g| *g == self.name),
            "ServiceAccount" => {
                let ns = if self.namespace.is_empty() {
                    binding_ns
                } else {
                    &self.namespace
                };
                user.name == format!("system:serviceaccount:{ns}:{}", self.name)
            }
            _ => false,
        }
    }
}

#[derive(Debug, Clone)]
struct Binding {
    name: String,
    /// The Role's namespace, or None for a ClusterRole.
    role_ns: Option<String>,
    role: String,
    subjects: Vec<Subject>,
}

/// Every Role, ClusterRole and binding, indexed for the questions below.
#[derive(Debug, Default)]
pub struct Index {
    roles: HashMap<(String, String), Arc<Vec<Rule>>>,
    cluster_roles: HashMap<String, Arc<Vec<Rule>>>,
    cluster_bindings: Vec<Binding>,
    bindings: HashMap<String, Vec<Binding>>,
}

fn rules_of(obj: &Value) -> Arc<Vec<Rule>> {
    Arc::new(parse_rules(obj).unwrap_or_default())
}

/// The rules of a Role or ClusterRole object (none if it has none), or why they cannot be read.
pub fn parse_rules(obj: &Value) -> Result<Vec<Rule>, String> {
    match obj.get("rules") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(r) => serde_json::from_value(r.clone()).map_err(|e| e.to_string()),
    }
}

impl Index {
    /// Add one stored object, by its kind (`Role`, `ClusterRole`, `RoleBinding`,
    /// `ClusterRoleBinding`).
    pub fn add(&mut self, kind: &str, obj: &Value) {
        let name = str_at(obj, "/metadata/name").to_string();
        let ns = str_at(obj, "/metadata/namespace").to_string();
        match kind {
            "Role" => {
                self.roles.insert((ns, name), rules_of(obj));
            }
            "ClusterRole" => {
                self.cluster_roles.insert(name, rules_of(obj));
            }
            "RoleBinding" | "ClusterRoleBinding" => {
                let role_ns = (str_at(obj, "/roleRef/kind") == "Role").then(|| ns.clone());
                let b = Binding {
                    name,
                    role_ns,
                    role: str_at(obj, "/roleRef/name").to_string(),
                    subjects: obj
                        .get("subjects")
                        .cloned()
                        .and_then(|s| serde_json::from_value(s).ok())
                        .unwrap_or_default(),
                };
                if kind == "RoleBinding" {
                    self.bindings.entry(ns).or_default().push(b);
                } else {
                    self.cluster_bindings.push(b);
                }
            }
            _ => {}
        }
    }

    fn role_rules(&self, b: &Binding) -> Option<&Arc<Vec<Rule>>> {
        match &b.role_ns {
            Some(ns) => self.roles.get(&(ns.clone(), b.role.clone())),
            None => self.cluster_roles.get(&b.role),
        }
    }

    /// The bindings that apply to `user` for a request in `ns` (None: cluster scope), each
    /// with its rules, cluster-wide ones first.
    fn applicable<'a>(
        &'a self,
        user: &'a User,
        ns: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a Binding, &'a Arc<Vec<Rule>>)> + 'a {
        let cluster = self
            .cluster_bindings
            .iter()
            .filter(move |b| b.subjects.iter().any(|s| s.is(user, "")));
        let local = ns
            .and_then(|ns| self.bindings.get(ns).map(|bs| (ns, bs)))
            .into_iter()
            .flat_map(move |(ns, bs)| {
                bs.iter()
                    .filter(move |b| b.subjects.iter().any(|s| s.is(user, ns)))
            });
        cluster
            .chain(local)
            .filter_map(|b| self.role_rules(b).map(|r| (b, r)))
    }

    /// The binding that lets `user` make the request, if one does.
    pub fn allowed_by(&self, user: &User, a: &Attributes) -> Option<String> {
        let ns = a.namespace.as_deref().filter(|n| !n.is_empty());
        self.applicable(user, ns)
            .find(|(_, rules)| rules.iter().any(|r| r.allows(a)))
            .map(|(b, _)| b.name.clone())
    }

    /// Every rule `user` holds in `ns` (cluster-wide ones included).
    pub fn rules_for(&self, user: &User, ns: Option<&str>) -> Vec<Rule> {
        let mut out: Vec<Rule> = Vec::new();
        for (_, rules) in self.applicable(user, ns) {
            for r in rules.iter() {
                if !out.contains(r) {
                    out.push(r.clone());
                }
            }
        }
        out
    }

    /// The rules of a role a binding would name: `Role` in `ns`, or a `ClusterRole`.
    pub fn role(&self, kind: &str, ns: &str, name: &str) -> Option<Arc<Vec<Rule>>> {
        match kind {
            "Role" => self.roles.get(&(ns.to_string(), name.to_string())).cloned(),
            _ => self.cluster_roles.get(name).cloned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user(name: &str, groups: &[&str]) -> User {
        User {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            bound: None,
        }
    }

    fn res(verb: &str, group: &str, resource: &str, ns: &str) -> Attributes {
        let (resource, sub) = match resource.split_once('/') {
            Some((r, s)) => (r, Some(s.to_string())),
            None => (resource, None),
        };
        Attributes {
            verb: verb.into(),
            group: group.into(),
            resource: Some(resource.into()),
            subresource: sub,
            namespace: (!ns.is_empty()).then(|| ns.to_string()),
            ..Attributes::default()
        }
    }

    fn index() -> Index {
        let mut i = Index::default();
        i.add(
            "ClusterRole",
            &json!({"metadata": {"name": "view"}, "rules": [
                {"verbs": ["get", "list", "watch"], "apiGroups": ["", "apps"],
                 "resources": ["pods", "pods/log", "deployments"]}]}),
        );
        i.add(
            "Role",
            &json!({"metadata": {"name": "cm-one", "namespace": "dev"}, "rules": [
                {"verbs": ["update"], "apiGroups": [""], "resources": ["configmaps"],
                 "resourceNames": ["one"]}]}),
        );
        i.add(
            "RoleBinding",
            &json!({"metadata": {"name": "alice-view", "namespace": "dev"},
                "roleRef": {"kind": "ClusterRole", "name": "view"},
                "subjects": [{"kind": "User", "name": "alice"},
                             {"kind": "ServiceAccount", "name": "robot"}]}),
        );
        i.add(
            "RoleBinding",
            &json!({"metadata": {"name": "ops-cm", "namespace": "dev"},
                "roleRef": {"kind": "Role", "name": "cm-one"},
                "subjects": [{"kind": "Group", "name": "ops"}]}),
        );
        i.add(
            "ClusterRoleBinding",
            &json!({"metadata": {"name": "auditors"},
                "roleRef": {"kind": "ClusterRole", "name": "view"},
                "subjects": [{"kind": "Group", "name": "auditors"}]}),
        );
        i
    }

    #[test]
    fn bindings_grant_their_roles_where_they_live() {
        let i = index();
        let alice = user("alice", &["system:authenticated"]);
        assert_eq!(
            i.allowed_by(&alice, &res("list", "", "pods", "dev"))
                .as_deref(),
            Some("alice-view")
        );
        assert!(i
            .allowed_by(&alice, &res("list", "", "pods", "prod"))
            .is_none());
        assert!(i.allowed_by(&alice, &res("list", "", "pods", "")).is_none());
        assert!(i
            .allowed_by(&alice, &res("delete", "", "pods", "dev"))
            .is_none());
        assert!(i
            .allowed_by(&alice, &res("get", "", "secrets", "dev"))
            .is_none());
        assert!(i
            .allowed_by(&alice, &res("get", "", "pods/log", "dev"))
            .is_some());
        assert!(i
            .allowed_by(&alice, &res("get", "", "pods/exec", "dev"))
            .is_none());
        assert!(i
            .allowed_by(&alice, &res("get", "batch", "pods", "dev"))
            .is_none());
        // A ServiceAccount subject without a namespace is in the binding's.
        let robot = user("system:serviceaccount:dev:robot", &[]);
        assert!(i
            .allowed_by(&robot, &res("get", "", "pods", "dev"))
            .is_some());
        let other = user("system:serviceaccount:prod:robot", &[]);
        assert!(i
            .allowed_by(&other, &res("get", "", "pods", "dev"))
            .is_none());
        // Groups, cluster-wide.
        let aud = user("bob", &["auditors"]);
        assert!(i
            .allowed_by(&aud, &res("watch", "apps", "deployments", ""))
            .is_some());
        // resourceNames: only that name.
        let ops = user("carol", &["ops"]);
        let mut a = res("update", "", "configmaps", "dev");
        assert!(i.allowed_by(&ops, &a).is_none(), "no name, no match");
        a.name = "one".into();
        assert!(i.allowed_by(&ops, &a).is_some());
        a.name = "two".into();
        assert!(i.allowed_by(&ops, &a).is_none());
    }

    #[test]
    fn non_resource_urls_match_exactly_or_by_prefix() {
        let r = Rule {
            verbs: vec!["get".into()],
            non_resource_urls: vec!["/healthz".into(), "/apis/*".into()],
            ..Rule::default()
        };
        assert!(r.allows(&Attributes::non_resource("get", "/healthz")));
        assert!(r.allows(&Attributes::non_resource("get", "/apis/apps/v1")));
        assert!(!r.allows(&Attributes::non_resource("get", "/metrics")));
        assert!(!r.allows(&Attributes::non_resource("post", "/healthz")));
    }

    #[test]
    fn a_list_written_null_reads_as_empty_as_it_is_stored() {
        let r = parse_rules(&json!({"rules": [{"verbs": ["*"], "apiGroups": ["*"],
            "resources": ["*"], "resourceNames": null}]}))
        .unwrap();
        assert!(r[0].resource_names.is_empty());
        let mine = vec![Rule {
            verbs: vec!["get".into()],
            api_groups: vec!["".into()],
            resources: vec!["pods".into()],
            ..Rule::default()
        }];
        assert!(
            covers(&mine, &r).is_some(),
            "null names is all names, and not held"
        );
        assert!(parse_rules(&json!({"rules": [{"verbs": "get"}]})).is_err());
    }

    #[test]
    fn coverage_needs_every_permission() {
        let mine = vec![Rule {
            verbs: vec!["get".into(), "list".into()],
            api_groups: vec!["".into()],
            resources: vec!["pods".into(), "configmaps/*".into()],
            ..Rule::default()
        }];
        let rule = |verbs: &[&str], resources: &[&str], names: &[&str]| Rule {
            verbs: verbs.iter().map(|s| s.to_string()).collect(),
            api_groups: vec!["".into()],
            resources: resources.iter().map(|s| s.to_string()).collect(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            ..Rule::default()
        };
        assert!(covers(&mine, &[rule(&["get"], &["pods"], &[])]).is_none());
        assert!(covers(&mine, &[rule(&["get"], &["pods"], &["p1"])]).is_none());
        assert!(covers(&mine, &[rule(&["list"], &["configmaps/status"], &[])]).is_none());
        assert!(covers(&mine, &[rule(&["delete"], &["pods"], &[])]).is_some());
        assert!(covers(&mine, &[rule(&["*"], &["pods"], &[])]).is_some());
        assert!(covers(&mine, &[rule(&["get"], &["*"], &[])]).is_some());
        assert!(covers(&mine, &[rule(&["get"], &["secrets"], &[])]).is_some());
        // Holding one name does not cover all names.
        let one = vec![rule(&["get"], &["secrets"], &["s1"])];
        assert!(covers(&one, &[rule(&["get"], &["secrets"], &[])]).is_some());
        assert!(covers(&one, &[rule(&["get"], &["secrets"], &["s1"])]).is_none());
    }
}
