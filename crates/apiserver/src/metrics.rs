//! `metrics.k8s.io/v1beta1`: NodeMetrics and PodMetrics, read on demand from each agent's
//! Summary (`/stats/summary`), so `kubectl top nodes|pods` work without a metrics-server.

use std::time::Duration;

use axum::response::Response;
use berth_core::{resources, Kind};
use http_body_util::BodyExt;
use serde_json::{json, Value};

use crate::http::AppState;
use crate::status::ApiError;

pub const GROUP: &str = "metrics.k8s.io";
pub const VERSION: &str = "v1beta1";

/// The APIResourceList of `metrics.k8s.io/v1beta1`.
pub fn resource_list() -> Value {
    let r = |name: &str, kind: &str, namespaced: bool| {
        json!({"name": name, "singularName": "", "namespaced": namespaced, "kind": kind,
               "verbs": ["get", "list"]})
    };
    json!({
        "kind": "APIResourceList", "apiVersion": "v1",
        "groupVersion": format!("{GROUP}/{VERSION}"),
        "resources": [r("nodes", "NodeMetrics", false), r("pods", "PodMetrics", true)],
    })
}

/// Every node's Summary, from the agents that answer within 5 s.
async fn summaries(app: &AppState) -> Result<Vec<(String, Value)>, ApiError> {
    let nodes = app
        .registry
        .list(resources::of_kind(Kind::Node), None, &Default::default())
        .await?;
    let fetches = nodes.items.iter().filter_map(|n| {
        let name = n.pointer("/metadata/name")?.as_str()?.to_string();
        Some(async move {
            let got = tokio::time::timeout(
                Duration::from_secs(5),
                app.proxy
                    .node_get(&app.registry, &app.tokens, &name, "/stats/summary"),
            )
            .await;
            let resp = match got {
                Ok(Ok(r)) => r,
                _ => return None,
            };
            let bytes = resp.into_body().collect().await.ok()?.to_bytes();
            let summary: Value = serde_json::from_slice(&bytes).ok()?;
            Some((name, summary))
        })
    });
    Ok(futures::future::join_all(fetches)
        .await
        .into_iter()
        .flatten()
        .collect())
}

fn usage(stats: &Value) -> Value {
    let cores = stats
        .pointer("/cpu/usageNanoCores")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let mem = stats
        .pointer("/memory/workingSetBytes")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    json!({"cpu": format!("{cores}n"), "memory": format!("{}Ki", mem / 1024)})
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"kind": format!("{kind}List"), "apiVersion": format!("{GROUP}/{VERSION}"),
           "metadata": {}, "items": items})
}

fn ok(v: &Value) -> Result<Response, ApiError> {
    Ok(crate::http::json_response(
        axum::http::StatusCode::OK,
        v,
        &[],
    ))
}

/// `GET .../nodes[/<name>]`.
pub async fn nodes(app: &AppState, name: Option<&str>) -> Result<Response, ApiError> {
    let now = jiff::Timestamp::now().to_string();
    let items: Vec<Value> = summaries(app)
        .await?
        .into_iter()
        .filter(|(n, _)| name.is_none_or(|want| want == n))
        .map(|(n, s)| {
            json!({"kind": "NodeMetrics", "apiVersion": format!("{GROUP}/{VERSION}"),
                   "metadata": {"name": n, "creationTimestamp": now},
                   "timestamp": s.pointer("/node/cpu/time").cloned().unwrap_or(json!(now)),
                   "window": "10s", "usage": usage(&s["node"])})
        })
        .collect();
    match name {
        None => ok(&list("NodeMetrics", items)),
        Some(n) => match items.into_iter().next() {
            Some(item) => ok(&item),
            None => Err(ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "NotFound",
                format!("nodemetrics.metrics.k8s.io \"{n}\" not found"),
            )),
        },
    }
}

/// `GET .../[namespaces/<ns>/]pods[/<name>]`.
pub async fn pods(
    app: &AppState,
    ns: Option<&str>,
    name: Option<&str>,
) -> Result<Response, ApiError> {
    let now = jiff::Timestamp::now().to_string();
    let mut items = Vec::new();
    for (_, s) in summaries(app).await? {
        for p in s["pods"].as_array().into_iter().flatten() {
            let pns = p
                .pointer("/podRef/namespace")
                .and_then(Value::as_str)
                .unwrap_or("");
            let pname = p
                .pointer("/podRef/name")
                .and_then(Value::as_str)
                .unwrap_or("");
            if ns.is_some_and(|n| n != pns) || name.is_some_and(|n| n != pname) {
                continue;
            }
            let containers: Vec<Value> = p["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| json!({"name": c["name"], "usage": usage(c)}))
                .collect();
            items.push(
                json!({"kind": "PodMetrics", "apiVersion": format!("{GROUP}/{VERSION}"),
                "metadata": {"name": pname, "namespace": pns, "creationTimestamp": now},
                "timestamp": p.pointer("/cpu/time").cloned().unwrap_or(json!(now)),
                "window": "10s", "containers": containers}),
            );
        }
    }
    match name {
        None => ok(&list("PodMetrics", items)),
        Some(n) => match items.into_iter().next() {
            Some(item) => ok(&item),
            None => Err(ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "NotFound",
                format!("podmetrics.metrics.k8s.io \"{n}\" not found"),
            )),
        },
    }
}
