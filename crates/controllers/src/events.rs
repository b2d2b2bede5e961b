//! Events the controllers write about their objects, in the background.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};

/// Write an Event about an object, in the background; a failure is only logged.
pub fn record(
    client: &kube::Client,
    about: berth_core::events::Involved,
    type_: &str,
    reason: &str,
    message: &str,
    component: &str,
) {
    let ev = berth_core::events::event(
        about,
        type_,
        reason,
        message,
        component,
        jiff::Timestamp::now(),
    );
    let api: Api<k8s_openapi::api::core::v1::Event> =
        Api::namespaced(client.clone(), about.namespace);
    tokio::spawn(async move {
        let Ok(ev) = serde_json::from_value(ev) else {
            return;
        };
        if let Err(e) = api.create(&PostParams::default(), &ev).await {
            tracing::debug!(error = %e, "could not record an event");
        }
    });
}

/// Delete each of `names` through `api` (one already gone is skipped), writing a Normal
/// `SuccessfulDelete` Event about `about` that says `said(name)` for each one deleted.
pub async fn delete_each<K>(
    client: &kube::Client,
    api: &Api<K>,
    names: &[String],
    dp: &kube::api::DeleteParams,
    about: berth_core::events::Involved<'_>,
    component: &str,
    said: impl Fn(&str) -> String,
) -> Result<(), crate::Error>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let what = K::kind(&()).to_lowercase();
    for name in names {
        match api.delete(name, dp).await {
            Ok(_) => record(
                client,
                about,
                "Normal",
                "SuccessfulDelete",
                &said(name),
                component,
            ),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                let ns = about.namespace;
                return Err(crate::api_err(format!("deleting {what} {ns}/{name}"))(e));
            }
        }
    }
    Ok(())
}

/// What an Event about an `apps/v1` object of `kind` refers to.
pub fn involved<'a>(kind: &'a str, meta: &'a ObjectMeta) -> berth_core::events::Involved<'a> {
    involved_in("apps/v1", kind, meta)
}

/// What an Event about an object of `api_version` and `kind` refers to.
pub fn involved_in<'a>(
    api_version: &'a str,
    kind: &'a str,
    meta: &'a ObjectMeta,
) -> berth_core::events::Involved<'a> {
    berth_core::events::Involved {
        api_version,
        kind,
        namespace: meta.namespace.as_deref().unwrap_or("default"),
        name: meta.name.as_deref().unwrap_or_default(),
        uid: meta.uid.as_deref().unwrap_or_default(),
    }
}
