//! The writer's VFS: SQLite's own (`unix`) with the write-ahead log's appends gathered,
//! so that a transaction's frames reach the file in one `pwrite` instead of two a page.
//!
//! SQLite writes each log frame as two calls, its 24-byte header and then its page
//! (`walWriteOneFrame` in `wal.c`): 24 system calls for a commit of twelve pages (one
//! `/v1/track` group), some 300 for a `/v1/batch` group, each paying the kernel's
//! per-call and per-page costs. Measured on this machine, writing 130 frames as one call
//! took 140 µs against 500-580 µs as 260 calls, 12 frames 10 µs against 40-44 µs; the
//! writer spent 22-24% of its time in `pwrite` before.
//!
//! How this stays as safe as SQLite's own writes:
//! - Only the log (files opened with `SQLITE_OPEN_WAL`) gathers; every other file, and
//!   every method but `xWrite`, is passed to the `unix` VFS as it is.
//! - A write is gathered only when it starts where the previous write to the log ended
//!   (an append). Anything else (a page rewritten in place, a checksum rewritten by
//!   `walRewriteChecksums`, the log's header after a restart), and every other call on the
//!   log (`xRead`, `xSync`, `xTruncate`, `xFileSize`, `xFileControl`, `xClose`, ...), first
//!   writes what is gathered. So the file receives the same writes in the same order,
//!   only merged, and whatever reads it through this connection sees them.
//! - What is gathered is written at the latest when the page of a commit frame (a frame
//!   header whose "database size after commit" field is not zero, the log format's commit
//!   mark) has been gathered, inside that `xWrite`: before `sqlite3WalFrames` publishes
//!   the commit in the shared wal-index, which is what lets other connections (the
//!   checkpointer's) read those frames, and before `COMMIT` returns, so the writer's
//!   fsync of the log (`writer::Log`) covers the commit. A write error surfaces in that
//!   call, so the commit fails as it would have.
//! - At most [`MAX_WRITE`] bytes wait: bigger transactions write in steps (of under
//!   128 KiB: the `unix` VFS writes no more at once).
//! - A transaction that ends without a commit (rolled back after a full cache sent some
//!   of its pages to the log early) may leave writes gathered that belong to nothing.
//!   Written later, they would land over what another connection (an admin command's,
//!   another process) committed in between; so they are dropped when the connection
//!   gives up the log's write lock (`xShmLock` on its database file, which each log
//!   finds at open through `sqlite3_filename_database`).
//!
//! A crash loses only what is gathered, which is never part of a commit that returned.
//! The `unix` VFS's methods other than `xOpen` ignore the VFS they are called through
//! (checked in SQLite 3.46's and 3.53's `os_unix.c`; `xOpen` gets `unix` itself, so the
//! files it opens name `unix`), so this VFS lends them unchanged; it stands only over a
//! default VFS named `unix` ([`register`] declines any other).
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_int, c_void};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::{mem, ptr, slice};

use rusqlite::ffi;

/// Most bytes one write to the base VFS may carry: `unix`'s `seekAndWriteFd` keeps only
/// the low 17 bits of a write's length (it never writes 128 KiB or more at once). Gathered
/// bytes are also written once they reach this, whatever the transaction.
const MAX_WRITE: usize = 31 * 4096;

/// A log frame's header, as `wal.c` writes it.
const FRAME_HEADER: usize = 24;

/// What a registered VFS did, for tests and measurements.
#[derive(Debug, Default)]
pub(super) struct Counts {
    /// Writes to a log given to this VFS.
    pub(super) log_writes: AtomicU64,
    /// Writes made to the log's file by the VFS below (gathered ones count once).
    pub(super) file_writes: AtomicU64,
    /// Reads of a log (a transaction reading back pages it wrote there).
    pub(super) log_reads: AtomicU64,
    /// Gathered writes dropped as their transaction ended without a commit.
    pub(super) dropped: AtomicU64,
}

/// What each file's VFS methods reach: the VFS below and the counts.
struct AppData {
    base: *mut ffi::sqlite3_vfs,
    counts: Counts,
}

/// Registers a VFS named `name` over the default `unix` VFS (not as the default); it
/// lives as long as the process. Fails if the default VFS is not `unix`.
pub(super) fn register(name: &str) -> Result<&'static Counts, String> {
    let name = CString::new(name).map_err(|_| format!("VFS name {name:?} holds a NUL"))?;
    // SAFETY: sqlite3_vfs_find initialises SQLite and returns the default VFS or null.
    let base = unsafe { ffi::sqlite3_vfs_find(ptr::null()) };
    if base.is_null() {
        return Err("SQLite has no default VFS".into());
    }
    // SAFETY: a registered VFS lives until it is unregistered, which nothing here does.
    let base_vfs = unsafe { &*base };
    // SAFETY: a VFS's name is a NUL-terminated string that lives as long as it does.
    let base_name = unsafe { CStr::from_ptr(base_vfs.zName) };
    if base_name.to_bytes() != b"unix" {
        return Err(format!(
            "the default SQLite VFS is {base_name:?}, not \"unix\": the log is written unchanged"
        ));
    }
    let sz_os_file = c_int::try_from(file_bytes(base_vfs.szOsFile))
        .map_err(|_| "the unix VFS's files are too large".to_owned())?;
    let app: &'static AppData = Box::leak(Box::new(AppData {
        base,
        counts: Counts::default(),
    }));
    let vfs = Box::leak(Box::new(ffi::sqlite3_vfs {
        szOsFile: sz_os_file,
        pNext: ptr::null_mut(),
        zName: name.into_raw(),
        pAppData: ptr::from_ref(app).cast_mut().cast(),
        xOpen: Some(x_open),
        ..*base_vfs
    }));
    // SAFETY: `vfs` is complete and leaked, so it outlives every connection using it.
    let rc = unsafe { ffi::sqlite3_vfs_register(vfs, 0) };
    if rc != ffi::SQLITE_OK {
        return Err(format!("SQLite refused to register the VFS (code {rc})"));
    }
    Ok(&app.counts)
}

/// One open file: SQLite's `sqlite3_file` (our methods), then the `unix` VFS's own file,
/// which lives in the same allocation, [`BASE_OFFSET`] bytes in.
#[repr(C)]
struct File {
    /// What SQLite sees: `pMethods` points at `io`.
    file: ffi::sqlite3_file,
    /// The base file's methods, each present one replaced by ours.
    io: ffi::sqlite3_io_methods,
    /// The base file (inside this allocation).
    base: *mut ffi::sqlite3_file,
    /// Set for the log only.
    gather: Option<Box<Gather>>,
    /// A log's database file and a database file's log, of the same connection (null
    /// while the other is not open).
    link: *mut File,
    counts: *const Counts,
}

/// The database files open through this VFS, by the name pointer SQLite opened them
/// with, which `sqlite3_filename_database` gives back for their log: how a log finds
/// its database file. (Addresses as `usize`, so that the list is `Send`.)
static MAIN_DBS: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());

fn main_dbs() -> MutexGuard<'static, Vec<(usize, usize)>> {
    MAIN_DBS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Where the base file starts in a [`File`]'s allocation.
const BASE_OFFSET: usize = mem::size_of::<File>().next_multiple_of(16);

/// The bytes SQLite allocates for a file of this VFS.
fn file_bytes(base_size: c_int) -> usize {
    BASE_OFFSET + usize::try_from(base_size).unwrap_or(0)
}

/// A log's appends not yet written.
#[derive(Default)]
struct Gather {
    bytes: Vec<u8>,
    /// The file offset of `bytes[0]`.
    start: i64,
    /// Where the last write to the log ended, if known.
    end: Option<i64>,
    /// The last write gathered was a commit frame's header: its page completes the commit.
    commit_next: bool,
}

impl File {
    /// The base file's methods.
    ///
    /// # Safety
    /// The base file must be open (between a successful open and `xClose`).
    unsafe fn base_methods(&self) -> &ffi::sqlite3_io_methods {
        // SAFETY: an open base file's methods point at the base VFS's static table.
        unsafe { &*(*self.base).pMethods }
    }

    /// Writes what is gathered, if anything.
    ///
    /// # Safety
    /// As [`base_methods`](Self::base_methods).
    unsafe fn flush(&mut self) -> c_int {
        let Some(gather) = self.gather.as_deref_mut() else {
            return ffi::SQLITE_OK;
        };
        if gather.bytes.is_empty() {
            return ffi::SQLITE_OK;
        }
        let (mut bytes, mut offset) = (mem::take(&mut gather.bytes), gather.start);
        let mut rc = ffi::SQLITE_OK;
        for chunk in bytes.chunks(MAX_WRITE) {
            let amount = c_int::try_from(chunk.len()).unwrap_or(c_int::MAX);
            // SAFETY: the base file is open (caller); `chunk` holds `amount` bytes.
            rc = unsafe { forward_write(self, chunk.as_ptr().cast(), amount, offset) };
            if rc != ffi::SQLITE_OK {
                break;
            }
            offset = offset.saturating_add(i64::from(amount));
        }
        // The allocation serves the next transaction.
        bytes.clear();
        if let Some(gather) = self.gather.as_deref_mut() {
            gather.bytes = bytes;
        }
        rc
    }
}

/// `xOpen`: opens the base file inside ours, then puts our methods in front of it.
unsafe extern "C" fn x_open(
    vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    // SAFETY: SQLite passes this VFS, whose `pAppData` is a leaked `AppData`, and a
    // file of `szOsFile` bytes (`file_bytes`), so the base file fits at BASE_OFFSET.
    unsafe {
        let app = &*(*vfs).pAppData.cast::<AppData>();
        (*file).pMethods = ptr::null();
        let base = file
            .cast::<u8>()
            .add(BASE_OFFSET)
            .cast::<ffi::sqlite3_file>();
        (*base).pMethods = ptr::null();
        let Some(open) = (*app.base).xOpen else {
            return ffi::SQLITE_CANTOPEN;
        };
        let rc = open(app.base, name, base, flags, out_flags);
        // A base file with methods gets `xClose` even when its open failed.
        if (*base).pMethods.is_null() {
            return rc;
        }
        let io = wrap(&*(*base).pMethods);
        let gather = (flags & ffi::SQLITE_OPEN_WAL != 0).then(Box::<Gather>::default);
        let ours = file.cast::<File>();
        ptr::write(
            ours,
            File {
                file: ffi::sqlite3_file {
                    pMethods: ptr::null(),
                },
                io,
                base,
                gather,
                link: ptr::null_mut(),
                counts: &app.counts,
            },
        );
        (*ours).file.pMethods = &raw const (*ours).io;
        if !name.is_null() {
            let mut dbs = main_dbs();
            if flags & ffi::SQLITE_OPEN_MAIN_DB != 0 {
                dbs.push((name as usize, ours as usize));
            } else if flags & ffi::SQLITE_OPEN_WAL != 0 {
                let db_name = ffi::sqlite3_filename_database(name) as usize;
                if let Some(&(_, db)) = dbs.iter().find(|(n, _)| *n == db_name) {
                    let db = db as *mut File;
                    (*ours).link = db;
                    (*db).link = ours;
                }
            }
        }
        rc
    }
}

/// `base`'s methods with each present one replaced by its forwarder here.
fn wrap(base: &ffi::sqlite3_io_methods) -> ffi::sqlite3_io_methods {
    ffi::sqlite3_io_methods {
        iVersion: base.iVersion,
        xClose: base.xClose.and(Some(x_close)),
        xRead: base.xRead.and(Some(x_read)),
        xWrite: base.xWrite.and(Some(x_write)),
        xTruncate: base.xTruncate.and(Some(x_truncate)),
        xSync: base.xSync.and(Some(x_sync)),
        xFileSize: base.xFileSize.and(Some(x_file_size)),
        xLock: base.xLock.and(Some(x_lock)),
        xUnlock: base.xUnlock.and(Some(x_unlock)),
        xCheckReservedLock: base.xCheckReservedLock.and(Some(x_check_reserved_lock)),
        xFileControl: base.xFileControl.and(Some(x_file_control)),
        xSectorSize: base.xSectorSize.and(Some(x_sector_size)),
        xDeviceCharacteristics: base
            .xDeviceCharacteristics
            .and(Some(x_device_characteristics)),
        xShmMap: base.xShmMap.and(Some(x_shm_map)),
        xShmLock: base.xShmLock.and(Some(x_shm_lock)),
        xShmBarrier: base.xShmBarrier.and(Some(x_shm_barrier)),
        xShmUnmap: base.xShmUnmap.and(Some(x_shm_unmap)),
        xFetch: base.xFetch.and(Some(x_fetch)),
        xUnfetch: base.xUnfetch.and(Some(x_unfetch)),
    }
}

/// `xWrite`: appends to the log are gathered (see the module docs); the rest written.
unsafe extern "C" fn x_write(
    file: *mut ffi::sqlite3_file,
    data: *const c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: SQLite calls this only on a file `x_open` set up, with `amount` bytes at
    // `data`.
    unsafe {
        let ours = &mut *file.cast::<File>();
        let Some(gather) = ours.gather.as_deref_mut() else {
            return forward_write(ours, data, amount, offset);
        };
        (*ours.counts).log_writes.fetch_add(1, Ordering::Relaxed);
        let Ok(len) = usize::try_from(amount) else {
            return ffi::SQLITE_IOERR_WRITE;
        };
        let bytes = slice::from_raw_parts(data.cast::<u8>(), len);
        let end = offset.saturating_add(i64::from(amount));
        // A commit frame's header marks its page as the commit's last write.
        let completes_commit = mem::replace(
            &mut gather.commit_next,
            len == FRAME_HEADER && bytes[4..8] != [0; 4],
        );
        if gather.end != Some(offset) {
            let rc = ours.flush();
            if rc != ffi::SQLITE_OK {
                return rc;
            }
            let rc = forward_write(ours, data, amount, offset);
            if let Some(gather) = ours.gather.as_deref_mut() {
                gather.end = (rc == ffi::SQLITE_OK).then_some(end);
            }
            return rc;
        }
        if gather.bytes.is_empty() {
            gather.start = offset;
        }
        gather.bytes.extend_from_slice(bytes);
        gather.end = Some(end);
        if completes_commit || gather.bytes.len() >= MAX_WRITE {
            return ours.flush();
        }
        ffi::SQLITE_OK
    }
}

/// The base file's `xWrite`, counted.
///
/// # Safety
/// `ours` is open and `data` holds `amount` bytes.
unsafe fn forward_write(
    ours: &File,
    data: *const c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: as the caller promises.
    unsafe {
        if ours.gather.is_some() {
            (*ours.counts).file_writes.fetch_add(1, Ordering::Relaxed);
        }
        match ours.base_methods().xWrite {
            Some(write) => write(ours.base, data, amount, offset),
            None => ffi::SQLITE_IOERR_WRITE,
        }
    }
}

/// `xRead`: what is gathered is written first, so the read sees it.
unsafe extern "C" fn x_read(
    file: *mut ffi::sqlite3_file,
    data: *mut c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: as in `forward!`.
    unsafe {
        let ours = &mut *file.cast::<File>();
        if ours.gather.is_some() {
            (*ours.counts).log_reads.fetch_add(1, Ordering::Relaxed);
            let rc = ours.flush();
            if rc != ffi::SQLITE_OK {
                return rc;
            }
        }
        match ours.base_methods().xRead {
            Some(read) => read(ours.base, data, amount, offset),
            None => ffi::SQLITE_MISUSE,
        }
    }
}

/// `xClose`: writes what is gathered, closes the base file, drops our part.
unsafe extern "C" fn x_close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite calls this once, last, on a file `x_open` set up.
    unsafe {
        let ours = file.cast::<File>();
        {
            let mut dbs = main_dbs();
            dbs.retain(|&(_, db)| db != ours as usize);
            if let Some(other) = (*ours).link.as_mut() {
                other.link = ptr::null_mut();
            }
        }
        let flushed = (*ours).flush();
        let closed = match (*ours).base_methods().xClose {
            Some(close) => close((*ours).base),
            None => ffi::SQLITE_OK,
        };
        ptr::drop_in_place(&raw mut (*ours).gather);
        if flushed == ffi::SQLITE_OK {
            closed
        } else {
            flushed
        }
    }
}

/// Forwarders for the other methods: each writes what is gathered first (so the file
/// is as SQLite wrote it before anything else touches or reads it), then calls the base
/// file's method.
macro_rules! forward {
    ($(fn $name:ident => $method:ident ($($arg:ident: $ty:ty),*);)*) => {$(
        unsafe extern "C" fn $name(file: *mut ffi::sqlite3_file $(, $arg: $ty)*) -> c_int {
            // SAFETY: SQLite calls this only on a file `x_open` set up, and only if the
            // base file has this method (`wrap`).
            unsafe {
                let ours = &mut *file.cast::<File>();
                let rc = ours.flush();
                if rc != ffi::SQLITE_OK {
                    return rc;
                }
                match ours.base_methods().$method {
                    Some(method) => method(ours.base $(, $arg)*),
                    None => ffi::SQLITE_MISUSE,
                }
            }
        }
    )*};
}

/// Forwarders that write nothing first: sizes and shared memory or mapped pages, which
/// only a database file has, never the log.
macro_rules! pass {
    ($(fn $name:ident => $method:ident ($($arg:ident: $ty:ty),*);)*) => {$(
        unsafe extern "C" fn $name(file: *mut ffi::sqlite3_file $(, $arg: $ty)*) -> c_int {
            // SAFETY: as in `forward!`.
            unsafe {
                let ours = &*file.cast::<File>();
                match ours.base_methods().$method {
                    Some(method) => method(ours.base $(, $arg)*),
                    None => ffi::SQLITE_MISUSE,
                }
            }
        }
    )*};
}

forward! {
    fn x_truncate => xTruncate(size: ffi::sqlite3_int64);
    fn x_sync => xSync(flags: c_int);
    fn x_file_size => xFileSize(size: *mut ffi::sqlite3_int64);
    fn x_lock => xLock(level: c_int);
    fn x_unlock => xUnlock(level: c_int);
    fn x_check_reserved_lock => xCheckReservedLock(out: *mut c_int);
    fn x_file_control => xFileControl(op: c_int, arg: *mut c_void);
}

pass! {
    fn x_sector_size => xSectorSize();
    fn x_device_characteristics => xDeviceCharacteristics();
    fn x_shm_map => xShmMap(page: c_int, page_size: c_int, extend: c_int, out: *mut *mut c_void);
    fn x_shm_unmap => xShmUnmap(delete: c_int);
    fn x_fetch => xFetch(offset: ffi::sqlite3_int64, amount: c_int, out: *mut *mut c_void);
    fn x_unfetch => xUnfetch(offset: ffi::sqlite3_int64, page: *mut c_void);
}

/// `xShmLock`: when a database file's connection gives up the log's write lock, its
/// transaction is over; had it not committed (rolled back after some of its pages went to
/// the log early, as a full cache makes it), what is still gathered belongs to no commit
/// and must not be written over what another connection writes next: it is dropped.
unsafe extern "C" fn x_shm_lock(
    file: *mut ffi::sqlite3_file,
    offset: c_int,
    n: c_int,
    flags: c_int,
) -> c_int {
    // SAFETY: as in `forward!`; a linked log is open, and used by this connection only.
    unsafe {
        let ours = &*file.cast::<File>();
        let releases_write_lock = flags == ffi::SQLITE_SHM_UNLOCK | ffi::SQLITE_SHM_EXCLUSIVE
            && offset <= WAL_WRITE_LOCK
            && WAL_WRITE_LOCK < offset.saturating_add(n);
        if releases_write_lock {
            if let Some(gather) = ours.link.as_mut().and_then(|log| log.gather.as_deref_mut()) {
                if !gather.bytes.is_empty() {
                    (*ours.counts).dropped.fetch_add(1, Ordering::Relaxed);
                    gather.bytes.clear();
                    gather.end = None;
                }
                gather.commit_next = false;
            }
        }
        match ours.base_methods().xShmLock {
            Some(lock) => lock(ours.base, offset, n, flags),
            None => ffi::SQLITE_MISUSE,
        }
    }
}

/// The lock slot of the log's writer (`WAL_WRITE_LOCK` in `wal.c`).
const WAL_WRITE_LOCK: c_int = 0;

/// `xShmBarrier`, passed on as [`pass!`] does.
unsafe extern "C" fn x_shm_barrier(file: *mut ffi::sqlite3_file) {
    // SAFETY: as in `forward!`.
    unsafe {
        let ours = &*file.cast::<File>();
        if let Some(barrier) = ours.base_methods().xShmBarrier {
            barrier(ours.base);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::atomic::Ordering;

    use rusqlite::{Connection, OpenFlags, params};

    use super::{Counts, register};

    /// A connection through a VFS of this test's own (so that its counts are its own),
    /// set up as the store's writer is: WAL, no fsync at commit.
    fn gathering(path: &Path, vfs: &str) -> (Connection, &'static Counts) {
        let counts = register(vfs).expect("register");
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE;
        let conn = Connection::open_with_flags_and_vfs(path, flags, vfs).expect("open");
        conn.pragma_update(None, "journal_mode", "WAL")
            .expect("wal");
        conn.pragma_update(None, "synchronous", "NORMAL")
            .expect("sync");
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .expect("no checkpoints");
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, k INTEGER NOT NULL, v BLOB NOT NULL)",
        )
        .expect("table");
        (conn, counts)
    }

    /// A second connection through SQLite's default VFS: it sees the file, not the writer.
    fn reader(path: &Path) -> Connection {
        Connection::open(path).expect("reader")
    }

    /// Row `i` of an insert: `k` and a value of `size` bytes, each `k`.
    fn row(tx: &Connection, i: usize, size: usize) {
        let k = u8::try_from(i % 251).expect("small");
        tx.execute(
            "INSERT INTO t (k, v) VALUES (?1, ?2)",
            params![k, vec![k; size]],
        )
        .expect("insert");
    }

    fn insert(conn: &Connection, rows: usize, size: usize) {
        let tx = conn.unchecked_transaction().expect("begin");
        for i in 0..rows {
            row(&tx, i, size);
        }
        tx.commit().expect("commit");
    }

    /// (rows, bytes, sum of `k`) as `conn` sees them; fails on a row whose value is not
    /// made of its `k` (a page read from where the log was not written yet).
    fn contents(conn: &Connection) -> (usize, usize, usize) {
        let torn: i64 = conn
            .query_row(
                "SELECT count(*) FROM t WHERE hex(substr(v, 1, 1)) != printf('%02X', k)
                 OR hex(substr(v, -1, 1)) != printf('%02X', k)",
                [],
                |row| row.get(0),
            )
            .expect("torn rows");
        assert_eq!(torn, 0, "rows whose value is not what was written");
        let (rows, bytes, sum): (i64, i64, i64) = conn
            .query_row(
                "SELECT count(*), COALESCE(sum(length(v)), 0), COALESCE(sum(k), 0) FROM t",
                [],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .expect("contents");
        let count = |n: i64| usize::try_from(n).expect("not negative");
        (count(rows), count(bytes), count(sum))
    }

    /// Fails unless SQLite finds the database whole.
    fn assert_intact(conn: &Connection) {
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .expect("check");
        assert_eq!(check, "ok");
    }

    #[test]
    fn a_commit_reaches_the_log_in_one_write() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("one.db");
        let (conn, counts) = gathering(&path, "stipple-gather-test-one");
        let (writes, file_writes) = (
            counts.log_writes.load(Ordering::Relaxed),
            counts.file_writes.load(Ordering::Relaxed),
        );
        // About 12 pages of rows: 24 writes from SQLite.
        insert(&conn, 40, 1000);
        let writes = counts.log_writes.load(Ordering::Relaxed) - writes;
        let file_writes = counts.file_writes.load(Ordering::Relaxed) - file_writes;
        assert!(writes >= 20, "SQLite wrote the log {writes} times");
        assert_eq!(
            file_writes, 1,
            "{writes} log writes reached the file as {file_writes}"
        );
        assert_eq!(contents(&reader(&path)).0, 40);
    }

    #[test]
    fn every_commit_is_in_the_file_when_it_returns() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("each.db");
        let (conn, counts) = gathering(&path, "stipple-gather-test-each");
        let other = reader(&path);
        let mut expected = (0, 0, 0);
        for round in 0..120_usize {
            // From one row to a few hundred KiB (several steps of MAX_WRITE).
            let (rows, size) = match round % 4 {
                0 => (1, 100),
                1 => (30, 700),
                2 => (7, 5_000),
                _ => (150, 3_000),
            };
            insert(&conn, rows, size);
            expected.0 += rows;
            expected.1 += rows * size;
            expected.2 += (0..rows).map(|i| i % 251).sum::<usize>();
            assert_eq!(contents(&other), expected, "after commit {round}");
            if round % 10 == 9 {
                // The log starts over from its head after this: writes go back to offset 0.
                other
                    .query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()))
                    .expect("checkpoint");
            }
        }
        assert!(
            counts.file_writes.load(Ordering::Relaxed) * 4
                < counts.log_writes.load(Ordering::Relaxed),
            "{:?}",
            counts
        );
        assert_intact(&other);
    }

    #[test]
    fn frames_spilled_read_back_and_rewritten_by_their_transaction_are_kept() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("spill.db");
        let (conn, counts) = gathering(&path, "stipple-gather-test-spill");
        // Rolled back after its pages went to the log: later frames are written over them.
        let tx = conn.unchecked_transaction().expect("begin");
        for i in 0..30 {
            row(&tx, i, 2_000);
        }
        tx.cache_flush().expect("spill");
        drop(tx);
        insert(&conn, 3, 10);
        assert_eq!(contents(&reader(&path)).0, 3);

        let tx = conn.unchecked_transaction().expect("begin");
        for i in 0..60 {
            row(&tx, i, 1_000);
        }
        // The transaction's pages go to the log (as when its cache is full) and leave the
        // cache, so reading them back reads the log.
        tx.cache_flush().expect("spill");
        tx.execute_batch("PRAGMA shrink_memory").expect("shrink");
        let reads = counts.log_reads.load(Ordering::Relaxed);
        // The three rows before hold k = 0, 1, 2.
        let sum = 3 + (0..60).sum::<usize>();
        assert_eq!(contents(&tx), (63, 60_030, sum));
        assert!(
            counts.log_reads.load(Ordering::Relaxed) > reads,
            "nothing read back"
        );
        // The first rows' pages went to the log in this transaction: SQLite writes them
        // again over their frames, and rewrites the frames' checksums at commit.
        for id in 4..24_i64 {
            tx.execute(
                "UPDATE t SET k = 7, v = ?1 WHERE id = ?2",
                params![vec![7_u8; 1_000], id],
            )
            .expect("update");
        }
        tx.commit().expect("commit");
        let expected = (63, 60_030, sum - (0..20).sum::<usize>() + 7 * 20);
        assert_eq!(contents(&reader(&path)), expected);
        // The files copied while the writer still has them open (closing would
        // checkpoint the log away), then opened alone: recovering the log checks every
        // frame's checksum, and keeps no transaction from a bad frame on.
        let fresh = tempfile::tempdir().expect("dir");
        for name in ["spill.db", "spill.db-wal"] {
            std::fs::copy(dir.path().join(name), fresh.path().join(name)).expect("copy");
        }
        drop(conn);
        let again = reader(&fresh.path().join("spill.db"));
        assert_eq!(contents(&again), expected);
        assert_intact(&again);
    }

    #[test]
    fn a_rolled_back_transaction_leaves_nothing_to_write_over_another_connections_commit() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("two.db");
        let (conn, counts) = gathering(&path, "stipple-gather-test-two");
        insert(&conn, 40, 1_000);
        // Rows rewritten in place (no page added, so the first page stays as it was and
        // the rollback reads nothing back), their pages sent to the log early and
        // gathered, then the transaction rolled back.
        let tx = conn.unchecked_transaction().expect("begin");
        tx.execute("UPDATE t SET k = 9, v = ?1", params![vec![9_u8; 1_000]])
            .expect("update");
        tx.cache_flush().expect("spill");
        let dropped = counts.dropped.load(Ordering::Relaxed);
        drop(tx);
        assert!(
            counts.dropped.load(Ordering::Relaxed) > dropped,
            "nothing was left"
        );
        // Another connection (another process, say `stipple dead-letters requeue`)
        // commits where those frames would have gone.
        insert(&reader(&path), 5, 500);
        // The first connection writes again: nothing of the rolled-back transaction may
        // land over the other's frames.
        insert(&conn, 2, 10);
        let sum = (0..40).sum::<usize>() + (0..5).sum::<usize>() + 1;
        assert_eq!(contents(&reader(&path)), (47, 40_000 + 2_500 + 20, sum));
        assert_intact(&reader(&path));
    }

    #[test]
    fn only_the_unix_vfs_is_stood_over_and_names_are_checked() {
        assert!(register("bad\0name").is_err());
    }
}
