//! Property test over request parsing: arbitrary methods, paths, content types, queries and
//! bodies through the whole router (in process, real SQLite store). Nothing panics, nothing
//! answers 5xx, and every refusal is a Kubernetes `Status`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use berth_apiserver::http::{router, AppState};
use berth_apiserver::{Registry, Tokens};
use berth_store::{SqliteOptions, SqliteStore, Store};
use proptest::prelude::*;
use tower::ServiceExt;

const TOKEN: &str = "test-admin-token";

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("api".to_string()),
        Just("apis".to_string()),
        Just("v1".to_string()),
        Just("apps".to_string()),
        Just("namespaces".to_string()),
        Just("default".to_string()),
        Just("pods".to_string()),
        Just("deployments".to_string()),
        Just("configmaps".to_string()),
        Just("services".to_string()),
        Just("nodes".to_string()),
        Just("status".to_string()),
        Just("scale".to_string()),
        Just("binding".to_string()),
        Just("watch".to_string()),
        "[a-z0-9.-]{1,12}",
        "[%A-Za-z0-9_~!$&'()*+,;=:@-]{1,8}",
    ]
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    let json_value = any::<Vec<(String, i64)>>().prop_map(|kv| {
        let map: serde_json::Map<String, serde_json::Value> = kv
            .into_iter()
            .map(|(k, v)| (k, serde_json::json!(v)))
            .collect();
        serde_json::Value::Object(map)
    });
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        json_value.prop_map(|v| serde_json::to_vec(&v).unwrap()),
        "(apiVersion|kind|metadata|spec|data|name|: |\\{|\\}|\\[|\\]|,|\"|v1|apps/v1|Pod|ConfigMap|x|1|null| |\n){0,40}"
            .prop_map(String::into_bytes),
        Just(br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"},"data":{"a":"b"}}"#.to_vec()),
        Just(br#"[{"op":"replace","path":"/data/a","value":"z"}]"#.to_vec()),
        Just(br#"{"metadata":{"name":"c","resourceVersion":"999"},"spec":{"replicas":-1}}"#.to_vec()),
    ]
}

fn content_type() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("application/json"),
        Just("application/yaml"),
        Just("application/merge-patch+json"),
        Just("application/strategic-merge-patch+json"),
        Just("application/json-patch+json"),
        Just("application/apply-patch+yaml"),
        Just("application/vnd.kubernetes.protobuf"),
        Just("text/plain"),
    ]
}

fn query() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "(labelSelector|fieldSelector|limit|continue|resourceVersion|resourceVersionMatch|watch|timeoutSeconds|fieldValidation|fieldManager|dryRun)=[a-zA-Z0-9=!,().-]{0,10}"
            .prop_map(|q| format!("?{q}")),
        Just("?watch=true&timeoutSeconds=0".to_string()),
        Just("?fieldManager=x".to_string()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, .. ProptestConfig::default() })]
    #[test]
    fn no_request_panics_or_fails_inside(
        method in prop_oneof![Just("GET"), Just("POST"), Just("PUT"), Just("PATCH"), Just("DELETE")],
        segs in proptest::collection::vec(segment(), 0..8),
        q in query(),
        ct in content_type(),
        body in body(),
    ) {
        RT.with(|(rt, app)| {
            rt.block_on(async {
                let uri = format!("/{}{}", segs.join("/"), q);
                let Ok(req) = Request::builder()
                    .method(method)
                    .uri(&uri)
                    .header("authorization", format!("Bearer {TOKEN}"))
                    .header("content-type", ct)
                    .body(Body::from(body.clone())) else { return; };
                let resp = tokio::time::timeout(Duration::from_secs(10), app.clone().oneshot(req))
                    .await
                    .expect("no request hangs")
                    .unwrap();
                let status = resp.status();
                assert!(status != StatusCode::INTERNAL_SERVER_ERROR, "{method} {uri} answered 500");
                if status.is_client_error() {
                    // Watches stream; everything else refused is one Status object.
                    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
                    let v: serde_json::Value = serde_json::from_slice(&bytes).expect("a JSON Status");
                    assert_eq!(v["kind"], "Status", "{method} {uri}: {v}");
                    assert_eq!(v["code"].as_u64(), Some(status.as_u16() as u64));
                }
            })
        });
    }
}

thread_local! {
    static RT: (tokio::runtime::Runtime, axum::Router) = {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap().keep();
        let app = rt.block_on(async {
            let store = Arc::new(SqliteStore::open(dir.join("state.db"), SqliteOptions::default()).unwrap());
            let registry = Registry::new(store as Arc<dyn Store>);
            registry.bootstrap().await.unwrap();
            router(Arc::new(AppState {
                registry,
                tokens: Tokens { admin: TOKEN.into(), node_join: "node".into(), node_secret: "secret".into() },
                bookmark_every: Duration::from_secs(1),
                pki: berth_tls::TlsFiles::in_dir(&dir),
                proxy: berth_apiserver::proxy::NodeProxy::new(""),
                telemetry: Default::default(),
                authz: Default::default(),
                validated: Default::default(),
            }))
        });
        (rt, app)
    };
}
