//! The authentication handshake against a peer sending arbitrary bytes: it must fail cleanly.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| volley_proto::fuzz::handshake(data));
