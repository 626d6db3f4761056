//! Framing of the client's messages and the few backend messages ringgate writes itself
//! (authentication, errors, `ReadyForQuery`); everything else is the server's, relayed.

use bytes::{BufMut, BytesMut};

/// Largest client message accepted (a big `COPY` row or query still fits).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// A message whose length is out of bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid message length {len} (message type {tag:?})")]
pub struct FrameError {
    /// Its type byte, as a character.
    pub tag: char,
    /// Its length field.
    pub len: usize,
}

/// Takes one whole message (type byte, length, body) off the front of `buf`, when it is
/// all there.
pub fn take(buf: &mut BytesMut, max: usize) -> Result<Option<BytesMut>, FrameError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = u32::from_be_bytes(buf[1..5].try_into().expect("4 bytes")) as usize;
    if !(4..=max).contains(&len) {
        return Err(FrameError {
            tag: buf[0] as char,
            len,
        });
    }
    if buf.len() < 1 + len {
        return Ok(None);
    }
    Ok(Some(buf.split_to(1 + len)))
}

/// The body of a whole message (after its type and length).
pub fn body(msg: &[u8]) -> &[u8] {
    &msg[5..]
}

/// Starts a message of type `tag`; [`end`] fills in its length.
fn begin(out: &mut BytesMut, tag: u8) -> usize {
    out.put_u8(tag);
    let at = out.len();
    out.put_u32(0);
    at
}

fn end(out: &mut BytesMut, at: usize) {
    let len = (out.len() - at) as u32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn cstr(out: &mut BytesMut, s: &str) {
    // A NUL inside would end the field early; none of ringgate's texts has one.
    out.put_slice(s.replace('\0', " ").as_bytes());
    out.put_u8(0);
}

/// `ErrorResponse` with severity, SQLSTATE and message.
pub fn error(out: &mut BytesMut, severity: &str, code: &str, message: &str) {
    let at = begin(out, b'E');
    for (field, value) in [
        (b'S', severity),
        (b'V', severity),
        (b'C', code),
        (b'M', message),
    ] {
        out.put_u8(field);
        cstr(out, value);
    }
    out.put_u8(0);
    end(out, at);
}

/// `SCRAM-SHA-256` (SASL mechanism name).
pub const SCRAM: &str = "SCRAM-SHA-256";
/// `SCRAM-SHA-256-PLUS`: SCRAM with channel binding.
pub const SCRAM_PLUS: &str = "SCRAM-SHA-256-PLUS";

/// `AuthenticationSASL` offering SCRAM-SHA-256, and SCRAM-SHA-256-PLUS first when `plus`.
pub fn auth_sasl(out: &mut BytesMut, plus: bool) {
    let at = begin(out, b'R');
    out.put_i32(10);
    if plus {
        cstr(out, SCRAM_PLUS);
    }
    cstr(out, SCRAM);
    out.put_u8(0);
    end(out, at);
}

/// `AuthenticationCleartextPassword`.
pub fn auth_cleartext(out: &mut BytesMut) {
    let at = begin(out, b'R');
    out.put_i32(3);
    end(out, at);
}

/// `AuthenticationSASLContinue` (kind 11) or `AuthenticationSASLFinal` (kind 12).
pub fn auth_sasl_data(out: &mut BytesMut, kind: i32, data: &[u8]) {
    let at = begin(out, b'R');
    out.put_i32(kind);
    out.put_slice(data);
    end(out, at);
}

/// `AuthenticationOk`.
pub fn auth_ok(out: &mut BytesMut) {
    let at = begin(out, b'R');
    out.put_i32(0);
    end(out, at);
}

/// `ParameterStatus`.
pub fn parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    let at = begin(out, b'S');
    cstr(out, name);
    cstr(out, value);
    end(out, at);
}

/// `BackendKeyData`.
pub fn backend_key_data(out: &mut BytesMut, pid: i32, key: i32) {
    let at = begin(out, b'K');
    out.put_i32(pid);
    out.put_i32(key);
    end(out, at);
}

/// `ReadyForQuery` with the transaction status (`I`, `T` or `E`).
pub fn ready_for_query(out: &mut BytesMut, status: u8) {
    let at = begin(out, b'Z');
    out.put_u8(status);
    end(out, at);
}

/// A frontend message of type `tag` with `body` (for rewritten `Parse`, `Bind`, ...).
pub fn frontend(out: &mut BytesMut, tag: u8, parts: &[&[u8]]) {
    let at = begin(out, tag);
    for p in parts {
        out.put_slice(p);
    }
    end(out, at);
}

/// A NUL-terminated string at the start of `b`, and what follows it.
pub fn split_cstr(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = b.iter().position(|&c| c == 0)?;
    Some((&b[..end], &b[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_messages_are_taken_and_bad_lengths_refused() {
        let mut out = BytesMut::new();
        ready_for_query(&mut out, b'I');
        assert_eq!(&out[..], b"Z\0\0\0\x05I");
        let mut buf = BytesMut::from(&out[..3]);
        assert_eq!(take(&mut buf, 100), Ok(None));
        let mut buf = out.clone();
        buf.extend_from_slice(b"Q\0\0");
        assert_eq!(take(&mut buf, 100).unwrap().unwrap(), out);
        assert_eq!(&buf[..], b"Q\0\0");
        let mut huge = BytesMut::from(&b"Q\x7f\xff\xff\xff"[..]);
        assert_eq!(
            take(&mut huge, MAX_MESSAGE_BYTES),
            Err(FrameError {
                tag: 'Q',
                len: 0x7fff_ffff
            })
        );
    }

    #[test]
    fn errors_carry_severity_code_and_message() {
        let mut out = BytesMut::new();
        error(&mut out, "FATAL", "28P01", "no");
        assert_eq!(&out[..], b"E\0\0\0\x1eSFATAL\0VFATAL\0C28P01\0Mno\0\0");
    }
}
