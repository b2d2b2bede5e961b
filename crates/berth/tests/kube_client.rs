//! kube-rs against `berth up`: list, watch, and a watcher + reflector that stays in sync
//! across a server restart and across a 410 (history compacted while it was away).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{client_for, eventually, Berth};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};

/// The label on this test's ConfigMaps: every namespace also holds `kube-root-ca.crt`,
/// which the lists and watches here leave out, as a client that wants only its own does.
const MINE: &str = "test=kube-client";

fn cm(name: &str, value: &str) -> ConfigMap {
    ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([("test".into(), "kube-client".into())])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("v".to_string(), value.to_string())])),
        ..Default::default()
    }
}

#[tokio::test]
async fn list_and_watch() {
    let b = Berth::up(&[]);
    let api: Api<ConfigMap> = Api::namespaced(b.client().await, "default");
    for i in 0..5 {
        api.create(&PostParams::default(), &cm(&format!("c{i}"), "x"))
            .await
            .unwrap();
    }
    let list = api.list(&ListParams::default().labels(MINE)).await.unwrap();
    assert_eq!(list.items.len(), 5);
    let rv = list.metadata.resource_version.clone().unwrap();
    // Paging hands out every item once.
    let page = api
        .list(&ListParams::default().labels(MINE).limit(2))
        .await
        .unwrap();
    assert_eq!(page.items.len(), 2);
    let token = page.metadata.continue_.clone().expect("a continue token");
    let rest = api
        .list(
            &ListParams::default()
                .labels(MINE)
                .limit(10)
                .continue_token(&token),
        )
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 3);
    assert!(rest.metadata.continue_.is_none());

    let mut stream = api
        .watch(&WatchParams::default().labels(MINE).timeout(10), &rv)
        .await
        .unwrap()
        .boxed();
    api.create(&PostParams::default(), &cm("new", "y"))
        .await
        .unwrap();
    api.delete("c0", &DeleteParams::default()).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match stream.try_next().await.unwrap().expect("watch ended early") {
            WatchEvent::Added(c) => seen.push(format!("ADDED {}", c.metadata.name.unwrap())),
            WatchEvent::Deleted(c) => seen.push(format!("DELETED {}", c.metadata.name.unwrap())),
            WatchEvent::Modified(c) => seen.push(format!("MODIFIED {}", c.metadata.name.unwrap())),
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("watch error {e:?}"),
        }
    }
    assert_eq!(seen, ["ADDED new", "DELETED c0"]);
}

/// A config map as (name, value of `v`).
fn entry(c: &ConfigMap) -> (String, String) {
    let v = c
        .data
        .as_ref()
        .and_then(|d| d.get("v"))
        .cloned()
        .unwrap_or_default();
    (c.metadata.name.clone().unwrap(), v)
}

/// The reflector's view: name -> value.
fn view(store: &reflector::Store<ConfigMap>) -> BTreeMap<String, String> {
    store.state().iter().map(|c| entry(c)).collect()
}

async fn server_view(api: &Api<ConfigMap>) -> BTreeMap<String, String> {
    let list = api.list(&ListParams::default().labels(MINE)).await.unwrap();
    list.items.iter().map(entry).collect()
}

/// Run a reflector on default/configmaps and count how often it (re)lists.
fn spawn_reflector(
    api: Api<ConfigMap>,
) -> (
    reflector::Store<ConfigMap>,
    tokio::sync::watch::Receiver<usize>,
) {
    let (reader, writer) = reflector::store();
    let (tx, rx) = tokio::sync::watch::channel(0usize);
    let stream = reflector(
        writer,
        watcher(api, watcher::Config::default().labels(MINE)),
    )
    .default_backoff();
    tokio::spawn(async move {
        let mut stream = stream.boxed();
        let mut inits = 0;
        while let Some(ev) = stream.next().await {
            if let Ok(watcher::Event::Init) = ev {
                inits += 1;
                let _ = tx.send(inits);
            }
        }
    });
    (reader, rx)
}

#[tokio::test]
async fn reflector_stays_in_sync_across_a_restart() {
    let mut b = Berth::up(&[]);
    let api: Api<ConfigMap> = Api::namespaced(b.client().await, "default");
    api.create(&PostParams::default(), &cm("before", "1"))
        .await
        .unwrap();
    let (store, inits) = spawn_reflector(api.clone());
    eventually(10, "the first sync", || async {
        (view(&store).get("before") == Some(&"1".into())).then_some(())
    })
    .await;

    b.restart();
    api.create(&PostParams::default(), &cm("after", "2"))
        .await
        .unwrap();
    api.delete("before", &DeleteParams::default())
        .await
        .unwrap();
    let want = server_view(&api).await;
    assert_eq!(
        want,
        BTreeMap::from([("after".to_string(), "2".to_string())])
    );
    eventually(
        20,
        "the reflector to catch up after the restart",
        || async { (view(&store) == want).then_some(()) },
    )
    .await;
    // History still held its revision: it resumed the watch without re-listing.
    assert_eq!(
        *inits.borrow(),
        1,
        "a restart within history must not force a relist"
    );
}

#[tokio::test]
async fn reflector_recovers_from_410_after_compaction() {
    let mut b = Berth::up(&["--watch-history", "5"]);
    let api: Api<ConfigMap> = Api::namespaced(b.client().await, "default");
    api.create(&PostParams::default(), &cm("keep", "1"))
        .await
        .unwrap();
    api.create(&PostParams::default(), &cm("drop", "1"))
        .await
        .unwrap();
    let (store, inits) = spawn_reflector(api.clone());
    eventually(10, "the first sync", || async {
        (view(&store).len() == 2).then_some(())
    })
    .await;

    // While the reflector's server is away, 20 writes go through another address: far more
    // than the 5 events of history, so the reflector's resourceVersion is compacted.
    b.with_other_port(|kubeconfig| {
        let kubeconfig = kubeconfig.to_path_buf();
        // Its own thread and runtime: this test's runtime is blocked meanwhile.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let kubeconfig = kubeconfig.as_path();
                let other: Api<ConfigMap> =
                    Api::namespaced(client_for(kubeconfig).await, "default");
                other
                    .delete("drop", &DeleteParams::default())
                    .await
                    .unwrap();
                other
                    .replace("keep", &PostParams::default(), &{
                        let mut c = other.get("keep").await.unwrap();
                        c.data = Some(BTreeMap::from([("v".to_string(), "2".to_string())]));
                        c
                    })
                    .await
                    .unwrap();
                for i in 0..20 {
                    other
                        .create(&PostParams::default(), &cm(&format!("n{i:02}"), "x"))
                        .await
                        .unwrap();
                }
            })
        })
        .join()
        .expect("writes through the other port")
    });
    let want = server_view(&api).await;
    assert_eq!(want.len(), 21);
    assert_eq!(want.get("keep"), Some(&"2".to_string()));
    eventually(30, "the reflector to re-list after the 410", || async {
        (view(&store) == want).then_some(())
    })
    .await;
    assert!(*inits.borrow() >= 2, "the 410 must have forced a re-list");
    tokio::time::sleep(Duration::from_millis(10)).await;
}

/// A create records its manager (the User-Agent's product); `Berth-Omit-Managed-Fields`
/// answers without them, as Berth's own loops ask.
#[tokio::test]
async fn managed_fields_are_recorded_and_can_be_left_out() {
    let b = Berth::up(&[]);
    let kc = kube::config::Kubeconfig::read_from(b.kubeconfig()).unwrap();
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    cfg.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static("berth-test/1.0 (linux)"),
    ));
    let full: Api<ConfigMap> =
        Api::namespaced(kube::Client::try_from(cfg.clone()).unwrap(), "default");
    cfg.headers.push((
        http::HeaderName::from_static(berth_core::fields::OMIT_MANAGED_FIELDS),
        http::HeaderValue::from_static("true"),
    ));
    let lean: Api<ConfigMap> = Api::namespaced(kube::Client::try_from(cfg).unwrap(), "default");
    full.create(&PostParams::default(), &cm("owned", "1"))
        .await
        .unwrap();
    let got = full.get("owned").await.unwrap();
    let entries = got.metadata.managed_fields.expect("managedFields");
    assert_eq!(entries[0].manager.as_deref(), Some("berth-test"));
    assert_eq!(entries[0].operation.as_deref(), Some("Update"));
    assert!(lean
        .get("owned")
        .await
        .unwrap()
        .metadata
        .managed_fields
        .is_none());
    let listed = lean.list(&Default::default()).await.unwrap();
    assert!(listed
        .items
        .iter()
        .all(|c| c.metadata.managed_fields.is_none()));
}
