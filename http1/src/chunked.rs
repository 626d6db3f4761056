//! The chunked transfer coding (RFC 9112 §7.1), read strictly, as one state machine fed
//! whatever bytes have arrived, with two sinks: [`Collect`] decodes the body into a buffer
//! (under a limit), [`Forward`] only finds where the body ends, for bytes that pass through
//! unchanged.
//!
//! Accepted: `1*HEXDIG` sizes (leading zeros allowed, the value must fit in 64 bits),
//! extensions after `;` (with bad whitespace before the `;`, which RFC 9110 §5.6.3 tells
//! recipients to accept), trailer field lines `name: value`. Every line ends in CRLF.
//! Refused: a bare LF or bare CR anywhere, whitespace or anything but `;` after a size,
//! signs, `0x`, an empty size, control characters in extensions or trailers, obsolete line
//! folding or an empty name in trailers, a size line over [`MAX_LINE`] bytes, trailers over
//! [`MAX_TRAILERS`] bytes.

use bytes::{Buf, BufMut, BytesMut};

/// Longest chunk-size line accepted (size and extensions, without the CRLF).
pub const MAX_LINE: usize = 4096;
/// Most trailer bytes accepted after the last chunk.
pub const MAX_TRAILERS: usize = 16 * 1024;

/// Why a chunked body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkedError {
    /// The decoded body would exceed the limit ([`Collect`] only).
    #[error("body exceeds {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The chunk framing is invalid.
    #[error("malformed chunked body: {0}")]
    Malformed(&'static str),
}

/// Where the state machine is inside a chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In a chunk size's hex digits (none yet when `size_digits` is false).
    Size,
    /// Whitespace after the size: only more of it or `;` may follow.
    SizeWs,
    /// In the chunk extensions.
    Ext,
    /// The CR ending a size line was read: LF must follow.
    SizeLf,
    /// Inside chunk data: this many bytes left.
    Data(u64),
    /// Expecting the CR after chunk data.
    DataCr,
    /// Expecting the LF after chunk data.
    DataLf,
    /// At the start of a trailer line or of the final empty line.
    TrailerStart,
    /// In a trailer field's name.
    TrailerName,
    /// In a trailer field's value.
    TrailerValue,
    /// The CR ending a trailer line was read: LF must follow.
    TrailerLf,
    /// The CR of the final empty line was read: LF ends the body.
    EndLf,
    /// The body has ended.
    Done,
}

/// Where the decoded bytes of a chunked body go.
pub trait Sink {
    /// A chunk of `size` bytes (not 0) begins; called before any of its data.
    fn chunk(&mut self, size: u64) -> Result<(), ChunkedError> {
        let _ = size;
        Ok(())
    }

    /// Decoded body bytes, in order.
    fn data(&mut self, bytes: &[u8]);
}

/// The sink of a body that passes through unchanged: nothing is copied, the caller forwards
/// the bytes [`Chunked::feed`] says belong to the body.
#[derive(Debug, Clone, Copy, Default)]
pub struct Forward;

impl Sink for Forward {
    #[inline]
    fn data(&mut self, _: &[u8]) {}
}

/// The sink of a body read whole: decoded bytes are appended to a buffer, and a chunk that
/// would take it over `limit` is refused before any of its data is read.
#[derive(Debug)]
pub struct Collect<B> {
    out: B,
    limit: usize,
    len: usize,
}

impl<B: BufMut> Collect<B> {
    /// Appends to `out`, refusing more than `limit` decoded bytes.
    pub fn new(out: B, limit: usize) -> Self {
        Self { out, limit, len: 0 }
    }

    /// Decoded bytes so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was decoded yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The buffer.
    pub fn into_inner(self) -> B {
        self.out
    }
}

impl<B: BufMut> Sink for Collect<B> {
    fn chunk(&mut self, size: u64) -> Result<(), ChunkedError> {
        if (self.len as u64).saturating_add(size) > self.limit as u64 {
            return Err(ChunkedError::TooLarge { limit: self.limit });
        }
        Ok(())
    }

    fn data(&mut self, bytes: &[u8]) {
        self.len += bytes.len();
        self.out.put_slice(bytes);
    }
}

/// The chunked state machine: feed it the bytes of a body as they arrive, in any pieces.
#[derive(Debug, Clone)]
pub struct Chunked {
    state: State,
    /// The size being read.
    size: u64,
    /// Whether the size has a digit yet.
    size_digits: bool,
    /// Bytes of the current size line, or of the trailers so far.
    line: usize,
}

impl Default for Chunked {
    fn default() -> Self {
        Self::new()
    }
}

/// `tchar` (RFC 9110 §5.6.2): the bytes of a field name.
#[inline]
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A byte allowed inside a field value or a chunk extension: visible ASCII, SP, HTAB, or
/// obs-text; no control characters.
#[inline]
fn is_text(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80
}

fn malformed<T>(why: &'static str) -> Result<T, ChunkedError> {
    Err(ChunkedError::Malformed(why))
}

impl Chunked {
    /// At the start of a body.
    pub fn new() -> Self {
        Self {
            state: State::Size,
            size: 0,
            size_digits: false,
            line: 0,
        }
    }

    /// Whether the last chunk and the trailers have been read.
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// Reads `bytes`, passing decoded data to `sink`; returns how many of them belong to
    /// the body: all of them until its end is found, then the end's offset (what follows
    /// is the next message).
    pub fn feed<S: Sink + ?Sized>(
        &mut self,
        bytes: &[u8],
        sink: &mut S,
    ) -> Result<usize, ChunkedError> {
        let mut i = 0;
        while i < bytes.len() {
            match self.state {
                State::Done => return Ok(i),
                State::Data(left) => {
                    // Data is taken in one piece, never looked at byte by byte.
                    let take = left.min((bytes.len() - i) as u64) as usize;
                    sink.data(&bytes[i..i + take]);
                    i += take;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::DataCr
                    } else {
                        State::Data(left)
                    };
                }
                _ => {
                    let b = bytes[i];
                    i += 1;
                    self.state = self.step(b, sink)?;
                }
            }
        }
        Ok(i)
    }

    /// One framing byte.
    fn step<S: Sink + ?Sized>(&mut self, b: u8, sink: &mut S) -> Result<State, ChunkedError> {
        if matches!(self.state, State::Size | State::SizeWs | State::Ext) {
            self.line += 1;
            if self.line > MAX_LINE {
                return malformed("chunk-size line too long");
            }
        }
        if matches!(
            self.state,
            State::TrailerStart | State::TrailerName | State::TrailerValue | State::TrailerLf
        ) {
            self.line += 1;
            if self.line > MAX_TRAILERS {
                return malformed("trailers too long");
            }
        }
        Ok(match self.state {
            State::Size => match b {
                b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                    let digit = (b as char).to_digit(16).unwrap_or(0);
                    self.size = match self
                        .size
                        .checked_mul(16)
                        .and_then(|s| s.checked_add(u64::from(digit)))
                    {
                        Some(size) => size,
                        None => return malformed("chunk size overflows"),
                    };
                    self.size_digits = true;
                    State::Size
                }
                _ if !self.size_digits => return malformed("chunk size is not a hex number"),
                b';' => State::Ext,
                b' ' | b'\t' => State::SizeWs,
                b'\r' => State::SizeLf,
                _ => return malformed("chunk size is not a hex number"),
            },
            State::SizeWs => match b {
                b' ' | b'\t' => State::SizeWs,
                b';' => State::Ext,
                _ => return malformed("whitespace after a chunk size"),
            },
            State::Ext => match b {
                b'\r' => State::SizeLf,
                _ if is_text(b) => State::Ext,
                _ => return malformed("control character in a chunk extension"),
            },
            State::SizeLf => {
                if b != b'\n' {
                    return malformed("bare CR in a chunk-size line");
                }
                let size = self.size;
                self.size = 0;
                self.size_digits = false;
                self.line = 0;
                if size == 0 {
                    State::TrailerStart
                } else {
                    sink.chunk(size)?;
                    State::Data(size)
                }
            }
            State::DataCr if b == b'\r' => State::DataLf,
            State::DataLf if b == b'\n' => State::Size,
            State::DataCr | State::DataLf => return malformed("chunk data not followed by CRLF"),
            State::TrailerStart => match b {
                b'\r' => State::EndLf,
                _ if is_tchar(b) => State::TrailerName,
                _ => return malformed("malformed trailer line"),
            },
            State::TrailerName => match b {
                b':' => State::TrailerValue,
                _ if is_tchar(b) => State::TrailerName,
                _ => return malformed("malformed trailer field name"),
            },
            State::TrailerValue => match b {
                b'\r' => State::TrailerLf,
                _ if is_text(b) => State::TrailerValue,
                _ => return malformed("control character in a trailer"),
            },
            State::TrailerLf if b == b'\n' => State::TrailerStart,
            State::TrailerLf => return malformed("bare CR in a trailer"),
            State::EndLf if b == b'\n' => State::Done,
            State::EndLf => return malformed("bare CR after the trailers"),
            State::Data(_) | State::Done => unreachable!("handled by feed"),
        })
    }
}

/// A chunked body read whole from a connection buffer: the state machine with a
/// [`Collect`] sink.
#[derive(Debug)]
pub struct ChunkedDecoder<B = BytesMut> {
    chunked: Chunked,
    sink: Collect<B>,
}

impl ChunkedDecoder<BytesMut> {
    /// A decoder into a new buffer that refuses bodies over `limit` decoded bytes.
    pub fn new(limit: usize) -> Self {
        Self::with_buffer(BytesMut::new(), limit)
    }
}

impl<B: BufMut> ChunkedDecoder<B> {
    /// A decoder appending to `out`, refusing over `limit` decoded bytes.
    pub fn with_buffer(out: B, limit: usize) -> Self {
        Self {
            chunked: Chunked::new(),
            sink: Collect::new(out, limit),
        }
    }

    /// Consumes what it can from the front of `buf`; `Ok(true)` once the whole body (and
    /// its trailers) has been read. Bytes after the body stay in `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<bool, ChunkedError> {
        let n = self.chunked.feed(buf, &mut self.sink)?;
        buf.advance(n);
        Ok(self.chunked.done())
    }

    /// Like [`decode`](Self::decode) on a slice: returns how many bytes belong to the body.
    pub fn decode_slice(&mut self, bytes: &[u8]) -> Result<usize, ChunkedError> {
        self.chunked.feed(bytes, &mut self.sink)
    }

    /// Whether the whole body has been read.
    pub fn done(&self) -> bool {
        self.chunked.done()
    }

    /// The decoded body.
    pub fn into_body(self) -> B {
        self.sink.into_inner()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed one byte at a time; the body and the bytes after it.
    fn collect_bytewise(input: &[u8], limit: usize) -> Result<(Vec<u8>, usize), ChunkedError> {
        let mut d = ChunkedDecoder::with_buffer(Vec::new(), limit);
        for (i, b) in input.iter().enumerate() {
            let n = d.decode_slice(std::slice::from_ref(b))?;
            if d.done() {
                return Ok((d.into_body(), i + n));
            }
        }
        Err(ChunkedError::Malformed("incomplete"))
    }

    /// Where `input` ends, fed whole to the forward sink.
    fn forward_whole(input: &[u8]) -> Result<Option<usize>, ChunkedError> {
        let mut c = Chunked::new();
        let n = c.feed(input, &mut Forward)?;
        Ok(c.done().then_some(n))
    }

    #[test]
    fn decodes_chunks_extensions_and_trailers() {
        let body =
            b"5;name=v;q=\"a;b\"\r\nhello\r\n6 ; x\r\n world\r\n0\r\nX-Trailer: 1\r\nY:\r\n\r\n";
        let (out, end) = collect_bytewise(body, 100).unwrap();
        assert_eq!(out, b"hello world");
        assert_eq!(end, body.len());
        assert_eq!(forward_whole(body), Ok(Some(body.len())));
    }

    #[test]
    fn leaves_what_follows_and_both_sinks_agree_on_the_end() {
        let body = &b"3\r\nabc\r\n00\r\n\r\n"[..];
        let mut d = ChunkedDecoder::new(100);
        let mut buf = BytesMut::from([body, b"GET / HTTP/1.1"].concat().as_slice());
        assert!(d.decode(&mut buf).unwrap());
        assert_eq!(&buf[..], b"GET / HTTP/1.1");
        assert_eq!(&d.into_body()[..], b"abc");
        assert_eq!(
            forward_whole(&[body, b"xyz"].concat()),
            Ok(Some(body.len()))
        );
    }

    #[test]
    fn enforces_the_limit_before_reading_data() {
        assert_eq!(
            collect_bytewise(b"b\r\n", 10).unwrap_err(),
            ChunkedError::TooLarge { limit: 10 }
        );
        let mut d = ChunkedDecoder::new(10);
        assert!(d
            .decode(&mut BytesMut::from(&b"5\r\nhello\r\n"[..]))
            .is_ok());
        assert_eq!(
            d.decode(&mut BytesMut::from(&b"6\r\n"[..])),
            Err(ChunkedError::TooLarge { limit: 10 })
        );
    }

    /// The framing every reader refuses (RFC 9112 §7.1), each fed whole and byte by byte.
    const REFUSED: &[&[u8]] = &[
        b"zz\r\n",
        b"\r\n",
        b" 5\r\nhello\r\n0\r\n\r\n",
        b"5 \r\nhello\r\n0\r\n\r\n",
        b"5\t\r\nhello\r\n0\r\n\r\n",
        b"+5\r\nhello\r\n0\r\n\r\n",
        b"-1\r\n",
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b"5_0\r\n",
        b"10000000000000000\r\n",
        b"fffffffffffffffff\r\n",
        b"5\nhello\r\n0\r\n\r\n",
        b"5\r\nhello\n0\r\n\r\n",
        b"5\r\nhelloXX0\r\n\r\n",
        b"5\r\nhello\r\r\n0\r\n\r\n",
        b"5;a\rb\r\nhello\r\n0\r\n\r\n",
        b"5;a\nb\r\nhello\r\n0\r\n\r\n",
        b"5;a\x00\r\nhello\r\n0\r\n\r\n",
        b"0\n\r\n",
        b"0\r\n\n",
        b"0\r\nX: a\n\r\n",
        b"0\r\nX: a\nY: b\r\n\r\n",
        b"0\r\nX: a\rY: b\r\n\r\n",
        b"0\r\n\rX",
        b"0\r\n: a\r\n\r\n",
        b"0\r\nX a\r\n\r\n",
        b"0\r\nX: a\r\n b\r\n\r\n",
        b"0\r\nX: a\x01\r\n\r\n",
    ];

    #[test]
    fn refuses_what_rfc_9112_does_not_allow() {
        for bad in REFUSED {
            let shown = String::from_utf8_lossy(bad);
            assert!(
                matches!(
                    collect_bytewise(bad, 1 << 20),
                    Err(ChunkedError::Malformed(_))
                ),
                "collect accepted {shown:?}"
            );
            assert!(
                forward_whole(bad).is_err(),
                "forward accepted {shown:?}: {:?}",
                forward_whole(bad)
            );
        }
    }

    #[test]
    fn long_lines_are_refused() {
        let ext = format!("1;{}\r\n", "e".repeat(MAX_LINE));
        assert!(forward_whole(ext.as_bytes()).is_err());
        let trailers = format!("0\r\n{}", "X: 1\r\n".repeat(MAX_TRAILERS / 6 + 1));
        assert!(forward_whole(trailers.as_bytes()).is_err());
        // Leading zeros are not a longer number.
        let zeros = format!("{}1\r\na\r\n0\r\n\r\n", "0".repeat(40));
        assert!(forward_whole(zeros.as_bytes()).unwrap().is_some());
    }

    #[test]
    fn large_chunks_pass_in_one_piece() {
        let mut c = Chunked::new();
        assert_eq!(c.feed(b"100000\r\n", &mut Forward), Ok(8));
        assert_eq!(c.feed(&vec![b'x'; 0x100000], &mut Forward), Ok(0x100000));
        assert_eq!(c.feed(b"\r\n0\r\n\r\n", &mut Forward), Ok(7));
        assert!(c.done());
        let max = format!("{:x}\r\n", u64::MAX);
        assert_eq!(
            Chunked::new().feed(max.as_bytes(), &mut Forward),
            Ok(max.len())
        );
    }
}
