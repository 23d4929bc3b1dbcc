use super::*;

const MB: u64 = 1 << 20;

fn store(cap: u64) -> (Arc<Store>, tempdir::Dir) {
    let dir = tempdir::Dir::new();
    (Store::create(cap, dir.path()).expect("store"), dir)
}

/// A throwaway directory (no external crate needed).
mod tempdir {
    pub struct Dir(std::path::PathBuf);
    impl Dir {
        pub fn new() -> Dir {
            use std::sync::atomic::{AtomicU64, Ordering};
            static N: AtomicU64 = AtomicU64::new(0);
            let p = std::env::temp_dir().join(format!(
                "volley-store-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&p).expect("mkdir");
            Dir(p)
        }
        pub fn path(&self) -> &std::path::Path {
            &self.0
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn write(s: &Store, off: u64, bytes: &[u8]) {
    let p = s.arena().ptr(off, bytes.len() as u64).expect("in range");
    // SAFETY: test writes its own fresh segment.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len()) };
}

fn put(s: &Arc<Store>, fill: u8, size: u64) -> Arc<Sealed> {
    let (seg, off) = s.alloc(Owner::Local, size).expect("alloc");
    write(s, off, &vec![fill; size as usize]);
    s.seal(Owner::Local, seg, size, None).expect("seal")
}

#[test]
fn freed_when_the_last_holder_goes() {
    let (s, _d) = store(8 * MB);
    let a = put(&s, 1, MB);
    assert_eq!(s.stats().used, MB);
    drop(a);
    assert_eq!(s.stats().used, 0);
    assert_eq!(s.stats().objects, 0);
}

#[test]
fn leased_segments_outlive_their_value() {
    let (s, _d) = store(8 * MB);
    let a = put(&s, 7, MB);
    let lease = s.lease_local(a.seg()).expect("lease");
    drop(a);
    // Still allocated: a view reads it.
    assert_eq!(s.stats().used, MB);
    // SAFETY: the lease keeps the range valid.
    let first = unsafe { *lease.ptr() };
    assert_eq!(first, 7);
    drop(lease);
    assert_eq!(s.stats().used, 0);
}

#[test]
fn spills_least_recently_used_and_restores_on_lease() {
    let (s, d) = store(4 * MB);
    let a = put(&s, 1, 2 * MB);
    let b = put(&s, 2, 2 * MB);
    // Touch `a` so `b` is the least recently used.
    s.release(a.seg(), Owner::Local);
    s.lease(a.seg(), Owner::Local).expect("lease a");
    s.release(a.seg(), Owner::Local);
    let c = put(&s, 3, 2 * MB);
    let st = s.stats();
    assert_eq!(st.objects_spilled, 1);
    assert_eq!(st.spill_count, 1);
    // The spill file has no name.
    assert_eq!(std::fs::read_dir(d.path()).expect("ls").count(), 0);
    // Reading `b` brings it back (spilling another) with its bytes intact.
    let lb = s.lease_local(b.seg()).expect("restore b");
    // SAFETY: the lease keeps the range valid.
    let bytes = unsafe { std::slice::from_raw_parts(lb.ptr(), lb.len()) };
    assert!(bytes.iter().all(|&x| x == 2));
    assert_eq!(s.stats().restore_count, 1);
    drop(lb);
    drop((a, b, c));
    let st = s.stats();
    assert_eq!((st.used, st.objects, st.spilled_bytes), (0, 0, 0));
}

#[test]
fn full_when_everything_is_pinned() {
    let (s, _d) = store(4 * MB);
    let a = put(&s, 1, 3 * MB);
    let _l = s.lease_local(a.seg()).expect("lease");
    let err = s.alloc(Owner::Local, 2 * MB).expect_err("must not fit");
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Full { .. }), "{msg}");
    assert!(msg.contains("2.0 MiB") && msg.contains("4.0 MiB"), "{msg}");
    let err = s.alloc(Owner::Local, 5 * MB).expect_err("too large");
    assert!(matches!(err, StoreError::TooLarge { .. }));
    // Sizes from a confused or hostile peer are refused, not wrapped around.
    assert!(s.alloc(Owner::Local, u64::MAX - 100).is_err());
    assert!(s.alloc(Owner::Local, 0).is_err());
    assert_eq!(round_up(u64::MAX), u64::MAX); // saturates
}

#[test]
fn a_dead_writer_and_its_leases_leave_nothing() {
    let (s, _d) = store(8 * MB);
    let w = Owner::Worker(WorkerId(3));
    let (_seg, _) = s.alloc(w, MB).expect("alloc");
    let a = put(&s, 1, MB);
    s.lease(a.seg(), w).expect("lease");
    s.lease(a.seg(), w).expect("lease twice");
    drop(a);
    assert_eq!(s.stats().used, 2 * MB);
    s.owner_gone(w);
    assert_eq!(s.stats().used, 0);
    assert!(s.objects().is_empty());
}

#[test]
fn seal_checks_the_writer() {
    let (s, _d) = store(8 * MB);
    let (seg, _) = s.alloc(Owner::Worker(WorkerId(1)), MB).expect("alloc");
    assert!(s.seal(Owner::Worker(WorkerId(2)), seg, MB, None).is_err());
    assert!(s.seal(Owner::Worker(WorkerId(1)), seg, MB + 1, None).is_err());
    assert!(s.seal(Owner::Worker(WorkerId(1)), 999, MB, None).is_err());
    let sealed = s.seal(Owner::Worker(WorkerId(1)), seg, MB, None).expect("seal");
    drop(sealed);
    assert_eq!(s.stats().used, 0);
}

#[test]
fn another_mapping_sees_the_same_bytes() {
    let (s, _d) = store(2 * MB);
    let a = put(&s, 9, 1000);
    let other = Arena::open(s.arena().path(), s.capacity()).expect("open by path");
    let off = s.lease(a.seg(), Owner::Local).expect("lease");
    let p = other.ptr(off, 1000).expect("range");
    // SAFETY: leased segment inside the second mapping.
    assert_eq!(unsafe { *p.add(999) }, 9);
    assert!(other.ptr(s.capacity(), 1).is_none());
}

/// Reads `len` bytes of the store at `off` through the mapping.
fn read(s: &Store, off: u64, len: usize) -> Vec<u8> {
    let p = s.arena().ptr(off, len as u64).expect("in range");
    // SAFETY: the range is inside the mapping; nobody writes it meanwhile.
    unsafe { std::slice::from_raw_parts(p, len) }.to_vec()
}

/// A loopback TCP connection whose far end sends `bytes` and then closes.
fn sender(bytes: Vec<u8>) -> std::net::TcpStream {
    use std::io::Write;
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut c = std::net::TcpStream::connect(addr).expect("connect");
        c.write_all(&bytes).expect("send");
    });
    l.accept().expect("accept").0
}

#[test]
fn fill_from_a_socket_lands_in_the_mapping_and_nowhere_else() {
    use std::os::fd::AsFd;
    let (s, _d) = store(16 * MB);
    // Not page-aligned, several pipe-fulls, a partial page at each end.
    let (off, len) = (3 * 4096 + 100, 5 * MB + 7);
    let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    write(&s, off - 10, &[0xAA; 10]);
    write(&s, off + len, &[0xBB; 10]);
    let sock = sender(data.clone());
    s.arena().fill_from(sock.as_fd(), off, len).expect("fill");
    assert!(read(&s, off, len as usize) == data, "the bytes in the store differ from those sent");
    assert_eq!(read(&s, off - 10, 10), vec![0xAA; 10]);
    assert_eq!(read(&s, off + len, 10), vec![0xBB; 10]);
}

#[test]
fn fill_from_a_socket_that_closes_early_fails_and_the_next_fill_works() {
    use std::os::fd::AsFd;
    let (s, _d) = store(16 * MB);
    let short = sender(vec![1u8; 3 * MB as usize]);
    let e = s.arena().fill_from(short.as_fd(), 0, 4 * MB).expect_err("closed early");
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
    // The same thread's pipe may have held bytes of the failed fill: none may leak into this one.
    let data: Vec<u8> = (0..2 * MB).map(|i| (i % 13) as u8).collect();
    let sock = sender(data.clone());
    s.arena().fill_from(sock.as_fd(), 8 * MB, 2 * MB).expect("fill");
    assert!(read(&s, 8 * MB, 2 * MB as usize) == data);
}

#[test]
fn fill_from_refuses_a_range_outside_the_store() {
    use std::os::fd::AsFd;
    let (s, _d) = store(4 * MB);
    let sock = sender(vec![0u8; 16]);
    let e = s.arena().fill_from(sock.as_fd(), 4 * MB - 8, 16).expect_err("outside");
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    let e = s.arena().fill_from(sock.as_fd(), u64::MAX - 4, 16).expect_err("overflow");
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
}

#[test]
fn fill_from_a_socket_of_a_pipe_full_and_a_bit() {
    use std::os::fd::AsFd;
    let (s, _d) = store(4 * MB);
    // A whole pipe-full (1 MiB), then a piece that ends one byte into a page.
    let len = 3 * MB / 2 + 1;
    let data: Vec<u8> = (0..len).map(|i| (i % 241) as u8).collect();
    let sock = sender(data.clone());
    s.arena().fill_from(sock.as_fd(), 4096, len).expect("fill");
    assert!(read(&s, 4096, len as usize) == data);
}
