//! rbac.authorization.k8s.io/v1 Roles, ClusterRoles and their bindings, and core/v1
//! ServiceAccounts: defaults, validation and `kubectl get`'s columns.

use serde_json::{json, Value};

use super::{arr_at, default_field, str_at};
use crate::resources::RBAC;
use crate::table::{col, wide, Column, AGE, NAME};
use crate::validation::FieldError;

/// Subjects and role references name the RBAC group unless they are ServiceAccounts.
pub(super) fn default_binding(obj: &mut Value) {
    if let Some(r) = obj.get_mut("roleRef").filter(|r| r.is_object()) {
        if str_at(r, "/apiGroup").is_empty() {
            r["apiGroup"] = json!(RBAC);
        }
    }
    if let Some(subjects) = obj.get_mut("subjects").and_then(Value::as_array_mut) {
        for s in subjects {
            let group = if str_at(s, "/kind") == "ServiceAccount" {
                ""
            } else {
                RBAC
            };
            default_field(s, "apiGroup", json!(group));
        }
    }
}

/// A Role's or ClusterRole's rules: each names verbs, and either resources in API groups or
/// (only cluster-wide) non-resource URLs, never both.
pub(super) fn validate_role(obj: &Value, namespaced: bool, errs: &mut Vec<FieldError>) {
    let aggregated = obj.get("aggregationRule").is_some_and(|a| !a.is_null());
    if aggregated && arr_at(obj, "/aggregationRule/clusterRoleSelectors").is_empty() {
        errs.push(FieldError::required("aggregationRule.clusterRoleSelectors"));
    }
    for (i, rule) in arr_at(obj, "/rules").iter().enumerate() {
        let path = format!("rules[{i}]");
        let list = |f: &str| arr_at(rule, &format!("/{f}"));
        if list("verbs").is_empty() {
            errs.push(FieldError::required_because(
                format!("{path}.verbs"),
                "verbs must contain at least one value",
            ));
        }
        let urls = list("nonResourceURLs");
        if !urls.is_empty() {
            if namespaced {
                errs.push(FieldError::invalid(
                    format!("{path}.nonResourceURLs"),
                    json!(urls),
                    "namespaced rules cannot apply to non-resource URLs",
                ));
            }
            if !list("apiGroups").is_empty() || !list("resources").is_empty() {
                errs.push(FieldError::invalid(
                    format!("{path}.nonResourceURLs"),
                    json!(urls),
                    "rules cannot apply to both regular resources and non-resource URLs",
                ));
            }
            continue;
        }
        if list("apiGroups").is_empty() {
            errs.push(FieldError::required_because(
                format!("{path}.apiGroups"),
                "resource rules must supply at least one api group",
            ));
        }
        if list("resources").is_empty() {
            errs.push(FieldError::required_because(
                format!("{path}.resources"),
                "resource rules must supply at least one resource",
            ));
        }
    }
}

/// A binding's role reference (a Role only from a RoleBinding) and its subjects.
pub(super) fn validate_binding(obj: &Value, namespaced: bool, errs: &mut Vec<FieldError>) {
    let kinds: &[&str] = if namespaced {
        &["ClusterRole", "Role"]
    } else {
        &["ClusterRole"]
    };
    let kind = str_at(obj, "/roleRef/kind");
    if !kinds.contains(&kind) {
        errs.push(FieldError::not_supported("roleRef.kind", kind, kinds));
    }
    let group = str_at(obj, "/roleRef/apiGroup");
    if group != RBAC {
        errs.push(FieldError::not_supported(
            "roleRef.apiGroup",
            group,
            &[RBAC],
        ));
    }
    let name = str_at(obj, "/roleRef/name");
    if name.is_empty() {
        errs.push(FieldError::required("roleRef.name"));
    } else if let Some(why) = path_segment(name) {
        errs.push(FieldError::invalid("roleRef.name", name, why));
    }
    for (i, s) in arr_at(obj, "/subjects").iter().enumerate() {
        let path = format!("subjects[{i}]");
        let kind = str_at(s, "/kind");
        let name = str_at(s, "/name");
        if name.is_empty() {
            errs.push(FieldError::required(format!("{path}.name")));
        }
        let group = str_at(s, "/apiGroup");
        match kind {
            "ServiceAccount" => {
                if !group.is_empty() {
                    errs.push(FieldError::not_supported(
                        format!("{path}.apiGroup"),
                        group,
                        &[""],
                    ));
                }
                if !name.is_empty() {
                    if let Some(why) = crate::validation::dns1123_subdomain(name) {
                        errs.push(FieldError::invalid(format!("{path}.name"), name, why));
                    }
                }
                if !namespaced && str_at(s, "/namespace").is_empty() {
                    errs.push(FieldError::required(format!("{path}.namespace")));
                }
            }
            "User" | "Group" => {
                if group != RBAC {
                    errs.push(FieldError::not_supported(
                        format!("{path}.apiGroup"),
                        group,
                        &[RBAC],
                    ));
                }
            }
            other => errs.push(FieldError::not_supported(
                format!("{path}.kind"),
                other,
                &["Group", "ServiceAccount", "User"],
            )),
        }
    }
}

/// A binding's role reference never changes: delete and recreate it instead.
pub(super) fn validate_binding_update(old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
    if old.get("roleRef") != new.get("roleRef") {
        errs.push(FieldError::invalid(
            "roleRef",
            new.get("roleRef").cloned().unwrap_or_default(),
            "cannot change roleRef",
        ));
    }
}

/// Why `name` cannot be one segment of a URL path, as RBAC object names must be (they may
/// hold colons: `system:node`).
pub(super) fn path_segment(name: &str) -> Option<String> {
    if name == "." || name == ".." {
        return Some(format!("may not be '{name}'"));
    }
    ['/', '%']
        .iter()
        .find(|c| name.contains(**c))
        .map(|c| format!("may not contain '{c}'"))
}

pub(super) fn role_columns() -> Vec<Column> {
    vec![
        NAME,
        col(
            "Created At",
            "CreationTimestamp is a timestamp representing the server time when this object was created.",
        ),
    ]
}

pub(super) fn role_cells(obj: &Value) -> Vec<Value> {
    vec![
        json!(str_at(obj, "/metadata/name")),
        json!(str_at(obj, "/metadata/creationTimestamp")),
    ]
}

pub(super) fn binding_columns() -> Vec<Column> {
    vec![
        NAME,
        col("Role", "RoleRef is the reference to the role bound."),
        AGE,
        wide("Users", "Users in the binding."),
        wide("Groups", "Groups in the binding."),
        wide("ServiceAccounts", "ServiceAccounts in the binding."),
    ]
}

pub(super) fn binding_cells(obj: &Value, age: String) -> Vec<Value> {
    let of = |kind: &str| {
        arr_at(obj, "/subjects")
            .iter()
            .filter(|s| str_at(s, "/kind") == kind)
            .map(|s| match str_at(s, "/namespace") {
                ns if kind == "ServiceAccount" => format!("{ns}/{}", str_at(s, "/name")),
                _ => str_at(s, "/name").to_string(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    vec![
        json!(str_at(obj, "/metadata/name")),
        json!(format!(
            "{}/{}",
            str_at(obj, "/roleRef/kind"),
            str_at(obj, "/roleRef/name")
        )),
        json!(age),
        json!(of("User")),
        json!(of("Group")),
        json!(of("ServiceAccount")),
    ]
}

pub(super) fn service_account_columns() -> Vec<Column> {
    vec![
        NAME,
        crate::table::int_col("Secrets", "Number of secrets referenced."),
        AGE,
    ]
}

pub(super) fn service_account_cells(obj: &Value, age: String) -> Vec<Value> {
    vec![
        json!(str_at(obj, "/metadata/name")),
        json!(arr_at(obj, "/secrets").len()),
        json!(age),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(errs: Vec<FieldError>) -> Vec<String> {
        errs.into_iter().map(|e| e.path).collect()
    }

    #[test]
    fn rules_name_verbs_and_either_resources_or_urls() {
        let role = json!({"rules": [
            {"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]},
            {"verbs": [], "apiGroups": [""], "resources": ["pods"]},
            {"verbs": ["get"], "nonResourceURLs": ["/healthz"]},
            {"verbs": ["get"], "resources": ["pods"]},
        ]});
        let mut errs = Vec::new();
        validate_role(&role, true, &mut errs);
        assert_eq!(
            paths(errs),
            [
                "rules[1].verbs",
                "rules[2].nonResourceURLs",
                "rules[3].apiGroups"
            ]
        );
        let mut errs = Vec::new();
        validate_role(&role, false, &mut errs);
        assert_eq!(paths(errs), ["rules[1].verbs", "rules[3].apiGroups"]);
    }

    #[test]
    fn bindings_are_defaulted_and_checked() {
        let mut b = json!({"roleRef": {"kind": "Role", "name": "r"}, "subjects": [
            {"kind": "User", "name": "alice"},
            {"kind": "ServiceAccount", "name": "default"},
            {"kind": "Robot", "name": "r2"},
        ]});
        default_binding(&mut b);
        assert_eq!(b["roleRef"]["apiGroup"], RBAC);
        assert_eq!(b["subjects"][0]["apiGroup"], RBAC);
        assert_eq!(b["subjects"][1]["apiGroup"], "");
        let mut errs = Vec::new();
        validate_binding(&b, true, &mut errs);
        assert_eq!(paths(errs), ["subjects[2].kind"]);
        let mut errs = Vec::new();
        validate_binding(&b, false, &mut errs);
        assert_eq!(
            paths(errs),
            ["roleRef.kind", "subjects[1].namespace", "subjects[2].kind"]
        );
        assert_eq!(
            path_segment("system:node"),
            None,
            "RBAC names may hold colons"
        );
        assert!(path_segment("a/b").is_some());
    }
}
