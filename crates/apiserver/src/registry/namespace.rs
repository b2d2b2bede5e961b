//! Namespace termination: a deleted namespace turns `Terminating`, everything in it is
//! deleted, and then its `kubernetes` finalizer is removed so that it goes too.

use std::time::Duration;

use berth_core::resources::{self, Kind, RESOURCES};
use serde_json::Value;

use super::{DeleteOptions, ListParams, Registry};
use crate::status::ApiError;

/// Finish terminating namespace `name` in the background.
pub(crate) fn spawn_finalizer(registry: Registry, name: String) {
    tokio::spawn(async move {
        loop {
            match finalize(&registry, &name).await {
                Ok(true) => break,
                Ok(false) => tokio::time::sleep(Duration::from_millis(500)).await,
                Err(e) => {
                    tracing::warn!(namespace = %name, error = %e, "namespace cleanup failed; retrying");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
    });
}

/// One pass: delete what is left in the namespace; true once it is empty and released.
async fn finalize(registry: &Registry, ns: &str) -> Result<bool, ApiError> {
    let mut remaining = 0;
    let custom = registry.custom.all();
    // A custom kind is stored once, as its storage version.
    let stored_custom = custom
        .iter()
        .filter(|c| std::ptr::eq(c.resource, c.storage))
        .map(|c| c.storage);
    for res in RESOURCES
        .iter()
        .chain(stored_custom)
        .filter(|r| r.namespaced)
    {
        let listed = registry.list(res, Some(ns), &ListParams::default()).await?;
        for item in &listed.items {
            remaining += 1;
            let name = super::name_of(item);
            if item.pointer("/metadata/deletionTimestamp").is_none() {
                match registry
                    .delete(res, Some(ns), name, &DeleteOptions::default())
                    .await
                {
                    Ok((_, true)) => remaining -= 1,
                    Ok((_, false)) => {}
                    Err(e) if e.reason == "NotFound" => remaining -= 1,
                    Err(e) => return Err(e),
                }
            }
        }
    }
    if remaining > 0 {
        return Ok(false);
    }
    let nsres = resources::of_kind(Kind::Namespace);
    registry
        .remove_finalizer(nsres, None, ns, "kubernetes", true)
        .await?;
    Ok(true)
}

/// After a restart, pick up namespaces that were terminating.
pub(crate) async fn resume_terminating(registry: &Registry) -> Result<(), ApiError> {
    let nsres = resources::of_kind(Kind::Namespace);
    let listed = registry.list(nsres, None, &ListParams::default()).await?;
    for ns in listed.items {
        if ns.pointer("/metadata/deletionTimestamp").is_some() {
            let name = ns
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            spawn_finalizer(registry.clone(), name);
        }
    }
    Ok(())
}

type NamespaceCache = std::sync::Arc<std::sync::RwLock<std::collections::HashMap<String, bool>>>;

/// Keep `cache` (namespace -> terminating) in step with the store. While the mirror
/// rebuilds, the cache is empty and every lookup reads the store.
pub(crate) async fn spawn_cache(registry: Registry, cache: NamespaceCache) -> Result<(), ApiError> {
    let prefix = resources::of_kind(Kind::Namespace).key_prefix();
    let strip = prefix.clone();
    super::mirror::spawn(registry, vec![prefix], move |objects| {
        let mut c = cache.write().expect("namespace cache");
        c.clear();
        for (key, ns) in objects {
            let terminating = ns.pointer("/metadata/deletionTimestamp").is_some();
            c.insert(key.trim_start_matches(&strip).to_string(), terminating);
        }
    })
    .await
}
