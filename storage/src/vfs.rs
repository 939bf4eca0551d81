#![allow(unsafe_code)] // the object VFS is SQLite's C interface; each block says why it is sound
//! The SQLite VFS of object databases: files without locks, and a process-wide pool of the file
//! descriptors they use.
//!
//! Why no locks: an object's database has one owner — the runtime runs one instance per id and
//! holds a lock on its data directory ([`crate::DataDirLock`]) — so SQLite's per-file POSIX locks
//! only cost time: a few `fcntl` calls per open, and a walk, under a global mutex, of a list of
//! every open file on each open, which grows with the number of open objects. With exclusive
//! locking mode SQLite keeps the WAL index in heap memory, so no `-shm` file is needed either.
//!
//! Why a pool: an open object holds two files (database and WAL), so the process's open-files
//! limit would otherwise bound how many objects can stay in memory — 5,000 under a common hard
//! limit of 20,000, far below what memory allows. Here the database and WAL of an object are
//! files whose descriptor is opened when SQLite reads or writes them and may be closed again
//! when the pool is full ([`set_max_open_files`]): the least recently used descriptors go first
//! (a clock sweep, so a read or write never takes a global lock), and a file in use is never
//! touched. Closing a descriptor loses nothing: written data is in the kernel's page cache, and
//! a later `fdatasync` through a new descriptor flushes the whole file.
//!
//! Everything else — temporary files, deleting and probing files, path resolution of relative
//! names — is SQLite's own `unix-none`. An absolute path is taken as it is (the default
//! resolution `lstat`s every component of the path on each open, to follow symlinks; object
//! paths are built by the runtime from an absolute data directory).

use std::ffi::{CStr, OsStr, c_char, c_int, c_void};
use std::fs::{File, OpenOptions};
use std::io;
use std::mem::ManuallyDrop;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, TryLockError};

use rusqlite::ffi;

use crate::error::{Error, Result};

/// The name object databases are opened with.
pub(crate) const NAME: &CStr = c"denizen-objects";

/// Descriptors the pool keeps open when [`set_max_open_files`] was never called.
const DEFAULT_MAX_OPEN_FILES: usize = 512;

/// Sets how many object files (databases and WALs together) may have a descriptor open at once,
/// process-wide; at least 8. Past it the least recently used are closed and reopened when next
/// read or written. The runtime sets it to half the process's open-files limit, leaving the rest
/// to sockets; lowering it closes descriptors as files are next opened.
pub fn set_max_open_files(limit: usize) {
    POOL.limit.store(limit.max(8), Relaxed);
}

/// Object files with a descriptor open now.
pub fn open_files() -> usize {
    POOL.lock().open.len()
}

/// The `unix-none` VFS ours delegates to, kept as an address so it can live in a static.
static BASE: OnceLock<usize> = OnceLock::new();

static POOL: Pool = Pool {
    slots: Mutex::new(Slots {
        open: Vec::new(),
        hand: 0,
    }),
    limit: AtomicUsize::new(DEFAULT_MAX_OPEN_FILES),
};

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
        ours.xOpen = Some(open);
        // Temporary files are `unix-none`'s own, opened in the same memory.
        let own = c_int::try_from(std::mem::size_of::<ObjectFile>()).unwrap_or(c_int::MAX);
        ours.szOsFile = ours.szOsFile.max(own);
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

fn base() -> Option<*mut ffi::sqlite3_vfs> {
    BASE.get().map(|b| *b as *mut ffi::sqlite3_vfs)
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
        // SAFETY: `base` is SQLite's own unix-none VFS (see `register`); it resolves against the
        // working directory exactly as it would had it been chosen directly.
        return match base().and_then(|b| unsafe { (*b).xFullPathname }) {
            // SAFETY: as above; the arguments are SQLite's own, passed through.
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

/// One database or WAL file: its path, and its descriptor while the pool holds one.
struct Handle {
    path: PathBuf,
    writable: bool,
    file: Mutex<Option<File>>,
    /// Set by every read and write; the clock sweep clears it and closes files found unset.
    used: AtomicBool,
    /// Where it is in the pool's list while open; changed only under the pool's lock.
    slot: AtomicUsize,
}

impl Handle {
    fn lock(&self) -> MutexGuard<'_, Option<File>> {
        self.file.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn reopen(&self) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(self.writable)
            .open(&self.path)
    }

    /// Runs `op` on the file, reopening it (and making room in the pool) if it was closed.
    fn with<R>(self: &Arc<Self>, op: impl FnOnce(&File) -> io::Result<R>) -> io::Result<R> {
        let mut guard = self.lock();
        self.used.store(true, Relaxed);
        let file = match &mut *guard {
            Some(file) => file,
            empty => {
                let file = empty.insert(self.reopen()?);
                POOL.admit(self);
                file
            }
        };
        op(file)
    }
}

struct Pool {
    slots: Mutex<Slots>,
    limit: AtomicUsize,
}

struct Slots {
    /// Every handle whose file is open (and only those).
    open: Vec<Arc<Handle>>,
    /// Where the clock sweep goes on.
    hand: usize,
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records `handle` as open (its caller holds its lock and has just opened it), closing the
    /// least recently used others while the pool is over its limit. Files in use by another
    /// thread are skipped; if every file is in use the pool goes over its limit rather than fail.
    fn admit(&self, handle: &Arc<Handle>) {
        let limit = self.limit.load(Relaxed);
        let mut slots = self.lock();
        let mut budget = slots.open.len().saturating_mul(2);
        while slots.open.len() >= limit && budget > 0 {
            budget -= 1;
            if slots.hand >= slots.open.len() {
                slots.hand = 0;
            }
            let at = slots.hand;
            let candidate = &slots.open[at];
            if candidate.used.swap(false, Relaxed) {
                slots.hand += 1;
                continue;
            }
            let closed = match candidate.file.try_lock() {
                Ok(mut file) => file.take(),
                Err(TryLockError::Poisoned(p)) => p.into_inner().take(),
                Err(TryLockError::WouldBlock) => None,
            };
            if closed.is_none() {
                slots.hand += 1;
                continue;
            }
            slots.remove(at);
            drop(closed);
        }
        handle.slot.store(slots.open.len(), Relaxed);
        slots.open.push(handle.clone());
    }

    /// Forgets `handle`, whose file its caller (holding its lock) has just closed.
    fn forget(&self, handle: &Arc<Handle>) {
        let mut slots = self.lock();
        let at = handle.slot.load(Relaxed);
        if slots.open.get(at).is_some_and(|h| Arc::ptr_eq(h, handle)) {
            slots.remove(at);
        }
    }
}

impl Slots {
    fn remove(&mut self, at: usize) {
        self.open.swap_remove(at);
        if let Some(moved) = self.open.get(at) {
            moved.slot.store(at, Relaxed);
        }
    }
}

/// What SQLite allocates for each object file (`szOsFile`).
#[repr(C)]
struct ObjectFile {
    base: ffi::sqlite3_file,
    /// Released by `close`.
    handle: ManuallyDrop<Arc<Handle>>,
    /// A WAL created by this open: its directory entry is synced with the file's first sync.
    sync_dir: bool,
}

static METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 1,
    xClose: Some(close),
    xRead: Some(read),
    xWrite: Some(write),
    xTruncate: Some(truncate),
    xSync: Some(sync),
    xFileSize: Some(file_size),
    xLock: Some(no_lock),
    xUnlock: Some(no_lock),
    xCheckReservedLock: Some(check_reserved_lock),
    xFileControl: Some(file_control),
    xSectorSize: Some(sector_size),
    xDeviceCharacteristics: Some(device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

unsafe extern "C" fn open(
    vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let pooled = flags & (ffi::SQLITE_OPEN_MAIN_DB | ffi::SQLITE_OPEN_WAL) != 0;
    if name.is_null() || !pooled || flags & ffi::SQLITE_OPEN_DELETEONCLOSE != 0 {
        // SAFETY: `base` is SQLite's unix-none VFS, and SQLite gave us `szOsFile` bytes, at least
        // what unix-none needs (see `register`).
        return match base().and_then(|b| unsafe { (*b).xOpen }) {
            // SAFETY: as above; the arguments are SQLite's own, passed through.
            Some(open) => unsafe { open(vfs, name, file, flags, out_flags) },
            None => ffi::SQLITE_CANTOPEN,
        };
    }
    // SAFETY: SQLite passes a NUL-terminated name for a named file.
    let path = Path::new(OsStr::from_bytes(
        unsafe { CStr::from_ptr(name) }.to_bytes(),
    ));
    let writable = flags & ffi::SQLITE_OPEN_READWRITE != 0;
    let create = flags & ffi::SQLITE_OPEN_CREATE != 0;
    let opened = OpenOptions::new()
        .read(true)
        .write(writable)
        .create(writable && create && flags & ffi::SQLITE_OPEN_EXCLUSIVE == 0)
        .create_new(writable && create && flags & ffi::SQLITE_OPEN_EXCLUSIVE != 0)
        .open(path);
    let ours = file.cast::<ObjectFile>();
    let Ok(opened) = opened else {
        // SAFETY: `file` points at `szOsFile` writable bytes; no methods means nothing to close.
        unsafe { (*ours).base.pMethods = std::ptr::null() };
        return ffi::SQLITE_CANTOPEN;
    };
    let handle = Arc::new(Handle {
        path: path.to_path_buf(),
        writable,
        file: Mutex::new(None),
        used: AtomicBool::new(true),
        slot: AtomicUsize::new(usize::MAX),
    });
    {
        let mut guard = handle.lock();
        *guard = Some(opened);
        POOL.admit(&handle);
    }
    // SAFETY: as above; the handle's reference is released by `close`.
    unsafe {
        ours.write(ObjectFile {
            base: ffi::sqlite3_file { pMethods: &METHODS },
            handle: ManuallyDrop::new(handle),
            sync_dir: writable && create && flags & ffi::SQLITE_OPEN_WAL != 0,
        });
        if !out_flags.is_null() {
            *out_flags = flags;
        }
    }
    ffi::SQLITE_OK
}

/// An open object file. SQLite calls a file's methods from one thread at a time.
///
/// # Safety
/// `file` must be an [`ObjectFile`] opened by [`open`] and not yet closed.
unsafe fn object_file<'a>(file: *mut ffi::sqlite3_file) -> &'a mut ObjectFile {
    // SAFETY: the caller's contract.
    unsafe { &mut *file.cast::<ObjectFile>() }
}

fn io_code(e: &io::Error, code: c_int) -> c_int {
    match e.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => ffi::SQLITE_FULL,
        _ => code,
    }
}

unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite closes each file it opened once, so the handle is taken exactly once.
    let handle = unsafe {
        let ours = object_file(file);
        ours.base.pMethods = std::ptr::null();
        ManuallyDrop::take(&mut ours.handle)
    };
    let mut guard = handle.lock();
    if guard.take().is_some() {
        POOL.forget(&handle);
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn read(
    file: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: SQLite passes its own open file and a buffer of `amount` bytes.
    let handle = unsafe { &object_file(file).handle };
    // SAFETY: `buf` holds `amount` writable bytes, SQLite's for the duration of the call.
    let buf = unsafe {
        std::slice::from_raw_parts_mut(buf.cast::<u8>(), usize::try_from(amount).unwrap_or(0))
    };
    let offset = u64::try_from(offset).unwrap_or(0);
    let got = handle.with(|f| {
        let mut done = 0;
        while done < buf.len() {
            match f.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    });
    match got {
        Ok(n) if n == buf.len() => ffi::SQLITE_OK,
        Ok(n) => {
            // SQLite requires the unread rest zeroed on a short read.
            buf[n..].fill(0);
            ffi::SQLITE_IOERR_SHORT_READ
        }
        Err(e) => io_code(&e, ffi::SQLITE_IOERR_READ),
    }
}

unsafe extern "C" fn write(
    file: *mut ffi::sqlite3_file,
    buf: *const c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: SQLite passes its own open file and a buffer of `amount` bytes.
    let handle = unsafe { &object_file(file).handle };
    // SAFETY: `buf` holds `amount` readable bytes, SQLite's for the duration of the call.
    let buf = unsafe {
        std::slice::from_raw_parts(buf.cast::<u8>(), usize::try_from(amount).unwrap_or(0))
    };
    let offset = u64::try_from(offset).unwrap_or(0);
    match handle.with(|f| f.write_all_at(buf, offset)) {
        Ok(()) => ffi::SQLITE_OK,
        Err(e) => io_code(&e, ffi::SQLITE_IOERR_WRITE),
    }
}

unsafe extern "C" fn truncate(file: *mut ffi::sqlite3_file, size: ffi::sqlite3_int64) -> c_int {
    // SAFETY: SQLite passes its own open file.
    let handle = unsafe { &object_file(file).handle };
    match handle.with(|f| f.set_len(u64::try_from(size).unwrap_or(0))) {
        Ok(()) => ffi::SQLITE_OK,
        Err(e) => io_code(&e, ffi::SQLITE_IOERR_TRUNCATE),
    }
}

unsafe extern "C" fn sync(file: *mut ffi::sqlite3_file, _flags: c_int) -> c_int {
    // SAFETY: SQLite passes its own open file.
    let ours = unsafe { object_file(file) };
    if let Err(e) = ours.handle.with(|f| f.sync_data()) {
        return io_code(&e, ffi::SQLITE_IOERR_FSYNC);
    }
    // As SQLite's unix VFS: a directory that cannot be opened is not an error.
    if std::mem::take(&mut ours.sync_dir)
        && let Some(dir) = ours.handle.path.parent()
        && let Ok(dir) = File::open(dir)
        && let Err(e) = dir.sync_all()
    {
        return io_code(&e, ffi::SQLITE_IOERR_DIR_FSYNC);
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn file_size(
    file: *mut ffi::sqlite3_file,
    size: *mut ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: SQLite passes its own open file and somewhere to write the size.
    let handle = unsafe { &object_file(file).handle };
    match handle.with(|f| f.metadata()) {
        Ok(meta) => {
            // SAFETY: `size` points to an integer SQLite gave us to fill.
            unsafe { *size = ffi::sqlite3_int64::try_from(meta.len()).unwrap_or(i64::MAX) };
            ffi::SQLITE_OK
        }
        Err(e) => io_code(&e, ffi::SQLITE_IOERR_FSTAT),
    }
}

/// No locks: the data directory's lock keeps every other process out.
unsafe extern "C" fn no_lock(_file: *mut ffi::sqlite3_file, _level: c_int) -> c_int {
    ffi::SQLITE_OK
}

unsafe extern "C" fn check_reserved_lock(_file: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    // SAFETY: SQLite passes somewhere to write the answer.
    unsafe { *out = 0 };
    ffi::SQLITE_OK
}

unsafe extern "C" fn file_control(
    _file: *mut ffi::sqlite3_file,
    _op: c_int,
    _arg: *mut c_void,
) -> c_int {
    ffi::SQLITE_NOTFOUND
}

/// As SQLite's unix VFS on Linux.
unsafe extern "C" fn sector_size(_file: *mut ffi::sqlite3_file) -> c_int {
    4096
}

/// As SQLite's unix VFS with its default powersafe-overwrite setting.
unsafe extern "C" fn device_characteristics(_file: *mut ffi::sqlite3_file) -> c_int {
    ffi::SQLITE_IOCAP_POWERSAFE_OVERWRITE
}
