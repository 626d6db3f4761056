//! Incremental decoder for `Transfer-Encoding: chunked` request bodies, with a size limit.

use bytes::{Buf, BytesMut};

/// Why a chunked body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkedError {
    /// The decoded body would exceed the limit.
    #[error("body exceeds {limit} bytes")]
    TooLarge {
        /// The configured limit in bytes.
        limit: usize,
    },
    /// The chunk framing is invalid.
    #[error("malformed chunked body: {0}")]
    Malformed(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data: this many bytes left.
    Data(usize),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
    /// The body is complete.
    Done,
}

/// Longest chunk-size or trailer line accepted.
const MAX_LINE: usize = 4096;

/// Decodes a chunked body from a connection buffer into `out`, as bytes arrive.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
    limit: usize,
}

impl ChunkedDecoder {
    /// A decoder that refuses bodies over `limit` decoded bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            state: State::Size,
            limit,
        }
    }

    /// Consumes what it can from `buf`, appending data to `out`. Returns `Ok(true)` once the
    /// whole body (and its trailers) has been read; bytes after it stay in `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut, out: &mut BytesMut) -> Result<bool, ChunkedError> {
        loop {
            match self.state {
                State::Size => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(false);
                    };
                    let size_part = line[..].split(|&b| b == b';').next().unwrap_or(&[]);
                    let size_str = std::str::from_utf8(size_part)
                        .map_err(|_| ChunkedError::Malformed("chunk size"))?;
                    let size_str = size_str.trim_matches(|c| c == ' ' || c == '\t');
                    if size_str.is_empty()
                        || size_str.len() > 16
                        || !size_str.bytes().all(|b| b.is_ascii_hexdigit())
                    {
                        return Err(ChunkedError::Malformed("chunk size"));
                    }
                    let size = usize::from_str_radix(size_str, 16)
                        .map_err(|_| ChunkedError::Malformed("chunk size"))?;
                    if size == 0 {
                        self.state = State::Trailers;
                    } else if out.len().saturating_add(size) > self.limit {
                        return Err(ChunkedError::TooLarge { limit: self.limit });
                    } else {
                        self.state = State::Data(size);
                    }
                }
                State::Data(left) => {
                    if buf.is_empty() {
                        return Ok(false);
                    }
                    let n = left.min(buf.len());
                    out.extend_from_slice(&buf[..n]);
                    buf.advance(n);
                    self.state = if n == left {
                        State::DataEnd
                    } else {
                        State::Data(left - n)
                    };
                }
                State::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(false);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(ChunkedError::Malformed("missing CRLF after chunk data"));
                    }
                    buf.advance(2);
                    self.state = State::Size;
                }
                State::Trailers => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(false);
                    };
                    if line.is_empty() {
                        self.state = State::Done;
                    }
                }
                State::Done => return Ok(true),
            }
        }
    }
}

/// Takes one CRLF-terminated line off the front of `buf`, without the CRLF.
fn take_line(buf: &mut BytesMut) -> Result<Option<BytesMut>, ChunkedError> {
    match memchr::memmem::find(&buf[..buf.len().min(MAX_LINE + 2)], b"\r\n") {
        Some(i) => {
            let line = buf.split_to(i);
            buf.advance(2);
            Ok(Some(line))
        }
        None if buf.len() > MAX_LINE => Err(ChunkedError::Malformed("line too long")),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8], limit: usize) -> Result<(BytesMut, BytesMut), ChunkedError> {
        let mut d = ChunkedDecoder::new(limit);
        let mut out = BytesMut::new();
        let mut buf = BytesMut::new();
        // Feed one byte at a time: the decoder must cope with any split.
        for &b in input {
            buf.extend_from_slice(&[b]);
            if d.decode(&mut buf, &mut out)? {
                return Ok((out, buf));
            }
        }
        Err(ChunkedError::Malformed("incomplete"))
    }

    #[test]
    fn decodes_chunks_extensions_and_trailers() {
        let (out, _) = decode_all(
            b"5;name=v\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n",
            100,
        )
        .unwrap();
        assert_eq!(&out[..], b"hello world");
    }

    #[test]
    fn leaves_following_bytes() {
        let mut d = ChunkedDecoder::new(100);
        let mut buf = BytesMut::from(&b"3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1"[..]);
        let mut out = BytesMut::new();
        assert!(d.decode(&mut buf, &mut out).unwrap());
        assert_eq!(&buf[..], b"GET / HTTP/1.1");
    }

    #[test]
    fn enforces_limit_before_reading_data() {
        assert_eq!(
            decode_all(b"b\r\nhello world\r\n0\r\n\r\n", 10).unwrap_err(),
            ChunkedError::TooLarge { limit: 10 }
        );
    }

    #[test]
    fn rejects_bad_framing() {
        for bad in [
            &b"zz\r\n"[..],
            b"5\r\nhelloXX0\r\n\r\n",
            b"-1\r\n",
            b"fffffffffffffffff\r\n",
        ] {
            assert!(
                matches!(decode_all(bad, 100), Err(ChunkedError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
