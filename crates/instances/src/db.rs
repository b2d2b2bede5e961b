//! The durable half of the service: every group's definition and desired state, and the
//! meter, in one SQLite file. A meter row is an interval during which a group was billed
//! (`end_ms` empty while it still is); usage is those intervals clipped to a window.
//! Writes are synchronous and `synchronous=FULL`: an answered request survives a crash.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};

#[derive(Debug, thiserror::Error)]
#[error("the instances database failed")]
pub struct DbError(#[from] rusqlite::Error);

/// A group's identity in ARM: subscription, resource group, name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub sub: String,
    pub rg: String,
    pub name: String,
}

/// One stored group.
#[derive(Debug, Clone)]
pub struct Row {
    pub key: Key,
    pub uid: String,
    /// The group as PUT (with its secure values), JSON.
    pub body: String,
    pub stopped: bool,
    pub created_ms: i64,
    /// The pool host the group is placed on ("" in a database from before pools: the
    /// first host).
    pub host: String,
}

/// Billed resources of one group over a window.
#[derive(Debug, Clone, PartialEq)]
pub struct Usage {
    pub rg: String,
    pub name: String,
    /// The group's tags when it was last metered (they say whose it is after it is gone).
    pub tags: serde_json::Value,
    pub vcpu_seconds: f64,
    pub gb_seconds: f64,
}

pub struct Db {
    conn: Mutex<Connection>,
}

impl Db {
    pub fn open(path: &Path) -> Result<Db, DbError> {
        let conn = Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=FULL;
             CREATE TABLE IF NOT EXISTS groups(
               sub TEXT NOT NULL, rg TEXT NOT NULL, name TEXT NOT NULL,
               uid TEXT NOT NULL, body TEXT NOT NULL, stopped INTEGER NOT NULL,
               created_ms INTEGER NOT NULL, PRIMARY KEY(sub, rg, name));
             CREATE TABLE IF NOT EXISTS meter(
               id INTEGER PRIMARY KEY, sub TEXT NOT NULL, rg TEXT NOT NULL, name TEXT NOT NULL,
               uid TEXT NOT NULL, cpu REAL NOT NULL, memory_gb REAL NOT NULL,
               start_ms INTEGER NOT NULL, end_ms INTEGER);
             CREATE INDEX IF NOT EXISTS meter_open ON meter(uid) WHERE end_ms IS NULL;",
        )?;
        let has_host: bool = conn.query_row(
            "SELECT count(*) FROM pragma_table_info('groups') WHERE name = 'host'",
            [],
            |r| r.get::<_, i64>(0).map(|n| n > 0),
        )?;
        if !has_host {
            conn.execute_batch("ALTER TABLE groups ADD COLUMN host TEXT NOT NULL DEFAULT ''")?;
        }
        let has_tags: bool = conn.query_row(
            "SELECT count(*) FROM pragma_table_info('meter') WHERE name = 'tags'",
            [],
            |r| r.get::<_, i64>(0).map(|n| n > 0),
        )?;
        if !has_tags {
            conn.execute_batch("ALTER TABLE meter ADD COLUMN tags TEXT NOT NULL DEFAULT '{}'")?;
        }
        Ok(Db {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().expect("instances db")
    }

    pub fn groups(&self) -> Result<Vec<Row>, DbError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT sub, rg, name, uid, body, stopped, created_ms, host FROM groups")?;
        let rows = stmt.query_map([], |r| {
            Ok(Row {
                key: Key {
                    sub: r.get(0)?,
                    rg: r.get(1)?,
                    name: r.get(2)?,
                },
                uid: r.get(3)?,
                body: r.get(4)?,
                stopped: r.get::<_, i64>(5)? != 0,
                created_ms: r.get(6)?,
                host: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Store a group; `meter` opens a billing interval at `now_ms` in the same transaction.
    pub fn put(&self, row: &Row, meter: Option<(f64, f64)>, now_ms: i64) -> Result<(), DbError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO groups(sub, rg, name, uid, body, stopped, created_ms, host)
             VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT(sub, rg, name) DO UPDATE SET uid=?4, body=?5, stopped=?6, host=?8",
            params![
                row.key.sub,
                row.key.rg,
                row.key.name,
                row.uid,
                row.body,
                row.stopped as i64,
                row.created_ms,
                row.host
            ],
        )?;
        if let Some((cpu, mem)) = meter {
            open_interval(&tx, &row.key, &row.uid, cpu, mem, now_ms)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Record that a group now runs on pool host `host`.
    pub fn set_host(&self, key: &Key, host: &str) -> Result<(), DbError> {
        self.conn().execute(
            "UPDATE groups SET host=?4 WHERE sub=?1 AND rg=?2 AND name=?3",
            params![key.sub, key.rg, key.name, host],
        )?;
        Ok(())
    }

    /// Mark a group stopped or running; stopping closes its interval, starting opens one.
    pub fn set_stopped(
        &self,
        key: &Key,
        uid: &str,
        stopped: bool,
        cpu_mem: (f64, f64),
        now_ms: i64,
    ) -> Result<(), DbError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "UPDATE groups SET stopped=?4 WHERE sub=?1 AND rg=?2 AND name=?3",
            params![key.sub, key.rg, key.name, stopped as i64],
        )?;
        if stopped {
            close_interval(&tx, uid, now_ms)?;
        } else {
            open_interval(&tx, key, uid, cpu_mem.0, cpu_mem.1, now_ms)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Forget a group and end its billing.
    pub fn delete(&self, key: &Key, uid: &str, now_ms: i64) -> Result<(), DbError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "DELETE FROM groups WHERE sub=?1 AND rg=?2 AND name=?3",
            params![key.sub, key.rg, key.name],
        )?;
        close_interval(&tx, uid, now_ms)?;
        tx.commit()?;
        Ok(())
    }

    /// Usage per group of a subscription (optionally one resource group, one group) within
    /// `[from_ms, to_ms)`; open intervals count up to `now_ms`.
    /// Everything metered so far (up to `now_ms`): (vCPU-seconds, GB-seconds).
    pub fn totals(&self, now_ms: i64) -> Result<(f64, f64), DbError> {
        let conn = self.conn();
        let totals = conn.query_row(
            "SELECT COALESCE(SUM(cpu * (COALESCE(end_ms, ?1) - start_ms)), 0),
                    COALESCE(SUM(memory_gb * (COALESCE(end_ms, ?1) - start_ms)), 0)
             FROM meter",
            params![now_ms],
            |r| Ok((r.get::<_, f64>(0)? / 1000.0, r.get::<_, f64>(1)? / 1000.0)),
        )?;
        Ok(totals)
    }

    pub fn usage(
        &self,
        sub: &str,
        rg: Option<&str>,
        name: Option<&str>,
        from_ms: i64,
        to_ms: i64,
        now_ms: i64,
    ) -> Result<Vec<Usage>, DbError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT rg, name, cpu, memory_gb, start_ms, end_ms, tags FROM meter
             WHERE sub=?1 AND (?2 IS NULL OR lower(rg)=lower(?2)) AND (?3 IS NULL OR name=?3)
             ORDER BY rg, name, start_ms",
        )?;
        let rows = stmt.query_map(params![sub, rg, name], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, f64>(2)?,
                r.get::<_, f64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, Option<i64>>(5)?,
                r.get::<_, String>(6)?,
            ))
        })?;
        let mut out: Vec<Usage> = Vec::new();
        for row in rows {
            let (rg, name, cpu, mem, start, end, tags) = row?;
            let tags: serde_json::Value = serde_json::from_str(&tags).unwrap_or_default();
            let secs = overlap_ms(start, end.unwrap_or(now_ms), from_ms, to_ms) as f64 / 1000.0;
            match out.last_mut() {
                Some(u) if u.rg == rg && u.name == name => {
                    u.vcpu_seconds += cpu * secs;
                    u.gb_seconds += mem * secs;
                    u.tags = tags;
                }
                _ => out.push(Usage {
                    rg,
                    name,
                    tags,
                    vcpu_seconds: cpu * secs,
                    gb_seconds: mem * secs,
                }),
            }
        }
        Ok(out)
    }

    pub fn get(&self, key: &Key) -> Result<Option<Row>, DbError> {
        let conn = self.conn();
        Ok(conn
            .query_row(
                "SELECT uid, body, stopped, created_ms, host FROM groups WHERE sub=?1 AND rg=?2 AND name=?3",
                params![key.sub, key.rg, key.name],
                |r| {
                    Ok(Row {
                        key: key.clone(),
                        uid: r.get(0)?,
                        body: r.get(1)?,
                        stopped: r.get::<_, i64>(2)? != 0,
                        created_ms: r.get(3)?,
                        host: r.get(4)?,
                    })
                },
            )
            .optional()?)
    }
}

fn open_interval(
    tx: &rusqlite::Transaction<'_>,
    key: &Key,
    uid: &str,
    cpu: f64,
    mem: f64,
    now_ms: i64,
) -> Result<(), DbError> {
    let open: i64 = tx.query_row(
        "SELECT count(*) FROM meter WHERE uid=?1 AND end_ms IS NULL",
        params![uid],
        |r| r.get(0),
    )?;
    if open == 0 {
        // The group's tags go with its meter, to say whose it was once it is gone.
        let body: Option<String> = tx
            .query_row(
                "SELECT body FROM groups WHERE sub=?1 AND rg=?2 AND name=?3",
                params![key.sub, key.rg, key.name],
                |r| r.get(0),
            )
            .optional()?;
        let tags = body
            .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
            .map(|g| g["tags"].clone())
            .filter(serde_json::Value::is_object)
            .unwrap_or_else(|| serde_json::json!({}));
        tx.execute(
            "INSERT INTO meter(sub, rg, name, uid, cpu, memory_gb, start_ms, tags) VALUES(?1,?2,?3,?4,?5,?6,?7,?8)",
            params![key.sub, key.rg, key.name, uid, cpu, mem, now_ms, tags.to_string()],
        )?;
    }
    Ok(())
}

fn close_interval(tx: &rusqlite::Transaction<'_>, uid: &str, now_ms: i64) -> Result<(), DbError> {
    tx.execute(
        "UPDATE meter SET end_ms=?2 WHERE uid=?1 AND end_ms IS NULL",
        params![uid, now_ms],
    )?;
    Ok(())
}

/// Milliseconds of `[start, end)` inside `[from, to)`.
pub fn overlap_ms(start: i64, end: i64, from: i64, to: i64) -> i64 {
    (end.min(to) - start.max(from)).max(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Key {
        Key {
            sub: "s".into(),
            rg: "rg".into(),
            name: name.into(),
        }
    }

    #[test]
    fn overlap_clips_to_the_window() {
        assert_eq!(overlap_ms(0, 10, 5, 20), 5);
        assert_eq!(overlap_ms(0, 10, 20, 30), 0);
        assert_eq!(overlap_ms(10, 20, 0, 100), 10);
    }

    #[test]
    fn stopped_time_is_not_billed_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i.db");
        {
            let db = Db::open(&path).unwrap();
            let row = Row {
                key: key("g"),
                uid: "u".into(),
                body: "{}".into(),
                stopped: false,
                created_ms: 0,
                host: "edge-1".into(),
            };
            db.put(&row, Some((2.0, 1.5)), 0).unwrap();
            db.set_stopped(&key("g"), "u", true, (2.0, 1.5), 10_000)
                .unwrap();
            // Stopped from 10 s to 50 s: nothing accrues.
            db.set_stopped(&key("g"), "u", false, (2.0, 1.5), 50_000)
                .unwrap();
        }
        let db = Db::open(&path).unwrap();
        assert_eq!(db.get(&key("g")).unwrap().unwrap().host, "edge-1");
        let u = db.usage("s", None, None, 0, i64::MAX, 55_000).unwrap();
        assert_eq!(u.len(), 1);
        assert!((u[0].vcpu_seconds - 30.0).abs() < 1e-9, "{u:?}");
        assert!((u[0].gb_seconds - 22.5).abs() < 1e-9, "{u:?}");
        db.delete(&key("g"), "u", 60_000).unwrap();
        let u = db
            .usage("s", Some("RG"), Some("g"), 0, i64::MAX, 1_000_000)
            .unwrap();
        assert!((u[0].vcpu_seconds - 40.0).abs() < 1e-9, "{u:?}");
        assert!(db.get(&key("g")).unwrap().is_none());
    }
}
