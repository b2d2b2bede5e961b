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
    for res in RESOURCES.iter().filter(|r| r.namespaced) {
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

/// Load every namespace into `cache` and return a watch from the revision listed.
async fn fill(
    registry: &Registry,
    cache: &NamespaceCache,
) -> Result<berth_store::WatchStream, ApiError> {
    let nsres = resources::of_kind(Kind::Namespace);
    let listed = registry.list(nsres, None, &ListParams::default()).await?;
    {
        let mut c = cache.write().expect("namespace cache");
        c.clear();
        for ns in &listed.items {
            let terminating = ns.pointer("/metadata/deletionTimestamp").is_some();
            c.insert(super::name_of(ns).to_string(), terminating);
        }
    }
    registry
        .store
        .watch(&nsres.key_prefix(), listed.resource_version)
        .await
        .map_err(|e| super::store_err(nsres, e))
}

/// Apply watch events to `cache` until the watch fails.
async fn follow(stream: &mut berth_store::WatchStream, cache: &NamespaceCache, prefix: &str) {
    use berth_store::{EventKind, WatchItem};
    use futures::StreamExt;
    while let Some(item) = stream.next().await {
        let event = match item {
            Ok(WatchItem::Event(e)) => e,
            Ok(WatchItem::Progress(_)) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "namespace cache watch ended; rebuilding");
                return;
            }
        };
        let name = event.kv.key.trim_start_matches(prefix).to_string();
        let mut c = cache.write().expect("namespace cache");
        match event.kind {
            EventKind::Delete => {
                c.remove(&name);
            }
            EventKind::Put => {
                let terminating = serde_json::from_slice::<Value>(&event.kv.value)
                    .map(|v| v.pointer("/metadata/deletionTimestamp").is_some())
                    .unwrap_or(false);
                c.insert(name, terminating);
            }
        }
    }
}

/// Keep `cache` (namespace -> terminating) in step with the store through a watch. When the
/// watch falls behind, the cache is emptied (every lookup then reads the store) and rebuilt.
pub(crate) async fn spawn_cache(registry: Registry, cache: NamespaceCache) -> Result<(), ApiError> {
    let mut stream = fill(&registry, &cache).await?;
    let prefix = resources::of_kind(Kind::Namespace).key_prefix();
    tokio::spawn(async move {
        loop {
            follow(&mut stream, &cache, &prefix).await;
            cache.write().expect("namespace cache").clear();
            stream = loop {
                match fill(&registry, &cache).await {
                    Ok(s) => break s,
                    Err(e) => {
                        tracing::warn!(error = %e, "rebuilding the namespace cache failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            };
        }
    });
    Ok(())
}
