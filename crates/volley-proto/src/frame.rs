//! Length-prefixed framing over any blocking byte stream.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes. The reader refuses frames
//! larger than [`MAX_FRAME_SIZE`] before allocating, so a hostile or broken peer cannot make us
//! allocate gigabytes by sending a large length.

use std::io::{self, Read, Write};

use crate::ProtoError;

/// The largest frame accepted. Objects above the store threshold travel through shared memory,
/// so inline frames stay far below this.
pub const MAX_FRAME_SIZE: usize = 1 << 30;

/// The largest handshake frame accepted: a hello is a few dozen bytes.
pub const MAX_HANDSHAKE_FRAME: usize = 4096;

/// Writes one frame. Header and payload go out in a single `write_all` of a contiguous buffer
/// when the payload is small, so a frame costs one system call.
pub fn write_frame(w: &mut impl Write, payload: &[u8]) -> Result<(), ProtoError> {
    if payload.len() > MAX_FRAME_SIZE {
        return Err(ProtoError::FrameTooLarge { size: payload.len(), max: MAX_FRAME_SIZE });
    }
    let len = (payload.len() as u32).to_be_bytes();
    if payload.len() <= 64 * 1024 {
        let mut buf = Vec::with_capacity(4 + payload.len());
        buf.extend_from_slice(&len);
        buf.extend_from_slice(payload);
        w.write_all(&buf)?;
    } else {
        w.write_all(&len)?;
        w.write_all(payload)?;
    }
    Ok(())
}

/// Fills `buf` from `r`, `buf[..got]` being there already. `Err(Closed)` if the stream ends
/// before any byte (`got` 0), an `UnexpectedEof` naming `what` if it ends in the middle.
fn fill(r: &mut impl Read, buf: &mut [u8], mut got: usize, what: &str) -> Result<(), ProtoError> {
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Err(ProtoError::Closed),
            Ok(0) => return Err(mid_stream(what)),
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn mid_stream(what: &str) -> ProtoError {
    ProtoError::Io(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("connection closed in the middle of a {what}"),
    ))
}

/// Reads exactly one frame of at most `max` bytes, and not a byte more (so it is safe for a
/// handshake, before a buffered [`FrameReader`] takes over the stream). `Err(Closed)` on a clean
/// end of stream.
pub fn read_frame(r: &mut impl Read, max: usize) -> Result<Vec<u8>, ProtoError> {
    let mut len = [0u8; 4];
    fill(r, &mut len, 0, "frame")?;
    let len = u32::from_be_bytes(len) as usize;
    let max = max.min(MAX_FRAME_SIZE);
    if len > max {
        return Err(ProtoError::FrameTooLarge { size: len, max });
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)?;
    Ok(buf)
}

/// A buffered frame reader: one `read` system call usually brings in several small frames, which
/// are then handed out without further calls. This is what makes pipelined tasks cheap.
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl<R: Read> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        FrameReader { inner, buf: vec![0; 64 * 1024], start: 0, end: 0 }
    }

    /// Whether a whole frame is already buffered, so [`FrameReader::next_frame`] returns without
    /// reading (lets a reader handle all the frames one read brought in as a batch).
    pub fn has_buffered_frame(&self) -> bool {
        let avail = self.end - self.start;
        if avail < 4 {
            return false;
        }
        let mut len_bytes = [0u8; 4];
        len_bytes.copy_from_slice(&self.buf[self.start..self.start + 4]);
        avail - 4 >= u32::from_be_bytes(len_bytes) as usize
    }

    /// Returns the next frame's payload, borrowed from the internal buffer until the next call.
    pub fn next_frame(&mut self) -> Result<&[u8], ProtoError> {
        self.fill_at_least(4, true)?;
        let mut len_bytes = [0u8; 4];
        len_bytes.copy_from_slice(&self.buf[self.start..self.start + 4]);
        let len = u32::from_be_bytes(len_bytes) as usize;
        if len > MAX_FRAME_SIZE {
            return Err(ProtoError::FrameTooLarge { size: len, max: MAX_FRAME_SIZE });
        }
        self.fill_at_least(4 + len, false)?;
        let begin = self.start + 4;
        self.start = begin + len;
        Ok(&self.buf[begin..begin + len])
    }

    fn fill_at_least(&mut self, n: usize, at_boundary: bool) -> Result<(), ProtoError> {
        if self.end - self.start >= n {
            return Ok(());
        }
        // Compact, then grow if the frame does not fit.
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        while self.end < n {
            if self.end == self.buf.len() {
                // Grow only as bytes arrive (doubling, never past what the frame needs): a peer
                // that announces a huge frame and sends nothing costs us nothing.
                let grown = (self.buf.len() * 2).min(n.next_power_of_two()).max(self.end + 1);
                self.buf.resize(grown, 0);
            }
            match self.inner.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    return Err(if at_boundary && self.end == 0 {
                        ProtoError::Closed
                    } else {
                        mid_stream("frame")
                    });
                }
                Ok(k) => self.end += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
        // Give back memory after an unusually large frame (keeping what is buffered: a read may
        // have brought in much of the next frame already).
        if self.buf.len() > (1 << 24) && n <= (1 << 16) && self.end <= (1 << 16) {
            self.buf.truncate(1 << 16);
            self.buf.shrink_to_fit();
        }
        Ok(())
    }

    /// Copies into `dst` as many of the raw bytes that follow the last frame as are already
    /// buffered, at most `dst.len()`; returns how many. The rest are still on the reader (for a
    /// caller that moves them by other means, such as `splice`).
    pub fn take_buffered(&mut self, dst: &mut [u8]) -> usize {
        let buffered = (self.end - self.start).min(dst.len());
        dst[..buffered].copy_from_slice(&self.buf[self.start..self.start + buffered]);
        self.start += buffered;
        buffered
    }

    /// Reads exactly `dst.len()` raw bytes that follow the last frame (bytes already buffered
    /// first, then straight from the reader into `dst`, without going through the buffer).
    pub fn read_raw(&mut self, dst: &mut [u8]) -> Result<(), ProtoError> {
        let got = self.take_buffered(dst);
        if got == dst.len() {
            return Ok(());
        }
        // A value follows its frame: an end of stream before it is never a clean one.
        fill(&mut self.inner, dst, got, "value").map_err(|e| match e {
            ProtoError::Closed => mid_stream("value"),
            e => e,
        })
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Hands out the bytes in reads that end where `cuts` say.
    struct Chunked {
        data: Vec<u8>,
        pos: usize,
        cuts: Vec<usize>,
    }

    impl Read for Chunked {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let limit =
                self.cuts.iter().copied().find(|c| *c > self.pos).unwrap_or(self.data.len());
            let n = buf.len().min(limit - self.pos);
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    #[test]
    fn a_small_frame_after_a_large_one_keeps_the_bytes_read_past_it() {
        // A 20 MiB frame grows the buffer; the small frame after it arrives in one read with 1 MiB
        // of the next frame, which must survive the buffer shrinking back.
        let sizes = [20 << 20, 10, 3 << 20, 7];
        let mut wire = Vec::new();
        for (i, n) in sizes.iter().enumerate() {
            write_frame(&mut wire, &vec![i as u8; *n]).expect("write");
        }
        let first = 4 + sizes[0];
        let mut r =
            FrameReader::new(Chunked { data: wire, pos: 0, cuts: vec![first, first + (1 << 20)] });
        for (i, n) in sizes.iter().enumerate() {
            let f = r.next_frame().expect("frame");
            assert_eq!(f.len(), *n);
            assert!(f.iter().all(|b| *b == i as u8));
        }
    }

    #[test]
    fn roundtrip_several_frames() {
        let mut wire = Vec::new();
        for p in [&b"a"[..], b"", b"hello world"] {
            write_frame(&mut wire, p).expect("write");
        }
        let mut r = FrameReader::new(&wire[..]);
        assert_eq!(r.next_frame().expect("1"), b"a");
        assert_eq!(r.next_frame().expect("2"), b"");
        assert_eq!(r.next_frame().expect("3"), b"hello world");
        assert!(matches!(r.next_frame(), Err(ProtoError::Closed)));
    }

    #[test]
    fn read_frame_leaves_the_next_frame_in_the_stream() {
        let mut wire = Vec::new();
        write_frame(&mut wire, b"hello").expect("write");
        write_frame(&mut wire, b"next").expect("write");
        let mut cursor = std::io::Cursor::new(wire);
        assert_eq!(read_frame(&mut cursor, 64).expect("1"), b"hello");
        let mut big = Vec::new();
        write_frame(&mut big, &[0; 100]).expect("write");
        let err = read_frame(&mut &big[..], 64);
        assert!(matches!(err, Err(ProtoError::FrameTooLarge { size: 100, max: 64 })));
        let mut r = FrameReader::new(cursor);
        assert_eq!(r.next_frame().expect("2"), b"next");
    }

    #[test]
    fn an_announced_large_frame_allocates_only_what_arrives() {
        let mut wire = (512u32 << 20).to_be_bytes().to_vec();
        wire.extend_from_slice(&[7; 100]);
        let mut r = FrameReader::new(&wire[..]);
        assert!(matches!(r.next_frame(), Err(ProtoError::Io(_))));
        assert!(r.buf.len() <= 128 * 1024, "buffer grew to {} bytes", r.buf.len());
    }

    #[test]
    fn oversized_length_is_refused_without_allocating() {
        let wire = u32::MAX.to_be_bytes();
        let mut r = FrameReader::new(&wire[..]);
        assert!(matches!(r.next_frame(), Err(ProtoError::FrameTooLarge { .. })));
    }

    #[test]
    fn truncated_frame_is_an_error_not_a_clean_close() {
        let mut wire = Vec::new();
        write_frame(&mut wire, b"0123456789").expect("write");
        wire.truncate(8);
        let mut r = FrameReader::new(&wire[..]);
        assert!(matches!(r.next_frame(), Err(ProtoError::Io(_))));
    }

    #[test]
    fn a_stream_ending_before_or_inside_raw_bytes_is_an_error_not_a_clean_close() {
        let eof = |r: Result<(), ProtoError>| matches!(r, Err(ProtoError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof);
        for cut in [0, 2] {
            let mut wire = Vec::new();
            write_frame(&mut wire, b"hdr").expect("write");
            wire.extend_from_slice(&b"raw bytes"[..cut]);
            let mut r = FrameReader::new(&wire[..]);
            assert_eq!(r.next_frame().expect("the frame"), b"hdr");
            assert!(eof(r.read_raw(&mut [0u8; 9])), "cut after {cut} raw bytes");
        }
        let mut wire = Vec::new();
        write_frame(&mut wire, b"hdr").expect("write");
        wire.extend_from_slice(b"raw bytes");
        let mut r = FrameReader::new(&wire[..]);
        r.next_frame().expect("the frame");
        let mut raw = [0u8; 9];
        r.read_raw(&mut raw).expect("the raw bytes");
        assert_eq!(&raw, b"raw bytes");
        // A length cut short, for the unbuffered reader too.
        assert!(matches!(read_frame(&mut &[0u8, 0][..], 100), Err(ProtoError::Io(_))));
        assert!(matches!(read_frame(&mut &[][..], 100), Err(ProtoError::Closed)));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn arbitrary_frames_roundtrip(frames in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..4096), 0..6)) {
            let mut wire = Vec::new();
            for f in &frames { write_frame(&mut wire, f).expect("write"); }
            let mut r = FrameReader::new(&wire[..]);
            for f in &frames { prop_assert_eq!(r.next_frame().expect("read"), &f[..]); }
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut r = FrameReader::new(&bytes[..]);
            while let Ok(frame) = r.next_frame() {
                let _ = crate::decode::<crate::WorkerToNode>(frame);
            }
        }
    }
}
