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
        AuthAction::Savepoint { operation, .. } => Some(Denial::Transaction(
            match format!("{operation:?}").as_str() {
                "Begin" => "SAVEPOINT".to_string(),
                other => other.to_uppercase(),
            },
        )),
        AuthAction::Attach { .. } | AuthAction::Detach { .. } => Some(Denial::Other(
            "ATTACH and DETACH are not allowed: an object has one database".into(),
        )),
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

fn sql_error(e: rusqlite::Error) -> Error {
    match e {
        rusqlite::Error::SqliteFailure(_, Some(message)) => Error::Sql { message },
        rusqlite::Error::SqlInputError {
            msg, sql, offset, ..
        } => Error::Sql {
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

/// How long a catalog statement waits for a lock another process (the CLI) holds.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens the catalog (its directory exists): a database other processes (the CLI) may read while
/// the server runs, in WAL mode, with `init` (its schema) applied.
pub(crate) fn open_connection(
    path: &Path,
    durability: Durability,
    init: &str,
) -> Result<Connection> {
    // Before SQLite's first connection: the object VFS also sets process-wide options.
    crate::vfs::objects()?;
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))?;
    conn.execute_batch(init)?;
    conn.execute_batch(match durability {
        Durability::Normal => "PRAGMA synchronous=NORMAL;",
        Durability::Fsync => "PRAGMA synchronous=FULL;",
    })?;
    Ok(conn)
}

/// The settings of an object's connection, with its `synchronous` mode and WAL autocheckpoint.
/// `locking_mode` must come first: with exclusive locking the WAL index lives in heap memory,
/// which the object VFS (no shared memory) needs. The WAL is kept small because a wake rebuilds
/// its index by reading it.
macro_rules! object_settings {
    ($sync:literal, $checkpoint:literal) => {
        concat!(
            "PRAGMA locking_mode=EXCLUSIVE; PRAGMA synchronous=",
            $sync,
            "; PRAGMA wal_autocheckpoint=",
            $checkpoint,
            "; PRAGMA journal_size_limit=1048576; PRAGMA temp_store=MEMORY;"
        )
    };
}
const OBJECT_SETTINGS_NORMAL: &str = object_settings!("NORMAL", 256);
const OBJECT_SETTINGS_FSYNC: &str = object_settings!("FULL", 256);
/// `normal` without a WAL yet: the commit that creates the WAL would fsync its header (and the
/// file and directory). `normal` promises survival of a process crash, which never loses writes
/// the OS already has, so that commit runs without fsync, and without checkpointing (whose
/// ordering does matter on power loss); [`RESTORE_NORMAL`] follows it.
const OBJECT_SETTINGS_FIRST_WRITE: &str = object_settings!("OFF", 0);
const RESTORE_NORMAL: &str = "PRAGMA synchronous=NORMAL; PRAGMA wal_autocheckpoint=256;";

/// Opens an existing object database through the object VFS.
fn open_object_connection(path: &Path, settings: &str) -> Result<Connection> {
    let conn = Connection::open_with_flags_and_vfs(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        crate::vfs::objects()?,
    )?;
    conn.execute_batch(settings)?;
    // Closing (hibernation) leaves the WAL in place instead of checkpointing it: the commits in
    // it are already as durable as the mode promises, and a wake then reuses it. SQLite still
    // checkpoints as the WAL grows.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// A fresh, unguessable tag for the runtime's own statements (the authorizer lets them through),
/// without a query: per-process random keys over a counter.
fn statement_marker() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static KEYS: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut h = KEYS.get_or_init(Default::default).build_hasher();
    h.write_u64(NEXT.fetch_add(1, Ordering::Relaxed));
    format!("{:016x}", h.finish())
}

const OBJECT_SCHEMA: &str =
    "CREATE TABLE IF NOT EXISTS _denizen_kv(key BLOB PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
     CREATE TABLE IF NOT EXISTS _denizen_meta(key TEXT PRIMARY KEY, value ANY) WITHOUT ROWID;";

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The metadata key holding the schema an object's database was last brought up to.
const SCHEMA_KEY: &str = "schema";

/// The bytes of an empty object database (WAL mode, internal tables, and `schema` applied), built
/// once per process and schema. Creating an object then costs one file write instead of SQLite's
/// journal switch and schema transactions, and opening it needs no schema statement.
fn empty_database(near: &Path, schema: &str) -> Result<&'static [u8]> {
    static IMAGES: Mutex<Vec<(String, &'static [u8])>> = Mutex::new(Vec::new());
    // One builder at a time; the others wait for its image. A failed build is not kept: the
    // error reaches every caller that asks.
    let mut images = IMAGES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, image)) = images.iter().find(|(s, _)| s == schema) {
        return Ok(image);
    }
    let dir = near.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let nonce: u64 = {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish()
    };
    let tmp = dir.join(format!(".denizen-empty-{nonce:016x}.sqlite"));
    let built = (|| -> Result<Vec<u8>> {
        let conn = Connection::open(&tmp)?;
        conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))?;
        conn.execute_batch(OBJECT_SCHEMA)?;
        if !schema.is_empty() {
            // Through the same guard as user SQL: a schema gets no more than `exec` would.
            conn.execute_batch("BEGIN")?;
            let guard = install_guard(&conn, true)?;
            let applied = conn.execute_batch(schema);
            let denial = guard
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .denial
                .take();
            conn.authorizer(None::<fn(AuthContext<'_>) -> Authorization>)?;
            if let Err(e) = applied {
                return Err(schema_error(guarded_error(sql_error(e), denial)));
            }
            conn.execute(
                "INSERT INTO _denizen_meta(key, value) VALUES (?1, ?2)",
                [SCHEMA_KEY, schema],
            )?;
            conn.execute_batch("COMMIT")?;
        }
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        drop(conn);
        std::fs::read(&tmp).map_err(io_error(&tmp))
    })();
    let _ = remove_files(&tmp);
    let image: &'static [u8] = Box::leak(built?.into_boxed_slice());
    images.push((schema.to_string(), image));
    Ok(image)
}

/// Installs the authorizer that refuses, while enabled, what user SQL may not do.
fn install_guard(conn: &Connection, enabled: bool) -> Result<Arc<Mutex<Guard>>> {
    let guard = Arc::new(Mutex::new(Guard {
        enabled,
        denial: None,
    }));
    let hook = guard.clone();
    conn.authorizer(Some(move |ctx: AuthContext<'_>| authorize(&hook, ctx)))?;
    Ok(guard)
}

/// The error of a guarded statement: what the guard refused, if that was the cause.
fn guarded_error(error: Error, denial: Option<Denial>) -> Error {
    match denial {
        Some(Denial::Transaction(statement)) => Error::TransactionStatement { statement },
        Some(Denial::Reserved(name)) => Error::ReservedTable { name },
        Some(Denial::Other(message)) => Error::Sql { message },
        None => error,
    }
}

/// The error of a schema that failed, said in terms of the schema.
fn schema_error(error: Error) -> Error {
    let message = match error {
        Error::TransactionStatement { statement } => {
            format!("`{statement}` is not allowed: the schema runs in a transaction of its own")
        }
        Error::ReservedTable { name } => {
            format!("table `{name}` is reserved for Denizen's own use")
        }
        Error::Sql { message } => message,
        other => other.to_string(),
    };
    Error::Schema { message }
}

fn remove_files(path: &Path) -> Result<()> {
    crate::remove_object_files(path)
}

/// Writes the empty database image to `path` atomically: a crash leaves either no file or a
/// complete one.
fn create_database_file(path: &Path, durability: Durability, schema: &str) -> Result<()> {
    use std::io::Write;
    let image = empty_database(path, schema)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = PathBuf::from(tmp);
    // The shard directory usually exists: create it only when the file cannot be.
    let mut file = match std::fs::File::create(&tmp) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io_error(dir))?;
            }
            std::fs::File::create(&tmp)
        }
        other => other,
    }
    .map_err(io_error(&tmp))?;
    file.write_all(image).map_err(io_error(&tmp))?;
    if durability == Durability::Fsync {
        file.sync_all().map_err(io_error(&tmp))?;
    }
    drop(file);
    std::fs::rename(&tmp, path).map_err(io_error(path))?;
    if durability == Durability::Fsync
        && let Some(dir) = path.parent()
    {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error(dir))?;
    }
    Ok(())
}

impl Storage {
    /// Opens (creating it if needed) the database at `path` in WAL mode.
    ///
    /// The caller owns the file: one `Storage` per file at a time, in one process. The runtime
    /// guarantees it with one instance per object and the [`crate::DataDirLock`] on its data
    /// directory; SQLite's own file locks are not used.
    pub fn open(path: &Path, durability: Durability) -> Result<Storage> {
        Self::open_with_schema(path, durability, "")
    }

    /// Opens like [`Storage::open`], with `schema` (SQL statements that can run again, such as
    /// `CREATE TABLE IF NOT EXISTS`) in place. A new database is created with it already applied,
    /// so a new object runs no schema statement at all; a database last brought up to another
    /// schema runs this one now, in a transaction of its own, and remembers it. The guard of
    /// [`Storage::exec`] applies: no transaction statements, no reserved tables.
    pub fn open_with_schema(path: &Path, durability: Durability, schema: &str) -> Result<Storage> {
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        // A WAL in place means the database exists (one stat on a wake).
        let has_wal = std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0);
        let created = !has_wal && !path.exists();
        if created {
            create_database_file(path, durability, schema)?;
        }
        let first_write = !has_wal && durability == Durability::Normal;
        let settings = match durability {
            _ if first_write => OBJECT_SETTINGS_FIRST_WRITE,
            Durability::Normal => OBJECT_SETTINGS_NORMAL,
            Durability::Fsync => OBJECT_SETTINGS_FSYNC,
        };
        let conn = open_object_connection(path, settings)?;
        let guard = install_guard(&conn, false)?;
        let marker = statement_marker();
        let mut storage = Storage {
            conn,
            path: path.to_path_buf(),
            guard,
            sql: Internal::new(&format!("denizen {marker}")),
            in_txn: false,
            writes: false,
            savepoints: 0,
            created,
            first_write,
            written: false,
        };
        if !created && !schema.is_empty() {
            storage.bring_up_to(schema)?;
        }
        Ok(storage)
    }

    /// Applies `schema` unless it is the one the database was last brought up to.
    fn bring_up_to(&mut self, schema: &str) -> Result<()> {
        if matches!(self.meta_get(SCHEMA_KEY)?, Some(Value::Text(s)) if s == schema) {
            return Ok(());
        }
        let applied = self
            .exec(schema, ())
            .and_then(|_| self.meta_set(SCHEMA_KEY, Some(Value::Text(schema.to_string()))))
            .and_then(|()| self.commit());
        if let Err(e) = applied {
            let _ = self.rollback();
            return Err(schema_error(e));
        }
        Ok(())
    }

    /// Whether this open created the database (a new object).
    pub fn created(&self) -> bool {
        self.created
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

    /// Whether anything was committed since the database was opened (its size may have changed).
    pub fn written_since_open(&self) -> bool {
        self.written
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
        result.map_err(|e| guarded_error(e, denial))
    }

    fn set_guard(&self, enabled: bool) -> Option<Denial> {
        let mut g = self.guard.lock().unwrap_or_else(|e| e.into_inner());
        g.enabled = enabled;
        g.denial.take()
    }

    fn exec_guarded(&mut self, sql: &str, params: &[Value]) -> Result<Cursor> {
        let mut cursor = Cursor::default();
        // The cached single-statement path is the fast one; anything it cannot prepare (several
        // statements, where a later one may depend on an earlier one) goes statement by statement,
        // and that path's error is the one reported.
        let single = self.conn.prepare_cached(sql).ok();
        if let Some(mut stmt) = single {
            let writes = run_statement(&self.conn, &mut stmt, params, &mut cursor, true)?;
            self.writes |= writes;
            return Ok(cursor);
        }
        // Each statement is prepared only after the previous one ran (it may create a table the
        // next one uses), so the statement taking the parameters is the one that declares them.
        let mut batch = rusqlite::Batch::new(&self.conn, sql);
        let mut written = 0;
        let mut any_writes = false;
        let mut bound = false;
        while let Some(mut stmt) = batch.next().map_err(sql_error)? {
            let takes_params = stmt.parameter_count() > 0;
            if takes_params && bound {
                return Err(Error::Sql {
                    message: "only the last statement of a batch may take parameters".into(),
                });
            }
            let mut c = Cursor::default();
            let p = if takes_params { params } else { &[] };
            any_writes |= run_statement(&self.conn, &mut stmt, p, &mut c, true)?;
            bound |= takes_params;
            written += c.rows_written;
            cursor = c;
        }
        if !params.is_empty() && !bound {
            return Err(Error::Sql {
                message: format!(
                    "{} parameters given, but no statement takes any",
                    params.len()
                ),
            });
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
            let bytes: Option<Vec<u8>> =
                stmt.query_row([key.as_bytes()], |r| r.get(0)).optional()?;
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
                self.conn.execute_batch(&format!(
                    "DROP {} IF EXISTS \"{quoted}\"",
                    kind.to_uppercase()
                ))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, Storage) {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(&dir.path().join("t.sqlite"), Durability::Normal).unwrap();
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
        let mut s = Storage::open(&path, Durability::Normal).unwrap();
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
        let mut s = Storage::open(&path, Durability::Normal).unwrap();
        assert!(!s.created());
        assert_eq!(pragma(&s, "synchronous"), 1);
        assert_eq!(s.get::<bool>("x").unwrap(), Some(true));
        drop(s);
        let s = Storage::open(&dir.path().join("f.sqlite"), Durability::Fsync).unwrap();
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
        let mut s = Storage::open(&dir.path().join("t.sqlite"), Durability::Fsync).unwrap();
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
        let mut s = Storage::open_with_schema(&path, Durability::Normal, NOTES).unwrap();
        assert!(s.created());
        assert!(!s.has_writes());
        assert_eq!(tables(&mut s), ["notes"]);
        s.exec("INSERT INTO notes(body) VALUES ('a')", ()).unwrap();
        s.commit().unwrap();
        drop(s);
        let mut s = Storage::open_with_schema(&path, Durability::Normal, NOTES).unwrap();
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
        let mut s = Storage::open(&path, Durability::Normal).unwrap();
        s.put("k", &1).unwrap();
        s.commit().unwrap();
        drop(s);
        let grown = format!("{NOTES}; CREATE TABLE IF NOT EXISTS tags(name TEXT PRIMARY KEY)");
        let mut s = Storage::open_with_schema(&path, Durability::Normal, &grown).unwrap();
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
        let mut s = Storage::open(&path, Durability::Normal).unwrap();
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
            let err = Storage::open_with_schema(&path, Durability::Normal, schema).unwrap_err();
            assert!(matches!(err, Error::Schema { .. }), "{err:?}");
            assert!(err.to_string().contains(says), "{schema}: {err}");
            assert!(err.to_string().contains("SCHEMA"), "{err}");
            assert!(!path.exists(), "{schema}: no file for a schema that failed");
        }
        // The same mistakes on an existing database leave it as it was.
        let mut s = Storage::open(&path, Durability::Normal).unwrap();
        s.put("k", &1).unwrap();
        s.commit().unwrap();
        drop(s);
        for schema in [
            "CREATE TABLE ok(x); CREATE TABLE (",
            "CREATE TABLE ok(x); COMMIT",
        ] {
            let err = Storage::open_with_schema(&path, Durability::Normal, schema).unwrap_err();
            assert!(matches!(err, Error::Schema { .. }), "{err:?}");
        }
        let mut s = Storage::open(&path, Durability::Normal).unwrap();
        assert!(tables(&mut s).is_empty());
        assert_eq!(s.get::<i32>("k").unwrap(), Some(1));
        assert_eq!(s.meta_get(SCHEMA_KEY).unwrap(), None);
    }
}
