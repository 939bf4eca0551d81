//! One SQLite file per durable object: a SQL and a KV API over it, the implicit transaction the
//! runtime commits after every event, and the runtime's catalog.
//!
//! Why it exists: a Durable Object's storage is private, local and synchronous — no network hop
//! between the code and its data, and a transaction boundary the runtime controls. This crate is
//! that storage with no knowledge of actors: [`Storage`] is one object's database as its code
//! sees it, [`Database`] the same as the runtime holds it (it alone commits and rolls back),
//! [`Catalog`] is the runtime's index of objects and due alarms.
//!
//! - **SQL**: [`Storage::exec`] runs `;`-separated statements (parameters bind to the last) and
//!   returns a [`Cursor`] whose rows decode into serde types. `BEGIN`, `COMMIT`, `SAVEPOINT` and
//!   friends are refused — transactions belong to the runtime — and so is any access to
//!   `_denizen_*` tables.
//! - **KV**: `get`/`put`/`delete`, single and batched (≤ [`MAX_BATCH_KEYS`]), `list` in byte
//!   order, `delete_all`. Values are any serde type (MessagePack). Keys ≤ [`MAX_KEY_SIZE`] bytes,
//!   values ≤ [`MAX_VALUE_SIZE`] bytes encoded.
//! - **Transactions**: every operation joins an implicit transaction that [`Database::commit`]
//!   ends (the runtime calls it after each event); [`Storage::transaction`] nests a savepoint.
//! - **Bounds**: [`Storage::exec_limited`] runs a query within a time budget and row and byte
//!   caps ([`QueryLimits`]); [`Database::set_time_budget`] interrupts any statement that runs past
//!   the event's deadline.
//! - **New objects** ([`Database::open_deferred`]) read an empty database from memory until their
//!   first write creates the file: reading an object that does not exist leaves nothing on disk.
//! - **Schema**: [`Database::open_with_schema`] creates a new database with its tables already in
//!   place (written from an image built once per process and schema, so creating an object runs
//!   no schema statement) and brings an older one up to a changed schema once.
//! - **Durability**: WAL mode; [`Durability::Normal`] (`synchronous=NORMAL`) survives a process
//!   crash, [`Durability::Fsync`] (`synchronous=FULL`) survives power loss.
//! - **Open files**: object databases take no file locks (one process owns a data directory,
//!   [`DataDirLock`]) and share a process-wide pool of descriptors ([`set_max_open_files`]), so
//!   how many stay open is a question of memory, not of the open-files limit.
//!
//! ```
//! use denizen_storage::{Database, Durability, ListOptions};
//!
//! # fn main() -> denizen_storage::Result<()> {
//! let dir = tempfile::tempdir().map_err(|e| denizen_storage::Error::Io { path: "tmp".into(), source: e })?;
//! let mut db = Database::open(&dir.path().join("one.sqlite"), Durability::Normal)?;
//! db.exec("CREATE TABLE people(name TEXT, age INTEGER)", [])?;
//! db.exec("INSERT INTO people VALUES (?, ?), (?, ?)", ("ada", 36, "alan", 41))?;
//! let oldest: String = db.exec("SELECT name FROM people ORDER BY age DESC LIMIT 1", [])?.one()?;
//! assert_eq!(oldest, "alan");
//!
//! db.put("config/theme", &"dark")?;
//! let theme: Option<String> = db.get("config/theme")?;
//! assert_eq!(theme.as_deref(), Some("dark"));
//! let all: Vec<(String, String)> = db.list(&ListOptions { prefix: Some("config/".into()), ..Default::default() })?;
//! assert_eq!(all.len(), 1);
//!
//! assert!(db.exec("BEGIN", []).is_err()); // transactions belong to the runtime
//! db.commit()?; // the runtime's part: code of an object sees a `Storage`, which cannot commit
//! # Ok(())
//! # }
//! ```

mod catalog;
mod cursor;
mod error;
mod storage;
mod value;
mod vfs;

use std::path::{Path, PathBuf};

pub use catalog::{AlarmRecord, Catalog, CatalogWrite, ObjectRecord, ObjectTouch};
pub use cursor::Cursor;
pub use error::{Error, Result};
pub use storage::{Database, ListOptions, QueryLimits, Storage};
pub use value::{Params, Value};
pub use vfs::{open_files, set_max_open_files};

/// Longest key, in bytes.
pub const MAX_KEY_SIZE: usize = 2048;
/// Largest value, in bytes once encoded.
pub const MAX_VALUE_SIZE: usize = 2 * 1024 * 1024;
/// Most keys in one batched KV call.
pub const MAX_BATCH_KEYS: usize = 128;

/// How hard a commit tries to reach the disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// WAL + `synchronous=NORMAL`: a committed transaction survives a process crash.
    #[default]
    Normal,
    /// WAL + `synchronous=FULL`: it also survives power loss, at the cost of an fsync per commit.
    Fsync,
}

impl std::str::FromStr for Durability {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "normal" => Ok(Durability::Normal),
            "fsync" | "full" => Ok(Durability::Fsync),
            other => Err(format!(
                "`{other}` is not a durability mode: use `normal` or `fsync`"
            )),
        }
    }
}

/// Where an object's database lives: `<data_dir>/objects/<namespace>/<id[0..2]>/<id>.sqlite`.
/// The id (a keyed hash) shards the 256 directories; the object's name never reaches the
/// filesystem.
pub fn object_path(data_dir: &Path, namespace: &str, id_hex: &str) -> PathBuf {
    let shard = id_hex.get(0..2).unwrap_or("xx");
    data_dir
        .join("objects")
        .join(namespace)
        .join(shard)
        .join(format!("{id_hex}.sqlite"))
}

/// The lock a process holds on a data directory while it uses the object databases in it: a
/// second server, or an operator's tool opening object files, on the same directory is refused
/// with [`Error::Held`] instead of sharing files SQLite does not lock (see [`Database::open`]).
/// Released when dropped, and by the kernel when the process dies.
#[derive(Debug)]
pub struct DataDirLock {
    _file: std::fs::File,
}

impl DataDirLock {
    /// Takes the lock on `dir` (created if missing), or fails at once if another holder has it.
    pub fn acquire(dir: &Path) -> Result<DataDirLock> {
        let io = |source| Error::Io {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let path = dir.join("lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => Ok(DataDirLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::Held {
                path: dir.to_path_buf(),
            }),
            Err(std::fs::TryLockError::Error(source)) => Err(Error::Io { path, source }),
        }
    }
}

/// Removes an object's database files (db, `-wal`, `-shm`); absent files are fine.
pub fn remove_object_files(path: &Path) -> Result<()> {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::Io {
                    path: PathBuf::from(p),
                    source,
                });
            }
        }
    }
    Ok(())
}
