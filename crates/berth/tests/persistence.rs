//! Durability: `kill -9` the server while 50 clients write; afterwards every write the server
//! acknowledged is there, with the resourceVersion it was acknowledged with. On SQLite (the
//! server's own file; the server is restarted) and on etcd (a cluster of three members on
//! loopback; a second server on the same store answers for it, with no restart).

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Berth, Server};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams};

#[tokio::test]
async fn acknowledged_writes_survive_kill_9() {
    let mut b = Berth::up(&["--runtime", "none"]);
    writes_survive_kill_9(&mut b, "sqlite", None).await;
}

#[tokio::test]
async fn acknowledged_writes_survive_kill_9_on_etcd() {
    let members = berth_store::local_etcd::cluster(3);
    let urls: Vec<&str> = members
        .iter()
        .map(|m| m.client_url.trim_start_matches("http://"))
        .collect();
    let store = format!("etcd://{}", urls.join(","));
    let mut b = Berth::up(&["--runtime", "none", "--store", &store]);
    // Another server on the same store, with the first one's secrets and settings.
    let other_dir = b.dir.path().join("other");
    common::share_secrets(b.dir.path(), &other_dir);
    let mut args = vec!["--store", store.as_str()];
    for flag in ["--cluster-cidr", "--cluster-dns", "--kubernetes-service-ip"] {
        args.extend([flag, b.flag(flag).expect("set by the harness")]);
    }
    let other = Server::start(&other_dir, &args);
    writes_survive_kill_9(&mut b, "etcd", Some(&other)).await;
}

/// `takes_over`: the server that answers once `b` is killed (else `b`, restarted).
async fn writes_survive_kill_9(b: &mut Berth, store: &str, takes_over: Option<&Server>) {
    let api: Api<ConfigMap> = Api::namespaced(b.client().await, "default");
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..50 {
        let api = api.clone();
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let name = format!("w{w:02}-{i:05}");
                let cm = ConfigMap {
                    metadata: kube::api::ObjectMeta {
                        name: Some(name.clone()),
                        ..Default::default()
                    },
                    data: Some(BTreeMap::from([("i".to_string(), i.to_string())])),
                    ..Default::default()
                };
                match api.create(&PostParams::default(), &cm).await {
                    Ok(created) => {
                        let rv = created.metadata.resource_version.unwrap();
                        acked.lock().unwrap().insert(name, rv);
                    }
                    // The server died under us: this write was never acknowledged.
                    Err(_) => return,
                }
            }
        }));
    }
    // Let the writers get going, then pull the plug mid-stream.
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if acked.lock().unwrap().len() >= 1000 {
            break;
        }
    }
    b.kill9();
    for w in writers {
        let _ = w.await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 1000);

    let api: Api<ConfigMap> = match takes_over {
        Some(server) => {
            let kc = b.dir.path().join("other.kubeconfig");
            common::kubeconfig_for(b.dir.path(), &server.url, &kc);
            Api::namespaced(common::client_for(&kc).await, "default")
        }
        None => {
            b.restart();
            api
        }
    };
    let stored: BTreeMap<String, String> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|c| {
            (
                c.metadata.name.unwrap(),
                c.metadata.resource_version.unwrap(),
            )
        })
        .collect();
    let found = acked.keys().filter(|n| stored.contains_key(*n)).count();
    eprintln!(
        "{store}: {} creates acknowledged before kill -9, {found} found afterwards",
        acked.len()
    );
    let mut missing = Vec::new();
    for (name, rv) in &acked {
        match stored.get(name) {
            Some(got) if got == rv => {}
            other => missing.push(format!("{name}: acknowledged at {rv}, found {other:?}")),
        }
    }
    assert!(
        missing.is_empty(),
        "{} acknowledged writes lost or changed: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    // Revisions keep counting from where they were: a new write gets a higher one.
    let max_rv: i64 = stored
        .values()
        .map(|v| v.parse::<i64>().unwrap())
        .max()
        .unwrap();
    let fresh = api
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: kube::api::ObjectMeta {
                    name: Some("after".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(
        fresh
            .metadata
            .resource_version
            .unwrap()
            .parse::<i64>()
            .unwrap()
            > max_rv
    );
}
