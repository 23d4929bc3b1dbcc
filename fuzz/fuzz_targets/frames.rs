//! Frames and messages from a peer, a worker or a node: decoding must never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| volley_proto::fuzz::frames(data));
