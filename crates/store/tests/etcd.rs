//! The etcd store against a real etcd (Debian's `etcd-server`, which `scripts/test.sh`
//! installs): the checks every store passes, then what only a shared store shows (two
//! clients see each other's writes, in order, and the loss of the leader of three members).

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
/// in revision order, compare-and-swap holds across them, and with the leading member
/// killed the rest take every write.
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

    // The leader of three killed: the other two choose a new one (about a second) and are a
    // majority. Every write goes through, the first ones sent again by the store until
    // the new leader takes them, none refused.
    let leader = berth_store::local_etcd::leader(&members).await;
    // Watches through every client, one of them certainly on the leader (through a relay
    // that points there until it dies, then at another member): wherever a watch was, it
    // goes on without a gap or an error.
    let relay = Relay::to(urls[leader].trim_start_matches("http://")).await;
    let c = connect(&[format!("http://{}", relay.addr)]).await;
    let from = a.current_revision().await.unwrap();
    let mut watches = Vec::new();
    for store in [&a, &b, &c] {
        watches.push(store.watch("/shared/after-", from).await.unwrap());
    }
    drop(members.remove(leader));
    relay.point_at(urls[(leader + 1) % 3].trim_start_matches("http://"));
    let started = std::time::Instant::now();
    for i in 0..20 {
        let store = [&a, &b, &c][i % 3];
        store
            .create(&format!("/shared/after-{i}"), vec![1])
            .await
            .unwrap_or_else(|e| panic!("write {i} after losing the leader: {e:?}"));
    }
    eprintln!(
        "20 writes after killing the leader member took {:?}",
        started.elapsed()
    );
    for (w, mut watch) in watches.into_iter().enumerate() {
        let mut keys = Vec::new();
        while keys.len() < 20 {
            let item = tokio::time::timeout(Duration::from_secs(15), watch.next())
                .await
                .unwrap_or_else(|_| panic!("watch {w}: only {keys:?} within 15 s"))
                .unwrap_or_else(|| panic!("watch {w} ended after {keys:?}"))
                .unwrap_or_else(|e| panic!("watch {w} failed after {keys:?}: {e:?}"));
            if let berth_store::WatchItem::Event(e) = item {
                keys.push(e.kv.key.clone());
            }
        }
        let wanted: Vec<String> = (0..20).map(|i| format!("/shared/after-{i}")).collect();
        assert_eq!(keys, wanted, "watch {w}");
    }
}

/// A TCP relay to one member, which can be pointed at another: a client behind it is
/// certainly on the member it points at.
struct Relay {
    addr: String,
    target: Arc<std::sync::Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn to(target: &str) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let target = Arc::new(std::sync::Mutex::new(target.to_string()));
        let to = target.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let member = to.lock().unwrap().clone();
                tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(member).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
            }
        });
        Relay { addr, target, task }
    }

    fn point_at(&self, member: &str) {
        *self.target.lock().unwrap() = member.to_string();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
