//! One object's database: the [`Storage`] its code uses and the [`Database`] the runtime holds
//! around it, which alone commits, rolls back and keeps the runtime's metadata.

mod guard;
mod kv;
mod open;
mod sql;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension};

use self::guard::{Deadline, Denial, Guard, install_guard, schema_error};
use self::open::{
    Image, OBJECT_SETTINGS_FIRST_WRITE, OBJECT_SETTINGS_FSYNC, OBJECT_SETTINGS_NORMAL,
    RESTORE_NORMAL, SCHEMA_KEY, create_database_file, empty_database, open_memory_connection,
    open_object_connection, statement_marker,
};
use crate::Durability;
use crate::error::Result;
use crate::value::{Value, from_ref};

pub use self::kv::ListOptions;
pub(crate) use self::open::open_connection;
pub use self::sql::QueryLimits;

/// Internal statements carry a per-connection marker, so no user statement can ever hit them in
/// the statement cache (which would skip the authorizer).
struct Internal {
    begin: String,
    commit: String,
    rollback: String,
    kv_get: String,
    kv_put: String,
    kv_delete: String,
    meta_get: String,
    meta_put: String,
    meta_delete: String,
}

impl Internal {
    fn new(marker: &str) -> Self {
        let m = |sql: &str| format!("{sql} /* {marker} */");
        Internal {
            begin: m("BEGIN DEFERRED"),
            commit: m("COMMIT"),
            rollback: m("ROLLBACK"),
            kv_get: m("SELECT value FROM _denizen_kv WHERE key = ?1"),
            kv_put: m("INSERT OR REPLACE INTO _denizen_kv(key, value) VALUES (?1, ?2)"),
            kv_delete: m("DELETE FROM _denizen_kv WHERE key = ?1"),
            meta_get: m("SELECT value FROM _denizen_meta WHERE key = ?1"),
            meta_put: m("INSERT OR REPLACE INTO _denizen_meta(key, value) VALUES (?1, ?2)"),
            meta_delete: m("DELETE FROM _denizen_meta WHERE key = ?1"),
        }
    }
}

/// A database whose file is written at its first write (see [`Database::open_deferred`]).
struct Deferred {
    durability: Durability,
    image: Image,
    /// Metadata the runtime wants written with the first write.
    meta: Vec<(String, Value)>,
}

/// One object's database as its code sees it: SQL, KV and a nested transaction, all inside the
/// implicit transaction of the current event. Committing and rolling back that transaction
/// belong to the runtime (see [`Database`]), so nothing an event wrote is visible, or kept,
/// unless the event succeeds.
///
/// An object cannot end the transaction itself:
///
/// ```compile_fail
/// fn handler(storage: &mut denizen_storage::Storage) {
///     storage.commit().unwrap(); // only the runtime's `Database` commits
/// }
/// ```
///
/// ```compile_fail
/// fn handler(storage: &mut denizen_storage::Storage) {
///     storage.meta_set("alarm", None).unwrap(); // the runtime's metadata is not the object's
/// }
/// ```
pub struct Storage {
    conn: Connection,
    path: PathBuf,
    guard: Arc<Mutex<Guard>>,
    deadline: Deadline,
    /// The deadline of the running statements and the budget it came from, for the error.
    budget: Option<(Instant, Duration)>,
    sql: Internal,
    /// The object type's schema, put back in place by `delete_all`.
    schema: &'static str,
    in_txn: bool,
    writes: bool,
    savepoints: u32,
    /// Set while the database reads from the empty image in memory, before its file exists.
    deferred: Option<Deferred>,
    /// The file was created by this open (at once or at the first write).
    created: bool,
    /// The WAL does not exist yet and the connection runs without fsync until the commit that
    /// creates it (see `OBJECT_SETTINGS_FIRST_WRITE`).
    first_write: bool,
    /// Something was committed since the database was opened.
    written: bool,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage").field("path", &self.path).finish()
    }
}

/// An object's database as the runtime holds it: the [`Storage`] handed to the object's code
/// (through `Deref`), plus what only the runtime may do — end the implicit transaction, read and
/// write its own metadata (alarm, name), bound how long statements run.
///
/// The caller owns the file: one `Database` per file at a time, in one process. The runtime
/// guarantees it with one instance per object and the [`crate::DataDirLock`] on its data
/// directory; SQLite's own file locks are not used.
#[derive(Debug)]
pub struct Database {
    storage: Storage,
}

impl std::ops::Deref for Database {
    type Target = Storage;
    fn deref(&self) -> &Storage {
        &self.storage
    }
}

impl std::ops::DerefMut for Database {
    fn deref_mut(&mut self) -> &mut Storage {
        &mut self.storage
    }
}

fn wal_path(path: &Path) -> PathBuf {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    PathBuf::from(wal)
}

/// Whether the database at `path` exists; a WAL in place says so with one stat (a wake).
fn database_state(path: &Path) -> (bool, bool) {
    let has_wal = std::fs::metadata(wal_path(path)).is_ok_and(|m| m.len() > 0);
    (has_wal || path.exists(), has_wal)
}

impl Database {
    /// Opens (creating it if needed) the database at `path` in WAL mode.
    pub fn open(path: &Path, durability: Durability) -> Result<Database> {
        Self::open_with_schema(path, durability, "")
    }

    /// Opens like [`Database::open`], with `schema` (SQL statements that can run again, such as
    /// `CREATE TABLE IF NOT EXISTS`) in place. A new database is created with it already applied,
    /// so a new object runs no schema statement at all; a database last brought up to another
    /// schema runs this one now, in a transaction of its own, and remembers it. The guard of
    /// [`Storage::exec`] applies: no transaction statements, no reserved tables.
    pub fn open_with_schema(path: &Path, durability: Durability, schema: &str) -> Result<Database> {
        let image = empty_database(schema)?;
        let (exists, has_wal) = database_state(path);
        if !exists {
            create_database_file(path, durability, image)?;
        }
        Self::open_file(path, durability, image, has_wal, !exists)
    }

    /// Opens like [`Database::open_with_schema`], except that a database that does not exist yet
    /// is not created until something is written to it: until then it reads as the empty
    /// database (from memory), and if nothing is ever written no file appears. So a request that
    /// only reads a new object leaves nothing on disk.
    pub fn open_deferred(path: &Path, durability: Durability, schema: &str) -> Result<Database> {
        let image = empty_database(schema)?;
        let (exists, has_wal) = database_state(path);
        if exists {
            return Self::open_file(path, durability, image, has_wal, false);
        }
        let conn = open_memory_connection(image)?;
        let storage = Storage::new(conn, path, image.schema, durability, false, false)?;
        Ok(Database {
            storage: Storage {
                deferred: Some(Deferred {
                    durability,
                    image,
                    meta: Vec::new(),
                }),
                ..storage
            },
        })
    }

    fn open_file(
        path: &Path,
        durability: Durability,
        image: Image,
        has_wal: bool,
        created: bool,
    ) -> Result<Database> {
        let conn = open_object_connection(path, Storage::settings(durability, has_wal))?;
        let storage = Storage::new(conn, path, image.schema, durability, has_wal, created)?;
        let mut db = Database { storage };
        if !created && !image.schema.is_empty() {
            db.bring_up_to(image.schema)?;
        }
        Ok(db)
    }

    /// Applies `schema` unless it is the one the database was last brought up to.
    fn bring_up_to(&mut self, schema: &str) -> Result<()> {
        if matches!(self.meta_get(SCHEMA_KEY)?, Some(Value::Text(s)) if s == schema) {
            return Ok(());
        }
        let applied = self
            .storage
            .exec(schema, ())
            .and_then(|_| self.meta_set(SCHEMA_KEY, Some(Value::Text(schema.to_string()))))
            .and_then(|()| self.commit());
        if let Err(e) = applied {
            let _ = self.rollback();
            return Err(schema_error(e));
        }
        Ok(())
    }

    /// Whether this open created the database file (a new object), at once or at its first write.
    pub fn created(&self) -> bool {
        self.storage.created
    }

    /// Whether the database has no file yet (opened with [`Database::open_deferred`], nothing
    /// written so far).
    pub fn is_deferred(&self) -> bool {
        self.storage.is_deferred()
    }

    /// Where the database file is (or will be).
    pub fn path(&self) -> &Path {
        &self.storage.path
    }

    /// Whether the implicit transaction is open.
    pub fn in_transaction(&self) -> bool {
        self.storage.in_txn
    }

    /// Whether anything was written since the transaction began.
    pub fn has_writes(&self) -> bool {
        self.storage.writes
    }

    /// Whether anything was committed since the database was opened (its size may have changed).
    pub fn written_since_open(&self) -> bool {
        self.storage.written
    }

    /// Commits the implicit transaction, if one is open.
    pub fn commit(&mut self) -> Result<()> {
        self.storage.commit()
    }

    /// Discards the implicit transaction, if one is open.
    pub fn rollback(&mut self) -> Result<()> {
        self.storage.rollback()
    }

    /// Interrupts statements that run past `budget` from now (`None`: no bound). The runtime sets
    /// it to the event's deadline, so a runaway query ends with [`crate::Error::TimeBudget`]
    /// instead of holding the object.
    pub fn set_time_budget(&mut self, budget: Option<Duration>) {
        self.storage
            .set_budget(budget.map(|b| (Instant::now() + b, b)));
    }

    /// A runtime metadata entry (inside the implicit transaction).
    pub fn meta_get(&mut self, key: &str) -> Result<Option<Value>> {
        let s = &mut self.storage;
        s.ensure_txn()?;
        Ok(s.conn
            .prepare_cached(&s.sql.meta_get)?
            .query_row([key], |r| Ok(from_ref(r.get_ref(0)?)))
            .optional()?)
    }

    /// Sets (or with `None` deletes) a metadata entry, inside the implicit transaction.
    pub fn meta_set(&mut self, key: &str, value: Option<Value>) -> Result<()> {
        let s = &mut self.storage;
        s.ensure_write_txn()?;
        match value {
            Some(v) => s
                .conn
                .prepare_cached(&s.sql.meta_put)?
                .execute(rusqlite::params![key, v])?,
            None => s.conn.prepare_cached(&s.sql.meta_delete)?.execute([key])?,
        };
        s.writes = true;
        Ok(())
    }

    /// Sets a metadata entry with the first write of a database that has no file yet (at once
    /// otherwise): the name of a new object, which alone must not create its file.
    pub fn meta_set_with_first_write(&mut self, key: &str, value: Value) -> Result<()> {
        match self.storage.deferred.as_mut() {
            Some(deferred) => {
                deferred.meta.push((key.to_string(), value));
                Ok(())
            }
            None => self.meta_set(key, Some(value)),
        }
    }
}

impl Storage {
    fn settings(durability: Durability, has_wal: bool) -> &'static str {
        match durability {
            Durability::Normal if !has_wal => OBJECT_SETTINGS_FIRST_WRITE,
            Durability::Normal => OBJECT_SETTINGS_NORMAL,
            Durability::Fsync => OBJECT_SETTINGS_FSYNC,
        }
    }

    fn new(
        conn: Connection,
        path: &Path,
        schema: &'static str,
        durability: Durability,
        has_wal: bool,
        created: bool,
    ) -> Result<Storage> {
        let guard = install_guard(&conn, false)?;
        let deadline = Deadline::default();
        deadline.install(&conn)?;
        let marker = statement_marker();
        Ok(Storage {
            conn,
            path: path.to_path_buf(),
            guard,
            deadline,
            budget: None,
            sql: Internal::new(&format!("denizen {marker}")),
            schema,
            in_txn: false,
            writes: false,
            savepoints: 0,
            deferred: None,
            created,
            first_write: !has_wal && durability == Durability::Normal,
            written: false,
        })
    }

    fn is_deferred(&self) -> bool {
        self.deferred.is_some()
    }

    fn set_budget(&mut self, budget: Option<(Instant, Duration)>) {
        self.budget = budget;
        self.deadline.set(budget.map(|(at, _)| at));
    }

    /// Writes the file of a database opened deferred and moves to it, in the same state: the
    /// implicit transaction and its savepoints open (nothing was written in them), the deferred
    /// metadata written.
    fn materialize(&mut self) -> Result<()> {
        let Some(deferred) = self.deferred.take() else {
            return Ok(());
        };
        let enabled = self.guard_enabled();
        self.set_guard(false);
        let opened = create_database_file(&self.path, deferred.durability, deferred.image)
            .and_then(|()| {
                open_object_connection(&self.path, Self::settings(deferred.durability, false))
            });
        let conn = match opened {
            Ok(conn) => conn,
            Err(e) => {
                self.deferred = Some(deferred);
                self.set_guard(enabled);
                return Err(e);
            }
        };
        self.guard = install_guard(&conn, false)?;
        self.deadline.install(&conn)?;
        self.conn = conn;
        self.created = true;
        if self.in_txn {
            self.conn.prepare_cached(&self.sql.begin)?.execute([])?;
            for n in 1..=self.savepoints {
                self.conn
                    .execute_batch(&format!("SAVEPOINT denizen_sp{n}"))?;
            }
        }
        for (key, value) in deferred.meta {
            self.conn
                .prepare_cached(&self.sql.meta_put)?
                .execute(rusqlite::params![key, value])?;
            self.writes = true;
        }
        self.set_guard(enabled);
        Ok(())
    }

    fn guard_enabled(&self) -> bool {
        self.guard.lock().unwrap_or_else(|e| e.into_inner()).enabled
    }

    fn set_guard(&self, enabled: bool) -> Option<Denial> {
        let mut g = self.guard.lock().unwrap_or_else(|e| e.into_inner());
        g.enabled = enabled;
        g.denial.take()
    }

    // ---- the implicit transaction ----

    fn ensure_txn(&mut self) -> Result<()> {
        if !self.in_txn {
            self.conn.prepare_cached(&self.sql.begin)?.execute([])?;
            self.in_txn = true;
            self.writes = false;
        }
        Ok(())
    }

    /// The implicit transaction, on the database file (created now if it was deferred).
    fn ensure_write_txn(&mut self) -> Result<()> {
        self.ensure_txn()?;
        self.materialize()
    }

    fn commit(&mut self) -> Result<()> {
        if self.in_txn {
            let result = self.conn.prepare_cached(&self.sql.commit)?.execute([]);
            if let Err(e) = result {
                // A failed COMMIT may leave the transaction open; end it so the next event starts clean.
                let _ = self.conn.execute_batch("ROLLBACK");
                self.in_txn = false;
                self.savepoints = 0;
                return Err(e.into());
            }
            self.in_txn = false;
            self.written |= self.writes;
            if self.first_write && self.writes {
                self.first_write = false;
                // The commit stands either way: a failure here must not report it as failed.
                if let Err(e) = self.conn.execute_batch(RESTORE_NORMAL) {
                    tracing::warn!(error = %e, path = %self.path.display(), "could not restore synchronous=NORMAL after the first write");
                }
            }
            self.writes = false;
            self.savepoints = 0;
        }
        Ok(())
    }

    fn rollback(&mut self) -> Result<()> {
        if self.in_txn {
            self.in_txn = false;
            self.writes = false;
            self.savepoints = 0;
            if self.conn.is_autocommit() {
                return Ok(());
            }
            self.conn.prepare_cached(&self.sql.rollback)?.execute([])?;
        }
        Ok(())
    }

    /// Runs `f` in a nested transaction (a savepoint): an `Err` or a panic inside rolls back just
    /// what `f` did.
    pub fn transaction<R>(&mut self, f: impl FnOnce(&mut Storage) -> Result<R>) -> Result<R> {
        self.ensure_txn()?;
        self.savepoints += 1;
        let name = format!("denizen_sp{}", self.savepoints);
        self.conn.execute_batch(&format!("SAVEPOINT {name}"))?;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(self)));
        let undo = |s: &mut Storage| {
            s.conn
                .execute_batch(&format!("ROLLBACK TO {name}; RELEASE {name}"))
        };
        let result = match outcome {
            Ok(Ok(value)) => {
                self.conn.execute_batch(&format!("RELEASE {name}"))?;
                Ok(value)
            }
            Ok(Err(e)) => {
                undo(self)?;
                Err(e)
            }
            Err(panic) => {
                let _ = undo(self);
                self.savepoints -= 1;
                std::panic::resume_unwind(panic);
            }
        };
        self.savepoints -= 1;
        result
    }

    /// Size of the database's pages in bytes.
    pub fn database_size(&mut self) -> Result<u64> {
        let pages: i64 = self.conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        let size: i64 = self.conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        Ok(u64::try_from(pages.saturating_mul(size)).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::{MAX_KEY_SIZE, MAX_VALUE_SIZE};

    fn open() -> (tempfile::TempDir, Database) {
        let dir = tempfile::tempdir().unwrap();
        let s = Database::open(&dir.path().join("t.sqlite"), Durability::Normal).unwrap();
        (dir, s)
    }

    fn pragma(s: &Storage, name: &str) -> i64 {
        s.conn
            .query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_new_database_skips_fsync_only_until_its_first_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.sqlite");
        let mut s = Database::open(&path, Durability::Normal).unwrap();
        assert!(s.created());
        assert_eq!(pragma(&s, "synchronous"), 0);
        assert_eq!(pragma(&s, "wal_autocheckpoint"), 0);
        // A read creates no WAL: still relaxed.
        assert_eq!(s.get::<bool>("x").unwrap(), None);
        s.commit().unwrap();
        assert_eq!(pragma(&s, "synchronous"), 0);
        s.put("x", &true).unwrap();
        s.commit().unwrap();
        assert_eq!(pragma(&s, "synchronous"), 1);
        assert_eq!(pragma(&s, "wal_autocheckpoint"), 256);
        drop(s);
        // Reopened with its WAL in place: normal from the start, and the data is there.
        let mut s = Database::open(&path, Durability::Normal).unwrap();
        assert!(!s.created());
        assert_eq!(pragma(&s, "synchronous"), 1);
        assert_eq!(s.get::<bool>("x").unwrap(), Some(true));
        drop(s);
        let s = Database::open(&dir.path().join("f.sqlite"), Durability::Fsync).unwrap();
        assert_eq!(pragma(&s, "synchronous"), 2);
    }

    #[test]
    fn values_roundtrip_and_multi_statement_binds_last() {
        let (_d, mut s) = open();
        let c = s
            .exec(
                "CREATE TABLE t(a, b, c, d, e); INSERT INTO t VALUES (?, ?, ?, ?, ?)",
                crate::params![Value::Null, 7i64, 1.5f64, "x", vec![0u8, 255]],
            )
            .unwrap();
        assert_eq!(c.rows_written(), 1);
        let c = s.exec("SELECT * FROM t", []).unwrap();
        assert_eq!(c.columns(), ["a", "b", "c", "d", "e"]);
        assert_eq!(
            c.rows()[0],
            vec![
                Value::Null,
                Value::Integer(7),
                Value::Real(1.5),
                Value::Text("x".into()),
                Value::Blob(vec![0, 255])
            ]
        );
        assert!(c.rows_read() >= 1);
        let c = s
            .exec("UPDATE t SET b = b + 1; SELECT b FROM t", ())
            .unwrap();
        assert_eq!(c.one::<i64>().unwrap(), 8);
        let c = s.exec("INSERT INTO t(b) VALUES (1), (2), (3)", ()).unwrap();
        assert_eq!(c.rows_written(), 3);
        assert!(s.has_writes());
    }

    #[test]
    fn transaction_statements_and_reserved_tables_are_refused() {
        let (_d, mut s) = open();
        s.exec("CREATE TABLE t(x)", []).unwrap();
        for stmt in [
            "BEGIN",
            "BEGIN IMMEDIATE",
            "COMMIT",
            "ROLLBACK",
            "SAVEPOINT a",
            "RELEASE a",
            "END",
        ] {
            let e = s.exec(stmt, []).unwrap_err();
            assert!(
                matches!(e, Error::TransactionStatement { .. }),
                "{stmt}: {e:?}"
            );
        }
        for stmt in [
            "SELECT * FROM _denizen_kv",
            "DELETE FROM _DENIZEN_META",
            "DROP TABLE _denizen_kv",
            "CREATE TABLE _denizen_x(a)",
        ] {
            let e = s.exec(stmt, []).unwrap_err();
            assert!(matches!(e, Error::ReservedTable { .. }), "{stmt}: {e:?}");
        }
        assert!(matches!(
            s.exec("ATTACH 'x.db' AS x", []).unwrap_err(),
            Error::Sql { .. }
        ));
        assert!(matches!(
            s.exec("PRAGMA journal_mode=DELETE", []).unwrap_err(),
            Error::Sql { .. }
        ));
        let info = s.exec("PRAGMA table_info(t)", []).unwrap();
        assert_eq!(info.rows().len(), 1);
        let tables: Vec<String> = s
            .exec(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name",
                [],
            )
            .unwrap()
            .all()
            .unwrap();
        assert!(tables.contains(&"t".to_string()));
        assert!(matches!(
            s.exec("SELEC 1", []).unwrap_err(),
            Error::Sql { .. }
        ));
        assert!(matches!(
            s.exec("SELECT ?", []).unwrap_err(),
            Error::Sql { .. }
        ));
        // Still fully usable, and the implicit transaction is intact.
        s.exec("INSERT INTO t VALUES (1)", []).unwrap();
        s.put("k", &1).unwrap();
        s.commit().unwrap();
        assert_eq!(
            s.exec("SELECT count(*) FROM t", [])
                .unwrap()
                .one::<i64>()
                .unwrap(),
            1
        );
    }

    #[test]
    fn kv_limits() {
        let (_d, mut s) = open();
        let long = "k".repeat(MAX_KEY_SIZE + 1);
        assert!(matches!(
            s.put(&long, &1),
            Err(Error::KeyTooLarge { size: 2049, .. })
        ));
        assert!(matches!(
            s.get::<i64>(&long),
            Err(Error::KeyTooLarge { .. })
        ));
        s.put(&"k".repeat(MAX_KEY_SIZE), &1).unwrap();
        let big = vec![1u8; MAX_VALUE_SIZE];
        assert!(matches!(s.put("v", &big), Err(Error::ValueTooLarge { .. })));
        let keys: Vec<String> = (0..129).map(|i| format!("k{i}")).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        assert!(matches!(
            s.get_many::<i64>(&refs),
            Err(Error::BatchTooLarge { size: 129, .. })
        ));
        assert!(matches!(
            s.delete_many(&refs),
            Err(Error::BatchTooLarge { .. })
        ));
        let entries: Vec<(&str, i64)> = refs.iter().map(|k| (*k, 1)).collect();
        assert!(matches!(
            s.put_many(&entries),
            Err(Error::BatchTooLarge { .. })
        ));
        s.put_many(&entries[..128]).unwrap();
        assert_eq!(s.get_many::<i64>(&refs[..128]).unwrap().len(), 128);
        assert_eq!(s.delete_many(&refs[..128]).unwrap(), 128);
        assert!(matches!(
            s.get::<String>("k".repeat(MAX_KEY_SIZE).as_str()),
            Err(Error::Decode { .. })
        ));
    }

    #[test]
    fn kv_list_in_byte_order() {
        let (_d, mut s) = open();
        for k in ["b", "a", "ab", "a\u{e9}", "ac", "b\u{ff}", "c", "\u{10000}"] {
            s.put(k, &k.len()).unwrap();
        }
        let keys = |s: &mut Storage, o: ListOptions| -> Vec<String> {
            s.list::<usize>(&o)
                .unwrap()
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        };
        assert_eq!(
            keys(&mut s, ListOptions::default()),
            ["a", "ab", "ac", "a\u{e9}", "b", "b\u{ff}", "c", "\u{10000}"]
        );
        let prefix = ListOptions {
            prefix: Some("a".into()),
            ..Default::default()
        };
        assert_eq!(keys(&mut s, prefix), ["a", "ab", "ac", "a\u{e9}"]);
        let range = ListOptions {
            start: Some("ab".into()),
            end: Some("b\u{ff}".into()),
            ..Default::default()
        };
        assert_eq!(keys(&mut s, range), ["ab", "ac", "a\u{e9}", "b"]);
        let after = ListOptions {
            start_after: Some("ab".into()),
            limit: Some(2),
            ..Default::default()
        };
        assert_eq!(keys(&mut s, after), ["ac", "a\u{e9}"]);
        let rev = ListOptions {
            reverse: true,
            limit: Some(3),
            ..Default::default()
        };
        assert_eq!(keys(&mut s, rev), ["\u{10000}", "c", "b\u{ff}"]);
        assert!(s.delete("a").unwrap());
        assert!(!s.delete("a").unwrap());
        s.exec("CREATE TABLE t(x); CREATE VIEW v AS SELECT * FROM t", [])
            .unwrap();
        s.delete_all().unwrap();
        assert!(keys(&mut s, ListOptions::default()).is_empty());
        let left: i64 = s
            .exec(
                "SELECT count(*) FROM sqlite_master WHERE name IN ('t', 'v')",
                [],
            )
            .unwrap()
            .one()
            .unwrap();
        assert_eq!(left, 0);
    }

    #[test]
    fn nested_transactions_and_implicit_rollback() {
        let (dir, mut s) = open();
        s.exec("CREATE TABLE t(x)", []).unwrap();
        s.commit().unwrap();
        let r: Result<()> = s.transaction(|tx| {
            tx.exec("INSERT INTO t VALUES (1)", [])?;
            let inner: Result<()> = tx.transaction(|tx| {
                tx.exec("INSERT INTO t VALUES (2)", [])?;
                Err(Error::Sql {
                    message: "inner fails".into(),
                })
            });
            assert!(inner.is_err());
            Ok(())
        });
        r.unwrap();
        let rows: Vec<i64> = s.exec("SELECT x FROM t", []).unwrap().all().unwrap();
        assert_eq!(rows, vec![1]);
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = s.transaction(|tx| -> Result<()> {
                tx.exec("INSERT INTO t VALUES (3)", [])?;
                panic!("inside a transaction");
            });
        }));
        assert!(panicked.is_err());
        let rows: Vec<i64> = s.exec("SELECT x FROM t", []).unwrap().all().unwrap();
        assert_eq!(rows, vec![1]);
        s.commit().unwrap();
        s.exec("INSERT INTO t VALUES (4)", []).unwrap();
        s.put("gone", &true).unwrap();
        s.rollback().unwrap();
        assert!(s.database_size().unwrap() > 0);
        drop(s);
        let mut s = Database::open(&dir.path().join("t.sqlite"), Durability::Fsync).unwrap();
        let rows: Vec<i64> = s.exec("SELECT x FROM t", []).unwrap().all().unwrap();
        assert_eq!(rows, vec![1]);
        assert_eq!(s.get::<bool>("gone").unwrap(), None);
    }

    #[test]
    fn meta_is_private_and_transactional() {
        let (_d, mut s) = open();
        s.meta_set("alarm", Some(Value::Integer(5))).unwrap();
        s.commit().unwrap();
        s.meta_set("alarm", None).unwrap();
        s.rollback().unwrap();
        assert_eq!(s.meta_get("alarm").unwrap(), Some(Value::Integer(5)));
        s.delete_all().unwrap();
        assert_eq!(s.meta_get("alarm").unwrap(), Some(Value::Integer(5)));
    }

    const NOTES: &str =
        "CREATE TABLE IF NOT EXISTS notes(id INTEGER PRIMARY KEY, body TEXT NOT NULL)";

    fn tables(s: &mut Storage) -> Vec<String> {
        s.exec(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE '\\_denizen%' ESCAPE '\\' ORDER BY 1",
            (),
        )
        .unwrap()
        .all::<(String,)>()
        .unwrap()
        .into_iter()
        .map(|(n,)| n)
        .collect()
    }

    #[test]
    fn a_schema_is_in_a_new_database_and_applied_once_to_an_older_one() {
        let dir = tempfile::tempdir().unwrap();
        // New: the table is there before any statement ran.
        let path = dir.path().join("new.sqlite");
        let mut s = Database::open_with_schema(&path, Durability::Normal, NOTES).unwrap();
        assert!(s.created());
        assert!(!s.has_writes());
        assert_eq!(tables(&mut s), ["notes"]);
        s.exec("INSERT INTO notes(body) VALUES ('a')", ()).unwrap();
        s.commit().unwrap();
        drop(s);
        let mut s = Database::open_with_schema(&path, Durability::Normal, NOTES).unwrap();
        assert_eq!(
            s.meta_get(SCHEMA_KEY).unwrap(),
            Some(Value::Text(NOTES.into()))
        );
        let n: i64 = s
            .exec("SELECT count(*) FROM notes", ())
            .unwrap()
            .one()
            .unwrap();
        assert_eq!(n, 1);
        drop(s);

        // Created without it, opened with it: applied now and remembered; data kept.
        let path = dir.path().join("old.sqlite");
        let mut s = Database::open(&path, Durability::Normal).unwrap();
        s.put("k", &1).unwrap();
        s.commit().unwrap();
        drop(s);
        let grown = format!("{NOTES}; CREATE TABLE IF NOT EXISTS tags(name TEXT PRIMARY KEY)");
        let mut s = Database::open_with_schema(&path, Durability::Normal, &grown).unwrap();
        assert!(!s.created());
        assert_eq!(tables(&mut s), ["notes", "tags"]);
        assert_eq!(s.get::<i32>("k").unwrap(), Some(1));
        assert_eq!(
            s.meta_get(SCHEMA_KEY).unwrap(),
            Some(Value::Text(grown.clone()))
        );
        // Committed at open: a rollback of the first event keeps it.
        s.exec("INSERT INTO tags VALUES ('x')", ()).unwrap();
        s.rollback().unwrap();
        drop(s);
        let mut s = Database::open(&path, Durability::Normal).unwrap();
        assert_eq!(tables(&mut s), ["notes", "tags"]);
    }

    #[test]
    fn a_bad_schema_is_a_clear_error_and_the_database_is_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.sqlite");
        for (schema, says) in [
            ("CREATE TABLE (", "syntax error"),
            ("BEGIN; CREATE TABLE t(x)", "`BEGIN` is not allowed"),
            ("CREATE TABLE _denizen_x(a)", "reserved"),
        ] {
            let err = Database::open_with_schema(&path, Durability::Normal, schema).unwrap_err();
            assert!(matches!(err, Error::Schema { .. }), "{err:?}");
            assert!(err.to_string().contains(says), "{schema}: {err}");
            assert!(err.to_string().contains("SCHEMA"), "{err}");
            assert!(!path.exists(), "{schema}: no file for a schema that failed");
        }
        // The same mistakes on an existing database leave it as it was.
        let mut s = Database::open(&path, Durability::Normal).unwrap();
        s.put("k", &1).unwrap();
        s.commit().unwrap();
        drop(s);
        for schema in [
            "CREATE TABLE ok(x); CREATE TABLE (",
            "CREATE TABLE ok(x); COMMIT",
        ] {
            let err = Database::open_with_schema(&path, Durability::Normal, schema).unwrap_err();
            assert!(matches!(err, Error::Schema { .. }), "{err:?}");
        }
        let mut s = Database::open(&path, Durability::Normal).unwrap();
        assert!(tables(&mut s).is_empty());
        assert_eq!(s.get::<i32>("k").unwrap(), Some(1));
        assert_eq!(s.meta_get(SCHEMA_KEY).unwrap(), None);
    }

    #[test]
    fn table_names_with_multibyte_characters_work() {
        let (_d, mut s) = open();
        s.exec(
            "CREATE TABLE \"café_crème\"(x); INSERT INTO \"café_crème\" VALUES (1)",
            (),
        )
        .unwrap();
        s.exec("CREATE TABLE 日本語(x)", ()).unwrap();
        let n: i64 = s
            .exec("SELECT count(*) FROM \"café_crème\"", ())
            .unwrap()
            .one()
            .unwrap();
        assert_eq!(n, 1);
        assert!(matches!(
            s.exec("CREATE TABLE _Denizen_é(x)", ()).unwrap_err(),
            Error::ReservedTable { .. }
        ));
    }

    #[test]
    fn delete_all_puts_the_schema_back_so_the_object_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.sqlite");
        let mut s = Database::open_with_schema(&path, Durability::Normal, NOTES).unwrap();
        s.exec(
            "INSERT INTO notes(body) VALUES ('a'); CREATE TABLE extra(x)",
            (),
        )
        .unwrap();
        s.put("k", &1).unwrap();
        s.meta_set("alarm", Some(Value::Integer(5))).unwrap();
        s.commit().unwrap();
        s.delete_all().unwrap();
        assert_eq!(
            tables(&mut s),
            ["notes"],
            "the schema's tables are back, empty"
        );
        s.exec("INSERT INTO notes(body) VALUES ('b')", ()).unwrap();
        s.commit().unwrap();
        drop(s);
        let mut s = Database::open_with_schema(&path, Durability::Normal, NOTES).unwrap();
        let bodies: Vec<String> = s.exec("SELECT body FROM notes", ()).unwrap().all().unwrap();
        assert_eq!(bodies, ["b"]);
        assert_eq!(s.get::<i32>("k").unwrap(), None);
        assert_eq!(s.meta_get("alarm").unwrap(), Some(Value::Integer(5)));
    }

    #[test]
    fn a_deferred_database_reads_from_memory_and_is_written_at_its_first_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shard").join("new.sqlite");
        // Reads only: tables of the schema, no keys, no file afterwards.
        let mut s = Database::open_deferred(&path, Durability::Normal, NOTES).unwrap();
        assert!(s.is_deferred() && !s.created());
        assert_eq!(tables(&mut s), ["notes"]);
        assert_eq!(s.get::<i32>("k").unwrap(), None);
        assert!(!s.delete("k").unwrap());
        s.delete_all().unwrap();
        let n: i64 = s
            .exec("SELECT count(*) FROM notes", ())
            .unwrap()
            .one()
            .unwrap();
        assert_eq!(n, 0);
        assert!(
            s.exec("SELEC 1", ()).is_err(),
            "bad SQL is an error, and writes nothing"
        );
        s.meta_set_with_first_write("name", Value::Text("ada".into()))
            .unwrap();
        s.commit().unwrap();
        assert!(s.database_size().unwrap() > 0);
        drop(s);
        assert!(
            !path.exists() && !path.parent().unwrap().exists(),
            "nothing on disk"
        );

        // The first write creates the file, inside a savepoint and after reads in the same
        // transaction; the deferred metadata comes with it.
        let mut s = Database::open_deferred(&path, Durability::Normal, NOTES).unwrap();
        s.meta_set_with_first_write("name", Value::Text("ada".into()))
            .unwrap();
        assert_eq!(s.get::<i32>("k").unwrap(), None);
        s.transaction(|tx| {
            tx.exec(
                "SELECT 1; INSERT INTO notes(body) VALUES ('x'); SELECT 2",
                (),
            )?;
            tx.put("k", &7)
        })
        .unwrap();
        assert!(!s.is_deferred() && s.created());
        s.commit().unwrap();
        drop(s);
        let mut s = Database::open_deferred(&path, Durability::Normal, NOTES).unwrap();
        assert!(!s.is_deferred() && !s.created());
        assert_eq!(s.get::<i32>("k").unwrap(), Some(7));
        assert_eq!(s.meta_get("name").unwrap(), Some(Value::Text("ada".into())));
        let n: i64 = s
            .exec("SELECT count(*) FROM notes", ())
            .unwrap()
            .one()
            .unwrap();
        assert_eq!(n, 1);

        // A failed first event leaves the file (empty) and nothing it wrote.
        let path = dir.path().join("rolled.sqlite");
        let mut s = Database::open_deferred(&path, Durability::Fsync, NOTES).unwrap();
        s.put("k", &1).unwrap();
        s.rollback().unwrap();
        drop(s);
        let mut s = Database::open_deferred(&path, Durability::Fsync, NOTES).unwrap();
        assert!(!s.is_deferred());
        assert_eq!(s.get::<i32>("k").unwrap(), None);
    }

    #[test]
    fn limited_queries_stop_at_their_time_budget_and_caps_and_the_database_goes_on() {
        let (_d, mut s) = open();
        s.exec(
            "CREATE TABLE t(x); INSERT INTO t SELECT value FROM generate_series(1, 100)",
            (),
        )
        .unwrap_or_else(|_| {
            s.exec(
                "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 100)
                     INSERT INTO t SELECT n FROM c",
                (),
            )
            .unwrap()
        });
        let forever = "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c) \
                       SELECT count(*) FROM c";
        let limits = QueryLimits {
            time_budget: Duration::from_millis(50),
            ..QueryLimits::OPERATOR
        };
        let e = s.exec_limited(forever, (), &limits).unwrap_err();
        assert!(matches!(e, Error::TimeBudget { .. }), "{e:?}");
        assert!(e.to_string().contains("time budget"), "{e}");
        let rows = QueryLimits {
            max_rows: 99,
            ..QueryLimits::OPERATOR
        };
        let e = s.exec_limited("SELECT x FROM t", (), &rows).unwrap_err();
        assert!(matches!(e, Error::TooManyRows { limit: 99 }), "{e:?}");
        let bytes = QueryLimits {
            max_bytes: 1000,
            ..QueryLimits::OPERATOR
        };
        let e = s
            .exec_limited("SELECT zeroblob(600) FROM t", (), &bytes)
            .unwrap_err();
        assert!(matches!(e, Error::ResultTooLarge { limit: 1000 }), "{e:?}");
        let all = s
            .exec_limited("SELECT x FROM t", (), &QueryLimits::OPERATOR)
            .unwrap();
        assert_eq!(all.rows().len(), 100);
        // The event's own budget interrupts user SQL too, and clears.
        s.set_time_budget(Some(Duration::from_millis(50)));
        assert!(matches!(
            s.exec(forever, ()).unwrap_err(),
            Error::TimeBudget { .. }
        ));
        s.set_time_budget(None);
        let n: i64 = s.exec("SELECT count(*) FROM t", ()).unwrap().one().unwrap();
        assert_eq!(n, 100);
    }
}
