//! Request heads for workers and response heads from them: end-to-end headers pass,
//! hop-by-hop headers stay behind, `X-Forwarded-*` and `Via` are added.

use std::net::SocketAddr;

use bytes::BytesMut;
use http::request::Parts;
use ringgate_http1::head::lists_token;
pub use ringgate_http1::{HeadError, ResponseFraming, ResponseHead};

use crate::http::RequestFraming;

/// Hop-by-hop headers (RFC 9110 §7.6.1), plus the ones ringgate rewrites itself.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "expect",
];

/// Largest response head accepted from a worker.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;
fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The head sent to a worker: method, target, end-to-end headers, forwarding headers and
/// the body framing (`content-length` or `transfer-encoding: chunked`).
pub fn encode_request_head(
    parts: &Parts,
    framing: RequestFraming,
    client: Option<SocketAddr>,
    tls: bool,
    request_id: &[u8],
) -> Vec<u8> {
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let connection = parts.headers.get_all(http::header::CONNECTION);
    for (name, value) in &parts.headers {
        let n = name.as_str();
        match n {
            "x-forwarded-for" | "content-length" | "x-request-id" | "x-forwarded-proto"
            | "x-forwarded-host" | "via" => {}
            "host" => {
                push_header(&mut out, b"host", value.as_bytes());
                push_header(&mut out, b"x-forwarded-host", value.as_bytes());
            }
            _ if HOP_BY_HOP.contains(&n)
                || connection
                    .iter()
                    .any(|v| lists_token(v.as_bytes(), n.as_bytes())) => {}
            _ => push_header(&mut out, n.as_bytes(), value.as_bytes()),
        }
    }
    // X-Forwarded-For: the client's list, then the client.
    let mut prior = parts.headers.get_all("x-forwarded-for").iter().peekable();
    if prior.peek().is_some() || client.is_some() {
        out.extend_from_slice(b"x-forwarded-for: ");
        let mut sep: &[u8] = b"";
        for v in prior {
            out.extend_from_slice(sep);
            out.extend_from_slice(v.as_bytes());
            sep = b", ";
        }
        if let Some(peer) = client {
            use std::io::Write;
            out.extend_from_slice(sep);
            let _ = write!(out, "{}", peer.ip());
        }
        out.extend_from_slice(b"\r\n");
    }
    push_header(
        &mut out,
        b"x-forwarded-proto",
        if tls { b"https" } else { b"http" },
    );
    push_header(&mut out, b"via", b"1.1 ringgate");
    if !request_id.is_empty() {
        push_header(&mut out, b"x-request-id", request_id);
    }
    match framing {
        RequestFraming::Empty => {}
        RequestFraming::Length(n) => {
            use std::io::Write;
            let _ = write!(out, "content-length: {n}\r\n");
        }
        RequestFraming::Chunked => push_header(&mut out, b"transfer-encoding", b"chunked"),
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Parses and removes a worker's complete response head from the front of `buf` (the one
/// codec, [`ringgate_http1`]); `None` while incomplete and within [`MAX_RESPONSE_HEAD`].
pub fn parse_response(buf: &mut BytesMut) -> Result<Option<ResponseHead>, HeadError> {
    ResponseHead::parse(buf, MAX_RESPONSE_HEAD)
}

/// The head for the client, without its final empty line: status, end-to-end headers
/// (names lower-case), framing, `via`, `x-request-id`, and `connection: close` when
/// not `keep_alive`. `room` is extra capacity for what the caller appends (the body
/// bytes that go out in the same write).
pub fn encode_for_client(
    resp: &ResponseHead,
    request_id: &[u8],
    keep_alive: bool,
    room: usize,
) -> Vec<u8> {
    use std::io::Write;
    let mut out = Vec::with_capacity(resp.len() + 128 + room);
    let _ = write!(out, "HTTP/1.1 {} ", resp.status);
    out.extend_from_slice(resp.reason());
    out.extend_from_slice(b"\r\n");
    let chunked = resp.chunked();
    let listed = resp.connection_listed();
    let mut lower = [0u8; 64];
    for (i, (name, value)) in resp.headers().enumerate() {
        let n: &[u8] = match lower.get_mut(..name.len()) {
            Some(buf) => {
                buf.copy_from_slice(name);
                buf.make_ascii_lowercase();
                buf
            }
            // A name longer than any hop-by-hop one: passed as received.
            None => name,
        };
        let keep = match n {
            b"transfer-encoding" => chunked,
            b"content-length" => !chunked,
            b"x-request-id" | b"via" => false,
            _ => !HOP_BY_HOP.iter().any(|h| h.as_bytes() == n) && listed & (1 << i) == 0,
        };
        if keep {
            push_header(&mut out, n, value);
        }
    }
    push_header(&mut out, b"via", b"1.1 ringgate");
    if !request_id.is_empty() {
        push_header(&mut out, b"x-request-id", request_id);
    }
    if !keep_alive {
        push_header(&mut out, b"connection", b"close");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(raw: &str) -> Parts {
        let mut b = http::Request::builder().method("POST").uri("/api/x?y=1");
        for line in raw.lines() {
            let (k, v) = line.split_once(':').unwrap();
            b = b.header(k.trim(), v.trim());
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn request_heads_drop_hop_by_hop_and_add_forwarding() {
        let p = parts("host: a.example\nconnection: keep-alive, x-private\nx-private: 1\nkeep-alive: 5\nx-forwarded-for: 10.0.0.1\nexpect: 100-continue\naccept: */*\ncontent-length: 3");
        let peer: SocketAddr = "127.0.0.9:5000".parse().unwrap();
        let h = String::from_utf8(encode_request_head(
            &p,
            RequestFraming::Length(3),
            Some(peer),
            true,
            b"rid",
        ))
        .unwrap();
        assert!(h.starts_with("POST /api/x?y=1 HTTP/1.1\r\n"));
        for gone in ["x-private", "keep-alive", "expect", "connection"] {
            assert!(!h.contains(gone), "{gone} forwarded: {h}");
        }
        assert!(h.contains("x-forwarded-for: 10.0.0.1, 127.0.0.9\r\n"));
        assert!(h.contains("x-forwarded-proto: https\r\n"));
        assert!(h.contains("x-forwarded-host: a.example\r\n"));
        assert!(h.contains("via: 1.1 ringgate\r\n"));
        assert!(h.contains("x-request-id: rid\r\n"));
        assert_eq!(h.matches("content-length: 3").count(), 1);
        assert!(h.ends_with("\r\n\r\n"));
        let c = String::from_utf8(encode_request_head(
            &p,
            RequestFraming::Chunked,
            None,
            false,
            b"",
        ))
        .unwrap();
        assert!(c.contains("transfer-encoding: chunked\r\n") && !c.contains("content-length"));
    }

    #[test]
    fn headers_named_by_any_of_many_connection_headers_stay_behind() {
        for n in [1, 4, 5, 7] {
            let mut head = String::from("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n");
            for i in 0..n {
                head.push_str(&format!(
                    "Connection: x-a{i}, X-B{i}\r\nX-A{i}: 1\r\nx-b{i}: 2\r\n"
                ));
            }
            head.push_str("X-Kept: 3\r\n\r\n");
            let mut buf = BytesMut::from(head.as_bytes());
            let h = parse_response(&mut buf).unwrap().unwrap();
            let out = String::from_utf8(encode_for_client(&h, b"", true, 0)).unwrap();
            assert_eq!(
                out, "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nx-kept: 3\r\nvia: 1.1 ringgate\r\n",
                "{n} Connection headers"
            );
        }
    }

    #[test]
    fn response_header_names_match_in_any_case_and_go_out_lower_case() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 201 Created\r\nContent-Type: text/plain\r\nTransfer-Encoding: Chunked\r\nConnection: Keep-Alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nX-Request-Id: theirs\r\n\r\n"[..],
        );
        let h = parse_response(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty());
        assert_eq!(h.body_framing(false), ResponseFraming::Chunked);
        assert!(h.reusable());
        let out = String::from_utf8(encode_for_client(&h, b"ours", false, 0)).unwrap();
        assert_eq!(
            out,
            "HTTP/1.1 201 Created\r\ncontent-type: text/plain\r\ntransfer-encoding: Chunked\r\nvia: 1.1 ringgate\r\nx-request-id: ours\r\nconnection: close\r\n"
        );
        // No reason phrase at all.
        let mut bare = BytesMut::from(&b"HTTP/1.1 204\r\nx-a: 1\r\n\r\n"[..]);
        let h = parse_response(&mut bare).unwrap().unwrap();
        let out = String::from_utf8(encode_for_client(&h, b"", true, 0)).unwrap();
        assert!(out.starts_with("HTTP/1.1 204 \r\nx-a: 1\r\n"), "{out}");
        // HTTP/1.0 keeps the connection only when asked to, in any case.
        let mut ten = BytesMut::from(
            &b"HTTP/1.0 200 OK\r\nCONNECTION: KEEP-ALIVE\r\ncontent-length: 0\r\n\r\n"[..],
        );
        assert!(parse_response(&mut ten).unwrap().unwrap().reusable());
        let mut ten = BytesMut::from(&b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n"[..]);
        assert!(!parse_response(&mut ten).unwrap().unwrap().reusable());
    }

    #[test]
    fn response_heads_over_the_limit_are_refused_whole_or_partial() {
        let big = format!(
            "HTTP/1.1 200 OK\r\nx-filler: {}\r\n",
            "f".repeat(MAX_RESPONSE_HEAD)
        );
        let mut partial = BytesMut::from(big.as_bytes());
        assert!(matches!(
            parse_response(&mut partial),
            Err(HeadError::TooLarge { .. })
        ));
        let mut whole = BytesMut::from(format!("{big}content-length: 0\r\n\r\n").as_bytes());
        assert!(matches!(
            parse_response(&mut whole),
            Err(HeadError::TooLarge { .. })
        ));
        let mut fits = BytesMut::from(&b"HTTP/1.1 204 No Content\r\n\r\n"[..]);
        assert_eq!(parse_response(&mut fits).unwrap().unwrap().status, 204);
    }

    #[test]
    fn response_heads_parse_frame_and_rewrite() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\nconnection: close, x-hop\r\nx-hop: 1\r\n\r\n5\r\n"[..],
        );
        let h = parse_response(&mut buf).unwrap().unwrap();
        assert_eq!(&buf[..], b"5\r\n");
        assert_eq!(h.body_framing(false), ResponseFraming::Chunked);
        assert_eq!(h.body_framing(true), ResponseFraming::None);
        assert!(!h.reusable());
        let out = String::from_utf8(encode_for_client(&h, b"id1", true, 0)).unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(out.contains("transfer-encoding: chunked\r\n"));
        assert!(!out.contains("x-hop") && !out.contains("connection"));
        assert!(out.contains("x-request-id: id1\r\n"));

        let mut partial = BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-le"[..]);
        assert!(parse_response(&mut partial).unwrap().is_none());
        let mut bad = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n"[..],
        );
        assert!(matches!(
            parse_response(&mut bad),
            Err(HeadError::Framing(_))
        ));
        let mut until_close = BytesMut::from(&b"HTTP/1.0 200 OK\r\n\r\n"[..]);
        let h = parse_response(&mut until_close).unwrap().unwrap();
        assert_eq!(h.body_framing(false), ResponseFraming::UntilClose);
    }
}
