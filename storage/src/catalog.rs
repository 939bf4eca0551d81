use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, params};

use crate::Durability;
use crate::error::{Error, Result};
use crate::storage::open_connection;

/// One object as the catalog remembers it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ObjectRecord {
    /// The namespace it belongs to.
    pub namespace: String,
    /// Its id, in hex.
    pub id: String,
    /// The name it was addressed by, if any (ids from `new_unique_id` have none).
    pub name: Option<String>,
    /// When its file was created, epoch milliseconds.
    pub created_ms: i64,
    /// When it was last active, epoch milliseconds.
    pub last_active_ms: i64,
    /// Its database's size at its last write.
    pub size_bytes: u64,
}

/// One entry of the due-alarm index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlarmRecord {
    /// The object's namespace.
    pub namespace: String,
    /// The object's id, in hex.
    pub id: String,
    /// When the alarm is due, epoch milliseconds.
    pub at_ms: i64,
    /// Failed deliveries so far.
    pub retry_count: u32,
}

/// Activity of one object, recorded with [`Catalog::touch_objects`].
#[derive(Clone, Debug)]
pub struct ObjectTouch {
    /// The object's namespace.
    pub namespace: String,
    /// The object's id, in hex.
    pub id: String,
    /// Its name, if known (kept once recorded).
    pub name: Option<String>,
    /// When, epoch milliseconds.
    pub at_ms: i64,
    /// Its size now, when it changed.
    pub size_bytes: Option<u64>,
}

/// One change to the catalog; [`Catalog::write`] applies many in one transaction.
#[derive(Clone, Debug)]
pub enum CatalogWrite {
    /// An object's activity (and, the first time, its creation).
    Touch(ObjectTouch),
    /// An object's alarm in the due index.
    SetAlarm {
        /// The object's namespace.
        namespace: String,
        /// The object's id, in hex.
        id: String,
        /// When it is due, epoch milliseconds.
        at_ms: i64,
        /// Failed deliveries so far.
        retry_count: u32,
    },
    /// An object has no alarm any more.
    DeleteAlarm {
        /// The object's namespace.
        namespace: String,
        /// The object's id, in hex.
        id: String,
    },
}

/// The runtime's own database (`catalog.sqlite` in the data directory): every object ever
/// created, the index of due alarms, and the secret that keys object ids.
///
/// Writes and reads use two connections (WAL mode), so a reader never waits for a batch of writes
/// being committed.
#[derive(Debug)]
pub struct Catalog {
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
}

impl Catalog {
    /// Opens (creating it if needed) the catalog of `data_dir`.
    pub fn open(data_dir: &Path, durability: Durability) -> Result<Catalog> {
        std::fs::create_dir_all(data_dir).map_err(|source| Error::Io {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join("catalog.sqlite");
        let writer = open_connection(
            &path,
            durability,
            "CREATE TABLE IF NOT EXISTS objects(
                namespace TEXT NOT NULL,
                id TEXT NOT NULL,
                name TEXT,
                created_ms INTEGER NOT NULL,
                last_active_ms INTEGER NOT NULL,
                size_bytes INTEGER NOT NULL DEFAULT 0,
                PRIMARY KEY (namespace, id)) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS alarms(
                namespace TEXT NOT NULL,
                id TEXT NOT NULL,
                at_ms INTEGER NOT NULL,
                retry_count INTEGER NOT NULL DEFAULT 0,
                PRIMARY KEY (namespace, id)) WITHOUT ROWID;
             CREATE INDEX IF NOT EXISTS alarms_by_time ON alarms(at_ms);
             CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value BLOB NOT NULL);
             INSERT OR IGNORE INTO meta(key, value) VALUES ('secret', randomblob(32));",
        )?;
        let reader = open_connection(&path, durability, "")?;
        Ok(Catalog {
            writer: Mutex::new(writer),
            reader: Mutex::new(reader),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic elsewhere while holding the lock leaves SQLite itself consistent.
        self.reader.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn writer(&self) -> MutexGuard<'_, Connection> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `writes` in order, in one transaction.
    pub fn write(&self, writes: &[CatalogWrite]) -> Result<()> {
        let mut conn = self.writer();
        let tx = conn.transaction()?;
        for w in writes {
            match w {
                CatalogWrite::Touch(t) => {
                    let size = t.size_bytes.map(|s| i64::try_from(s).unwrap_or(i64::MAX));
                    tx.prepare_cached(
                        "INSERT INTO objects(namespace, id, name, created_ms, last_active_ms, size_bytes)
                         VALUES (?1, ?2, ?3, ?4, ?4, COALESCE(?5, 0))
                         ON CONFLICT(namespace, id) DO UPDATE SET
                            last_active_ms = max(last_active_ms, excluded.last_active_ms),
                            size_bytes = COALESCE(?5, size_bytes),
                            name = COALESCE(name, excluded.name)",
                    )?
                    .execute(params![t.namespace, t.id, t.name, t.at_ms, size])?;
                }
                CatalogWrite::SetAlarm {
                    namespace,
                    id,
                    at_ms,
                    retry_count,
                } => {
                    tx.prepare_cached(
                        "INSERT INTO alarms(namespace, id, at_ms, retry_count) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT(namespace, id) DO UPDATE SET at_ms = ?3, retry_count = ?4",
                    )?
                    .execute(params![namespace, id, at_ms, retry_count])?;
                }
                CatalogWrite::DeleteAlarm { namespace, id } => {
                    tx.prepare_cached("DELETE FROM alarms WHERE namespace = ?1 AND id = ?2")?
                        .execute([namespace, id])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The 32-byte key of this data directory's object ids.
    pub fn secret_key(&self) -> Result<[u8; 32]> {
        let bytes: Vec<u8> =
            self.conn()
                .query_row("SELECT value FROM meta WHERE key = 'secret'", [], |r| {
                    r.get(0)
                })?;
        bytes.try_into().map_err(|_| Error::Decode {
            message: "the catalog's secret is not 32 bytes; the data directory is damaged".into(),
        })
    }

    /// Records activity of many objects in one transaction.
    pub fn touch_objects(&self, touches: &[ObjectTouch]) -> Result<()> {
        let writes: Vec<CatalogWrite> = touches.iter().cloned().map(CatalogWrite::Touch).collect();
        self.write(&writes)
    }

    /// One object's record.
    pub fn object(&self, namespace: &str, id: &str) -> Result<Option<ObjectRecord>> {
        Ok(self
            .conn()
            .prepare_cached(
                "SELECT namespace, id, name, created_ms, last_active_ms, size_bytes
                 FROM objects WHERE namespace = ?1 AND id = ?2",
            )?
            .query_row([namespace, id], record)
            .optional()?)
    }

    /// Every object of a namespace, by name then id.
    pub fn list_objects(&self, namespace: &str) -> Result<Vec<ObjectRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT namespace, id, name, created_ms, last_active_ms, size_bytes
             FROM objects WHERE namespace = ?1 ORDER BY name, id",
        )?;
        let rows = stmt.query_map([namespace], record)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Every namespace with objects, sorted.
    pub fn namespaces(&self) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT DISTINCT namespace FROM objects ORDER BY 1")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Forgets an object and its alarm.
    pub fn delete_object(&self, namespace: &str, id: &str) -> Result<()> {
        let mut conn = self.writer();
        let tx = conn.transaction()?;
        tx.execute(
            "DELETE FROM objects WHERE namespace = ?1 AND id = ?2",
            [namespace, id],
        )?;
        tx.execute(
            "DELETE FROM alarms WHERE namespace = ?1 AND id = ?2",
            [namespace, id],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Puts an object's alarm in the due index.
    pub fn set_alarm(&self, namespace: &str, id: &str, at_ms: i64, retry_count: u32) -> Result<()> {
        self.write(&[CatalogWrite::SetAlarm {
            namespace: namespace.into(),
            id: id.into(),
            at_ms,
            retry_count,
        }])
    }

    /// Takes an object's alarm out of the due index.
    pub fn delete_alarm(&self, namespace: &str, id: &str) -> Result<()> {
        self.write(&[CatalogWrite::DeleteAlarm {
            namespace: namespace.into(),
            id: id.into(),
        }])
    }

    /// Every alarm, earliest first.
    pub fn alarms(&self) -> Result<Vec<AlarmRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT namespace, id, at_ms, retry_count FROM alarms ORDER BY at_ms",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(AlarmRecord {
                namespace: r.get(0)?,
                id: r.get(1)?,
                at_ms: r.get(2)?,
                retry_count: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

fn record(r: &rusqlite::Row<'_>) -> rusqlite::Result<ObjectRecord> {
    Ok(ObjectRecord {
        namespace: r.get(0)?,
        id: r.get(1)?,
        name: r.get(2)?,
        created_ms: r.get(3)?,
        last_active_ms: r.get(4)?,
        size_bytes: u64::try_from(r.get::<_, i64>(5)?).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_objects_alarms_and_secret() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::open(dir.path(), Durability::Normal).unwrap();
        let secret = c.secret_key().unwrap();
        let touch = |id: &str, name: Option<&str>, at: i64, size: Option<u64>| ObjectTouch {
            namespace: "ns".into(),
            id: id.into(),
            name: name.map(Into::into),
            at_ms: at,
            size_bytes: size,
        };
        c.touch_objects(&[touch("b", Some("bob"), 10, None), touch("a", None, 5, None)])
            .unwrap();
        c.touch_objects(&[
            touch("a", Some("ann"), 20, Some(4096)),
            touch("b", None, 7, None),
        ])
        .unwrap();
        let list = c.list_objects("ns").unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].name.as_deref(), Some("ann"));
        assert_eq!(
            (
                list[0].created_ms,
                list[0].last_active_ms,
                list[0].size_bytes
            ),
            (5, 20, 4096)
        );
        assert_eq!(
            list[1].last_active_ms, 10,
            "activity never goes back in time"
        );
        assert_eq!(c.namespaces().unwrap(), vec!["ns".to_string()]);
        c.set_alarm("ns", "a", 100, 0).unwrap();
        c.set_alarm("ns", "b", 50, 2).unwrap();
        c.set_alarm("ns", "a", 30, 1).unwrap();
        let alarms = c.alarms().unwrap();
        assert_eq!(
            alarms
                .iter()
                .map(|a| (a.id.as_str(), a.at_ms, a.retry_count))
                .collect::<Vec<_>>(),
            vec![("a", 30, 1), ("b", 50, 2)]
        );
        c.delete_alarm("ns", "a").unwrap();
        drop(c);
        let c = Catalog::open(dir.path(), Durability::Normal).unwrap();
        assert_eq!(c.secret_key().unwrap(), secret);
        assert_eq!(c.alarms().unwrap().len(), 1);
        c.delete_object("ns", "b").unwrap();
        assert!(c.object("ns", "b").unwrap().is_none());
        assert!(c.alarms().unwrap().is_empty());
    }
}
