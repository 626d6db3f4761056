//! Request head parsing with a size limit and strict message framing (RFC 9112 §6).

use bytes::BytesMut;
use http::{header, request::Parts, HeaderMap, Version};
use monoio_codec::{Decoded, Decoder};
use monoio_http::h1::codec::decoder::{DecodeError, RequestHeadDecoder};

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// `Content-Length` bytes.
    Length(usize),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A parsed request head with its body framing and connection preferences.
#[derive(Debug)]
pub struct ParsedHead {
    /// Method, URI, version and headers.
    pub parts: Parts,
    /// How the body is delimited.
    pub framing: Framing,
    /// Whether the client wants the connection kept open after this exchange.
    pub keep_alive: bool,
    /// Whether the client waits for `100 Continue` before sending the body.
    pub expect_continue: bool,
}

/// Why a request head was refused. Every variant closes the connection after its response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// The head is larger than the configured limit, or has too many header lines.
    #[error("request head exceeds {limit} bytes or the header count limit")]
    TooLarge {
        /// The configured limit in bytes.
        limit: usize,
    },
    /// The head is not valid HTTP/1.x.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// `Content-Length` and `Transfer-Encoding` together, or differing lengths.
    #[error("ambiguous message framing: {0}")]
    Framing(&'static str),
    /// A transfer coding other than `chunked`.
    #[error("unsupported transfer coding {0:?}")]
    UnsupportedCoding(String),
}

/// Tries to parse one request head from the front of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed and the head so far is within `max_bytes`.
/// On success the head's bytes are removed from `buf`; what follows (body, pipelined
/// requests) stays.
pub fn parse_head(buf: &mut BytesMut, max_bytes: usize) -> Result<Option<ParsedHead>, HeadError> {
    // Only look for the end of the head within the limit, so an endless head costs nothing.
    let window = &buf[..buf.len().min(max_bytes)];
    if memchr::memmem::find(window, b"\r\n\r\n").is_none() {
        if buf.len() >= max_bytes {
            return Err(HeadError::TooLarge { limit: max_bytes });
        }
        // httparse rejects garbage before the end of the head arrives: fail fast on it.
        if let Err(e) = httparse::Request::new(&mut [httparse::EMPTY_HEADER; 0]).parse(window) {
            if e != httparse::Error::TooManyHeaders {
                return Err(HeadError::Malformed(e.to_string()));
            }
        }
        return Ok(None);
    }
    let parts = match RequestHeadDecoder.decode(buf) {
        Ok(Decoded::Some(parts)) => parts,
        Ok(_) => return Err(HeadError::Malformed("incomplete head".into())),
        Err(DecodeError::Parse(httparse::Error::TooManyHeaders)) => {
            return Err(HeadError::TooLarge { limit: max_bytes })
        }
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    };
    let framing = framing(&parts.headers, parts.version)?;
    let keep_alive = wants_keep_alive(&parts.headers, parts.version);
    let expect_continue = parts.version == Version::HTTP_11
        && parts
            .headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    check_host(&parts)?;
    Ok(Some(ParsedHead {
        parts,
        framing,
        keep_alive,
        expect_continue,
    }))
}

/// One `Host`, agreeing with an absolute-form target (RFC 9112 3.2): a request that names
/// two authorities could be routed by one and checked against the other.
fn check_host(parts: &http::request::Parts) -> Result<(), HeadError> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(HeadError::Malformed("more than one Host header".into()));
    }
    match (host, parts.uri.authority()) {
        (None, _) if parts.version == Version::HTTP_11 => {
            Err(HeadError::Malformed("HTTP/1.1 request without Host".into()))
        }
        (Some(h), Some(a)) if !h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes()) => Err(
            HeadError::Malformed("Host disagrees with the request target's authority".into()),
        ),
        _ => Ok(()),
    }
}

/// Decides the body framing, rejecting anything ambiguous (request smuggling vectors).
fn framing(headers: &HeaderMap, version: Version) -> Result<Framing, HeadError> {
    let te: Vec<_> = headers.get_all(header::TRANSFER_ENCODING).iter().collect();
    let cl: Vec<_> = headers.get_all(header::CONTENT_LENGTH).iter().collect();
    if !te.is_empty() {
        if !cl.is_empty() {
            return Err(HeadError::Framing(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        if version != Version::HTTP_11 {
            return Err(HeadError::Framing(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        let codings: Vec<String> = te
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("\u{fffd}").split(','))
            .map(|c| c.trim().to_ascii_lowercase())
            .filter(|c| !c.is_empty())
            .collect();
        return match codings.as_slice() {
            [only] if only == "chunked" => Ok(Framing::Chunked),
            _ => Err(HeadError::UnsupportedCoding(codings.join(", "))),
        };
    }
    let mut length: Option<usize> = None;
    for value in cl {
        let s = value
            .to_str()
            .map_err(|_| HeadError::Framing("Content-Length is not a number"))?;
        for item in s.split(',') {
            let item = item.trim();
            if item.is_empty() || !item.bytes().all(|b| b.is_ascii_digit()) {
                return Err(HeadError::Framing("Content-Length is not a number"));
            }
            let n: usize = item
                .parse()
                .map_err(|_| HeadError::Framing("Content-Length is too large"))?;
            match length {
                Some(prev) if prev != n => {
                    return Err(HeadError::Framing("differing Content-Length values"))
                }
                _ => length = Some(n),
            }
        }
    }
    Ok(match length {
        None | Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
    })
}

/// HTTP/1.1 keeps the connection unless `Connection: close`; HTTP/1.0 only with `keep-alive`.
fn wants_keep_alive(headers: &HeaderMap, version: Version) -> bool {
    let mut close = false;
    let mut keep = false;
    for v in headers.get_all(header::CONNECTION) {
        for token in v.to_str().unwrap_or("").split(',') {
            let token = token.trim();
            close |= token.eq_ignore_ascii_case("close");
            keep |= token.eq_ignore_ascii_case("keep-alive");
        }
    }
    match version {
        Version::HTTP_11 => !close,
        _ => keep && !close,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Option<ParsedHead>, HeadError> {
        parse_head(&mut BytesMut::from(s), 16 * 1024)
    }

    #[test]
    fn simple_get_keeps_alive_and_leaves_pipelined_bytes() {
        let mut buf = BytesMut::from("GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /next");
        let head = parse_head(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(head.parts.uri.path(), "/health");
        assert_eq!(head.framing, Framing::Empty);
        assert!(head.keep_alive);
        assert_eq!(&buf[..], b"GET /next");
    }

    #[test]
    fn one_host_that_agrees_with_an_absolute_target() {
        for bad in [
            "GET / HTTP/1.1\r\nHost: alpha.x\r\nHost: beta.x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n",
            "GET http://beta.x/sql HTTP/1.1\r\nHost: alpha.x\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(HeadError::Malformed(_))),
                "{bad:?} must be refused"
            );
        }
        for good in [
            "GET http://Alpha.x:8080/sql HTTP/1.1\r\nHost: alpha.x:8080\r\n\r\n",
            "GET /sql HTTP/1.0\r\n\r\n",
        ] {
            assert!(parse(good).unwrap().is_some(), "{good:?}");
        }
    }

    #[test]
    fn partial_head_waits() {
        assert!(parse("GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
    }

    #[test]
    fn oversized_head_is_too_large_even_before_it_ends() {
        let long = format!("GET / HTTP/1.1\r\nX-Big: {}", "a".repeat(2000));
        assert_eq!(
            parse_head(&mut BytesMut::from(long.as_str()), 1024).unwrap_err(),
            HeadError::TooLarge { limit: 1024 }
        );
        let done = format!("{long}\r\n\r\n");
        assert_eq!(
            parse_head(&mut BytesMut::from(done.as_str()), 1024).unwrap_err(),
            HeadError::TooLarge { limit: 1024 }
        );
    }

    #[test]
    fn too_many_headers_is_too_large() {
        let mut s = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
        for i in 0..200 {
            s.push_str(&format!("X-{i}: y\r\n"));
        }
        s.push_str("\r\n");
        assert!(matches!(parse(&s), Err(HeadError::TooLarge { .. })));
    }

    #[test]
    fn garbage_is_malformed_early() {
        assert!(matches!(
            parse("\x01\x02 nonsense"),
            Err(HeadError::Malformed(_))
        ));
        assert!(matches!(
            parse("GET / HTTP/1.1\r\nBad Header\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        assert!(
            matches!(
                parse("GET / HTTP/1.1\r\n\r\n"),
                Err(HeadError::Malformed(_))
            ),
            "missing Host"
        );
    }

    #[test]
    fn framing_rules() {
        let h = |extra: &str| format!("POST / HTTP/1.1\r\nHost: x\r\n{extra}\r\n");
        assert_eq!(
            parse(&h("Content-Length: 5\r\n")).unwrap().unwrap().framing,
            Framing::Length(5)
        );
        assert_eq!(
            parse(&h("Content-Length: 5\r\nContent-Length: 5\r\n"))
                .unwrap()
                .unwrap()
                .framing,
            Framing::Length(5)
        );
        assert_eq!(
            parse(&h("Transfer-Encoding: chunked\r\n"))
                .unwrap()
                .unwrap()
                .framing,
            Framing::Chunked
        );
        assert!(matches!(
            parse(&h("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n")),
            Err(HeadError::Framing(_))
        ));
        assert!(matches!(
            parse(&h("Content-Length: 5\r\nContent-Length: 6\r\n")),
            Err(HeadError::Framing(_))
        ));
        assert!(matches!(
            parse(&h("Content-Length: 5, 6\r\n")),
            Err(HeadError::Framing(_))
        ));
        assert!(matches!(
            parse(&h("Content-Length: +5\r\n")),
            Err(HeadError::Framing(_))
        ));
        assert!(matches!(
            parse(&h("Content-Length: 99999999999999999999999\r\n")),
            Err(HeadError::Framing(_))
        ));
        assert!(matches!(
            parse(&h("Transfer-Encoding: gzip, chunked\r\n")),
            Err(HeadError::UnsupportedCoding(_))
        ));
        assert!(matches!(
            parse(&h("Transfer-Encoding: chunked, chunked\r\n")),
            Err(HeadError::UnsupportedCoding(_))
        ));
        let http10 = "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(parse(http10), Err(HeadError::Framing(_))));
    }

    #[test]
    fn connection_preferences() {
        assert!(
            !parse("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap()
                .unwrap()
                .keep_alive
        );
        assert!(!parse("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap().keep_alive);
        assert!(
            parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                .unwrap()
                .unwrap()
                .keep_alive
        );
        let h = parse(
            "POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert!(h.expect_continue);
    }
}
