//! Ownership, as Kubernetes' controller-ref manager keeps it: the controller reference an
//! owner puts on what it creates, and [`claim`], which adopts orphans a selector matches
//! and releases what no longer matches.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::Api;

use crate::api_err;

/// The controller reference an owner puts on what it creates.
pub fn controller_ref(api_version: &str, kind: &str, meta: &ObjectMeta) -> OwnerReference {
    OwnerReference {
        api_version: api_version.into(),
        kind: kind.into(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Is `meta` controlled by the object with `uid`?
pub fn controlled_by(meta: &ObjectMeta, uid: &str) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && r.uid == uid)
}

/// The controller reference of an object, if it has one.
fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

/// Claim what an owner's selector picks, as Kubernetes' controller-ref manager does. Of the
/// objects in the owner's namespace in `cache`, it returns those the owner controls,
/// after two changes made through `api`:
/// - an orphan (no controller) that the selector matches is adopted: the owner's controller
///   reference is added, pinned to the version seen, once a fresh read shows the owner is
///   not being deleted;
/// - a controlled object the selector no longer matches is released: the reference comes off.
///
/// A write that loses a race is skipped; the next reconcile claims again.
pub async fn claim<K>(
    api: &Api<K>,
    owner: (&str, &str, &ObjectMeta),
    owner_api: &Api<impl kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug>,
    selector: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
    cache: &kube::runtime::reflector::Store<K>,
) -> Result<Vec<std::sync::Arc<K>>, crate::Error>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let (api_version, kind, meta) = owner;
    let uid = meta.uid.as_deref().unwrap_or_default();
    // A selector that cannot be read, or selects everything, adopts and releases nothing.
    let selector = selector
        .and_then(|s| berth_core::selector::Selector::from_label_selector(s).ok())
        .filter(|s| !s.is_empty());
    let matches = |m: &ObjectMeta| {
        let empty = Default::default();
        selector
            .as_ref()
            .is_some_and(|s| s.matches(m.labels.as_ref().unwrap_or(&empty)))
    };
    let mut owner_fresh: Option<bool> = None;
    let mut owned = Vec::new();
    let candidates = cache
        .state()
        .into_iter()
        .filter(|c| c.meta().namespace == meta.namespace);
    for c in candidates {
        let m = c.meta();
        match controller_of(m) {
            Some(r) if r.uid == uid => {
                if selector.is_none() || matches(m) || m.deletion_timestamp.is_some() {
                    owned.push(c);
                    continue;
                }
                let keep = m.owner_references.iter().flatten().filter(|r| r.uid != uid);
                pinned_patch(api, m, &owner_refs_patch(keep, m), "releasing").await?;
            }
            Some(_) => {}
            None => {
                if m.deletion_timestamp.is_some() || !matches(m) {
                    continue;
                }
                if owner_fresh.is_none() {
                    let name = meta.name.as_deref().unwrap_or_default();
                    let fresh = owner_api
                        .get_opt(name)
                        .await
                        .map_err(api_err(format!("re-reading {kind} {name} before adopting")))?;
                    owner_fresh = Some(fresh.is_some_and(|o| {
                        o.meta().uid.as_deref() == Some(uid)
                            && o.meta().deletion_timestamp.is_none()
                    }));
                }
                if owner_fresh != Some(true) {
                    continue;
                }
                let mine = controller_ref(api_version, kind, meta);
                let refs = m.owner_references.iter().flatten().chain([&mine]);
                let patch = owner_refs_patch(refs, m);
                if let Some(adopted) = pinned_patch(api, m, &patch, "adopting").await? {
                    owned.push(std::sync::Arc::new(adopted));
                }
            }
        }
    }
    Ok(owned)
}

/// A merge patch pinned to a resourceVersion; a lost race (409) or a vanished object (404)
/// is `None`, not an error.
pub async fn pinned_patch<K>(
    api: &Api<K>,
    m: &ObjectMeta,
    patch: &serde_json::Value,
    doing: &str,
) -> Result<Option<K>, crate::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = m.name.as_deref().unwrap_or_default();
    match api
        .patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(patch),
        )
        .await
    {
        Ok(o) => Ok(Some(o)),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(None),
        Err(e) => Err(api_err(format!("{doing} {}", name))(e)),
    }
}

/// A merge patch that sets an object's owner references to `refs`, pinned to the
/// resourceVersion of `m`. No references is no field (null removes it), as Kubernetes shows it.
pub fn owner_refs_patch<'a>(
    refs: impl IntoIterator<Item = &'a OwnerReference>,
    m: &ObjectMeta,
) -> serde_json::Value {
    let refs: Vec<&OwnerReference> = refs.into_iter().collect();
    let refs = if refs.is_empty() {
        serde_json::json!(null)
    } else {
        serde_json::json!(refs)
    };
    serde_json::json!({"metadata": {"ownerReferences": refs, "resourceVersion": m.resource_version}})
}
