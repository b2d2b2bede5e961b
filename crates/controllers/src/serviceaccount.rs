//! Every namespace's `default` ServiceAccount and its `kube-root-ca.crt` ConfigMap (the
//! cluster CA that in-cluster clients trust), made again if removed and the CA put back if
//! changed, as Kubernetes' serviceaccounts and root-ca-cert-publisher controllers do.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::runtime::controller::Action;
use serde_json::json;

use crate::{api_err, Context, Error};

pub const DEFAULT: &str = "default";
pub const ROOT_CA: &str = "kube-root-ca.crt";
const CA_KEY: &str = "ca.crt";

/// What one namespace lacks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub create_account: bool,
    /// Write the CA ConfigMap: create it (`true`) or replace its data (`false`).
    pub ca: Option<bool>,
}

/// Decide for namespace `ns`, given its `default` account (if any), its CA ConfigMap (if
/// any) and the cluster CA.
pub fn plan(
    ns: &Namespace,
    account: Option<&ServiceAccount>,
    ca_map: Option<&ConfigMap>,
    root_ca: &str,
) -> Plan {
    if ns.metadata.deletion_timestamp.is_some() {
        return Plan::default();
    }
    let mut out = Plan {
        create_account: account.is_none(),
        ca: None,
    };
    if !root_ca.is_empty() {
        out.ca = match ca_map {
            None => Some(true),
            Some(cm) => {
                let held = cm.data.as_ref().and_then(|d| d.get(CA_KEY));
                (held.map(String::as_str) != Some(root_ca)).then_some(false)
            }
        };
    }
    out
}

async fn get_opt<K>(api: &Api<K>, name: &str) -> Result<Option<K>, Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.get_opt(name)
        .await
        .map_err(api_err(format!("reading {name}")))
}

pub async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = ns.metadata.name.clone().unwrap_or_default();
    let accounts: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &name);
    let maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &name);
    let account = get_opt(&accounts, DEFAULT).await?;
    let ca_map = get_opt(&maps, ROOT_CA).await?;
    let plan = plan(&ns, account.as_ref(), ca_map.as_ref(), &ctx.root_ca);
    let pp = PostParams::default();
    let ignore_conflict = |r: Result<(), kube::Error>, what: &str| match r {
        Ok(()) => Ok(()),
        // Made or changed meanwhile, or the namespace is going: the next pass sees it.
        Err(kube::Error::Api(s)) if matches!(s.code, 403 | 404 | 409) => Ok(()),
        Err(e) => Err(api_err(format!("{what} in namespace {name}"))(e)),
    };
    if plan.create_account {
        let sa: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": DEFAULT}})).expect("valid");
        ignore_conflict(
            accounts.create(&pp, &sa).await.map(|_| ()),
            "creating the default ServiceAccount",
        )?;
    }
    if let Some(create) = plan.ca {
        let data = json!({CA_KEY: ctx.root_ca});
        let result = if create {
            let cm: ConfigMap = serde_json::from_value(json!({
                "metadata": {"name": ROOT_CA,
                    "annotations": {"kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."}},
                "data": data,
            }))
            .expect("valid");
            maps.create(&pp, &cm).await.map(|_| ())
        } else {
            maps.patch(
                ROOT_CA,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(json!({"data": data})),
            )
            .await
            .map(|_| ())
        };
        ignore_conflict(result, "writing the root CA ConfigMap")?;
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(terminating: bool) -> Namespace {
        let mut v = json!({"metadata": {"name": "team"}});
        if terminating {
            v["metadata"]["deletionTimestamp"] = json!("2026-12-07T00:00:00Z");
        }
        serde_json::from_value(v).unwrap()
    }

    fn ca_map(ca: &str) -> ConfigMap {
        serde_json::from_value(json!({"metadata": {"name": ROOT_CA}, "data": {"ca.crt": ca}}))
            .unwrap()
    }

    #[test]
    fn a_namespace_gets_its_account_and_the_ca_once() {
        let sa: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap();
        assert_eq!(
            plan(&ns(false), None, None, "CA"),
            Plan {
                create_account: true,
                ca: Some(true)
            }
        );
        assert_eq!(
            plan(&ns(false), Some(&sa), Some(&ca_map("CA")), "CA"),
            Plan::default()
        );
        assert_eq!(
            plan(&ns(false), Some(&sa), Some(&ca_map("old")), "CA").ca,
            Some(false),
            "a changed CA is put back"
        );
        assert_eq!(plan(&ns(true), None, None, "CA"), Plan::default());
    }
}
