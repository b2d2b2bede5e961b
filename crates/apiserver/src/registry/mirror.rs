//! A copy of every object under some key prefixes, kept in step with the store by watches, for
//! the answers the API server gives on every request without reading the store (whether a
//! namespace is open, what RBAC allows), as Kubernetes' admission and authorizers keep
//! informers.

use std::collections::BTreeMap;
use std::time::Duration;

use berth_store::{EventKind, ListOptions, WatchItem, WatchStream};
use futures::{FutureExt, StreamExt};
use serde_json::Value;

use super::Registry;
use crate::status::ApiError;

/// Every object under a prefix, by store key.
pub type Objects = BTreeMap<String, Value>;

/// Read everything under `prefixes` into `objects`; watches from the revisions read, as one
/// stream.
async fn fill(
    registry: &Registry,
    prefixes: &[String],
    objects: &mut Objects,
) -> Result<WatchStream, ApiError> {
    objects.clear();
    let mut watches = Vec::new();
    for prefix in prefixes {
        let page = registry
            .store
            .list(prefix, ListOptions::default())
            .await
            .map_err(|e| ApiError::internal(format!("listing {prefix}: {e}")))?;
        for kv in &page.items {
            if let Ok(v) = serde_json::from_slice(&kv.value) {
                objects.insert(kv.key.clone(), v);
            }
        }
        let watch = registry
            .store
            .watch(prefix, page.revision)
            .await
            .map_err(|e| ApiError::internal(format!("watching {prefix}: {e}")))?;
        watches.push(watch);
    }
    // One stream, which ends as soon as any of them ends or fails (the mirror then
    // rebuilds).
    let merged = futures::stream::select_all(watches.into_iter().map(|w| {
        w.map(Some)
            .chain(futures::stream::once(async { None }))
            .boxed()
    }));
    let mut failed = false;
    Ok(merged
        .take_while(move |item| {
            let go = !failed && item.is_some();
            failed |= matches!(item, Some(Err(_)));
            futures::future::ready(go)
        })
        .filter_map(futures::future::ready)
        .boxed())
}

fn apply(objects: &mut Objects, item: WatchItem) {
    if let WatchItem::Event(e) = item {
        match e.kind {
            EventKind::Delete => {
                objects.remove(&e.kv.key);
            }
            EventKind::Put => {
                if let Ok(v) = serde_json::from_slice(&e.kv.value) {
                    objects.insert(e.kv.key.clone(), v);
                }
            }
        }
    }
}

/// Mirror everything under `prefixes`, calling `changed` with the whole copy once it is filled
/// and after every batch of changes (the changes that arrived together). When the watch falls
/// behind, `changed` sees an empty copy while it is rebuilt. Returns once the first fill is
/// done, so the first answers are already right.
pub(crate) async fn spawn(
    registry: Registry,
    prefixes: Vec<String>,
    changed: impl Fn(&Objects) + Send + Sync + 'static,
) -> Result<(), ApiError> {
    let mut objects = Objects::new();
    let mut stream = fill(&registry, &prefixes, &mut objects).await?;
    changed(&objects);
    tokio::spawn(async move {
        loop {
            while let Some(item) = stream.next().await {
                let Ok(item) = item else { break };
                let progress = matches!(item, WatchItem::Progress(_));
                apply(&mut objects, item);
                let mut batch = !progress;
                while let Some(Some(Ok(next))) = stream.next().now_or_never() {
                    batch |= !matches!(next, WatchItem::Progress(_));
                    apply(&mut objects, next);
                }
                if batch {
                    changed(&objects);
                }
            }
            tracing::warn!(?prefixes, "a mirror's watch ended; rebuilding");
            objects.clear();
            changed(&objects);
            stream = loop {
                match fill(&registry, &prefixes, &mut objects).await {
                    Ok(s) => break s,
                    Err(e) => {
                        tracing::warn!(?prefixes, error = %e, "rebuilding a mirror failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            };
            changed(&objects);
        }
    });
    Ok(())
}
