//! List and watch: selectors, paging with `limit`/`continue`, `resourceVersion` semantics,
//! bookmarks, and the 410 answer once history is compacted.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use berth_core::kinds;
use berth_core::resources::Resource;
use berth_core::selector::{FieldSelector, Selector};
use berth_store::{EventKind, ListOptions, Revision, WatchItem};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::{meta_mut, parse_value, read_kv, store_err, Registry};
use crate::status::ApiError;

/// The query parameters of a list or watch.
#[derive(Debug, Clone, Default)]
pub struct ListParams {
    pub labels: Selector,
    pub fields: FieldSelector,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
    pub timeout: Option<Duration>,
    pub allow_bookmarks: bool,
    pub send_initial_events: bool,
    /// Objects are read without `metadata.managedFields`: the client asked to go without
    /// them, so they are skipped while parsing rather than built and dropped.
    pub omit_managed: bool,
}

fn parse_bool(q: &HashMap<String, String>, k: &str) -> bool {
    q.get(k).is_some_and(|v| berth_core::query::flag(v))
}

impl ListParams {
    /// Parse and check the query of a list or watch on `res`.
    pub fn from_query(res: &Resource, q: &HashMap<String, String>) -> Result<Self, ApiError> {
        let labels = match q.get("labelSelector") {
            Some(s) => Selector::parse(s)
                .map_err(|e| ApiError::bad_request(format!("invalid labelSelector: {e}")))?,
            None => Selector::default(),
        };
        let fields = match q.get("fieldSelector") {
            Some(s) => FieldSelector::parse(s)
                .map_err(|e| ApiError::bad_request(format!("invalid fieldSelector: {e}")))?,
            None => FieldSelector::default(),
        };
        let allowed = kinds::field_labels(res.kind);
        for r in &fields.requirements {
            if r.field != "metadata.name"
                && r.field != "metadata.namespace"
                && !allowed.contains(&r.field.as_str())
            {
                let mut all = vec![
                    "\"metadata.name\"".to_string(),
                    "\"metadata.namespace\"".to_string(),
                ];
                all.extend(allowed.iter().map(|a| format!("{a:?}")));
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {} (supported for {}: {})",
                    r.field,
                    res.plural,
                    all.join(", ")
                )));
            }
        }
        let limit = match q.get("limit").map(|l| l.parse::<i64>()) {
            None => None,
            Some(Ok(n)) if n > 0 => Some(n as usize),
            Some(Ok(_)) => None,
            Some(Err(_)) => return Err(ApiError::bad_request("limit must be an integer")),
        };
        let timeout = match q.get("timeoutSeconds").map(|t| t.parse::<u64>()) {
            None => None,
            Some(Ok(s)) => Some(Duration::from_secs(s)),
            Some(Err(_)) => {
                return Err(ApiError::bad_request(
                    "timeoutSeconds must be a non-negative integer",
                ))
            }
        };
        let rv_match = q
            .get("resourceVersionMatch")
            .filter(|s| !s.is_empty())
            .cloned();
        if let Some(m) = &rv_match {
            if m != "Exact" && m != "NotOlderThan" {
                return Err(ApiError::bad_request(format!(
                    "resourceVersionMatch {m:?} is not supported: use Exact or NotOlderThan"
                )));
            }
        }
        let rv = q.get("resourceVersion").filter(|s| !s.is_empty()).cloned();
        if let Some(v) = &rv {
            if v.parse::<Revision>().is_err() {
                return Err(ApiError::bad_request(format!(
                    "resourceVersion {v:?} is invalid: it must be a number from an earlier response"
                )));
            }
        }
        Ok(ListParams {
            labels,
            fields,
            limit,
            continue_token: q.get("continue").filter(|s| !s.is_empty()).cloned(),
            resource_version: rv,
            resource_version_match: rv_match,
            timeout,
            allow_bookmarks: parse_bool(q, "allowWatchBookmarks"),
            send_initial_events: parse_bool(q, "sendInitialEvents"),
            omit_managed: false,
        })
    }

    fn matches(&self, obj: &Value) -> bool {
        self.labels.matches_object(obj) && self.fields.matches(obj)
    }
}

/// One page of a list.
#[derive(Debug)]
pub struct ListResult {
    pub items: Vec<Value>,
    pub resource_version: Revision,
    pub continue_token: Option<String>,
}

/// One event of a watch, as sent on the wire: `{"type": ..., "object": ...}`.
#[derive(Debug, Clone)]
pub struct WatchEvent {
    pub kind: &'static str,
    pub object: Value,
}

fn encode_continue(key: &str, rv: Revision) -> String {
    let body = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": key});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(body.to_string())
}

fn decode_continue(token: &str, prefix: &str) -> Result<String, ApiError> {
    let bad = || ApiError::bad_request("continue key is not valid: list again without `continue`");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let key = v.get("start").and_then(Value::as_str).ok_or_else(bad)?;
    if !key.starts_with(prefix) {
        return Err(bad());
    }
    Ok(key.to_string())
}

impl Registry {
    pub async fn list(
        &self,
        res: &Resource,
        ns: Option<&str>,
        p: &ListParams,
    ) -> Result<ListResult, ApiError> {
        let prefix = res.namespace_prefix(ns);
        let current = self
            .store
            .current_revision()
            .await
            .map_err(|e| store_err(res, e))?;
        if let Some(rv) = p
            .resource_version
            .as_deref()
            .and_then(|v| v.parse::<Revision>().ok())
        {
            let exact = p.resource_version_match.as_deref() == Some("Exact");
            if exact && rv != current {
                return Err(ApiError::expired(format!(
                    "The resourceVersion for the provided list is too old: {rv} (current {current}); Berth lists only at the latest revision"
                )));
            }
            if rv > current {
                return Err(ApiError::new(
                    axum::http::StatusCode::GATEWAY_TIMEOUT,
                    "Timeout",
                    format!("Too large resource version: {rv}, current: {current}"),
                ));
            }
        }
        let mut start_after = match &p.continue_token {
            Some(t) => Some(decode_continue(t, &prefix)?),
            None => None,
        };
        // A pinned name reads one key instead of the whole prefix.
        if let (Some(name), true) = (p.fields.exact_name(), ns.is_some() || !res.namespaced) {
            let kv = self.get_kv(res, ns, name).await?;
            let items = kv
                .map(|kv| read_kv(&kv, p.omit_managed))
                .transpose()?
                .filter(|o| p.matches(o))
                .into_iter()
                .collect();
            return Ok(ListResult {
                items,
                resource_version: current,
                continue_token: None,
            });
        }
        let mut items = Vec::new();
        let mut revision = None;
        let chunk = p.limit.map(|l| l.max(256));
        loop {
            let page = self
                .store
                .list(
                    &prefix,
                    ListOptions {
                        start_after: start_after.clone(),
                        limit: chunk,
                    },
                )
                .await
                .map_err(|e| store_err(res, e))?;
            revision.get_or_insert(page.revision);
            let n = page.items.len();
            for (i, kv) in page.items.into_iter().enumerate() {
                let obj = read_kv(&kv, p.omit_managed)?;
                start_after = Some(kv.key);
                if !p.matches(&obj) {
                    continue;
                }
                items.push(obj);
                if p.limit.is_some_and(|l| items.len() >= l) {
                    let more = page.more || i + 1 < n;
                    let token = more.then(|| {
                        encode_continue(
                            start_after.as_deref().unwrap_or(""),
                            revision.unwrap_or(current),
                        )
                    });
                    return Ok(ListResult {
                        items,
                        resource_version: revision.unwrap_or(current),
                        continue_token: token,
                    });
                }
            }
            if !page.more {
                break;
            }
        }
        Ok(ListResult {
            items,
            resource_version: revision.unwrap_or(current),
            continue_token: None,
        })
    }

    /// Start a watch. The receiver yields events until the timeout, a compaction (an
    /// `ERROR` event with a 410 Status), or the caller dropping it.
    pub async fn watch(
        &self,
        res: &'static Resource,
        ns: Option<&str>,
        p: ListParams,
        bookmark_every: Duration,
    ) -> Result<mpsc::Receiver<WatchEvent>, ApiError> {
        let prefix = res.namespace_prefix(ns);
        let (tx, rx) = mpsc::channel(256);
        let requested = p
            .resource_version
            .as_deref()
            .and_then(|v| v.parse::<Revision>().ok())
            .unwrap_or(0);
        // "" and "0" mean: the current state first, then changes.
        let mut initial = Vec::new();
        let start = if requested == 0 || p.send_initial_events {
            let mut lp = p.clone();
            lp.limit = None;
            lp.continue_token = None;
            lp.resource_version = None;
            lp.resource_version_match = None;
            let listed = self.list(res, ns, &lp).await?;
            initial = listed.items;
            listed.resource_version
        } else {
            requested
        };
        let stream = match self.store.watch(&prefix, start).await {
            Ok(s) => s,
            Err(berth_store::StoreError::Compacted { requested, oldest }) => {
                let status =
                    ApiError::expired(format!("too old resource version: {requested} ({oldest})"))
                        .to_status();
                let _ = tx.try_send(WatchEvent {
                    kind: "ERROR",
                    object: status,
                });
                return Ok(rx);
            }
            Err(e) => return Err(store_err(res, e)),
        };
        let timeout = p.timeout.unwrap_or(Duration::from_secs(1800));
        tokio::spawn(async move {
            let deadline = tokio::time::sleep(timeout);
            tokio::pin!(deadline);
            let mut stream = stream;
            let mut latest = start;
            let mut bookmarked = start;
            for object in initial {
                if tx
                    .send(WatchEvent {
                        kind: "ADDED",
                        object,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if p.send_initial_events && p.allow_bookmarks {
                let mut b = bookmark(res, start);
                b["metadata"]["annotations"] = json!({"k8s.io/initial-events-end": "true"});
                if tx
                    .send(WatchEvent {
                        kind: "BOOKMARK",
                        object: b,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            let mut ticker = tokio::time::interval(bookmark_every);
            ticker.tick().await;
            loop {
                let item = tokio::select! {
                    _ = &mut deadline => return,
                    _ = tx.closed() => return,
                    _ = ticker.tick() => {
                        if p.allow_bookmarks && latest > bookmarked {
                            bookmarked = latest;
                            if tx.send(WatchEvent { kind: "BOOKMARK", object: bookmark(res, latest) }).await.is_err() {
                                return;
                            }
                        }
                        continue;
                    }
                    item = stream.next() => item,
                };
                let event = match item {
                    None => return,
                    Some(Ok(WatchItem::Progress(rev))) => {
                        latest = rev;
                        continue;
                    }
                    Some(Ok(WatchItem::Event(e))) => e,
                    Some(Err(e)) => {
                        let status = ApiError::from_store(res, "", e).to_status();
                        let _ = tx
                            .send(WatchEvent {
                                kind: "ERROR",
                                object: status,
                            })
                            .await;
                        return;
                    }
                };
                latest = event.revision();
                let Ok(mut object) = parse_value(&event.kv.value, p.omit_managed) else {
                    continue;
                };
                meta_mut(&mut object).insert(
                    "resourceVersion".into(),
                    json!(event.revision().to_string()),
                );
                if !p.matches(&object) {
                    continue;
                }
                let kind = match event.kind {
                    EventKind::Delete => "DELETED",
                    EventKind::Put if event.kv.create_revision == event.kv.mod_revision => "ADDED",
                    EventKind::Put => "MODIFIED",
                };
                if tx.send(WatchEvent { kind, object }).await.is_err() {
                    return;
                }
            }
        });
        Ok(rx)
    }
}

fn bookmark(res: &Resource, rv: Revision) -> Value {
    json!({"kind": res.kind_name, "apiVersion": res.api_version(), "metadata": {"resourceVersion": rv.to_string()}})
}
