//! Opening object databases: connection settings, the image a new database is written from,
//! and the catalog's connection.

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use rusqlite::hooks::{AuthContext, Authorization};
use rusqlite::{Connection, OpenFlags};

use super::guard::{guarded_error, install_guard, schema_error};
use super::sql::sql_error;
use crate::Durability;
use crate::error::{Error, Result};

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
pub(super) const OBJECT_SETTINGS_NORMAL: &str = object_settings!("NORMAL", 256);
pub(super) const OBJECT_SETTINGS_FSYNC: &str = object_settings!("FULL", 256);
/// `normal` without a WAL yet: the commit that creates the WAL would fsync its header (and the
/// file and directory). `normal` promises survival of a process crash, which never loses writes
/// the OS already has, so that commit runs without fsync, and without checkpointing (whose
/// ordering does matter on power loss); [`RESTORE_NORMAL`] follows it.
pub(super) const OBJECT_SETTINGS_FIRST_WRITE: &str = object_settings!("OFF", 0);
pub(super) const RESTORE_NORMAL: &str = "PRAGMA synchronous=NORMAL; PRAGMA wal_autocheckpoint=256;";

/// Opens an existing object database through the object VFS.
pub(super) fn open_object_connection(path: &Path, settings: &str) -> Result<Connection> {
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
pub(super) fn statement_marker() -> String {
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

pub(super) fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The metadata key holding the schema an object's database was last brought up to.
pub(super) const SCHEMA_KEY: &str = "schema";

/// An empty object database (internal tables and a schema applied), built once per process and
/// schema. Creating an object then costs one file write instead of SQLite's journal switch and
/// schema transactions, and opening it needs no schema statement.
#[derive(Clone, Copy)]
pub(super) struct Image {
    /// The schema applied in it.
    pub(super) schema: &'static str,
    /// The file a new object's database is written as (WAL mode).
    pub(super) wal: &'static [u8],
    /// The same database in rollback-journal mode, which SQLite can open from memory: a new
    /// object that has not written yet reads this instead of a file (see `Storage::materialize`).
    pub(super) memory: &'static [u8],
}

/// Bytes 18 and 19 of a database header: the file format's write and read versions, 1 for a
/// rollback journal and 2 for WAL. They are all that tells a WAL database from another.
const FORMAT_VERSIONS: std::ops::Range<usize> = 18..20;

pub(super) fn empty_database(schema: &str) -> Result<Image> {
    // Read on every open (a wake too), built once per schema: a shared lock.
    static IMAGES: RwLock<Vec<Image>> = RwLock::new(Vec::new());
    let find = |images: &[Image]| images.iter().find(|i| i.schema == schema).copied();
    if let Some(image) = find(&IMAGES.read().unwrap_or_else(|e| e.into_inner())) {
        return Ok(image);
    }
    // One builder at a time; the others wait for its image. A failed build is not kept: the
    // error reaches every caller that asks.
    let mut images = IMAGES.write().unwrap_or_else(|e| e.into_inner());
    if let Some(image) = find(&images) {
        return Ok(image);
    }
    let conn = Connection::open_in_memory()?;
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
    let memory: Vec<u8> = conn.serialize(rusqlite::MAIN_DB)?.to_vec();
    let mut wal = memory.clone();
    match wal.get_mut(FORMAT_VERSIONS) {
        Some(versions) => versions.fill(2),
        None => {
            return Err(Error::Sql {
                message: "SQLite returned an empty database image".into(),
            });
        }
    }
    let image = Image {
        schema: Box::leak(schema.into()),
        wal: Box::leak(wal.into_boxed_slice()),
        memory: Box::leak(memory.into_boxed_slice()),
    };
    images.push(image);
    Ok(image)
}

/// A read-only connection on the empty database of `image`, in memory: what a new object reads
/// until its first write creates its file.
pub(super) fn open_memory_connection(image: Image) -> Result<Connection> {
    let mut conn = Connection::open_in_memory()?;
    conn.deserialize_bytes(rusqlite::MAIN_DB, image.memory)?;
    conn.execute_batch("PRAGMA temp_store=MEMORY;")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Writes the empty database image to `path` atomically: a crash leaves either no file or a
/// complete one.
pub(super) fn create_database_file(
    path: &Path,
    durability: Durability,
    image: Image,
) -> Result<()> {
    use std::io::Write;
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
    file.write_all(image.wal).map_err(io_error(&tmp))?;
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
