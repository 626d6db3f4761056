//! Finds where a chunked body ends while its bytes pass through unchanged.

/// Where the scanner is inside a chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a chunk-size line (hex digits, extensions) up to its LF.
    Size {
        digits: usize,
        size: u64,
        in_ext: bool,
    },
    /// Inside chunk data.
    Data(u64),
    /// Expecting the CR after chunk data.
    DataCr,
    /// Expecting the LF after chunk data.
    DataLf,
    /// In the trailer section: at the start of a line when `line_len` is 0.
    Trailer { line_len: usize },
    /// The body has ended.
    Done,
}

/// Why a chunked body is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// A chunk size is not hex, too long, or missing.
    #[error("malformed chunk size")]
    Size,
    /// Chunk data is not followed by CRLF.
    #[error("chunk data not followed by CRLF")]
    Crlf,
    /// A size or trailer line is unreasonably long.
    #[error("chunk line too long")]
    LineTooLong,
}

/// Longest size or trailer line accepted.
const MAX_LINE: usize = 8 * 1024;

/// Tracks a chunked body's framing across the pieces it arrives in.
#[derive(Debug, Clone)]
pub struct ChunkScanner {
    state: State,
    line: usize,
}

impl Default for ChunkScanner {
    fn default() -> Self {
        Self {
            state: State::Size {
                digits: 0,
                size: 0,
                in_ext: false,
            },
            line: 0,
        }
    }
}

impl ChunkScanner {
    /// Whether the final chunk and trailers have been seen.
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// Scans `bytes`; returns how many of them belong to the body (all of them until the
    /// end is found, then the end's offset).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < bytes.len() {
            match self.state {
                State::Done => return Ok(i),
                State::Data(left) => {
                    let take = left.min((bytes.len() - i) as u64);
                    i += take as usize;
                    self.state = if left == take {
                        State::DataCr
                    } else {
                        State::Data(left - take)
                    };
                    continue;
                }
                _ => {}
            }
            let b = bytes[i];
            i += 1;
            self.state = match self.state {
                State::Size {
                    digits,
                    size,
                    in_ext,
                } => {
                    self.line += 1;
                    if self.line > MAX_LINE {
                        return Err(ChunkError::LineTooLong);
                    }
                    match b {
                        b'\n' => {
                            self.line = 0;
                            if digits == 0 {
                                return Err(ChunkError::Size);
                            }
                            if size == 0 {
                                State::Trailer { line_len: 0 }
                            } else {
                                State::Data(size)
                            }
                        }
                        _ if in_ext => State::Size {
                            digits,
                            size,
                            in_ext,
                        },
                        b';' | b' ' | b'\t' | b'\r' => State::Size {
                            digits,
                            size,
                            in_ext: true,
                        },
                        _ => {
                            let d = (b as char).to_digit(16).ok_or(ChunkError::Size)?;
                            if digits >= 15 {
                                return Err(ChunkError::Size);
                            }
                            State::Size {
                                digits: digits + 1,
                                size: size * 16 + u64::from(d),
                                in_ext,
                            }
                        }
                    }
                }
                State::DataCr if b == b'\r' => State::DataLf,
                State::DataLf if b == b'\n' => State::Size {
                    digits: 0,
                    size: 0,
                    in_ext: false,
                },
                State::DataCr | State::DataLf => return Err(ChunkError::Crlf),
                State::Trailer { line_len } => match b {
                    b'\n' if line_len == 0 => State::Done,
                    b'\n' => State::Trailer { line_len: 0 },
                    b'\r' => State::Trailer { line_len },
                    _ if line_len >= MAX_LINE => return Err(ChunkError::LineTooLong),
                    _ => State::Trailer {
                        line_len: line_len + 1,
                    },
                },
                State::Data(_) | State::Done => unreachable!("handled above"),
            };
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-t: 1\r\n\r\n";

    #[test]
    fn finds_the_end_in_one_piece_and_leaves_what_follows() {
        let mut s = ChunkScanner::default();
        let mut bytes = BODY.to_vec();
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(s.feed(&bytes), Ok(BODY.len()));
        assert!(s.done());
    }

    #[test]
    fn finds_the_end_byte_by_byte() {
        let mut s = ChunkScanner::default();
        for (i, b) in BODY.iter().enumerate() {
            assert!(!s.done(), "ended early at {i}");
            assert_eq!(s.feed(std::slice::from_ref(b)), Ok(1));
        }
        assert!(s.done());
    }

    #[test]
    fn rejects_malformed_framing() {
        assert_eq!(
            ChunkScanner::default().feed(b"zz\r\n"),
            Err(ChunkError::Size)
        );
        assert_eq!(ChunkScanner::default().feed(b"\r\n"), Err(ChunkError::Size));
        assert_eq!(
            ChunkScanner::default().feed(b"1\r\nabc"),
            Err(ChunkError::Crlf)
        );
        let long = vec![b'1'; 20];
        assert_eq!(ChunkScanner::default().feed(&long), Err(ChunkError::Size));
    }

    #[test]
    fn large_chunks_pass_without_scanning_their_data() {
        let mut s = ChunkScanner::default();
        assert_eq!(s.feed(b"100000\r\n"), Ok(8));
        assert_eq!(s.feed(&vec![b'x'; 0x100000]), Ok(0x100000));
        assert_eq!(s.feed(b"\r\n0\r\n\r\n"), Ok(7));
        assert!(s.done());
    }
}
