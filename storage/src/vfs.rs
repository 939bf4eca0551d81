//! The SQLite VFS of object databases: SQLite's `unix-none` (no file locks) with a path
//! resolution that trusts absolute paths.
//!
//! Why: an object's database has one owner — the runtime runs one instance per id and holds a
//! lock on its data directory ([`crate::DataDirLock`]) — so SQLite's per-file POSIX locks only
//! cost time: a few `fcntl` calls per open, and a walk, under a global mutex, of a list of every
//! open file on each open, which grows with the number of open objects. With exclusive locking
//! mode SQLite keeps the WAL index in heap memory, so no `-shm` file is needed either. The
//! default path resolution `lstat`s every component of the path on each open, to follow
//! symlinks; object paths are built by the runtime from an absolute data directory, so an
//! absolute path is taken as it is.

use std::ffi::{CStr, c_char, c_int};
use std::sync::OnceLock;

use rusqlite::ffi;

use crate::error::{Error, Result};

/// The name object databases are opened with.
pub(crate) const NAME: &CStr = c"denizen-objects";

/// The `unix-none` VFS ours delegates to, kept as an address so it can live in a static.
static BASE: OnceLock<usize> = OnceLock::new();

/// Registers the VFS (once per process) and returns its name.
pub(crate) fn objects() -> Result<&'static CStr> {
    static REGISTERED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(register)
        .clone()
        .map_err(|message| Error::Sql { message })?;
    Ok(NAME)
}

fn register() -> std::result::Result<(), String> {
    // SAFETY: sqlite3_config before SQLite initializes is allowed; once it has initialized (some
    // other code opened a connection first) it returns SQLITE_MISUSE and changes nothing.
    // Memory statistics take a global mutex on every allocation, which every connection shares.
    // Each connection's lookaside buffer is allocated when it opens; 8 slots instead of SQLite's
    // default 40 make an open object about 80 KiB instead of 120 KiB, at no measured cost.
    unsafe {
        ffi::sqlite3_config(ffi::SQLITE_CONFIG_MEMSTATUS, 0 as c_int);
        ffi::sqlite3_config(ffi::SQLITE_CONFIG_LOOKASIDE, 1200 as c_int, 8 as c_int);
    }
    // SAFETY: sqlite3_vfs_find returns a pointer to a VFS SQLite keeps for the whole process, or
    // null; the copy we register is leaked, so it outlives every connection that uses it.
    unsafe {
        let base = ffi::sqlite3_vfs_find(c"unix-none".as_ptr());
        if base.is_null() {
            return Err("SQLite was built without its unix-none VFS".into());
        }
        let mut ours: ffi::sqlite3_vfs = std::ptr::read(base);
        ours.zName = NAME.as_ptr();
        ours.pNext = std::ptr::null_mut();
        ours.xFullPathname = Some(full_pathname);
        let _ = BASE.set(base as usize);
        let rc = ffi::sqlite3_vfs_register(Box::leak(Box::new(ours)), 0);
        if rc != ffi::SQLITE_OK {
            return Err(format!(
                "registering the object VFS failed (SQLite code {rc})"
            ));
        }
    }
    Ok(())
}

/// An absolute path is the full path; anything else goes to `unix-none`'s resolution.
unsafe extern "C" fn full_pathname(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    n_out: c_int,
    out: *mut c_char,
) -> c_int {
    // SAFETY: SQLite passes a NUL-terminated name.
    let bytes = unsafe { CStr::from_ptr(name) }.to_bytes_with_nul();
    if bytes.first() != Some(&b'/') {
        let Some(base) = BASE.get().map(|b| *b as *mut ffi::sqlite3_vfs) else {
            return ffi::SQLITE_CANTOPEN;
        };
        // SAFETY: `base` is SQLite's own unix-none VFS (see `register`); it resolves against the
        // working directory exactly as it would had it been chosen directly.
        return match unsafe { (*base).xFullPathname } {
            Some(resolve) => unsafe { resolve(vfs, name, n_out, out) },
            None => ffi::SQLITE_CANTOPEN,
        };
    }
    if bytes.len() > usize::try_from(n_out).unwrap_or(0) {
        return ffi::SQLITE_CANTOPEN;
    }
    // SAFETY: `out` has room for `n_out` bytes (SQLite's contract), checked above.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), out.cast::<u8>(), bytes.len()) };
    ffi::SQLITE_OK
}
