//! The frames of `python/volley/serve/_wire.py` (the contract: keep the two in step), and the
//! two small pickles the ingress needs: the call's arguments `((frame,), {})`, written by hand,
//! and the replica's answer, a top-level `bytes` value, read by hand.

/// A request as the replica's `__volley_serve_http__` gets it.
pub struct RequestFrame<'a> {
    pub request_id: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub route_prefix: &'a str,
    pub query: &'a str,
    pub client: &'a str,
    pub headers: Vec<(&'a [u8], &'a [u8])>,
    pub body: &'a [u8],
}

fn put(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

impl RequestFrame<'_> {
    pub fn encode(&self) -> Vec<u8> {
        let heads: usize = self.headers.iter().map(|(n, v)| 8 + n.len() + v.len()).sum();
        let mut out = Vec::with_capacity(64 + heads + self.body.len() + self.path.len());
        out.extend_from_slice(b"VSQ1");
        for s in
            [self.request_id, self.method, self.path, self.route_prefix, self.query, self.client]
        {
            put(&mut out, s.as_bytes());
        }
        out.extend_from_slice(&(self.headers.len() as u32).to_le_bytes());
        for (n, v) in &self.headers {
            put(&mut out, n);
            put(&mut out, v);
        }
        out.extend_from_slice(&(self.body.len() as u64).to_le_bytes());
        out.extend_from_slice(self.body);
        out
    }
}

/// A replica's answer.
#[derive(Debug, PartialEq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub body: Vec<u8>,
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.b.len()).ok_or_else(|| {
            format!("frame cut short: {n} bytes wanted at {} of {}", self.at, self.b.len())
        })?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u16(&mut self) -> Result<u16, String> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }

    fn u32(&mut self) -> Result<u32, String> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }

    fn blob(&mut self) -> Result<&'a [u8], String> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

/// The fields a response frame and a stream head share, after their 4-byte tag: status,
/// headers, body.
fn response_fields(r: &mut Reader<'_>) -> Result<Response, String> {
    let status = r.u16()?;
    if !(100..=999).contains(&status) {
        return Err(format!("status {status} is not an HTTP status"));
    }
    let n = r.u32()? as usize;
    let mut headers = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let name = r.blob()?.to_vec();
        let value = r.blob()?.to_vec();
        headers.push((name, value));
    }
    let len = usize::try_from(r.u64()?).map_err(|_| "body length too large".to_string())?;
    let body = r.take(len)?.to_vec();
    Ok(Response { status, headers, body })
}

/// Reads a response frame (`b"VSR1"`, status, headers, body).
pub fn decode_response(b: &[u8]) -> Result<Response, String> {
    if b.get(..4) != Some(b"VSR1") {
        let start = &b[..b.len().min(4)];
        return Err(format!("not a serve response frame: it starts {start:?}"));
    }
    let mut r = Reader { b, at: 4 };
    let resp = response_fields(&mut r)?;
    if r.at != b.len() {
        return Err(format!("{} bytes after the frame's end", b.len() - r.at));
    }
    Ok(resp)
}

/// A replica's answer that opens a stream (`b"VSS1"`): the same fields as a response frame
/// (status, headers, and the stream's first chunk as the body), then the stream's key (a
/// `u32`-prefixed blob), which the ingress passes to the replica's `__volley_serve_stream__`
/// (the rest of the chunks) or `__volley_serve_cancel__` (the client left).
pub const STREAM_HEAD: &[u8; 4] = b"VSS1";

/// A replica's answer that accepts a WebSocket (`b"VSW1"`): a stream head's fields (status
/// 101, the headers to add to the upgrade's answer, no first message) and the socket's key,
/// which the ingress passes to `__volley_serve_ws_out__` and `__volley_serve_ws_in__`.
pub const SOCKET_HEAD: &[u8; 4] = b"VSW1";

/// Reads a stream head frame: the response (its body the first chunk) and the stream's key.
pub fn decode_stream_head(b: &[u8]) -> Result<(Response, Vec<u8>), String> {
    decode_head(b, STREAM_HEAD, "stream head")
}

/// Reads a WebSocket head: the response (its headers) and the socket's key.
pub fn decode_socket_head(b: &[u8]) -> Result<(Response, Vec<u8>), String> {
    decode_head(b, SOCKET_HEAD, "WebSocket head")
}

fn decode_head(b: &[u8], magic: &[u8; 4], what: &str) -> Result<(Response, Vec<u8>), String> {
    if b.get(..4) != Some(&magic[..]) {
        let start = &b[..b.len().min(4)];
        return Err(format!("not a serve {what}: it starts {start:?}"));
    }
    let mut r = Reader { b, at: 4 };
    let resp = response_fields(&mut r)?;
    let key = r.blob()?.to_vec();
    if key.is_empty() {
        return Err(format!("the {what} names no key"));
    }
    if r.at != b.len() {
        return Err(format!("{} bytes after the frame's end", b.len() - r.at));
    }
    Ok((resp, key))
}

/// The pickle (protocol 5) of `((frame,), {})`: what a worker unpickles as a call's arguments.
pub fn call_args(frame: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(frame.len() + 24);
    out.extend_from_slice(&[0x80, 5]); // PROTO 5
    if let Ok(n) = u32::try_from(frame.len()) {
        out.push(b'B'); // BINBYTES
        out.extend_from_slice(&n.to_le_bytes());
    } else {
        out.push(0x8e); // BINBYTES8
        out.extend_from_slice(&(frame.len() as u64).to_le_bytes());
    }
    out.extend_from_slice(frame);
    out.extend_from_slice(&[0x85, b'}', 0x86, b'.']); // TUPLE1, EMPTY_DICT, TUPLE2, STOP
    out
}

const MEMOIZE: u8 = 0x94;

/// The `bytes` a worker's result pickle holds: in band (`SHORT_BINBYTES`, `BINBYTES`,
/// `BINBYTES8`), or out of band in its one buffer (volley pickles large bytes as
/// `builtins.bytes(<next buffer>)`). Anything else is an error naming what was found.
pub fn result_bytes<'a>(data: &'a [u8], buffers: &[&'a [u8]]) -> Result<&'a [u8], String> {
    let mut r = Reader { b: data, at: 0 };
    let op = |r: &mut Reader<'a>| -> Result<u8, String> {
        loop {
            let o = r.take(1).map_err(|_| "the pickle ends early".to_string())?[0];
            if o != MEMOIZE {
                return Ok(o);
            }
        }
    };
    let mut o = op(&mut r)?;
    if o == 0x80 {
        r.take(1)?;
        o = op(&mut r)?;
    }
    if o == 0x95 {
        r.take(8)?; // FRAME: its length does not matter here
        o = op(&mut r)?;
    }
    let value: &[u8] = match o {
        b'C' => {
            let n = r.take(1)?[0] as usize;
            r.take(n)?
        }
        b'B' => {
            let n = r.u32()? as usize;
            r.take(n)?
        }
        0x8e => {
            let n = usize::try_from(r.u64()?).map_err(|_| "length too large".to_string())?;
            r.take(n)?
        }
        0x8c => {
            // SHORT_BINUNICODE "builtins", SHORT_BINUNICODE "bytes", STACK_GLOBAL,
            // NEXT_BUFFER, [READONLY_BUFFER], TUPLE1, REDUCE
            let name = |r: &mut Reader<'a>| -> Result<&'a [u8], String> {
                let n = r.take(1)?[0] as usize;
                r.take(n)
            };
            let module = name(&mut r)?;
            if op(&mut r)? != 0x8c || module != b"builtins" || name(&mut r)? != b"bytes" {
                return Err("the replica answered something other than bytes".into());
            }
            let mut seq = vec![op(&mut r)?, op(&mut r)?];
            let mut next = op(&mut r)?;
            if next == 0x98 {
                next = op(&mut r)?;
            }
            seq.push(next);
            seq.push(op(&mut r)?);
            if seq != [0x93, 0x97, 0x85, b'R'] || buffers.len() != 1 {
                return Err("the replica answered something other than bytes".into());
            }
            buffers[0]
        }
        _ => return Err("the replica's __volley_serve_http__ returned something other than bytes (a response frame)".into()),
    };
    if op(&mut r)? != b'.' || r.at != data.len() {
        return Err("the replica's answer is more than one bytes value".into());
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_frame_is_laid_out_as_wire_py_reads_it() {
        let f = RequestFrame {
            request_id: "r1",
            method: "POST",
            path: "/echo/x",
            route_prefix: "/echo",
            query: "a=1",
            client: "127.0.0.1:5000",
            headers: vec![(b"content-type", b"text/plain")],
            body: b"hi",
        }
        .encode();
        // The bytes _wire.encode_request gives for the same request (its doctest's).
        let mut want = b"VSQ1".to_vec();
        for s in ["r1", "POST", "/echo/x", "/echo", "a=1", "127.0.0.1:5000"] {
            want.extend_from_slice(&(s.len() as u32).to_le_bytes());
            want.extend_from_slice(s.as_bytes());
        }
        want.extend_from_slice(&1u32.to_le_bytes());
        want.extend_from_slice(&12u32.to_le_bytes());
        want.extend_from_slice(b"content-type");
        want.extend_from_slice(&10u32.to_le_bytes());
        want.extend_from_slice(b"text/plain");
        want.extend_from_slice(&2u64.to_le_bytes());
        want.extend_from_slice(b"hi");
        assert_eq!(f, want);
    }

    fn response(status: u16, headers: &[(&[u8], &[u8])], body: &[u8]) -> Vec<u8> {
        let mut out = b"VSR1".to_vec();
        out.extend_from_slice(&status.to_le_bytes());
        out.extend_from_slice(&(headers.len() as u32).to_le_bytes());
        for (n, v) in headers {
            put(&mut out, n);
            put(&mut out, v);
        }
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn response_frames_decode_and_bad_ones_say_why() {
        let f = response(201, &[(b"x-a", b"1")], b"ok");
        let r = decode_response(&f).expect("decodes");
        assert_eq!(
            r,
            Response {
                status: 201,
                headers: vec![(b"x-a".to_vec(), b"1".to_vec())],
                body: b"ok".to_vec()
            }
        );
        assert!(decode_response(b"nope").expect_err("magic").contains("not a serve"));
        assert!(decode_response(&f[..f.len() - 1]).expect_err("short").contains("cut short"));
        let mut long = f.clone();
        long.push(0);
        assert!(decode_response(&long).expect_err("long").contains("after the frame"));
        assert!(decode_response(&response(42, &[], b"")).expect_err("status").contains("42"));
    }

    #[test]
    fn stream_heads_decode_and_bad_ones_say_why() {
        let mut f = response(200, &[(b"content-type", b"text/event-stream")], b"data: 1\n\n");
        f[..4].copy_from_slice(STREAM_HEAD);
        put(&mut f, b"k7");
        let (r, key) = decode_stream_head(&f).expect("decodes");
        assert_eq!((r.status, &r.body[..], &key[..]), (200, &b"data: 1\n\n"[..], &b"k7"[..]));
        assert_eq!(r.headers, vec![(b"content-type".to_vec(), b"text/event-stream".to_vec())]);
        // The layout _wire.encode_stream_head writes (its doctest's bytes).
        let mut want = b"VSS1".to_vec();
        want.extend_from_slice(&201u16.to_le_bytes());
        want.extend_from_slice(&0u32.to_le_bytes());
        want.extend_from_slice(&1u64.to_le_bytes());
        want.push(b'a');
        want.extend_from_slice(&1u32.to_le_bytes());
        want.push(b'k');
        assert_eq!(decode_stream_head(&want).expect("py layout").1, b"k".to_vec());
        assert!(decode_stream_head(&response(200, &[], b"")).expect_err("vsr").contains("stream"));
        assert!(decode_stream_head(&f[..f.len() - 1]).expect_err("short").contains("cut short"));
        let mut long = f.clone();
        long.push(0);
        assert!(decode_stream_head(&long).expect_err("long").contains("after the frame"));
        let mut nokey = response(200, &[], b"x");
        nokey[..4].copy_from_slice(STREAM_HEAD);
        put(&mut nokey, b"");
        assert!(decode_stream_head(&nokey).expect_err("key").contains("names no key"));
    }

    #[test]
    fn socket_heads_decode_and_are_not_stream_heads() {
        // _wire.encode_socket_head([(b"sec-websocket-protocol", b"chat")], b"w1")
        let mut f = response(101, &[(b"sec-websocket-protocol", b"chat")], b"");
        f[..4].copy_from_slice(SOCKET_HEAD);
        put(&mut f, b"w1");
        let (r, key) = decode_socket_head(&f).expect("decodes");
        assert_eq!((r.status, &key[..]), (101, &b"w1"[..]));
        assert_eq!(r.headers, vec![(b"sec-websocket-protocol".to_vec(), b"chat".to_vec())]);
        assert!(decode_stream_head(&f).expect_err("vsw").contains("stream head"));
        assert!(decode_socket_head(b"VSS1").expect_err("vss").contains("WebSocket head"));
    }

    #[test]
    fn call_args_pickle() {
        let p = call_args(b"ab");
        assert_eq!(p, b"\x80\x05B\x02\x00\x00\x00ab\x85}\x86.");
    }

    #[test]
    fn results_in_band_and_out_of_band() {
        // What volley's worker writes for b"ab", b"x" * 300 and a 5000-byte value.
        let short = b"\x80\x05\x95\x06\x00\x00\x00\x00\x00\x00\x00C\x02ab\x94.";
        assert_eq!(result_bytes(short, &[]), Ok(&b"ab"[..]));
        let mut mid = b"\x80\x05\x95\x33\x01\x00\x00\x00\x00\x00\x00B\x2c\x01\x00\x00".to_vec();
        mid.extend_from_slice(&[b'x'; 300]);
        mid.extend_from_slice(b"\x94.");
        assert_eq!(result_bytes(&mid, &[]).map(<[u8]>::len), Ok(300));
        let oob = b"\x80\x05\x95\x1c\x00\x00\x00\x00\x00\x00\x00\x8c\x08builtins\x94\x8c\x05bytes\x94\x93\x94\x97\x98\x85\x94R\x94.";
        let buf = vec![7u8; 5000];
        assert_eq!(result_bytes(oob, &[&buf]), Ok(&buf[..]));
        assert!(result_bytes(oob, &[]).is_err(), "no buffer");
        let mut eight = b"\x80\x05\x8e".to_vec();
        eight.extend_from_slice(&3u64.to_le_bytes());
        eight.extend_from_slice(b"abc.");
        assert_eq!(result_bytes(&eight, &[]), Ok(&b"abc"[..]));
        // None, a str, two values: errors.
        assert!(result_bytes(b"\x80\x05N.", &[]).is_err());
        assert!(result_bytes(b"\x80\x05\x8c\x02ab\x94.", &[]).is_err());
        assert!(result_bytes(b"\x80\x05C\x01aC\x01b.", &[]).is_err());
        assert!(result_bytes(b"\x80\x05C\x05ab", &[]).is_err(), "cut short");
    }
}
