//! What every [`Store`] backend does alike, as checks a backend's tests run on a fresh store
//! (each under its own key prefix `p`, with revisions counted from the store's current one):
//! the SQLite store's unit tests and the etcd store's tests against a real etcd run the same
//! ones. Each panics with what differed.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use crate::{EventKind, ListOptions, Store, StoreError, WatchItem, WatchStream};

async fn next_event(w: &mut WatchStream) -> crate::Event {
    loop {
        let item = tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .expect("a watch event within 10 s")
            .expect("the watch is open")
            .expect("no error on the watch");
        if let WatchItem::Event(e) = item {
            return e;
        }
    }
}

/// Every check below, each under a prefix of its own, on one store.
pub async fn every_check(store: Arc<dyn Store>) {
    writes_bump_one_revision(store.as_ref(), "/t1").await;
    lists_page_in_key_order(store.as_ref(), "/t2").await;
    watch_replays_then_follows(store.as_ref(), "/t3").await;
    compaction_refuses_older_watches(store.as_ref(), "/t4").await;
    concurrent_writers_get_distinct_revisions(store.clone(), "/t5").await;
    quiet_watches_report_progress(store.as_ref(), "/t6").await;
}

/// Create, compare-and-swap update and delete: one revision each; the errors name what is
/// there.
pub async fn writes_bump_one_revision(store: &dyn Store, p: &str) {
    let base = store.current_revision().await.unwrap();
    let key = format!("{p}/a");
    let a = store.create(&key, b"1".to_vec()).await.unwrap();
    assert_eq!((a.create_revision, a.mod_revision), (base + 1, base + 1));
    let err = store.create(&key, b"2".to_vec()).await.unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err:?}");
    let a2 = store.update(&key, b"2".to_vec(), base + 1).await.unwrap();
    assert_eq!((a2.create_revision, a2.mod_revision), (base + 1, base + 2));
    assert_eq!(&store.get(&key).await.unwrap().unwrap().value[..], b"2");
    let err = store
        .update(&key, b"3".to_vec(), base + 1)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { expected, actual, .. } if expected == base + 1 && actual == base + 2),
        "{err:?}"
    );
    let err = store.delete(&key, Some(base + 1)).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    let gone = store.delete(&key, Some(base + 2)).await.unwrap();
    assert_eq!(gone.mod_revision, base + 3);
    assert_eq!(&gone.value[..], b"2");
    assert!(store.get(&key).await.unwrap().is_none());
    assert_eq!(store.current_revision().await.unwrap(), base + 3);
    for err in [
        store
            .update(&key, b"4".to_vec(), base + 2)
            .await
            .unwrap_err(),
        store.delete(&key, None).await.unwrap_err(),
    ] {
        assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    }
}

/// A prefix lists in key order, in pages that resume after the last key, at one revision.
pub async fn lists_page_in_key_order(store: &dyn Store, p: &str) {
    for k in ["p/c", "p/a", "p/b", "q/a"] {
        let key = format!("{p}/{k}");
        store.create(&key, key.as_bytes().to_vec()).await.unwrap();
    }
    let prefix = format!("{p}/p/");
    let page = store
        .list(
            &prefix,
            ListOptions {
                limit: Some(2),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let keys: Vec<_> = page.items.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(keys, [format!("{p}/p/a"), format!("{p}/p/b")]);
    assert!(page.more);
    assert_eq!(page.revision, store.current_revision().await.unwrap());
    let rest = store
        .list(
            &prefix,
            ListOptions {
                start_after: Some(format!("{p}/p/b")),
                limit: Some(2),
            },
        )
        .await
        .unwrap();
    let keys: Vec<_> = rest.items.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(keys, [format!("{p}/p/c")]);
    assert!(!rest.more);
    let all = store.list(&prefix, ListOptions::default()).await.unwrap();
    assert_eq!(all.items.len(), 3);
}

/// A watch replays what changed after its revision, then follows; a delete carries the
/// last value at the delete's revision.
pub async fn watch_replays_then_follows(store: &dyn Store, p: &str) {
    let base = store.current_revision().await.unwrap();
    for i in 0..5u8 {
        store.create(&format!("{p}/w/{i}"), vec![i]).await.unwrap();
    }
    let mut w = store.watch(&format!("{p}/w/"), base + 2).await.unwrap();
    for rev in base + 3..=base + 5 {
        let e = next_event(&mut w).await;
        assert_eq!((e.kind, e.revision()), (EventKind::Put, rev));
    }
    store.delete(&format!("{p}/w/0"), None).await.unwrap();
    let e = next_event(&mut w).await;
    assert_eq!((e.kind, e.revision()), (EventKind::Delete, base + 6));
    assert_eq!(&e.kv.value[..], &[0]);
    assert_eq!(e.kv.key, format!("{p}/w/0"));
    // Writes elsewhere are not this watch's.
    store.create(&format!("{p}/x"), vec![9]).await.unwrap();
    store.create(&format!("{p}/w/9"), vec![9]).await.unwrap();
    assert_eq!(next_event(&mut w).await.kv.key, format!("{p}/w/9"));
}

/// After a compaction, a watch from before it is refused (the API's 410) and one from it
/// on is served.
pub async fn compaction_refuses_older_watches(store: &dyn Store, p: &str) {
    let base = store.current_revision().await.unwrap();
    for i in 0..4u8 {
        store.create(&format!("{p}/c/{i}"), vec![i]).await.unwrap();
    }
    store.compact(base + 3).await.unwrap();
    // Again: a no-op.
    store.compact(base + 3).await.unwrap();
    let err = store
        .watch(&format!("{p}/c/"), base + 1)
        .await
        .err()
        .expect("a watch from before the compaction is refused");
    assert!(
        matches!(err, StoreError::Compacted { oldest, .. } if oldest == base + 3),
        "{err:?}"
    );
    let mut w = store.watch(&format!("{p}/c/"), base + 3).await.unwrap();
    assert_eq!(next_event(&mut w).await.revision(), base + 4);
}

/// Concurrent creates each get a revision of their own.
pub async fn concurrent_writers_get_distinct_revisions(store: Arc<dyn Store>, p: &str) {
    let base = store.current_revision().await.unwrap();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let store = store.clone();
            let key = format!("{p}/n/{i:04}");
            tokio::spawn(async move { store.create(&key, vec![1]).await.unwrap() })
        })
        .collect();
    let mut revs: Vec<_> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap().mod_revision)
        .collect();
    revs.sort();
    assert_eq!(revs, (base + 1..=base + 200).collect::<Vec<_>>());
}

/// A watch with nothing of its own to report still says how far the store has come.
pub async fn quiet_watches_report_progress(store: &dyn Store, p: &str) {
    let base = store.current_revision().await.unwrap();
    let mut w = store.watch(&format!("{p}/mine/"), base).await.unwrap();
    store
        .create(&format!("{p}/other/a"), vec![1])
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let item = tokio::time::timeout_at(deadline, w.next())
            .await
            .expect("progress within 10 s")
            .expect("the watch is open")
            .expect("no error");
        match item {
            WatchItem::Progress(rev) if rev > base => return,
            WatchItem::Progress(_) => {}
            WatchItem::Event(e) => panic!("an event not under the prefix: {e:?}"),
        }
    }
}
