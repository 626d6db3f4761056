//! Responses and their HTTP/1.1 encoding.

use std::{
    cell::RefCell,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};

/// A complete response with a buffered body.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: StatusCode,
    /// `content-type`.
    pub content_type: &'static str,
    /// Headers besides `content-type` and the ones the connection adds (`content-length`,
    /// `date`, `connection`, `x-request-id`, `server`); usually empty (no allocation).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The body.
    pub body: Bytes,
}

impl Response {
    /// A response with `content-type` and body.
    pub fn new(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Self {
        Self {
            status,
            content_type,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// A `text/plain` response.
    pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Self {
        Self::new(status, "text/plain; charset=utf-8", body)
    }

    /// An `application/json` response from a serializable value.
    pub fn json(status: StatusCode, value: &impl serde::Serialize) -> Self {
        let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
        Self::new(status, "application/json", body)
    }

    /// Adds a header.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// Writes the status line and headers into `out`, and the body too when it is small
    /// (returns `true`); a large body is left for a separate write (returns `false`).
    pub fn encode_head(
        &self,
        out: &mut Vec<u8>,
        date: &[u8],
        request_id: &[u8],
        keep_alive: bool,
        head_only: bool,
    ) -> bool {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(self.status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(
            self.status
                .canonical_reason()
                .unwrap_or("Unknown")
                .as_bytes(),
        );
        out.extend_from_slice(b"\r\nserver: ringgate\r\ndate: ");
        out.extend_from_slice(date);
        out.extend_from_slice(b"\r\ncontent-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(self.body.len()).as_bytes());
        if !request_id.is_empty() {
            out.extend_from_slice(b"\r\nx-request-id: ");
            out.extend_from_slice(request_id);
        }
        if !keep_alive {
            out.extend_from_slice(b"\r\nconnection: close");
        }
        if !self.content_type.is_empty() {
            out.extend_from_slice(b"\r\ncontent-type: ");
            out.extend_from_slice(self.content_type.as_bytes());
        }
        for (name, value) in &self.headers {
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
        }
        out.extend_from_slice(b"\r\n\r\n");
        if head_only {
            return true;
        }
        if self.body.len() <= 16 * 1024 {
            out.extend_from_slice(&self.body);
            true
        } else {
            false
        }
    }
}

/// The `date` header value, formatted once a second per core.
#[derive(Debug, Default)]
pub struct DateCache {
    cached: RefCell<(u64, String)>,
}

impl DateCache {
    /// The current time as an IMF-fixdate, e.g. `Tue, 24 Nov 2026 14:56:45 GMT`.
    pub fn with_now<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        let now = SystemTime::now();
        let secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        let mut cached = self.cached.borrow_mut();
        if cached.0 != secs || cached.1.is_empty() {
            *cached = (secs, httpdate::fmt_http_date(now));
        }
        f(cached.1.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_head_and_small_body() {
        let r = Response::text(StatusCode::NOT_FOUND, "nope").with_header(
            HeaderName::from_static("x-a"),
            HeaderValue::from_static("b"),
        );
        let mut out = Vec::new();
        assert!(r.encode_head(&mut out, b"DATE", b"rid", false, false));
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 404 Not Found\r\n"), "{s}");
        assert!(s.contains("\r\ncontent-length: 4\r\n"));
        assert!(s.contains("\r\nx-request-id: rid\r\n"));
        assert!(s.contains("\r\nconnection: close\r\n"));
        assert!(s.contains("\r\nx-a: b\r\n"));
        assert!(s.ends_with("\r\n\r\nnope"));
    }

    #[test]
    fn head_only_keeps_length_but_no_body() {
        let r = Response::text(StatusCode::OK, "ok");
        let mut out = Vec::new();
        r.encode_head(&mut out, b"D", b"", true, true);
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains("content-length: 2") && s.ends_with("\r\n\r\n"));
        assert!(!s.contains("connection"));
    }

    #[test]
    fn date_is_imf_fixdate() {
        let d = DateCache::default();
        let s = d.with_now(|b| String::from_utf8(b.to_vec()).unwrap());
        assert!(s.ends_with(" GMT") && s.len() == 29, "{s}");
    }
}
