//! Berth's object store.
//!
//! Start at [`Store`]: a key-value store with etcd's model. Every write bumps one global
//! revision; each key remembers the revision that created it and the one that last modified
//! it (`mod_revision`, served as Kubernetes' `resourceVersion`); updates and deletes are
//! compare-and-swap on `mod_revision`; `watch` replays every change after a revision from a
//! bounded history and answers [`StoreError::Compacted`] (HTTP 410) past it.
//!
//! The store never reads the clock or mints ids: values are opaque bytes written by the
//! caller. Backends: [`sqlite::SqliteStore`] (WAL, group commit), one server's; and
//! [`etcd::EtcdStore`], which any number of servers share. [`conformance`] is what both do
//! alike, as tests either runs.

pub mod conformance;
pub mod etcd;
pub mod history;
pub mod local_etcd;
pub mod sqlite;

use std::sync::Arc;

use futures::stream::BoxStream;

pub use etcd::{EtcdOptions, EtcdStore};
pub use sqlite::{SqliteOptions, SqliteStore};

/// The global revision counter. `0` means "before the first write".
pub type Revision = i64;

/// One stored key and its value at `mod_revision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Arc<[u8]>,
    pub create_revision: Revision,
    pub mod_revision: Revision,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The key was created (`create_revision == mod_revision`) or updated.
    Put,
    /// The key was deleted; the event's `kv` holds the last value, with `mod_revision` set to
    /// the revision of the delete.
    Delete,
}

/// A change to one key, in revision order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
}

impl Event {
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

/// One page of a prefix listing, read at a single revision.
#[derive(Debug, Clone)]
pub struct ListPage {
    pub items: Vec<KeyValue>,
    /// The store's revision when the page was read.
    pub revision: Revision,
    /// True when more keys follow the last item.
    pub more: bool,
}

/// What a caller may ask of a listing.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// Only keys strictly after this one (for paging).
    pub start_after: Option<String>,
    /// At most this many items; `None` for all.
    pub limit: Option<usize>,
}

/// What a watch yields: a change under its prefix, or word that the store has reached a
/// revision with no further change under the prefix (etcd's progress notification; the API
/// turns it into a BOOKMARK).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchItem {
    Event(Event),
    Progress(Revision),
}

/// A stream of watch items. It ends with `Err(Compacted)` when the watcher fell too far
/// behind the writers to be served from history; the caller re-lists.
pub type WatchStream = BoxStream<'static, Result<WatchItem, StoreError>>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key {key} already exists")]
    AlreadyExists { key: String },
    #[error("key {key} not found")]
    NotFound { key: String },
    #[error("key {key} was modified: expected revision {expected}, found {actual}")]
    Conflict {
        key: String,
        expected: Revision,
        actual: Revision,
    },
    #[error(
        "revision {requested} has been compacted; the oldest revision still served is {oldest}"
    )]
    Compacted {
        requested: Revision,
        oldest: Revision,
    },
    #[error("revision {requested} is newer than the store's current revision {current}")]
    FutureRevision {
        requested: Revision,
        current: Revision,
    },
    #[error("sqlite operation {operation} failed")]
    Sqlite {
        operation: &'static str,
        #[source]
        source: Arc<rusqlite::Error>,
    },
    #[error("opening the store at {path} failed")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("etcd operation {operation} failed")]
    Etcd {
        operation: &'static str,
        #[source]
        source: Arc<etcd_client::Error>,
    },
    #[error("the store is shut down")]
    Closed,
}

/// The object store every Berth server component uses.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// The latest value of one key.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Keys starting with `prefix`, in key order, with the revision they were read at.
    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListPage, StoreError>;

    /// Create `key`; fails with `AlreadyExists` if it is there.
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue, StoreError>;

    /// Replace `key` if its `mod_revision` is still `expected`; fails with `Conflict` otherwise.
    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Revision,
    ) -> Result<KeyValue, StoreError>;

    /// Delete `key`, if given only when its `mod_revision` is still `expected`. Returns the
    /// deleted value with `mod_revision` set to the delete's revision.
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue, StoreError>;

    /// Every change to keys under `prefix` with a revision greater than `after`, then live
    /// changes as they commit.
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError>;

    /// The revision of the latest committed write.
    async fn current_revision(&self) -> Result<Revision, StoreError>;

    /// Forget history at and before `revision`: watches from there answer `Compacted`.
    async fn compact(&self, revision: Revision) -> Result<(), StoreError>;
}

/// The first key after every key starting with `prefix` (etcd's range end).
pub fn prefix_end(prefix: &str) -> String {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0x7f {
            bytes.push(last + 1);
            return String::from_utf8(bytes).expect("ascii increment stays utf-8");
        }
    }
    // Every byte was at the top of the ASCII range: the prefix covers the rest of the space.
    "\u{10FFFF}".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_last_byte() {
        assert_eq!(prefix_end("/registry/pods/"), "/registry/pods0");
        assert_eq!(prefix_end("a"), "b");
    }
}
