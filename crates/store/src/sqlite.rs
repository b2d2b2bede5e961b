//! The SQLite backend: one file in WAL mode with `synchronous=FULL`, so a write is
//! acknowledged only after its commit is on disk.
//!
//! ```text
//!  callers ──Op──▶ channel ──▶ writer thread: drain up to MAX_BATCH ops
//!                               BEGIN; check + apply each op (rev += 1 each); COMMIT (1 fsync)
//!                               ├─▶ reply to every caller
//!                               └─▶ History::publish ──▶ watchers
//!  readers ──▶ pool of read-only connections (WAL snapshots; never block the writer)
//! ```
//!
//! Group commit: every op that arrives while a commit is syncing joins the next batch, so
//! fifty concurrent writers share one fsync instead of paying fifty.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use tokio::sync::oneshot;

use crate::history::History;
use crate::{
    prefix_end, Event, EventKind, KeyValue, ListOptions, ListPage, Revision, Store, StoreError,
    WatchStream,
};

/// Most ops committed in one transaction.
const MAX_BATCH: usize = 2048;

#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Events kept for watches to resume from; older revisions answer `Compacted` (410).
    pub history: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions { history: 100_000 }
    }
}

pub struct SqliteStore {
    ops: Mutex<Option<mpsc::Sender<Request>>>,
    readers: Arc<ReaderPool>,
    history: Arc<History>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

enum Op {
    Create {
        key: String,
        value: Vec<u8>,
    },
    Update {
        key: String,
        value: Vec<u8>,
        expected: Revision,
    },
    Delete {
        key: String,
        expected: Option<Revision>,
    },
    Compact {
        revision: Revision,
    },
}

struct Request {
    op: Op,
    reply: oneshot::Sender<Result<KeyValue, StoreError>>,
}

fn sql(operation: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sqlite {
        operation,
        source: Arc::new(source),
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    create_rev INTEGER NOT NULL,
    mod_rev INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    rev INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    kind INTEGER NOT NULL,
    value BLOB NOT NULL,
    create_rev INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (name, value) VALUES ('revision', 0), ('compacted', 0);
";

impl SqliteStore {
    /// Open (creating if needed) the store at `path`.
    pub fn open(path: impl AsRef<Path>, opts: SqliteOptions) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Open {
                path: path.display().to_string(),
                source,
            })?;
        }
        let conn = Connection::open(&path).map_err(sql("open"))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql("set journal_mode"))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql("set synchronous"))?;
        conn.execute_batch(SCHEMA).map_err(sql("create schema"))?;

        let revision = read_meta(&conn, "revision")?;
        let compacted = read_meta(&conn, "compacted")?;
        let history_start = compacted.max(revision - opts.history as i64);
        let events = load_events(&conn, history_start)?;
        let history = Arc::new(History::new(opts.history, history_start, events, revision));

        let (tx, rx) = mpsc::channel::<Request>();
        let writer = Writer {
            conn,
            revision,
            history: history.clone(),
            keep: opts.history as i64,
            pruned: history_start,
        };
        let handle = std::thread::Builder::new()
            .name("berth-store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|source| StoreError::Open {
                path: path.display().to_string(),
                source,
            })?;

        Ok(SqliteStore {
            ops: Mutex::new(Some(tx)),
            readers: Arc::new(ReaderPool {
                path,
                idle: Mutex::new(Vec::new()),
            }),
            history,
            writer: Mutex::new(Some(handle)),
        })
    }

    async fn submit(&self, op: Op) -> Result<KeyValue, StoreError> {
        let (reply, rx) = oneshot::channel();
        {
            let ops = self.ops.lock().expect("ops lock");
            let sender = ops.as_ref().ok_or(StoreError::Closed)?;
            sender
                .send(Request { op, reply })
                .map_err(|_| StoreError::Closed)?;
        }
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let pool = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = pool.take()?;
            let out = f(&mut conn);
            pool.give_back(conn);
            out
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }

    /// Stop the writer after it has committed everything already submitted.
    pub fn close(&self) {
        self.ops.lock().expect("ops lock").take();
        if let Some(handle) = self.writer.lock().expect("writer lock").take() {
            let _ = handle.join();
        }
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.close();
    }
}

fn read_meta(conn: &Connection, name: &str) -> Result<Revision, StoreError> {
    conn.query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| {
        r.get(0)
    })
    .map_err(sql("read meta"))
}

fn load_events(conn: &Connection, after: Revision) -> Result<Vec<Event>, StoreError> {
    let mut stmt = conn
        .prepare("SELECT rev, key, kind, value, create_rev FROM events WHERE rev > ?1 ORDER BY rev")
        .map_err(sql("load events"))?;
    let rows = stmt
        .query_map([after], |r| {
            let kind: i64 = r.get(2)?;
            let value: Vec<u8> = r.get(3)?;
            Ok(Event {
                kind: if kind == 0 {
                    EventKind::Put
                } else {
                    EventKind::Delete
                },
                kv: KeyValue {
                    key: r.get(1)?,
                    value: value.into(),
                    create_revision: r.get(4)?,
                    mod_revision: r.get(0)?,
                },
            })
        })
        .map_err(sql("load events"))?;
    rows.collect::<Result<Vec<_>, _>>()
        .map_err(sql("load events"))
}

struct ReaderPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReaderPool {
    fn take(&self) -> Result<Connection, StoreError> {
        if let Some(conn) = self.idle() {
            return Ok(conn);
        }
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql("open reader"))?;
        Ok(conn)
    }

    /// An open connection, if one is idle.
    fn idle(&self) -> Option<Connection> {
        self.idle.lock().expect("pool lock").pop()
    }

    fn give_back(&self, conn: Connection) {
        let mut idle = self.idle.lock().expect("pool lock");
        if idle.len() < 16 {
            idle.push(conn);
        }
    }
}

fn get_kv(conn: &Connection, key: &str) -> Result<Option<KeyValue>, rusqlite::Error> {
    conn.prepare_cached("SELECT value, create_rev, mod_rev FROM kv WHERE key = ?1")?
        .query_row([key], |r| {
            let value: Vec<u8> = r.get(0)?;
            Ok(KeyValue {
                key: key.to_string(),
                value: value.into(),
                create_revision: r.get(1)?,
                mod_revision: r.get(2)?,
            })
        })
        .optional()
}

struct Writer {
    conn: Connection,
    revision: Revision,
    history: Arc<History>,
    /// Events kept in the events table.
    keep: i64,
    /// Events at or below this revision have been deleted from the table.
    pruned: Revision,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Request>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(req) => batch.push(req),
                    Err(_) => break,
                }
            }
            let start = self.revision;
            match self.commit(&batch) {
                Ok((results, events)) => {
                    self.history.publish(events);
                    for (req, result) in batch.into_iter().zip(results) {
                        let _ = req.reply.send(result);
                    }
                }
                Err(source) => {
                    self.revision = start;
                    tracing::error!(error = %source, "store batch failed to commit");
                    let source = Arc::new(source);
                    for req in batch {
                        let _ = req.reply.send(Err(StoreError::Sqlite {
                            operation: "commit batch",
                            source: source.clone(),
                        }));
                    }
                }
            }
        }
    }

    /// Apply a batch in one transaction. Per-op failures (conflicts) are results; an SQL
    /// failure aborts the whole batch.
    #[allow(clippy::type_complexity)]
    fn commit(
        &mut self,
        batch: &[Request],
    ) -> Result<(Vec<Result<KeyValue, StoreError>>, Vec<Event>), rusqlite::Error> {
        let tx = self.conn.transaction()?;
        let mut results = Vec::with_capacity(batch.len());
        let mut events = Vec::with_capacity(batch.len());
        let mut compact_to = None;
        for req in batch {
            let result = match &req.op {
                Op::Create { key, value } => match get_kv(&tx, key)? {
                    Some(_) => Err(StoreError::AlreadyExists { key: key.clone() }),
                    None => {
                        self.revision += 1;
                        let rev = self.revision;
                        put(&tx, key, value, rev, rev)?;
                        Ok(KeyValue {
                            key: key.clone(),
                            value: value.as_slice().into(),
                            create_revision: rev,
                            mod_revision: rev,
                        })
                    }
                },
                Op::Update {
                    key,
                    value,
                    expected,
                } => match get_kv(&tx, key)? {
                    None => Err(StoreError::NotFound { key: key.clone() }),
                    Some(cur) if cur.mod_revision != *expected => Err(StoreError::Conflict {
                        key: key.clone(),
                        expected: *expected,
                        actual: cur.mod_revision,
                    }),
                    Some(cur) => {
                        self.revision += 1;
                        let rev = self.revision;
                        put(&tx, key, value, cur.create_revision, rev)?;
                        Ok(KeyValue {
                            key: key.clone(),
                            value: value.as_slice().into(),
                            create_revision: cur.create_revision,
                            mod_revision: rev,
                        })
                    }
                },
                Op::Delete { key, expected } => match get_kv(&tx, key)? {
                    None => Err(StoreError::NotFound { key: key.clone() }),
                    Some(cur) if expected.is_some_and(|e| e != cur.mod_revision) => {
                        Err(StoreError::Conflict {
                            key: key.clone(),
                            expected: expected.unwrap_or_default(),
                            actual: cur.mod_revision,
                        })
                    }
                    Some(cur) => {
                        self.revision += 1;
                        let rev = self.revision;
                        tx.prepare_cached("DELETE FROM kv WHERE key = ?1")?
                            .execute([key])?;
                        tx.prepare_cached(
                            "INSERT INTO events (rev, key, kind, value, create_rev) VALUES (?1, ?2, 1, ?3, ?4)",
                        )?
                        .execute(params![rev, key, &cur.value[..], cur.create_revision])?;
                        Ok(KeyValue {
                            mod_revision: rev,
                            ..cur
                        })
                    }
                },
                Op::Compact { revision } => {
                    let to = (*revision).min(self.revision);
                    compact_to = Some(compact_to.unwrap_or(0).max(to));
                    Ok(KeyValue {
                        key: String::new(),
                        value: Arc::from(&[][..]),
                        create_revision: 0,
                        mod_revision: to,
                    })
                }
            };
            if let Ok(kv) = &result {
                if !matches!(req.op, Op::Compact { .. }) {
                    events.push(Event {
                        kind: if matches!(req.op, Op::Delete { .. }) {
                            EventKind::Delete
                        } else {
                            EventKind::Put
                        },
                        kv: kv.clone(),
                    });
                }
            }
            results.push(result);
        }
        tx.prepare_cached("UPDATE meta SET value = ?1 WHERE name = 'revision'")?
            .execute([self.revision])?;
        // Keep the events table near `keep` rows: prune in steps, not on every write.
        let mut prune_to = self.revision - self.keep;
        if let Some(to) = compact_to {
            prune_to = prune_to.max(to);
        }
        if prune_to > self.pruned && (compact_to.is_some() || prune_to - self.pruned >= 1024) {
            tx.prepare_cached("DELETE FROM events WHERE rev <= ?1")?
                .execute([prune_to])?;
            tx.prepare_cached("UPDATE meta SET value = ?1 WHERE name = 'compacted'")?
                .execute([prune_to])?;
        }
        tx.commit()?;
        if prune_to > self.pruned && (compact_to.is_some() || prune_to - self.pruned >= 1024) {
            self.pruned = prune_to;
        }
        if let Some(to) = compact_to {
            self.history.compact(to);
        }
        Ok((results, events))
    }
}

fn put(
    tx: &Connection,
    key: &str,
    value: &[u8],
    create_rev: Revision,
    rev: Revision,
) -> Result<(), rusqlite::Error> {
    tx.prepare_cached(
        "INSERT INTO kv (key, value, create_rev, mod_rev) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value, mod_rev = excluded.mod_rev",
    )?
    .execute(params![key, value, create_rev, rev])?;
    tx.prepare_cached(
        "INSERT INTO events (rev, key, kind, value, create_rev) VALUES (?1, ?2, 0, ?3, ?4)",
    )?
    .execute(params![rev, key, value, create_rev])?;
    Ok(())
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        // A point read by primary key takes microseconds from the page cache: it runs right
        // here rather than paying two thread hand-offs through the blocking pool. Only when
        // no connection is idle (opening one is slow) does it go through the pool.
        if let Some(conn) = self.readers.idle() {
            let out = get_kv(&conn, key).map_err(sql("get"));
            self.readers.give_back(conn);
            return out;
        }
        let key = key.to_string();
        self.read(move |conn| get_kv(conn, &key).map_err(sql("get")))
            .await
    }

    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListPage, StoreError> {
        let prefix = prefix.to_string();
        self.read(move |conn| {
            let tx = conn.transaction().map_err(sql("begin list"))?;
            let revision: Revision = tx
                .query_row("SELECT value FROM meta WHERE name = 'revision'", [], |r| {
                    r.get(0)
                })
                .map_err(sql("list"))?;
            let end = prefix_end(&prefix);
            let start = match &opts.start_after {
                // The smallest key greater than `after`.
                Some(after) if after.as_str() >= prefix.as_str() => format!("{after}\0"),
                _ => prefix.clone(),
            };
            // Ask for one more than the limit to learn whether more follow.
            let fetch = opts.limit.map(|l| l as i64 + 1).unwrap_or(-1);
            let mut stmt = tx
                .prepare_cached(
                    "SELECT key, value, create_rev, mod_rev FROM kv
                     WHERE key >= ?1 AND key < ?2 ORDER BY key LIMIT ?3",
                )
                .map_err(sql("list"))?;
            let mut items = stmt
                .query_map(params![start, end, fetch], |r| {
                    let value: Vec<u8> = r.get(1)?;
                    Ok(KeyValue {
                        key: r.get(0)?,
                        value: value.into(),
                        create_revision: r.get(2)?,
                        mod_revision: r.get(3)?,
                    })
                })
                .map_err(sql("list"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(sql("list"))?;
            drop(stmt);
            tx.commit().map_err(sql("end list"))?;
            let more = opts.limit.is_some_and(|l| items.len() > l);
            if let Some(limit) = opts.limit {
                items.truncate(limit);
            }
            Ok(ListPage {
                items,
                revision,
                more,
            })
        })
        .await
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue, StoreError> {
        self.submit(Op::Create {
            key: key.to_string(),
            value,
        })
        .await
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Revision,
    ) -> Result<KeyValue, StoreError> {
        self.submit(Op::Update {
            key: key.to_string(),
            value,
            expected,
        })
        .await
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue, StoreError> {
        self.submit(Op::Delete {
            key: key.to_string(),
            expected,
        })
        .await
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        self.history.watch(prefix, after)
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        self.read(|conn| read_meta(conn, "revision")).await
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.submit(Op::Compact { revision }).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    async fn next_event(w: &mut WatchStream) -> Event {
        loop {
            match w.next().await.unwrap().unwrap() {
                crate::WatchItem::Event(e) => return e,
                crate::WatchItem::Progress(_) => continue,
            }
        }
    }

    fn open(dir: &tempfile::TempDir, history: usize) -> SqliteStore {
        SqliteStore::open(dir.path().join("berth.db"), SqliteOptions { history }).unwrap()
    }

    #[tokio::test]
    async fn behaves_as_every_store_does() {
        let dir = tempfile::tempdir().unwrap();
        crate::conformance::every_check(Arc::new(open(&dir, 1000))).await;
    }

    #[tokio::test]
    async fn watch_replays_history_then_follows_and_expires() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, 3);
        for i in 0..5 {
            store.create(&format!("/w/{i}"), vec![i]).await.unwrap();
        }
        // History holds revisions 3..=5: watching after 1 is compacted.
        let err = store.watch("/w/", 1).await.err().unwrap();
        assert!(matches!(err, StoreError::Compacted { .. }));
        let mut w = store.watch("/w/", 3).await.unwrap();
        assert_eq!(next_event(&mut w).await.revision(), 4);
        assert_eq!(next_event(&mut w).await.revision(), 5);
        store.delete("/w/0", None).await.unwrap();
        let ev = next_event(&mut w).await;
        assert_eq!((ev.kind, ev.revision()), (EventKind::Delete, 6));
        assert_eq!(&ev.kv.value[..], &[0]);
    }

    #[tokio::test]
    async fn state_and_history_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(&dir, 100);
            store.create("/k/a", b"a".to_vec()).await.unwrap();
            store.create("/k/b", b"b".to_vec()).await.unwrap();
            store.close();
        }
        let store = open(&dir, 100);
        assert_eq!(store.current_revision().await.unwrap(), 2);
        let mut w = store.watch("/k/", 0).await.unwrap();
        assert_eq!(next_event(&mut w).await.kv.key, "/k/a");
        let kv = store.get("/k/b").await.unwrap().unwrap();
        assert_eq!(kv.mod_revision, 2);
    }
}
