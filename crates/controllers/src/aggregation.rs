//! ClusterRole aggregation: a ClusterRole with an `aggregationRule` holds the rules of every
//! ClusterRole its selectors pick (`admin`, `edit` and `view` are made this way, so an
//! installer can extend them by labelling a role). Any ClusterRole's change wakes them all.

use std::sync::Arc;

use berth_core::selector::Selector;
use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::{api_err, Context};

/// The rules an aggregated role should hold, given every ClusterRole (by name order), or None
/// when it is not aggregated or already holds them.
pub fn plan(role: &ClusterRole, all: &[Arc<ClusterRole>]) -> Option<Vec<PolicyRule>> {
    role.aggregation_rule.as_ref()?;
    let name = role.metadata.name.clone().unwrap_or_default();
    let rules = gathered(role, all, &mut vec![name]);
    (role.rules.clone().unwrap_or_default() != rules).then_some(rules)
}

/// What `role` grants once aggregated: its own rules, or, if it aggregates, the rules of the
/// roles it selects in name order, an aggregated one's as gathered in turn (so `admin`, which
/// selects `edit`, which selects `view`, is right in one pass whatever order the changes
/// arrive in). `path` holds the roles being gathered, so a cycle ends.
fn gathered(
    role: &ClusterRole,
    all: &[Arc<ClusterRole>],
    path: &mut Vec<String>,
) -> Vec<PolicyRule> {
    let Some(rule) = role.aggregation_rule.as_ref() else {
        return role.rules.clone().unwrap_or_default();
    };
    let selectors: Vec<Selector> = rule
        .cluster_role_selectors
        .iter()
        .flatten()
        .filter_map(|s| Selector::from_label_selector(s).ok())
        .collect();
    let mut sources: Vec<&Arc<ClusterRole>> = all
        .iter()
        .filter(|r| !path.contains(r.metadata.name.as_ref().unwrap_or(&String::new())))
        .filter(|r| {
            let labels = r.metadata.labels.clone().unwrap_or_default();
            selectors.iter().any(|s| s.matches(&labels))
        })
        .collect();
    sources.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut rules: Vec<PolicyRule> = Vec::new();
    for r in sources {
        path.push(r.metadata.name.clone().unwrap_or_default());
        for rule in gathered(r, all, path) {
            if !rules.contains(&rule) {
                rules.push(rule);
            }
        }
        path.pop();
    }
    rules
}

/// Keep every aggregated role's rules right: a pass over the ClusterRole cache whenever it
/// changes (`changed` says so; the cache's stream is drained elsewhere, not by this loop)
/// and every 10 s besides, writing each aggregated role whose rules differ. Level-triggered,
/// so no change can be missed between two passes. Runs until dropped.
pub async fn run(ctx: Arc<Context>, mut changed: impl Stream<Item = ()> + Unpin) {
    if ctx.cluster_roles.wait_until_ready().await.is_err() {
        return tracing::warn!("the ClusterRole cache never filled: no aggregation");
    }
    let api: Api<ClusterRole> = Api::all(ctx.client.clone());
    loop {
        let all = ctx.cluster_roles.state();
        for role in all.iter().filter(|r| r.aggregation_rule.is_some()) {
            let Some(rules) = plan(role, &all) else {
                continue;
            };
            let name = role.metadata.name.clone().unwrap_or_default();
            let patch = Patch::Merge(json!({"rules": rules}));
            match api.patch(&name, &PatchParams::default(), &patch).await {
                Ok(_) => tracing::debug!(role = %name, "aggregated rules written"),
                Err(e) => {
                    let e = api_err(format!("aggregating the rules of clusterrole {name}"))(e);
                    tracing::warn!(error = %e, "aggregation failed; trying again on the next pass");
                }
            }
        }
        tokio::select! {
            next = changed.next() => if next.is_none() { return },
            _ = tokio::time::sleep(std::time::Duration::from_secs(10)) => {}
        }
        // One pass for however many changes are queued.
        while let Some(Some(())) = changed.next().now_or_never() {}
    }
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

    /// `edit` selects `view` (itself aggregated): it holds what `view` gathers even before
    /// `view` has been written, and a cycle ends.
    #[test]
    fn aggregation_follows_aggregated_roles_in_one_pass() {
        let mut view = (*role("view", json!({"to-edit": "true"}), &[], Some("to-view"))).clone();
        view.aggregation_rule = Some(
            serde_json::from_value(json!({"clusterRoleSelectors": [
                {"matchLabels": {"to-view": "true"}}, {"matchLabels": {"to-view-too": "true"}}]}))
            .unwrap(),
        );
        let edit = role("edit", json!({"to-view-too": "true"}), &[], Some("to-edit"));
        let all = vec![
            Arc::new(view),
            edit.clone(),
            role("reader", json!({"to-view": "true"}), &["get"], None),
            role("writer", json!({"to-edit": "true"}), &["create"], None),
        ];
        let rules = plan(&edit, &all).unwrap();
        let verbs: Vec<_> = rules.iter().map(|r| r.verbs.join(",")).collect();
        assert_eq!(
            verbs,
            ["get", "create"],
            "view's gathered rules, then writer's"
        );
    }
}
