//! The bounded watch history: the last N committed events in memory plus a broadcast of new
//! ones. A watch replays history after its revision and then follows the broadcast; both are
//! taken under one lock, so no event is missed or seen twice.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use futures::StreamExt;

use tokio::sync::broadcast;

use crate::{Event, Revision, StoreError, WatchItem, WatchStream};

/// How many events a slow watcher may fall behind the broadcast before it is cut off (and
/// re-watches from its last revision, served from history if still there).
const BROADCAST_CAPACITY: usize = 16 * 1024;

pub struct History {
    inner: Mutex<Inner>,
    capacity: usize,
}

struct Inner {
    events: VecDeque<Arc<Event>>,
    /// Every revision at or below this is gone from history.
    compacted: Revision,
    /// The latest revision published.
    latest: Revision,
    tx: broadcast::Sender<Arc<Event>>,
}

impl History {
    /// A history holding at most `capacity` events, starting after `compacted` with `events`
    /// (oldest first) already committed, and `latest` the store's current revision.
    pub fn new(capacity: usize, compacted: Revision, events: Vec<Event>, latest: Revision) -> Self {
        let (tx, _) = broadcast::channel(BROADCAST_CAPACITY);
        let mut inner = Inner {
            events: events.into_iter().map(Arc::new).collect(),
            compacted,
            latest,
            tx,
        };
        inner.trim(capacity.max(1));
        History {
            inner: Mutex::new(inner),
            capacity: capacity.max(1),
        }
    }

    /// Record committed events (in revision order) and wake watchers.
    pub fn publish(&self, events: Vec<Event>) {
        let mut inner = self.inner.lock().expect("history lock");
        for event in events {
            let event = Arc::new(event);
            inner.latest = event.revision();
            inner.events.push_back(event.clone());
            // No receivers is fine: nobody is watching.
            let _ = inner.tx.send(event);
        }
        inner.trim(self.capacity);
    }

    /// Drop history at and before `revision`.
    pub fn compact(&self, revision: Revision) {
        let mut inner = self.inner.lock().expect("history lock");
        while inner
            .events
            .front()
            .is_some_and(|e| e.revision() <= revision)
        {
            inner.events.pop_front();
        }
        inner.compacted = inner.compacted.max(revision);
    }

    /// The oldest revision that a watch may still start after.
    pub fn compacted(&self) -> Revision {
        self.inner.lock().expect("history lock").compacted
    }

    pub fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        let inner = self.inner.lock().expect("history lock");
        if after < inner.compacted {
            return Err(StoreError::Compacted {
                requested: after,
                oldest: inner.compacted,
            });
        }
        if after > inner.latest {
            return Err(StoreError::FutureRevision {
                requested: after,
                current: inner.latest,
            });
        }
        let backlog: Vec<Arc<Event>> = inner
            .events
            .iter()
            .filter(|e| e.revision() > after && e.kv.key.starts_with(prefix))
            .cloned()
            .collect();
        let rx = inner.tx.subscribe();
        drop(inner);

        let prefix = prefix.to_string();
        let start = backlog.last().map(|e| e.revision()).unwrap_or(after);
        // `last` is the newest revision this watcher has passed, matching or not; `skipped`
        // says some were passed without a word, so a Progress is owed once the queue drains.
        let live = futures::stream::unfold(
            (rx, start, false, false),
            move |(mut rx, mut last, mut skipped, done)| {
                let prefix = prefix.clone();
                async move {
                    if done {
                        return None;
                    }
                    loop {
                        if skipped && rx.is_empty() {
                            return Some((Ok(WatchItem::Progress(last)), (rx, last, false, false)));
                        }
                        match rx.recv().await {
                            Ok(event) => {
                                if event.revision() <= last {
                                    continue;
                                }
                                last = event.revision();
                                if !event.kv.key.starts_with(&prefix) {
                                    skipped = true;
                                    continue;
                                }
                                let item = WatchItem::Event((*event).clone());
                                return Some((Ok(item), (rx, last, false, false)));
                            }
                            Err(broadcast::error::RecvError::Lagged(_)) => {
                                let err = StoreError::Compacted {
                                    requested: last,
                                    oldest: last + 1,
                                };
                                return Some((Err(err), (rx, last, false, true)));
                            }
                            Err(broadcast::error::RecvError::Closed) => return None,
                        }
                    }
                }
            },
        );
        let backlog = futures::stream::iter(
            backlog
                .into_iter()
                .map(|e| Ok(WatchItem::Event((*e).clone()))),
        );
        Ok(backlog.chain(live).boxed())
    }
}

impl Inner {
    fn trim(&mut self, capacity: usize) {
        while self.events.len() > capacity {
            if let Some(old) = self.events.pop_front() {
                self.compacted = old.revision();
            }
        }
    }
}
