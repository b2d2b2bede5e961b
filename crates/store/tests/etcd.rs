//! The etcd store against a real etcd (Debian's `etcd-server`, which `scripts/test.sh`
//! installs): the checks every store passes, then what only a shared store shows (two
//! clients see each other's writes, in order, and a member's loss within a cluster of three).

use std::sync::Arc;
use std::time::Duration;

use berth_store::local_etcd::cluster;
use berth_store::{conformance as c, EtcdOptions, EtcdStore, Store};
use futures::StreamExt;

async fn connect(endpoints: &[String]) -> EtcdStore {
    let opts = EtcdOptions {
        endpoints: endpoints.to_vec(),
        ..Default::default()
    };
    for _ in 0..100 {
        if let Ok(s) = EtcdStore::connect(&opts).await {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("etcd at {endpoints:?} did not answer within 10 s")
}

#[tokio::test]
async fn behaves_as_every_store_does() {
    let members = cluster(1);
    c::every_check(Arc::new(connect(&[members[0].client_url.clone()]).await)).await;
}

/// Two clients (two servers' stores) on one cluster of three: each sees the other's writes
/// in revision order, compare-and-swap holds across them, and with one member killed the
/// rest keep taking writes.
#[tokio::test]
async fn servers_share_one_cluster_and_survive_a_member() {
    let mut members = cluster(3);
    let urls: Vec<String> = members.iter().map(|m| m.client_url.clone()).collect();
    let a = connect(&urls).await;
    let b = connect(&urls[1..]).await;
    let base = a.current_revision().await.unwrap();
    let mut seen_by_b = b.watch("/shared/", base).await.unwrap();
    let first = a.create("/shared/x", b"1".to_vec()).await.unwrap();
    let err = b
        .update("/shared/x", b"2".to_vec(), first.mod_revision - 1)
        .await
        .unwrap_err();
    assert!(
        matches!(err, berth_store::StoreError::Conflict { .. }),
        "{err:?}"
    );
    b.update("/shared/x", b"2".to_vec(), first.mod_revision)
        .await
        .unwrap();
    let mut revisions = Vec::new();
    while revisions.len() < 2 {
        let item = tokio::time::timeout(Duration::from_secs(10), seen_by_b.next())
            .await
            .expect("events within 10 s")
            .unwrap()
            .unwrap();
        if let berth_store::WatchItem::Event(e) = item {
            revisions.push(e.revision());
        }
    }
    assert_eq!(revisions, [first.mod_revision, first.mod_revision + 1]);

    // One member of three gone: the other two are a majority and keep writing.
    drop(members.remove(0));
    let mut written = false;
    for i in 0..50 {
        if b.create(&format!("/shared/after-{i}"), vec![1])
            .await
            .is_ok()
        {
            written = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        written,
        "no write within 10 s of losing one member of three"
    );
}
