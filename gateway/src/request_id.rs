//! `X-Request-Id`: propagated when the client sends a sane one, generated otherwise.

use std::{
    cell::Cell,
    hash::{BuildHasher, Hasher},
};

use http::{HeaderMap, HeaderValue};

/// Longest client-supplied request id accepted.
const MAX_LEN: usize = 128;

/// A request's id: the client's, or one generated here (kept inline: no allocation).
#[derive(Debug, Clone)]
pub enum RequestId {
    /// Propagated from the client's `X-Request-Id`.
    Client(HeaderValue),
    /// Generated: 32 hex digits.
    Generated([u8; 32]),
}

impl RequestId {
    /// The id's bytes, for the response header.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            RequestId::Client(v) => v.as_bytes(),
            RequestId::Generated(b) => b,
        }
    }
}

/// Generates request ids on one core: a random 64-bit prefix and a counter, as 32 hex digits.
#[derive(Debug)]
pub struct RequestIds {
    prefix: u64,
    next: Cell<u64>,
}

impl RequestIds {
    /// A generator with a random prefix.
    pub fn new() -> Self {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(std::process::id() as u64);
        Self {
            prefix: h.finish(),
            next: Cell::new(0),
        }
    }

    /// The client's id when it is 1 to 128 visible ASCII characters, else a fresh one.
    pub fn for_request(&self, headers: &HeaderMap) -> RequestId {
        if let Some(v) = headers.get("x-request-id") {
            let b = v.as_bytes();
            if !b.is_empty() && b.len() <= MAX_LEN && b.iter().all(|c| c.is_ascii_graphic()) {
                return RequestId::Client(v.clone());
            }
        }
        self.generate()
    }

    /// A fresh id.
    pub fn generate(&self) -> RequestId {
        let n = self.next.get();
        self.next.set(n.wrapping_add(1));
        let mut buf = [0u8; 32];
        hex(self.prefix, &mut buf[..16]);
        hex(n, &mut buf[16..]);
        RequestId::Generated(buf)
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new()
    }
}

fn hex(mut n: u64, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(n & 0xf) as usize];
        n >>= 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn propagates_sane_ids_and_replaces_others() {
        let ids = RequestIds::new();
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(ids.for_request(&h).as_bytes(), b"abc-123");
        h.insert("x-request-id", HeaderValue::from_static("has space"));
        assert_ne!(ids.for_request(&h).as_bytes(), b"has space");
        h.insert(
            "x-request-id",
            HeaderValue::from_str(&"a".repeat(200)).unwrap(),
        );
        assert_eq!(ids.for_request(&h).as_bytes().len(), 32);
    }

    #[test]
    fn generated_ids_are_unique() {
        let ids = RequestIds::new();
        let a = ids.generate();
        let b = ids.generate();
        assert_ne!(a.as_bytes(), b.as_bytes());
        assert_eq!(a.as_bytes().len(), 32);
    }
}
