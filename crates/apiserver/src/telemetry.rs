//! `/metrics` in Prometheus' text format (prometheus-client): requests by verb, resource and
//! code with their latency, open watches, and the store's write latency, under Kubernetes'
//! metric names where Kubernetes has one. Other components of the server's process (the
//! scheduler) register theirs in the same registry.

use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use berth_store::{KeyValue, ListOptions, ListPage, Revision, Store, StoreError, WatchStream};
use futures::StreamExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    verb: &'static str,
    resource: String,
    subresource: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    verb: &'static str,
    resource: String,
    subresource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WatchLabels {
    resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

/// Latency buckets from 0.5 ms to about 16 s.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0005, 2.0, 16)
}

/// The API server's metrics and the registry they are kept in.
#[derive(Clone)]
pub struct Telemetry {
    pub registry: Arc<RwLock<Registry>>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<LatencyLabels, Histogram>,
    watches: Family<WatchLabels, Gauge>,
    store_writes: Family<OperationLabels, Histogram>,
}

impl Default for Telemetry {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "apiserver_request",
            "Requests answered, by verb, resource, subresource and HTTP code",
            requests.clone(),
        );
        let latency = Family::<LatencyLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(latency_buckets())) as fn() -> Histogram,
        );
        registry.register(
            "apiserver_request_duration_seconds",
            "Time to answer a request (watches and connections excluded), by verb and resource",
            latency.clone(),
        );
        let watches = Family::<WatchLabels, Gauge>::default();
        registry.register(
            "apiserver_registered_watchers",
            "Watches open now, by resource",
            watches.clone(),
        );
        let store_writes = Family::<OperationLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(latency_buckets())) as fn() -> Histogram,
        );
        registry.register(
            "berth_store_write_duration_seconds",
            "Time for a store write to be committed (durable), by operation",
            store_writes.clone(),
        );
        Telemetry {
            registry: Arc::new(RwLock::new(registry)),
            requests,
            latency,
            watches,
            store_writes,
        }
    }
}

impl Telemetry {
    /// Everything registered, in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.read().expect("the metrics registry");
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("text encoding into a String");
        out
    }

    /// `store` with its writes timed.
    pub fn timed_store(&self, store: Arc<dyn Store>) -> Arc<dyn Store> {
        Arc::new(TimedStore {
            inner: store,
            writes: self.store_writes.clone(),
        })
    }
}

/// What a request is, in the terms of Kubernetes' request metrics.
fn classify(method: &http::Method, path: &str, query: Option<&str>, apply: bool) -> LatencyLabels {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest): (&str, &str, &[&str]) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", v, rest),
        ["apis", g, v, rest @ ..] => (g, v, rest),
        _ => ("", "", &[]),
    };
    let rest = match rest {
        ["namespaces", ns, sub @ ("status" | "finalize")] => vec!["namespaces", ns, sub],
        ["namespaces", _, r, more @ ..] => {
            let mut v = vec![*r];
            v.extend_from_slice(more);
            v
        }
        other => other.to_vec(),
    };
    // Labels only from what is served, so that requests for made-up paths cannot grow the
    // series without bound.
    let (resource, name, sub) = (
        rest.first()
            .copied()
            .filter(|r| {
                berth_core::resources::find(group, version, r).is_some()
                    || (group == crate::metrics::GROUP && matches!(*r, "nodes" | "pods"))
            })
            .unwrap_or(""),
        rest.get(1).copied(),
        rest.get(2)
            .copied()
            .filter(|s| {
                matches!(
                    *s,
                    "status"
                        | "scale"
                        | "binding"
                        | "log"
                        | "exec"
                        | "attach"
                        | "portforward"
                        | "proxy"
                        | "eviction"
                        | "finalize"
                        | "ephemeralcontainers"
                )
            })
            .unwrap_or(""),
    );
    let watch = query.is_some_and(|q| {
        q.split('&').any(
            |kv| matches!(kv.split_once('='), Some(("watch", v)) if berth_core::query::flag(v)),
        )
    });
    let connect = matches!(sub, "exec" | "attach" | "portforward" | "proxy");
    let verb = match *method {
        _ if connect => "CONNECT",
        _ if resource.is_empty() => match *method {
            http::Method::GET | http::Method::HEAD => "GET",
            _ => "POST",
        },
        http::Method::GET | http::Method::HEAD if watch => "WATCH",
        http::Method::GET | http::Method::HEAD if name.is_none() => "LIST",
        http::Method::GET | http::Method::HEAD => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH if apply => "APPLY",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE if name.is_none() => "DELETECOLLECTION",
        http::Method::DELETE => "DELETE",
        _ => "OTHER",
    };
    LatencyLabels {
        verb,
        resource: resource.to_string(),
        subresource: sub.to_string(),
    }
}

/// Count and time every request; a watch counts as open until its body is dropped.
pub async fn track(State(t): State<Telemetry>, req: Request, next: Next) -> Response {
    let apply = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/apply-patch"));
    let what = classify(req.method(), req.uri().path(), req.uri().query(), apply);
    let started = Instant::now();
    let resp = next.run(req).await;
    t.requests
        .get_or_create(&RequestLabels {
            verb: what.verb,
            resource: what.resource.clone(),
            subresource: what.subresource.clone(),
            code: resp.status().as_u16().to_string(),
        })
        .inc();
    match what.verb {
        "WATCH" if resp.status().is_success() => {
            let gauge = t
                .watches
                .get_or_create(&WatchLabels {
                    resource: what.resource,
                })
                .clone();
            gauge.inc();
            let open = Open(gauge);
            let (parts, body) = resp.into_parts();
            let body = Body::from_stream(body.into_data_stream().map(move |chunk| {
                let _ = &open;
                chunk
            }));
            Response::from_parts(parts, body)
        }
        "WATCH" | "CONNECT" => resp,
        _ => {
            t.latency
                .get_or_create(&what)
                .observe(started.elapsed().as_secs_f64());
            resp
        }
    }
}

/// An open watch: the gauge goes down when it is dropped.
struct Open(Gauge);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A store whose writes are timed.
struct TimedStore {
    inner: Arc<dyn Store>,
    writes: Family<OperationLabels, Histogram>,
}

impl TimedStore {
    fn observe(&self, operation: &'static str, since: Instant) {
        self.writes
            .get_or_create(&OperationLabels { operation })
            .observe(since.elapsed().as_secs_f64());
    }
}

#[async_trait::async_trait]
impl Store for TimedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.inner.get(key).await
    }

    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListPage, StoreError> {
        self.inner.list(prefix, opts).await
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue, StoreError> {
        let t = Instant::now();
        let r = self.inner.create(key, value).await;
        self.observe("create", t);
        r
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Revision,
    ) -> Result<KeyValue, StoreError> {
        let t = Instant::now();
        let r = self.inner.update(key, value, expected).await;
        self.observe("update", t);
        r
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue, StoreError> {
        let t = Instant::now();
        let r = self.inner.delete(key, expected).await;
        self.observe("delete", t);
        r
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        self.inner.watch(prefix, after).await
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        self.inner.current_revision().await
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.inner.compact(revision).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_named_as_kubernetes_names_them() {
        let c = |m: http::Method, p: &str, q: Option<&str>, apply: bool| {
            let l = classify(&m, p, q, apply);
            (l.verb, l.resource, l.subresource)
        };
        let s = |v: &'static str, r: &str, sub: &str| (v, r.to_string(), sub.to_string());
        use http::Method as M;
        assert_eq!(
            c(M::GET, "/api/v1/pods", None, false),
            s("LIST", "pods", "")
        );
        assert_eq!(
            c(
                M::GET,
                "/api/v1/namespaces/default/pods",
                Some("watch=True"),
                false
            ),
            s("WATCH", "pods", "")
        );
        assert_eq!(
            c(
                M::GET,
                "/apis/apps/v1/namespaces/d/deployments/web",
                None,
                false
            ),
            s("GET", "deployments", "")
        );
        assert_eq!(
            c(
                M::PATCH,
                "/apis/apps/v1/namespaces/d/deployments/web",
                None,
                true
            ),
            s("APPLY", "deployments", "")
        );
        assert_eq!(
            c(M::PUT, "/api/v1/namespaces/d/pods/p/status", None, false),
            s("PUT", "pods", "status")
        );
        assert_eq!(
            c(M::POST, "/api/v1/namespaces/d/pods/p/exec", None, false),
            s("CONNECT", "pods", "exec")
        );
        assert_eq!(
            c(M::GET, "/api/v1/namespaces/d", None, false),
            s("GET", "namespaces", "")
        );
        assert_eq!(
            c(M::GET, "/api/v1/namespaces", None, false),
            s("LIST", "namespaces", "")
        );
        assert_eq!(
            c(M::PUT, "/api/v1/namespaces/d/finalize", None, false),
            s("PUT", "namespaces", "finalize")
        );
        assert_eq!(
            c(M::DELETE, "/api/v1/namespaces/d/pods", None, false),
            s("DELETECOLLECTION", "pods", "")
        );
        assert_eq!(c(M::GET, "/version", None, false), s("GET", "", ""));
        // Made-up resources and subresources get no label of their own.
        assert_eq!(
            c(M::GET, "/api/v1/namespaces/d/made-up-1/x/y", None, false),
            s("GET", "", "")
        );
        assert_eq!(
            c(M::GET, "/api/v1/namespaces/d/pods/p/made-up", None, false),
            s("GET", "pods", "")
        );
    }

    #[test]
    fn the_text_format_carries_what_was_counted() {
        let t = Telemetry::default();
        t.requests
            .get_or_create(&RequestLabels {
                verb: "LIST",
                resource: "pods".into(),
                subresource: "".into(),
                code: "200".into(),
            })
            .inc();
        let text = t.render();
        assert!(
            text.contains(
                r#"apiserver_request_total{verb="LIST",resource="pods",subresource="",code="200"} 1"#
            ),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
