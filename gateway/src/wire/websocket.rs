//! WebSocket (RFC 6455) for the PostgreSQL front end: the upgrade request (`GET /v2`, the
//! path Neon's `@neondatabase/serverless` driver opens by default) and the frame codec that
//! carries the PostgreSQL byte stream in binary frames.
//!
//! The frame codec is ours rather than `tungstenite`'s: tungstenite's `WebSocket` drives a
//! blocking or `WouldBlock` `Read + Write` stream and keeps its own buffers, which does not
//! fit monoio's owned-buffer, completion-based I/O; what remains useful of it (the 2–14
//! byte header) is a few lines, and the strictness wanted here (masking required, no
//! reserved bits, binary data only, a frame size limit) is policy we would write anyway.
//! Data frames are streamed: their payload is unmasked into the session's buffer as it
//! arrives, never held whole.

use base64::{engine::general_purpose::STANDARD as B64, Engine as _};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use ringgate_http1::head::{lists_token, parse_request, RequestFraming};

/// The path upgraded (Neon's driver: `wsProxy = host => host + "/v2"`).
pub const PATH: &str = "/v2";
/// Longest upgrade request head accepted.
pub const MAX_HEAD_BYTES: usize = 8 << 10;
/// Largest data frame accepted: the largest PostgreSQL message ([`super::messages`]'s
/// limit) fits in one; a larger frame is closed with 1009.
pub const MAX_FRAME_BYTES: u64 = super::messages::MAX_MESSAGE_BYTES as u64;
/// RFC 6455's GUID for `Sec-WebSocket-Accept`.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Close code: normal closure.
pub const CLOSE_NORMAL: u16 = 1000;
/// Close code: protocol error.
pub const CLOSE_PROTOCOL: u16 = 1002;
/// Close code: a data type the endpoint does not accept (text frames here).
pub const CLOSE_UNSUPPORTED: u16 = 1003;
/// Close code: data not consistent with the message type (a close reason not UTF-8).
pub const CLOSE_INVALID: u16 = 1007;
/// Close code: message too big.
pub const CLOSE_TOO_BIG: u16 = 1009;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// An accepted upgrade request.
#[derive(Debug)]
pub struct Upgrade {
    /// The `101 Switching Protocols` response to send.
    pub response: Vec<u8>,
    /// The `Host` header's name (without a port), which may name the project.
    pub host: Option<String>,
}

/// Why an upgrade request was refused; [`UpgradeError::response`] is the HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpgradeError {
    /// Not a well-formed HTTP/1.1 request head (or one with a body).
    #[error("malformed upgrade request: {0}")]
    Malformed(String),
    /// The head is longer than [`MAX_HEAD_BYTES`].
    #[error("upgrade request head too large")]
    TooLarge,
    /// Not `GET`.
    #[error("method {0} is not GET")]
    Method(String),
    /// Not [`PATH`].
    #[error("no WebSocket endpoint at {0}")]
    NotFound(String),
    /// No `Upgrade: websocket` with `Connection: upgrade`.
    #[error("not a WebSocket upgrade request")]
    NotUpgrade,
    /// `Sec-WebSocket-Version` is not 13.
    #[error("Sec-WebSocket-Version is not 13")]
    Version,
    /// `Sec-WebSocket-Key` missing or not 16 bytes in base64.
    #[error("missing or invalid Sec-WebSocket-Key")]
    Key,
}

impl UpgradeError {
    /// The HTTP response that refuses the request (the connection is closed after it).
    pub fn response(&self) -> Vec<u8> {
        let (status, extra) = match self {
            UpgradeError::Malformed(_) | UpgradeError::Key => ("400 Bad Request", ""),
            UpgradeError::TooLarge => ("431 Request Header Fields Too Large", ""),
            UpgradeError::Method(_) => ("405 Method Not Allowed", "Allow: GET\r\n"),
            UpgradeError::NotFound(_) => ("404 Not Found", ""),
            UpgradeError::NotUpgrade => (
                "426 Upgrade Required",
                "Upgrade: websocket\r\nConnection: Upgrade\r\n",
            ),
            UpgradeError::Version => ("426 Upgrade Required", "Sec-WebSocket-Version: 13\r\n"),
        };
        let body = format!("{self}\n");
        format!(
            "HTTP/1.1 {status}\r\n{extra}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }
}

/// Parses a WebSocket upgrade request at the front of `buf` (`Ok(None)` while incomplete);
/// what follows the head stays in `buf`.
pub fn upgrade(buf: &mut BytesMut) -> Result<Option<Upgrade>, UpgradeError> {
    use ringgate_http1::head::HeadError;
    let head = match parse_request(buf, MAX_HEAD_BYTES) {
        Ok(Some(h)) => h,
        Ok(None) => return Ok(None),
        Err(HeadError::TooLarge { .. }) => return Err(UpgradeError::TooLarge),
        Err(e) => return Err(UpgradeError::Malformed(e.to_string())),
    };
    upgrade_of(&head).map(Some)
}

/// Checks a parsed request head for a WebSocket upgrade on [`PATH`] (the HTTP listeners
/// hand theirs here); the `101` response to send, or what refuses it.
pub fn upgrade_of(head: &ringgate_http1::RequestHead) -> Result<Upgrade, UpgradeError> {
    let parts = &head.parts;
    if parts.version != http::Version::HTTP_11 {
        return Err(UpgradeError::Malformed("not HTTP/1.1".into()));
    }
    if !matches!(head.framing, RequestFraming::Empty) {
        return Err(UpgradeError::Malformed(
            "an upgrade request has no body".into(),
        ));
    }
    if parts.method != http::Method::GET {
        return Err(UpgradeError::Method(parts.method.to_string()));
    }
    if parts.uri.path() != PATH {
        return Err(UpgradeError::NotFound(parts.uri.path().to_string()));
    }
    let headers = &parts.headers;
    let lists = |name: http::header::HeaderName, token: &[u8]| {
        headers
            .get_all(name)
            .iter()
            .any(|v| lists_token(v.as_bytes(), token))
    };
    if !lists(http::header::UPGRADE, b"websocket") || !lists(http::header::CONNECTION, b"upgrade") {
        return Err(UpgradeError::NotUpgrade);
    }
    if headers
        .get(http::header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        return Err(UpgradeError::Version);
    }
    let mut keys = headers.get_all(http::header::SEC_WEBSOCKET_KEY).iter();
    let key = match (keys.next(), keys.next()) {
        (Some(k), None) => k.as_bytes().trim_ascii(),
        _ => return Err(UpgradeError::Key),
    };
    if B64.decode(key).map(|k| k.len()) != Ok(16) {
        return Err(UpgradeError::Key);
    }
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<http::uri::Authority>().ok())
        .map(|a| a.host().to_string());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(key)
    );
    Ok(Upgrade {
        response: response.into_bytes(),
        host,
    })
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`: base64(SHA-1(key ++ GUID)).
pub fn accept_key(key: &[u8]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key);
    ctx.update(GUID.as_bytes());
    B64.encode(ctx.finish())
}

/// A client's frame broke the protocol: close the connection with this code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("WebSocket close {code}: {reason}")]
pub struct CloseError {
    /// The close code to send.
    pub code: u16,
    /// Why (sent as the close reason).
    pub reason: &'static str,
}

fn protocol(reason: &'static str) -> CloseError {
    CloseError {
        code: CLOSE_PROTOCOL,
        reason,
    }
}

/// What [`Decoder::decode`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// This many payload bytes of a binary message were appended to the output.
    Data(usize),
    /// More bytes are needed.
    Need,
    /// A ping with this payload: answer with a pong.
    Ping(Bytes),
    /// The client closed, with this code (if it sent one).
    Close(Option<u16>),
}

/// The data frame whose payload is being read.
#[derive(Debug)]
struct InFrame {
    fin: bool,
    remaining: u64,
    mask: [u8; 4],
    /// Payload bytes unmasked so far (the mask's phase).
    done: usize,
}

/// Reads client frames (masked, binary) off a buffer; payloads go into the session's.
#[derive(Debug, Default)]
pub struct Decoder {
    frame: Option<InFrame>,
    /// A message whose last frame has not come yet is open.
    fragmented: bool,
}

impl Decoder {
    /// Decodes from `rbuf`: binary payload bytes are unmasked and appended to `out`,
    /// control frames returned; a frame that breaks the protocol is a [`CloseError`].
    pub fn decode(&mut self, rbuf: &mut BytesMut, out: &mut BytesMut) -> Result<Event, CloseError> {
        loop {
            if let Some(f) = &mut self.frame {
                let n = (rbuf.len() as u64).min(f.remaining) as usize;
                if n == 0 && f.remaining > 0 {
                    return Ok(Event::Need);
                }
                let start = out.len();
                out.put_slice(&rbuf[..n]);
                rbuf.advance(n);
                for (i, b) in out[start..].iter_mut().enumerate() {
                    *b ^= f.mask[(f.done + i) % 4];
                }
                f.done += n;
                f.remaining -= n as u64;
                if f.remaining == 0 {
                    if f.fin {
                        self.fragmented = false;
                    }
                    self.frame = None;
                }
                if n > 0 {
                    return Ok(Event::Data(n));
                }
                continue;
            }
            let Some(header) = self.header(rbuf)? else {
                return Ok(Event::Need);
            };
            match header {
                Header::Data(f) => self.frame = Some(f),
                Header::Control(op, payload) => match op {
                    OP_PING => return Ok(Event::Ping(payload)),
                    OP_PONG => {}
                    _ => return close_code(&payload).map(Event::Close),
                },
            }
        }
    }

    /// Reads one frame header (and a control frame's whole payload), when all there.
    fn header(&mut self, rbuf: &mut BytesMut) -> Result<Option<Header>, CloseError> {
        if rbuf.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (rbuf[0], rbuf[1]);
        let fin = b0 & 0x80 != 0;
        if b0 & 0x70 != 0 {
            return Err(protocol("reserved bits set (no extension was agreed)"));
        }
        let opcode = b0 & 0x0f;
        if b1 & 0x80 == 0 {
            return Err(protocol("client frames must be masked"));
        }
        let (len, at) = match b1 & 0x7f {
            126 => {
                let Some(b) = rbuf.get(2..4) else {
                    return Ok(None);
                };
                let len = u64::from(u16::from_be_bytes([b[0], b[1]]));
                if len < 126 {
                    return Err(protocol("payload length not in its shortest form"));
                }
                (len, 4)
            }
            127 => {
                let Some(b) = rbuf.get(2..10) else {
                    return Ok(None);
                };
                let len = u64::from_be_bytes(b.try_into().expect("8 bytes"));
                if len >> 63 != 0 {
                    return Err(protocol("payload length's top bit set"));
                }
                if len <= 0xffff {
                    return Err(protocol("payload length not in its shortest form"));
                }
                (len, 10)
            }
            n => (u64::from(n), 2),
        };
        let Some(mask) = rbuf.get(at..at + 4) else {
            return Ok(None);
        };
        let mask: [u8; 4] = mask.try_into().expect("4 bytes");
        match opcode {
            OP_CONTINUATION if !self.fragmented => {
                return Err(protocol("continuation frame outside a fragmented message"))
            }
            OP_BINARY if self.fragmented => {
                return Err(protocol("new message inside a fragmented one"))
            }
            OP_CONTINUATION | OP_BINARY => {
                if len > MAX_FRAME_BYTES {
                    return Err(CloseError {
                        code: CLOSE_TOO_BIG,
                        reason: "frame too big",
                    });
                }
                rbuf.advance(at + 4);
                if !fin {
                    self.fragmented = true;
                }
                return Ok(Some(Header::Data(InFrame {
                    fin,
                    remaining: len,
                    mask,
                    done: 0,
                })));
            }
            OP_TEXT => {
                return Err(CloseError {
                    code: CLOSE_UNSUPPORTED,
                    reason: "text frames are not accepted: the PostgreSQL protocol is binary",
                })
            }
            OP_CLOSE | OP_PING | OP_PONG => {}
            _ => return Err(protocol("unknown opcode")),
        }
        if !fin {
            return Err(protocol("fragmented control frame"));
        }
        if len > 125 {
            return Err(protocol("control frame longer than 125 bytes"));
        }
        let len = len as usize;
        if rbuf.len() < at + 4 + len {
            return Ok(None);
        }
        rbuf.advance(at + 4);
        let mut payload = rbuf.split_to(len);
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
        Ok(Some(Header::Control(opcode, payload.freeze())))
    }
}

/// A frame header read.
enum Header {
    Data(InFrame),
    Control(u8, Bytes),
}

/// The code of a client's close frame, checked (RFC 6455 §7.4).
fn close_code(payload: &[u8]) -> Result<Option<u16>, CloseError> {
    match payload {
        [] => Ok(None),
        [_] => Err(protocol("close frame with a one-byte payload")),
        [a, b, reason @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            let valid = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
            if !valid {
                return Err(protocol("invalid close code"));
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(CloseError {
                    code: CLOSE_INVALID,
                    reason: "close reason is not UTF-8",
                });
            }
            Ok(Some(code))
        }
    }
}

/// Appends a server frame (unmasked, final) of `opcode` with `payload`.
fn frame(out: &mut BytesMut, opcode: u8, payload: &[u8]) {
    out.put_u8(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.put_u8(n as u8),
        n if n <= 0xffff => {
            out.put_u8(126);
            out.put_u16(n as u16);
        }
        n => {
            out.put_u8(127);
            out.put_u64(n as u64);
        }
    }
    out.put_slice(payload);
}

/// Appends a binary frame carrying `payload`.
pub fn binary(out: &mut BytesMut, payload: &[u8]) {
    frame(out, OP_BINARY, payload);
}

/// Appends a pong answering a ping's `payload`.
pub fn pong(out: &mut BytesMut, payload: &[u8]) {
    frame(out, OP_PONG, payload);
}

/// Appends a close frame with `code` and `reason`.
pub fn close(out: &mut BytesMut, code: u16, reason: &str) {
    let mut p = code.to_be_bytes().to_vec();
    // A control frame's payload is at most 125 bytes.
    p.extend_from_slice(&reason.as_bytes()[..reason.len().min(123)]);
    frame(out, OP_CLOSE, &p);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(lines: &[&str]) -> BytesMut {
        let mut s = lines.join("\r\n");
        s.push_str("\r\n\r\n");
        BytesMut::from(s.as_bytes())
    }

    const GOOD: &[&str] = &[
        "GET /v2 HTTP/1.1",
        "Host: alpha.pg.example.com:6432",
        "Upgrade: websocket",
        "Connection: keep-alive, Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ];

    #[test]
    fn the_accept_key_is_rfc_6455s() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn an_upgrade_is_accepted_and_its_host_kept() {
        let mut buf = request(GOOD);
        buf.extend_from_slice(b"\x82");
        let u = upgrade(&mut buf).unwrap().unwrap();
        let text = String::from_utf8(u.response).unwrap();
        assert!(text.starts_with("HTTP/1.1 101 "), "{text}");
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert_eq!(u.host.as_deref(), Some("alpha.pg.example.com"));
        assert_eq!(&buf[..], b"\x82", "what follows the head stays");
        let mut half = BytesMut::from(&request(GOOD)[..20]);
        assert_eq!(upgrade(&mut half).unwrap().map(|u| u.host), None);
    }

    #[test]
    fn bad_upgrades_are_refused_with_their_status() {
        let with = |i: usize, line: &str| {
            let mut lines = GOOD.to_vec();
            if line.is_empty() {
                lines.remove(i);
            } else {
                lines[i] = line;
            }
            upgrade(&mut request(&lines)).unwrap_err()
        };
        let status = |e: UpgradeError| String::from_utf8(e.response()).unwrap()[9..12].to_string();
        assert_eq!(status(with(5, "")), "426", "no version");
        assert_eq!(status(with(5, "Sec-WebSocket-Version: 8")), "426");
        assert!(
            String::from_utf8(with(5, "Sec-WebSocket-Version: 8").response())
                .unwrap()
                .contains("Sec-WebSocket-Version: 13\r\n")
        );
        assert_eq!(status(with(4, "")), "400", "no key");
        assert_eq!(status(with(4, "Sec-WebSocket-Key: c2hvcnQ=")), "400");
        assert_eq!(status(with(2, "")), "426", "no Upgrade");
        assert_eq!(status(with(3, "Connection: keep-alive")), "426");
        assert_eq!(status(with(0, "POST /v2 HTTP/1.1")), "405");
        assert_eq!(status(with(0, "GET /sql HTTP/1.1")), "404");
        assert_eq!(status(with(0, "GET /v2 HTTP/1.0")), "400");
        assert_eq!(status(with(1, "")), "400", "HTTP/1.1 without Host");
        let mut huge = BytesMut::from(&b"GET /v2 HTTP/1.1\r\nX: "[..]);
        huge.extend_from_slice(&[b'a'; MAX_HEAD_BYTES]);
        assert_eq!(upgrade(&mut huge).unwrap_err(), UpgradeError::TooLarge);
    }

    /// A client frame: `b0` (FIN, RSV, opcode), masked with `mask` when given.
    fn client_frame(b0: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = BytesMut::new();
        frame(&mut out, 0, payload);
        let mut v = out.to_vec();
        v[0] = b0;
        if let Some(m) = mask {
            v[1] |= 0x80;
            let at = v.len() - payload.len();
            let mut masked: Vec<u8> = payload
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ m[i % 4])
                .collect();
            v.truncate(at);
            v.extend_from_slice(&m);
            v.append(&mut masked);
        }
        v
    }

    const M: Option<[u8; 4]> = Some([1, 2, 3, 4]);

    fn decode_all(bytes: &[u8]) -> (Vec<Event>, BytesMut, Result<(), CloseError>) {
        let (mut d, mut rbuf, mut out) = (Decoder::default(), BytesMut::new(), BytesMut::new());
        let mut events = Vec::new();
        // One byte at a time: every split of a frame is handled.
        for b in bytes {
            rbuf.put_u8(*b);
            loop {
                match d.decode(&mut rbuf, &mut out) {
                    Ok(Event::Need) => break,
                    Ok(e) => events.push(e),
                    Err(e) => return (events, out, Err(e)),
                }
            }
        }
        (events, out, Ok(()))
    }

    #[test]
    fn masked_binary_frames_fragments_and_control_frames_decode() {
        let big = vec![7u8; 70_000];
        let mut bytes = client_frame(0x82, b"hello", M);
        bytes.extend(client_frame(0x02, b"wor", M));
        bytes.extend(client_frame(0x89, b"ping!", M));
        bytes.extend(client_frame(0x80, b"ld", M));
        bytes.extend(client_frame(0x8A, b"", M));
        bytes.extend(client_frame(0x82, &big, M));
        bytes.extend(client_frame(0x82, b"", M));
        bytes.extend(client_frame(0x88, &[0x03, 0xe8, b'b', b'y', b'e'], M));
        let (events, out, r) = decode_all(&bytes);
        assert_eq!(r, Ok(()));
        assert_eq!(&out[..10], b"helloworld");
        assert_eq!(&out[10..], &big[..]);
        assert!(events.contains(&Event::Ping(Bytes::from_static(b"ping!"))));
        assert_eq!(events.last(), Some(&Event::Close(Some(1000))));
    }

    #[test]
    fn bad_frames_close_with_their_code() {
        let code = |bytes: Vec<u8>| decode_all(&bytes).2.unwrap_err().code;
        assert_eq!(code(client_frame(0x82, b"x", None)), 1002, "unmasked");
        assert_eq!(code(client_frame(0xC2, b"x", M)), 1002, "RSV1");
        assert_eq!(code(client_frame(0xA2, b"x", M)), 1002, "RSV2");
        assert_eq!(code(client_frame(0x81, b"x", M)), 1003, "text");
        assert_eq!(code(client_frame(0x83, b"x", M)), 1002, "reserved opcode");
        assert_eq!(code(client_frame(0x80, b"x", M)), 1002, "lone continuation");
        assert_eq!(code(client_frame(0x09, b"x", M)), 1002, "fragmented ping");
        assert_eq!(code(client_frame(0x89, &[0; 126], M)), 1002, "long ping");
        let mut two = client_frame(0x02, b"a", M);
        two.extend(client_frame(0x82, b"b", M));
        assert_eq!(code(two), 1002, "new message inside a fragmented one");
        // A header announcing 2^40 bytes: refused before any payload.
        let mut huge = vec![0x82, 0x80 | 127];
        huge.extend_from_slice(&(1u64 << 40).to_be_bytes());
        huge.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(code(huge), 1009);
        let mut long = vec![0x82, 0x80 | 126, 0, 5, 1, 2, 3, 4];
        long.extend_from_slice(b"abcde");
        assert_eq!(code(long), 1002, "non-minimal length");
        assert_eq!(code(client_frame(0x88, &[0x03], M)), 1002, "one-byte close");
        assert_eq!(
            code(client_frame(0x88, &[0x03, 0xed], M)),
            1002,
            "close code 1005"
        );
        assert_eq!(
            code(client_frame(0x88, &[0x03, 0xe8, 0xff], M)),
            1007,
            "close reason not UTF-8"
        );
    }
}
