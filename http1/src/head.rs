//! Request and response heads (RFC 9112 §2-6), parsed by httparse and checked for what it
//! lets through: every line must end in CRLF (httparse also takes a bare LF), and the body
//! framing must be unambiguous. Requests also need one `Host` that agrees with an
//! absolute-form target.

use bytes::{Bytes, BytesMut};
use http::{header, request::Parts, HeaderMap, HeaderName, HeaderValue, Method, Uri, Version};

/// Most header lines a head may have (more is [`HeadError::TooLarge`]).
pub const MAX_HEADERS: usize = 128;

/// How a request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body.
    Empty,
    /// `Content-Length` bytes.
    Length(usize),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    /// No body (a response to HEAD, 1xx, 204, 304).
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// Chunked, the final transfer coding.
    Chunked,
    /// Until the sender closes the connection.
    UntilClose,
}

/// Why a head was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// The head is larger than the limit, or has more than [`MAX_HEADERS`] lines.
    #[error("head larger than {limit} bytes or with more than {MAX_HEADERS} header lines")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The head is not valid HTTP/1.x.
    #[error("malformed head: {0}")]
    Malformed(String),
    /// `Content-Length` and `Transfer-Encoding` together, differing or unreadable lengths.
    #[error("ambiguous message framing: {0}")]
    Framing(&'static str),
    /// A transfer coding ringgate does not decode (requests: anything but `chunked`).
    #[error("unsupported transfer coding {0:?}")]
    UnsupportedCoding(String),
}

/// Refuses a head with a bare LF (RFC 9112 §2.2 lets a recipient accept one; a proxy that
/// does and a worker that does not disagree on where the head ends).
fn check_line_ends(head: &[u8]) -> Result<(), HeadError> {
    // No early exit, so the compiler can compare many bytes at once: heads are parsed for
    // every request and every proxied response.
    let bare = head.first() == Some(&b'\n')
        || head[1.min(head.len())..]
            .iter()
            .zip(head)
            .fold(false, |bare, (&b, &before)| {
                bare | ((b == b'\n') & (before != b'\r'))
            });
    if bare {
        return Err(HeadError::Malformed("bare LF line ending".into()));
    }
    Ok(())
}

/// The transfer codings and length a head declares, read once for either direction.
struct Declared {
    /// Some `Transfer-Encoding` header was present.
    te: bool,
    /// The last transfer coding is `chunked`.
    chunked_last: bool,
    /// `chunked` is the one and only coding.
    chunked_only: bool,
    /// The agreed `Content-Length`.
    length: Option<u64>,
}

const OWS: &[char] = &[' ', '\t'];

fn declared(headers: &[httparse::Header<'_>]) -> Result<Declared, HeadError> {
    let mut d = Declared {
        te: false,
        chunked_last: false,
        chunked_only: false,
        length: None,
    };
    let mut count = 0;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            d.te = true;
            let value = std::str::from_utf8(h.value)
                .map_err(|_| HeadError::Framing("Transfer-Encoding is not text"))?;
            for coding in value.split(',').map(|c| c.trim_matches(OWS)) {
                if coding.is_empty() {
                    continue;
                }
                count += 1;
                d.chunked_last = coding.eq_ignore_ascii_case("chunked");
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            for item in h.value.split(|&b| b == b',') {
                let n = content_length(item.trim_ascii())?;
                match d.length {
                    Some(prev) if prev != n => {
                        return Err(HeadError::Framing("differing Content-Length values"))
                    }
                    _ => d.length = Some(n),
                }
            }
        }
    }
    d.chunked_only = d.chunked_last && count == 1;
    if d.te && d.length.is_some() {
        // Allowed in responses by RFC 9112 §6.3 (the coding wins), but "ought to be
        // handled as an error": it is how responses are split.
        return Err(HeadError::Framing(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    Ok(d)
}

/// The transfer codings of `headers`, for an error message.
fn codings(headers: &[httparse::Header<'_>]) -> String {
    let values = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
        .map(|h| String::from_utf8_lossy(h.value));
    values.collect::<Vec<_>>().join(", ")
}

/// One `Content-Length` value: `1*DIGIT` that fits in 64 bits.
fn content_length(digits: &[u8]) -> Result<u64, HeadError> {
    if digits.is_empty() {
        return Err(HeadError::Framing("Content-Length is not a number"));
    }
    digits.iter().try_fold(0u64, |n, &b| {
        if !b.is_ascii_digit() {
            return Err(HeadError::Framing("Content-Length is not a number"));
        }
        n.checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .ok_or(HeadError::Framing("Content-Length is too large"))
    })
}

/// Byte offset of `part` inside `whole` (a slice of it, as httparse returns).
fn offset(whole: &[u8], part: &[u8]) -> usize {
    (part.as_ptr() as usize).wrapping_sub(whole.as_ptr() as usize)
}

/// A parsed request head with its body framing and connection preferences.
#[derive(Debug)]
pub struct RequestHead {
    /// Method, target, version and headers.
    pub parts: Parts,
    /// How the body is delimited.
    pub framing: RequestFraming,
    /// Whether the client wants the connection kept open after this exchange.
    pub keep_alive: bool,
    /// Whether the client waits for `100 Continue` before sending the body.
    pub expect_continue: bool,
}

/// Tries to parse one request head from the front of `buf`.
///
/// `Ok(None)` while more bytes are needed and the head so far is within `max_bytes` and
/// shows no error yet (a bare LF is refused as soon as it arrives, not when the head ends).
/// On success the head's bytes are removed from `buf`; what follows (body, pipelined
/// requests) stays. Header values and the target share the head's bytes (no copy each).
pub fn parse_request(
    buf: &mut BytesMut,
    max_bytes: usize,
) -> Result<Option<RequestHead>, HeadError> {
    let window = &buf[..buf.len().min(max_bytes)];
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let len = match req.parse(window) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            check_line_ends(window)?;
            if buf.len() >= max_bytes {
                return Err(HeadError::TooLarge { limit: max_bytes });
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HeadError::TooLarge { limit: max_bytes })
        }
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    };
    check_line_ends(&window[..len])?;
    let whole = &window[..len];
    let framing_of = declared(req.headers)?;
    let version = match req.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    let framing = if framing_of.te {
        if version != Version::HTTP_11 {
            return Err(HeadError::Framing(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        if !framing_of.chunked_only {
            return Err(HeadError::UnsupportedCoding(codings(req.headers)));
        }
        RequestFraming::Chunked
    } else {
        match framing_of.length {
            None | Some(0) => RequestFraming::Empty,
            Some(n) => RequestFraming::Length(
                usize::try_from(n)
                    .map_err(|_| HeadError::Framing("Content-Length is too large"))?,
            ),
        }
    };
    let method = Method::from_bytes(req.method.unwrap_or("").as_bytes())
        .map_err(|_| HeadError::Malformed("invalid method".into()))?;
    let path = req.path.unwrap_or("/");
    let (root, path_at, path_len) = (path == "/", offset(whole, path.as_bytes()), path.len());
    // Where each header's name and value lie in the head, before the head is split off.
    let mut spans = [[0u32; 4]; MAX_HEADERS];
    let n_headers = req.headers.len();
    for (span, h) in spans.iter_mut().zip(req.headers.iter()) {
        *span = [
            offset(whole, h.name.as_bytes()) as u32,
            h.name.len() as u32,
            offset(whole, h.value) as u32,
            h.value.len() as u32,
        ];
    }
    let head: Bytes = buf.split_to(len).freeze();
    let uri = if root {
        Uri::default()
    } else {
        Uri::from_maybe_shared(head.slice(path_at..path_at + path_len))
            .map_err(|_| HeadError::Malformed("invalid request target".into()))?
    };
    let mut headers = HeaderMap::with_capacity(n_headers);
    for span in &spans[..n_headers] {
        let [name_at, name_len, value_at, value_len] = span.map(|n| n as usize);
        let name = HeaderName::from_bytes(&head[name_at..name_at + name_len])
            .map_err(|_| HeadError::Malformed("invalid header name".into()))?;
        let value = head.slice(value_at..value_at + value_len);
        // SAFETY: httparse accepts only HTAB, SP, visible ASCII and obs-text in a value,
        // every one of them valid in a `HeaderValue` (debug builds check it again).
        #[allow(unsafe_code)]
        let value = unsafe { HeaderValue::from_maybe_shared_unchecked(value) };
        headers.append(name, value);
    }
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = headers;
    check_host(&parts)?;
    let keep_alive = wants_keep_alive(&parts.headers, version);
    let expect_continue = version == Version::HTTP_11
        && parts
            .headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    Ok(Some(RequestHead {
        parts,
        framing,
        keep_alive,
        expect_continue,
    }))
}

/// One `Host`, agreeing with an absolute-form target (RFC 9112 §3.2): a request that names
/// two authorities could be routed by one and checked against the other.
fn check_host(parts: &Parts) -> Result<(), HeadError> {
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

/// Whether the comma-separated header value `value` lists `token` (case-insensitive), as
/// `Connection` lists hop-by-hop headers.
pub fn lists_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// A byte range of a [`ResponseHead`].
#[derive(Debug, Clone, Copy)]
struct Span {
    start: u32,
    end: u32,
}

impl Span {
    /// Where `part` lies in `whole`; empty when `part` is not a slice of `whole` (an
    /// empty reason phrase need not point into the head).
    fn of(whole: &[u8], part: &[u8]) -> Self {
        let start = offset(whole, part);
        match start.checked_add(part.len()) {
            Some(end) if end <= whole.len() => Self {
                start: start as u32,
                end: end as u32,
            },
            _ => Self { start: 0, end: 0 },
        }
    }
}

/// A response head: its bytes, and where each part lies in them (no copy per header).
#[derive(Debug, Clone)]
pub struct ResponseHead {
    /// Status code.
    pub status: u16,
    /// HTTP/1.x minor version.
    pub minor: u8,
    raw: BytesMut,
    reason: Span,
    headers: Vec<(Span, Span)>,
    framing: ResponseFraming,
}

impl ResponseHead {
    /// Parses and removes a complete head from the front of `buf`; `None` while incomplete
    /// and within `max_bytes`.
    pub fn parse(buf: &mut BytesMut, max_bytes: usize) -> Result<Option<Self>, HeadError> {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut slots);
        let len = match parsed.parse(buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => {
                check_line_ends(buf)?;
                if buf.len() > max_bytes {
                    return Err(HeadError::TooLarge { limit: max_bytes });
                }
                return Ok(None);
            }
            Err(httparse::Error::TooManyHeaders) => {
                return Err(HeadError::TooLarge { limit: max_bytes })
            }
            Err(e) => return Err(HeadError::Malformed(e.to_string())),
        };
        // Whether the head came in one read or many, the limit is the same.
        if len > max_bytes {
            return Err(HeadError::TooLarge { limit: max_bytes });
        }
        let whole = &buf[..len];
        check_line_ends(whole)?;
        let d = declared(parsed.headers)?;
        let framing = if d.chunked_last {
            ResponseFraming::Chunked
        } else if d.te {
            ResponseFraming::UntilClose
        } else {
            d.length
                .map_or(ResponseFraming::UntilClose, ResponseFraming::Length)
        };
        let status = parsed.code.unwrap_or(502);
        let minor = parsed.version.unwrap_or(0);
        let reason = Span::of(whole, parsed.reason.unwrap_or("").as_bytes());
        let headers = parsed
            .headers
            .iter()
            .map(|h| (Span::of(whole, h.name.as_bytes()), Span::of(whole, h.value)))
            .collect();
        Ok(Some(ResponseHead {
            status,
            minor,
            raw: buf.split_to(len),
            reason,
            headers,
            framing,
        }))
    }

    fn bytes(&self, span: Span) -> &[u8] {
        &self.raw[span.start as usize..span.end as usize]
    }

    /// The head's size in bytes.
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// Whether the head is empty (never, once parsed).
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// The reason phrase.
    pub fn reason(&self) -> &[u8] {
        self.bytes(self.reason)
    }

    /// Headers as received: (name, value).
    pub fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.headers
            .iter()
            .map(|&(n, v)| (self.bytes(n), self.bytes(v)))
    }

    /// The values of the headers called `name` (case-insensitive).
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// Whether the `Connection` headers list `token`.
    pub fn connection_lists(&self, token: &[u8]) -> bool {
        self.values("connection").any(|v| lists_token(v, token))
    }

    /// The headers the `Connection` headers name, a bit per header in order: each listed
    /// token is looked for once, not each header's name in every `Connection` value.
    pub fn connection_listed(&self) -> u128 {
        const _: () = assert!(MAX_HEADERS <= u128::BITS as usize);
        let mut listed = 0;
        for value in self.values("connection") {
            for token in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                for (i, (name, _)) in self.headers().enumerate() {
                    if name.eq_ignore_ascii_case(token) {
                        listed |= 1 << i;
                    }
                }
            }
        }
        listed
    }

    /// Whether the body is chunked (when it has one).
    pub fn chunked(&self) -> bool {
        self.framing == ResponseFraming::Chunked
    }

    /// How the body is delimited (`head_only` for the response to a HEAD request).
    pub fn body_framing(&self, head_only: bool) -> ResponseFraming {
        if head_only || self.status < 200 || self.status == 204 || self.status == 304 {
            return ResponseFraming::None;
        }
        self.framing
    }

    /// Whether the sender keeps the connection open after this response.
    pub fn reusable(&self) -> bool {
        if self.minor == 0 {
            self.connection_lists(b"keep-alive")
        } else {
            !self.connection_lists(b"close")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Option<RequestHead>, HeadError> {
        parse_request(&mut BytesMut::from(s), 16 * 1024)
    }

    #[test]
    fn simple_get_keeps_alive_and_leaves_pipelined_bytes() {
        let mut buf =
            BytesMut::from("GET /health?x=1 HTTP/1.1\r\nHost: x\r\nX-A: b c\r\n\r\nGET /next");
        let head = parse_request(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(head.parts.uri.path(), "/health");
        assert_eq!(head.parts.uri.query(), Some("x=1"));
        assert_eq!(head.parts.headers["x-a"], "b c");
        assert_eq!(head.framing, RequestFraming::Empty);
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
    fn bare_lf_and_bare_cr_are_refused_as_soon_as_they_arrive() {
        for bad in [
            "GET / HTTP/1.1\nHost: x\n\n",
            "GET / HTTP/1.1\r\nHost: x\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\n\n",
            "GET / HTTP/1.1\r\nHost: x\r\nX: a\nb\r\n\r\n",
            // Incomplete heads: refused before they end.
            "GET / HTTP/1.1\nHost: x",
            "GET / HTTP/1.1\r\nHost: x\n",
            "\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
            // Bare CR.
            "GET / HTTP/1.1\rHost: x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\rY: z\r\n\r\n",
            // Obsolete line folding.
            "GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n",
            // Whitespace before the colon.
            "GET / HTTP/1.1\r\nHost : x\r\n\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(HeadError::Malformed(_))),
                "{bad:?} must be refused: {:?}",
                parse(bad)
            );
        }
        // An empty line before the request line is ignored (RFC 9112 §2.2).
        assert!(parse("\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap()
            .is_some());
    }

    #[test]
    fn partial_head_waits() {
        assert!(parse("GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
        assert!(parse("GET / HTTP/1.1\r\nHost: x\r").unwrap().is_none());
    }

    #[test]
    fn oversized_head_is_too_large_even_before_it_ends() {
        let long = format!("GET / HTTP/1.1\r\nX-Big: {}", "a".repeat(2000));
        assert_eq!(
            parse_request(&mut BytesMut::from(long.as_str()), 1024).unwrap_err(),
            HeadError::TooLarge { limit: 1024 }
        );
        let done = format!("{long}\r\n\r\n");
        assert_eq!(
            parse_request(&mut BytesMut::from(done.as_str()), 1024).unwrap_err(),
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
    }

    #[test]
    fn framing_rules() {
        let h = |extra: &str| format!("POST / HTTP/1.1\r\nHost: x\r\n{extra}\r\n");
        let framing = |extra: &str| parse(&h(extra)).map(|h| h.unwrap().framing);
        assert_eq!(
            framing("Content-Length: 5\r\n"),
            Ok(RequestFraming::Length(5))
        );
        assert_eq!(
            framing("Content-Length: 5\r\nContent-Length: 5\r\n"),
            Ok(RequestFraming::Length(5))
        );
        assert_eq!(
            framing("Content-Length: 5, 5\r\n"),
            Ok(RequestFraming::Length(5))
        );
        assert_eq!(framing("Content-Length: 0\r\n"), Ok(RequestFraming::Empty));
        assert_eq!(
            framing("Transfer-Encoding: Chunked\r\n"),
            Ok(RequestFraming::Chunked)
        );
        for ambiguous in [
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
            "Content-Length: 5\r\nContent-Length: 6\r\n",
            "Content-Length: 5, 6\r\n",
            "Content-Length: +5\r\n",
            "Content-Length: 0x5\r\n",
            "Content-Length: 5 5\r\n",
            "Content-Length: \r\n",
            "Content-Length: 99999999999999999999999\r\n",
        ] {
            assert!(
                matches!(framing(ambiguous), Err(HeadError::Framing(_))),
                "{ambiguous:?}"
            );
        }
        for unsupported in [
            "Transfer-Encoding: gzip, chunked\r\n",
            "Transfer-Encoding: chunked, chunked\r\n",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            "Transfer-Encoding: chunkedx\r\n",
            "Transfer-Encoding: \"chunked\"\r\n",
        ] {
            assert!(
                matches!(framing(unsupported), Err(HeadError::UnsupportedCoding(_))),
                "{unsupported:?}"
            );
        }
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

    fn response(s: &str) -> Result<Option<ResponseHead>, HeadError> {
        ResponseHead::parse(&mut BytesMut::from(s), 64 * 1024)
    }

    #[test]
    fn response_framing() {
        let framing = |s: &str| response(s).map(|h| h.unwrap().body_framing(false));
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n"),
            Ok(ResponseFraming::Length(7))
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, Chunked\r\n\r\n"),
            Ok(ResponseFraming::Chunked)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n"),
            Ok(ResponseFraming::UntilClose)
        );
        assert_eq!(
            framing("HTTP/1.0 200 OK\r\n\r\n"),
            Ok(ResponseFraming::UntilClose)
        );
        assert_eq!(
            framing("HTTP/1.1 304 Not Modified\r\ncontent-length: 7\r\n\r\n"),
            Ok(ResponseFraming::None)
        );
        for bad in [
            "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
        ] {
            assert!(
                matches!(response(bad), Err(HeadError::Framing(_))),
                "{bad:?}"
            );
        }
        for bad in [
            "HTTP/1.1 200 OK\ncontent-length: 0\n\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 0\n\r\n",
            "HTTP/1.1 200 OK\r\nx: 1\n",
        ] {
            assert!(
                matches!(response(bad), Err(HeadError::Malformed(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn response_heads_over_the_limit_are_refused_whole_or_partial() {
        let big = format!("HTTP/1.1 200 OK\r\nx-filler: {}\r\n", "f".repeat(1000));
        let parse = |s: &str| ResponseHead::parse(&mut BytesMut::from(s), 512);
        assert!(matches!(parse(&big), Err(HeadError::TooLarge { .. })));
        let whole = format!("{big}content-length: 0\r\n\r\n");
        assert!(matches!(parse(&whole), Err(HeadError::TooLarge { .. })));
        assert_eq!(
            parse("HTTP/1.1 204 No Content\r\n\r\n")
                .unwrap()
                .unwrap()
                .status,
            204
        );
    }
}
