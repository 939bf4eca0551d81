//! Offline access to a data directory, for operators (the `denizen` CLI): list a namespace's
//! objects and open one object's database without registering its type.
//!
//! A running server holds its data directory ([`DataDirLock`]): object databases are opened here
//! only when no server runs there; otherwise ask the server (`Runtime::sql`, the HTTP routes).

use std::path::Path;

use denizen_storage::{Catalog, DataDirLock, Database, Durability};

use crate::error::{Error, Result};
use crate::id::{IdMinter, ObjectId};
use crate::runtime::ObjectInfo;

/// How the object to open is named.
#[derive(Clone, Copy, Debug)]
pub enum Address<'a> {
    /// By the name it was addressed by (`id_from_name`).
    Name(&'a str),
    /// By its id in hex.
    Id(&'a str),
}

/// Every object the catalog knows in `namespace` (`live` is always false: this reads files only).
pub fn list_objects(data_dir: &Path, namespace: &str) -> Result<Vec<ObjectInfo>> {
    let catalog = open_catalog(data_dir)?;
    Ok(catalog
        .list_objects(namespace)?
        .into_iter()
        .map(|r| ObjectInfo {
            id: r.id,
            name: r.name,
            created_ms: r.created_ms,
            last_active_ms: r.last_active_ms,
            size_bytes: r.size_bytes,
            live: false,
        })
        .collect())
}

/// An object's database opened by an operator's tool, with the data directory held meanwhile.
#[derive(Debug)]
pub struct OpenObject {
    /// The object's id.
    pub id: ObjectId,
    /// Its database (commit what you change).
    pub storage: Database,
    _lock: DataDirLock,
}

/// Opens an existing object's database. Unknown objects are an error, never created. While a
/// server runs on `data_dir` this fails at once with `storage::Error::Held`.
pub fn open_object(
    data_dir: &Path,
    namespace: &str,
    address: Address<'_>,
    durability: Durability,
) -> Result<OpenObject> {
    let catalog = open_catalog(data_dir)?;
    let minter = IdMinter::new(&catalog.secret_key()?, namespace);
    let (id, path) = existing_object(&minter, data_dir, namespace, address)?;
    let lock = DataDirLock::acquire(data_dir)?;
    Ok(OpenObject {
        id,
        storage: Database::open(&path, durability)?,
        _lock: lock,
    })
}

/// The id and database file of an object that exists (has a database file); never creates one.
pub(crate) fn existing_object(
    minter: &IdMinter,
    data_dir: &Path,
    namespace: &str,
    address: Address<'_>,
) -> Result<(ObjectId, std::path::PathBuf)> {
    let id = match address {
        Address::Name(name) => minter.id_for_name(name),
        Address::Id(hex) => minter.parse(hex)?,
    };
    let path = denizen_storage::object_path(data_dir, namespace, &id.to_hex());
    if !path.exists() {
        return Err(Error::NoSuchObject {
            namespace: namespace.to_string(),
            object: match address {
                Address::Name(name) => format!("named `{name}`"),
                Address::Id(hex) => format!("with id {hex}"),
            },
        });
    }
    Ok((id, path))
}

fn open_catalog(data_dir: &Path) -> Result<Catalog> {
    if !data_dir.join("catalog.sqlite").exists() {
        return Err(Error::NoDataDir {
            path: data_dir.display().to_string(),
        });
    }
    Ok(Catalog::open(data_dir, Durability::Normal)?)
}
