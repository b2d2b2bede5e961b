//! SPDY/3.1 framing, as much of it as Kubernetes' streaming protocols use (kubectl's
//! port-forward, over an HTTP upgrade or tunnelled in a WebSocket): frames in and out of a
//! byte stream, and the name/value header blocks, zlib-compressed with SPDY/3's dictionary
//! in one compression context per direction for the whole connection. Flow control is not
//! kept (the Go implementation kubectl uses neither sends nor honours WINDOW_UPDATE).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// A frame's FIN flag: the sender's half of the stream is closed.
pub const FLAG_FIN: u8 = 0x01;

/// RST_STREAM status codes.
pub const PROTOCOL_ERROR: u32 = 1;
pub const CANCEL: u32 = 5;

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;

/// The largest decompressed header block accepted: port-forward's headers are a few dozen
/// bytes, and a block is where a few compressed bytes could ask for a lot of memory.
const MAX_HEADERS: usize = 64 * 1024;
/// The most name/value pairs a block may carry (values split at NUL included).
const MAX_PAIRS: usize = 256;

#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    SynStream {
        id: u32,
        flags: u8,
        headers: Vec<(String, String)>,
    },
    SynReply {
        id: u32,
        flags: u8,
        headers: Vec<(String, String)>,
    },
    RstStream {
        id: u32,
        status: u32,
    },
    Ping(u32),
    GoAway {
        last_good: u32,
        status: u32,
    },
    Data {
        id: u32,
        flags: u8,
        data: Bytes,
    },
    /// SETTINGS (4), HEADERS (8), WINDOW_UPDATE (9) and others: read and let be.
    Ignored(u16),
}

impl Frame {
    /// The value of header `name` (names are lower case in SPDY/3).
    pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error("SPDY version {0} is not spoken here (only 3)")]
    Version(u16),
    #[error("a SPDY frame of {0} bytes is longer than its type allows")]
    Length(usize),
    #[error("a SPDY header block is malformed: {0}")]
    Headers(String),
}

/// One end of a SPDY connection: what has been read but not yet framed, and the two
/// header-compression contexts.
pub struct Codec {
    pending: BytesMut,
    inflate: Decompress,
    deflate: Compress,
}

impl Default for Codec {
    fn default() -> Self {
        Codec {
            pending: BytesMut::new(),
            inflate: Decompress::new(true),
            deflate: Compress::new(Compression::default(), true),
        }
    }
}

impl Codec {
    /// Take bytes read from the connection.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    /// The next whole frame among the bytes fed, if there is one.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, SpdyError> {
        if self.pending.len() < 8 {
            return Ok(None);
        }
        let head = &self.pending[..8];
        let length =
            (usize::from(head[5]) << 16) | (usize::from(head[6]) << 8) | usize::from(head[7]);
        if self.pending.len() < 8 + length {
            return Ok(None);
        }
        let mut frame = self.pending.split_to(8 + length).freeze();
        let word = frame.get_u32();
        let flags = frame.get_u8();
        frame.advance(3);
        if word & 0x8000_0000 == 0 {
            return Ok(Some(Frame::Data {
                id: word & 0x7FFF_FFFF,
                flags,
                data: frame,
            }));
        }
        let version = ((word >> 16) & 0x7FFF) as u16;
        if version != VERSION {
            return Err(SpdyError::Version(version));
        }
        let kind = (word & 0xFFFF) as u16;
        let need = |n: usize| {
            if length < n {
                Err(SpdyError::Length(length))
            } else {
                Ok(())
            }
        };
        Ok(Some(match kind {
            SYN_STREAM => {
                need(10)?;
                let id = frame.get_u32() & 0x7FFF_FFFF;
                frame.advance(6); // associated stream, priority, slot
                let headers = self.read_headers(&frame)?;
                Frame::SynStream { id, flags, headers }
            }
            SYN_REPLY => {
                need(4)?;
                let id = frame.get_u32() & 0x7FFF_FFFF;
                let headers = self.read_headers(&frame)?;
                Frame::SynReply { id, flags, headers }
            }
            HEADERS => {
                need(4)?;
                frame.advance(4);
                // Decompressed all the same, to keep the context in step with the peer's.
                self.read_headers(&frame)?;
                Frame::Ignored(kind)
            }
            RST_STREAM => {
                need(8)?;
                Frame::RstStream {
                    id: frame.get_u32() & 0x7FFF_FFFF,
                    status: frame.get_u32(),
                }
            }
            PING => {
                need(4)?;
                Frame::Ping(frame.get_u32())
            }
            GOAWAY => {
                need(4)?;
                let last_good = frame.get_u32() & 0x7FFF_FFFF;
                let status = if frame.remaining() >= 4 {
                    frame.get_u32()
                } else {
                    0
                };
                Frame::GoAway { last_good, status }
            }
            other => Frame::Ignored(other),
        }))
    }

    /// A frame as bytes for the connection.
    pub fn encode(&mut self, frame: &Frame) -> Vec<u8> {
        let control = |kind: u16, flags: u8, body: &[u8]| {
            let mut out = Vec::with_capacity(8 + body.len());
            out.put_u16(0x8000 | VERSION);
            out.put_u16(kind);
            out.put_u8(flags);
            out.put_uint(body.len() as u64, 3);
            out.extend_from_slice(body);
            out
        };
        match frame {
            Frame::SynStream { id, flags, headers } => {
                let mut body = Vec::new();
                body.put_u32(*id);
                body.put_u32(0);
                body.put_u16(0);
                body.extend(self.write_headers(headers));
                control(SYN_STREAM, *flags, &body)
            }
            Frame::SynReply { id, flags, headers } => {
                let mut body = Vec::new();
                body.put_u32(*id);
                body.extend(self.write_headers(headers));
                control(SYN_REPLY, *flags, &body)
            }
            Frame::RstStream { id, status } => {
                let mut body = Vec::new();
                body.put_u32(*id);
                body.put_u32(*status);
                control(RST_STREAM, 0, &body)
            }
            Frame::Ping(id) => control(PING, 0, &id.to_be_bytes()),
            Frame::GoAway { last_good, status } => {
                let mut body = Vec::new();
                body.put_u32(*last_good);
                body.put_u32(*status);
                control(GOAWAY, 0, &body)
            }
            Frame::Data { id, flags, data } => data_frame(*id, *flags, data),
            Frame::Ignored(kind) => control(*kind, 0, &[]),
        }
    }

    fn read_headers(&mut self, block: &[u8]) -> Result<Vec<(String, String)>, SpdyError> {
        let bad = |m: &str| SpdyError::Headers(m.to_string());
        let mut plain = Vec::new();
        let mut input = block;
        loop {
            plain.reserve(plain.len().max(1024));
            let (in0, out0) = (self.inflate.total_in(), self.inflate.total_out());
            let result = self
                .inflate
                .decompress_vec(input, &mut plain, FlushDecompress::Sync);
            let used = (self.inflate.total_in() - in0) as usize;
            let progress = used > 0 || self.inflate.total_out() > out0;
            input = &input[used..];
            match result {
                Err(e) if e.needs_dictionary().is_some() => self
                    .inflate
                    .set_dictionary(&DICTIONARY_BYTES)
                    .map(drop)
                    .map_err(|e| bad(&format!("the dictionary was refused: {e}")))?,
                Err(e) => return Err(bad(&e.to_string())),
                Ok(Status::StreamEnd) => break,
                // All taken, and room left over: everything the block holds is out.
                Ok(_) if input.is_empty() && plain.len() < plain.capacity() => break,
                Ok(_) if !progress && plain.len() < plain.capacity() => {
                    return Err(bad("the compressed block ends early"))
                }
                Ok(_) => {}
            }
            if plain.len() > MAX_HEADERS {
                return Err(SpdyError::Length(plain.len()));
            }
        }
        parse_block(&plain).ok_or_else(|| {
            bad(&format!(
                "a length runs past the block's end, or it has more than {MAX_PAIRS} pairs"
            ))
        })
    }

    fn write_headers(&mut self, headers: &[(String, String)]) -> Vec<u8> {
        let mut plain = Vec::new();
        plain.put_u32(headers.len() as u32);
        for (name, value) in headers {
            plain.put_u32(name.len() as u32);
            plain.extend_from_slice(name.to_ascii_lowercase().as_bytes());
            plain.put_u32(value.len() as u32);
            plain.extend_from_slice(value.as_bytes());
        }
        if self.deflate.total_in() == 0 && self.deflate.total_out() == 0 {
            self.deflate
                .set_dictionary(&DICTIONARY_BYTES)
                .expect("a fresh deflate stream takes a dictionary");
        }
        let mut out = Vec::with_capacity(plain.len() + 64);
        let mut input = plain.as_slice();
        loop {
            let before = self.deflate.total_in();
            out.reserve(256);
            self.deflate
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .expect("deflate into a growing buffer");
            input = &input[(self.deflate.total_in() - before) as usize..];
            // Done once all input is taken and the flush fitted in the room given.
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
        }
        out
    }
}

/// A DATA frame (no compression: it needs no codec).
pub fn data_frame(id: u32, flags: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + data.len());
    out.put_u32(id & 0x7FFF_FFFF);
    out.put_u8(flags);
    out.put_uint(data.len() as u64, 3);
    out.extend_from_slice(data);
    out
}

/// Name/value pairs from an uncompressed header block (several values of one name, joined
/// by NUL, become one pair each).
fn parse_block(mut b: &[u8]) -> Option<Vec<(String, String)>> {
    let take = |b: &mut &[u8]| -> Option<String> {
        if b.len() < 4 {
            return None;
        }
        let n = (&b[..4]).get_u32() as usize;
        if b.len() < 4 + n {
            return None;
        }
        let s = String::from_utf8_lossy(&b[4..4 + n]).into_owned();
        *b = &b[4 + n..];
        Some(s)
    };
    if b.len() < 4 {
        return None;
    }
    let count = (&b[..4]).get_u32();
    b = &b[4..];
    let mut pairs = Vec::new();
    for _ in 0..count {
        let name = take(&mut b)?.to_ascii_lowercase();
        let values = take(&mut b)?;
        for v in values.split('\0') {
            if pairs.len() == MAX_PAIRS {
                return None;
            }
            pairs.push((name.clone(), v.to_string()));
        }
    }
    Some(pairs)
}

/// SPDY/3's header-compression dictionary (a constant of the protocol, section 2.6.10.1):
/// 65 length-prefixed header names and values, then a run of common text.
static DICTIONARY_BYTES: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
    const WORDS: &[&str] = &[
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ];
    const TAIL: &str = concat!(
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417",
        "502504505203 Non-Authoritative Information204 No Content301 Moved Permanently",
        "400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error",
        "501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct ",
        "Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,",
        "image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,",
        "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8",
        "charset=iso-8859-1,utf-,*,enq=0.",
    );
    let mut d = Vec::with_capacity(1423);
    for w in WORDS {
        d.put_u32(w.len() as u32);
        d.extend_from_slice(w.as_bytes());
    }
    d.extend_from_slice(TAIL.as_bytes());
    d
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_go_out_and_come_back_with_their_headers() {
        let (mut client, mut server) = (Codec::default(), Codec::default());
        let frames = [
            Frame::SynStream {
                id: 1,
                flags: 0,
                headers: vec![
                    ("streamtype".into(), "error".into()),
                    ("port".into(), "8080".into()),
                    ("requestid".into(), "0".into()),
                ],
            },
            Frame::SynStream {
                id: 3,
                flags: 0,
                headers: vec![
                    ("streamtype".into(), "data".into()),
                    ("port".into(), "8080".into()),
                    ("requestid".into(), "0".into()),
                ],
            },
            Frame::Data {
                id: 3,
                flags: FLAG_FIN,
                data: Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n"),
            },
            Frame::Ping(7),
            Frame::RstStream {
                id: 3,
                status: CANCEL,
            },
            Frame::GoAway {
                last_good: 3,
                status: 0,
            },
        ];
        let mut wire = Vec::new();
        for f in &frames {
            wire.extend(client.encode(f));
        }
        // Fed a byte at a time: frames come out only when whole.
        let mut got = Vec::new();
        for b in wire {
            server.feed(&[b]);
            while let Some(f) = server.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
        // The reply direction has a context of its own.
        let reply = Frame::SynReply {
            id: 1,
            flags: 0,
            headers: vec![],
        };
        let bytes = server.encode(&reply);
        client.feed(&bytes);
        assert_eq!(client.next_frame().unwrap(), Some(reply));
    }

    #[test]
    fn the_dictionary_is_spdy3s() {
        // Its Adler-32 is the dictionary id a SPDY/3 zlib stream's header names.
        let (mut a, mut b) = (1u32, 0u32);
        for &x in DICTIONARY_BYTES.iter() {
            a = (a + u32::from(x)) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!((DICTIONARY_BYTES.len(), (b << 16) | a), (1423, 0xe3c6_a7c2));
    }

    #[test]
    fn another_version_or_a_short_frame_is_an_error() {
        let mut c = Codec::default();
        c.feed(&[0x80, 2, 0, 1, 0, 0, 0, 0]);
        assert!(matches!(c.next_frame(), Err(SpdyError::Version(2))));
        let mut c = Codec::default();
        c.feed(&[0x80, 3, 0, 3, 0, 0, 0, 2, 0, 0]);
        assert!(matches!(c.next_frame(), Err(SpdyError::Length(2))));
    }

    #[test]
    fn a_header_block_that_inflates_past_the_limit_is_refused() {
        let (mut client, mut server) = (Codec::default(), Codec::default());
        let huge = "\0".repeat(1 << 20);
        let bytes = client.encode(&Frame::SynStream {
            id: 1,
            flags: 0,
            headers: vec![("x".into(), huge)],
        });
        assert!(
            bytes.len() < 16 * 1024,
            "it compresses well: {}",
            bytes.len()
        );
        server.feed(&bytes);
        assert!(matches!(server.next_frame(), Err(SpdyError::Length(_))));
    }

    #[test]
    fn multiple_values_are_split_and_names_lowered() {
        let mut block = Vec::new();
        block.put_u32(1);
        block.put_u32(4);
        block.extend_from_slice(b"Port");
        block.put_u32(9);
        block.extend_from_slice(b"8080\x009090");
        assert_eq!(
            parse_block(&block).unwrap(),
            vec![
                ("port".to_string(), "8080".to_string()),
                ("port".to_string(), "9090".to_string())
            ]
        );
    }
}
