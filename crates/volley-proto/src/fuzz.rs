//! Entry points for fuzzing the decoding of untrusted bytes (`fuzz/` runs them under
//! `cargo fuzz`; the tests below run them on random and hand-made inputs on stable Rust).
//!
//! Each one must return, whatever the bytes: an error is fine, a panic, an abort or an
//! allocation driven by a claimed length is a bug.

use std::io::{Cursor, Read, Write};

use crate::{
    authenticate_client, authenticate_server, decode, FrameReader, NodeToWorker, PeerMsg,
    WorkerToNode,
};

/// Reads frames from `data` as a peer or worker connection would, decoding each as every
/// message type that crosses a socket.
pub fn frames(data: &[u8]) {
    let mut r = FrameReader::new(Cursor::new(data));
    for _ in 0..64 {
        let Ok(frame) = r.next_frame() else { return };
        let _ = decode::<PeerMsg>(frame);
        let _ = decode::<WorkerToNode>(frame);
        let _ = decode::<NodeToWorker>(frame);
    }
}

/// A stream whose reads come from the fuzzer and whose writes vanish.
struct Replay<'a> {
    input: Cursor<&'a [u8]>,
}

impl Read for Replay<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Replay<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs both sides of the handshake against a peer that sends `data`; neither may accept it
/// (the peer cannot know the token's MACs).
pub fn handshake(data: &[u8]) {
    let token = b"fuzzing-token";
    let server = authenticate_server(&mut Replay { input: Cursor::new(data) }, token);
    assert!(server.is_err(), "the server accepted a peer without the token");
    let client = authenticate_client(&mut Replay { input: Cursor::new(data) }, token);
    assert!(client.is_err(), "the client accepted a server without the token");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{encode, write_frame, PROTOCOL_VERSION};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
            frames(&data);
            handshake(&data);
        }

        #[test]
        fn random_payloads_in_valid_frames_never_panic(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..512), 1..8)
        ) {
            let mut data = Vec::new();
            for p in &payloads {
                write_frame(&mut data, p).expect("write to a vec");
            }
            frames(&data);
            handshake(&data);
        }
    }

    #[test]
    fn real_messages_with_flipped_bytes_never_panic() {
        let msg =
            PeerMsg::Reserve { pg: "g".into(), bundles: vec![(0, vec![("CPU".into(), 1000)])] };
        let bytes = encode(&msg).expect("encode");
        for i in 0..bytes.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut b = bytes.clone();
                b[i] ^= flip;
                let mut data = Vec::new();
                write_frame(&mut data, &b).expect("write to a vec");
                frames(&data);
            }
        }
        // A well-formed challenge of our version, then garbage where the verdict should be.
        #[derive(serde::Serialize)]
        struct Challenge {
            version: u32,
            nonce: [u8; 32],
        }
        let mut data = Vec::new();
        let ch = encode(&Challenge { version: PROTOCOL_VERSION, nonce: [7; 32] }).expect("encode");
        write_frame(&mut data, &ch).expect("write");
        write_frame(&mut data, b"\x00\x03abc").expect("write");
        handshake(&data);
    }
}
