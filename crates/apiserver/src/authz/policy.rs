//! The roles and bindings every cluster starts with, as Kubernetes' bootstrap policy names
//! them: `cluster-admin` for `system:masters`; `admin`, `edit` and `view` aggregated from the
//! `system:aggregate-to-*` roles (so a CRD's installer can add to them by label);
//! `system:basic-user`, `system:discovery` and `system:public-info-viewer` for everyone
//! signed in. Each carries `rbac.authorization.kubernetes.io/autoupdate: "true"`: on start the
//! server puts back what was removed from them, unless that annotation was set to false.

use serde_json::{json, Value};

use berth_core::resources::{self, Kind};

use crate::registry::{Registry, WriteOptions};
use crate::status::ApiError;

const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";
const AGGREGATE: &str = "rbac.authorization.k8s.io/aggregate-to-";

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

fn urls(urls: &[&str], verbs: &[&str]) -> Value {
    json!({"nonResourceURLs": urls, "verbs": verbs})
}

fn cluster_role(name: &str, labels: Value, rules: Vec<Value>, aggregate: Option<&str>) -> Value {
    let mut labels = labels;
    labels["kubernetes.io/bootstrapping"] = json!("rbac-defaults");
    let mut o = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": name, "labels": labels,
            "annotations": {AUTOUPDATE: "true"}},
        "rules": rules,
    });
    if let Some(to) = aggregate {
        o["aggregationRule"] = json!({"clusterRoleSelectors": [
            {"matchLabels": {format!("{AGGREGATE}{to}"): "true"}}]});
    }
    o
}

fn aggregated_to(roles: &[&str]) -> Value {
    let mut m = serde_json::Map::new();
    for r in roles {
        m.insert(format!("{AGGREGATE}{r}"), json!("true"));
    }
    Value::Object(m)
}

fn cluster_binding(name: &str, role: &str, group: &str) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
            "annotations": {AUTOUPDATE: "true"}},
        "roleRef": {"apiGroup": resources::RBAC, "kind": "ClusterRole", "name": role},
        "subjects": [{"apiGroup": resources::RBAC, "kind": "Group", "name": group}],
    })
}

/// What a namespace's readers may see: everything Berth serves there but Secrets (and the
/// roles that grant access).
fn view_rules() -> Vec<Value> {
    vec![
        rule(
            &[""],
            &[
                "configmaps",
                "endpoints",
                "persistentvolumeclaims",
                "persistentvolumeclaims/status",
                "pods",
                "pods/log",
                "pods/status",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "replicationcontrollers/status",
                "serviceaccounts",
                "services",
                "services/status",
                "events",
                "namespaces",
                "namespaces/status",
            ],
            READ,
        ),
        rule(
            &["apps"],
            &[
                "controllerrevisions",
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "statefulsets",
                "statefulsets/scale",
                "statefulsets/status",
            ],
            READ,
        ),
        rule(
            &["autoscaling"],
            &[
                "horizontalpodautoscalers",
                "horizontalpodautoscalers/status",
            ],
            READ,
        ),
        rule(
            &["batch"],
            &["cronjobs", "cronjobs/status", "jobs", "jobs/status"],
            READ,
        ),
        rule(
            &["policy"],
            &["poddisruptionbudgets", "poddisruptionbudgets/status"],
            READ,
        ),
        rule(&["discovery.k8s.io"], &["endpointslices"], READ),
        rule(&["coordination.k8s.io"], &["leases"], READ),
        rule(&["metrics.k8s.io"], &["pods", "nodes"], READ),
    ]
}

/// What a namespace's editors may change: its workloads, Services, configuration and
/// Secrets, and open streams into its pods.
fn edit_rules() -> Vec<Value> {
    let mut all: Vec<&str> = READ.to_vec();
    all.extend(WRITE);
    vec![
        rule(
            &[""],
            &["pods/attach", "pods/exec", "pods/portforward", "pods/proxy"],
            &["create", "get"],
        ),
        rule(&[""], &["pods/eviction"], &["create"]),
        rule(&[""], &["secrets"], &all),
        rule(
            &[""],
            &[
                "configmaps",
                "events",
                "persistentvolumeclaims",
                "pods",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "services",
                "endpoints",
            ],
            WRITE,
        ),
        rule(&[""], &["serviceaccounts/token"], &["create"]),
        rule(
            &["apps"],
            &[
                "daemonsets",
                "deployments",
                "deployments/rollback",
                "deployments/scale",
                "replicasets",
                "replicasets/scale",
                "statefulsets",
                "statefulsets/scale",
            ],
            WRITE,
        ),
        rule(&["autoscaling"], &["horizontalpodautoscalers"], WRITE),
        rule(&["batch"], &["cronjobs", "jobs"], WRITE),
        rule(&["policy"], &["poddisruptionbudgets"], WRITE),
        rule(&["discovery.k8s.io"], &["endpointslices"], WRITE),
        rule(&["coordination.k8s.io"], &["leases"], WRITE),
    ]
}

/// What a namespace's admins may do besides edit: grant roles within it.
fn admin_rules() -> Vec<Value> {
    let mut all: Vec<&str> = READ.to_vec();
    all.extend(WRITE);
    vec![
        rule(&[resources::RBAC], &["rolebindings", "roles"], &all),
        rule(
            &["authorization.k8s.io"],
            &["localsubjectaccessreviews"],
            &["create"],
        ),
    ]
}

const DISCOVERY: &[&str] = &[
    "/api",
    "/api/*",
    "/apis",
    "/apis/*",
    "/openapi",
    "/openapi/*",
    "/version",
    "/version/",
];
const PUBLIC: &[&str] = &["/healthz", "/livez", "/readyz", "/version", "/version/"];

/// Every default ClusterRole and ClusterRoleBinding.
pub fn defaults() -> Vec<(Kind, Value)> {
    let none = json!({});
    let roles = vec![
        cluster_role(
            "cluster-admin",
            none.clone(),
            vec![rule(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])],
            None,
        ),
        cluster_role("admin", none.clone(), vec![], Some("admin")),
        cluster_role("edit", aggregated_to(&["admin"]), vec![], Some("edit")),
        cluster_role("view", aggregated_to(&["edit"]), vec![], Some("view")),
        cluster_role(
            "system:aggregate-to-admin",
            aggregated_to(&["admin"]),
            admin_rules(),
            None,
        ),
        cluster_role(
            "system:aggregate-to-edit",
            aggregated_to(&["admin", "edit"]),
            edit_rules(),
            None,
        ),
        cluster_role(
            "system:aggregate-to-view",
            aggregated_to(&["admin", "edit", "view"]),
            view_rules(),
            None,
        ),
        cluster_role(
            "system:basic-user",
            none.clone(),
            vec![
                rule(
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                    &["create"],
                ),
                rule(
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                    &["create"],
                ),
            ],
            None,
        ),
        cluster_role(
            "system:discovery",
            none.clone(),
            vec![urls(DISCOVERY, &["get"])],
            None,
        ),
        cluster_role(
            "system:public-info-viewer",
            none,
            vec![urls(PUBLIC, &["get"])],
            None,
        ),
    ];
    let bindings = vec![
        cluster_binding("cluster-admin", "cluster-admin", crate::authz::MASTERS),
        cluster_binding(
            "system:basic-user",
            "system:basic-user",
            crate::authz::AUTHENTICATED,
        ),
        cluster_binding(
            "system:discovery",
            "system:discovery",
            crate::authz::AUTHENTICATED,
        ),
        cluster_binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            crate::authz::AUTHENTICATED,
        ),
    ];
    roles
        .into_iter()
        .map(|r| (Kind::ClusterRole, r))
        .chain(bindings.into_iter().map(|b| (Kind::ClusterRoleBinding, b)))
        .collect()
}

/// Create the default roles and bindings that are missing, and put back the rules, labels and
/// subjects of those still marked for autoupdate.
pub async fn bootstrap(registry: &Registry) -> Result<(), ApiError> {
    let opts = WriteOptions {
        field_manager: Some("berth-rbac-bootstrap".into()),
        ..WriteOptions::default()
    };
    for (kind, want) in defaults() {
        let res = resources::of_kind(kind);
        let name = want["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        match registry.get(res, None, &name).await {
            Err(e) if e.reason == "NotFound" => {
                match registry.create(res, None, want, &opts).await {
                    Ok(_) => {}
                    Err(e) if e.reason == "AlreadyExists" => {}
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
            Ok(mut have) => {
                if have.pointer(&format!(
                    "/metadata/annotations/{}",
                    AUTOUPDATE.replace('/', "~1")
                )) == Some(&json!("false"))
                {
                    continue;
                }
                let mut changed = false;
                for field in ["rules", "aggregationRule", "subjects"] {
                    // Aggregated roles' rules are the aggregation controller's to fill in.
                    if field == "rules" && want.get("aggregationRule").is_some() {
                        continue;
                    }
                    if let Some(v) = want.get(field) {
                        if have.get(field) != Some(v) {
                            have[field] = v.clone();
                            changed = true;
                        }
                    }
                }
                for (k, v) in want["metadata"]["labels"].as_object().into_iter().flatten() {
                    if have.pointer(&format!("/metadata/labels/{}", k.replace('/', "~1")))
                        != Some(v)
                    {
                        have["metadata"]["labels"][k] = v.clone();
                        changed = true;
                    }
                }
                if changed {
                    match registry
                        .update(res, None, &name, have, crate::registry::Part::Main, &opts)
                        .await
                    {
                        Ok(_) => {}
                        Err(e) if e.reason == "Conflict" => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }
    Ok(())
}
