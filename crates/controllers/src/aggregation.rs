//! ClusterRole aggregation: a ClusterRole with an `aggregationRule` holds the rules of every
//! ClusterRole its selectors pick (`admin`, `edit` and `view` are made this way, so an
//! installer can extend them by labelling a role). Any ClusterRole's change wakes them all.

use std::sync::Arc;

use berth_core::selector::Selector;
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use serde_json::json;

use crate::{api_err, Context, Error};

/// The rules an aggregated role should hold, given every ClusterRole (by name order), or None
/// when it is not aggregated or already holds them.
pub fn plan(role: &ClusterRole, all: &[Arc<ClusterRole>]) -> Option<Vec<PolicyRule>> {
    let rule = role.aggregation_rule.as_ref()?;
    let selectors: Vec<Selector> = rule
        .cluster_role_selectors
        .iter()
        .flatten()
        .filter_map(|s| Selector::from_label_selector(s).ok())
        .collect();
    let mut sources: Vec<&Arc<ClusterRole>> = all
        .iter()
        .filter(|r| r.metadata.name != role.metadata.name)
        .filter(|r| {
            let labels = r.metadata.labels.clone().unwrap_or_default();
            selectors.iter().any(|s| s.matches(&labels))
        })
        .collect();
    sources.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut rules: Vec<PolicyRule> = Vec::new();
    for r in sources {
        for rule in r.rules.iter().flatten() {
            if !rules.contains(rule) {
                rules.push(rule.clone());
            }
        }
    }
    (role.rules.clone().unwrap_or_default() != rules).then_some(rules)
}

pub async fn reconcile(role: Arc<ClusterRole>, ctx: Arc<Context>) -> Result<Action, Error> {
    if role.aggregation_rule.is_none() {
        return Ok(Action::await_change());
    }
    ctx.cluster_roles
        .wait_until_ready()
        .await
        .map_err(|_| Error::Cache {
            what: "clusterroles",
        })?;
    let Some(rules) = plan(&role, &ctx.cluster_roles.state()) else {
        return Ok(Action::await_change());
    };
    let name = role.metadata.name.clone().unwrap_or_default();
    let api: Api<ClusterRole> = Api::all(ctx.client.clone());
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"rules": rules})),
    )
    .await
    .map_err(api_err(format!(
        "aggregating the rules of clusterrole {name}"
    )))?;
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(
        name: &str,
        labels: serde_json::Value,
        verbs: &[&str],
        aggregate: Option<&str>,
    ) -> Arc<ClusterRole> {
        let mut v = json!({"metadata": {"name": name, "labels": labels},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": verbs}]});
        if let Some(to) = aggregate {
            v["aggregationRule"] = json!({"clusterRoleSelectors": [{"matchLabels": {to: "true"}}]});
            v["rules"] = json!([]);
        }
        Arc::new(serde_json::from_value(v).unwrap())
    }

    #[test]
    fn an_aggregated_role_holds_the_rules_of_the_roles_it_selects() {
        let view = role("view", json!({}), &[], Some("to-view"));
        let all = vec![
            view.clone(),
            role("b", json!({"to-view": "true"}), &["list"], None),
            role("a", json!({"to-view": "true"}), &["get"], None),
            role("c", json!({}), &["delete"], None),
        ];
        let rules = plan(&view, &all).unwrap();
        let verbs: Vec<_> = rules.iter().map(|r| r.verbs.join(",")).collect();
        assert_eq!(verbs, ["get", "list"], "in name order, only the selected");
        let mut done = (*view).clone();
        done.rules = Some(rules);
        assert!(
            plan(&done, &all).is_none(),
            "nothing to write once it holds them"
        );
        assert!(plan(&all[1], &all).is_none(), "not aggregated");
    }
}
