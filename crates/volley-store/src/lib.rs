//! volley's shared-memory object store.
//!
//! One node has one store: a memfd of `capacity` bytes (sparse: pages exist once written), mapped
//! once by every process of the node. Large values are written into *segments* of it and read in
//! place: a reader's numpy array is a view of the same pages, with no copy.
//!
//! A segment's life:
//! - `alloc` reserves it for a writer (the driver, or a worker through its node);
//! - `seal` turns it into a stored value and returns a [`Sealed`] guard; the node keeps that
//!   guard inside the value, so the segment is freed when the value's last reference goes;
//! - `lease` pins it for a reader until the matching `release` (a worker's leases are counted
//!   per process and dropped when the process dies); a freed segment with live leases waits for
//!   them, so memory mapped by a live view stays valid;
//! - when an allocation does not fit, the least recently used segments that nobody is reading
//!   are spilled to unlinked files in the spill directory and read back on their next lease.
//!
//! Nothing the store creates has a name: the memfd and the spill files (created unlinked) vanish
//! with the last process that has them open, even after a SIGKILL.

mod alloc;
mod splice;
pub mod sync;

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::BorrowedFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::sync::Mutex;
use memmap2::{MmapOptions, MmapRaw};
use volley_proto::{ObjectId, WorkerId};

pub use alloc::{round_up, Allocator, PAGE};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the object store is full: an object of {} does not fit in a store of {} ({} in use, {} \
         of it pinned by live views or unfinished writes; nothing more could be spilled to disk)",
        human(*requested), human(*capacity), human(*used), human(*pinned)
    )]
    Full { requested: u64, capacity: u64, used: u64, pinned: u64 },
    #[error(
        "an object of {} is larger than the whole object store ({}); start volley with a larger \
         object_store_memory",
        human(*requested), human(*capacity)
    )]
    TooLarge { requested: u64, capacity: u64 },
    #[error("spilling to {dir}: {source}")]
    Spill { dir: PathBuf, source: std::io::Error },
    #[error("segment {0} is not in the store")]
    Unknown(u64),
    #[error("segment {0} was not allocated by this process, or has another size")]
    NotYours(u64),
    #[error("object store: {0}")]
    Io(#[from] std::io::Error),
}

/// In a child just forked, in the forking thread: drops this thread's splice pipe, which the
/// parent's same thread goes on using (closing the child's copies leaves the parent's open).
pub fn after_fork_in_child() {
    splice::forget_thread_pipe();
}

/// Formats a byte count for people.
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// One process's view of the store's memory: the memfd mapped shared, read-write.
pub struct Arena {
    map: MmapRaw,
    capacity: u64,
    path: String,
    _file: File,
}

impl Arena {
    /// Creates the memory of a new store.
    fn create(capacity: u64) -> Result<Arena, StoreError> {
        use rustix::fs::{memfd_create, MemfdFlags, SealFlags};
        let fd = memfd_create("volley-store", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
            .map_err(std::io::Error::from)?;
        let file = File::from(fd);
        file.set_len(capacity)?;
        // Nobody may shrink it under another process's mapping (that would be a SIGBUS there).
        rustix::fs::fcntl_add_seals(&file, SealFlags::SHRINK | SealFlags::GROW)
            .map_err(std::io::Error::from)?;
        let path = {
            use std::os::fd::AsRawFd;
            format!("/proc/{}/fd/{}", std::process::id(), file.as_raw_fd())
        };
        Self::map(file, capacity, path)
    }

    /// Maps the store of another process of this node, named by `path` (see [`Arena::path`]).
    pub fn open(path: &str, capacity: u64) -> Result<Arena, StoreError> {
        let file = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
        let len = file.metadata()?.len();
        if len != capacity {
            return Err(StoreError::Io(std::io::Error::other(format!(
                "{path} has {len} bytes, expected {capacity}"
            ))));
        }
        Self::map(file, capacity, path.to_string())
    }

    fn map(file: File, capacity: u64, path: String) -> Result<Arena, StoreError> {
        let map = MmapOptions::new().len(capacity as usize).map_raw(&file)?;
        Ok(Arena { map, capacity, path, _file: file })
    }

    /// Where another process of this node opens the store.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The memfd's descriptor in the process that created it.
    pub fn raw_fd(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self._file.as_raw_fd()
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Address of byte `offset` of the store in this process, if `[offset, offset + len)` lies
    /// inside it.
    pub fn ptr(&self, offset: u64, len: u64) -> Option<*mut u8> {
        let end = offset.checked_add(len)?;
        if end > self.capacity {
            return None;
        }
        // SAFETY: `offset` is inside the mapping (checked above).
        Some(unsafe { self.map.as_mut_ptr().add(offset as usize) })
    }

    /// Backs `[offset, offset + len)` with memory now, in one call, rather than a page fault per
    /// page as it is written (much faster for a large value about to be filled). Best effort:
    /// kernels before 5.14 lack it and fault pages in as usual.
    pub fn populate(&self, offset: u64, len: u64) {
        const MADV_POPULATE_WRITE: libc::c_int = 23;
        let Some(p) = self.ptr(offset, len) else { return };
        let page = 4096usize;
        let start = (p as usize) / page * page;
        let end = p as usize + len as usize;
        // SAFETY: the range lies inside our mapping (rounded down to its page); populating only
        // allocates pages, it does not change their contents.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, MADV_POPULATE_WRITE) };
    }

    /// [`Arena::populate`] by several threads (one per core, up to 4) for a large range: the
    /// kernel zeroes fresh pages as it backs them, and it does so for each thread at once.
    pub fn populate_parallel(&self, offset: u64, len: u64) {
        const PIECE_MIN: u64 = 16 << 20;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(4) as u64;
        if threads < 2 || len < 2 * PIECE_MIN {
            return self.populate(offset, len);
        }
        let piece = (len / threads).div_ceil(4096) * 4096;
        std::thread::scope(|s| {
            let mut start = 0;
            while start < len {
                let n = piece.min(len - start);
                s.spawn(move || self.populate(offset + start, n));
                start += n;
            }
        });
    }

    /// Moves `len` bytes read from `src` (a socket) into the store at `offset`, through a pipe
    /// (`splice`), without passing them through this process's memory.
    ///
    /// Unlike a read into the mapping, this creates the pages of the store it reaches already
    /// filled: the kernel does not zero a fresh page that a write covers whole. On a fresh store
    /// that zeroing is most of the time a large transfer takes, more than the copy itself.
    pub fn fill_from(&self, src: BorrowedFd<'_>, offset: u64, len: u64) -> std::io::Result<()> {
        if offset.checked_add(len).is_none_or(|end| end > self.capacity) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{len} bytes at {offset} do not fit in a store of {}", self.capacity),
            ));
        }
        splice::fill(&self._file, src, offset, len)
    }
}

// SAFETY: the mapping is plain shared memory; access to its contents is coordinated by the store.
unsafe impl Send for Arena {}
// SAFETY: as above.
unsafe impl Sync for Arena {}

/// Who holds a claim on a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Owner {
    /// The process that hosts the node (the driver).
    Local,
    Worker(WorkerId),
}

#[derive(Debug)]
enum Place {
    Mem(u64),
    Disk(File),
}

#[derive(Debug)]
struct Entry {
    /// Bytes of the value; the memory taken is `round_up(size)`.
    size: u64,
    place: Place,
    /// Set while the segment is being written by its allocator.
    writer: Option<Owner>,
    leases: HashMap<Owner, u32>,
    /// No value refers to the segment any more; it goes once its leases do.
    freed: bool,
    last_used: u64,
    object: Option<ObjectId>,
}

impl Entry {
    fn evictable(&self) -> bool {
        matches!(self.place, Place::Mem(_))
            && self.writer.is_none()
            && self.leases.is_empty()
            && !self.freed
    }
}

/// Counters the store keeps; see [`Store::stats`].
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub capacity: u64,
    /// Bytes of store memory allocated (segments in memory, including pinned and freed-but-viewed
    /// ones).
    pub used: u64,
    /// Bytes that cannot be spilled now: being written, leased by a reader, or freed and still
    /// viewed.
    pub pinned: u64,
    /// Values in the store, in memory or on disk.
    pub objects: usize,
    pub objects_in_memory: usize,
    pub objects_spilled: usize,
    pub spilled_bytes: u64,
    pub spill_count: u64,
    pub spill_bytes_total: u64,
    pub restore_count: u64,
    pub restore_bytes_total: u64,
    pub spill_dir: PathBuf,
}

/// One stored value, for [`Store::objects`].
#[derive(Debug, Clone)]
pub struct ObjectInfo {
    pub seg: u64,
    pub object: Option<ObjectId>,
    pub size: u64,
    pub spilled: bool,
    pub leases: u32,
    pub writing: bool,
    pub freed: bool,
}

struct Inner {
    alloc: Allocator,
    entries: HashMap<u64, Entry>,
    next_seg: u64,
    clock: u64,
    stats: Stats,
}

/// The object store of a node. See the crate documentation.
pub struct Store {
    arena: Arc<Arena>,
    spill_dir: PathBuf,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({} at {})", human(self.arena.capacity), self.arena.path)
    }
}

/// Keeps a sealed segment alive; dropping the last clone frees it (see [`Store::seal`]).
pub struct Sealed {
    store: Arc<Store>,
    seg: u64,
}

impl Sealed {
    pub fn seg(&self) -> u64 {
        self.seg
    }
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }
}

impl Drop for Sealed {
    fn drop(&mut self) {
        self.store.free(self.seg);
    }
}

/// A reader's pin on a segment, released on drop (for readers in the node's own process).
pub struct Lease {
    store: Arc<Store>,
    seg: u64,
    offset: u64,
    size: u64,
}

impl Lease {
    pub fn ptr(&self) -> *const u8 {
        self.store.arena.ptr(self.offset, self.size).unwrap_or(std::ptr::null_mut())
    }
    pub fn len(&self) -> usize {
        self.size as usize
    }
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }
}

// SAFETY: the pointer is into the store's shared mapping, which the lease keeps alive.
unsafe impl Send for Lease {}
// SAFETY: as above; the segment is read-only while leased.
unsafe impl Sync for Lease {}

impl Drop for Lease {
    fn drop(&mut self) {
        self.store.release(self.seg, Owner::Local);
    }
}

impl Store {
    /// Creates a store of `capacity` bytes that spills into `spill_dir` (created if missing).
    pub fn create(capacity: u64, spill_dir: &Path) -> Result<Arc<Store>, StoreError> {
        let capacity = (capacity / PAGE * PAGE).max(PAGE);
        let arena = Arc::new(Arena::create(capacity)?);
        let stats = Stats { capacity, spill_dir: spill_dir.to_path_buf(), ..Default::default() };
        Ok(Arc::new(Store {
            arena,
            spill_dir: spill_dir.to_path_buf(),
            inner: Mutex::new(Inner {
                alloc: Allocator::new(capacity),
                entries: HashMap::new(),
                next_seg: 1,
                clock: 0,
                stats,
            }),
        }))
    }

    pub fn arena(&self) -> &Arc<Arena> {
        &self.arena
    }

    pub fn capacity(&self) -> u64 {
        self.arena.capacity
    }

    /// Reserves a segment of `size` bytes for `owner` to write, spilling other values if needed.
    /// Returns its handle and offset.
    pub fn alloc(&self, owner: Owner, size: u64) -> Result<(u64, u64), StoreError> {
        if size == 0 || size > self.arena.capacity {
            return Err(StoreError::TooLarge { requested: size, capacity: self.arena.capacity });
        }
        let mut inner = self.inner.lock();
        let offset = self.make_room(&mut inner, size, None)?;
        let seg = inner.next_seg;
        inner.next_seg += 1;
        inner.clock += 1;
        let last_used = inner.clock;
        inner.entries.insert(
            seg,
            Entry {
                size,
                place: Place::Mem(offset),
                writer: Some(owner),
                leases: HashMap::new(),
                freed: false,
                last_used,
                object: None,
            },
        );
        Ok((seg, offset))
    }

    /// Turns `owner`'s written segment into a stored value. The returned guard frees it when
    /// dropped (the node keeps it inside the value).
    pub fn seal(
        self: &Arc<Self>,
        owner: Owner,
        seg: u64,
        size: u64,
        object: Option<ObjectId>,
    ) -> Result<Arc<Sealed>, StoreError> {
        let mut inner = self.inner.lock();
        let e = inner.entries.get_mut(&seg).ok_or(StoreError::Unknown(seg))?;
        if e.writer != Some(owner) || e.size != size {
            return Err(StoreError::NotYours(seg));
        }
        e.writer = None;
        e.object = object;
        Ok(Arc::new(Sealed { store: self.clone(), seg }))
    }

    /// Pins a sealed segment for `owner` to read (reading it back from disk if it was spilled)
    /// and returns its current offset.
    pub fn lease(&self, seg: u64, owner: Owner) -> Result<u64, StoreError> {
        self.lease_sized(seg, owner).map(|(offset, _)| offset)
    }

    /// [`Store::lease`], also returning the segment's size.
    fn lease_sized(&self, seg: u64, owner: Owner) -> Result<(u64, u64), StoreError> {
        let mut inner = self.inner.lock();
        let e = inner.entries.get(&seg).ok_or(StoreError::Unknown(seg))?;
        let size = e.size;
        let offset = match e.place {
            Place::Mem(off) => off,
            Place::Disk(_) => self.restore(&mut inner, seg, size)?,
        };
        inner.clock += 1;
        let now = inner.clock;
        if let Some(e) = inner.entries.get_mut(&seg) {
            *e.leases.entry(owner).or_insert(0) += 1;
            e.last_used = now;
        }
        Ok((offset, size))
    }

    /// A lease for a reader in this process.
    pub fn lease_local(self: &Arc<Self>, seg: u64) -> Result<Lease, StoreError> {
        let (offset, size) = self.lease_sized(seg, Owner::Local)?;
        Ok(Lease { store: self.clone(), seg, offset, size })
    }

    /// Copies a sealed value's bytes out, wherever they are (the fallback when it cannot be
    /// brought back into memory).
    pub fn read_copy(&self, seg: u64) -> Result<Vec<u8>, StoreError> {
        let inner = self.inner.lock();
        let e = inner.entries.get(&seg).ok_or(StoreError::Unknown(seg))?;
        let mut out = vec![0u8; e.size as usize];
        match &e.place {
            Place::Mem(off) => {
                let p = self.arena.ptr(*off, e.size).ok_or(StoreError::Unknown(seg))?;
                // SAFETY: the range is inside the mapping and sealed (no writer).
                unsafe { std::ptr::copy_nonoverlapping(p, out.as_mut_ptr(), out.len()) };
            }
            Place::Disk(f) => f.read_exact_at(&mut out, 0)?,
        }
        Ok(out)
    }

    /// Drops `owner`'s lease on `seg`, or gives up a segment `owner` allocated and never sealed.
    pub fn release(&self, seg: u64, owner: Owner) {
        let mut inner = self.inner.lock();
        let Some(e) = inner.entries.get_mut(&seg) else { return };
        if e.writer == Some(owner) {
            e.writer = None;
            e.freed = true;
        } else if let Some(n) = e.leases.get_mut(&owner) {
            *n -= 1;
            if *n == 0 {
                e.leases.remove(&owner);
            }
        }
        Self::collect(&mut inner, seg);
    }

    /// Called when the last value referring to `seg` is gone.
    fn free(&self, seg: u64) {
        let mut inner = self.inner.lock();
        if let Some(e) = inner.entries.get_mut(&seg) {
            e.freed = true;
        }
        Self::collect(&mut inner, seg);
    }

    /// Drops everything a process held: its leases and its unfinished writes.
    pub fn owner_gone(&self, owner: Owner) {
        let mut inner = self.inner.lock();
        let mut touched = Vec::new();
        for (seg, e) in inner.entries.iter_mut() {
            let mut hit = e.leases.remove(&owner).is_some();
            if e.writer == Some(owner) {
                e.writer = None;
                e.freed = true;
                hit = true;
            }
            if hit {
                touched.push(*seg);
            }
        }
        for seg in touched {
            Self::collect(&mut inner, seg);
        }
    }

    /// Removes `seg` if it is freed and nobody reads or writes it.
    fn collect(inner: &mut Inner, seg: u64) {
        let gone = inner
            .entries
            .get(&seg)
            .is_some_and(|e| e.freed && e.leases.is_empty() && e.writer.is_none());
        if !gone {
            return;
        }
        if let Some(e) = inner.entries.remove(&seg) {
            match e.place {
                Place::Mem(off) => inner.alloc.free(off, round_up(e.size)),
                Place::Disk(_file) => {} // Closing the unlinked file frees its blocks.
            }
        }
    }

    /// Finds room for `size` bytes, spilling the least recently used unpinned values.
    fn make_room(
        &self,
        inner: &mut Inner,
        size: u64,
        restoring: Option<u64>,
    ) -> Result<u64, StoreError> {
        let len = round_up(size);
        if len > inner.alloc.capacity() {
            return Err(StoreError::TooLarge { requested: size, capacity: inner.alloc.capacity() });
        }
        loop {
            if let Some(off) = inner.alloc.alloc(len) {
                return Ok(off);
            }
            let victim = inner
                .entries
                .iter()
                .filter(|(seg, e)| e.evictable() && Some(**seg) != restoring)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(seg, _)| *seg);
            let Some(victim) = victim else {
                let capacity = inner.alloc.capacity();
                let used = capacity - inner.alloc.free_bytes();
                let pinned = inner
                    .entries
                    .values()
                    .filter(|e| matches!(e.place, Place::Mem(_)) && !e.evictable())
                    .map(|e| round_up(e.size))
                    .sum();
                return Err(StoreError::Full { requested: size, capacity, used, pinned });
            };
            self.spill(inner, victim)?;
        }
    }

    fn spill(&self, inner: &mut Inner, seg: u64) -> Result<(), StoreError> {
        let Some(e) = inner.entries.get(&seg) else { return Ok(()) };
        let Place::Mem(off) = e.place else { return Ok(()) };
        let size = e.size;
        let spill_err = |source| StoreError::Spill { dir: self.spill_dir.clone(), source };
        let file = unnamed_file(&self.spill_dir).map_err(spill_err)?;
        let p = self.arena.ptr(off, size).ok_or(StoreError::Unknown(seg))?;
        // SAFETY: a sealed, unleased segment inside the mapping; nobody writes it.
        let bytes = unsafe { std::slice::from_raw_parts(p, size as usize) };
        file.write_all_at(bytes, 0).map_err(spill_err)?;
        inner.alloc.free(off, round_up(size));
        if let Some(e) = inner.entries.get_mut(&seg) {
            e.place = Place::Disk(file);
        }
        inner.stats.spill_count += 1;
        inner.stats.spill_bytes_total += size;
        Ok(())
    }

    fn restore(&self, inner: &mut Inner, seg: u64, size: u64) -> Result<u64, StoreError> {
        let off = self.make_room(inner, size, Some(seg))?;
        let Some(e) = inner.entries.get_mut(&seg) else {
            inner.alloc.free(off, round_up(size));
            return Err(StoreError::Unknown(seg));
        };
        let p = self.arena.ptr(off, size).ok_or(StoreError::Unknown(seg))?;
        // SAFETY: freshly allocated range inside the mapping; nobody else uses it yet.
        let dst = unsafe { std::slice::from_raw_parts_mut(p, size as usize) };
        let read = match &e.place {
            Place::Disk(f) => f.read_exact_at(dst, 0),
            Place::Mem(_) => Ok(()),
        };
        if let Err(err) = read {
            inner.alloc.free(off, round_up(size));
            return Err(StoreError::Spill { dir: self.spill_dir.clone(), source: err });
        }
        e.place = Place::Mem(off);
        inner.stats.restore_count += 1;
        inner.stats.restore_bytes_total += size;
        Ok(off)
    }

    /// Bytes of store memory allocated now (`Stats::used`, without the rest of the count).
    pub fn used(&self) -> u64 {
        let inner = self.inner.lock();
        inner.alloc.capacity() - inner.alloc.free_bytes()
    }

    pub fn stats(&self) -> Stats {
        let inner = self.inner.lock();
        let mut s = inner.stats.clone();
        s.used = inner.alloc.capacity() - inner.alloc.free_bytes();
        for e in inner.entries.values() {
            match e.place {
                Place::Mem(_) => {
                    if !e.evictable() {
                        s.pinned += round_up(e.size);
                    }
                    if !e.freed && e.writer.is_none() {
                        s.objects_in_memory += 1;
                    }
                }
                Place::Disk(_) => {
                    s.objects_spilled += 1;
                    s.spilled_bytes += e.size;
                }
            }
        }
        s.objects = s.objects_in_memory + s.objects_spilled;
        s
    }

    pub fn objects(&self) -> Vec<ObjectInfo> {
        let inner = self.inner.lock();
        let mut v: Vec<ObjectInfo> = inner
            .entries
            .iter()
            .map(|(seg, e)| ObjectInfo {
                seg: *seg,
                object: e.object,
                size: e.size,
                spilled: matches!(e.place, Place::Disk(_)),
                leases: e.leases.values().sum(),
                writing: e.writer.is_some(),
                freed: e.freed,
            })
            .collect();
        v.sort_by_key(|o| o.seg);
        v
    }
}

/// A file in `dir` with no name: it disappears when closed, or when the process dies.
fn unnamed_file(dir: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir)?;
    let tmp = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc_o_tmpfile())
        .mode(0o600)
        .open(dir);
    match tmp {
        Ok(f) => Ok(f),
        // Some filesystems have no O_TMPFILE: create a name and remove it at once.
        Err(_) => {
            static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = dir.join(format!(".volley-spill-{}-{n}", std::process::id()));
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            std::fs::remove_file(&path)?;
            Ok(f)
        }
    }
}

fn libc_o_tmpfile() -> i32 {
    rustix::fs::OFlags::TMPFILE.bits() as i32
}

#[cfg(test)]
mod tests;
