use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::fallible_iterator::FallibleIterator;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::{Connection, OpenFlags, OptionalExtension, StatementStatus};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cursor::Cursor;
use crate::error::{Error, Result};
use crate::value::{Params, Value, from_ref};
use crate::{Durability, MAX_BATCH_KEYS, MAX_KEY_SIZE, MAX_VALUE_SIZE};

/// Which keys `Storage::list` returns, in byte order.
#[derive(Clone, Debug, Default)]
pub struct ListOptions {
    pub prefix: Option<String>,
    /// Inclusive.
    pub start: Option<String>,
    /// Exclusive.
    pub start_after: Option<String>,
    /// Exclusive.
    pub end: Option<String>,
    pub limit: Option<usize>,
    pub reverse: bool,
}

/// Why the authorizer refused a user statement (it can only answer deny, so the reason is kept
/// here to build a typed error).
#[derive(Clone, Debug)]
enum Denial {
    Transaction(String),
    Reserved(String),
    Other(String),
}

struct Guard {
    enabled: bool,
    denial: Option<Denial>,
}

/// Pragmas user SQL may run: they only read the schema.
const ALLOWED_PRAGMAS: &[&str] = &[
    "table_info",
    "table_xinfo",
    "table_list",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "foreign_key_check",
    "integrity_check",
    "quick_check",
];

fn is_reserved(name: &str) -> bool {
    name.len() >= 8 && name[..8].eq_ignore_ascii_case("_denizen")
}

fn authorize(guard: &Mutex<Guard>, ctx: AuthContext<'_>) -> Authorization {
    let mut g = guard.lock().unwrap_or_else(|e| e.into_inner());
    if !g.enabled {
        return Authorization::Allow;
    }
    let denial = match ctx.action {
        AuthAction::Transaction { operation } => {
            Some(Denial::Transaction(format!("{operation:?}").to_uppercase()))
        }
        AuthAction::Savepoint { operation, .. } => Some(Denial::Transaction(match format!("{operation:?}").as_str() {
            "Begin" => "SAVEPOINT".to_string(),
            other => other.to_uppercase(),
        })),
        AuthAction::Attach { .. } | AuthAction::Detach { .. } => {
            Some(Denial::Other("ATTACH and DETACH are not allowed: an object has one database".into()))
        }
        AuthAction::Pragma { pragma_name, .. } => {
            let name = pragma_name.to_ascii_lowercase();
            (!ALLOWED_PRAGMAS.contains(&name.as_str())).then(|| {
                Denial::Other(format!(
                    "PRAGMA {name} is not allowed; allowed: {}",
                    ALLOWED_PRAGMAS.join(", ")
                ))
            })
        }
        AuthAction::Read { table_name, .. }
        | AuthAction::Insert { table_name }
        | AuthAction::Update { table_name, .. }
        | AuthAction::Delete { table_name }
        | AuthAction::CreateTable { table_name }
        | AuthAction::CreateTempTable { table_name }
        | AuthAction::DropTable { table_name }
        | AuthAction::DropTempTable { table_name }
        | AuthAction::AlterTable { table_name, .. }
        | AuthAction::CreateIndex { table_name, .. }
        | AuthAction::CreateTempIndex { table_name, .. }
        | AuthAction::DropIndex { table_name, .. }
        | AuthAction::DropTempIndex { table_name, .. }
        | AuthAction::CreateTrigger { table_name, .. }
        | AuthAction::CreateTempTrigger { table_name, .. }
        | AuthAction::DropTrigger { table_name, .. }
        | AuthAction::DropTempTrigger { table_name, .. }
        | AuthAction::Analyze { table_name }
        | AuthAction::CreateVtable { table_name, .. }
        | AuthAction::DropVtable { table_name, .. }
            if is_reserved(table_name) =>
        {
            Some(Denial::Reserved(table_name.to_string()))
        }
        AuthAction::CreateView { view_name, .. } | AuthAction::DropView { view_name }
            if is_reserved(view_name) =>
        {
            Some(Denial::Reserved(view_name.to_string()))
        }
        _ => None,
    };
    match denial {
        Some(d) => {
            g.denial.get_or_insert(d);
            Authorization::Deny
        }
        None => Authorization::Allow,
    }
}

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

/// One object's database: SQL, KV and metadata in one SQLite file, inside an implicit
/// transaction the runtime commits after each event.
pub struct Storage {
    conn: Connection,
    path: PathBuf,
    guard: Arc<Mutex<Guard>>,
    sql: Internal,
    in_txn: bool,
    writes: bool,
    savepoints: u32,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage").field("path", &self.path).finish()
    }
}

fn sql_error(e: rusqlite::Error) -> Error {
    match e {
        rusqlite::Error::SqliteFailure(_, Some(message)) => Error::Sql { message },
        rusqlite::Error::SqlInputError { msg, sql, offset, .. } => Error::Sql {
            message: format!("{msg} (at byte {offset} of `{sql}`)"),
        },
        rusqlite::Error::InvalidParameterCount(given, expected) => Error::Sql {
            message: format!("{given} parameters given, the statement takes {expected}"),
        },
        other => Error::Sql {
            message: other.to_string(),
        },
    }
}

fn check_key(key: &str) -> Result<()> {
    if key.len() > MAX_KEY_SIZE {
        return Err(Error::KeyTooLarge {
            size: key.len(),
            max: MAX_KEY_SIZE,
        });
    }
    Ok(())
}

fn check_batch(n: usize) -> Result<()> {
    if n > MAX_BATCH_KEYS {
        return Err(Error::BatchTooLarge {
            size: n,
            max: MAX_BATCH_KEYS,
        });
    }
    Ok(())
}

fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    let bytes = rmp_serde::to_vec_named(value).map_err(|e| Error::Encode {
        message: e.to_string(),
    })?;
    if bytes.len() > MAX_VALUE_SIZE {
        return Err(Error::ValueTooLarge {
            size: bytes.len(),
            max: MAX_VALUE_SIZE,
        });
    }
    Ok(bytes)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    rmp_serde::from_slice(bytes).map_err(|e| Error::Decode {
        message: e.to_string(),
    })
}

/// The smallest byte string greater than every string starting with `prefix` (None: no bound).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

pub(crate) fn open_connection(path: &Path, durability: Durability) -> Result<Connection> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))?;
    let sync = match durability {
        Durability::Normal => "NORMAL",
        Durability::Fsync => "FULL",
    };
    conn.execute_batch(&format!("PRAGMA synchronous={sync}; PRAGMA temp_store=MEMORY;"))?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

impl Storage {
    /// Opens (creating it if needed) the database at `path` in WAL mode.
    pub fn open(path: &Path, durability: Durability) -> Result<Storage> {
        let conn = open_connection(path, durability)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS _denizen_kv(key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS _denizen_meta(key TEXT PRIMARY KEY, value ANY) WITHOUT ROWID;",
        )?;
        let guard = Arc::new(Mutex::new(Guard {
            enabled: false,
            denial: None,
        }));
        let hook = guard.clone();
        conn.authorizer(Some(move |ctx: AuthContext<'_>| authorize(&hook, ctx)))?;
        let marker: String = conn.query_row("SELECT lower(hex(randomblob(8)))", [], |r| r.get(0))?;
        Ok(Storage {
            conn,
            path: path.to_path_buf(),
            guard,
            sql: Internal::new(&format!("denizen {marker}")),
            in_txn: false,
            writes: false,
            savepoints: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    // ---- the implicit transaction ----

    pub fn in_transaction(&self) -> bool {
        self.in_txn
    }

    /// Whether anything was written since the transaction began.
    pub fn has_writes(&self) -> bool {
        self.writes
    }

    fn ensure_txn(&mut self) -> Result<()> {
        if !self.in_txn {
            self.conn.prepare_cached(&self.sql.begin)?.execute([])?;
            self.in_txn = true;
            self.writes = false;
        }
        Ok(())
    }

    /// Commits the implicit transaction, if one is open.
    pub fn commit(&mut self) -> Result<()> {
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
            self.writes = false;
            self.savepoints = 0;
        }
        Ok(())
    }

    /// Discards the implicit transaction, if one is open.
    pub fn rollback(&mut self) -> Result<()> {
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

    // ---- SQL ----

    /// Runs one or more `;`-separated statements. Parameters bind to the last statement, and the
    /// cursor holds the last statement's rows.
    pub fn exec(&mut self, sql: &str, params: impl Params) -> Result<Cursor> {
        self.ensure_txn()?;
        let params = params.into_values();
        self.set_guard(true);
        let result = self.exec_guarded(sql, &params);
        let denial = self.set_guard(false);
        match (result, denial) {
            (Ok(cursor), _) => Ok(cursor),
            (Err(_), Some(Denial::Transaction(statement))) => {
                Err(Error::TransactionStatement { statement })
            }
            (Err(_), Some(Denial::Reserved(name))) => Err(Error::ReservedTable { name }),
            (Err(_), Some(Denial::Other(message))) => Err(Error::Sql { message }),
            (Err(e), None) => Err(e),
        }
    }

    fn set_guard(&self, enabled: bool) -> Option<Denial> {
        let mut g = self.guard.lock().unwrap_or_else(|e| e.into_inner());
        g.enabled = enabled;
        g.denial.take()
    }

    fn exec_guarded(&mut self, sql: &str, params: &[Value]) -> Result<Cursor> {
        let mut cursor = Cursor::default();
        let single = match self.conn.prepare_cached(sql) {
            Ok(stmt) => Some(stmt),
            Err(rusqlite::Error::MultipleStatement) => None,
            Err(e) => return Err(sql_error(e)),
        };
        if let Some(mut stmt) = single {
            let writes = run_statement(&self.conn, &mut stmt, params, &mut cursor, true)?;
            self.writes |= writes;
            return Ok(cursor);
        }
        let mut batch = rusqlite::Batch::new(&self.conn, sql);
        let mut statements = Vec::new();
        while let Some(stmt) = batch.next().map_err(sql_error)? {
            statements.push(stmt);
        }
        let last = statements.len().saturating_sub(1);
        let mut written = 0;
        let mut any_writes = false;
        for (i, mut stmt) in statements.into_iter().enumerate() {
            let mut c = Cursor::default();
            let is_last = i == last;
            any_writes |= run_statement(&self.conn, &mut stmt, if is_last { params } else { &[] }, &mut c, is_last)?;
            written += c.rows_written;
            if is_last {
                cursor = c;
            }
        }
        cursor.rows_written = written;
        self.writes |= any_writes;
        Ok(cursor)
    }

    // ---- KV ----

    pub fn get<T: DeserializeOwned>(&mut self, key: &str) -> Result<Option<T>> {
        check_key(key)?;
        self.ensure_txn()?;
        let bytes: Option<Vec<u8>> = self
            .conn
            .prepare_cached(&self.sql.kv_get)?
            .query_row([key.as_bytes()], |r| r.get(0))
            .optional()?;
        bytes.map(|b| decode(&b)).transpose()
    }

    /// The values of the keys that exist, in key order.
    pub fn get_many<T: DeserializeOwned>(&mut self, keys: &[&str]) -> Result<Vec<(String, T)>> {
        check_batch(keys.len())?;
        for k in keys {
            check_key(k)?;
        }
        self.ensure_txn()?;
        let mut sorted: Vec<&str> = keys.to_vec();
        sorted.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        sorted.dedup();
        let mut stmt = self.conn.prepare_cached(&self.sql.kv_get)?;
        let mut out = Vec::new();
        for key in sorted {
            let bytes: Option<Vec<u8>> = stmt
                .query_row([key.as_bytes()], |r| r.get(0))
                .optional()?;
            if let Some(b) = bytes {
                out.push((key.to_string(), decode(&b)?));
            }
        }
        Ok(out)
    }

    pub fn put<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<()> {
        check_key(key)?;
        let bytes = encode(value)?;
        self.ensure_txn()?;
        self.conn
            .prepare_cached(&self.sql.kv_put)?
            .execute(rusqlite::params![key.as_bytes(), bytes])?;
        self.writes = true;
        Ok(())
    }

    pub fn put_many<T: Serialize>(&mut self, entries: &[(&str, T)]) -> Result<()> {
        check_batch(entries.len())?;
        let mut encoded = Vec::with_capacity(entries.len());
        for (k, v) in entries {
            check_key(k)?;
            encoded.push((k.as_bytes(), encode(v)?));
        }
        self.ensure_txn()?;
        let mut stmt = self.conn.prepare_cached(&self.sql.kv_put)?;
        for (k, v) in encoded {
            stmt.execute(rusqlite::params![k, v])?;
        }
        self.writes = true;
        Ok(())
    }

    /// Whether the key existed.
    pub fn delete(&mut self, key: &str) -> Result<bool> {
        check_key(key)?;
        self.ensure_txn()?;
        let n = self
            .conn
            .prepare_cached(&self.sql.kv_delete)?
            .execute([key.as_bytes()])?;
        self.writes |= n > 0;
        Ok(n > 0)
    }

    /// How many of the keys existed.
    pub fn delete_many(&mut self, keys: &[&str]) -> Result<usize> {
        check_batch(keys.len())?;
        for k in keys {
            check_key(k)?;
        }
        self.ensure_txn()?;
        let mut stmt = self.conn.prepare_cached(&self.sql.kv_delete)?;
        let mut n = 0;
        for k in keys {
            n += stmt.execute([k.as_bytes()])?;
        }
        self.writes |= n > 0;
        Ok(n)
    }

    /// Entries in byte order of their keys (reversed with `reverse`).
    pub fn list<T: DeserializeOwned>(&mut self, options: &ListOptions) -> Result<Vec<(String, T)>> {
        self.ensure_txn()?;
        let mut conditions = Vec::new();
        let mut params: Vec<Vec<u8>> = Vec::new();
        if let Some(prefix) = &options.prefix {
            params.push(prefix.as_bytes().to_vec());
            conditions.push(format!("key >= ?{}", params.len()));
            if let Some(end) = prefix_end(prefix.as_bytes()) {
                params.push(end);
                conditions.push(format!("key < ?{}", params.len()));
            }
        }
        if let Some(start) = &options.start {
            params.push(start.as_bytes().to_vec());
            conditions.push(format!("key >= ?{}", params.len()));
        }
        if let Some(after) = &options.start_after {
            params.push(after.as_bytes().to_vec());
            conditions.push(format!("key > ?{}", params.len()));
        }
        if let Some(end) = &options.end {
            params.push(end.as_bytes().to_vec());
            conditions.push(format!("key < ?{}", params.len()));
        }
        let mut sql = String::from("SELECT key, value FROM _denizen_kv");
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        sql.push_str(if options.reverse {
            " ORDER BY key DESC"
        } else {
            " ORDER BY key ASC"
        });
        if let Some(limit) = options.limit {
            sql.push_str(&format!(" LIMIT {limit}"));
        }
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(params.iter()), |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (k, v) = row?;
            let key = String::from_utf8(k).map_err(|e| Error::Decode {
                message: format!("a stored key is not UTF-8: {e}"),
            })?;
            out.push((key, decode(&v)?));
        }
        Ok(out)
    }

    /// Deletes every KV entry and every table, view and trigger the object created, like
    /// Durable Objects' `deleteAll`. The runtime's own metadata (alarm, name) is kept.
    pub fn delete_all(&mut self) -> Result<()> {
        self.ensure_txn()?;
        self.conn.execute("DELETE FROM _denizen_kv", [])?;
        let objects: Vec<(String, String)> = {
            let mut stmt = self.conn.prepare(
                "SELECT type, name FROM sqlite_schema
                 WHERE type IN ('table', 'view', 'trigger')
                   AND name NOT LIKE '\\_denizen%' ESCAPE '\\'
                   AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        for kind in ["trigger", "view", "table"] {
            for (_, name) in objects.iter().filter(|(t, _)| t == kind) {
                let quoted = name.replace('"', "\"\"");
                self.conn
                    .execute_batch(&format!("DROP {} IF EXISTS \"{quoted}\"", kind.to_uppercase()))?;
            }
        }
        self.writes = true;
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

    /// Size of the database file's pages in bytes.
    pub fn database_size(&mut self) -> Result<u64> {
        let pages: i64 = self.conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        let size: i64 = self.conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        Ok(u64::try_from(pages.saturating_mul(size)).unwrap_or(0))
    }

    // ---- the runtime's metadata ----

    pub fn meta_get(&mut self, key: &str) -> Result<Option<Value>> {
        self.ensure_txn()?;
        Ok(self
            .conn
            .prepare_cached(&self.sql.meta_get)?
            .query_row([key], |r| Ok(from_ref(r.get_ref(0)?)))
            .optional()?)
    }

    /// Sets (or with `None` deletes) a metadata entry, inside the implicit transaction.
    pub fn meta_set(&mut self, key: &str, value: Option<Value>) -> Result<()> {
        self.ensure_txn()?;
        match value {
            Some(v) => self
                .conn
                .prepare_cached(&self.sql.meta_put)?
                .execute(rusqlite::params![key, v])?,
            None => self
                .conn
                .prepare_cached(&self.sql.meta_delete)?
                .execute([key])?,
        };
        self.writes = true;
        Ok(())
    }
}

/// Steps a statement to the end; collects rows if `collect`. Returns whether it may have written.
fn run_statement(
    conn: &Connection,
    stmt: &mut rusqlite::Statement<'_>,
    params: &[Value],
    cursor: &mut Cursor,
    collect: bool,
) -> Result<bool> {
    let expected = stmt.parameter_count();
    if params.len() != expected {
        return Err(Error::Sql {
            message: format!(
                "{} parameters given, the statement takes {expected}",
                params.len()
            ),
        });
    }
    for (i, p) in params.iter().enumerate() {
        stmt.raw_bind_parameter(i + 1, p).map_err(sql_error)?;
    }
    let readonly = stmt.readonly();
    stmt.reset_status(StatementStatus::FullscanStep);
    if collect {
        cursor.columns = stmt.column_names().iter().map(|c| c.to_string()).collect();
    }
    let width = stmt.column_count();
    let changes_before = conn.total_changes();
    let mut returned = 0u64;
    {
        let mut rows = stmt.raw_query();
        while let Some(row) = rows.next().map_err(sql_error)? {
            returned += 1;
            if collect {
                let mut values = Vec::with_capacity(width);
                for i in 0..width {
                    values.push(from_ref(row.get_ref(i).map_err(sql_error)?));
                }
                cursor.rows.push(values);
            }
        }
    }
    let scanned = u64::try_from(stmt.get_status(StatementStatus::FullscanStep)).unwrap_or(0);
    cursor.rows_read = returned + scanned;
    cursor.rows_written = if readonly {
        0
    } else {
        conn.total_changes().saturating_sub(changes_before)
    };
    Ok(!readonly)
}
